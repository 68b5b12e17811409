import Database from 'better-sqlite3';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { PassThrough } from 'node:stream';
import ts from 'typescript';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  ANCHOR_FILE,
  AUDIT_CSV_COLUMNS,
  GENESIS_HASH,
  anchorHead,
  auditRowHash,
  readAnchorFile,
  verifyAuditChain,
  type AuditEntry,
  type AuditRow,
} from '../src/core/audit.js';
import { Store } from '../src/core/store.js';

const ROOT = resolve(import.meta.dirname, '..');

let dir: string;
let dbPath: string;
const opened: Store[] = [];

function open(resultLimitBytes?: number): Store {
  const store = Store.open(dbPath, { audit: { resultLimitBytes } });
  opened.push(store);
  return store;
}

/** A raw connection, as someone with file access would have. */
function rawDb(): Database.Database {
  return new Database(dbPath);
}

function call(tool: string, args: unknown, result: unknown, extra: Partial<AuditEntry> = {}): AuditEntry {
  return {
    kind: 'request',
    method: 'tools/call',
    tool,
    arguments: args,
    result,
    transport: 'stdio',
    clientName: 'claude-code',
    clientVersion: '2.0.1',
    mcpSessionId: 'session-1',
    durationMs: 12.6,
    ...extra,
  };
}

/** Five rows of mixed kinds, as a short agent session produces. */
function seed(store: Store): AuditRow[] {
  return [
    store.audit.append({ kind: 'request', method: 'initialize', transport: 'http', clientName: 'claude-code', clientVersion: '2.0.1', mcpSessionId: 'session-1', result: { protocolVersion: '2025-06-18' } }),
    store.audit.append(call('read_train_py', {}, { content: [{ type: 'text', text: 'import torch' }] })),
    store.audit.append(call('run_experiment', { description: 'LR up' }, { isError: true, content: [] }, { isError: true, experimentId: 1 })),
    store.audit.append({ kind: 'event', method: 'ceiling_kill', transport: 'cli', experimentId: 1, isError: true, message: 'killed at ceiling of 75 s' }),
    store.audit.append(call('get_results', { limit: 5 }, { experiments: [] }, { clientName: 'cursor', clientVersion: '1.7', mcpSessionId: 'session-2' })),
  ];
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'ar-audit-'));
  dbPath = join(dir, 'state.db');
});

