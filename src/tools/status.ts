import { z } from 'zod';
import { defineTool } from './define.js';
import { noiseFloorLine } from './render.js';
import { noiseFloorShape, noiseFloorView } from './shapes.js';

export const status = defineTool({
  name: 'status',
  title: 'Workspace status',
  description:
    'Overview of the lab: workspace, session branch, head commit, best val_bpb, queue, slots (which experiment runs where, and any drained because its GPU kept failing runs), ' +
    'profile and training budget, the wall-clock ceiling, pinned harness hashes and whether they still match, and whether ' +
    'train.py has unsaved edits; what is running and what is undecided, the measured noise floor, and next_step: what to do ' +
    'now. Call it first (also to continue a session in a new conversation), and whenever you are unsure what is going on.',
  input: {},
  output: {
    workspace: z.string(),
    branch: z.string(),
    session: z.string().nullable(),
    sessionStart: z.object({ from: z.string(), commit: z.string() }).nullable(),
    head: z.string(),
    headMeasured: z.object({ runs: z.number().int(), mean: z.number() }).nullable().describe('Succeeded runs of the head program and their mean'),
    running: z.array(z.number().int()),
    undecided: z.array(
      z.object({
        id: z.number().int(),
        description: z.string(),
        status: z.string(),
        valBpb: z.number().nullable(),
        verdict: z.string().nullable(),
        stackedOn: z.number().int().nullable(),
      }),
    ),
    noise: noiseFloorShape,
    pausedAgents: z
      .array(z.object({ agent: z.string(), crashed: z.array(z.number().int()), held: z.array(z.number().int()) }))
      .describe('Agents whose queue a crash streak paused: the failed experiments and the queued ones held back'),
    stackedOn: z.number().int().nullable().describe('train.py currently builds on this undecided experiment'),
    sessions: z.array(z.string()),
    nextStep: z.string().describe('What to do now'),
    best: z.object({ id: z.number().int(), valBpb: z.number().nullable(), description: z.string() }).nullable(),
    profile: z.string(),
    timeBudgetSeconds: z.number(),
    ceilingSeconds: z.number(),
    python: z.string(),
    dataDir: z.string(),
    slots: z.array(
      z.object({
        index: z.number().int(),
        cudaDevices: z.string().nullable(),
        experimentId: z.number().int().nullable(),
        gpu: z
          .object({ memoryUsedMb: z.number(), memoryTotalMb: z.number(), utilizationPercent: z.number().nullable() })
          .nullable()
          .describe('nvidia-smi now: memory and utilisation of the slot\'s GPU; null on CPU slots'),
        drained: z
          .string()
          .nullable()
          .describe('why the slot takes no more runs (its device failed several runs in a row), or null while it works'),
        deviceFaultsInARow: z.number().int().describe('runs in a row that failed for this slot\'s device (3 drain it); a good run resets it'),
      }),
    ),
    queue: z.array(z.number().int()),
    counts: z.record(z.string(), z.number()),
    pinnedHashes: z.record(z.string(), z.string()),
    harnessIntact: z.boolean(),
    harnessDrift: z.array(z.string()),
    trainPyModified: z.boolean(),
    strayChanges: z.array(z.string()),
    compileCache: z
      .object({ experimentId: z.number().int(), commit: z.string(), files: z.number().int(), bytes: z.number().int() })
      .nullable()
      .describe('what new runs compile from: the cache as it was before the first batch of this kept (or head) experiment; null while empty (on CPU train.py compiles nothing)'),
  },
  kind: 'read',
  async handler(_args, { lab }) {
    const status = await lab.status();
    const structured = { ...status, noise: noiseFloorView(status.noise) };
    const list = (ids: number[]) => (ids.length ? ids.join(', ') : 'none');
    const lines = [
      `Workspace ${status.workspace}: profile ${status.profile}, training budget ${status.timeBudgetSeconds} s, ceiling ${status.ceilingSeconds} s, ${status.slots.length} slot(s).`,
      `Session ${status.session ?? 'none'} on ${status.branch} at ${status.head.slice(0, 8)}` +
        (status.headMeasured ? ` (head measured ${status.headMeasured.runs}x, mean ${status.headMeasured.mean.toFixed(6)})` : ' (head not measured yet)') +
        `; best kept: ${status.best ? `#${status.best.id} ${status.best.valBpb?.toFixed(6)} "${status.best.description}"` : 'none'}; ${noiseFloorLine(structured.noise)}.`,
      ...status.slots.flatMap((slot) => [
        ...(slot.gpu ? [`Slot ${slot.index} (GPU ${slot.cudaDevices}): ${slot.gpu.memoryUsedMb}/${slot.gpu.memoryTotalMb} MB, ${slot.gpu.utilizationPercent ?? '?'}% busy, experiment ${slot.experimentId ?? 'none'}.`] : []),
        ...(slot.drained ? [`DRAINED: ${slot.drained}`] : []),
      ]),
      `Running: ${list(status.running)}; queued: ${list(status.queue)}; undecided: ` +
        (status.undecided.length
          ? status.undecided.map((u) => `#${u.id} ${u.status}${u.valBpb === null ? '' : ` ${u.valBpb.toFixed(6)}`}${u.verdict ? ` ${u.verdict}` : ''} "${u.description}"`).join('; ')
          : 'none') +
        '.',
      ...status.pausedAgents.map((p) => `Paused: ${p.agent} after failed experiments ${p.crashed.join(', ')}; held: ${p.held.join(', ') || 'none'}.`),
      status.harnessIntact ? 'Harness intact.' : `Harness DRIFT: ${status.harnessDrift.join(', ')}.`,
      ...(status.compileCache
        ? [`Compile cache: from experiment ${status.compileCache.experimentId} (${status.compileCache.commit.slice(0, 8)}), ${status.compileCache.files} files, ${(status.compileCache.bytes / 2 ** 20).toFixed(1)} MiB.`]
        : []),
      `train.py: ${status.stackedOn ? `builds on undecided experiment ${status.stackedOn}` : status.trainPyModified ? 'has edits not yet run' : 'as at the head'}` +
        (status.strayChanges.length ? `; other changed files (not part of experiments): ${status.strayChanges.join(', ')}` : '') +
        `. Sessions: ${status.sessions.join(', ') || 'none'}.`,
      `Next: ${status.nextStep}`,
    ];
    return { structured, text: lines.join('\n') };
  },
});
