import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { appendFileSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type Database from 'better-sqlite3';

/**
 * Append-only, hash-chained audit log kept in the server's SQLite file.
 *
 * Every row carries `prev_hash` (the previous row's `hash`; 64 zeros for row 1) and `hash`, the
 * SHA-256 of a canonical serialisation of all its other fields. Triggers refuse UPDATE and DELETE
 * and only accept inserts that extend the chain, so an edit needs someone who drops the triggers
 * with direct file access; `verify()` then finds the first row that was edited, removed or moved.
 * What a chain cannot show alone is rows cut from the end, or a chain rebuilt and re-hashed from
 * scratch. So every append also writes the new head (`seq hash`, one line) to an append-only
 * anchor file beside the database (`audit.anchor`, opened O_APPEND for each line), and `verify()`
 * checks that every anchored (seq, hash) still matches the database's row at that seq and that
 * the database reaches the anchor's head. A head recorded elsewhere (the report prints it) can
 * be passed to `verify()` as well.
 */

export const GENESIS_HASH = '0'.repeat(64);
export const DEFAULT_RESULT_LIMIT_BYTES = 16 * 1024;
/** Prefix of the hashed serialisation, so a future format can never collide with this one. */
const HASH_FORMAT = 'autoresearch-audit-v1';
/** The anchor file's name, in the folder that holds the database. */
export const ANCHOR_FILE = 'audit.anchor';
/** Rows fetched per query while exporting; pages keep no statement open across awaits. */
const EXPORT_PAGE_ROWS = 500;

/**
 * The audit table, its indexes and the triggers that make it append-only. Applied by the Store's
 * migrations (the log shares the store's database and schema version).
 */
export const AUDIT_LOG_SCHEMA = `
CREATE TABLE audit_log (
  seq            INTEGER PRIMARY KEY,
  ts             TEXT    NOT NULL,
  transport      TEXT    CHECK (transport IN ('stdio', 'http', 'cli')),
  mcp_session_id TEXT,
  client_name    TEXT,
  client_version TEXT,
  kind           TEXT    NOT NULL CHECK (kind IN ('request', 'notification', 'event')),
  method         TEXT    NOT NULL,
  tool           TEXT,
  arguments      TEXT,
  result         TEXT,
  result_sha256  TEXT,
  result_bytes   INTEGER,
  is_error       INTEGER NOT NULL CHECK (is_error IN (0, 1)),
  duration_ms    INTEGER,
  experiment_id  INTEGER,
  message        TEXT,
  prev_hash      TEXT    NOT NULL,
  hash           TEXT    NOT NULL
) STRICT;
CREATE INDEX audit_log_by_ts ON audit_log (ts);
CREATE INDEX audit_log_by_tool ON audit_log (tool);
CREATE INDEX audit_log_by_session ON audit_log (mcp_session_id);
CREATE INDEX audit_log_by_client ON audit_log (client_name, client_version);
CREATE INDEX audit_log_by_experiment ON audit_log (experiment_id);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_extends_chain BEFORE INSERT ON audit_log
WHEN NEW.seq IS NOT (SELECT IFNULL(MAX(seq), 0) + 1 FROM audit_log)
  OR NEW.prev_hash IS NOT IFNULL((SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1), '${GENESIS_HASH}')
BEGIN SELECT RAISE(ABORT, 'audit_log rows must extend the hash chain'); END;
`;

export type AuditTransport = 'stdio' | 'http' | 'cli';
export type AuditKind = 'request' | 'notification' | 'event';

/** What a caller records; the log adds seq, timestamps (unless given), hashes and truncation. */
export interface AuditEntry {
  kind: AuditKind;
  /** JSON-RPC method ('tools/call', 'initialize', ...) or, for events, the event name ('ceiling_kill'). */
  method: string;
  transport?: AuditTransport | null;
  mcpSessionId?: string | null;
  clientName?: string | null;
  clientVersion?: string | null;
  tool?: string | null;
  /** Any JSON-serialisable value; stored in full. */
  arguments?: unknown;
  /** Any JSON-serialisable value; stored up to the result limit, hashed and measured in full. */
  result?: unknown;
  isError?: boolean;
  durationMs?: number | null;
  experimentId?: number | null;
  message?: string | null;
  /** Defaults to now. */
  ts?: Date | number;
}

export interface AuditRow {
  seq: number;
  /** ISO 8601, UTC, milliseconds. */
  ts: string;
  transport: AuditTransport | null;
  mcpSessionId: string | null;
  clientName: string | null;
  clientVersion: string | null;
  kind: AuditKind;
  method: string;
  tool: string | null;
  /** The arguments as JSON text, exactly as hashed. */
  argumentsJson: string | null;
  /** The result as JSON text, cut to the result limit when `resultTruncated`. */
  resultJson: string | null;
  /** SHA-256 and UTF-8 size of the full result JSON, also when it was cut. */
  resultSha256: string | null;
  resultBytes: number | null;
  resultTruncated: boolean;
  isError: boolean;
  durationMs: number | null;
  experimentId: number | null;
  message: string | null;
  prevHash: string;
  hash: string;
}

/** The fields that enter a row's hash: everything but the hash itself and derived values. */
export type HashedAuditFields = Omit<AuditRow, 'hash' | 'resultTruncated'>;

export interface AuditFilter {
  kind?: AuditKind;
  tool?: string;
  method?: string;
  /** MCP session id. */
  session?: string;
  /** Client name as sent in `initialize`. */
  client?: string;
  isError?: boolean;
  experimentId?: number;
  /** Inclusive lower bound on ts. */
  since?: Date | number;
  /** Exclusive upper bound on ts. */
  until?: Date | number;
  limit?: number;
  offset?: number;
  /** By seq; default 'asc' (the order the chain is built in). */
  order?: 'asc' | 'desc';
}

/** A head recorded elsewhere; verification fails if the log no longer ends in or passes through it. */
export interface AuditAnchor {
  seq: number;
  hash: string;
}

/** What `verify()` found in the anchor file (absent when the caller verified rows without a log). */
export type AnchorCheck =
  /** The database matches every line of the anchor; `unanchoredRows` rows follow its head (written after it). */
  | { state: 'anchored'; path: string; headSeq: number; headHash: string; lines: number; unanchoredRows: number }
  /** No anchor file (a log older than anchoring): the chain is only checked against itself. */
  | { state: 'missing'; path: string; message: string }
  /** An in-memory log or one opened with `anchorPath: null`. */
  | { state: 'disabled' };

export type AuditVerification =
  | { ok: true; rows: number; headSeq: number; headHash: string; anchor?: AnchorCheck }
  | { ok: false; rows: number; firstBadSeq: number; reason: string };

export interface AuditSummary {
  rows: number;
  errors: number;
  firstTs: string | null;
  lastTs: string | null;
  tools: { tool: string; calls: number; errors: number; avgDurationMs: number | null }[];
  clients: {
    clientName: string | null;
    clientVersion: string | null;
    sessions: number;
    calls: number;
    errors: number;
    firstSeen: string;
    lastSeen: string;
  }[];
  sessions: {
    mcpSessionId: string | null;
    transport: AuditTransport | null;
    clientName: string | null;
    clientVersion: string | null;
    calls: number;
    errors: number;
    firstSeen: string;
    lastSeen: string;
  }[];
  events: { method: string; count: number }[];
}

export interface AuditLogOptions {
  /** Result JSON kept per row; larger results are cut (their full SHA-256 and size are kept). */
  resultLimitBytes?: number;
  /**
   * The append-only anchor file. Default: `audit.anchor` beside the database file; none for an
   * in-memory database. `null` turns anchoring off.
   */
  anchorPath?: string | null;
}

/** Column order of CSV exports; the same names as the table. */
export const AUDIT_CSV_COLUMNS = [
  'seq',
  'ts',
  'transport',
  'mcp_session_id',
  'client_name',
  'client_version',
  'kind',
  'method',
  'tool',
  'arguments',
  'result',
  'result_sha256',
  'result_bytes',
  'is_error',
  'duration_ms',
  'experiment_id',
  'message',
  'prev_hash',
  'hash',
] as const;

interface AuditRecord {
  seq: number;
  ts: string;
  transport: AuditTransport | null;
  mcp_session_id: string | null;
  client_name: string | null;
  client_version: string | null;
  kind: AuditKind;
  method: string;
  tool: string | null;
  arguments: string | null;
  result: string | null;
  result_sha256: string | null;
  result_bytes: number | null;
  is_error: 0 | 1;
  duration_ms: number | null;
  experiment_id: number | null;
  message: string | null;
  prev_hash: string;
  hash: string;
}

export class AuditLog {
  /** Where each append's head is anchored; null when anchoring is off. */
  readonly anchorPath: string | null;
  private readonly resultLimitBytes: number;
  private readonly selectHead: Database.Statement<[], { seq: number; hash: string }>;
  private readonly insertRow: Database.Statement<AuditRecord>;
  private readonly appendInTransaction: Database.Transaction<(fields: Omit<HashedAuditFields, 'seq' | 'prevHash'>) => AuditRow>;

  /** `db` must carry the store's schema; `Store.audit` is the usual way to get a log. */
  constructor(
    private readonly db: Database.Database,
    options: AuditLogOptions = {},
  ) {
    this.resultLimitBytes = options.resultLimitBytes ?? DEFAULT_RESULT_LIMIT_BYTES;
    this.anchorPath = options.anchorPath !== undefined ? options.anchorPath : db.memory || db.name === '' ? null : join(dirname(db.name), ANCHOR_FILE);
    this.selectHead = db.prepare('SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1');
    this.insertRow = db.prepare(
      `INSERT INTO audit_log (${AUDIT_CSV_COLUMNS.join(', ')})
       VALUES (${AUDIT_CSV_COLUMNS.map((column) => `@${column}`).join(', ')})`,
    );
    // The head is read inside the write transaction, never cached: another connection (a second
    // server or the CLI on the same file) may have appended since.
    this.appendInTransaction = db.transaction((fields) => {
      const head = this.selectHead.get();
      const unhashed: HashedAuditFields = { ...fields, seq: (head?.seq ?? 0) + 1, prevHash: head?.hash ?? GENESIS_HASH };
      const row: AuditRow = {
        ...unhashed,
        hash: auditRowHash(unhashed),
        resultTruncated: isTruncated(unhashed.resultJson, unhashed.resultBytes),
      };
      this.insertRow.run(toRecord(row));
      return row;
    });
  }

  append(entry: AuditEntry): AuditRow {
    const resultText = entry.result === undefined ? null : (JSON.stringify(entry.result) ?? null);
    const resultBuffer = resultText === null ? null : Buffer.from(resultText, 'utf8');
    // BEGIN IMMEDIATE takes the write lock before the head is read, so concurrent writers queue
    // (busy_timeout) instead of both extending the same head.
    const row = this.appendInTransaction.immediate({
      ts: toIso(entry.ts ?? Date.now()),
      transport: entry.transport ?? null,
      mcpSessionId: storableText(entry.mcpSessionId),
      clientName: storableText(entry.clientName),
      clientVersion: storableText(entry.clientVersion),
      kind: entry.kind,
      method: storableText(entry.method) ?? '',
      tool: storableText(entry.tool),
      argumentsJson: entry.arguments === undefined ? null : (JSON.stringify(entry.arguments) ?? null),
      resultJson: resultBuffer === null ? null : truncateUtf8(resultBuffer, this.resultLimitBytes),
      resultSha256: resultBuffer === null ? null : createHash('sha256').update(resultBuffer).digest('hex'),
      resultBytes: resultBuffer === null ? null : resultBuffer.length,
      isError: entry.isError ?? false,
      durationMs: finiteInteger(entry.durationMs),
      experimentId: entry.experimentId ?? null,
      message: storableText(entry.message),
    });
    // After the commit: a line is never written for a row that was rolled back. A crash between
    // the two leaves the row unanchored, which verify() reports (it is not a failure).
    if (this.anchorPath !== null) appendAnchorLine(this.anchorPath, row);
    return row;
  }

  list(filter: AuditFilter = {}): AuditRow[] {
    return this.query(filter).map(fromRecord);
  }

  /**
   * Re-hashes the whole chain in seq order (streaming rows, so any log size fits in memory), then
   * checks it against the anchor file: every anchored (seq, hash) must still be the database's
   * row at that seq, and the database must reach the anchor's head. `anchor` is an extra head
   * recorded elsewhere (e.g. copied from a report).
   */
  verify(anchor?: AuditAnchor): AuditVerification {
    const rows = this.db.prepare<[], AuditRecord>('SELECT * FROM audit_log ORDER BY seq').iterate();
    const chain = verifyAuditChain(
      (function* () {
        for (const record of rows) yield fromRecord(record);
      })(),
      anchor,
    );
    if (!chain.ok) return chain;
    if (this.anchorPath === null) return { ...chain, anchor: { state: 'disabled' } };
    const hashAt = this.db.prepare<[number], { hash: string }>('SELECT hash FROM audit_log WHERE seq = ?');
    return checkAnchor(chain, this.anchorPath, (seq) => hashAt.get(seq)?.hash);
  }

  /** One JSON object (an AuditRow) per line: without `out` as a string, with `out` streamed. */
  exportJsonl(filter?: AuditFilter): string;
  exportJsonl(filter: AuditFilter, out: NodeJS.WritableStream): Promise<number>;
  exportJsonl(filter: AuditFilter = {}, out?: NodeJS.WritableStream): string | Promise<number> {
    const lines = this.mapRows(filter, (row) => `${JSON.stringify(row)}\n`);
    return out ? writeAll(lines, out) : [...lines].join('');
  }

  /**
   * RFC 4180 CSV with a header of AUDIT_CSV_COLUMNS and CRLF line ends. Text values are always
   * quoted and NULL is an empty unquoted field, so NULL and '' stay distinct on the way back.
   */
  exportCsv(filter?: AuditFilter): string;
  exportCsv(filter: AuditFilter, out: NodeJS.WritableStream): Promise<number>;
  exportCsv(filter: AuditFilter = {}, out?: NodeJS.WritableStream): string | Promise<number> {
    const header = `${AUDIT_CSV_COLUMNS.join(',')}\r\n`;
    const lines = this.mapRows(filter, (row) => `${AUDIT_CSV_COLUMNS.map((column) => csvField(toRecord(row)[column])).join(',')}\r\n`);
    const all = (function* () {
      yield header;
      yield* lines;
    })();
    return out ? writeAll(all, out).then((written) => written - 1) : [...all].join('');
  }

  summary(): AuditSummary {
    const totals = this.db
      .prepare<[], { rows: number; errors: number | null; firstTs: string | null; lastTs: string | null }>(
        'SELECT COUNT(*) AS rows, SUM(is_error) AS errors, MIN(ts) AS firstTs, MAX(ts) AS lastTs FROM audit_log',
      )
      .get()!;
    const tools = this.db
      .prepare<[], AuditSummary['tools'][number]>(
        `SELECT tool, COUNT(*) AS calls, SUM(is_error) AS errors, AVG(duration_ms) AS avgDurationMs
         FROM audit_log WHERE kind = 'request' AND tool IS NOT NULL GROUP BY tool ORDER BY calls DESC, tool`,
      )
      .all();
    // Server events carry no client; counting them would invent a "null client".
    const clients = this.db
      .prepare<[], AuditSummary['clients'][number]>(
        `SELECT client_name AS clientName, client_version AS clientVersion,
                COUNT(DISTINCT mcp_session_id) AS sessions,
                SUM(kind = 'request') AS calls, SUM(is_error) AS errors,
                MIN(ts) AS firstSeen, MAX(ts) AS lastSeen
         FROM audit_log WHERE kind <> 'event'
         GROUP BY client_name, client_version ORDER BY firstSeen`,
      )
      .all();
    const sessions = this.db
      .prepare<[], AuditSummary['sessions'][number]>(
        `SELECT mcp_session_id AS mcpSessionId, MAX(transport) AS transport,
                MAX(client_name) AS clientName, MAX(client_version) AS clientVersion,
                SUM(kind = 'request') AS calls, SUM(is_error) AS errors,
                MIN(ts) AS firstSeen, MAX(ts) AS lastSeen
         FROM audit_log WHERE kind <> 'event'
         GROUP BY mcp_session_id ORDER BY firstSeen`,
      )
      .all();
    const events = this.db
      .prepare<[], AuditSummary['events'][number]>(
        `SELECT method, COUNT(*) AS count FROM audit_log WHERE kind = 'event' GROUP BY method ORDER BY count DESC, method`,
      )
      .all();
    return { rows: totals.rows, errors: totals.errors ?? 0, firstTs: totals.firstTs, lastTs: totals.lastTs, tools, clients, sessions, events };
  }

  private query(filter: AuditFilter, afterSeq?: number): AuditRecord[] {
    const conditions: string[] = [];
    const params: Record<string, string | number> = {};
    const add = (condition: string, name: string, value: string | number | undefined) => {
      if (value === undefined) return;
      conditions.push(condition);
      params[name] = value;
    };
    const descending = filter.order === 'desc';
    add('kind = @kind', 'kind', filter.kind);
    add('tool = @tool', 'tool', filter.tool);
    add('method = @method', 'method', filter.method);
    add('mcp_session_id = @session', 'session', filter.session);
    add('client_name = @client', 'client', filter.client);
    add('is_error = @isError', 'isError', filter.isError === undefined ? undefined : Number(filter.isError));
    add('experiment_id = @experimentId', 'experimentId', filter.experimentId);
    add('ts >= @since', 'since', filter.since === undefined ? undefined : toIso(filter.since));
    add('ts < @until', 'until', filter.until === undefined ? undefined : toIso(filter.until));
    add(descending ? 'seq < @afterSeq' : 'seq > @afterSeq', 'afterSeq', afterSeq);
    params.limit = filter.limit ?? -1;
    params.offset = filter.offset ?? 0;
    const where = conditions.length > 0 ? `WHERE ${conditions.join(' AND ')}` : '';
    return this.db
      .prepare<Record<string, string | number>, AuditRecord>(
        `SELECT * FROM audit_log ${where} ORDER BY seq ${descending ? 'DESC' : 'ASC'} LIMIT @limit OFFSET @offset`,
      )
      .all(params);
  }

  /** Rows matching the filter, fetched page by page (keyset on seq) and mapped lazily. */
  private *mapRows(filter: AuditFilter, map: (row: AuditRow) => string): Generator<string> {
    let remaining = filter.limit ?? Number.POSITIVE_INFINITY;
    let offset = filter.offset ?? 0;
    let afterSeq: number | undefined;
    while (remaining > 0) {
      const pageSize = Math.min(EXPORT_PAGE_ROWS, remaining);
      const page = this.query({ ...filter, limit: pageSize, offset }, afterSeq);
      for (const record of page) yield map(fromRecord(record));
      if (page.length < pageSize) return;
      remaining -= page.length;
      offset = 0;
      afterSeq = page[page.length - 1].seq;
    }
  }
}

/** SHA-256 over a canonical serialisation: a JSON array of the fields in a fixed order. */
export function auditRowHash(fields: HashedAuditFields): string {
  const canonical = JSON.stringify([
    HASH_FORMAT,
    fields.seq,
    fields.ts,
    fields.transport,
    fields.mcpSessionId,
    fields.clientName,
    fields.clientVersion,
    fields.kind,
    fields.method,
    fields.tool,
    fields.argumentsJson,
    fields.resultJson,
    fields.resultSha256,
    fields.resultBytes,
    fields.isError ? 1 : 0,
    fields.durationMs,
    fields.experimentId,
    fields.message,
    fields.prevHash,
  ]);
  return createHash('sha256').update(canonical, 'utf8').digest('hex');
}

/**
 * Checks rows given in seq order: seq runs 1, 2, 3 ... without gaps, each prev_hash is the
 * previous hash, each hash matches the row, and an uncut result matches its own digest. Works on
 * the database and equally on an export read back (JSONL lines, parsed CSV records).
 */
export function verifyAuditChain(rows: Iterable<AuditRow>, anchor?: AuditAnchor): AuditVerification {
  let checked = 0;
  let previousHash = GENESIS_HASH;
  let anchorSeen = false;
  const fail = (firstBadSeq: number, reason: string): AuditVerification => ({ ok: false, rows: checked, firstBadSeq, reason });
  for (const row of rows) {
    const expectedSeq = checked + 1;
    if (row.seq !== expectedSeq) {
      return fail(
        row.seq,
        row.seq > expectedSeq
          ? `row(s) ${expectedSeq}..${row.seq - 1} are missing (deleted)`
          : `seq ${row.seq} appears where ${expectedSeq} was expected (rows reordered or duplicated)`,
      );
    }
    if (row.prevHash !== previousHash) {
      return fail(row.seq, 'prev_hash does not match the previous row: the chain was broken (rows removed, reordered or rewritten)');
    }
    if (auditRowHash(row) !== row.hash) {
      return fail(row.seq, 'hash does not match the row contents: the row was edited');
    }
    if (row.resultJson !== null && !isTruncated(row.resultJson, row.resultBytes)) {
      if (createHash('sha256').update(row.resultJson, 'utf8').digest('hex') !== row.resultSha256) {
        return fail(row.seq, 'result does not match result_sha256');
      }
    }
    if (anchor && row.seq === anchor.seq) {
      if (row.hash !== anchor.hash) return fail(row.seq, `hash differs from the recorded anchor ${anchor.hash}`);
      anchorSeen = true;
    }
    previousHash = row.hash;
    checked += 1;
  }
  if (anchor && !anchorSeen) {
    return fail(anchor.seq, `the log ends at seq ${checked} but seq ${anchor.seq} was recorded: rows were cut from the end`);
  }
  return { ok: true, rows: checked, headSeq: checked, headHash: previousHash };
}

// ---- the anchor file ------------------------------------------------------------------------------

export interface AnchorLine {
  seq: number;
  hash: string;
}

export interface AnchorFile {
  path: string;
  /** The line with the highest seq (appenders on one database may finish their lines out of order). */
  head: AnchorLine | undefined;
  lines: AnchorLine[];
  /** 1-based line number and text of the first line that is not `seq hash`. */
  malformed?: { line: number; text: string };
}

/** O_APPEND|O_CREAT for every line: a short write lands whole at the end, also from several processes. */
function appendAnchorLine(path: string, row: { seq: number; hash: string }): void {
  try {
    appendFileSync(path, `${row.seq} ${row.hash}\n`, { flag: 'a', mode: 0o600 });
  } catch (error) {
    throw new Error(`audit row ${row.seq} was stored, but its anchor line could not be written to ${path}: ${(error as Error).message}`);
  }
}

/** Reads an anchor file; undefined when it does not exist. */
export function readAnchorFile(path: string): AnchorFile | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  const lines: AnchorLine[] = [];
  let head: AnchorLine | undefined;
  let malformed: AnchorFile['malformed'];
  const texts = text.split('\n');
  if (texts[texts.length - 1] === '') texts.pop();
  texts.forEach((line, index) => {
    const match = /^([1-9][0-9]*) ([0-9a-f]{64})$/.exec(line);
    if (!match) {
      malformed ??= { line: index + 1, text: line.slice(0, 80) };
      return;
    }
    const entry = { seq: Number(match[1]), hash: match[2] };
    lines.push(entry);
    if (!head || entry.seq > head.seq) head = entry;
  });
  return { path, head, lines, ...(malformed ? { malformed } : {}) };
}

