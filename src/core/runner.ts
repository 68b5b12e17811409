import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { compileCacheEnv } from './compile-cache.js';
import { sha256, sha256File } from './hashing.js';
import { PACKAGE_ROOT } from './paths.js';
import { cleanRunFolder, runFolder, writeRunFolder, writeSpec, type RunFolder, type SupervisorSpec } from './run-folder.js';
import { jobFiles, phaseFiles, SLURM_CUDA_VISIBLE_DEVICES, SlurmJob, timeLimitMinutes, type JobLayout, type SlurmOptions } from './slurm.js';
import {
  EVAL_DATA,
  EVAL_IN,
  evaluatorArgv,
  findBwrap,
  hostFacts,
  outsideSystemDirs,
  probePythonLayout,
  TRAINER_COMPILE_CACHE,
  TRAINER_DATA,
  TRAINER_SCRATCH,
  trainerArgv,
  type HostFacts,
  type PythonLayout,
} from './sandbox.js';

/** Progress parsed from train.py's `step 00042 (12.3%) | loss: 4.123456 | ...` lines. */
export interface RunProgress {
  step: number;
  percent: number;
  loss: number;
}

/** The summary block train.py prints; informative only, never the source of val_bpb or times. */
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

/** supervise.py's one JSON line on stdout (docs/run-protocol.md, "Phase 1"). */
export interface SupervisorReport {
  outcome: 'handed_over' | 'over_budget' | 'exited' | 'error';
  reason?: string;
  startup_seconds?: number | null;
  training_seconds?: number | null;
  export_seconds?: number | null;
  batches_served?: number | null;
  tokens_served?: number | null;
  cpu_seconds?: number | null;
  budget_clock?: BudgetClock;
  /** Seconds of the budget used by budget_clock (CPU seconds with the cpu clock). */
  budget_used_seconds?: number | null;
  exit_code?: number | null;
  signal?: string | null;
  weights_sha256?: string | null;
  model_sha256?: string | null;
}

/** evaluate.py's one JSON object on fd 3 (docs/run-protocol.md, "Phase 2"). */
export type EvaluatorResult =
  | {
      ok: true;
      val_bpb: number;
      eval_tokens: number;
      eval_bytes: number;
      eval_seconds?: number;
      model_sha256: string;
      checks?: Record<string, string>;
    }
  | { ok: false; reason: string; message: string; model_sha256?: string };

export type RunStatus = 'succeeded' | 'crashed' | 'over_budget' | 'timed_out' | 'cancelled' | 'rejected';

export interface RunOutcome {
  status: RunStatus;
  /** Why it did not succeed, for the user (and the agent). */
  error?: string;
  /** Informative only: what train.py printed. */
  summary: Summary;
  /** The trainer's exit (from the supervisor), or the supervisor's own when it reported nothing. */
  exitCode: number | null;
  signal: string | null;
  startedAt: number;
  finishedAt: number;
  logTail: string;
  /** False for runs made with --unsandboxed: their numbers are unverified. */
  sandboxed: boolean;
  seed: number;
  /** From the evaluator only. */
  valBpb?: number;
  evalTokens?: number;
  evalBytes?: number;
  evalSeconds?: number;
  /** Measured by the supervisor. */
  trainingSeconds?: number;
  startupSeconds?: number;
  exportSeconds?: number;
  cpuSeconds?: number;
  tokensServed?: number;
  batchesServed?: number;
  modelSha256?: string;
  weightsSha256?: string;
  /** The pins every file matched before the run. */
  hashes?: Record<string, string>;
  supervisor?: SupervisorReport;
  evaluation?: EvaluatorResult;
  /** With the Slurm backend: the id of the run's job, once sbatch gave one. */
  slurmJob?: string;
}

export interface RunRequest {
  experimentId: number;
  /** The candidate commit: train.py and prepare.py are read from its blobs. */
  commit: string;
  /** The run folder R. */
  runDir: string;
  slot: Slot;
  /** Seeds initialisation and the data order; default 42. */
  seed?: number;
}

export interface Slot {
  index: number;
  /** Value for CUDA_VISIBLE_DEVICES, or undefined on CPU. */
  cudaDevices?: string;
}

export interface Budget {
  /** TIME_BUDGET: seconds of training from the first batch to the hand-over, by `clock`. */
  timeBudget: number;
  /** BUDGET_CLOCK: 'wall' (monotonic seconds) or 'cpu' (CPU seconds of the trainer's processes, for a shared CPU). */
  clock: BudgetClock;
  /** Seconds over the budget that still count as within it. */
  slack: number;
  startupAllowance: number;
  exportAllowance: number;
  maxBatchTokens: number;
  /** Size of the trainer's scratch tmpfs (and its /tmp). */
  scratchBytes: number;
}

export const DEFAULT_SEED = 42;

export const BUDGET_CLOCKS = ['wall', 'cpu'] as const;
export type BudgetClock = (typeof BUDGET_CLOCKS)[number];

export interface RunnerOptions {
  /** The host interpreter: runs supervise.py, and the trainer and evaluator (inside the sandbox when sandboxed). */
  python: string;
  /** 'bwrap': both phases in bubblewrap sandboxes; 'none': the same pipeline without (results unverified). */
  sandbox: 'bwrap' | 'none';
  dataDir: string;
  /** The pinned harness copies (<state>/harness). */
  harnessDir: string;
  /** name -> sha256: harness/<file>, data files, and prepare.py (the workspace's blob). */
  pins: Record<string, string>;
  /** `git show <commit>:<path>` of the workspace. */
  readBlob: (commit: string, path: string) => Promise<string>;
  budget: Budget;
  ceilingSeconds: number;
  /** Host paths a sandbox must never expose (workspace, state folder, data folder). */
  forbidden?: string[];
  extraEnv?: Record<string, string>;
  /** Threads for each CPU run (OMP_NUM_THREADS, MKL_NUM_THREADS) when CPU slots share the cores (cpuThreadsPerRun). */
  cpuThreads?: number;
  /** Facts about this machine and the interpreter; probed on first use when absent (tests state them). */
  hostFacts?: HostFacts;
  pythonLayout?: PythonLayout;
  /**
   * Where pre-started trainers wait (<state>/standby): each slot keeps one trainer sandbox whose
   * interpreter has imported torch before its run is known (python/prestart.py). Sandboxed runs
   * only, and only when harness/prestart.py is pinned; left out, every trainer starts cold.
   */
  standbyDir?: string;
  /**
   * Run each phase as a Slurm batch job instead of a local child process (src/core/slurm.ts); the
   * run folder, the harness, the data and the interpreter must then be at the same paths on the
   * cluster's nodes. Pre-started trainers are off: a standby would hold a job's GPU while idle.
   */
  slurm?: SlurmOptions;
  /** The workspace's compile cache folder (compile-cache.ts), which must exist: sandboxed trainers are seeded from it. */
  compileCache?: string;
}

