import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { appendFile, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { constants as osConstants } from 'node:os';

/**
 * The Slurm backend: a run as one Slurm batch job instead of local child processes. The job runs
 * the run's phases side by side, as a local run does: the evaluator starts with the supervisor and
 * waits for the server's `go`, so a run waits in the queue once, holds one allocation, and its
 * evaluator has imported torch by the time training ends. The pure half (job script, sbatch
 * arguments, the time limit, parsing sbatch/squeue/sacct output, what a job state means for a
 * run) is exported for the unit tests; `SlurmJob` is the impure half (submit, follow, cancel) over
 * the real commands.
 *
 * What travels through the shared run folder, since a job has no pipe back to the server:
 *   <R>/slurm/job.sh          the job script (written by the server)
 *   <R>/slurm/job.out         Slurm's own output file (the job script's errors, Slurm's messages)
 *   <R>/slurm/job.jobid       the job id, written by the server once sbatch has answered: a server
 *                             that restarts cancels the jobs its predecessor left (cancelRecordedJobs)
 *   <R>/slurm/job.error       why the job script started no phase (no GPU, no run folder)
 * and for each phase (supervise, evaluate):
 *   <R>/slurm/<phase>.stdin   the phase's stdin (the evaluator's `go`), written by the server when
 *                             it decides; the job script feeds it to the phase once it exists
 *   <R>/slurm/<phase>.result  what the phase writes on its result fd (the supervisor's report on
 *                             stdout, the evaluator's result on fd 3)
 *   <R>/slurm/<phase>.exit    the phase's exit status, written by the job script when it ends:
 *                             its absence after the job has left the queue means the job was lost
 * The phases' stdout/stderr other than the result go to the run log, as locally. Every file is
 * written through a rename, so a reader on another node never sees half of one.
 */

export interface SlurmOptions {
  /** sbatch --partition; left out, the cluster's default partition. */
  partition?: string;
  /** sbatch --account; left out, the user's default account. */
  account?: string;
  /** GPUs per job, requested as gres `gpu:N`; 0 requests none (CPU runs). */
  gpusPerJob: number;
  /** Extra sbatch arguments, passed as given (a site's QOS, constraints, reservation). */
  extraArgs?: string[];
  /**
   * How often squeue is asked about a job; default 2 s (a cluster's controller serves everyone).
   * The exit file a job's script writes last is looked for every FILE_POLL_MS besides, so a phase
   * that ended is seen sooner than that.
   */
  pollMs?: number;
  /**
   * The job's time limit in minutes; default from the run's wall-clock ceiling (timeLimitMinutes).
   * Tests set it to see Slurm's own TIMEOUT.
   */
  timeLimitMinutes?: number;
}

/** The files of a run's job in the run folder. */
export interface JobFiles {
  dir: string;
  script: string;
  out: string;
  jobid: string;
  error: string;
}

/** The files of one phase of the job. */
export interface PhaseFiles {
  stdin: string;
  result: string;
  exit: string;
}

export function jobFiles(runRoot: string): JobFiles {
  const dir = join(runRoot, 'slurm');
  return { dir, script: join(dir, 'job.sh'), out: join(dir, 'job.out'), jobid: join(dir, 'job.jobid'), error: join(dir, 'job.error') };
}

export function phaseFiles(runRoot: string, phase: string): PhaseFiles {
  const at = (ext: string) => join(runRoot, 'slurm', `${phase}.${ext}`);
  return { stdin: at('stdin'), result: at('result'), exit: at('exit') };
}

/**
 * Where the server writes a GPU job's device list (CUDA_VISIBLE_DEVICES in the trainer's and the
 * evaluator's environment, in argv words and the run's spec): the GPUs are Slurm's choice, known
 * only in the job, so the job script puts CUDA_VISIBLE_DEVICES as Slurm set it in their place.
 */
export const SLURM_CUDA_VISIBLE_DEVICES = '@SLURM_CUDA_VISIBLE_DEVICES@';

/** The values Slurm may give CUDA_VISIBLE_DEVICES that the job script passes on: indices, GPU UUIDs, MIG ids. */
export const CUDA_DEVICES_PATTERN = '^[A-Za-z0-9,_-]+$';

/** A phase of a job as the server follows it: its name, files, and whether it waits for a word on stdin. */
export interface PhaseLayout {
  /** supervise | evaluate: names the phase's files. */
  phase: string;
  /**
   * Whether the phase waits for the server's word on its stdin (the evaluator's `go`): the job
   * script starts it at once and feeds it its stdin file once the server has written it. Else
   * its stdin is /dev/null.
   */
  stdin: boolean;
  files: PhaseFiles;
}

/** What one phase runs, as the local runner would spawn it. */
export interface JobPhase extends PhaseLayout {
  argv: string[];
  cwd: string;
  /** The phase's complete environment (the job script clears Slurm's). */
  env: Record<string, string>;
  /** 1: the result is stdout (the supervisor); 3: fd 3 (the evaluator), stdout to the log. */
  resultFd: 1 | 3;
}

/** A run's job as the server follows it: its files and its phases'. */
export interface JobLayout {
  /** The run log, where the phases' output and the job's own lines go. */
  log: string;
  files: JobFiles;
  phases: PhaseLayout[];
}

/** A run's job as it is submitted: its phases, started together, each to its own end. */
export interface RunJob extends JobLayout {
  phases: JobPhase[];
  /**
   * The job requested GPUs: the script starts no phase without CUDA_VISIBLE_DEVICES from Slurm,
   * and puts its value where the server wrote SLURM_CUDA_VISIBLE_DEVICES (argv words, environment
   * values, and the spec file named after `--spec` in a phase's argv).
   */
  gpus?: boolean;
}

/**
 * Slurm's time limit for a job of a run whose ceiling is `ceilingSeconds`: whole minutes (Slurm
 * enforces no finer, and checks only every half minute or so), one more than the ceiling needs.
 * The server's own ceiling timer stops the run first and precisely; Slurm's limit is the backstop
 * that frees the GPU when the server is gone.
 */
export function timeLimitMinutes(ceilingSeconds: number): number {
  if (!Number.isFinite(ceilingSeconds) || ceilingSeconds <= 0) throw new Error(`the run ceiling must be a positive number of seconds, not ${ceilingSeconds}`);
  return Math.ceil(ceilingSeconds / 60) + 1;
}

/** Minutes as sbatch --time takes them: `M` below an hour, `D-HH:MM:00` beyond. */
export function formatTimeLimit(minutes: number): string {
  if (!Number.isInteger(minutes) || minutes <= 0) throw new Error(`a Slurm time limit is a positive number of minutes, not ${minutes}`);
  if (minutes < 60) return String(minutes);
  const days = Math.floor(minutes / 1440);
  const hours = Math.floor((minutes % 1440) / 60);
  const mins = minutes % 60;
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${days}-${pad(hours)}:${pad(mins)}:00`;
}

/** Single-quotes a word for bash; safe for any byte string without NUL. */
export function shellQuote(word: string): string {
  if (word.includes('\0')) throw new Error('a NUL byte cannot be passed to a job');
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** The file named after `--spec` in a phase's argv, if any. */
function specOf(argv: string[]): string | undefined {
  const at = argv.indexOf('--spec');
  return at >= 0 ? argv[at + 1] : undefined;
}

/** How often a job script looks for a waiting phase's stdin file (the server's `go`). */
const STDIN_POLL_SECONDS = 0.05;

/**
 * The batch script of a run's job. It records where it runs in the run log (job id, node, the
 * GPUs Slurm gave it), then starts every phase at once with exactly its environment, and writes
 * each phase's exit status when that phase ends, through a rename, so a half-written status is
 * never read. A phase that waits for the server's word gets its stdin file once it exists. Nothing
 * in the script comes from the agent: every word is the server's, quoted.
 *
 * Each phase runs as its own process group (bash job control, `set -m`, which also leaves its
 * SIGINT alone), and a TERM, INT or HUP to the script (scancel, the job's end) or the script's own
 * exit kills those groups: a cluster whose process tracking follows only the script's process
 * group or parent links loses none of the run's processes. (The sandboxed trainer is its own
 * session under supervise.py; bwrap's --die-with-parent and the supervisor's parent-death signal
 * end it with the supervisor.)
 *
 * With `gpus`, CUDA_VISIBLE_DEVICES as Slurm set it must be a non-empty list of [A-Za-z0-9,_-]
 * (indices, GPU UUIDs, MIG ids); it replaces SLURM_CUDA_VISIBLE_DEVICES in every word, and in the
 * spec files before the phases start. A job without one, or on a node without the run folder,
 * starts no phase: the reason in the run log and the .error file, every phase's exit nonzero.
 */
export function jobScript(job: RunJob): string {
  const q = shellQuote;
  for (const phase of job.phases) {
    for (const name of Object.keys(phase.env)) if (!ENV_NAME.test(name)) throw new Error(`environment variable name ${JSON.stringify(name)} cannot be passed to a job`);
  }
  const wordsOf = (phase: JobPhase) => [...Object.entries(phase.env).map(([k, v]) => `${k}=${v}`), ...phase.argv];
  if (!job.gpus && job.phases.some((phase) => wordsOf(phase).some((w) => w.includes(SLURM_CUDA_VISIBLE_DEVICES)))) throw new Error(`${SLURM_CUDA_VISIBLE_DEVICES} in a job that requests no GPU`);
  // A word holding the placeholder: its quoted parts around "$gpus", set (and checked) at run time.
  const word = (w: string) => w.split(SLURM_CUDA_VISIBLE_DEVICES).map(q).join('"$gpus"');
  const log = q(job.log);
  /** Writes `value` (a shell word) to `file` through a rename. */
  const record = (value: string, file: string) => `echo ${value} >${q(`${file}.tmp`)} && mv -f ${q(`${file}.tmp`)} ${q(file)}`;
  const lines = [
    '#!/bin/bash',
    `# autoresearch-mcp: a run (${job.phases.map((p) => p.phase).join(', ')}) as a Slurm job (src/core/slurm.ts)`,
    'PATH=/usr/local/bin:/usr/bin:/bin',
    `echo "slurm: job \${SLURM_JOB_ID:-?} on \${SLURMD_NODENAME:-?} CUDA_VISIBLE_DEVICES=\${CUDA_VISIBLE_DEVICES-}" >>${log}`,
    // No phase started: why, in the log, the .error file and Slurm's output; every phase's exit.
    `fail() { echo "slurm: $1" >>${log}; echo "slurm: $1" >&2; ${record('"$1"', job.files.error)}; ${job.phases.map((p) => `${record('"$2"', p.files.exit)}; `).join('')}exit "$2"; }`,
  ];
  for (const cwd of new Set(job.phases.map((p) => p.cwd))) lines.push(`[ -d ${q(cwd)} ] || fail ${q(`cannot enter ${cwd} on this node`)} 127`);
  if (job.gpus) {
    lines.push(
      'gpus=${CUDA_VISIBLE_DEVICES-}',
      `[[ $gpus =~ ${CUDA_DEVICES_PATTERN} ]] || fail "the job requested GPUs but Slurm gave it none it can name (CUDA_VISIBLE_DEVICES='$gpus'): check that the partition has gres gpu and that Slurm sets CUDA_VISIBLE_DEVICES for it" 1`,
    );
    const specs = new Set(job.phases.map((phase) => specOf(phase.argv)).filter((spec): spec is string => spec !== undefined));
    for (const spec of specs) {
      lines.push(`sed -i "s/${SLURM_CUDA_VISIBLE_DEVICES}/$gpus/g" ${q(spec)} || fail ${q(`could not write the job's GPUs into ${spec}`)} 1`);
    }
  }
  lines.push(
    'set -m',
    'groups=()',
    `trap 'for g in "\${groups[@]}"; do kill -KILL -- -"$g" 2>/dev/null; done; exit 143' TERM INT HUP`,
    `trap 'for g in "\${groups[@]}"; do kill -KILL -- -"$g" 2>/dev/null; done' EXIT`,
  );
  for (const phase of job.phases) {
    const stdin = phase.stdin ? `< <(until [ -e ${q(phase.files.stdin)} ]; do sleep ${STDIN_POLL_SECONDS}; done; cat ${q(phase.files.stdin)})` : '</dev/null';
    const redirects = phase.resultFd === 1 ? `>${q(phase.files.result)} 2>>${log}` : `>>${log} 2>&1 3>${q(phase.files.result)}`;
    lines.push(
      `# ${phase.phase}${phase.stdin ? ": starts now, reads its stdin once the server has written it" : ''}`,
      `(cd ${q(phase.cwd)} && env -i ${wordsOf(phase).map(word).join(' ')} ${stdin} ${redirects}; code=$?; ${record('"$code"', phase.files.exit)}; exit "$code") &`,
      'groups+=($!)',
    );
  }
  // The job's own exit status: the first phase's that failed. An ended phase's group is dropped,
  // so the exit trap signals no group id a later process may have taken.
  lines.push(
    'code=0',
    'for i in "${!groups[@]}"; do wait "${groups[i]}"; c=$?; unset \'groups[i]\'; [ "$code" -eq 0 ] && code=$c; done',
    'exit "$code"',
    '',
  );
  return lines.join('\n');
}

/**
 * sbatch options the server sets itself or that would change what a job is (its name, files,
 * time limit, one task on one node, no environment, never requeued, where it runs from, an array
 * or a dependency): `--slurm-sbatch-args` may not name them.
 */
const RESERVED_SBATCH_OPTIONS = new Set([
  'parsable', 'job-name', 'output', 'error', 'input', 'time', 'nodes', 'ntasks', 'export', 'export-file', 'no-requeue', 'requeue',
  'partition', 'account', 'gres', 'gpus', 'gpus-per-node', 'gpus-per-task', 'gpus-per-socket', 'array', 'wrap', 'chdir', 'dependency', 'hold', 'wait', 'test-only', 'uid', 'gid',
]);

/**
 * Whether extra sbatch options (a site's QOS, constraint, memory, CPUs per task, reservation) can
 * be passed as given: long options only (`--name` or `--name=value`, one word each), none of
 * RESERVED_SBATCH_OPTIONS. Undefined when they can, else what is wrong.
 */
export function sbatchArgsProblem(words: string[]): string | undefined {
  for (const word of words) {
    const match = /^--([a-z][a-z0-9-]*)(=.*)?$/.exec(word);
    if (!match) return `"${word}" is not a long sbatch option (write --name or --name=value, e.g. --qos=high --mem=64G)`;
    if (RESERVED_SBATCH_OPTIONS.has(match[1])) return `--${match[1]} is set by the server (or would change what a run's job is); leave it out`;
  }
  return undefined;
}

/** sbatch's arguments for a run's job (the script path last). */
export function sbatchArgs(options: SlurmOptions, job: JobLayout, name: string, minutes: number): string[] {
  const args = ['--parsable', '--job-name', name, '--output', job.files.out, '--time', formatTimeLimit(minutes), '--nodes', '1', '--ntasks', '1'];
  // The job gets no environment of the server's (the script sets every variable it passes on),
  // and is never requeued: a requeued job would run the phases a second time into the same folder.
  args.push('--export', 'NONE', '--no-requeue');
  if (options.partition) args.push('--partition', options.partition);
  if (options.account) args.push('--account', options.account);
  if (options.gpusPerJob > 0) args.push(`--gres=gpu:${options.gpusPerJob}`);
  args.push(...(options.extraArgs ?? []), job.files.script);
  return args;
}

/** The job id from `sbatch --parsable` (`ID` or `ID;CLUSTER`). */
export function parseSbatch(stdout: string): string | undefined {
  const first = stdout.trim().split('\n')[0]?.split(';')[0]?.trim();
  return first && /^\d+(_\d+)?$/.test(first) ? first : undefined;
}

export interface JobRow {
  id: string;
  state: string;
  reason: string;
}

/** Rows of `squeue -h -t all -o %i|%T|%r` (or sacct -n -P -o JobID,State,Reason); lines that do not parse are skipped. */
export function parseJobRows(stdout: string): JobRow[] {
  const rows: JobRow[] = [];
  for (const line of stdout.split('\n')) {
    const [id, state, reason] = line.trim().split('|');
    if (!id || !state) continue;
    // sacct writes "CANCELLED by 0"; the state is the first word.
    rows.push({ id: id.trim(), state: state.trim().split(/\s+/)[0].toUpperCase(), reason: (reason ?? '').trim() });
  }
  return rows;
}

/** Job states in which the job has not ended (Slurm's JOB_STATE_CODES, squeue(1)). */
const ACTIVE_STATES = new Set([
  'PENDING',
  'CONFIGURING',
  'RUNNING',
  'COMPLETING',
  'SUSPENDED',
  'REQUEUED',
  'REQUEUE_FED',
  'REQUEUE_HOLD',
  'RESIZING',
  'RESV_DEL_HOLD',
  'SIGNALING',
  'STAGE_OUT',
  'STOPPED',
]);

/** Why a job that ended without its script recording an exit ended, by its final state. */
const ENDED_CAUSES: Record<string, string> = {
  COMPLETED: 'the job completed, yet its script recorded no exit status: the run folder is probably not on storage this server and the node share',
  FAILED: 'the job failed before its script recorded an exit status (see slurm/job.out in the run folder)',
  CANCELLED: 'the job was cancelled outside this server (scancel by a user or an administrator)',
  TIMEOUT: "the job reached Slurm's time limit",
  NODE_FAIL: 'the node running the job failed',
  BOOT_FAIL: 'the node allocated to the job failed to boot',
  PREEMPTED: 'the job was preempted by another job',
  OUT_OF_MEMORY: "the job ran out of memory (Slurm's memory limit for it)",
  DEADLINE: 'the job reached its deadline',
  REVOKED: 'the job was revoked by a federated cluster',
  SPECIAL_EXIT: 'the job ended in a special exit state',
};

/**
 * What a job's state means for the phase: still `active`, or `ended` with the run status it
 * implies when the phase itself left no exit status (`timed_out` only for Slurm's own limit; every
 * other loss is `crashed`) and the cause to record.
 */
export type JobVerdict = { kind: 'active'; state: string } | { kind: 'ended'; state: string; status: 'crashed' | 'timed_out'; cause: string };

export function jobVerdict(state: string | undefined): JobVerdict {
  if (state === undefined) {
    return { kind: 'ended', state: 'UNKNOWN', status: 'crashed', cause: 'the cluster no longer knows the job and its script recorded no exit status (lost: node failure, preemption or a restarted controller)' };
  }
  const upper = state.toUpperCase();
  if (ACTIVE_STATES.has(upper)) return { kind: 'active', state: upper };
  const cause = ENDED_CAUSES[upper] ?? `the job ended in state ${upper} without its script recording an exit status`;
  return { kind: 'ended', state: upper, status: upper === 'TIMEOUT' || upper === 'DEADLINE' ? 'timed_out' : 'crashed', cause };
}

/** The exit status the job script recorded, as the local runner reports a child's: a code, or the signal that killed it (bash: 128 + N). */
export function parseExitFile(text: string): { exitCode: number | null; signal: string | null } | undefined {
  const trimmed = text.trim();
  if (!/^\d+$/.test(trimmed)) return undefined;
  const code = Number(trimmed);
  if (code > 128) {
    const name = Object.entries(osConstants.signals).find(([, n]) => n === code - 128)?.[0];
    if (name) return { exitCode: null, signal: name };
  }
  return { exitCode: code, signal: null };
}

/** Words a failed sbatch says, with what to do about them. */
export function sbatchRefusal(stderr: string, options: SlurmOptions): string {
  const message = stderr.trim().split('\n').filter(Boolean).slice(-2).join(' ') || 'no message';
  const hints: string[] = [];
  if (/partition/i.test(message)) hints.push(`check --slurm-partition${options.partition ? ` (${options.partition})` : ''} against \`sinfo -s\``);
  if (/account|association/i.test(message)) hints.push(`check --slurm-account${options.account ? ` (${options.account})` : ''} against \`sacctmgr show assoc user=$USER\``);
  if (/gres|generic resource/i.test(message)) hints.push(`the partition has no GPUs as gres "gpu" for ${options.gpusPerJob} per job: choose a GPU partition or --slurm-gpus 0`);
  if (/time limit/i.test(message)) hints.push("the partition's time limit is below the run's ceiling: lower --ceiling-seconds or choose another partition");
  return `sbatch refused the job: ${message}${hints.length ? `; ${hints.join('; ')}` : ''}`;
}

// ---- the impure half: the real commands --------------------------------------------------------

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
  /** Set when the command could not be started at all (not installed). */
  missing?: string;
}

