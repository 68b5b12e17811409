// Server benchmark: read-only tool latency over stdio, the server's own overhead per experiment
// against running the same train.py directly, and get_results latency with 10,000 experiments.
// Usage: npm run build && node bench/server.mjs   (writes bench/results-server-<host>.json)
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { cpus, hostname, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createWorkspace } from '../dist/core/init.js';
import { Store } from '../dist/core/store.js';

const ROOT = resolve(import.meta.dirname, '..');
const PYTHON = process.env.AUTORESEARCH_PYTHON ?? '/usr/bin/python3';

const quantile = (values, q) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
};
const summary = (values) => ({ median_ms: +quantile(values, 0.5).toFixed(3), p99_ms: +quantile(values, 0.99).toFixed(3), n: values.length });

async function connect(workspace) {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [join(ROOT, 'dist', 'cli.js'), 'serve', '--workspace', workspace],
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

const root = mkdtempSync(join(tmpdir(), 'ar-bench-'));
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

// 2. Overhead per experiment: through the server vs the same train.py run directly.
const runs = 5;
const direct = [];
for (let i = 0; i < runs; i++) {
  const start = performance.now();
  const result = spawnSync(PYTHON, ['-u', 'train.py'], {
    cwd: workspace,
    env: { PATH: process.env.PATH, AUTORESEARCH_DATA_DIR: dataDir, AUTORESEARCH_RESULT_PATH: join(root, `direct-${i}.json`), AUTORESEARCH_RUN_NONCE: 'x' },
    stdio: 'ignore',
  });
  if (result.status !== 0) throw new Error('direct run failed');
  direct.push(performance.now() - start);
}
const served = [];
const phases = [];
for (let i = 0; i < runs; i++) {
  const start = performance.now();
  const run = await client.callTool({ name: 'run_experiment', arguments: { description: `bench ${i}` } });
  const finished = await waitFinished(client, run.structuredContent.experiment.id);
  served.push(performance.now() - start);
  if (finished.status !== 'succeeded') throw new Error(`served run ${i} ${finished.status}: ${finished.error}`);
  phases.push({
    queued_to_started_ms: Date.parse(finished.started_at) - Date.parse(finished.queued_at),
    started_to_finished_ms: Date.parse(finished.finished_at) - Date.parse(finished.started_at),
  });
}
await client.close();
const overhead = served.map((t) => t - quantile(direct, 0.5));

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
    direct_run_median_ms: +quantile(direct, 0.5).toFixed(1),
    served_run_median_ms: +quantile(served, 0.5).toFixed(1),
    overhead_median_ms: +quantile(overhead, 0.5).toFixed(1),
    phases,
    note: 'served = run_experiment call until get_results reports it finished (includes one 30 s-bounded wait that returns on completion); direct = the same train.py started by hand',
  },
  get_results_with_10000_experiments: { insert_seconds: +insertSeconds.toFixed(2), ...many },
};
const out = join(ROOT, 'bench', `results-server-${hostname()}.json`);
writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
process.stderr.write(`written: ${out}\n`);
