#!/usr/bin/env node
import { createWriteStream, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { UsageError } from './core/errors.js';
import { gpuListProblem, gpuUsage } from './core/gpus.js';
import { createWorkspace, PROFILES, type Profile } from './core/init.js';
import { Lab, type LabOptions } from './core/lab.js';
import { explainNativeModuleError } from './core/native.js';
import { expandHome, PACKAGE_ROOT } from './core/paths.js';
import { findPython } from './core/python.js';
import { writeReport } from './core/report.js';
import type { Slot } from './core/runner.js';
import { sbatchArgsProblem, SLURM_CUDA_VISIBLE_DEVICES } from './core/slurm.js';

/** Settings that can come from the environment (an MCP host config's "env") instead of flags. */
export const ENV_FLAGS = {
  workspace: 'AUTORESEARCH_WORKSPACE',
  python: 'AUTORESEARCH_PYTHON',
  'data-dir': 'AUTORESEARCH_DATA_DIR',
  host: 'AUTORESEARCH_HOST',
  port: 'AUTORESEARCH_PORT',
  token: 'AUTORESEARCH_TOKEN',
  gpus: 'AUTORESEARCH_GPUS',
  slots: 'AUTORESEARCH_SLOTS',
  'ceiling-seconds': 'AUTORESEARCH_CEILING_SECONDS',
  url: 'AUTORESEARCH_URL',
  'idle-hours': 'AUTORESEARCH_IDLE_HOURS',
  'no-daemon': 'AUTORESEARCH_NO_DAEMON',
  backend: 'AUTORESEARCH_BACKEND',
  'slurm-partition': 'AUTORESEARCH_SLURM_PARTITION',
  'slurm-account': 'AUTORESEARCH_SLURM_ACCOUNT',
  'slurm-gpus': 'AUTORESEARCH_SLURM_GPUS',
  'slurm-shared-dir': 'AUTORESEARCH_SLURM_SHARED_DIR',
  'slurm-sbatch-args': 'AUTORESEARCH_SLURM_SBATCH_ARGS',
} as const;

/** The flags that configure the Slurm backend: valid only with --backend slurm, passed on from serve to its lab. */
const SLURM_FLAGS = ['slurm-partition', 'slurm-account', 'slurm-gpus', 'slurm-shared-dir', 'slurm-sbatch-args'] as const;

/** Switches that may come from the environment: 1, true, yes or on set them. */
const BOOLEAN_ENV_FLAGS = ['no-daemon'] as const;

/** Hours a lab started by `serve` waits with nothing queued or running and no client before it stops. */
export const DEFAULT_IDLE_HOURS = 12;

const ENV_HELP = [
  '  AUTORESEARCH_WORKSPACE        --workspace: the workspace folder',
  '  AUTORESEARCH_PYTHON           --python: the interpreter that trains (must import torch)',
  '  AUTORESEARCH_DATA_DIR         --data-dir: prepared data for init',
  '  AUTORESEARCH_HOST, _PORT      --host, --port of serve --http',
  '  AUTORESEARCH_TOKEN            --token: bearer token for serve --http and agent --url',
  '  AUTORESEARCH_GPUS, _SLOTS     --gpus, --slots',
  '  AUTORESEARCH_CEILING_SECONDS  --ceiling-seconds',
  '  AUTORESEARCH_URL              --url of agent',
  `  AUTORESEARCH_IDLE_HOURS       --idle-hours: a lab with nothing to do and no client stops after this (default ${DEFAULT_IDLE_HOURS}; 0: never)`,
  '  AUTORESEARCH_NO_DAEMON        --no-daemon when 1: serve in this process, runs end with the client',
  '  AUTORESEARCH_BACKEND          --backend: local (default) or slurm (docs/slurm.md)',
  '  AUTORESEARCH_SLURM_PARTITION, _ACCOUNT, _GPUS, _SHARED_DIR, _SBATCH_ARGS   --slurm-partition, --slurm-account, --slurm-gpus, --slurm-shared-dir, --slurm-sbatch-args',
].join('\n');

const VERSION: string = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')).version;

const USAGE = `autoresearch-mcp: an MCP server for autonomous ML research on one training file

Usage:
  autoresearch-mcp init DIR [--profile cpu|gpu|smoke] [--corpus SRC ...] [--data-dir DIR] [--python PATH]
  autoresearch-mcp serve --workspace DIR [--http [--host 127.0.0.1] [--port 8765 (0: any free port)] [--token T]]
                         [--gpus 0,1,...] [--slots N] [--ceiling-seconds S] [--idle-hours H] [--no-daemon] [--unsandboxed]
                         [--backend local|slurm [--slurm-partition P] [--slurm-account A] [--slurm-gpus N] [--slurm-shared-dir DIR] [--slurm-sbatch-args="--qos=Q --mem=64G ..."]]
  autoresearch-mcp stop --workspace DIR          end the workspace's lab (cancels running experiments)
  autoresearch-mcp lab --workspace DIR [--idle-hours H] [--gpus ...] [--slots N] [--unsandboxed]   run the lab in the foreground
  autoresearch-mcp demo [--dir DIR] [--profile cpu|gpu] [--unsandboxed]
  autoresearch-mcp agent --workspace DIR (--plan FILE | --sweep NAME=v1,v2,...) [--url http://HOST:PORT/mcp] [--unsandboxed]
  autoresearch-mcp doctor [--python PATH]        which Python runs training, with torch and CUDA
  autoresearch-mcp status --workspace DIR
  autoresearch-mcp results --workspace DIR [--tsv]
  autoresearch-mcp report --workspace DIR [--out FILE]
  autoresearch-mcp audit --workspace DIR [list|verify|export] [--format jsonl|csv] [--tool NAME] [--limit N] [--out FILE]
  autoresearch-mcp --version | --help

The workspace is a git repository; server state lives in DIR/.autoresearch (SQLite, run logs).
Runs execute in a bubblewrap sandbox (Debian package bubblewrap). --unsandboxed runs them without
one where none can be made; their results are marked unverified.
serve over stdio attaches to the workspace's lab, a background process that owns the queue and
the runs (started on first use, log in DIR/.autoresearch/lab.log): runs outlive the client.
serve --http makes this process the lab. --no-daemon keeps everything in this process instead.
Paths may start with ~ (expanded here, since MCP host configs pass arguments without a shell).

Environment (a flag given on the command line wins):
${ENV_HELP}`;

const OPTIONS = {
  workspace: { type: 'string', short: 'w' },
  profile: { type: 'string' },
  corpus: { type: 'string', multiple: true },
  'data-dir': { type: 'string' },
  python: { type: 'string' },
  http: { type: 'boolean' },
  'no-daemon': { type: 'boolean' },
  'idle-hours': { type: 'string' },
  host: { type: 'string' },
  port: { type: 'string' },
  token: { type: 'string' },
  gpus: { type: 'string' },
  slots: { type: 'string' },
  'ceiling-seconds': { type: 'string' },
  unsandboxed: { type: 'boolean' },
  backend: { type: 'string' },
  'slurm-partition': { type: 'string' },
  'slurm-account': { type: 'string' },
  'slurm-gpus': { type: 'string' },
  'slurm-shared-dir': { type: 'string' },
  'slurm-sbatch-args': { type: 'string' },
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
  version: { type: 'boolean', short: 'v' },
} as const;

/** Flags that name files or folders: `~` is expanded in each. */
const PATH_FLAGS = ['workspace', 'python', 'data-dir', 'dir', 'plan', 'out', 'slurm-shared-dir'] as const;

type Flags = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];


