// The campaign simulator through the real server (issue "A research record that never lies"):
// a scripted session, over MCP stdio to `autoresearch-mcp serve`, runs a campaign of edits to
// bench/standin_train.py, a stand-in train.py whose val_bpb is a known function of its GAIN_*
// constants plus noise drawn from the run's seed and program. Each edit sets one GAIN_* to its
// planned effect (bench/campaign-plan.mjs: the same plan as bench/campaign-sim.mjs), so which
// keeps were real is known. Two rules, each in a fresh smoke workspace with real sandboxed runs
// and the real evaluator:
//   strict  keep when val_bpb is below the head's (commit_or_revert keep / discard)
//   ours    commit_or_revert auto after measure_noise; inconclusive -> a round of confirm pairs and
//           auto again, while the server's figures say worth_confirming; still inconclusive -> discard
// Counts false keeps (no-effect edits kept), true keeps (helpful edits kept), harmful keeps, every
// run the server made (candidates, noise, confirmations), and the true gain per simulated
// GPU-hour (each run counted as RUN_MINUTES of a GPU).
// Usage: npm run build && node bench/campaign-server.mjs [--experiments=200] [--slots=2] [--rules=strict,ours] [--label=L]
//        (writes bench/results-campaign-server-<host>[-L].json)
import { readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { ResearchClient } from '../dist/agent/client.js';
import { createWorkspace } from '../dist/core/init.js';
import { MAX_CONFIRM_PAIRS } from '../dist/core/keep-rule.js';
import { Store } from '../dist/core/store.js';
import { campaignEffects } from './campaign-plan.mjs';
import { scratchDir } from './scratch.mjs';

const ROOT = resolve(import.meta.dirname, '..');
const args = Object.fromEntries(process.argv.slice(2).map((a) => a.replace(/^--/, '').split('=')));
const EXPERIMENTS = Number(args.experiments ?? 200);
const SLOTS = Number(args.slots ?? 2);
const RULES = (args.rules ?? 'strict,ours').split(',');
const P_REAL = Number(args.p_real ?? 0.3);
const CONFIDENCE = Number(args.confidence ?? 0.99);
const CAMPAIGN_SEED = Number(args.seed ?? 1000);
const NOISE_K = 3;
const CONFIRM_PAIRS = 2;
const RUN_MINUTES = 5;
const PYTHON = process.env.AUTORESEARCH_PYTHON ?? join(ROOT, 'python', '.venv', 'bin', 'python');
const STANDIN = readFileSync(join(ROOT, 'bench', 'standin_train.py'), 'utf8');
const NOISE_SIGMA = Number(/^NOISE_SIGMA = ([\d.]+)/m.exec(STANDIN)[1]);

const name = (j) => `GAIN_${String(j).padStart(3, '0')}`;
/** Sharpness gained by edit j: higher sharpness is lower val_bpb; a no-effect edit still changes the program. */
const gainOf = (effect) => (effect === 0 ? '1e-12' : (-effect * NOISE_SIGMA).toFixed(6));

async function waitAll(client, ids) {
  const done = [];
  for (const id of ids) done.push(await client.waitForExperiment(id));
  return done;
}

async function runAndKeep(client, description, edits) {
  const queued = await client.call('run_experiment', { description, ...(edits ? { edits } : {}) });
  const [experiment] = await waitAll(client, [queued.experiment.id]);
  if (experiment.status !== 'succeeded') throw new Error(`${description}: ${experiment.status}: ${experiment.error}`);
  await client.call('commit_or_revert', { experiment_id: experiment.id, action: 'keep' });
  return experiment;
}

async function campaign(rule) {
  const started = Date.now();
  const root = scratchDir(`ar-campaign-${rule}-`);
  const workspace = join(root, 'ws');
  await createWorkspace(workspace, { profile: 'smoke', python: PYTHON, dataDir: join(root, 'data') });
  const client = await ResearchClient.spawn(workspace, { serverArgs: ['--slots', String(SLOTS)], serverLog: join(root, 'server.log') });
  const effects = campaignEffects(CAMPAIGN_SEED, EXPERIMENTS, P_REAL);
  const decisions = [];
  try {
    await client.call('start_session', { tag: `campaign-${rule}` });
    await runAndKeep(client, 'baseline');
    const original = (await client.call('read_train_py', {})).text;
    const gains = effects.map((_, j) => `${name(j)} = 0.0\n`).join('');
    let head = await runAndKeep(client, 'stand-in training script', [{ search: original, replace: STANDIN.replace('# -- gains --\n', gains) }]);
    if (rule === 'ours') {
      const noise = await client.call('measure_noise', { k: NOISE_K });
      await waitAll(client, noise.experiments.map((e) => e.id));
    }
    for (const [j, effect] of effects.entries()) {
      const line = `${name(j)} = 0.0`;
      const queued = await client.call('run_experiment', {
        description: `${name(j)} -> ${gainOf(effect)}`,
        edits: [{ search: line, replace: `${name(j)} = ${gainOf(effect)}` }],
      });
      const [experiment] = await waitAll(client, [queued.experiment.id]);
      let decision;
      if (experiment.status !== 'succeeded') {
        decision = (await client.call('commit_or_revert', { experiment_id: experiment.id, action: 'discard' })).decision;
      } else if (rule === 'strict') {
        const action = experiment.val_bpb < head.val_bpb ? 'keep' : 'discard';
        decision = (await client.call('commit_or_revert', { experiment_id: experiment.id, action })).decision;
      } else {
        const decide = (extra = {}) => client.call('commit_or_revert', { experiment_id: experiment.id, action: 'auto', confidence: CONFIDENCE, ...extra });
        let result = await decide();
        while (result.decision === 'inconclusive' && result.figures.worth_confirming === true) {
          await waitAll(client, (await decide({ confirm: true, confirm_pairs: CONFIRM_PAIRS })).scheduled);
          result = await decide();
        }
        if (result.decision === 'inconclusive') result = await client.call('commit_or_revert', { experiment_id: experiment.id, action: 'discard' });
        decision = result.decision;
      }
      if (decision === 'keep') head = experiment;
      decisions.push({ j, effect, status: experiment.status, val_bpb: experiment.val_bpb, decision });
      if ((j + 1) % 20 === 0) console.error(`${rule}: ${j + 1}/${EXPERIMENTS} experiments, ${Math.round((Date.now() - started) / 1000)} s`);
    }
  } finally {
    await client.close();
  }
  const store = Store.open(join(workspace, '.autoresearch', 'state.db'));
  const rows = store.listExperiments({});
  store.close();
  const ran = rows.filter((e) => e.status !== 'queued' && e.status !== 'cancelled');
  const runs = ran.length - 2; // less baseline and stand-in set-up
  const kept = decisions.filter((d) => d.decision === 'keep');
  const gain = kept.reduce((sum, d) => sum - d.effect, 0); // in sigma units of the stand-in's noise
  const hours = (runs * RUN_MINUTES) / 60;
  return {
    rule,
    experiments: decisions.length,
    crashed: decisions.filter((d) => d.status !== 'succeeded').length,
    runs,
    noise_runs: ran.filter((e) => e.kind === 'noise').length,
    confirm_runs: ran.filter((e) => e.kind === 'confirm').length,
    false_keeps: kept.filter((d) => d.effect === 0).length,
    no_effect_edits: effects.filter((e) => e === 0).length,
    true_keeps: kept.filter((d) => d.effect < 0).length,
    helpful_edits: effects.filter((e) => e < 0).length,
    harmful_keeps: kept.filter((d) => d.effect > 0).length,
    true_gain_sigmas: +gain.toFixed(3),
    true_gain_sigmas_per_gpu_hour: +(gain / hours).toFixed(4),
    wall_seconds: Math.round((Date.now() - started) / 1000),
    decisions,
  };
}

const results = {};
for (const rule of RULES) {
  results[rule] = await campaign(rule);
  const { decisions, ...summary } = results[rule];
  console.log(JSON.stringify(summary));
}
const output = {
  generated_at: new Date().toISOString(),
  host: hostname(),
  parameters: { experiments: EXPERIMENTS, slots: SLOTS, p_real: P_REAL, confidence: CONFIDENCE, seed: CAMPAIGN_SEED, noise_k: NOISE_K, confirm_pairs: CONFIRM_PAIRS, max_confirm_pairs: MAX_CONFIRM_PAIRS, run_minutes: RUN_MINUTES, noise_sigma_sharpness: NOISE_SIGMA },
  results,
};
if (results.strict && results.ours) {
  output.targets = {
    false_keep_rate_at_most_5_percent: results.ours.false_keeps / results.ours.no_effect_edits <= 0.05,
    true_keeps_at_least_80_percent_of_strict: results.ours.true_keeps >= 0.8 * results.strict.true_keeps,
  };
}
const file = join(ROOT, 'bench', `results-campaign-server-${hostname()}${args.label ? `-${args.label}` : ''}.json`);
writeFileSync(file, `${JSON.stringify(output, null, 1)}\n`);
console.log(`wrote ${file}`);