/**
 * The anchored head of the audit log of a workspace's state folder (`.autoresearch/`), for the
 * report and the CLI to print; undefined when there is no anchor (yet).
 */
export function anchorHead(stateDir: string): (AnchorLine & { path: string; lines: number }) | undefined {
  const file = readAnchorFile(join(stateDir, ANCHOR_FILE));
  return file?.head ? { ...file.head, path: file.path, lines: file.lines.length } : undefined;
}

/** Checks an intact chain against the anchor file; `hashAt` gives the database's hash at a seq. */
export function checkAnchor(
  chain: Extract<AuditVerification, { ok: true }>,
  path: string,
  hashAt: (seq: number) => string | undefined,
): AuditVerification {
  const file = readAnchorFile(path);
  const fail = (firstBadSeq: number, reason: string): AuditVerification => ({ ok: false, rows: chain.rows, firstBadSeq, reason });
  if (!file || (file.lines.length === 0 && !file.malformed)) {
    const message =
      chain.rows === 0
        ? `no anchor at ${path} yet: it is created with the first audited call`
        : `no anchor at ${path}: the log was written before anchoring (or the anchor was removed). The anchor is created from now on, ` +
          `with the next audited call; until then the chain is only checked against itself, and a database rewritten and re-hashed as a whole would not be detected.`;
    return { ...chain, anchor: { state: 'missing', path, message } };
  }
  if (file.malformed) {
    return fail(chain.rows + 1, `line ${file.malformed.line} of the anchor ${path} is not "seq hash" (${JSON.stringify(file.malformed.text)}): the anchor was damaged`);
  }
  const head = file.head!;
  if (head.seq > chain.headSeq) {
    return fail(
      chain.headSeq + 1,
      `the database ends at seq ${chain.headSeq} but the anchor records seq ${head.seq}: rows were cut from the end of the audit log in the database (or the database was replaced)`,
    );
  }
  for (const line of file.lines) {
    const hash = hashAt(line.seq);
    if (hash !== line.hash) {
      return fail(
        line.seq,
        `the audit log in the database does not match the anchor at seq ${line.seq}: the database was rewritten ` +
          `(the anchor ${path} records ${line.hash.slice(0, 16)}…, the database has ${hash === undefined ? 'no row' : `${hash.slice(0, 16)}…`})`,
      );
    }
  }
  return {
    ...chain,
    anchor: { state: 'anchored', path, headSeq: head.seq, headHash: head.hash, lines: file.lines.length, unanchoredRows: chain.headSeq - head.seq },
  };
}

