import { execa } from 'execa';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { findProgramSetting, validateCommitId, validateSessionTag, Workspace, WORKSPACE_GITIGNORE } from '../src/core/workspace.js';

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

describe('git runs nothing configured in the workspace', () => {
  const HOOKS = [
    'pre-commit', 'prepare-commit-msg', 'commit-msg', 'post-commit', 'post-checkout', 'post-merge', 'post-rewrite',
    'reference-transaction', 'post-index-change', 'pre-auto-gc', 'fsmonitor-watchman',
  ];
  let ws: Workspace;
  let marker: string;
  beforeEach(async () => {
    ws = await freshRepo();
    marker = join(ws.dir, '..', `${ws.dir.split('/').pop()}.marker`);
  });

  async function script(path: string, body = ''): Promise<void> {
    await writeFile(path, `#!/bin/sh\necho "$0 $*" >> '${marker}'\n${body}`, { mode: 0o755 });
  }

  /** The operations the server performs on a workspace, in the order a session uses them. */
  async function everyOperation(w: Workspace): Promise<void> {
    await writeFile(join(w.dir, 'notes.txt'), 'x');
    await w.git.raw(['add', '--', 'notes.txt']);
    await w.git.raw(['commit', '--quiet', '-m', 'notes']);
    const base = await w.headCommit();
    await w.createSessionBranch('hooks', base);
    const commit = await w.commitCandidate(1, base, 'LR = 1\n', 'exp 1');
    await w.markDiscarded(1, commit);
    await writeFile(w.trainPath, 'LR = 1\n');
    await w.advanceBranch('autoresearch/hooks', base, commit);
    await w.workingTreeState();
    const path = await w.addWorktree(1, commit);
    expect(await readFile(join(path, 'train.py'), 'utf8')).toBe('LR = 1\n');
    await w.removeWorktree(1);
    await w.pruneWorktrees();
    await w.history('autoresearch/hooks');
    await w.diff(base, commit);
    await w.git.raw(['checkout', '--quiet', 'main']);
    await w.git.raw(['reset', '--quiet', '--hard', 'HEAD']);
  }

  it('never runs hooks from .git/hooks (and the same hooks do run under plain git)', async () => {
    for (const hook of HOOKS) await script(join(ws.dir, '.git', 'hooks', hook));
    await everyOperation(ws);
    expect(existsSync(marker)).toBe(false);
    // The control: the hooks are real and plain git would have run them.
    await execa('git', ['commit', '--quiet', '--allow-empty', '-m', 'plain'], { cwd: ws.dir });
    expect(readFileSync(marker, 'utf8')).toMatch(/pre-commit/);
  });

  it('ignores system and global config (an fsmonitor set in ~/.gitconfig never runs)', async () => {
    const home = await mkdtemp(join(tmpdir(), 'ar-home-'));
    const monitor = join(home, 'monitor.sh');
    await script(monitor);
    await writeFile(join(home, '.gitconfig'), `[core]\n\tfsmonitor = ${monitor}\n\thooksPath = ${home}\n`);
    await script(join(home, 'post-checkout'));
    const saved = { HOME: process.env.HOME, XDG_CONFIG_HOME: process.env.XDG_CONFIG_HOME };
    process.env.HOME = home;
    process.env.XDG_CONFIG_HOME = join(home, 'xdg');
    try {
      const hardened = new Workspace(ws.dir);
      await everyOperation(hardened);
      expect(existsSync(marker)).toBe(false);
      // The control: plain git with that HOME runs the monitor on status.
      await execa('git', ['status', '--porcelain'], { cwd: ws.dir, env: { HOME: home } });
      expect(existsSync(marker)).toBe(true);
    } finally {
      for (const [key, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[key];
        else process.env[key] = value;
      }
    }
  });

  it.each([
    ['filter.lfs.clean', 'git-lfs clean -- %f', /filter\.lfs\.clean.*filter driver runs a program.*--remove-section filter\.lfs/],
    ['filter.x.process', 'sh -c x', /filter\.x\.process/],
    ['core.fsmonitor', 'MONITOR', /core\.fsmonitor.*fsmonitor program/],
    ['core.hooksPath', '/tmp/hooks', /core\.hookspath/],
    ['core.sshCommand', 'ssh -oProxyCommand=x', /core\.sshcommand/],
    ['core.worktree', '/tmp', /core\.worktree.*out of the workspace/],
    ['diff.external', 'x', /diff\.external/],
    ['diff.py.textconv', 'x', /diff\.py\.textconv/],
    ['merge.x.driver', 'x', /merge\.x\.driver/],
    ['include.path', '/tmp/other.config', /include\.path.*includes another config file/],
    ['includeIf.gitdir:/.path', '/tmp/other.config', /includeif\.gitdir:\/\.path/],
    ['tar.tgz.command', 'x', /tar\.tgz\.command/],
    ['submodule.m.update', '!x', /submodule\.m\.update/],
    ['credential.helper', 'x', /credential\.helper/],
  ])('refuses a repository whose config sets %s, naming it and how to remove it', async (key, value, message) => {
    // Written with plain git: the server's own git refuses to set such keys at all (simple-git's guard).
    await execa('git', ['config', key, value.replace('MONITOR', join(ws.dir, 'monitor.sh'))], { cwd: ws.dir });
    await script(join(ws.dir, 'monitor.sh'));
    await writeFile(join(ws.dir, '.gitattributes'), '* filter=lfs filter=x diff=py merge=x\n');
    await expect(ws.workingTreeState()).rejects.toThrow(message);
    await expect(ws.workingTreeState()).rejects.toThrow(/git config --file .* --unset-all/);
    await expect(ws.commitCandidate(1, await ws.headCommit(), 'LR = 2\n', 'x')).rejects.toThrow(message);
    await expect(ws.git.raw(['status'])).rejects.toThrow(/never runs programs configured/);
    expect(existsSync(marker)).toBe(false);
    // Following the message's advice makes the repository usable again (the check is not stuck in a cache).
    await execa('git', ['config', '--file', join(ws.dir, '.git', 'config'), '--unset-all', key], { cwd: ws.dir });
    expect((await ws.workingTreeState()).strayChanges).toContain('.gitattributes');
  });

  it('accepts harmless settings (core.fsmonitor=false, ordinary keys)', async () => {
    await ws.git.raw(['config', 'core.fsmonitor', 'false']);
    await ws.git.raw(['config', 'user.name', 'someone']);
    await ws.git.raw(['config', 'branch.main.description', 'the command line']);
    expect((await ws.workingTreeState()).strayChanges).toEqual([]);
  });

  it('findProgramSetting reads git config --list --null output', () => {
    expect(findProgramSetting('core.bare\nfalse\0user.name\nx\0')).toBeUndefined();
    expect(findProgramSetting('core.fsmonitor\nfalse\0')).toBeUndefined();
    expect(findProgramSetting('core.fsmonitor\ntrue\0')?.key).toBe('core.fsmonitor');
    expect(findProgramSetting('alias.x\n!sh\0man.foo.cmd\nx\0')?.key).toBe('man.foo.cmd');
    expect(findProgramSetting('Filter.A.Smudge\nx\0')?.key).toBe('filter.a.smudge');
  });
});
