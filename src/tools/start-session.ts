import { z } from 'zod';
import { defineTool } from './define.js';

export const startSession = defineTool({
  name: 'start_session',
  title: 'Start or resume a research session',
  description:
    'Starts a session: creates branch autoresearch/<tag> from the baseline commit (from: "baseline", the default) or from ' +
    'another session\'s head (from: <its tag>), switches the workspace to it and writes that commit\'s train.py into the ' +
    'working file, so the first run measures exactly what git records as the parent. resume: true continues an existing ' +
    'session instead (e.g. in a new conversation): it switches to its branch and head. A new tag that exists is refused. ' +
    'run_experiment starts one automatically if you skip this.',
  input: {
    tag: z.string().min(1).max(64).describe('Letters, digits, ".", "_" or "-"; becomes branch autoresearch/<tag>'),
    from: z.string().min(1).max(64).default('baseline').describe('"baseline" or the tag of a session whose head to start from'),
    resume: z.boolean().default(false).describe('Continue the existing session <tag> instead of starting one'),
  },
  output: {
    tag: z.string(),
    branch: z.string(),
    base_commit: z.string(),
    start_from: z.string(),
    resumed: z.boolean(),
    head: z.string(),
    saved_edits: z.string().nullable().describe('Where unsaved edits of train.py were copied before it was replaced'),
  },
  kind: 'write',
  async handler(args, { lab, caller }, extra) {
    const session = await lab.startSession(args.tag, caller(extra), { from: args.from, resume: args.resume });
    const status = session.resumed ? await lab.status() : undefined;
    return {
      structured: {
        tag: session.tag,
        branch: session.branch,
        base_commit: session.baseCommit,
        start_from: session.startFrom,
        resumed: session.resumed,
        head: session.head,
        saved_edits: session.savedEdits,
      },
      text: session.resumed
        ? `Resumed session ${session.tag} on ${session.branch} at ${session.head.slice(0, 8)}. Next: ${status?.nextStep}.`
        : `Session ${session.tag} started on ${session.branch} at ${session.baseCommit.slice(0, 8)} (from ${session.startFrom}); train.py is that commit's version. Run the unmodified baseline first.` +
          (session.savedEdits ? ` Unsaved edits were copied to ${session.savedEdits}.` : ''),
    };
  },
});