/** How often a run waiting for its slot's pre-started trainer looks for the supervisor's `ready` file. */
const STANDBY_POLL_MS = 20;

/** Pin names of the harness copies. */
export const HARNESS_PIN_PREFIX = 'harness/';
/** The workspace's own prepare.py: the candidate commit's blob must equal the pinned harness copy. */
export const WORKSPACE_PREPARE = 'prepare.py';

const PROGRESS_LINE = /^step\s+(\d+)\s+\(\s*([\d.]+)%\)\s*\|\s*loss:\s*([-+\d.eE]+|nan|inf)/;
const LOG_TAIL_BYTES = 8192;
/** Environment variables passed from ours into runs: locale and numeric-library tuning only. */
const INHERITED_ENV = [
  'LANG',
  'LC_ALL',
  'OPENBLAS_CORETYPE',
  'OPENBLAS_L2_SIZE',
  'OPENBLAS_NUM_THREADS',
  'OMP_NUM_THREADS',
  'MKL_NUM_THREADS',
  'MALLOC_TRIM_THRESHOLD_',
  'MALLOC_MMAP_THRESHOLD_',
];

/**
 * Threads each CPU run may use (OMP_NUM_THREADS and MKL_NUM_THREADS, unless the server's own
 * environment sets them). With the CPU clock, one: the budget counts every thread's CPU time, and
 * PyTorch's OpenMP threads spin while they wait for one another, so on a shared machine a second
 * thread spends budget waiting (bench/budget_clock.py: two threads under load fit half the steps
 * of one). With the wall clock, an equal share of the cores when several CPU slots share them:
 * two runs that each take every core slow each other down tenfold (measured here: 2 runs of 2
 * threads on 2 cores, 1/20 of one run's speed each; with 1 thread each, 3/5); undefined with one
 * CPU slot: a run then takes every core.
 */
export function cpuThreadsPerRun(cores: number, cpuSlots: number, clock: BudgetClock = 'wall'): number | undefined {
  if (cpuSlots === 0) return undefined;
  if (clock === 'cpu') return 1;
  return cpuSlots > 1 ? Math.max(1, Math.floor(cores / cpuSlots)) : undefined;
}

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

/** The last line of `text` that parses as a JSON object, or undefined. */
export function lastJsonObject(text: string): Record<string, unknown> | undefined {
  const lines = text.split('\n').map((line) => line.trim()).filter(Boolean);
  for (let i = lines.length - 1; i >= 0; i -= 1) {
    try {
      const value = JSON.parse(lines[i]);
      if (value !== null && typeof value === 'object' && !Array.isArray(value)) return value;
    } catch {
      // not JSON: keep looking
    }
  }
  try {
    const whole = JSON.parse(text);
    return whole !== null && typeof whole === 'object' && !Array.isArray(whole) ? whole : undefined;
  } catch {
    return undefined;
  }
}

const OUTCOMES = ['handed_over', 'over_budget', 'exited', 'error'];

export function parseSupervisorReport(stdout: string): SupervisorReport | undefined {
  const report = lastJsonObject(stdout);
  if (!report || !OUTCOMES.includes(report.outcome as string)) return undefined;
  return report as unknown as SupervisorReport;
}

/** The evaluator's answer, or why it cannot be used. */
export function parseEvaluatorResult(text: string): { result: EvaluatorResult } | { error: string } {
  const value = lastJsonObject(text);
  if (!value) return { error: text.trim() ? 'its result on fd 3 is not a JSON object' : 'it wrote no result on fd 3' };
  if (value.ok === false) {
    return {
      result: {
        ok: false,
        reason: typeof value.reason === 'string' ? value.reason : 'unknown',
        message: typeof value.message === 'string' ? value.message : 'no message',
        model_sha256: typeof value.model_sha256 === 'string' ? value.model_sha256 : undefined,
      },
    };
  }
  if (value.ok !== true) return { error: 'its result has no "ok" field' };
  const bpb = value.val_bpb;
  if (typeof bpb !== 'number' || !Number.isFinite(bpb) || bpb <= 0) return { error: `its val_bpb is not a positive finite number (${String(bpb)})` };
  for (const key of ['eval_tokens', 'eval_bytes'] as const) {
    if (typeof value[key] !== 'number' || !Number.isFinite(value[key]) || (value[key] as number) <= 0) return { error: `its ${key} is not a positive number` };
  }
  if (typeof value.model_sha256 !== 'string') return { error: 'its result names no model_sha256' };
  return { result: value as unknown as EvaluatorResult };
}

/**
 * The trainer's last line of output in a log tail (the exception or SystemExit message that ended
 * it), skipping the supervisor's, the evaluator's and the Slurm job script's own lines; at most 300 characters.
 */
export function lastTrainerLine(logTail: string): string | undefined {
  const lines = logTail.split('\n').map((l) => l.trim());
  const last = lines.reverse().find((l) => l && !l.startsWith('supervise:') && !l.startsWith('[evaluate]') && !l.startsWith('slurm:'));
  if (!last) return undefined;
  return last.length > 300 ? `${last.slice(0, 299)}…` : last;
}

/** The last `bytes` of a log, none of them before offset `from` (where one attempt of a run began). */
export function readLogTail(path: string, bytes = LOG_TAIL_BYTES, from = 0): string {
  if (!existsSync(path)) return '';
  const size = statSync(path).size;
  const length = Math.max(0, Math.min(size - from, bytes));
  const buffer = Buffer.alloc(length);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, buffer, 0, length, size - length);
  } finally {
    closeSync(fd);
  }
  return buffer.toString('utf8');
}

/**
 * A slot's pre-started trainer: `supervise.py --standby` and, under it, prestart.py in the trainer
 * sandbox, with its evaluator (evaluate.py --wait), waiting in their own folder. A run claims them
 * by renaming the folder to the run's (the sandboxes' binds and the open log follow the folder)
 * and sending `go SPEC` to the supervisor.
 */
interface Standby {
  folder: RunFolder;
  /** The argv it was started with: the claiming run's spec must carry the same. */
  trainerArgv: string[];
  trainerEnv: Record<string, string>;
  /** The run's process set from the start, so that a run that claims it can stop it. */
  active: ActiveRun;
  phase: StartedPhase;
  /** Its evaluator, started with it: its torch import is not left to overlap the run's training. */
  evaluator: StartedPhase;
  claimed: boolean;
  /** Settles true once its trainer has imported torch (the supervisor's `ready` file), false if it ended first. */
  ready: Promise<boolean>;
}

/** Kills a standby's supervisor (its trainer dies with it) and its evaluator; no-ops once they ended. */
function stopStandby(standby: Standby): void {
  standby.phase.stop();
  standby.evaluator.stop();
}

