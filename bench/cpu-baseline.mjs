// The cpu profile's baseline as a user gets it: train.py (optionally with constants changed) run
// through the real server (stdio, sandboxed) k times with distinct server-chosen seeds
// (measure_noise), and what the supervisor and evaluator recorded: steps, training tokens/s,
// val_bpb, training seconds. Used to tune the cpu profile and to record before/after figures.
//
// Usage: npm run build && node bench/cpu-baseline.mjs [--label NAME] [--runs K] [--set NAME=V | --set NAME.cpu=V ...]
//   --set MATRIX_LR=0.03           a plain constant
//   --set DEPTH.cpu=2              the cpu entry of a per-profile constant ({"gpu": 8, "cpu": 1, ...})
// Writes bench/results-cpu-baseline-<label>-<host>.json. Run it on an idle machine: the budget is
// wall-clock time, so load elsewhere shows up as fewer steps.
import { writeFileSync } from 'node:fs';
import { cpus, hostname, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { constantEdit } from '../dist/agent/plan.js';
import { Store } from '../dist/core/store.js';
import { call, PYTHON, servedCpuWorkspace, waitFinished } from './served.mjs';

const ROOT = resolve(import.meta.dirname, '..');
const { values: flags } = parseArgs({
  options: { label: { type: 'string', default: 'current' }, runs: { type: 'string', default: '3' }, set: { type: 'string', multiple: true, default: [] } },
});
const RUNS = Number(flags.runs);

/** One search/replace edit of train.py for `NAME=V` or `NAME.profile=V`. */
function assignmentEdit(text, assignment) {
  const m = /^([A-Z_][A-Z0-9_]*)(?:\.(\w+))?=(.+)$/.exec(assignment);
  if (!m) throw new Error(`--set ${assignment}: write NAME=VALUE or NAME.cpu=VALUE`);
  return constantEdit(text, m[1], m[3], m[2]);
}

const { workspace, client } = await servedCpuWorkspace('ar-cpu-baseline-', 'bench-cpu-baseline');
await call(client, 'start_session', { tag: `bench-${flags.label}` });
if (flags.set.length) {
  const text = (await call(client, 'read_train_py')).text;
  const queued = await call(client, 'run_experiment', { description: flags.set.join(', '), edits: flags.set.map((a) => assignmentEdit(text, a)) });
  const done = await waitFinished(client, queued.experiment.id);
  if (done.status !== 'succeeded') throw new Error(`the changed train.py ${done.status}: ${done.error}`);
  await call(client, 'commit_or_revert', { experiment_id: done.id, action: 'keep' });
}
const noise = await call(client, 'measure_noise', { k: RUNS });
const ids = [];
for (const e of noise.experiments) {
  const done = await waitFinished(client, e.id);
  process.stderr.write(`run ${ids.length + 1}/${RUNS}: ${done.status} val_bpb ${done.val_bpb} steps ${done.num_steps}\n`);
  ids.push(e.id);
}
await client.close();

const store = Store.open(join(workspace, '.autoresearch', 'state.db'));
const failed = ids.map((id) => store.getExperiment(id)).filter((e) => e.status !== 'succeeded').map((e) => ({ seed: e.seed, status: e.status, error: e.error }));
const runs = ids.map((id) => store.getExperiment(id)).filter((e) => e.status === 'succeeded').map((e) => {
  return {
    seed: e.seed,
    val_bpb: +e.valBpb.toFixed(6),
    steps: e.numSteps,
    training_seconds: +e.trainingSeconds.toFixed(2),
    tokens_per_second: Math.round(e.tokensServed / e.trainingSeconds),
    total_seconds: +e.totalSeconds.toFixed(2),
  };
});
const meta = store.getMeta('workspace');
store.close();
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const sd = (xs) => Math.sqrt(xs.reduce((s, x) => s + (x - mean(xs)) ** 2, 0) / (xs.length - 1));
const bpbs = runs.map((r) => r.val_bpb);
const report = {
  benchmark: 'cpu-profile baseline through the server (sandboxed, measure_noise seeds)',
  label: flags.label,
  changes: flags.set,
  machine: `${hostname()} (${cpus().length} x ${cpus()[0]?.model ?? 'cpu'})`,
  python: meta?.python ?? PYTHON,
  load_average_at_end: loadavg().map((v) => +v.toFixed(2)),
  date: new Date().toISOString(),
  summary: {
    val_bpb_mean: +mean(bpbs).toFixed(4),
    val_bpb_sd: runs.length > 1 ? +sd(bpbs).toFixed(4) : null,
    steps: [Math.min(...runs.map((r) => r.steps)), Math.max(...runs.map((r) => r.steps))],
    tokens_per_second_mean: Math.round(mean(runs.map((r) => r.tokens_per_second))),
  },
  runs,
  failed,
};
const out = join(ROOT, 'bench', `results-cpu-baseline-${flags.label}-${hostname()}.json`);
writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
process.stdout.write(`${JSON.stringify(report.summary)}\n`);
process.stderr.write(`written: ${out}\n`);
