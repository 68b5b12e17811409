import { expect } from 'vitest';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import Database from 'better-sqlite3';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createWorkspace, type Profile } from '../src/core/init.js';
import { constantEdit, constantNumber, entryFor } from '../src/agent/plan.js';

export const ROOT = resolve(import.meta.dirname, '..');
export const CLI = join(ROOT, 'dist', 'cli.js');
/** The interpreter the tests train with: AUTORESEARCH_PYTHON, else python/.venv (made by `npm run setup:python`, which `npm test` runs first). */
export const PYTHON = process.env.AUTORESEARCH_PYTHON ?? join(ROOT, 'python', '.venv', 'bin', 'python');

const preparedData = new Map<Profile, Promise<string>>();

/**
 * Prepared data is the slow part of a workspace; each test file prepares it once per profile and
 * points further workspaces at it (the same pointer users get with `init --data-dir`).
 */
export function sharedDataDir(profile: Profile): Promise<string> {
  let dir = preparedData.get(profile);
  if (!dir) {
    dir = (async () => {
      const root = await mkdtemp(join(tmpdir(), `ar-data-${profile}-`));
      await createWorkspace(join(root, 'first'), { profile, python: PYTHON, dataDir: join(root, 'data') });
      return join(root, 'data');
    })();
    preparedData.set(profile, dir);
  }
  return dir;
}

/** A fresh workspace on prepared data of the profile. */
export async function makeWorkspace(profile: Profile): Promise<string> {
  const dataDir = await sharedDataDir(profile);
  const dir = join(await mkdtemp(join(tmpdir(), `ar-ws-${profile}-`)), 'ws');
  await createWorkspace(dir, { profile, python: PYTHON, dataDir });
  return dir;
}

export interface Connected {
  client: Client;
  transport: StdioClientTransport;
  stderr: () => string;
}

/**
 * The thread settings test/run-suite.sh makes (OMP_NUM_THREADS, MKL_NUM_THREADS), which a server
 * passes on to its runs: left out, each run takes a thread per core and stalls beside the other
 * test lane.
 */
export function threadEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const key of ['OMP_NUM_THREADS', 'MKL_NUM_THREADS']) if (process.env[key] !== undefined) env[key] = process.env[key] as string;
  return env;
}

/** The environment a test gives a server or CLI it starts: PATH and HOME, as a host passes them, and threadEnv(). */
export function serverEnv(home = process.env.HOME ?? '/tmp'): Record<string, string> {
  return { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, ...threadEnv() };
}

/**
 * Starts the built server as a real process and connects the SDK client over stdio. In-process
 * (--no-daemon): the server and its runs end with the client, and no background lab outlives the
 * test. test/lab-daemon.e2e.test.ts drives the default, attaching serve.
 */
export async function connect(workspace: string, serverArgs: string[] = [], name = 'vitest'): Promise<Connected> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first (npm test does).`);
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [CLI, 'serve', '--workspace', workspace, '--no-daemon', ...serverArgs],
    env: serverEnv(),
    stderr: 'pipe',
  });
  let stderr = '';
  transport.stderr?.on('data', (chunk) => (stderr += chunk));
  const client = new Client({ name, version: '0.0.1' });
  await client.connect(transport);
  return { client, transport, stderr: () => stderr };
}

/**
 * Closes a connected server and waits until its process is gone: the SDK's close gives up after
 * SIGKILL without waiting, and a server still shutting down holds the workspace's lock, so the
 * next server started on a loaded machine would be refused.
 */
export async function closeServer(server: Connected): Promise<void> {
  const pid = server.transport.pid;
  await server.client.close();
  if (pid !== null && pid !== undefined) await waitUntil(() => !pidAlive(pid), 30, `the closed server (pid ${pid}) to exit`);
}

export type ToolResult = { isError?: boolean; structuredContent?: any; content: { type: string; text?: string }[] };

export async function call(client: Client, name: string, args: Record<string, unknown> = {}): Promise<ToolResult> {
  return (await client.callTool({ name, arguments: args }, undefined, { timeout: 120_000 })) as ToolResult;
}

/** Calls a tool that must succeed and returns its structured content. */
export async function ok(client: Client, name: string, args: Record<string, unknown> = {}): Promise<any> {
  const result = await call(client, name, args);
  if (result.isError) throw new Error(`${name} failed: ${result.content.map((c) => c.text).join('\n')}`);
  return result.structuredContent;
}

/** Calls a tool that must fail and returns its message. */
export async function fails(client: Client, name: string, args: Record<string, unknown> = {}): Promise<string> {
  const result = await call(client, name, args);
  if (!result.isError) throw new Error(`${name} unexpectedly succeeded: ${JSON.stringify(result.structuredContent)}`);
  return result.content.map((c) => c.text).join('\n');
}

const FINISHED = ['succeeded', 'crashed', 'over_budget', 'timed_out', 'cancelled', 'rejected'];

/** Waits for an experiment to finish; fails after `seconds` naming the experiment and its status. */
export async function waitFinished(client: Client, id: number, seconds = 240): Promise<any> {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const result = await ok(client, 'get_results', { experiment_id: id, wait_seconds: 30 });
    const experiment = result.experiments[0];
    if (FINISHED.includes(experiment.status)) return experiment;
    if (Date.now() > deadline) throw new Error(`waited ${seconds} s for experiment ${id} ("${experiment.description}") to finish; it is still ${experiment.status}`);
  }
}

/** Rows from a workspace's state database, read-only, as an outside observer would see them. */
export function queryState<T = any>(workspace: string, sql: string, ...params: unknown[]): T[] {
  const db = new Database(join(workspace, '.autoresearch', 'state.db'), { readonly: true });
  try {
    return db.prepare(sql).all(...params) as T[];
  } finally {
    db.close();
  }
}

/** Whether a process lives (a zombie does not count), as Linux's /proc tells it. */
export function pidAlive(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z';
  } catch {
    return false;
  }
}

/** Polls a condition every 100 ms; fails after `seconds`, naming what it waited for (`what`, else the condition's code). */
export async function waitUntil(condition: () => boolean | Promise<boolean>, seconds: number, what?: string): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`waited ${seconds} s for ${what ?? `\`${condition.toString()}\``}, in vain`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Asserts that an experiment (a get_results row or a state-database row) succeeded; when it did
 * not, the failure names the experiment and carries the error the server recorded. */
export function expectSucceeded(experiment: Record<string, any>): void {
  expect(experiment.status, `experiment ${experiment.id ?? '?'} ("${experiment.description ?? ''}") ended ${experiment.status}: ${experiment.error ?? 'no error recorded'}`).toBe('succeeded');
}

/**
 * The search/replace edit that gives a numeric constant of train.py a value computed from its
 * current one; for a per-profile constant ({"gpu": ..., "cpu": ...}[PROFILE]), the entry of `profile`.
 */
export function changeConstant(text: string, name: string, value: (current: number) => string, profile?: Profile): { search: string; replace: string } {
  const entry = profile === undefined ? undefined : entryFor(text, name, profile);
  return constantEdit(text, name, value(constantNumber(text, name, entry)), entry);
}
