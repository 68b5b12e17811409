import type { Transport, TransportSendOptions } from '@modelcontextprotocol/sdk/shared/transport.js';
import type { JSONRPCMessage, MessageExtraInfo } from '@modelcontextprotocol/sdk/types.js';
import type { AuditLog } from '../core/audit.js';

interface PendingRequest {
  method: string;
  tool?: string;
  arguments?: unknown;
  startedAt: number;
}

/**
 * Wraps a transport so that every request the server handles, and every notification it
 * receives, lands in the audit log with its response, duration and the client that sent it.
 * Sitting at the transport means no handler can forget to audit.
 */
export class AuditedTransport implements Transport {
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: <T extends JSONRPCMessage>(message: T, extra?: MessageExtraInfo) => void;
  private readonly pending = new Map<string | number, PendingRequest>();
  private client?: { name?: string; version?: string };

  constructor(
    private readonly inner: Transport,
    private readonly audit: AuditLog,
    private readonly transportName: 'stdio' | 'http',
  ) {
    inner.onclose = () => this.onclose?.();
    inner.onerror = (error) => this.onerror?.(error);
    inner.onmessage = (message, extra) => {
      this.observeIncoming(message);
      this.onmessage?.(message, extra);
    };
  }

  get sessionId(): string | undefined {
    return this.inner.sessionId;
  }

  set sessionId(value: string | undefined) {
    this.inner.sessionId = value;
  }

  setProtocolVersion(version: string): void {
    this.inner.setProtocolVersion?.(version);
  }

  start(): Promise<void> {
    return this.inner.start();
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  async send(message: JSONRPCMessage, options?: TransportSendOptions): Promise<void> {
    this.observeOutgoing(message);
    return this.inner.send(message, options);
  }

  private observeIncoming(message: JSONRPCMessage): void {
    if (!('method' in message)) return;
    const params = (message.params ?? {}) as Record<string, any>;
    if (message.method === 'initialize') this.client = { name: params.clientInfo?.name, version: params.clientInfo?.version };
    if ('id' in message && message.id !== undefined) {
      this.pending.set(message.id, {
        method: message.method,
        tool: message.method === 'tools/call' ? params.name : undefined,
        arguments: message.method === 'tools/call' ? params.arguments : withoutMeta(params),
        startedAt: Date.now(),
      });
      return;
    }
    if (message.method === 'notifications/initialized' || message.method === 'notifications/cancelled') {
      this.append({ kind: 'notification', method: message.method, arguments: withoutMeta(params) });
    }
  }

  private observeOutgoing(message: JSONRPCMessage): void {
    if (!('id' in message) || message.id === undefined || 'method' in message) return;
    const request = this.pending.get(message.id);
    if (!request) return;
    this.pending.delete(message.id);
    const result = 'result' in message ? message.result : 'error' in message ? message.error : undefined;
    const isError = 'error' in message || Boolean((result as { isError?: boolean } | undefined)?.isError);
    this.append({
      kind: 'request',
      method: request.method,
      tool: request.tool,
      arguments: request.arguments,
      result,
      isError,
      durationMs: Date.now() - request.startedAt,
    });
  }

  private append(entry: { kind: 'request' | 'notification'; method: string; tool?: string; arguments?: unknown; result?: unknown; isError?: boolean; durationMs?: number }): void {
    try {
      this.audit.append({
        ...entry,
        transport: this.transportName,
        mcpSessionId: this.inner.sessionId,
        clientName: this.client?.name,
        clientVersion: this.client?.version,
      });
    } catch (error) {
      process.stderr.write(`[autoresearch] audit append failed: ${(error as Error).message}\n`);
    }
  }
}

function withoutMeta(params: Record<string, unknown>): Record<string, unknown> {
  const { _meta, ...rest } = params;
  void _meta;
  return rest;
}
