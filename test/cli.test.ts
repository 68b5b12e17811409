import Database from 'better-sqlite3';
import { execa } from 'execa';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { explainNativeModuleError } from '../src/core/native.js';
import { CLI, connect, makeWorkspace, ok, PYTHON, queryState, waitFinished, serverEnv } from './helpers.js';

const cli = (...args: string[]) => execa(process.execPath, [CLI, ...args], { reject: false, timeout: 120_000 });
/** The CLI with only these variables set (plus PATH and HOME), as an MCP host's "env" block would give it. */
const cliEnv = (env: Record<string, string>, ...args: string[]) =>
  execa(process.execPath, [CLI, ...args], { reject: false, timeout: 120_000, extendEnv: false, env: { ...serverEnv(), ...env } });

describe('command line', () => {
  let workspace: string;
  beforeAll(async () => {
    workspace = await makeWorkspace('smoke');
    const server = await connect(workspace, [], 'cli-test');
    const run = await ok(server.client, 'run_experiment', { description: 'baseline' });
    await waitFinished(server.client, run.experiment.id);
    await ok(server.client, 'commit_or_revert', { experiment_id: run.experiment.id, action: 'auto' });
    await server.client.close();
  }, 600_000);

  it('refuses to create a workspace in a non-empty folder or over an existing one, and an unknown profile', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ar-cli-'));
    await writeFile(join(dir, 'notes.txt'), 'mine');
    const busy = await cli('init', dir, '--profile', 'smoke');
    expect(busy.exitCode).toBe(1);
    expect(busy.stderr).toMatch(/not empty/);
    expect(readFileSync(join(dir, 'notes.txt'), 'utf8')).toBe('mine');
    const again = await cli('init', workspace, '--profile', 'smoke');
    expect(again.stderr).toMatch(/already a workspace/);
    const profile = await cli('init', join(dir, 'new'), '--profile', 'tpu');
    expect(profile.exitCode).toBe(2);
    expect(profile.stderr).toMatch(/Unknown profile "tpu"/);
    expect(existsSync(join(dir, 'new'))).toBe(false);
  });

  it('explains a missing workspace and unknown commands', async () => {
    const missing = await cli('serve', '--workspace', '/nonexistent/lab');
    expect(missing.exitCode).toBe(1);
    expect(missing.stderr).toMatch(/not an autoresearch workspace.*autoresearch-mcp init/);
    const unknown = await cli('frobnicate');
    expect(unknown.exitCode).toBe(2);
    const flag = await cli('status', '--workspace', workspace, '--bogus');
    expect(flag.exitCode).toBe(2);
  });

  it('prints status, results and the results.tsv view', async () => {
    const status = JSON.parse((await cli('status', '--workspace', workspace)).stdout);
    expect(status.harnessIntact).toBe(true);
    expect(status.best.valBpb).toBeGreaterThan(0);
    const tsv = (await cli('results', '--workspace', workspace, '--tsv')).stdout.trim().split('\n');
    expect(tsv[0]).toBe('commit\tval_bpb\tmemory_gb\tstatus\tdescription');
    expect(tsv[1]).toMatch(/\tkeep\tbaseline$/);
  });

  it('writes the report', async () => {
    const out = join(workspace, '..', 'report.html');
    const result = await cli('report', '--workspace', workspace, '--out', out);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(readFileSync(out, 'utf8')).toMatch(/<svg[\s\S]*data-experiment-id="1"/);
  });

  it('lists, exports and verifies the audit log, and detects tampering', async () => {
    const list = await cli('audit', '--workspace', workspace, 'list', '--tool', 'run_experiment');
    expect(list.stdout).toMatch(/stdio\tcli-test\ttools\/call run_experiment\tok/);
    const jsonl = (await cli('audit', '--workspace', workspace, 'export', '--format', 'jsonl')).stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(jsonl.some((row) => row.tool === 'commit_or_revert')).toBe(true);
    const csv = (await cli('audit', '--workspace', workspace, 'export', '--format', 'csv')).stdout;
    expect(csv.split('\r\n')[0]).toMatch(/^"?seq"?,/);
    const verified = await cli('audit', '--workspace', workspace, 'verify');
    expect(verified.exitCode).toBe(0);
    expect(verified.stdout).toMatch(/audit chain intact: \d+ rows/);

    // What someone with write access to the file could do: drop the guard and edit history.
    const db = new Database(join(workspace, '.autoresearch', 'state.db'));
    const triggers = db.prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_log'").all() as { name: string }[];
    for (const { name } of triggers) db.exec(`DROP TRIGGER "${name}"`);
    const target = db.prepare("SELECT seq FROM audit_log WHERE tool = 'run_experiment' LIMIT 1").get() as { seq: number };
    db.prepare("UPDATE audit_log SET arguments = '{\"description\":\"something else\"}' WHERE seq = ?").run(target.seq);
    db.close();
    const broken = await cli('audit', '--workspace', workspace, 'verify');
    expect(broken.exitCode).toBe(1);
    expect(broken.stdout).toMatch(new RegExp(`BROKEN at row ${target.seq}`));
  });

  it('names the Python it uses', async () => {
    const doctor = JSON.parse((await cli('doctor')).stdout);
    expect(doctor.torchVersion).toBeTruthy();
    const bad = await cli('doctor', '--python', '/bin/false');
    expect(bad.exitCode).toBe(1);
    expect(bad.stderr).toMatch(/cannot import torch and numpy\. No Python with PyTorch 2\.9 or newer and numpy was found\. Make one with `bash \S+\/python\/setup-venv\.sh`/);
  });

  it('prints its version and help on stdout', async () => {
    const version = await cli('--version');
    expect(version.exitCode).toBe(0);
    expect(version.stdout.trim()).toBe(JSON.parse(readFileSync(join(import.meta.dirname, '..', 'package.json'), 'utf8')).version);
    for (const args of [['--help'], ['-h'], ['help']]) {
      const help = await cli(...args);
      expect(help.exitCode, args.join(' ')).toBe(0);
      expect(help.stdout).toMatch(/Usage:[\s\S]*AUTORESEARCH_WORKSPACE[\s\S]*AUTORESEARCH_PYTHON/);
      expect(help.stderr).toBe('');
    }
    const none = await cli();
    expect(none.exitCode).toBe(2);
    expect(none.stderr).toMatch(/Usage:/);
  });

  it('takes its settings from AUTORESEARCH_* variables, a flag winning, and expands ~ in paths', async () => {
    const status = await cliEnv({ AUTORESEARCH_WORKSPACE: workspace }, 'status');
    expect(status.exitCode, status.stderr).toBe(0);
    expect(JSON.parse(status.stdout).harnessIntact).toBe(true);
    const flagWins = await cliEnv({ AUTORESEARCH_WORKSPACE: '/nonexistent/lab' }, 'status', '--workspace', workspace);
    expect(flagWins.exitCode, flagWins.stderr).toBe(0);
    const badSlots = await cliEnv({ AUTORESEARCH_WORKSPACE: workspace, AUTORESEARCH_SLOTS: 'many' }, 'status');
    expect(badSlots.exitCode).toBe(2);
    expect(badSlots.stderr).toMatch(/AUTORESEARCH_SLOTS/);
    // A JSON host config passes "~/ws" as it is: the server expands it.
    const home = dirname(workspace);
    const tilde = await cliEnv({ HOME: home }, 'status', '--workspace', `~/${basename(workspace)}`);
    expect(tilde.exitCode, tilde.stderr).toBe(0);
    const tildeEnv = await cliEnv({ HOME: home, AUTORESEARCH_WORKSPACE: `~/${basename(workspace)}` }, 'status');
    expect(tildeEnv.exitCode, tildeEnv.stderr).toBe(0);
    const other = await cli('status', '--workspace', '~someone/lab');
    expect(other.exitCode).toBe(2);
    expect(other.stderr).toMatch(/only "~" and "~\/\.\.\." are expanded.*absolute path/);
  });

  it('says an interpreter is missing when it is, and that one without torch lacks torch', async () => {
    const missing = await cli('doctor', '--python', '/nonexistent/bin/python3');
    expect(missing.exitCode).toBe(1);
    expect(missing.stderr).toMatch(/There is no Python at \/nonexistent\/bin\/python3: the file does not exist/);
    expect(missing.stderr).not.toMatch(/cannot import torch/);
    const notOnPath = await cli('doctor', '--python', 'python-does-not-exist');
    expect(notOnPath.stderr).toMatch(/There is no "python-does-not-exist" on PATH/);
    const fromEnv = await cliEnv({ AUTORESEARCH_PYTHON: '/nonexistent/python' }, 'doctor');
    expect(fromEnv.exitCode).toBe(1);
    expect(fromEnv.stderr).toMatch(/There is no Python at \/nonexistent\/python/);
    const noTorch = await cli('doctor', '--python', '/bin/true');
    expect(noTorch.stderr).toMatch(/\/bin\/true is there but cannot import torch and numpy/);
  });

  it('takes a --python path relative to the folder it was started in, and records it absolute', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ar-cli-rel-'));
    const relativePython = relative(dir, PYTHON);
    const fresh = join(dir, 'lab');
    const init = await execa(process.execPath, [CLI, 'init', 'lab', '--profile', 'smoke', '--python', relativePython], { cwd: dir, reject: false, timeout: 120_000 });
    expect(init.exitCode, init.stderr).toBe(0);
    expect(init.stdout + init.stderr).toContain(`python ${PYTHON}`);
    const [meta] = queryState<{ value: string }>(fresh, "SELECT value FROM meta WHERE key = 'workspace'");
    expect(JSON.parse(meta.value).python).toBe(PYTHON);
  });

  it('refuses a GPU that does not exist before any lab starts', async () => {
    const result = await cli('serve', '--workspace', workspace, '--gpus', '0,99', '--no-daemon');
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(/--gpus 0,99: (this machine has no NVIDIA driver .* use --slots N|GPU 99 does not exist here)/);
    const repeated = await cli('lab', '--workspace', workspace, '--gpus', '1,1');
    expect(repeated.exitCode).toBe(2);
    expect(repeated.stderr).toMatch(/names GPU 1 twice/);
  });

  it('leaves nothing behind when init fails, so init can run again', async () => {
    const root = await mkdtemp(join(tmpdir(), 'ar-cli-fail-'));
    const fresh = join(root, 'new', 'lab');
    const badCorpus = await cli('init', fresh, '--profile', 'smoke', '--python', PYTHON, '--corpus', join(root, 'no-such-corpus'));
    expect(badCorpus.exitCode).toBe(1);
    expect(badCorpus.stderr).toMatch(/Data preparation failed/);
    expect(existsSync(join(root, 'new'))).toBe(false);

    const empty = join(root, 'empty');
    await mkdir(empty);
    const emptyCorpus = join(root, 'empty-corpus');
    await mkdir(emptyCorpus);
    await writeFile(join(emptyCorpus, 'nothing.txt'), '');
    const failed = await cli('init', empty, '--profile', 'smoke', '--python', PYTHON, '--corpus', emptyCorpus);
    expect(failed.exitCode).toBe(1);
    expect(existsSync(empty)).toBe(true);
    expect(await readdir(empty)).toEqual([]);

    const noPython = await cli('init', fresh, '--profile', 'smoke', '--python', join(root, 'python3'));
    expect(noPython.stderr).toMatch(/There is no Python at/);
    expect(existsSync(join(root, 'new'))).toBe(false);
  });

  it('names the fix when better-sqlite3 was built for another Node', () => {
    const abi = Object.assign(
      new Error(
        "The module '/x/node_modules/better-sqlite3/build/Release/better_sqlite3.node'\nwas compiled against a different Node.js version using\nNODE_MODULE_VERSION 127. This version of Node.js requires\nNODE_MODULE_VERSION 115. Please try re-compiling or re-installing\nthe module (for instance, using `npm rebuild` or `npm install`).",
      ),
      { code: 'ERR_DLOPEN_FAILED' },
    );
    const line = explainNativeModuleError(abi) as string;
    expect(line).not.toMatch(/\n/);
    expect(line).toMatch(/built for NODE_MODULE_VERSION 127/);
    expect(line).toMatch(/npm rebuild better-sqlite3/);
    expect(line).toContain(process.execPath);
    expect(explainNativeModuleError(new Error('disk full'))).toBeUndefined();
  });
});
