import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { call, CLI, closeServer, connect, fails, makeWorkspace, ok, pidAlive, queryState, waitFinished, waitUntil, type Connected, expectSucceeded } from './helpers.js';

// A top-level constant of python/train.py (SEED now comes from prepare).
const TRAIN_LINE = /^SOFTCAP = .*$/m;

function experimentRow(workspace: string, id: number): any {
  return queryState(workspace, 'SELECT * FROM experiments WHERE id = ?', id)[0];
}

describe('server over stdio (smoke profile)', () => {
  let workspace: string;
  let server: Connected;

  beforeAll(async () => {
    workspace = await makeWorkspace('smoke');
    server = await connect(workspace);
  }, 600_000);

  afterAll(async () => {
    await server?.client.close();
  });

  it('lists the tools exactly as the committed snapshot', async () => {
    const { tools } = await server.client.listTools();
    await expect(JSON.stringify(tools, null, 2) + '\n').toMatchFileSnapshot('./snapshots/tools-list.json');
    for (const tool of tools) {
      expect(tool.outputSchema, tool.name).toBeDefined();
      expect(tool.annotations?.openWorldHint, tool.name).toBe(false);
    }
  });

  it('states the workflow in its instructions and serves program.md as a prompt and resources', async () => {
    expect(server.client.getInstructions()).toMatch(/run_experiment/);
    const prompt = await server.client.getPrompt({ name: 'program' });
    expect((prompt.messages[0].content as { text: string }).text).toMatch(/val_bpb/);
    const { resources } = await server.client.listResources();
    expect(resources.map((r) => r.uri)).toEqual(expect.arrayContaining(['autoresearch://train.py', 'autoresearch://prepare.py', 'autoresearch://program.md', 'autoresearch://results.tsv', 'autoresearch://chart.svg']));
    const prepare = await server.client.readResource({ uri: 'autoresearch://prepare.py' });
    expect((prepare.contents[0] as { text: string }).text).toMatch(/def finish_training/);
  });

  describe('bad input gets an isError result and changes nothing', () => {
    let before: { text: string; hash: string };
    beforeAll(async () => {
      before = await ok(server.client, 'read_train_py');
    });
    const unchanged = async () => expect((await ok(server.client, 'read_train_py')).hash).toBe(before.hash);

    it('a diff that does not apply', async () => {
      const diff = '--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n-this line is not there\n+x = 1\n context\n';
      expect(await fails(server.client, 'apply_patch', { diff })).toMatch(/apply|match|context/i);
      await unchanged();
    });
    it('a diff for another file, ../ or absolute paths', async () => {
      for (const path of ['prepare.py', '../train.py', '/etc/passwd', 'data/val.bin']) {
        const diff = `--- a/${path}\n+++ b/${path}\n@@ -1 +1 @@\n-a\n+b\n`;
        expect(await fails(server.client, 'apply_patch', { diff }), path).toMatch(/train\.py/);
      }
      await unchanged();
    });
    it('a symlink or binary patch', async () => {
      const link = 'diff --git a/train.py b/train.py\nnew mode 120000\n--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-a\n+/etc/passwd\n';
      expect(await fails(server.client, 'apply_patch', { diff: link })).toMatch(/symlink|mode/i);
      const binary = 'diff --git a/train.py b/train.py\nGIT binary patch\nliteral 0\nHcmV?d00001\n';
      expect(await fails(server.client, 'apply_patch', { diff: binary })).toMatch(/binary/i);
      await unchanged();
    });
    it('huge content and invalid UTF-8', async () => {
      const huge = [{ search: before.text.split('\n')[0], replace: '#'.repeat(2_000_000) }];
      expect(await fails(server.client, 'apply_patch', { edits: huge })).toMatch(/large|limit|bytes/i);
      const surrogate = [{ search: before.text.split('\n')[0], replace: `${before.text.split('\n')[0]} # \ud800` }];
      expect(await fails(server.client, 'apply_patch', { edits: surrogate })).toMatch(/UTF-8|unicode|surrogate/i);
      const nul = [{ search: before.text.split('\n')[0], replace: `${before.text.split('\n')[0]} # \u0000` }];
      expect(await fails(server.client, 'apply_patch', { edits: nul })).toMatch(/NUL|control|binary/i);
      await unchanged();
    });
    it('a stale hash', async () => {
      const edits = [{ search: before.text.split('\n')[0], replace: `${before.text.split('\n')[0]} ` }];
      expect(await fails(server.client, 'apply_patch', { edits, expected_hash: '0123456789abcdef' })).toMatch(/changed since you read it/);
      await unchanged();
    });
    it('a syntax error, with its line', async () => {
      const anchor = TRAIN_LINE.exec(before.text)?.[0] as string;
      const message = await fails(server.client, 'apply_patch', { edits: [{ search: anchor, replace: `${anchor}\ndef broken(:` }] });
      const line = before.text.split('\n').findIndex((l) => l === anchor) + 2;
      expect(message).toMatch(new RegExp(`line ${line}`));
      await unchanged();
    });
    it('a forbidden import, validation data and result-record access', async () => {
      const anchor = TRAIN_LINE.exec(before.text)?.[0] as string;
      for (const bad of ['import subprocess', 'import socket', 'from prepare import _load_val_tokens', 'x = open("data/val.bin", "rb").read()', 'import os\nos.environ["AUTORESEARCH_RESULT_PATH"]']) {
        expect(await fails(server.client, 'apply_patch', { edits: [{ search: anchor, replace: `${anchor}\n${bad}` }] }), bad).toMatch(/line \d+/);
      }
      await unchanged();
    });
    it('search text that occurs zero or several times', async () => {
      expect(await fails(server.client, 'apply_patch', { edits: [{ search: 'no such text anywhere', replace: 'x' }] })).toMatch(/not found|0 times|no match/i);
      expect(await fails(server.client, 'apply_patch', { edits: [{ search: 'import', replace: 'import' }] })).toMatch(/times|more than once|several/i);
      await unchanged();
    });
    it('neither or both of diff and edits', async () => {
      expect(await fails(server.client, 'apply_patch', {})).toMatch(/exactly one/);
      await unchanged();
    });
    it('an unknown experiment id', async () => {
      for (const tool of ['get_results', 'get_run_log', 'commit_or_revert', 'cancel_experiment', 'read_train_py']) {
        expect(await fails(server.client, tool, { experiment_id: 9999 }), tool).toMatch(/No experiment 9999/);
      }
    });
    it('a session tag that exists or starts with -', async () => {
      await ok(server.client, 'start_session', { tag: 'dup' });
      expect(await fails(server.client, 'start_session', { tag: 'dup' })).toMatch(/already exists/);
      expect(await fails(server.client, 'start_session', { tag: '--orphan' })).toMatch(/Invalid session tag/);
      expect(await fails(server.client, 'start_session', { tag: '-b' })).toMatch(/Invalid session tag/);
    });
    it('a symlinked train.py is never read or written through', async () => {
      const outside = join(workspace, '..', 'outside.py');
      await writeFile(outside, 'SECRET = 1\n');
      const trainPath = join(workspace, 'train.py');
      const saved = readFileSync(trainPath, 'utf8');
      await rename(trainPath, `${trainPath}.saved`);
      await symlink(outside, trainPath);
      try {
        expect(await fails(server.client, 'read_train_py')).toMatch(/symlink/);
        expect(await fails(server.client, 'apply_patch', { edits: [{ search: 'SECRET = 1', replace: 'SECRET = 2' }] })).toMatch(/symlink/);
        expect(readFileSync(outside, 'utf8')).toBe('SECRET = 1\n');
      } finally {
        await rm(trainPath);
        await rename(`${trainPath}.saved`, trainPath);
      }
      expect(readFileSync(trainPath, 'utf8')).toBe(saved);
    });
  });

  it('serialises concurrent patches: with the same expected hash exactly one wins', async () => {
    const current = await ok(server.client, 'read_train_py');
    const anchor = TRAIN_LINE.exec(current.text)?.[0] as string;
    const attempts = await Promise.all(
      [1, 2, 3].map((n) =>
        server.client.callTool({ name: 'apply_patch', arguments: { edits: [{ search: anchor, replace: `${anchor}\nRACE_${n} = ${n}` }], expected_hash: current.hash } }),
      ),
    );
    expect(attempts.filter((a) => !a.isError)).toHaveLength(1);
    const after = (await ok(server.client, 'read_train_py')).text as string;
    expect(after.match(/^RACE_\d = \d$/gm)).toHaveLength(1);
    await ok(server.client, 'apply_patch', { edits: [{ search: after.match(/^RACE_\d = \d$/m)?.[0] + '\n', replace: '' }] });
    expect((await ok(server.client, 'read_train_py')).hash).toBe(current.hash);
  });

  it('runs asynchronously: returns at once, reports progress while waiting, and refuses to decide before the end', async () => {
    await ok(server.client, 'start_session', { tag: 'async' });
    const run = await ok(server.client, 'run_experiment', { description: 'baseline' });
    expect(['queued', 'running']).toContain(run.experiment.status); // returned before the run ended
    expect(await fails(server.client, 'commit_or_revert', { experiment_id: run.experiment.id, action: 'keep' })).toMatch(/wait for it/);
    const progress: number[] = [];
    const result = await server.client.callTool(
      { name: 'get_results', arguments: { experiment_id: run.experiment.id, wait_seconds: 40 } },
      undefined,
      { onprogress: (p) => progress.push(p.progress), timeout: 60_000 },
    );
    const experiment = (result.structuredContent as any).experiments[0];
    expectSucceeded(experiment);
    expect(experiment.val_bpb).toBeGreaterThan(0);
    expect(progress.length).toBeGreaterThan(0);
    expect([...progress].sort((a, b) => a - b)).toEqual(progress);
  }, 120_000);

  it('keeps the text a model reads short: train.py as a diff since a hash, results in a few lines, structured content complete', async () => {
    const { client } = server;
    await ok(client, 'start_session', { tag: 'compact' });
    const text = async (name: string, args: Record<string, unknown> = {}) => {
      const result = await call(client, name, args);
      expect(result.isError, name).toBeFalsy();
      return { text: result.content.map((c) => c.text).join('\n'), structured: result.structuredContent };
    };
    const full = await text('read_train_py');
    expect(full.text).toContain(full.structured.text);
    const same = await text('read_train_py', { since_hash: full.structured.hash });
    expect(same.text).toMatch(/unchanged since hash/);
    expect(same.text.length).toBeLessThan(300);
    expect(same.structured).toMatchObject({ text: full.structured.text, diff: '' });

    const anchor = TRAIN_LINE.exec(full.structured.text)?.[0] as string;
    const patched = await ok(client, 'apply_patch', { edits: [{ search: anchor, replace: 'SOFTCAP = 14.0' }], expected_hash: full.structured.hash });
    const changed = await text('read_train_py', { since_hash: full.structured.hash });
    expect(changed.structured.hash).toBe(patched.hash);
    expect(changed.text).toMatch(/^-SOFTCAP = 15\.0.*$/m);
    expect(changed.text).toMatch(/^\+SOFTCAP = 14\.0$/m);
    expect(changed.text.length).toBeLessThan(1000);
    expect(changed.structured.text).not.toBe(full.structured.text);
    const unknown = await text('read_train_py', { since_hash: 'not-a-hash' });
    expect(unknown.text).toMatch(/not a version of train.py/);
    expect(unknown.text).toContain(changed.structured.text);

    const run = await text('run_experiment', { description: 'SOFTCAP 15 -> 14' });
    expect(run.structured.train_py_hash).toBe(full.structured.hash);
    expect(run.text).toContain(`hash ${full.structured.hash}`);
    const id = run.structured.experiment.id;
    let waited = await text('get_results', { experiment_id: id, wait_seconds: 45 });
    while (['preparing', 'queued', 'running'].includes(waited.structured.experiments[0].status)) {
      expect(waited.text).toMatch(/call get_results|again/i);
      waited = await text('get_results', { experiment_id: id, wait_seconds: 45 });
    }
    expectSucceeded(waited.structured.experiments[0]);
    expect(waited.text).toContain(`val_bpb ${waited.structured.experiments[0].val_bpb.toFixed(6)}`);
    expect(waited.text).toMatch(/Undecided: commit_or_revert/);
    expect(waited.text.length).toBeLessThan(800);
    expect(Object.keys(waited.structured.experiments[0])).toEqual(expect.arrayContaining(['decision_figures', 'queued_at', 'total_tokens_M', 'seed']));
    const list = await text('get_results', { limit: 3 });
    expect(list.text.split('\n')).toHaveLength(1 + list.structured.experiments.length);
    expect(list.text).toMatch(new RegExp(`^#${id} succeeded`, 'm'));

    const decided = await text('commit_or_revert', { experiment_id: id, action: 'discard' });
    expect(decided.text).toContain(`hash ${decided.structured.train_py_hash}`);
    expect(decided.structured.train_py_hash).toBe(full.structured.hash);
    const status = await text('status');
    expect(status.text).toMatch(/^Next: /m);
    expect(status.text.length).toBeLessThan(1500);
  }, 180_000);

  it('keeps only from the current head; a stale candidate is re-run rebased', async () => {
    await ok(server.client, 'start_session', { tag: 'stale' });
    const base = await ok(server.client, 'read_train_py');
    const anchor = TRAIN_LINE.exec(base.text)?.[0] as string;
    await ok(server.client, 'apply_patch', { edits: [{ search: anchor, replace: `${anchor}\nIDEA_A = 1` }] });
    const a = await ok(server.client, 'run_experiment', { description: 'idea A' });
    // queueing returned train.py to the head: idea B starts clean
    expect((await ok(server.client, 'read_train_py')).hash).toBe(base.hash);
    const otherAnchor = /^[A-Z_]+ = .*$/m.exec(base.text)?.[0] as string;
    await ok(server.client, 'apply_patch', { edits: [{ search: otherAnchor, replace: `${otherAnchor}\nIDEA_B = 2` }] });
    const b = await ok(server.client, 'run_experiment', { description: 'idea B' });
    expect((await ok(server.client, 'read_train_py', { experiment_id: b.experiment.id })).text).not.toContain('IDEA_A');
    await waitFinished(server.client, a.experiment.id);
    await waitFinished(server.client, b.experiment.id);
    expect((await ok(server.client, 'commit_or_revert', { experiment_id: a.experiment.id, action: 'keep' })).decision).toBe('keep');
    const refusal = await fails(server.client, 'commit_or_revert', { experiment_id: b.experiment.id, action: 'keep' });
    expect(refusal).toMatch(new RegExp(`rebase_of: ${b.experiment.id}`));
    const rebased = await ok(server.client, 'run_experiment', { description: 'idea B on top of A', rebase_of: b.experiment.id });
    const text = (await ok(server.client, 'read_train_py', { experiment_id: rebased.experiment.id })).text;
    expect(text).toContain('IDEA_A = 1');
    expect(text).toContain('IDEA_B = 2');
    const done = await waitFinished(server.client, rebased.experiment.id);
    expectSucceeded(done);
    expect((await ok(server.client, 'commit_or_revert', { experiment_id: rebased.experiment.id, action: 'keep' })).decision).toBe('keep');
  }, 180_000);

  it('measures noise from repeated runs of one train.py; an unchanged re-run is never a gain', async () => {
    await ok(server.client, 'start_session', { tag: 'noise' });
    expect((await ok(server.client, 'get_results', { limit: 1 })).noise).toBeNull();
    const first = await ok(server.client, 'run_experiment', { description: 'baseline' });
    const second = await ok(server.client, 'run_experiment', { description: 'baseline again' });
    const a = await waitFinished(server.client, first.experiment.id);
    const b = await waitFinished(server.client, second.experiment.id);
    const { noise } = await ok(server.client, 'get_results', { limit: 1 });
    expect(noise).toEqual({ sigma: expect.any(Number), programs: 1, runs: 2 });
    expect(noise.sigma).toBeCloseTo(Math.abs(a.val_bpb - b.val_bpb) / Math.SQRT2, 9);
    expect((await ok(server.client, 'commit_or_revert', { experiment_id: a.id, action: 'auto' })).decision).toBe('keep');
    const decided = await ok(server.client, 'commit_or_revert', { experiment_id: b.id, action: 'auto' });
    expect(decided.decision).toBe('discard');
    expect(decided.reason).toMatch(/changes nothing/);
    expect(decided.noise.runs).toBe(2);
  }, 120_000);

  it('cancels a queued experiment and a running one', async () => {
    const first = await ok(server.client, 'run_experiment', { description: 'to be stopped' });
    const second = await ok(server.client, 'run_experiment', { description: 'never starts' });
    expect((await ok(server.client, 'cancel_experiment', { experiment_id: second.experiment.id })).experiment.status).toBe('cancelled');
    await waitUntil(async () => (await ok(server.client, 'get_results', { experiment_id: first.experiment.id })).experiments[0].status === 'running', 30);
    expect((await ok(server.client, 'cancel_experiment', { experiment_id: first.experiment.id })).experiment.status).toBe('cancelled');
    expect(await fails(server.client, 'cancel_experiment', { experiment_id: first.experiment.id })).toMatch(/already cancelled/);
  }, 60_000);

  it('reports status with pinned hashes intact', async () => {
    const status = await ok(server.client, 'status');
    expect(status.harnessIntact).toBe(true);
    expect(Object.keys(status.pinnedHashes).sort()).toEqual([
      'harness/batches.py', 'harness/evaluate.py', 'harness/prepare.py', 'harness/prestart.py', 'harness/supervise.py',
      'manifest.json', 'prepare.py', 'token_bytes.bin', 'tokenizer.json', 'train.bin', 'val.bin',
    ]);
    expect(status.profile).toBe('smoke');
  });
});

