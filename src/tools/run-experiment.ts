import { z } from 'zod';
import { defineTool } from './define.js';
import { experimentIdArg, experimentShape, experimentView } from './shapes.js';

export const runExperiment = defineTool({
  name: 'run_experiment',
  title: 'Run an experiment',
  description:
    'Commits the current train.py as a candidate (its change measured from the branch head) and queues a time-boxed run; ' +
    'or, with diff or edits, that change applied to the head (the working copy untouched: how parallel agents submit). ' +
    'returns the experiment id at once (runs take minutes: poll with get_results wait_seconds). Afterwards train.py is back ' +
    'at the head: the change lives in the experiment\'s commit (read it with read_train_py experiment_id), so the next idea ' +
    'starts clean and an undecided change never leaks into it. To build on an undecided experiment, say so: base_experiment ' +
    '(your edits replayed onto its version; the new candidate is measured from its commit and can be kept only after it). ' +
    'The first run of a session should be the unmodified baseline. With rebase_of, re-runs an earlier experiment\'s change ' +
    'replayed onto the current head (needed when the head moved after that experiment started). ' +
    'Starts a session automatically when none is active. The same change from the same parent is run once: a second request names the experiment that has it. ' +
    'After three failed runs in a row your queue pauses until you pass acknowledge_crashes.',
  input: {
    description: z.string().min(1).max(200).describe('Short description of the change, e.g. "LR 0.04 -> 0.06"'),
    rebase_of: experimentIdArg.optional().describe('Re-run this experiment\'s change on top of the current head'),
    base_experiment: experimentIdArg.optional().describe('Stack on this undecided experiment of the session: measured from its commit'),
    diff: z.string().optional().describe('The change as a unified diff of the head\'s train.py (or base_experiment\'s): queued without touching the working copy'),
    edits: z
      .array(z.object({ search: z.string().min(1), replace: z.string() }))
      .optional()
      .describe('The change as exact search/replace pairs on the head\'s train.py: the way for parallel agents, no apply_patch needed'),
    agent: z.string().min(1).max(64).optional().describe('Your name when several agents share the lab (recorded as the proposer); default: your client and session'),
    acknowledge_crashes: z.boolean().default(false).describe('After a crash streak paused your queue: you read the logs and fixed the cause'),
  },
  output: {
    experiment: experimentShape,
    queue_position: z.number().int().describe('0 = running or about to run'),
    session_started: z.string().nullable(),
    warnings: z.array(z.string()),
    restored_train_py: z.boolean().describe('train.py was reset to the head: the change now lives in the experiment commit'),
    train_py_hash: z.string().describe('Hash of train.py now (the head version): expected_hash for the next apply_patch'),
    stacked_on: z.number().int().nullable(),
  },
  kind: 'write',
  async handler(args, { lab, caller }, extra) {
    const result = await lab.runExperiment(
      {
        description: args.description,
        rebaseOf: args.rebase_of,
        baseExperiment: args.base_experiment,
        agent: args.agent,
        acknowledgeCrashes: args.acknowledge_crashes,
        change: args.diff !== undefined || args.edits !== undefined ? { diff: args.diff, edits: args.edits } : undefined,
      },
      caller(extra),
    );
    const queue = lab.store.listExperiments({ status: 'queued', order: 'id', ascending: true }).map((e) => e.id);
    const position = Math.max(0, queue.indexOf(result.experiment.id) + 1 - (lab.slots.length - lab.busySlotCount()));
    const view = experimentView(result.experiment);
    return {
      structured: {
        experiment: view,
        queue_position: position,
        session_started: result.sessionStarted ?? null,
        warnings: result.warnings,
        restored_train_py: result.restoredTrainPy,
        train_py_hash: result.trainPyHash,
        stacked_on: result.stackedOn,
      },
      text:
        `Experiment ${view.id} ${view.status}: ${view.description}. The change lives in commit ${view.commit?.slice(0, 8)} ` +
        `(parent ${view.parent_commit?.slice(0, 8)}${result.stackedOn ? `, experiment ${result.stackedOn}` : ''}); ` +
        `${args.diff !== undefined || args.edits !== undefined ? 'the working train.py was not touched' : 'train.py is back at the head'} (hash ${result.trainPyHash})${result.stackedOn ? '' : `; to build on this change before deciding it, pass base_experiment: ${view.id}`}.` +
        (result.sessionStarted ? ` Started session ${result.sessionStarted}.` : '') +
        ` Wait for it with get_results({experiment_id: ${view.id}, wait_seconds: 45}).` +
        result.warnings.map((w) => `\nWarning: ${w}`).join(''),
    };
  },
});
