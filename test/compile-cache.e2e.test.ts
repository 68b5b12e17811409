import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compileCacheDir, runDir } from '../src/core/paths.js';
import { changeConstant, connect, expectSucceeded, makeWorkspace, ok, waitFinished, type Connected } from './helpers.js';

/** Every file under a folder, relative to it. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath, entry.name).slice(dir.length + 1));
}

/** The FX graph cache's hits and misses the candidate prints after compiling (see COUNTERS). */
function cacheCounters(log: string): { hits: number; misses: number } {
  const match = /fxgraph cache: hits (\d+), misses (\d+)/.exec(log);
  if (!match) throw new Error(`the run printed no cache counters; its log ends:\n${log.slice(-1500)}`);
  return { hits: Number(match[1]), misses: Number(match[2]) };
}

// A small graph compiled before the first batch, as train.py's model is on CUDA: compiling the
// whole smoke model on two busy CPU cores can take longer than the start-up allowance.
const COUNTERS =
  'compiled = torch.compile(lambda t: torch.tanh(t) * 2 + 1)\n' +
  'compiled(torch.ones(8))\n' +
  'counters = torch._dynamo.utils.counters["inductor"]\n' +
  'print(f"fxgraph cache: hits {counters[\'fxgraph_cache_hit\']}, misses {counters[\'fxgraph_cache_miss\']}", flush=True)\n';

/**
 * The workspace's compile cache through the real server, sandboxed, on CPU (the smoke profile's
 * train.py compiles only on CUDA, so the candidate compiles a small graph): a kept run's cache, as it
 * was before its first batch, seeds the next run, whose unchanged model graph is then not compiled
 * again; a discarded run's snapshot goes.
 */
describe('compile cache shared by the runs of a workspace (smoke profile, CPU compile)', () => {
  let workspace: string;
  let server: Connected;

  beforeAll(async () => {
    workspace = await makeWorkspace('smoke');
    server = await connect(workspace, ['--ceiling-seconds', '240'], 'compile-cache-e2e');
    await ok(server.client, 'start_session', { tag: 'cache' });
  }, 600_000);

  afterAll(async () => {
    await server?.client.close();
  });

  async function patchAndRun(description: string, edit: (text: string) => { search: string; replace: string }[]) {
    const current = await ok(server.client, 'read_train_py');
    await ok(server.client, 'apply_patch', { edits: edit(current.text), expected_hash: current.hash });
    const run = await ok(server.client, 'run_experiment', { description });
    const finished = await waitFinished(server.client, run.experiment.id, 400);
    expectSucceeded(finished);
    return { ...finished, log: readFileSync(join(runDir(workspace, finished.id), 'run.log'), 'utf8') };
  }

  let compiled: any;

  it('takes a kept run\'s cache in as it was before its first batch', async () => {
    compiled = await patchAndRun('compile on CPU', (text) => [
      { search: 'print(f"device: {DEVICE.type}', replace: `${COUNTERS}print(f"device: {DEVICE.type}` },
    ]);
    expect(cacheCounters(compiled.log).misses).toBeGreaterThan(0);
    expect(compiled.log).toMatch(/compile cache: \d+ files \([\d.]+ MiB\) kept as they were before the first batch/);
    expect(existsSync(join(runDir(workspace, compiled.id), 'compile-snapshot'))).toBe(true);

    const kept = await ok(server.client, 'commit_or_revert', { experiment_id: compiled.id, action: 'keep' });
    expect(kept.decision).toBe('keep');
    const cache = compileCacheDir(workspace);
    const head = readlinkSync(join(cache, 'head'));
    expect(head).toMatch(new RegExp(`^${compiled.commit.slice(0, 12)}-e${compiled.id}-`));
    expect(filesUnder(join(cache, head)).some((file) => file.startsWith('inductor/'))).toBe(true);
    expect(existsSync(join(runDir(workspace, compiled.id), 'compile-snapshot'))).toBe(false);
    const status = await ok(server.client, 'status');
    expect(status.compileCache).toMatchObject({ experimentId: compiled.id, commit: compiled.commit.slice(0, 12) });
    expect(status.compileCache.files).toBe(filesUnder(join(cache, head)).length);
  }, 900_000);

  it('seeds the next run from it: a change that keeps the model graph compiles nothing again, and a discarded run\'s snapshot goes', async () => {
    const retuned = await patchAndRun('a lower learning rate, the same graph', (text) => [changeConstant(text, 'MATRIX_LR', (v) => String(v / 2), 'smoke')]);
    const counters = cacheCounters(retuned.log);
    expect(counters.hits).toBeGreaterThan(0);
    expect(counters.misses).toBe(0);

    const head = readlinkSync(join(compileCacheDir(workspace), 'head'));
    const decided = await ok(server.client, 'commit_or_revert', { experiment_id: retuned.id, action: 'discard' });
    expect(decided.decision).toBe('discard');
    expect(existsSync(join(runDir(workspace, retuned.id), 'compile-snapshot'))).toBe(false);
    expect(readlinkSync(join(compileCacheDir(workspace), 'head'))).toBe(head);
  }, 900_000);
});
