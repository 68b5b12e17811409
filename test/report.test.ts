import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256File } from '../src/core/hashing.js';
import { Lab } from '../src/core/lab.js';
import { HARNESS_FILES, stateDir } from '../src/core/paths.js';
import { chartYRange, loadReportData, progressChartSvg, renderReportHtml, resultsTsv, writeReport } from '../src/core/report.js';
import { Store, type Experiment } from '../src/core/store.js';
import { WORKSPACE_GITIGNORE, Workspace } from '../src/core/workspace.js';
import { PYTHON, ROOT } from './helpers.js';

const OUTPUT = join(ROOT, 'test-output');
const CHROMIUM = '/usr/bin/chromium';

/** A complete Experiment with plausible defaults; tests override what they look at. */
function exp(id: number, fields: Partial<Experiment> = {}): Experiment {
  const finished = fields.status === undefined || !['queued', 'running'].includes(fields.status);
  return {
    id,
    trainHash: null,
    sessionTag: 'nov27',
    description: `experiment ${id}`,
    status: 'succeeded',
    decision: null,
    decisionReason: null,
    decidedAt: null,
    parentCommit: 'a'.repeat(40),
    candidateCommit: `${id.toString(16).padStart(7, '0')}${'b'.repeat(33)}`,
    rebaseOf: null,
    slot: 0,
    pid: null,
    queuedAt: 1_764_200_000_000 + id * 400_000,
    startedAt: 1_764_200_000_000 + id * 400_000 + 1000,
    finishedAt: finished ? 1_764_200_000_000 + id * 400_000 + 330_000 : null,
    durationMs: finished ? 329_000 : null,
    exitCode: 0,
    signal: null,
    error: null,
    logPath: null,
    resultPath: null,
    harnessHashes: null,
    progress: null,
    mcpSessionId: null,
    clientName: null,
    kind: 'candidate',
    seed: null,
    stackedOn: null,
    confirms: null,
    noiseId: null,
    changeKind: null,
    decisionFigures: null,
    verdict: null,
    undoneBy: null,
    sandboxed: null,
    agent: null,
    valBpb: 1,
    trainingSeconds: 300,
    totalSeconds: 329,
    peakVramMb: 45_060.2,
    mfuPercent: 39.8,
    totalTokensM: 499.6,
    numSteps: 953,
    numParamsM: 50.3,
    depth: 8,
    evalTokens: null,
    evalBytes: null,
    startupSeconds: null,
    exportSeconds: null,
    cpuSeconds: null,
    tokensServed: null,
    evalSeconds: null,
    ...fields,
  };
}

const pointCount = (svg: string) => (svg.match(/class="point[ "]/g) ?? []).length;

describe('resultsTsv', () => {
  it('maps statuses and decisions to keep / discard / crash / pending and skips unfinished runs', () => {
    const tsv = resultsTsv([
      exp(1, { valBpb: 0.997123456, decision: 'keep', peakVramMb: 45_060.2 }),
      exp(2, { valBpb: 1.0012, decision: 'discard', peakVramMb: null }),
      exp(3, { status: 'crashed', valBpb: null, decision: 'discard', error: 'OOM', peakVramMb: 80_000 }),
      exp(4, { status: 'timed_out', valBpb: null }),
      exp(5, { status: 'rejected', valBpb: null, candidateCommit: null, decision: 'discard' }),
      exp(6, { status: 'cancelled', valBpb: null }),
      exp(7, { valBpb: 0.99 }),
      exp(8, { status: 'running', valBpb: null }),
      exp(9, { status: 'queued', valBpb: null, candidateCommit: null }),
    ]);
    const lines = tsv.split('\n');
    expect(tsv.endsWith('\n')).toBe(true);
    expect(lines[0]).toBe('commit\tval_bpb\tmemory_gb\tstatus\tdescription');
    expect(lines.slice(1, -1)).toEqual([
      '0000001\t0.997123\t44.0\tkeep\texperiment 1',
      '0000002\t1.001200\t0.0\tdiscard\texperiment 2',
      '0000003\t0.000000\t0.0\tcrash\texperiment 3',
      '0000004\t0.000000\t0.0\tcrash\texperiment 4',
      '-------\t0.000000\t0.0\tcrash\texperiment 5',
      '0000006\t0.000000\t0.0\tcrash\texperiment 6',
      '0000007\t0.990000\t44.0\tpending\texperiment 7',
    ]);
  });

  it('keeps every row at five columns whatever the description holds', () => {
    const tsv = resultsTsv([exp(1, { description: 'tabs\there\tand\nnew\r\nlines\u0000 <b>&amp;</b>', decision: 'keep' })]);
    const row = tsv.split('\n')[1].split('\t');
    expect(row).toHaveLength(5);
    expect(row[4]).toBe('tabs here and new lines <b>&amp;</b>');
    expect(resultsTsv([])).toBe('commit\tval_bpb\tmemory_gb\tstatus\tdescription\n');
  });
});