describe('server process lifecycle', () => {
  let workspace: string;
  beforeAll(async () => {
    workspace = await makeWorkspace('smoke');
  }, 600_000);

  it('writes nothing but JSON-RPC on stdout', async () => {
    const child = spawn(process.execPath, [CLI, 'serve', '--workspace', workspace, '--no-daemon'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    const send = (message: object) => child.stdin.write(`${JSON.stringify(message)}\n`);
    send({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } });
    send({ jsonrpc: '2.0', method: 'notifications/initialized' });
    send({ jsonrpc: '2.0', id: 2, method: 'tools/list' });
    send({ jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'status', arguments: {} } });
    send({ jsonrpc: '2.0', id: 4, method: 'tools/call', params: { name: 'read_train_py', arguments: { experiment_id: 42 } } });
    await waitUntil(() => stdout.split('\n').filter(Boolean).length >= 4, 30);
    child.stdin.end();
    await new Promise((resolve) => child.on('exit', resolve));
    const lines = stdout.split('\n').filter(Boolean);
    expect(lines).toHaveLength(4);
    for (const line of lines) expect(JSON.parse(line).jsonrpc).toBe('2.0');
  }, 60_000);

  it('keeps a pre-started trainer per slot: a run claims it, the next one waits, and a stopped server leaves none', async () => {
    const standbyDir = join(workspace, '.autoresearch', 'standby');
    const waiting = () => (existsSync(standbyDir) ? readdirSync(standbyDir) : []);
    // Whatever runs with the standby folder in its command line: the supervisor and the trainer's sandbox.
    const standbyProcesses = () =>
      readdirSync('/proc').filter((pid) => /^\d+$/.test(pid) && pidAlive(Number(pid)) && (() => {
        try {
          return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(standbyDir);
        } catch {
          return false;
        }
      })());
    const server = await connect(workspace);
    try {
      await waitUntil(() => waiting().length === 1, 60, 'a pre-started trainer when the server starts');
      const first = waiting()[0];
      const run = await ok(server.client, 'run_experiment', { description: 'on a pre-started trainer' });
      expectSucceeded(await waitFinished(server.client, run.experiment.id));
      const log = await ok(server.client, 'get_run_log', { experiment_id: run.experiment.id, lines: 400 });
      expect(log.log).toMatch(/pre-started trainer \(pid \d+\) told to go/);
      await waitUntil(() => waiting().length === 1 && waiting()[0] !== first, 60, 'the next pre-started trainer');
      // its folder is made before its processes start: on a loaded machine they follow a moment later
      await waitUntil(() => standbyProcesses().length > 0, 30, 'the next pre-started trainer\'s processes');
    } finally {
      // also when it fails: a server left running holds the workspace's lock for the tests after this one
      await closeServer(server);
    }
    expect(waiting()).toEqual([]);
    await waitUntil(() => standbyProcesses().length === 0, 30, 'the pre-started trainer to end with the server');
  }, 120_000);

  it('allows one server per workspace, while read-only commands run beside it without disturbing its runs', async () => {
    const server = await connect(workspace);
    const run = await ok(server.client, 'run_experiment', { description: 'runs while others look' });
    const second = spawnSync(process.execPath, [CLI, 'serve', '--workspace', workspace, '--no-daemon'], { input: '', encoding: 'utf8', timeout: 30_000 });
    expect(second.status).toBe(1);
    expect(second.stderr).toMatch(/Another autoresearch-mcp server \(pid \d+\) is serving/);
    const status = spawnSync(process.execPath, [CLI, 'status', '--workspace', workspace], { encoding: 'utf8', timeout: 30_000 });
    expect(status.status).toBe(0);
    const done = await waitFinished(server.client, run.experiment.id);
    expectSucceeded(done);
    await server.client.close();
  }, 90_000);

  it('ends when stdin closes, stopping its running experiment and marking it', async () => {
    const server = await connect(workspace);
    const current = await ok(server.client, 'read_train_py');
    const anchor = TRAIN_LINE.exec(current.text)?.[0] as string;
    await ok(server.client, 'apply_patch', { edits: [{ search: anchor, replace: `${anchor}\nimport time\ntime.sleep(600)` }] });
    const run = await ok(server.client, 'run_experiment', { description: 'sleeps forever' });
    await waitUntil(() => experimentRow(workspace, run.experiment.id)?.pid > 0, 30);
    const pid = experimentRow(workspace, run.experiment.id).pid as number;
    expect(pidAlive(pid)).toBe(true);
    const serverPid = server.transport.pid as number;
    await server.transport.close();
    await waitUntil(() => !pidAlive(serverPid), 20);
    expect(pidAlive(pid)).toBe(false);
    const row = experimentRow(workspace, run.experiment.id);
    expect(row.status).toBe('cancelled');
  }, 90_000);

  it('on start, marks experiments a killed server left running as crashed and keeps their logs', async () => {
    const server = await connect(workspace);
    const run = await ok(server.client, 'run_experiment', { description: 'still sleeping' });
    await waitUntil(() => experimentRow(workspace, run.experiment.id)?.pid > 0, 30);
    const pid = experimentRow(workspace, run.experiment.id).pid as number;
    process.kill(server.transport.pid as number, 'SIGKILL');
    process.kill(-pid, 'SIGKILL');
    await waitUntil(() => !pidAlive(pid), 20);
    const again = await connect(workspace);
    const result = await ok(again.client, 'get_results', { experiment_id: run.experiment.id });
    expect(result.experiments[0].status).toBe('crashed');
    expect(result.experiments[0].error).toMatch(/server stopped while running/);
    const log = await ok(again.client, 'get_run_log', { experiment_id: run.experiment.id });
    expect(log.path).toMatch(/run\.log$/);
    await again.client.close();
  }, 90_000);
});