function runCommand(command: string, args: string[]): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(command, args, { encoding: 'utf8', timeout: 60_000 }, (error, stdout, stderr) => {
      const err = error as (NodeJS.ErrnoException & { code?: unknown }) | null;
      if (err && err.code === 'ENOENT') {
        resolve({ code: 127, stdout: '', stderr: '', missing: `${command} is not installed (the Slurm client commands must be on this server's PATH: Debian package slurm-client)` });
        return;
      }
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

/** The state the cluster gives the job: squeue while it remembers the job (MinJobAge), else sacct where accounting is on; undefined when neither knows it. */
async function jobState(id: string): Promise<{ state: string; reason: string } | undefined> {
  const queued = await runCommand('squeue', ['-h', '-t', 'all', '-j', id, '-o', '%i|%T|%r']);
  const row = parseJobRows(queued.stdout).find((r) => r.id === id);
  if (row) return row;
  if (queued.code !== 0 && !/invalid job id/i.test(queued.stderr)) {
    // The controller did not answer: not a verdict about the job. Say "active" and ask again.
    return { state: 'PENDING', reason: 'the Slurm controller does not answer' };
  }
  const accounted = await runCommand('sacct', ['-n', '-P', '-X', '-j', id, '-o', 'JobID,State,Reason']);
  if (accounted.code !== 0) return undefined;
  return parseJobRows(accounted.stdout).find((r) => r.id === id);
}

/** How often a followed job's exit file is looked for (a local stat, or the shared folder's). */
const FILE_POLL_MS = 100;

export interface JobEnd {
  exitCode: number | null;
  signal: string | null;
  /** The result fd's content. */
  output: string;
  jobId?: string;
  /** The final Slurm state, when the cluster still knew it. */
  state?: string;
  /** Set when the phase did not run to its own exit: why (refused by sbatch, lost, cancelled outside). */
  failure?: string;
  /** The run status that failure implies (timed_out for Slurm's own time limit). */
  failureStatus?: 'crashed' | 'timed_out';
  /** The cause alone (failure without "ran in Slurm job N, which ended S: "). */
  cause?: string;
}

/**
 * A run as one Slurm job: `submit()` writes the script and submits it (or `attach()` follows a
 * job submitted earlier, by a server that has since died), `ended(phase)` settles when that phase
 * has ended (with its exit status and result) or the job has left the queue without it (with
 * why), `go(phase, line)` gives a waiting phase its stdin, and `cancel()` is scancel. Cancelling
 * before submission makes submit() a no-op.
 */
export class SlurmJob {
  jobId?: string;
  private readonly ends = new Map<string, { promise: Promise<JobEnd>; settle: (end: JobEnd) => void; done: boolean }>();
  private cancelled = false;
  private submitted = false;

  constructor(
    private readonly options: SlurmOptions,
    private readonly job: JobLayout,
    /** Called once, when the job leaves the PENDING state (it runs, or it ended while waiting). */
    private readonly onLeftQueue: () => void = () => undefined,
  ) {
    for (const phase of job.phases) {
      let settle!: (end: JobEnd) => void;
      const promise = new Promise<JobEnd>((resolve) => (settle = resolve));
      this.ends.set(phase.phase, { promise, settle, done: false });
    }
  }

  /** Settles when the phase has ended, or the job has without it. */
  ended(phase: string): Promise<JobEnd> {
    const end = this.ends.get(phase);
    if (!end) throw new Error(`the job has no phase ${phase}`);
    return end.promise;
  }

  /** Writes the job's files and submits it as `name` with a time limit of `minutes`; then follows it until every phase has ended. */
  async submit(job: RunJob, name: string, minutes: number): Promise<void> {
    if (this.submitted) return;
    this.submitted = true;
    if (this.cancelled) return this.finishAll({ exitCode: null, signal: null, output: '', failure: 'was cancelled before it was submitted to Slurm' });
    const files = this.job.files;
    try {
      await mkdir(files.dir, { recursive: true });
      const stale = [files.jobid, files.error, `${files.error}.tmp`, ...this.job.phases.flatMap((p) => [p.files.stdin, `${p.files.stdin}.tmp`, p.files.result, p.files.exit, `${p.files.exit}.tmp`])];
      await Promise.all(stale.map((path) => rm(path, { force: true })));
      await writeFile(files.script, jobScript(job), { mode: 0o755 });
    } catch (error) {
      return this.finishAll({ exitCode: null, signal: null, output: '', failure: `could not be submitted to Slurm: its job files could not be written in ${files.dir} (${(error as Error).message}); the run folder must be writable and on storage the cluster's nodes share` });
    }
    const submitted = await runCommand('sbatch', sbatchArgs(this.options, this.job, name, minutes));
    const id = submitted.code === 0 ? parseSbatch(submitted.stdout) : undefined;
    if (!id) {
      const why = submitted.missing ?? (submitted.code === 0 ? `sbatch answered without a job id (${submitted.stdout.trim() || 'nothing'})` : sbatchRefusal(submitted.stderr, this.options));
      return this.finishAll({ exitCode: null, signal: null, output: '', failure: `could not be submitted to Slurm: ${why}` });
    }
    this.jobId = id;
    // For a server that restarts after this one died: it cancels the jobs its run folders name.
    await writeFile(files.jobid, `${id}\n`).catch(() => undefined);
    if (this.cancelled) void runCommand('scancel', [id]);   // cancelled while sbatch ran
    void this.follow(id);
  }

  /**
   * Follows job `id`, submitted with this layout by an earlier server: its phases settle from
   * their exit files, or from the job's end, as for a job submitted here.
   */
  attach(id: string): void {
    if (this.submitted) return;
    this.submitted = true;
    this.jobId = id;
    void this.follow(id);
  }

  /**
   * Gives a phase that waits on its stdin its line (the evaluator's `go`), through a rename: the
   * job script feeds it once the whole file is there.
   */
  async go(phase: string, line: string): Promise<void> {
    const target = this.job.phases.find((p) => p.phase === phase);
    if (!target?.stdin) throw new Error(`phase ${phase} of the job reads no stdin`);
    await writeFile(`${target.files.stdin}.tmp`, `${line}\n`);
    await rename(`${target.files.stdin}.tmp`, target.files.stdin);
  }

  /** scancel (SIGTERM to the job's processes, then SIGKILL after the cluster's KillWait); before submission, settles every phase at once. */
  cancel(): void {
    if (this.allDone()) return;
    this.cancelled = true;
    if (!this.submitted) this.finishAll({ exitCode: null, signal: null, output: '', failure: 'was never submitted to Slurm' });
    else if (this.jobId) void runCommand('scancel', [this.jobId]);
  }

  private async follow(id: string): Promise<void> {
    const askEveryMs = this.options.pollMs ?? 2000;
    let askedAt = 0;
    let pending = true;
    let saidWhy = '';
    for (;;) {
      // A phase whose exit file is there ran to its end (or the script refused to start it) and said so last.
      for (const phase of this.job.phases) {
        if (!this.ends.get(phase.phase)?.done && existsSync(phase.files.exit)) {
          if (pending) {
            pending = false;
            this.onLeftQueue();
          }
          this.finish(phase.phase, this.collect(id, phase, { kind: 'ended', state: 'UNKNOWN', status: 'crashed', cause: 'the job script recorded its exit' }));
        }
      }
      if (this.allDone()) return;
      if (Date.now() - askedAt < askEveryMs) {
        await new Promise((r) => setTimeout(r, Math.min(FILE_POLL_MS, askEveryMs)));
        continue;
      }
      askedAt = Date.now();
      const row = await jobState(id);
      const verdict = jobVerdict(row?.state);
      // While it waits, the run log says why (Resources, Priority, a held job ...), each change once.
      if (pending && verdict.state === 'PENDING' && row && row.reason !== saidWhy) {
        saidWhy = row.reason;
        await appendFile(this.job.log, `slurm: job ${id} waiting in the queue (${row.reason || 'no reason given'})\n`).catch(() => undefined);
      }
      if (pending && verdict.state !== 'PENDING') {
        pending = false;
        this.onLeftQueue();
      }
      if (verdict.kind === 'ended') {
        // Its script may have written the last exit file just before the job ended.
        for (const phase of this.job.phases) if (!this.ends.get(phase.phase)?.done) this.finish(phase.phase, this.collect(id, phase, verdict));
        return;
      }
    }
  }

  private collect(id: string, phase: PhaseLayout, verdict: Extract<JobVerdict, { kind: 'ended' }>): JobEnd {
    const files = phase.files;
    const output = existsSync(files.result) ? readFileSync(files.result, 'utf8').slice(0, 1 << 20) : '';
    const recorded = existsSync(files.exit) ? parseExitFile(readFileSync(files.exit, 'utf8')) : undefined;
    const state = verdict.state === 'UNKNOWN' ? undefined : verdict.state;
    // The script started no phase (no GPU, no run folder on the node): its reason.
    const refused = existsSync(this.job.files.error) ? readFileSync(this.job.files.error, 'utf8').trim().slice(0, 2000) : '';
    if (refused && !this.cancelled) {
      return { exitCode: recorded?.exitCode ?? null, signal: recorded?.signal ?? null, output, jobId: id, state, failure: `ran in Slurm job ${id}, whose script did not start it: ${refused}`, failureStatus: 'crashed', cause: refused };
    }
    // A phase whose exit the script recorded ran to its end, whatever state the job then got.
    if (recorded && verdict.state !== 'TIMEOUT') return { ...recorded, output, jobId: id, state };
    const cause = this.cancelled ? 'the server cancelled it' : verdict.cause;
    const failure = `ran in Slurm job ${id}, which ended ${verdict.state === 'UNKNOWN' ? 'out of sight' : verdict.state}: ${cause}`;
    return { exitCode: recorded?.exitCode ?? null, signal: recorded?.signal ?? null, output, jobId: id, state, failure, failureStatus: verdict.status, cause };
  }

  private allDone(): boolean {
    return [...this.ends.values()].every((end) => end.done);
  }

  private finish(phase: string, end: JobEnd): void {
    const entry = this.ends.get(phase);
    if (!entry || entry.done) return;
    entry.done = true;
    entry.settle(end);
  }

  private finishAll(end: JobEnd): void {
    for (const phase of this.ends.keys()) this.finish(phase, end);
  }
}

/** The job id a run folder records (slurm/job.jobid), or undefined when it names none (never submitted, or not a Slurm run). */
export function recordedJobId(runRoot: string): string | undefined {
  const file = jobFiles(runRoot).jobid;
  const id = existsSync(file) ? readFileSync(file, 'utf8').trim() : '';
  return id && parseSbatch(id) === id ? id : undefined;
}

/**
 * For a server that starts after one that died: cancels the job a run folder names if the
 * cluster still runs or queues it (scancel), so that no run of the dead server goes on unwatched.
 * Returns the ids cancelled and those that had ended already; undefined when the folder names
 * no job (never submitted, or not a Slurm run).
 */
export async function cancelRecordedJobs(runRoot: string): Promise<{ cancelled: string[]; ended: string[] } | undefined> {
  const id = recordedJobId(runRoot);
  if (id === undefined) return undefined;
  if (jobVerdict((await jobState(id))?.state).kind !== 'active') return { cancelled: [], ended: [id] };
  await runCommand('scancel', [id]);
  return { cancelled: [id], ended: [] };
}

/** The cause recorded for a run whose jobs a restarted server found (cancelRecordedJobs). */
export function restartCause(found: { cancelled: string[]; ended: string[] }): string {
  const list = (ids: string[]) => `Slurm job${ids.length > 1 ? 's' : ''} ${ids.join(', ')}`;
  const parts = [
    ...(found.cancelled.length > 0 ? [`${list(found.cancelled)} cancelled`] : []),
    ...(found.ended.length > 0 ? [`${list(found.ended)} had ended unwatched`] : []),
  ];
  return `the server restarted; ${parts.join('; ')}`;
}

/** Whether sbatch and squeue answer here; undefined when they do, else what to do. */
export async function slurmProblem(options: SlurmOptions): Promise<string | undefined> {
  const info = await runCommand('sinfo', ['-h', '-o', '%P|%a', ...(options.partition ? ['-p', options.partition] : [])]);
  if (info.missing) return info.missing;
  if (info.code !== 0) return `the Slurm controller does not answer (sinfo: ${info.stderr.trim() || `exit ${info.code}`}); check that slurmctld runs and this host's slurm.conf names it`;
  if (options.partition && !info.stdout.trim()) return `Slurm partition "${options.partition}" does not exist; \`sinfo -s\` lists the partitions, pass one with --slurm-partition`;
  return undefined;
}

/** Whether `inner` is `outer` or inside it (both absolute, already resolved). */
function within(inner: string, outer: string): boolean {
  const o = outer.endsWith('/') ? outer : `${outer}/`;
  return inner === outer || inner.startsWith(o);
}

/**
 * The folders a job reads or writes must be on the shared folder, where the nodes see them at the
 * same paths; undefined when they are, else which is not and what to do. Pure: the caller
 * resolves symlinks first.
 */
export function sharedFolderProblem(sharedDir: string, folders: { name: string; path: string }[]): string | undefined {
  const outside = folders.filter((f) => !within(f.path, sharedDir));
  if (outside.length === 0) return undefined;
  return (
    `with --backend slurm the jobs read and write ${outside.map((f) => `the ${f.name} (${f.path})`).join(' and ')}, ` +
    `which ${outside.length === 1 ? 'is' : 'are'} not on the shared folder ${sharedDir}: create the workspace (and its data, init --data-dir) under ${sharedDir}, or name the folder the nodes share with --slurm-shared-dir`
  );
}

/** Writes and removes a probe file in `dir`: undefined when that works, else what to do. */
export async function writableProblem(dir: string): Promise<string | undefined> {
  const probe = join(dir, `.autoresearch-probe-${process.pid}`);
  try {
    await writeFile(probe, 'probe\n');
    await rm(probe, { force: true });
    return undefined;
  } catch (error) {
    return `the shared folder ${dir} is not writable by this server (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}); fix its permissions or name another with --slurm-shared-dir`;
  }
}