interface ActiveRun {
  /** How to stop each of the run's live phases (the supervisor, and the evaluator waiting beside it): kill its process group, or scancel its job. */
  children: Set<() => void>;
  stopReason?: 'timed_out' | 'cancelled';
  /** Why it was stopped when not by this server (Slurm's own time limit). */
  stopCause?: string;
  progress?: RunProgress;
  /** The run's Slurm job id, as sbatch gave it. */
  slurmJob?: string;
  /** The run's wall-clock ceiling; it stands still while the run's Slurm job waits in the queue. */
  ceiling?: Ceiling;
}

/**
 * A wall-clock ceiling that does not run while the run's Slurm job waits in the queue: on a busy
 * cluster a job may wait for hours before it starts, and that wait is not the run's doing.
 * Slurm's own time limit, which counts from the job's start, stays the backstop. Local runs never wait.
 */
export class Ceiling {
  private timer?: NodeJS.Timeout;
  private remainingMs: number;
  private armedAt = 0;
  private done = false;

  constructor(ms: number, private readonly expire: () => void) {
    this.remainingMs = ms;
    this.arm();
  }

  /** The run's job entered (true) or left (false) the queue. */
  waitingInQueue(pending: boolean): void {
    if (pending) this.pause();
    else this.arm();
  }

  /** Milliseconds left before the ceiling; not counting down while a job waits. */
  private remaining(): number {
    return this.timer ? Math.max(0, this.remainingMs - (Date.now() - this.armedAt)) : this.remainingMs;
  }

  clear(): void {
    this.done = true;
    this.pause();
  }

  private arm(): void {
    if (this.timer || this.done) return;
    this.armedAt = Date.now();
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.remainingMs = 0;
      this.expire();
    }, this.remainingMs);
  }

  private pause(): void {
    if (!this.timer) return;
    this.remainingMs = this.remaining();
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}

interface PhaseOptions {
  /** supervise | evaluate: names the phase's files in a Slurm job. */
  name: 'supervise' | 'evaluate';
  cwd: string;
  env: Record<string, string>;
  resultFd: 1 | 3;
  /** A pipe on stdin, for go(). */
  stdin?: boolean;
  onStart?: (pid: number) => void;
}

/** A phase to start: the command, its arguments, and how. */
interface PhaseCommand {
  command: string;
  args: string[];
  how: PhaseOptions;
}

/** A phase's process, started: `exit` settles when it has ended (its process group killed). */
interface StartedPhase {
  /** The local process's pid; undefined for a Slurm job. */
  pid?: number;
  exit: Promise<Exit>;
  /** Writes one line (default `go`) on its stdin and closes it. */
  go: (line?: string) => void;
  stop: () => void;
}

interface Exit {
  exitCode: number | null;
  signal: string | null;
  /** What the child wrote on the piped fd (stdout for the supervisor, fd 3 for the evaluator). */
  output: string;
  /** Why it never ran or never reported its own exit, as a verb phrase ("could not be started (...)", "ran in Slurm job 5, which ended NODE_FAIL: ..."). */
  spawnError?: string;
}

/**
 * Runs one experiment: pin check, run folder, supervise.py (which runs train.py in the trainer
 * sandbox and measures the budget), then evaluate.py in the evaluator sandbox. Each process is
 * its own process group, killed whole at the wall-clock ceiling or on cancel. The metric is the
 * evaluator's; the times are the supervisor's. Events: 'progress' (experimentId, RunProgress).
 */
export class ProcessRunner extends EventEmitter {
  private readonly active = new Map<number, ActiveRun>();
  private layout?: Promise<{ facts: HostFacts; python: PythonLayout }>;
  /** Pre-started trainers by slot index (at most one each); `starting` while one is being made. */
  private readonly standbys = new Map<number, Standby | 'starting'>();
  private closed = false;

  constructor(private readonly options: RunnerOptions) {
    super();
  }

  get sandboxed(): boolean {
    return this.options.sandbox === 'bwrap';
  }

  isRunning(experimentId: number): boolean {
    return this.active.has(experimentId);
  }

  progressOf(experimentId: number): RunProgress | undefined {
    return this.active.get(experimentId)?.progress;
  }

  /** Where a pinned file lives; `prepare.py` is read from `prepareDir` (the workspace, for status). */
  pinnedFilePath(name: string, prepareDir: string): string {
    if (name === WORKSPACE_PREPARE) return join(prepareDir, name);
    if (name.startsWith(HARNESS_PIN_PREFIX)) return join(this.options.harnessDir, name.slice(HARNESS_PIN_PREFIX.length));
    return join(this.options.dataDir, name);
  }

  /**
   * Hashes every pinned file (prepare.py as found in `prepareDir`); returns the names that differ.
   * `skip` leaves names out (the run checks the candidate's prepare.py blob instead).
   */
  async harnessDrift(prepareDir: string, hash: (path: string) => Promise<string> = sha256File, skip: string[] = []): Promise<string[]> {
    const names = Object.keys(this.options.pins).filter((name) => !skip.includes(name));
    const actual = await Promise.all(
      names.map(async (name) => {
        const path = this.pinnedFilePath(name, prepareDir);
        return existsSync(path) ? hash(path) : 'missing';
      }),
    );
    return names.filter((name, i) => actual[i] !== this.options.pins[name]);
  }

  /** How to restore a pinned file that no longer matches, one clause per file. */
  restoreHint(name: string): string {
    if (name === WORKSPACE_PREPARE) {
      return 'the candidate commit\'s prepare.py differs from the pinned harness copy (prepare.py is read-only: restore it with `git checkout main -- prepare.py` and commit)';
    }
    if (name.startsWith(HARNESS_PIN_PREFIX)) {
      const file = name.slice(HARNESS_PIN_PREFIX.length);
      return `${name} differs from its pin (copy it back: cp ${join(PACKAGE_ROOT, 'python', file)} ${join(this.options.harnessDir, file)}; if autoresearch-mcp was upgraded since, create a new workspace with autoresearch-mcp init)`;
    }
    return `${name} differs from its pin (the prepared data changed: re-prepare it, or create a new workspace with autoresearch-mcp init)`;
  }

