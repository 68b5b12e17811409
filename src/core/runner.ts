import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { sha256File } from './hashing.js';

/** Progress parsed from train.py's `step 00042 (12.3%) | loss: 4.123456 | ...` lines. */
export interface RunProgress {
  step: number;
  percent: number;
  loss: number;
}

/** The summary block train.py prints; informative only, never the source of val_bpb. */
export type Summary = Partial<Record<(typeof SUMMARY_KEYS)[number], number>>;
export const SUMMARY_KEYS = [
  'val_bpb',
  'training_seconds',
  'total_seconds',
  'peak_vram_mb',
  'mfu_percent',
  'total_tokens_M',
  'num_steps',
  'num_params_M',
  'depth',
] as const;

export interface ResultRecord {
  val_bpb: number;
  eval_tokens: number;
  eval_bytes: number;
  eval_seconds?: number;
  nonce: string | null;
  hashes: Record<string, string>;
  [key: string]: unknown;
}

export type RunStatus = 'succeeded' | 'crashed' | 'timed_out' | 'cancelled' | 'rejected';

export interface RunOutcome {
  status: RunStatus;
  record?: ResultRecord;
  summary: Summary;
  error?: string;
  exitCode: number | null;
  signal: string | null;
  startedAt: number;
  finishedAt: number;
  logTail: string;
}

export interface RunRequest {
  experimentId: number;
  /** Folder holding train.py and prepare.py at the candidate commit. */
  cwd: string;
  logPath: string;
  resultPath: string;
  slot: Slot;
}

export interface Slot {
  index: number;
  /** Value for CUDA_VISIBLE_DEVICES, or undefined on CPU. */
  cudaDevices?: string;
}

export interface RunnerOptions {
  python: string;
  dataDir: string;
  /** name -> sha256 of every file the evaluation depends on, pinned at workspace creation. */
  pins: Record<string, string>;
  /** Where each pinned file lives for a run in `cwd` (prepare.py is per-worktree, data files shared). */
  pinnedFilePath: (name: string, cwd: string) => string;
  ceilingSeconds: number;
  /** Seconds between SIGTERM and SIGKILL when a run is stopped. */
  killGraceSeconds?: number;
  extraEnv?: Record<string, string>;
}

const PROGRESS_LINE = /^step\s+(\d+)\s+\(\s*([\d.]+)%\)\s*\|\s*loss:\s*([-+\d.eE]+|nan|inf)/;
const LOG_TAIL_BYTES = 8192;

export function parseProgressLine(line: string): RunProgress | undefined {
  const match = PROGRESS_LINE.exec(line.trim());
  if (!match) return undefined;
  return { step: Number(match[1]), percent: Number(match[2]), loss: Number(match[3]) };
}

/** Reads the last summary block (after the last `---` line) from a run log. */
export function parseSummary(log: string): Summary {
  const lines = log.split(/\r?\n/);
  const start = lines.lastIndexOf('---');
  if (start < 0) return {};
  const summary: Summary = {};
  for (const line of lines.slice(start + 1)) {
    const match = /^(\w+):\s+(-?[\d.]+(?:e[-+]?\d+)?)\s*$/.exec(line);
    if (match && (SUMMARY_KEYS as readonly string[]).includes(match[1])) {
      summary[match[1] as keyof Summary] = Number(match[2]);
    }
  }
  return summary;
}

/**
 * Checks the harness's result record: it must exist, parse, echo this run's nonce, carry the pinned
 * hashes and a finite metric. Returns the record or a reason it cannot be trusted.
 */
export function validateResultRecord(
  raw: string | undefined,
  nonce: string,
  pins: Record<string, string>,
): { record: ResultRecord } | { error: string } {
  if (raw === undefined) return { error: 'the harness wrote no result record (evaluate_bpb never finished)' };
  let record: ResultRecord;
  try {
    record = JSON.parse(raw);
  } catch {
    return { error: 'the result record is not valid JSON' };
  }
  if (record === null || typeof record !== 'object') return { error: 'the result record is not a JSON object' };
  if (record.nonce !== nonce) return { error: 'the result record does not carry this run\'s nonce (stale or forged)' };
  if (typeof record.val_bpb !== 'number' || !Number.isFinite(record.val_bpb) || record.val_bpb <= 0) {
    return { error: `the result record's val_bpb is not a positive finite number (${String(record.val_bpb)})` };
  }
  for (const [name, hash] of Object.entries(pins)) {
    if (record.hashes?.[name] !== hash) {
      return { error: `the result record's hash of ${name} does not match the pinned hash` };
    }
  }
  return { record };
}

