import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { constantEdit, trainConstants } from '../src/agent/plan.js';
import { Workspace } from '../src/core/workspace.js';
import { CLI, call, closeServer, connect, fails, makeWorkspace, ok, pidAlive, queryState, waitFinished, waitUntil, type Connected, expectSucceeded, serverEnv } from './helpers.js';

/** One constant of train.py changed through a search/replace edit. */
async function patch(client: Client, name: string, value: string, extra: Record<string, unknown> = {}) {
  const source = extra.base_experiment ? await ok(client, 'read_train_py', { experiment_id: extra.base_experiment }) : await ok(client, 'read_train_py');
  return ok(client, 'apply_patch', { edits: [constantEdit(source.text, name, value)], expected_hash: source.hash, ...extra });
}

/** Every commit on the session branch since its start is exactly one experiment's measured change from its parent. */
async function expectBranchInvariant(workspace: string, tag: string) {
  const ws = new Workspace(workspace);
  const session = queryState(workspace, 'SELECT * FROM sessions WHERE tag = ?', tag)[0];
  const commits = (await ws.git.raw(['rev-list', '--reverse', `${session.base_commit}..refs/heads/autoresearch/${tag}`])).split('\n').filter(Boolean);
  for (const commit of commits) {
    const parent = (await ws.git.raw(['rev-parse', `${commit}^`])).trim();
    const rows = queryState(workspace, "SELECT * FROM experiments WHERE candidate_commit = ? AND kind = 'candidate' AND decision = 'keep'", commit);
    expect(rows, `commit ${commit} is a kept experiment`).toHaveLength(1);
    expect(rows[0].parent_commit, `experiment ${rows[0].id} was measured from the commit's git parent`).toBe(parent);
    const subject = (await ws.git.raw(['log', '-1', '--format=%s', commit])).trim();
    expect(subject).toBe(`exp ${rows[0].id}: ${rows[0].description}`);
  }
  return commits;
}

function spawnServer(workspace: string, env: Record<string, string> = {}) {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [CLI, 'serve', '--workspace', workspace, '--no-daemon'],
    env: { ...serverEnv(), ...env },
    stderr: 'pipe',
  });
  const client = new Client({ name: 'record-e2e', version: '0.0.1' });
  return { transport, client, connected: client.connect(transport) };
}

