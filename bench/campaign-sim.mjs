// Campaign simulator for the keep rule (no GPU, no server): each simulated experiment is an edit
// with a known true effect on val_bpb, measured with seeded Gaussian noise of the size measured
// on real runs. The strict rule (keep any value below the best kept) is compared with the
// server's rule (dist/core/keep-rule.js: measured noise floor, margin at a confidence, paired
// confirmation runs when inconclusive). Run: npm run build && node bench/campaign-sim.mjs
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { keepRule, MAX_CONFIRM_PAIRS, noiseStats, pooledSigma, worthConfirming } from '../dist/core/keep-rule.js';
import { NOISE_POOL, NOISE_STALE_KEEPS } from '../dist/core/lab.js';
import { campaignEffects, gauss, rng } from './campaign-plan.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const args = Object.fromEntries(process.argv.slice(2).map((a) => a.replace(/^--/, '').split('=')));
const CAMPAIGNS = Number(args.campaigns ?? 100);
const EXPERIMENTS = Number(args.experiments ?? 200);
const SIGMA = Number(args.sigma ?? 0.002); // seed-to-seed sigma (GPU profile, community runs)
const P_REAL = Number(args.p_real ?? 0.3); // share of edits with a real effect
const CONFIDENCE = Number(args.confidence ?? 0.99);
const NOISE_K = 3;
const CONFIRM_PAIRS = 2;
const RUN_MINUTES = 5;

/**
 * How the noise floor follows the campaign: 'once' measured after the baseline only; 'latest'
 * measured again after every NOISE_STALE_KEEPS keeps, the newest measurement replacing the last
 * (the server before c629da6); 'pooled' the same, sigma pooled over the newest NOISE_POOL (the server now).
 */
const NOISE_FLOORS = ['once', 'latest', 'pooled'];

/**
 * How an inconclusive candidate is confirmed: 'single' one round of CONFIRM_PAIRS pairs, then
 * decided (the server before the futility stop); 'sequential' rounds of CONFIRM_PAIRS pairs while
 * worthConfirming says so (up to MAX_CONFIRM_PAIRS, stopping when the gain falls under a share of
 * the margin: the server now); 'exhaustive' rounds until the cap, with no futility stop.
 */
const CONFIRMATIONS = ['single', 'sequential', 'exhaustive'];

function campaign(seed, rule, noiseFloor = 'pooled', confirmation = 'sequential') {
  const rand = rng(seed);
  const plan = campaignEffects(seed, EXPERIMENTS, P_REAL).map((effect) => effect * SIGMA);
  const measure = (q) => q + SIGMA * gauss(rand);
  let quality = 1.0; // true val_bpb of the head
  let runs = 0;
  const stats = { falseKeeps: 0, trueKeeps: 0, realGains: plan.filter((e) => e < 0).length, noiseEdits: plan.filter((e) => e === 0).length, keptHarm: 0 };
  let head = [measure(quality)]; // baseline run
  runs += 1;
  let sigma = SIGMA;
  const measurements = [];
  let keepsSince = 0;
  const measureNoise = () => {
    const noise = Array.from({ length: NOISE_K }, () => measure(quality));
    runs += NOISE_K;
    head.push(...noise);
    measurements.unshift({ sigma: noiseStats(noise).sigma, runs: NOISE_K });
    sigma = noiseFloor === 'pooled' ? pooledSigma(measurements.slice(0, NOISE_POOL)) : measurements[0].sigma;
    keepsSince = 0;
  };
  if (rule === 'ours') measureNoise();
  let best = head[0];
  for (const effect of plan) {
    const value = measure(quality + effect);
    runs += 1;
    let keep;
    if (rule === 'strict') {
      keep = value < best;
    } else {
      const candidate = [value];
      let judged = keepRule({ candidate, head, sigma, confidence: CONFIDENCE });
      let pairsDone = 0;
      const another = () =>
        confirmation === 'single' ? pairsDone === 0 : confirmation === 'exhaustive' ? pairsDone < MAX_CONFIRM_PAIRS : worthConfirming(judged.figures, pairsDone);
      while (judged.verdict === 'inconclusive' && another()) {
        for (let i = 0; i < CONFIRM_PAIRS; i += 1) {
          candidate.push(measure(quality + effect));
          head = [...head, measure(quality)];
          runs += 2;
        }
        pairsDone += CONFIRM_PAIRS;
        judged = keepRule({ candidate, head, sigma, confidence: CONFIDENCE });
      }
      keep = judged.verdict === 'keep';
      if (keep) head = candidate;
    }
    if (keep) {
      if (effect < 0) stats.trueKeeps += 1;
      else if (effect === 0) stats.falseKeeps += 1;
      else stats.keptHarm += 1;
      quality += effect;
      best = value;
      if (rule === 'ours' && noiseFloor !== 'once' && ++keepsSince >= NOISE_STALE_KEEPS) measureNoise();
    }
  }
  const hours = (runs * RUN_MINUTES) / 60;
  return { ...stats, runs, hours, improvement: 1.0 - quality, perGpuHour: (1.0 - quality) / hours };
}

