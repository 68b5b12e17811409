import { execa } from 'execa';
import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { delimiter, isAbsolute, join, resolve } from 'node:path';
import { expandHome, PACKAGE_ROOT } from './paths.js';

export interface PythonInfo {
  path: string;
  torchVersion: string;
  cuda: boolean;
  gpuCount: number;
}

const PROBE = [
  'import json, torch, numpy',
  'cuda = torch.cuda.is_available()',
  'print(json.dumps({"torch": torch.__version__, "cuda": cuda, "gpus": torch.cuda.device_count() if cuda else 0}))',
].join('\n');

/** The oldest PyTorch the harness supports: upstream's pin; SDPA, rms_norm and torch.export are all there. */
export const MIN_TORCH = [2, 9] as const;

/** The command that makes a suitable environment (python/setup-venv.sh: a venv with torch 2.13.0). */
export const SETUP_PYTHON_COMMAND = `bash ${join(PACKAGE_ROOT, 'python', 'setup-venv.sh')}`;

export const PYTHON_SETUP_HELP =
  `No Python with PyTorch ${MIN_TORCH.join('.')} or newer and numpy was found. Make one with \`${SETUP_PYTHON_COMMAND}\` ` +
  '(`npm run setup:python` in a clone: a venv at python/.venv that the server finds by itself), ' +
  'or name an interpreter that has them with --python PATH or AUTORESEARCH_PYTHON.';

/** Why a torch version string (e.g. "1.13.0a0+git", "2.13.0+cpu") is too old for the harness, or undefined when it will do. */
export function torchVersionProblem(version: string, python: string): string | undefined {
  const match = /^(\d+)\.(\d+)/.exec(version);
  const [major, minor] = match ? [Number(match[1]), Number(match[2])] : [0, 0];
  if (major > MIN_TORCH[0] || (major === MIN_TORCH[0] && minor >= MIN_TORCH[1])) return undefined;
  return (
    `The Python at ${python} has torch ${version}; the harness needs PyTorch ${MIN_TORCH.join('.')} or newer. ` +
    `Make an environment with \`${SETUP_PYTHON_COMMAND}\`, or upgrade that one (\`${python} -m pip install 'torch>=${MIN_TORCH.join('.')}'\`).`
  );
}

/** Interpreters to try, in order: explicit choice, uv environments, PATH, the system Python. */
export function pythonCandidates(explicit?: string, workspace?: string): string[] {
  const candidates: string[] = [];
  if (explicit) candidates.push(explicit);
  if (process.env.AUTORESEARCH_PYTHON) candidates.push(expandHome(process.env.AUTORESEARCH_PYTHON));
  if (workspace) candidates.push(join(workspace, '.venv', 'bin', 'python'));
  candidates.push(join(PACKAGE_ROOT, 'python', '.venv', 'bin', 'python'));
  for (const dir of (process.env.PATH ?? '').split(delimiter).filter(Boolean)) {
    candidates.push(join(dir, 'python3'), join(dir, 'python'));
  }
  candidates.push('/usr/bin/python3');
  return [...new Set(candidates)];
}

export async function probePython(path: string): Promise<PythonInfo | undefined> {
  if (path.includes('/') && !existsSync(path)) return undefined;
  try {
    const { stdout } = await execa(path, ['-c', PROBE], { timeout: 60_000, stdin: 'ignore' });
    const info = JSON.parse(stdout.trim().split('\n').pop() ?? '{}');
    // A relative path is resolved now: the runs start it from other folders (a bare name stays a PATH lookup).
    return { path: path.includes('/') ? resolve(path) : path, torchVersion: info.torch, cuda: Boolean(info.cuda), gpuCount: Number(info.gpus ?? 0) };
  } catch {
    return undefined;
  }
}

/** Why a named interpreter cannot run at all (missing, a folder, not executable, not on PATH), or undefined when it can. */
export function missingInterpreter(path: string): string | undefined {
  if (path.startsWith('~')) return `The Python path ${path} starts with "~", which only a shell expands: write the absolute path.`;
  if (path.includes('/')) {
    if (!existsSync(path)) return `There is no Python at ${path}: the file does not exist${isAbsolute(path) ? '' : ` (relative to ${process.cwd()})`}.`;
    if (statSync(path).isDirectory()) return `${path} is a folder, not a Python interpreter: name the executable, e.g. ${join(path, 'bin', 'python')}.`;
    try {
      accessSync(path, constants.X_OK);
    } catch {
      return `${path} is not executable.`;
    }
    return undefined;
  }
  const onPath = (process.env.PATH ?? '').split(delimiter).filter(Boolean).some((dir) => existsSync(join(dir, path)));
  return onPath ? undefined : `There is no "${path}" on PATH.`;
}

/** The first candidate that imports torch 2.9+ and numpy; an explicit choice that fails is an error, not skipped. */
export async function findPython(explicit?: string, workspace?: string): Promise<PythonInfo> {
  if (explicit) {
    const missing = missingInterpreter(explicit);
    if (missing) throw new Error(`${missing} Name an interpreter with --python PATH or AUTORESEARCH_PYTHON, or leave both unset to search.`);
    const info = await probePython(explicit);
    if (!info) throw new Error(`The Python at ${explicit} is there but cannot import torch and numpy. ${PYTHON_SETUP_HELP}`);
    const old = torchVersionProblem(info.torchVersion, explicit);
    if (old) throw new Error(old);
    return info;
  }
  const fromEnv = process.env.AUTORESEARCH_PYTHON ? expandHome(process.env.AUTORESEARCH_PYTHON) : undefined;
  if (fromEnv) {
    const missing = missingInterpreter(fromEnv);
    if (missing) throw new Error(`AUTORESEARCH_PYTHON: ${missing}`);
  }
  let tooOld: string | undefined;
  for (const candidate of pythonCandidates(undefined, workspace)) {
    const info = await probePython(candidate);
    if (!info) continue;
    const old = torchVersionProblem(info.torchVersion, candidate);
    if (!old) return info;
    tooOld ??= old;
  }
  throw new Error(tooOld ?? PYTHON_SETUP_HELP);
}

/**
 * Why a workspace's recorded interpreter cannot train now (gone, or its torch too old), or
 * undefined. Reads the installed version without importing torch, so a server starts quickly.
 */
export async function recordedPythonProblem(python: string): Promise<string | undefined> {
  const missing = missingInterpreter(python);
  if (missing) return `The workspace's Python is gone: ${missing} ${PYTHON_SETUP_HELP}`;
  try {
    const { stdout } = await execa(python, ['-c', 'import importlib.metadata as m; print(m.version("torch"))'], { timeout: 30_000, stdin: 'ignore' });
    return torchVersionProblem(stdout.trim(), python);
  } catch {
    return `The workspace's Python at ${python} has no torch installed. ${PYTHON_SETUP_HELP}`;
  }
}
