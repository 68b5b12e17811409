import { z } from 'zod';
import { defineTool } from './define.js';

export const undo = defineTool({
  name: 'undo',
  title: 'Move the branch back',
  description:
    'Takes kept changes off the session branch: moves it back to an earlier kept experiment (its id or commit) or to the ' +
    'session\'s start ("baseline"), with a reason that is recorded and audited. Nothing is deleted: the old head stays under ' +
    'refs/autoresearch/undone/, the undone experiments keep their results and are marked undone_by. train.py is rewritten to ' +
    'the new head (unsaved edits are copied aside first).',
  input: {
    to: z
      .union([z.enum(['baseline']), z.number().int().positive(), z.string().regex(/^[0-9a-f]{7,64}$/)])
      .describe('"baseline", a kept experiment id, or a kept commit'),
    reason: z.string().min(1).max(500).describe('Why, e.g. "exp 12 did not replicate"'),
  },
  output: {
    from: z.string(),
    to: z.string(),
    undone: z.array(z.number().int()).describe('Kept experiments now off the branch'),
    saved_ref: z.string().describe('Ref that keeps the old head'),
    reason: z.string(),
    saved_edits: z.string().nullable(),
  },
  kind: 'destructive',
  async handler(args, { lab }) {
    const result = await lab.undo({ to: args.to, reason: args.reason });
    return {
      structured: { from: result.from, to: result.to, undone: result.undone, saved_ref: result.savedRef, reason: result.reason, saved_edits: result.savedEdits },
      text:
        `Branch moved back ${result.from.slice(0, 8)} -> ${result.to.slice(0, 8)}; undone: ${result.undone.join(', ') || 'none'}. ` +
        `Old head kept at ${result.savedRef}. train.py is now the head's version.` +
        (result.savedEdits ? ` Your unsaved edits were copied to ${result.savedEdits}.` : ''),
    };
  },
});
