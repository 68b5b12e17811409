import { McpServer, ResourceTemplate } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { Lab } from './core/lab.js';
import { progressChartSvg } from './core/report.js';

/** Read-only views of the workspace as MCP resources, for hosts that show or attach them. */
export function registerResources(server: McpServer, lab: Lab): void {
  const text = (uri: URL, mimeType: string, body: string) => ({ contents: [{ uri: uri.href, mimeType, text: body }] });

  server.registerResource(
    'train.py',
    'autoresearch://train.py',
    { title: 'train.py (working copy)', description: 'The training script agents edit', mimeType: 'text/x-python' },
    async (uri) => text(uri, 'text/x-python', (await lab.readTrainPy()).text),
  );
  server.registerResource(
    'prepare.py',
    'autoresearch://prepare.py',
    { title: 'prepare.py (immutable harness)', description: 'Data, tokenizer, dataloader and evaluation', mimeType: 'text/x-python' },
    async (uri) => text(uri, 'text/x-python', await lab.readHarnessFile('prepare.py')),
  );
  server.registerResource(
    'program.md',
    'autoresearch://program.md',
    { title: 'program.md', description: 'The research instructions', mimeType: 'text/markdown' },
    async (uri) => text(uri, 'text/markdown', await lab.readHarnessFile('program.md')),
  );
  server.registerResource(
    'results.tsv',
    'autoresearch://results.tsv',
    { title: 'results.tsv', description: 'Upstream-compatible results table of the current session', mimeType: 'text/tab-separated-values' },
    async (uri) => text(uri, 'text/tab-separated-values', await lab.resultsTsv(await lab.currentSessionTag())),
  );
  server.registerResource(
    'progress-chart',
    'autoresearch://chart.svg',
    { title: 'Progress chart', description: 'val_bpb per experiment, kept ones highlighted, running best', mimeType: 'image/svg+xml' },
    async (uri) =>
      text(uri, 'image/svg+xml', progressChartSvg(lab.store.listExperiments({ order: 'id', ascending: true, session: await lab.currentSessionTag() }))),
  );
  server.registerResource(
    'experiment-log',
    new ResourceTemplate('autoresearch://experiments/{id}/log', {
      list: async () => ({
        resources: lab.store.listExperiments({ order: 'id', limit: 100 }).map((e) => ({
          uri: `autoresearch://experiments/${e.id}/log`,
          name: `experiment ${e.id} log`,
          description: `${e.status}: ${e.description}`,
          mimeType: 'text/plain',
        })),
      }),
    }),
    { title: 'Experiment log', description: 'Training log of one experiment', mimeType: 'text/plain' },
    async (uri, variables) => text(uri, 'text/plain', lab.runLog(Number(variables.id), 2000).log),
  );
}
