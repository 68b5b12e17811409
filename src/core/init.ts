import { spawn } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { copyFile, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { sha256File } from './hashing.js';
import { readManifest, type WorkspaceMeta } from './lab.js';
import { embeddedCorpusDir, HARNESS_FILES, harnessDir, PREPARE_DATA_SCRIPT, stateDir, TEMPLATE_FILES } from './paths.js';
import { findPython } from './python.js';
import { Store } from './store.js';
import { BASELINE_BRANCH, WORKSPACE_GITIGNORE, Workspace } from './workspace.js';

export const PROFILES = ['cpu', 'gpu', 'smoke'] as const;
export type Profile = (typeof PROFILES)[number];

export interface InitOptions {
  profile: Profile;
  /** Corpus sources passed to prepare_data.py (files, folders, URL lists); default: the embedded corpus. */
  corpus?: string[];
  /** Use prepared data elsewhere instead of <workspace>/data (prepared there if missing). */
  dataDir?: string;
  python?: string;
  /** Show prepare_data.py's progress on our stderr (a terminal); the server's stdout is never used. */
  showProgress?: boolean;
}

/** Data files whose hashes are pinned (the evaluation and the training data depend on each). */
export const PINNED_DATA_FILES = ['tokenizer.json', 'token_bytes.bin', 'val.bin', 'train.bin', 'manifest.json'] as const;

/**
 * Every pinned name: the harness copies (`harness/<file>` under <state>/harness), the data files,
 * and `prepare.py`, the workspace's own committed copy (a candidate's blob must equal it).
 */
export const EVALUATION_FILES = [
  ...Object.keys(HARNESS_FILES).map((name) => `harness/${name}`),
  ...PINNED_DATA_FILES,
  'prepare.py',
] as const;

/**
 * Creates a workspace: a git repository holding the templates on a baseline commit, prepared
 * data, and a state database with the evaluation files' hashes pinned. A failed init leaves
 * nothing behind (so init can simply run again): what it created in a folder that was new or
 * empty is removed; a non-empty folder is refused before anything is written. Data prepared
 * in a separate --data-dir stays (a resumable download keeps what it fetched).
 */
export async function createWorkspace(dir: string, options: InitOptions): Promise<WorkspaceMeta & { workspace: string }> {
  const workspace = resolve(dir);
  let created = workspace; // the topmost folder init will create, if the workspace does not exist yet
  while (!existsSync(dirname(created)) && dirname(created) !== created) created = dirname(created);
  const existed = existsSync(workspace);
  const emptyBefore = existed && statSync(workspace).isDirectory() && (await readdir(workspace)).length === 0;
  try {
    return await buildWorkspace(dir, options);
  } catch (error) {
    if (!existed && existsSync(created)) await rm(created, { recursive: true, force: true });
    else if (emptyBefore) for (const entry of await readdir(workspace)) await rm(join(workspace, entry), { recursive: true, force: true });
    throw error;
  }
}

async function buildWorkspace(dir: string, options: InitOptions): Promise<WorkspaceMeta & { workspace: string }> {
  const workspace = resolve(dir);
  if (existsSync(join(stateDir(workspace), 'state.db'))) {
    throw new Error(`${workspace} is already a workspace. Serve it with: autoresearch-mcp serve --workspace ${workspace}`);
  }
  if (existsSync(workspace) && (await readdir(workspace)).length > 0) {
    throw new Error(`${workspace} exists and is not empty. Choose a new folder for the workspace.`);
  }
  for (const source of [...Object.values(HARNESS_FILES), PREPARE_DATA_SCRIPT]) {
    if (!existsSync(source)) throw new Error(`The installed package lacks ${source}; reinstall autoresearch-mcp.`);
  }
  const python = await findPython(options.python, workspace);
  await mkdir(workspace, { recursive: true });
  for (const [name, source] of Object.entries(TEMPLATE_FILES)) await copyFile(source, join(workspace, name));
  await writeFile(join(workspace, '.gitignore'), WORKSPACE_GITIGNORE);

  const ws = new Workspace(workspace);
  await ws.git.raw(['init', '--quiet', `--initial-branch=${BASELINE_BRANCH}`]);
  await ws.git.raw(['add', '--', 'prepare.py', 'train.py', 'program.md', '.gitignore']);
  await ws.git.raw(['commit', '--quiet', '-m', `baseline: autoresearch workspace (${options.profile} profile)`]);

  // The harness copies the runs use, beside the state (never visible to a run).
  const harness = harnessDir(workspace);
  await mkdir(harness, { recursive: true });
  for (const [name, source] of Object.entries(HARNESS_FILES)) await copyFile(source, join(harness, name));

  const dataDir = options.dataDir ? resolve(options.dataDir) : join(workspace, 'data');
  const args = [PREPARE_DATA_SCRIPT, '--profile', options.profile, '--data-dir', dataDir];
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
  for (const name of PINNED_DATA_FILES) {
    const path = join(dataDir, name);
    if (!existsSync(path)) throw new Error(`Data preparation did not write ${path}; re-run preparation with --force.`);
    pins[name] = await sha256File(path);
    // The manifest lists the hashes of the files it describes (not its own).
    const listed = manifest.hashes?.[name];
    if (listed !== undefined && listed !== pins[name]) {
      throw new Error(`${path} does not match the hash in ${join(dataDir, 'manifest.json')}; re-run preparation with --force.`);
    }
  }
  for (const name of Object.keys(HARNESS_FILES)) pins[`harness/${name}`] = await sha256File(join(harness, name));
  pins['prepare.py'] = await sha256File(join(workspace, 'prepare.py'));
  if (pins['prepare.py'] !== pins['harness/prepare.py']) {
    throw new Error(`${join(workspace, 'prepare.py')} differs from the harness copy ${join(harness, 'prepare.py')}; the package is damaged: reinstall autoresearch-mcp.`);
  }
  const constants = manifest.constants ?? {};
  const meta: WorkspaceMeta = {
    profile: manifest.profile,
    timeBudget: Number(constants.TIME_BUDGET),
    dataDir,
    python: python.path,
    constants,
  };
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
