import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  HARNESS_API,
  checkTrainFacts,
  checkTrainPy,
  defaultPolicy,
  inspectTrainPy,
  type RuleId,
  type TrainFacts,
  type Violation,
} from '../src/core/rules.js';
import { PYTHON, ROOT } from './helpers.js';

const scratch = mkdtempSync(join(tmpdir(), 'ar-rules-'));

/** A prepare.py with the API of docs/run-protocol.md, as the checks read it (public top-level names). */
const HARNESS = join(scratch, 'prepare.py');
writeFileSync(
  HARNESS,
  [
    '"""harness"""',
    'import os',
    'PROFILE, MAX_SEQ_LEN = "cpu", 256',
    'TIME_BUDGET: float = 20.0',
    'VOCAB_SIZE = 4096',
    'EVAL_BATCH = 8',
    'SEED = int(os.environ.get("AUTORESEARCH_SEED", "42"))',
    '_CHANNEL = None',
    'def get_tokenizer(): ...',
    'def make_dataloader(batch_size, seq_len, device): ...',
    'def budget_used(): ...',
    'def finish_training(model): ...',
    'def _send(line): ...',
    'class _Channel: ...',
    '',
  ].join('\n'),
);

/** Every snippet ends with the hand-over, so only the check under test can fire. */
const HANDOVER = '\nfrom prepare import finish_training\nfinish_training(None)\n';

async function check(source: string, harnessPath: string | null = HARNESS): Promise<Violation[]> {
  return checkTrainPy(source + HANDOVER, PYTHON, defaultPolicy, { harnessPath });
}

function summary(violations: Violation[]): string {
  return violations.map((v) => `${v.line}:${v.rule}: ${v.message}`).join('\n');
}

function facts(partial: Partial<TrainFacts>): TrainFacts {
  return {
    imports: [],
    calls: [{ name: 'prepare.finish_training', imported: true, line: 99 }],
    attributes: [],
    strings: [],
    ...partial,
  };
}

describe('the baseline train.py', () => {
  const path = resolve(ROOT, 'python/train.py');
  const text = existsSync(path) ? readFileSync(path, 'utf8') : '';
  it.runIf(text !== '')('passes every check against the package prepare.py', async () => {
    expect(summary(await checkTrainPy(text, PYTHON))).toBe('');
  });
});