  async run(request: RunRequest, onStart: (pid: number) => void): Promise<RunOutcome> {
    const startedAt = Date.now();
    const seed = request.seed ?? DEFAULT_SEED;
    const folder = runFolder(request.runDir);
    const sandboxed = this.sandboxed;
    const base = { summary: {}, exitCode: null as number | null, signal: null as string | null, startedAt, logTail: '', sandboxed, seed };
    // A pre-started trainer is claimed only for a fresh run folder (a re-run keeps its old log).
    const standby = existsSync(request.runDir) ? undefined : await this.claimStandby(request.slot);
    const active: ActiveRun = standby?.active ?? { children: new Set() };
    this.active.set(request.experimentId, active);
    try {
      // ---- pins: every harness and data file, and the candidate's prepare.py ----
      const [trainPy, preparePy] = await Promise.all([
        this.options.readBlob(request.commit, 'train.py'),
        this.options.readBlob(request.commit, 'prepare.py'),
      ]);
      const drift = await this.harnessDrift(request.runDir, sha256File, [WORKSPACE_PREPARE]);
      if (WORKSPACE_PREPARE in this.options.pins && sha256(preparePy) !== this.options.pins[WORKSPACE_PREPARE]) drift.push(WORKSPACE_PREPARE);
      if (drift.length > 0) {
        return {
          ...base,
          status: 'rejected',
          finishedAt: Date.now(),
          error: `Pinned files no longer match; the run was refused: ${drift.map((name) => this.restoreHint(name)).join('; ')}.`,
        };
      }
      await mkdir(dirname(folder.log), { recursive: true });
      if (standby) await rename(standby.folder.root, folder.root);
      await writeRunFolder(folder, { trainPy, preparePy, sandboxed, dataDir: this.options.dataDir });
      const { facts, python } = await this.hostLayout();
      const spec = this.spec(folder, request.slot, seed, facts, python);
      await writeSpec(folder, standby ? { ...spec, trainer_argv: standby.trainerArgv, trainer_env: standby.trainerEnv } : spec);
      if (active.stopReason) return this.stopped(active, { ...base, status: 'cancelled', finishedAt: Date.now(), logTail: readLogTail(folder.log) });

      return await this.watched(request.experimentId, folder, active, () => {
        // ---- phase 2's process starts first: evaluate.py waits beside the trainer for "go", so
        // that its interpreter and torch import are not between the hand-over and the result (a
        // pre-started trainer comes with its evaluator, started with it; with Slurm both are one job) ----
        const { evaluator, supervisor } = standby ? { evaluator: standby.evaluator, supervisor: standby.phase } : this.startPhases(active, folder, request.slot, facts, python, onStart);
        return this.supervisedThenEvaluated(folder, active, onStart, base, evaluator, supervisor, standby, request.slot);
      });
    } finally {
      // Claimed but never told to go (refused, cancelled): both end unused.
      if (standby) stopStandby(standby);
      this.active.delete(request.experimentId);
      await cleanRunFolder(folder).catch(() => undefined);
      this.prestart(request.slot);
    }
  }

  /**
   * Follows a run whose Slurm job `jobId` a server that died submitted (its pins were checked, its
   * folder written, its job script holds its commands): from the job's files on, the same as a run
   * started here, to the same outcome. The ceiling counts from now; Slurm's time limit, from the
   * job's start, is the backstop for the time no server watched.
   */
  async attach(request: RunRequest, jobId: string, startedAt: number): Promise<RunOutcome> {
    const slurm = this.options.slurm;
    if (!slurm) throw new Error('only a Slurm run can be re-attached');
    const folder = runFolder(request.runDir);
    const base = { summary: {}, exitCode: null as number | null, signal: null as string | null, startedAt, logTail: '', sandboxed: this.sandboxed, seed: request.seed ?? DEFAULT_SEED };
    const active: ActiveRun = { children: new Set(), slurmJob: jobId };
    this.active.set(request.experimentId, active);
    try {
      return await this.watched(request.experimentId, folder, active, () => {
        const layout = runJobLayout(folder);
        const job = new SlurmJob(slurm, layout, () => active.ceiling?.waitingInQueue(false));
        const [evaluator, supervisor] = this.followedPhases(job, active, layout.phases.map((p) => p.phase));
        active.ceiling?.waitingInQueue(true);
        job.attach(jobId);
        return this.supervisedThenEvaluated(folder, active, () => undefined, base, evaluator, supervisor, undefined, request.slot);
      });
    } finally {
      this.active.delete(request.experimentId);
      await cleanRunFolder(folder).catch(() => undefined);
    }
  }

  /**
   * Starts the slot's pre-started trainer unless it has one (or pre-starting is off): its
   * interpreter and torch import then happen while the slot is idle (or, on a GPU slot, while the
   * GPU trains), not between one run and the next. Failures only mean the next run starts cold.
   */
  prestart(slot: Slot): void {
    if (this.closed || !this.sandboxed || this.options.slurm || !this.options.standbyDir || !(`${HARNESS_PIN_PREFIX}prestart.py` in this.options.pins)) return;
    if (this.standbys.has(slot.index)) return;
    this.standbys.set(slot.index, 'starting');
    this.startStandby(slot).then(
      (standby) => {
        if (this.standbys.get(slot.index) !== 'starting' || this.closed) {
          stopStandby(standby);
          return;
        }
        this.standbys.set(slot.index, standby);
        void standby.phase.exit.then(() => {
          if (this.standbys.get(slot.index) === standby) this.standbys.delete(slot.index);
        });
      },
      () => {
        if (this.standbys.get(slot.index) === 'starting') this.standbys.delete(slot.index);
      },
    );
  }

  /** Ends every pre-started trainer and starts no more (the server is stopping). */
  async closeStandbys(): Promise<void> {
    this.closed = true;
    const waiting = [...this.standbys.values()].filter((s): s is Standby => s !== 'starting');
    this.standbys.clear();
    for (const standby of waiting) stopStandby(standby);
    await Promise.all(waiting.flatMap((standby) => [standby.phase.exit, standby.evaluator.exit]));
    if (this.options.standbyDir) await rm(this.options.standbyDir, { recursive: true, force: true }).catch(() => undefined);
  }

  /** The slot's pre-started trainer once it is ready (its folder may move only then), or undefined: start cold. */
  private async claimStandby(slot: Slot): Promise<Standby | undefined> {
    const standby = this.standbys.get(slot.index);
    if (standby === undefined || standby === 'starting') return undefined;
    this.standbys.delete(slot.index);
    if (await standby.ready) {
      standby.claimed = true;
      return standby;
    }
    stopStandby(standby);
    return undefined;
  }