function requireWorkspace(flags: Flags): string {
  if (!flags.workspace) throw new UsageError('Name the workspace with --workspace DIR or AUTORESEARCH_WORKSPACE (create one with: autoresearch-mcp init DIR).');
  return resolve(flags.workspace);
}

function flagName(flag: string): string {
  const env = (ENV_FLAGS as Record<string, string>)[flag];
  return env ? `--${flag} (or ${env})` : `--${flag}`;
}

function positiveInt(value: string | undefined, flag: string, min = 1): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`${flagName(flag)} needs a whole number of at least ${min}, got "${value}".`);
  return n;
}

/** A path as the user meant it: `~` expanded; `~user` refused with the fix (no shell expands it here). */
function userPath(value: string, what: string): string {
  const path = expandHome(value);
  if (path.startsWith('~')) throw new UsageError(`${what} "${value}": only "~" and "~/..." are expanded here (no shell runs in between); write the absolute path.`);
  return path;
}

/** Fills flags from AUTORESEARCH_* variables where the command line left them out, and expands `~` in paths. */
export function withEnvironment(flags: Flags, env: NodeJS.ProcessEnv = process.env): Flags {
  const merged: Record<string, unknown> = { ...flags };
  for (const [flag, name] of Object.entries(ENV_FLAGS)) {
    if (merged[flag] === undefined && env[name] !== undefined && env[name] !== '') merged[flag] = env[name];
  }
  for (const flag of PATH_FLAGS) {
    if (typeof merged[flag] === 'string') merged[flag] = userPath(merged[flag] as string, flagName(flag));
  }
  for (const flag of BOOLEAN_ENV_FLAGS) {
    if (typeof merged[flag] === 'string') merged[flag] = /^(1|true|yes|on)$/i.test(merged[flag] as string);
  }
  if (Array.isArray(merged.corpus)) merged.corpus = (merged.corpus as string[]).map((source) => (source.startsWith('~') ? userPath(source, '--corpus') : source));
  return merged as Flags;
}

