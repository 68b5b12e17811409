import Database from 'better-sqlite3';
import { execa } from 'execa';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { CLI, connect, makeWorkspace, ok, waitFinished } from './helpers.js';

const cli = (...args: string[]) => execa(process.execPath, [CLI, ...args], { reject: false, timeout: 120_000 });

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
    expect(bad.stderr).toMatch(/python3-torch libopenblas0-pthread/);
  });
});
