import { copyFile, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TRAINER_DATA_FILES } from './sandbox.js';

/**
 * A run's folder `R = <state>/runs/<id>/` (docs/run-protocol.md, "Per run"). The server writes
 * the code and the spec; the supervisor writes the hand-over; the trainer sees only the code
 * (read-only) and its scratch.
 */
export interface RunFolder {
  root: string;
  /** train.py and prepare.py from the candidate commit's blobs: no .git, no worktree. */
  code: string;
  /** The trainer's cwd when unsandboxed (in the sandbox the scratch is a tmpfs the host never sees). */
  scratch: string;
  /** Written by the supervisor only: weights.pt, model.pt. */
  handover: string;
  /** Unsandboxed only: copies of the three data files the trainer may read (never the real data folder). */
  data: string;
  log: string;
  spec: string;
  /** Written by the supervisor only, sandboxed: the trainer's compile cache as it was before the first batch. */
  compileSnapshot: string;
}

export function runFolder(root: string): RunFolder {
  return {
    root,
    code: join(root, 'code'),
    scratch: join(root, 'scratch'),
    handover: join(root, 'handover'),
    data: join(root, 'data'),
    log: join(root, 'run.log'),
    spec: join(root, 'spec.json'),
    compileSnapshot: join(root, 'compile-snapshot'),
  };
}

export interface RunFolderContents {
  trainPy: string;
  preparePy: string;
  sandboxed: boolean;
  /** The host data folder (unsandboxed runs get copies of the trainer's data files from it). */
  dataDir: string;
}

/**
 * Writes R/code (read-only files), R/handover and, unsandboxed, R/scratch and R/data. Anything
 * a previous attempt left there is removed first; the log is kept (it is appended to). R/code and
 * R/handover themselves stay (emptied): a pre-started trainer's and evaluator's sandboxes have them
 * bound already, and see what is written there.
 */
export async function writeRunFolder(folder: RunFolder, contents: RunFolderContents): Promise<void> {
  await Promise.all([folder.scratch, folder.data, folder.spec].map((path) => rm(path, { recursive: true, force: true })));
  for (const dir of [folder.code, folder.handover]) {
    await mkdir(dir, { recursive: true });
    await Promise.all((await readdir(dir)).map((name) => rm(join(dir, name), { recursive: true, force: true })));
  }
  await writeFile(join(folder.code, 'train.py'), contents.trainPy, { mode: 0o444 });
  await writeFile(join(folder.code, 'prepare.py'), contents.preparePy, { mode: 0o444 });
  if (!contents.sandboxed) {
    await mkdir(folder.scratch, { recursive: true });
    await mkdir(folder.data, { recursive: true });
    for (const name of TRAINER_DATA_FILES) await copyFile(join(contents.dataDir, name), join(folder.data, name));
  }
}

/** What the server tells supervise.py (docs/run-protocol.md, "Phase 1"). */
export interface SupervisorSpec {
  trainer_argv: string[];
  trainer_env: Record<string, string>;
  /** Host cwd for the trainer process (R/scratch unsandboxed; bwrap sets its own with --chdir). */
  trainer_cwd: string;
  log_path: string;
  data_dir: string;
  scratch_host: string | null;
  handover_dir: string;
  seed: number;
  time_budget: number;
  budget_clock: 'wall' | 'cpu';
  budget_slack: number;
  startup_allowance: number;
  export_allowance: number;
  max_batch_tokens: number;
  /** Sandboxed: the trainer's compile cache folder inside its sandbox, and where the supervisor copies it before the first batch. */
  compile_cache: string | null;
  compile_snapshot: string | null;
}

export async function writeSpec(folder: RunFolder, spec: SupervisorSpec): Promise<void> {
  await writeFile(folder.spec, `${JSON.stringify(spec, null, 2)}\n`, { mode: 0o444 });
}

/** Removes what a finished run no longer needs (the unsandboxed scratch and data copies). */
export async function cleanRunFolder(folder: RunFolder): Promise<void> {
  await Promise.all([folder.scratch, folder.data].map((path) => rm(path, { recursive: true, force: true })));
}
