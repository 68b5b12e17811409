import { existsSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import type { Server as HttpServer } from 'node:http';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import type { Lab } from '../core/lab.js';
import { isFinishedStatus } from '../core/store.js';
import { createServer } from '../server.js';
import { AuditedTransport } from './audited.js';
import { startHttpServer, type HttpOptions } from './http.js';
import { connectLab, isHello, labInfoPath, labLogPath, labSocketPath, SocketServerTransport, VERSION, type LabInfo } from './socket.js';

export interface LabServeOptions {
  /** Exit after this many hours with nothing queued or running and no client; 0: never. */
  idleHours: number;
  /** Also serve Streamable HTTP from this process. */
  http?: HttpOptions;
}

const log = (message: string) => process.stderr.write(`${new Date().toISOString()} [autoresearch] ${message}\n`);

/**
 * The workspace's lab: this process owns the queue and the runs (it holds the server lock through
 * `lab`) and serves any number of MCP clients, each on its own connection to lab.sock (and, with
 * --http, HTTP sessions). A client going away ends only its session; the lab ends on `stop`,
 * SIGTERM/SIGINT, or the idle policy.
 */
export async function serveLab(lab: Lab, options: LabServeOptions): Promise<void> {
  const workspace = lab.workspace.dir;
  const socketPath = labSocketPath(workspace);
  const startedAt = new Date().toISOString();
  const mcpSockets = new Set<Socket>();
  const controlSockets = new Set<Socket>();
  let httpInFlight = 0;
  let stopping = false;
  let httpUrl: string | null = null;
  let closeHttp: (() => Promise<void>) | undefined;
  let idleSince = Date.now();

  // We hold the server lock, so no other lab can be listening: a socket file left behind is stale.
  if (existsSync(socketPath)) {
    const other = await connectLab(workspace, 'info', 2_000).catch(() => null);
    if (other) {
      other.socket.destroy();
      throw new Error(`A lab (pid ${other.info.pid}) already answers on ${socketPath} although this process holds the workspace lock; stop it with: autoresearch-mcp stop --workspace ${workspace}`);
    }
    unlinkSync(socketPath);
    log(`removed a stale ${socketPath}`);
  }

  const unsafeQueue = () => {
    const counts = lab.store.countByStatus() as Record<string, number>;
    return Object.entries(counts).filter(([status, n]) => n > 0 && !isFinishedStatus(status));
  };

  const info = (): LabInfo => ({
    autoresearch: 'lab',
    ok: true,
    version: VERSION,
    pid: process.pid,
    workspace,
    startedAt,
    http: httpUrl,
    idleHours: options.idleHours,
    log: labLogPath(workspace),
  });

  const net: NetServer = createNetServer((socket) => accept(socket));
  const accept = (socket: Socket) => {
    if (stopping) return void socket.destroy();
    socket.on('error', () => undefined);
    let buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      const end = buffer.indexOf(10);
      if (end < 0) {
        if (buffer.length > 1024 * 1024) socket.destroy();
        return;
      }
      socket.off('data', onData);
      socket.pause();
      const line = buffer.subarray(0, end).toString('utf8');
      let first: unknown;
      try {
        first = JSON.parse(line);
      } catch {
        first = undefined;
      }
      if (isHello(first)) {
        if (first.op === 'attach') {
          socket.write(`${JSON.stringify(info())}\n`);
          attachMcp(socket, buffer.subarray(end + 1), first.version);
        } else if (first.op === 'stop') {
          controlSockets.add(socket);
          const running = lab.store.listExperiments({ status: 'running', order: 'id', ascending: true }).map((e) => e.id);
          const queued = lab.store.listExperiments({ status: 'queued', order: 'id', ascending: true }).map((e) => e.id);
          socket.write(`${JSON.stringify({ ...info(), running, queued })}\n`);
          void shutdown('stop requested');
        } else {
          socket.end(`${JSON.stringify(info())}\n`);
        }
        return;
      }
      // No hello: a plain bridge speaking MCP from its first line.
      attachMcp(socket, buffer, undefined);
    };
    socket.on('data', onData);
  };

  const attachMcp = (socket: Socket, initial: Buffer, clientVersion: string | undefined) => {
    mcpSockets.add(socket);
    const { server, cleanup } = createServer(lab, { transport: 'stdio' });
    const transport = new SocketServerTransport(socket, initial);
    socket.once('close', () => {
      mcpSockets.delete(socket);
      void cleanup().catch(() => undefined);
      touch();
    });
    if (clientVersion && clientVersion !== VERSION) log(`a client of autoresearch-mcp ${clientVersion} attached to this lab (${VERSION})`);
    server.connect(new AuditedTransport(transport, lab.store.audit, 'stdio')).catch((error: Error) => {
      log(`connection failed: ${error.message}`);
      socket.destroy();
    });
  };

  // Only the owner may connect: the socket is created 0600 (umask around listen).
  const previousMask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      net.once('error', reject);
      net.listen(socketPath, () => {
        net.off('error', reject);
        resolve();
      });
    });
  } finally {
    process.umask(previousMask);
  }
  net.on('error', (error) => log(`lab socket: ${error.message}`));

  if (options.http) {
    const started = await startHttpServer(lab, options.http).catch(async (error) => {
      net.close();
      unlinkSocket();
      throw error;
    });
    httpUrl = started.url;
    closeHttp = started.close;
    trackHttp(started.server);
  }

  function trackHttp(server: HttpServer) {
    server.on('request', (_req, res) => {
      httpInFlight += 1;
      touch();
      res.once('close', () => {
        httpInFlight -= 1;
        touch();
      });
    });
  }

  function unlinkSocket() {
    try {
      unlinkSync(socketPath);
    } catch {
      // already gone
    }
  }

  writeFileSync(labInfoPath(workspace), `${JSON.stringify(info(), null, 2)}\n`);
  lab.store.audit.append({ transport: 'cli', kind: 'event', method: 'lab_started', message: `lab pid ${process.pid} (autoresearch-mcp ${VERSION}) serving ${socketPath}${httpUrl ? ` and ${httpUrl}` : ''}` });
  log(`lab ${process.pid} serving ${workspace}${httpUrl ? ` at ${httpUrl} and` : ''} on ${socketPath}; idle policy: ${options.idleHours > 0 ? `stop after ${options.idleHours} h idle` : 'never stop when idle'}`);

  // ---- idle policy ---------------------------------------------------------------------------
  function touch() {
    idleSince = Date.now();
  }
  const idleMs = options.idleHours * 3_600_000;
  if (idleMs > 0) {
    const timer = setInterval(
      () => {
        if (stopping) return;
        let busy: [string, number][];
        try {
          busy = unsafeQueue();
        } catch {
          return;
        }
        if (mcpSockets.size > 0 || httpInFlight > 0 || busy.length > 0) return touch();
        if (Date.now() - idleSince >= idleMs) void shutdown(`idle for ${options.idleHours} h: nothing queued or running and no client`);
      },
      Math.min(60_000, Math.max(100, idleMs / 10)),
    );
    timer.unref();
  }

  // ---- shutdown ------------------------------------------------------------------------------
  async function shutdown(why: string): Promise<void> {
    if (stopping) return;
    stopping = true;
    log(`stopping (${why}): ending running experiments`);
    net.close();
    unlinkSocket();
    for (const socket of mcpSockets) socket.destroy();
    try {
      lab.store.audit.append({ transport: 'cli', kind: 'event', method: 'lab_stopped', message: `lab pid ${process.pid} stopping: ${why}` });
    } catch {
      // the record of stopping is best effort; the runs' own records are not
    }
    await lab.close().catch((error: Error) => log(`closing the lab: ${error.message}`));
    await closeHttp?.().catch(() => undefined);
    try {
      if (JSON.parse(readFileSync(labInfoPath(workspace), 'utf8')).pid === process.pid) unlinkSync(labInfoPath(workspace));
    } catch {
      // gone or not ours
    }
    log('lab stopped');
    await Promise.all([...controlSockets].map((socket) => new Promise<void>((resolve) => socket.end(() => resolve()))));
    process.exit(0);
  }

  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('SIGHUP', () => undefined);
  // A peer vanishing mid-write must not take the runs down with it.
  process.on('uncaughtException', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE' || error.code === 'ECONNRESET') return log(`client connection: ${error.message}`);
    log(`fatal: ${error.stack ?? error.message}`);
    void shutdown('internal error');
  });
}
