/**
 * RED-TEAM SUITE (issue 7, "Evidence"): hostile and careless train.py variants, each written and
 * run through the MCP tools over stdio on the smoke profile, exactly as an agent would
 * (read_train_py -> apply_patch -> run_experiment -> get_results / get_run_log -> commit_or_revert).
 *
 * Each variant must be refused, voided or killed (or, for the harmless accidents, score honestly),
 * with its reason in the experiment and in the audit log, and must leave the workspace as it was
 * apart from its own rows and run folder: refs, .git files (hooks, config), the working tree, the
 * state folder, the data dir, other rows of the database, no marker file anywhere, no process
 * left, nothing received by the listeners. Variants and what stops each: test/redteam/README.md.
 *
 * Variants run two at a time, each in its own CPU slot, as two agents' candidates would: each
 * one's checks allow only the rows, run folders and refs of the two runs, and the variants that
 * take what a run beside them needs (processes, disk) run alone. A write into the other run's own
 * rows or folder is still caught by the other variant's checks, or by the marker it carries.
 *
 * Runs when the harness has the run protocol (prepare.py defines finish_training); REDTEAM=0
 * skips it, REDTEAM_ONLY=05,11,27 runs a subset, REDTEAM_SLOTS=1 runs one variant at a time,
 * REDTEAM_CEILING sets the wall-clock ceiling
 * (default 30 s: a smoke run takes 5-10 s), REDTEAM_AUDIT_EVENTS=0 accepts the audited tool results instead of an audit
 * event per refused run, REDTEAM_LOGS=DIR writes each variant's error and run log there.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyVariant, markerFor, missingAnchors, type Outcome, type Variant, type VariantContext } from './redteam/apply.js';
import { findMarkedProcesses, findMarkers, snapshotProblems, startListeners, takeSnapshot, type Listeners, type Snapshot } from './redteam/observe.js';
import { RT_PRELUDE, VARIANTS } from './redteam/variants.js';
import { call, connect, makeWorkspace, ok, queryState, ROOT, type Connected } from './helpers.js';

const PROTOCOL_READY = readFileSync(join(ROOT, 'python', 'prepare.py'), 'utf8').includes('def finish_training');
const ENABLED = process.env.REDTEAM !== '0' && PROTOCOL_READY;
const ONLY = process.env.REDTEAM_ONLY?.split(',').map((s) => s.trim().padStart(2, '0'));
const SELECTED = VARIANTS.filter((v) => !ONLY || ONLY.includes(v.id));
const CEILING = Number(process.env.REDTEAM_CEILING ?? 30);
const SLOTS = Number(process.env.REDTEAM_SLOTS ?? 2);
const AUDIT_EVENTS = process.env.REDTEAM_AUDIT_EVENTS !== '0';
/** REDTEAM_LOGS=DIR: each variant's outcome, error and run log go to DIR/<id>-<slug>.log, to read what stopped it. */
const LOGS = process.env.REDTEAM_LOGS;
if (LOGS) mkdirSync(LOGS, { recursive: true });
/** Delayed variants' children sleep 20-30 s before acting; the last check waits this long after them. */
const LATE_ACTION_S = 35;
const NONCE = randomBytes(4).toString('hex');
const RUNNING = new Set(['queued', 'running']);

interface Observed {
  outcome: Outcome;
  experimentId?: number;
  error: string;
  log: string;
  valBpb: number | null;
  trainingSeconds: number | null;
  /** The audit rows of its own tool calls: seq in (auditFrom, auditTo]; its run's events come later. */
  auditFrom: number;
  auditTo: number;
}

/** A variant written and queued; `observed` is set at once when it never became a run. */
interface Launched {
  v: Variant;
  auditFrom: number;
  auditTo: number;
  experimentId?: number;
  observed?: Observed;
}

/**
 * The order the variants run in: groups of up to `slots` that run side by side. Solo variants
 * run alone; slow ones (stopped only at an allowance or the ceiling) are grouped together so that
 * their waits overlap.
 */
