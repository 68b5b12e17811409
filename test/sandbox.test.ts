import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { mkdtemp, realpath } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  cudaNodes,
  evaluatorArgv,
  findBwrap,
  hostFacts,
  isWithin,
  jobCudaBinds,
  NO_SANDBOX_MESSAGE,
  outsideSystemDirs,
  probePythonLayout,
  sandboxAvailable,
  trainerArgv,
  type HostFacts,
  type PythonLayout,
} from '../src/core/sandbox.js';

// ---- argv, from stated host facts ------------------------------------------------------------

const MERGED_USR: HostFacts = {
  bwrap: '/usr/bin/bwrap',
  systemDirs: [
    { path: '/usr' },
    { path: '/bin', symlinkTo: 'usr/bin' },
    { path: '/sbin', symlinkTo: 'usr/sbin' },
    { path: '/lib', symlinkTo: 'usr/lib' },
    { path: '/lib64', symlinkTo: 'usr/lib64' },
    { path: '/etc' },
  ],
  maskedFiles: ['/etc/shadow'],
  devices: ['/dev/nvidiactl', '/dev/nvidia-uvm', '/dev/nvidia0', '/dev/nvidia1'],
};
const SYSTEM_PYTHON: PythonLayout = { executable: '/usr/bin/python3', prefixes: [] };
const WS = '/home/u/ws';
const STATE = `${WS}/.autoresearch`;
const R = `${STATE}/runs/7`;
const DATA = `${WS}/data`;

function trainer(overrides: Partial<Parameters<typeof trainerArgv>[1]> = {}, facts = MERGED_USR): string[] {
  return trainerArgv(facts, {
    codeDir: `${R}/code`,
    dataDir: DATA,
    scratchBytes: 1 << 30,
    python: SYSTEM_PYTHON,
    env: { PATH: '/usr/bin:/bin', HOME: '/sandbox/scratch', AUTORESEARCH_CHANNEL_FD: '3' },
    forbidden: [WS, STATE, DATA],
    ...overrides,
  });
}

function evaluator(overrides: Partial<Parameters<typeof evaluatorArgv>[1]> = {}): string[] {
  return evaluatorArgv(MERGED_USR, {
    handoverDir: `${R}/handover`,
    dataDir: DATA,
    harnessDir: `${STATE}/harness`,
    python: SYSTEM_PYTHON,
    env: { PATH: '/usr/bin:/bin', HOME: '/tmp' },
    args: ['--model', '/eval/in/model.pt', '--seed', '5'],
    forbidden: [WS, STATE, DATA],
    ...overrides,
  });
}

const BIND_FLAGS = new Set(['--bind', '--ro-bind', '--dev-bind', '--bind-try', '--ro-bind-try', '--dev-bind-try']);

/** Every mount option with its operands, in order. */
function mounts(argv: string[]): { flag: string; src?: string; dest: string }[] {
  const out: { flag: string; src?: string; dest: string }[] = [];
  const end = argv.indexOf('--');
  for (let i = 1; i < end; i += 1) {
    const flag = argv[i];
    if (BIND_FLAGS.has(flag) || flag === '--symlink') {
      out.push({ flag, src: argv[i + 1], dest: argv[i + 2] });
      i += 2;
    } else if (['--proc', '--dev', '--tmpfs', '--chdir', '--remount-ro'].includes(flag)) {
      out.push({ flag, dest: argv[i + 1] });
      i += 1;
    } else if (['--setenv'].includes(flag)) i += 2;
    else if (['--size', '--cap-drop'].includes(flag)) i += 1;
  }
  return out;
}

const sources = (argv: string[]) => mounts(argv).filter((m) => BIND_FLAGS.has(m.flag)).map((m) => m.src as string);

