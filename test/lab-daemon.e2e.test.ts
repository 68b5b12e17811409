import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, makeWorkspace, ok, pidAlive, queryState, waitFinished, waitUntil, expectSucceeded, serverEnv } from './helpers.js';

/**
 * The default `serve`: a relay to the workspace's lab, a background process that owns the queue
 * and the runs. Every test here starts real processes; afterAll stops every lab it started.
 */

const ENV = serverEnv();
const TRAIN_LINE = /^SOFTCAP = .*$/m;
const workspaces: string[] = [];

interface Attached {
  client: Client;
  transport: StdioClientTransport;
  stderr: () => string;
}

async function attach(workspace: string, args: string[] = [], name = 'lab-test'): Promise<Attached> {
  const transport = new StdioClientTransport({ command: process.execPath, args: [CLI, 'serve', '--workspace', workspace, ...args], env: ENV, stderr: 'pipe' });
  let stderr = '';
  transport.stderr?.on('data', (chunk) => (stderr += chunk));
  const client = new Client({ name, version: '0.0.1' });
  await client.connect(transport);
  return { client, transport, stderr: () => stderr };
}

function cli(...args: string[]) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: ENV, timeout: 150_000 });
}

const labJson = (workspace: string) => JSON.parse(readFileSync(join(workspace, '.autoresearch', 'lab.json'), 'utf8'));
const labLog = (workspace: string) => readFileSync(join(workspace, '.autoresearch', 'lab.log'), 'utf8');
const row = (workspace: string, id: number) => queryState(workspace, 'SELECT * FROM experiments WHERE id = ?', id)[0];

async function fresh(): Promise<string> {
  const workspace = await makeWorkspace('smoke');
  workspaces.push(workspace);
  return workspace;
}

/** Makes train.py sleep for ten minutes, so its run stays running until cancelled. */
async function sleeper(client: Client): Promise<void> {
  const current = await ok(client, 'read_train_py');
  const anchor = TRAIN_LINE.exec(current.text)?.[0] as string;
  await ok(client, 'apply_patch', { edits: [{ search: anchor, replace: `${anchor}\nimport time\ntime.sleep(600)` }], expected_hash: current.hash });
}

afterAll(() => {
  for (const workspace of workspaces) cli('stop', '--workspace', workspace);
});

describe('the lab outlives its clients', () => {
  let workspace: string;
  beforeAll(async () => {
    workspace = await fresh();
  }, 600_000);

  it('a run started by a client that is killed finishes, and a new client reads its result', async () => {
    const first = await attach(workspace);
    expect(first.stderr()).toMatch(/started the lab for .* \(pid \d+\)/);
    const run = await ok(first.client, 'run_experiment', { description: 'baseline' });
    const labPid = labJson(workspace).pid as number;
    process.kill(first.transport.pid as number, 'SIGKILL');
    await waitUntil(() => !pidAlive(first.transport.pid as number), 10);
    expect(pidAlive(labPid)).toBe(true);
    const second = await attach(workspace, [], 'second-client');
    expect(second.stderr()).toMatch(new RegExp(`attached to the lab for .* \\(pid ${labPid}\\)`));
    const done = await waitFinished(second.client, run.experiment.id);
    expectSucceeded(done);
    expect(done.val_bpb).toBeGreaterThan(0);
    await ok(second.client, 'commit_or_revert', { experiment_id: run.experiment.id, action: 'auto' });
    await second.client.close();
    // Both clients' calls are in the audit under their own names, over stdio.
    const clients = queryState(workspace, "SELECT DISTINCT client_name FROM audit_log WHERE transport = 'stdio' AND client_name IS NOT NULL").map((r: any) => r.client_name);
    expect(clients.sort()).toEqual(['lab-test', 'second-client']);
  }, 120_000);

  it('closing stdin ends the client (exit 0) while its running experiment keeps running; stop cancels it and ends the lab', async () => {
    const first = await attach(workspace);
    await sleeper(first.client);
    const run = await ok(first.client, 'run_experiment', { description: 'sleeps' });
    await waitUntil(() => row(workspace, run.experiment.id)?.pid > 0, 30);
    const trainPid = row(workspace, run.experiment.id).pid as number;
    const servePid = first.transport.pid as number;
    const labPid = labJson(workspace).pid as number;
    await first.transport.close();
    await waitUntil(() => !pidAlive(servePid), 10);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(pidAlive(trainPid)).toBe(true);
    expect(row(workspace, run.experiment.id).status).toBe('running');

    const again = await attach(workspace);
    const seen = await ok(again.client, 'get_results', { experiment_id: run.experiment.id });
    expect(seen.experiments[0].status).toBe('running');
    // The CLI's read-only commands work beside the lab.
    const status = cli('status', '--workspace', workspace);
    expect(status.status).toBe(0);
    expect(JSON.parse(status.stdout).counts.running).toBe(1);
    await again.client.close();

    const stop = cli('stop', '--workspace', workspace);
    expect(stop.status).toBe(0);
    expect(stop.stderr).toMatch(new RegExp(`stopping the lab .* \\(pid ${labPid}\\): cancelling running experiment\\(s\\) ${run.experiment.id}`));
    expect(stop.stderr).toMatch(/lab stopped/);
    expect(pidAlive(labPid)).toBe(false);
    await waitUntil(() => !pidAlive(trainPid), 10);
    expect(row(workspace, run.experiment.id).status).toBe('cancelled');
    expect(existsSync(join(workspace, '.autoresearch', 'lab.sock'))).toBe(false);
    expect(existsSync(join(workspace, '.autoresearch', 'lab.json'))).toBe(false);
    const events = queryState(workspace, "SELECT method, message FROM audit_log WHERE kind = 'event' AND method LIKE 'lab_%' ORDER BY seq");
    expect(events.map((e: any) => e.method)).toEqual(['lab_started', 'lab_stopped']);
    expect(events[1].message).toMatch(/stop requested/);

    const none = cli('stop', '--workspace', workspace);
    expect(none.status).toBe(0);
    expect(none.stderr.trim()).toMatch(/^\[autoresearch\] no lab runs for /);
  }, 120_000);

  it('a lab killed with SIGKILL leaves a stale socket; the next serve starts a new lab that recovers it and marks the run crashed', async () => {
    const first = await attach(workspace);
    const run = await ok(first.client, 'run_experiment', { description: 'killed with the lab' });
    await waitUntil(() => row(workspace, run.experiment.id)?.pid > 0, 30);
    const trainPid = row(workspace, run.experiment.id).pid as number;
    const labPid = labJson(workspace).pid as number;
    process.kill(labPid, 'SIGKILL');
    process.kill(-trainPid, 'SIGKILL');
    await waitUntil(() => !pidAlive(labPid) && !pidAlive(trainPid), 10);
    // The client notices and says so, on stderr.
    await waitUntil(() => /closed the connection: it stopped or crashed/.test(first.stderr()), 10);
    expect(statSync(join(workspace, '.autoresearch', 'lab.sock')).isSocket()).toBe(true);

    const again = await attach(workspace);
    expect(labJson(workspace).pid).not.toBe(labPid);
    const result = await ok(again.client, 'get_results', { experiment_id: run.experiment.id });
    expect(result.experiments[0].status).toBe('crashed');
    expect(labLog(workspace)).toMatch(/removed a stale .*lab\.sock/);
    await again.client.close();
    expect(cli('stop', '--workspace', workspace).status).toBe(0);
  }, 120_000);
});

