import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, writeFile } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { sha256File } from './hashing.js';
import { readManifest, type WorkspaceMeta } from './lab.js';
import { embeddedCorpusDir, stateDir, TEMPLATE_FILES } from './paths.js';
import { findPython } from './python.js';
import { Store } from './store.js';
import { BASELINE_BRANCH, WORKSPACE_GITIGNORE, Workspace } from './workspace.js';

export const PROFILES = ['cpu', 'gpu', 'smoke'] as const;
export type Profile = (typeof PROFILES)[number];

export interface InitOptions {
  profile: Profile;
  /** Corpus sources passed to prepare.py (files, folders, URL lists); default: the embedded corpus. */
  corpus?: string[];
  /** Use prepared data elsewhere instead of <workspace>/data (prepared there if missing). */
  dataDir?: string;
  python?: string;
  /** Show prepare.py's progress on our stderr (a terminal); the server's stdout is never used. */
  showProgress?: boolean;
}

/** Files whose hashes are pinned: the evaluation depends on each of them. */
export const EVALUATION_FILES = ['prepare.py', 'tokenizer.json', 'token_bytes.bin', 'val.bin'] as const;

/**
 * Creates a workspace: a git repository holding the templates on a baseline commit, prepared
 * data, and a state database with the evaluation files' hashes pinned.
 */
export async function createWorkspace(dir: string, options: InitOptions): Promise<WorkspaceMeta & { workspace: string }> {
  const workspace = resolve(dir);
  if (existsSync(join(stateDir(workspace), 'state.db'))) {
    throw new Error(`${workspace} is already a workspace. Serve it with: autoresearch-mcp serve --workspace ${workspace}`);
  }
  if (existsSync(workspace) && (await readdir(workspace)).length > 0) {
    throw new Error(`${workspace} exists and is not empty. Choose a new folder for the workspace.`);
  }
  const python = await findPython(options.python, workspace);
  await mkdir(workspace, { recursive: true });
  for (const [name, source] of Object.entries(TEMPLATE_FILES)) await copyFile(source, join(workspace, name));
  await writeFile(join(workspace, '.gitignore'), WORKSPACE_GITIGNORE);

  const ws = new Workspace(workspace);
  await ws.git.raw(['init', '--quiet', `--initial-branch=${BASELINE_BRANCH}`]);
  await ws.git.raw(['add', '--', 'prepare.py', 'train.py', 'program.md', '.gitignore']);
  await ws.git.raw(['commit', '--quiet', '-m', `baseline: autoresearch workspace (${options.profile} profile)`]);

  const dataDir = options.dataDir ? resolve(options.dataDir) : join(workspace, 'data');
  const args = [join(workspace, 'prepare.py'), '--profile', options.profile, '--data-dir', dataDir];
  const corpus = options.corpus ?? [];
  for (const source of corpus) args.push('--corpus', isAbsolute(source) || /^[\w-]+:/.test(source) || source === 'sotu' ? source : resolve(source));
  const sotu = embeddedCorpusDir();
  if (corpus.length === 0 && sotu) args.push('--sotu-dir', sotu);
  const prepared = await runCaptured(python.path, args, workspace, options.showProgress ?? false);
  if (prepared.exitCode !== 0) {
    const output = prepared.output.trim().split('\n').slice(-5).join('\n');
    throw new Error(`Data preparation failed (exit ${prepared.exitCode}):\n${output}`);
  }

  const manifest = await readManifest(dataDir);
  const pins: Record<string, string> = {};
  for (const name of EVALUATION_FILES) {
    const path = name === 'prepare.py' ? join(workspace, name) : join(dataDir, name);
    pins[name] = await sha256File(path);
    if (manifest.hashes?.[name] !== pins[name]) {
      throw new Error(`${path} does not match the hash in ${join(dataDir, 'manifest.json')}; re-run preparation with --force.`);
    }
  }
  const constants = manifest.constants ?? {};
  const meta: WorkspaceMeta = {
    profile: manifest.profile,
    timeBudget: Number(constants.TIME_BUDGET),
    dataDir,
    python: python.path,
    constants,
  };
  await mkdir(stateDir(workspace), { recursive: true });
  const store = Store.open(join(stateDir(workspace), 'state.db'));
  try {
    store.setMeta('workspace', meta);
    store.setPins(pins);
  } finally {
    store.close();
  }
  return { ...meta, workspace };
}

/** Runs a command with stdout and stderr sent to our stderr (live) or captured; never to stdout. */
function runCaptured(command: string, args: string[], cwd: string, live: boolean): Promise<{ exitCode: number | null; output: string }> {
  return new Promise((resolvePromise) => {
    const child = spawn(command, args, { cwd, stdio: ['ignore', live ? 2 : 'pipe', live ? 2 : 'pipe'] });
    let output = '';
    child.stdout?.on('data', (chunk) => (output += chunk));
    child.stderr?.on('data', (chunk) => (output += chunk));
    child.on('error', (error) => resolvePromise({ exitCode: -1, output: error.message }));
    child.on('close', (exitCode) => resolvePromise({ exitCode, output: live ? 'see the output above' : output }));
  });
}
