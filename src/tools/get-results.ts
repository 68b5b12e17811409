import { z } from 'zod';
import { MAX_WAIT_SECONDS } from '../core/lab.js';
import { EXPERIMENT_STATUSES } from '../core/store.js';
import { defineTool } from './define.js';
import { experimentDetail, experimentRow, noiseFloorLine } from './render.js';
import { experimentIdArg, experimentShape, experimentView, noiseFloorShape, noiseFloorView, noiseShape } from './shapes.js';

export const getResults = defineTool({
  name: 'get_results',
  title: 'Get experiment results',
  description:
    'Reports experiments: kind (candidate, noise, confirm), status (preparing, queued, running, succeeded, crashed, timed_out, cancelled, rejected), val_bpb from the ' +
    'server-computed result record, every summary metric, decision, timings, plus the best so far, the branch head and the measured noise floor. ' +
    `With wait_seconds (at most ${MAX_WAIT_SECONDS}) it first waits for experiment_id (or the oldest unfinished one) to finish, ` +
    'sending progress notifications (step, % of budget, loss); if it is still running afterwards, call again. ' +
    'format "tsv" adds the upstream results.tsv view (commit, val_bpb, memory_gb, status, description).',
  input: {
    experiment_id: experimentIdArg.optional(),
    status: z.array(z.enum(EXPERIMENT_STATUSES)).optional().describe('Only experiments with these statuses'),
    order: z.enum(['recent', 'best']).default('recent').describe('recent: newest first; best: lowest val_bpb first'),
    limit: z.number().int().min(1).max(500).default(20),
    wait_seconds: z.number().min(0).max(MAX_WAIT_SECONDS).default(0),
    format: z.enum(['json', 'tsv']).default('json'),
  },
  output: {
    experiments: z.array(experimentShape),
    best: experimentShape.nullable().describe('Lowest val_bpb among kept experiments of the current session'),
    branch: z.string(),
    head: z.string(),
    counts: z.record(z.string(), z.number()),
    noise: noiseShape,
    noise_floor: noiseFloorShape,
    tsv: z.string().nullable(),
  },
  kind: 'read',
  async handler(args, { lab }, extra) {
    if (args.experiment_id !== undefined) lab.experiment(args.experiment_id);
    if (args.wait_seconds > 0) {
      const token = extra._meta?.progressToken;
      let lastSent = -1;
      await lab.waitFor(
        args.experiment_id,
        args.wait_seconds,
        (id, progress) => {
          if (token === undefined || progress.percent <= lastSent) return;
          lastSent = progress.percent;
          void extra
            .sendNotification({
              method: 'notifications/progress',
              params: {
                progressToken: token,
                progress: progress.percent,
                total: 100,
                message: `experiment ${id}: step ${progress.step}, ${progress.percent.toFixed(1)}% of budget, loss ${progress.loss.toFixed(4)}`,
              },
            })
            .catch(() => undefined);
        },
        extra.signal,
      );
    }
    const session = await lab.currentSessionTag();
    const rows =
      args.experiment_id !== undefined
        ? [lab.experiment(args.experiment_id)]
        : lab.store.listExperiments({ status: args.status, order: args.order === 'best' ? 'best' : 'id', limit: args.limit });
    const experiments = rows.map((e) => experimentView(e, lab.progressOf(e.id)));
    const best = lab.best(session);
    const structured = {
      experiments,
      best: best ? experimentView(best) : null,
      branch: await lab.workspace.currentBranch(),
      head: await lab.workspace.headCommit(),
      counts: lab.store.countByStatus(),
      noise: lab.noise(session),
      noise_floor: noiseFloorView(lab.noiseFloor()),
      tsv: args.format === 'tsv' ? await lab.resultsTsv(session) : null,
    };
    if (args.format === 'tsv') return { structured, text: structured.tsv ?? '' };
    const context =
      `Best kept: ${structured.best ? `#${structured.best.id} val_bpb ${structured.best.val_bpb?.toFixed(6)}` : 'none yet'}; ` +
      `head ${structured.head.slice(0, 8)} on ${structured.branch}; ${noiseFloorLine(structured.noise_floor)}.`;
    if (args.experiment_id !== undefined) return { structured, text: `${experimentDetail(experiments[0])}\n${context}` };
    const counts = Object.entries(structured.counts).map(([status, n]) => `${status} ${n}`).join(', ');
    return {
      structured,
      text:
        `${experiments.length} experiment(s), ${args.order === 'best' ? 'best' : 'newest'} first (all: ${counts || 'none'}). ${context}\n` +
        experiments.map(experimentRow).join('\n'),
    };
  },
});
