import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { constantNumber } from '../src/agent/plan.js';
import { changeConstant, CLI, connect, fails, makeWorkspace, ok, queryState, waitFinished, waitUntil, type Connected, expectSucceeded, serverEnv } from './helpers.js';

/** Parallel research on one node: several candidates against one head, several agents, several slots. */

const ENV = serverEnv();
const SOFTCAP = /^SOFTCAP = .*$/m;

async function httpClient(url: string, name: string): Promise<Client> {
  const client = new Client({ name, version: '1' });
  await client.connect(new StreamableHTTPClientTransport(new URL(url)));
  return client;
}

describe('two agents over HTTP, two CPU slots, one head (smoke profile)', () => {
  let workspace: string;
  let lab: ChildProcess;
  let alice: Client;
  let bob: Client;
  let head: string;
  const ids: { a?: number; b?: number } = {};

  beforeAll(async () => {
    workspace = await makeWorkspace('smoke');
    lab = spawn(process.execPath, [CLI, 'serve', '--workspace', workspace, '--http', '--port', '0', '--slots', '2'], { stdio: ['ignore', 'ignore', 'pipe'], env: ENV });
    let stderr = '';
    lab.stderr?.on('data', (chunk) => (stderr += chunk));
    await waitUntil(() => /at (http:\/\/\S+)/.test(stderr), 60);
    const url = /at (http:\/\/\S+)/.exec(stderr)?.[1] as string;
    alice = await httpClient(url, 'alice-host');
    bob = await httpClient(url, 'bob-host');
  }, 300_000);

  afterAll(async () => {
    await alice?.close();
    await bob?.close();
    if (workspace) spawnSync(process.execPath, [CLI, 'stop', '--workspace', workspace], { env: ENV, timeout: 60_000 });
    lab?.kill();
  });

  // The handicap all but stops learning, so restoring the learning rates is a gain far beyond the
  // noise even when two runs share the two cores (and so get fewer steps than the handicap had).
  it('sets up a head worth improving: baseline, noise floor, then a kept handicap (learning rates / 1000)', async () => {
    await ok(alice, 'start_session', { tag: 'parallel' });
    const baseline = await ok(alice, 'run_experiment', { description: 'baseline', agent: 'alice' });
    await waitFinished(alice, baseline.experiment.id);
    expect((await ok(alice, 'commit_or_revert', { experiment_id: baseline.experiment.id })).decision).toBe('keep');
    const noise = await ok(alice, 'measure_noise', { k: 2 });
    for (const e of noise.experiments) await waitFinished(alice, e.id);
    const text = (await ok(alice, 'read_train_py')).text;
    const handicap = await ok(alice, 'run_experiment', {
      description: 'learning rates / 1000',
      agent: 'alice',
      edits: ['MATRIX_LR', 'EMBED_LR', 'HEAD_LR'].map((name) => changeConstant(text, name, (v) => String(v / 1000), 'smoke')),
    });
    expect(handicap.restored_train_py).toBe(false);
    expectSucceeded((await waitFinished(alice, handicap.experiment.id)));
    head = (await ok(alice, 'commit_or_revert', { experiment_id: handicap.experiment.id, action: 'keep' })).head;
  }, 300_000);

  it('claims: each agent submits a change against the head; the same change from the same parent runs once; each names its proposer', async () => {
    const headText = (await ok(alice, 'read_train_py', { experiment_id: queryState(workspace, "SELECT id FROM experiments WHERE description = 'learning rates / 1000'")[0].id })).text;
    const working = (await ok(bob, 'read_train_py')).hash;
    // Two real gains over the handicap (the learning rates restored), each with its own extra.
    const restore = ['MATRIX_LR', 'EMBED_LR', 'HEAD_LR'].map((name) => changeConstant(headText, name, (v) => String(+(v * 1000).toPrecision(6)), 'smoke'));
    const withWarmdown = [...restore, changeConstant(headText, 'WARMDOWN_FRAC', () => '0.4')];
    const a = await ok(alice, 'run_experiment', { description: 'LRs back up, warm-down 0.4', agent: 'alice', edits: withWarmdown });
    expect(await fails(bob, 'run_experiment', { description: 'same idea', agent: 'bob', edits: withWarmdown })).toMatch(
      new RegExp(`already experiment ${a.experiment.id} \\("LRs back up, warm-down 0.4", (queued|running), proposed by alice\\)`),
    );
    const b = await ok(bob, 'run_experiment', {
      description: 'LRs back up, softcap 20',
      agent: 'bob',
      edits: [...restore, changeConstant(headText, 'SOFTCAP', () => '20.0')],
    });
    ids.a = a.experiment.id;
    ids.b = b.experiment.id;
    expect([a.experiment.parent_commit, b.experiment.parent_commit]).toEqual([head, head]);
    expect((await ok(bob, 'read_train_py')).hash).toBe(working);
    const [doneA, doneB] = await Promise.all([waitFinished(alice, a.experiment.id), waitFinished(bob, b.experiment.id)]);
    expect([doneA.agent, doneB.agent]).toEqual(['alice', 'bob']);
    expect([doneA.status, doneB.status]).toEqual(['succeeded', 'succeeded']);
    // Both ran at once, one per slot.
    expect(new Set([doneA.slot, doneB.slot])).toEqual(new Set([0, 1]));
    expect(Date.parse(doneA.started_at) < Date.parse(doneB.finished_at) && Date.parse(doneB.started_at) < Date.parse(doneA.finished_at)).toBe(true);
  }, 300_000);

  it('two real gains from one parent: auto keeps the better one first and re-runs the other on the new head', async () => {
    const [a, b] = [ids.a as number, ids.b as number].map((id) => queryState(workspace, 'SELECT * FROM experiments WHERE id = ?', id)[0]);
    const [better, worse] = a.val_bpb <= b.val_bpb ? [a, b] : [b, a];
    const first = await ok(alice, 'commit_or_revert', { experiment_id: worse.id });
    expect(first.decision, first.reason).toBe('inconclusive');
    expect(first.figures).toMatchObject({ rule: 'better_sibling', better: better.id });
    expect(first.next_step).toBe(`commit_or_revert({experiment_id: ${better.id}})`);

    const kept = await ok(bob, 'commit_or_revert', { experiment_id: better.id });
    expect(kept.decision, kept.reason).toBe('keep');
    expect(kept.reruns).toHaveLength(1);
    const { rerun } = kept.reruns[0];
    expect(kept.reruns[0].experiment).toBe(worse.id);
    const superseded = queryState(workspace, 'SELECT decision, decision_reason FROM experiments WHERE id = ?', worse.id)[0];
    expect(superseded.decision).toBe('discard');
    expect(superseded.decision_reason).toMatch(new RegExp(`superseded: .* measured again on the head as experiment ${rerun}`));

    const again = await waitFinished(alice, rerun);
    expect(again).toMatchObject({ status: 'succeeded', parent_commit: kept.head, rebase_of: worse.id, agent: worse.agent });
    // The re-run carries both changes: the kept one (its parent) and the superseded one.
    const text = (await ok(alice, 'read_train_py', { experiment_id: rerun })).text;
    const value = (constant: string) => Number(new RegExp(`^${constant}\\s*=\\s*([^#\\n]+?)\\s*(#|$)`, 'm').exec(text)?.[1]);
    expect(constantNumber(text, 'MATRIX_LR', 'smoke')).toBeGreaterThan(0.015);
    expect(value('EMBED_LR')).toBeGreaterThan(0.5);
    expect([value('WARMDOWN_FRAC'), value('SOFTCAP')]).toEqual([0.4, 20]);
  }, 300_000);

  it('a gain that finishes after the head moved is superseded by auto and re-run on the new head, not lost', async () => {
    const handicap = queryState(workspace, "SELECT id FROM experiments WHERE description = 'learning rates / 1000'")[0].id;
    const back = await ok(alice, 'undo', { to: handicap, reason: 'start the parallel round again from the handicap' });
    const headText = (await ok(alice, 'read_train_py', { experiment_id: handicap })).text;
    const restore = ['MATRIX_LR', 'EMBED_LR', 'HEAD_LR'].map((name) => changeConstant(headText, name, (v) => String(+(v * 1000).toPrecision(6)), 'smoke'));
    const fast = await ok(alice, 'run_experiment', { description: 'LRs back up, warm-down 0.45', agent: 'alice', edits: [...restore, changeConstant(headText, 'WARMDOWN_FRAC', () => '0.45')] });
    // A slow start-up (inside the start-up allowance, before the training clock) keeps it running past
    // the keep: 20 s, since under load the other run took long enough for 4 s to be over first.
    const anchor = SOFTCAP.exec(headText)?.[0] as string;
    const slow = await ok(bob, 'run_experiment', {
      description: 'LRs back up, softcap 18, slow start',
      agent: 'bob',
      edits: [...restore, { search: anchor, replace: 'SOFTCAP = 18.0\nimport time\ntime.sleep(20)' }],
    });
    expect(slow.experiment.parent_commit).toBe(back.to);
    await waitFinished(alice, fast.experiment.id);
    const kept = await ok(alice, 'commit_or_revert', { experiment_id: fast.experiment.id });
    expect(kept.decision, kept.reason).toBe('keep');
    expect(queryState(workspace, 'SELECT status FROM experiments WHERE id = ?', slow.experiment.id)[0].status).toMatch(/running|queued/);
    expect(kept.reruns).toEqual([]);

    expectSucceeded((await waitFinished(bob, slow.experiment.id)));
    const late = await ok(bob, 'commit_or_revert', { experiment_id: slow.experiment.id });
    expect(late.decision, late.reason).toBe('discard');
    expect(late.figures.rule).toBe('superseded');
    expect(late.reruns).toEqual([{ experiment: slow.experiment.id, rerun: late.scheduled[0] }]);
    const rerun = await waitFinished(bob, late.scheduled[0]);
    expect(rerun).toMatchObject({ status: 'succeeded', parent_commit: kept.head, rebase_of: slow.experiment.id, agent: 'bob' });
  }, 300_000);
});

