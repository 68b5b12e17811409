import { execFile } from 'node:child_process';
import { existsSync, lstatSync, readlinkSync, realpathSync } from 'node:fs';
import { delimiter, isAbsolute, join, relative, resolve } from 'node:path';

/**
 * bubblewrap command lines for the two sandboxes of a run (docs/run-protocol.md, "Sandbox").
 * Building the argv is pure: every fact about the host (which system folders exist, which are
 * symlinks, which device nodes exist, where Python lives) comes in through `HostFacts`, so the
 * tests can state exactly what is and is not bound. `hostFacts()` reads them from this machine.
 */

/** Where things appear inside the trainer's sandbox. */
export const TRAINER_CODE = '/sandbox/code';
export const TRAINER_DATA = '/sandbox/data';
export const TRAINER_SCRATCH = '/sandbox/scratch';
export const TRAINER_PRESTART = '/sandbox/prestart.py';
/** The workspace's compile cache, read-only (compile-cache.ts). */
export const TRAINER_COMPILE_SEED = '/sandbox/compile-cache';
/** The run's own compile cache, in the sandbox's private /tmp: the supervisor copies it out before the first batch. */
export const TRAINER_COMPILE_CACHE = '/tmp/compile-cache';
/** Where things appear inside the evaluator's sandbox. */
export const EVAL_ROOT = '/eval';
export const EVAL_IN = '/eval/in';
export const EVAL_DATA = '/eval/data';

/** Data files the trainer may read (never val.bin or train.bin: batches come over the channel). */
export const TRAINER_DATA_FILES = ['tokenizer.json', 'token_bytes.bin', 'manifest.json'] as const;
/** Data files the evaluator reads. */
export const EVAL_DATA_FILES = ['val.bin', 'token_bytes.bin', 'tokenizer.json', 'manifest.json'] as const;
/** Harness files the evaluator runs (evaluate.py imports batches.py from its own folder). */
export const EVAL_HARNESS_FILES = ['evaluate.py', 'batches.py'] as const;

/** System folders bound read-only when they exist (python and its libraries need them). */
export const SYSTEM_DIRS = ['/usr', '/bin', '/sbin', '/lib', '/lib64', '/lib32', '/etc'] as const;
/** Files under /etc hidden behind /dev/null: nothing in a run needs password hashes. */
export const MASKED_FILES = ['/etc/shadow', '/etc/gshadow', '/etc/shadow-', '/etc/gshadow-'] as const;
/** CUDA device nodes shared by all GPUs; the per-GPU node /dev/nvidia<N> is added per slot. */
export const CUDA_SHARED_NODES = ['/dev/nvidiactl', '/dev/nvidia-uvm', '/dev/nvidia-uvm-tools'] as const;
/** Per-GPU nodes a host may have: /dev/nvidia0 ... /dev/nvidia63 (hostFacts looks for the same). */
export const CUDA_GPU_NODES = Array.from({ length: 64 }, (_, index) => `/dev/nvidia${index}`);

export interface HostFacts {
  /** Absolute path of the bwrap binary. */
  bwrap: string;
  /** Each existing system folder: a real folder (bound) or a symlink (recreated as the same symlink). */
  systemDirs: { path: string; symlinkTo?: string }[];
  /** Masked files that exist. */
  maskedFiles: string[];
  /** Device nodes that exist (only CUDA ones matter). */
  devices: string[];
}

export interface PythonLayout {
  /** The interpreter to execute (sys.executable, never a shim script). */
  executable: string;
  /** Real folders outside the system folders that the interpreter needs (sys.prefix, base_prefix ...). */
  prefixes: string[];
}

