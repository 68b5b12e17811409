import { z } from 'zod';
import { defineTool } from './define.js';

export const startSession = defineTool({
  name: 'start_session',
  title: 'Start a research session',
  description:
    'Starts a session: creates branch autoresearch/<tag> from the baseline commit and switches the workspace to it. ' +
    'Experiments, decisions and the best-so-far are per session. A tag that already exists is refused: pick a fresh one ' +
    '(e.g. the date, "nov27"). run_experiment starts one automatically if you skip this.',
  input: { tag: z.string().min(1).max(64).describe('Letters, digits, ".", "_" or "-"; becomes branch autoresearch/<tag>') },
  output: { tag: z.string(), branch: z.string(), base_commit: z.string() },
  kind: 'write',
  async handler(args, { lab, caller }, extra) {
    const session = await lab.startSession(args.tag, caller(extra));
    return {
      structured: { tag: session.tag, branch: session.branch, base_commit: session.baseCommit },
      text: `Session ${session.tag} started on ${session.branch} at ${session.baseCommit.slice(0, 8)}. Run the unmodified baseline first.`,
    };
  },
});
