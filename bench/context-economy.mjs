// How much of a model's context one experiment cycle costs. Replays the loop that program.md
// tells a model to run, through the real server (stdio, smoke profile, real runs), and counts the
// tokens of what the agent receives: the text content of every tool result, which is what hosts
// put in the model's context (structured content is counted separately, for hosts that forward
// it instead). Tokens are counted with gpt-tokenizer's o200k_base encoding (the GPT-4o / GPT-5
// vocabulary); Anthropic publishes no tokenizer for current Claude models, whose counts differ
// by some tens of percent on code, so read the figures as a close proxy, not Claude's own count.
// Usage: npm run build && node bench/context-economy.mjs [cycles] [label]
//   (writes bench/results-context-economy-<label>.json; label defaults to "current")
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { countTokens } from 'gpt-tokenizer/encoding/o200k_base';
import { readFileSync, writeFileSync } from 'node:fs';
import { cpus, hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { constantEdit, constantNumber, entryFor } from '../dist/agent/plan.js';
import { createWorkspace } from '../dist/core/init.js';
import { scratchDir } from './scratch.mjs';

const ROOT = resolve(import.meta.dirname, '..');
const PYTHON = process.env.AUTORESEARCH_PYTHON ?? new URL('../python/.venv/bin/python', import.meta.url).pathname;
const CYCLES = Number(process.argv[2] ?? 50);
const LABEL = process.argv[3] ?? 'current';
const UNFINISHED = ['preparing', 'queued', 'running'];

// The ideas: one constant at a time, scaled from its value at the head.
const FLOATS = ['MATRIX_LR', 'EMBED_LR', 'HEAD_LR', 'SCALAR_LR', 'WARMDOWN_FRAC', 'SOFTCAP'];
const FACTORS = [0.7, 1.3, 0.85, 1.15, 0.6, 1.5, 0.9, 1.1, 0.5];
const IDEAS = FACTORS.flatMap((factor) => FLOATS.map((name) => ({ name, factor })));

const root = scratchDir('ar-context-');
const workspace = join(root, 'ws');
process.stderr.write('preparing a smoke-profile workspace...\n');
await createWorkspace(workspace, { profile: 'smoke', python: PYTHON, dataDir: join(root, 'data') });

const client = new Client({ name: 'bench-context-economy', version: '1' });
await client.connect(
  new StdioClientTransport({
    command: process.execPath,
    args: [join(ROOT, 'dist', 'cli.js'), 'serve', '--workspace', workspace, '--no-daemon'],
    env: { PATH: process.env.PATH, HOME: process.env.HOME ?? '/tmp' },
    stderr: 'ignore',
  }),
);

const tokens = (text) => countTokens(text ?? '');
const textOf = (result) => result.content.filter((part) => part.type === 'text').map((part) => part.text).join('\n');

/** Calls a tool as a model would and books what came back under `phase`. */
const ledger = [];
async function call(phase, name, args = {}) {
  const result = await client.callTool({ name, arguments: args }, undefined, { timeout: 120_000 });
  const text = textOf(result);
  ledger.push({ phase, tool: name, text_tokens: tokens(text), structured_tokens: tokens(JSON.stringify(result.structuredContent ?? {})) });
  if (result.isError) throw new Error(`${name}: ${text}`);
  return result.structuredContent;
}

async function waitFinished(phase, id) {
  for (;;) {
    const result = await call(phase, 'get_results', { experiment_id: id, wait_seconds: 45 });
    if (!UNFINISHED.includes(result.experiments[0].status)) return result.experiments[0];
  }
}

// What the host puts in context once per conversation: the instructions and the tool list.
const instructions = client.getInstructions() ?? '';
const { tools } = await client.listTools();
const oneTime = {
  instructions_tokens: tokens(instructions),
  tools_list_tokens: tokens(JSON.stringify(tools.map(({ name, description, inputSchema }) => ({ name, description, inputSchema })))),
  tools_list_with_output_schemas_tokens: tokens(JSON.stringify(tools)),
  program_md_tokens: tokens(readFileSync(join(ROOT, 'program.md'), 'utf8')),
};
const readTool = tools.find((tool) => tool.name === 'read_train_py');
const diffReads = Boolean(readTool?.inputSchema?.properties?.since_hash);

// The start of a session, as program.md orders it.
await call('setup', 'status');
await call('setup', 'start_session', { tag: 'context' });
const baseline = await call('setup', 'run_experiment', { description: 'baseline' });
await waitFinished('setup', baseline.experiment.id);
await call('setup', 'commit_or_revert', { experiment_id: baseline.experiment.id });
const noise = await call('setup', 'measure_noise', {});
for (const e of noise.experiments) await waitFinished('setup', e.id);

let knownText = null;
let knownHash = null;
const decisions = {};
const cycles = [];
for (let i = 0; i < CYCLES; i++) {
  const phase = `cycle ${i + 1}`;
  const first = ledger.length;
  const read = await call(phase, 'read_train_py', diffReads && knownHash ? { since_hash: knownHash } : {});
  if (read.text !== null && read.text !== undefined) knownText = read.text;
  knownHash = read.hash;
  const idea = IDEAS[i % IDEAS.length];
  const entry = entryFor(knownText, idea.name, 'smoke');
  const value = constantNumber(knownText, idea.name, entry);
  const next = String(+(value * idea.factor).toPrecision(3));
  const patched = await call(phase, 'apply_patch', {
    edits: [constantEdit(knownText, idea.name, next, entry)],
    expected_hash: knownHash,
  });
  const queued = await call(phase, 'run_experiment', { description: `${idea.name} ${value} -> ${next}` });
  const finished = await waitFinished(phase, queued.experiment.id);
  const decided = await call(phase, 'commit_or_revert', { experiment_id: finished.id });
  let decision = decided.decision ?? decided.verdict;
  if (decision === 'inconclusive') {
    await call(phase, 'commit_or_revert', { experiment_id: finished.id, action: 'discard' });
    decision = 'inconclusive -> discard';
  }
  decisions[decision] = (decisions[decision] ?? 0) + 1;
  // A keep moves the head: the text the agent holds is the kept candidate's.
  if (decided.decision === 'keep') {
    knownText = knownText.replace(line[0], line[0].replace(line[1], next));
    knownHash = patched.hash;
  }
  const entries = ledger.slice(first);
  cycles.push({
    cycle: i + 1,
    status: finished.status,
    decision,
    calls: entries.length,
    text_tokens: entries.reduce((sum, e) => sum + e.text_tokens, 0),
    structured_tokens: entries.reduce((sum, e) => sum + e.structured_tokens, 0),
  });
  process.stderr.write(`${phase}: ${finished.status} ${decision}, ${cycles.at(-1).text_tokens} tokens\n`);
}
await client.close();

const sorted = (values) => [...values].sort((a, b) => a - b);
const quantile = (values, q) => sorted(values)[Math.min(values.length - 1, Math.floor(q * values.length))];
const mean = (values) => values.reduce((a, b) => a + b, 0) / values.length;
const perTool = {};
for (const entry of ledger.filter((e) => e.phase.startsWith('cycle'))) {
  const row = (perTool[entry.tool] ??= { calls: 0, text_tokens: 0, structured_tokens: 0 });
  row.calls += 1;
  row.text_tokens += entry.text_tokens;
  row.structured_tokens += entry.structured_tokens;
}
for (const row of Object.values(perTool)) {
  row.text_tokens_per_call = Math.round(row.text_tokens / row.calls);
  row.structured_tokens_per_call = Math.round(row.structured_tokens / row.calls);
}
const textPerCycle = cycles.map((c) => c.text_tokens);
const oneTimeTokens = oneTime.instructions_tokens + oneTime.tools_list_tokens + oneTime.program_md_tokens;
const setupTokens = ledger.filter((e) => e.phase === 'setup').reduce((sum, e) => sum + e.text_tokens, 0);
const summary = {
  label: LABEL,
  machine: `${hostname()} (${cpus().length} cores)`,
  date: new Date().toISOString(),
  tokenizer: 'gpt-tokenizer o200k_base (proxy for the host model\'s tokenizer)',
  counted: 'text content of each tool result (what hosts hand the model); structured content separately',
  profile: 'smoke',
  cycles: CYCLES,
  read_train_py_since_hash: diffReads,
  one_time: oneTime,
  setup_text_tokens: setupTokens,
  per_cycle_text_tokens: { mean: Math.round(mean(textPerCycle)), median: quantile(textPerCycle, 0.5), p90: quantile(textPerCycle, 0.9), max: Math.max(...textPerCycle) },
  per_cycle_structured_tokens_mean: Math.round(mean(cycles.map((c) => c.structured_tokens))),
  experiments_in_200k_window: Math.floor((200_000 - oneTimeTokens - setupTokens) / mean(textPerCycle)),
  decisions,
  per_tool: perTool,
  cycles_detail: cycles,
};
const file = join(ROOT, 'bench', `results-context-economy-${LABEL}.json`);
writeFileSync(file, `${JSON.stringify(summary, null, 2)}\n`);
const { cycles_detail: _detail, ...printed } = summary;
console.log(JSON.stringify(printed, null, 2));
process.stderr.write(`written to ${file}\n`);