/** One slot per GPU (nvidia-smi), or the GPUs named, or N CPU slots; default one CPU slot. */
export function resolveSlots(flags: { gpus?: string; slots?: string }): Slot[] {
  if (flags.gpus) {
    const problem = gpuListProblem(flags.gpus, gpuUsage()?.map((gpu) => gpu.index));
    if (problem) throw new UsageError(problem);
    return flags.gpus.split(',').map((id, index) => ({ index, cudaDevices: id.trim() }));
  }
  const cpuSlots = positiveInt(flags.slots, 'slots');
  if (cpuSlots) return Array.from({ length: cpuSlots }, (_, index) => ({ index }));
  // Without an NVIDIA driver: one CPU slot.
  const gpus = gpuUsage() ?? [];
  return gpus.length > 0 ? gpus.map((gpu, index) => ({ index, cudaDevices: String(gpu.index) })) : [{ index: 0 }];
}

/**
 * The Slurm backend's settings from the flags, or undefined for local runs. With Slurm the
 * cluster places each job on a GPU (gres), so --gpus, which names this machine's GPUs, is refused.
 */
export function slurmOptions(flags: Flags): LabOptions['slurm'] {
  const backend = flags.backend ?? 'local';
  if (backend === 'local') {
    const stray = SLURM_FLAGS.filter((flag) => flags[flag] !== undefined);
    if (stray.length > 0) throw new UsageError(`${stray.map((flag) => `--${flag}`).join(', ')} apply only with --backend slurm (or AUTORESEARCH_BACKEND=slurm).`);
    return undefined;
  }
  if (backend !== 'slurm') throw new UsageError(`${flagName('backend')} is local or slurm, got "${backend}".`);
  if (flags.gpus) throw new UsageError('--gpus names GPUs of this machine; with --backend slurm the cluster chooses them: ask for GPUs per job with --slurm-gpus N, and for concurrent jobs with --slots N.');
  return {
    partition: flags['slurm-partition'] || undefined,
    account: flags['slurm-account'] || undefined,
    gpusPerJob: positiveInt(flags['slurm-gpus'], 'slurm-gpus', 0) ?? 0,
    sharedDir: flags['slurm-shared-dir'] ? resolve(flags['slurm-shared-dir']) : undefined,
    extraArgs: extraSbatchArgs(flags['slurm-sbatch-args']),
  };
}

/** --slurm-sbatch-args, split on whitespace and checked (slurm.ts sbatchArgsProblem). */
function extraSbatchArgs(value: string | undefined): string[] | undefined {
  const words = value?.trim().split(/\s+/).filter(Boolean) ?? [];
  if (words.length === 0) return undefined;
  const problem = sbatchArgsProblem(words);
  if (problem) throw new UsageError(`--slurm-sbatch-args: ${problem}`);
  return words;
}

async function openLab(flags: Flags, mode: 'serve' | 'inspect', log?: (message: string) => void): Promise<Lab> {
  const slurm = slurmOptions(flags);
  return Lab.open({
    workspace: requireWorkspace(flags),
    // With Slurm a slot is a job the lab keeps submitted; the cluster picks the node and the GPU
    // (a GPU slot's devices are the placeholder its job script fills in: src/core/slurm.ts).
    slots: slurm
      ? Array.from({ length: positiveInt(flags.slots, 'slots') ?? 1 }, (_, index) => (slurm.gpusPerJob > 0 ? { index, cudaDevices: SLURM_CUDA_VISIBLE_DEVICES } : { index }))
      : resolveSlots(flags),
    slurm,
    ceilingSeconds: positiveInt(flags['ceiling-seconds'], 'ceiling-seconds'),
    unsandboxed: flags.unsandboxed ?? false,
    mode,
    log,
  });
}

function idleHours(flags: Flags, fallback: number): number {
  const value = flags['idle-hours'];
  if (value === undefined) return fallback;
  const hours = Number(value);
  if (value.trim() === '' || !Number.isFinite(hours) || hours < 0) throw new UsageError(`${flagName('idle-hours')} needs a number of hours, 0 or more (fractions allowed), got "${value}".`);
  return hours;
}

function httpOptions(flags: Flags) {
  return { host: flags.host ?? '127.0.0.1', port: positiveInt(flags.port, 'port', 0) ?? 8765, token: flags.token };
}

/**
 * Runs this process as the workspace's lab (see transports/lab.ts). A background lab started by
 * serve (`lab`) that finds the workspace taken waits for the holder: another lab starting up
 * (it then exits with status 3 and serve attaches to the winner) or one still shutting down.
 */
