import { z } from 'zod';
import { defineTool } from './define.js';
import { experimentIdArg } from './shapes.js';

export const readTrainPy = defineTool({
  name: 'read_train_py',
  title: 'Read train.py',
  description:
    'Returns train.py, the only file you may change, with line numbers and its content hash. ' +
    'Without arguments: the working copy you are editing. With experiment_id: the exact file that experiment ran. ' +
    'Pass the returned hash to apply_patch as expected_hash so a stale edit is refused instead of clobbering newer text.',
  input: {
    experiment_id: experimentIdArg.optional(),
    numbered: z.boolean().default(false).describe('Prefix each line with its number (handy for reasoning, not for building diffs)'),
  },
  output: {
    text: z.string(),
    hash: z.string().describe('Content hash to pass back to apply_patch as expected_hash'),
    lines: z.number().int(),
    source: z.string(),
    commit: z.string().nullable(),
  },
  kind: 'read',
  async handler(args, { lab }) {
    const file = await lab.readTrainPy(args.experiment_id);
    const lines = file.text.split('\n');
    const shown = args.numbered ? lines.map((line, i) => `${String(i + 1).padStart(4)}  ${line}`).join('\n') : file.text;
    return {
      structured: { text: file.text, hash: file.hash, lines: lines.length, source: file.source, commit: file.commit ?? null },
      text: `# train.py (${file.source}, hash ${file.hash})\n${shown}`,
    };
  },
});
