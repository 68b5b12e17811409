import type { ExperimentView } from './shapes.js';

/**
 * Compact text renderings of experiments for tool results. The text is what most hosts put in
 * the model's context, so it carries what the next step needs in a few lines; the structured
 * content keeps every field.
 */

const bpb = (value: number | null) => (value === null ? 'n/a' : value.toFixed(6));
const seconds = (value: number | null) => (value === null ? '?' : `${value.toFixed(1)} s`);
const short = (commit: string | null) => (commit ? commit.slice(0, 8) : '?');
const UNFINISHED = new Set(['preparing', 'queued', 'running']);
const ERROR_CHARS = 600;

export interface NoiseFloorLine {
  sigma: number;
  k: number;
  stale: boolean;
  measuring: number | null;
}

export function noiseFloorLine(floor: NoiseFloorLine | null): string {
  if (!floor) return 'noise floor not measured (measure_noise)';
  if (floor.k === 0 && floor.measuring !== null) return `noise floor being measured (${floor.measuring})`;
  return `noise sigma ${floor.sigma.toFixed(4)} (k ${floor.k}${floor.stale ? ', stale: measure_noise again' : ''})`;
}

/** One experiment in full: outcome, the figures that matter, and what to do next. */
export function experimentDetail(e: ExperimentView): string {
  const head = `Experiment ${e.id} (${e.kind}${e.kind === 'candidate' ? ` from ${short(e.parent_commit)}` : ` of ${short(e.commit)}`}, seed ${e.seed ?? '?'}): "${e.description}"`;
  if (e.status === 'running') {
    const progress = e.progress ? `step ${e.progress.step}, ${e.progress.percent.toFixed(1)}% of budget, loss ${e.progress.loss.toFixed(4)}` : 'starting';
    return `${head} is running: ${progress}. Call get_results({experiment_id: ${e.id}, wait_seconds: 45}) again.`;
  }
  if (UNFINISHED.has(e.status)) return `${head} is ${e.status}. Call get_results({experiment_id: ${e.id}, wait_seconds: 45}) again.`;
  if (e.status !== 'succeeded') {
    const error = e.error && e.error.length > ERROR_CHARS ? `${e.error.slice(0, ERROR_CHARS)}...` : e.error ?? 'no error recorded';
    return `${head} ended ${e.status}: ${error}\nLog tail: get_run_log({experiment_id: ${e.id}}).${decisionLine(e)}`;
  }
  const figures = [
    `training ${seconds(e.training_seconds)} of ${seconds(e.total_seconds)}`,
    e.num_steps === null ? null : `${e.num_steps} steps`,
    e.peak_vram_mb ? `peak ${Math.round(e.peak_vram_mb)} MB` : null,
    e.mfu_percent ? `mfu ${e.mfu_percent.toFixed(1)}%` : null,
    e.change_kind && e.change_kind !== 'code' ? `change kind ${e.change_kind} (never kept as a gain)` : null,
  ].filter(Boolean);
  return `${head} succeeded: val_bpb ${bpb(e.val_bpb)}; ${figures.join(', ')}.${decisionLine(e)}`;
}

function decisionLine(e: ExperimentView): string {
  if (e.decision) return ` Decided: ${e.decision} (${e.decision_reason ?? 'no reason'}).${e.undone_by ? ` Undone by move ${e.undone_by}.` : ''}`;
  if (e.kind !== 'candidate') return '';
  if (e.verdict === 'inconclusive') return ` Inconclusive so far (${e.decision_reason}); commit_or_revert with confirm: true, or discard.`;
  return ` Undecided: commit_or_revert({experiment_id: ${e.id}}).`;
}

/** One line per experiment, for lists. */
export function experimentRow(e: ExperimentView): string {
  const outcome = e.status === 'running' && e.progress ? `running ${e.progress.percent.toFixed(0)}%` : e.status;
  const decided = e.decision ?? (e.verdict === 'inconclusive' ? 'inconclusive' : e.kind === 'candidate' && e.status === 'succeeded' ? 'undecided' : '');
  return `#${e.id} ${e.kind === 'candidate' ? '' : `[${e.kind}] `}${outcome} ${bpb(e.val_bpb)} ${decided} "${e.description}"`.replace(/ {2,}/g, ' ');
}
