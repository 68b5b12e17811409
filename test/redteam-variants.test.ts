/**
 * The red-team variants (test/redteam/variants.ts) as text: each applies to the honest train.py
 * and yields valid Python. Quick, no server: the suite that runs them is test/redteam.e2e.test.ts.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  applyEdit,
  applyVariant,
  dedent,
  markerFor,
  missingAnchors,
  OUTCOMES,
  pyHidden,
  VARIANT_CLASSES,
  type VariantContext,
} from './redteam/apply.js';
import { RT_PRELUDE, VARIANTS } from './redteam/variants.js';
import { checkTrainPy } from '../src/core/rules.js';
import { PYTHON, ROOT } from './helpers.js';

const TRAIN_PY = readFileSync(join(ROOT, 'python', 'train.py'), 'utf8');

const ctx: VariantContext = {
  marker: markerFor('0123abcd', { id: '99' }),
  workspace: "/tmp/ar-ws-smoke-x/ws with 'quote'",
  stateDir: '/tmp/ar-ws-smoke-x/ws/.autoresearch',
  dataDir: '/tmp/ar-data-smoke-x/data',
  port: 43210,
  abstractSocket: 'rt-0123abcd',
};

/** Parses every file with one interpreter; returns "path: error" for those that do not parse. */
function unparsable(files: string[]): string[] {
  const script =
    'import ast, json, sys\nbad = []\nfor p in sys.argv[1:]:\n    try:\n        ast.parse(open(p).read(), p)\n' +
    '    except SyntaxError as e:\n        bad.append(f"{p}:{e.lineno}: {e.msg}: {e.text!r}")\nprint(json.dumps(bad))\n';
  return JSON.parse(execFileSync(PYTHON, ['-c', script, ...files], { encoding: 'utf8' }));
}

describe('red-team variants', () => {
  it('are at least 36, with unique ids and slugs, covering every class, careless ones included', () => {
    expect(VARIANTS.length).toBeGreaterThanOrEqual(36);
    const ids = VARIANTS.map((v) => v.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids).toEqual([...ids].sort());
    for (const id of ids) expect(id).toMatch(/^\d{2}$/);
    const slugs = VARIANTS.map((v) => v.slug);
    expect(new Set(slugs).size).toBe(slugs.length);
    for (const slug of slugs) expect(slug).toMatch(/^[a-z0-9-]+$/);
    for (const cls of VARIANT_CLASSES) expect(VARIANTS.filter((v) => v.class === cls).length, cls).toBeGreaterThan(0);
    expect(VARIANTS.filter((v) => v.careless).length).toBeGreaterThanOrEqual(8);
    expect(VARIANTS.filter((v) => v.class === 'accident').every((v) => v.careless)).toBe(true);
  });

  it('state a checkable expectation: outcomes, a reason for every refusal, honesty for every success', () => {
    for (const v of VARIANTS) {
      const label = `${v.id}-${v.slug}`;
      expect(v.expect.status.length, label).toBeGreaterThan(0);
      for (const s of v.expect.status) expect(OUTCOMES, label).toContain(s);
      if (v.expect.status.some((s) => s !== 'succeeded')) expect(v.expect.reasonMatches, label).toBeInstanceOf(RegExp);
      if (v.expect.status.includes('succeeded')) expect(v.expect.honest, label).toBe(true);
      // Hostile variants may not be "refused" by the rules alone: they are built to reach the sandbox.
      if (!v.careless) expect(v.expect.status, label).not.toContain('patch_refused');
      expect(v.attempts.length, label).toBeGreaterThan(10);
      expect(v.stoppedBy.length, label).toBeGreaterThan(10);
    }
  });

  it('apply to python/train.py and parse as Python', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rt-variants-'));
    const files: string[] = [];
    for (const v of VARIANTS) {
      expect(missingAnchors(TRAIN_PY, v), `${v.id}-${v.slug}: python/train.py lacks its anchors; update test/redteam/variants.ts`).toEqual([]);
      const text = applyVariant(TRAIN_PY, v, { ...ctx, marker: markerFor('0123abcd', v) }, RT_PRELUDE);
      expect(text, v.slug).not.toBe(TRAIN_PY);
      expect(text, v.slug).not.toMatch(/__RT_[A-Z_]+__|__RT_STR\(/);
      // The joined marker never appears as text: whatever holds it was written by the run.
      expect(text, v.slug).not.toContain(markerFor('0123abcd', v));
      expect(text, v.slug).not.toContain(ctx.dataDir);
      const file = join(dir, `${v.id}-${v.slug}.py`);
      writeFileSync(file, text);
      files.push(file);
    }
    expect(unparsable(files)).toEqual([]);
  });

  it('pass the static rules unless they are careless and may be refused there: hostile ones must reach the sandbox', async () => {
    const refused: string[] = [];
    await Promise.all(
      VARIANTS.map(async (v) => {
        const text = applyVariant(TRAIN_PY, v, { ...ctx, marker: markerFor('0123abcd', v) }, RT_PRELUDE);
        const violations = await checkTrainPy(text, PYTHON);
        if (violations.length && !v.expect.status.includes('patch_refused')) {
          refused.push(`${v.id}-${v.slug}: ${violations.map((x) => `line ${x.line} ${x.rule}: ${x.message.slice(0, 120)}`).join(' | ')}`);
        }
      }),
    );
    expect(refused.sort()).toEqual([]);
  }, 120_000);

  it('hides strings as reversed literals that Python turns back', () => {
    const value = "a/b c'd\"e\\f";
    const out = execFileSync(PYTHON, ['-c', `import sys; sys.stdout.write(${pyHidden(value)})`], { encoding: 'utf8' });
    expect(out).toBe(value);
    expect(pyHidden(value)).not.toContain('a/b');
  });

  it('edits whole statements, keeps indentation, and refuses a missing anchor', () => {
    const source = 'from m import (a,\n               b)\nfor i in x:\n    f(model)\n    g()\n';
    const after = applyEdit(source, { kind: 'insertAfter', find: 'from m import', text: 'c = 1' }, ctx);
    expect(after).toBe('from m import (a,\n               b)\nc = 1\nfor i in x:\n    f(model)\n    g()\n');
    const replaced = applyEdit(source, { kind: 'replaceLine', find: 'f(model)', text: 'if y:\n    h()' }, ctx);
    expect(replaced).toContain('\n    if y:\n        h()\n    g()');
    const before = applyEdit(source, { kind: 'insertBefore', find: 'g()', text: dedent('\n      k = 2\n    ') }, ctx);
    expect(before).toContain('    f(model)\n    k = 2\n    g()');
    expect(() => applyEdit(source, { kind: 'replace', find: 'nope', text: '' }, ctx)).toThrow(/anchor not found/);
    expect(applyEdit(source, { kind: 'append', text: 'z = __RT_PORT__' }, ctx).endsWith('\n\nz = 43210\n')).toBe(true);
  });

  it('makes markers that fit a process name', () => {
    const marker = markerFor('0123abcd', { id: '07' });
    expect(marker).toBe('rtm0123abcd07');
    expect(marker.length).toBeLessThanOrEqual(15);
    expect(() => markerFor('xyz', { id: '07' })).toThrow();
  });
});
