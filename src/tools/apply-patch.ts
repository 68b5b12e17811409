import { z } from 'zod';
import { defineTool } from './define.js';

export const applyPatch = defineTool({
  name: 'apply_patch',
  title: 'Patch train.py',
  description:
    'Changes train.py (and nothing else) either by a unified diff (`diff`, paths train.py or a/train.py, b/train.py) ' +
    'or by exact search/replace `edits` (each search text must occur exactly once). The patch must apply cleanly; ' +
    'the result must compile and pass the static rules (allowed imports only; no validation data, result-record, ' +
    'harness internals, subprocess, network or file writes). Nothing is written if any check fails. ' +
    'Pass expected_hash from read_train_py to refuse stale edits; dry_run returns the diff without writing.',
  input: {
    diff: z.string().optional().describe('Unified diff of train.py'),
    edits: z
      .array(z.object({ search: z.string().min(1), replace: z.string() }))
      .optional()
      .describe('Exact search/replace pairs, applied in order'),
    expected_hash: z.string().optional().describe('Hash from read_train_py; the patch is refused if the file changed since'),
    dry_run: z.boolean().default(false).describe('Check and show the resulting diff without writing'),
    base_experiment: z
      .number()
      .int()
      .positive()
      .optional()
      .describe('Patch the version of this undecided experiment instead of the head (stacking); expected_hash is then its hash'),
  },
  output: {
    written: z.boolean(),
    hash: z.string().describe('Hash of the resulting train.py'),
    previous_hash: z.string(),
    diff: z.string(),
    added: z.number().int(),
    removed: z.number().int(),
    base_experiment: z.number().int().nullable().describe('The undecided experiment train.py now builds on; run_experiment stacks on it'),
  },
  kind: 'write',
  async handler(args, { lab }) {
    const result = await lab.applyPatch({
      diff: args.diff,
      edits: args.edits,
      expectedHash: args.expected_hash,
      dryRun: args.dry_run,
      baseExperiment: args.base_experiment,
    });
    const verb = result.written ? 'Patched' : 'Dry run (nothing written):';
    return {
      structured: {
        written: result.written,
        hash: result.hash,
        previous_hash: result.previousHash,
        diff: result.diff,
        added: result.added,
        removed: result.removed,
        base_experiment: result.baseExperiment,
      },
      text:
        `${verb} train.py +${result.added} -${result.removed}, hash ${result.hash}` +
        (result.baseExperiment ? ` (on top of experiment ${result.baseExperiment}; run_experiment will stack on it)` : '') +
        `\n${result.diff}`,
    };
  },
});
