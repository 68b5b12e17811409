import { z } from 'zod';
import { defineTool } from './define.js';

export const readHarness = defineTool({
  name: 'read_harness',
  title: 'Read prepare.py or program.md',
  description:
    'Returns prepare.py (the immutable harness: data, tokenizer, dataloader and the val_bpb evaluation; read it to learn ' +
    'the public names train.py may import) or program.md (your instructions). Both are read-only: changing them is refused.',
  input: { file: z.enum(['prepare.py', 'program.md']) },
  output: { file: z.string(), text: z.string() },
  kind: 'read',
  async handler(args, { lab }) {
    const text = await lab.readHarnessFile(args.file);
    return { structured: { file: args.file, text }, text };
  },
});