export function readLogTail(path: string, bytes = LOG_TAIL_BYTES): string {
  if (!existsSync(path)) return '';
  const size = statSync(path).size;
  const length = Math.min(size, bytes);
  const buffer = Buffer.alloc(length);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, buffer, 0, length, size - length);
  } finally {
    closeSync(fd);
  }
  return buffer.toString('utf8');
}

interface ActiveRun {
  child: ChildProcess;
  stopReason?: 'timed_out' | 'cancelled';
  progress?: RunProgress;
}

/**
 * Runs one experiment as its own process group with a hard wall-clock ceiling, and judges the
 * outcome from the harness's result record. Events: 'progress' (experimentId, RunProgress).
 */
export class ProcessRunner extends EventEmitter {
  private readonly active = new Map<number, ActiveRun>();

  constructor(private readonly options: RunnerOptions) {
    super();
  }

  isRunning(experimentId: number): boolean {
    return this.active.has(experimentId);
  }

  progressOf(experimentId: number): RunProgress | undefined {
    return this.active.get(experimentId)?.progress;
  }

  /** Hashes every pinned file as the run in `cwd` sees it; returns the names that differ. */
  async harnessDrift(cwd: string, hash: (path: string) => Promise<string> = sha256File): Promise<string[]> {
    const drift: string[] = [];
    for (const [name, pinned] of Object.entries(this.options.pins)) {
      const path = this.options.pinnedFilePath(name, cwd);
      const actual = existsSync(path) ? await hash(path) : 'missing';
      if (actual !== pinned) drift.push(name);
    }
    return drift;
  }

  async run(request: RunRequest, onStart: (pid: number) => void): Promise<RunOutcome> {
    const startedAt = Date.now();
    const before = await this.harnessDrift(request.cwd);
    if (before.length > 0) {
      return {
        status: 'rejected',
        summary: {},
        error: `harness files changed since the workspace was pinned: ${before.join(', ')}. Restore them (git checkout -- prepare.py; re-prepare data) and run again.`,
        exitCode: null,
        signal: null,
        startedAt,
        finishedAt: Date.now(),
        logTail: '',
      };
    }
    await mkdir(join(request.logPath, '..'), { recursive: true });
    const nonce = randomBytes(16).toString('hex');
    const logFd = openSync(request.logPath, 'a');
    const child = spawn(this.options.python, ['-u', 'train.py'], {
      cwd: request.cwd,
      detached: true,
      stdio: ['ignore', logFd, logFd],
      env: this.childEnv(request, nonce),
    });
    closeSync(logFd);
    const active: ActiveRun = { child };
    this.active.set(request.experimentId, active);
    if (child.pid !== undefined) onStart(child.pid);

    const stopTail = this.followProgress(request, active);
    const ceiling = setTimeout(() => this.stop(request.experimentId, 'timed_out'), this.options.ceilingSeconds * 1000);
    const { exitCode, signal } = await new Promise<{ exitCode: number | null; signal: string | null }>((resolve) => {
      child.on('error', () => resolve({ exitCode: null, signal: null }));
      child.on('exit', (code, sig) => resolve({ exitCode: code, signal: sig }));
    });
    clearTimeout(ceiling);
    killGroup(child.pid, 'SIGKILL');
    stopTail();
    this.active.delete(request.experimentId);
    const finishedAt = Date.now();

    const logTail = readLogTail(request.logPath);
    const summary = parseSummary(logTail);
    const base = { summary, exitCode, signal, startedAt, finishedAt, logTail };
    if (active.stopReason === 'timed_out') {
      return {
        ...base,
        status: 'timed_out',
        error: `killed at the wall-clock ceiling of ${this.options.ceilingSeconds} s (training budget plus start-up and evaluation allowance). Make the run respect TIME_BUDGET.`,
      };
    }
    if (active.stopReason === 'cancelled') return { ...base, status: 'cancelled', error: 'cancelled' };

    const after = await this.harnessDrift(request.cwd);
    if (after.length > 0) {
      return {
        ...base,
        status: 'rejected',
        error: `harness files changed during the run: ${after.join(', ')}; the result is void. Restore them before running again.`,
      };
    }
    const raw = existsSync(request.resultPath) ? await readFile(request.resultPath, 'utf8') : undefined;
    const checked = validateResultRecord(raw, nonce, this.options.pins);
    if ('error' in checked) {
      const how = exitCode === 0 ? 'exited 0 but' : `exited with ${signal ?? `code ${exitCode}`};`;
      return { ...base, status: 'crashed', error: `train.py ${how} ${checked.error}. See the log tail.` };
    }
    if (exitCode !== 0) {
      return { ...base, status: 'crashed', record: checked.record, error: `train.py exited with code ${exitCode} after evaluation` };
    }
    return { ...base, status: 'succeeded', record: checked.record };
  }

