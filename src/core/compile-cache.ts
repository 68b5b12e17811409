import { existsSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { mkdir, readdir, readlink, rename, rm, symlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { TRAINER_COMPILE_CACHE, TRAINER_COMPILE_SEED } from './sandbox.js';

/**
 * The workspace's compile cache (docs/architecture.md, "Compile cache"): the compiler caches
 * (Inductor's, Triton's) that the head's own run had before its first batch, so that a candidate
 * whose model graph is the head's does not compile it again.
 *
 * How it is kept honest: a sandboxed trainer sees this folder read-only (TRAINER_COMPILE_SEED);
 * prepare.py copies its `head` version into the run's own cache folder in the sandbox's private
 * /tmp (TRAINER_COMPILE_CACHE), which the compilers use. Just before the first batch, the
 * supervisor copies that folder out as the run's snapshot (R/compile-snapshot); what is written
 * once training data has been served never leaves the sandbox. A snapshot becomes the cache only
 * when its run's commit is or becomes the head (promoteSnapshot); every other one is dropped.
 */

/** The link in the cache folder naming the current version (a folder beside it). */
const HEAD_LINK = 'head';

/** A version's folder name: `<commit, 12 hex>-e<experiment>-<8 hex>`. */
function versionName(commit: string, experimentId: number): string {
  return `${commit.slice(0, 12)}-e${experimentId}-${randomBytes(4).toString('hex')}`;
}

/** The commit and experiment a version's folder name says it comes from, or undefined. */
function versionOf(name: string | undefined): { commit: string; experimentId: number } | undefined {
  const named = name === undefined ? null : /^([0-9a-f]{12})-e(\d+)-[0-9a-f]{8}$/.exec(name);
  return named ? { commit: named[1], experimentId: Number(named[2]) } : undefined;
}

/** What the cache holds now: whose run it comes from and its size. */
export interface CompileCacheView {
  experimentId: number;
  commit: string;
  files: number;
  bytes: number;
}

/** The sandboxed trainer's environment for the cache: prepare.py seeds, the compilers use it. */
export function compileCacheEnv(): Record<string, string> {
  return {
    AUTORESEARCH_COMPILE_SEED: `${TRAINER_COMPILE_SEED}/${HEAD_LINK}`,
    AUTORESEARCH_COMPILE_CACHE: TRAINER_COMPILE_CACHE,
    TORCHINDUCTOR_CACHE_DIR: `${TRAINER_COMPILE_CACHE}/inductor`,
    TRITON_CACHE_DIR: `${TRAINER_COMPILE_CACHE}/triton`,
  };
}

/**
 * Compile-cache changes of one workspace, one at a time: a promotion renames the snapshot in as
 * a new version, points `head` at it (through a rename, so a reader sees the old or the new
 * version), and removes the versions before the previous one (a trainer may still be copying it).
 */
export class CompileCache {
  private chain: Promise<unknown> = Promise.resolve();

  constructor(readonly dir: string) {}

  /** The current version, or null while the cache is empty. */
  describe(): CompileCacheView | null {
    let version: string;
    try {
      version = readlinkSync(join(this.dir, HEAD_LINK));
    } catch {
      return null;
    }
    const source = versionOf(version);
    if (!source) return null;
    let files = 0;
    let bytes = 0;
    try {
      for (const entry of readdirSync(join(this.dir, version), { recursive: true, withFileTypes: true })) {
        if (!entry.isFile()) continue;
        files += 1;
        bytes += statSync(join(entry.parentPath, entry.name)).size;
      }
    } catch {
      return null; // replaced while being counted
    }
    return { ...source, files, bytes };
  }

  /** The folder exists before any sandbox binds it. */
  async ensure(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
  }

  /**
   * Makes the snapshot (if the run left one) the cache; true when it did. A snapshot of the
   * commit the cache already comes from (another run of the head) is dropped instead: the same
   * graphs, and no churn under trainers still copying the current version.
   */
  promote(snapshot: string, commit: string, experimentId: number): Promise<boolean> {
    return this.serialized(async () => {
      if (!existsSync(snapshot)) return false;
      const current = await readlink(join(this.dir, HEAD_LINK)).catch(() => undefined);
      if (versionOf(current)?.commit === commit.slice(0, 12)) {
        await rm(snapshot, { recursive: true, force: true });
        return false;
      }
      await this.ensure();
      const version = versionName(commit, experimentId);
      await rename(snapshot, join(this.dir, version));
      const link = join(this.dir, `.${HEAD_LINK}-${version}`);
      await symlink(version, link);
      await rename(link, join(this.dir, HEAD_LINK));
      for (const entry of await readdir(this.dir)) {
        if (entry !== HEAD_LINK && entry !== version && entry !== current) await rm(join(this.dir, entry), { recursive: true, force: true });
      }
      return true;
    });
  }

  /** Removes a snapshot that will never be the cache (if that fails, the run's next attempt replaces it). */
  drop(snapshot: string): Promise<void> {
    return this.serialized(() => rm(snapshot, { recursive: true, force: true }).catch(() => undefined));
  }

  private serialized<T>(step: () => Promise<T>): Promise<T> {
    const next = this.chain.then(step, step);
    this.chain = next.catch(() => undefined);
    return next;
  }
}