  private async startStandby(slot: Slot): Promise<Standby> {
    const standbyDir = this.options.standbyDir as string;
    const folder = runFolder(join(standbyDir, `${slot.index}-${randomBytes(4).toString('hex')}`));
    await Promise.all([mkdir(folder.code, { recursive: true }), mkdir(folder.handover, { recursive: true })]);
    const { facts, python } = await this.hostLayout();
    const spec = this.spec(folder, slot, DEFAULT_SEED, facts, python, join(this.options.harnessDir, 'prestart.py'));
    await writeSpec(folder, spec);
    const active: ActiveRun = { children: new Set() };
    const supervisorArgs = [join(this.options.harnessDir, 'supervise.py'), '--spec', folder.spec, '--standby'];
    const phase = this.startPhase(active, this.options.python, supervisorArgs, folder, { name: 'supervise', cwd: folder.root, env: this.hostEnv(), resultFd: 1, stdin: true });
    const evaluation = this.evaluatorPhase(folder, slot, facts, python);
    const evaluator = this.startPhase(active, evaluation.command, evaluation.args, folder, evaluation.how);
    const ready = new Promise<boolean>((resolve) => {
      const marker = join(folder.root, 'ready');
      const poll = setInterval(() => {
        if (existsSync(marker)) settle(true);
      }, STANDBY_POLL_MS);
      const giveUp = setTimeout(() => settle(false), this.options.budget.startupAllowance * 1000);
      const settle = (value: boolean) => {
        clearInterval(poll);
        clearTimeout(giveUp);
        resolve(value);
      };
      void phase.exit.then(() => settle(false));
    });
    const standby: Standby = { folder, trainerArgv: spec.trainer_argv, trainerEnv: spec.trainer_env, active, phase, evaluator, claimed: false, ready };
    // Unclaimed when it ends (the server stopped it, its trainer failed to start): nothing to keep.
    void phase.exit
      .then(async () => {
        if (standby.claimed) return;
        evaluator.stop();
        await evaluator.exit;
        await rm(folder.root, { recursive: true, force: true });
      })
      .catch(() => undefined);
    return standby;
  }

  /**
   * Runs `body` (a run's phases) with its progress followed and its wall-clock ceiling counting;
   * the outcome names the Slurm job the run was.
   */
  private async watched(experimentId: number, folder: RunFolder, active: ActiveRun, body: () => Promise<RunOutcome>): Promise<RunOutcome> {
    const stopTail = this.followProgress(experimentId, folder.log, active);
    active.ceiling = new Ceiling(this.options.ceilingSeconds * 1000, () => this.stop(experimentId, 'timed_out'));
    try {
      const outcome = await body();
      return active.slurmJob ? { ...outcome, slurmJob: active.slurmJob } : outcome;
    } finally {
      active.ceiling.clear();
      stopTail();
    }
  }

  /**
   * A run's two processes: evaluate.py --wait in its sandbox, with a seed drawn now (it scores the
   * hand-over only after `go`), and supervise.py, which starts the trainer. Locally each is its
   * own process group; with Slurm both are one job.
   */
  private startPhases(active: ActiveRun, folder: RunFolder, slot: Slot, facts: HostFacts, python: PythonLayout, onStart: (pid: number) => void): { evaluator: StartedPhase; supervisor: StartedPhase } {
    const phases: PhaseCommand[] = [
      this.evaluatorPhase(folder, slot, facts, python),
      {
        command: this.options.python,
        args: [join(this.options.harnessDir, 'supervise.py'), '--spec', folder.spec],
        how: { name: 'supervise', cwd: this.sandboxed ? folder.root : folder.scratch, env: this.hostEnv(), resultFd: 1, onStart },
      },
    ];
    const [evaluator, supervisor] = this.options.slurm ? this.startJob(this.options.slurm, active, phases, folder) : phases.map((p) => this.startPhase(active, p.command, p.args, folder, p.how));
    return { evaluator, supervisor };
  }

  /** evaluate.py --wait in its sandbox, with a seed drawn now: it scores the hand-over only after `go`. */
  private evaluatorPhase(folder: RunFolder, slot: Slot, facts: HostFacts, python: PythonLayout): PhaseCommand {
    const evaluation = this.evaluatorCommand(folder, slot, randomInt(1, 2 ** 31 - 1), facts, python);
    return {
      command: evaluation.command,
      args: [...evaluation.args, '--wait'],
      how: { name: 'evaluate', cwd: folder.root, env: this.sandboxed ? {} : evaluation.env, resultFd: 3, stdin: true },
    };
  }