describe('inspectTrainPy (real Python)', () => {
  it('reports a syntax error with its line', async () => {
    const result = await inspectTrainPy('x = 1\ny = 2\ndef f(:\n    pass\n', PYTHON);
    expect(result).toMatchObject({ status: 'syntax-error', syntaxError: { line: 3 } });
  });

  it('catches errors only the compiler sees (return outside a function)', async () => {
    const result = await inspectTrainPy('x = 1\n\nreturn x\n', PYTHON);
    expect(result).toMatchObject({ status: 'syntax-error', syntaxError: { line: 3 } });
  });

  it('resolves names through import statements only (no chasing of assignments)', async () => {
    const result = await inspectTrainPy(
      'import prepare as p\nfrom prepare import finish_training as fin\nimport torch.nn.functional as F\np.budget_used()\nfin(m)\nF.relu(x)\nf = fin\nf(m)\nmodel.finish_training()\n',
      PYTHON,
      { harnessPath: null },
    );
    if (result.status !== 'ok') throw new Error(JSON.stringify(result));
    expect(result.facts.calls.map((c) => [c.name, c.line, c.imported])).toEqual([
      ['prepare.budget_used', 4, true],
      ['prepare.finish_training', 5, true],
      ['torch.nn.functional.relu', 6, true],
      ['f', 8, false],
      ['model.finish_training', 9, false],
    ]);
    expect(result.facts.attributes.map((a) => a.name)).toEqual(['prepare.budget_used', 'torch.nn.functional.relu']);
    expect(result.facts.harness_names).toBeNull();
  });

  it('folds string concatenation, renders f-strings and skips docstrings', async () => {
    const result = await inspectTrainPy('"""Reads val.bin? No."""\na = "data/" + "va" + "l.bin"\nb = f"{d}/x_{i}.pt"\ndef g():\n    "val.bin"\n', PYTHON);
    if (result.status !== 'ok') throw new Error(JSON.stringify(result));
    expect(result.facts.strings.map((s) => [s.value, s.line])).toEqual([
      ['data/val.bin', 2],
      ['{}/x_{}.pt', 3],
    ]);
  });

  it('reports top-level modules the Python cannot find, without importing anything', async () => {
    const result = await inspectTrainPy('from __future__ import annotations\nimport math, json\nimport no_such_module_ar.sub\nfrom also_missing_ar import x\nfrom prepare import SEED\n', PYTHON);
    if (result.status !== 'ok') throw new Error(JSON.stringify(result));
    expect(result.facts.unavailable_modules).toEqual(['also_missing_ar', 'no_such_module_ar']);
  });

  it('reads the harness names from prepare.py: public top-level definitions, or a literal __all__', async () => {
    const result = await inspectTrainPy('x = 1\n', PYTHON, { harnessPath: HARNESS });
    if (result.status !== 'ok') throw new Error(JSON.stringify(result));
    expect(result.facts.harness_names).toEqual([...HARNESS_API].sort());
    const listed = join(scratch, 'listed.py');
    writeFileSync(listed, '__all__ = ["A", "b"]\nA = 1\nb = 2\nC = 3\n');
    expect(await inspectTrainPy('x = 1\n', PYTHON, { harnessPath: listed })).toMatchObject({ status: 'ok', facts: { harness_names: ['A', 'b'] } });
    expect(await inspectTrainPy('x = 1\n', PYTHON, { harnessPath: join(scratch, 'missing.py') })).toMatchObject({ status: 'ok', facts: { harness_names: null } });
  });

  it('fails (closed) when Python cannot be started', async () => {
    const result = await inspectTrainPy('x = 1\n', '/nonexistent/python3');
    expect(result.status).toBe('failed');
    const violations = await checkTrainPy('x = 1\n', '/nonexistent/python3');
    expect(violations).toEqual([expect.objectContaining({ rule: 'inspector', line: 0, message: expect.stringMatching(/nothing may run/) })]);
  });

  it('fails (closed) when the inspector times out', async () => {
    const script = join(scratch, 'slow.py');
    writeFileSync(script, 'import time\ntime.sleep(30)\n');
    const result = await inspectTrainPy('x = 1\n', PYTHON, { scriptPath: script, timeoutMs: 300 });
    expect(result).toMatchObject({ status: 'failed', error: expect.stringMatching(/timed out/) });
  });

  it('fails (closed) when the inspector prints something else', async () => {
    const script = join(scratch, 'noise.py');
    writeFileSync(script, 'print("hello")\n');
    expect((await inspectTrainPy('x = 1\n', PYTHON, { scriptPath: script })).status).toBe('failed');
  });
});

describe('checkTrainPy: text and syntax', () => {
  it('turns a syntax error into a "syntax" violation with the line and what to do', async () => {
    const violations = await checkTrainPy('import math\n\nif True\n    x = 1\n', PYTHON);
    expect(violations).toEqual([expect.objectContaining({ rule: 'syntax', line: 3, message: expect.stringMatching(/does not compile.*Fix the syntax/) })]);
  });

  it('refuses NUL bytes before running Python', async () => {
    const violations = await checkTrainPy('x = 1\ny = "\u0000"\n', PYTHON);
    expect(violations).toEqual([expect.objectContaining({ rule: 'text', line: 2 })]);
  });
});

type Case = [label: string, source: string, rule: RuleId, line: number, message: RegExp];

const NETWORK = /the sandbox has no network, so it would fail at run time.*train from scratch/;
const PROCESSES = /one process in a sandbox.*Do the work in train\.py itself/;

