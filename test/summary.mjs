#!/usr/bin/env node
/**
 * The last lines of a test run: each failing test with its first error line, then the ten slowest
 * test files. Reads vitest's JSON reports and pytest's JUnit XML from test-output/ (written by
 * test/run-suite.sh), so that the cause of a red CI run is visible from the tail of its log.
 *
 *   node test/summary.mjs [DIR]    # DIR defaults to test-output
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..');
const dir = resolve(process.argv[2] ?? join(ROOT, 'test-output'));
const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');
/** The first line of an error message that says something (not blank, not a stack frame). */
const firstLine = (message) =>
  stripAnsi(message ?? '')
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l && !l.startsWith('at ')) ?? '(no message)';

const failures = [];
const files = [];
const missing = [];

// One vitest report per lane (test/run-suite.sh), or one when the run was filtered.
const vitestReports = existsSync(dir) ? readdirSync(dir).filter((f) => /^vitest.*\.json$/.test(f)).sort() : [];
for (const report of vitestReports.map((f) => JSON.parse(readFileSync(join(dir, f), 'utf8')))) {
  for (const file of report.testResults ?? []) {
    const name = relative(ROOT, file.name);
    const seconds = file.endTime && file.startTime ? (file.endTime - file.startTime) / 1000 : 0;
    files.push({ name, seconds, tests: file.assertionResults?.length ?? 0 });
    const failed = (file.assertionResults ?? []).filter((t) => t.status === 'failed');
    for (const t of failed) failures.push({ name: `${name} > ${t.fullName}`, error: firstLine(t.failureMessages?.[0]) });
    // A file that failed outside any test (an import error, a hook) has no failed assertion.
    if (file.status === 'failed' && failed.length === 0) failures.push({ name, error: firstLine(file.message) });
  }
}
if (vitestReports.length === 0) missing.push('vitest*.json (vitest did not finish)');

const pytestPath = join(dir, 'pytest.xml');
if (existsSync(pytestPath)) {
  const xml = readFileSync(pytestPath, 'utf8');
  const unescape = (s) => s.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&apos;/g, "'").replace(/&amp;/g, '&');
  const byFile = new Map();
  for (const m of xml.matchAll(/<testcase\b([^>]*?)(\/>|>([\s\S]*?)<\/testcase>)/g)) {
    const attr = (key) => new RegExp(`\\b${key}="([^"]*)"`).exec(m[1])?.[1] ?? '';
    const file = `python/tests/${attr('classname').split('.').pop()}.py`;
    const entry = byFile.get(file) ?? { name: file, seconds: 0, tests: 0 };
    entry.seconds += Number(attr('time')) || 0;
    entry.tests += 1;
    byFile.set(file, entry);
    const problem = /<(failure|error)\b[^>]*?message="([^"]*)"/.exec(m[3] ?? '');
    if (problem) failures.push({ name: `${file} > ${attr('name')}`, error: firstLine(unescape(problem[2])) });
  }
  files.push(...byFile.values());
} else missing.push('pytest.xml (the Python tests did not run)');

const lines = ['', '=== test summary ==='];
for (const m of missing) lines.push(`not found: ${m}`);
if (failures.length) {
  lines.push(`${failures.length} failing test${failures.length === 1 ? '' : 's'}:`);
  for (const f of failures) lines.push(`  FAIL ${f.name}`, `       ${f.error.slice(0, 300)}`);
} else if (!missing.length) lines.push('no failing tests');
lines.push('slowest test files:');
for (const f of files.sort((a, b) => b.seconds - a.seconds).slice(0, 10)) {
  lines.push(`  ${f.seconds.toFixed(1).padStart(7)} s  ${f.name} (${f.tests} tests)`);
}
console.log(lines.join('\n'));
