import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, renameSync, statSync } from 'node:fs';
import type { Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { UserError } from '../core/errors.js';
import { stateDir } from '../core/paths.js';
import { connectLab, EXIT_LAB_RUNNING, labInfoPath, labLogPath, labSocketPath, VERSION, type LabInfo } from './socket.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'cli.js');
const MAX_LOG_BYTES = 10 * 1024 * 1024;
const say = (message: string) => process.stderr.write(`[autoresearch] ${message}\n`);

function requireWorkspaceState(workspace: string): void {
  const db = join(stateDir(workspace), 'state.db');
  if (!existsSync(db)) throw new UserError(`${workspace} is not an autoresearch workspace (no ${db}). Create one with: autoresearch-mcp init ${workspace}`);
}

/** Starts `autoresearch-mcp lab` for the workspace, detached, its output appended to lab.log. */
export function spawnLab(workspace: string, labArgs: string[]): ChildProcess {
  const logPath = labLogPath(workspace);
  try {
    if (statSync(logPath).size > MAX_LOG_BYTES) renameSync(logPath, `${logPath}.1`);
  } catch {
    // no log yet
  }
  const fd = openSync(logPath, 'a', 0o600);
  try {
    const child = spawn(process.execPath, [CLI, 'lab', '--workspace', workspace, ...labArgs], {
      detached: true,
      stdio: ['ignore', fd, fd],
      cwd: workspace,
      env: process.env,
    });
    child.unref();
    return child;
  } finally {
    closeSync(fd);
  }
}

function logTail(workspace: string, fromByte: number): string {
  try {
    const text = readFileSync(labLogPath(workspace)).subarray(fromByte).toString('utf8');
    return text.trim().split('\n').slice(-6).join('\n');
  } catch {
    return '';
  }
}

/**
 * The workspace's lab, started in the background when none answers. Two callers racing here
 * each may start one; the server lock lets one win, the loser exits (status 3) and both attach
 * to the winner.
 */
export async function ensureLab(workspace: string, labArgs: string[], timeoutMs = 60_000): Promise<{ socket: Socket; info: LabInfo; rest: Buffer; started: boolean }> {
  requireWorkspaceState(workspace);
  const existing = await connectLab(workspace, 'attach');
  if (existing) return { ...existing, started: false };
  const logPath = labLogPath(workspace);
  let logStart = 0;
  try {
    logStart = statSync(logPath).size;
  } catch {
    // new log
  }
  const child = spawnLab(workspace, labArgs);
  let exit: number | null | undefined;
  child.once('exit', (code) => (exit = code ?? -1));
  child.once('error', () => (exit = -1));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const connected = await connectLab(workspace, 'attach');
    if (connected) return { ...connected, started: true };
    if (exit !== undefined && exit !== 0 && exit !== EXIT_LAB_RUNNING) {
      const tail = logTail(workspace, logStart);
      throw new Error(`The lab for ${workspace} failed to start (exit ${exit}); see ${logPath}${tail ? `:\n${tail}` : ''}`);
    }
    if (Date.now() > deadline) {
      throw new Error(`The lab for ${workspace} did not open ${labSocketPath(workspace)} within ${timeoutMs / 1000} s; see ${logPath}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * `serve` over stdio: a relay between the host's stdin/stdout and the workspace's lab. stdout
 * carries only what the lab sends (JSON-RPC). Closing stdin ends this client's session; the lab
 * and its runs carry on.
 */
export async function attachStdio(workspace: string, labArgs: string[]): Promise<void> {
  const { socket, info, rest, started } = await ensureLab(workspace, labArgs);
  if (info.version !== VERSION) {
    say(`the lab for this workspace runs autoresearch-mcp ${info.version}, this command is ${VERSION}: its tools are the lab's. Restart it on this version with: autoresearch-mcp stop --workspace ${workspace} (cancels running experiments), then serve again.`);
  }
  say(`${started ? 'started' : 'attached to'} the lab for ${workspace} (pid ${info.pid}); runs go on when this client disconnects. Lab log: ${info.log}`);
  let inputEnded = false;
  const finish = (code: number) => {
    process.stdout.write('', () => process.exit(code));
  };
  process.stdout.on('error', () => {
    socket.destroy();
    process.exit(0);
  });
  socket.on('error', () => undefined);
  socket.on('close', () => {
    if (inputEnded) return finish(0);
    say(`the lab (pid ${info.pid}) closed the connection: it stopped or crashed. See ${info.log}; the next serve starts a new lab.`);
    finish(1);
  });
  if (rest.length > 0) process.stdout.write(rest);
  socket.pipe(process.stdout, { end: false });
  socket.resume();
  const endInput = () => {
    if (inputEnded) return;
    inputEnded = true;
    socket.end();
    // The lab closes its side at once; do not hang on it.
    setTimeout(() => process.exit(0), 2_000).unref();
  };
  process.stdin.on('data', (chunk: Buffer) => {
    if (!socket.write(chunk)) {
      process.stdin.pause();
      socket.once('drain', () => process.stdin.resume());
    }
  });
  process.stdin.on('end', endInput);
  process.stdin.on('close', endInput);
  process.on('SIGTERM', () => process.exit(0));
  process.on('SIGINT', () => process.exit(0));
}

function readLabInfo(workspace: string): { info?: LabInfo; problem?: string } {
  const path = labInfoPath(workspace);
  if (!existsSync(path)) return {};
  try {
    const info = JSON.parse(readFileSync(path, 'utf8')) as LabInfo;
    if (!Number.isInteger(info.pid) || info.pid <= 0) return { problem: `${path} names no pid` };
    return { info };
  } catch (error) {
    return { problem: `${path} is unreadable (${(error as Error).message})` };
  }
}

/** Whether pid is a live `autoresearch-mcp lab` process for this workspace (not a reused pid). */
function isLabProcess(pid: number, workspace: string): boolean {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return argv.includes('lab') && argv.includes(workspace);
  } catch {
    return false;
  }
}

/** Alive and not a zombie (an exited lab its parent has not reaped yet has stopped). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z');
  } catch {
    return true;
  }
}

async function waitGone(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (alive(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return true;
}

/** `stop`: asks the lab to end (it cancels running and queued experiments, recorded) and waits for it. */
export async function stopLab(workspace: string, timeoutMs = 120_000): Promise<number> {
  requireWorkspaceState(workspace);
  const connected = await connectLab(workspace, 'stop');
  if (!connected) {
    // Nothing answers on the socket; a lab whose socket was removed can still be named by lab.json.
    const { info, problem } = readLabInfo(workspace);
    if (info && alive(info.pid) && isLabProcess(info.pid, workspace)) {
      say(`the lab (pid ${info.pid}) does not answer on ${labSocketPath(workspace)}; sending it SIGTERM`);
      process.kill(info.pid, 'SIGTERM');
      if (!(await waitGone(info.pid, timeoutMs))) throw new Error(`The lab (pid ${info.pid}) did not stop within ${timeoutMs / 1000} s; see ${labLogPath(workspace)}`);
      say('lab stopped');
      return 0;
    }
    say(`no lab runs for ${workspace}${problem ? ` (${problem}; nothing to stop)` : ''}`);
    return 0;
  }
  const { socket, info } = connected;
  const what = [
    info.running?.length ? `cancelling running experiment(s) ${info.running.join(', ')}` : '',
    info.queued?.length ? `cancelling queued experiment(s) ${info.queued.join(', ')}` : '',
  ].filter(Boolean);
  say(`stopping the lab for ${workspace} (pid ${info.pid})${what.length ? `: ${what.join('; ')}` : ''}`);
  socket.on('error', () => undefined);
  socket.resume();
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  if (!(await waitGone(info.pid, 10_000))) throw new Error(`The lab (pid ${info.pid}) did not exit; see ${info.log}`);
  say('lab stopped');
  return 0;
}

/** For `serve --http` and `lab`: a lab that already answers, to refuse a second one clearly. */
export async function runningLab(workspace: string): Promise<LabInfo | undefined> {
  const connected = await connectLab(workspace, 'info', 5_000).catch(() => null);
  if (!connected) return undefined;
  connected.socket.destroy();
  return connected.info;
}