const REFUSED: Case[] = [
  // modules the sandbox would stop anyway
  ['import socket', 'import math\nimport socket\n', 'import', 2, NETWORK],
  ['from socket import create_connection', 'from socket import create_connection\n', 'import', 1, NETWORK],
  ['import urllib.request', 'import urllib.request\n', 'import', 1, NETWORK],
  ['from urllib import request', 'from urllib import request\n', 'import', 1, NETWORK],
  ['import http.client', 'import http.client\n', 'import', 1, NETWORK],
  ['import requests (blocked before "not installed")', 'import requests\n', 'import', 1, NETWORK],
  ['import ssl', 'import ssl\n', 'import', 1, NETWORK],
  ['import torch.hub', 'import torch.hub\n', 'import', 1, NETWORK],
  ['from torch import hub', 'from torch import hub\n', 'import', 1, NETWORK],
  ['from torch.utils.model_zoo import load_url', 'from torch.utils.model_zoo import load_url\n', 'import', 1, NETWORK],
  ['import huggingface_hub', 'import huggingface_hub\n', 'import', 1, NETWORK],
  ['import subprocess', 'import subprocess\n', 'import', 1, PROCESSES],
  ['from subprocess import run', 'from subprocess import run\n', 'import', 1, PROCESSES],
  ['import multiprocessing as mp', 'import multiprocessing as mp\n', 'import', 1, PROCESSES],
  ['import torch.multiprocessing', 'import torch.multiprocessing\n', 'import', 1, PROCESSES],
  ['import torch.distributed as dist', 'import torch.distributed as dist\n', 'import', 1, /single-process.*Remove the distributed setup/],
  // not installed, relative
  ['a package that is not installed', 'import math\nimport no_such_package_ar\n', 'import', 2, /no_such_package_ar is not installed for the Python that runs train\.py.*cannot install packages.*Remove the import/],
  ['a submodule of a missing package', 'from missing_pkg_ar.layers import Block\n', 'import', 1, /missing_pkg_ar is not installed/],
  ['a relative import', 'from .helpers import f\n', 'import', 1, /Relative import.*runs alone beside prepare\.py/],
  ['a relative import of a package', 'from .. import x\n', 'import', 1, /Relative import/],
  // the harness API
  ['from prepare import evaluate_bpb', 'from prepare import evaluate_bpb\n', 'harness', 1, /evaluate_bpb is gone: the server evaluates the model itself.*end train\.py with finish_training\(model\)/],
  ['from prepare import EVAL_TOKENS', 'from prepare import EVAL_TOKENS\n', 'harness', 1, /EVAL_TOKENS is gone/],
  ['prepare.evaluate_bpb via import prepare', 'import prepare\nprepare.evaluate_bpb(m, 8)\n', 'harness', 2, /prepare\.evaluate_bpb: evaluate_bpb is gone/],
  ['a private name of prepare', 'from prepare import _send\n', 'harness', 1, /prepare\.py has no public name _send; it offers .*budget_used, finish_training, get_tokenizer, make_dataloader\. Import one of those/],
  ['a name prepare never had', 'import prepare as p\nx = p.VAL_TOKENS\n', 'harness', 2, /no public name VAL_TOKENS/],
  ['a submodule of prepare', 'import prepare.data\n', 'harness', 1, /prepare\.data does not exist: prepare is one file/],
  // plain paths
  ['open("data/val.bin")', 'x = open("data/val.bin", "rb").read()\n', 'validation-data', 1, /"data\/val\.bin" names the validation data\. It is not in the sandbox.*Train on make_dataloader/],
  ['an absolute val.bin path', 'p = "/home/me/ws/data/val.bin"\n', 'validation-data', 1, /validation data/],
  ['a bare val.bin', 'p = "val.bin"\n', 'validation-data', 1, /validation data/],
  ['VAL.BIN in capitals', 'p = "VAL.BIN"\n', 'validation-data', 1, /validation data/],
  ['a val_ file', 'p = "cache/validation_tokens.npy"\n', 'validation-data', 1, /validation data/],
  ['val.bin built with +', 'p = "data/" + "val" + ".bin"\n', 'validation-data', 1, /validation data/],
  ['val.bin in an f-string', 'p = f"{root}/val.bin"\n', 'validation-data', 1, /validation data/],
  ['bytes path', 'p = b"data/val.bin"\n', 'validation-data', 1, /validation data/],
  ['train.bin', 'import numpy as np\nx = np.memmap("data/train.bin", dtype=np.uint16)\n', 'data-path', 2, /path into the prepared data.*make_dataloader\(\.\.\.\).*get_tokenizer\(\)/],
  ['the data folder', 'p = "./data/tokenizer.json"\n', 'data-path', 1, /prepared data/],
  ['the sandbox data folder', 'p = "/sandbox/data/manifest.json"\n', 'data-path', 1, /prepared data/],
  ['the state folder', 'p = ".autoresearch/state.db"\n', 'data-path', 1, /state folder, which a run cannot see/],
  ['the harness wiring', 'import os\nfd = int(os.environ["AUTORESEARCH_CHANNEL_FD"])\n', 'harness', 2, /wiring with the supervisor.*breaks the run.*SEED, make_dataloader, budget_used and finish_training/],
];