describe('noise in the views', () => {
  const noise = { sigma: 0.002, mad: 0.001, k: 3, commit: 'abcdef1234567', profile: 'gpu', machine: 'box' };
  it('the TSV ends with the noise floor and leaves noise and confirm runs out', () => {
    const tsv = resultsTsv([exp(1, { decision: 'keep', valBpb: 1.0 }), exp(2, { kind: 'noise', valBpb: 1.001 }), exp(3, { kind: 'confirm', valBpb: 1.0 })], { noise });
    const lines = tsv.trim().split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[2]).toBe('# noise: sigma 0.002000, MAD 0.001000, k 3, commit abcdef1, gpu on box');
  });
  it('the chart draws a band of +-sigma around the running best, and only candidates', () => {
    const experiments = [exp(1, { decision: 'keep', valBpb: 1.0 }), exp(2, { decision: 'keep', valBpb: 0.99 }), exp(3, { kind: 'noise', valBpb: 0.5 })];
    const svg = progressChartSvg(experiments, { noiseSigma: 0.002 });
    expect(svg).toContain('class="noise-band"');
    expect(svg.match(/<rect x=/g)?.length).toBeGreaterThanOrEqual(2);
    expect(progressChartSvg(experiments)).not.toContain('noise-band');
    expect(svg).not.toContain('experiment 3');
  });
});

describe('progressChartSvg', () => {
  const series = [
    exp(1, { description: 'baseline', valBpb: 1.0, decision: 'keep' }),
    exp(2, { valBpb: 0.99, decision: 'keep' }),
    exp(3, { valBpb: 1.004, decision: 'discard' }),
    exp(4, { status: 'crashed', valBpb: null, decision: 'discard' }),
    exp(5, { valBpb: 0.98, decision: 'keep' }),
    exp(6, { valBpb: 3.5, decision: 'discard', description: 'diverged' }),
    exp(7, { status: 'timed_out', valBpb: null }),
    exp(8, { valBpb: 0.985 }),
    exp(9, { status: 'running', valBpb: null }),
    exp(10, { status: 'queued', valBpb: null }),
  ];

  it('draws one point per finished experiment: metrics as points, crashes as markers', () => {
    const svg = progressChartSvg(series);
    expect(pointCount(svg)).toBe(8);
    expect((svg.match(/class="point crash"/g) ?? []).length).toBe(2);
    expect((svg.match(/class="point kept"/g) ?? []).length).toBe(3);
    expect(svg).toContain('class="point pending"');
    for (const id of [1, 2, 3, 4, 5, 6, 7, 8]) expect(svg).toContain(`data-experiment-id="${id}"`);
    expect(svg).not.toMatch(/data-experiment-id="(9|10)"/);
    expect(svg).toContain('class="best-line"');
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg).not.toMatch(/<script|href=|@import|url\(/);
  });

  it('focuses the y-range between the best and the baseline and clips outliers at the top', () => {
    const svg = progressChartSvg(series);
    const min = Number(/data-y-min="([^"]+)"/.exec(svg)?.[1]);
    const max = Number(/data-y-max="([^"]+)"/.exec(svg)?.[1]);
    expect(min).toBeLessThan(0.98);
    expect(min).toBeGreaterThan(0.95);
    expect(max).toBeGreaterThan(1.004);
    expect(max).toBeLessThan(1.1);
    expect(svg).toMatch(/class="point discarded clipped" data-experiment-id="6"/);
    expect(svg).toContain('1 above the range');

    const range = chartYRange([1.0, 0.99, 0.995, 1.01, 0.985, 1.002, 0.97, 9.5], 1.0);
    expect(range.clipAbove).toBeLessThan(1.1);
    expect(range.min).toBeLessThan(0.97);
    // no outlier: everything is shown
    expect(chartYRange([1.0, 0.99, 1.01], 1.0).clipAbove).toBe(1.01);
  });

  it('labels kept points with their (escaped) descriptions', () => {
    const svg = progressChartSvg([
      exp(1, { description: 'baseline', valBpb: 1.0, decision: 'keep' }),
      exp(2, { description: 'RoPE base <10k> & "QK" norm', valBpb: 0.97, decision: 'keep' }),
    ]);
    expect(svg).toContain('RoPE base &lt;10k&gt; &amp; &quot;QK&quot; norm');
    expect(svg).not.toContain('<10k>');
    expect((svg.match(/class="label"/g) ?? []).length).toBe(2);
  });

  it('says so when nothing has finished', () => {
    for (const svg of [progressChartSvg([]), progressChartSvg([exp(1, { status: 'running', valBpb: null })])]) {
      expect(svg).toMatch(/^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
      expect(svg).toContain('no finished experiments yet');
      expect(pointCount(svg)).toBe(0);
      expect(svg.trim().endsWith('</svg>')).toBe(true);
    }
  });
});

