import { readFileSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { sha256 } from '../src/core/hashing.js';
import { parseProgressLine, parseSummary, ProcessRunner, validateResultRecord, type RunProgress } from '../src/core/runner.js';

const PYTHON = '/usr/bin/python3';
const PREPARE = 'BUDGET = 1\n';
const PINS = { 'prepare.py': sha256(PREPARE) };

/** A stand-in train.py: real Python that follows the harness protocol in whatever way a test needs. */
async function runDir(trainPy: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ar-run-'));
  await writeFile(join(dir, 'prepare.py'), PREPARE);
  await writeFile(join(dir, 'train.py'), trainPy);
  return dir;
}

const WRITE_RECORD = `
import json, os
record = {"val_bpb": 1.25, "eval_tokens": 100, "eval_bytes": 400, "nonce": os.environ["AUTORESEARCH_RUN_NONCE"],
          "hashes": HASHES}
with open(os.environ["AUTORESEARCH_RESULT_PATH"], "w") as f:
    json.dump(record, f)
print("---")
print("val_bpb:          1.250000")
print("num_steps:        3")
`;

/** A zombie (killed, not yet reaped by init) counts as dead. */
function isAlive(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z';
  } catch {
    return false;
  }
}

function runner(ceilingSeconds = 30) {
  return new ProcessRunner({
    python: PYTHON,
    dataDir: '/nonexistent',
    pins: PINS,
    pinnedFilePath: (name, cwd) => join(cwd, name),
    ceilingSeconds,
    killGraceSeconds: 1,
  });
}

async function run(dir: string, r = runner()) {
  return r.run({ experimentId: 1, cwd: dir, logPath: join(dir, 'run.log'), resultPath: join(dir, 'result.json'), slot: { index: 0 } }, () => undefined);
}

describe('parsing train.py output', () => {
  it('reads progress lines', () => {
    expect(parseProgressLine('step 00042 (12.3%) | loss: 4.123456 | lr: 0.04')).toEqual({ step: 42, percent: 12.3, loss: 4.123456 });
    expect(parseProgressLine('step 7 (100.0%) | loss: nan')).toEqual({ step: 7, percent: 100, loss: NaN });
    expect(parseProgressLine('stepping 1 (2%) | loss: 1')).toBeUndefined();
    expect(parseProgressLine('val_bpb: 1.0')).toBeUndefined();
  });

  it('reads the last summary block only', () => {
    const log = ['---', 'val_bpb: 9.0', 'noise', '---', 'val_bpb:          0.997900', 'num_steps:        953', 'mfu_percent:      39.80', 'bogus_key: 1'].join('\n');
    expect(parseSummary(log)).toEqual({ val_bpb: 0.9979, num_steps: 953, mfu_percent: 39.8 });
    expect(parseSummary('no summary here')).toEqual({});
  });

  it('trusts a result record only with this run\'s nonce, the pinned hashes and a finite metric', () => {
    const good = { val_bpb: 1.1, eval_tokens: 1, eval_bytes: 4, nonce: 'n1', hashes: PINS };
    expect(validateResultRecord(JSON.stringify(good), 'n1', PINS)).toEqual({ record: good });
    expect(validateResultRecord(undefined, 'n1', PINS)).toEqual({ error: expect.stringMatching(/no result record/) });
    expect(validateResultRecord('{', 'n1', PINS)).toEqual({ error: expect.stringMatching(/not valid JSON/) });
    expect(validateResultRecord('[]', 'n1', PINS)).toEqual({ error: expect.stringMatching(/nonce/) });
    expect(validateResultRecord(JSON.stringify({ ...good, nonce: 'old' }), 'n1', PINS)).toEqual({ error: expect.stringMatching(/nonce/) });
    expect(validateResultRecord(JSON.stringify({ ...good, val_bpb: -1 }), 'n1', PINS)).toEqual({ error: expect.stringMatching(/val_bpb/) });
    expect(validateResultRecord(JSON.stringify({ ...good, val_bpb: 'x' }), 'n1', PINS)).toEqual({ error: expect.stringMatching(/val_bpb/) });
    expect(validateResultRecord(JSON.stringify({ ...good, hashes: { 'prepare.py': 'f00' } }), 'n1', PINS)).toEqual({
      error: expect.stringMatching(/hash of prepare.py/),
    });
  });
});