  private async supervisedThenEvaluated(
    folder: RunFolder,
    active: ActiveRun,
    onStart: (pid: number) => void,
    base: Omit<RunOutcome, 'status' | 'finishedAt'>,
    evaluator: StartedPhase,
    supervisor: StartedPhase,
    standby: Standby | undefined,
    slot: Slot,
  ): Promise<RunOutcome> {
    try {
      // ---- phase 1: supervise.py runs the trainer and measures the budget (a pre-started one is
      // told to go: its trainer has imported torch already; the clocks start now) ----
      if (standby) {
        if (standby.phase.pid !== undefined) onStart(standby.phase.pid);
        standby.phase.go(`go ${folder.spec}`);
      }
      // A GPU slot's next trainer starts while this one trains: its import takes a spare CPU core,
      // not the GPU. A CPU slot's waits until this run is over (run()), so that it takes no CPU
      // from a measured budget or an evaluation.
      if (slot.cudaDevices !== undefined) this.prestart(slot);
      const supervised = await supervisor.exit;
      const finish = (outcome: Partial<RunOutcome> & { status: RunStatus }): RunOutcome => {
        const logTail = readLogTail(folder.log);
        return { ...base, summary: parseSummary(logTail), logTail, finishedAt: Date.now(), ...outcome };
      };
      if (active.stopReason) return this.stopped(active, finish({ status: 'cancelled', exitCode: supervised.exitCode, signal: supervised.signal }));
      const report = parseSupervisorReport(supervised.output);
      if (!report) {
        const how = supervised.spawnError ?? (supervised.signal ? `was killed by ${supervised.signal}` : `exited with code ${supervised.exitCode}`);
        return finish({
          status: 'crashed',
          exitCode: supervised.exitCode,
          signal: supervised.signal,
          error: `the supervisor (supervise.py) ${how} without a report; the run is void. See the log tail.`,
        });
      }
      const measured = {
        exitCode: report.exit_code ?? null,
        signal: report.signal ?? null,
        supervisor: report,
        trainingSeconds: num(report.training_seconds),
        startupSeconds: num(report.startup_seconds),
        exportSeconds: num(report.export_seconds),
        cpuSeconds: num(report.cpu_seconds),
        tokensServed: num(report.tokens_served),
        batchesServed: num(report.batches_served),
        modelSha256: report.model_sha256 ?? undefined,
        weightsSha256: report.weights_sha256 ?? undefined,
        hashes: this.options.pins,
      };
      if (report.outcome === 'over_budget') {
        return finish({ ...measured, status: 'over_budget', error: `over budget: ${report.reason ?? 'an allowance was exceeded'} (${times(report)}). Make train.py stop at TIME_BUDGET.` });
      }
      if (report.outcome === 'exited') {
        const how = report.signal ? `was killed by ${report.signal}` : `exited with code ${report.exit_code ?? 'unknown'}`;
        const last = lastTrainerLine(readLogTail(folder.log));
        return finish({
          ...measured,
          status: 'crashed',
          error: `train.py ${how} before handing over its model${report.reason ? `: ${report.reason}` : ''}.${last ? ` Its last line: ${last}` : ''} See the log tail.`,
        });
      }
      if (report.outcome === 'error') {
        return finish({ ...measured, status: 'crashed', error: `the run failed: ${report.reason ?? 'the supervisor reported an error'}. See the log tail.` });
      }

      // ---- the hand-over: both files exist and the model is the one the supervisor received ----
      const modelPath = join(folder.handover, 'model.pt');
      const weightsPath = join(folder.handover, 'weights.pt');
      if (!existsSync(modelPath) || !existsSync(weightsPath)) {
        return finish({ ...measured, status: 'crashed', error: 'the supervisor reported a hand-over but handover/model.pt or weights.pt is missing; the run is void.' });
      }
      const modelSha = await sha256File(modelPath);
      if (!report.model_sha256 || modelSha !== report.model_sha256) {
        return finish({ ...measured, status: 'crashed', error: 'handover/model.pt does not match the model the supervisor received (sha256 differs); the run is void.' });
      }

      // ---- phase 2: evaluate.py scores the exported model in its own sandbox ----
      evaluator.go();
      const evaluated = await evaluator.exit;
      if (active.stopReason) return this.stopped(active, finish({ ...measured, status: 'cancelled' }));
      const parsed = parseEvaluatorResult(evaluated.output);
      if ('error' in parsed || evaluated.exitCode !== 0) {
        if ('result' in parsed && !parsed.result.ok) {
          const refusal = parsed.result;
          const error =
            refusal.reason === 'harness'
              ? `the evaluator could not run (${refusal.message}); the run is void, not the model's fault`
              : `the evaluator refused the model (${refusal.reason}): ${refusal.message}`;
          return finish({ ...measured, evaluation: refusal, status: 'crashed', error });
        }
        const how = evaluated.spawnError ?? (evaluated.signal ? `was killed by ${evaluated.signal}` : `exited with code ${evaluated.exitCode}`);
        const why = 'error' in parsed ? `; ${parsed.error}` : '';
        const tail = readLogTail(folder.log, 2000).trim().split('\n').slice(-15).join('\n');
        return finish({ ...measured, status: 'crashed', error: `the evaluator crashed (it ${how}${why}). Its log:\n${tail}` });
      }
      const result = parsed.result;
      if (!result.ok) {
        return finish({ ...measured, evaluation: result, status: 'crashed', error: `the evaluator refused the model (${result.reason}): ${result.message}` });
      }
      const weightsSha = (result as { weights_sha256?: unknown }).weights_sha256;
      if (result.model_sha256 !== report.model_sha256 || (typeof weightsSha === 'string' && report.weights_sha256 && weightsSha !== report.weights_sha256)) {
        return finish({ ...measured, evaluation: result, status: 'crashed', error: 'the evaluator scored a model other than the one handed over (model_sha256 differs); the run is void.' });
      }
      if (!this.sandboxed) {
        // Unsandboxed, the trainer could reach the pinned files: a change during the run voids it.
        const after = await this.harnessDrift(folder.root, sha256File, [WORKSPACE_PREPARE]);
        if (after.length > 0) {
          return finish({ ...measured, status: 'rejected', error: `pinned files changed during the run: ${after.join(', ')}; the result is void. ${after.map((n) => this.restoreHint(n)).join('; ')}.` });
        }
      }
      return finish({
        ...measured,
        evaluation: result,
        status: 'succeeded',
        valBpb: result.val_bpb,
        evalTokens: result.eval_tokens,
        evalBytes: result.eval_bytes,
        evalSeconds: num(result.eval_seconds),
      });
    } finally {
      // Never told to go (the trainer failed, the run was stopped): it ends without a result.
      evaluator.stop();
      await evaluator.exit;
    }
  }

  private stopped(active: ActiveRun, outcome: RunOutcome): RunOutcome {
    if (active.stopReason === 'timed_out') {
      return {
        ...outcome,
        status: 'timed_out',
        error: active.stopCause ? `${active.stopCause}. Make the run respect TIME_BUDGET, or give the jobs a longer time limit.` : `killed at the wall-clock ceiling of ${this.options.ceilingSeconds} s (training budget plus start-up, export and evaluation allowance). Make the run respect TIME_BUDGET.`,
      };
    }
    return { ...outcome, status: 'cancelled', error: 'cancelled' };
  }

  /** Stops a run at once: SIGKILL to the process group of whichever phase is running. */
  stop(experimentId: number, reason: 'timed_out' | 'cancelled'): boolean {
    const active = this.active.get(experimentId);
    if (!active) return false;
    active.stopReason ??= reason;
    for (const kill of active.children) kill();
    return true;
  }

  stopAll(reason: 'cancelled'): number[] {
    const ids = [...this.active.keys()];
    for (const id of ids) this.stop(id, reason);
    return ids;
  }

  /** Host facts and the interpreter's layout, probed once (only needed when sandboxed). */
  private hostLayout(): Promise<{ facts: HostFacts; python: PythonLayout }> {
    this.layout ??= (async () => {
      if (!this.sandboxed) {
        return { facts: this.options.hostFacts ?? { bwrap: '', systemDirs: [], maskedFiles: [], devices: [] }, python: { executable: this.options.python, prefixes: [] } };
      }
      const bwrap = this.options.hostFacts?.bwrap ?? findBwrap();
      if (!bwrap) throw new Error('bubblewrap (bwrap) is not installed');
      const facts = this.options.hostFacts ?? hostFacts(bwrap);
      const python = this.options.pythonLayout ?? outsideSystemDirs(await probePythonLayout(this.options.python), facts);
      return { facts, python };
    })();
    this.layout.catch(() => (this.layout = undefined));
    return this.layout;
  }

  /** Variables every run gets: ours that tune locale and numeric libraries, then the fixed ones. */
  private tunedEnv(): Record<string, string> {
    const env: Record<string, string> = {};
    for (const key of INHERITED_ENV) if (process.env[key] !== undefined) env[key] = process.env[key] as string;
    // glibc returns freed memory to the OS and faults it back in every step; keeping it doubled
    // the steps a CPU run fits in its budget here (65-75 -> 114-125). Harmless elsewhere.
    env.MALLOC_TRIM_THRESHOLD_ ??= '4000000000';
    env.MALLOC_MMAP_THRESHOLD_ ??= '33554432';
    if (this.options.cpuThreads !== undefined) {
      env.OMP_NUM_THREADS ??= String(this.options.cpuThreads);
      env.MKL_NUM_THREADS ??= String(this.options.cpuThreads);
    }
    Object.assign(env, this.options.extraEnv, { PYTHONUNBUFFERED: '1', PYTHONDONTWRITEBYTECODE: '1' });
    return env;
  }

