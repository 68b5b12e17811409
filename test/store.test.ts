import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EXPERIMENT_STATUSES, Store, StoreError, type ExperimentStatus, type StoreErrorCode } from '../src/core/store.js';

const HASH_A = 'a'.repeat(64);
const HASH_B = 'b'.repeat(64);

let dir: string;
let dbPath: string;
const opened: Store[] = [];

function open(): Store {
  const store = Store.open(dbPath);
  opened.push(store);
  return store;
}

/** A store with one session, ready for experiments. */
function openWithSession(tag = 'main'): Store {
  const store = open();
  store.createSession({ tag, branch: `autoresearch/${tag}`, baseCommit: 'base0' });
  return store;
}

function storeErrorCode(action: () => unknown): StoreErrorCode | undefined {
  try {
    action();
  } catch (error) {
    if (error instanceof StoreError) return error.code;
    throw error;
  }
  return undefined;
}

/** Queued experiment with a candidate commit (runnable). */
function queue(store: Store, description = 'change', session = 'main') {
  const created = store.createExperiment({ sessionTag: session, description, parentCommit: 'head0' });
  return store.setCandidate(created.id, { candidateCommit: `cand${created.id}` });
}

/** Runs an experiment through to a final status. */
function finish(store: Store, status: Exclude<ExperimentStatus, 'preparing' | 'queued' | 'running'>, valBpb: number | null = null, session = 'main') {
  const experiment = queue(store, `${status} ${valBpb}`, session);
  store.markRunning(experiment.id, { slot: 0, pid: 4242, startedAt: 1_000 });
  return store.markFinished(experiment.id, { status, valBpb, finishedAt: 2_000 });
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'ar-store-'));
  dbPath = join(dir, 'nested', 'state.db');
});

