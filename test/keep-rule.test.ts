import { describe, expect, it } from 'vitest';
import { classifyChange } from '../src/core/change.js';
import { FUTILITY_SHARE, MAX_CONFIRM_PAIRS, inverseNormal, keepRule, mad, noiseStats, pooledSigma, sampleSigma, worthConfirming } from '../src/core/keep-rule.js';

describe('inverseNormal', () => {
  it('matches known quantiles', () => {
    expect(inverseNormal(0.5)).toBeCloseTo(0, 9);
    expect(inverseNormal(0.95)).toBeCloseTo(1.6448536269514722, 6);
    expect(inverseNormal(0.975)).toBeCloseTo(1.959963984540054, 6);
    expect(inverseNormal(0.99)).toBeCloseTo(2.3263478740408408, 6);
    expect(inverseNormal(0.001)).toBeCloseTo(-3.090232306167813, 5);
    expect(inverseNormal(0.8413447460685429)).toBeCloseTo(1, 5);
  });
  it('refuses probabilities outside (0, 1)', () => {
    for (const p of [0, 1, -0.1, 1.5, NaN]) expect(() => inverseNormal(p)).toThrow(/\(0, 1\)/);
  });
});

describe('noise statistics', () => {
  it('sigma, MAD and mean of a sample', () => {
    expect(sampleSigma([1.0, 1.2, 1.4])).toBeCloseTo(0.2, 12);
    expect(mad([1, 2, 3, 4, 100])).toBe(1);
    expect(noiseStats([1.66, 1.662, 1.664])).toMatchObject({ k: 3, mean: expect.closeTo(1.662, 12), sigma: expect.closeTo(0.002, 12), mad: expect.closeTo(0.002, 12) });
  });

  it('pools measurements of one noise around their own means, weighted by degrees of freedom', () => {
    // the same as one sample of the deviations from each measurement's own mean
    const a = [1.0, 1.2, 1.4];
    const b = [2.0, 2.1];
    const deviations = [...a.map((v) => v - 1.2), ...b.map((v) => v - 2.05)];
    const direct = Math.sqrt(deviations.reduce((s, d) => s + d * d, 0) / (deviations.length - 2));
    expect(pooledSigma([{ sigma: sampleSigma(a), runs: 3 }, { sigma: sampleSigma(b), runs: 2 }])).toBeCloseTo(direct, 12);
    expect(pooledSigma([{ sigma: 0.003, runs: 3 }])).toBe(0.003);
    // a measurement of one run, or without a sigma, adds nothing
    expect(pooledSigma([{ sigma: 0.003, runs: 3 }, { sigma: NaN, runs: 3 }, { sigma: 0.5, runs: 1 }])).toBe(0.003);
    expect(pooledSigma([])).toBeNaN();
  });
});

describe('keepRule', () => {
  const sigma = 0.002;
  it('keeps only a gain beyond z * sigma * sqrt(2) for one run each', () => {
    const margin = inverseNormal(0.95) * sigma * Math.SQRT2; // ~0.00465
    const keep = keepRule({ candidate: [1.66 - margin - 1e-4], head: [1.66], sigma, confidence: 0.95 });
    expect(keep.verdict).toBe('keep');
    expect(keep.figures.margin).toBeCloseTo(margin, 12);
    expect(keepRule({ candidate: [1.66 - margin + 1e-4], head: [1.66], sigma, confidence: 0.95 }).verdict).toBe('inconclusive');
    expect(keepRule({ candidate: [1.6605], head: [1.66], sigma, confidence: 0.95 }).verdict).toBe('discard');
  });
  it('narrows the margin with more runs and widens it with confidence', () => {
    const few = keepRule({ candidate: [1.655], head: [1.66], sigma, confidence: 0.95 });
    const many = keepRule({ candidate: [1.655, 1.655, 1.655, 1.655], head: [1.66, 1.66, 1.66, 1.66], sigma, confidence: 0.95 });
    expect(few.verdict).toBe('keep');
    expect(many.figures.margin).toBeCloseTo(few.figures.margin / 2, 12);
    expect(keepRule({ candidate: [1.655], head: [1.66], sigma, confidence: 0.999 }).verdict).toBe('inconclusive');
  });
  it('honours min_improvement as a floor and records every figure', () => {
    const result = keepRule({ candidate: [1.65], head: [1.66], sigma: 0.0001, confidence: 0.9, minImprovement: 0.02 });
    expect(result.verdict).toBe('inconclusive');
    expect(result.figures).toMatchObject({ margin: 0.02, min_improvement: 0.02, head_runs: 1, candidate_runs: 1, confidence: 0.9 });
    expect(result.reason).toMatch(/min_improvement/);
  });
  it('refuses a confidence outside (0, 1)', () => {
    expect(() => keepRule({ candidate: [1], head: [1], sigma, confidence: 1 })).toThrow(/confidence/);
  });
});

describe('worthConfirming (the sequential confirmation with a futility stop)', () => {
  const margin = 0.004;
  it('always confirms a positive gain once, however small', () => {
    expect(worthConfirming({ gain: 1e-9, margin }, 0)).toBe(true);
    expect(worthConfirming({ gain: 0.0039, margin }, 0)).toBe(true);
    expect(worthConfirming({ gain: 0, margin }, 0)).toBe(false);
    expect(worthConfirming({ gain: -0.001, margin }, 0)).toBe(false);
  });
  it('after the first round, goes on only while the gain is at least the futility share of the margin', () => {
    expect(FUTILITY_SHARE).toBe(0.5);
    for (const done of [1, 2, 5, MAX_CONFIRM_PAIRS - 1]) {
      expect(worthConfirming({ gain: FUTILITY_SHARE * margin, margin }, done)).toBe(true);
      expect(worthConfirming({ gain: 0.0039, margin }, done)).toBe(true);
      expect(worthConfirming({ gain: FUTILITY_SHARE * margin - 1e-9, margin }, done)).toBe(false);
      expect(worthConfirming({ gain: -0.001, margin }, done)).toBe(false);
    }
  });
  it('stops at the cap on pairs, however promising', () => {
    expect(worthConfirming({ gain: 0.0039, margin }, MAX_CONFIRM_PAIRS)).toBe(false);
    expect(worthConfirming({ gain: 0.0039, margin }, MAX_CONFIRM_PAIRS + 3)).toBe(false);
  });
});

describe('classifyChange', () => {
  const base = 'import torch\nSEED = 42\nLR = 0.02  # lr\ntorch.manual_seed(SEED)\n';
  it('tells no-ops, seed-only changes and real changes apart', async () => {
    expect(await classifyChange(base, base)).toBe('none');
    expect(await classifyChange(base, 'import torch\n\nSEED = 42\nLR = 0.02   # learning rate\ntorch.manual_seed(SEED)\n')).toBe('none');
    expect(await classifyChange(base, base.replace('SEED = 42', 'SEED = 7'))).toBe('seed_only');
    expect(await classifyChange(base, base.replace('manual_seed(SEED)', 'manual_seed(1234)'))).toBe('seed_only');
    expect(await classifyChange(base, base.replace('LR = 0.02', 'LR = 0.03'))).toBe('code');
    expect(await classifyChange(base, base.replace('SEED = 42', 'SEED = 7').replace('LR = 0.02', 'LR = 0.03'))).toBe('code');
    expect(await classifyChange(base, 'def broken(:\n')).toBe('code');
  });
});
