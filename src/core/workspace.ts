import { execa } from 'execa';
import { simpleGit, type SimpleGit } from 'simple-git';
import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { UserError } from './errors.js';
import { contentHash } from './hashing.js';
import { stateDir } from './paths.js';

export const TRAIN_FILE = 'train.py';
export const SESSION_BRANCH_PREFIX = 'autoresearch/';
export const BASELINE_BRANCH = 'main';
const EXPERIMENT_REF_PREFIX = 'refs/autoresearch/experiments/';
const DISCARDED_REF_PREFIX = 'refs/autoresearch/discarded/';

/** Commits made by the server carry this identity, so history shows who wrote what. */
const GIT_IDENTITY = { name: 'autoresearch-mcp', email: 'autoresearch-mcp@localhost' };

export const WORKSPACE_GITIGNORE = ['data/', '.autoresearch/', '__pycache__/', '*.pyc', 'out/', '.venv/', ''].join('\n');

/**
 * A session tag becomes part of a branch name; refuse anything git could read as an option
 * or a path trick.
 */
export function validateSessionTag(tag: string): string | undefined {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(tag)) {
    return `Invalid session tag "${tag}": use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. "nov27").`;
  }
  if (tag.includes('..') || tag.endsWith('.lock') || tag.endsWith('.')) {
    return `Invalid session tag "${tag}": it may not contain "..", or end with "." or ".lock".`;
  }
  return undefined;
}

/** Commit ids from callers must be plain hex: never an option, a range or a ref expression. */
export function validateCommitId(commit: string): string | undefined {
  return /^[0-9a-f]{7,64}$/.test(commit) ? undefined : `"${commit}" is not a commit id (expected 7-64 lowercase hex digits).`;
}

export interface WorkingTreeState {
  /** Paths other than train.py that differ from the branch head (never committed by the server). */
  strayChanges: string[];
  trainPyModified: boolean;
}

/**
 * Configuration every git process the server starts runs with (as `-c`, which outranks every
 * config file): no hooks, no fsmonitor, no untracked cache, no automatic gc or maintenance
 * (they start background processes). Together with GIT_SAFE_ENV (no system or global config)
 * and the check of the workspace's own config below, git never runs a program that someone
 * configured in the workspace's .git.
 */
export const GIT_SAFE_CONFIG = [
  'core.hooksPath=/dev/null',
  'core.fsmonitor=false',
  'core.untrackedCache=false',
  'gc.auto=0',
  'maintenance.auto=false',
  'core.pager=cat',
] as const;

/** Environment of every git process: no system config, no global (~/.gitconfig, XDG) config, no prompts. */
export function gitSafeEnv(): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? tmpdir(),
    ...(process.env.LANG ? { LANG: process.env.LANG } : {}),
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_CONFIG_GLOBAL: '/dev/null',
    GIT_TERMINAL_PROMPT: '0',
  };
}

/** `git -c ...` arguments for processes started without simple-git. */
function safeConfigArgs(): string[] {
  return [...GIT_SAFE_CONFIG, `user.name=${GIT_IDENTITY.name}`, `user.email=${GIT_IDENTITY.email}`].flatMap((entry) => ['-c', entry]);
}

/**
 * Keys of a repository's config that make git run a program (or read config the server does
 * not check). Matched against `git config --list` keys, lowercased. `-c` above already
 * overrides some of them; they are refused anyway: nothing in .git should say what git runs.
 */