afterEach(() => {
  for (const store of opened.splice(0)) store.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('appending', () => {
  it('chains rows from the genesis hash, each hash over the row fields', () => {
    const store = open();
    const rows = seed(store);
    expect(rows.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(rows[0].prevHash).toBe(GENESIS_HASH);
    for (let i = 1; i < rows.length; i++) expect(rows[i].prevHash).toBe(rows[i - 1].hash);
    for (const row of rows) expect(auditRowHash(row)).toBe(row.hash);
    expect(rows[1]).toMatchObject({
      kind: 'request',
      method: 'tools/call',
      tool: 'read_train_py',
      argumentsJson: '{}',
      isError: false,
      durationMs: 13,
      transport: 'stdio',
      clientName: 'claude-code',
      resultTruncated: false,
    });
    expect(rows[3]).toMatchObject({ kind: 'event', tool: null, argumentsJson: null, resultJson: null, resultSha256: null, experimentId: 1 });
    expect(store.audit.list()).toEqual(rows);
  });

  it('keeps the chain across re-opens and verifies it', () => {
    seed(open());
    opened.pop()!.close();
    const reopened = open();
    const next = reopened.audit.append(call('status', {}, { ok: true }));
    expect(next.seq).toBe(6);
    expect(next.prevHash).toBe(reopened.audit.list({ limit: 1, offset: 4 })[0].hash);
    expect(reopened.audit.verify()).toMatchObject({ ok: true, rows: 6, headSeq: 6, headHash: next.hash, anchor: { state: 'anchored', headSeq: 6 } });
  });

  it('verifies an empty log', () => {
    expect(open().audit.verify()).toMatchObject({ ok: true, rows: 0, headSeq: 0, headHash: GENESIS_HASH });
  });

  it('keeps the full result hash and size when it cuts a large result (at a character boundary)', () => {
    const store = open(64);
    const result = { text: 'é'.repeat(100) };
    const full = JSON.stringify(result);
    const row = store.audit.append(call('read_train_py', {}, result));
    expect(row.resultTruncated).toBe(true);
    expect(Buffer.byteLength(row.resultJson!, 'utf8')).toBeLessThanOrEqual(64);
    expect(full.startsWith(row.resultJson!)).toBe(true);
    expect(row.resultBytes).toBe(Buffer.byteLength(full, 'utf8'));
    expect(row.resultSha256).toBe(createHash('sha256').update(full).digest('hex'));
    const small = store.audit.append(call('status', {}, { ok: true }));
    expect(small).toMatchObject({ resultTruncated: false, resultJson: '{"ok":true}', resultBytes: 11 });
    expect(store.audit.list({ tool: 'read_train_py' })[0].resultTruncated).toBe(true);
    expect(store.audit.verify().ok).toBe(true);
  });

  it('stays verifiable with text SQLite cannot store as given (lone surrogates)', () => {
    const store = open();
    store.audit.append({ kind: 'event', method: 'note', message: 'half a pair: \ud83d', clientName: '\udc00x' });
    expect(store.audit.verify().ok).toBe(true);
  });

  it('records server events through the same chain', () => {
    const store = open();
    seed(store);
    const events = store.audit.list({ kind: 'event' });
    expect(events.map((e) => [e.seq, e.method, e.experimentId])).toEqual([[4, 'ceiling_kill', 1]]);
  });
});

describe('append-only enforcement', () => {
  it('triggers refuse UPDATE, DELETE and inserts that do not extend the chain', () => {
    seed(open());
    const db = rawDb();
    expect(() => db.prepare("UPDATE audit_log SET arguments = '{}' WHERE seq = 2").run()).toThrow(/audit_log is append-only/);
    expect(() => db.prepare('DELETE FROM audit_log WHERE seq = 5').run()).toThrow(/audit_log is append-only/);
    expect(() => db.prepare('DELETE FROM audit_log').run()).toThrow(/audit_log is append-only/);
    const forged = db.prepare('SELECT * FROM audit_log WHERE seq = 5').get() as Record<string, unknown>;
    const insert = db.prepare(`INSERT INTO audit_log (${AUDIT_CSV_COLUMNS.join(', ')}) VALUES (${AUDIT_CSV_COLUMNS.map((c) => `@${c}`).join(', ')})`);
    expect(() => insert.run({ ...forged, seq: 9 })).toThrow(/must extend the hash chain/);
    expect(() => insert.run({ ...forged, seq: 6, prev_hash: GENESIS_HASH })).toThrow(/must extend the hash chain/);
    db.close();
  });
});

describe('tamper detection (an attacker who drops the triggers)', () => {
  function tamper(sql: string): void {
    const db = rawDb();
    db.exec('DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;');
    db.exec(sql);
    db.close();
  }

  it('finds an edited row', () => {
    const store = open();
    seed(store);
    tamper(`UPDATE audit_log SET arguments = '{"description":"something else"}' WHERE seq = 3`);
    expect(store.audit.verify()).toMatchObject({ ok: false, firstBadSeq: 3, rows: 2, reason: expect.stringMatching(/edited/) });
  });

  it('finds an edit whose row hash was recomputed, at the next row', () => {
    const store = open();
    const rows = seed(store);
    const edited = { ...rows[1], isError: true };
    tamper(`UPDATE audit_log SET is_error = 1, hash = '${auditRowHash(edited)}' WHERE seq = 2`);
    expect(store.audit.verify()).toMatchObject({ ok: false, firstBadSeq: 3, reason: expect.stringMatching(/prev_hash/) });
  });

  it('finds a deleted row', () => {
    const store = open();
    seed(store);
    tamper('DELETE FROM audit_log WHERE seq = 2');
    expect(store.audit.verify()).toMatchObject({ ok: false, firstBadSeq: 3, reason: expect.stringMatching(/missing/) });
  });

  it('finds a deleted first row', () => {
    const store = open();
    seed(store);
    tamper('DELETE FROM audit_log WHERE seq = 1');
    expect(store.audit.verify()).toMatchObject({ ok: false, firstBadSeq: 2 });
  });

  it('finds reordered rows (contents swapped, seq kept)', () => {
    const store = open();
    seed(store);
    const columns = AUDIT_CSV_COLUMNS.filter((c) => c !== 'seq');
    tamper(`
      CREATE TEMP TABLE swap AS SELECT * FROM audit_log WHERE seq IN (2, 3);
      UPDATE audit_log SET (${columns.join(', ')}) = (SELECT ${columns.join(', ')} FROM swap WHERE swap.seq = 5 - audit_log.seq)
      WHERE seq IN (2, 3);
    `);
    expect(store.audit.verify()).toMatchObject({ ok: false, firstBadSeq: 2 });
  });

  it('finds rows cut from the end: the chain alone cannot, a head recorded elsewhere (or the anchor file) can', () => {
    const store = Store.open(dbPath, { audit: { anchorPath: null } });
    opened.push(store);
    const rows = seed(store);
    const before = store.audit.verify();
    if (!before.ok) throw new Error('expected an intact log');
    tamper('DELETE FROM audit_log WHERE seq >= 4');
    expect(store.audit.verify().ok).toBe(true);
    expect(store.audit.verify({ seq: before.headSeq, hash: before.headHash })).toMatchObject({
      ok: false,
      firstBadSeq: 5,
      reason: expect.stringMatching(/cut from the end/),
    });
    // appending again reuses seq 4, but not the hash recorded for it
    store.audit.append(call('status', {}, {}));
    expect(store.audit.verify({ seq: 4, hash: rows[3].hash })).toMatchObject({
      ok: false,
      firstBadSeq: 4,
      reason: expect.stringMatching(/anchor/),
    });
  });
});

describe('querying', () => {
  it('filters by tool, method, kind, session, client, error, experiment and time; pages and orders', () => {
    const store = open();
    const base = Date.parse('2025-01-01T00:00:00.000Z');
    const at = (minutes: number) => base + minutes * 60_000;
    store.audit.append({ ...call('read_train_py', {}, {}), ts: at(0) });
    store.audit.append({ ...call('run_experiment', { d: 1 }, {}, { isError: true, experimentId: 7 }), ts: at(1) });
    store.audit.append({ ...call('run_experiment', { d: 2 }, {}, { experimentId: 8, clientName: 'cursor', mcpSessionId: 'session-2' }), ts: at(2) });
    store.audit.append({ kind: 'notification', method: 'notifications/initialized', ts: at(3), mcpSessionId: 'session-2', clientName: 'cursor' });
    store.audit.append({ kind: 'event', method: 'reconcile', ts: at(4), experimentId: 8 });

    const seqs = (filter: Parameters<Store['audit']['list']>[0]) => store.audit.list(filter).map((r) => r.seq);
    expect(seqs({ tool: 'run_experiment' })).toEqual([2, 3]);
    expect(seqs({ method: 'notifications/initialized' })).toEqual([4]);
    expect(seqs({ kind: 'event' })).toEqual([5]);
    expect(seqs({ session: 'session-2' })).toEqual([3, 4]);
    expect(seqs({ client: 'cursor' })).toEqual([3, 4]);
    expect(seqs({ isError: true })).toEqual([2]);
    expect(seqs({ isError: false, tool: 'run_experiment' })).toEqual([3]);
    expect(seqs({ experimentId: 8 })).toEqual([3, 5]);
    expect(seqs({ since: at(1), until: at(3) })).toEqual([2, 3]);
    expect(seqs({ since: new Date(at(4)) })).toEqual([5]);
    expect(seqs({ order: 'desc', limit: 2 })).toEqual([5, 4]);
    expect(seqs({ order: 'asc', limit: 2, offset: 2 })).toEqual([3, 4]);
    expect(store.audit.list({ limit: 1 })[0].ts).toBe('2025-01-01T00:00:00.000Z');
  });

  it('summarises calls and errors per tool, clients and sessions, and events', () => {
    const store = open();
    seed(store);
    store.audit.append(call('run_experiment', { description: 'again' }, { ok: true }, { durationMs: 20 }));
    const summary = store.audit.summary();
    expect(summary).toMatchObject({ rows: 6, errors: 2 });
    expect(summary.tools).toEqual([
      { tool: 'run_experiment', calls: 2, errors: 1, avgDurationMs: 16.5 },
      { tool: 'get_results', calls: 1, errors: 0, avgDurationMs: 13 },
      { tool: 'read_train_py', calls: 1, errors: 0, avgDurationMs: 13 },
    ]);
    expect(summary.clients).toEqual([
      expect.objectContaining({ clientName: 'claude-code', clientVersion: '2.0.1', sessions: 1, calls: 4, errors: 1 }),
      expect.objectContaining({ clientName: 'cursor', clientVersion: '1.7', sessions: 1, calls: 1, errors: 0 }),
    ]);
    expect(summary.sessions.map((s) => [s.mcpSessionId, s.calls])).toEqual([
      ['session-1', 4],
      ['session-2', 1],
    ]);
    expect(summary.events).toEqual([{ method: 'ceiling_kill', count: 1 }]);
    expect(summary.firstTs! <= summary.lastTs!).toBe(true);
  });
});

describe('export', () => {
  /** Tricky text: quotes, commas, CR/LF, an empty string (distinct from NULL) and non-ASCII. */
  function seedTricky(store: Store): AuditRow[] {
    return [
      ...seed(store),
      store.audit.append({
        kind: 'event',
        method: 'note',
        message: 'she said "hi", then\r\nleft; ünïcødé ✓',
        tool: '',
        arguments: { patch: '--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-x = "1"\n+x = "2",\n' },
      }),
    ];
  }

  it('JSONL: one row per line, identical streamed or as a string, verifiable offline', async () => {
    const store = open();
    const rows = seedTricky(store);
    const text = store.audit.exportJsonl();
    const out = new PassThrough();
    const chunks: Buffer[] = [];
    out.on('data', (chunk: Buffer) => chunks.push(chunk));
    expect(await store.audit.exportJsonl({}, out)).toBe(rows.length);
    expect(Buffer.concat(chunks).toString('utf8')).toBe(text);

    const parsed = text.trimEnd().split('\n').map((line) => JSON.parse(line) as AuditRow);
    expect(parsed).toEqual(rows);
    expect(verifyAuditChain(parsed)).toMatchObject({ ok: true, rows: rows.length });
    expect(store.audit.exportJsonl({ tool: 'run_experiment' }).trimEnd().split('\n')).toHaveLength(1);
  });

  it('CSV: RFC 4180 quoting round-trips every value (NULL vs empty string) and re-verifies', async () => {
    const store = open();
    const rows = seedTricky(store);
    const csv = store.audit.exportCsv();
    const out = new PassThrough();
    const chunks: Buffer[] = [];
    out.on('data', (chunk: Buffer) => chunks.push(chunk));
    expect(await store.audit.exportCsv({}, out)).toBe(rows.length);
    expect(Buffer.concat(chunks).toString('utf8')).toBe(csv);

    const [header, ...records] = parseCsv(csv);
    expect(header.map((f) => f.value)).toEqual([...AUDIT_CSV_COLUMNS]);
    const back = records.map((fields) => rowFromCsv(header.map((f) => f.value!), fields));
    expect(back).toEqual(rows);
    expect(verifyAuditChain(back)).toMatchObject({ ok: true, rows: rows.length });
  });

  it('exports a filtered slice and pages through long logs', () => {
    const store = open();
    for (let i = 0; i < 1_203; i++) store.audit.append(call(i % 2 ? 'status' : 'get_results', { i }, { i }));
    const lines = store.audit.exportJsonl({ tool: 'status', order: 'desc', offset: 1, limit: 550 }).trimEnd().split('\n');
    const seqs = lines.map((line) => (JSON.parse(line) as AuditRow).seq);
    expect(seqs).toHaveLength(550);
    expect(seqs[0]).toBe(1_200);
    expect(seqs.every((seq, i) => i === 0 || seq === seqs[i - 1] - 2)).toBe(true);
    expect(parseCsv(store.audit.exportCsv())).toHaveLength(1_204);
  });
});

describe('the anchor file beside the database', () => {
  const anchorPath = () => join(dir, ANCHOR_FILE);

  /** Drops the guards and rewrites the table through a raw connection, re-hashing every row so the chain is consistent again. */
  function rewriteAndRehash(edit: (rows: AuditRow[]) => AuditRow[]): void {
    const db = rawDb();
    db.exec('DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete; DROP TRIGGER audit_log_extends_chain;');
    const store = open();
    const rows = edit(store.audit.list());
    opened.pop()!.close();
    db.exec('DELETE FROM audit_log');
    let prevHash = GENESIS_HASH;
    const insert = db.prepare(`INSERT INTO audit_log (${AUDIT_CSV_COLUMNS.join(', ')}) VALUES (${AUDIT_CSV_COLUMNS.map(() => '?').join(', ')})`);
    rows.forEach((row, index) => {
      const fields = { ...row, seq: index + 1, prevHash };
      const hash = auditRowHash(fields);
      insert.run(
        fields.seq, fields.ts, fields.transport, fields.mcpSessionId, fields.clientName, fields.clientVersion, fields.kind, fields.method,
        fields.tool, fields.argumentsJson, fields.resultJson, fields.resultSha256, fields.resultBytes, fields.isError ? 1 : 0,
        fields.durationMs, fields.experimentId, fields.message, prevHash, hash,
      );
      prevHash = hash;
    });
    db.close();
  }

  it('gets one "seq hash" line per append, and an honest log verifies as anchored', () => {
    const store = open();
    const rows = seed(store);
    expect(readFileSync(anchorPath(), 'utf8')).toBe(rows.map((row) => `${row.seq} ${row.hash}\n`).join(''));
    expect(store.audit.anchorPath).toBe(anchorPath());
    expect(store.audit.verify()).toEqual({
      ok: true,
      rows: 5,
      headSeq: 5,
      headHash: rows[4].hash,
      anchor: { state: 'anchored', path: anchorPath(), headSeq: 5, headHash: rows[4].hash, lines: 5, unanchoredRows: 0 },
    });
    expect(anchorHead(dir)).toEqual({ seq: 5, hash: rows[4].hash, path: anchorPath(), lines: 5 });
    // re-opened later (the CLI's verify), the same
    store.close();
    opened.pop();
    expect(open().audit.verify()).toMatchObject({ ok: true, anchor: { state: 'anchored', headSeq: 5 } });
  });

  it('fails a database rewritten and re-hashed consistently, at the first rewritten seq', () => {
    seed(open());
    rewriteAndRehash((rows) => rows.map((row) => (row.seq === 3 ? { ...row, isError: false, argumentsJson: '{"description":"a better idea"}' } : row)));
    // The chain alone cannot tell: it was rebuilt consistently.
    const unanchored = Store.open(dbPath, { audit: { anchorPath: null } });
    expect(unanchored.audit.verify()).toMatchObject({ ok: true, rows: 5, anchor: { state: 'disabled' } });
    unanchored.close();
    expect(open().audit.verify()).toMatchObject({
      ok: false,
      firstBadSeq: 3,
      reason: expect.stringMatching(/^the audit log in the database does not match the anchor at seq 3: the database was rewritten/),
    });
  });

  it('fails a database rebuilt from scratch with other rows (every anchored seq is checked)', () => {
    seed(open());
    rewriteAndRehash((rows) => rows.map((row) => ({ ...row, message: 'forged' })));
    expect(open().audit.verify()).toMatchObject({ ok: false, firstBadSeq: 1, reason: expect.stringMatching(/does not match the anchor at seq 1/) });
  });

  it('fails a database whose tail rows were deleted', () => {
    seed(open());
    const db = rawDb();
    db.exec('DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq >= 4;');
    db.close();
    expect(open().audit.verify()).toMatchObject({
      ok: false,
      firstBadSeq: 4,
      reason: expect.stringMatching(/the database ends at seq 3 but the anchor records seq 5: rows were cut from the end/),
    });
  });

  it('fails a truncated database that was extended again to the same length', () => {
    seed(open());
    rewriteAndRehash((rows) => [...rows.slice(0, 3), { ...rows[3], message: 'other' }, rows[4]]);
    expect(open().audit.verify()).toMatchObject({ ok: false, firstBadSeq: 4, reason: expect.stringMatching(/anchor at seq 4/) });
  });

  it('fails on an anchor line that is not "seq hash", and checks older lines too', () => {
    const store = open();
    const rows = seed(store);
    appendFileSync(anchorPath(), 'garbage\n');
    expect(store.audit.verify()).toMatchObject({ ok: false, reason: expect.stringMatching(/line 6 of the anchor .* is not "seq hash".*damaged/) });
    writeFileSync(anchorPath(), `2 ${'f'.repeat(64)}\n5 ${rows[4].hash}\n`);
    expect(store.audit.verify()).toMatchObject({ ok: false, firstBadSeq: 2, reason: expect.stringMatching(/anchor at seq 2/) });
  });

  it('without an anchor (a workspace from before anchoring) says so instead of claiming it is anchored, then anchors from now on', () => {
    const store = open();
    seed(store);
    rmSync(anchorPath());
    const missing = store.audit.verify();
    expect(missing).toMatchObject({ ok: true, rows: 5, anchor: { state: 'missing', path: anchorPath() } });
    expect(missing.ok && missing.anchor?.state === 'missing' && missing.anchor.message).toMatch(/no anchor at .*created from now on/);
    expect(anchorHead(dir)).toBeUndefined();
    const next = store.audit.append(call('status', {}, {}));
    expect(readFileSync(anchorPath(), 'utf8')).toBe(`6 ${next.hash}\n`);
    expect(store.audit.verify()).toMatchObject({ ok: true, anchor: { state: 'anchored', headSeq: 6, lines: 1 } });
  });

  it('reports rows written after the anchor head (a crash between the two) as unanchored, not as a failure', () => {
    const store = open();
    seed(store);
    const lines = readFileSync(anchorPath(), 'utf8').trimEnd().split('\n');
    writeFileSync(anchorPath(), lines.slice(0, 4).join('\n') + '\n');
    expect(store.audit.verify()).toMatchObject({ ok: true, anchor: { state: 'anchored', headSeq: 4, unanchoredRows: 1 } });
  });

  it('an empty log with no anchor yet, and an in-memory log without any', () => {
    const store = open();
    expect(existsSync(anchorPath())).toBe(false);
    expect(store.audit.verify()).toMatchObject({ ok: true, rows: 0, anchor: { state: 'missing', message: expect.stringMatching(/created with the first audited call/) } });
    const memory = Store.open(':memory:');
    memory.audit.append(call('status', {}, {}));
    expect(memory.audit.anchorPath).toBeNull();
    expect(memory.audit.verify()).toMatchObject({ ok: true, rows: 1, anchor: { state: 'disabled' } });
    memory.close();
  });

  it('readAnchorFile takes the highest seq as the head (appenders may finish out of order)', () => {
    writeFileSync(anchorPath(), `2 ${'b'.repeat(64)}\n1 ${'a'.repeat(64)}\n`);
    expect(readAnchorFile(anchorPath())).toMatchObject({ head: { seq: 2, hash: 'b'.repeat(64) }, lines: [{ seq: 2 }, { seq: 1 }] });
    expect(readAnchorFile(join(dir, 'nothing'))).toBeUndefined();
  });
});

describe('concurrent writers', () => {
  it('two stores on one file, appending in turn, share one chain', () => {
    const a = open();
    const b = open();
    for (let i = 0; i < 20; i++) (i % 3 ? a : b).audit.append(call('status', { writer: i % 3 ? 'a' : 'b', i }, {}));
    expect(a.audit.verify()).toMatchObject({ ok: true, rows: 20 });
    expect(b.audit.verify()).toMatchObject({ ok: true, rows: 20 });
  });

  it('processes appending at the same time keep the chain valid', async () => {
    const moduleDir = compileCoreForChildProcesses();
    open().close(); // migrate once so the writers race only on appends
    opened.pop();
    const writers = 4;
    const perWriter = 60;
    const script = `
      const { Store } = await import(${JSON.stringify(join(moduleDir, 'store.js'))});
      const store = Store.open(process.argv[1]);
      for (let i = 0; i < ${perWriter}; i++) {
        store.audit.append({ kind: 'request', method: 'tools/call', tool: 'status', arguments: { writer: process.argv[2], i } });
      }
      store.close();
    `;
    await Promise.all(
      Array.from({ length: writers }, (_, w) => runNode(['--input-type=module', '-e', script, dbPath, `w${w}`], moduleDir)),
    );
    const store = open();
    expect(store.audit.verify()).toMatchObject({ ok: true, rows: writers * perWriter, anchor: { state: 'anchored', lines: writers * perWriter, unanchoredRows: 0 } });
    const perWriterCounts = new Map<string, number>();
    for (const row of store.audit.list()) {
      const writer = (JSON.parse(row.argumentsJson!) as { writer: string }).writer;
      perWriterCounts.set(writer, (perWriterCounts.get(writer) ?? 0) + 1);
    }
    expect([...perWriterCounts.values()]).toEqual(Array(writers).fill(perWriter));
  });
});

// ---- helpers ------------------------------------------------------------------------------------

interface CsvField {
  value: string | null;
}

/** RFC 4180 parser that keeps quoted-empty ('') apart from unquoted-empty (NULL). */
function parseCsv(text: string): CsvField[][] {
  const records: CsvField[][] = [];
  let record: CsvField[] = [];
  let i = 0;
  while (i < text.length) {
    let field: CsvField;
    if (text[i] === '"') {
      let value = '';
      i += 1;
      for (;;) {
        const quote = text.indexOf('"', i);
        if (quote < 0) throw new Error('unterminated quoted field');
        value += text.slice(i, quote);
        i = quote + 1;
        if (text[i] !== '"') break;
        value += '"';
        i += 1;
      }
      field = { value };
    } else {
      const end = text.slice(i).search(/,|\r\n/);
      const raw = end < 0 ? text.slice(i) : text.slice(i, i + end);
      i += raw.length;
      field = { value: raw === '' ? null : raw };
    }
    record.push(field);
    if (text[i] === ',') {
      i += 1;
    } else if (text.startsWith('\r\n', i)) {
      records.push(record);
      record = [];
      i += 2;
    } else if (i < text.length) {
      throw new Error(`unexpected character at ${i}`);
    }
  }
  if (record.length > 0) records.push(record);
  return records;
}

function rowFromCsv(columns: string[], fields: CsvField[]): AuditRow {
  const value = (name: string) => fields[columns.indexOf(name)].value;
  const number = (name: string) => (value(name) === null ? null : Number(value(name)));
  const resultJson = value('result');
  const resultBytes = number('result_bytes');
  return {
    seq: Number(value('seq')),
    ts: value('ts')!,
    transport: value('transport') as AuditRow['transport'],
    mcpSessionId: value('mcp_session_id'),
    clientName: value('client_name'),
    clientVersion: value('client_version'),
    kind: value('kind') as AuditRow['kind'],
    method: value('method')!,
    tool: value('tool'),
    argumentsJson: value('arguments'),
    resultJson,
    resultSha256: value('result_sha256'),
    resultBytes,
    resultTruncated: resultJson !== null && resultBytes !== null && Buffer.byteLength(resultJson) < resultBytes,
    isError: value('is_error') === '1',
    durationMs: number('duration_ms'),
    experimentId: number('experiment_id'),
    message: value('message'),
    prevHash: value('prev_hash')!,
    hash: value('hash')!,
  };
}

/**
 * Child processes cannot import TypeScript; transpile the two core modules into a folder that
 * resolves better-sqlite3 from this repository.
 */
function compileCoreForChildProcesses(): string {
  const moduleDir = join(dir, 'compiled');
  mkdirSync(moduleDir);
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
  writeFileSync(join(dir, 'package.json'), '{"type":"module"}');
  for (const name of ['store', 'audit']) {
    const source = readFileSync(join(ROOT, 'src', 'core', `${name}.ts`), 'utf8');
    const output = ts.transpileModule(source, {
      compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
    });
    writeFileSync(join(moduleDir, `${name}.js`), output.outputText);
  }
  return moduleDir;
}

function runNode(args: string[], cwd: string): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolvePromise() : reject(new Error(`writer exited ${code}: ${stderr}`))));
  });
}
