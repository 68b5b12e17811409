/**
 * Views of the experiment record for people: the upstream results.tsv, a self-contained SVG
 * progress chart, and one self-contained HTML report (no network, no external fonts or scripts).
 *
 * Everything here except `loadReportData`/`writeReport` is pure: experiments in, text out.
 * Descriptions, errors and diffs come from models, so every piece of user text is escaped and
 * stripped of characters XML cannot hold before it reaches SVG or HTML.
 */
import { createHash } from 'node:crypto';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { AuditSummary, AuditVerification } from './audit.js';
import type { Lab } from './lab.js';
import { isFinishedStatus, type Experiment } from './store.js';

// ---- text helpers ------------------------------------------------------------------------------

/** Characters XML 1.0 cannot carry (C0 controls but tab/newline/CR, lone surrogates, U+FFFE/F). */
const XML_INVALID = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** Escapes text for HTML/SVG element content and quoted attribute values. */
export function escapeHtml(value: unknown): string {
  return String(value ?? '')
    .replace(XML_INVALID, '\uFFFD')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

/** One line of text: tabs, newlines and other control characters become single spaces. */
function oneLine(value: string): string {
  return value
    .replace(/[\u0000-\u001F\u007F\u0085\u2028\u2029]+/g, ' ')
    .replace(/ {2,}/g, ' ')
    .trim();
}

function truncate(text: string, max: number): string {
  const chars = Array.from(text);
  return chars.length <= max ? text : `${chars.slice(0, Math.max(1, max - 1)).join('').trimEnd()}…`;
}

function isNum(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value);
}

function fixed(value: number | null | undefined, digits: number, fallback = '—'): string {
  return isNum(value) ? value.toFixed(digits) : fallback;
}

function signed(value: number, digits: number): string {
  const text = Math.abs(value).toFixed(digits);
  return value < 0 ? `−${text}` : value > 0 ? `+${text}` : text;
}

// ---- classification ----------------------------------------------------------------------------

export function isFinished(experiment: Pick<Experiment, 'status'>): boolean {
  return isFinishedStatus(experiment.status);
}

/** A change measured against its parent; noise and confirmation runs only re-measure a commit. */
function isCandidate(experiment: Pick<Experiment, 'kind'>): boolean {
  return experiment.kind === undefined || experiment.kind === 'candidate';
}

/** A finished experiment with a usable metric: it succeeded and recorded a finite val_bpb. */
export function hasMetric(experiment: Pick<Experiment, 'status' | 'valBpb'>): boolean {
  return experiment.status === 'succeeded' && isNum(experiment.valBpb);
}

export type ResultStatus = 'keep' | 'discard' | 'crash' | 'pending';

/**
 * The results.tsv status of a finished experiment:
 *
 * | experiment                                               | status    |
 * |----------------------------------------------------------|-----------|
 * | succeeded, decision keep                                 | `keep`    |
 * | succeeded, decision discard                              | `discard` |
 * | succeeded, not decided yet                               | `pending` |
 * | crashed, timed_out, rejected or cancelled (any decision) | `crash`   |
 *
 * Upstream autoresearch knows only keep/discard/crash because its agent decides at once; here a
 * result can wait for commit_or_revert, and calling it `pending` keeps it from reading as either.
 * A run without a metric can never be kept (the lab refuses), so it is a crash whatever its
 * decision; a succeeded run that somehow lacks val_bpb is reported as a crash too.
 */
export function resultStatus(experiment: Experiment): ResultStatus {
  if (!hasMetric(experiment)) return 'crash';
  if (experiment.decision === 'keep') return 'keep';
  if (experiment.decision === 'discard') return 'discard';
  return 'pending';
}

/**
 * The upstream results.tsv view: `commit val_bpb memory_gb status description`, tab-separated,
 * one row per finished experiment in the order given (queued and running ones are skipped).
 *
 * - commit: first 7 characters of the candidate commit; `-------` for an experiment rejected
 *   before it was committed.
 * - val_bpb: 6 decimals; `0.000000` for anything but a succeeded run (upstream's crash value).
 * - memory_gb: peak VRAM in GiB (peak_vram_mb / 1024), 1 decimal; `0.0` when unknown and, as
 *   upstream, for crashes.
 * - status: see {@link resultStatus}.
 * - description: tabs, newlines and other control characters replaced by spaces.
 */
export function resultsTsv(experiments: Experiment[], options: { noise?: NoiseBand | null } = {}): string {
  const rows = ['commit\tval_bpb\tmemory_gb\tstatus\tdescription'];
  for (const experiment of experiments) {
    if (!isFinished(experiment)) continue;
    if (!isCandidate(experiment)) continue;
    const status = resultStatus(experiment);
    const commit = experiment.candidateCommit ? experiment.candidateCommit.slice(0, 7) : '-------';
    const valBpb = status === 'crash' ? '0.000000' : (experiment.valBpb as number).toFixed(6);
    const memory = status === 'crash' ? null : experiment.peakVramMb;
    const memoryGb = isNum(memory) && memory > 0 ? (memory / 1024).toFixed(1) : '0.0';
    rows.push([commit, valBpb, memoryGb, status, oneLine(experiment.description ?? '')].join('\t'));
  }
  const noise = options.noise;
  if (noise && Number.isFinite(noise.sigma)) {
    // A comment line after the rows: upstream readers that stop at '#' or skip it keep working.
    rows.push(`# noise: sigma ${noise.sigma.toFixed(6)}, MAD ${noise.mad.toFixed(6)}, k ${noise.k}, commit ${noise.commit.slice(0, 7)}, ${noise.profile} on ${noise.machine}${noise.stale ? ' (stale)' : ''}`);
  }
  return `${rows.join('\n')}\n`;
}

/** The measured noise floor, as the TSV and the report show it. */
export interface NoiseBand {
  sigma: number;
  mad: number;
  k: number;
  commit: string;
  profile: string;
  machine: string;
  stale?: boolean;
}

/** Baseline (the first kept result, else the first result) and best (lowest kept, else lowest). */
export function baselineAndBest(experiments: Experiment[]): { baseline?: Experiment; best?: Experiment } {
  const measured = [...experiments].filter(hasMetric).sort((a, b) => a.id - b.id);
  const kept = measured.filter((e) => e.decision === 'keep');
  const pool = kept.length > 0 ? kept : measured;
  const best = pool.reduce<Experiment | undefined>((min, e) => (min === undefined || (e.valBpb as number) < (min.valBpb as number) ? e : min), undefined);
  return { baseline: pool[0], best };
}

// ---- chart -------------------------------------------------------------------------------------

export interface ChartOptions {
  width?: number;
  height?: number;
  /** Chart title; default "val_bpb by experiment". */
  title?: string;
  /** Longest label on a kept point, in characters (labels are also shortened to fit). */
  maxLabelChars?: number;
  /** At most this many kept points are labelled (the baseline and the biggest gains); default 14. */
  maxLabels?: number;
  /** Measured seed-to-seed sigma: drawn as a band of +-sigma around the running best. */
  noiseSigma?: number | null;
}

/** Focused y-range for the metric values; values above `clipAbove` are drawn clipped at the top. */
export function chartYRange(values: number[], baseline?: number): { min: number; max: number; clipAbove: number } {
  const sorted = values.filter(isNum).sort((a, b) => a - b);
  if (sorted.length === 0) return { min: 0, max: 1, clipAbove: 1 };
  const lo = sorted[0];
  const reference = isNum(baseline) ? baseline : quantile(sorted, 0.5);
  // Interesting region: from the best result up to the baseline, plus regressions up to 1.5 times
  // the progress made (at least 2% of the baseline) or 5% of the baseline, whichever is more.
  const spread = Math.max(reference - lo, Math.abs(reference) * 0.02, 1e-9);
  let upper = reference + Math.max(1.5 * spread, Math.abs(reference) * 0.05);
  if (sorted.length >= 5) {
    // With enough points, anything inside Tukey's upper fence is ordinary scatter: keep it.
    const q1 = quantile(sorted, 0.25);
    const q3 = quantile(sorted, 0.75);
    upper = Math.max(upper, q3 + 1.5 * (q3 - q1));
  }
  // The range ends at the highest ordinary value actually present, so no band stays empty.
  const ordinary = sorted.filter((v) => v <= upper);
  const clipAbove = Math.max(ordinary[ordinary.length - 1] ?? reference, reference, lo);
  const span = Math.max(clipAbove - lo, Math.abs(lo) * 0.01, 1e-6);
  // Headroom above for the labels of kept points, a little room below the best.
  return { min: lo - span * 0.1, max: clipAbove + span * 0.22, clipAbove };
}

