import { existsSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, realpath, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { sha256, sha256File } from '../src/core/hashing.js';
import { ProcessRunner, type RunOutcome, type RunnerOptions } from '../src/core/runner.js';
import { PYTHON } from './helpers.js';

/**
 * The runner's pipeline with stand-in supervisor and evaluator (test/fixtures/runner), shared by
 * test/runner.test.ts (local processes) and test/slurm.test.ts (the same runs as Slurm jobs).
 */
export const FIXTURES = resolve(import.meta.dirname, 'fixtures', 'runner');
export const PREPARE = readFileSync(join(FIXTURES, 'prepare.py'), 'utf8');

export interface Setup {
  root: string;
  harness: string;
  data: string;
  pins: Record<string, string>;
  blobs: Map<string, { 'train.py': string; 'prepare.py': string }>;
  runs: string;
}

export async function setup(): Promise<Setup> {
  const root = await realpath(await mkdtemp(join(tmpdir(), 'ar-runner-')));
  const harness = join(root, 'ws', '.autoresearch', 'harness');
  const data = join(root, 'ws', 'data');
  await mkdir(harness, { recursive: true });
  await mkdir(data, { recursive: true });
  for (const name of ['supervise.py', 'evaluate.py', 'prepare.py']) await copyFile(join(FIXTURES, name), join(harness, name));
  await writeFile(join(harness, 'batches.py'), '# stand-in\n');
  for (const name of ['tokenizer.json', 'token_bytes.bin', 'manifest.json', 'val.bin', 'train.bin']) await writeFile(join(data, name), `${name} contents`);
  const pins: Record<string, string> = {};
  for (const name of ['prepare.py', 'batches.py', 'supervise.py', 'evaluate.py']) pins[`harness/${name}`] = await sha256File(join(harness, name));
  for (const name of ['tokenizer.json', 'token_bytes.bin', 'manifest.json', 'val.bin', 'train.bin']) pins[name] = await sha256File(join(data, name));
  pins['prepare.py'] = sha256(PREPARE);
  return { root, harness, data, pins, blobs: new Map(), runs: join(root, 'ws', '.autoresearch', 'runs') };
}

export function makeRunner(s: Setup, sandbox: 'bwrap' | 'none', overrides: Partial<RunnerOptions> = {}): ProcessRunner {
  return new ProcessRunner({
    python: PYTHON,
    sandbox,
    dataDir: s.data,
    harnessDir: s.harness,
    pins: s.pins,
    readBlob: async (commit, path) => {
      const blob = s.blobs.get(commit);
      if (!blob) throw new Error(`no commit ${commit}`);
      return blob[path as 'train.py' | 'prepare.py'];
    },
    budget: { timeBudget: 2, clock: 'wall', slack: 0.5, startupAllowance: 20, exportAllowance: 20, maxBatchTokens: 1 << 20, scratchBytes: 64 << 20 },
    ceilingSeconds: 60,
    forbidden: [join(s.root, 'ws'), join(s.root, 'ws', '.autoresearch'), s.data],
    ...overrides,
  });
}

let nextId = 1;

/** The id the next runTrain gives its run. */
export function peekNextId(): number {
  return nextId;
}

export async function runTrain(s: Setup, runner: ProcessRunner, trainPy: string, options: { preparePy?: string; seed?: number } = {}): Promise<{ outcome: RunOutcome; log: string; dir: string }> {
  const id = nextId++;
  const commit = id.toString(16).padStart(40, 'c');
  s.blobs.set(commit, { 'train.py': trainPy, 'prepare.py': options.preparePy ?? PREPARE });
  const dir = join(s.runs, String(id));
  const outcome = await runner.run({ experimentId: id, commit, runDir: dir, slot: { index: 0 }, seed: options.seed }, () => undefined);
  const logPath = join(dir, 'run.log');
  return { outcome, log: existsSync(logPath) ? readFileSync(logPath, 'utf8') : '', dir };
}

/** A stand-in train.py: reports what it sees, takes a batch, hands over a "model" telling the stand-in evaluator what to say. */
export function trainPy(s: Setup, model: Record<string, unknown> = { val_bpb: 1.25 }, { beforeHandover = '', beforeBatch = '' } = {}): string {
  return `
import json, os, sys, time
import prepare
print("SEEN " + json.dumps({"env": dict(os.environ), "cwd": os.getcwd(), "val": os.path.exists(${JSON.stringify(join(s.data, 'val.bin'))}),
      "train": os.path.exists(${JSON.stringify(join(s.data, 'train.bin'))}), "data": sorted(os.listdir(os.environ["AUTORESEARCH_DATA_DIR"])),
      "harness": os.path.exists(${JSON.stringify(s.harness)}), "pid": os.getpid()}), flush=True)
${beforeBatch}
prepare.batch()
for i in range(3):
    print(f"step {i:05d} ({(i+1)*33.3:.1f}%) | loss: {5-i:.6f} | dt: 1ms", flush=True)
    time.sleep(0.1)
${beforeHandover}
prepare.handover(b"the-weights")
print("---\\nval_bpb:          0.100000\\nnum_steps:        3", flush=True)
prepare.model(json.dumps(${JSON.stringify(model)}).encode())
time.sleep(60)
`;
}

export function seen(log: string): any {
  const line = log.split('\n').find((l) => l.startsWith('SEEN '));
  return line ? JSON.parse(line.slice(5)) : undefined;
}