describe('one lab per workspace', () => {
  it('two serves started at once share one lab', async () => {
    const workspace = await fresh();
    const [a, b] = await Promise.all([attach(workspace, [], 'a'), attach(workspace, [], 'b')]);
    const pid = labJson(workspace).pid as number;
    for (const side of [a, b]) {
      expect(side.stderr()).toMatch(new RegExp(`the lab for .* \\(pid ${pid}\\)`));
      expect((await ok(side.client, 'status')).profile).toBe('smoke');
    }
    // Work queued by one is visible to the other at once.
    const run = await ok(a.client, 'run_experiment', { description: 'seen by both' });
    const seen = await ok(b.client, 'get_results', { experiment_id: run.experiment.id });
    expect(seen.experiments[0].description).toBe('seen by both');
    await waitFinished(b.client, run.experiment.id);
    await a.client.close();
    await b.client.close();
    // A lab started by hand beside it refuses, in one line.
    const second = cli('lab', '--workspace', workspace);
    expect(second.status).toBe(3);
    expect(second.stderr.trim()).toMatch(new RegExp(`^autoresearch-mcp: a lab \\(pid ${pid}, autoresearch-mcp [^)]+\\) already serves .*stop --workspace`));
    expect(second.stderr.trim().split('\n')).toHaveLength(1);
    expect(cli('stop', '--workspace', workspace).status).toBe(0);
  }, 180_000);

  it('serve writes nothing but JSON-RPC on stdout', async () => {
    const workspace = await fresh();
    const child = spawn(process.execPath, [CLI, 'serve', '--workspace', workspace], { stdio: ['pipe', 'pipe', 'pipe'], env: ENV });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    const send = (message: object) => child.stdin.write(`${JSON.stringify(message)}\n`);
    send({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } });
    send({ jsonrpc: '2.0', method: 'notifications/initialized' });
    send({ jsonrpc: '2.0', id: 2, method: 'tools/list' });
    send({ jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'status', arguments: {} } });
    send({ jsonrpc: '2.0', id: 4, method: 'tools/call', params: { name: 'read_train_py', arguments: { experiment_id: 42 } } });
    await waitUntil(() => stdout.split('\n').filter(Boolean).length >= 4, 30);
    child.stdin.end();
    const code = await new Promise((resolve) => child.on('exit', resolve));
    expect(code).toBe(0);
    const lines = stdout.split('\n').filter(Boolean);
    expect(lines).toHaveLength(4);
    for (const line of lines) expect(JSON.parse(line).jsonrpc).toBe('2.0');
    expect(stderr).toMatch(/started the lab/);
    expect(cli('stop', '--workspace', workspace).status).toBe(0);
  }, 60_000);

  it('serve --http makes that process the lab; a stdio serve attaches to it and stop ends it', async () => {
    const workspace = await fresh();
    const http = spawn(process.execPath, [CLI, 'serve', '--workspace', workspace, '--http', '--port', '0'], { stdio: ['ignore', 'ignore', 'pipe'], env: ENV });
    let stderr = '';
    http.stderr.on('data', (chunk) => (stderr += chunk));
    await waitUntil(() => /at (http:\/\/\S+)/.test(stderr), 30);
    const viaStdio = await attach(workspace);
    expect(viaStdio.stderr()).toMatch(new RegExp(`attached to the lab .* \\(pid ${http.pid}\\)`));
    expect(labJson(workspace).http).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/mcp$/);
    await viaStdio.client.close();
    const exited = new Promise((resolve) => http.on('exit', resolve));
    expect(cli('stop', '--workspace', workspace).status).toBe(0);
    expect(await exited).toBe(0);
  }, 60_000);
});

