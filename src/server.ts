import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Caller, Lab } from './core/lab.js';
import { PACKAGE_ROOT } from './core/paths.js';
import { registerPrompts } from './prompts.js';
import { registerResources } from './resources.js';
import { registerDefinedTool, type ToolContext } from './tools/define.js';
import { TOOLS } from './tools/index.js';

const VERSION: string = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')).version;

export const INSTRUCTIONS = `autoresearch: autonomous ML research on one training file.
Goal: the lowest val_bpb (bits per byte on pinned validation data; lower is better) within a fixed training budget.
Loop: status -> start_session(tag) -> run_experiment("baseline") on the unmodified train.py -> then repeat:
read_train_py -> apply_patch (diff or search/replace, with expected_hash) -> run_experiment(description) -> get_results(experiment_id, wait_seconds<=50; call again while running) -> commit_or_revert(experiment_id, "auto").
Runs are asynchronous: queue the next idea while one runs. On a crash read get_run_log. Keep only from the current head; for an experiment that ran before a later keep, use run_experiment(rebase_of).
Rules the server enforces: only train.py changes; prepare.py and the data are immutable and hash-checked; the metric comes from the harness's result record, never from printed output; imports limited to the standard library, torch, numpy and prepare's public names; no subprocess, network, file writes, validation data or harness internals; runs past the wall-clock ceiling are killed. The full instructions are the prompt "program" (program.md).`;

export interface ServerOptions {
  transport: Caller['transport'];
}

/** One MCP server over one Lab; create one per connection (each HTTP session gets its own). */
export function createServer(lab: Lab, options: ServerOptions): { server: McpServer; cleanup: () => Promise<void> } {
  const server = new McpServer(
    { name: 'autoresearch-mcp', title: 'autoresearch', version: VERSION },
    { instructions: INSTRUCTIONS, capabilities: { logging: {} } },
  );
  const context: ToolContext = {
    lab,
    caller: (extra) => {
      const client = server.server.getClientVersion();
      return { transport: options.transport, sessionId: extra.sessionId, clientName: client?.name, clientVersion: client?.version };
    },
  };
  for (const tool of TOOLS) registerDefinedTool(server, tool, context);
  registerResources(server, lab);
  registerPrompts(server, lab);
  return { server, cleanup: () => server.close() };
}
