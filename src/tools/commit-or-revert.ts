import { z } from 'zod';
import { MAX_CONFIRM_PAIRS } from '../core/keep-rule.js';
import { DEFAULT_CONFIDENCE, DEFAULT_CONFIRM_PAIRS } from '../core/lab.js';
import { defineTool } from './define.js';
import { experimentIdArg, experimentShape, experimentView, noiseFloorShape, noiseFloorView, noiseShape } from './shapes.js';

export const commitOrRevert = defineTool({
  name: 'commit_or_revert',
  title: 'Keep or discard an experiment',
  description:
    'Decides a finished candidate. keep: advances the session branch to its commit (only succeeded experiments that ran from ' +
    'the current head; otherwise re-run with run_experiment rebase_of; a seed-only change is never kept). discard: records it, ' +
    'keeps its commit under refs/autoresearch/discarded/ and restores train.py if it held it. auto: keeps only when the gain ' +
    'over the head (mean of every run of the head) exceeds a margin from the measured noise: z(confidence) x sigma x ' +
    'sqrt(1/runs_candidate + 1/runs_head), or min_improvement if larger; not better -> discard; in between -> "inconclusive" ' +
    '(stays undecided: pass confirm: true to re-run candidate and head in pairs with fresh seeds, then call again; ' +
    'figures.worth_confirming says whether another round can still settle it: the first round always, later ones while the gain ' +
    `is at least half the margin, up to ${MAX_CONFIRM_PAIRS} pairs; otherwise discard it). Before the ` +
    'noise floor is measured auto queues the noise runs and answers inconclusive; unchanged programs and seed-only changes are ' +
    'discarded, failed runs always. Every decision records its figures. Decisions are final: undo moves the branch back. ' +
    'Parallel candidates from one parent: auto keeps the best first; a real gain whose parent is no longer the head is ' +
    'discarded as superseded and re-run on the head automatically (reruns names the new experiments).',
  input: {
    experiment_id: experimentIdArg,
    action: z.enum(['keep', 'discard', 'auto']).default('auto'),
    min_improvement: z.number().min(0).max(1).default(0).describe('auto: the margin is at least this'),
    confidence: z
      .number()
      .default(DEFAULT_CONFIDENCE)
      .describe('auto: one-sided confidence in (0, 1) that a kept gain is not luck (z = inverse normal of it)'),
    confirm: z.boolean().default(false).describe('auto: queue confirmation pairs (candidate and head, fresh shared seeds) before deciding, and again while inconclusive and worth confirming'),
    confirm_pairs: z.number().int().min(1).max(10).default(DEFAULT_CONFIRM_PAIRS),
  },
  output: {
    decision: z.enum(['keep', 'discard', 'inconclusive']),
    reason: z.string(),
    head: z.string().describe('Branch head after the decision'),
    restored_train_py: z.boolean().describe('Whether train.py in the working tree was reset to the head version'),
    train_py_hash: z.string().describe('Hash of the working train.py after the decision: expected_hash for the next apply_patch'),
    experiment: experimentShape,
    figures: z.record(z.string(), z.unknown()).describe('The numbers the decision used'),
    scheduled: z.array(z.number().int()).describe('Noise, confirmation or re-runs queued by this call'),
    reruns: z
      .array(z.object({ experiment: z.number().int(), rerun: z.number().int() }))
      .describe('Candidates superseded by this decision, each with the experiment that re-measures its change on the head'),
    next_step: z.string().nullable(),
    noise: noiseShape,
    noise_floor: noiseFloorShape,
    within_noise: z.boolean().nullable().describe('true: the gain over the head is under twice sigma'),
  },
  kind: 'write',
  async handler(args, { lab }) {
    const result = await lab.decide(args.experiment_id, args.action, args.min_improvement, {
      confidence: args.confidence,
      confirm: args.confirm,
      confirmPairs: args.confirm_pairs,
    });
    return {
      structured: {
        decision: result.decision,
        reason: result.reason,
        head: result.head,
        restored_train_py: result.restoredTrainPy,
        train_py_hash: result.trainPyHash,
        experiment: experimentView(result.experiment),
        figures: result.figures,
        scheduled: result.scheduled,
        next_step: result.nextStep,
        noise: result.noise,
        noise_floor: noiseFloorView(result.noiseFloor),
        within_noise: result.withinNoise,
        reruns: result.reruns,
      },
      text:
        `Experiment ${args.experiment_id}: ${result.decision} (${result.reason}). Branch head ${result.head.slice(0, 8)}.` +
        (result.restoredTrainPy ? ' train.py restored to the head version.' : '') +
        ` train.py hash ${result.trainPyHash}.` +
        result.reruns.map((r) => `\nExperiment ${r.experiment} superseded: its change is re-run on the head as experiment ${r.rerun}.`).join('') +
        (result.nextStep ? `\nNext: ${result.nextStep}.` : ''),
    };
  },
});