function quantile(sorted: number[], q: number): number {
  const position = (sorted.length - 1) * q;
  const low = Math.floor(position);
  const high = Math.ceil(position);
  return sorted[low] + (sorted[high] - sorted[low]) * (position - low);
}

/** Round tick positions covering [min, max], about `count` of them. */
function niceTicks(min: number, max: number, count: number): { ticks: number[]; decimals: number } {
  const raw = (max - min) / Math.max(1, count);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? 10 * magnitude;
  const ticks: number[] = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9) + (step / magnitude === 2.5 ? 1 : 0));
  return { ticks, decimals };
}

const FONT = "ui-sans-serif, system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif";
const COLOR = {
  ink: '#1f2937',
  muted: '#6b7280',
  grid: '#e5e7eb',
  axis: '#9ca3af',
  kept: '#059669',
  keptDark: '#047857',
  discard: '#94a3b8',
  pending: '#d97706',
  crash: '#dc2626',
  band: '#fef2f2',
};

const LABEL_ANGLE = 32;
const LABEL_FONT = 11;
const LABEL_CHAR_WIDTH = LABEL_FONT * 0.56;

type Point = [number, number];

/** The corners of a text box: [x0, x1] x [y0, y1] in the label's frame, rotated by `degrees`, moved to (x, y). */
function boxCorners(x: number, y: number, degrees: number, x0: number, x1: number, y0: number, y1: number): Point[] {
  const a = (degrees * Math.PI) / 180;
  const [cos, sin] = [Math.cos(a), Math.sin(a)];
  return ([[x0, y0], [x1, y0], [x1, y1], [x0, y1]] as Point[]).map(([u, v]) => [x + u * cos - v * sin, y + u * sin + v * cos]);
}

/** Separating-axis test for two convex quadrilaterals. */
function boxesOverlap(a: Point[], b: Point[]): boolean {
  for (const shape of [a, b]) {
    for (let i = 0; i < shape.length; i += 1) {
      const [p, q] = [shape[i], shape[(i + 1) % shape.length]];
      const axis: Point = [q[1] - p[1], p[0] - q[0]];
      const project = (poly: Point[]) => poly.map(([x, y]) => x * axis[0] + y * axis[1]);
      const [pa, pb] = [project(a), project(b)];
      if (Math.max(...pa) <= Math.min(...pb) || Math.max(...pb) <= Math.min(...pa)) return false;
    }
  }
  return true;
}

/**
 * val_bpb per finished experiment, in id order: kept results solid and labelled, discarded ones
 * faint, undecided ones hollow, crashes as crosses in a band under the plot (they have no metric),
 * points above the focused range as triangles at its top edge, and the running best as a step
 * line over the kept results. Every finished experiment is one element of class `point` carrying
 * `data-experiment-id`.
 */
