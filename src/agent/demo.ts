import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createWorkspace, type Profile } from '../core/init.js';
import { Lab } from '../core/lab.js';
import { PACKAGE_ROOT } from '../core/paths.js';
import { findPython } from '../core/python.js';
import { writeReport } from '../core/report.js';
import { Workspace } from '../core/workspace.js';
import { ResearchClient } from './client.js';
import { formatOutcome, runPlan, type Plan } from './plan.js';
import { ProgressBar } from './terminal.js';

/**
 * A handful of edits a researcher would try first: learning rates, depth, the warm-down. Each is
 * judged by the server's keep rule, exactly as a model's edit would be.
 */
export function demoPlan(profile: Profile): Plan {
  const depth = profile === 'gpu' ? '10' : '2';
  return {
    baseline: true,
    on_crash: 'continue',
    steps: [
      { description: 'raise the Muon matrix learning rate to 0.06', set: { MATRIX_LR: '0.06' } },
      { description: `deeper model: depth ${depth}`, set: { DEPTH: depth } },
      { description: 'longer warm-down: last 70% of the budget', set: { WARMDOWN_FRAC: '0.7' } },
      { description: 'raise the embedding learning rate to 0.9', set: { EMBED_LR: '0.9' } },
    ],
  };
}

function write(line = ''): void {
  process.stdout.write(`${line}\n`);
}

/** `autoresearch-mcp demo`: a fresh workspace, the real server over stdio, a scripted session, a report. */
export async function runDemo(options: { dir?: string; profile?: Profile; unsandboxed?: boolean }): Promise<number> {
  const started = Date.now();
  const python = await findPython();
  const profile: Profile = options.profile ?? (python.cuda ? 'gpu' : 'cpu');
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  const dir = resolve(options.dir ?? join('demo-workspaces', stamp));
  if (existsSync(dir)) throw new Error(`${dir} already exists; pass --dir with a new folder.`);
  await mkdir(join(dir, '..'), { recursive: true });

  write(`autoresearch demo: ${profile} profile, python ${python.path} (torch ${python.torchVersion})`);
  write(`1/4 creating the workspace in ${dir} and preparing the embedded corpus (State of the Union addresses)...`);
  const meta = await createWorkspace(dir, { profile, python: python.path, showProgress: true });
  write(`    training budget ${meta.timeBudget} s per experiment`);

  write('2/4 starting the MCP server (stdio) and a scripted agent session...');
  const client = await ResearchClient.spawn(dir, {
    serverLog: join(dir, '.autoresearch', 'server.log'),
    name: 'autoresearch-demo',
    serverArgs: options.unsandboxed ? ['--unsandboxed'] : [],
  });
  let tsv = '';
  let history: { commit: string; subject: string }[] = [];
  try {
    await client.call('start_session', { tag: 'demo' });
    write('3/4 baseline, then one idea at a time; the server keeps a change only if val_bpb drops:');
    const bar = new ProgressBar(process.stdout);
    const outcomes = await runPlan(client, demoPlan(profile), {
      stepStarted: (description, id) => bar.start(`#${id} ${description}`),
      progress: (_id, p) => bar.update(p.progress, p.message),
      stepFinished: (outcome) => {
        bar.stop();
        write(`    ${formatOutcome(outcome)}`);
      },
    });
    const results = await client.call('get_results', { format: 'tsv', limit: 1 });
    tsv = results.tsv ?? '';
    const baseline = outcomes.find((o) => o.description === 'baseline')?.valBpb;
    const best = results.best?.val_bpb as number | undefined;
    write();
    write('results.tsv:');
    for (const line of tsv.trimEnd().split('\n')) write(`    ${line}`);
    write();
    if (typeof baseline === 'number' && typeof best === 'number') {
      const gain = baseline - best;
      write(`best val_bpb ${best.toFixed(6)} vs baseline ${baseline.toFixed(6)} (${gain > 0 ? `-${gain.toFixed(6)}` : 'no improvement'})`);
    }
    const status = await client.call('status');
    history = await new Workspace(dir).history(status.branch);
    write(`branch ${status.branch}:`);
    for (const entry of history) write(`    ${entry.commit.slice(0, 8)} ${entry.subject}`);
  } finally {
    await client.close();
  }

  write('4/4 writing the report...');
  const lab = await Lab.open({ workspace: dir, mode: 'inspect' });
  const reportPath = join(dir, '.autoresearch', 'report.html');
  try {
    await writeReport(lab, reportPath);
  } finally {
    await lab.close();
  }
  write(`report: ${reportPath}`);
  write(`done in ${((Date.now() - started) / 1000).toFixed(0)} s. Serve this workspace to your MCP host with:`);
  // Not `npx autoresearch-mcp`: the package is not on the npm registry. This Node and this
  // checkout's cli.js are what a host config should name (the same Node built better-sqlite3).
  write(`    ${process.execPath} ${join(PACKAGE_ROOT, 'dist', 'cli.js')} serve --workspace ${dir}`);
  return 0;
}