  /** Stops a run: SIGTERM to its whole process group, SIGKILL after the grace period. */
  stop(experimentId: number, reason: 'timed_out' | 'cancelled'): boolean {
    const active = this.active.get(experimentId);
    if (!active) return false;
    active.stopReason ??= reason;
    const pid = active.child.pid;
    killGroup(pid, 'SIGTERM');
    const grace = setTimeout(() => killGroup(pid, 'SIGKILL'), (this.options.killGraceSeconds ?? 3) * 1000);
    grace.unref();
    return true;
  }

  stopAll(reason: 'cancelled'): number[] {
    const ids = [...this.active.keys()];
    for (const id of ids) this.stop(id, reason);
    return ids;
  }

  private childEnv(request: RunRequest, nonce: string): NodeJS.ProcessEnv {
    const inherited = ['PATH', 'HOME', 'LANG', 'LC_ALL', 'TMPDIR', 'USER', 'LD_LIBRARY_PATH', 'OPENBLAS_CORETYPE', 'OPENBLAS_L2_SIZE', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_MMAP_THRESHOLD_'];
    const env: NodeJS.ProcessEnv = {};
    for (const key of inherited) if (process.env[key] !== undefined) env[key] = process.env[key];
    // glibc returns freed memory to the OS and faults it back in every step; keeping it doubled
    // the steps a CPU run fits in its budget here (65-75 -> 114-125). Harmless elsewhere.
    env.MALLOC_TRIM_THRESHOLD_ ??= '4000000000';
    env.MALLOC_MMAP_THRESHOLD_ ??= '33554432';
    Object.assign(env, this.options.extraEnv, {
      PYTHONUNBUFFERED: '1',
      PYTHONDONTWRITEBYTECODE: '1',
      AUTORESEARCH_DATA_DIR: this.options.dataDir,
      AUTORESEARCH_RESULT_PATH: request.resultPath,
      AUTORESEARCH_RUN_NONCE: nonce,
    });
    // An empty CUDA_VISIBLE_DEVICES would hide every GPU; on CPU slots leave the variable out.
    if (request.slot.cudaDevices !== undefined) env.CUDA_VISIBLE_DEVICES = request.slot.cudaDevices;
    return env;
  }

  /** Polls the log for progress lines; returns a function that stops polling. */
  private followProgress(request: RunRequest, active: ActiveRun): () => void {
    let offset = 0;
    let partial = '';
    const poll = () => {
      if (!existsSync(request.logPath)) return;
      const size = statSync(request.logPath).size;
      if (size <= offset) return;
      const buffer = Buffer.alloc(size - offset);
      const fd = openSync(request.logPath, 'r');
      try {
        readSync(fd, buffer, 0, buffer.length, offset);
      } finally {
        closeSync(fd);
      }
      offset = size;
      const lines = (partial + buffer.toString('utf8')).split(/\r|\n/);
      partial = lines.pop() ?? '';
      let latest: RunProgress | undefined;
      for (const line of lines) latest = parseProgressLine(line) ?? latest;
      if (latest) {
        active.progress = latest;
        this.emit('progress', request.experimentId, latest);
      }
    };
    const timer = setInterval(poll, 250);
    return () => {
      clearInterval(timer);
      poll();
    };
  }
}

function killGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal);
  } catch {
    // ESRCH: the group is already gone.
  }
}
