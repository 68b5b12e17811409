import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { validateCommitId, validateSessionTag, Workspace, WORKSPACE_GITIGNORE } from '../src/core/workspace.js';

async function freshRepo(): Promise<Workspace> {
  const dir = await mkdtemp(join(tmpdir(), 'ar-ws-'));
  const ws = new Workspace(dir);
  await ws.git.raw(['init', '--quiet', '--initial-branch=main']);
  await writeFile(join(dir, 'train.py'), 'LR = 0.1\nDEPTH = 4\nprint("train")\n');
  await writeFile(join(dir, 'prepare.py'), 'BUDGET = 5\n');
  await writeFile(join(dir, '.gitignore'), WORKSPACE_GITIGNORE);
  await ws.git.raw(['add', '--', 'train.py', 'prepare.py', '.gitignore']);
  await ws.git.raw(['commit', '--quiet', '-m', 'baseline']);
  return ws;
}

describe('session tags and commit ids', () => {
  it.each(['nov27', 'a', 'run-1.2_x', 'A'.repeat(64)])('accepts tag %s', (tag) => {
    expect(validateSessionTag(tag)).toBeUndefined();
  });
  it.each(['-x', '--force', '', ' a', 'a b', 'a/b', '../x', 'a..b', 'x.lock', 'x.', '.hidden', 'a~1', 'a^', 'a:b', 'A'.repeat(65), 'ü'])(
    'refuses tag %j',
    (tag) => {
      expect(validateSessionTag(tag)).toMatch(/Invalid session tag/);
    },
  );
  it.each(['abc1234', 'a'.repeat(40), '0123456789abcdef0123456789abcdef01234567'])('accepts commit %s', (id) => {
    expect(validateCommitId(id)).toBeUndefined();
  });
  it.each(['-n', '--all', 'HEAD', 'main', 'abc', 'ABCDEF1', 'abc1234..def5678', 'abc1234^', ''])('refuses commit %j', (id) => {
    expect(validateCommitId(id)).toMatch(/not a commit id/);
  });
});

describe('Workspace git operations on a real repository', () => {
  let ws: Workspace;
  beforeEach(async () => {
    ws = await freshRepo();
  });

  it('creates a session branch without touching the working tree and refuses an existing tag', async () => {
    await writeFile(ws.trainPath, 'LR = 0.2\nDEPTH = 4\nprint("train")\n');
    const base = await ws.headCommit();
    const branch = await ws.createSessionBranch('t1', base);
    expect(branch).toBe('autoresearch/t1');
    expect(await ws.currentBranch()).toBe('autoresearch/t1');
    expect(await ws.readTrainPy()).toContain('LR = 0.2');
    await expect(ws.createSessionBranch('t1', base)).rejects.toThrow(/already exists/);
    await expect(ws.createSessionBranch('-t', base)).rejects.toThrow(/Invalid session tag/);
  });

  it('commits a candidate without touching index, working tree or branch, and pins it under a ref', async () => {
    const head = await ws.headCommit();
    await writeFile(ws.trainPath, 'LR = 0.3\n# editing on\n');
    const commit = await ws.commitCandidate(7, head, 'LR = 0.3\n', 'exp 7: LR 0.3');
    expect(await ws.headCommit()).toBe(head);
    expect(await ws.readTrainPy()).toBe('LR = 0.3\n# editing on\n');
    expect(await ws.readFileAt(commit, 'train.py')).toBe('LR = 0.3\n');
    expect(await ws.readFileAt(commit, 'prepare.py')).toBe('BUDGET = 5\n');
    expect((await ws.git.raw(['rev-parse', 'refs/autoresearch/experiments/7'])).trim()).toBe(commit);
    expect((await ws.git.raw(['rev-parse', `${commit}^`])).trim()).toBe(head);
    const staged = await ws.git.raw(['diff', '--cached', '--name-only']);
    expect(staged.trim()).toBe('');
  });

  it('advances the branch only from the expected head (compare-and-swap)', async () => {
    const base = await ws.headCommit();
    await ws.createSessionBranch('cas', base);
    const a = await ws.commitCandidate(1, base, 'LR = 1\n', 'a');
    const b = await ws.commitCandidate(2, base, 'LR = 2\n', 'b');
    await writeFile(ws.trainPath, 'LR = 1\n');
    await ws.advanceBranch('autoresearch/cas', base, a);
    expect(await ws.headCommit()).toBe(a);
    expect((await ws.workingTreeState()).trainPyModified).toBe(false);
    await expect(ws.advanceBranch('autoresearch/cas', base, b)).rejects.toThrow();
    expect(await ws.headCommit()).toBe(a);
  });

  it('reports stray changes besides train.py', async () => {
    await writeFile(join(ws.dir, 'prepare.py'), 'BUDGET = 500\n');
    await writeFile(join(ws.dir, 'notes.txt'), 'x');
    await writeFile(ws.trainPath, 'LR = 9\n');
    const state = await ws.workingTreeState();
    expect(state.trainPyModified).toBe(true);
    expect(state.strayChanges.sort()).toEqual(['notes.txt', 'prepare.py']);
  });

  it('merges a change onto a moved head, and reports conflicts as undefined', async () => {
    const base = 'A = 1\nB = 2\nC = 3\n';
    expect(await ws.mergeTrainPy(base, 'A = 10\nB = 2\nC = 3\n', 'A = 1\nB = 2\nC = 30\n')).toBe('A = 10\nB = 2\nC = 30\n');
    expect(await ws.mergeTrainPy(base, 'A = 10\nB = 2\nC = 3\n', 'A = 11\nB = 2\nC = 3\n')).toBeUndefined();
  });

  it('adds and removes a worktree at a commit', async () => {
    const head = await ws.headCommit();
    const commit = await ws.commitCandidate(3, head, 'LR = 5\n', 'c');
    const path = await ws.addWorktree(3, commit);
    expect(await readFile(join(path, 'train.py'), 'utf8')).toBe('LR = 5\n');
    await ws.removeWorktree(3);
    await expect(readFile(join(path, 'train.py'), 'utf8')).rejects.toThrow();
    const list = await ws.git.raw(['worktree', 'list']);
    expect(list).not.toContain(path);
  });

  it('marks discarded candidates under their own ref and shows their diff', async () => {
    const head = await ws.headCommit();
    const commit = await ws.commitCandidate(4, head, 'LR = 0.5\nDEPTH = 4\nprint("train")\n', 'd');
    await ws.markDiscarded(4, commit);
    expect((await ws.git.raw(['rev-parse', 'refs/autoresearch/discarded/4'])).trim()).toBe(commit);
    const diff = await ws.diff(head, commit);
    expect(diff).toContain('-LR = 0.1');
    expect(diff).toContain('+LR = 0.5');
    await expect(ws.diff('--output=/tmp/x', commit)).rejects.toThrow(/not a commit id/);
  });
});
