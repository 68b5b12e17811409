import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { execa, type ResultPromise } from 'execa';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, makeWorkspace, ROOT, expectSucceeded, threadEnv } from './helpers.js';

// The README's routes from a laptop's host to a Linux GPU box, run as written against a real
// OpenSSH server on loopback ("gpu-box" is a Host entry of an ssh config file, as the README says).
const SSHD = '/usr/sbin/sshd';
const README = readFileSync(join(ROOT, 'README.md'), 'utf8');
const UNFINISHED = ['preparing', 'queued', 'running'];

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, seconds = 20): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = createConnection({ port, host: '127.0.0.1' }, () => socket.end(() => resolve(true)));
      socket.on('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on port ${port} after ${seconds} s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function call(client: Client, name: string, args: Record<string, unknown> = {}): Promise<any> {
  const result = await client.callTool({ name, arguments: args }, undefined, { timeout: 120_000 });
  if (result.isError) throw new Error(`${name}: ${JSON.stringify(result.content)}`);
  return result.structuredContent;
}

describe.skipIf(!existsSync(SSHD))('from a laptop to the GPU box over ssh (skipped without openssh-server)', () => {
  let dir: string;
  let workspace: string;
  let sshConfig: string;
  let sshd: ResultPromise;
  const children: ResultPromise[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ar-ssh-'));
    workspace = await makeWorkspace('smoke');
    for (const key of ['host', 'client']) await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, key)]);
    await writeFile(join(dir, 'authorized_keys'), readFileSync(join(dir, 'client.pub')));
    const port = await freePort();
    const user = userInfo().username;
    await writeFile(
      join(dir, 'sshd_config'),
      [
        `Port ${port}`,
        'ListenAddress 127.0.0.1',
        `HostKey ${join(dir, 'host')}`,
        `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'StrictModes no',
        'PermitRootLogin prohibit-password',
        `AllowUsers ${user}`,
        `PidFile ${join(dir, 'sshd.pid')}`,
        // the suite's thread settings reach the server the session starts (test/helpers.ts threadEnv)
        ...Object.entries(threadEnv()).map(([key, value]) => `SetEnv ${key}=${value}`),
      ].join('\n') + '\n',
    );
    sshConfig = join(dir, 'ssh_config');
    await writeFile(
      sshConfig,
      [
        'Host gpu-box',
        '  HostName 127.0.0.1',
        `  Port ${port}`,
        `  User ${user}`,
        `  IdentityFile ${join(dir, 'client')}`,
        '  IdentitiesOnly yes',
        '  StrictHostKeyChecking no',
        '  UserKnownHostsFile /dev/null',
        '  LogLevel ERROR',
      ].join('\n') + '\n',
    );
    // sshd's privilege separation needs this folder when it runs as root.
    if (process.getuid?.() === 0) mkdirSync('/run/sshd', { recursive: true });
    sshd = execa(SSHD, ['-D', '-e', '-f', join(dir, 'sshd_config')], { reject: false, stdin: 'ignore' });
    await waitForPort(port);
  }, 300_000);

  afterAll(async () => {
    if (workspace) await execa(process.execPath, [CLI, 'stop', '--workspace', workspace], { reject: false });
    for (const child of children) child.kill();
    sshd?.kill();
  });

  /** The host's view: the README's ssh snippet, with the remote command pointed at this build. */
  function sshSnippetArgs(): string[] {
    const block = [...README.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => JSON.parse(m[1])).find((json) => json.mcpServers?.autoresearch?.command === 'ssh');
    expect(block, 'README has no ssh snippet').toBeDefined();
    const args: string[] = block.mcpServers.autoresearch.args;
    expect(args).toContain('gpu-box');
    return ['-F', sshConfig, ...args.map((arg) => (arg === 'autoresearch-mcp' ? `${process.execPath} ${CLI}` : arg === '~/lab' ? workspace : arg))];
  }

  async function connectOverSsh(): Promise<{ client: Client; transport: StdioClientTransport }> {
    const transport = new StdioClientTransport({ command: 'ssh', args: sshSnippetArgs(), env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir }, stderr: 'pipe' });
    const client = new Client({ name: 'laptop-host', version: '1' });
    await client.connect(transport);
    return { client, transport };
  }

  it('ssh as the stdio command: a run started over one connection finishes after it drops, and the next connection reads it', async () => {
    const first = await connectOverSsh();
    const { tools } = await first.client.listTools();
    expect(tools.map((tool) => tool.name)).toEqual(expect.arrayContaining(['read_train_py', 'run_experiment', 'get_results']));
    await call(first.client, 'start_session', { tag: 'remote' });
    const run = await call(first.client, 'run_experiment', { description: 'baseline' });
    // The laptop sleeps: the ssh connection dies with the run still going on the box.
    await first.client.close();

    const second = await connectOverSsh();
    let experiment = (await call(second.client, 'get_results', { experiment_id: run.experiment.id })).experiments[0];
    while (UNFINISHED.includes(experiment.status)) {
      experiment = (await call(second.client, 'get_results', { experiment_id: run.experiment.id, wait_seconds: 30 })).experiments[0];
    }
    expectSucceeded(experiment);
    expect(experiment.val_bpb).toBeGreaterThan(0);
    await second.client.close();
  }, 300_000);

  it('HTTP through an ssh tunnel: the box serves with a token, the laptop reaches it through the forwarded port', async () => {
    await execa(process.execPath, [CLI, 'stop', '--workspace', workspace], { reject: false });
    const block = [...README.matchAll(/```bash\n([\s\S]*?)```/g)].map((m) => m[1]).find((text) => text.includes('ssh -N -L'));
    expect(block, 'README has no tunnel example').toBeDefined();
    const lines = (block as string).split('\n').filter((line) => line && !line.startsWith('#'));
    const serveLine = lines.find((line) => line.includes('--http')) as string;
    const tunnelLine = lines.find((line) => line.startsWith('ssh -N -L')) as string;
    const remotePort = await freePort();
    const localPort = await freePort();
    const token = 'a-token-for-the-test';
    const serveArgs = serveLine
      .replace(/^autoresearch-mcp /, '')
      .replace('~/lab', workspace)
      .replace('8765', String(remotePort))
      .replace('"$AUTORESEARCH_TOKEN"', token)
      .split(' ');
    children.push(execa(process.execPath, [CLI, ...serveArgs], { reject: false, stdin: 'ignore' }));
    await waitForPort(remotePort, 60);
    const tunnelArgs = tunnelLine.replace(/^ssh /, '').replace('8765:127.0.0.1:8765', `${localPort}:127.0.0.1:${remotePort}`).split(' ');
    children.push(execa('ssh', ['-F', sshConfig, ...tunnelArgs], { reject: false, stdin: 'ignore' }));
    await waitForPort(localPort);

    const url = new URL(`http://127.0.0.1:${localPort}/mcp`);
    const refused = new Client({ name: 'laptop-no-token', version: '1' });
    await expect(refused.connect(new StreamableHTTPClientTransport(url))).rejects.toThrow(/401|token|auth/i);
    const client = new Client({ name: 'laptop-http', version: '1' });
    await client.connect(new StreamableHTTPClientTransport(url, { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
    const status = await call(client, 'status');
    expect(status.workspace).toBe(workspace);
    expect(status.session).toBe('remote');
    await client.close();
  }, 300_000);
});
