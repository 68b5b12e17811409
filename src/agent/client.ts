import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../core/paths.js';
import { isFinishedStatus } from '../core/store.js';

export interface Progress {
  progress: number;
  total?: number;
  message?: string;
}

/** A tool answered with isError: the server's message says what to do. */
export class ToolError extends Error {
  constructor(
    readonly tool: string,
    message: string,
  ) {
    super(message);
  }
}


/**
 * A scripted agent's handle on the server: every step goes through the MCP tools, so the same
 * rules and audit apply as for a model.
 */
export class ResearchClient {
  private constructor(readonly client: Client) {}

  /**
   * Starts `autoresearch-mcp serve --no-daemon` for a workspace as a child process and connects
   * over stdio: a scripted agent owns its server for its lifetime (no background lab left behind).
   */
  static async spawn(workspace: string, options: { serverArgs?: string[]; serverLog?: string; name?: string } = {}): Promise<ResearchClient> {
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: [join(PACKAGE_ROOT, 'dist', 'cli.js'), 'serve', '--workspace', workspace, '--no-daemon', ...(options.serverArgs ?? [])],
      env: Object.fromEntries(Object.entries(process.env).filter((entry): entry is [string, string] => entry[1] !== undefined)),
      stderr: options.serverLog ? 'pipe' : 'inherit',
    });
    if (options.serverLog) transport.stderr?.pipe(createWriteStream(options.serverLog, { flags: 'a' }));
    return ResearchClient.connect(transport, options.name);
  }

  /** Connects to a server already listening on Streamable HTTP. */
  static async http(url: string, options: { token?: string; name?: string } = {}): Promise<ResearchClient> {
    const headers: Record<string, string> = options.token ? { Authorization: `Bearer ${options.token}` } : {};
    return ResearchClient.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } }), options.name);
  }

  private static async connect(transport: Transport, name = 'autoresearch-agent'): Promise<ResearchClient> {
    const client = new Client({ name, version: '1.0.0' });
    await client.connect(transport);
    return new ResearchClient(client);
  }

  /** Calls a tool and returns its structured content; an isError result throws ToolError. */
  async call<T = Record<string, any>>(tool: string, args: Record<string, unknown> = {}, onProgress?: (p: Progress) => void): Promise<T> {
    const result = await this.client.callTool({ name: tool, arguments: args }, undefined, {
      onprogress: onProgress,
      resetTimeoutOnProgress: true,
      timeout: 120_000,
    });
    if (result.isError) {
      const text = (result.content as { type: string; text?: string }[]).map((c) => c.text ?? '').join('\n');
      throw new ToolError(tool, text);
    }
    return result.structuredContent as T;
  }

  /** Polls get_results with bounded waits until the experiment has finished. */
  async waitForExperiment(id: number, onProgress?: (p: Progress) => void): Promise<Record<string, any>> {
    for (;;) {
      const result = await this.call('get_results', { experiment_id: id, wait_seconds: 45 }, onProgress);
      const experiment = result.experiments[0];
      if (isFinishedStatus(experiment.status)) return experiment;
    }
  }

  close(): Promise<void> {
    return this.client.close();
  }
}
