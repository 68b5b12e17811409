import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { sha256File } from '../src/core/hashing.js';
import {
  cpuThreadsPerRun,
  lastJsonObject,
  lastTrainerLine,
  parseEvaluatorResult,
  parseProgressLine,
  parseSummary,
  parseSupervisorReport,
  type RunProgress,
} from '../src/core/runner.js';
import { budgetOf, Lab } from '../src/core/lab.js';
import { sandboxAvailable } from '../src/core/sandbox.js';
import { Store } from '../src/core/store.js';
import { PYTHON } from './helpers.js';
import { makeRunner, peekNextId, PREPARE, runTrain, seen, setup, trainPy, type Setup } from './runner-fixtures.js';

describe('threads per CPU run', () => {
  it.each([
    [2, 1, undefined],
    [16, 1, undefined],
    [2, 0, undefined],
    [2, 2, 1],
    [2, 3, 1],
    [16, 2, 8],
    [16, 3, 5],
    [8, 8, 1],
  ])('%i cores, %i CPU slots: %s threads each', (cores, slots, threads) => {
    expect(cpuThreadsPerRun(cores, slots)).toBe(threads);
  });

  it.each([
    [16, 1, 1],
    [16, 4, 1],
    [2, 0, undefined],
  ])('with the CPU clock, %i cores, %i CPU slots: %s thread each', (cores, slots, threads) => {
    expect(cpuThreadsPerRun(cores, slots, 'cpu')).toBe(threads);
  });
});

describe('parsing what the run prints', () => {
  it('reads progress lines', () => {
    expect(parseProgressLine('step 00042 (12.3%) | loss: 4.123456 | lr: 0.04')).toEqual({ step: 42, percent: 12.3, loss: 4.123456 });
    expect(parseProgressLine('step 7 (100.0%) | loss: nan')).toEqual({ step: 7, percent: 100, loss: NaN });
    expect(parseProgressLine('stepping 1 (2%) | loss: 1')).toBeUndefined();
    expect(parseProgressLine('val_bpb: 1.0')).toBeUndefined();
  });

  it('finds the trainer\'s last line in a log tail, past the supervisor\'s and the evaluator\'s lines', () => {
    const tail = 'step 00001 (1.0%) | loss: 6.2\nTraceback (most recent call last):\n  File "x"\nOSError: [Errno 30] Read-only file system\n\nsupervise: outcome exited\n[evaluate] nothing\n';
    expect(lastTrainerLine(tail)).toBe('OSError: [Errno 30] Read-only file system');
    expect(lastTrainerLine('supervise: trainer started\n')).toBeUndefined();
    expect(lastTrainerLine('slurm: job 4 on n1 CUDA_VISIBLE_DEVICES=\nsupervise: trainer started\n')).toBeUndefined();
    expect(lastTrainerLine('x'.repeat(400))).toHaveLength(300);
  });

  it('reads the last summary block only', () => {
    const log = ['---', 'val_bpb: 9.0', 'noise', '---', 'val_bpb:          0.997900', 'num_steps:        953', 'mfu_percent:      39.80', 'bogus_key: 1'].join('\n');
    expect(parseSummary(log)).toEqual({ val_bpb: 0.9979, num_steps: 953, mfu_percent: 39.8 });
    expect(parseSummary('no summary here')).toEqual({});
  });

  it('takes the supervisor\'s last JSON line with a known outcome', () => {
    expect(lastJsonObject('noise\n{"a": 1}\n{"b": 2}\n')).toEqual({ b: 2 });
    expect(lastJsonObject('[1]\n')).toBeUndefined();
    expect(parseSupervisorReport('{"outcome": "handed_over", "training_seconds": 3}\n')).toMatchObject({ outcome: 'handed_over' });
    expect(parseSupervisorReport('{"outcome": "won"}')).toBeUndefined();
    expect(parseSupervisorReport('')).toBeUndefined();
  });

  it('accepts an evaluator result only with a positive finite val_bpb, counts and the model hash', () => {
    const good = { ok: true, val_bpb: 1.2, eval_tokens: 10, eval_bytes: 40, model_sha256: 'a'.repeat(64) };
    expect(parseEvaluatorResult(JSON.stringify(good))).toEqual({ result: good });
    expect(parseEvaluatorResult('')).toEqual({ error: expect.stringMatching(/no result/) });
    expect(parseEvaluatorResult('{')).toEqual({ error: expect.stringMatching(/not a JSON object/) });
    expect(parseEvaluatorResult(JSON.stringify({ ...good, val_bpb: -1 }))).toEqual({ error: expect.stringMatching(/val_bpb/) });
    expect(parseEvaluatorResult(JSON.stringify({ ...good, val_bpb: 'NaN' }))).toEqual({ error: expect.stringMatching(/val_bpb/) });
    expect(parseEvaluatorResult(JSON.stringify({ ...good, eval_bytes: 0 }))).toEqual({ error: expect.stringMatching(/eval_bytes/) });
    expect(parseEvaluatorResult(JSON.stringify({ ...good, model_sha256: undefined }))).toEqual({ error: expect.stringMatching(/model_sha256/) });
    expect(parseEvaluatorResult(JSON.stringify({ ok: false, reason: 'nan', message: 'NaN logits' }))).toEqual({
      result: { ok: false, reason: 'nan', message: 'NaN logits', model_sha256: undefined },
    });
  });
});