  /** The supervisor's environment (trusted, on the host): PATH and HOME plus the tuned variables. */
  private hostEnv(): Record<string, string> {
    const env = this.tunedEnv();
    env.PATH = process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin';
    env.HOME = process.env.HOME ?? '/tmp';
    if (process.env.LD_LIBRARY_PATH) env.LD_LIBRARY_PATH = process.env.LD_LIBRARY_PATH;
    return env;
  }

  private trainerEnv(folder: RunFolder, slot: Slot, seed: number, python: PythonLayout): Record<string, string> {
    const env = this.tunedEnv();
    Object.assign(env, {
      AUTORESEARCH_CHANNEL_FD: '3',
      AUTORESEARCH_SEED: String(seed),
    });
    if (this.sandboxed) {
      env.PATH = `${dirname(python.executable)}:/usr/local/bin:/usr/bin:/bin`;
      env.HOME = TRAINER_SCRATCH;
      env.TMPDIR = '/tmp';
      env.AUTORESEARCH_DATA_DIR = TRAINER_DATA;
      if (this.options.compileCache) Object.assign(env, compileCacheEnv());
    } else {
      env.PATH = process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin';
      env.HOME = folder.scratch;
      env.AUTORESEARCH_DATA_DIR = folder.data;
      if (process.env.LD_LIBRARY_PATH) env.LD_LIBRARY_PATH = process.env.LD_LIBRARY_PATH;
    }
    // An empty CUDA_VISIBLE_DEVICES would hide every GPU; on CPU slots leave the variable out.
    const cudaDevices = this.cudaDevicesOf(slot);
    if (cudaDevices !== undefined) env.CUDA_VISIBLE_DEVICES = cudaDevices;
    return env;
  }

  /** Whether the GPUs are a Slurm job's, chosen by Slurm in the job (jobs that request GPUs). */
  private get jobGpus(): boolean {
    return (this.options.slurm?.gpusPerJob ?? 0) > 0;
  }

  /**
   * The CUDA_VISIBLE_DEVICES value a run's sandboxes get: the slot's GPUs, or for a Slurm job
   * that requests GPUs the placeholder its job script replaces with the GPUs Slurm gave the job.
   */
  private cudaDevicesOf(slot: Slot): string | undefined {
    return this.jobGpus ? SLURM_CUDA_VISIBLE_DEVICES : slot.cudaDevices;
  }

  /** With `prestart` (the launcher's host path), the trainer is a pre-started one: it gets its seed with `go`, not in its environment. */
  private spec(folder: RunFolder, slot: Slot, seed: number, facts: HostFacts, python: PythonLayout, prestart?: string): SupervisorSpec {
    const env = this.trainerEnv(folder, slot, seed, python);
    if (prestart) delete env.AUTORESEARCH_SEED;
    const budget = this.options.budget;
    const trainerArgs = this.sandboxed
      ? trainerArgv(facts, {
          codeDir: folder.code,
          dataDir: this.options.dataDir,
          cudaDevices: this.cudaDevicesOf(slot),
          jobGpus: this.jobGpus,
          scratchBytes: budget.scratchBytes,
          python,
          env,
          forbidden: this.options.forbidden,
          prestart,
          compileCache: this.options.compileCache,
        })
      : [...pdeathsigPrefix(), this.options.python, '-u', join(folder.code, 'train.py')];
    return {
      trainer_argv: trainerArgs,
      trainer_env: env,
      trainer_cwd: this.sandboxed ? folder.root : folder.scratch,
      log_path: folder.log,
      data_dir: this.options.dataDir,
      scratch_host: this.sandboxed ? null : folder.scratch,
      handover_dir: folder.handover,
      seed,
      time_budget: budget.timeBudget,
      budget_clock: budget.clock,
      budget_slack: budget.slack,
      startup_allowance: budget.startupAllowance,
      export_allowance: budget.exportAllowance,
      max_batch_tokens: budget.maxBatchTokens,
      compile_cache: this.sandboxed && this.options.compileCache ? TRAINER_COMPILE_CACHE : null,
      compile_snapshot: this.sandboxed && this.options.compileCache ? folder.compileSnapshot : null,
    };
  }

  private evaluatorCommand(folder: RunFolder, slot: Slot, evalSeed: number, facts: HostFacts, python: PythonLayout): { command: string; args: string[]; env: Record<string, string> } {
    const env = this.tunedEnv();
    env.AUTORESEARCH_RESULT_FD = '3';
    const cudaDevices = this.cudaDevicesOf(slot);
    const device = ['--device', cudaDevices !== undefined ? 'cuda' : 'cpu'];
    if (cudaDevices !== undefined) env.CUDA_VISIBLE_DEVICES = cudaDevices;
    if (this.sandboxed) {
      env.PATH = `${dirname(python.executable)}:/usr/local/bin:/usr/bin:/bin`;
      env.HOME = '/tmp';
      const args = ['--model', `${EVAL_IN}/model.pt`, '--weights', `${EVAL_IN}/weights.pt`, '--data-dir', EVAL_DATA, '--seed', String(evalSeed), ...device];
      const argv = evaluatorArgv(facts, {
        handoverDir: folder.handover,
        dataDir: this.options.dataDir,
        harnessDir: this.options.harnessDir,
        cudaDevices,
        jobGpus: this.jobGpus,
        python,
        env,
        args,
        forbidden: this.options.forbidden,
      });
      return { command: argv[0], args: argv.slice(1), env };
    }
    env.PATH = process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin';
    env.HOME = process.env.HOME ?? '/tmp';
    const args = [
      join(this.options.harnessDir, 'evaluate.py'),
      '--model',
      join(folder.handover, 'model.pt'),
      '--weights',
      join(folder.handover, 'weights.pt'),
      '--data-dir',
      this.options.dataDir,
      '--seed',
      String(evalSeed),
      ...device,
    ];
    return { command: this.options.python, args, env };
  }