describe('the research record (smoke profile, real runs)', () => {
  let workspace: string;
  let server: Connected;
  let main: string;

  beforeAll(async () => {
    workspace = await makeWorkspace('smoke');
    server = await connect(workspace, [], 'record-e2e');
    main = (await ok(server.client, 'read_train_py')).text;
  }, 600_000);

  afterAll(async () => {
    await server?.client.close();
  });

  let baselineId: number;
  let bId: number;

  it('A queued, B patched, A discarded, B kept: the branch holds only B, and train.py returns to the head after queueing', async () => {
    const { client } = server;
    await ok(client, 'start_session', { tag: 'ab' });
    const baseline = await ok(client, 'run_experiment', { description: 'baseline' });
    baselineId = baseline.experiment.id;
    expectSucceeded((await waitFinished(client, baselineId)));
    const first = await ok(client, 'commit_or_revert', { experiment_id: baselineId });
    expect(first.decision).toBe('keep');
    expect(first.figures.rule).toBe('baseline');

    await patch(client, 'MATRIX_LR', '0.01');
    const a = await ok(client, 'run_experiment', { description: 'A: MATRIX_LR -> 0.01' });
    expect(a.restored_train_py).toBe(true);
    expect((await ok(client, 'read_train_py')).text).toBe(main);
    expect(a.experiment.change_kind).toBe('code');

    await patch(client, 'WARMDOWN_FRAC', '0.3');
    const b = await ok(client, 'run_experiment', { description: 'B: WARMDOWN_FRAC 0.5 -> 0.3' });
    bId = b.experiment.id;
    expect(b.experiment.parent_commit).toBe(a.experiment.parent_commit);
    const bText = (await ok(client, 'read_train_py', { experiment_id: bId })).text as string;
    const matrixLr = (text: string) => trainConstants(text).get('MATRIX_LR')?.line;
    expect(matrixLr(bText)).toBe(matrixLr(main));
    expect(bText).toMatch(/^WARMDOWN_FRAC = 0\.3/m);

    await waitFinished(client, a.experiment.id);
    await waitFinished(client, bId);
    expect((await ok(client, 'commit_or_revert', { experiment_id: a.experiment.id, action: 'discard' })).decision).toBe('discard');
    const kept = await ok(client, 'commit_or_revert', { experiment_id: bId, action: 'keep' });
    expect(kept.decision).toBe('keep');
    const headText = (await ok(client, 'read_train_py')).text as string;
    expect(matrixLr(headText)).toBe(matrixLr(main));
    expect(headText).toMatch(/^WARMDOWN_FRAC = 0\.3/m);
    expect(await expectBranchInvariant(workspace, 'ab')).toHaveLength(2);
  }, 240_000);

  it('stacks on an undecided experiment only when asked, records it, and keeps it only after its base', async () => {
    const { client } = server;
    await patch(client, 'NS_STEPS', '4');
    const d = await ok(client, 'run_experiment', { description: 'D: NS_STEPS 5 -> 4' });
    const dId = d.experiment.id;
    const stackedPatch = await patch(client, 'MUON_MOMENTUM', '0.9', { base_experiment: dId });
    expect(stackedPatch.base_experiment).toBe(dId);
    const c = await ok(client, 'run_experiment', { description: 'C: MUON_MOMENTUM 0.95 -> 0.9 on D' });
    expect(c.stacked_on).toBe(dId);
    expect(c.experiment.stacked_on).toBe(dId);
    expect(c.experiment.parent_commit).toBe(d.experiment.commit);
    expect((await ok(client, 'read_train_py')).text).toBe((await ok(client, 'read_train_py', { experiment_id: bId })).text);
    await waitFinished(client, dId);
    await waitFinished(client, c.experiment.id);
    expect(await fails(client, 'commit_or_revert', { experiment_id: c.experiment.id, action: 'keep' })).toMatch(new RegExp(`decide ${dId} first`));
    expect((await ok(client, 'commit_or_revert', { experiment_id: dId, action: 'keep' })).decision).toBe('keep');
    expect((await ok(client, 'commit_or_revert', { experiment_id: c.experiment.id, action: 'keep' })).decision).toBe('keep');
    expect(await expectBranchInvariant(workspace, 'ab')).toHaveLength(4);
    // stacking on another session's experiment is refused
    await ok(client, 'start_session', { tag: 'other' });
    expect(await fails(client, 'run_experiment', { description: 'x', base_experiment: dId })).toMatch(/belongs to session "ab"/);
    await ok(client, 'start_session', { tag: 'ab', resume: true });
  }, 240_000);

  it('a decided experiment names undo; undo moves back to a kept commit, keeps refs, and refuses a never-kept target', async () => {
    const { client } = server;
    const message = await fails(client, 'commit_or_revert', { experiment_id: bId, action: 'discard' });
    expect(message).toMatch(/already decided: keep/);
    expect(message).toMatch(/undo\(/);
    const discarded = queryState(workspace, "SELECT id FROM experiments WHERE decision = 'discard' LIMIT 1")[0].id;
    expect(await fails(client, 'undo', { to: discarded, reason: 'nope' })).toMatch(/never kept/);
    const headBefore = (await ok(client, 'status')).head;
    const undone = await ok(client, 'undo', { to: bId, reason: 'D and C did not replicate' });
    expect(undone.from).toBe(headBefore);
    expect(undone.undone).toHaveLength(2);
    const ws = new Workspace(workspace);
    expect((await ws.git.raw(['rev-parse', undone.saved_ref])).trim()).toBe(headBefore);
    expect((await ok(client, 'read_train_py')).text).toBe((await ok(client, 'read_train_py', { experiment_id: bId })).text);
    const rows = queryState(workspace, 'SELECT undone_by FROM experiments WHERE id IN (' + undone.undone.join(',') + ')');
    expect(rows.every((r) => r.undone_by !== null)).toBe(true);
    expect(queryState(workspace, "SELECT count(*) AS n FROM audit_log WHERE kind = 'event' AND method = 'undo'")[0].n).toBe(1);
    const moves = queryState(workspace, 'SELECT kind, state, reason FROM branch_moves ORDER BY id');
    expect(moves.at(-1)).toEqual({ kind: 'undo', state: 'done', reason: 'D and C did not replicate' });
    expect(moves.every((m) => m.state === 'done')).toBe(true);
    expect(await expectBranchInvariant(workspace, 'ab')).toHaveLength(2);
  }, 60_000);

  it('a new session starts from the baseline, or from a named session\'s head, with that train.py in the working file', async () => {
    const { client } = server;
    const fresh = await ok(client, 'start_session', { tag: 'second' });
    expect(fresh.start_from).toBe('baseline');
    expect((await ok(client, 'read_train_py')).text).toBe(main);
    const from = await ok(client, 'start_session', { tag: 'third', from: 'ab' });
    expect(from.start_from).toBe('ab');
    expect((await ok(client, 'read_train_py')).text).toBe((await ok(client, 'read_train_py', { experiment_id: bId })).text);
    expect(queryState(workspace, "SELECT start_from FROM sessions WHERE tag = 'third'")[0].start_from).toBe('ab');
    expect(await fails(client, 'start_session', { tag: 'third' })).toMatch(/resume: true/);
    expect(await fails(client, 'start_session', { tag: 'fourth', from: 'nope' })).toMatch(/No session "nope"/);
    const resumed = await ok(client, 'start_session', { tag: 'ab', resume: true });
    expect(resumed.resumed).toBe(true);
    const status = await ok(client, 'status');
    expect(status.session).toBe('ab');
    expect(status.nextStep).toMatch(/measure_noise/);
  }, 60_000);

  it('measures the noise floor with server seeds, flags seed-only changes, and decides auto against it', async () => {
    const { client } = server;
    const measured = await ok(client, 'measure_noise', { k: 3 });
    expect(measured.experiments).toHaveLength(3);
    const seeds = measured.experiments.map((e: any) => e.seed);
    expect(new Set(seeds).size).toBe(3);
    expect(measured.experiments.every((e: any) => e.kind === 'noise')).toBe(true);
    for (const e of measured.experiments) await waitFinished(client, e.id);
    const status = await ok(client, 'status');
    expect(status.noise.k).toBe(3);
    expect(status.noise.sigma).toBeGreaterThanOrEqual(0);
    const row = queryState(workspace, "SELECT * FROM noise_measurements WHERE state = 'done'")[0];
    expect(row.mad).toBeGreaterThanOrEqual(0);
    expect(JSON.parse(row.values_json)).toHaveLength(3);
    const results = await ok(client, 'get_results', { format: 'tsv' });
    expect(results.noise_floor.k).toBe(3);
    expect(results.tsv).toMatch(/^# noise: sigma/m);

    // A second measurement is pooled with the first (each around its own mean), not put in its place.
    const again = await ok(client, 'measure_noise', { k: 2 });
    for (const e of again.experiments) await waitFinished(client, e.id);
    const rows = queryState(workspace, "SELECT sigma, runs FROM noise_measurements WHERE state = 'done' ORDER BY id");
    expect(rows.map((r: any) => r.runs)).toEqual([3, 2]);
    const pooled = await ok(client, 'status');
    expect(pooled.noise).toMatchObject({ pooled: 2, k: 5 });
    expect(pooled.noise.sigma).toBeCloseTo(Math.sqrt((2 * rows[0].sigma ** 2 + rows[1].sigma ** 2) / 3), 12);

    // SEED comes from prepare.py ($AUTORESEARCH_SEED); fixing the seed in train.py changes only seeds.
    const seeded = await ok(client, 'read_train_py');
    await ok(client, 'apply_patch', { edits: [{ search: 'torch.manual_seed(SEED)', replace: 'torch.manual_seed(7)' }], expected_hash: seeded.hash });
    const seedOnly = await ok(client, 'run_experiment', { description: 'seed 42 -> 7' });
    expect(seedOnly.experiment.change_kind).toBe('seed_only');
    expect(seedOnly.warnings.join(' ')).toMatch(/only seeds/);
    await waitFinished(client, seedOnly.experiment.id);
    expect(await fails(client, 'commit_or_revert', { experiment_id: seedOnly.experiment.id, action: 'keep' })).toMatch(/only seeds/);
    const auto = await ok(client, 'commit_or_revert', { experiment_id: seedOnly.experiment.id });
    expect(auto.decision).toBe('discard');

    // Far too low learning rates: worse by far more than machine load moves a wall-clock-budget
    // run, and still a finished run (a too-high or lopsided change can diverge, and a crash would
    // be discarded without the noise rule).
    await patch(client, 'MATRIX_LR', '0.00002');
    await patch(client, 'EMBED_LR', '0.0006');
    await patch(client, 'HEAD_LR', '0.000016');
    const bad = await ok(client, 'run_experiment', { description: 'learning rates / 1000' });
    const badRun = await waitFinished(client, bad.experiment.id);
    expect(badRun.status, JSON.stringify(badRun)).toBe('succeeded');
    expect(await fails(client, 'commit_or_revert', { experiment_id: bad.experiment.id, confidence: 1.5 })).toMatch(/between 0 and 1/);
    const decided = await ok(client, 'commit_or_revert', { experiment_id: bad.experiment.id, confidence: 0.9 });
    expect(decided.decision).toBe('discard');
    expect(decided.figures).toMatchObject({ rule: 'noise_margin', confidence: 0.9, head_runs: expect.any(Number) });
    expect(decided.figures.head_runs).toBeGreaterThanOrEqual(4);
    const stored = queryState(workspace, 'SELECT decision_figures FROM experiments WHERE id = ?', bad.experiment.id)[0];
    expect(JSON.parse(stored.decision_figures).margin).toBeCloseTo(decided.figures.margin, 12);
  }, 300_000);

  it('refuses a patch that carries U+FFFD', async () => {
    const current = await ok(server.client, 'read_train_py');
    const line = /^SOFTCAP = .*$/m.exec(current.text)?.[0] as string;
    expect(await fails(server.client, 'apply_patch', { edits: [{ search: line, replace: `${line} # caf\ufffd` }] })).toMatch(/U\+FFFD/);
    expect((await ok(server.client, 'read_train_py')).hash).toBe(current.hash);
  });

  it('cancels a running experiment at once, without waiting for the run', async () => {
    const { client } = server;
    const current = await ok(client, 'read_train_py');
    const anchor = /^SOFTCAP = .*$/m.exec(current.text)?.[0] as string;
    await ok(client, 'apply_patch', { edits: [{ search: anchor, replace: `${anchor}\nimport time\ntime.sleep(600)` }] });
    const run = await ok(client, 'run_experiment', { description: 'sleeps' });
    for (let i = 0; i < 100; i += 1) {
      const status = (await ok(client, 'get_results', { experiment_id: run.experiment.id })).experiments[0].status;
      if (status === 'running') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const started = Date.now();
    const cancelled = await ok(client, 'cancel_experiment', { experiment_id: run.experiment.id });
    expect(cancelled.experiment.status).toBe('cancelled');
    // The run sleeps 600 s: a cancel that waited for it would take minutes, not these seconds (loose for a loaded machine).
    expect(Date.now() - started).toBeLessThan(20_000);
  }, 60_000);

  it('passes PRAGMA integrity_check with the system SQLite', () => {
    const script = `import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print(sqlite3.sqlite_version); print(c.execute('PRAGMA integrity_check').fetchall()[0][0])`;
    const out = spawnSync('/usr/bin/python3', ['-c', script, join(workspace, '.autoresearch', 'state.db')], { encoding: 'utf8' });
    expect(out.status, out.stderr).toBe(0);
    expect(out.stdout.trim().split('\n')[1]).toBe('ok');
  });
});

describe('crash repair and the server lock (smoke profile)', () => {
  let workspace: string;
  beforeAll(async () => {
    workspace = await makeWorkspace('smoke');
  }, 600_000);

  it('a fresh workspace passes PRAGMA integrity_check with the system SQLite', () => {
    const script = `import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print(c.execute('PRAGMA integrity_check').fetchall()[0][0])`;
    const out = spawnSync('/usr/bin/python3', ['-c', script, join(workspace, '.autoresearch', 'state.db')], { encoding: 'utf8' });
    expect(out.stdout.trim()).toBe('ok');
  });

  it('two servers: the second is refused while the first lives, and takes over once it is killed', async () => {
    const first = await connect(workspace);
    const second = spawnSync(process.execPath, [CLI, 'serve', '--workspace', workspace, '--no-daemon'], { input: '', encoding: 'utf8', timeout: 30_000 });
    expect(second.status).toBe(1);
    expect(second.stderr).toMatch(/Another autoresearch-mcp server \(pid \d+\) is serving/);
    const firstPid = first.transport.pid as number;
    process.kill(firstPid, 'SIGKILL');
    await waitUntil(() => !pidAlive(firstPid), 20, 'the killed server to be gone');
    const third = await connect(workspace);
    expect((await ok(third.client, 'status')).workspace).toBe(workspace);
    await closeServer(third);
  }, 60_000);

  it('two servers started at the same instant: exactly one serves', async () => {
    const { spawn } = await import('node:child_process');
    const children = [0, 1].map(() => spawn(process.execPath, [CLI, 'serve', '--workspace', workspace, '--no-daemon'], { stdio: ['pipe', 'ignore', 'pipe'] }));
    const exits = children.map((child) => new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code))));
    const early = await Promise.race([Promise.all(exits), new Promise((r) => setTimeout(() => r('timeout'), 5000))]);
    expect(early).toBe('timeout'); // one is still serving
    // The loser has exited (or exits now, however slow the machine), refused with status 1.
    expect(await Promise.any(exits)).toBe(1);
    for (const child of children) child.stdin?.end();
    await Promise.all(exits);
  }, 30_000);

  it('a stale server.pid naming a live, unrelated process does not lock the workspace out (pid reuse)', async () => {
    const { writeFileSync } = await import('node:fs');
    writeFileSync(join(workspace, '.autoresearch', 'server.pid'), String(process.pid));
    const server = await connect(workspace);
    expect((await ok(server.client, 'status')).workspace).toBe(workspace);
    await closeServer(server);
  }, 30_000);

  it('killed after the branch moved but before the decision was written: the next start completes the keep', async () => {
    const server = await connect(workspace);
    await ok(server.client, 'start_session', { tag: 'crash' });
    const run = await ok(server.client, 'run_experiment', { description: 'baseline' });
    await waitFinished(server.client, run.experiment.id);
    await closeServer(server);

    const doomed = spawnServer(workspace, { AUTORESEARCH_CRASH_AT: 'after_branch_move' });
    await doomed.connected;
    const result = await call(doomed.client, 'commit_or_revert', { experiment_id: run.experiment.id }).catch((error) => error);
    expect(result).toBeInstanceOf(Error);
    const pending = queryState(workspace, 'SELECT state FROM branch_moves');
    expect(pending).toEqual([{ state: 'intent' }]);
    expect(queryState(workspace, 'SELECT decision FROM experiments WHERE id = ?', run.experiment.id)[0].decision).toBeNull();

    const again = await connect(workspace);
    const status = await ok(again.client, 'status');
    expect(status.head).toBe(run.experiment.commit);
    expect(queryState(workspace, 'SELECT decision FROM experiments WHERE id = ?', run.experiment.id)[0].decision).toBe('keep');
    expect(queryState(workspace, 'SELECT state FROM branch_moves')).toEqual([{ state: 'done' }]);
    await closeServer(again);
  }, 120_000);

  it('killed before the branch moved: the keep is abandoned and the experiment can be decided again', async () => {
    const server = await connect(workspace);
    const current = await ok(server.client, 'read_train_py');
    await ok(server.client, 'apply_patch', { edits: [constantEdit(current.text, 'NS_STEPS', '4')] });
    const run = await ok(server.client, 'run_experiment', { description: 'NS 4' });
    await waitFinished(server.client, run.experiment.id);
    const head = (await ok(server.client, 'status')).head;
    await closeServer(server);

    const doomed = spawnServer(workspace, { AUTORESEARCH_CRASH_AT: 'before_branch_move' });
    await doomed.connected;
    await call(doomed.client, 'commit_or_revert', { experiment_id: run.experiment.id, action: 'keep' }).catch(() => undefined);

    const again = await connect(workspace);
    expect((await ok(again.client, 'status')).head).toBe(head);
    expect(queryState(workspace, 'SELECT state FROM branch_moves ORDER BY id DESC LIMIT 1')[0].state).toBe('abandoned');
    expect((await ok(again.client, 'commit_or_revert', { experiment_id: run.experiment.id, action: 'discard' })).decision).toBe('discard');
    await closeServer(again);
  }, 120_000);

  it('killed in the middle of an undo: the next start completes it from where the ref is', async () => {
    const kept = queryState(workspace, "SELECT id, candidate_commit FROM experiments WHERE decision = 'keep' ORDER BY id DESC LIMIT 1")[0];
    const session = queryState(workspace, "SELECT base_commit FROM sessions WHERE tag = 'crash'")[0];
    const doomed = spawnServer(workspace, { AUTORESEARCH_CRASH_AT: 'after_branch_move' });
    await doomed.connected;
    await call(doomed.client, 'undo', { to: 'baseline', reason: 'crash test' }).catch(() => undefined);
    expect(queryState(workspace, 'SELECT kind, state FROM branch_moves ORDER BY id DESC LIMIT 1')[0]).toEqual({ kind: 'undo', state: 'intent' });
    const again = await connect(workspace);
    expect((await ok(again.client, 'status')).head).toBe(session.base_commit);
    expect(queryState(workspace, 'SELECT state FROM branch_moves ORDER BY id DESC LIMIT 1')[0].state).toBe('done');
    expect(queryState(workspace, 'SELECT undone_by FROM experiments WHERE id = ?', kept.id)[0].undone_by).not.toBeNull();
    const events = queryState(workspace, "SELECT message FROM audit_log WHERE kind = 'event' AND method = 'reconcile'");
    expect(events.some((e) => /record was completed/.test(e.message))).toBe(true);
    await closeServer(again);
  }, 60_000);

  it('killed inside run_experiment before the commit exists: no row waits forever', async () => {
    const doomed = spawnServer(workspace, { AUTORESEARCH_CRASH_AT: 'after_preparing_row' });
    await doomed.connected;
    await call(doomed.client, 'run_experiment', { description: 'never committed' }).catch(() => undefined);
    const row = queryState(workspace, "SELECT id, status FROM experiments WHERE description = 'never committed'")[0];
    expect(row.status).toBe('preparing');
    const again = await connect(workspace);
    const result = await ok(again.client, 'get_results', { experiment_id: row.id });
    expect(result.experiments[0].status).toBe('cancelled');
    expect(result.experiments[0].error).toMatch(/before its candidate commit existed/);
    await closeServer(again);
  }, 60_000);

  it('killed after the commit but before it was queued: the next start queues and runs it', async () => {
    const doomed = spawnServer(workspace, { AUTORESEARCH_CRASH_AT: 'after_candidate_commit' });
    await doomed.connected;
    await call(doomed.client, 'run_experiment', { description: 'committed, not queued' }).catch(() => undefined);
    const row = queryState(workspace, "SELECT id, status FROM experiments WHERE description = 'committed, not queued'")[0];
    expect(row.status).toBe('preparing');
    const again = await connect(workspace);
    const done = await waitFinished(again.client, row.id);
    expectSucceeded(done);
    expect(done.commit).toMatch(/^[0-9a-f]{40}$/);
    await closeServer(again);
  }, 90_000);
});