describe('trainer sandbox argv', () => {
  it('isolates every namespace, drops capabilities and the environment, and runs train.py from the read-only code', () => {
    const argv = trainer();
    expect(argv[0]).toBe('/usr/bin/bwrap');
    for (const flag of ['--unshare-all', '--die-with-parent', '--new-session', '--clearenv']) expect(argv).toContain(flag);
    expect(argv[argv.indexOf('--cap-drop') + 1]).toBe('ALL');
    expect(argv.slice(argv.indexOf('--'))).toEqual(['--', '/usr/bin/python3', '-u', '/sandbox/code/train.py']);
  });

  it('binds exactly the system folders, the code, three data files and nothing writable', () => {
    const argv = trainer();
    expect(sources(argv).sort()).toEqual(
      ['/usr', '/etc', '/dev/null', `${R}/code`, `${DATA}/tokenizer.json`, `${DATA}/token_bytes.bin`, `${DATA}/manifest.json`].sort(),
    );
    expect(mounts(argv).filter((m) => m.flag === '--bind' || m.flag === '--bind-try')).toEqual([]);
    expect(mounts(argv)).toContainEqual({ flag: '--ro-bind', src: `${R}/code`, dest: '/sandbox/code' });
    expect(mounts(argv)).toContainEqual({ flag: '--ro-bind', src: `${DATA}/tokenizer.json`, dest: '/sandbox/data/tokenizer.json' });
    expect(mounts(argv)).toContainEqual({ flag: '--ro-bind', src: '/dev/null', dest: '/etc/shadow' });
    expect(mounts(argv)).toContainEqual({ flag: '--symlink', src: 'usr/lib64', dest: '/lib64' });
  });

  it('binds the workspace\'s compile cache read-only when given, and nothing else for it', () => {
    const argv = trainer({ compileCache: `${STATE}/compile-cache` });
    const added = mounts(argv).filter((m) => !mounts(trainer()).some((n) => JSON.stringify(n) === JSON.stringify(m)));
    expect(added).toEqual([{ flag: '--ro-bind', src: `${STATE}/compile-cache`, dest: '/sandbox/compile-cache' }]);
  });

  it('never binds the workspace, .git, the state folder, other runs, val.bin or train.bin', () => {
    for (const src of sources(trainer({ cudaDevices: '0' }))) {
      expect(src).not.toMatch(/val\.bin|train\.bin|state\.db|\.git(\/|$)/);
      expect(src === WS || src === STATE || src === DATA || src === `${STATE}/runs` || src === R).toBe(false);
      if (isWithin(src, WS)) expect([`${R}/code`, ...['tokenizer.json', 'token_bytes.bin', 'manifest.json'].map((n) => `${DATA}/${n}`)]).toContain(src);
    }
    expect(trainer().join(' ')).not.toMatch(/val\.bin|train\.bin|handover|run\.log/);
  });

  it('makes the scratch a size-limited tmpfs as cwd, and limits the private /tmp too', () => {
    const argv = trainer({ scratchBytes: 123456 });
    const scratch = argv.indexOf('/sandbox/scratch');
    expect(argv.slice(scratch - 3, scratch + 1)).toEqual(['--size', '123456', '--tmpfs', '/sandbox/scratch']);
    expect(argv.slice(argv.indexOf('--chdir'), argv.indexOf('--chdir') + 2)).toEqual(['--chdir', '/sandbox/scratch']);
    const tmp = argv.indexOf('/tmp');
    expect(argv.slice(tmp - 3, tmp + 1)).toEqual(['--size', '123456', '--tmpfs', '/tmp']);
    expect(mounts(argv).map((m) => m.flag)).toEqual(expect.arrayContaining(['--proc', '--dev']));
    // the root bwrap builds becomes read-only after the last mount point, before the chdir
    expect(mounts(argv).slice(-2)).toEqual([
      { flag: '--remount-ro', dest: '/' },
      { flag: '--chdir', dest: '/sandbox/scratch' },
    ]);
  });

  it('passes the environment only through --setenv', () => {
    const argv = trainer({ env: { A: '1', HOME: '/sandbox/scratch' } });
    const pairs: string[][] = [];
    argv.forEach((arg, i) => arg === '--setenv' && pairs.push([argv[i + 1], argv[i + 2]]));
    expect(pairs).toEqual([
      ['A', '1'],
      ['HOME', '/sandbox/scratch'],
    ]);
  });

  it('binds only the slot\'s GPU node plus the shared nodes that exist, and none on CPU', () => {
    const gpu = mounts(trainer({ cudaDevices: '1' })).filter((m) => m.flag === '--dev-bind');
    expect(gpu.map((m) => m.src)).toEqual(['/dev/nvidia1', '/dev/nvidiactl', '/dev/nvidia-uvm']);
    expect(gpu.every((m) => m.src === m.dest)).toBe(true);
    expect(mounts(trainer()).filter((m) => m.flag === '--dev-bind')).toEqual([]);
    expect(trainer().join(' ')).not.toContain('nvidia');
    expect(cudaNodes(MERGED_USR, '0,1')).toEqual(['/dev/nvidia0', '/dev/nvidia1', '/dev/nvidiactl', '/dev/nvidia-uvm']);
    expect(cudaNodes(MERGED_USR, '3')).toEqual(['/dev/nvidiactl', '/dev/nvidia-uvm']);
    expect(() => cudaNodes(MERGED_USR, '0;rm')).toThrow(/device indices/);
  });

  it('binds every CUDA node a Slurm GPU job may see with --dev-bind-try, whatever this host has, and passes the device list as given', () => {
    const placeholder = '@SLURM_CUDA_VISIBLE_DEVICES@';
    const expected = ['/dev/nvidiactl', '/dev/nvidia-uvm', '/dev/nvidia-uvm-tools', ...Array.from({ length: 64 }, (_, i) => `/dev/nvidia${i}`)];
    const noGpuHost: HostFacts = { ...MERGED_USR, devices: [] };
    for (const argv of [
      trainer({ cudaDevices: placeholder, jobGpus: true, env: { CUDA_VISIBLE_DEVICES: placeholder } }, noGpuHost),
      trainer({ cudaDevices: placeholder, jobGpus: true, env: { CUDA_VISIBLE_DEVICES: placeholder } }),
      evaluator({ cudaDevices: placeholder, jobGpus: true, env: { CUDA_VISIBLE_DEVICES: placeholder } }),
    ]) {
      const devices = mounts(argv).filter((m) => m.flag.startsWith('--dev-bind'));
      expect(devices.every((m) => m.flag === '--dev-bind-try' && m.src === m.dest)).toBe(true);
      expect(devices.map((m) => m.src)).toEqual(expected);
      const at = argv.indexOf('CUDA_VISIBLE_DEVICES');
      expect([argv[at - 1], argv[at + 1]]).toEqual(['--setenv', placeholder]);
    }
    expect(jobCudaBinds()).toHaveLength(3 * expected.length);
  });

  it('binds a python prefix outside the system folders read-only, and refuses one that would expose the workspace', () => {
    const venv: PythonLayout = { executable: '/root/.venv/bin/python', prefixes: ['/root/.venv', '/usr'] };
    const argv = trainer({ python: outsideSystemDirs(venv, MERGED_USR) });
    expect(mounts(argv)).toContainEqual({ flag: '--ro-bind', src: '/root/.venv', dest: '/root/.venv' });
    expect(sources(argv).filter((s) => s === '/usr')).toHaveLength(1);
    expect(argv.slice(argv.indexOf('--') + 1, argv.indexOf('--') + 2)).toEqual(['/root/.venv/bin/python']);
    expect(() => trainer({ python: { executable: '/home/u/bin/python', prefixes: ['/home/u'] } })).toThrow(/\/home\/u\/ws lies under \/home\/u/);
    expect(() => trainer({ forbidden: ['/usr/src/ws'] })).toThrow(/lies under \/usr/);
  });

  it('recreates symlinked system folders as symlinks and binds real ones (non-merged /usr)', () => {
    const facts: HostFacts = { ...MERGED_USR, systemDirs: [{ path: '/usr' }, { path: '/bin' }, { path: '/lib' }, { path: '/lib64' }, { path: '/etc' }] };
    expect(sources(trainer({}, facts))).toEqual(expect.arrayContaining(['/usr', '/bin', '/lib', '/lib64', '/etc']));
    expect(mounts(trainer({}, facts)).filter((m) => m.flag === '--symlink')).toEqual([]);
  });
});