// ---- a realistic workspace: real git commits, a real Store and audit log, a real Lab --------------

interface Step {
  description: string;
  /** Edits to train.py: [regex on the current text, replacement]. */
  edit?: [RegExp, string][];
  valBpb?: number;
  status?: 'succeeded' | 'crashed' | 'timed_out' | 'rejected' | 'cancelled' | 'queued';
  decision?: 'keep' | 'discard' | null;
  error?: string;
  vram?: number;
}

const STEPS: Step[] = [
  { description: 'baseline', valBpb: 1.01243, decision: 'keep' },
  { description: 'Muon LR 0.04 -> 0.06', edit: [[/^MATRIX_LR = 0\.04/m, 'MATRIX_LR = 0.06']], valBpb: 1.00612, decision: 'keep' },
  { description: 'depth 8 -> 10 at the same width', edit: [[/DEPTH, MODEL_DIM, HEAD_DIM, WINDOWS = 8,/, 'DEPTH, MODEL_DIM, HEAD_DIM, WINDOWS = 10,']], valBpb: 1.00934, decision: 'discard', vram: 53_120 },
  { description: 'SwiGLU MLP with ratio 8/3', edit: [[/^MLP_RATIO = 4 /m, 'MLP_RATIO = 2.67']], status: 'crashed', error: 'Traceback (most recent call last):\n  File "train.py", line 188\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB', decision: 'discard' },
  { description: 'warmdown 0.5 -> 0.4', edit: [[/^WARMDOWN_FRAC = 0\.5/m, 'WARMDOWN_FRAC = 0.4']], valBpb: 1.00481, decision: 'keep' },
  { description: 'embedding LR 0.6 -> 0.9', edit: [[/^EMBED_LR = 0\.6/m, 'EMBED_LR = 0.9']], valBpb: 1.00712, decision: 'discard' },
  { description: 'double the batch (2**20 tokens per step)', edit: [[/TOTAL_BATCH = 64, 2\*\*19/, 'TOTAL_BATCH = 64, 2**20']], status: 'timed_out', error: 'killed at the wall-clock ceiling of 660 s', decision: 'discard' },
  { description: 'softcap 15 -> 30', edit: [[/^SOFTCAP = 15\.0/m, 'SOFTCAP = 30.0']], valBpb: 1.00322, decision: 'keep' },
  { description: 'Adam betas (0.9, 0.99)', edit: [[/^ADAM_BETAS = \(0\.8, 0\.95\)/m, 'ADAM_BETAS = (0.9, 0.99)']], valBpb: 1.29871, decision: 'discard' },
  { description: 'head LR 0.008 -> 0.004 <script>alert("x")</script> & "quotes"\tand a tab', edit: [[/^HEAD_LR = 0\.008/m, 'HEAD_LR = 0.004']], valBpb: 1.00551, decision: 'discard' },
  { description: 'Muon momentum 0.95 -> 0.97', edit: [[/^MUON_MOMENTUM = 0\.95/m, 'MUON_MOMENTUM = 0.97']], valBpb: 1.00191, decision: 'keep' },
  { description: 'spawn a helper process', status: 'rejected', error: "line 12: import of 'subprocess' is not allowed", decision: 'discard' },
  { description: 'final LR fraction 0.0 -> 0.1', edit: [[/^FINAL_LR_FRAC = 0\.0/m, 'FINAL_LR_FRAC = 0.1']], valBpb: 1.00262, decision: 'discard' },
  { description: 'window pattern SSSL -> SSLL', edit: [[/"SSSL"/, '"SSLL"']], valBpb: 0.99874, decision: 'keep' },
  { description: 'Newton-Schulz steps 5 -> 4', edit: [[/^NS_STEPS = 5 /m, 'NS_STEPS = 4 ']], valBpb: 1.00031, decision: 'discard' },
  { description: 'scalar LR 0.04 -> 0.02', edit: [[/^SCALAR_LR = 0\.04/m, 'SCALAR_LR = 0.02']], valBpb: 0.99612, decision: 'keep' },
  { description: 'seed 42 -> 1337 (noise check)', edit: [[/^SEED = 42/m, 'SEED = 1337']], valBpb: 0.99723, decision: 'discard' },
  { description: 'gradient clipping at 1.0', status: 'cancelled', error: 'cancelled before it started', decision: 'discard' },
  { description: 'model dim 512 -> 576 with head dim 96', edit: [[/= 8, 512, 128,/, '= 8, 576, 96,']], valBpb: 0.99483, decision: 'keep', vram: 51_310 },
  { description: 'loss limit 2 ln V -> 1.5 ln V', edit: [[/^LOSS_LIMIT = 2 \* /m, 'LOSS_LIMIT = 1.5 * ']], valBpb: 0.99801, decision: 'discard' },
  { description: 'MLP ratio 4 -> 5', edit: [[/^MLP_RATIO = 4 /m, 'MLP_RATIO = 5 ']], valBpb: 0.99512, decision: 'discard', vram: 49_900 },
  { description: 'device batch 64 -> 48 with 2**19 tokens per step', edit: [[/DEVICE_BATCH, TOTAL_BATCH = 64,/, 'DEVICE_BATCH, TOTAL_BATCH = 48,']], valBpb: 0.99391, decision: 'keep', vram: 38_400 },
  { description: 'Muon LR 0.06 -> 0.07', edit: [[/^MATRIX_LR = 0\.06/m, 'MATRIX_LR = 0.07']], valBpb: 0.99436, decision: null },
  { description: 'log interval 1 s -> 2 s', edit: [[/^LOG_INTERVAL_S = 1\.0/m, 'LOG_INTERVAL_S = 2.0']], status: 'queued' },
];

