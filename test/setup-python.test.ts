import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PYTHON, ROOT } from './helpers.js';

/** python/setup-venv.sh on the paths where it must not install anything: each says why and what to do. */

const SCRIPT = join(ROOT, 'python', 'setup-venv.sh');

function setup(dir: string, env: Record<string, string> = {}) {
  // pip's own settings: no waiting on indexes this machine may not reach.
  const result = spawnSync('bash', [SCRIPT, dir], {
    encoding: 'utf8',
    timeout: 120_000,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp', PIP_RETRIES: '0', PIP_DEFAULT_TIMEOUT: '3', ...env },
  });
  return { status: result.status, stderr: result.stderr };
}

describe('python/setup-venv.sh', () => {
  it('leaves a finished environment as it is', () => {
    const venv = join(ROOT, 'python', '.venv');
    expect(PYTHON.startsWith(venv) || process.env.AUTORESEARCH_PYTHON !== undefined).toBe(true);
    const { status, stderr } = setup(venv);
    expect(status, stderr).toBe(0);
    expect(stderr).toMatch(/\.venv is ready \(torch 2\.\d+/);
  });

  it('never touches a folder it did not make', () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'ar-venv-')), 'env');
    mkdirSync(dir);
    writeFileSync(join(dir, 'mine.txt'), 'keep me');
    const { status, stderr } = setup(dir);
    expect(status).toBe(1);
    expect(stderr).toMatch(/exists but has no PyTorch 2\.9\+ with numpy, and this script did not make it: remove it, or give another folder/);
    expect(readdirSync(dir)).toEqual(['mine.txt']);
  });

  it('names a base Python that is missing or too old', () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'ar-venv-')), 'env');
    const missing = setup(dir, { PYTHON: '/nonexistent/python3' });
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/no \/nonexistent\/python3 found: install Python 3\.10 or newer/);
    const old = join(mkdtempSync(join(tmpdir(), 'ar-py39-')), 'python3');
    // Answers the script's two questions as a Python 3.9 would: the version check fails, the version is 3.9.0.
    writeFileSync(old, '#!/bin/sh\ncase "$2" in\n  *platform*) echo 3.9.0 ;;\n  *) exit 1 ;;\nesac\n', { mode: 0o755 });
    const tooOld = setup(dir, { PYTHON: old });
    expect(tooOld.status).toBe(1);
    expect(tooOld.stderr).toMatch(/PyTorch 2\.9\+ needs 3\.10 or newer/);
    expect(existsSync(dir)).toBe(false);
  });

  it('an install that fails leaves a half-made folder that the next run removes and makes anew', () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'ar-venv-')), 'env');
    const env = { AUTORESEARCH_TORCH: 'torch==0.0.1', PYTHON: '/usr/bin/python3' };
    const first = setup(dir, env);
    expect(first.status).toBe(1);
    expect(first.stderr).toMatch(/pip could not install torch==0\.0\.1 \(the messages above say why\); nothing else was changed/);
    expect(existsSync(join(dir, '.autoresearch-partial'))).toBe(true);
    const second = setup(dir, env);
    expect(second.stderr).toMatch(/was left half made by an earlier run: removing it and starting again/);
    expect(second.status).toBe(1);
  });
});
