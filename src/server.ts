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
Start: status first. It names the session, what is running or undecided, and next_step. To continue an existing session (e.g. in a new conversation) call start_session({tag, resume: true}) and follow status.next_step; do not start a new session to continue work.
New session: start_session(tag) (from "baseline" by default, or from: <session tag> to start at its head) -> run_experiment("baseline") on the unmodified train.py -> measure_noise() (k runs of the head with server-chosen seeds) -> then repeat:
read_train_py (the whole file once; afterwards pass since_hash, the hash you hold, to get only the diff) -> apply_patch (diff or search/replace, with expected_hash) -> run_experiment(description) -> get_results(experiment_id, wait_seconds<=50; call again while running) -> commit_or_revert(experiment_id, "auto"). Every result that changes train.py names its new hash: use it as the next expected_hash or since_hash.
An experiment is one change measured from its parent: after run_experiment, train.py is back at the head and the change lives in the experiment's commit. To build on an undecided experiment say so: apply_patch/run_experiment with base_experiment. auto keeps only gains beyond the measured noise (confidence 0.99 by default); "inconclusive" stays undecided: confirm: true re-runs candidate and head in seed pairs. Keep only from the current head; for an experiment that ran before the head moved, use run_experiment(rebase_of). Decisions are final; undo({to, reason}) moves the branch back to an earlier kept commit.
Runs are asynchronous: queue the next idea while one runs. On a crash read get_run_log.
Rules the server enforces: only train.py changes; the harness and the data are immutable and hash-checked; train.py runs in a sandbox that sees neither validation data nor the record; val_bpb is computed by a separate evaluator on the exported model, never from printed output; the training budget is timed from outside the run; imports are limited to the standard library, torch, numpy and prepare's public names. The full instructions: read_harness("program.md").`;

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
