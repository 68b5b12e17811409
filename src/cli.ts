#!/usr/bin/env node
import { execFileSync } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { UsageError } from './core/errors.js';
import { createWorkspace, PROFILES, type Profile } from './core/init.js';
import { Lab } from './core/lab.js';
import { findPython } from './core/python.js';
import { writeReport } from './core/report.js';
import type { Slot } from './core/runner.js';

const USAGE = `autoresearch-mcp: an MCP server for autonomous ML research on one training file

Usage:
  autoresearch-mcp init DIR [--profile cpu|gpu|smoke] [--corpus SRC ...] [--data-dir DIR] [--python PATH]
  autoresearch-mcp serve --workspace DIR [--http [--host 127.0.0.1] [--port 8765 (0: any free port)] [--token T]]
                         [--gpus 0,1,...] [--slots N] [--ceiling-seconds S]
  autoresearch-mcp demo [--dir DIR] [--profile cpu|gpu]
  autoresearch-mcp agent --workspace DIR (--plan FILE | --sweep NAME=v1,v2,...) [--url http://HOST:PORT/mcp]
  autoresearch-mcp doctor [--python PATH]        which Python runs training, with torch and CUDA
  autoresearch-mcp status --workspace DIR
  autoresearch-mcp results --workspace DIR [--tsv]
  autoresearch-mcp report --workspace DIR [--out FILE]
  autoresearch-mcp audit --workspace DIR [list|verify|export] [--format jsonl|csv] [--tool NAME] [--limit N] [--out FILE]

The workspace is a git repository; server state lives in DIR/.autoresearch (SQLite, run logs).`;

const OPTIONS = {
  workspace: { type: 'string', short: 'w' },
  profile: { type: 'string' },
  corpus: { type: 'string', multiple: true },
  'data-dir': { type: 'string' },
  python: { type: 'string' },
  http: { type: 'boolean' },
  host: { type: 'string' },
  port: { type: 'string' },
  token: { type: 'string' },
  gpus: { type: 'string' },
  slots: { type: 'string' },
  'ceiling-seconds': { type: 'string' },
  dir: { type: 'string' },
  plan: { type: 'string' },
  sweep: { type: 'string', multiple: true },
  url: { type: 'string' },
  tsv: { type: 'boolean' },
  out: { type: 'string' },
  format: { type: 'string' },
  tool: { type: 'string' },
  limit: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Flags = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];


function requireWorkspace(flags: Flags): string {
  if (!flags.workspace) throw new UsageError('Name the workspace with --workspace DIR (create one with: autoresearch-mcp init DIR).');
  return resolve(flags.workspace);
}

function positiveInt(value: string | undefined, flag: string, min = 1): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`--${flag} needs a whole number of at least ${min}, got "${value}".`);
  return n;
}