function runGroups(variants: Variant[], slots: number): Variant[][] {
  const groups: Variant[][] = [];
  const open = new Map<string, Variant[]>();
  for (const v of variants) {
    if (v.solo || slots <= 1) {
      groups.push([v]);
      continue;
    }
    const lane = v.slow ? 'slow' : 'normal';
    const group = open.get(lane) ?? [];
    if (group.length === 0) {
      groups.push(group);
      open.set(lane, group);
    }
    group.push(v);
    if (group.length === slots) open.delete(lane);
  }
  return groups;
}
// The delayed variants first: their children have long acted by the last check, which waits for them.
const GROUPS = runGroups([...SELECTED.filter((v) => v.delayed), ...SELECTED.filter((v) => !v.delayed)], SLOTS);

const describeRedTeam = ENABLED ? describe.sequential : describe.skip;

describeRedTeam('red team: hostile train.py variants through the MCP tools (smoke profile)', () => {
  let workspace: string;
  let stateDir: string;
  let dataDir: string;
  let timeBudget: number;
  let server: Connected;
  let listeners: Listeners;
  let honest: string;
  let baseline: { valBpb: number; trainingSeconds: number };
  let snapshot: Snapshot;
  let lastDelayedAt = 0;
  const summary: string[] = [];

  const ctxFor = (v: Variant): VariantContext => ({
    marker: markerFor(NONCE, v),
    workspace,
    stateDir,
    dataDir,
    port: listeners.port,
    abstractSocket: listeners.abstractSocket,
  });

  const markerRoots = (experimentIds: number[]) => [
    // The runs' own scratch (unsandboxed runs keep it on the host) may hold what the run wrote, and
    // their handover/ holds the bytes the run sent (a pickle naming the marker): names only there.
    {
      path: workspace,
      contents: true,
      maxDepth: 12,
      exclude: ['.git/objects', ...experimentIds.map((id) => `.autoresearch/runs/${id}/scratch`)],
      namesOnly: experimentIds.map((id) => `.autoresearch/runs/${id}/handover`),
    },
    { path: dataDir, contents: true, maxDepth: 4 },
    { path: '/tmp', contents: false, maxDepth: 4 },
    { path: '/work', contents: false, maxDepth: 1 },
  ];

  async function waitDone(id: number): Promise<any> {
    const deadline = Date.now() + (CEILING + 180) * 1000;
    for (;;) {
      const result = await ok(server.client, 'get_results', { experiment_id: id, wait_seconds: 30 });
      const experiment = result.experiments[0];
      if (!RUNNING.has(experiment.status)) return experiment;
      if (Date.now() > deadline) throw new Error(`experiment ${id} still ${experiment.status} after the ceiling + 180 s`);
    }
  }

  async function restoreTrainPy(): Promise<void> {
    const now = await ok(server.client, 'read_train_py');
    if (now.text !== honest) {
      await ok(server.client, 'apply_patch', { edits: [{ search: now.text, replace: honest }], expected_hash: now.hash });
    }
  }

  function auditMaxSeq(): number {
    return queryState<{ seq: number | null }>(workspace, 'SELECT max(seq) AS seq FROM audit_log')[0].seq ?? 0;
  }

  /** Writes the variant with apply_patch and queues it; train.py is back to the honest one after. */
  async function launch(v: Variant): Promise<Launched> {
    const auditFrom = auditMaxSeq();
    const current = await ok(server.client, 'read_train_py');
    expect(current.text, 'train.py was not restored after the previous variant').toBe(honest);
    const missing = missingAnchors(honest, v);
    if (missing.length) throw new Error(`train.py lacks the anchors ${missing.join(', ')}: update test/redteam/variants.ts`);
    const text = applyVariant(honest, v, ctxFor(v), RT_PRELUDE);
    const patched = await call(server.client, 'apply_patch', { edits: [{ search: current.text, replace: text }], expected_hash: current.hash });
    const never = (outcome: Outcome, error: string, experimentId?: number): Launched => {
      const auditTo = auditMaxSeq();
      return { v, auditFrom, auditTo, experimentId, observed: { outcome, experimentId, error, log: '', valBpb: null, trainingSeconds: null, auditFrom, auditTo } };
    };
    if (patched.isError) return never('patch_refused', patched.content.map((c) => c.text).join('\n'));
    // Most variants are meant to fail, and three failures in a row from one agent pause its queue
    // (the crash-streak rule): each variant is proposed by an agent of its own.
    const started = await call(server.client, 'run_experiment', { description: `redteam ${v.id} ${v.slug}`, agent: `redteam-${v.id}` });
    if (started.isError) {
      const message = started.content.map((c) => c.text).join('\n');
      const id = Number(/Experiment (\d+) rejected/.exec(message)?.[1]);
      await restoreTrainPy();
      if (!Number.isInteger(id)) throw new Error(`run_experiment failed without an experiment: ${message}`);
      await ok(server.client, 'commit_or_revert', { experiment_id: id, action: 'discard' });
      await restoreTrainPy();
      return never('rejected', message, id);
    }
    await restoreTrainPy();
    return { v, auditFrom, auditTo: auditMaxSeq(), experimentId: started.structuredContent.experiment.id };
  }

  /** Waits for a launched variant's run, reads what the tools report, then discards it. */
  async function finish(launched: Launched): Promise<Observed> {
    if (launched.observed) return launched.observed;
    const id = launched.experimentId as number;
    const experiment = await waitDone(id);
    const log = await ok(server.client, 'get_run_log', { experiment_id: id, lines: 400 });
    await ok(server.client, 'commit_or_revert', { experiment_id: id, action: 'discard' });
    return {
      auditFrom: launched.auditFrom,
      auditTo: launched.auditTo,
      outcome: experiment.status,
      experimentId: id,
      error: experiment.error ?? '',
      log: log.log ?? '',
      valBpb: experiment.val_bpb,
      trainingSeconds: experiment.training_seconds,
    };
  }

  /** One group, side by side: the snapshot before it and what each variant's run came to. */
  const groupRuns = new Map<Variant[], Promise<{ before: Snapshot; seen: Map<string, Observed> }>>();
  function runGroup(group: Variant[]) {
    let pending = groupRuns.get(group);
    if (!pending) {
      pending = (async () => {
        const before = takeSnapshot(workspace, dataDir);
        const launched: Launched[] = [];
        for (const v of group) launched.push(await launch(v));
        const seen = new Map<string, Observed>();
        for (const l of launched) seen.set(l.v.id, await finish(l));
        if (group.some((v) => v.delayed)) lastDelayedAt = Date.now();
        return { before, seen };
      })();
      groupRuns.set(group, pending);
    }
    return pending;
  }

  beforeAll(async () => {
    workspace = await makeWorkspace('smoke');
    stateDir = join(workspace, '.autoresearch');
    listeners = await startListeners(`rt-${NONCE}`);
    server = await connect(workspace, ['--ceiling-seconds', String(CEILING), '--slots', String(SLOTS)], 'redteam-e2e');
    await ok(server.client, 'start_session', { tag: `redteam-${NONCE}` });
    const status = await ok(server.client, 'status');
    dataDir = status.dataDir;
    timeBudget = status.timeBudgetSeconds;
    expect(status.profile).toBe('smoke');
    honest = (await ok(server.client, 'read_train_py')).text;
  }, 600_000);

  afterAll(async () => {
    await server?.client.close();
    await listeners?.close();
    if (summary.length) process.stderr.write(`\nred-team outcomes:\n${summary.join('\n')}\n`);
  });

  it('scores the unmodified train.py in the sandbox: the honest baseline', async () => {
    const started = await ok(server.client, 'run_experiment', { description: 'redteam baseline (unmodified)' });
    const experiment = await waitDone(started.experiment.id);
    expect(experiment.status, experiment.error ?? '').toBe('succeeded');
    expect(Number.isFinite(experiment.val_bpb) && experiment.val_bpb > 0).toBe(true);
    expect(experiment.training_seconds).toBeGreaterThan(0.5 * timeBudget);
    expect(experiment.training_seconds).toBeLessThanOrEqual(1.05 * timeBudget + 0.05);
    // Hostile code outside a sandbox would act on this machine: no variant runs unless the baseline
    // ran sandboxed (every variant checks `baseline` first).
    expect(queryState(workspace, 'SELECT sandboxed FROM experiments WHERE id = ?', experiment.id)[0], 'the baseline ran without a sandbox').toEqual({ sandboxed: 1 });
    const decided = await ok(server.client, 'commit_or_revert', { experiment_id: experiment.id, action: 'keep' });
    expect(decided.decision).toBe('keep');
    baseline = { valBpb: experiment.val_bpb, trainingSeconds: experiment.training_seconds };
    honest = (await ok(server.client, 'read_train_py')).text;
    snapshot = takeSnapshot(workspace, dataDir);
    summary.push(`baseline: val_bpb ${experiment.val_bpb.toFixed(4)}, training ${experiment.training_seconds.toFixed(2)} s`);
  }, (CEILING + 240) * 1000);

  for (const group of GROUPS) for (const v of group) {
    const title = `${v.id} ${v.slug} [${v.class}${v.careless ? ', careless' : ''}]: ${v.stoppedBy.split(/[;:,(]/)[0]}`;
    it(title, async () => {
      expect(baseline, 'the baseline must have succeeded first').toBeDefined();
      const marker = markerFor(NONCE, v);
      const { before, seen: all } = await runGroup(group);
      const seen = all.get(v.id) as Observed;
      const groupIds = [...all.values()].flatMap((o) => (o.experimentId === undefined ? [] : [o.experimentId]));
      const context = `outcome ${seen.outcome}, error: ${seen.error}\n--- log tail ---\n${seen.log.split('\n').slice(-40).join('\n')}`;
      if (LOGS) writeFileSync(join(LOGS, `${v.id}-${v.slug}.log`), `outcome ${seen.outcome}, val_bpb ${seen.valBpb}\nerror: ${seen.error}\n--- log ---\n${seen.log}`);
      summary.push(`${v.id} ${v.slug}: ${seen.outcome}${seen.valBpb !== null ? ` val_bpb ${seen.valBpb.toFixed(4)}` : ''}${seen.error ? ` | ${seen.error.replace(/\s+/g, ' ').slice(0, 220)}` : ''}`);

      // 1. The outcome, and the reason for it where it was refused.
      expect(v.expect.status, context).toContain(seen.outcome);
      expect(seen.log, 'a defence failed (REDTEAM-BREACH in the log)').not.toMatch(/REDTEAM-BREACH/);
      if (seen.outcome === 'succeeded') {
        expect(Number.isFinite(seen.valBpb), context).toBe(true);
        expect(seen.valBpb!, `val_bpb far below the honest baseline ${baseline.valBpb}: ${context}`).toBeGreaterThan(0.85 * baseline.valBpb);
        expect(seen.valBpb!, context).toBeLessThan(1.5 * baseline.valBpb);
        expect(seen.trainingSeconds!, 'training_seconds is the measured one').toBeGreaterThan(0.5 * timeBudget);
        expect(seen.trainingSeconds!, 'training_seconds is within the budget and its slack').toBeLessThanOrEqual(1.05 * timeBudget + 0.05);
      } else {
        expect(seen.error.trim(), `the experiment names no reason: ${context}`).not.toBe('');
        if (v.expect.reasonMatches) expect(`${seen.error}\n${seen.log}`, context).toMatch(v.expect.reasonMatches);
        expect(seen.valBpb, 'a refused run has no val_bpb').toBeNull();
      }

      // 2. The reason in the audit log.
      const rows = queryState<{ seq: number; kind: string; tool: string | null; is_error: number; message: string | null; result: string | null; experiment_id: number | null }>(
        workspace,
        'SELECT seq, kind, tool, is_error, message, result, experiment_id FROM audit_log WHERE seq > ? ORDER BY seq',
        seen.auditFrom,
      );
      // Its own tool calls: the other variant of the group was written and queued after it.
      const calls = rows.filter((r) => r.seq <= seen.auditTo);
      if (seen.outcome === 'patch_refused') {
        expect(calls.some((r) => r.tool === 'apply_patch' && r.is_error === 1 && (r.result ?? '').length > 0), 'the refused apply_patch is audited').toBe(true);
      } else if (seen.outcome === 'rejected' && calls.some((r) => r.tool === 'run_experiment' && r.is_error === 1)) {
        expect(calls.find((r) => r.tool === 'run_experiment' && r.is_error === 1)?.result ?? '').toMatch(/rejected/);
      } else if (seen.outcome !== 'succeeded') {
        const events = rows.filter((r) => r.kind === 'event' && r.experiment_id === seen.experimentId);
        if (AUDIT_EVENTS) {
          expect(events.length, `no audit event for experiment ${seen.experimentId} (${seen.outcome})`).toBeGreaterThan(0);
          // the event names the same reason as the experiment
          const reason = seen.error.slice(0, 60);
          expect(events.some((e) => (e.message ?? '').includes(reason)), `no audit event of experiment ${seen.experimentId} says "${reason}"`).toBe(true);
        } else {
          const snippet = seen.error.slice(0, 60);
          expect(rows.some((r) => (r.message ?? '').includes(snippet) || (r.result ?? '').includes(JSON.stringify(snippet).slice(1, -1)))).toBe(true);
        }
      }

      // 3. Nothing else in the workspace changed; nothing left behind.
      const after = takeSnapshot(workspace, dataDir);
      expect(snapshotProblems(workspace, before, after, groupIds), context).toEqual([]);
      expect(findMarkers([marker], markerRoots(seen.experimentId === undefined ? [] : [seen.experimentId])), 'marker files outside the scratch').toEqual([]);
      expect(findMarkedProcesses([marker]), 'processes of the run outlived it').toEqual([]);
      expect(listeners.events, 'the network listeners were reached').toEqual([]);
    }, (CEILING + 240) * 1000);
  }

  it('nothing acts later: no markers, processes, connections or changes once the delayed children would have acted', async () => {
    const wait = lastDelayedAt + LATE_ACTION_S * 1000 - Date.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    const markers = SELECTED.map((v) => markerFor(NONCE, v));
    const ids = queryState<{ id: number }>(workspace, 'SELECT id FROM experiments WHERE description LIKE ?', 'redteam % %').map((r) => r.id);
    expect(findMarkedProcesses(markers)).toEqual([]);
    expect(findMarkers(markers, markerRoots(ids))).toEqual([]);
    expect(listeners.events).toEqual([]);
    // Against the snapshot after the baseline: only the variants' own rows, runs and refs are new.
    const problems = snapshotProblems(workspace, snapshot, takeSnapshot(workspace, dataDir)).filter(
      (p) => !ids.some((id) => new RegExp(`(runs/${id}(/|\\b)|/(experiments|discarded)/${id}\\b|"id":${id},|not reachable)`).test(p)),
    );
    expect(problems).toEqual([]);
    const verify = await ok(server.client, 'status');
    expect(verify.harnessIntact).toBe(true);
  }, (LATE_ACTION_S + 120) * 1000);
});

if (!ENABLED) {
  describe('red team (skipped)', () => {
    it.skip(
      PROTOCOL_READY ? 'REDTEAM=0' : 'needs the run protocol (python/prepare.py has no finish_training yet): see docs/run-protocol.md',
      () => undefined,
    );
  });
}
