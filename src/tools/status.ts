import { z } from 'zod';
import { defineTool } from './define.js';

export const status = defineTool({
  name: 'status',
  title: 'Workspace status',
  description:
    'Overview of the lab: workspace, session branch, head commit, best val_bpb, queue, slots (which experiment runs where), ' +
    'profile and training budget, the wall-clock ceiling, pinned harness hashes and whether they still match, and whether ' +
    'train.py has unsaved edits. Call it first, and whenever you are unsure what is going on.',
  input: {},
  output: {
    workspace: z.string(),
    branch: z.string(),
    session: z.string().nullable(),
    head: z.string(),
    best: z.object({ id: z.number().int(), valBpb: z.number().nullable(), description: z.string() }).nullable(),
    profile: z.string(),
    timeBudgetSeconds: z.number(),
    ceilingSeconds: z.number(),
    python: z.string(),
    dataDir: z.string(),
    slots: z.array(z.object({ index: z.number().int(), cudaDevices: z.string().nullable(), experimentId: z.number().int().nullable() })),
    queue: z.array(z.number().int()),
    counts: z.record(z.string(), z.number()),
    pinnedHashes: z.record(z.string(), z.string()),
    harnessIntact: z.boolean(),
    harnessDrift: z.array(z.string()),
    trainPyModified: z.boolean(),
    strayChanges: z.array(z.string()),
  },
  kind: 'read',
  async handler(_args, { lab }) {
    return { structured: await lab.status() };
  },
});
