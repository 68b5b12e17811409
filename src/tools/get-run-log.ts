import { z } from 'zod';
import { defineTool } from './define.js';
import { experimentIdArg } from './shapes.js';

export const getRunLog = defineTool({
  name: 'get_run_log',
  title: 'Read a run log',
  description:
    'Returns the last lines of an experiment\'s training log (stdout and stderr): the traceback of a crash, the loss curve, ' +
    'the summary block. Use it when get_results reports crashed or timed_out.',
  input: {
    experiment_id: experimentIdArg,
    lines: z.number().int().min(1).max(2000).default(50),
  },
  output: { experiment_id: z.number().int(), status: z.string(), error: z.string().nullable(), log: z.string(), path: z.string() },
  kind: 'read',
  async handler(args, { lab }) {
    const experiment = lab.experiment(args.experiment_id);
    const { log, path } = lab.runLog(args.experiment_id, args.lines);
    const structured = { experiment_id: experiment.id, status: experiment.status, error: experiment.error ?? null, log, path };
    const header = `# experiment ${experiment.id} (${experiment.status})${experiment.error ? `: ${experiment.error}` : ''}`;
    return { structured, text: `${header}\n${log || '(log is empty: the run has not started)'}` };
  },
});
