import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import type { Lab } from '../core/lab.js';
import { createServer } from '../server.js';
import { AuditedTransport } from './audited.js';
import { shutdownOnce } from './lifecycle.js';

/**
 * Serves one client over stdin/stdout. stdout carries JSON-RPC only; the SDK does not exit when
 * stdin closes, so we do: closing stdin, SIGTERM or SIGINT stop the runs and end the process.
 */
export async function serveStdio(lab: Lab): Promise<void> {
  const { server, cleanup } = createServer(lab, { transport: 'stdio' });
  const transport = new AuditedTransport(new StdioServerTransport(), lab.store.audit, 'stdio');
  const stop = shutdownOnce(lab, cleanup);
  process.stdin.on('end', () => stop('stdin closed'));
  process.stdin.on('close', () => stop('stdin closed'));
  await server.connect(transport);
  process.stderr.write(`[autoresearch] serving ${lab.workspace.dir} over stdio\n`);
}
