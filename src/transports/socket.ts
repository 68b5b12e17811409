import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import { ReadBuffer, serializeMessage } from '@modelcontextprotocol/sdk/shared/stdio.js';
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { createHash, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PACKAGE_ROOT, stateDir } from '../core/paths.js';

export const VERSION: string = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')).version;

/** Unix socket paths are limited to ~107 bytes; deeper workspaces get a per-workspace one in the temp folder. */
const MAX_SOCKET_PATH = 100;

export function labSocketPath(workspace: string): string {
  const inState = join(stateDir(workspace), 'lab.sock');
  if (Buffer.byteLength(inState) <= MAX_SOCKET_PATH) return inState;
  return join(tmpdir(), `autoresearch-${createHash('sha256').update(workspace).digest('hex').slice(0, 16)}.sock`);
}

export const labInfoPath = (workspace: string): string => join(stateDir(workspace), 'lab.json');
export const labLogPath = (workspace: string): string => join(stateDir(workspace), 'lab.log');

/** Exit status of `lab` when another lab already serves the workspace (the caller may attach to it). */
export const EXIT_LAB_RUNNING = 3;

/**
 * The first line on every connection to lab.sock is a hello (`{"autoresearch":"lab","op":...}`)
 * answered by one line from the lab; after an `attach` hello the connection carries MCP,
 * newline-delimited JSON-RPC, both ways. A first line that is JSON-RPC instead starts MCP at
 * once, so a plain bridge (`socat STDIO UNIX-CONNECT:.../lab.sock`) works too.
 */
export type LabOp = 'attach' | 'stop' | 'info';

export interface LabHello {
  autoresearch: 'lab';
  op: LabOp;
  version: string;
}

export interface LabInfo {
  autoresearch: 'lab';
  ok: boolean;
  error?: string;
  version: string;
  pid: number;
  workspace: string;
  startedAt: string;
  http: string | null;
  idleHours: number;
  log: string;
  /** For stop: what the lab is about to cancel. */
  running?: number[];
  queued?: number[];
}

export function isHello(value: unknown): value is LabHello {
  return typeof value === 'object' && value !== null && (value as LabHello).autoresearch === 'lab' && typeof (value as LabHello).op === 'string';
}

export class LabConnectError extends Error {}

/**
 * Connects to the workspace's lab and says hello. Resolves null when no lab listens (no socket
 * file, or a stale one); throws LabConnectError when something answers but not as a lab.
 */
export async function connectLab(workspace: string, op: LabOp, timeoutMs = 10_000): Promise<{ socket: Socket; info: LabInfo; rest: Buffer } | null> {
  const path = labSocketPath(workspace);
  const socket = await new Promise<Socket | null>((resolve, reject) => {
    const s = connect(path);
    s.once('connect', () => {
      s.removeAllListeners('error');
      resolve(s);
    });
    s.once('error', (error: NodeJS.ErrnoException) => {
      s.destroy();
      if (error.code === 'ENOENT' || error.code === 'ECONNREFUSED') resolve(null);
      else reject(new LabConnectError(`Cannot connect to the lab socket ${path}: ${error.message}`));
    });
  });
  if (!socket) return null;
  return new Promise((resolve, reject) => {
    let buffer = Buffer.alloc(0);
    const fail = (why: string) => {
      cleanup();
      socket.destroy();
      reject(new LabConnectError(`${path} answers but not as an autoresearch lab (${why}). Stop whatever listens there, or remove the file if nothing does.`));
    };
    const timer = setTimeout(() => fail(`no hello within ${timeoutMs / 1000} s`), timeoutMs);
    const onData = (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      const end = buffer.indexOf(10);
      if (end < 0) {
        if (buffer.length > 64 * 1024) fail('hello line too long');
        return;
      }
      cleanup();
      socket.pause();
      let info: LabInfo;
      try {
        info = JSON.parse(buffer.subarray(0, end).toString('utf8'));
      } catch {
        return fail('hello is not JSON');
      }
      if (info?.autoresearch !== 'lab') return fail('hello is not from a lab');
      resolve({ socket, info, rest: buffer.subarray(end + 1) });
    };
    const onEnd = () => fail('closed before its hello');
    const onError = (error: Error) => fail(error.message);
    const cleanup = () => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onError);
    };
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('error', onError);
    const hello: LabHello = { autoresearch: 'lab', op, version: VERSION };
    socket.write(`${JSON.stringify(hello)}\n`);
  });
}

/**
 * MCP over one accepted socket, newline-delimited JSON-RPC (the stdio framing). Unlike the SDK's
 * stdio transport it notices the peer going away: the socket closing closes this session only.
 */
export class SocketServerTransport implements Transport {
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: (message: JSONRPCMessage) => void;
  sessionId: string = randomUUID();
  private readonly buffer = new ReadBuffer();
  private closed = false;

  constructor(
    private readonly socket: Socket,
    private readonly initial: Buffer = Buffer.alloc(0),
  ) {}

  async start(): Promise<void> {
    this.socket.on('data', (chunk: Buffer) => this.receive(chunk));
    this.socket.on('error', (error) => this.onerror?.(error));
    this.socket.on('close', () => void this.close());
    if (this.initial.length > 0) this.receive(this.initial);
    this.socket.resume();
  }

  private receive(chunk: Buffer): void {
    try {
      this.buffer.append(chunk);
    } catch (error) {
      this.onerror?.(error as Error);
      this.socket.destroy();
      return;
    }
    for (;;) {
      let message: JSONRPCMessage | null;
      try {
        message = this.buffer.readMessage();
      } catch (error) {
        this.onerror?.(error as Error);
        continue;
      }
      if (message === null) return;
      this.onmessage?.(message);
    }
  }

  async send(message: JSONRPCMessage): Promise<void> {
    if (this.closed || this.socket.destroyed || !this.socket.writable) return;
    await new Promise<void>((resolve) => {
      if (this.socket.write(serializeMessage(message))) resolve();
      else this.socket.once('drain', resolve).once('close', resolve);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.buffer.clear();
    this.socket.destroy();
    this.onclose?.();
  }
}
