import { describe, expect, it } from 'vitest';
import { gpuListProblem, parseGpuUsage } from '../src/core/gpus.js';

describe('nvidia-smi facts', () => {
  it('parses the usage query, including GPUs that do not report utilisation', () => {
    expect(parseGpuUsage('0, 1024, 81559, 87\n1, 3, 81559, [N/A]\n\n')).toEqual([
      { index: 0, memoryUsedMb: 1024, memoryTotalMb: 81559, utilizationPercent: 87 },
      { index: 1, memoryUsedMb: 3, memoryTotalMb: 81559, utilizationPercent: NaN },
    ]);
    expect(parseGpuUsage('No devices were found\n')).toEqual([]);
  });

  it('accepts a --gpus list of present indices, each once', () => {
    expect(gpuListProblem('0,1', [0, 1, 2])).toBeUndefined();
    expect(gpuListProblem(' 2 ', [0, 1, 2])).toBeUndefined();
  });

  it('refuses malformed, repeated, missing or driverless GPU lists with the next step', () => {
    expect(gpuListProblem('0,a', [0])).toMatch(/takes GPU indices like 0,1,2/);
    expect(gpuListProblem('GPU-1234', [0])).toMatch(/takes GPU indices/);
    expect(gpuListProblem('1,1', [0, 1])).toMatch(/names GPU 1 twice/);
    expect(gpuListProblem('0,3', [0, 1])).toMatch(/GPU 3 does not exist here; nvidia-smi lists 0, 1/);
    expect(gpuListProblem('0', [])).toMatch(/GPU 0 does not exist here; nvidia-smi lists none/);
    expect(gpuListProblem('0', undefined)).toMatch(/no NVIDIA driver .* use --slots N/);
  });
});
