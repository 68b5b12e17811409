import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tryOneIdea } from '../examples/scripted-client.js';
import { constantEdit, constantNumber, entryFor, parsePlan, PlanError, sweepPlan, trainConstants } from '../src/agent/plan.js';
import { CLI, makeWorkspace, queryState, ROOT, expectSucceeded } from './helpers.js';

const TRAIN = readFileSync(join(ROOT, 'python', 'train.py'), 'utf8');

function experiments(workspace: string): { description: string; status: string; decision: string | null; client_name: string }[] {
  return queryState(workspace, "SELECT description, status, decision, client_name FROM experiments WHERE kind = 'candidate' ORDER BY id");
}

describe('plans and sweeps (parsing)', () => {
  it('finds the module constants of train.py', () => {
    const constants = trainConstants(TRAIN);
    expect(constants.has('MATRIX_LR')).toBe(true);
    expect(constants.has('WARMDOWN_FRAC')).toBe(true);
  });

  it('rewrites one constant and keeps its comment', () => {
    const edit = constantEdit('A = 1\nMATRIX_LR = 0.04   # Muon\n', 'MATRIX_LR', '0.06');
    expect(edit).toEqual({ search: 'MATRIX_LR = 0.04   # Muon', replace: 'MATRIX_LR = 0.06   # Muon' });
    const aligned = constantEdit('DEPTH =     {"cpu": 4}[PROFILE]   # blocks\n', 'DEPTH', '3');
    expect(aligned.replace).toBe('DEPTH =     3   # blocks');
  });

  it("rewrites one profile's entry of a per-profile constant, and reads numbers", () => {
    const line = 'DEPTH          = {"gpu": 8,      "cpu": 1,    "smoke": 2}[PROFILE]     # blocks';
    expect(constantEdit(`A = 1\n${line}\n`, 'DEPTH', '3', 'cpu').replace).toBe('DEPTH          = {"gpu": 8,      "cpu": 3,    "smoke": 2}[PROFILE]     # blocks');
    expect(constantEdit(line, 'DEPTH', '4', 'smoke').replace).toBe('DEPTH          = {"gpu": 8,      "cpu": 1,    "smoke": 4}[PROFILE]     # blocks');
    expect(() => constantEdit(line, 'DEPTH', '3', 'tpu')).toThrow(/DEPTH has no "tpu" entry/);
    expect(() => constantEdit('MATRIX_LR = 0.04\n', 'MATRIX_LR', '3', 'cpu')).toThrow(/has no "cpu" entry/);
    expect(constantNumber(line, 'DEPTH', 'gpu')).toBe(8);
    expect(constantNumber('MATRIX_LR = 0.04   # Muon\n', 'MATRIX_LR')).toBe(0.04);
    expect(() => constantNumber(line, 'DEPTH')).toThrow(/DEPTH is not a number/);
    expect(() => constantNumber(line, 'NOPE')).toThrow(/no module constant NOPE/);
    for (const name of ['DEPTH', 'MODEL_DIM', 'DEVICE_BATCH', 'TOTAL_BATCH', 'MATRIX_LR']) expect(constantNumber(TRAIN, name, 'cpu')).toBeGreaterThan(0);
    expect(entryFor(`${line}\nSOFTCAP = 15.0\n`, 'DEPTH', 'cpu')).toBe('cpu');
    expect(entryFor(`${line}\nSOFTCAP = 15.0\n`, 'SOFTCAP', 'cpu')).toBeUndefined();
  });

  it('parses YAML and JSON plans into Python literals', () => {
    const yaml = 'steps:\n  - description: higher LR\n    set: {MATRIX_LR: 0.06, SOFTCAP: 30}\n  - description: by hand\n    edits:\n      - {search: "SOFTCAP = 15.0", replace: "SOFTCAP = 30.0"}\n';
    const plan = parsePlan(yaml, TRAIN);
    expect(plan.baseline).toBe(true);
    expect(plan.steps[0].set).toEqual({ MATRIX_LR: '0.06', SOFTCAP: '30' });
    const json = JSON.stringify({ on_crash: 'stop', steps: [{ description: 'x', set: { WARMDOWN_FRAC: 0.7 } }] }, null, 2);
    expect(parsePlan(json, TRAIN).on_crash).toBe('stop');
  });

  it('names the line of a syntax error', () => {
    expect(() => parsePlan('steps:\n  - description: a\n    set: {MATRIX_LR: [0.1\n', TRAIN, 'p.yaml')).toThrow(/^p\.yaml:\d+: cannot parse/);
    expect(() => parsePlan('{\n  "steps": [\n    {"description": "a",,}\n  ]\n}', TRAIN, 'p.json')).toThrow(/^p\.json:3: cannot parse/);
  });

  it('names the line of an unknown constant', () => {
    const text = 'steps:\n  - description: fine\n    set:\n      MATRIX_LR: 0.05\n  - description: typo\n    set:\n      MATRX_LR: 0.05\n';
    expect(() => parsePlan(text, TRAIN, 'plan.yaml')).toThrow(/^plan\.yaml:7: train\.py has no constant MATRX_LR/);
  });

  it('names the line of a malformed step', () => {
    const text = 'steps:\n  - description: ok\n    set: {SOFTCAP: 1}\n  - description: two kinds\n    set: {SOFTCAP: 2}\n    edits: [{search: a, replace: b}]\n';
    expect(() => parsePlan(text, TRAIN, 'plan.yaml')).toThrow(/^plan\.yaml:4: each step needs exactly one of diff, edits or set/);
    expect(() => parsePlan('steps: []\n', TRAIN, 'plan.yaml')).toThrow(/plan\.yaml:1:/);
    expect(() => parsePlan('stepz:\n  - description: x\n', TRAIN, 'plan.yaml')).toThrow(PlanError);
  });

  it('builds sweeps and refuses unknown constants', () => {
    const plan = sweepPlan(['MATRIX_LR=0.02,0.08', 'WARMDOWN_FRAC=0.3'], TRAIN);
    expect(plan.steps.map((s) => s.set)).toEqual([{ MATRIX_LR: '0.02' }, { MATRIX_LR: '0.08' }, { WARMDOWN_FRAC: '0.3' }]);
    expect(() => sweepPlan(['NOPE=1'], TRAIN)).toThrow(/no constant NOPE/);
    expect(() => sweepPlan(['matrix_lr=1'], TRAIN)).toThrow(/NAME=v1,v2/);
  });
});

