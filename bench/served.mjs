// A bench's server: a fresh cpu-profile workspace in a scratch folder (bench/scratch.mjs) and the
// real server on stdio, sandboxed, driven by the SDK's client, as a user's host would.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { join, resolve } from 'node:path';
import { createWorkspace } from '../dist/core/init.js';
import { scratchDir } from './scratch.mjs';

const ROOT = resolve(import.meta.dirname, '..');
export const PYTHON = process.env.AUTORESEARCH_PYTHON ?? join(ROOT, 'python', '.venv', 'bin', 'python');

/** Prepares the workspace (data included) and connects a client named `name` to its server. */
export async function servedCpuWorkspace(prefix, name) {
  const root = scratchDir(prefix);
  const workspace = join(root, 'ws');
  process.stderr.write(`preparing a cpu-profile workspace with ${PYTHON}...\n`);
  await createWorkspace(workspace, { profile: 'cpu', python: PYTHON, dataDir: join(root, 'data') });
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [join(ROOT, 'dist', 'cli.js'), 'serve', '--workspace', workspace, '--no-daemon'],
    env: { PATH: process.env.PATH, HOME: process.env.HOME ?? '/tmp' },
    stderr: 'ignore',
  });
  const client = new Client({ name, version: '1' });
  await client.connect(transport);
  return { workspace, client };
}

export async function call(client, name, args = {}) {
  const result = await client.callTool({ name, arguments: args }, undefined, { timeout: 600_000 });
  if (result.isError) throw new Error(`${name}: ${result.content.map((c) => c.text).join('\n')}`);
  return result.structuredContent;
}

/** The experiment's row once it has ended. */
export async function waitFinished(client, id) {
  for (;;) {
    const e = (await call(client, 'get_results', { experiment_id: id, wait_seconds: 30 })).experiments[0];
    if (!['preparing', 'queued', 'running'].includes(e.status)) return e;
  }
}