describe('ProcessRunner with real Python processes', () => {
  it('succeeds on a valid record, reports progress, and takes val_bpb from the record', async () => {
    const dir = await runDir(
      `import time\nHASHES = ${JSON.stringify(PINS)}\nfor i in range(3):\n    print(f"step {i:05d} ({(i+1)*33.3:.1f}%) | loss: {5-i:.6f} | dt: 1ms", flush=True)\n    time.sleep(0.3)\n` +
        WRITE_RECORD.replace('print("val_bpb:          1.250000")', 'print("val_bpb:          0.100000")'),
    );
    const r = runner();
    const seen: RunProgress[] = [];
    r.on('progress', (_id: number, p: RunProgress) => seen.push(p));
    const outcome = await run(dir, r);
    expect(outcome.status).toBe('succeeded');
    expect(outcome.record?.val_bpb).toBe(1.25);
    expect(outcome.summary.val_bpb).toBe(0.1);
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.at(-1)).toEqual({ step: 2, percent: 99.9, loss: 3 });
  });

  it('passes the nonce, result path and data dir, and nothing secret from our environment', async () => {
    process.env.AUTORESEARCH_TEST_SECRET = 'hidden';
    const dir = await runDir(
      `import os, json\nHASHES = ${JSON.stringify(PINS)}\nprint(json.dumps({k: v for k, v in os.environ.items() if k.startswith("AUTORESEARCH")}))\n` + WRITE_RECORD,
    );
    const outcome = await run(dir);
    delete process.env.AUTORESEARCH_TEST_SECRET;
    expect(outcome.status).toBe('succeeded');
    const env = JSON.parse(readFileSync(join(dir, 'run.log'), 'utf8').split('\n')[0]);
    expect(Object.keys(env).sort()).toEqual(['AUTORESEARCH_DATA_DIR', 'AUTORESEARCH_RESULT_PATH', 'AUTORESEARCH_RUN_NONCE']);
    expect(env.AUTORESEARCH_RUN_NONCE).toMatch(/^[0-9a-f]{32}$/);
  });

  it('calls a run without a record a crash, even when it printed a summary and exited 0', async () => {
    const dir = await runDir('print("---")\nprint("val_bpb:          0.000001")\n');
    const outcome = await run(dir);
    expect(outcome.status).toBe('crashed');
    expect(outcome.error).toMatch(/exited 0 but the harness wrote no result record/);
  });

  it('rejects a record forged with a made-up nonce', async () => {
    const dir = await runDir(`HASHES = ${JSON.stringify(PINS)}\n` + WRITE_RECORD.replace('os.environ["AUTORESEARCH_RUN_NONCE"]', '"0" * 32'));
    const outcome = await run(dir);
    expect(outcome.status).toBe('crashed');
    expect(outcome.error).toMatch(/nonce/);
  });

  it('keeps the traceback of a crash in the log tail', async () => {
    const dir = await runDir('def f():\n    raise RuntimeError("shape mismatch in attention")\nf()\n');
    const outcome = await run(dir);
    expect(outcome.status).toBe('crashed');
    expect(outcome.exitCode).toBe(1);
    expect(outcome.logTail).toContain('RuntimeError: shape mismatch in attention');
  });

  it('refuses to start when a pinned harness file changed, and voids a run that changes one', async () => {
    const before = await runDir(`HASHES = ${JSON.stringify(PINS)}\n` + WRITE_RECORD);
    await writeFile(join(before, 'prepare.py'), 'BUDGET = 1000\n');
    const refused = await run(before);
    expect(refused.status).toBe('rejected');
    expect(refused.error).toMatch(/prepare.py/);

    const during = await runDir(`HASHES = ${JSON.stringify(PINS)}\nopen("prepare.py", "w").write("BUDGET = 99\\n")\n` + WRITE_RECORD);
    const voided = await run(during);
    expect(voided.status).toBe('rejected');
    expect(voided.error).toMatch(/changed during the run/);
  });

  it('kills the whole process group at the ceiling, children included', async () => {
    const dir = await runDir(
      'import subprocess, time\nchild = subprocess.Popen(["sleep", "600"])\nprint("child", child.pid, flush=True)\nwhile True:\n    time.sleep(0.1)\n',
    );
    const outcome = await run(dir, runner(2));
    expect(outcome.status).toBe('timed_out');
    expect(outcome.error).toMatch(/ceiling of 2 s/);
    const childPid = Number(/child (\d+)/.exec(readFileSync(join(dir, 'run.log'), 'utf8'))?.[1]);
    expect(childPid).toBeGreaterThan(0);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(isAlive(childPid)).toBe(false);
  });

  it('escalates to SIGKILL when a run ignores SIGTERM', async () => {
    const dir = await runDir('import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.1)\n');
    const started = Date.now();
    const outcome = await run(dir, runner(1));
    expect(outcome.status).toBe('timed_out');
    expect(outcome.signal).toBe('SIGKILL');
    expect(Date.now() - started).toBeLessThan(20_000);
  });
});