describe('autoresearch-mcp agent (a real server process, driven over MCP)', () => {
  let workspace: string;
  beforeAll(async () => {
    workspace = await makeWorkspace('smoke');
  }, 600_000);

  it('runs nothing when the plan names an unknown constant', async () => {
    const plan = join(workspace, '..', 'bad-plan.yaml');
    await writeFile(plan, 'steps:\n  - description: typo\n    set:\n      NOT_A_KNOB: 1\n');
    const result = await execa(process.execPath, [CLI, 'agent', '--workspace', workspace, '--plan', plan], { reject: false });
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(/bad-plan\.yaml:4: train\.py has no constant NOT_A_KNOB/);
    expect(experiments(workspace)).toEqual([]);
  }, 120_000);

  it('runs a plan: baseline, then each step kept or discarded by the server', async () => {
    const plan = join(workspace, '..', 'plan.yaml');
    await writeFile(
      plan,
      [
        'on_crash: continue',
        'steps:',
        '  - description: lower warm-down',
        '    set: {WARMDOWN_FRAC: 0.3}',
        '  - description: a crash on purpose',
        '    edits:',
        '      - search: "SOFTCAP = 15.0"',
        '        replace: "SOFTCAP = 15.0\\nraise RuntimeError(\'boom\')"',
        '  - description: an edit that does not apply',
        '    edits: [{search: "no such line", replace: "x"}]',
        '',
      ].join('\n'),
    );
    const result = await execa(process.execPath, [CLI, 'agent', '--workspace', workspace, '--plan', plan], { reject: false });
    expect(result.exitCode, result.stderr).toBe(1);
    const rows = experiments(workspace);
    expect(rows.map((r) => [r.description, r.status])).toEqual([
      ['baseline', 'succeeded'],
      ['lower warm-down', 'succeeded'],
      ['a crash on purpose', 'crashed'],
    ]);
    expect(rows[0].decision).toBe('keep');
    expect(rows[2].decision).toBe('discard');
    // the plan measured the noise floor before its first idea
    expect(queryState(workspace, "SELECT count(*) AS n FROM experiments WHERE kind = 'noise'")[0].n).toBe(3);
    expect(new Set(rows.map((r) => r.client_name))).toEqual(new Set(['autoresearch-agent']));
    expect(result.stderr).toMatch(/refused .*an edit that does not apply/);
  }, 300_000);

  it('sweeps a constant', async () => {
    const fresh = await makeWorkspace('smoke');
    const result = await execa(process.execPath, [CLI, 'agent', '--workspace', fresh, '--sweep', 'MATRIX_LR=0.02,0.08'], { reject: false });
    expect(result.exitCode, result.stderr).toBe(0);
    expect(experiments(fresh).map((r) => r.description)).toEqual(['baseline', 'MATRIX_LR = 0.02', 'MATRIX_LR = 0.08']);
  }, 300_000);

  it('the documented scripted client example runs the loop', async () => {
    const fresh = await makeWorkspace('smoke');
    const { baseline, idea, decision } = await tryOneIdea(fresh, CLI);
    expectSucceeded(baseline);
    expectSucceeded(idea);
    // Before the noise floor is measured auto keeps nothing: it queues the noise runs and says so.
    expect(decision).toBe('inconclusive');
  }, 300_000);
});