export interface TrainerLayout {
  /** Host folder holding train.py and prepare.py (R/code). */
  codeDir: string;
  /** Host data folder; only TRAINER_DATA_FILES are bound from it. */
  dataDir: string;
  /** The slot's CUDA devices (CUDA_VISIBLE_DEVICES value, e.g. "0"), undefined on CPU. */
  cudaDevices?: string;
  /** The GPUs are a Slurm job's, chosen in the job: see jobCudaBinds. `cudaDevices` is then not read. */
  jobGpus?: boolean;
  /** Size limit of the scratch tmpfs (and of the private /tmp). */
  scratchBytes: number;
  python: PythonLayout;
  /** The environment inside (already complete: --clearenv drops everything else). */
  env: Record<string, string>;
  /**
   * Host paths that must not be visible inside (workspace, state folder, data folder). A broad
   * bind (system folder, python prefix) that contains one of them is refused.
   */
  forbidden?: string[];
  /**
   * Host path of prestart.py: the trainer starts as `python -u /sandbox/prestart.py
   * /sandbox/code/train.py`, imports torch and waits for the supervisor's `go` (a pre-started trainer).
   */
  prestart?: string;
  /** Host folder of the workspace's compile cache, bound read-only at TRAINER_COMPILE_SEED. */
  compileCache?: string;
}

export interface EvaluatorLayout {
  /** Host R/handover (model.pt, weights.pt). */
  handoverDir: string;
  dataDir: string;
  /** Host folder holding the pinned evaluate.py and batches.py. */
  harnessDir: string;
  cudaDevices?: string;
  jobGpus?: boolean;
  python: PythonLayout;
  env: Record<string, string>;
  /** Arguments after `python /eval/evaluate.py`. */
  args: string[];
  forbidden?: string[];
  /** Size limit of the private /tmp. */
  tmpBytes?: number;
}

const DEFAULT_TMP_BYTES = 1 << 30;

/** True when `inner` is `outer` or lies under it (both absolute, normalised). */
export function isWithin(inner: string, outer: string): boolean {
  const rel = relative(resolve(outer), resolve(inner));
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}

/** The options shared by both sandboxes: namespaces, system folders, python, /proc, /dev, /tmp, GPU nodes. */
function baseArgs(facts: HostFacts, python: PythonLayout, gpus: { cudaDevices?: string; jobGpus?: boolean }, tmpBytes: number, forbidden: string[]): string[] {
  const args = ['--unshare-all', '--die-with-parent', '--new-session', '--cap-drop', 'ALL', '--clearenv'];
  // The private /tmp comes first: binds made after it (a Python whose venv lives under /tmp) stay visible.
  args.push('--proc', '/proc', '--dev', '/dev', '--size', String(tmpBytes), '--tmpfs', '/tmp');
  const broad: string[] = [];
  for (const dir of facts.systemDirs) {
    if (dir.symlinkTo !== undefined) args.push('--symlink', dir.symlinkTo, dir.path);
    else {
      args.push('--ro-bind', dir.path, dir.path);
      broad.push(dir.path);
    }
  }
  for (const prefix of python.prefixes) {
    if (broad.some((dir) => isWithin(prefix, dir))) continue;
    args.push('--ro-bind', prefix, prefix);
    broad.push(prefix);
  }
  for (const path of forbidden) {
    const exposing = broad.find((dir) => isWithin(path, dir));
    if (exposing) {
      throw new Error(
        `${path} lies under ${exposing}, which the sandbox binds read-only: a run could read it. Move the workspace (and its data) outside ${exposing}.`,
      );
    }
  }
  for (const file of facts.maskedFiles) args.push('--ro-bind', '/dev/null', file);
  if (gpus.jobGpus) args.push(...jobCudaBinds());
  else for (const node of cudaNodes(facts, gpus.cudaDevices)) args.push('--dev-bind', node, node);
  return args;
}

/**
 * The CUDA nodes of a Slurm GPU job's sandbox: `--dev-bind-try` of every node a GPU node may have
 * (the shared ones and /dev/nvidia0-63), whichever exist where the job runs. This server (a login
 * node) may have no GPU, and cannot know the job's: the node's device cgroup (Slurm's
 * ConstrainDevices) is what limits which of them the job, and so its sandbox, may open; the
 * sandbox sees exactly what the job sees.
 */