  /**
   * Starts one phase as a local process group (and, where util-linux setpriv exists, with a
   * parent-death signal, so it dies with a server killed -9); stdout and stderr go to the run
   * log except the result fd, which is collected. With `stdin`, go() writes the line "go" and
   * closes it (evaluate.py --wait; supervise.py --standby gets `go SPEC`).
   */
  private startPhase(active: ActiveRun, command: string, args: string[], folder: RunFolder, how: PhaseOptions): StartedPhase {
    const argv = this.phaseArgv(command, args);
    const logFd = openSync(folder.log, 'a');
    let child: ChildProcess;
    try {
      child = spawn(argv[0], argv.slice(1), {
        cwd: how.cwd,
        detached: true,
        env: how.env,
        stdio: [how.stdin ? 'pipe' : 'ignore', ...(how.resultFd === 1 ? (['pipe', logFd] as const) : ([logFd, logFd, 'pipe'] as const))],
      });
    } finally {
      closeSync(logFd);
    }
    const kill = () => killGroup(child.pid, 'SIGKILL');
    active.children.add(kill);
    if (active.stopReason) kill();   // stopped while it was being spawned
    // A phase that already ended cannot take its "go": the pipe's error is its exit's business.
    child.stdin?.on('error', () => undefined);
    if (child.pid !== undefined) how.onStart?.(child.pid);
    let ended = false;
    const exit = new Promise<Exit>((resolvePromise) => {
      let output = '';
      let spawnError: string | undefined;
      const stream = (how.resultFd === 1 ? child.stdout : child.stdio[3]) as NodeJS.ReadableStream | null;
      stream?.setEncoding('utf8');
      stream?.on('data', (chunk: string) => {
        if (output.length < 1 << 20) output += chunk;
      });
      const settle = (result: Exit) => {
        if (ended) return;
        ended = true;
        kill();
        active.children.delete(kill);
        resolvePromise(result);
      };
      child.on('error', (error) => {
        spawnError = `could not be started (${error.message})`;
        // A process that never started emits no 'close' of its own.
        if (child.pid === undefined) settle({ exitCode: null, signal: null, output, spawnError });
      });
      child.on('close', (code, signal) => settle({ exitCode: code, signal, output, spawnError }));
    });
    return {
      pid: child.pid,
      exit,
      go: (line = 'go') => child.stdin?.end(`${line}\n`),
      // Only while it runs: once reaped, its pid (and group id) may belong to someone else.
      stop: () => {
        if (!ended) killGroup(child.pid, 'SIGKILL');
      },
    };
  }

  /** A phase's argv: the harness's Python under a parent-death signal where setpriv exists. */
  private phaseArgv(command: string, args: string[]): string[] {
    return [...(command === this.options.python ? pdeathsigPrefix() : []), command, ...args];
  }

  /**
   * The run's phases as one Slurm job (src/core/slurm.ts): the same argv, cwd and environment
   * each, started together by a job script that writes each result fd to a file in the run folder
   * and records each exit status there.
   */
  private startJob(slurm: SlurmOptions, active: ActiveRun, phases: PhaseCommand[], folder: RunFolder): StartedPhase[] {
    const id = folder.root.split('/').filter(Boolean).at(-1) ?? 'run';
    const layout = runJobLayout(folder);
    const runJob = {
      ...layout,
      gpus: this.jobGpus,
      phases: layout.phases.map((phase) => {
        const { command, args, how } = phases.find((p) => p.how.name === phase.phase) as PhaseCommand;
        return { ...phase, argv: this.phaseArgv(command, args), cwd: how.cwd, env: how.env, resultFd: how.resultFd };
      }),
    };
    const job = new SlurmJob(slurm, runJob, () => active.ceiling?.waitingInQueue(false));
    const started = this.followedPhases(job, active, phases.map(({ how }) => how.name));
    if (!active.stopReason) {
      // From submission until the job runs (sbatch, then the queue) the ceiling stands still.
      active.ceiling?.waitingInQueue(true);
      void job.submit(runJob, `autoresearch-${id}`, slurm.timeLimitMinutes ?? timeLimitMinutes(this.options.ceilingSeconds));
    }
    return started;
  }

  /**
   * A job's phases as the runner's phases: each one's exit is its end in the job, its go() writes
   * its stdin file (which the job script feeds it), and stopping any of them cancels the job: the
   * run is over.
   */
  private followedPhases(job: SlurmJob, active: ActiveRun, names: string[]): StartedPhase[] {
    const cancel = () => job.cancel();
    active.children.add(cancel);
    if (active.stopReason) cancel();
    void Promise.all(names.map((name) => job.ended(name))).then(() => active.children.delete(cancel));
    return names.map((name) => ({
      exit: job.ended(name).then((end): Exit => {
        if (end.jobId) active.slurmJob = end.jobId;
        if (end.failureStatus === 'timed_out' && !active.stopReason) {
          active.stopReason = 'timed_out';
          active.stopCause = `killed by the cluster: Slurm job ${end.jobId} ended ${end.state ?? 'TIMEOUT'} (${end.cause ?? "Slurm's time limit"})`;
        }
        return { exitCode: end.exitCode, signal: end.signal, output: end.output, spawnError: end.failure };
      }),
      go: (line = 'go') => void job.go(name, line).catch(() => cancel()),
      stop: cancel,
    }));
  }

  /** Polls the log for progress lines; returns a function that stops polling. */
  private followProgress(experimentId: number, logPath: string, active: ActiveRun): () => void {
    let offset = 0;
    let partial = '';
    const poll = () => {
      if (!existsSync(logPath)) return;
      const size = statSync(logPath).size;
      if (size <= offset) return;
      const buffer = Buffer.alloc(size - offset);
      const fd = openSync(logPath, 'r');
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
        this.emit('progress', experimentId, latest);
      }
    };
    const timer = setInterval(poll, 250);
    return () => {
      clearInterval(timer);
      poll();
    };
  }
}

/**
 * The files of a run's Slurm job and its phases, in the order the job script starts them: the
 * evaluator first, waiting on stdin for its go (evaluatorPhase), then the supervisor.
 */
function runJobLayout(folder: RunFolder): JobLayout {
  const phase = (name: string, stdin: boolean) => ({ phase: name, stdin, files: phaseFiles(folder.root, name) });
  return { log: folder.log, files: jobFiles(folder.root), phases: [phase('evaluate', true), phase('supervise', false)] };
}

let setprivPath: string | null | undefined;

/** `setpriv --pdeathsig KILL --` when util-linux setpriv exists: the process dies with its parent. */
function pdeathsigPrefix(): string[] {
  if (setprivPath === undefined) setprivPath = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p)) ?? null;
  return setprivPath ? [setprivPath, '--pdeathsig', 'KILL', '--'] : [];
}

function num(value: number | null | undefined): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

function times(report: SupervisorReport): string {
  const parts: string[] = [];
  if (report.startup_seconds != null) parts.push(`start-up ${report.startup_seconds.toFixed(1)} s`);
  if (report.training_seconds != null) parts.push(`training ${report.training_seconds.toFixed(1)} s`);
  if (report.budget_clock === 'cpu' && report.budget_used_seconds != null) parts.push(`budget used ${report.budget_used_seconds.toFixed(1)} CPU s`);
  if (report.export_seconds != null) parts.push(`export ${report.export_seconds.toFixed(1)} s`);
  return parts.join(', ') || 'no times measured';
}

function killGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal);
  } catch {
    // ESRCH: the group is already gone.
  }
}