describe('idle policy', () => {
  it('a lab with nothing to do and no client stops after --idle-hours', async () => {
    const workspace = await fresh();
    // 0.0005 h = 1.8 s.
    const client = await attach(workspace, ['--idle-hours', '0.0005']);
    const pid = labJson(workspace).pid as number;
    const run = await ok(client.client, 'run_experiment', { description: 'keeps the lab busy' });
    await waitFinished(client.client, run.experiment.id);
    // A connected client keeps it alive, however idle.
    await new Promise((resolve) => setTimeout(resolve, 3000));
    expect(pidAlive(pid)).toBe(true);
    await client.client.close();
    await waitUntil(() => !pidAlive(pid), 20);
    expect(labLog(workspace)).toMatch(/stopping \(idle for 0\.0005 h: nothing queued or running and no client\)/);
    expect(existsSync(join(workspace, '.autoresearch', 'lab.sock'))).toBe(false);
  }, 90_000);

  it('AUTORESEARCH_IDLE_HOURS sets it too, and a bad value is refused before any lab starts', async () => {
    const workspace = await fresh();
    const bad = spawnSync(process.execPath, [CLI, 'serve', '--workspace', workspace], { encoding: 'utf8', env: { ...ENV, AUTORESEARCH_IDLE_HOURS: 'soon' }, input: '' });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/--idle-hours \(or AUTORESEARCH_IDLE_HOURS\) needs a number of hours/);
    expect(existsSync(join(workspace, '.autoresearch', 'lab.log'))).toBe(false);
    const lab = spawn(process.execPath, [CLI, 'lab', '--workspace', workspace], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...ENV, AUTORESEARCH_IDLE_HOURS: '0.0003' } });
    const code = await new Promise((resolve) => lab.on('exit', resolve));
    expect(code).toBe(0);
  }, 60_000);
});

describe('bad input around the lab: one clear line each, nothing lost', () => {
  it('stop with no lab, a second lab started by hand, and a corrupt lab.json and lab.sock', async () => {
    const workspace = await fresh();
    const none = cli('stop', '--workspace', workspace);
    expect(none.status).toBe(0);
    expect(none.stderr.trim()).toBe(`[autoresearch] no lab runs for ${workspace}`);

    const first = await attach(workspace);
    const pid = labJson(workspace).pid as number;
    const second = cli('lab', '--workspace', workspace);
    expect(second.status).not.toBe(0);
    expect(second.stderr.trim().split('\n')).toHaveLength(1);
    expect(second.stderr).toMatch(new RegExp(`a lab \\(pid ${pid}, autoresearch-mcp [^)]+\\) already serves .*: attach to it with serve, or end it with: autoresearch-mcp stop`));
    expect(pidAlive(pid)).toBe(true);
    const run = await ok(first.client, 'run_experiment', { description: 'survives the bad input' });
    await waitFinished(first.client, run.experiment.id);
    await first.client.close();
    expect(cli('stop', '--workspace', workspace).status).toBe(0);
    await waitUntil(() => !pidAlive(pid), 20);

    // A crash of the machine mid-write, or a stray file: neither may block the next serve.
    const state = join(workspace, '.autoresearch');
    spawnSync('sh', ['-c', `printf 'garbage' > ${join(state, 'lab.json')}; printf 'not a socket' > ${join(state, 'lab.sock')}`]);
    const again = await attach(workspace);
    expect(again.stderr()).toMatch(/started the lab/);
    expectSucceeded(row(workspace, run.experiment.id));
    expect((await ok(again.client, 'get_results', { experiment_id: run.experiment.id })).experiments[0].val_bpb).toBe(row(workspace, run.experiment.id).val_bpb);
    await again.client.close();
  }, 120_000);
});
