import { z } from 'zod';
import { defineTool } from './define.js';
import { experimentIdArg, experimentShape, experimentView } from './shapes.js';

export const runExperiment = defineTool({
  name: 'run_experiment',
  title: 'Run an experiment',
  description:
    'Commits the current train.py as a candidate on the session branch and queues a time-boxed training run of it; ' +
    'returns the experiment id at once (runs take minutes: poll with get_results wait_seconds). ' +
    'The run happens in its own worktree, so you may keep editing train.py meanwhile and queue more ideas. ' +
    'The first run of a session should be the unmodified baseline. With rebase_of, re-runs an earlier experiment\'s change ' +
    'replayed onto the current head (needed when a change was kept after that experiment started). ' +
    'Starts a session automatically when none is active.',
  input: {
    description: z.string().min(1).max(200).describe('Short description of the change, e.g. "LR 0.04 -> 0.06"'),
    rebase_of: experimentIdArg.optional().describe('Re-run this experiment\'s change on top of the current head'),
  },
  output: {
    experiment: experimentShape,
    queue_position: z.number().int().describe('0 = running or about to run'),
    session_started: z.string().nullable(),
    warnings: z.array(z.string()),
  },
  kind: 'write',
  async handler(args, { lab, caller }, extra) {
    const result = await lab.runExperiment({ description: args.description, rebaseOf: args.rebase_of }, caller(extra));
    const queue = lab.store.listExperiments({ status: 'queued', order: 'id', ascending: true }).map((e) => e.id);
    const position = Math.max(0, queue.indexOf(result.experiment.id) + 1 - (lab.slots.length - lab.busySlotCount()));
    const view = experimentView(result.experiment);
    return {
      structured: { experiment: view, queue_position: position, session_started: result.sessionStarted ?? null, warnings: result.warnings },
      text:
        `Experiment ${view.id} ${view.status} (commit ${view.commit?.slice(0, 8)}): ${view.description}.` +
        (result.sessionStarted ? ` Started session ${result.sessionStarted}.` : '') +
        ` Wait for it with get_results({experiment_id: ${view.id}, wait_seconds: 45}).` +
        result.warnings.map((w) => `\nWarning: ${w}`).join(''),
    };
  },
});