describe('the store keeps what the new pipeline measures', () => {
  it('accepts over_budget and stores the measured times, the seed and whether the run was sandboxed', () => {
    const store = Store.open(':memory:');
    store.createSession({ tag: 't', branch: 'b', baseCommit: 'c' });
    const a = store.createExperiment({ sessionTag: 't', description: 'a', parentCommit: 'p' });
    store.markRunning(a.id, { slot: 0 });
    store.markFinished(a.id, { status: 'over_budget', error: 'training 2.5 s', trainingSeconds: 2.5, startupSeconds: 0.4, exportSeconds: 0.1, cpuSeconds: 3.3, tokensServed: 4096, seed: 7, sandboxed: true });
    expect(store.getExperiment(a.id)).toMatchObject({ status: 'over_budget', trainingSeconds: 2.5, startupSeconds: 0.4, exportSeconds: 0.1, cpuSeconds: 3.3, tokensServed: 4096, seed: 7, sandboxed: true });
    const b = store.createExperiment({ sessionTag: 't', description: 'b', parentCommit: 'p', rebaseOf: a.id });
    expect(b.sandboxed).toBeNull();
    store.markRunning(b.id, { slot: 0 });
    store.markFinished(b.id, { status: 'succeeded', valBpb: 1.1, evalSeconds: 0.5, sandboxed: false });
    expect(store.getExperiment(b.id)).toMatchObject({ sandboxed: false, evalSeconds: 0.5, rebaseOf: a.id });
    expect(store.countByStatus().over_budget).toBe(1);
    // Migration 3 carries these columns; later migrations (4: the research record) stack on it.
    expect(store.schemaVersion).toBeGreaterThanOrEqual(3);
    store.close();
  });
});