describe('without a sandbox', () => {
  it('names the package and the flag in one line', () => {
    expect(NO_SANDBOX_MESSAGE).toBe(
      'bubblewrap is not installed: install the Debian package `bubblewrap` (apt-get install bubblewrap), or start with --unsandboxed to run without a sandbox (results are marked unverified)',
    );
    expect(NO_SANDBOX_MESSAGE).not.toContain('\n');
  });
});

describe('evaluator sandbox argv', () => {
  it('reads the hand-over, the validation data and the pinned evaluator, with no scratch and no agent code', () => {
    const argv = evaluator({ cudaDevices: '0' });
    expect(sources(argv).sort()).toEqual(
      [
        '/usr',
        '/etc',
        '/dev/null',
        `${STATE}/harness/evaluate.py`,
        `${STATE}/harness/batches.py`,
        `${R}/handover`,
        `${DATA}/val.bin`,
        `${DATA}/token_bytes.bin`,
        `${DATA}/tokenizer.json`,
        `${DATA}/manifest.json`,
        '/dev/nvidia0',
        '/dev/nvidiactl',
        '/dev/nvidia-uvm',
      ].sort(),
    );
    expect(mounts(argv)).toContainEqual({ flag: '--ro-bind', src: `${R}/handover`, dest: '/eval/in' });
    expect(mounts(argv)).toContainEqual({ flag: '--ro-bind', src: `${DATA}/val.bin`, dest: '/eval/data/val.bin' });
    expect(mounts(argv)).toContainEqual({ flag: '--ro-bind', src: `${STATE}/harness/evaluate.py`, dest: '/eval/evaluate.py' });
    expect(argv.join(' ')).not.toMatch(/train\.bin|\/code|scratch|train\.py|prepare\.py/);
    expect(mounts(argv).filter((m) => m.flag === '--bind')).toEqual([]);
    expect(argv.slice(argv.indexOf('--'))).toEqual(['--', '/usr/bin/python3', '/eval/evaluate.py', '--model', '/eval/in/model.pt', '--seed', '5']);
    for (const flag of ['--unshare-all', '--die-with-parent', '--new-session', '--clearenv']) expect(argv).toContain(flag);
  });
});