export function jobCudaBinds(): string[] {
  return [...CUDA_SHARED_NODES, ...CUDA_GPU_NODES].flatMap((node) => ['--dev-bind-try', node, node]);
}

/** Device nodes for the slot's GPUs only (none on a CPU slot). */
export function cudaNodes(facts: HostFacts, cudaDevices: string | undefined): string[] {
  if (cudaDevices === undefined) return [];
  const indices = cudaDevices
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const index of indices) {
    if (!/^\d+$/.test(index)) throw new Error(`a GPU slot needs device indices like "0" or "0,1"; got "${cudaDevices}"`);
  }
  const wanted = [...indices.map((index) => `/dev/nvidia${index}`), ...CUDA_SHARED_NODES];
  return wanted.filter((node) => facts.devices.includes(node));
}

function envArgs(env: Record<string, string>): string[] {
  const args: string[] = [];
  for (const [key, value] of Object.entries(env)) args.push('--setenv', key, value);
  return args;
}

/**
 * The trainer: `bwrap ... -- python -u /sandbox/code/train.py`. It sees the code read-only,
 * three small data files read-only, a size-limited scratch tmpfs as its cwd and only writable
 * place (besides its private /tmp), no network, its own pid namespace, only its slot's GPU.
 */
export function trainerArgv(facts: HostFacts, layout: TrainerLayout): string[] {
  const args = [facts.bwrap, ...baseArgs(facts, layout.python, layout, layout.scratchBytes, layout.forbidden ?? [])];
  args.push('--ro-bind', layout.codeDir, TRAINER_CODE);
  if (layout.prestart) args.push('--ro-bind', layout.prestart, TRAINER_PRESTART);
  if (layout.compileCache) args.push('--ro-bind', layout.compileCache, TRAINER_COMPILE_SEED);
  for (const name of TRAINER_DATA_FILES) args.push('--ro-bind', join(layout.dataDir, name), `${TRAINER_DATA}/${name}`);
  args.push('--size', String(layout.scratchBytes), '--tmpfs', TRAINER_SCRATCH);
  // The sandbox's root is a tmpfs bwrap builds; once every mount point exists it becomes read-only.
  args.push('--remount-ro', '/', '--chdir', TRAINER_SCRATCH);
  args.push(...envArgs(layout.env));
  args.push('--', layout.python.executable, '-u', ...(layout.prestart ? [TRAINER_PRESTART] : []), `${TRAINER_CODE}/train.py`);
  return args;
}

/**
 * The evaluator: `bwrap ... -- python /eval/evaluate.py ARGS`. It reads the hand-over and the
 * validation data read-only, has no scratch and no network; its result goes to fd 3 (inherited).
 */
export function evaluatorArgv(facts: HostFacts, layout: EvaluatorLayout): string[] {
  const args = [facts.bwrap, ...baseArgs(facts, layout.python, layout, layout.tmpBytes ?? DEFAULT_TMP_BYTES, layout.forbidden ?? [])];
  for (const name of EVAL_HARNESS_FILES) args.push('--ro-bind', join(layout.harnessDir, name), `${EVAL_ROOT}/${name}`);
  args.push('--ro-bind', layout.handoverDir, EVAL_IN);
  for (const name of EVAL_DATA_FILES) args.push('--ro-bind', join(layout.dataDir, name), `${EVAL_DATA}/${name}`);
  args.push('--remount-ro', '/', '--chdir', '/tmp');
  args.push(...envArgs(layout.env));
  args.push('--', layout.python.executable, `${EVAL_ROOT}/evaluate.py`, ...layout.args);
  return args;
}

// ---- facts about this machine --------------------------------------------------------------

/** bwrap on PATH (or the usual places), or undefined. */
export function findBwrap(path = process.env.PATH ?? ''): string | undefined {
  for (const dir of [...path.split(delimiter).filter(Boolean), '/usr/bin', '/bin', '/usr/local/bin']) {
    const candidate = join(dir, 'bwrap');
    if (existsSync(candidate)) return candidate;
  }
  return undefined;
}

