import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { execa } from 'execa';
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TOOLS } from '../src/tools/index.js';
import { ok, PYTHON, ROOT, waitFinished, expectSucceeded, serverEnv } from './helpers.js';

const PACKAGE = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
const npm = (args: string[], cwd: string) => execa('npm', [...args, '--no-audit', '--no-fund', '--loglevel=error'], { cwd, timeout: 240_000 });

/**
 * The package as a user gets it: `npm pack` (which builds dist/ through `prepare`), the tarball
 * installed into a fresh prefix, and everything below run from that installed copy only.
 */
describe('the packed tarball, installed', () => {
  let tmp: string;
  let files: string[];
  let bin: string;
  let installed: string;
  let workspace: string;
  let client: Client | undefined;

  beforeAll(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'ar-pack-'));
    const packed = JSON.parse((await npm(['pack', '--json', '--pack-destination', tmp], ROOT)).stdout.replace(/^[^[]*/, ''));
    files = packed[0].files.map((f: { path: string }) => f.path);
    const tarball = join(tmp, packed[0].filename);
    const prefix = join(tmp, 'prefix');
    // Dependencies come from the npm cache where it has them. Install scripts are skipped and
    // better-sqlite3's addon, when this checkout's is the same version, is copied instead of
    // compiled (a minute on two cores); otherwise it is rebuilt the way a user's install builds it.
    await npm(['install', '--prefix', prefix, '--prefer-offline', '--ignore-scripts', tarball], tmp);
    installed = join(prefix, 'node_modules', 'autoresearch-mcp');
    bin = join(prefix, 'node_modules', '.bin', 'autoresearch-mcp');
    const ours = join(ROOT, 'node_modules', 'better-sqlite3');
    const theirs = join(prefix, 'node_modules', 'better-sqlite3');
    const version = (dir: string) => JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).version;
    const addon = join('build', 'Release', 'better_sqlite3.node');
    if (existsSync(join(ours, addon)) && version(ours) === version(theirs)) {
      await execa('mkdir', ['-p', join(theirs, 'build', 'Release')]);
      copyFileSync(join(ours, addon), join(theirs, addon));
    } else {
      await npm(['rebuild', 'better-sqlite3'], prefix);
    }
  }, 300_000);

  afterAll(async () => {
    await client?.close();
  });

  it('ships the built server, the Python harness, LICENSE and server.json, and no tests', () => {
    expect(files).toEqual(expect.arrayContaining(['dist/cli.js', 'dist/server.js', 'python/prepare.py', 'python/train.py', 'program.md', 'README.md', 'LICENSE', 'server.json', 'package.json']));
    expect(files.filter((f) => f.startsWith('python/tests/') || f.endsWith('.map') || f.includes('__pycache__') || f.startsWith('src/'))).toEqual([]);
  });

  it('describes itself for the MCP registry as package.json does', () => {
    const server = JSON.parse(readFileSync(join(installed, 'server.json'), 'utf8'));
    expect(server.name).toBe(PACKAGE.mcpName);
    expect(server.version).toBe(PACKAGE.version);
    expect(server.packages[0]).toMatchObject({ registryType: 'npm', identifier: PACKAGE.name, version: PACKAGE.version, transport: { type: 'stdio' } });
    expect(server.description.length).toBeLessThanOrEqual(100);
    for (const key of ['repository', 'homepage', 'bugs', 'keywords', 'license']) expect(PACKAGE, key).toHaveProperty(key);
  });

  it('runs --version, init on the smoke profile, serve, tools/list and one experiment from the installed copy', async () => {
    const version = await execa(bin, ['--version']);
    expect(version.stdout.trim()).toBe(PACKAGE.version);

    workspace = join(tmp, 'lab');
    const init = await execa(bin, ['init', workspace, '--profile', 'smoke', '--python', PYTHON], { reject: false, timeout: 240_000 });
    expect(init.exitCode, init.stderr).toBe(0);
    expect(readFileSync(join(workspace, 'prepare.py'), 'utf8')).toBe(readFileSync(join(installed, 'python', 'prepare.py'), 'utf8'));

    const transport = new StdioClientTransport({ command: bin, args: ['serve', '--workspace', workspace, '--no-daemon'], env: serverEnv(tmp), stderr: 'pipe' });
    client = new Client({ name: 'pack-test', version: '0.0.1' });
    await client.connect(transport);
    expect(client.getServerVersion()?.version).toBe(PACKAGE.version);
    const { tools } = await client.listTools();
    expect(tools.map((t) => t.name).sort()).toEqual(TOOLS.map((t) => t.name).sort());
    const run = await ok(client, 'run_experiment', { description: 'baseline' });
    const finished = await waitFinished(client, run.experiment.id);
    expectSucceeded(finished);
    expect(finished.val_bpb).toBeGreaterThan(0);
    await client.close();
    client = undefined;
  }, 300_000);

  it('says in one line how to fix a better-sqlite3 that does not load', async () => {
    const addon = join(tmp, 'prefix', 'node_modules', 'better-sqlite3', 'build', 'Release', 'better_sqlite3.node');
    writeFileSync(addon, 'not a shared object');
    const status = await execa(bin, ['status', '--workspace', workspace], { reject: false });
    expect(status.exitCode).toBe(1);
    expect(status.stderr.trim().split('\n')).toHaveLength(1);
    expect(status.stderr).toMatch(/better-sqlite3 does not load in this Node\.js.*npm rebuild better-sqlite3/);
  });
});
