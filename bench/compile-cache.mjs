// What the workspace's compile cache saves at start-up, on CPU: train.py compiles only on CUDA, so
// each candidate here turns compiling on (USE_COMPILE = True: the whole model, forward and
// backward, compiled on a dummy batch before the first batch, as on a GPU). Through the real
// server (stdio, sandboxed), cpu profile:
//   cold      compiling on, an empty cache; kept, so its cache (as it was before its first batch)
//             becomes the workspace's
//   warm x N  a learning-rate change each (the same model graph), seeded from that cache; discarded
//   new graph a change of the model's width: a graph the cache has not seen
// and reads each run's start-up (supervisor: go or spawn -> first batch) and the FX graph cache's
// hits and misses (printed by the candidate) and the snapshot line from the run's log.
// Usage: npm run build && node bench/compile-cache.mjs [warm-runs]
//        (writes bench/results-compile-cache-<host>.json)
import { readFileSync, writeFileSync } from 'node:fs';
import { cpus, hostname, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { constantEdit, entryFor } from '../dist/agent/plan.js';
import { Store } from '../dist/core/store.js';
import { call, servedCpuWorkspace, waitFinished } from './served.mjs';

const ROOT = resolve(import.meta.dirname, '..');
const WARM = Number(process.argv[2] ?? 3);

/** Runs the working train.py with `edit(text)` (search/replace pairs) applied; returns its id once it has ended. */
async function runEdited(client, description, edit) {
  const text = (await call(client, 'read_train_py')).text;
  const queued = await call(client, 'run_experiment', { description, edits: edit(text) });
  return (await waitFinished(client, queued.experiment.id)).id;
}

/** `name = value` in train.py (its cpu entry where it has one per profile). */
const replaceLine = (text, name, value) => constantEdit(text, name, value, entryFor(text, name, 'cpu'));
const COUNTERS =
  'counters = torch._dynamo.utils.counters["inductor"]\n' +
  'print(f"fxgraph cache: hits {counters[\'fxgraph_cache_hit\']}, misses {counters[\'fxgraph_cache_miss\']}", flush=True)\n';

const { workspace, client } = await servedCpuWorkspace('ar-compile-cache-', 'bench-compile-cache');
await call(client, 'start_session', { tag: 'bench-compile-cache' });

const runs = [];
process.stderr.write('cold: compiling with an empty cache...\n');
const cold = await runEdited(client, 'compile on CPU (cold cache)', (text) => [
  replaceLine(text, 'USE_COMPILE', 'True'),
  { search: 'print(f"device: {DEVICE.type}', replace: `${COUNTERS}print(f"device: {DEVICE.type}` },
]);
runs.push({ kind: 'cold', id: cold });
await call(client, 'commit_or_revert', { experiment_id: cold, action: 'keep' });
for (let i = 0; i < WARM; i++) {
  process.stderr.write(`warm ${i + 1}/${WARM}: the same graph, another learning rate...\n`);
  const id = await runEdited(client, `MATRIX_LR x ${0.9 - 0.1 * i} (same graph)`, (text) => [replaceLine(text, 'MATRIX_LR', String(+(0.03 * (0.9 - 0.1 * i)).toFixed(4)))]);
  runs.push({ kind: 'warm', id });
  await call(client, 'commit_or_revert', { experiment_id: id, action: 'discard' });
}
process.stderr.write('new graph: another model width...\n');
const wider = await runEdited(client, 'MODEL_DIM 160 (a new graph)', (text) => [replaceLine(text, 'MODEL_DIM', '160')]);
runs.push({ kind: 'new graph', id: wider });
await client.close();

const store = Store.open(join(workspace, '.autoresearch', 'state.db'));
const rows = runs.map(({ kind, id }) => {
  const e = store.getExperiment(id);
  if (e.status !== 'succeeded') throw new Error(`experiment ${id} (${kind}) ${e.status}: ${e.error}`);
  const log = readFileSync(join(workspace, '.autoresearch', 'runs', String(id), 'run.log'), 'utf8');
  const counters = /fxgraph cache: hits (\d+), misses (\d+)/.exec(log);
  return {
    kind,
    id,
    startup_seconds: +e.startupSeconds.toFixed(2),
    fxgraph_cache_hits: counters ? Number(counters[1]) : null,
    fxgraph_cache_misses: counters ? Number(counters[2]) : null,
    snapshot: /compile cache: [^\n]*/.exec(log)?.[0] ?? null,
    val_bpb: e.valBpb,
  };
});
store.close();

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const coldStartup = rows[0].startup_seconds;
const warmStartup = median(rows.filter((r) => r.kind === 'warm').map((r) => r.startup_seconds));
const report = {
  machine: `${hostname()} (${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}), no GPU`,
  load_average_at_end: loadavg().map((v) => +v.toFixed(2)),
  date: new Date().toISOString(),
  profile: 'cpu (USE_COMPILE forced on)',
  cold_startup_seconds: coldStartup,
  median_warm_startup_seconds: warmStartup,
  warm_over_cold: +(warmStartup / coldStartup).toFixed(3),
  runs: rows,
  note: 'start-up = the supervisor\'s time from spawn (or a pre-started trainer\'s go) to the first batch: model build and the compile on a dummy batch, plus the cache copy in (prepare.py) and out (the snapshot). On a GPU the compile also builds Triton kernels (and autotunes); not measured here.',
};
const out = join(ROOT, 'bench', `results-compile-cache-${hostname()}.json`);
writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
process.stderr.write(`written: ${out}\n`);