async function runLab(flags: Flags, options: { http?: ReturnType<typeof httpOptions>; idleHours: number; waitForLock: boolean }): Promise<number> {
  const { runningLab } = await import('./transports/attach.js');
  const { EXIT_LAB_RUNNING } = await import('./transports/socket.js');
  const workspace = requireWorkspace(flags);
  const refuse = (other: { pid: number; version: string }) => {
    process.stderr.write(
      `autoresearch-mcp: a lab (pid ${other.pid}, autoresearch-mcp ${other.version}) already serves ${workspace}: attach to it with serve, or end it with: autoresearch-mcp stop --workspace ${workspace}\n`,
    );
    return EXIT_LAB_RUNNING;
  };
  const other = await runningLab(workspace);
  if (other) return refuse(other);
  const log = (message: string) => process.stderr.write(`${new Date().toISOString()} [autoresearch] ${message}\n`);
  const deadline = Date.now() + 60_000;
  let lab: Lab;
  for (;;) {
    try {
      lab = await openLab(flags, 'serve', log);
      break;
    } catch (error) {
      if (!options.waitForLock || !/Another autoresearch-mcp server/.test((error as Error).message) || Date.now() > deadline) throw error;
      const winner = await runningLab(workspace);
      if (winner) return refuse(winner);
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
  const { serveLab } = await import('./transports/lab.js');
  await serveLab(lab, { idleHours: options.idleHours, http: options.http });
  return -1;
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
  const parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  const [command, ...rest] = parsed.positionals;
  if (parsed.values.version || command === 'version') {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  if (parsed.values.help || command === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (!command) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const flags = withEnvironment(parsed.values);
  switch (command) {
    case 'init': {
      const dir = rest[0] === undefined ? undefined : userPath(rest[0], 'The workspace folder');
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
      if (flags['no-daemon']) {
        const lab = await openLab(flags, 'serve');
        if (flags.http) {
          const { serveHttp } = await import('./transports/http.js');
          await serveHttp(lab, httpOptions(flags));
        } else {
          const { serveStdio } = await import('./transports/stdio.js');
          await serveStdio(lab);
        }
        return -1;
      }
      // --http: this process is the lab (HTTP sessions and lab.sock), in the foreground.
      if (flags.http) return runLab(flags, { http: httpOptions(flags), idleHours: idleHours(flags, 0), waitForLock: false });
      const workspace = requireWorkspace(flags);
      idleHours(flags, DEFAULT_IDLE_HOURS);
      if (!slurmOptions(flags) && (flags.gpus || flags.slots)) resolveSlots(flags);
      positiveInt(flags['ceiling-seconds'], 'ceiling-seconds');
      const labArgs = (['gpus', 'slots', 'ceiling-seconds', 'idle-hours', 'backend', ...SLURM_FLAGS] as const).flatMap((flag) => (flags[flag] === undefined ? [] : [`--${flag}=${flags[flag] as string}`]));
      if (flags.unsandboxed) labArgs.push('--unsandboxed');
      const { attachStdio } = await import('./transports/attach.js');
      await attachStdio(workspace, labArgs);
      return -1;
    }
    case 'lab':
      return runLab(flags, { idleHours: idleHours(flags, DEFAULT_IDLE_HOURS), waitForLock: true });
    case 'stop': {
      const { stopLab } = await import('./transports/attach.js');
      return stopLab(requireWorkspace(flags));
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
      return runDemo({ dir: flags.dir, profile: parseProfile(flags.profile), unsandboxed: flags.unsandboxed });
    }
    case 'agent': {
      const { runAgentCommand } = await import('./agent/plan.js');
      return runAgentCommand({
        workspace: flags.workspace,
        plan: flags.plan,
        sweep: flags.sweep,
        url: flags.url,
        token: flags.token,
        unsandboxed: flags.unsandboxed,
      });
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
        const anchor = result.anchor;
        if (anchor?.state === 'anchored') {
          process.stdout.write(
            `audit chain intact: ${result.rows} rows, matching all ${anchor.lines} lines of the anchor ${anchor.path}; anchored head: seq ${anchor.headSeq} ${anchor.headHash}\n`,
          );
          if (anchor.unanchoredRows > 0) {
            process.stdout.write(`warning: the last ${anchor.unanchoredRows} row(s) are not anchored yet (written after the anchor's head; a server stopped between a row and its anchor line)\n`);
          }
        } else {
          process.stdout.write(`audit chain intact: ${result.rows} rows (checked against itself only, NOT anchored)\n`);
          if (anchor?.state === 'missing') process.stdout.write(`warning: ${anchor.message}\n`);
        }
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
    const message = explainNativeModuleError(error) ?? (error instanceof Error ? error.message : String(error));
    process.stderr.write(`autoresearch-mcp: ${message}\n`);
    process.exitCode = error instanceof UsageError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') ? 2 : 1;
  },
);