function fromRecord(record: AuditRecord): AuditRow {
  return {
    seq: record.seq,
    ts: record.ts,
    transport: record.transport,
    mcpSessionId: record.mcp_session_id,
    clientName: record.client_name,
    clientVersion: record.client_version,
    kind: record.kind,
    method: record.method,
    tool: record.tool,
    argumentsJson: record.arguments,
    resultJson: record.result,
    resultSha256: record.result_sha256,
    resultBytes: record.result_bytes,
    resultTruncated: isTruncated(record.result, record.result_bytes),
    isError: record.is_error === 1,
    durationMs: record.duration_ms,
    experimentId: record.experiment_id,
    message: record.message,
    prevHash: record.prev_hash,
    hash: record.hash,
  };
}

function toRecord(row: AuditRow): AuditRecord {
  return {
    seq: row.seq,
    ts: row.ts,
    transport: row.transport,
    mcp_session_id: row.mcpSessionId,
    client_name: row.clientName,
    client_version: row.clientVersion,
    kind: row.kind,
    method: row.method,
    tool: row.tool,
    arguments: row.argumentsJson,
    result: row.resultJson,
    result_sha256: row.resultSha256,
    result_bytes: row.resultBytes,
    is_error: row.isError ? 1 : 0,
    duration_ms: row.durationMs,
    experiment_id: row.experimentId,
    message: row.message,
    prev_hash: row.prevHash,
    hash: row.hash,
  };
}