function summarise(rule, noiseFloor = 'pooled', confirmation = 'sequential') {
  const all = Array.from({ length: CAMPAIGNS }, (_, i) => campaign(1000 + i, rule, noiseFloor, confirmation));
  const sum = (key) => all.reduce((s, c) => s + c[key], 0);
  const noiseEdits = sum('noiseEdits');
  return {
    rule,
    ...(rule === 'ours' ? { noise_floor: noiseFloor, confirmation } : {}),
    campaigns: CAMPAIGNS,
    experiments_per_campaign: EXPERIMENTS,
    false_keeps: sum('falseKeeps'),
    false_keep_rate: sum('falseKeeps') / noiseEdits, // pure-noise edits kept, of all pure-noise edits
    harmful_keeps: sum('keptHarm'),
    true_keeps: sum('trueKeeps'),
    real_gains_offered: sum('realGains'),
    runs_per_campaign: sum('runs') / CAMPAIGNS,
    true_improvement_mean: sum('improvement') / CAMPAIGNS,
    true_improvement_per_gpu_hour: sum('improvement') / sum('hours'),
  };
}

const strict = summarise('strict');
const ours = summarise('ours');
const byNoiseFloor = Object.fromEntries(NOISE_FLOORS.map((floor) => [floor, summarise('ours', floor)]));
const byConfirmation = Object.fromEntries(CONFIRMATIONS.map((way) => [way, summarise('ours', 'pooled', way)]));
const compared = (summaries) =>
  Object.fromEntries(
    Object.entries(summaries).map(([way, s]) => [
      way,
      { false_keep_rate: s.false_keep_rate, true_keeps_of_strict: s.true_keeps / strict.true_keeps, harmful_keeps: s.harmful_keeps, runs_per_campaign: s.runs_per_campaign, true_improvement_per_gpu_hour: s.true_improvement_per_gpu_hour },
    ]),
  );
const result = {
  generated_at: new Date().toISOString(),
  parameters: { sigma: SIGMA, p_real: P_REAL, confidence: CONFIDENCE, noise_k: NOISE_K, confirm_pairs: CONFIRM_PAIRS, max_confirm_pairs: MAX_CONFIRM_PAIRS, run_minutes: RUN_MINUTES },
  strict,
  ours,
  targets: {
    false_keep_rate_at_most_5_percent: ours.false_keep_rate <= 0.05,
    true_keeps_at_least_80_percent_of_strict: ours.true_keeps >= 0.8 * strict.true_keeps,
  },
  ours_by_noise_floor: compared(byNoiseFloor),
  ours_by_confirmation: compared(byConfirmation),
};
writeFileSync(join(HERE, 'results-campaign-sim.json'), `${JSON.stringify(result, null, 2)}\n`);

// A bar figure: false keeps, true keeps, harmful keeps per campaign, and true gain per GPU-hour.
const bars = [
  ['false keeps / campaign', strict.false_keeps / CAMPAIGNS, ours.false_keeps / CAMPAIGNS],
  ['harmful keeps / campaign', strict.harmful_keeps / CAMPAIGNS, ours.harmful_keeps / CAMPAIGNS],
  ['true keeps / campaign', strict.true_keeps / CAMPAIGNS, ours.true_keeps / CAMPAIGNS],
  ['true gain (mbpb) / GPU-hour', strict.true_improvement_per_gpu_hour * 1000, ours.true_improvement_per_gpu_hour * 1000],
];
const width = 720;
const rowH = 70;
const height = 60 + bars.length * rowH;
const svg = [`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="13">`,
  `<text x="10" y="22" font-size="15" font-weight="bold">Keep rules over ${CAMPAIGNS} simulated campaigns of ${EXPERIMENTS} experiments (sigma ${SIGMA})</text>`,
  `<rect x="470" y="34" width="12" height="12" fill="#c0504d"/><text x="486" y="45">strict &lt;</text><rect x="560" y="34" width="12" height="12" fill="#2e7d32"/><text x="576" y="45">noise rule</text>`];
bars.forEach(([label, a, b], i) => {
  const y = 60 + i * rowH;
  const max = Math.max(a, b, 1e-9);
  const scale = (v) => (v / max) * 380;
  svg.push(`<text x="10" y="${y + 20}">${label}</text>`);
  svg.push(`<rect x="220" y="${y + 6}" width="${scale(a).toFixed(1)}" height="18" fill="#c0504d"/><text x="${(225 + scale(a)).toFixed(1)}" y="${y + 20}">${a.toFixed(2)}</text>`);
  svg.push(`<rect x="220" y="${y + 30}" width="${scale(b).toFixed(1)}" height="18" fill="#2e7d32"/><text x="${(225 + scale(b)).toFixed(1)}" y="${y + 44}">${b.toFixed(2)}</text>`);
});
svg.push('</svg>');
writeFileSync(join(HERE, 'campaign-sim.svg'), `${svg.join('\n')}\n`);
console.log(JSON.stringify(result, null, 2));