describe('Lab.open', () => {
  it('refuses to serve a workspace pinned before runs were sandboxed, saying what to do', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ar-old-ws-'));
    const store = Store.open(join(dir, '.autoresearch', 'state.db'));
    store.setMeta('workspace', { profile: 'smoke', timeBudget: 5, dataDir: join(dir, 'data'), python: PYTHON, constants: {} });
    store.setPins({ 'prepare.py': 'a'.repeat(64), 'tokenizer.json': 'b'.repeat(64), 'token_bytes.bin': 'c'.repeat(64), 'val.bin': 'd'.repeat(64) });
    store.close();
    await expect(Lab.open({ workspace: dir })).rejects.toThrow(/created by an older autoresearch-mcp .* autoresearch-mcp init DIR/);
    expect(existsSync(join(dir, '.autoresearch', 'server.pid'))).toBe(false);
  });

  it('takes the budget and allowances from the profile\'s constants, with defaults', () => {
    const meta = { profile: 'cpu', timeBudget: 60, dataDir: '/d', python: PYTHON, constants: { BUDGET_SLACK: 2, STARTUP_ALLOWANCE: 30 } };
    expect(budgetOf(meta)).toEqual({ timeBudget: 60, clock: 'cpu', slack: 2, startupAllowance: 30, exportAllowance: 60, maxBatchTokens: 16 * 1024 * 1024, scratchBytes: 4 * 1024 ** 3 });
    expect(budgetOf({ ...meta, constants: {} }).slack).toBe(3);
    // the clock: the manifest's BUDGET_CLOCK when it names one, else by profile
    expect(budgetOf({ ...meta, profile: 'smoke' }).clock).toBe('wall');
    expect(budgetOf({ ...meta, profile: 'gpu' }).clock).toBe('wall');
    expect(budgetOf({ ...meta, profile: 'smoke', constants: { BUDGET_CLOCK: 'cpu' } }).clock).toBe('cpu');
    expect(budgetOf({ ...meta, constants: { BUDGET_CLOCK: 'wall' } }).clock).toBe('wall');
    expect(budgetOf({ ...meta, constants: { BUDGET_CLOCK: 'CPU' } }).clock).toBe('cpu');
  });
});

// ---- the pipeline with stand-in supervisor and evaluator (test/fixtures/runner) ---------------

const canSandbox = await sandboxAvailable();

function isAlive(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z';
  } catch {
    return false;
  }
}

