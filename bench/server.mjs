// Server benchmark: read-only tool latency over stdio, the server's own overhead per experiment
// against running the same train.py directly, and get_results latency with 10,000 experiments.
// Usage: npm run build && node bench/server.mjs   (writes bench/results-server-<host>.json)
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { cpus, hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createWorkspace } from '../dist/core/init.js';
import { Store } from '../dist/core/store.js';
import { scratchDir } from './scratch.mjs';

const ROOT = resolve(import.meta.dirname, '..');
const PYTHON = process.env.AUTORESEARCH_PYTHON ?? new URL('../python/.venv/bin/python', import.meta.url).pathname;

const quantile = (values, q) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
};
const summary = (values) => ({ median_ms: +quantile(values, 0.5).toFixed(3), p99_ms: +quantile(values, 0.99).toFixed(3), n: values.length });

async function connect(workspace) {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [join(ROOT, 'dist', 'cli.js'), 'serve', '--workspace', workspace, '--no-daemon'],
    env: { PATH: process.env.PATH, HOME: process.env.HOME ?? '/tmp' },
    stderr: 'ignore',
  });
  const client = new Client({ name: 'bench', version: '1' });
  await client.connect(transport);
  return client;
}

async function timeCalls(client, name, args, n) {
  const times = [];
  for (let i = 0; i < n; i++) {
    const start = performance.now();
    const result = await client.callTool({ name, arguments: args });
    times.push(performance.now() - start);
    if (result.isError) throw new Error(`${name}: ${JSON.stringify(result.content)}`);
  }
  return times;
}

async function waitFinished(client, id) {
  for (;;) {
    const result = await client.callTool({ name: 'get_results', arguments: { experiment_id: id, wait_seconds: 30 } });
    const e = result.structuredContent.experiments[0];
    if (!['queued', 'running'].includes(e.status)) return e;
  }
}

const root = scratchDir('ar-bench-');
const dataDir = join(root, 'data');
process.stderr.write('preparing a smoke-profile workspace...\n');
const workspace = join(root, 'ws');
await createWorkspace(workspace, { profile: 'smoke', python: PYTHON, dataDir });

// 1. Read-only tool latency over stdio.
const client = await connect(workspace);
await timeCalls(client, 'status', {}, 20); // warm-up
const latency = {};
for (const [name, args] of [['read_train_py', {}], ['get_results', { limit: 20 }], ['status', {}]]) {
  latency[name] = summary(await timeCalls(client, name, args, 300));
}

// 2. Overhead per experiment. train.py is patched (through the tools) to print wall-clock stamps
// as its first and last statements; the same file is also run by hand. Overhead = what the server
// adds before the first stamp and after the last one, against the same gaps for a direct run.
const stamped = await client.callTool({ name: 'read_train_py', arguments: {} });
const source = stamped.structuredContent.text;
const firstImport = /^import .*$/m.exec(source)[0];
await client.callTool({
  name: 'apply_patch',
  arguments: {
    edits: [
      { search: firstImport, replace: `import time as _bench_time\nprint("BENCH_T0", _bench_time.time(), flush=True)\n${firstImport}` },
      { search: source.trimEnd().split('\n').at(-1), replace: `${source.trimEnd().split('\n').at(-1)}\nprint("BENCH_T1", _bench_time.time(), flush=True)` },
    ],
  },
});
const stamps = (log) => ({ t0: 1000 * Number(/BENCH_T0 ([\d.]+)/.exec(log)[1]), t1: 1000 * Number(/BENCH_T1 ([\d.]+)/.exec(log)[1]) });
const runs = 5;
const direct = [];
for (let i = 0; i < runs; i++) {
  const start = Date.now();
  const result = spawnSync(PYTHON, ['-u', 'train.py'], {
    cwd: workspace,
    env: { PATH: process.env.PATH, AUTORESEARCH_DATA_DIR: dataDir, AUTORESEARCH_RESULT_PATH: join(root, `direct-${i}.json`), AUTORESEARCH_RUN_NONCE: 'x' },
    encoding: 'utf8',
  });
  const end = Date.now();
  if (result.status !== 0) throw new Error(`direct run failed: ${result.stderr}`);
  const { t0, t1 } = stamps(result.stdout);
  direct.push({ before: t0 - start, after: end - t1, total: end - start });
}
const served = [];
for (let i = 0; i < runs; i++) {
  const start = Date.now();
  const run = await client.callTool({ name: 'run_experiment', arguments: { description: `bench ${i}` } });
  const finished = await waitFinished(client, run.structuredContent.experiment.id);
  const end = Date.now();
  if (finished.status !== 'succeeded') throw new Error(`served run ${i} ${finished.status}: ${finished.error}`);
  const log = await client.callTool({ name: 'get_run_log', arguments: { experiment_id: finished.id, lines: 2000 } });
  const { t0, t1 } = stamps(log.structuredContent.log);
  served.push({ before: t0 - start, after: end - t1, total: end - start });
}
await client.close();
const median = (rows, key) => +quantile(rows.map((r) => r[key]), 0.5).toFixed(1);
const overhead = served.map((r) => r.before + r.after - (median(direct, 'before') + median(direct, 'after')));