/** Reads which system folders, masked files and CUDA nodes exist here. */
export function hostFacts(bwrap: string): HostFacts {
  const systemDirs: HostFacts['systemDirs'] = [];
  for (const path of SYSTEM_DIRS) {
    let info;
    try {
      info = lstatSync(path);
    } catch {
      continue;
    }
    if (info.isSymbolicLink()) {
      // A merged-/usr system: /bin -> usr/bin. Recreate the link; its target is bound on its own.
      if (existsSync(path)) systemDirs.push({ path, symlinkTo: readlinkSync(path) });
    } else if (info.isDirectory()) systemDirs.push({ path });
  }
  const maskedFiles = MASKED_FILES.filter((file) => existsSync(file));
  const devices: string[] = [];
  for (const node of CUDA_SHARED_NODES) if (existsSync(node)) devices.push(node);
  for (const node of CUDA_GPU_NODES) if (existsSync(node)) devices.push(node);
  return { bwrap, systemDirs, maskedFiles, devices };
}

const PYTHON_PROBE = 'import sys, json; print(json.dumps([sys.executable, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]))';

/**
 * Where the interpreter really lives: sys.executable (a pyenv shim resolves to the real binary)
 * and the real folders of its prefixes, so a venv or pyenv outside /usr is bound read-only too.
 */
export async function probePythonLayout(python: string): Promise<PythonLayout> {
  const stdout = await new Promise<string>((resolvePromise, reject) => {
    execFile(python, ['-c', PYTHON_PROBE], { timeout: 60_000 }, (error, out) => (error ? reject(error) : resolvePromise(out)));
  });
  const [executable, ...prefixes] = JSON.parse(stdout.trim().split('\n').pop() ?? '[]') as string[];
  if (!executable) throw new Error(`${python} did not report sys.executable`);
  const real = new Set<string>();
  for (const prefix of prefixes) {
    if (!prefix || !existsSync(prefix)) continue;
    real.add(prefix);
    real.add(realpathSync(prefix));
  }
  // The executable itself may be a symlink out of its prefix (a venv's bin/python -> /opt/...).
  const exeReal = realpathSync(executable);
  if (![...real].some((prefix) => isWithin(exeReal, prefix))) real.add(resolve(exeReal, '..', '..'));
  return { executable, prefixes: [...real].sort() };
}

/** Drops prefixes already covered by real (non-symlink) system folders. */
export function outsideSystemDirs(layout: PythonLayout, facts: HostFacts): PythonLayout {
  const bound = facts.systemDirs.filter((dir) => dir.symlinkTo === undefined).map((dir) => dir.path);
  return { ...layout, prefixes: layout.prefixes.filter((prefix) => !bound.some((dir) => isWithin(prefix, dir))) };
}

let availability: Promise<string | undefined> | undefined;

/**
 * Why no sandbox can be made here (probed once per process): undefined when bubblewrap works,
 * else one line naming the package and the flag.
 */
export function sandboxProblem(): Promise<string | undefined> {
  availability ??= new Promise((resolvePromise) => {
    const bwrap = findBwrap();
    if (!bwrap) return resolvePromise(NO_SANDBOX_MESSAGE);
    execFile(bwrap, ['--unshare-all', '--die-with-parent', '--ro-bind', '/', '/', 'true'], { timeout: 30_000 }, (error, _out, stderr) =>
      resolvePromise(
        error
          ? `bubblewrap (${bwrap}) cannot create a sandbox here (${String(stderr).trim() || error.message}): allow unprivileged user namespaces or run as root, or start with --unsandboxed to run without a sandbox (results are marked unverified)`
          : undefined,
      ),
    );
  });
  return availability;
}

/** Whether bubblewrap can make a sandbox here. */
export async function sandboxAvailable(): Promise<boolean> {
  return (await sandboxProblem()) === undefined;
}

export const NO_SANDBOX_MESSAGE =
  'bubblewrap is not installed: install the Debian package `bubblewrap` (apt-get install bubblewrap), or start with --unsandboxed to run without a sandbox (results are marked unverified)';