describe('checkTrainPy: what is refused, with what to do (real Python)', () => {
  it.each(REFUSED)('%s', async (_label, source, rule, line, message) => {
    const violations = await check(source);
    expect(violations.map((v) => [v.rule, v.line]), summary(violations)).toEqual([[rule, line]]);
    expect(violations[0].message).toMatch(message);
  });
});

/** Things the checks used to refuse by name. The sandbox and the separate evaluator make them harmless to the metric; they are not checked. */
const NOT_CHECKED: [string, string][] = [
  ['standard library beyond a short list', 'import pickle, shutil, pathlib, ctypes, inspect, threading, signal, importlib, tempfile\n'],
  ['os and sys attributes', 'import os, sys\nos.listdir(".")\nsys.modules["x"] = None\nos.system("true")\n'],
  ['builtins', 'eval("1")\nexec("x = 1")\ng = globals()\nf = getattr(object, "__subclasses__")\n'],
  ['monkeypatching', 'import math\nmath.log = lambda x: 0\n'],
  ['file writes anywhere in the scratch folder', 'open("model.bin", "wb").write(b"")\nopen("/tmp/x", "w")\n'],
  ['harmless strings', 'print(f"val_bpb: {v:.4f}")\nname = "interval.bin"\nkey = "data"\np = "metadata/x.json"\nq = "out/model.pt"\nr = "data/cache/x.pt"\nt = "my_data/train_log.txt"\n'],
  ['the harness API, every name', `from prepare import ${HARNESS_API.join(', ')}\nimport prepare\nx = prepare.TIME_BUDGET\n`],
  ['a star import from prepare', 'from prepare import *\n'],
  ['modules that exist', 'import math, json, time, os.path\nfrom collections import OrderedDict\n'],
];

describe('checkTrainPy: not checked any more (real Python)', () => {
  it.each(NOT_CHECKED)('%s', async (_label, source) => {
    expect(summary(await check(source))).toBe('');
  });

  it.runIf(existsSync(PYTHON))('torch and numpy imports pass where they are installed', async () => {
    const probe = await inspectTrainPy('import torch\nimport numpy\n', PYTHON, { harnessPath: null });
    if (probe.status !== 'ok' || (probe.facts.unavailable_modules ?? []).length > 0) return; // this Python has no torch
    expect(summary(await check('import torch\nimport torch.nn.functional as F\nimport numpy as np\nF.cross_entropy = None\n'))).toBe('');
  });
});

describe('checkTrainPy: the hand-over', () => {
  it('requires finish_training(model), at the prepare import line', async () => {
    const violations = await checkTrainPy('import math\nfrom prepare import TIME_BUDGET\nx = TIME_BUDGET\n', PYTHON, defaultPolicy, { harnessPath: HARNESS });
    expect(violations).toEqual([
      expect.objectContaining({
        rule: 'handover',
        line: 2,
        message: expect.stringMatching(/never calls finish_training\(model\).*counts as crashed.*from prepare import finish_training/),
      }),
    ]);
  });

  it('at line 1 when prepare is not imported at all', async () => {
    expect(await checkTrainPy('x = 1\n', PYTHON, defaultPolicy, { harnessPath: HARNESS })).toEqual([expect.objectContaining({ rule: 'handover', line: 1 })]);
  });

  it.each([
    ['from prepare import finish_training\nfinish_training(model)\n'],
    ['import prepare\nprepare.finish_training(model)\n'],
    ['import prepare as p\np.finish_training(model)\n'],
    ['from prepare import finish_training as hand_over\ndef main():\n    hand_over(model)\n'],
  ])('accepts %j', async (source) => {
    expect(summary(await checkTrainPy(source, PYTHON, defaultPolicy, { harnessPath: HARNESS }))).toBe('');
  });

  it.each([
    ['imported but never called', 'from prepare import finish_training\nf = finish_training\n'],
    ['a method of the same name on another object', 'model.finish_training()\n'],
    ['a function of our own with that name', 'def finish_training(m): pass\nfinish_training(model)\n'],
  ])('refuses %s', async (_label, source) => {
    expect((await checkTrainPy(source, PYTHON, defaultPolicy, { harnessPath: HARNESS })).map((v) => v.rule)).toEqual(['handover']);
  });
});