async function buildWorkspace(): Promise<{ dir: string; finished: number; kept: number }> {
  const dir = join(await mkdtemp(join(tmpdir(), 'ar-report-')), 'ws');
  const dataDir = join(dir, 'data');
  await mkdir(dataDir, { recursive: true });
  for (const name of ['prepare.py', 'train.py']) await copyFile(join(ROOT, 'python', name), join(dir, name));
  await copyFile(join(ROOT, 'program.md'), join(dir, 'program.md'));
  await writeFile(join(dir, '.gitignore'), WORKSPACE_GITIGNORE);
  await writeFile(join(dataDir, 'val.bin'), Buffer.from('validation tokens'));
  const ws = new Workspace(dir);
  await ws.git.raw(['init', '--quiet', '--initial-branch=main']);
  await ws.git.raw(['add', '--', 'prepare.py', 'train.py', 'program.md', '.gitignore']);
  await ws.git.raw(['commit', '--quiet', '-m', 'baseline: autoresearch workspace (gpu profile)']);
  const base = await ws.headCommit();

  const store = Store.open(join(stateDir(dir), 'state.db'));
  store.setMeta('workspace', { profile: 'gpu', timeBudget: 300, dataDir, python: PYTHON, constants: {} });
  // Pinned as init pins them: the harness copies under <state>/harness and the data files.
  const harnessDir = join(stateDir(dir), 'harness');
  await mkdir(harnessDir, { recursive: true });
  for (const [name, source] of Object.entries(HARNESS_FILES)) await copyFile(source, join(harnessDir, name));
  await writeFile(join(dataDir, 'train.bin'), Buffer.from('training tokens'));
  await writeFile(join(dataDir, 'manifest.json'), '{}\n');
  const pins: Record<string, string> = { 'prepare.py': await sha256File(join(dir, 'prepare.py')) };
  for (const name of ['val.bin', 'train.bin', 'manifest.json']) pins[name] = await sha256File(join(dataDir, name));
  for (const name of Object.keys(HARNESS_FILES)) pins[`harness/${name}`] = await sha256File(join(harnessDir, name));
  store.setPins(pins);
  const branch = await ws.createSessionBranch('nov27', base);
  store.createSession({ tag: 'nov27', branch, baseCommit: base, clientName: 'claude-code' });

  let head = base;
  let finished = 0;
  let kept = 0;
  let clock = Date.parse('2025-11-27T08:00:00Z');
  for (const step of STEPS) {
    let text = await ws.readFileAt(head, 'train.py');
    for (const [pattern, replacement] of step.edit ?? []) {
      // train.py evolves; an edit that no longer applies becomes an appended line instead.
      text = pattern.test(text) ? text.replace(pattern, replacement) : `${text}${replacement}\n`;
    }
    const status = step.status ?? 'succeeded';
    const base = { sessionTag: 'nov27', description: step.description, parentCommit: head, clientName: 'claude-code', queuedAt: clock };
    if (status === 'rejected') {
      const rejected = store.createExperiment({ ...base, status: 'rejected', error: step.error });
      store.setDecision(rejected.id, 'discard', 'rejected: always discarded', clock);
      finished += 1;
      clock += 5_000;
      continue;
    }
    const created = store.createExperiment(base);
    // Queued without a commit (a server died preparing it): the serving Lab's start-up repair
    // closes it as cancelled, so it is a finished point of the report and no train.py runs here.
    if (status === 'queued') {
      finished += 1;
      continue;
    }
    const commit = await ws.commitCandidate(created.id, head, text, `exp ${created.id}: ${step.description}`);
    store.setCandidate(created.id, { candidateCommit: commit });
    finished += 1;
    if (status === 'cancelled') {
      store.markFinished(created.id, { status, error: step.error, finishedAt: clock + 1000 });
    } else {
      store.markRunning(created.id, { slot: 0, pid: 4242, startedAt: clock + 1000 });
      const ok = status === 'succeeded';
      store.markFinished(created.id, {
        status,
        error: step.error,
        finishedAt: clock + (status === 'timed_out' ? 661_000 : ok ? 331_000 : 48_000),
        valBpb: ok ? step.valBpb : null,
        trainingSeconds: ok ? 300.1 : null,
        totalSeconds: ok ? 330.4 : null,
        peakVramMb: status === 'crashed' ? null : (step.vram ?? 45_060.2),
        mfuPercent: ok ? 39.8 + (created.id % 5) * 0.3 : null,
        totalTokensM: ok ? 499.6 : null,
        numSteps: ok ? 953 - created.id : null,
        numParamsM: ok ? 50.3 : null,
        depth: ok ? 8 : null,
      });
    }
    if (step.decision) {
      store.setDecision(created.id, step.decision, step.decision === 'keep' ? 'val_bpb below the best' : 'not below the best', clock + 340_000);
      if (step.decision === 'keep') {
        await ws.advanceBranch(branch, head, commit);
        head = commit;
        kept += 1;
      } else await ws.markDiscarded(created.id, commit);
    }
    clock += 400_000;
  }

  // An audit trail from two clients, with a few failed calls and a server event.
  let seq = 0;
  const call = (clientName: string, mcpSessionId: string, tool: string, isError = false) =>
    store.audit.append({
      kind: 'request',
      method: 'tools/call',
      transport: clientName === 'codex' ? 'http' : 'stdio',
      mcpSessionId,
      clientName,
      clientVersion: clientName === 'codex' ? '0.63.0' : '2.0.55',
      tool,
      arguments: { n: (seq += 1) },
      result: { ok: !isError },
      isError,
      durationMs: 10 + (seq % 7) * 13,
    });
  for (let round = 0; round < 12; round += 1) {
    const session = round < 8 ? 's-1' : 's-2';
    for (const tool of ['read_train_py', 'apply_patch', 'run_experiment', 'get_results', 'get_results', 'commit_or_revert']) {
      call('claude-code', session, tool, tool === 'apply_patch' && round % 5 === 2);
    }
  }
  for (const tool of ['status', 'get_results', 'get_run_log', 'read_harness']) call('codex', 'h-1', tool);
  store.audit.append({ kind: 'event', method: 'ceiling_kill', transport: 'cli', experimentId: 7, message: 'killed at the ceiling', isError: true });
  store.close();
  return { dir, finished, kept };
}

