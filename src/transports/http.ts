import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Lab } from '../core/lab.js';
import { createServer } from '../server.js';
import { AuditedTransport } from './audited.js';
import { shutdownOnce } from './lifecycle.js';

export const MCP_PATH = '/mcp';
export const MAX_BODY_BYTES = 1024 * 1024;

export interface HttpOptions {
  host: string;
  port: number;
  /** Bearer token; required when bound beyond loopback. */
  token?: string;
  /** Host names accepted in the Host header besides the bound one (e.g. behind a proxy). */
  allowedHosts?: string[];
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1', '[::1]']);

export function isLoopback(host: string): boolean {
  return LOOPBACK.has(host) || host.startsWith('127.');
}

/**
 * DNS-rebinding defence: a browser tricked into calling us still sends the attacker's host name,
 * so only the names we are bound to (and explicitly allowed ones) pass.
 */
export function isAllowedHostHeader(header: string | undefined, allowed: string[]): boolean {
  if (!header) return false;
  let hostname: string;
  try {
    hostname = new URL(`http://${header}`).hostname;
  } catch {
    return false;
  }
  return allowed.includes(hostname.toLowerCase());
}

export function hasBearerToken(header: string | undefined, token: string): boolean {
  const match = /^Bearer\s+(\S+)$/i.exec(header ?? '');
  if (!match) return false;
  const given = Buffer.from(match[1]);
  const expected = Buffer.from(token);
  return given.length === expected.length && timingSafeEqual(given, expected);
}

function sendJsonError(res: ServerResponse, status: number, code: number, message: string): void {
  res.writeHead(status, { 'Content-Type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

async function readJsonBody(req: IncomingMessage): Promise<{ body?: unknown; error?: [number, string] }> {
  const chunks: Buffer[] = [];
  let size = 0;
  // Past the limit we keep reading but drop the bytes: answering before the client has sent
  // everything would reset the connection instead of delivering the 413.
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size <= MAX_BODY_BYTES) chunks.push(chunk as Buffer);
  }
  if (size > MAX_BODY_BYTES) return { error: [413, `Request body over ${MAX_BODY_BYTES} bytes: send smaller requests`] };
  try {
    return { body: JSON.parse(Buffer.concat(chunks).toString('utf8')) };
  } catch {
    return { error: [400, 'Parse error: the body is not JSON'] };
  }
}

interface Session {
  transport: StreamableHTTPServerTransport;
  cleanup: () => Promise<void>;
}

/**
 * Streamable HTTP with stateful sessions: one transport and one MCP server per session, all over
 * the same Lab, so several clients share one workspace and each is audited under its session id.
 */
export async function startHttpServer(lab: Lab, options: HttpOptions): Promise<{ server: Server; url: string; close: () => Promise<void> }> {
  if (!isLoopback(options.host) && !options.token) {
    throw new Error(`Binding to ${options.host} exposes the lab beyond this machine: pass --token (or AUTORESEARCH_TOKEN) so clients must authenticate.`);
  }
  const allowedHosts = [...new Set([options.host, 'localhost', '127.0.0.1', '[::1]', ...(options.allowedHosts ?? [])].map((h) => h.toLowerCase()))];
  const sessions = new Map<string, Session>();

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://placeholder');
    if (url.pathname !== MCP_PATH) return sendJsonError(res, 404, -32000, `Not found: the MCP endpoint is ${MCP_PATH}`);
    if (!isAllowedHostHeader(req.headers.host, allowedHosts)) {
      return sendJsonError(res, 403, -32000, `Host header "${req.headers.host ?? ''}" is not allowed (DNS rebinding protection)`);
    }
    if (options.token && !hasBearerToken(req.headers.authorization, options.token)) {
      res.setHeader('WWW-Authenticate', 'Bearer');
      return sendJsonError(res, 401, -32001, 'Missing or wrong bearer token: send Authorization: Bearer <token>');
    }
    const sessionId = req.headers['mcp-session-id'];
    const existing = typeof sessionId === 'string' ? sessions.get(sessionId) : undefined;

    if (req.method === 'POST') {
      const { body, error } = await readJsonBody(req);
      if (error) return sendJsonError(res, error[0], error[0] === 413 ? -32600 : -32700, error[1]);
      if (existing) return existing.transport.handleRequest(req, res, body);
      if (sessionId !== undefined) return sendJsonError(res, 404, -32001, 'Unknown or closed session: start a new one with initialize');
      if (!isInitializeRequest(body)) return sendJsonError(res, 400, -32000, 'No session: the first request must be initialize');
      const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (id) => void sessions.set(id, { transport, cleanup }),
      });
      const { server, cleanup } = createServer(lab, { transport: 'http' });
      transport.onclose = () => {
        if (transport.sessionId) sessions.delete(transport.sessionId);
      };
      await server.connect(new AuditedTransport(transport, lab.store.audit, 'http'));
      return transport.handleRequest(req, res, body);
    }
    if (req.method === 'GET' || req.method === 'DELETE') {
      if (!existing) return sendJsonError(res, sessionId === undefined ? 400 : 404, -32001, 'Unknown or missing mcp-session-id');
      return existing.transport.handleRequest(req, res);
    }
    res.setHeader('Allow', 'GET, POST, DELETE');
    return sendJsonError(res, 405, -32000, `Method ${req.method} not allowed`);
  };

  const server = createHttpServer((req, res) => {
    handle(req, res).catch((error: Error) => {
      process.stderr.write(`[autoresearch] http: ${error.stack}\n`);
      if (!res.headersSent) sendJsonError(res, 500, -32603, 'Internal error');
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, resolve);
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const close = async () => {
    for (const session of sessions.values()) await session.cleanup().catch(() => undefined);
    sessions.clear();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return { server, url: `http://${host}:${address.port}${MCP_PATH}`, close };
}

/** `serve --http`: runs until SIGTERM/SIGINT, then stops the runs and closes every session. */
export async function serveHttp(lab: Lab, options: HttpOptions): Promise<void> {
  const { url, close } = await startHttpServer(lab, options);
  process.stderr.write(`[autoresearch] serving ${lab.workspace.dir} at ${url}\n`);
  shutdownOnce(lab, close);
}