describe('auto before and after the noise floor, with confirmation runs (smoke profile)', () => {
  let workspace: string;
  let server: Connected;
  beforeAll(async () => {
    workspace = await makeWorkspace('smoke');
    server = await connect(workspace, [], 'auto-e2e');
  }, 600_000);
  afterAll(async () => {
    await server?.client.close();
  });

  it('schedules the noise runs instead of keeping, then decides with figures; confirm re-runs candidate and head in seed pairs', async () => {
    const { client } = server;
    await ok(client, 'start_session', { tag: 'auto' });
    const baseline = await ok(client, 'run_experiment', { description: 'baseline' });
    await waitFinished(client, baseline.experiment.id);
    expect((await ok(client, 'commit_or_revert', { experiment_id: baseline.experiment.id })).decision).toBe('keep');

    await patch(client, 'MATRIX_LR', '0.03');
    const run = await ok(client, 'run_experiment', { description: 'MATRIX_LR -> 0.03' });
    await waitFinished(client, run.experiment.id);
    const early = await ok(client, 'commit_or_revert', { experiment_id: run.experiment.id });
    expect(early.decision).toBe('inconclusive');
    expect(early.reason).toMatch(/noise floor .* not measured/);
    expect(early.scheduled).toHaveLength(3);
    expect(early.next_step).toMatch(/commit_or_revert/);
    expect(queryState(workspace, 'SELECT decision, verdict FROM experiments WHERE id = ?', run.experiment.id)[0]).toEqual({ decision: null, verdict: 'inconclusive' });
    const again = await ok(client, 'commit_or_revert', { experiment_id: run.experiment.id });
    expect(again.reason).toMatch(/in progress/);
    expect(queryState(workspace, "SELECT count(*) AS n FROM experiments WHERE kind = 'noise'")[0].n).toBe(3);
    for (const id of early.scheduled) await waitFinished(client, id);

    const confirming = await ok(client, 'commit_or_revert', { experiment_id: run.experiment.id, confirm: true, confirm_pairs: 2 });
    expect(confirming.decision).toBe('inconclusive');
    expect(confirming.scheduled).toHaveLength(4);
    const pairs = queryState(workspace, 'SELECT seed, candidate_commit, kind, confirms FROM experiments WHERE confirms = ? ORDER BY id', run.experiment.id);
    expect(pairs.map((p) => p.kind)).toEqual(['confirm', 'confirm', 'confirm', 'confirm']);
    expect(pairs[0].seed).toBe(pairs[1].seed);
    expect(pairs[2].seed).toBe(pairs[3].seed);
    expect(pairs[0].candidate_commit).toBe(run.experiment.commit);
    expect(pairs[1].candidate_commit).toBe(run.experiment.parent_commit);
    expect(await fails(client, 'commit_or_revert', { experiment_id: confirming.scheduled[0] })).toMatch(/confirm run .* not a change/);
    for (const id of confirming.scheduled) await waitFinished(client, id);

    const decided = await ok(client, 'commit_or_revert', { experiment_id: run.experiment.id });
    expect(['keep', 'discard', 'inconclusive']).toContain(decided.decision);
    expect(decided.figures).toMatchObject({ rule: 'noise_margin', candidate_runs: 3, confidence: 0.99, confirm_pairs_done: 2 });
    expect(decided.figures.worth_confirming).toBe(decided.decision === 'inconclusive' && decided.figures.gain >= 0.5 * decided.figures.margin);
    if (decided.decision === 'inconclusive') expect(decided.next_step).toMatch(decided.figures.worth_confirming ? /confirm: true/ : /discard/);
    expect(decided.figures.head_runs).toBeGreaterThanOrEqual(6);
    const results = await ok(client, 'get_results', { format: 'tsv', limit: 50 });
    const rows = (results.tsv as string).trim().split('\n').filter((r) => !r.startsWith('#'));
    expect(rows).toHaveLength(3); // header, baseline, the candidate: noise and confirm runs are not candidates
  }, 400_000);
});
