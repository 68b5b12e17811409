import { z } from 'zod';
import { DEFAULT_NOISE_RUNS } from '../core/lab.js';
import { defineTool } from './define.js';
import { experimentShape, experimentView, noiseFloorShape, noiseFloorView } from './shapes.js';

export const measureNoise = defineTool({
  name: 'measure_noise',
  title: 'Measure the noise floor',
  description:
    `Queues k runs (default ${DEFAULT_NOISE_RUNS}) of the current head with distinct seeds chosen by the server; when they finish ` +
    'the server stores mean, sigma and MAD for this profile and machine, and auto decisions use as the noise floor sigma pooled ' +
    'over the newest measurements (up to 4, each around its own mean). ' +
    'Do it once at the start of a session (after the baseline) and again when status says the noise is stale. ' +
    'A measurement already in progress is returned instead of starting another.',
  input: { k: z.number().int().min(2).max(20).default(DEFAULT_NOISE_RUNS).describe('Number of runs') },
  output: {
    noise_id: z.number().int(),
    experiments: z.array(experimentShape),
    already_measuring: z.boolean(),
    noise_floor: noiseFloorShape,
  },
  kind: 'write',
  async handler(args, { lab, caller }, extra) {
    const result = await lab.measureNoise({ k: args.k }, caller(extra));
    const ids = result.experiments.map((e) => e.id);
    return {
      structured: {
        noise_id: result.noise.id,
        experiments: result.experiments.map((e) => experimentView(e)),
        already_measuring: result.alreadyMeasuring,
        noise_floor: noiseFloorView(lab.noiseFloor()),
      },
      text:
        `${result.alreadyMeasuring ? 'Noise measurement already in progress' : 'Queued noise measurement'} ${result.noise.id}: ` +
        `experiments ${ids.join(', ')} (k ${result.noise.k}, commit ${result.noise.commit.slice(0, 8)}). ` +
        `Wait with get_results({experiment_id: ${ids[ids.length - 1]}, wait_seconds: 45}).`,
    };
  },
});