describe('HTML report in a real browser', () => {
  let browser: Browser;
  let workspace: { dir: string; finished: number; kept: number };
  let reportPath: string;

  beforeAll(async () => {
    workspace = await buildWorkspace();
    reportPath = join(workspace.dir, '.autoresearch', 'report.html');
    // Serve mode, as a server would open it first: its start-up repair runs (no runs start, so no sandbox is needed).
    const lab = await Lab.open({ workspace: workspace.dir, unsandboxed: true, log: () => undefined });
    try {
      await writeReport(lab, reportPath);
    } finally {
      await lab.close();
    }
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  }, 240_000);

  afterAll(async () => {
    await browser?.close();
    if (workspace) await rm(resolve(workspace.dir, '..'), { recursive: true, force: true });
  });

  it('writes a self-contained file that escapes model text', async () => {
    expect(existsSync(reportPath)).toBe(true);
    const html = await readFile(reportPath, 'utf8');
    expect(html).not.toMatch(/<(link|script|img)[^>]+(src|href)="(?!data:)/);
    expect(html).not.toContain('<script>alert');
    expect(html).toContain('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;');
    expect(html).toContain("Content-Security-Policy");
    expect(html).toMatch(/<span class="d-add">\+MATRIX_LR = 0\.06/);
  });

  it('loads without errors, counts points, sorts the table and shows diffs', async () => {
    const page = await browser.newPage({ viewport: { width: 1360, height: 900 }, deviceScaleFactor: 1 });
    const problems: string[] = [];
    page.on('console', (message) => {
      if (message.type() === 'error' || message.type() === 'warning') problems.push(`${message.type()}: ${message.text()}`);
    });
    page.on('pageerror', (error) => problems.push(`pageerror: ${error.message}`));
    page.on('request', (request) => {
      if (!request.url().startsWith('file:') && !request.url().startsWith('data:')) problems.push(`request: ${request.url()}`);
    });
    await page.goto(pathToFileURL(reportPath).href, { waitUntil: 'load' });

    expect(await page.locator('svg.progress-chart .point').count()).toBe(workspace.finished);
    expect(await page.locator('svg.progress-chart .point.kept').count()).toBe(workspace.kept);
    expect(await page.locator('svg.progress-chart .point.crash').count()).toBe(5);
    expect(await page.locator('table.experiments tbody tr').count()).toBe(STEPS.length);
    expect(await page.locator('details.change').count()).toBe(workspace.kept);
    expect(await page.locator('text=✓ harness intact').count()).toBe(1);
    expect(await page.locator('text=✓ audit chain intact').count()).toBe(1);

    const ids = () => page.locator('table.experiments tbody tr').evaluateAll((rows) => rows.map((row) => Number(row.getAttribute('data-experiment-id'))));
    const values = () =>
      page.locator('table.experiments tbody tr td:nth-child(3)').evaluateAll((cells) => cells.map((cell) => cell.getAttribute('data-sort') ?? ''));
    expect(await ids()).toEqual(STEPS.map((_, index) => index + 1));

    const header = page.locator('table.experiments th[data-key="valBpb"]');
    await header.click();
    expect(await header.getAttribute('aria-sort')).toBe('ascending');
    const ascending = (await values()).filter(Boolean).map(Number);
    expect(ascending.length).toBe(STEPS.filter((s) => (s.status ?? 'succeeded') === 'succeeded').length);
    expect(ascending).toEqual([...ascending].sort((a, b) => a - b));
    expect((await values()).slice(ascending.length).every((v) => v === '')).toBe(true);
    expect((await ids())[0]).toBe(22);

    await header.click();
    expect(await header.getAttribute('aria-sort')).toBe('descending');
    const descending = (await values()).filter(Boolean).map(Number);
    expect(descending).toEqual([...ascending].reverse());

    await page.locator('table.experiments th[data-key="id"]').click();
    expect(await ids()).toEqual(STEPS.map((_, index) => index + 1));
    await page.locator('table.experiments th[data-key="id"]').click();
    expect((await ids())[0]).toBe(STEPS.length);
    await page.locator('table.experiments th[data-key="id"]').click();

    // a chart point leads to its table row; the kept diffs collapse and expand
    await page.locator('svg.progress-chart .point[data-experiment-id="5"]').click();
    await expect.poll(() => page.locator('#exp-5').getAttribute('class')).toContain('flash');
    await page.locator('button[data-toggle-changes="close"]').click();
    expect(await page.locator('details.change[open]').count()).toBe(0);
    await page.locator('button[data-toggle-changes="open"]').click();
    expect(await page.locator('details.change[open]').count()).toBe(workspace.kept);
    await page.evaluate(() => window.scrollTo(0, 0));

    await mkdir(OUTPUT, { recursive: true });
    await page.screenshot({ path: join(OUTPUT, 'report.png'), fullPage: true });
    await page.locator('section.chart').screenshot({ path: join(OUTPUT, 'report-chart.png') });
    expect(problems).toEqual([]);
    await page.close();
  });

  it('renders a standalone chart that parses as XML even with control characters in descriptions', async () => {
    const nasty = ['bell \u0007 and NUL \u0000', 'lone surrogate \uD800 here', ']]> <![CDATA[ & </svg>'];
    const svg = progressChartSvg([
      exp(1, { description: nasty[0], valBpb: 1.0, decision: 'keep' }),
      exp(2, { description: nasty[1], valBpb: 0.99, decision: 'keep' }),
      exp(3, { description: nasty[2], status: 'crashed', valBpb: null, error: 'bad \u0001 error' }),
    ]);
    await mkdir(OUTPUT, { recursive: true });
    const file = join(OUTPUT, 'chart.svg');
    await writeFile(file, svg);
    const page = await browser.newPage({ viewport: { width: 960, height: 480 } });
    await page.goto(pathToFileURL(file).href);
    expect(await page.locator('parsererror').count()).toBe(0);
    expect(await page.locator('.point').count()).toBe(3);
    expect(await page.locator('.label').count()).toBe(2);
    await page.close();
  });

  it('renders plain ReportData with running work and a broken chain, and an empty report', async () => {
    const data = await (async () => {
      const lab = await Lab.open({ workspace: workspace.dir, mode: 'inspect', log: () => undefined }); // as `autoresearch-mcp report` opens it
      try {
        return await loadReportData(lab);
      } finally {
        await lab.close();
      }
    })();
    const html = renderReportHtml({
      ...data,
      workspace: '/tmp/<img src=x onerror=alert(1)>',
      branch: 'autoresearch/"><script>alert(2)</script>',
      experiments: [...data.experiments, exp(98, { kind: 'noise', valBpb: 1.0 }), exp(99, { status: 'running', valBpb: null, candidateCommit: null })],
      audit: data.audit && { ...data.audit, chain: { ok: false, rows: 41, firstBadSeq: 42, reason: 'hash does not match the row contents: the row was edited' } },
      integrity: { ...data.integrity, harnessIntact: false, harnessDrift: ['val.bin'] },
    });
    expect(html).toContain('✗ audit chain broken');
    expect(html).toContain('✗ harness changed');
    expect(html).toContain('broken at row 42');
    expect(html).not.toMatch(/<img src=x|<script>alert/);
    expect(html).toContain('/tmp/&lt;img src=x onerror=alert(1)&gt;');
    // a noise run is counted as what it is, not as an undecided change
    expect(html).toContain('1 noise/confirmation runs');
    expect(renderReportHtml({ ...data, experiments: [...data.experiments, exp(98, { kind: 'noise', valBpb: 1.0 })] }).match(/(\d+) undecided/)?.[1]).toBe(
      renderReportHtml(data).match(/(\d+) undecided/)?.[1],
    );
    // the first Lab's start-up repair cancelled the commit-less queued experiment, so it is finished now
    expect(data.experiments.find((e) => e.id === STEPS.length)?.status).toBe('cancelled');
    expect(pointCount(html)).toBe(workspace.finished);

    const empty = renderReportHtml({ ...data, experiments: [], keptChanges: [], history: [], audit: null });
    const page = await browser.newPage();
    const problems: string[] = [];
    page.on('console', (message) => message.type() === 'error' && problems.push(message.text()));
    page.on('pageerror', (error) => problems.push(error.message));
    await page.setContent(empty, { waitUntil: 'load' });
    expect(await page.locator('text=no finished experiments yet').count()).toBe(1);
    expect(problems).toEqual([]);
    await page.close();
  });
});
