import { describe, expect, it } from 'vitest';
import { pooledNoise } from '../src/core/lab.js';

describe('pooledNoise', () => {
  it('is null without a repeated program', () => {
    expect(pooledNoise([])).toBeNull();
    expect(pooledNoise([{ trainHash: 'a', valBpb: 1 }, { trainHash: 'b', valBpb: 2 }])).toBeNull();
  });

  it('is the sample standard deviation for one repeated program', () => {
    const noise = pooledNoise([1.0, 1.2, 1.4].map((valBpb) => ({ trainHash: 'a', valBpb })));
    expect(noise?.sigma).toBeCloseTo(0.2, 12);
    expect(noise).toMatchObject({ programs: 1, runs: 3 });
  });

  it('pools several programs by their degrees of freedom, ignoring single runs', () => {
    const rows = [
      { trainHash: 'a', valBpb: 1.0 },
      { trainHash: 'a', valBpb: 1.2 }, // squares 0.02, 1 degree
      { trainHash: 'b', valBpb: 2.0 },
      { trainHash: 'b', valBpb: 2.0 },
      { trainHash: 'b', valBpb: 2.3 }, // squares 0.06, 2 degrees
      { trainHash: 'c', valBpb: 9.0 },
    ];
    const noise = pooledNoise(rows);
    expect(noise?.sigma).toBeCloseTo(Math.sqrt(0.08 / 3), 12);
    expect(noise).toMatchObject({ programs: 2, runs: 5 });
  });
});
