import { z } from 'zod';
import { unifiedDiff } from '../core/patch.js';
import { defineTool } from './define.js';
import { experimentIdArg } from './shapes.js';

export const readTrainPy = defineTool({
  name: 'read_train_py',
  title: 'Read train.py',
  description:
    'Returns train.py, the only file you may change, and its content hash. ' +
    'Without arguments: the working copy you are editing. With experiment_id: the exact file that experiment ran. ' +
    'With since_hash (a hash you already hold the text of): only the unified diff since that version, or "unchanged", to save context. ' +
    'Pass the returned hash to apply_patch as expected_hash so a stale edit is refused instead of clobbering newer text.',
  input: {
    experiment_id: experimentIdArg.optional(),
    since_hash: z.string().optional().describe('Hash of a version you already have: the text content is then only the diff from it'),
    numbered: z.boolean().default(false).describe('Prefix each line with its number (handy for reasoning, not for building diffs)'),
  },
  output: {
    text: z.string().describe('The whole file, always'),
    hash: z.string().describe('Content hash to pass back to apply_patch as expected_hash'),
    lines: z.number().int(),
    source: z.string(),
    commit: z.string().nullable(),
    since_hash: z.string().nullable(),
    diff: z.string().nullable().describe('Unified diff from the since_hash version; null without since_hash or when that version is unknown'),
  },
  kind: 'read',
  async handler(args, { lab }) {
    const file = await lab.readTrainPy(args.experiment_id);
    const lines = file.text.split('\n');
    const earlier = args.since_hash === undefined ? undefined : await lab.trainPyVersion(args.since_hash);
    const diff = earlier === undefined ? null : earlier === file.text ? '' : unifiedDiff(earlier, file.text);
    const structured = { text: file.text, hash: file.hash, lines: lines.length, source: file.source, commit: file.commit ?? null, since_hash: args.since_hash ?? null, diff };
    if (diff === '') {
      return { structured, text: `train.py (${file.source}) is unchanged since hash ${file.hash} (${lines.length} lines); patch it with expected_hash ${file.hash}.` };
    }
    if (diff !== null) {
      return { structured, text: `# train.py (${file.source}, hash ${file.hash}): changes since ${args.since_hash}\n${diff}` };
    }
    const shown = args.numbered ? lines.map((line, i) => `${String(i + 1).padStart(4)}  ${line}`).join('\n') : file.text;
    const unknown = args.since_hash === undefined ? '' : `Hash ${args.since_hash} is not a version of train.py this workspace has had; the whole file follows.\n`;
    return { structured, text: `${unknown}# train.py (${file.source}, hash ${file.hash})\n${shown}` };
  },
});