for (const mode of ['bwrap', 'none'] as const) {
  describe.skipIf(mode === 'bwrap' && !canSandbox)(`ProcessRunner, ${mode === 'bwrap' ? 'sandboxed' : 'unsandboxed'}`, () => {
    let s: Setup;
    beforeAll(async () => {
      s = await setup();
    });

    it('succeeds with the evaluator\'s val_bpb and the supervisor\'s times, reports progress, and marks the run', async () => {
      const runner = makeRunner(s, mode);
      const progress: RunProgress[] = [];
      runner.on('progress', (_id: number, p: RunProgress) => progress.push(p));
      const { outcome, log, dir } = await runTrain(s, runner, trainPy(s));
      expect(outcome.error).toBeUndefined();
      expect(outcome.status).toBe('succeeded');
      expect(outcome.valBpb).toBe(1.25);
      expect(outcome.summary.val_bpb).toBe(0.1); // printed, informative only
      expect(outcome).toMatchObject({ evalTokens: 100, evalBytes: 400, evalSeconds: 0.1, tokensServed: 16, batchesServed: 1, sandboxed: mode === 'bwrap', seed: 42 });
      expect(outcome.trainingSeconds).toBeGreaterThan(0.25);
      expect(outcome.startupSeconds).toBeGreaterThan(0);
      expect(outcome.exportSeconds).toBeGreaterThanOrEqual(0);
      expect(outcome.modelSha256).toBe(await sha256File(join(dir, 'handover', 'model.pt')));
      expect(outcome.hashes).toEqual(s.pins);
      expect(progress.at(-1)).toEqual({ step: 2, percent: 99.9, loss: 3 });
      // the run folder: code from the blobs, spec, hand-over; no scratch or data copies left behind
      expect(readdirSync(join(dir, 'code')).sort()).toEqual(['prepare.py', 'train.py']);
      expect(readFileSync(join(dir, 'code', 'prepare.py'), 'utf8')).toBe(PREPARE);
      expect(readdirSync(dir).sort()).toEqual(['code', 'handover', 'run.log', 'spec.json']);
      const spec = JSON.parse(readFileSync(join(dir, 'spec.json'), 'utf8'));
      expect(spec).toMatchObject({ seed: 42, time_budget: 2, budget_slack: 0.5, handover_dir: join(dir, 'handover'), log_path: join(dir, 'run.log'), data_dir: s.data });
      expect(spec.scratch_host).toBe(mode === 'bwrap' ? null : join(dir, 'scratch'));
      if (mode === 'bwrap') expect(spec.trainer_argv[0]).toMatch(/bwrap$/);
      expect(log).toMatch(/evaluator seed=\d+ val=True/);
    });

    it('gives the trainer only its channel, seed and data files; the environment carries nothing of ours', async () => {
      process.env.AUTORESEARCH_TEST_SECRET = 'hidden';
      const { outcome, log, dir } = await runTrain(s, makeRunner(s, mode), trainPy(s), { seed: 1234 });
      delete process.env.AUTORESEARCH_TEST_SECRET;
      expect(outcome.status).toBe('succeeded');
      expect(outcome.seed).toBe(1234);
      const view = seen(log);
      const env = view.env as Record<string, string>;
      expect(Object.keys(env).filter((k) => k.startsWith('AUTORESEARCH')).sort()).toEqual(['AUTORESEARCH_CHANNEL_FD', 'AUTORESEARCH_DATA_DIR', 'AUTORESEARCH_SEED']);
      expect(env.AUTORESEARCH_SEED).toBe('1234');
      expect(env.AUTORESEARCH_CHANNEL_FD).toBe('3');
      expect(view.data).toEqual(['manifest.json', 'token_bytes.bin', 'tokenizer.json']);
      if (mode === 'bwrap') {
        expect(view.cwd).toBe('/sandbox/scratch');
        expect(env.AUTORESEARCH_DATA_DIR).toBe('/sandbox/data');
        expect(env.HOME).toBe('/sandbox/scratch');
        expect(view.val).toBe(false);
        expect(view.train).toBe(false);
        expect(view.harness).toBe(false);
        expect(log).toMatch(/evaluator seed=\d+ val=True train=False weights=the-weights/);
      } else {
        expect(view.cwd).toBe(join(dir, 'scratch'));
        expect(env.AUTORESEARCH_DATA_DIR).toBe(join(dir, 'data'));
      }
    });

    it('draws a fresh evaluator seed per run', async () => {
      const seeds = [];
      for (let i = 0; i < 2; i += 1) {
        const { log } = await runTrain(s, makeRunner(s, mode), trainPy(s));
        seeds.push(/evaluator seed=(\d+)/.exec(log)?.[1]);
      }
      expect(seeds[0]).toBeDefined();
      expect(seeds[0]).not.toBe(seeds[1]);
    });

    it('calls training past the budget over_budget, with the measured times, never a result', async () => {
      const { outcome } = await runTrain(s, makeRunner(s, mode), trainPy(s, { val_bpb: 0.5 }, { beforeHandover: 'time.sleep(5)' }));
      expect(outcome.status).toBe('over_budget');
      expect(outcome.valBpb).toBeUndefined();
      expect(outcome.error).toMatch(/over budget: training took longer than allowed \(start-up [\d.]+ s\)/);
      expect(outcome.startupSeconds).toBeGreaterThan(0);
    });

    it('calls a trainer that exits before the hand-over crashed, with its traceback in the log tail', async () => {
      const { outcome } = await runTrain(s, makeRunner(s, mode), trainPy(s, {}, { beforeHandover: 'raise RuntimeError("shape mismatch in attention")' }));
      expect(outcome.status).toBe('crashed');
      expect(outcome.exitCode).toBe(1);
      expect(outcome.error).toMatch(/train.py exited with code 1 before handing over its model/);
      // the line that says why is in the error itself, not only in the log tail
      expect(outcome.error).toContain('Its last line: RuntimeError: shape mismatch in attention');
      expect(outcome.logTail).toContain('RuntimeError: shape mismatch in attention');
    });

    it('starts the evaluator beside the trainer and kills it unused when the trainer fails', async () => {
      const { outcome, log } = await runTrain(s, makeRunner(s, mode), trainPy(s, {}, { beforeHandover: 'raise RuntimeError("no model today")' }));
      expect(outcome.status).toBe('crashed');
      const waiting = /evaluator waiting pid=(\d+)/.exec(log);
      expect(waiting, 'the evaluator was started with the trainer').not.toBeNull();
      expect(log, 'the evaluator was never told to go').not.toMatch(/evaluator seed=/);
      if (mode === 'none') expect(isAlive(Number(waiting?.[1]))).toBe(false);
      const ok = await runTrain(s, makeRunner(s, mode), trainPy(s, { val_bpb: 1.5 }));
      expect(ok.outcome.status).toBe('succeeded');
      expect(ok.log.indexOf('evaluator waiting')).toBeLessThan(ok.log.indexOf('evaluator seed='));
    });

    it('passes on the evaluator\'s refusal as the reason, and a crash of the evaluator with its log', async () => {
      const refused = await runTrain(s, makeRunner(s, mode), trainPy(s, { kind: 'refuse' }));
      expect(refused.outcome.status).toBe('crashed');
      expect(refused.outcome.error).toMatch(/^the evaluator refused the model \(not_causal\): logits at position 3 changed/);
      expect(refused.outcome.valBpb).toBeUndefined();
      const crashed = await runTrain(s, makeRunner(s, mode), trainPy(s, { kind: 'crash' }));
      expect(crashed.outcome.status).toBe('crashed');
      expect(crashed.outcome.error).toMatch(/the evaluator crashed \(it exited with code 1; it wrote no result on fd 3\)/);
      expect(crashed.outcome.error).toContain('RuntimeError: evaluator exploded on this model');
      const wrong = await runTrain(s, makeRunner(s, mode), trainPy(s, { kind: 'wrongsha' }));
      expect(wrong.outcome.status).toBe('crashed');
      expect(wrong.outcome.error).toMatch(/scored a model other than the one handed over/);
    });

    it('refuses to start when a pinned file differs, naming it and how to restore it', async () => {
      const candidate = await runTrain(s, makeRunner(s, mode), trainPy(s), { preparePy: `${PREPARE}\nTIME_BUDGET = 1000\n` });
      expect(candidate.outcome.status).toBe('rejected');
      expect(candidate.outcome.error).toMatch(/candidate commit's prepare.py differs .*git checkout main -- prepare.py/);
      expect(existsSync(join(candidate.dir, 'code'))).toBe(false);

      const pins = { ...s.pins, 'train.bin': '0'.repeat(64), 'harness/evaluate.py': '1'.repeat(64) };
      const data = await runTrain(s, makeRunner(s, mode, { pins }), trainPy(s));
      expect(data.outcome.status).toBe('rejected');
      expect(data.outcome.error).toMatch(/harness\/evaluate.py differs from its pin \(copy it back: cp .*python\/evaluate.py /);
      expect(data.outcome.error).toMatch(/train.bin differs from its pin \(the prepared data changed/);
    });

    it('voids a run whose supervisor ends without a report', async () => {
      const broken = await setup();
      await writeFile(join(broken.harness, 'supervise.py'), 'import sys\nprint("not json")\nsys.exit(3)\n');
      broken.pins['harness/supervise.py'] = await sha256File(join(broken.harness, 'supervise.py'));
      const { outcome } = await runTrain(broken, makeRunner(broken, mode), trainPy(broken));
      expect(outcome.status).toBe('crashed');
      expect(outcome.error).toMatch(/the supervisor \(supervise.py\) exited with code 3 without a report; the run is void/);
      expect(outcome.valBpb).toBeUndefined();
    });

    it('stops a hung run at the wall-clock ceiling and leaves no trainer behind', async () => {
      const started = Date.now();
      const { outcome, log } = await runTrain(s, makeRunner(s, mode, { ceilingSeconds: 2 }), trainPy(s, {}, { beforeBatch: 'time.sleep(600)' }));
      expect(outcome.status).toBe('timed_out');
      expect(outcome.error).toMatch(/ceiling of 2 s/);
      expect(Date.now() - started).toBeLessThan(15_000);
      if (mode === 'none') {
        const pid = seen(log).pid as number;
        await new Promise((r) => setTimeout(r, 500));
        expect(isAlive(pid)).toBe(false);
      }
    });

    it('cancels a running run at once', async () => {
      const runner = makeRunner(s, mode);
      const id = peekNextId();
      const pending = runTrain(s, runner, trainPy(s, {}, { beforeBatch: 'time.sleep(600)' }));
      await new Promise((r) => setTimeout(r, 1500));
      expect(runner.stop(id, 'cancelled')).toBe(true);
      const { outcome } = await pending;
      expect(outcome.status).toBe('cancelled');
    });
  });
}
