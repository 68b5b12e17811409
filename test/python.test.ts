import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { findPython, recordedPythonProblem, torchVersionProblem } from '../src/core/python.js';
import { PYTHON } from './helpers.js';

/**
 * An interpreter that reports an old torch: no PyTorch 1.x is installable here, so this script
 * answers the two questions the server asks an interpreter (the probe and the installed version)
 * the way a Python with torch 1.13 does.
 */
function interpreterWithTorch(version: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'ar-old-torch-'));
  const path = join(dir, 'python3');
  writeFileSync(
    path,
    `#!/bin/sh\ncase "$2" in\n  *importlib.metadata*) echo '${version}' ;;\n  *) echo '{"torch": "${version}", "cuda": false, "gpus": 0}' ;;\nesac\n`,
  );
  chmodSync(path, 0o755);
  return path;
}

describe('the PyTorch version floor (2.9)', () => {
  it.each([
    ['1.13.0a0+git', false],
    ['1.13.1', false],
    ['2.0.1', false],
    ['2.8.0+cu128', false],
    ['2.9.0', true],
    ['2.9.1+cpu', true],
    ['2.11.0+cu130', true],
    ['2.13.0+cpu', true],
    ['3.0.0', true],
    ['nonsense', false],
  ])('torch %s is accepted: %s', (version, accepted) => {
    const problem = torchVersionProblem(version, '/x/bin/python');
    expect(problem === undefined).toBe(accepted);
    if (problem) {
      expect(problem).toContain(`torch ${version}`);
      expect(problem).toMatch(/setup-venv\.sh/);
      expect(problem).toContain("/x/bin/python -m pip install 'torch>=2.9'");
    }
  });

  it('findPython refuses an explicit interpreter with an old torch, in one line with the fix', async () => {
    const old = interpreterWithTorch('1.13.1');
    const error = await findPython(old).then(() => 'accepted', (e: Error) => e.message);
    expect(error).toBe(torchVersionProblem('1.13.1', old));
    expect(error.split('\n')).toHaveLength(1);
  });

  it('a workspace whose interpreter is gone, has no torch, or an old one cannot serve; the test interpreter can', async () => {
    expect(await recordedPythonProblem(interpreterWithTorch('1.13.0a0+git'))).toMatch(/has torch 1\.13\.0a0\+git; the harness needs PyTorch 2\.9 or newer/);
    expect(await recordedPythonProblem('/nonexistent/bin/python')).toMatch(/The workspace's Python is gone: There is no Python at \/nonexistent\/bin\/python/);
    expect(await recordedPythonProblem('/bin/false')).toMatch(/has no torch installed/);
    expect(await recordedPythonProblem(PYTHON)).toBeUndefined();
  });
});