afterEach(() => {
  for (const store of opened.splice(0)) {
    try {
      store.close();
    } catch {
      // already closed by the test
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

describe('opening and migrations', () => {
  it('creates the file, folder and schema from empty, in WAL mode with foreign keys on', () => {
    const store = open();
    expect(store.schemaVersion).toBeGreaterThan(0);
    const raw = new Database(dbPath, { readonly: true });
    const tables = (raw.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[]).map(
      (t) => t.name,
    );
    expect(tables).toEqual(['audit_log', 'branch_moves', 'experiments', 'meta', 'noise_measurements', 'pins', 'sessions']);
    expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
    raw.close();
    expect(typeof store.getMeta<number>('created_at')).toBe('number');
  });

  it('re-opens idempotently: same version, data and created_at kept', () => {
    const first = openWithSession();
    const version = first.schemaVersion;
    const createdAt = first.getMeta<number>('created_at');
    first.setMeta('workspace', { profile: 'cpu' });
    first.close();
    const second = open();
    expect(second.schemaVersion).toBe(version);
    expect(second.getMeta<number>('created_at')).toBe(createdAt);
    expect(second.getMeta('workspace')).toEqual({ profile: 'cpu' });
    expect(second.getSession('main')?.branch).toBe('autoresearch/main');
  });

  it('two stores can share one file', () => {
    const a = openWithSession();
    const b = open();
    const created = a.createExperiment({ sessionTag: 'main', description: 'x', parentCommit: 'p' });
    expect(b.getExperiment(created.id)?.description).toBe('x');
  });

  it('refuses a database from a newer schema', () => {
    open().close();
    const raw = new Database(dbPath);
    raw.pragma('user_version = 999');
    raw.close();
    expect(storeErrorCode(() => open())).toBe('schema_too_new');
  });
});

describe('meta', () => {
  it('stores JSON values, overwrites, and reports absent keys as undefined', () => {
    const store = open();
    expect(store.getMeta('nothing')).toBeUndefined();
    store.setMeta('constants', { MAX_SEQ_LEN: 256, TIME_BUDGET: 60 });
    store.setMeta('profile', 'cpu');
    store.setMeta('profile', 'gpu');
    expect(store.getMeta('constants')).toEqual({ MAX_SEQ_LEN: 256, TIME_BUDGET: 60 });
    expect(store.getMeta<string>('profile')).toBe('gpu');
    expect(storeErrorCode(() => store.setMeta('bad', undefined))).toBe('invalid_argument');
  });
});

describe('pins', () => {
  it('pins once, refuses a silent re-pin, re-pins only when asked', () => {
    const store = open();
    expect(store.getPins()).toEqual({});
    store.setPins({ 'prepare.py': HASH_A, 'val.bin': HASH_B }, { bytes: { 'prepare.py': 1234 }, pinnedAt: 5 });
    expect(store.getPins()).toEqual({ 'prepare.py': HASH_A, 'val.bin': HASH_B });
    expect(store.listPins()).toEqual([
      { name: 'prepare.py', sha256: HASH_A, bytes: 1234, pinnedAt: 5 },
      { name: 'val.bin', sha256: HASH_B, bytes: null, pinnedAt: 5 },
    ]);
    expect(storeErrorCode(() => store.setPins({ 'prepare.py': HASH_B }))).toBe('pins_already_set');
    expect(store.getPins()['prepare.py']).toBe(HASH_A);
    store.setPins({ 'prepare.py': HASH_B }, { replace: true });
    expect(store.getPins()).toEqual({ 'prepare.py': HASH_B });
  });

  it('accepts only SHA-256 hex digests and a non-empty set', () => {
    const store = open();
    expect(() => store.setPins({ 'prepare.py': 'not-a-hash' })).toThrow(/CHECK constraint/);
    expect(store.getPins()).toEqual({});
    expect(storeErrorCode(() => store.setPins({}))).toBe('invalid_argument');
  });
});

describe('sessions', () => {
  it('creates, reads and lists sessions; a tag is unique', () => {
    const store = open();
    store.createSession({ tag: 'a', branch: 'autoresearch/a', baseCommit: 'c1', createdAt: 10, clientName: 'claude', clientVersion: '1.0' });
    store.createSession({ tag: 'b', branch: 'autoresearch/b', baseCommit: 'c2', createdAt: 20, mcpSessionId: 'sess-1' });
    expect(store.getSession('a')).toEqual({
      tag: 'a',
      branch: 'autoresearch/a',
      baseCommit: 'c1',
      startFrom: null,
      createdAt: 10,
      mcpSessionId: null,
      clientName: 'claude',
      clientVersion: '1.0',
    });
    expect(store.getSession('zzz')).toBeUndefined();
    expect(store.listSessions().map((s) => s.tag)).toEqual(['a', 'b']);
    expect(storeErrorCode(() => store.createSession({ tag: 'a', branch: 'x', baseCommit: 'y' }))).toBe('duplicate');
  });
});

describe('constraints', () => {
  it('enforces foreign keys: the session and rebase_of must exist', () => {
    const store = openWithSession();
    expect(storeErrorCode(() => store.createExperiment({ sessionTag: 'ghost', description: 'x', parentCommit: 'p' }))).toBe('not_found');
    expect(storeErrorCode(() => store.createExperiment({ sessionTag: 'main', description: 'x', parentCommit: 'p', rebaseOf: 77 }))).toBe(
      'not_found',
    );
    const original = finish(store, 'succeeded', 1.5);
    const rebased = store.createExperiment({ sessionTag: 'main', description: 'again', parentCommit: 'p2', rebaseOf: original.id });
    expect(rebased.rebaseOf).toBe(original.id);
  });

  it('rejects an unknown status (CHECK)', () => {
    const store = openWithSession();
    const experiment = queue(store);
    expect(() => store.markFinished(experiment.id, { status: 'exploded' as never })).toThrow(/CHECK constraint/);
    expect(store.getExperiment(experiment.id)?.status).toBe('queued');
  });

  it('a succeeded run needs a finite val_bpb', () => {
    const store = openWithSession();
    const experiment = queue(store);
    store.markRunning(experiment.id, { slot: 0 });
    expect(storeErrorCode(() => store.markFinished(experiment.id, { status: 'succeeded' }))).toBe('invalid_argument');
    expect(storeErrorCode(() => store.markFinished(experiment.id, { status: 'succeeded', valBpb: Number.NaN }))).toBe('invalid_argument');
    expect(store.getExperiment(experiment.id)?.status).toBe('running');
  });
});

describe('experiment lifecycle', () => {
  it('create -> candidate -> running (pid later) -> progress -> succeeded, with every field', () => {
    const store = openWithSession();
    const created = store.createExperiment({
      sessionTag: 'main',
      description: 'LR 0.04 -> 0.06',
      parentCommit: 'head0',
      mcpSessionId: 'mcp-1',
      clientName: 'claude-code',
      queuedAt: 100,
    });
    expect(created).toMatchObject({
      id: 1,
      status: 'queued',
      decision: null,
      candidateCommit: null,
      queuedAt: 100,
      startedAt: null,
      mcpSessionId: 'mcp-1',
      clientName: 'claude-code',
    });
    expect(store.nextQueued()).toBeUndefined();

    store.setCandidate(created.id, { candidateCommit: 'cand1', logPath: '/runs/1/run.log', resultPath: '/runs/1/result.json' });
    expect(store.nextQueued()?.id).toBe(created.id);

    store.markRunning(created.id, { slot: 2, startedAt: 1_000 });
    const withPid = store.markRunning(created.id, { slot: 2, pid: 999, startedAt: 1_500 });
    expect(withPid).toMatchObject({ status: 'running', slot: 2, pid: 999, startedAt: 1_000 });
    expect(store.nextQueued()).toBeUndefined();

    expect(store.updateProgress(created.id, { step: 42, percent: 12.5, loss: 4.1 })).toBe(true);
    expect(store.getExperiment(created.id)?.progress).toEqual({ step: 42, percent: 12.5, loss: 4.1 });

    const finished = store.markFinished(created.id, {
      status: 'succeeded',
      finishedAt: 61_000,
      exitCode: 0,
      signal: null,
      valBpb: 1.234567,
      trainingSeconds: 55.5,
      totalSeconds: 60,
      peakVramMb: 1024.5,
      mfuPercent: 38.2,
      totalTokensM: 12.3,
      numSteps: 953.4,
      numParamsM: 11.5,
      depth: 4,
      evalTokens: 20_000,
      evalBytes: 80_000,
      harnessHashes: { 'prepare.py': HASH_A },
    });
    expect(finished).toMatchObject({
      status: 'succeeded',
      finishedAt: 61_000,
      durationMs: 60_000,
      exitCode: 0,
      valBpb: 1.234567,
      trainingSeconds: 55.5,
      totalSeconds: 60,
      peakVramMb: 1024.5,
      mfuPercent: 38.2,
      totalTokensM: 12.3,
      numSteps: 953,
      numParamsM: 11.5,
      depth: 4,
      evalTokens: 20_000,
      evalBytes: 80_000,
      harnessHashes: { 'prepare.py': HASH_A },
      candidateCommit: 'cand1',
      logPath: '/runs/1/run.log',
      resultPath: '/runs/1/result.json',
      progress: { step: 42, percent: 12.5, loss: 4.1 },
    });
    expect(store.updateProgress(created.id, { step: 43, percent: 13, loss: 4 })).toBe(false);
  });

  it('stores non-finite metrics as NULL rather than failing the finish', () => {
    const store = openWithSession();
    const experiment = queue(store);
    store.markRunning(experiment.id, { slot: 0 });
    const finished = store.markFinished(experiment.id, { status: 'crashed', mfuPercent: Number.POSITIVE_INFINITY, numSteps: Number.NaN, error: 'boom' });
    expect(finished).toMatchObject({ status: 'crashed', mfuPercent: null, numSteps: null, valBpb: null, error: 'boom' });
  });

  it('refuses transitions out of a final status and reports missing ids', () => {
    const store = openWithSession();
    const done = finish(store, 'crashed');
    expect(storeErrorCode(() => store.markFinished(done.id, { status: 'cancelled' }))).toBe('invalid_state');
    expect(storeErrorCode(() => store.markRunning(done.id, { slot: 0 }))).toBe('invalid_state');
    expect(storeErrorCode(() => store.setCandidate(done.id, { candidateCommit: 'x' }))).toBe('invalid_state');
    expect(storeErrorCode(() => store.markRunning(404, { slot: 0 }))).toBe('not_found');
    expect(storeErrorCode(() => store.markFinished(404, { status: 'crashed' }))).toBe('not_found');
    expect(store.getExperiment(404)).toBeUndefined();
  });

  it('cancels a queued experiment that never started (no duration)', () => {
    const store = openWithSession();
    const experiment = queue(store);
    const cancelled = store.markFinished(experiment.id, { status: 'cancelled', error: 'cancelled before it started', finishedAt: 5 });
    expect(cancelled).toMatchObject({ status: 'cancelled', startedAt: null, finishedAt: 5, durationMs: null });
  });

  it('records a rejected candidate as finished at once, outside the queue', () => {
    const store = openWithSession();
    const rejected = store.createExperiment({
      sessionTag: 'main',
      description: 'imports requests',
      parentCommit: 'head0',
      status: 'rejected',
      error: 'line 3: import not allowed',
      queuedAt: 50,
    });
    expect(rejected).toMatchObject({ status: 'rejected', error: 'line 3: import not allowed', finishedAt: 50, durationMs: 0 });
    expect(store.nextQueued()).toBeUndefined();
  });

  it('hands out queued experiments FIFO, skipping ones still without a commit', () => {
    const store = openWithSession();
    const unprepared = store.createExperiment({ sessionTag: 'main', description: 'preparing', parentCommit: 'p' });
    const second = queue(store, 'second');
    const third = queue(store, 'third');
    expect(store.nextQueued()?.id).toBe(second.id);
    store.setCandidate(unprepared.id, { candidateCommit: 'c' });
    expect(store.nextQueued()?.id).toBe(unprepared.id);
    store.markRunning(unprepared.id, { slot: 0 });
    store.markRunning(second.id, { slot: 1 });
    expect(store.nextQueued()?.id).toBe(third.id);
  });
});

describe('decisions and best', () => {
  it('keep needs a success, discard any finished run, and a decision is final', () => {
    const store = openWithSession();
    const good = finish(store, 'succeeded', 1.1);
    const crashed = finish(store, 'crashed');
    const running = queue(store);
    store.markRunning(running.id, { slot: 0 });

    expect(storeErrorCode(() => store.setDecision(crashed.id, 'keep', 'no'))).toBe('invalid_state');
    expect(storeErrorCode(() => store.setDecision(running.id, 'discard', 'too early'))).toBe('invalid_state');
    expect(storeErrorCode(() => store.setDecision(404, 'discard', 'x'))).toBe('not_found');

    const kept = store.setDecision(good.id, 'keep', 'first result', 7_000);
    expect(kept).toMatchObject({ decision: 'keep', decisionReason: 'first result', decidedAt: 7_000 });
    expect(store.setDecision(crashed.id, 'discard', 'crashed').decision).toBe('discard');
    expect(storeErrorCode(() => store.setDecision(good.id, 'discard', 'changed my mind'))).toBe('invalid_state');
    expect(store.getExperiment(good.id)?.decision).toBe('keep');
  });

  it('best = lowest val_bpb among succeeded AND kept; ties go to the earlier one; per session', () => {
    const store = openWithSession('main');
    store.createSession({ tag: 'other', branch: 'autoresearch/other', baseCommit: 'b' });
    expect(store.bestExperiment()).toBeUndefined();

    const keptHigh = finish(store, 'succeeded', 1.3);
    const undecidedLow = finish(store, 'succeeded', 0.9);
    const keptLow = finish(store, 'succeeded', 1.1);
    const keptTie = finish(store, 'succeeded', 1.1);
    const discardedLower = finish(store, 'succeeded', 1.0);
    const otherSession = finish(store, 'succeeded', 0.5, 'other');
    for (const e of [keptHigh, keptLow, keptTie]) store.setDecision(e.id, 'keep', 'better');
    store.setDecision(discardedLower.id, 'discard', 'by request');

    expect(store.bestExperiment('main')?.id).toBe(keptLow.id);
    expect(store.bestExperiment('other')).toBeUndefined();
    expect(store.bestSucceededExperiment('main')?.id).toBe(undecidedLow.id);
    expect(store.bestSucceededExperiment()?.id).toBe(otherSession.id);
    store.setDecision(otherSession.id, 'keep', 'baseline');
    expect(store.bestExperiment()?.id).toBe(otherSession.id);
  });
});

describe('listing and counting', () => {
  function seed(store: Store) {
    store.createSession({ tag: 'other', branch: 'autoresearch/other', baseCommit: 'b' });
    return {
      a: finish(store, 'succeeded', 1.2),
      b: finish(store, 'crashed'),
      c: finish(store, 'succeeded', 0.8),
      d: queue(store, 'waiting'),
      e: finish(store, 'succeeded', 1.0, 'other'),
      f: finish(store, 'timed_out'),
    };
  }

  it('orders by id (newest first, or ascending) and best-first with NULLs last', () => {
    const store = openWithSession();
    const { a, b, c, d, e, f } = seed(store);
    expect(store.listExperiments().map((x) => x.id)).toEqual([f.id, e.id, d.id, c.id, b.id, a.id]);
    expect(store.listExperiments({ order: 'id', ascending: true }).map((x) => x.id)).toEqual([a.id, b.id, c.id, d.id, e.id, f.id]);
    expect(store.listExperiments({ order: 'best' }).map((x) => x.id)).toEqual([c.id, e.id, a.id, b.id, d.id, f.id]);
  });

  it('filters by one status, several, none (empty list), and session; pages with limit/offset', () => {
    const store = openWithSession();
    const { a, b, c, d, e, f } = seed(store);
    expect(store.listExperiments({ status: 'queued' }).map((x) => x.id)).toEqual([d.id]);
    expect(store.listExperiments({ status: ['crashed', 'timed_out'], order: 'id', ascending: true }).map((x) => x.id)).toEqual([b.id, f.id]);
    expect(store.listExperiments({ status: [] })).toHaveLength(6);
    expect(store.listExperiments({ session: 'other' }).map((x) => x.id)).toEqual([e.id]);
    expect(store.listExperiments({ session: 'main', status: 'succeeded', order: 'best' }).map((x) => x.id)).toEqual([c.id, a.id]);
    expect(store.listExperiments({ order: 'id', ascending: true, limit: 2, offset: 1 }).map((x) => x.id)).toEqual([b.id, c.id]);
    expect(store.listExperiments({ order: 'id', limit: 1 })[0].id).toBe(f.id);
  });

  it('counts every status, zero-filled, overall or per session', () => {
    const store = openWithSession();
    seed(store);
    const counts = store.countByStatus();
    expect(Object.keys(counts).sort()).toEqual([...EXPERIMENT_STATUSES].sort());
    expect(counts).toEqual({ preparing: 0, queued: 1, running: 0, succeeded: 3, crashed: 1, over_budget: 0, timed_out: 1, cancelled: 0, rejected: 0 });
    expect(store.countByStatus('other')).toMatchObject({ succeeded: 1, crashed: 0, queued: 0 });
  });

  it('answers the usual result queries over 10,000 experiments in well under 20 ms', () => {
    const store = openWithSession();
    store.close();
    // bulk rows straight into the file: the point is the read path, not 10,000 lifecycles
    const raw = new Database(dbPath);
    raw.exec(`
      WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
      INSERT INTO experiments (session_tag, description, status, parent_commit, candidate_commit, val_bpb, queued_at)
      SELECT 'main', 'experiment ' || i,
             CASE i % 4 WHEN 0 THEN 'succeeded' WHEN 1 THEN 'crashed' WHEN 2 THEN 'timed_out' ELSE 'cancelled' END,
             'p', 'c', CASE WHEN i % 4 = 0 THEN 1.0 + ((i * 7919) % 1000) / 1000.0 END, i
      FROM n;
      UPDATE experiments SET decision = 'keep', decision_reason = 'x', decided_at = 1 WHERE status = 'succeeded' AND id % 3 = 0;
    `);
    raw.close();
    const reopened = open();
    const queries = [
      () => reopened.listExperiments({ order: 'id', limit: 20 }),
      () => reopened.listExperiments({ order: 'best', limit: 20 }),
      () => reopened.listExperiments({ order: 'best', status: ['succeeded'], limit: 20 }),
      () => reopened.listExperiments({ status: 'queued', order: 'id', ascending: true }),
      () => reopened.bestExperiment('main'),
      () => reopened.countByStatus(),
    ];
    for (const query of queries) {
      query();
      const times: number[] = [];
      for (let i = 0; i < 9; i++) {
        const start = performance.now();
        query();
        times.push(performance.now() - start);
      }
      times.sort((x, y) => x - y);
      expect(times[4]).toBeLessThan(20);
    }
    const best = reopened.listExperiments({ order: 'best', limit: 2600 }).map((x) => x.valBpb);
    expect(best.slice(0, 2500)).toEqual(best.slice(0, 2500).sort((x, y) => (x as number) - (y as number)));
    expect(best.slice(2500)).toEqual(Array(100).fill(null));
  });
});

describe('reconcileOnStart', () => {
  it('marks experiments left running as crashed (naming the pid) and returns the queue FIFO', () => {
    const store = openWithSession();
    const withPid = queue(store, 'had a process');
    store.markRunning(withPid.id, { slot: 0, pid: 31337, startedAt: 1_000 });
    const withoutPid = queue(store, 'before spawn');
    store.markRunning(withoutPid.id, { slot: 1, startedAt: 2_000 });
    const waitingFirst = queue(store, 'waiting 1');
    const waitingSecond = queue(store, 'waiting 2');
    const done = finish(store, 'succeeded', 1.0);
    store.close();

    const restarted = open();
    const { interrupted, queued } = restarted.reconcileOnStart(10_000);
    expect(interrupted.map((e) => e.id)).toEqual([withPid.id, withoutPid.id]);
    expect(interrupted[0]).toMatchObject({ status: 'crashed', finishedAt: 10_000, durationMs: 9_000 });
    expect(interrupted[0].error).toMatch(/^server stopped while running \(pid 31337\)/);
    expect(interrupted[1].error).toMatch(/pid unknown/);
    expect(queued.map((e) => e.id)).toEqual([waitingFirst.id, waitingSecond.id]);
    expect(restarted.getExperiment(done.id)?.status).toBe('succeeded');
    expect(restarted.reconcileOnStart(11_000).interrupted).toEqual([]);
  });

  it('leaves running the experiments the new server follows on (re-attached Slurm jobs), with their cause-less rows intact', () => {
    const store = openWithSession();
    const followed = queue(store, 'its job goes on');
    store.markRunning(followed.id, { slot: 0, startedAt: 1_000 });
    const lost = queue(store, 'its job was cancelled');
    store.markRunning(lost.id, { slot: 1, startedAt: 2_000 });
    store.close();

    const restarted = open();
    const { interrupted } = restarted.reconcileOnStart(10_000, new Map([[lost.id, 'the server restarted; Slurm job 7 cancelled']]), new Set([followed.id]));
    expect(interrupted.map((e) => [e.id, e.status, e.error])).toEqual([[lost.id, 'crashed', 'the server restarted; Slurm job 7 cancelled']]);
    expect(restarted.getExperiment(followed.id)).toMatchObject({ status: 'running', slot: 0, startedAt: 1_000, error: null });
  });
});