export function progressChartSvg(experiments: Experiment[], options: ChartOptions = {}): string {
  const width = options.width ?? 960;
  const height = options.height ?? 480;
  const title = options.title ?? 'val_bpb by experiment';
  const maxLabelChars = options.maxLabelChars ?? 42;
  const maxLabels = options.maxLabels ?? 14;
  // Noise and confirmation runs re-measure existing commits; the chart shows candidates.
  const finished = experiments.filter((e) => isFinished(e) && isCandidate(e)).sort((a, b) => a.id - b.id);
  const open = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img" font-family="${FONT}" class="progress-chart"`;
  const titleText = `<text x="24" y="30" font-size="17" font-weight="600" fill="${COLOR.ink}">${escapeHtml(title)}</text>`;
  if (finished.length === 0) {
    return [
      `${open} data-points="0" aria-label="${escapeHtml(title)}: no finished experiments yet">`,
      `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
      titleText,
      `<text class="empty" x="${width / 2}" y="${height / 2}" text-anchor="middle" font-size="15" fill="${COLOR.muted}">no finished experiments yet</text>`,
      '</svg>',
    ].join('\n');
  }

  const measured = finished.filter(hasMetric);
  const { baseline, best } = baselineAndBest(finished);
  const range = chartYRange(
    measured.map((e) => e.valBpb as number),
    baseline?.valBpb ?? undefined,
  );

  const left = 76;
  const right = width - 28;
  const top = 78;
  const bottom = height - 92;
  const bandTop = bottom + 10;
  const bandBottom = bandTop + 24;
  const slot = (right - left) / finished.length;
  const xOf = (index: number) => left + slot * (index + 0.5);
  const yOf = (value: number) => bottom - ((Math.min(value, range.max) - range.min) / (range.max - range.min)) * (bottom - top);
  const clipY = top + 7;

  const parts: string[] = [];
  parts.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  parts.push(titleText);

  // Subtitle: what is shown, in numbers.
  const counts = { keep: 0, discard: 0, pending: 0, crash: 0 };
  for (const e of finished) counts[resultStatus(e)] += 1;
  const clippedCount = measured.filter((e) => (e.valBpb as number) > range.clipAbove).length;
  const facts = [`${finished.length} finished`, `${counts.keep} kept`, `${counts.discard} discarded`];
  if (counts.pending) facts.push(`${counts.pending} undecided`);
  if (counts.crash) facts.push(`${counts.crash} crashed`);
  if (best && isNum(best.valBpb)) {
    let bestText = `best ${best.valBpb.toFixed(6)} (#${best.id})`;
    if (baseline && baseline !== best && isNum(baseline.valBpb) && baseline.valBpb !== 0) {
      bestText += `, ${signed(((best.valBpb - baseline.valBpb) / baseline.valBpb) * 100, 2)}% vs baseline`;
    }
    facts.push(bestText);
  }
  if (clippedCount) facts.push(`${clippedCount} above the range`);
  parts.push(`<text x="24" y="52" font-size="12.5" fill="${COLOR.muted}">${escapeHtml(facts.join(' · '))}</text>`);

  // Legend, right-aligned on the title line.
  const legend: [string, string][] = [];
  if (counts.keep) legend.push(['kept', `<circle r="5" fill="${COLOR.kept}" stroke="#fff" stroke-width="1.5"/>`]);
  if (counts.discard) legend.push(['discarded', `<circle r="3.5" fill="${COLOR.discard}" fill-opacity="0.6"/>`]);
  if (counts.pending) legend.push(['undecided', `<circle r="4" fill="#fff" stroke="${COLOR.pending}" stroke-width="2"/>`]);
  if (counts.crash) legend.push(['crashed', crossPath(0, 0, 4, COLOR.crash)]);
  if (clippedCount) legend.push(['above range', trianglePath(0, 0, COLOR.discard, 0.8)]);
  if (counts.keep) legend.push(['running best', `<path d="M-9 0H9" stroke="${COLOR.kept}" stroke-width="2"/>`]);
  let legendX = right;
  const legendItems: string[] = [];
  for (const [label, symbol] of [...legend].reverse()) {
    const textWidth = label.length * 6.6;
    legendX -= textWidth;
    legendItems.push(`<text x="${r(legendX)}" y="34" font-size="12" fill="${COLOR.ink}">${label}</text>`);
    legendX -= 14;
    legendItems.push(`<g transform="translate(${r(legendX)} 30)">${symbol}</g>`);
    legendX -= 22;
  }
  parts.push(`<g class="legend">${legendItems.join('')}</g>`);

  // Grid, y ticks and axes.
  const { ticks, decimals } = measured.length > 0 ? niceTicks(range.min, range.max, 6) : { ticks: [], decimals: 0 };
  const grid: string[] = [];
  if (measured.length === 0) {
    grid.push(
      `<text x="${r((left + right) / 2)}" y="${r((top + bottom) / 2)}" text-anchor="middle" font-size="13" fill="${COLOR.muted}">no val_bpb yet: every finished run ended without a result</text>`,
    );
  }
  for (const tick of ticks) {
    const y = r(yOf(tick));
    grid.push(`<line x1="${left}" x2="${right}" y1="${y}" y2="${y}" stroke="${COLOR.grid}"/>`);
    grid.push(`<text x="${left - 8}" y="${y}" dy="0.32em" text-anchor="end" font-size="11" fill="${COLOR.muted}">${tick.toFixed(decimals)}</text>`);
  }
  parts.push(`<g class="y-axis">${grid.join('')}</g>`);
  parts.push(`<line x1="${left}" x2="${left}" y1="${top}" y2="${bottom}" stroke="${COLOR.axis}"/>`);
  parts.push(`<line x1="${left}" x2="${right}" y1="${bottom}" y2="${bottom}" stroke="${COLOR.axis}"/>`);
  parts.push(
    `<text transform="translate(20 ${r((top + bottom) / 2)}) rotate(-90)" text-anchor="middle" font-size="12" fill="${COLOR.muted}">val_bpb (lower is better)</text>`,
  );
  if (clippedCount) {
    parts.push(`<line x1="${left}" x2="${right}" y1="${top}" y2="${top}" stroke="${COLOR.axis}" stroke-dasharray="3 4"/>`);
  }
  if (counts.crash) {
    parts.push(`<rect x="${left}" y="${bandTop}" width="${r(right - left)}" height="${bandBottom - bandTop}" fill="${COLOR.band}" rx="3"/>`);
    parts.push(`<text x="${left - 8}" y="${(bandTop + bandBottom) / 2}" dy="0.32em" text-anchor="end" font-size="11" fill="${COLOR.crash}">crash</text>`);
  }

  // x ticks: experiment ids, thinned to about a dozen.
  const xTicks: string[] = [];
  const tickEvery = finished.length <= 24 ? 1 : niceStep(finished.length / 12);
  const axisY = bandBottom + 4;
  finished.forEach((experiment, index) => {
    const show = tickEvery === 1 || experiment.id % tickEvery === 0 || (index === 0 && finished[0].id % tickEvery > tickEvery / 2);
    if (!show) return;
    const x = r(xOf(index));
    xTicks.push(`<line x1="${x}" x2="${x}" y1="${bottom}" y2="${bottom + 4}" stroke="${COLOR.axis}"/>`);
    xTicks.push(`<text x="${x}" y="${axisY + 12}" text-anchor="middle" font-size="11" fill="${COLOR.muted}">${experiment.id}</text>`);
  });
  parts.push(`<g class="x-axis">${xTicks.join('')}</g>`);
  parts.push(`<text x="${r((left + right) / 2)}" y="${height - 16}" text-anchor="middle" font-size="12" fill="${COLOR.muted}">experiment</text>`);

  // Running best over kept results, as a step line to the last experiment.
  const keptPoints = finished
    .map((experiment, index) => ({ experiment, index }))
    .filter(({ experiment }) => hasMetric(experiment) && experiment.decision === 'keep');
  if (keptPoints.length > 0) {
    let bestValue = keptPoints[0].experiment.valBpb as number;
    let d = `M${r(xOf(keptPoints[0].index))} ${r(yOf(bestValue))}`;
    for (const { experiment, index } of keptPoints.slice(1)) {
      const value = experiment.valBpb as number;
      if (value < bestValue) {
        d += `H${r(xOf(index))}V${r(yOf(value))}`;
        bestValue = value;
      }
    }
    d += `H${r(Math.max(xOf(finished.length - 1), xOf(keptPoints[0].index)) + slot * 0.4)}`;
    const sigma = options.noiseSigma;
    if (sigma !== undefined && sigma !== null && Number.isFinite(sigma) && sigma > 0) {
      // +-sigma around each step of the running best: a gain inside the band may be luck.
      const bands: string[] = [];
      let from = keptPoints[0].index;
      let value = keptPoints[0].experiment.valBpb as number;
      const end = Math.max(finished.length - 1, from);
      const band = (x0: number, x1: number, v: number) => {
        const top = yOf(v - sigma);
        const bottom = yOf(v + sigma);
        bands.push(`<rect x="${r(x0)}" y="${r(Math.min(top, bottom))}" width="${r(Math.max(x1 - x0, 1))}" height="${r(Math.abs(bottom - top))}"/>`);
      };
      for (const { experiment, index } of keptPoints.slice(1)) {
        if ((experiment.valBpb as number) < value) {
          band(xOf(from), xOf(index), value);
          from = index;
          value = experiment.valBpb as number;
        }
      }
      band(xOf(from), xOf(end) + slot * 0.4, value);
      parts.push(`<g class="noise-band" fill="${COLOR.kept}" fill-opacity="0.12"><title>noise floor: running best +- sigma ${sigma.toFixed(6)}</title>${bands.join('')}</g>`);
    }
    parts.push(`<path class="best-line" d="${d}" fill="none" stroke="${COLOR.kept}" stroke-width="2" stroke-opacity="0.85" stroke-linejoin="round"/>`);
  }

  // Points: discarded and undecided first, kept on top; crashes in their band.
  // Markers shrink when experiments crowd the axis (5 px radius down to 2.5).
  const size = Math.max(2.5, Math.min(5, slot * 0.4));
  const background: string[] = [];
  const foreground: string[] = [];
  const crashes: string[] = [];
  finished.forEach((experiment, index) => {
    const x = xOf(index);
    const status = resultStatus(experiment);
    const tooltip = pointTooltip(experiment, status);
    const attrs = `data-experiment-id="${experiment.id}" data-status="${escapeHtml(experiment.status)}"`;
    if (status === 'crash') {
      const y = (bandTop + bandBottom) / 2;
      crashes.push(`<g class="point crash" ${attrs}><title>${tooltip}</title>${crossPath(x, y, Math.min(4.5, 1 + size), COLOR.crash)}</g>`);
      return;
    }
    const value = experiment.valBpb as number;
    const clipped = value > range.clipAbove;
    const y = clipped ? clipY : yOf(value);
    const cls = `point ${status === 'keep' ? 'kept' : status === 'discard' ? 'discarded' : 'pending'}${clipped ? ' clipped' : ''}`;
    const data = `${attrs} data-val-bpb="${value}"`;
    let shape: string;
    if (clipped) shape = trianglePath(x, y, status === 'keep' ? COLOR.kept : status === 'pending' ? COLOR.pending : COLOR.discard, status === 'discard' ? 0.75 : 1);
    else if (status === 'keep') shape = `<circle cx="${r(x)}" cy="${r(y)}" r="${r(size + 0.5)}" fill="${COLOR.kept}" stroke="#fff" stroke-width="1.5"/>`;
    else if (status === 'pending') shape = `<circle cx="${r(x)}" cy="${r(y)}" r="${r(size * 0.85)}" fill="#fff" stroke="${COLOR.pending}" stroke-width="2"/>`;
    else shape = `<circle cx="${r(x)}" cy="${r(y)}" r="${r(Math.max(2, size * 0.7))}" fill="${COLOR.discard}" fill-opacity="0.55"/>`;
    (status === 'keep' ? foreground : background).push(`<g class="${cls}" ${data}><title>${tooltip}</title>${shape}</g>`);
  });
  const pointsAt = parts.length;
  parts.push(`<g class="points">${background.join('')}${crashes.join('')}</g>`);

  // Labels for kept results, placed greedily (baseline first, then the biggest gains): rotated up
  // and to the right of the point, or, where that leaves too little room, up and to the left;
  // shortened to stay inside the plot, and left out where they would collide with another.
  const candidates: { experiment: Experiment; index: number; gain: number }[] = [];
  let runningBest = Infinity;
  for (const { experiment, index } of keptPoints) {
    const value = experiment.valBpb as number;
    candidates.push({ experiment, index, gain: runningBest === Infinity ? Infinity : runningBest - value });
    runningBest = Math.min(runningBest, value);
  }
  candidates.sort((a, b) => b.gain - a.gain || a.index - b.index);
  const placed: Point[][] = [];
  const labels: string[] = [];
  const ceiling = top - 16;
  const sin = Math.sin((LABEL_ANGLE * Math.PI) / 180);
  const cos = Math.cos((LABEL_ANGLE * Math.PI) / 180);
  for (const { experiment, index } of candidates) {
    if (labels.length >= maxLabels) break;
    const value = experiment.valBpb as number;
    const px = xOf(index);
    const py = value > range.clipAbove ? clipY : yOf(value);
    const text = oneLine(experiment.description ?? '') || `#${experiment.id}`;
    const length = Array.from(text).length;
    const ay = py - 8;
    const options = [
      { side: 'right', ax: px + 6, degrees: -LABEL_ANGLE, room: Math.min((ay - ceiling) / sin, (width - 4 - px - 6) / cos) },
      { side: 'left', ax: px - 6, degrees: LABEL_ANGLE, room: Math.min((ay - ceiling) / sin, (px - 6 - (left + 4)) / cos) },
    ].map((option) => ({ ...option, chars: Math.min(maxLabelChars, length, Math.floor(option.room / LABEL_CHAR_WIDTH)) }));
    // The right side reads best; the left side only when it shows clearly more of the text.
    if (options[1].chars > options[0].chars + 3 && options[0].chars < length) options.reverse();
    for (const option of options) {
      if (option.chars < Math.min(6, length)) continue;
      const shown = truncate(text, option.chars);
      const extent = Array.from(shown).length * LABEL_CHAR_WIDTH;
      const box =
        option.side === 'right'
          ? boxCorners(option.ax, ay, option.degrees, -1, extent + 1, -LABEL_FONT * 0.85, LABEL_FONT * 0.25)
          : boxCorners(option.ax, ay, option.degrees, -extent - 1, 1, -LABEL_FONT * 0.85, LABEL_FONT * 0.25);
      if (placed.some((other) => boxesOverlap(other, box))) continue;
      placed.push(box);
      labels.push(
        `<text class="label" data-experiment-id="${experiment.id}" transform="translate(${r(option.ax)} ${r(ay)}) rotate(${option.degrees})"${
          option.side === 'left' ? ' text-anchor="end"' : ''
        } font-size="${LABEL_FONT}" fill="${COLOR.keptDark}" stroke="#ffffff" stroke-width="3" stroke-linejoin="round" paint-order="stroke">${escapeHtml(shown)}</text>`,
      );
      break;
    }
  }
  // Labels go under every point: the data stays visible, the halo only hides grid and line.
  parts.splice(pointsAt, 0, `<g class="labels">${labels.join('')}</g>`);
  parts.push(`<g class="points kept-points">${foreground.join('')}</g>`);

  const label = `${title}: ${facts.join(', ')}`;
  return [
    `${open} data-points="${finished.length}" data-y-min="${range.min}" data-y-max="${range.max}" data-clip-above="${range.clipAbove}" aria-label="${escapeHtml(label)}">`,
    `<title>${escapeHtml(label)}</title>`,
    ...parts,
    '</svg>',
  ].join('\n');
}

function r(value: number): number {
  return Math.round(value * 10) / 10;
}

function niceStep(raw: number): number {
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  return ([1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? 10 * magnitude) | 0 || 1;
}

function crossPath(x: number, y: number, size: number, color: string): string {
  return `<path d="M${r(x - size)} ${r(y - size)}L${r(x + size)} ${r(y + size)}M${r(x - size)} ${r(y + size)}L${r(x + size)} ${r(y - size)}" stroke="${color}" stroke-width="2" stroke-linecap="round"/>`;
}

function trianglePath(x: number, y: number, color: string, opacity: number): string {
  return `<path d="M${r(x)} ${r(y - 5)}L${r(x + 5)} ${r(y + 4)}L${r(x - 5)} ${r(y + 4)}Z" fill="${color}" fill-opacity="${opacity}"/>`;
}

function pointTooltip(experiment: Experiment, status: ResultStatus): string {
  const lines = [`#${experiment.id} ${oneLine(experiment.description ?? '')}`];
  if (status === 'crash') {
    lines.push(experiment.status.replace('_', ' '));
    if (experiment.error) lines.push(truncate(oneLine(experiment.error), 200));
  } else {
    lines.push(`val_bpb ${(experiment.valBpb as number).toFixed(6)} · ${status === 'keep' ? 'kept' : status === 'discard' ? 'discarded' : 'undecided'}`);
    if (experiment.decisionReason) lines.push(oneLine(experiment.decisionReason));
  }
  return escapeHtml(lines.join('\n'));
}

// ---- HTML report -------------------------------------------------------------------------------

/** The diff of one kept change, from the head it ran on to its candidate commit. */
export interface KeptChange {
  experimentId: number;
  parentCommit: string | null;
  candidateCommit: string | null;
  /** Unified diff of train.py; empty when the run changed nothing (e.g. the baseline). */
  diff: string;
  /** Why the diff could not be read, if it could not. */
  error?: string;
}

/** The audit log as the report shows it: `AuditLog.summary()` and `AuditLog.verify()`. */
export interface AuditView {
  summary: AuditSummary;
  chain: AuditVerification;
}

export interface IntegrityView {
  /** File name -> SHA-256 pinned when the workspace was created. */
  pinnedHashes: Record<string, string>;
  harnessIntact: boolean;
  /** Names of pinned files whose hash differs now (or that are missing). */
  harnessDrift: string[];
}

/** Everything the HTML report shows; `loadReportData` reads it from a Lab. */
export interface ReportData {
  generatedAt: number;
  workspace: string;
  branch: string;
  session: string | null;
  head: string;
  profile: string;
  timeBudgetSeconds: number;
  ceilingSeconds?: number;
  experiments: Experiment[];
  keptChanges: KeptChange[];
  /** Commits on the branch, newest first. */
  history?: { commit: string; subject: string }[];
  audit: AuditView | null;
  integrity: IntegrityView;
  /** The measured noise floor (measure_noise), if any. */
  noise?: NoiseBand | null;
}

const STATUS_LABEL: Record<string, string> = {
  succeeded: 'succeeded',
  crashed: 'crashed',
  timed_out: 'timed out',
  cancelled: 'cancelled',
  rejected: 'rejected',
  queued: 'queued',
  running: 'running',
};

/** Pill text and colour class for an experiment: the decision where there is one. */
function pill(experiment: Experiment): { text: string; cls: string } {
  if (!isFinished(experiment)) return { text: STATUS_LABEL[experiment.status] ?? experiment.status, cls: 'active' };
  const status = resultStatus(experiment);
  if (status === 'keep') return { text: 'kept', cls: 'keep' };
  if (status === 'discard') return { text: 'discarded', cls: 'discard' };
  if (status === 'pending') return { text: 'undecided', cls: 'pending' };
  return { text: STATUS_LABEL[experiment.status] ?? experiment.status, cls: 'crash' };
}

function utc(ms: number | null | undefined): string {
  if (!isNum(ms)) return '';
  return new Date(ms).toISOString().replace('T', ' ').slice(0, 16);
}

function short(commit: string | null | undefined): string {
  return commit ? commit.slice(0, 7) : '';
}

const REPORT_CSS = `
:root {
  --ink: #1f2937; --muted: #6b7280; --faint: #9ca3af; --line: #e5e7eb; --bg: #f5f6f8; --card: #ffffff;
  --keep: #059669; --keep-bg: #ecfdf5; --discard: #64748b; --discard-bg: #f1f5f9; --crash: #dc2626; --crash-bg: #fef2f2;
  --pending: #b45309; --pending-bg: #fffbeb; --active: #2563eb; --active-bg: #eff6ff;
  --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, 'Liberation Mono', monospace;
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--ink); font: 14px/1.5 ui-sans-serif, system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 28px 24px 64px; }
header.top { display: flex; flex-wrap: wrap; gap: 12px 24px; align-items: flex-start; justify-content: space-between; margin-bottom: 18px; }
h1 { margin: 0; font-size: 24px; font-weight: 650; letter-spacing: -0.01em; }
h1 .session { color: var(--muted); font-weight: 500; }
h2 { margin: 0 0 14px; font-size: 17px; font-weight: 620; }
h2 .count { color: var(--muted); font-weight: 450; font-size: 14px; margin-left: 6px; }
.meta { margin-top: 6px; color: var(--muted); font-size: 13px; display: flex; flex-wrap: wrap; gap: 4px 18px; }
.meta b { color: var(--ink); font-weight: 550; }
code, .mono { font-family: var(--mono); font-size: 12.5px; }
.badges { display: flex; gap: 8px; flex-wrap: wrap; }
.badge { text-decoration: none; display: inline-flex; align-items: center; gap: 6px; padding: 5px 11px; border-radius: 999px; font-size: 12.5px; font-weight: 560; border: 1px solid; white-space: nowrap; }
.badge.ok { color: var(--keep); background: var(--keep-bg); border-color: #a7f3d0; }
.badge.bad { color: var(--crash); background: var(--crash-bg); border-color: #fecaca; }
.badge.unknown { color: var(--muted); background: #fff; border-color: var(--line); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 12px; margin-bottom: 18px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: 0.05em; font-weight: 560; }
.card .value { font-size: 22px; font-weight: 640; margin-top: 2px; font-variant-numeric: tabular-nums; letter-spacing: -0.01em; }
.card .sub { color: var(--muted); font-size: 12.5px; margin-top: 2px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.card .sub.wrap { white-space: normal; }
.card .value.good { color: var(--keep); }
section.panel { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 18px 20px; margin-bottom: 18px; }
.chart { overflow-x: auto; }
.chart svg { display: block; width: 100%; min-width: 720px; height: auto; }
.chart .point { cursor: pointer; }
.chart .point:hover circle, .chart .point:hover path { stroke: #111827; stroke-width: 1.5; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 7px 9px; text-align: left; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; white-space: nowrap; background: #fafafa; position: sticky; top: 0; }
th.sortable { cursor: pointer; user-select: none; }
th.sortable:hover, th.sortable:focus-visible { color: var(--ink); outline: none; background: #f3f4f6; }
th.sortable::after { content: '↕'; margin-left: 4px; color: #d1d5db; font-size: 11px; }
th[aria-sort=ascending]::after { content: '▲'; color: var(--ink); }
th[aria-sort=descending]::after { content: '▼'; color: var(--ink); }
td.num, th.num { text-align: right; }
td.num { white-space: nowrap; }
tbody tr:hover { background: #f9fafb; }
tbody tr.flash { animation: flash 1.6s ease-out; }
@keyframes flash { from { background: #fef9c3; } to { background: transparent; } }
tr.keep td.id { box-shadow: inset 3px 0 0 var(--keep); }
td.id { color: var(--muted); }
td.desc { min-width: 300px; max-width: 520px; }
td.when { white-space: nowrap; color: var(--muted); }
a.jump { font-size: 12px; color: #2563eb; text-decoration: none; margin-left: 4px; }
a.jump:hover { text-decoration: underline; }
td.desc .why { color: var(--muted); font-size: 12px; }
td.desc .err { color: var(--crash); font-size: 12px; font-family: var(--mono); word-break: break-word; }
.pill { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; font-weight: 560; white-space: nowrap; }
.pill.keep { color: var(--keep); background: var(--keep-bg); }
.pill.discard { color: var(--discard); background: var(--discard-bg); }
.pill.crash { color: var(--crash); background: var(--crash-bg); }
.pill.pending { color: var(--pending); background: var(--pending-bg); }
.pill.active { color: var(--active); background: var(--active-bg); }
.delta.better { color: var(--keep); }
.delta.worse { color: var(--crash); }
.dim { color: var(--faint); }
.change { border: 1px solid var(--line); border-radius: 8px; margin-bottom: 12px; overflow: hidden; }
.change summary { cursor: pointer; padding: 10px 14px; background: #fafafa; display: flex; flex-wrap: wrap; gap: 4px 14px; align-items: baseline; list-style: none; }
.change summary::-webkit-details-marker { display: none; }
.change summary::before { content: '▸'; color: var(--muted); width: 10px; }
.change[open] summary::before { content: '▾'; }
.change summary .title { font-weight: 600; }
.change summary .facts { color: var(--muted); font-size: 12.5px; }
.diff { margin: 0; padding: 8px 0; font-family: var(--mono); font-size: 12.5px; line-height: 1.45; overflow-x: auto; background: #fff; border-top: 1px solid var(--line); }
.diff span { display: block; padding: 0 14px; white-space: pre; min-height: 1.45em; }
.diff .d-add { background: #e6ffec; color: #14532d; }
.diff .d-del { background: #ffebe9; color: #7f1d1d; }
.diff .d-hunk { background: #f0f6ff; color: #1e40af; margin: 6px 0 2px; }
.diff .d-hunk:first-child { margin-top: 0; }
.diff .d-note { color: var(--faint); }
.note { color: var(--muted); font-size: 13px; padding: 10px 14px; margin: 0; }
.toolbar { float: right; display: flex; gap: 6px; }
button.small { font: inherit; font-size: 12px; padding: 3px 10px; border: 1px solid var(--line); background: #fff; border-radius: 6px; cursor: pointer; color: var(--ink); }
button.small:hover { background: #f3f4f6; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 18px 28px; }
.bar { display: inline-block; height: 8px; border-radius: 4px; background: #93c5fd; vertical-align: middle; }
.bar.err { background: #fca5a5; margin-left: 2px; }
td.bars { width: 28%; min-width: 90px; white-space: nowrap; }
td.hash code { word-break: break-all; }
td.state { white-space: nowrap; }
p.state-line { margin: 0 0 10px; }
.grid2 > div { min-width: 0; }
.ok-text { color: var(--keep); font-weight: 560; }
.bad-text { color: var(--crash); font-weight: 560; }
ol.history { margin: 0; padding-left: 0; list-style: none; }
ol.history li { padding: 3px 0; }
ol.history code { color: var(--muted); margin-right: 8px; }
footer { color: var(--faint); font-size: 12px; text-align: center; margin-top: 24px; }
@media (max-width: 1060px) { table.experiments .minor { display: none; } }
@media (max-width: 640px) { main { padding: 16px 12px 40px; } .card .value { font-size: 19px; } section.panel { padding: 14px 12px; } }
@media print { body { background: #fff; } section.panel, .card { break-inside: avoid; } .toolbar { display: none; } }
`;

/** Sorting for tables with th.sortable (numbers by data-sort, blanks last), chart-to-row links. */
const REPORT_SCRIPT = `
(function () {
  'use strict';
  function sortKey(cell, numeric) {
    var raw = cell.hasAttribute('data-sort') ? cell.getAttribute('data-sort') : cell.textContent.trim();
    if (raw === '') return null;
    if (!numeric) return raw.toLowerCase();
    var n = parseFloat(raw);
    return isNaN(n) ? null : n;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var body = table.tBodies[0];
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, column) {
      if (!th.classList.contains('sortable')) return;
      th.tabIndex = 0;
      function sort() {
        var ascending = th.getAttribute('aria-sort') !== 'ascending';
        Array.prototype.forEach.call(heads, function (other) { other.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
        var numeric = th.getAttribute('data-type') === 'number';
        var rows = Array.prototype.map.call(body.rows, function (row, index) {
          return { row: row, index: index, key: sortKey(row.cells[column], numeric) };
        });
        rows.sort(function (a, b) {
          if (a.key === null || b.key === null) return a.key === b.key ? a.index - b.index : a.key === null ? 1 : -1;
          var order = a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
          return (ascending ? order : -order) || a.index - b.index;
        });
        rows.forEach(function (entry) { body.appendChild(entry.row); });
      }
      th.addEventListener('click', sort);
      th.addEventListener('keydown', function (event) {
        if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); sort(); }
      });
    });
  });
  document.querySelectorAll('.chart .point').forEach(function (point) {
    point.addEventListener('click', function () {
      var row = document.getElementById('exp-' + point.getAttribute('data-experiment-id'));
      if (!row) return;
      row.scrollIntoView({ block: 'center', behavior: 'smooth' });
      row.classList.remove('flash');
      void row.offsetWidth;
      row.classList.add('flash');
    });
  });
  document.querySelectorAll('[data-toggle-changes]').forEach(function (button) {
    button.addEventListener('click', function () {
      var open = button.getAttribute('data-toggle-changes') === 'open';
      document.querySelectorAll('details.change').forEach(function (d) { d.open = open; });
    });
  });
})();
`;

/** The script runs under a hash-pinned CSP: even if escaping failed, injected scripts would not. */
const SCRIPT_HASH = createHash('sha256').update(REPORT_SCRIPT).digest('base64');
const CSP = `default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'sha256-${SCRIPT_HASH}'`;

const MAX_DIFF_LINES = 800;

function renderDiff(diff: string): string {
  // The file header (diff --git, index, ---, +++) says nothing new: the summary names the commits.
  const all = diff.replace(/\n$/, '').split('\n');
  const firstHunk = all.findIndex((line) => line.startsWith('@@'));
  const lines = firstHunk > 0 ? all.slice(firstHunk) : all;
  const shown = lines.slice(0, MAX_DIFF_LINES).map((line) => {
    let cls = '';
    if (line.startsWith('@@')) cls = 'd-hunk';
    else if (line.startsWith('+')) cls = 'd-add';
    else if (line.startsWith('-')) cls = 'd-del';
    else if (line.startsWith('\\')) cls = 'd-note';
    return `<span${cls ? ` class="${cls}"` : ''}>${escapeHtml(line) || ' '}</span>`;
  });
  const more = lines.length > MAX_DIFF_LINES ? `<p class="note">… ${lines.length - MAX_DIFF_LINES} more lines not shown.</p>` : '';
  return `<pre class="diff">${shown.join('')}</pre>${more}`;
}

function card(label: string, value: string, sub: string, valueClass = '', wrap = false): string {
  return `<div class="card"><div class="label">${escapeHtml(label)}</div><div class="value${valueClass ? ` ${valueClass}` : ''}">${value}</div><div class="sub${wrap ? ' wrap' : ''}" title="${escapeHtml(sub)}">${escapeHtml(sub)}</div></div>`;
}

function td(content: string, options: { cls?: string; sort?: string | number | null } = {}): string {
  const sort = options.sort === undefined ? '' : ` data-sort="${options.sort === null ? '' : escapeHtml(options.sort)}"`;
  return `<td${options.cls ? ` class="${options.cls}"` : ''}${sort}>${content}</td>`;
}

function numCell(value: number | null | undefined, digits: number, extraClass = ''): string {
  return td(isNum(value) ? value.toFixed(digits) : '<span class="dim">—</span>', { cls: `num${extraClass ? ` ${extraClass}` : ''}`, sort: isNum(value) ? value : null });
}

/** Last non-empty line of an error: for a traceback, the exception itself. */
function errorHeadline(error: string): string {
  const lines = error.split(/\r?\n/).map((line) => line.trim()).filter(Boolean);
  return lines[lines.length - 1] ?? '';
}

function experimentTable(experiments: Experiment[], keptWithDiff: Set<number>): string {
  const columns: [key: string, label: string, type: 'number' | 'text', cls: string, title: string][] = [
    ['id', '#', 'number', 'num', 'experiment id'],
    ['status', 'status', 'text', '', 'decision, or how the run ended'],
    ['valBpb', 'val_bpb', 'number', 'num', 'validation bits per byte (lower is better)'],
    ['delta', 'Δ best', 'number', 'num', 'val_bpb minus the best kept result before it: negative is an improvement'],
    ['memory', 'memory GB', 'number', 'num minor', 'peak VRAM'],
    ['steps', 'steps', 'number', 'num minor', 'optimizer steps in the budget'],
    ['params', 'params M', 'number', 'num minor', 'parameters, millions'],
    ['mfu', 'MFU %', 'number', 'num minor', 'model FLOPs utilisation'],
    ['finished', 'finished', 'number', 'minor', 'finish time, UTC'],
    ['description', 'description', 'text', '', 'what the experiment changed; the decision reason or error below'],
    ['commit', 'commit', 'text', 'minor', 'candidate commit'],
  ];
  const head = columns
    .map(
      ([key, label, type, cls, title]) =>
        `<th class="sortable${cls ? ` ${cls}` : ''}" data-key="${key}" data-type="${type}" scope="col" title="${escapeHtml(title)}">${escapeHtml(label)}</th>`,
    )
    .join('');
  let bestBefore: number | undefined;
  const rows = [...experiments]
    .sort((a, b) => a.id - b.id)
    .map((e) => {
      const p = pill(e);
      const metric = hasMetric(e) ? (e.valBpb as number) : null;
      const delta = metric !== null && bestBefore !== undefined ? metric - bestBefore : null;
      if (metric !== null && e.decision === 'keep') bestBefore = bestBefore === undefined ? metric : Math.min(bestBefore, metric);
      const deltaCell =
        delta === null
          ? td('<span class="dim">—</span>', { cls: 'num', sort: null })
          : td(`<span class="delta ${delta < 0 ? 'better' : delta > 0 ? 'worse' : ''}">${signed(delta, 4)}</span>`, { cls: 'num', sort: delta });
      const notes: string[] = [];
      if (e.decisionReason) notes.push(`<div class="why">${escapeHtml(oneLine(e.decisionReason))}</div>`);
      if (e.error && !hasMetric(e)) {
        notes.push(`<div class="err" title="${escapeHtml(truncate(e.error, 2000))}">${escapeHtml(truncate(oneLine(errorHeadline(e.error)), 240))}</div>`);
      }
      const link = keptWithDiff.has(e.id) ? ` <a class="jump" href="#change-${e.id}">diff</a>` : '';
      const memoryGb = isNum(e.peakVramMb) && e.peakVramMb > 0 ? e.peakVramMb / 1024 : null;
      return [
        `<tr id="exp-${e.id}" class="${p.cls}" data-experiment-id="${e.id}">`,
        td(String(e.id), { cls: 'num id', sort: e.id }),
        td(`<span class="pill ${p.cls}">${escapeHtml(p.text)}</span>`, { sort: p.text }),
        numCell(metric, 6),
        deltaCell,
        numCell(memoryGb, 1, 'minor'),
        numCell(e.numSteps, 0, 'minor'),
        numCell(e.numParamsM, 1, 'minor'),
        numCell(e.mfuPercent, 1, 'minor'),
        td(escapeHtml(utc(e.finishedAt).slice(5)), { cls: 'when minor', sort: isNum(e.finishedAt) ? e.finishedAt : null }),
        td(`<div class="what">${escapeHtml(oneLine(e.description ?? ''))}${link}</div>${notes.join('')}`, { cls: 'desc', sort: oneLine(e.description ?? '') }),
        td(`<code>${escapeHtml(short(e.candidateCommit))}</code>`, { cls: 'minor', sort: e.candidateCommit ?? null }),
        '</tr>',
      ].join('');
    });
  if (rows.length === 0) return '<p class="note">No experiments yet.</p>';
  return `<div class="table-wrap"><table class="sortable experiments"><thead><tr>${head}</tr></thead><tbody>${rows.join('\n')}</tbody></table></div>`;
}

function keptChangesSection(data: ReportData, byId: Map<number, Experiment>): string {
  if (data.keptChanges.length === 0) return '<p class="note">No change kept yet.</p>';
  let previousBest: number | undefined;
  const blocks = [...data.keptChanges]
    .sort((a, b) => a.experimentId - b.experimentId)
    .map((change) => {
      const e = byId.get(change.experimentId);
      const value = e && hasMetric(e) ? (e.valBpb as number) : undefined;
      const facts: string[] = [];
      if (value !== undefined) {
        let text = `val_bpb ${value.toFixed(6)}`;
        if (previousBest !== undefined) text += ` (${signed(value - previousBest, 6)} vs previous best)`;
        facts.push(text);
        previousBest = previousBest === undefined ? value : Math.min(previousBest, value);
      }
      facts.push(`${short(change.parentCommit) || '?'} → ${short(change.candidateCommit) || '?'}`);
      let body: string;
      if (change.error) body = `<p class="note">Diff unavailable: ${escapeHtml(change.error)}</p>`;
      else if (change.diff.trim() === '') body = '<p class="note">No change to train.py (a run of the code as it stood).</p>';
      else body = renderDiff(change.diff);
      return [
        `<details class="change" id="change-${change.experimentId}" open>`,
        `<summary><span class="title">#${change.experimentId} ${escapeHtml(oneLine(e?.description ?? ''))}</span>`,
        `<span class="facts">${escapeHtml(facts.join(' · '))}</span></summary>`,
        body,
        '</details>',
      ].join('');
    });
  return blocks.join('\n');
}

function auditSection(audit: AuditView | null): string {
  if (!audit) return '<p class="note">No audit log available.</p>';
  const { summary } = audit;
  const tools = [...summary.tools].sort((a, b) => b.calls - a.calls || a.tool.localeCompare(b.tool));
  const totalCalls = tools.reduce((sum, t) => sum + t.calls, 0);
  const maxCalls = Math.max(1, ...tools.map((t) => t.calls));
  const errorCell = (n: number | null) => td(n ? `<span class="bad-text">${n}</span>` : '<span class="dim">0</span>', { cls: 'num', sort: n ?? 0 });
  const toolRows = tools
    .map((t) => {
      const width = ((t.calls / maxCalls) * 100).toFixed(1);
      const errorWidth = (((t.errors ?? 0) / maxCalls) * 100).toFixed(1);
      return `<tr><td><code>${escapeHtml(t.tool)}</code></td>${td(String(t.calls), { cls: 'num', sort: t.calls })}${errorCell(t.errors)}${numCell(t.avgDurationMs, 0)}<td class="bars"><span class="bar" style="width:${width}%"></span>${t.errors ? `<span class="bar err" style="width:${errorWidth}%"></span>` : ''}</td></tr>`;
    })
    .join('');
  const clientRows = summary.clients
    .map((c) => {
      const name = c.clientName ? `${c.clientName}${c.clientVersion ? ` ${c.clientVersion}` : ''}` : '(no client name)';
      return `<tr><td>${escapeHtml(name)}</td>${td(String(c.sessions), { cls: 'num', sort: c.sessions })}${td(String(c.calls ?? 0), { cls: 'num', sort: c.calls ?? 0 })}${errorCell(c.errors)}${td(escapeHtml(isoShort(c.lastSeen)), { cls: 'when', sort: c.lastSeen })}</tr>`;
    })
    .join('');
  const events = summary.events.length
    ? `<p class="note" style="padding:8px 0 0">Server events: ${summary.events.map((e) => `<code>${escapeHtml(e.method)}</code> × ${e.count}`).join(', ')}</p>`
    : '';
  const span = summary.firstTs && summary.lastTs ? ` · ${escapeHtml(isoShort(summary.firstTs))} to ${escapeHtml(isoShort(summary.lastTs))} UTC` : '';
  return `<p class="note" style="padding:0 0 12px">${summary.rows} rows, ${totalCalls} tool calls, <span class="${summary.errors ? 'bad-text' : ''}">${summary.errors} error${summary.errors === 1 ? '' : 's'}</span>${span}</p>
<div class="grid2">
<div><h3 class="sub-h">Calls per tool</h3>
${tools.length ? `<div class="table-wrap"><table class="sortable audit-tools"><thead><tr><th class="sortable" data-type="text" scope="col">tool</th><th class="sortable num" data-type="number" scope="col">calls</th><th class="sortable num" data-type="number" scope="col">errors</th><th class="sortable num" data-type="number" scope="col">avg ms</th><th scope="col"></th></tr></thead><tbody>${toolRows}</tbody></table></div>` : '<p class="note">No tool calls recorded.</p>'}</div>
<div><h3 class="sub-h">Sessions per client</h3>
${clientRows ? `<div class="table-wrap"><table class="sortable audit-clients"><thead><tr><th class="sortable" data-type="text" scope="col">client</th><th class="sortable num" data-type="number" scope="col">sessions</th><th class="sortable num" data-type="number" scope="col">calls</th><th class="sortable num" data-type="number" scope="col">errors</th><th class="sortable" data-type="text" scope="col">last seen (UTC)</th></tr></thead><tbody>${clientRows}</tbody></table></div>` : '<p class="note">No client sessions recorded.</p>'}
${events}</div>
</div>`;
}

function isoShort(iso: string | null | undefined): string {
  return iso ? iso.replace('T', ' ').slice(0, 16) : '';
}

function integritySection(integrity: IntegrityView, audit: AuditView | null): string {
  const drift = new Set(integrity.harnessDrift);
  const rows = Object.entries(integrity.pinnedHashes)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(
      ([name, hash]) =>
        `<tr><td><code>${escapeHtml(name)}</code></td><td class="hash"><code>${escapeHtml(hash)}</code></td><td class="state">${
          drift.has(name) ? '<span class="bad-text">✗ changed or missing</span>' : '<span class="ok-text">✓ matches</span>'
        }</td></tr>`,
    )
    .join('');
  const unknownDrift = integrity.harnessDrift.filter((name) => !(name in integrity.pinnedHashes));
  const chain = audit
    ? audit.chain.ok
      ? `<span class="ok-text">✓ intact</span> <span class="dim">· ${audit.chain.rows} rows re-hashed · head #${audit.chain.headSeq} <code title="${escapeHtml(audit.chain.headHash)}">${escapeHtml(audit.chain.headHash.slice(0, 16))}…</code></span>`
      : `<span class="bad-text">✗ broken at row ${escapeHtml(audit.chain.firstBadSeq ?? '?')}</span>${audit.chain.reason ? `: ${escapeHtml(audit.chain.reason)}` : ''}`
    : '<span class="dim">not available</span>';
  const harness = integrity.harnessIntact
    ? '<span class="ok-text">✓ intact</span> <span class="dim">· every pinned file hashes as pinned right now</span>'
    : `<span class="bad-text">✗ changed: ${escapeHtml(integrity.harnessDrift.join(', '))}</span> <span class="dim">· runs are rejected until the files are restored</span>`;
  return `<h3 class="sub-h">Harness</h3><p class="state-line">${harness}</p>
${rows ? `<div class="table-wrap"><table class="pins"><thead><tr><th scope="col">file</th><th scope="col">pinned SHA-256 (checked before and after every run)</th><th scope="col">now</th></tr></thead><tbody>${rows}</tbody></table></div>` : '<p class="note">No pinned hashes.</p>'}
${unknownDrift.length ? `<p class="note bad-text">Also drifting: ${escapeHtml(unknownDrift.join(', '))}</p>` : ''}
<h3 class="sub-h" style="margin-top:18px">Audit chain</h3><p class="state-line">${chain}</p>
<p class="note" style="padding:0">Every request and response is appended to a hash-chained log; verifying re-computes each row's hash from its content and the previous row's hash, so an edited, removed or reordered row shows up here.</p>`;
}

/** One self-contained HTML page: header, chart, sortable table, kept diffs, audit, integrity. */
export function renderReportHtml(data: ReportData): string {
  const experiments = [...data.experiments].sort((a, b) => a.id - b.id);
  const byId = new Map(experiments.map((e) => [e.id, e]));
  const { baseline, best } = baselineAndBest(experiments);
  const finished = experiments.filter(isFinished);
  // Noise and confirmation runs re-measure a commit: counted apart, never as undecided changes.
  const remeasured = finished.filter((e) => !isCandidate(e)).length;
  const counts = { keep: 0, discard: 0, pending: 0, crash: 0 };
  for (const e of finished.filter(isCandidate)) counts[resultStatus(e)] += 1;
  const active = experiments.length - finished.length;
  const sessionName = data.session ?? data.branch;

  const harnessBadge = data.integrity.harnessIntact
    ? '<a class="badge ok" href="#integrity" title="prepare.py and the evaluation data match their pinned hashes">✓ harness intact</a>'
    : `<a class="badge bad" href="#integrity" title="${escapeHtml(`changed: ${data.integrity.harnessDrift.join(', ')}`)}">✗ harness changed</a>`;
  const auditBadge = !data.audit
    ? '<span class="badge unknown">audit log n/a</span>'
    : data.audit.chain.ok
      ? `<a class="badge ok" href="#integrity" title="${data.audit.chain.rows} rows verified">✓ audit chain intact</a>`
      : '<a class="badge bad" href="#integrity">✗ audit chain broken</a>';

  const baselineValue = baseline && isNum(baseline.valBpb) ? baseline.valBpb : undefined;
  const bestValue = best && isNum(best.valBpb) ? best.valBpb : undefined;
  const improvement = baselineValue !== undefined && bestValue !== undefined ? baselineValue - bestValue : undefined;
  const cards = [
    card('Baseline val_bpb', fixed(baselineValue, 6), baseline ? `#${baseline.id} ${oneLine(baseline.description ?? '')}` : 'no result yet'),
    card('Best val_bpb', fixed(bestValue, 6), best ? `#${best.id} ${oneLine(best.description ?? '')}` : 'no result yet', improvement && improvement > 0 ? 'good' : ''),
    card(
      'Improvement',
      improvement === undefined ? '—' : signed(-improvement, 6),
      improvement === undefined || !baselineValue ? 'needs a baseline and a kept result' : `${signed((-improvement / baselineValue) * 100, 2)}% vs baseline`,
      improvement && improvement > 0 ? 'good' : '',
    ),
    card(
      'Experiments',
      String(experiments.length),
      [
        `${counts.keep} kept`,
        `${counts.discard} discarded`,
        counts.pending ? `${counts.pending} undecided` : '',
        `${counts.crash} crashed`,
        remeasured ? `${remeasured} noise/confirmation runs` : '',
        active ? `${active} queued/running` : '',
      ]
        .filter(Boolean)
        .join(' · '),
      '',
      true,
    ),
  ].join('');

  const budget = `${data.timeBudgetSeconds} s per run${isNum(data.ceilingSeconds) ? ` (ceiling ${data.ceilingSeconds} s)` : ''}`;
  const history = data.history?.length
    ? `<section class="panel"><h2>Branch history <span class="count">${escapeHtml(data.branch)}, newest first</span></h2><ol class="history">${data.history
        .map((h) => `<li><code>${escapeHtml(short(h.commit))}</code>${escapeHtml(oneLine(h.subject))}</li>`)
        .join('')}</ol></section>`
    : '';

  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="${CSP}">
<meta name="color-scheme" content="light">
<link rel="icon" href="data:,">
<title>autoresearch · ${escapeHtml(sessionName)}</title>
<style>${REPORT_CSS}
h3.sub-h { font-size: 13.5px; font-weight: 620; margin: 0 0 8px; }
h3.sub-h .dim { font-weight: 450; }
</style>
</head>
<body>
<main>
<header class="top">
<div>
<h1>autoresearch <span class="session">· ${escapeHtml(sessionName)}</span></h1>
<div class="meta">
<span>workspace <b class="mono">${escapeHtml(data.workspace)}</b></span>
<span>branch <b class="mono">${escapeHtml(data.branch)}</b></span>
<span>head <b class="mono" title="${escapeHtml(data.head)}">${escapeHtml(short(data.head))}</b></span>
<span>profile <b>${escapeHtml(data.profile)}</b></span>
<span>budget <b>${escapeHtml(budget)}</b></span>
</div>
</div>
<div class="badges">${harnessBadge}${auditBadge}</div>
</header>
<div class="cards">${cards}</div>
<section class="panel chart" aria-label="progress chart">
${progressChartSvg(experiments, { width: 1040, height: 500, noiseSigma: data.noise?.sigma ?? null })}
${data.noise && Number.isFinite(data.noise.sigma) ? `<p class="muted">noise floor: sigma ${data.noise.sigma.toFixed(6)}, MAD ${data.noise.mad.toFixed(6)} over ${data.noise.k} runs of ${escapeHtml(short(data.noise.commit))} (${escapeHtml(data.noise.profile)} on ${escapeHtml(data.noise.machine)})${data.noise.stale ? ', stale' : ''}; the shaded band is the running best +- sigma</p>` : ''}
</section>
<section class="panel" id="experiments">
<h2>Experiments <span class="count">${experiments.length} · click a column to sort, a point in the chart to find its row</span></h2>
${experimentTable(experiments, new Set(data.keptChanges.map((c) => c.experimentId)))}
</section>
<section class="panel" id="changes">
<div class="toolbar"><button type="button" class="small" data-toggle-changes="open">expand all</button><button type="button" class="small" data-toggle-changes="close">collapse all</button></div>
<h2>Kept changes <span class="count">${data.keptChanges.length} · diff of train.py from the head each ran on</span></h2>
${keptChangesSection(data, byId)}
</section>
${history}
<section class="panel" id="audit">
<h2>Audit</h2>
${auditSection(data.audit)}
</section>
<section class="panel" id="integrity">
<h2>Integrity</h2>
${integritySection(data.integrity, data.audit)}
</section>
<footer>generated ${escapeHtml(utc(data.generatedAt))} UTC by autoresearch-mcp · self-contained: no network requests</footer>
</main>
<script>${REPORT_SCRIPT}</script>
</body>
</html>
`;
}

/**
 * Reads everything the report shows from a Lab: the current session's experiments (all of them
 * while still on the baseline branch), the diff of every kept change, the branch history, the
 * audit summary and chain verification, and the harness hashes as they verify now.
 */
export async function loadReportData(lab: Lab): Promise<ReportData> {
  const status = await lab.status();
  const experiments = lab.store.listExperiments({ order: 'id', ascending: true, session: status.session ?? undefined });
  const keptChanges: KeptChange[] = [];
  for (const e of experiments) {
    if (e.decision !== 'keep') continue;
    const change: KeptChange = { experimentId: e.id, parentCommit: e.parentCommit ?? null, candidateCommit: e.candidateCommit ?? null, diff: '' };
    if (!e.parentCommit || !e.candidateCommit) change.error = 'the experiment has no parent or candidate commit';
    else {
      try {
        change.diff = await lab.workspace.diff(e.parentCommit, e.candidateCommit);
      } catch (error) {
        change.error = (error as Error).message;
      }
    }
    keptChanges.push(change);
  }
  let history: ReportData['history'];
  try {
    history = await lab.workspace.history(status.branch);
  } catch {
    history = undefined;
  }
  let audit: AuditView | null = null;
  try {
    audit = { summary: lab.store.audit.summary(), chain: lab.store.audit.verify() };
  } catch {
    audit = null;
  }
  return {
    noise: lab.noiseFloor(),
    generatedAt: Date.now(),
    workspace: status.workspace,
    branch: status.branch,
    session: status.session,
    head: status.head,
    profile: status.profile,
    timeBudgetSeconds: status.timeBudgetSeconds,
    ceilingSeconds: status.ceilingSeconds,
    experiments,
    keptChanges,
    history,
    audit,
    integrity: { pinnedHashes: status.pinnedHashes, harnessIntact: status.harnessIntact, harnessDrift: status.harnessDrift },
  };
}

/** Writes the HTML report to `outPath` (folders created; written to a temporary file, then renamed). */
export async function writeReport(lab: Lab, outPath: string): Promise<void> {
  const html = renderReportHtml(await loadReportData(lab));
  await mkdir(dirname(outPath), { recursive: true });
  const temp = join(dirname(outPath), `.${basename(outPath)}.${process.pid}.${Date.now()}.tmp`);
  try {
    await writeFile(temp, html, 'utf8');
    await rename(temp, outPath);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}
