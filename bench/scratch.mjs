// A bench's temporary folder (its workspaces and data), removed when the bench exits, whether it
// finished or failed: a campaign leaves gigabytes of run folders behind otherwise.
// AUTORESEARCH_BENCH_KEEP=1 keeps them for a look afterwards (the path is printed on stderr).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const made = [];
process.on('exit', () => {
  if (process.env.AUTORESEARCH_BENCH_KEEP === '1') {
    for (const dir of made) process.stderr.write(`kept ${dir}\n`);
    return;
  }
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

export function scratchDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}
