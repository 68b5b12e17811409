import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { PACKAGE_ROOT } from './paths.js';

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
  '`sudo apt-get install -y python3-torch libopenblas0-pthread` (OpenBLAS makes CPU training 10x faster). ' +
  'With uv: `cd python && uv sync`. Or name an interpreter with --python PATH or AUTORESEARCH_PYTHON.';

/** Interpreters to try, in order: explicit choice, uv environments, PATH, the system Python. */
export function pythonCandidates(explicit?: string, workspace?: string): string[] {
  const candidates: string[] = [];
  if (explicit) candidates.push(explicit);
  if (process.env.AUTORESEARCH_PYTHON) candidates.push(process.env.AUTORESEARCH_PYTHON);
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

/** The first candidate that imports torch; an explicit choice that fails is an error, not skipped. */
export async function findPython(explicit?: string, workspace?: string): Promise<PythonInfo> {
  if (explicit) {
    const info = await probePython(explicit);
    if (!info) throw new Error(`The Python at ${explicit} cannot import torch and numpy. ${PYTHON_SETUP_HELP}`);
    return info;
  }
  for (const candidate of pythonCandidates(undefined, workspace)) {
    const info = await probePython(candidate);
    if (info) return info;
  }
  throw new Error(PYTHON_SETUP_HELP);
}
