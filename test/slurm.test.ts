import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  formatTimeLimit,
  jobFiles,
  jobScript,
  jobVerdict,
  parseExitFile,
  parseJobRows,
  parseSbatch,
  phaseFiles,
  sbatchArgs,
  sbatchArgsProblem,
  sbatchRefusal,
  sharedFolderProblem,
  shellQuote,
  SLURM_CUDA_VISIBLE_DEVICES,
  slurmProblem,
  timeLimitMinutes,
  writableProblem,
  type JobPhase,
  type RunJob,
  type SlurmOptions,
} from '../src/core/slurm.js';
import type { ProcessRunner } from '../src/core/runner.js';
import { CLI, closeServer, connect, expectSucceeded, makeWorkspace, ok, pidAlive, queryState, ROOT, serverEnv, waitFinished, waitUntil, type Connected } from './helpers.js';
import { makeRunner, peekNextId, runTrain, seen, setup, trainPy, type Setup } from './runner-fixtures.js';

// ---- the pure half -------------------------------------------------------------------------------

describe('Slurm job parameters', () => {
  it('gives a job whole minutes, one more than the run ceiling needs', () => {
    expect(timeLimitMinutes(1)).toBe(2);
    expect(timeLimitMinutes(60)).toBe(2);
    expect(timeLimitMinutes(61)).toBe(3);
    expect(timeLimitMinutes(3600)).toBe(61);
    expect(() => timeLimitMinutes(0)).toThrow(/positive/);
    expect(() => timeLimitMinutes(Number.NaN)).toThrow(/positive/);
  });

  it('writes the time limit as sbatch --time reads it', () => {
    expect(formatTimeLimit(5)).toBe('5');
    expect(formatTimeLimit(59)).toBe('59');
    expect(formatTimeLimit(60)).toBe('0-01:00:00');
    expect(formatTimeLimit(61)).toBe('0-01:01:00');
    expect(formatTimeLimit(1500)).toBe('1-01:00:00');
    expect(() => formatTimeLimit(1.5)).toThrow(/minutes/);
  });

  it('passes partition, account, GPUs and extra arguments, never requeues, exports nothing of ours, and ends with the script', () => {
    const job = runJob('/r', [phase('/r', 'supervise')]);
    expect(sbatchArgs({ gpusPerJob: 0 }, job, 'autoresearch-7', 3)).toEqual([
      '--parsable', '--job-name', 'autoresearch-7', '--output', '/r/slurm/job.out', '--time', '3', '--nodes', '1', '--ntasks', '1',
      '--export', 'NONE', '--no-requeue', '/r/slurm/job.sh',
    ]);
    const full = sbatchArgs({ gpusPerJob: 1, partition: 'gpu', account: 'lab', extraArgs: ['--qos=short'] }, job, 'n', 90);
    expect(full.slice(-7)).toEqual(['--partition', 'gpu', '--account', 'lab', '--gres=gpu:1', '--qos=short', '/r/slurm/job.sh']);
    expect(full).toContain('0-01:30:00');
  });

  it("takes a site's extra sbatch options as long options, none that the server sets itself", () => {
    expect(sbatchArgsProblem(['--qos=high', '--mem=64G', '--cpus-per-task=8', '--constraint=a100|h100', '--exclusive'])).toBeUndefined();
    expect(sbatchArgsProblem(['-q', 'high'])).toMatch(/^"-q" is not a long sbatch option \(write --name or --name=value/);
    expect(sbatchArgsProblem(['high'])).toMatch(/"high" is not a long sbatch option/);
    for (const reserved of ['--time=5', '--output=/x', '--export=ALL', '--requeue', '--array=0-3', '--gres=gpu:2', '--gpus-per-node=2', '--wrap=ls', '--dependency=afterok:1', '--job-name=x']) {
      expect(sbatchArgsProblem(['--qos=high', reserved])).toMatch(/is set by the server \(or would change what a run's job is\); leave it out$/);
    }
  });

  it('reads the job id from sbatch --parsable, with or without a cluster name', () => {
    expect(parseSbatch('12\n')).toBe('12');
    expect(parseSbatch('12;ci\n')).toBe('12');
    expect(parseSbatch('12_3\n')).toBe('12_3');
    expect(parseSbatch('Submitted batch job 12\n')).toBeUndefined();
    expect(parseSbatch('')).toBeUndefined();
  });

  it('reads squeue and sacct rows, the state being the first word', () => {
    expect(parseJobRows('5|RUNNING|None\n6|PENDING|Priority\n\nnoise\n')).toEqual([
      { id: '5', state: 'RUNNING', reason: 'None' },
      { id: '6', state: 'PENDING', reason: 'Priority' },
    ]);
    expect(parseJobRows('7|CANCELLED by 0|None\n')).toEqual([{ id: '7', state: 'CANCELLED', reason: 'None' }]);
  });

  it.each(['PENDING', 'CONFIGURING', 'RUNNING', 'COMPLETING', 'SUSPENDED', 'REQUEUED', 'running'])('%s: the job has not ended', (state) => {
    expect(jobVerdict(state).kind).toBe('active');
  });

  it.each([
    ['COMPLETED', 'crashed', /not on storage this server and the node share/],
    ['FAILED', 'crashed', /failed before its script recorded/],
    ['CANCELLED', 'crashed', /cancelled outside this server/],
    ['TIMEOUT', 'timed_out', /Slurm's time limit/],
    ['NODE_FAIL', 'crashed', /node running the job failed/],
    ['PREEMPTED', 'crashed', /preempted/],
    ['OUT_OF_MEMORY', 'crashed', /out of memory/],
    ['BOOT_FAIL', 'crashed', /failed to boot/],
    ['DEADLINE', 'timed_out', /deadline/],
    ['SOMETHING_NEW', 'crashed', /state SOMETHING_NEW/],
  ])('%s without a recorded exit: %s, saying why', (state, status, cause) => {
    const verdict = jobVerdict(state);
    expect(verdict).toMatchObject({ kind: 'ended', state, status });
    expect(verdict.kind === 'ended' && verdict.cause).toMatch(cause);
  });

  it('calls a job the cluster no longer knows lost', () => {
    expect(jobVerdict(undefined)).toMatchObject({ kind: 'ended', state: 'UNKNOWN', status: 'crashed', cause: expect.stringMatching(/no longer knows the job/) });
  });

  it('reads the exit status the job script recorded, a signal as bash reports it', () => {
    expect(parseExitFile('0\n')).toEqual({ exitCode: 0, signal: null });
    expect(parseExitFile('3')).toEqual({ exitCode: 3, signal: null });
    expect(parseExitFile('137\n')).toEqual({ exitCode: null, signal: 'SIGKILL' });
    expect(parseExitFile('143')).toEqual({ exitCode: null, signal: 'SIGTERM' });
    expect(parseExitFile('')).toBeUndefined();
    expect(parseExitFile('12a')).toBeUndefined();
  });

  it('says what to do when sbatch refuses a job', () => {
    const options: SlurmOptions = { gpusPerJob: 1, partition: 'nope', account: 'x' };
    expect(sbatchRefusal('sbatch: error: invalid partition specified: nope\nsbatch: error: Batch job submission failed: Invalid partition name specified\n', options)).toMatch(
      /^sbatch refused the job: .*Invalid partition name specified; check --slurm-partition \(nope\) against `sinfo -s`$/,
    );
    expect(sbatchRefusal('sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified', options)).toMatch(/check --slurm-account \(x\)/);
    expect(sbatchRefusal('sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification', options)).toMatch(/--slurm-gpus 0/);
    expect(sbatchRefusal('', options)).toBe('sbatch refused the job: no message');
  });

  it('wants the run folders and the data on the shared folder, naming what is not', () => {
    expect(sharedFolderProblem('/shared', [{ name: 'run folders', path: '/shared/ws/.autoresearch/runs' }, { name: 'data folder', path: '/shared' }])).toBeUndefined();
    const problem = sharedFolderProblem('/shared', [{ name: 'run folders', path: '/home/me/ws/.autoresearch/runs' }, { name: 'data folder', path: '/sharedx/data' }]);
    expect(problem).toMatch(/the run folders \(\/home\/me\/ws\/.autoresearch\/runs\) and the data folder \(\/sharedx\/data\), which are not on the shared folder \/shared: create the workspace/);
  });

  it('finds an unwritable shared folder', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ar-slurm-shared-'));
    expect(await writableProblem(dir)).toBeUndefined();
    expect(await writableProblem(join(dir, 'missing'))).toMatch(/is not writable by this server \(ENOENT\); fix its permissions or name another with --slurm-shared-dir/);
  });
});

function phase(root: string, name: string, over: Partial<JobPhase> = {}): JobPhase {
  return { phase: name, argv: ['/bin/true'], cwd: root, env: {}, resultFd: 1, stdin: false, files: phaseFiles(root, name), ...over };
}

function runJob(root: string, phases: JobPhase[], over: Partial<RunJob> = {}): RunJob {
  return { log: join(root, 'run.log'), files: jobFiles(root), phases, ...over };
}

/** Writes the job's script; returns its path. */
async function writeScript(job: RunJob): Promise<string> {
  await mkdir(job.files.dir, { recursive: true });
  await writeFile(job.files.script, jobScript(job));
  return job.files.script;
}

describe('the job script, run by bash as a job runs it', () => {
  it('runs a phase with exactly its environment (quoted whatever it holds), its stdin, the result fd to a file and the rest to the log, and records the exit last', async () => {
    const root = await mkdtemp(join(tmpdir(), 'ar-slurm-script-'));
    const tricky = `it's "quoted" $HOME \`x\` ; rm -rf /`;
    const script = `
import json, os, sys
print("to the log", flush=True)
print("err to the log", file=sys.stderr)
os.write(3, json.dumps({"env": dict(os.environ), "stdin": sys.stdin.read(), "cwd": os.getcwd()}).encode())
sys.exit(4)
`;
    const evaluate = phase(root, 'evaluate', { argv: ['/usr/bin/python3', '-c', script, tricky], env: { TRICKY: tricky, PYTHONDONTWRITEBYTECODE: '1' }, resultFd: 3, stdin: true });
    const job = runJob(root, [evaluate]);
    const path = await writeScript(job);
    await writeFile(evaluate.files.stdin, 'go\n');
    const ran = spawnSync('/bin/bash', [path], { env: { SLURM_JOB_ID: '77', SLURMD_NODENAME: 'n1', CUDA_VISIBLE_DEVICES: '1', SECRET: 'server' }, encoding: 'utf8' });
    expect(ran.status).toBe(4);
    const seen = JSON.parse(await readFile(evaluate.files.result, 'utf8'));
    // python adds LC_CTYPE on some systems; nothing of the job's own environment passes
    expect(Object.keys(seen.env).filter((k) => k !== 'LC_CTYPE').sort()).toEqual(['PYTHONDONTWRITEBYTECODE', 'TRICKY']);
    expect(seen.env.TRICKY).toBe(tricky);
    expect(seen.stdin).toBe('go\n');
    expect(seen.cwd).toBe(root);
    expect(parseExitFile(await readFile(evaluate.files.exit, 'utf8'))).toEqual({ exitCode: 4, signal: null });
    expect(existsSync(`${evaluate.files.exit}.tmp`)).toBe(false);
    const log = await readFile(job.log, 'utf8');
    expect(log).toBe('slurm: job 77 on n1 CUDA_VISIBLE_DEVICES=1\nto the log\nerr to the log\n');
  });

  it('sends stdout to the result file for the supervisor, stdin from /dev/null', async () => {
    const root = await mkdtemp(join(tmpdir(), 'ar-slurm-script-'));
    const supervise = phase(root, 'supervise', { argv: ['/bin/sh', '-c', 'cat; echo "{\\"outcome\\": \\"exited\\"}"; echo oops >&2'] });
    const job = runJob(root, [supervise]);
    expect(spawnSync('/bin/bash', [await writeScript(job)]).status).toBe(0);
    expect(await readFile(supervise.files.result, 'utf8')).toBe('{"outcome": "exited"}\n');
    expect(await readFile(job.log, 'utf8')).toMatch(/^slurm: job \? on \? CUDA_VISIBLE_DEVICES=\noops\n$/);
  });

  it("starts the phases together: the waiting one takes its stdin only once the server writes it, after the other's exit is recorded", async () => {
    const root = await mkdtemp(join(tmpdir(), 'ar-slurm-script-'));
    const started = join(root, 'evaluator-started');
    // The evaluator marks its start, then blocks on stdin; the supervisor ends at once.
    const evaluate = phase(root, 'evaluate', {
      argv: ['/usr/bin/python3', '-c', `import os, sys\nopen(${JSON.stringify(started)}, "w").close()\nos.write(3, sys.stdin.read().encode())`],
      resultFd: 3,
      stdin: true,
    });
    const supervise = phase(root, 'supervise', { argv: ['/bin/sh', '-c', 'echo report'] });
    const job = runJob(root, [evaluate, supervise]);
    const bash = spawn('/bin/bash', [await writeScript(job)], { stdio: 'ignore' });
    const closed = new Promise<number | null>((resolve) => bash.on('close', (code) => resolve(code)));
    await waitUntil(() => existsSync(supervise.files.exit) && existsSync(started), 30, 'the supervisor to end while the evaluator waits');
    expect(await readFile(supervise.files.result, 'utf8')).toBe('report\n');
    expect(existsSync(evaluate.files.exit)).toBe(false);
    // the server's go, through a rename as SlurmJob.go writes it
    await writeFile(`${evaluate.files.stdin}.tmp`, 'go\n');
    await rename(`${evaluate.files.stdin}.tmp`, evaluate.files.stdin);
    expect(await closed).toBe(0);
    expect(await readFile(evaluate.files.result, 'utf8')).toBe('go\n');
    expect(parseExitFile(await readFile(evaluate.files.exit, 'utf8'))).toEqual({ exitCode: 0, signal: null });
  }, 60_000);

  it("exits with the first failing phase's status, each phase's own recorded", async () => {
    const root = await mkdtemp(join(tmpdir(), 'ar-slurm-script-'));
    const first = phase(root, 'evaluate', { argv: ['/bin/sh', '-c', 'exit 0'] });
    const second = phase(root, 'supervise', { argv: ['/bin/sh', '-c', 'exit 3'] });
    expect(spawnSync('/bin/bash', [await writeScript(runJob(root, [first, second]))]).status).toBe(3);
    expect(await readFile(first.files.exit, 'utf8')).toBe('0\n');
    expect(await readFile(second.files.exit, 'utf8')).toBe('3\n');
  });

  it('records 127 for every phase and says so in the log when the folder is not there on the node', async () => {
    const root = await mkdtemp(join(tmpdir(), 'ar-slurm-script-'));
    const ran = join(root, 'ran');
    const evaluate = phase(root, 'evaluate', { argv: ['/usr/bin/touch', ran], stdin: true });
    const supervise = phase(root, 'supervise', { cwd: join(root, 'not-on-this-node') });
    const job = runJob(root, [evaluate, supervise]);
    expect(spawnSync('/bin/bash', [await writeScript(job)]).status).toBe(127);
    expect(await readFile(supervise.files.exit, 'utf8')).toBe('127\n');
    expect(await readFile(evaluate.files.exit, 'utf8')).toBe('127\n');
    expect(existsSync(ran)).toBe(false);
    expect(await readFile(job.log, 'utf8')).toMatch(/cannot enter .*not-on-this-node on this node/);
    expect(await readFile(job.files.error, 'utf8')).toMatch(/cannot enter .*not-on-this-node on this node/);
  });

  it('refuses what cannot be passed to a job', () => {
    expect(() => jobScript(runJob('/r', [phase('/r', 'x', { env: { 'A-B': '1' } })]))).toThrow(/cannot be passed/);
    expect(() => jobScript(runJob('/r', [phase('/r', 'x', { env: { CUDA_VISIBLE_DEVICES: SLURM_CUDA_VISIBLE_DEVICES } })]))).toThrow(/requests no GPU/);
    expect(() => shellQuote('a\0b')).toThrow(/NUL/);
    expect(shellQuote("it's")).toBe(`'it'\\''s'`);
  });
});

describe('the job script of a GPU job, run by bash with the GPUs Slurm would give it', () => {
  const roots: string[] = [];
  afterAll(async () => {
    await Promise.all(roots.map((root) => rm(root, { recursive: true, force: true })));
  });

  /** A GPU job whose phase reports its environment, argv and the spec file it was given (after --spec). */
  async function gpuJob(): Promise<{ root: string; job: RunJob; supervise: JobPhase; spec: string; ran: string }> {
    const root = await mkdtemp(join(tmpdir(), 'ar-slurm-gpu-'));
    roots.push(root);
    const spec = join(root, 'spec.json');
    const ran = join(root, 'ran');
    await writeFile(spec, JSON.stringify({ trainer_argv: ['bwrap', '--setenv', 'CUDA_VISIBLE_DEVICES', SLURM_CUDA_VISIBLE_DEVICES], trainer_env: { CUDA_VISIBLE_DEVICES: SLURM_CUDA_VISIBLE_DEVICES } }));
    const script = `
import json, os, sys
open(${JSON.stringify(ran)}, "w").close()
os.write(3, json.dumps({"env": os.environ.get("CUDA_VISIBLE_DEVICES"), "argv": sys.argv[1:], "spec": json.load(open(sys.argv[2]))}).encode())
`;
    const supervise = phase(root, 'supervise', {
      argv: ['/usr/bin/python3', '-c', script, '--spec', spec, `--devices=${SLURM_CUDA_VISIBLE_DEVICES}`],
      env: { CUDA_VISIBLE_DEVICES: SLURM_CUDA_VISIBLE_DEVICES },
      resultFd: 3,
    });
    const job = runJob(root, [supervise], { gpus: true });
    await writeScript(job);
    return { root, job, supervise, spec, ran };
  }

  it.each(['1', '0,1', 'GPU-5e2c1f3a-8b7d-4c6e-9f01-23456789abcd', 'MIG-9a8b7c6d-1111-2222-3333-444455556666'])(
    'puts CUDA_VISIBLE_DEVICES=%s where the server wrote the placeholder: environment, argv and the spec file',
    async (devices) => {
      const { job, supervise, spec } = await gpuJob();
      const ran = spawnSync('/bin/bash', [job.files.script], { env: { SLURM_JOB_ID: '8', SLURMD_NODENAME: 'g1', CUDA_VISIBLE_DEVICES: devices }, encoding: 'utf8' });
      expect(ran.status).toBe(0);
      const seen = JSON.parse(await readFile(supervise.files.result, 'utf8'));
      expect(seen.env).toBe(devices);
      expect(seen.argv).toEqual(['--spec', spec, `--devices=${devices}`]);
      expect(seen.spec).toEqual({ trainer_argv: ['bwrap', '--setenv', 'CUDA_VISIBLE_DEVICES', devices], trainer_env: { CUDA_VISIBLE_DEVICES: devices } });
      expect(await readFile(spec, 'utf8')).not.toContain(SLURM_CUDA_VISIBLE_DEVICES);
      expect(await readFile(job.log, 'utf8')).toBe(`slurm: job 8 on g1 CUDA_VISIBLE_DEVICES=${devices}\n`);
      expect(existsSync(job.files.error)).toBe(false);
    },
  );

  it.each([
    ['unset', undefined],
    ['empty', ''],
    ['a shell word', '0;touch x'],
    ['a space', '0 1'],
    ['a slash', 'a/b'],
  ])('fails without starting the phase when CUDA_VISIBLE_DEVICES is %s, saying why in the log', async (_what, devices) => {
    const { job, supervise, spec, ran } = await gpuJob();
    const env: Record<string, string> = { SLURM_JOB_ID: '9', SLURMD_NODENAME: 'g1' };
    if (devices !== undefined) env.CUDA_VISIBLE_DEVICES = devices;
    const result = spawnSync('/bin/bash', [job.files.script], { env, encoding: 'utf8', cwd: supervise.cwd });
    expect(result.status).toBe(1);
    expect(existsSync(ran)).toBe(false);
    expect(await readFile(spec, 'utf8')).toContain(SLURM_CUDA_VISIBLE_DEVICES);
    expect(await readFile(supervise.files.exit, 'utf8')).toBe('1\n');
    const why = /the job requested GPUs but Slurm gave it none it can name \(CUDA_VISIBLE_DEVICES='.*'\): check that the partition has gres gpu/;
    expect(await readFile(job.log, 'utf8')).toMatch(new RegExp(`^slurm: ${why.source}`, 'm'));
    expect(await readFile(job.files.error, 'utf8')).toMatch(why);
    expect(existsSync(join(supervise.cwd, 'x'))).toBe(false);
  });

  it('writes the GPUs into a spec file that two phases name once', () => {
    const named = (name: string) => phase('/r', name, { argv: ['/usr/bin/python3', 'x.py', '--spec', '/r/spec.json'] });
    const script = jobScript(runJob('/r', [named('evaluate'), named('supervise')], { gpus: true }));
    expect(script.match(/^sed -i .*'\/r\/spec.json'/gm)).toHaveLength(1);
  });

  it("kills every phase's process group, the one waiting for its stdin too, and records no exit when the job is signalled (scancel)", async () => {
    const root = await mkdtemp(join(tmpdir(), 'ar-slurm-term-'));
    roots.push(root);
    const pids = join(root, 'pids');
    const waiting = join(root, 'waiting');
    // The supervisor and a child of it that stays in its process group, both sleeping.
    const script = `
import os, subprocess, time
child = subprocess.Popen(["sleep", "300"])
open(${JSON.stringify(pids)} + ".tmp", "w").write(f"{os.getpid()} {child.pid}")
os.rename(${JSON.stringify(pids)} + ".tmp", ${JSON.stringify(pids)})
time.sleep(300)
`;
    const supervise = phase(root, 'supervise', { argv: ['/usr/bin/python3', '-c', script] });
    // The evaluator, blocked on a stdin the server never writes.
    const evaluate = phase(root, 'evaluate', { argv: ['/usr/bin/python3', '-c', `import os, sys\nopen(${JSON.stringify(waiting)}, "w").write(str(os.getpid()))\nsys.stdin.read()`], stdin: true });
    const job = runJob(root, [evaluate, supervise]);
    const path = await writeScript(job);
    const bash = spawn('/bin/bash', [path], { detached: true, stdio: 'ignore' });
    const closed = new Promise<number | null>((resolve) => bash.on('close', (code) => resolve(code)));
    await waitUntil(() => existsSync(pids) && existsSync(waiting) && readFileSync(waiting, 'utf8') !== '', 30, 'both phases to start');
    const [phasePid, childPid] = readFileSync(pids, 'utf8').split(' ').map(Number);
    const evaluatorPid = Number(readFileSync(waiting, 'utf8'));
    bash.kill('SIGTERM');
    expect(await closed).toBe(143);
    await waitUntil(() => ![phasePid, childPid, evaluatorPid].some(pidAlive), 15, 'the phases and the child to end');
    // nothing of the script is left either (the subshells, the loop that waits for the stdin file)
    await waitUntil(() => processesOf(path).length === 0, 15, 'the job script\'s own processes to end');
    expect(existsSync(supervise.files.exit)).toBe(false);
    expect(existsSync(evaluate.files.exit)).toBe(false);
  }, 60_000);
});

// ---- the runner on a real loopback cluster (test/slurm-local.sh) ------------------------------

const CLUSTER_SCRIPT = join(ROOT, 'test', 'slurm-local.sh');
/** Whether this file started the loopback cluster (and so stops it when done). */
let startedCluster = false;

/** Starts the loopback cluster unless one answers: tests that need a cluster start one rather than skip. */
function ensureCluster(): void {
  const answer = spawnSync('sinfo', ['-h', '-o', '%t'], { encoding: 'utf8' });
  if (answer.status === 0 && /idle|mix|alloc/.test(answer.stdout)) return;
  const started = spawnSync('bash', [CLUSTER_SCRIPT, 'start'], { encoding: 'utf8', env: { ...process.env, SLURM_CI_GPUS: '2', SLURM_CI_KILLWAIT: '2' } });
  if (started.status !== 0) {
    throw new Error(`could not start the loopback Slurm cluster (${CLUSTER_SCRIPT} start; as root, with Debian's slurmctld slurmd slurm-client munge installed, as .ci/run does):\n${started.stdout}\n${started.stderr}`);
  }
  startedCluster = true;
}

afterAll(() => {
  if (startedCluster) spawnSync('bash', [CLUSTER_SCRIPT, 'stop'], { stdio: 'inherit' });
});

/** The Slurm job id the run log names, once the run's job runs. */
function jobIdIn(dir: string): string | undefined {
  const log = join(dir, 'run.log');
  if (!existsSync(log)) return undefined;
  return /^slurm: job (\d+) on /m.exec(readFileSync(log, 'utf8'))?.[1];
}

/** Jobs of ours the cluster still runs or queues. */
function ourActiveJobs(): string[] {
  const out = execFileSync('squeue', ['-h', '-o', '%i|%j'], { encoding: 'utf8' });
  return out.split('\n').filter((line) => line.includes('|autoresearch-'));
}

const SLURM: SlurmOptions = { gpusPerJob: 0, pollMs: 200 };

/** Processes whose command line names the run folder (a trailing slash: run 5 is not run 50). */
function processesOf(dir: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
    } catch {
      continue;   // ended meanwhile
    }
    if (cmdline.includes(`${dir}/`) || cmdline.trimEnd().endsWith(dir)) found.push(`${pid}: ${cmdline.slice(0, 200)}`);
  }
  return found;
}

/** Waits (up to 15 s) until no process of the run is left: none may outlive its job. */
async function expectNoProcessesOf(dir: string): Promise<void> {
  await waitUntil(() => processesOf(dir).length === 0, 15, `no process of ${dir} to be left`).catch((error: Error) => {
    throw new Error(`${error.message}: ${processesOf(dir).join('\n')}`);
  });
}

/**
 * Starts a run whose train.py starts a process of its own in a new session, naming the run folder
 * in its command line (processesOf finds it), then sleeps: a trainer and a child that left its
 * group. Returns once the run's job runs that trainer.
 */
async function startSleepingRun(s: Setup, runner: ProcessRunner): Promise<{ id: number; dir: string; pending: ReturnType<typeof runTrain> }> {
  const id = peekNextId();
  const dir = join(s.runs, String(id));
  const trainer = trainPy(s, {}, { beforeBatch: `import subprocess\nsubprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", ${JSON.stringify(dir)}], start_new_session=True)\ntime.sleep(600)` });
  const pending = runTrain(s, runner, trainer);
  await waitUntil(() => jobIdIn(dir) !== undefined && processesOf(dir).some((p) => p.includes('time.sleep(600)')), 60, 'the job to start its trainer');
  return { id, dir, pending };
}

/** Fake /dev/nvidiaN nodes (char 1,3 like /dev/null) made by the GPU test when absent, removed after. */
const fakeNodes: string[] = [];

function makeFakeGpuNodes(count: number): void {
  for (let index = 0; index < count; index += 1) {
    const node = `/dev/nvidia${index}`;
    if (existsSync(node)) continue;
    if (spawnSync('mknod', ['-m', '0666', node, 'c', '1', '3']).status === 0) fakeNodes.push(node);
  }
}

function removeFakeGpuNodes(): void {
  for (const node of fakeNodes.splice(0)) rmSync(node, { force: true });
}

afterAll(removeFakeGpuNodes);

describe('ProcessRunner with the Slurm backend, on a loopback cluster', () => {
  let s: Setup;
  beforeAll(async () => {
    ensureCluster();
    s = await setup();
  }, 120_000);

  it('runs both phases in one job, sandboxed in the job, and brings back the same outcome as a local run', async () => {
    const runner = makeRunner(s, 'bwrap', { slurm: SLURM });
    const { outcome, log, dir } = await runTrain(s, runner, trainPy(s));
    expect(outcome.error).toBeUndefined();
    expect(outcome).toMatchObject({ status: 'succeeded', valBpb: 1.25, sandboxed: true, evalTokens: 100, batchesServed: 1 });
    expect(outcome.summary.val_bpb).toBe(0.1);
    // one job for the run: one line of it in the log, its id recorded
    const job = jobIdIn(dir);
    expect(job).toBeDefined();
    expect(log.match(/^slurm: job \d+ on /gm)).toHaveLength(1);
    expect(outcome.slurmJob).toBe(job);
    expect(readFileSync(join(dir, 'slurm', 'job.jobid'), 'utf8')).toBe(`${job}\n`);
    // the trainer ran in its sandbox inside the job: it saw no validation data
    expect(log).toMatch(/evaluator seed=\d+ val=True train=False weights=the-weights/);
    expect(JSON.parse(log.split('\n').find((l) => l.startsWith('SEEN '))!.slice(5))).toMatchObject({ cwd: '/sandbox/scratch', val: false });
    expect(readFileSync(join(dir, 'slurm', 'supervise.exit'), 'utf8')).toBe('0\n');
    expect(readFileSync(join(dir, 'slurm', 'evaluate.exit'), 'utf8')).toBe('0\n');
  }, 120_000);

  it('gives concurrent jobs their own fake GPU (gres), as CUDA_VISIBLE_DEVICES', async () => {
    // Two unsandboxed trainers that each wait until both run: only then are both jobs holding a GPU at once.
    const meet = await mkdtemp(join(tmpdir(), 'ar-slurm-meet-'));
    const wait = `
import pathlib
pathlib.Path(${JSON.stringify(meet)}, str(os.getpid())).touch()
while len(list(pathlib.Path(${JSON.stringify(meet)}).iterdir())) < 2:
    time.sleep(0.1)
`;
    const runner = makeRunner(s, 'none', { slurm: { ...SLURM, gpusPerJob: 1 } });
    const runs = await Promise.all([runTrain(s, runner, trainPy(s, { val_bpb: 1.1 }, { beforeBatch: wait })), runTrain(s, runner, trainPy(s, { val_bpb: 1.2 }, { beforeBatch: wait }))]);
    const devices = runs.map((run) => /^slurm: job \d+ on \S+ CUDA_VISIBLE_DEVICES=(\S*)$/m.exec(run.log)?.[1]);
    expect(runs.map((r) => r.outcome.status)).toEqual(['succeeded', 'succeeded']);
    // each trainer got its job's GPU (the job script wrote it into the spec in place of the placeholder)
    expect(runs.map((run) => seen(run.log).env.CUDA_VISIBLE_DEVICES)).toEqual(devices);
    expect(devices.sort()).toEqual(['0', '1']);
    await rm(meet, { recursive: true, force: true });
  }, 180_000);

  it("gives a GPU job's sandboxes the GPUs Slurm gave the job: its CUDA_VISIBLE_DEVICES and the /dev/nvidia* nodes the job sees", async () => {
    // This host has no GPU: /dev/nvidia0 and 1 as /dev/null's device, for this test only, where absent.
    makeFakeGpuNodes(2);
    try {
      const look = 'import glob\nprint("DEVICES " + json.dumps(sorted(glob.glob("/dev/nvidia*"))), flush=True)';
      const runner = makeRunner(s, 'bwrap', { slurm: { ...SLURM, gpusPerJob: 1 } });
      const { outcome, log, dir } = await runTrain(s, runner, trainPy(s, { val_bpb: 1.4 }, { beforeBatch: look }));
      expect(outcome.error).toBeUndefined();
      expect(outcome).toMatchObject({ status: 'succeeded', valBpb: 1.4, sandboxed: true });
      const given = /^slurm: job \d+ on \S+ CUDA_VISIBLE_DEVICES=(\S*)$/m.exec(log)?.[1];
      expect(given).toMatch(/^[01]$/);
      // the trainer, inside its sandbox, saw the job's GPU, not the placeholder
      expect(seen(log).env.CUDA_VISIBLE_DEVICES).toBe(given);
      expect(log).not.toContain(SLURM_CUDA_VISIBLE_DEVICES);
      // and the same CUDA nodes the job sees here (ConstrainDevices would limit which of them open)
      const hostNodes = readdirSync('/dev')
        .map((name) => `/dev/${name}`)
        .filter((node) => /^\/dev\/(nvidia\d+|nvidiactl|nvidia-uvm|nvidia-uvm-tools)$/.test(node))
        .sort();
      expect(hostNodes).toEqual(expect.arrayContaining(['/dev/nvidia0', '/dev/nvidia1']));
      expect(JSON.parse(log.split('\n').find((l) => l.startsWith('DEVICES '))!.slice(8))).toEqual(hostNodes);
      expect(readFileSync(join(dir, 'spec.json'), 'utf8')).not.toContain(SLURM_CUDA_VISIBLE_DEVICES);
    } finally {
      removeFakeGpuNodes();
    }
  }, 180_000);

  it('cancels the job when the trainer fails: the evaluator waiting in it for its go does not hold the allocation', async () => {
    const runner = makeRunner(s, 'bwrap', { slurm: SLURM });
    const { outcome, dir } = await runTrain(s, runner, trainPy(s, {}, { beforeBatch: 'raise SystemExit(3)' }));
    expect(outcome.status).toBe('crashed');
    expect(outcome.error).toMatch(/^train.py exited with code 3 before handing over its model/);
    expect(outcome.slurmJob).toBe(jobIdIn(dir));
    expect(existsSync(join(dir, 'slurm', 'evaluate.stdin'))).toBe(false);
    expect(ourActiveJobs()).toEqual([]);
    await expectNoProcessesOf(dir);
  }, 120_000);

  it('cancels a running job with scancel', async () => {
    const runner = makeRunner(s, 'bwrap', { slurm: SLURM });
    const { id, dir, pending } = await startSleepingRun(s, runner);
    expect(runner.stop(id, 'cancelled')).toBe(true);
    const { outcome } = await pending;
    expect(outcome.status).toBe('cancelled');
    expect(ourActiveJobs()).toEqual([]);
    await expectNoProcessesOf(dir);
  }, 120_000);

  it('stops a hung run at the server\'s ceiling and cancels its job', async () => {
    const runner = makeRunner(s, 'bwrap', { slurm: SLURM, ceilingSeconds: 4 });
    const { outcome } = await runTrain(s, runner, trainPy(s, {}, { beforeBatch: 'time.sleep(600)' }));
    expect(outcome.status).toBe('timed_out');
    expect(outcome.error).toMatch(/ceiling of 4 s/);
    expect(ourActiveJobs()).toEqual([]);
  }, 120_000);

  it("does not count a job's wait in the queue against the run's ceiling", async () => {
    // The job is submitted held and released only after waiting longer than the whole ceiling.
    const runner = makeRunner(s, 'bwrap', { slurm: { ...SLURM, extraArgs: ['--hold'] }, ceilingSeconds: 15 });
    const id = peekNextId();
    const dir = join(s.runs, String(id));
    const pending = runTrain(s, runner, trainPy(s));
    const jobid = join(dir, 'slurm', 'job.jobid');
    await waitUntil(() => existsSync(jobid), 120, 'the job to be submitted');
    const job = readFileSync(jobid, 'utf8').trim();
    await new Promise((resolve) => setTimeout(resolve, 20_000));
    const state = spawnSync('squeue', ['-h', '-j', job, '-o', '%T|%r'], { encoding: 'utf8' });
    const waited = existsSync(join(dir, 'run.log')) ? readFileSync(join(dir, 'run.log'), 'utf8') : '(no run log)';
    expect(state.stdout.trim(), `squeue for job ${job}: ${state.stdout}${state.stderr}\nrun log:\n${waited}`).toBe('PENDING|JobHeldUser');
    execFileSync('scontrol', ['release', job]);
    const { outcome, log } = await pending;
    expect(outcome.error).toBeUndefined();
    expect(outcome.status).toBe('succeeded');
    // The run log said why the job waited, and it waited once: the evaluator ran in the same job.
    expect(log.match(/^slurm: job \d+ waiting in the queue \(JobHeldUser\)$/gm)).toHaveLength(1);
  }, 240_000);

  it('records a job cancelled outside the server as crashed with the cause, and the next run goes on', async () => {
    const runner = makeRunner(s, 'bwrap', { slurm: SLURM });
    const id = peekNextId();
    const pending = runTrain(s, runner, trainPy(s, {}, { beforeBatch: 'time.sleep(600)' }));
    const dir = join(s.runs, String(id));
    await waitUntil(() => jobIdIn(dir) !== undefined, 60, 'the job to start');
    execFileSync('scancel', [jobIdIn(dir)!]);
    const { outcome } = await pending;
    expect(outcome.status).toBe('crashed');
    expect(outcome.error).toMatch(/the supervisor \(supervise.py\) ran in Slurm job \d+, which ended CANCELLED: the job was cancelled outside this server/);
    const next = await runTrain(s, runner, trainPy(s, { val_bpb: 1.3 }));
    expect(next.outcome.status).toBe('succeeded');
  }, 120_000);

  it('records a job lost to a node failure as crashed with the cause', async () => {
    const runner = makeRunner(s, 'bwrap', { slurm: SLURM });
    const { dir, pending } = await startSleepingRun(s, runner);
    const node = execFileSync('squeue', ['-h', '-j', jobIdIn(dir)!, '-o', '%N'], { encoding: 'utf8' }).trim();
    execFileSync('scontrol', ['update', `nodename=${node}`, 'state=down', 'reason=autoresearch-test']);
    try {
      const { outcome } = await pending;
      expect(outcome.status).toBe('crashed');
      expect(outcome.error).toMatch(/ran in Slurm job \d+, which ended NODE_FAIL: the node running the job failed/);
      await expectNoProcessesOf(dir);
    } finally {
      // ReturnToService=2 may have brought it back already; "resume" then says the state is invalid.
      spawnSync('scontrol', ['update', `nodename=${node}`, 'state=resume']);
      await waitUntil(() => /idle|mix/.test(spawnSync('sinfo', ['-h', '-n', node, '-o', '%t'], { encoding: 'utf8' }).stdout), 60, `node ${node} to be idle again`);
    }
  }, 120_000);

  it('records sbatch refusing the job (a partition that does not exist) as crashed, saying what to check', async () => {
    const runner = makeRunner(s, 'bwrap', { slurm: { ...SLURM, partition: 'no-such-partition' } });
    const { outcome } = await runTrain(s, runner, trainPy(s));
    expect(outcome.status).toBe('crashed');
    expect(outcome.error).toMatch(/could not be submitted to Slurm: sbatch refused the job: .*[Ii]nvalid partition.*check --slurm-partition \(no-such-partition\) against `sinfo -s`/);
    expect(await slurmProblem({ gpusPerJob: 0, partition: 'no-such-partition' })).toMatch(/partition "no-such-partition" does not exist; `sinfo -s` lists the partitions/);
    expect(await slurmProblem({ gpusPerJob: 0 })).toBeUndefined();
  }, 60_000);

  it('calls a run killed by Slurm\'s own time limit timed_out, naming the cluster', async () => {
    // Slurm enforces whole minutes (and checks about every 30 s): this test takes one to two minutes.
    // A start-up allowance past the limit: the supervisor would otherwise end the sleeping trainer first (over_budget).
    const budget = { timeBudget: 2, clock: 'wall' as const, slack: 0.5, startupAllowance: 600, exportAllowance: 20, maxBatchTokens: 1 << 20, scratchBytes: 64 << 20 };
    const runner = makeRunner(s, 'bwrap', { slurm: { ...SLURM, timeLimitMinutes: 1 }, ceilingSeconds: 600, budget });
    const { outcome } = await runTrain(s, runner, trainPy(s, {}, { beforeBatch: 'time.sleep(600)' }));
    expect(outcome.status).toBe('timed_out');
    expect(outcome.error).toMatch(/^killed by the cluster: Slurm job \d+ ended TIMEOUT \(the job reached Slurm's time limit\)/);
  }, 240_000);
});

// ---- the server with --backend slurm: the same record and audit log as local runs --------------

describe('the server with --backend slurm, on a loopback cluster (smoke profile, real train.py)', () => {
  let workspace: string;
  let server: Connected;
  beforeAll(async () => {
    ensureCluster();
    workspace = await makeWorkspace('smoke');
    server = await connect(workspace, ['--backend', 'slurm', '--ceiling-seconds', '120'], 'slurm-e2e');
    await ok(server.client, 'start_session', { tag: 'slurm' });
  }, 600_000);

  afterAll(async () => {
    if (server) await closeServer(server);
  });

  it('runs the baseline as a Slurm job and records its result like a local run', async () => {
    const run = await ok(server.client, 'run_experiment', { description: 'baseline on slurm' });
    const done = await waitFinished(server.client, run.experiment.id);
    expectSucceeded(done);
    const [row] = queryState(workspace, 'SELECT status, val_bpb, sandboxed, log_path FROM experiments WHERE id = ?', run.experiment.id);
    expect(row).toMatchObject({ status: 'succeeded', sandboxed: 1 });
    expect(row.val_bpb).toBeGreaterThan(0);
    const log = readFileSync(row.log_path, 'utf8');
    // the run's audit event names its job, as the run log does
    const job = /^slurm: job (\d+) on /m.exec(log)?.[1];
    expect(job).toBeDefined();
    const events = queryState(workspace, "SELECT method, message, result FROM audit_log WHERE kind = 'event' AND experiment_id = ?", run.experiment.id);
    expect(events).toEqual([{ method: 'run_finished', message: `succeeded as Slurm job ${job}`, result: JSON.stringify({ slurm_job: job }) }]);
  }, 300_000);

  it('records a job lost by the cluster as crashed with the cause, in the row and the audit log', async () => {
    const run = await ok(server.client, 'run_experiment', { description: 'lost on slurm' });
    const id = run.experiment.id as number;
    const dir = join(workspace, '.autoresearch', 'runs', String(id));
    await waitUntil(() => jobIdIn(dir) !== undefined, 120, 'the job to start');
    execFileSync('scancel', [jobIdIn(dir)!]);
    const done = await waitFinished(server.client, id);
    expect(done.status).toBe('crashed');
    expect(done.error).toMatch(/ran in Slurm job \d+, which ended CANCELLED: the job was cancelled outside this server/);
    const events = queryState(workspace, "SELECT method, message, result FROM audit_log WHERE kind = 'event' AND experiment_id = ?", id);
    expect(events).toEqual([{ method: 'run_crashed', message: done.error, result: JSON.stringify({ slurm_job: jobIdIn(dir) }) }]);
  }, 300_000);

  it('follows on the jobs a killed server left (one per slot) when the next server starts, cancels the rest, and records both', async () => {
    await closeServer(server);
    server = await connect(workspace, ['--backend', 'slurm', '--ceiling-seconds', '120', '--slots', '2'], 'slurm-e2e');
    // Two runs that sleep 20 s before training: long enough for the server to die and another to start.
    const current = await ok(server.client, 'read_train_py');
    const anchor = /^SOFTCAP = .*$/m.exec(current.text)?.[0] as string;
    await ok(server.client, 'apply_patch', { edits: [{ search: anchor, replace: `${anchor}\nimport time\ntime.sleep(20)` }] });
    const first = (await ok(server.client, 'run_experiment', { description: 'followed on by the next server' })).experiment.id as number;
    // queueing returns the working train.py to the head: the second change is made from there
    await ok(server.client, 'apply_patch', { edits: [{ search: anchor, replace: `${anchor}\nimport time\ntime.sleep(21)` }] });
    const second = (await ok(server.client, 'run_experiment', { description: 'one more than the next server has slots' })).experiment.id as number;
    const dirs = [first, second].map((id) => join(workspace, '.autoresearch', 'runs', String(id)));
    await waitUntil(() => dirs.every((dir) => jobIdIn(dir) !== undefined && existsSync(join(dir, 'slurm', 'job.jobid'))), 120, 'both jobs to start');
    const [followed, cancelled] = dirs.map((dir) => jobIdIn(dir)!);
    expect(readFileSync(join(dirs[0], 'slurm', 'job.jobid'), 'utf8')).toBe(`${followed}\n`);
    // The server dies without a word (its jobs go on); the next one, with one slot, finds both runs in the record.
    const pid = server.transport.pid as number;
    process.kill(pid, 'SIGKILL');
    await waitUntil(() => !pidAlive(pid), 30, 'the killed server to be gone');
    await server.client.close().catch(() => undefined);
    expect(ourActiveJobs().filter((line) => line.startsWith(`${followed}|`) || line.startsWith(`${cancelled}|`))).toHaveLength(2);
    server = await connect(workspace, ['--backend', 'slurm', '--ceiling-seconds', '120'], 'slurm-e2e');
    // the first is followed to its end and scored as if nothing had happened
    const done = await waitFinished(server.client, first);
    expectSucceeded(done);
    expect(done.val_bpb).toBeGreaterThan(0);
    // the second, beyond the one slot, was cancelled and says why
    const [row] = (await ok(server.client, 'get_results', { experiment_id: second })).experiments;
    expect(row.status).toBe('crashed');
    expect(row.error).toBe(`the server restarted; Slurm job ${cancelled} cancelled`);
    await waitUntil(() => ourActiveJobs().length === 0, 30, 'no job of ours left in the queue');
    for (const dir of dirs) await expectNoProcessesOf(dir);
    const events = (id: number) => queryState(workspace, "SELECT method, message FROM audit_log WHERE kind = 'event' AND experiment_id = ? ORDER BY seq", id);
    expect(events(first)).toEqual([
      { method: 'reconcile', message: `experiment ${first} was running when the server stopped; its Slurm job ${followed} is followed on (re-attached) on slot 0` },
      { method: 'run_finished', message: `succeeded as Slurm job ${followed}` },
    ]);
    expect(events(second)).toEqual([{ method: 'reconcile', message: expect.stringContaining(`marked crashed (the server restarted; Slurm job ${cancelled} cancelled)`) }]);
  }, 300_000);

  it('records a job that ended while no server watched with what the cluster says, once the next server follows it on', async () => {
    const current = await ok(server.client, 'read_train_py');
    const anchor = /^SOFTCAP = .*$/m.exec(current.text)?.[0] as string;
    await ok(server.client, 'apply_patch', { edits: [{ search: anchor, replace: `${anchor}\nimport time\ntime.sleep(30)` }] });
    const id = (await ok(server.client, 'run_experiment', { description: 'cancelled while no server watched' })).experiment.id as number;
    const dir = join(workspace, '.autoresearch', 'runs', String(id));
    await waitUntil(() => jobIdIn(dir) !== undefined && existsSync(join(dir, 'slurm', 'job.jobid')), 120, 'the job to start');
    const job = jobIdIn(dir)!;
    const pid = server.transport.pid as number;
    process.kill(pid, 'SIGKILL');
    await waitUntil(() => !pidAlive(pid), 30, 'the killed server to be gone');
    await server.client.close().catch(() => undefined);
    // someone cancels the job while no server is there to see it
    execFileSync('scancel', [job]);
    await waitUntil(() => !ourActiveJobs().some((line) => line.startsWith(`${job}|`)), 30, `job ${job} to leave the queue`);
    server = await connect(workspace, ['--backend', 'slurm', '--ceiling-seconds', '120'], 'slurm-e2e');
    const done = await waitFinished(server.client, id);
    expect(done.status).toBe('crashed');
    expect(done.error).toMatch(new RegExp(`ran in Slurm job ${job}, which ended CANCELLED: the job was cancelled outside this server`));
    const events = queryState(workspace, "SELECT method FROM audit_log WHERE kind = 'event' AND experiment_id = ? ORDER BY seq", id);
    expect(events).toEqual([{ method: 'reconcile' }, { method: 'run_crashed' }]);
    await expectNoProcessesOf(dir);
  }, 300_000);

  it('refuses to start a lab on a partition that does not exist, or with the workspace off the shared folder, saying what to do', async () => {
    const lab = (...args: string[]) => spawnSync(process.execPath, [CLI, 'lab', '--workspace', workspace, '--backend', 'slurm', ...args], { encoding: 'utf8', env: serverEnv(), timeout: 120_000 });
    const partition = lab('--slurm-partition', 'no-such-partition');
    expect(partition.status).not.toBe(0);
    expect(partition.stderr).toMatch(/Slurm partition "no-such-partition" does not exist; `sinfo -s` lists the partitions, pass one with --slurm-partition/);
    const elsewhere = await mkdtemp(join(tmpdir(), 'ar-slurm-elsewhere-'));
    const shared = lab('--slurm-shared-dir', elsewhere);
    expect(shared.status).not.toBe(0);
    expect(shared.stderr).toMatch(/the run folders \(.*\) and the data folder \(.*\), which are not on the shared folder .*: create the workspace/);
    const reserved = lab('--slurm-sbatch-args=--qos=normal --time=5');
    expect(reserved.status).not.toBe(0);
    expect(reserved.stderr).toMatch(/--slurm-sbatch-args: --time is set by the server/);
  }, 300_000);
});