// ---- real bubblewrap ---------------------------------------------------------------------------

const canSandbox = await sandboxAvailable();

interface Fixture {
  root: string;
  ws: string;
  state: string;
  data: string;
  run: string;
  facts: HostFacts;
  python: PythonLayout;
}

async function fixture(): Promise<Fixture> {
  const root = await realpath(await mkdtemp(join(tmpdir(), 'ar-sandbox-')));
  const ws = join(root, 'ws');
  const state = join(ws, '.autoresearch');
  const data = join(ws, 'data');
  const run = join(state, 'runs', '1');
  for (const dir of [join(ws, '.git'), data, join(run, 'code'), join(run, 'handover'), join(state, 'harness')]) mkdirSync(dir, { recursive: true });
  writeFileSync(join(state, 'state.db'), 'db');
  writeFileSync(join(ws, '.git', 'config'), '[core]\n');
  for (const name of ['tokenizer.json', 'token_bytes.bin', 'manifest.json', 'val.bin', 'train.bin']) writeFileSync(join(data, name), name);
  writeFileSync(join(run, 'handover', 'model.pt'), 'model');
  const bwrap = findBwrap() as string;
  const facts = hostFacts(bwrap);
  const python = outsideSystemDirs(await probePythonLayout('/usr/bin/python3'), facts);
  return { root, ws, state, data, run, facts, python };
}

function trainerFor(f: Fixture, trainPy: string, scratchBytes = 64 << 20, compileCache?: string): string[] {
  writeFileSync(join(f.run, 'code', 'train.py'), trainPy);
  return trainerArgv(f.facts, {
    codeDir: join(f.run, 'code'),
    dataDir: f.data,
    scratchBytes,
    python: f.python,
    env: { PATH: '/usr/bin:/bin', HOME: '/sandbox/scratch', PYTHONDONTWRITEBYTECODE: '1', SANDBOX_TEST: 'yes' },
    forbidden: [f.ws, f.state, f.data],
    compileCache,
  });
}