const PROGRAM_KEYS: { pattern: RegExp; why: string }[] = [
  { pattern: /^filter\./, why: 'a filter driver runs a program on checkout, status and commit' },
  { pattern: /^diff\.external$/, why: 'an external diff program runs on every diff' },
  { pattern: /^diff\..+\.(textconv|command)$/, why: 'a diff driver runs a program on diffs' },
  { pattern: /^merge\..+\.driver$/, why: 'a merge driver runs a program on merges' },
  { pattern: /^core\.fsmonitor$/, why: 'an fsmonitor program runs on every status' },
  { pattern: /^core\.hookspath$/, why: 'it points git at hooks, which run programs' },
  { pattern: /^core\.(sshcommand|pager|editor|askpass|gitproxy|alternaterefscommand)$/, why: 'it names a program git runs' },
  { pattern: /^core\.worktree$/, why: 'it moves the working tree out of the workspace' },
  { pattern: /^include\.path$|^includeif\./, why: 'it includes another config file, which the server cannot check' },
  { pattern: /^extensions\.worktreeconfig$/, why: 'per-worktree config files are read that the server does not check' },
  { pattern: /\.(command|cmd)$/, why: 'it names a program git runs' },
  { pattern: /^credential\.|^gpg\.|^sequence\.editor$|^pager\.|^uploadpack\.packobjectshook$|^(difftool|mergetool)\./, why: 'it names a program git runs' },
  { pattern: /^remote\..+\.(uploadpack|receivepack)$/, why: 'it names a program git runs' },
  { pattern: /^submodule\..+\.update$/, why: 'a submodule update command can run a program' },
];

/** core.fsmonitor=false (and the like) is harmless; any other value names a hook or a program. */
function isHarmlessSetting(key: string, value: string): boolean {
  return (key === 'core.fsmonitor' || key === 'extensions.worktreeconfig') && /^(false|no|off|0|)$/i.test(value.trim());
}

/** The first setting in a git config file (as `git config --list --null` prints it) that runs a program. */
export function findProgramSetting(listing: string): { key: string; value: string; why: string } | undefined {
  for (const entry of listing.split('\0')) {
    if (!entry) continue;
    const newline = entry.indexOf('\n');
    const key = (newline < 0 ? entry : entry.slice(0, newline)).toLowerCase();
    const value = newline < 0 ? '' : entry.slice(newline + 1);
    const match = PROGRAM_KEYS.find((candidate) => candidate.pattern.test(key));
    if (match && !isHarmlessSetting(key, value)) return { key, value, why: match.why };
  }
  return undefined;
}

/**
 * The only way Workspace (and its callers, through `Workspace.git`) runs git: every call first
 * checks the repository's config (cached until the file changes) and then runs git through
 * simple-git with GIT_SAFE_CONFIG and gitSafeEnv().
 */
export class SafeGit {
  readonly simple: SimpleGit;
  private checkedConfig: string | undefined;

  constructor(readonly dir: string) {
    const env = gitSafeEnv();
    this.simple = simpleGit({
      baseDir: dir,
      config: [...GIT_SAFE_CONFIG, `user.name=${GIT_IDENTITY.name}`, `user.email=${GIT_IDENTITY.email}`],
      allowEnvironment: Object.keys(env).filter((key) => key.startsWith('GIT_')),
      unsafe: { allowUnsafeHooksPath: true, allowUnsafeFsMonitor: true, allowUnsafeConfigPaths: true, allowUnsafePager: true },
    }).env(env);
  }

  async raw(args: string[]): Promise<string> {
    await this.assertSafeConfig();
    return this.simple.raw(args);
  }

  /** Where the repository's config lives: .git/config, or the common dir of a linked worktree. */
  private async configPath(): Promise<string | undefined> {
    const dotGit = join(this.dir, '.git');
    const info = await lstat(dotGit).catch(() => undefined);
    if (!info) return undefined; // not a repository yet (git init)
    if (info.isDirectory()) return join(dotGit, 'config');
    const pointer = /^gitdir: (.+?)\r?\n?$/.exec(await readFile(dotGit, 'utf8').catch(() => ''))?.[1];
    if (!pointer) throw new UserError(`${dotGit} is neither a git directory nor a "gitdir:" file; the server only works in a plain git repository.`);
    const gitDir = isAbsolute(pointer) ? pointer : resolve(this.dir, pointer);
    const common = (await readFile(join(gitDir, 'commondir'), 'utf8').catch(() => '')).trim();
    return join(common ? resolve(gitDir, common) : gitDir, 'config');
  }

