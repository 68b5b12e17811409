import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Every temporary folder a test run makes (workspaces, data, venvs, packed tarballs: mkdtemp in
 * the tests and in the processes they start) goes under one folder for the run, removed at its end.
 * Left in /tmp, a few hundred runs' worth of workspaces filled the disk. The workers and the
 * processes they spawn inherit TMPDIR, which os.tmpdir() and Python's tempfile both read.
 */
export default function setup(): () => void {
  const parent = process.env.TMPDIR || '/tmp';
  const dir = mkdtempSync(join(parent, 'arv-'));
  process.env.TMPDIR = dir;
  return () => {
    process.env.TMPDIR = parent;
    rmSync(dir, { recursive: true, force: true });
  };
}
