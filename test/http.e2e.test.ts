import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { execa } from 'execa';
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab } from '../src/core/lab.js';
import { hasBearerToken, isAllowedHostHeader, isLoopback, startHttpServer } from '../src/transports/http.js';
import { CLI, makeWorkspace, waitFinished, expectSucceeded } from './helpers.js';

async function httpClient(url: string, name: string, token?: string): Promise<{ client: Client; transport: StreamableHTTPClientTransport }> {
  const transport = new StreamableHTTPClientTransport(new URL(url), token ? { requestInit: { headers: { Authorization: `Bearer ${token}` } } } : undefined);
  const client = new Client({ name, version: '1.0' });
  await client.connect(transport);
  return { client, transport };
}

/** A raw HTTP request, so tests control every header (fetch would fix Host for us). */
function raw(url: string, options: { method?: string; headers?: Record<string, string>; body?: string }): Promise<{ status: number; body: string }> {
  const target = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request(
      { host: target.hostname, port: target.port, path: target.pathname, method: options.method ?? 'POST', headers: { 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream', ...options.headers } },
      (res) => {
        let body = '';
        res.on('data', (chunk) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

const INITIALIZE = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } });

describe('HTTP security checks (pure)', () => {
  it.each([
    ['127.0.0.1:8765', true],
    ['localhost:1', true],
    ['LOCALHOST', true],
    ['[::1]:8765', true],
    ['evil.example:8765', false],
    ['127.0.0.1.evil.example', false],
    ['', false],
    [undefined, false],
    ['localhost:1@evil.example', false],
  ])('Host header %j allowed: %s', (header, allowed) => {
    expect(isAllowedHostHeader(header, ['127.0.0.1', 'localhost', '[::1]'])).toBe(allowed);
  });
  it('knows loopback addresses', () => {
    expect(['127.0.0.1', '127.1.2.3', 'localhost', '::1'].every(isLoopback)).toBe(true);
    expect(['0.0.0.0', '192.168.1.2', 'example.com'].some(isLoopback)).toBe(false);
  });
  it('compares bearer tokens exactly', () => {
    expect(hasBearerToken('Bearer s3cret', 's3cret')).toBe(true);
    expect(hasBearerToken('bearer s3cret', 's3cret')).toBe(true);
    expect(hasBearerToken('Bearer s3cre', 's3cret')).toBe(false);
    expect(hasBearerToken('Bearer s3cretX', 's3cret')).toBe(false);
    expect(hasBearerToken('Basic s3cret', 's3cret')).toBe(false);
    expect(hasBearerToken(undefined, 's3cret')).toBe(false);
  });
});

describe('Streamable HTTP transport', () => {
  let lab: Lab;
  let url: string;
  let close: () => Promise<void>;

  beforeAll(async () => {
    const workspace = await makeWorkspace('smoke');
    lab = await Lab.open({ workspace });
    ({ url, close } = await startHttpServer(lab, { host: '127.0.0.1', port: 0 }));
  }, 600_000);

  afterAll(async () => {
    await close?.();
    await lab?.close();
  });

  it('serves several clients at once on one workspace, each audited under its own session', async () => {
    const alice = await httpClient(url, 'alice');
    const bob = await httpClient(url, 'bob');
    expect(alice.transport.sessionId).not.toBe(bob.transport.sessionId);
    const run = await alice.client.callTool({ name: 'run_experiment', arguments: { description: 'baseline from alice' } });
    const id = (run.structuredContent as any).experiment.id;
    const seen = await waitFinished(bob.client, id);
    expectSucceeded(seen);
    const rows = lab.store.audit.list({ method: 'tools/call' });
    const byClient = new Map(rows.map((r) => [r.clientName, r.mcpSessionId]));
    expect(byClient.get('alice')).toBe(alice.transport.sessionId);
    expect(byClient.get('bob')).toBe(bob.transport.sessionId);
    expect(rows.find((r) => r.tool === 'run_experiment')?.transport).toBe('http');
    await alice.transport.terminateSession();
    await bob.transport.terminateSession();
  }, 120_000);

  it('refuses requests without a session, with an unknown one, or after it closed', async () => {
    const noSession = await raw(url, { body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/list' }) });
    expect(noSession.status).toBe(400);
    expect(noSession.body).toMatch(/first request must be initialize/);
    const unknown = await raw(url, { headers: { 'mcp-session-id': 'nope' }, body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/list' }) });
    expect(unknown.status).toBe(404);
    const carol = await httpClient(url, 'carol');
    const sessionId = carol.transport.sessionId as string;
    await carol.transport.terminateSession();
    const closed = await raw(url, { headers: { 'mcp-session-id': sessionId }, body: JSON.stringify({ jsonrpc: '2.0', id: 3, method: 'tools/list' }) });
    expect(closed.status).toBe(404);
  });

  it('rejects a foreign Host header (DNS rebinding) and an oversized body', async () => {
    const rebinding = await raw(url, { headers: { Host: 'attacker.example' }, body: INITIALIZE });
    expect(rebinding.status).toBe(403);
    const huge = await raw(url, { body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { pad: 'x'.repeat(2 * 1024 * 1024) } }) });
    expect(huge.status).toBe(413);
    const notJson = await raw(url, { body: '{not json' });
    expect(notJson.status).toBe(400);
  });

  it('drives a scripted agent session over HTTP (autoresearch-mcp agent --url)', async () => {
    const result = await execa(process.execPath, [CLI, 'agent', '--url', url, '--sweep', 'WARMDOWN_FRAC=0.4'], { reject: false, timeout: 180_000 });
    expect(result.exitCode, result.stderr).toBe(0);
    const rows = lab.store.listExperiments({ order: 'id', ascending: true });
    expect(rows.at(-1)?.description).toBe('WARMDOWN_FRAC = 0.4');
    expect(rows.at(-1)?.clientName).toBe('autoresearch-agent');
    // noise runs were measured first; the idea is decided or (within noise) left inconclusive with figures
    expect(rows.some((r) => r.kind === 'noise')).toBe(true);
    expect(rows.at(-1)?.verdict).not.toBeNull();
  }, 200_000);

  it('keeps an experiment running when a client disconnects mid-wait; a later session reads its result', async () => {
    const dave = await httpClient(url, 'dave');
    const run = await dave.client.callTool({ name: 'run_experiment', arguments: { description: 'outlives its client' } });
    const id = (run.structuredContent as any).experiment.id;
    const abort = new AbortController();
    const waiting = dave.client
      .callTool({ name: 'get_results', arguments: { experiment_id: id, wait_seconds: 40 } }, undefined, { signal: abort.signal })
      .catch((error: Error) => error);
    await new Promise((resolve) => setTimeout(resolve, 500));
    abort.abort();
    await dave.transport.close();
    expect(await waiting).toBeInstanceOf(Error);
    const erin = await httpClient(url, 'erin');
    const result = await waitFinished(erin.client, id);
    expectSucceeded(result);
    expect(result.val_bpb).toBeGreaterThan(0);
    await erin.transport.terminateSession();
  }, 120_000);
});

describe('HTTP beyond loopback', () => {
  let lab: Lab;
  beforeAll(async () => {
    lab = await Lab.open({ workspace: await makeWorkspace('smoke') });
  }, 600_000);
  afterAll(async () => {
    await lab?.close();
  });

  it('refuses to bind beyond loopback without a token', async () => {
    await expect(startHttpServer(lab, { host: '0.0.0.0', port: 0 })).rejects.toThrow(/--token/);
  });

  it('requires the bearer token when bound beyond loopback', async () => {
    const { url, close } = await startHttpServer(lab, { host: '0.0.0.0', port: 0, token: 'tok-123' });
    const local = url.replace('0.0.0.0', '127.0.0.1');
    try {
      expect((await raw(local, { body: INITIALIZE })).status).toBe(401);
      expect((await raw(local, { headers: { Authorization: 'Bearer wrong' }, body: INITIALIZE })).status).toBe(401);
      const frank = await httpClient(local, 'frank', 'tok-123');
      const status = await frank.client.callTool({ name: 'status', arguments: {} });
      expect(status.isError ?? false).toBe(false);
      await frank.transport.terminateSession();
    } finally {
      await close();
    }
  });
});