  /**
   * Refuses to run git when the repository's config names a program (see PROGRAM_KEYS). The
   * file is parsed by git itself (`git config --file`, which follows no includes and runs nothing).
   */
  async assertSafeConfig(): Promise<void> {
    const path = await this.configPath();
    if (!path) return;
    const info = await stat(path).catch(() => undefined);
    if (!info) return;
    const stamp = `${path}\0${info.ino}\0${info.size}\0${info.mtimeMs}\0${info.ctimeMs}`;
    if (stamp === this.checkedConfig) return;
    const listed = await execa('git', ['config', '--file', path, '--no-includes', '--list', '--null'], {
      cwd: tmpdir(),
      env: gitSafeEnv(),
      extendEnv: false,
      reject: false,
      stdin: 'ignore',
    });
    if (listed.exitCode !== 0) {
      throw new UserError(`git cannot read the workspace's git config ${path}: ${String(listed.stderr).trim()}. Repair or remove the broken line, then try again.`);
    }
    const bad = findProgramSetting(String(listed.stdout));
    if (bad) {
      const section = bad.key.slice(0, bad.key.lastIndexOf('.'));
      throw new UserError(
        `The workspace's git config (${path}) sets ${bad.key}${bad.value ? ` = ${JSON.stringify(bad.value)}` : ''}: ${bad.why}. ` +
          `The server never runs programs configured in the workspace's .git, so it refuses to use this repository. ` +
          `Remove the setting: git config --file ${JSON.stringify(path)} --unset-all ${bad.key}` +
          (section.includes('.') ? ` (or the whole section: git config --file ${JSON.stringify(path)} --remove-section ${section})` : '') +
          ', then try again.',
      );
    }
    this.checkedConfig = stamp;
  }
}

/** Git operations on a workspace: the session branch, candidate commits, worktrees. */
export class Workspace {
  /** Every git call goes through here: hardened configuration and environment, config checked first. */
  readonly git: SafeGit;

  constructor(readonly dir: string) {
    this.git = new SafeGit(dir);
  }

  get trainPath(): string {
    return join(this.dir, TRAIN_FILE);
  }

  /**
   * HEAD and the branch ref are read straight from .git (a file read instead of a git process:
   * read-only tools call these on every request); anything unusual falls back to git.
   */
  async currentBranch(): Promise<string> {
    const head = await readFile(join(this.dir, '.git', 'HEAD'), 'utf8').catch(() => '');
    const match = /^ref: refs\/heads\/(.+)\n?$/.exec(head);
    if (match) return match[1];
    return (await this.git.raw(['symbolic-ref', '--short', 'HEAD'])).trim();
  }

  async headCommit(): Promise<string> {
    const branch = await this.currentBranch();
    const loose = await readFile(join(this.dir, '.git', 'refs', 'heads', ...branch.split('/')), 'utf8').catch(() => '');
    if (/^[0-9a-f]{40,64}\n?$/.test(loose)) return loose.trim();
    return (await this.git.raw(['rev-parse', '--verify', 'HEAD^{commit}'])).trim();
  }

  /** The working copy; a symlink is refused so nothing outside the workspace is read or written. */
  async readTrainPy(): Promise<string> {
    if ((await lstat(this.trainPath)).isSymbolicLink()) {
      throw new UserError(`train.py is a symlink; the server only edits a regular file. Restore it with: git checkout -- train.py`);
    }
    return readFile(this.trainPath, 'utf8');
  }

  async readFileAt(commit: string, path: string): Promise<string> {
    const bad = validateCommitId(commit);
    if (bad) throw new UserError(bad);
    return this.git.raw(['show', `${commit}:${path}`]);
  }

