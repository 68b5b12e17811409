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
