import { defineTool } from './define.js';
import { experimentIdArg, experimentShape, experimentView } from './shapes.js';

export const cancelExperiment = defineTool({
  name: 'cancel_experiment',
  title: 'Cancel an experiment',
  description:
    'Cancels a queued experiment, or stops a running one (its whole process group). The candidate commit and the log are kept.',
  input: { experiment_id: experimentIdArg },
  output: { experiment: experimentShape },
  kind: 'destructive',
  async handler(args, { lab }) {
    const experiment = experimentView(await lab.cancel(args.experiment_id));
    return { structured: { experiment }, text: `Experiment ${experiment.id} is now ${experiment.status}.` };
  },
});
