import { z } from 'zod';
import { defineTool } from './define.js';
import { experimentIdArg, experimentShape, experimentView, noiseShape } from './shapes.js';

export const commitOrRevert = defineTool({
  name: 'commit_or_revert',
  title: 'Keep or discard an experiment',
  description:
    'Decides a finished experiment. keep: advances the session branch to its commit (only succeeded experiments, and ' +
    'only when it ran from the current head; otherwise re-run it with run_experiment rebase_of). discard: leaves the branch ' +
    'at the best commit and restores train.py if it still holds the discarded version. auto: keeps only if val_bpb is ' +
    'strictly lower than the best kept so far (the first success of a session is kept as the baseline); crashes, timeouts ' +
    'and rule violations are always discarded; min_improvement asks for a margin. The result reports the measured noise ' +
    'and whether the gain is within it (then re-run the change to confirm). Nothing is lost: every candidate stays ' +
    'reachable under refs/autoresearch/.',
  input: {
    experiment_id: experimentIdArg,
    action: z.enum(['keep', 'discard', 'auto']).default('auto'),
    min_improvement: z.number().min(0).max(1).default(0).describe('auto keeps only if val_bpb is below the best by more than this'),
  },
  output: {
    decision: z.enum(['keep', 'discard']),
    reason: z.string(),
    head: z.string().describe('Branch head after the decision'),
    restored_train_py: z.boolean().describe('Whether train.py in the working tree was reset to the head version'),
    experiment: experimentShape,
    noise: noiseShape,
    within_noise: z.boolean().nullable().describe('true: the gain over the best is under twice the measured noise'),
  },
  kind: 'write',
  async handler(args, { lab }) {
    const result = await lab.decide(args.experiment_id, args.action, args.min_improvement);
    return {
      structured: {
        decision: result.decision,
        reason: result.reason,
        head: result.head,
        restored_train_py: result.restoredTrainPy,
        experiment: experimentView(result.experiment),
        noise: result.noise,
        within_noise: result.withinNoise,
      },
      text:
        `Experiment ${args.experiment_id}: ${result.decision} (${result.reason}). Branch head ${result.head.slice(0, 8)}.` +
        (result.restoredTrainPy ? ' train.py restored to the head version.' : '') +
        (result.withinNoise ? ` The gain is within twice the measured noise (sigma ${result.noise?.sigma.toFixed(6)}): re-run it to confirm.` : ''),
    };
  },
});
