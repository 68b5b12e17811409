import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Workspace } from '../src/core/workspace.js';
import { changeConstant, connect, fails, makeWorkspace, ok, queryState, waitFinished, type Connected, expectSucceeded } from './helpers.js';

async function patchAndRun(server: Connected, description: string, edit: (text: string) => { search: string; replace: string }[]) {
  const current = await ok(server.client, 'read_train_py');
  await ok(server.client, 'apply_patch', { edits: edit(current.text), expected_hash: current.hash });
  const run = await ok(server.client, 'run_experiment', { description });
  return waitFinished(server.client, run.experiment.id);
}

/**
 * The whole loop on the cpu profile with the real train.py, driven over stdio by the SDK client:
 * a handicapped first run, a fix that improves, a regression, a crash, a run that never ends.
 */
describe('full research loop over stdio (cpu profile, real training)', () => {
  let workspace: string;
  let server: Connected;
  let original: string;

  beforeAll(async () => {
    workspace = await makeWorkspace('cpu');
    server = await connect(workspace, ['--ceiling-seconds', '75'], 'loop-e2e');
    await ok(server.client, 'start_session', { tag: 'e2e' });
    original = (await ok(server.client, 'read_train_py')).text;
  }, 600_000);

  afterAll(async () => {
    await server?.client.close();
  });

  let baseline: any;
  let handicapped: any;
  let improved: any;

  it('keeps the unmodified baseline as the first result, then measures the noise floor', async () => {
    const run = await ok(server.client, 'run_experiment', { description: 'baseline' });
    baseline = await waitFinished(server.client, run.experiment.id);
    expectSucceeded(baseline);
    const decided = await ok(server.client, 'commit_or_revert', { experiment_id: baseline.id, action: 'auto' });
    expect(decided.decision).toBe('keep');
    expect(decided.figures.rule).toBe('baseline');
    const noise = await ok(server.client, 'measure_noise', { k: 2 });
    for (const e of noise.experiments) await waitFinished(server.client, e.id);
    expect((await ok(server.client, 'status')).noise.k).toBe(2);
  }, 400_000);

  // The budget is wall-clock time, so machine load moves val_bpb by a few hundredths: each change
  // below is one that moves it far more (learning rates cut a thousandfold all but stop learning).
  it('discards a handicap by the noise rule, and keeps one by request', async () => {
    handicapped = await patchAndRun(server, 'handicap: learning rates / 1000', (text) =>
      ['MATRIX_LR', 'EMBED_LR', 'HEAD_LR'].map((name) => changeConstant(text, name, (v) => String(v / 1000), 'cpu')),
    );
    expectSucceeded(handicapped);
    expect(handicapped.val_bpb).toBeGreaterThan(baseline.val_bpb);
    const kept = await ok(server.client, 'commit_or_revert', { experiment_id: handicapped.id, action: 'keep' });
    expect(kept.decision).toBe('keep');
    expect(kept.head).toBe(handicapped.commit);
    expect(kept.figures.gain).toBeLessThan(0);
  }, 300_000);

  it('keeps a change that lowers val_bpb beyond the noise', async () => {
    improved = await patchAndRun(server, 'restore the tuned learning rates', (text) =>
      ['MATRIX_LR', 'EMBED_LR', 'HEAD_LR'].map((name) => {
        const line = (source: string) => new RegExp(`^${name}\\s*=.*$`, 'm').exec(source)?.[0] as string;
        return { search: line(text), replace: line(original) };
      }),
    );
    expectSucceeded(improved);
    expect(improved.val_bpb).toBeLessThan(handicapped.val_bpb);
    const decided = await ok(server.client, 'commit_or_revert', { experiment_id: improved.id, action: 'auto' });
    expect(decided.decision).toBe('keep');
    expect(decided.reason).toMatch(/beats the head beyond noise/);
  }, 300_000);

  it('discards a change that raises val_bpb; train.py is already back at the head', async () => {
    const regressed = await patchAndRun(server, 'learning rates far too low', (text) =>
      ['MATRIX_LR', 'EMBED_LR', 'HEAD_LR'].map((name) => changeConstant(text, name, (v) => String(v / 10000), 'cpu')),
    );
    expectSucceeded(regressed);
    expect(regressed.val_bpb).toBeGreaterThan(improved.val_bpb);
    const decided = await ok(server.client, 'commit_or_revert', { experiment_id: regressed.id, action: 'auto' });
    expect(decided.decision).toBe('discard');
    const now = await ok(server.client, 'read_train_py');
    expect(now.text).toBe((await ok(server.client, 'read_train_py', { experiment_id: improved.id })).text);
  }, 300_000);

  it('records a crash with its traceback, refuses to keep it, and auto-discards it', async () => {
    const crashed = await patchAndRun(server, 'typo in the model', (text) => {
      const anchor = /^SOFTCAP = .*$/m.exec(text)?.[0] as string;
      return [{ search: anchor, replace: `${anchor}\nraise RuntimeError("deliberate crash for the test")` }];
    });
    expect(crashed.status).toBe('crashed');
    expect(crashed.val_bpb).toBeNull();
    const log = await ok(server.client, 'get_run_log', { experiment_id: crashed.id, lines: 30 });
    expect(log.log).toContain('RuntimeError: deliberate crash for the test');
    expect(await fails(server.client, 'commit_or_revert', { experiment_id: crashed.id, action: 'keep' })).toMatch(/only a succeeded experiment can be kept/);
    const decided = await ok(server.client, 'commit_or_revert', { experiment_id: crashed.id, action: 'auto' });
    expect(decided.decision).toBe('discard');
    expect(decided.reason).toMatch(/crashed/);
  }, 300_000);

  // The supervisor's clock kills it first (docs/run-protocol.md); the wall-clock ceiling is only the
  // backstop. The loop starts after the first batch, so the budget's slack (not the longer start-up
  // allowance) is what ends it.
  it('kills a run that never ends at the supervisor allowance, before the wall-clock ceiling', async () => {
    const looped = await patchAndRun(server, 'train forever', (text) => {
      const anchor = /^( *)x, y = next\(train_loader\)$/m.exec(text) as RegExpExecArray;
      return [{ search: anchor[0], replace: `${anchor[0]}\n${anchor[1]}while True:\n${anchor[1]}    pass` }];
    });
    expect(looped.status).toBe('over_budget');
    expect(looped.error).toMatch(/over budget/);
    const decided = await ok(server.client, 'commit_or_revert', { experiment_id: looped.id, action: 'auto' });
    expect(decided.decision).toBe('discard');
  }, 300_000);

  it('renders results.tsv, keeps the branch history to the kept commits, and audits every call', async () => {
    const results = await ok(server.client, 'get_results', { format: 'tsv', limit: 50 });
    const rows = (results.tsv as string).trim().split('\n').filter((r) => !r.startsWith('#'));
    expect(rows[0]).toBe('commit\tval_bpb\tmemory_gb\tstatus\tdescription');
    expect(rows.slice(1).map((r) => r.split('\t')[3])).toEqual(['keep', 'keep', 'keep', 'discard', 'crash', 'crash']);

    const history = await new Workspace(workspace).history('autoresearch/e2e');
    expect(history.map((h) => h.commit)).toEqual([improved.commit, handicapped.commit, baseline.commit, expect.any(String)]);
    expect(history[3].subject).toMatch(/^baseline/);
    const refs = await new Workspace(workspace).git.raw(['for-each-ref', '--format=%(refname)', 'refs/autoresearch/discarded/']);
    expect(refs.trim().split('\n')).toHaveLength(3);

    const tools = queryState<{ tool: string; n: number }>(workspace, "SELECT tool, count(*) AS n FROM audit_log WHERE method = 'tools/call' GROUP BY tool");
    const counts = Object.fromEntries(tools.map((t) => [t.tool, t.n]));
    expect(counts.run_experiment).toBe(6);
    expect(counts.commit_or_revert).toBe(7);
    const clients = queryState(workspace, "SELECT DISTINCT client_name FROM audit_log WHERE method = 'tools/call'");
    expect(clients).toEqual([{ client_name: 'loop-e2e' }]);
    const events = queryState<{ method: string }>(workspace, "SELECT method FROM audit_log WHERE kind = 'event'");
    expect(events.map((e) => e.method)).toContain('over_budget');
  });
});
