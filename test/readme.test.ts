import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { annotationsOf } from '../src/tools/define.js';
import { TOOLS } from '../src/tools/index.js';
import { ROOT } from './helpers.js';

const README = readFileSync(join(ROOT, 'README.md'), 'utf8');
const yesNo = (flag: boolean | undefined) => (flag ? 'yes' : 'no');

describe('README', () => {
  it('starts its set-up with the demo, then the tests', () => {
    const commands = [...README.matchAll(/```bash\n([\s\S]*?)```/g)][0][1].trim().split('\n');
    expect(commands[0]).toMatch(/npm run demo$/);
    expect(commands[1]).toBe('npm test');
  });

  it.each(TOOLS.map((tool) => [tool.name, tool] as const))('documents %s with its annotations', (name, tool) => {
    const row = README.split('\n').find((line) => line.startsWith(`| \`${name}\` |`));
    expect(row, `README has no table row for ${name}`).toBeDefined();
    const cells = (row as string).split('|').map((cell) => cell.trim());
    const hints = annotationsOf(tool as never);
    expect(cells.slice(3, 6)).toEqual([yesNo(hints.readOnlyHint), yesNo(hints.destructiveHint), yesNo(hints.idempotentHint)]);
  });
});