  /** Writes train.py through a temporary file and a rename, so a reader never sees half a file. */
  async writeTrainPy(text: string): Promise<void> {
    const temp = join(this.dir, `.${TRAIN_FILE}.${process.pid}.${Date.now()}.tmp`);
    await writeFile(temp, text, 'utf8');
    await rename(temp, this.trainPath);
  }

  async branchExists(branch: string): Promise<boolean> {
    // for-each-ref prints nothing for a missing ref (rev-parse --quiet would exit 1 silently,
    // which simple-git does not report as a failure).
    return (await this.git.raw(['for-each-ref', '--format=%(refname)', `refs/heads/${branch}`])).trim() !== '';
  }

  /** Creates autoresearch/<tag> at `from` and checks it out, keeping the working tree's train.py. */
  async createSessionBranch(tag: string, from: string): Promise<string> {
    const bad = validateSessionTag(tag) ?? validateCommitId(from);
    if (bad) throw new UserError(bad);
    const branch = SESSION_BRANCH_PREFIX + tag;
    if (await this.branchExists(branch)) {
      throw new UserError(`Session "${tag}" already exists (branch ${branch}). Choose a new tag.`);
    }
    await this.git.raw(['branch', '--no-track', branch, from]);
    // Point HEAD at the new branch without touching files: both branches hold the same tree.
    await this.git.raw(['symbolic-ref', 'HEAD', `refs/heads/${branch}`]);
    await this.git.raw(['read-tree', 'HEAD']);
    return branch;
  }

  async workingTreeState(): Promise<WorkingTreeState> {
    // --no-optional-locks: a read-only view never rewrites the index; submodules are not entered
    // (their own config is not checked).
    const status = await this.git.raw(['--no-optional-locks', 'status', '--porcelain=v1', '--untracked-files=all', '--ignore-submodules=all']);
    const paths = status
      .split('\n')
      .filter(Boolean)
      .map((line) => line.slice(3));
    return {
      trainPyModified: paths.includes(TRAIN_FILE),
      strayChanges: paths.filter((p) => p !== TRAIN_FILE),
    };
  }

