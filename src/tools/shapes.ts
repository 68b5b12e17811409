import { z } from 'zod';
import { EXPERIMENT_STATUSES, type Experiment } from '../core/store.js';

/** An experiment as tools report it: snake_case, null where unknown. */
export const experimentShape = z.object({
  id: z.number().int(),
  session: z.string().nullable(),
  description: z.string(),
  status: z.enum(EXPERIMENT_STATUSES),
  decision: z.enum(['keep', 'discard']).nullable(),
  decision_reason: z.string().nullable(),
  val_bpb: z.number().nullable(),
  parent_commit: z.string().nullable(),
  commit: z.string().nullable(),
  rebase_of: z.number().int().nullable(),
  slot: z.number().int().nullable(),
  training_seconds: z.number().nullable(),
  total_seconds: z.number().nullable(),
  peak_vram_mb: z.number().nullable(),
  mfu_percent: z.number().nullable(),
  total_tokens_M: z.number().nullable(),
  num_steps: z.number().nullable(),
  num_params_M: z.number().nullable(),
  depth: z.number().nullable(),
  queued_at: z.string().nullable(),
  started_at: z.string().nullable(),
  finished_at: z.string().nullable(),
  progress: z
    .object({ step: z.number(), percent: z.number(), loss: z.number() })
    .nullable()
    .describe('Latest training progress while running'),
  error: z.string().nullable(),
  kind: z.enum(['candidate', 'noise', 'confirm']).describe('candidate: a change measured from parent_commit; noise / confirm: re-runs of an existing commit'),
  seed: z.number().int().nullable().describe('Seed the server gave the run'),
  stacked_on: z.number().int().nullable().describe('The undecided experiment this one was stacked on (its commit is parent_commit)'),
  confirms: z.number().int().nullable().describe('For confirm runs: the candidate they confirm'),
  change_kind: z.enum(['code', 'seed_only', 'none']).nullable().describe('seed_only / none: changes nothing the model or optimiser sees; never kept as a gain'),
  verdict: z.enum(['keep', 'discard', 'inconclusive']).nullable().describe('The last auto verdict (inconclusive leaves the experiment undecided)'),
  decision_figures: z.record(z.string(), z.unknown()).nullable().describe('The numbers the decision used (gain, margin, sigma, runs, confidence)'),
  undone_by: z.number().int().nullable().describe('Branch move (undo) that took this kept change off the branch'),
  agent: z.string().nullable().describe('Who proposed it'),
});

export type ExperimentView = z.infer<typeof experimentShape>;

const iso = (ms: number | null | undefined) => (ms === null || ms === undefined ? null : new Date(ms).toISOString());
const orNull = <T>(value: T | null | undefined): T | null => (value === undefined ? null : value);

export function experimentView(e: Experiment, liveProgress?: { step: number; percent: number; loss: number }): ExperimentView {
  return {
    id: e.id,
    session: orNull(e.sessionTag),
    description: e.description,
    status: e.status,
    decision: orNull(e.decision),
    decision_reason: orNull(e.decisionReason),
    val_bpb: orNull(e.valBpb),
    parent_commit: orNull(e.parentCommit),
    commit: orNull(e.candidateCommit),
    rebase_of: orNull(e.rebaseOf),
    slot: orNull(e.slot),
    training_seconds: orNull(e.trainingSeconds),
    total_seconds: orNull(e.totalSeconds),
    peak_vram_mb: orNull(e.peakVramMb),
    mfu_percent: orNull(e.mfuPercent),
    total_tokens_M: orNull(e.totalTokensM),
    num_steps: orNull(e.numSteps),
    num_params_M: orNull(e.numParamsM),
    depth: orNull(e.depth),
    queued_at: iso(e.queuedAt),
    started_at: iso(e.startedAt),
    finished_at: iso(e.finishedAt),
    progress: liveProgress ?? orNull(e.progress),
    error: orNull(e.error),
    kind: e.kind ?? 'candidate',
    seed: orNull(e.seed),
    stacked_on: orNull(e.stackedOn),
    confirms: orNull(e.confirms),
    change_kind: orNull(e.changeKind),
    verdict: orNull(e.verdict),
    decision_figures: orNull(e.decisionFigures),
    undone_by: orNull(e.undoneBy),
    agent: orNull(e.agent),
  };
}

export const experimentIdArg = z.number().int().positive().describe('Experiment id, as returned by run_experiment');

export const noiseShape = z
  .object({
    sigma: z.number().describe('Pooled standard deviation of val_bpb over repeated runs of one train.py'),
    programs: z.number().int(),
    runs: z.number().int(),
  })
  .nullable()
  .describe('Measured seed-to-seed noise of this session; null until some train.py has run twice (re-run the unmodified head to measure it)');

export const noiseFloorShape = z
  .object({
    id: z.number().int().optional(),
    sigma: z.number().describe('Standard deviation of val_bpb between runs of one commit with distinct seeds, pooled over the newest measurements'),
    mad: z.number().describe('Median absolute deviation of the newest measurement\'s runs'),
    mean: z.number(),
    k: z.number().int().describe('Runs behind sigma'),
    pooled: z.number().int().describe('Measurements pooled into sigma'),
    commit: z.string(),
    profile: z.string(),
    machine: z.string(),
    measuredAt: z.number().nullable(),
    keepsSince: z.number().int().describe('Changes kept since it was measured'),
    stale: z.boolean().describe('true: the head moved far since; measure_noise again'),
    measuring: z.number().int().nullable().describe('Id of a measurement in progress'),
  })
  .nullable()
  .describe('The noise floor measured by the server (measure_noise) for this profile and machine; null until measured');

/** JSON cannot carry NaN: a measurement still in progress reports zeros. */
export function noiseFloorView<T extends { sigma: number; mad: number; mean: number } | null>(noise: T): T {
  if (!noise) return noise;
  const clean = (v: number) => (Number.isFinite(v) ? v : 0);
  return { ...noise, sigma: clean(noise.sigma), mad: clean(noise.mad), mean: clean(noise.mean) };
}
