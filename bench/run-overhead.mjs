// What a run costs beyond its training budget: sandbox start, interpreter and model start-up,
// the hand-over (weights + TorchScript export), the evaluator in its own sandbox, and the
// server's bookkeeping. Runs the unmodified train.py on the cpu profile through the real server
// (stdio, in-process), sandboxed and --unsandboxed, and reads the supervisor's and evaluator's
// measured times from the stored rows.
// Each run is queued once the previous one has ended, after THINK seconds (an agent reading the
// result and choosing the next change; 0 = back to back).
// Usage: npm run build && node bench/run-overhead.mjs [runs] [think-seconds]
//        (writes bench/results-run-overhead-<host>.json, -think<S>- in the name when THINK > 0)
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { writeFileSync } from 'node:fs';
import { cpus, hostname, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { createWorkspace } from '../dist/core/init.js';
import { Store } from '../dist/core/store.js';
import { scratchDir } from './scratch.mjs';

const ROOT = resolve(import.meta.dirname, '..');
const PYTHON = process.env.AUTORESEARCH_PYTHON ?? new URL('../python/.venv/bin/python', import.meta.url).pathname;
const RUNS = Number(process.argv[2] ?? 2);
const THINK = Number(process.argv[3] ?? 0);

async function connect(workspace, extra) {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [join(ROOT, 'dist', 'cli.js'), 'serve', '--workspace', workspace, '--no-daemon', ...extra],
    env: { PATH: process.env.PATH, HOME: process.env.HOME ?? '/tmp' },
    stderr: 'ignore',
  });
  const client = new Client({ name: 'bench-run-overhead', version: '1' });
  await client.connect(transport);
  return client;
}

async function call(client, name, args) {
  const result = await client.callTool({ name, arguments: args });
  if (result.isError) throw new Error(`${name}: ${JSON.stringify(result.content)}`);
  return result.structuredContent;
}

async function runBaseline(client, description) {
  const queued = await call(client, 'run_experiment', { description });
  const id = queued.experiment.id;
  for (;;) {
    const result = await call(client, 'get_results', { experiment_id: id, wait_seconds: 30 });
    const status = result.experiments[0].status;
    if (!['preparing', 'queued', 'running'].includes(status)) return id;
  }
}

const root = scratchDir('ar-overhead-');
const workspace = join(root, 'ws');
process.stderr.write('preparing a cpu-profile workspace...\n');
await createWorkspace(workspace, { profile: 'cpu', python: PYTHON, dataDir: join(root, 'data') });

const ids = { sandboxed: [], unsandboxed: [] };
for (const mode of ['sandboxed', 'unsandboxed']) {
  const client = await connect(workspace, mode === 'unsandboxed' ? ['--unsandboxed'] : []);
  await call(client, 'start_session', { tag: `bench-${mode}` });
  for (let i = 0; i < RUNS; i++) {
    if (THINK > 0) await new Promise((resolve) => setTimeout(resolve, THINK * 1000));
    process.stderr.write(`${mode} run ${i + 1}/${RUNS}...\n`);
    ids[mode].push(await runBaseline(client, `unmodified train.py (${mode} ${i + 1})`));
  }
  await client.close();
}

const store = Store.open(join(workspace, '.autoresearch', 'state.db'));
const rows = {};
for (const [mode, list] of Object.entries(ids)) {
  rows[mode] = list.map((id) => {
    const e = store.getExperiment(id);
    if (e.status !== 'succeeded') throw new Error(`experiment ${id} ${e.status}: ${e.error}`);
    const overhead = e.totalSeconds - e.trainingSeconds;
    return {
      id,
      val_bpb: e.valBpb,
      total_seconds: +e.totalSeconds.toFixed(2),
      training_seconds: +e.trainingSeconds.toFixed(2),
      startup_seconds: +e.startupSeconds.toFixed(2),
      export_seconds: +e.exportSeconds.toFixed(2),
      eval_seconds: +(e.evalSeconds ?? NaN).toFixed(2),
      overhead_seconds: +overhead.toFixed(2),
      rest_seconds: +(overhead - e.startupSeconds - e.exportSeconds - (e.evalSeconds ?? 0)).toFixed(2),
    };
  });
}
store.close();

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const report = {
  machine: `${hostname()} (${cpus().length} x ${cpus()[0]?.model ?? 'cpu'})`,
  load_average_at_end: loadavg().map((v) => +v.toFixed(2)),
  date: new Date().toISOString(),
  profile: 'cpu',
  think_seconds: THINK,
  target_overhead_seconds: 3,
  median_overhead_seconds: Object.fromEntries(Object.entries(rows).map(([mode, list]) => [mode, median(list.map((r) => r.overhead_seconds))])),
  runs: rows,
  note: 'overhead = total (run_experiment start to stored result) - training (first batch to hand-over, measured by the supervisor). startup: supervisor spawn to the first batch (sandbox, interpreter, model build); for a pre-started trainer (sandboxed runs after the first of a slot), from its go to the first batch, its interpreter and torch import having happened before the run. export: hand-over to the received TorchScript file. eval: the evaluator in its own process. rest: run folder, pin hashing, process starts and bookkeeping.',
};
const out = join(ROOT, 'bench', `results-run-overhead-${THINK > 0 ? `think${THINK}-` : ''}${hostname()}.json`);
writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
process.stderr.write(`written: ${out}\n`);
