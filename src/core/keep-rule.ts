/**
 * The keep rule: a change is kept only when its gain over the head it was measured from is
 * larger than chance allows, given the measured seed-to-seed noise. Pure functions, so the
 * server, the tests and the campaign simulator (bench/) all use the same rule.
 */

/** Inverse of the standard normal CDF (Acklam's rational approximation, relative error < 1.2e-9). */
export function inverseNormal(p: number): number {
  if (!(p > 0 && p < 1)) throw new RangeError(`probability must be in (0, 1), got ${p}`);
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const low = 0.02425;
  let x: number;
  if (p < low) {
    const q = Math.sqrt(-2 * Math.log(p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else if (p <= 1 - low) {
    const q = p - 0.5;
    const r = q * q;
    x = ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q) / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  } else {
    const q = Math.sqrt(-2 * Math.log(1 - p));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  return x;
}

export function mean(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Sample standard deviation (n - 1). */
export function sampleSigma(values: readonly number[]): number {
  if (values.length < 2) return NaN;
  const m = mean(values);
  return Math.sqrt(values.reduce((s, v) => s + (v - m) ** 2, 0) / (values.length - 1));
}

/** Median absolute deviation from the median (unscaled; x 1.4826 estimates sigma for normal noise). */
export function mad(values: readonly number[]): number {
  const m = median(values);
  return median(values.map((v) => Math.abs(v - m)));
}

export interface NoiseStats {
  k: number;
  mean: number;
  sigma: number;
  mad: number;
}

export function noiseStats(values: readonly number[]): NoiseStats {
  return { k: values.length, mean: mean(values), sigma: sampleSigma(values), mad: mad(values) };
}

/**
 * The pooled standard deviation of several measurements of the same noise, each with its own mean
 * (runs of different commits): sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)). One measurement of 3 runs
 * has 2 degrees of freedom, and its sigma is often off by a factor of 3; four have 8. Measurements
 * with fewer than 2 runs or no finite sigma add nothing; NaN when none is left.
 */
export function pooledSigma(measurements: readonly { sigma: number; runs: number }[]): number {
  let squares = 0;
  let freedom = 0;
  for (const { sigma, runs } of measurements) {
    if (runs < 2 || !Number.isFinite(sigma)) continue;
    squares += (runs - 1) * sigma * sigma;
    freedom += runs - 1;
  }
  return freedom > 0 ? Math.sqrt(squares / freedom) : NaN;
}

export interface KeepRuleInput {
  /** val_bpb of the candidate: its own run plus any confirmation runs. */
  candidate: readonly number[];
  /** val_bpb of the head it was measured from: every run of that program (kept run, noise and confirmation runs). */
  head: readonly number[];
  /** Seed-to-seed standard deviation of one run, measured. */
  sigma: number;
  /** One-sided confidence that a kept gain is real, in (0, 1). */
  confidence: number;
  /** An extra floor on the margin (the caller's min_improvement). */
  minImprovement?: number;
}

export interface KeepRuleFigures {
  rule: 'noise_margin';
  candidate_mean: number;
  candidate_runs: number;
  head_mean: number;
  head_runs: number;
  gain: number;
  sigma: number;
  confidence: number;
  z: number;
  standard_error: number;
  margin: number;
  min_improvement: number;
}

export type Verdict = 'keep' | 'discard' | 'inconclusive';

/**
 * keep: gain > max(z * sigma * sqrt(1/n_c + 1/n_h), min_improvement) (for one run each, z * sigma * sqrt(2),
 * the spread of a difference of two independent runs); discard: gain <= 0 (not better);
 * inconclusive in between (could be luck: confirm with more paired runs).
 */
export function keepRule(input: KeepRuleInput): { verdict: Verdict; figures: KeepRuleFigures; reason: string } {
  if (!(input.confidence > 0 && input.confidence < 1)) throw new RangeError(`confidence must be in (0, 1), got ${input.confidence}`);
  if (input.candidate.length === 0 || input.head.length === 0) throw new RangeError('keepRule needs at least one candidate and one head value');
  const z = inverseNormal(input.confidence);
  const candidateMean = mean(input.candidate);
  const headMean = mean(input.head);
  const gain = headMean - candidateMean;
  const se = input.sigma * Math.sqrt(1 / input.candidate.length + 1 / input.head.length);
  const minImprovement = input.minImprovement ?? 0;
  const margin = Math.max(z * se, minImprovement);
  const figures: KeepRuleFigures = {
    rule: 'noise_margin',
    candidate_mean: candidateMean,
    candidate_runs: input.candidate.length,
    head_mean: headMean,
    head_runs: input.head.length,
    gain,
    sigma: input.sigma,
    confidence: input.confidence,
    z,
    standard_error: se,
    margin,
    min_improvement: minImprovement,
  };
  const numbers = `gain ${f(gain)} (head ${f(headMean)} over ${input.head.length} run(s), candidate ${f(candidateMean)} over ${input.candidate.length}), margin ${f(margin)} = ${
    margin === minImprovement && minImprovement > z * se ? `min_improvement` : `z ${z.toFixed(3)} x sigma ${f(input.sigma)} x sqrt(1/${input.candidate.length} + 1/${input.head.length})`
  } at confidence ${input.confidence}`;
  if (gain > margin) return { verdict: 'keep', figures, reason: `beats the head beyond noise: ${numbers}` };
  if (gain <= 0) return { verdict: 'discard', figures, reason: `not better than the head: ${numbers}` };
  return { verdict: 'inconclusive', figures, reason: `gain within noise: ${numbers}` };
}

/** Most confirmation pairs one candidate gets: a gain still within noise after these is too small to chase. */
export const MAX_CONFIRM_PAIRS = 8;
/** After the first confirmation, more pairs are worth running only while the gain is at least this share of the margin. */
export const FUTILITY_SHARE = 0.5;

/**
 * Whether an inconclusive candidate is worth another round of confirmation pairs (a sequential test
 * with a futility stop): the first round always (one run decides little); later rounds while pairs
 * remain and the gain is still at least FUTILITY_SHARE of the margin, since a candidate far below
 * its margin after several pairs almost never crosses it. bench/campaign-sim.mjs measured the
 * alternatives (a fixed single round; rounds until the cap with no futility stop).
 */
export function worthConfirming(figures: Pick<KeepRuleFigures, 'gain' | 'margin'>, pairsDone: number): boolean {
  if (pairsDone >= MAX_CONFIRM_PAIRS) return false;
  if (pairsDone === 0) return figures.gain > 0;
  return figures.gain >= FUTILITY_SHARE * figures.margin;
}

/** The old rule, kept for comparison (bench/): keep any strictly lower value than the best. */
export function strictRule(candidate: number, best: number): Verdict {
  return candidate < best ? 'keep' : 'discard';
}

function f(value: number): string {
  return Number.isFinite(value) ? value.toFixed(6) : String(value);
}