/** One slot per GPU (nvidia-smi), or the GPUs named, or N CPU slots; default one CPU slot. */
export function resolveSlots(flags: { gpus?: string; slots?: string }): Slot[] {
  if (flags.gpus) {
    const ids = flags.gpus.split(',').map((s) => s.trim());
    if (ids.some((id) => !/^\d+$/.test(id))) throw new UsageError(`--gpus takes GPU indices like 0,1,2; got "${flags.gpus}".`);
    return ids.map((id, index) => ({ index, cudaDevices: id }));
  }
  const cpuSlots = positiveInt(flags.slots, 'slots');
  if (cpuSlots) return Array.from({ length: cpuSlots }, (_, index) => ({ index }));
  try {
    const gpus = execFileSync('nvidia-smi', ['-L'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .split('\n')
      .filter((line) => line.startsWith('GPU '));
    if (gpus.length > 0) return gpus.map((_, index) => ({ index, cudaDevices: String(index) }));
  } catch {
    // No NVIDIA driver: one CPU slot.
  }
  return [{ index: 0 }];
}

async function openLab(flags: Flags, mode: 'serve' | 'inspect'): Promise<Lab> {
  return Lab.open({
    workspace: requireWorkspace(flags),
    slots: resolveSlots(flags),
    ceilingSeconds: positiveInt(flags['ceiling-seconds'], 'ceiling-seconds'),
    mode,
  });
}

async function defaultProfile(python?: string): Promise<Profile> {
  try {
    return (await findPython(python)).cuda ? 'gpu' : 'cpu';
  } catch {
    return 'cpu';
  }
}

function parseProfile(value: string | undefined): Profile | undefined {
  if (value === undefined) return undefined;
  if (!(PROFILES as readonly string[]).includes(value)) throw new UsageError(`Unknown profile "${value}": use one of ${PROFILES.join(', ')}.`);
  return value as Profile;
}

async function main(argv: string[]): Promise<number> {
  const { values: flags, positionals } = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  const [command, ...rest] = positionals;
  if (flags.help || !command) {
    process.stderr.write(`${USAGE}\n`);
    return command || flags.help ? 0 : 2;
  }
  switch (command) {
    case 'init': {
      const dir = rest[0];
      if (!dir) throw new UsageError('Name the folder for the new workspace: autoresearch-mcp init DIR');
      const profile = parseProfile(flags.profile) ?? (await defaultProfile(flags.python));
      const meta = await createWorkspace(dir, {
        profile,
        corpus: flags.corpus,
        dataDir: flags['data-dir'],
        python: flags.python,
        showProgress: true,
      });
      process.stderr.write(
        `Workspace ready: ${meta.workspace} (profile ${meta.profile}, budget ${meta.timeBudget} s, python ${meta.python}).\n` +
          `Serve it with: autoresearch-mcp serve --workspace ${meta.workspace}\n`,
      );
      return 0;
    }
    case 'serve': {
      const lab = await openLab(flags, 'serve');
      if (flags.http) {
        const { serveHttp } = await import('./transports/http.js');
        await serveHttp(lab, { host: flags.host ?? '127.0.0.1', port: positiveInt(flags.port, 'port', 0) ?? 8765, token: flags.token ?? process.env.AUTORESEARCH_TOKEN });
      } else {
        const { serveStdio } = await import('./transports/stdio.js');
        await serveStdio(lab);
      }
      return -1;
    }
    case 'doctor': {
      const python = await findPython(flags.python);
      process.stdout.write(`${JSON.stringify({ ...python, profile: python.cuda ? 'gpu' : 'cpu' }, null, 2)}\n`);
      return 0;
    }
    case 'status':
      return inspectLab(flags, async (lab) => {
        process.stdout.write(`${JSON.stringify(await lab.status(), null, 2)}\n`);
        return 0;
      });
    case 'results':
      return inspectLab(flags, async (lab) => {
        if (flags.tsv) process.stdout.write(await lab.resultsTsv(await lab.currentSessionTag()));
        else process.stdout.write(`${JSON.stringify(lab.store.listExperiments({ order: 'id', ascending: true }), null, 2)}\n`);
        return 0;
      });
    case 'report':
      return inspectLab(flags, async (lab) => {
        const out = resolve(flags.out ?? `${lab.workspace.dir}/.autoresearch/report.html`);
        await writeReport(lab, out);
        process.stderr.write(`Report written: ${out}\n`);
        return 0;
      });
    case 'audit':
      return auditCommand(flags, rest[0] ?? 'list');
    case 'demo': {
      const { runDemo } = await import('./agent/demo.js');
      return runDemo({ dir: flags.dir, profile: parseProfile(flags.profile) });
    }
    case 'agent': {
      const { runAgentCommand } = await import('./agent/plan.js');
      return runAgentCommand({ workspace: flags.workspace, plan: flags.plan, sweep: flags.sweep, url: flags.url, token: flags.token });
    }
    default:
      throw new UsageError(`Unknown command "${command}".\n${USAGE}`);
  }
}

/** Runs a read-only command on the lab (safe beside a running server) and closes it. */
async function inspectLab(flags: Flags, command: (lab: Lab) => Promise<number>): Promise<number> {
  const lab = await openLab(flags, 'inspect');
  try {
    return await command(lab);
  } finally {
    await lab.close();
  }
}

function auditCommand(flags: Flags, action: string): Promise<number> {
  return inspectLab(flags, async (lab) => {
    const audit = lab.store.audit;
    const filter = { tool: flags.tool, limit: positiveInt(flags.limit, 'limit') };
    if (action === 'verify') {
      const result = audit.verify();
      if (result.ok) {
        process.stdout.write(`audit chain intact: ${result.rows} rows\n`);
        return 0;
      }
      process.stdout.write(`audit chain BROKEN at row ${result.firstBadSeq}: ${result.reason}\n`);
      return 1;
    }
    const out = flags.out ? createWriteStream(resolve(flags.out)) : process.stdout;
    if (action === 'export') {
      const format = flags.format ?? 'jsonl';
      if (format === 'csv') await audit.exportCsv(filter, out);
      else if (format === 'jsonl') await audit.exportJsonl(filter, out);
      else throw new UsageError(`Unknown export format "${format}": use jsonl or csv.`);
    } else if (action === 'list') {
      for (const row of audit.list({ ...filter, limit: filter.limit ?? 50 })) {
        const what = row.tool ? `${row.method} ${row.tool}` : row.method;
        out.write(`${row.seq}\t${new Date(row.ts).toISOString()}\t${row.transport}\t${row.clientName ?? '-'}\t${what}\t${row.isError ? 'ERROR' : 'ok'}\t${row.durationMs ?? ''}ms\n`);
      }
    } else {
      throw new UsageError(`Unknown audit action "${action}": use list, verify or export.`);
    }
    if (out !== process.stdout) out.end();
    return 0;
  });
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (error: unknown) => {
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`autoresearch-mcp: ${message}\n`);
    process.exitCode = error instanceof UsageError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') ? 2 : 1;
  },
);