describe('a crash streak pauses that agent only (one slot)', () => {
  let workspace: string;
  let server: Connected;

  beforeAll(async () => {
    workspace = await makeWorkspace('smoke');
    server = await connect(workspace, ['--slots', '1']);
  }, 300_000);

  afterAll(async () => {
    await server?.client.close();
  });

  it('three failed runs in a row hold the agent\'s queued runs and refuse its next one until it acknowledges; other agents go on', async () => {
    const { client } = server;
    await ok(client, 'start_session', { tag: 'crashes' });
    const text = (await ok(client, 'read_train_py')).text;
    const anchor = SOFTCAP.exec(text)?.[0] as string;
    const crash = (n: number) => [{ search: anchor, replace: `${anchor}\nraise RuntimeError("broken idea ${n}")` }];
    const softcap = (value: string) => [{ search: anchor, replace: `SOFTCAP = ${value}` }];
    const crashes = [];
    for (const n of [1, 2, 3]) crashes.push((await ok(client, 'run_experiment', { description: `broken ${n}`, agent: 'carol', edits: crash(n) })).experiment.id);
    const waiting = (await ok(client, 'run_experiment', { description: 'softcap 14', agent: 'carol', edits: softcap('14.0') })).experiment.id;
    for (const id of crashes) expect((await waitFinished(client, id)).status).toBe('crashed');

    // The pause is reported once the third crash is recorded; it holds the queued run.
    await waitUntil(async () => (await ok(client, 'status')).pausedAgents.length > 0, 60, "status to report carol's queue as paused");
    const status = await ok(client, 'status');
    expect(status.pausedAgents).toEqual([{ agent: 'carol', crashed: crashes, held: [waiting] }]);
    expect(status.nextStep).toMatch(/carol's queue is paused .*acknowledge_crashes/);
    expect(queryState(workspace, 'SELECT status FROM experiments WHERE id = ?', waiting)[0].status).toBe('queued');
    expect(await fails(client, 'run_experiment', { description: 'softcap 13', agent: 'carol', edits: softcap('13.0') })).toMatch(
      new RegExp(`The last 3 experiments proposed by carol \\(${crashes.join(', ')}\\) all failed .*broken idea 3.*acknowledge_crashes: true`),
    );

    const other = await ok(client, 'run_experiment', { description: 'softcap 16', agent: 'dave', edits: softcap('16.0') });
    expectSucceeded((await waitFinished(client, other.experiment.id)));
    expect(queryState(workspace, 'SELECT status FROM experiments WHERE id = ?', waiting)[0].status).toBe('queued');

    const resumed = await ok(client, 'run_experiment', { description: 'softcap 13', agent: 'carol', edits: softcap('13.0'), acknowledge_crashes: true });
    expectSucceeded((await waitFinished(client, waiting)));
    expectSucceeded((await waitFinished(client, resumed.experiment.id)));
    expect((await ok(client, 'status')).pausedAgents).toEqual([]);
  }, 300_000);
});
