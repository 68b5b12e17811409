import { execa } from 'execa';
import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { delimiter, isAbsolute, join } from 'node:path';
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

export const PYTHON_SETUP_HELP =
  'No Python that can import torch and numpy was found. On Debian/Ubuntu: ' +
  '`apt-get install -y python3-torch libopenblas0-pthread` as root, or with sudo (OpenBLAS makes CPU training 10x faster). ' +
  'With uv: `cd python && uv sync`. Or name an interpreter with --python PATH or AUTORESEARCH_PYTHON.';

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
    return { path, torchVersion: info.torch, cuda: Boolean(info.cuda), gpuCount: Number(info.gpus ?? 0) };
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

/** The first candidate that imports torch; an explicit choice that fails is an error, not skipped. */
export async function findPython(explicit?: string, workspace?: string): Promise<PythonInfo> {
  if (explicit) {
    const missing = missingInterpreter(explicit);
    if (missing) throw new Error(`${missing} Name an interpreter with --python PATH or AUTORESEARCH_PYTHON, or leave both unset to search.`);
    const info = await probePython(explicit);
    if (!info) throw new Error(`The Python at ${explicit} is there but cannot import torch and numpy. ${PYTHON_SETUP_HELP}`);
    return info;
  }
  const fromEnv = process.env.AUTORESEARCH_PYTHON ? expandHome(process.env.AUTORESEARCH_PYTHON) : undefined;
  if (fromEnv) {
    const missing = missingInterpreter(fromEnv);
    if (missing) throw new Error(`AUTORESEARCH_PYTHON: ${missing}`);
  }
  for (const candidate of pythonCandidates(undefined, workspace)) {
    const info = await probePython(candidate);
    if (info) return info;
  }
  throw new Error(PYTHON_SETUP_HELP);
}
