import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { Lab } from './core/lab.js';

export function registerPrompts(server: McpServer, lab: Lab): void {
  server.registerPrompt(
    'program',
    { title: 'Research program', description: 'program.md: the goal, the rules and the loop, to start an autonomous research session' },
    async () => ({
      description: 'autoresearch program',
      messages: [{ role: 'user', content: { type: 'text', text: await lab.readHarnessFile('program.md') } }],
    }),
  );
}