describe('checkTrainPy: the harness names come from prepare.py', () => {
  it('allows a name the harness file defines beyond the documented API, and refuses it without the file', async () => {
    const extended = join(scratch, 'extended.py');
    writeFileSync(extended, `${readFileSync(HARNESS, 'utf8')}def warmup_steps(): ...\n`);
    expect(summary(await check('from prepare import warmup_steps\n', extended))).toBe('');
    expect((await check('from prepare import warmup_steps\n', null)).map((v) => v.rule)).toEqual(['harness']);
  });

  it('reports a removed name with its replacement even when the file is unreadable (the documented API applies)', async () => {
    const violations = await check('from prepare import evaluate_bpb, make_dataloader\n', join(scratch, 'missing.py'));
    expect(violations.map((v) => [v.rule, v.line])).toEqual([['harness', 1]]);
    expect(violations[0].message).toMatch(/evaluate_bpb is gone/);
  });
});

describe('checkTrainFacts (pure)', () => {
  it('sorts by line and reports several problems at once', () => {
    const violations = checkTrainFacts({
      imports: [
        { module: 'subprocess', names: [], line: 3, level: 0 },
        { module: 'prepare', names: ['evaluate_bpb'], line: 1, level: 0 },
      ],
      calls: [],
      attributes: [],
      strings: [{ value: 'data/val.bin', line: 2 }],
    });
    expect(violations.map((v) => [v.line, v.rule])).toEqual([
      [1, 'handover'],
      [1, 'harness'],
      [2, 'validation-data'],
      [3, 'import'],
    ]);
  });

  it('deduplicates a name imported and used on one line', () => {
    const violations = checkTrainFacts(
      facts({ imports: [{ module: 'prepare', names: ['evaluate_bpb'], line: 4, level: 0 }], attributes: [{ name: 'prepare.evaluate_bpb', line: 4 }] }),
    );
    expect(violations).toHaveLength(1);
  });

  it('uses the harness names from the facts over the policy list', () => {
    const imports = [{ module: 'prepare', names: ['NEW_NAME'], line: 1, level: 0 }];
    expect(checkTrainFacts(facts({ imports }))).toHaveLength(1);
    expect(checkTrainFacts(facts({ imports, harness_names: ['NEW_NAME', 'finish_training'] }))).toEqual([]);
  });

  it('does not ask for a hand-over that the harness file does not have (an older prepare.py)', () => {
    expect(checkTrainFacts(facts({ calls: [], harness_names: ['evaluate_bpb', 'TIME_BUDGET'] }))).toEqual([]);
    expect(checkTrainFacts(facts({ calls: [], harness_names: HARNESS_API }))).toEqual([expect.objectContaining({ rule: 'handover' })]);
  });

  it('a policy can block more modules and change the hand-over', () => {
    const policy = { ...defaultPolicy, blockedModules: { ...defaultPolicy.blockedModules, triton: 'no GPU kernels on this machine' }, handoverFunction: 'hand_over' };
    const violations = checkTrainFacts(facts({ imports: [{ module: 'triton.language', names: [], line: 2, level: 0 }] }), policy);
    expect(violations.map((v) => [v.line, v.rule, v.message])).toEqual([
      [1, 'handover', expect.stringMatching(/hand_over\(model\)/)],
      [2, 'import', 'import triton.language: no GPU kernels on this machine.'],
    ]);
  });

  it('no message claims to be a security boundary', () => {
    const all = checkTrainFacts({
      imports: Object.keys(defaultPolicy.blockedModules).map((module, i) => ({ module, names: [], line: i + 1, level: 0 })),
      calls: [],
      attributes: [],
      strings: ['val.bin', 'train.bin', '.autoresearch/x', 'AUTORESEARCH_SEED'].map((value, i) => ({ value, line: 100 + i })),
    });
    expect(all.length).toBeGreaterThan(10);
    for (const v of all) expect(v.message).not.toMatch(/not allowed|forbidden|security|static rules/i);
  });
});