// 3. get_results with 10,000 stored experiments.
const big = join(root, 'big');
await createWorkspace(big, { profile: 'smoke', python: PYTHON, dataDir });
const store = Store.open(join(big, '.autoresearch', 'state.db'));
store.createSession({ tag: 'bench', branch: 'autoresearch/bench', baseCommit: '0'.repeat(40) });
const t0 = performance.now();
// One transaction for the synthetic rows (the db handle is private to TypeScript callers only).
store.db.transaction(() => {
  for (let i = 0; i < 10_000; i++) {
    const e = store.createExperiment({ sessionTag: 'bench', description: `synthetic ${i}`, parentCommit: '0'.repeat(40), status: 'queued' });
    store.markRunning(e.id, { slot: 0, startedAt: Date.now() });
    store.markFinished(e.id, { status: i % 10 === 0 ? 'crashed' : 'succeeded', finishedAt: Date.now(), valBpb: i % 10 === 0 ? undefined : 1 + Math.random() });
  }
})();
const insertSeconds = (performance.now() - t0) / 1000;
store.close();
const bigClient = await connect(big);
await timeCalls(bigClient, 'get_results', { limit: 20 }, 10);
const many = {
  recent: summary(await timeCalls(bigClient, 'get_results', { limit: 20 }, 200)),
  best: summary(await timeCalls(bigClient, 'get_results', { limit: 20, order: 'best' }, 200)),
  one: summary(await timeCalls(bigClient, 'get_results', { experiment_id: 5000 }, 200)),
};
await bigClient.close();

const report = {
  machine: `${hostname()} (${cpus().length} x ${cpus()[0]?.model ?? 'cpu'})`,
  node: process.version,
  date: new Date().toISOString(),
  read_only_latency_stdio: latency,
  experiment_overhead: {
    overhead_median_ms: +quantile(overhead, 0.5).toFixed(1),
    served: { before_first_statement_ms: median(served, 'before'), after_last_statement_ms: median(served, 'after'), total_ms: median(served, 'total') },
    direct: { before_first_statement_ms: median(direct, 'before'), after_last_statement_ms: median(direct, 'after'), total_ms: median(direct, 'total') },
    note: 'served: from the run_experiment call to train.py\'s first statement, and from its last statement until get_results reports the result; direct: the same gaps when the script is started by hand (interpreter start and exit). overhead = served - direct.',
  },
  get_results_with_10000_experiments: { insert_seconds: +insertSeconds.toFixed(2), ...many },
};
const out = join(ROOT, 'bench', `results-server-${hostname()}.json`);
writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
process.stderr.write(`written: ${out}\n`);