  /**
   * Commits `trainPy` on top of `parent` as refs/autoresearch/experiments/<id>, without touching
   * the index, the working tree or the branch. One `git fast-import` does the blob, the tree
   * (the parent's, with only train.py replaced), the commit and the ref: run_experiment sits on
   * this path, and each git process costs tens of milliseconds.
   */
  async commitCandidate(experimentId: number, parent: string, trainPy: string, message: string): Promise<string> {
    const bad = validateCommitId(parent);
    if (bad) throw new UserError(bad);
    await this.git.assertSafeConfig();
    const scratch = await mkdtemp(join(tmpdir(), 'autoresearch-commit-'));
    try {
      const marks = join(scratch, 'marks');
      const seconds = Math.floor(Date.now() / 1000);
      const data = (text: string) => `data ${Buffer.byteLength(text)}\n${text}\n`;
      const stream =
        `commit ${EXPERIMENT_REF_PREFIX}${experimentId}\n` +
        'mark :1\n' +
        `author ${GIT_IDENTITY.name} <${GIT_IDENTITY.email}> ${seconds} +0000\n` +
        `committer ${GIT_IDENTITY.name} <${GIT_IDENTITY.email}> ${seconds} +0000\n` +
        data(message) +
        `from ${parent}\n` +
        `M 100644 inline ${TRAIN_FILE}\n` +
        data(trainPy) +
        'done\n';
      // --force: the experiment ref is new, but fast-import refuses to "move" a ref it did not create.
      await execa('git', [...safeConfigArgs(), 'fast-import', '--quiet', '--done', '--force', `--export-marks=${marks}`], {
        cwd: this.dir,
        input: stream,
        env: gitSafeEnv(),
        extendEnv: false,
      });
      const commit = /^:1 ([0-9a-f]{40,64})$/m.exec(await readFile(marks, 'utf8'))?.[1];
      if (!commit) throw new Error('git fast-import did not report the candidate commit');
      return commit;
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  }

  /**
   * Moves the branch from `expectedHead` to `commit` (compare-and-swap: fails if the branch moved
   * meanwhile) and refreshes the index so the working tree is compared against the new head.
   */
  async advanceBranch(branch: string, expectedHead: string, commit: string): Promise<void> {
    const bad = validateCommitId(expectedHead) ?? validateCommitId(commit);
    if (bad) throw new UserError(bad);
    await this.git.raw(['update-ref', `refs/heads/${branch}`, commit, expectedHead]);
    if ((await this.currentBranch()) === branch) await this.git.raw(['read-tree', 'HEAD']);
  }

  async markDiscarded(experimentId: number, commit: string): Promise<void> {
    const bad = validateCommitId(commit);
    if (bad) throw new UserError(bad);
    await this.git.raw(['update-ref', `${DISCARDED_REF_PREFIX}${experimentId}`, commit]);
  }

  /**
   * Three-way merge of train.py: the change from `base` to `theirs` replayed onto `ours`.
   * Returns undefined when the two changes touch the same lines.
   */
  async mergeTrainPy(base: string, ours: string, theirs: string): Promise<string | undefined> {
    const scratch = await mkdtemp(join(tmpdir(), 'autoresearch-merge-'));
    try {
      const [b, o, t] = ['base', 'ours', 'theirs'].map((n) => join(scratch, n));
      await Promise.all([writeFile(b, base), writeFile(o, ours), writeFile(t, theirs)]);
      // merge-file exits with the number of conflicts; simple-git would hide that, so call git directly.
      // Run in the scratch folder with the safe config: outside any repository, nothing configured runs.
      const merged = await execa('git', [...safeConfigArgs(), 'merge-file', '-p', '--', o, b, t], {
        cwd: scratch,
        env: gitSafeEnv(),
        extendEnv: false,
        reject: false,
        stdin: 'ignore',
        stripFinalNewline: false,
      });
      return merged.exitCode === 0 ? merged.stdout : undefined;
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  }

  worktreePath(experimentId: number): string {
    return join(stateDir(this.dir), 'worktrees', String(experimentId));
  }

  async addWorktree(experimentId: number, commit: string): Promise<string> {
    const bad = validateCommitId(commit);
    if (bad) throw new UserError(bad);
    const path = this.worktreePath(experimentId);
    if (existsSync(path)) await this.removeWorktree(experimentId);
    await mkdir(join(stateDir(this.dir), 'worktrees'), { recursive: true });
    await this.git.raw(['worktree', 'add', '--detach', '--', path, commit]);
    return path;
  }

  async removeWorktree(experimentId: number): Promise<void> {
    const path = this.worktreePath(experimentId);
    try {
      await this.git.raw(['worktree', 'remove', '--force', '--', path]);
    } catch {
      await rm(path, { recursive: true, force: true });
      await this.git.raw(['worktree', 'prune']);
    }
  }

  async pruneWorktrees(): Promise<void> {
    await rm(join(stateDir(this.dir), 'worktrees'), { recursive: true, force: true });
    await this.git.raw(['worktree', 'prune']);
  }

  /** One line per commit on the branch since the baseline, newest first. */
  async history(branch: string, limit = 50): Promise<{ commit: string; subject: string }[]> {
    const out = await this.git.raw(['log', `--max-count=${limit}`, '--format=%H%x09%s', `refs/heads/${branch}`, '--']);
    return out
      .split('\n')
      .filter(Boolean)
      .map((line) => {
        const [commit, subject] = line.split('\t');
        return { commit, subject };
      });
  }

  async diff(from: string, to: string): Promise<string> {
    const bad = validateCommitId(from) ?? validateCommitId(to);
    if (bad) throw new UserError(bad);
    return this.git.raw(['diff', '--no-ext-diff', '--no-textconv', from, to, '--', TRAIN_FILE]);
  }
}

export function trainHash(text: string): string {
  return contentHash(text);
}
