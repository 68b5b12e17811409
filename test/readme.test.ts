import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parsePlan } from '../src/agent/plan.js';
import { applyUnifiedDiff } from '../src/core/patch.js';
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

  it('shows a plan file that parses against train.py, with a diff step that applies', () => {
    const yaml = [...README.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]).find((block) => block.includes('steps:'));
    expect(yaml, 'README has no plan example').toBeDefined();
    const train = readFileSync(join(ROOT, 'python', 'train.py'), 'utf8');
    const plan = parsePlan(yaml as string, train, 'README plan');
    expect(plan.steps.map((step) => Object.entries(step).filter(([k, v]) => k !== 'description' && v !== undefined).map(([k]) => k))).toEqual([['set'], ['edits'], ['diff']]);
    const diffStep = plan.steps.find((step) => step.diff) as { diff: string };
    expect(applyUnifiedDiff(train, diffStep.diff).ok).toBe(true);
    for (const edit of plan.steps.flatMap((step) => step.edits ?? [])) expect(train.split(edit.search)).toHaveLength(2);
  });

  it('gives host snippets that are valid JSON', () => {
    const blocks = [...README.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => m[1]);
    expect(blocks.length).toBeGreaterThanOrEqual(3);
    for (const block of blocks) expect(() => JSON.parse(block), block).not.toThrow();
  });

  it.each(TOOLS.map((tool) => [tool.name, tool] as const))('documents %s with its annotations', (name, tool) => {
    const row = README.split('\n').find((line) => line.startsWith(`| \`${name}\` |`));
    expect(row, `README has no table row for ${name}`).toBeDefined();
    const cells = (row as string).split('|').map((cell) => cell.trim());
    const hints = annotationsOf(tool as never);
    expect(cells.slice(3, 6)).toEqual([yesNo(hints.readOnlyHint), yesNo(hints.destructiveHint), yesNo(hints.idempotentHint)]);
  });
});
