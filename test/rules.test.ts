import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  checkTrainFacts,
  checkTrainPy,
  defaultPolicy,
  inspectTrainPy,
  type CallFact,
  type RuleId,
  type TrainFacts,
  type Violation,
} from '../src/core/rules.js';

const PYTHON = '/usr/bin/python3';
const ROOT = resolve(import.meta.dirname, '..');

/** Every snippet ends by calling evaluate_bpb, so only the rule under test can fire. */
const EVALUATE = '\nfrom prepare import evaluate_bpb\nevaluate_bpb(None, 1)\n';

async function check(source: string): Promise<Violation[]> {
  return checkTrainPy(source + EVALUATE, PYTHON);
}

function summary(violations: Violation[]): string {
  return violations.map((v) => `${v.line}:${v.rule}: ${v.message}`).join('\n');
}

describe('the baseline train.py', () => {
  const path = resolve(ROOT, 'python/train.py');
  it.runIf(existsSync(path))('passes every rule', async () => {
    const violations = await checkTrainPy(readFileSync(path, 'utf8'), PYTHON);
    expect(summary(violations)).toBe('');
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

  it('resolves import aliases in calls and attributes', async () => {
    const result = await inspectTrainPy(
      'import torch.nn.functional as F\nfrom os import system as run\nimport numpy as np\nF.relu(x)\nrun("ls")\nnp.save("a.npy", x)\n',
      PYTHON,
    );
    if (result.status !== 'ok') throw new Error(JSON.stringify(result));
    const calls = result.facts.calls.map((c) => [c.name, c.line, c.imported]);
    expect(calls).toEqual([
      ['torch.nn.functional.relu', 4, true],
      ['os.system', 5, true],
      ['numpy.save', 6, true],
    ]);
    expect(result.facts.calls[2].first_arg_str).toBe('a.npy');
  });

  it('follows simple assignment aliases and getattr/setattr with literal names', async () => {
    const result = await inspectTrainPy('import prepare\np = prepare\np.X = 1\ng = getattr(p, "_secret")\nsetattr(p, "Y", 2)\n', PYTHON);
    if (result.status !== 'ok') throw new Error(JSON.stringify(result));
    expect(result.facts.assignments_to_attributes.map((a) => a.target)).toEqual(['prepare.X', 'prepare.Y']);
    expect(result.facts.attributes.map((a) => a.name)).toContain('prepare._secret');
  });

  it('folds string concatenation, renders f-strings and skips docstrings', async () => {
    const result = await inspectTrainPy('"""Reads val.bin? No."""\na = "data/" + "va" + "l.bin"\nb = f"{d}/x_{i}.pt"\n', PYTHON);
    if (result.status !== 'ok') throw new Error(JSON.stringify(result));
    expect(result.facts.strings.map((s) => [s.value, s.line])).toEqual([
      ['data/val.bin', 2],
      ['{}/x_{}.pt', 3],
    ]);
  });

  it('reports open() mode literals', async () => {
    const result = await inspectTrainPy('open("a", "w")\nopen("b", mode="rb")\nopen("c")\n', PYTHON);
    if (result.status !== 'ok') throw new Error(JSON.stringify(result));
    expect(result.facts.calls.map((c) => c.mode_arg ?? null)).toEqual(['w', 'rb', null]);
  });

  it('fails (closed) when Python cannot be started', async () => {
    const result = await inspectTrainPy('x = 1\n', '/nonexistent/python3');
    expect(result.status).toBe('failed');
    const violations = await checkTrainPy('x = 1\n', '/nonexistent/python3');
    expect(violations).toHaveLength(1);
    expect(violations[0].rule).toBe('inspector');
  });

  it('fails (closed) when the inspector times out', async () => {
    const script = join(mkdtempSync(join(tmpdir(), 'ar-inspect-')), 'slow.py');
    writeFileSync(script, 'import time\ntime.sleep(30)\n');
    const result = await inspectTrainPy('x = 1\n', PYTHON, { scriptPath: script, timeoutMs: 300 });
    expect(result).toMatchObject({ status: 'failed', error: expect.stringMatching(/timed out/) });
  });

  it('fails (closed) when the inspector prints something else', async () => {
    const script = join(mkdtempSync(join(tmpdir(), 'ar-inspect-')), 'noise.py');
    writeFileSync(script, 'print("hello")\n');
    expect((await inspectTrainPy('x = 1\n', PYTHON, { scriptPath: script })).status).toBe('failed');
  });
});

describe('checkTrainPy: text and syntax', () => {
  it('turns a syntax error into a "syntax" violation with the line', async () => {
    const violations = await checkTrainPy('import math\n\nif True\n    x = 1\n', PYTHON);
    expect(violations).toEqual([expect.objectContaining({ rule: 'syntax', line: 3 })]);
    expect(violations[0].message).toMatch(/does not compile/);
  });

  it('refuses NUL bytes before running Python', async () => {
    const violations = await checkTrainPy('x = 1\ny = "\u0000"\n', PYTHON);
    expect(violations).toEqual([expect.objectContaining({ rule: 'text', line: 2 })]);
  });
});

type Case = [label: string, source: string, rule: RuleId, line: number];

const FORBIDDEN: Case[] = [
  // imports with a known reason
  ['import subprocess', 'import math\nimport subprocess\n', 'forbidden-api', 2],
  ['from subprocess import run', 'from subprocess import run\n', 'forbidden-api', 1],
  ['import socket', 'import socket\n', 'forbidden-api', 1],
  ['import urllib.request', 'import urllib.request\n', 'forbidden-api', 1],
  ['import http.client', 'import http.client\n', 'forbidden-api', 1],
  ['import requests', 'import requests\n', 'forbidden-api', 1],
  ['import multiprocessing', 'import multiprocessing as mp\n', 'forbidden-api', 1],
  ['from concurrent.futures import ThreadPoolExecutor', 'from concurrent.futures import ThreadPoolExecutor\n', 'forbidden-api', 1],
  ['import ctypes', 'import ctypes\n', 'forbidden-api', 1],
  ['import shutil', 'import shutil\n', 'forbidden-api', 1],
  ['import pathlib', 'from pathlib import Path\n', 'forbidden-api', 1],
  ['import pickle', 'import pickle\n', 'forbidden-api', 1],
  ['import marshal', 'import marshal\n', 'forbidden-api', 1],
  ['import importlib', 'import importlib\n', 'forbidden-api', 1],
  ['import builtins', 'import builtins\n', 'forbidden-api', 1],
  ['import signal', 'import signal\n', 'forbidden-api', 1],
  ['import threading', 'import threading\n', 'forbidden-api', 1],
  ['import atexit', 'import atexit\n', 'forbidden-api', 1],
  ['import inspect', 'import inspect\n', 'forbidden-api', 1],
  ['import traceback', 'import traceback\n', 'forbidden-api', 1],
  ['torch.hub', 'import torch\nm = torch.hub.load("x", "y")\n', 'forbidden-api', 2],
  ['torch.utils.cpp_extension', 'from torch.utils.cpp_extension import load_inline\n', 'forbidden-api', 1],
  ['from torch.utils import cpp_extension', 'from torch.utils import cpp_extension\n', 'forbidden-api', 1],
  ['torch.distributed', 'import torch\n\ntorch.distributed.init_process_group("nccl")\n', 'forbidden-api', 3],
  ['torch.overrides', 'from torch.overrides import TorchFunctionMode\n', 'forbidden-api', 1],
  ['torch.library', 'import torch.library\n', 'forbidden-api', 1],
  ['torch._C', 'import torch\ntorch._C._set_something(1)\n', 'forbidden-api', 2],
  // imports outside the allow-list
  ['a third-party package', 'import scipy\n', 'import', 1],
  ['a relative import', 'from . import helpers\n', 'import', 1],
  ['a star import', 'from torch import *\n', 'import', 1],
  // os / sys / gc attributes
  ['os.system', 'import os\nos.system("ls")\n', 'module-attribute', 2],
  ['from os import system', 'from os import system\nsystem("ls")\n', 'module-attribute', 1],
  ['an aliased os.system', 'import os as o\n\no.system("ls")\n', 'module-attribute', 3],
  ['os.system through an assignment alias', 'import os\nrun = os.system\nrun("ls")\n', 'module-attribute', 2],
  ['getattr(os, "system")', 'import os\ngetattr(os, "system")("ls")\n', 'module-attribute', 2],
  ['os.popen', 'import os\nos.popen("ls")\n', 'module-attribute', 2],
  ['os.execv', 'import os\nos.execv("/bin/sh", [])\n', 'module-attribute', 2],
  ['os.spawnl', 'import os\nos.spawnl(0, "/bin/sh")\n', 'module-attribute', 2],
  ['os.fork', 'import os\npid = os.fork()\n', 'module-attribute', 2],
  ['os.kill', 'import os\nos.kill(1, 9)\n', 'module-attribute', 2],
  ['os.remove', 'import os\nos.remove("prepare.py")\n', 'module-attribute', 2],
  ['os.unlink', 'import os\nos.unlink("x")\n', 'module-attribute', 2],
  ['os.rename', 'import os\nos.rename("a", "b")\n', 'module-attribute', 2],
  ['os.replace', 'import os\nos.replace("a", "b")\n', 'module-attribute', 2],
  ['os.rmdir', 'import os\nos.rmdir("a")\n', 'module-attribute', 2],
  ['os.mkdir', 'import os\nos.mkdir("a")\n', 'module-attribute', 2],
  ['os.listdir', 'import os\nos.listdir("data")\n', 'module-attribute', 2],
  ['os.putenv', 'import os\nos.putenv("A", "1")\n', 'module-attribute', 2],
  ['os.environ.items', 'import os\nfor k, v in os.environ.items():\n    pass\n', 'module-attribute', 2],
  ['os used as a value', 'import os\nf(os)\n', 'module-attribute', 2],
  ['sys.modules', 'import sys\nsys.modules["prepare"].X = 1\n', 'module-attribute', 2],
  ['sys._getframe', 'import sys\nf = sys._getframe(1)\n', 'module-attribute', 2],
  ['sys.settrace', 'import sys\nsys.settrace(None)\n', 'module-attribute', 2],
  ['gc.get_objects', 'import gc\nobjs = gc.get_objects()\n', 'module-attribute', 2],
  ['gc.get_referrers', 'from gc import get_referrers\n', 'module-attribute', 1],
  // builtins
  ['eval', 'x = eval("1 + 1")\n', 'builtin', 1],
  ['exec', 'exec("x = 1")\n', 'builtin', 1],
  ['compile', 'code = compile("1", "f", "eval")\n', 'builtin', 1],
  ['__import__', 'm = __import__("os")\n', 'builtin', 1],
  ['globals()', 'globals()["x"] = 1\n', 'builtin', 1],
  ['locals()', 'print(locals())\n', 'builtin', 1],
  ['breakpoint()', 'breakpoint()\n', 'builtin', 1],
  ['__builtins__', 'o = __builtins__\n', 'builtin', 1],
  ['vars() without arguments', 'v = vars()\n', 'builtin', 1],
  ['vars(module)', 'import time\nv = vars(time)\n', 'builtin', 2],
  ['open passed as a value', 'f = open\n', 'builtin', 1],
  // files
  ['open for writing', 'with open("notes.txt", "w") as f:\n    f.write("x")\n', 'file-write', 1],
  ['open for appending', 'open("log.txt", "a")\n', 'file-write', 1],
  ['open exclusive create', 'open("log.txt", mode="x")\n', 'file-write', 1],
  ['open read-write', 'open("log.txt", "r+")\n', 'file-write', 1],
  ['open with a computed mode', 'm = "w"\nopen("log.txt", m)\n', 'file-write', 2],
  ['open with **kwargs', 'open("log.txt", **kw)\n', 'file-write', 1],
  ['open for writing outside the workspace', 'open("out/../../x.txt", "w")\n', 'file-write', 1],
  ['open a computed path', 'p = "data/train.bin"\nopen(p, "rb")\n', 'file-read', 2],
  ['open an absolute path', 'open("/proc/self/environ")\n', 'file-read', 1],
  ['open a parent path', 'open("../prepare.py")\n', 'file-read', 1],
  ['torch.save outside out/', 'import torch\ntorch.save(model.state_dict(), "model.pt")\n', 'file-write', 2],
  ['torch.save to a computed path', 'import torch\ntorch.save(sd, path)\n', 'file-write', 2],
  ['torch.save by keyword', 'import torch\ntorch.save(sd, f="model.pt")\n', 'file-write', 2],
  ['torch.save escaping out/', 'import torch\ntorch.save(sd, "out/../prepare.py")\n', 'file-write', 2],
  ['torch.save with an f-string not under out/', 'import torch\ntorch.save(sd, f"{d}/m.pt")\n', 'file-write', 2],
  ['numpy.save', 'import numpy as np\nnp.save("x.npy", a)\n', 'file-write', 2],
  ['numpy.memmap writable', 'import numpy as np\nm = np.memmap("data/train.bin", mode="r+")\n', 'file-write', 2],
  ['ndarray.tofile', 'a.numpy().tofile("x.bin")\n', 'file-write', 1],
  ['os.makedirs outside out/', 'import os\nos.makedirs("logs", exist_ok=True)\n', 'file-write', 2],
  ['torch.load of a computed path', 'import torch\nsd = torch.load(path)\n', 'file-read', 2],
  // validation data
  ['val.bin', 'with open("data/val.bin", "rb") as f:\n    pass\n', 'validation-data', 1],
  ['val.bin via numpy', 'import numpy as np\nv = np.memmap("data/val.bin", dtype=np.uint16, mode="r")\n', 'validation-data', 2],
  ['val.bin folded from pieces', 'p = "data/" + "va" + "l.bin"\n', 'validation-data', 1],
  ['val.bin in an f-string', 'p = f"{DATA}/val.bin"\n', 'validation-data', 1],
  ['a validation folder', 'p = "data/validation/shard_000.bin"\n', 'validation-data', 1],
  ['a val folder', 'p = "val/shard.bin"\n', 'validation-data', 1],
  ['a val_ data file', 'p = "data/val_tokens.npy"\n', 'validation-data', 1],
  // result record and harness environment
  ['AUTORESEARCH_ env read', 'import os\np = os.environ["AUTORESEARCH_RESULT_PATH"]\n', 'result-record', 2],
  ['AUTORESEARCH_ getenv', 'import os\nn = os.getenv("AUTORESEARCH_RUN_NONCE")\n', 'result-record', 2],
  ['AUTORESEARCH_ environ.get', 'import os\nd = os.environ.get("AUTORESEARCH_DATA_DIR", "data")\n', 'result-record', 2],
  ['result.json', 'p = "out/result.json"\n', 'result-record', 1],
  ['an AUTORESEARCH_ identifier', 'AUTORESEARCH_NONCE = 1\n', 'result-record', 1],
  // harness internals
  ['a private name from prepare', 'from prepare import _read_manifest\n', 'harness', 1],
  ['a non-public name from prepare', 'from prepare import DATA_DIR\n', 'harness', 1],
  ['prepare.<internal>', 'import prepare\nd = prepare.DATA_DIR\n', 'harness', 2],
  ['a prepare submodule', 'import prepare.internal\n', 'harness', 1],
  ['prepare used as a value', 'import prepare\nhelpers(prepare)\n', 'harness', 2],
  ['assigning prepare.evaluate_bpb', 'import prepare\nprepare.evaluate_bpb = lambda m, b: 0.5\n', 'harness', 2],
  ['assigning through an alias', 'import prepare as P\nP.TIME_BUDGET = 10_000\n', 'harness', 2],
  ['setattr on prepare', 'import prepare\nsetattr(prepare, "TIME_BUDGET", 1e9)\n', 'harness', 2],
  ['an attribute of a public harness function', 'from prepare import evaluate_bpb as ev\nev.__defaults__ = (1,)\n', 'harness', 2],
  ['item assignment into prepare', 'import prepare\nprepare.CONFIG["x"] = 1\n', 'harness', 2],
  // monkeypatching
  ['time.time = ...', 'import time\ntime.time = lambda: 0.0\n', 'monkeypatch', 2],
  ['time.perf_counter = ...', 'from time import perf_counter\nimport time\ntime.perf_counter = perf_counter\n', 'monkeypatch', 3],
  ['setattr(time, "time", ...)', 'import time\nsetattr(time, "time", f)\n', 'monkeypatch', 2],
  ['F.cross_entropy = ...', 'import torch.nn.functional as F\nF.cross_entropy = my_loss\n', 'monkeypatch', 2],
  ['torch.Tensor method', 'import torch\ntorch.Tensor.float = lambda self: self\n', 'monkeypatch', 2],
  ['del a torch function', 'import torch\ndel torch.nn.functional.relu\n', 'monkeypatch', 2],
  ['torch.nn.Module.__call__', 'import torch.nn as nn\nnn.Module.__call__ = f\n', 'monkeypatch', 2],
  ['sys.stdout = ...', 'import sys\nsys.stdout = None\n', 'monkeypatch', 2],
  // introspection
  ['setattr with a computed name on a module', 'import time\nsetattr(time, name, f)\n', 'introspection', 2],
  ['getattr with a computed name on a module', 'import torch\nfn = getattr(torch, name)\n', 'introspection', 2],
  ['a module __dict__', 'import time\ntime.__dict__["time"] = f\n', 'introspection', 2],
  ['function __globals__', 'g = evaluate_bpb.__globals__\n', 'introspection', 1],
  ['frame f_back', 'def forward(self, x):\n    up = frame.f_back.f_locals\n', 'introspection', 2],
  ['__subclasses__', 'c = ().__class__.__base__.__subclasses__()\n', 'introspection', 1],
  // op interception
  ['__torch_function__', 'import torch\nclass T(torch.Tensor):\n    @classmethod\n    def __torch_function__(cls, f, t, a=(), k=None):\n        return 0\n', 'op-interception', 4],
  ['__torch_dispatch__ assigned', 'class T:\n    __torch_dispatch__ = staticmethod(f)\n', 'op-interception', 2],
];

describe('checkTrainPy: forbidden patterns (real Python)', () => {
  it.each(FORBIDDEN)('%s', async (_label, source, rule, line) => {
    const violations = await check(source);
    const hit = violations.find((v) => v.rule === rule && v.line === line);
    if (!hit) throw new Error(`expected ${rule} on line ${line}, got:\n${summary(violations) || '(none)'}`);
    expect(hit.message.length).toBeGreaterThan(20);
  });
});

const ALLOWED: [label: string, source: string][] = [
  ['val_bpb = evaluate_bpb(model, 32)', 'from prepare import evaluate_bpb\nval_bpb = evaluate_bpb(model, 32)\n'],
  ['import torch.nn.functional as F', 'import torch.nn.functional as F\ny = F.relu(x)\n'],
  ['from prepare import MAX_SEQ_LEN', 'from prepare import MAX_SEQ_LEN, TIME_BUDGET, VOCAB_SIZE, EVAL_TOKENS, PROFILE\n'],
  ['every public harness name', 'from prepare import get_tokenizer, make_dataloader\ntok = get_tokenizer()\nloader = make_dataloader(8, 256, "cpu")\n'],
  ['import prepare and use public names', 'import prepare\nT = prepare.MAX_SEQ_LEN\nprepare.evaluate_bpb(m, 1)\n'],
  ['rebinding a harness name locally', 'from prepare import TIME_BUDGET\nTIME_BUDGET = TIME_BUDGET * 0.9\n'],
  ['os.environ.get("CUDA_VISIBLE_DEVICES")', 'import os\nd = os.environ.get("CUDA_VISIBLE_DEVICES")\n'],
  ['setting an allocator variable', 'import os\nos.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"\nos.environ.setdefault("OMP_NUM_THREADS", "2")\n'],
  ['os.getenv, os.path, os.cpu_count', 'import os\nn = int(os.getenv("N", "1"))\np = os.path.join("out", "x")\nc = os.cpu_count()\n'],
  ['f-strings with val_bpb', 'v = 0.99\nprint(f"val_bpb:          {v:.6f}")\nprint(f"{v=}")\n'],
  ['val-named identifiers', 'val_bpb = 1.0\nx_val = 2\n_val = 3\nbest_val_loss = 4\n'],
  ['"val" as a dict key and prose', 'losses = {"val": 1.0, "train": 2.0}\nprint("validation loss", losses["val"])\nprint("interval", "eval")\n'],
  ['val.bin in a docstring and a comment', '"""We never read val.bin."""\n# not val.bin either\ndef f():\n    """Nor here: data/val.bin"""\n    return 1\n'],
  ['torch config knobs', 'import torch\ntorch.backends.cuda.matmul.allow_tf32 = True\ntorch.backends.cudnn.benchmark = True\ntorch._inductor.config.coordinate_descent_tuning = True\ntorch._dynamo.config.cache_size_limit = 64\n'],
  ['torch.save under out/', 'import torch\ntorch.save(model.state_dict(), "out/model.pt")\ntorch.save(sd, "./out/ckpt.pt")\n'],
  ['torch.save to an f-string under out/', 'import torch\nfor step in range(3):\n    torch.save(sd, f"out/ckpt_{step}.pt")\n'],
  ['os.makedirs("out")', 'import os\nos.makedirs("out", exist_ok=True)\nos.makedirs("out/ckpt", exist_ok=True)\n'],
  ['open for reading', 'with open("data/notes.txt") as f:\n    s = f.read()\nb = open("data/train.bin", "rb")\n'],
  ['open for writing under out/', 'with open("out/log.txt", "w") as f:\n    f.write("x")\n'],
  ['read-only memmap of training data', 'import numpy as np\nt = np.memmap("data/train.bin", dtype=np.uint16, mode="r")\n'],
  ['gc and sys basics', 'import gc, sys\ngc.collect()\ngc.disable()\ngc.freeze()\nsys.stdout.flush()\nprint(sys.version_info.major)\nsys.exit(0)\n'],
  ['time basics', 'import time\nt0 = time.time()\ntime.sleep(0)\ndt = time.perf_counter() - t0\n'],
  ['future, dataclasses, typing, functools, itertools, math, random', 'from __future__ import annotations\nfrom dataclasses import dataclass\nfrom typing import Optional\nimport functools, itertools, math, random, collections, contextlib, copy, enum, json, re, statistics, warnings\n@dataclass\nclass Config:\n    depth: int = 4\nwarnings.filterwarnings("ignore")\nrandom.seed(0)\n'],
  ['numpy and triton', 'import numpy as np\nimport triton\nimport triton.language as tl\na = np.zeros(3)\n'],
  ['torch.compile and model.eval', 'import torch\nm = torch.compile(model)\nmodel.eval()\nmodel.train()\n'],
  ['getattr/hasattr with literal public names', 'import torch\nc = getattr(torch, "compiler", None)\nok = hasattr(torch, "compile")\nsetattr(self, name, value)\nv = getattr(obj, name)\n'],
  ['torch.optim subclass and super().__init__', 'import torch\nclass Muon(torch.optim.Optimizer):\n    def __init__(self, params):\n        super().__init__(params, {})\n'],
  ['vars of an ordinary object', 'cfg = vars(config)\n'],
  ['a try/except ImportError', 'try:\n    from torch.nn.attention.flex_attention import flex_attention\nexcept ImportError:\n    flex_attention = None\n'],
];

describe('checkTrainPy: allowed idioms (real Python)', () => {
  it.each(ALLOWED)('%s', async (_label, source) => {
    expect(summary(await check(source))).toBe('');
  });
});

describe('checkTrainPy: evaluation', () => {
  it('requires a call of evaluate_bpb', async () => {
    const violations = await checkTrainPy('import torch\nfrom prepare import MAX_SEQ_LEN\nprint(1)\n', PYTHON);
    expect(violations).toEqual([expect.objectContaining({ rule: 'evaluation', line: 2 })]);
  });

  it('accepts prepare.evaluate_bpb(...) through the module', async () => {
    expect(await checkTrainPy('import prepare\nprepare.evaluate_bpb(m, 8)\n', PYTHON)).toEqual([]);
  });

  it('refuses an over-long string literal', async () => {
    const violations = await check(`blob = "${'x'.repeat(5000)}"\n`);
    expect(violations).toEqual([expect.objectContaining({ rule: 'long-string', line: 1 })]);
  });

  it('reports several violations sorted by line', async () => {
    const violations = await check('import subprocess\nimport os\nx = 1\nos.system("ls")\neval("1")\n');
    expect(violations.map((v) => [v.line, v.rule])).toEqual([
      [1, 'forbidden-api'],
      [4, 'module-attribute'],
      [5, 'builtin'],
    ]);
  });
});

// ---- checkTrainFacts on hand-written facts (no Python) ----------------------------------------

function facts(partial: Partial<TrainFacts>): TrainFacts {
  const evaluate: CallFact = { name: 'prepare.evaluate_bpb', imported: true, line: 99, args_count: 2 };
  return {
    imports: [],
    calls: [evaluate],
    attributes: [],
    names: [],
    strings: [],
    assignments_to_attributes: [],
    ...partial,
    ...(partial.calls ? { calls: [...partial.calls, evaluate] } : {}),
  };
}

describe('checkTrainFacts (pure)', () => {
  it('passes empty facts with an evaluation call', () => {
    expect(checkTrainFacts(facts({}))).toEqual([]);
  });

  it('refuses a forbidden import with its reason', () => {
    const [v] = checkTrainFacts(facts({ imports: [{ module: 'subprocess', names: [], line: 7, level: 0 }] }));
    expect(v).toMatchObject({ rule: 'forbidden-api', line: 7 });
    expect(v.message).toMatch(/processes/);
  });

  it('uses the longest forbidden prefix (torch allowed, torch.hub not)', () => {
    const violations = checkTrainFacts(facts({ imports: [{ module: 'torch.hub', names: [], line: 1, level: 0 }, { module: 'torch.nn', names: [], line: 2, level: 0 }] }));
    expect(violations.map((v) => [v.line, v.rule])).toEqual([[1, 'forbidden-api']]);
  });

  it('checks from-imports of prepare against the public names', () => {
    const violations = checkTrainFacts(
      facts({ imports: [{ module: 'prepare', names: ['MAX_SEQ_LEN', '_val_path', 'evaluate_bpb'], line: 3, level: 0 }] }),
    );
    expect(violations).toEqual([expect.objectContaining({ rule: 'harness', line: 3 })]);
    expect(violations[0].message).toMatch(/prepare\._val_path is not part of the harness API/);
  });

  it('judges open() modes', () => {
    const open = (mode: string | undefined, line: number): CallFact => ({
      name: 'open',
      imported: false,
      line,
      args_count: mode ? 2 : 1,
      args: mode ? [{ kind: 'str', value: 'notes.txt' }, { kind: 'str', value: mode }] : [{ kind: 'str', value: 'notes.txt' }],
      keywords: [],
    });
    const violations = checkTrainFacts(facts({ calls: [open(undefined, 1), open('rb', 2), open('w', 3), open('ab', 4), open('r+', 5)] }));
    expect(violations.map((v) => [v.line, v.rule])).toEqual([
      [3, 'file-write'],
      [4, 'file-write'],
      [5, 'file-write'],
    ]);
  });

  it('does not treat a method called open() as the builtin', () => {
    const call: CallFact = { name: 'zipfile_obj.open', imported: false, line: 1, args_count: 2, args: [{ kind: 'name', name: 'p', imported: false }, { kind: 'str', value: 'w' }] };
    expect(checkTrainFacts(facts({ calls: [call] }))).toEqual([]);
  });

  it('honours a configured output folder', () => {
    const save: CallFact = { name: 'torch.save', imported: true, line: 4, args_count: 2, args: [{ kind: 'name', name: 'sd', imported: false }, { kind: 'str', value: 'checkpoints/m.pt' }] };
    expect(checkTrainFacts(facts({ calls: [save] }))).toEqual([expect.objectContaining({ rule: 'file-write', line: 4 })]);
    expect(checkTrainFacts(facts({ calls: [save] }), { ...defaultPolicy, allowedOutputDir: 'checkpoints/' })).toEqual([]);
  });

  it('flags validation and result-record strings but not val_bpb', () => {
    const violations = checkTrainFacts(
      facts({
        strings: [
          { value: 'val_bpb: {}', line: 1 },
          { value: 'data/val.bin', line: 2 },
          { value: 'AUTORESEARCH_RESULT_PATH', line: 3 },
          { value: 'validation', line: 4 },
          { value: 'DATA/VAL.BIN', line: 5 },
        ],
      }),
    );
    expect(violations.map((v) => [v.line, v.rule])).toEqual([
      [2, 'validation-data'],
      [3, 'result-record'],
      [5, 'validation-data'],
    ]);
  });

  it('allows assignments only under the configuration prefixes', () => {
    const violations = checkTrainFacts(
      facts({
        assignments_to_attributes: [
          { target: 'torch.backends.cudnn.benchmark', line: 1, imported: true },
          { target: 'torch.backends_evil', line: 2, imported: true },
          { target: 'self.weight', line: 3, imported: false },
          { target: 'time.monotonic', line: 4, imported: true },
        ],
      }),
    );
    expect(violations.map((v) => [v.line, v.rule])).toEqual([
      [2, 'monkeypatch'],
      [4, 'monkeypatch'],
    ]);
    expect(violations[1].message).toMatch(/Timing is measured by the runner/);
  });

  it('lets a policy allow more of os', () => {
    const attribute = { name: 'os.listdir', line: 2, imported: true };
    expect(checkTrainFacts(facts({ attributes: [attribute] }))).toHaveLength(1);
    const policy = { ...defaultPolicy, restrictedModules: { ...defaultPolicy.restrictedModules, os: [...defaultPolicy.restrictedModules.os, 'listdir'] } };
    expect(checkTrainFacts(facts({ attributes: [attribute] }), policy)).toEqual([]);
  });

  it('does not require evaluation when the policy says so', () => {
    const bare: TrainFacts = { imports: [], calls: [], attributes: [], names: [], strings: [], assignments_to_attributes: [] };
    expect(checkTrainFacts(bare)).toEqual([expect.objectContaining({ rule: 'evaluation', line: 1 })]);
    expect(checkTrainFacts(bare, { ...defaultPolicy, requireEvaluateCall: false })).toEqual([]);
  });

  it('ignores builtins-like names that are not builtins (object attributes)', () => {
    const violations = checkTrainFacts(
      facts({ attributes: [{ name: 'model.eval', line: 1, imported: false }, { name: 'torch.compile', line: 2, imported: true }], names: [{ name: 'compile_model', raw: 'compile_model', line: 3, ctx: 'load', called: true }] }),
    );
    expect(violations).toEqual([]);
  });

  it('does not trip on inherited object keys used as names', () => {
    const violations = checkTrainFacts(facts({ names: [{ name: 'constructor', raw: 'constructor', line: 1, ctx: 'load', called: false }, { name: 'toString', raw: 'toString', line: 2, ctx: 'load', called: true }] }));
    expect(violations).toEqual([]);
  });

  it('deduplicates identical violations', () => {
    const attribute = { name: 'os.system', line: 2, imported: true };
    expect(checkTrainFacts(facts({ attributes: [attribute, attribute] }))).toHaveLength(1);
  });
});
