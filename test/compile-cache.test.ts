import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CompileCache, compileCacheEnv } from '../src/core/compile-cache.js';
import { TRAINER_COMPILE_CACHE, TRAINER_COMPILE_SEED } from '../src/core/sandbox.js';

/** A commit id made from a number. */
const COMMIT = (n: number) => String(n).repeat(40).slice(0, 40);

function snapshot(root: string, name: string, content: string): string {
  const dir = join(root, name);
  mkdirSync(join(dir, 'inductor'), { recursive: true });
  writeFileSync(join(dir, 'inductor', 'entry'), content);
  return dir;
}

describe('CompileCache', () => {
  it('promotes a snapshot by renaming it in and pointing head at it; keeps the previous version, removes older ones', async () => {
    const root = mkdtempSync(join(tmpdir(), 'ar-cc-'));
    const cache = new CompileCache(join(root, 'cache'));
    await cache.ensure();
    expect(await cache.promote(join(root, 'absent'), COMMIT(1), 1)).toBe(false);
    expect(readdirSync(cache.dir)).toEqual([]);
    expect(cache.describe()).toBeNull();

    for (const id of [1, 2, 3]) {
      const snap = snapshot(root, `snap${id}`, `run ${id}`);
      expect(await cache.promote(snap, COMMIT(id), id)).toBe(true);
      expect(existsSync(snap)).toBe(false);
      expect(readFileSync(join(cache.dir, 'head', 'inductor', 'entry'), 'utf8')).toBe(`run ${id}`);
    }
    const head = readlinkSync(join(cache.dir, 'head'));
    expect(head).toMatch(new RegExp(`^${COMMIT(3).slice(0, 12)}-e3-[0-9a-f]{8}$`));
    expect(cache.describe()).toEqual({ experimentId: 3, commit: COMMIT(3).slice(0, 12), files: 1, bytes: 'run 3'.length });
    const versions = readdirSync(cache.dir).filter((name) => name !== 'head').sort();
    expect(versions).toHaveLength(2);
    expect(versions).toContain(head);
    expect(versions.find((v) => v !== head)).toMatch(new RegExp(`^${COMMIT(2).slice(0, 12)}-e2-`));
  });

  it('drops a snapshot of the commit the cache already comes from (another run of the head) instead of replacing it', async () => {
    const root = mkdtempSync(join(tmpdir(), 'ar-cc-'));
    const cache = new CompileCache(join(root, 'cache'));
    expect(await cache.promote(snapshot(root, 'first', 'first run'), COMMIT(7), 1)).toBe(true);
    const head = readlinkSync(join(cache.dir, 'head'));
    const again = snapshot(root, 'noise', 'noise run');
    expect(await cache.promote(again, COMMIT(7), 2)).toBe(false);
    expect(existsSync(again)).toBe(false);
    expect(readlinkSync(join(cache.dir, 'head'))).toBe(head);
    expect(readFileSync(join(cache.dir, 'head', 'inductor', 'entry'), 'utf8')).toBe('first run');
  });

  it('drops a snapshot, and runs its changes one at a time', async () => {
    const root = mkdtempSync(join(tmpdir(), 'ar-cc-'));
    const cache = new CompileCache(join(root, 'cache'));
    const snaps = [1, 2, 3, 4].map((id) => snapshot(root, `snap${id}`, `run ${id}`));
    const results = await Promise.all([cache.promote(snaps[0], COMMIT(1), 1), cache.drop(snaps[1]), cache.promote(snaps[2], COMMIT(3), 3), cache.promote(snaps[3], COMMIT(4), 4)]);
    expect(results).toEqual([true, undefined, true, true]);
    expect(existsSync(snaps[1])).toBe(false);
    expect(readFileSync(join(cache.dir, 'head', 'inductor', 'entry'), 'utf8')).toBe('run 4');
    expect(readdirSync(cache.dir).filter((name) => name !== 'head')).toHaveLength(2);
  });

  it('points the sandboxed compilers into the run\'s own folder and prepare.py at the read-only head', () => {
    const env = compileCacheEnv();
    expect(env.AUTORESEARCH_COMPILE_SEED).toBe(`${TRAINER_COMPILE_SEED}/head`);
    for (const key of ['AUTORESEARCH_COMPILE_CACHE', 'TORCHINDUCTOR_CACHE_DIR', 'TRITON_CACHE_DIR']) expect(env[key].startsWith(TRAINER_COMPILE_CACHE)).toBe(true);
    expect(TRAINER_COMPILE_CACHE.startsWith('/tmp/')).toBe(true);
  });
});
