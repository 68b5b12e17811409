import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';

export function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** The short content hash agents pass back to apply_patch to detect stale edits. */
export function contentHash(text: string): string {
  return sha256(text).slice(0, 16);
}

/**
 * Remembers file hashes while size, mtime and inode stay the same. Good enough for showing
 * status; never for a check that guards a run (those hash every byte every time).
 */
export class FileHashCache {
  private readonly known = new Map<string, { key: string; hash: string }>();

  async hash(path: string): Promise<string> {
    const info = await stat(path);
    const key = `${info.size}:${info.mtimeMs}:${info.ino}`;
    const cached = this.known.get(path);
    if (cached?.key === key) return cached.hash;
    const hash = await sha256File(path);
    this.known.set(path, { key, hash });
    return hash;
  }
}