function runToEnd(argv: string[], stdio: ('ignore' | 'pipe')[] = ['ignore', 'pipe', 'pipe']): Promise<{ code: number | null; stdout: string; stderr: string; fd3: string }> {
  return new Promise((resolvePromise) => {
    const child = spawn(argv[0], argv.slice(1), { stdio, env: {} });
    let stdout = '';
    let stderr = '';
    let fd3 = '';
    child.stdout?.on('data', (c) => (stdout += c));
    child.stderr?.on('data', (c) => (stderr += c));
    (child.stdio[3] as NodeJS.ReadableStream | null | undefined)?.on('data', (c) => (fd3 += c));
    child.on('close', (code) => resolvePromise({ code, stdout, stderr, fd3 }));
  });
}

function processesWith(marker: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      const state = readFileSync(`/proc/${entry}/stat`, 'utf8').split(') ')[1]?.[0];
      if (cmdline.includes(marker) && state !== 'Z') found.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

async function until(condition: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (condition()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return condition();
}

describe.skipIf(!canSandbox)('inside the real trainer sandbox', () => {
  let f: Fixture;
  let server: Server;
  let port = 0;
  let connections = 0;
  beforeAll(async () => {
    f = await fixture();
    server = createServer((socket) => {
      connections += 1;
      socket.end('secret\n');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    port = (server.address() as { port: number }).port;
  });
  afterAll(() => server?.close());

  it('sees no workspace, .git, state, val.bin or train.bin; only its three data files and its code', async () => {
    const probe = `
import json, os
checks = {name: os.path.exists(path) for name, path in ${JSON.stringify({
      ws: f.ws,
      git: join(f.ws, '.git'),
      state: f.state,
      db: join(f.state, 'state.db'),
      data: f.data,
      val: join(f.data, 'val.bin'),
      train: join(f.data, 'train.bin'),
      runs: join(f.state, 'runs'),
      root: f.root,
      sandbox_val: '/sandbox/data/val.bin',
      sandbox_train: '/sandbox/data/train.bin',
    })}.items()}
print(json.dumps({"checks": checks, "data": sorted(os.listdir("/sandbox/data")), "code": sorted(os.listdir("/sandbox/code")),
                  "cwd": os.getcwd(), "env": dict(os.environ), "tmp": sorted(os.listdir("/tmp")),
                  "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}))
`;
    const result = await runToEnd(trainerFor(f, probe));
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const seen = JSON.parse(result.stdout);
    expect(Object.values(seen.checks).every((v) => v === false)).toBe(true);
    expect(seen.data).toEqual(['manifest.json', 'token_bytes.bin', 'tokenizer.json']);
    expect(seen.code).toEqual(['train.py']);
    expect(seen.cwd).toBe('/sandbox/scratch');
    expect(seen.tmp).toEqual([]);
    expect(seen.env.SANDBOX_TEST).toBe('yes');
    // Nothing of ours leaks: only what we set (+ PWD from bwrap, LC_CTYPE from Python's C locale coercion).
    expect(Object.keys(seen.env).filter((k) => !['PATH', 'HOME', 'PYTHONDONTWRITEBYTECODE', 'SANDBOX_TEST', 'PWD', 'LC_CTYPE'].includes(k))).toEqual([]);
    // Own pid namespace: a handful of processes (bwrap's init and us), not the host's.
    expect(seen.procs.length).toBeLessThanOrEqual(3);
  });

  it('runs a Python whose venv lives under /tmp (a checkout there), though /tmp is private', async () => {
    const venv = join(await mkdtemp(join(tmpdir(), 'ar-venv-')), 'venv');
    const made = spawnSync('/usr/bin/python3', ['-m', 'venv', '--without-pip', venv], { encoding: 'utf8' });
    expect(made.status, made.stderr).toBe(0);
    const python = outsideSystemDirs(await probePythonLayout(join(venv, 'bin', 'python')), f.facts);
    expect(python.prefixes.some((prefix) => prefix.startsWith('/tmp/'))).toBe(true);
    writeFileSync(join(f.run, 'code', 'train.py'), 'import os, sys\nprint(sys.prefix, sorted(os.listdir("/tmp")) != [])\n');
    const argv = trainerArgv(f.facts, {
      codeDir: join(f.run, 'code'),
      dataDir: f.data,
      scratchBytes: 1 << 20,
      python,
      env: { PATH: '/usr/bin:/bin', HOME: '/sandbox/scratch' },
      forbidden: [f.ws, f.state, f.data],
    });
    const result = await runToEnd(argv);
    expect(result.stderr).toBe('');
    expect(result.stdout.trim()).toBe(`${await realpath(venv)} True`);
  });

  it('cannot write anywhere but its scratch and /tmp, and the scratch is size-limited', async () => {
    const probe = `
import json, os
def try_write(path, size=16):
    try:
        with open(path, "wb") as fh:
            fh.write(b"x" * size)
        return "written"
    except OSError as error:
        return type(error).__name__ + ":" + str(error.errno)
targets = ${JSON.stringify({
      code: '/sandbox/code/evil.py',
      train: '/sandbox/code/train.py',
      data: '/sandbox/data/tokenizer.json',
      datanew: '/sandbox/data/new',
      usr: '/usr/evil',
      etc: '/etc/evil',
      root: '/evil',
      sandbox: '/sandbox/evil',
      host_ws: join(f.ws, 'evil'),
      host_state: join(f.state, 'evil'),
      compile_cache: '/sandbox/compile-cache/evil',
      compile_cache_head: '/sandbox/compile-cache/head/evil',
      compile_cache_entry: '/sandbox/compile-cache/head/entry',
    })}
out = {name: try_write(path) for name, path in targets.items()}
out["scratch"] = try_write("/sandbox/scratch/ok")
out["tmp"] = try_write("/tmp/ok")
out["scratch_big"] = try_write("/sandbox/scratch/big", 16 << 20)
print(json.dumps(out))
`;
    const cache = join(f.state, 'compile-cache');
    mkdirSync(join(cache, 'e1-00000000'), { recursive: true });
    writeFileSync(join(cache, 'e1-00000000', 'entry'), 'compiled');
    if (!existsSync(join(cache, 'head'))) symlinkSync('e1-00000000', join(cache, 'head'));
    const result = await runToEnd(trainerFor(f, probe, 8 << 20, cache));
    expect(result.code).toBe(0);
    const out = JSON.parse(result.stdout);
    expect(out.scratch).toBe('written');
    expect(out.tmp).toBe('written');
    expect(out.scratch_big).toMatch(/^OSError:28$/); // ENOSPC
    for (const name of ['code', 'train', 'data', 'datanew', 'usr', 'etc', 'root', 'sandbox', 'host_ws', 'host_state', 'compile_cache', 'compile_cache_head', 'compile_cache_entry']) {
      expect(out[name], name).not.toBe('written');
    }
    expect(readdirSync(join(f.run, 'code'))).toEqual(['train.py']);
    expect(readFileSync(join(f.data, 'tokenizer.json'), 'utf8')).toBe('tokenizer.json');
    expect(readdirSync(join(cache, 'head'))).toEqual(['entry']);
    expect(readFileSync(join(cache, 'head', 'entry'), 'utf8')).toBe('compiled');
    expect(readdirSync(f.ws).sort()).toEqual(['.autoresearch', '.git', 'data']);
  });

  const otherPython = ['/root/.pyenv/shims/python3', '/root/.pyenv/versions/3.11.7/bin/python3'].find((p) => existsSync(p));
  it.skipIf(!otherPython)('runs an interpreter that lives outside /usr (pyenv, venv) by binding its prefix read-only', async () => {
    const python = outsideSystemDirs(await probePythonLayout(otherPython as string), f.facts);
    expect(python.prefixes.length).toBeGreaterThan(0);
    writeFileSync(join(f.run, 'code', 'train.py'), 'import sys, json\nprint(json.dumps([sys.executable, sys.prefix]))\n');
    const argv = trainerArgv(f.facts, {
      codeDir: join(f.run, 'code'),
      dataDir: f.data,
      scratchBytes: 1 << 20,
      python,
      env: { PATH: '/usr/bin:/bin' },
      forbidden: [f.ws, f.state, f.data],
    });
    const result = await runToEnd(argv);
    expect(result.stderr).toBe('');
    expect(JSON.parse(result.stdout)[0]).toBe(python.executable);
  });

  it('has no network: a listener on the host\'s 127.0.0.1 cannot be reached', async () => {
    const probe = `
import socket
s = socket.socket()
s.settimeout(3)
try:
    s.connect(("127.0.0.1", ${port}))
    print("connected", s.recv(100))
except OSError as error:
    print("refused", type(error).__name__)
`;
    const result = await runToEnd(trainerFor(f, probe));
    expect(result.stdout).toMatch(/^refused/);
    expect(connections).toBe(0);
  });

  it('leaves no process behind: a setsid double-forked daemon dies with the sandbox, also when its parent is killed -9', async () => {
    for (const killWho of ['bwrap', 'parent'] as const) {
      const marker = `ar-daemon-${process.pid}-${Date.now()}-${killWho}`;
      const probe = `
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", "${marker}"])
    os._exit(0)
time.sleep(0.5)
print("ready", flush=True)
time.sleep(600)
`;
      const argv = trainerFor(f, probe);
      // A stand-in supervisor: starts the sandbox in a new session, as supervise.py does.
      const parent =
        killWho === 'parent'
          ? spawn('/usr/bin/python3', ['-c', 'import subprocess, sys; subprocess.Popen(sys.argv[1:], start_new_session=True).wait()', ...argv], {
              stdio: ['ignore', 'pipe', 'inherit'],
            })
          : spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'inherit'], detached: true, env: {} });
      await new Promise<void>((r) => parent.stdout!.on('data', (c) => String(c).includes('ready') && r()));
      expect(await until(() => processesWith(marker).length === 1, 3000)).toBe(true);
      parent.kill('SIGKILL');
      expect(await until(() => processesWith(marker).length === 0, 5000), `daemon survived killing the ${killWho}`).toBe(true);
    }
  });
});

describe.skipIf(!canSandbox)('inside the real evaluator sandbox', () => {
  it('reads the hand-over and validation data, cannot write them, sees no training data, and answers on fd 3', async () => {
    const f = await fixture();
    writeFileSync(join(f.state, 'harness', 'batches.py'), 'X = 1\n');
    writeFileSync(
      join(f.state, 'harness', 'evaluate.py'),
      `
import json, os, sys
import batches
def can_write(path):
    try:
        open(path, "wb").write(b"x")
        return True
    except OSError:
        return False
out = {"args": sys.argv[1:], "model": open("/eval/in/model.pt").read(), "val": open("/eval/data/val.bin").read(),
       "data": sorted(os.listdir("/eval/data")), "eval": sorted(p for p in os.listdir("/eval") if p != "__pycache__"),
       "write_in": can_write("/eval/in/model.pt"), "write_data": can_write("/eval/data/val.bin"),
       "train_seen": os.path.exists(${JSON.stringify(join(f.data, 'train.bin'))}) or os.path.exists("/eval/data/train.bin"),
       "batches": batches.X}
print("log line to stderr", file=sys.stderr)
with os.fdopen(3, "w") as result:
    result.write(json.dumps(out))
`,
    );
    const argv = evaluatorArgv(f.facts, {
      handoverDir: join(f.run, 'handover'),
      dataDir: f.data,
      harnessDir: join(f.state, 'harness'),
      python: f.python,
      env: { PATH: '/usr/bin:/bin', HOME: '/tmp', PYTHONDONTWRITEBYTECODE: '1' },
      args: ['--model', '/eval/in/model.pt', '--seed', '9'],
      forbidden: [f.ws, f.state, f.data],
    });
    const result = await runToEnd(argv, ['ignore', 'pipe', 'pipe', 'pipe']);
    expect(result.code).toBe(0);
    expect(result.stderr).toContain('log line to stderr');
    expect(JSON.parse(result.fd3)).toEqual({
      args: ['--model', '/eval/in/model.pt', '--seed', '9'],
      model: 'model',
      val: 'val.bin',
      data: ['manifest.json', 'tokenizer.json', 'token_bytes.bin', 'val.bin'].sort(),
      eval: ['batches.py', 'data', 'evaluate.py', 'in'],
      write_in: false,
      write_data: false,
      train_seen: false,
      batches: 1,
    });
    expect(readFileSync(join(f.run, 'handover', 'model.pt'), 'utf8')).toBe('model');
  });
});
