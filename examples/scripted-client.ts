/**
 * A scripted research client in a page: start the server for a workspace over stdio, run the
 * baseline, try one idea, and let the server's rule keep or discard it. Everything goes through
 * the MCP tools, so the same rules and audit log apply as for a model.
 *
 * test/agent.e2e.test.ts runs it against a fresh workspace; import tryOneIdea from your own
 * TypeScript the same way.
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';

type Structured = Record<string, any>;

async function call(client: Client, name: string, args: Record<string, unknown> = {}): Promise<Structured> {
  const result = await client.callTool({ name, arguments: args });
  if (result.isError) throw new Error(`${name}: ${(result.content as { text: string }[])[0].text}`);
  return result.structuredContent as Structured;
}

/** Runs are asynchronous: poll with bounded waits until the experiment has finished. */
async function waitFor(client: Client, id: number): Promise<Structured> {
  for (;;) {
    const { experiments } = await call(client, 'get_results', { experiment_id: id, wait_seconds: 45 });
    if (!['queued', 'running'].includes(experiments[0].status)) return experiments[0];
  }
}

export async function tryOneIdea(workspace: string, cliPath = 'dist/cli.js'): Promise<{ baseline: Structured; idea: Structured; decision: string }> {
  const client = new Client({ name: 'scripted-example', version: '1.0.0' });
  // --no-daemon: a one-shot script owns its runs; without it they would go on in a background lab.
  await client.connect(new StdioClientTransport({ command: process.execPath, args: [cliPath, 'serve', '--workspace', workspace, '--no-daemon'], stderr: 'ignore' }));
  try {
    await call(client, 'start_session', { tag: `example-${Date.now()}` });
    const baselineRun = await call(client, 'run_experiment', { description: 'baseline' });
    const baseline = await waitFor(client, baselineRun.experiment.id);
    await call(client, 'commit_or_revert', { experiment_id: baseline.id, action: 'auto' });

    // One idea: a higher learning rate for the matrix parameters, as an exact search/replace.
    const { text, hash } = await call(client, 'read_train_py');
    const line = /^MATRIX_LR = .*$/m.exec(text)?.[0];
    if (!line) throw new Error('train.py has no MATRIX_LR constant');
    await call(client, 'apply_patch', { edits: [{ search: line, replace: 'MATRIX_LR = 0.06' }], expected_hash: hash });
    const ideaRun = await call(client, 'run_experiment', { description: 'MATRIX_LR 0.06' });
    const idea = await waitFor(client, ideaRun.experiment.id);
    const { decision } = await call(client, 'commit_or_revert', { experiment_id: idea.id, action: 'auto' });
    return { baseline, idea, decision };
  } finally {
    await client.close();
  }
}