function isTruncated(resultJson: string | null, resultBytes: number | null): boolean {
  return resultJson !== null && resultBytes !== null && Buffer.byteLength(resultJson, 'utf8') < resultBytes;
}

/** Cuts at a character boundary, so the stored prefix is valid UTF-8 and at most `limit` bytes. */
function truncateUtf8(buffer: Buffer, limit: number): string {
  if (buffer.length <= limit) return buffer.toString('utf8');
  let end = limit;
  while (end > 0 && (buffer[end] & 0xc0) === 0x80) end -= 1;
  return buffer.subarray(0, end).toString('utf8');
}

/**
 * SQLite stores text as UTF-8, where a lone UTF-16 surrogate becomes U+FFFD. Hashing the text as
 * it will read back keeps a row with such a string verifiable.
 */
function storableText(value: string | null | undefined): string | null {
  return value === undefined || value === null ? null : Buffer.from(value, 'utf8').toString('utf8');
}

function finiteInteger(value: number | null | undefined): number | null {
  return value === undefined || value === null || !Number.isFinite(value) ? null : Math.round(value);
}

function toIso(time: Date | number): string {
  return (typeof time === 'number' ? new Date(time) : time).toISOString();
}

function csvField(value: string | number | null): string {
  if (value === null) return '';
  if (typeof value === 'number') return String(value);
  return `"${value.replaceAll('"', '""')}"`;
}

async function writeAll(chunks: Iterable<string>, out: NodeJS.WritableStream): Promise<number> {
  let written = 0;
  for (const chunk of chunks) {
    if (!out.write(chunk)) await once(out, 'drain');
    written += 1;
  }
  return written;
}
