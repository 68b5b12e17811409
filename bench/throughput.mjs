// Throughput of the lab against its number of slots: experiments per hour, how busy each slot is
// while candidates wait, and the gap between one run's end and the next run's start on a slot.
// For each slot count N, a fresh smoke-profile workspace and the real server (stdio, in-process,
// `--slots N` CPU slots), a kept baseline, then N x AGENTS_PER_SLOT simulated agents over that one connection: each
// waits THINK seconds (reading its result, choosing a change), submits a change against the head
// (run_experiment with edits: a distinct WARMDOWN_FRAC), waits for the result and discards it,
// until EXPERIMENTS candidates have run. The figures come from the stored rows (queued, started,
// finished, slot), not from the client's clock.
// With THROUGHPUT_HOLD_SECONDS=S the runs do not compute: the head is bench/standin_train.py on the
// cpu profile (its CPU-time clock does not count a sleep), holding its slot S seconds as a GPU run
// would, so the slots do not share out this machine's cores and the figure shows the dispatch alone.
// THROUGHPUT_SERVER_ARGS adds server arguments (e.g. "--backend slurm --slurm-shared-dir /srv").
// Usage: npm run build && node bench/throughput.mjs [slot counts, e.g. 1,2,4,8] [experiments per count] [think seconds] [agents per slot]
//        (writes bench/results-throughput-<host>[-<THROUGHPUT_LABEL>].json)
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { cpus, hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { ResearchClient } from '../dist/agent/client.js';
import { createWorkspace } from '../dist/core/init.js';
import { Store } from '../dist/core/store.js';
import { scratchDir } from './scratch.mjs';

const ROOT = resolve(import.meta.dirname, '..');
const PYTHON = process.env.AUTORESEARCH_PYTHON ?? new URL('../python/.venv/bin/python', import.meta.url).pathname;
const SLOT_COUNTS = (process.argv[2] ?? '1,2,4,8').split(',').map(Number);
const EXPERIMENTS = Number(process.argv[3] ?? 16);
const THINK = Number(process.argv[4] ?? 2);
// Two agents per slot keep a candidate waiting while a run trains, so the gap between runs is measured.
const AGENTS_PER_SLOT = Number(process.argv[5] ?? 2);
const HOLD = Number(process.env.THROUGHPUT_HOLD_SECONDS ?? 0);
const PROFILE = HOLD > 0 ? 'cpu' : 'smoke';
const SERVER_ARGS = (process.env.THROUGHPUT_SERVER_ARGS ?? '').split(' ').filter(Boolean);
const LABEL = process.env.THROUGHPUT_LABEL;

const sleep = (seconds) => new Promise((resolvePromise) => setTimeout(resolvePromise, seconds * 1000));
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

async function measure(slots) {
  const root = scratchDir(`ar-throughput-${slots}-`);
  const workspace = join(root, 'ws');
  await createWorkspace(workspace, { profile: PROFILE, python: PYTHON, dataDir: join(root, 'data') });
  const client = await ResearchClient.spawn(workspace, { serverArgs: ['--slots', String(slots), ...SERVER_ARGS], serverLog: join(root, 'server.log') });
  await client.call('start_session', { tag: `throughput-${slots}` });
  const keep = async (description, edits) => {
    const queued = await client.call('run_experiment', { description, ...(edits ? { edits } : {}) });
    const finished = await client.waitForExperiment(queued.experiment.id);
    if (finished.status !== 'succeeded') throw new Error(`${description}: ${finished.status}: ${finished.error}`);
    await client.call('commit_or_revert', { experiment_id: queued.experiment.id, action: 'keep' });
  };
  if (HOLD > 0) {
    const original = (await client.call('read_train_py', {})).text;
    const standin = readFileSync(join(ROOT, 'bench', 'standin_train.py'), 'utf8')
      .replace('HOLD_SECONDS = 0.0', `HOLD_SECONDS = ${HOLD}`)
      .replace('# -- gains --\n', 'GAIN_000 = 0.0\n');
    await keep(`stand-in holding its slot ${HOLD} s`, [{ search: original, replace: standin }]);
  } else await keep('baseline');
  const text = (await client.call('read_train_py', {})).text;
  const line = /^(WARMDOWN_FRAC|GAIN_000) = .*$/m.exec(text)?.[0];
  if (!line) throw new Error('train.py has no WARMDOWN_FRAC or GAIN_000 line to vary');

  let submitted = 0;
  const ids = [];
  const agent = async (name) => {
    while (submitted < EXPERIMENTS) {
      const n = submitted++;
      await sleep(THINK);
      const value = HOLD > 0 ? (n + 1) * 1e-6 : (0.3 + n * 0.01).toFixed(2);
      const queued = await client.call('run_experiment', {
        description: `${line.split(' ')[0]} ${value}`,
        agent: name,
        edits: [{ search: line, replace: line.replace(/= [\d.]+/, `= ${value}`) }],
      });
      ids.push(queued.experiment.id);
      const finished = await client.waitForExperiment(queued.experiment.id);
      if (finished.status === 'succeeded') await client.call('commit_or_revert', { experiment_id: queued.experiment.id, action: 'discard' });
    }
  };
  await Promise.all(Array.from({ length: slots * AGENTS_PER_SLOT }, (_, i) => agent(`agent-${i + 1}`)));
  await client.close();

  const store = Store.open(join(workspace, '.autoresearch', 'state.db'));
  const rows = ids.map((id) => store.getExperiment(id));
  store.close();
  const start = Math.min(...rows.map((e) => e.startedAt));
  const end = Math.max(...rows.map((e) => e.finishedAt));
  const perSlot = [];
  const gaps = [];
  for (let slot = 0; slot < slots; slot++) {
    const runs = rows.filter((e) => e.slot === slot).sort((a, b) => a.startedAt - b.startedAt);
    const busy = runs.reduce((sum, e) => sum + (e.finishedAt - e.startedAt), 0);
    // A gap counts where the next candidate was already queued when the slot's run ended.
    let waitingGap = 0;
    for (let i = 1; i < runs.length; i++) {
      if (runs[i].queuedAt <= runs[i - 1].finishedAt) {
        const gap = runs[i].startedAt - runs[i - 1].finishedAt;
        gaps.push(gap / 1000);
        waitingGap += gap;
      }
    }
    perSlot.push({ slot, runs: runs.length, busy_share: +(busy / (end - start)).toFixed(3), busy_share_while_waiting: +(busy / (busy + waitingGap)).toFixed(4) });
  }
  const statuses = {};
  for (const e of rows) statuses[e.status] = (statuses[e.status] ?? 0) + 1;
  const seconds = (values) => (values.length ? +(median(values) / 1000).toFixed(2) : null);
  // With Slurm, where a run's time goes outside its trainer, from its job's files: the script is
  // written just before sbatch, Slurm creates job.out when the job starts on its node, and the
  // script writes evaluate.exit when the evaluator has ended.
  const jobFile = (e, name) => join(workspace, '.autoresearch', 'runs', String(e.id), 'slurm', name);
  const modified = (e, name) => (existsSync(jobFile(e, name)) ? statSync(jobFile(e, name)).mtimeMs : undefined);
  const jobs = rows.map((e) => ({ e, script: modified(e, 'job.sh'), started: modified(e, 'job.out'), evaluated: modified(e, 'evaluate.exit') })).filter((j) => j.script && j.started && j.evaluated);
  const slurm = jobs.length === 0 ? undefined : {
    jobs: jobs.length,
    median_dispatch_to_job_start_seconds: seconds(jobs.map((j) => j.started - j.e.startedAt)),
    median_submit_to_job_start_seconds: seconds(jobs.map((j) => j.started - j.script)),
    median_evaluator_end_to_result_seconds: seconds(jobs.map((j) => j.e.finishedAt - j.evaluated)),
  };
  return {
    slots,
    experiments: rows.length,
    statuses,
    window_seconds: +((end - start) / 1000).toFixed(1),
    experiments_per_hour: +((rows.length / (end - start)) * 3_600_000).toFixed(0),
    median_run_seconds: +(median(rows.map((e) => e.finishedAt - e.startedAt)) / 1000).toFixed(2),
    median_training_seconds: median(rows.map((e) => e.trainingSeconds ?? 0)),
    median_startup_seconds: median(rows.map((e) => e.startupSeconds ?? 0)),
    median_eval_seconds: median(rows.map((e) => e.evalSeconds ?? 0)),
    ...(slurm ? { slurm } : {}),
    gaps_while_waiting: gaps.length,
    median_gap_seconds: gaps.length ? +median(gaps).toFixed(3) : null,
    max_gap_seconds: gaps.length ? +Math.max(...gaps).toFixed(3) : null,
    per_slot: perSlot,
  };
}

const results = [];
for (const slots of SLOT_COUNTS) {
  process.stderr.write(`${slots} slot(s): ${EXPERIMENTS} experiments, think ${THINK} s...\n`);
  const row = await measure(slots);
  results.push(row);
  process.stderr.write(`  ${row.experiments_per_hour} experiments/h, median run ${row.median_run_seconds} s, median gap while waiting ${row.median_gap_seconds} s, ${JSON.stringify(row.statuses)}\n`);
}
const one = results.find((r) => r.slots === 1);
const report = {
  machine: `${hostname()} (${cpus().length} x ${cpus()[0]?.model ?? 'cpu'})`,
  date: new Date().toISOString(),
  profile: PROFILE,
  hold_seconds: HOLD > 0 ? HOLD : null,
  server_args: SERVER_ARGS,
  backend: SERVER_ARGS.includes('slurm') ? 'Slurm jobs (CPU)' : 'local CPU slots',
  think_seconds: THINK,
  agents_per_slot: AGENTS_PER_SLOT,
  omp_num_threads: process.env.OMP_NUM_THREADS ?? 'default (one per core; several slots share the cores out)',
  results: results.map((r) => ({ ...r, per_hour_against_linear: one ? +(r.experiments_per_hour / (one.experiments_per_hour * r.slots)).toFixed(3) : null })),
  note: 'experiments_per_hour: candidates finished over the window from the first start to the last finish. busy_share_while_waiting: a slot\'s run time over its run time plus the gaps between a run\'s end and the next run\'s start where that next candidate was already queued. per_hour_against_linear: experiments_per_hour / (N x the one-slot figure). median_startup_seconds: the supervisor\'s start-up (the trainer\'s interpreter and imports, from its start to its first batch). slurm (Slurm runs): medians from the job\'s files: the lab\'s start of the run to Slurm creating job.out on the node, job.sh written (just before sbatch) to that, and evaluate.exit written to the run\'s recorded end. ' + (HOLD > 0
    ? `Each run is bench/standin_train.py holding its slot ${HOLD} s asleep (cpu profile: the CPU-time clock does not count the sleep), so slots do not compete for the cores except in start-up and evaluation: the figure is the dispatch's scaling.`
    : "CPU slots share this machine's cores, so more slots than cores cannot scale: the figure measures the dispatch, not GPU scaling."),
};
const out = join(ROOT, 'bench', `results-throughput-${hostname()}${LABEL ? `-${LABEL}` : ''}.json`);
writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
process.stderr.write(`written: ${out}\n`);
