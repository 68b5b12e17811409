import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { AUDIT_LOG_SCHEMA, AuditLog, type AuditLogOptions } from './audit.js';

/**
 * The server's state in one SQLite file (WAL): workspace metadata, pinned harness hashes,
 * sessions, experiments and the audit log. Times are epoch milliseconds (the audit log keeps
 * ISO strings, see audit.ts).
 */

export const EXPERIMENT_STATUSES = ['queued', 'running', 'succeeded', 'crashed', 'timed_out', 'cancelled', 'rejected'] as const;
export type ExperimentStatus = (typeof EXPERIMENT_STATUSES)[number];
/** The statuses an experiment can end in. */
export type FinishedStatus = Exclude<ExperimentStatus, 'queued' | 'running'>;

/** Finished: the experiment will not change any more, except for its decision. */
export function isFinishedStatus(status: string): status is FinishedStatus {
  return (EXPERIMENT_STATUSES as readonly string[]).includes(status) && status !== 'queued' && status !== 'running';
}
export type Decision = 'keep' | 'discard';

/** Last progress line of a running experiment. */
export interface ExperimentProgress {
  step: number;
  percent: number;
  loss: number;
}

/** File name -> SHA-256 of the harness files the evaluation depends on. */
export type HarnessHashes = Record<string, string>;

/** Everything the harness and the summary block report about a finished run; NULL when unknown. */
export interface RunMetrics {
  valBpb: number | null;
  trainingSeconds: number | null;
  totalSeconds: number | null;
  peakVramMb: number | null;
  mfuPercent: number | null;
  totalTokensM: number | null;
  numSteps: number | null;
  numParamsM: number | null;
  depth: number | null;
  evalTokens: number | null;
  evalBytes: number | null;
}

export interface Experiment extends RunMetrics {
  id: number;
  /** Content hash of the train.py it ran: equal hashes are repeats of one program. */
  trainHash: string | null;
  sessionTag: string;
  description: string;
  status: ExperimentStatus;
  decision: Decision | null;
  decisionReason: string | null;
  decidedAt: number | null;
  parentCommit: string;
  candidateCommit: string | null;
  rebaseOf: number | null;
  slot: number | null;
  pid: number | null;
  queuedAt: number;
  startedAt: number | null;
  finishedAt: number | null;
  durationMs: number | null;
  exitCode: number | null;
  signal: string | null;
  error: string | null;
  logPath: string | null;
  resultPath: string | null;
  harnessHashes: HarnessHashes | null;
  progress: ExperimentProgress | null;
  mcpSessionId: string | null;
  clientName: string | null;
}

export interface NewExperiment {
  sessionTag: string;
  trainHash?: string | null;
  description: string;
  parentCommit: string;
  /** 'rejected' records a candidate refused before it could run (it never enters the queue). */
  status?: 'queued' | 'rejected';
  error?: string | null;
  candidateCommit?: string | null;
  rebaseOf?: number | null;
  mcpSessionId?: string | null;
  clientName?: string | null;
  queuedAt?: number;
}

export interface FinishedRun extends Partial<RunMetrics> {
  status: FinishedStatus;
  finishedAt?: number;
  error?: string | null;
  exitCode?: number | null;
  signal?: string | null;
  harnessHashes?: HarnessHashes | null;
}

export interface ExperimentQuery {
  /** One status or several; an empty list means no status filter. */
  status?: ExperimentStatus | readonly ExperimentStatus[];
  session?: string;
  /** 'id': newest first unless `ascending`; 'best': lowest val_bpb first, NULLs last, then id. */
  order?: 'id' | 'best';
  ascending?: boolean;
  limit?: number;
  offset?: number;
}

export interface Session {
  tag: string;
  branch: string;
  baseCommit: string;
  createdAt: number;
  mcpSessionId: string | null;
  clientName: string | null;
  clientVersion: string | null;
}

export interface NewSession {
  tag: string;
  branch: string;
  baseCommit: string;
  createdAt?: number;
  mcpSessionId?: string | null;
  clientName?: string | null;
  clientVersion?: string | null;
}

export interface PinnedFile {
  name: string;
  sha256: string;
  bytes: number | null;
  pinnedAt: number;
}

export type StoreErrorCode = 'not_found' | 'invalid_state' | 'invalid_argument' | 'duplicate' | 'pins_already_set' | 'schema_too_new';

export class StoreError extends Error {
  constructor(
    readonly code: StoreErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'StoreError';
  }
}

export interface StoreOptions {
  /** Milliseconds a writer waits for another connection's lock before failing. */
  busyTimeoutMs?: number;
  audit?: AuditLogOptions;
}

/**
 * Schema versions in order; PRAGMA user_version counts those applied. Append new entries, never
 * edit applied ones: a workspace created by an older server is upgraded step by step on open.
 */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL CHECK (json_valid(value))
  ) STRICT;
  INSERT INTO meta (key, value) VALUES ('created_at', CAST(CAST(unixepoch('subsec') * 1000 AS INTEGER) AS TEXT));

  CREATE TABLE pins (
    name      TEXT PRIMARY KEY,
    sha256    TEXT NOT NULL CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
    bytes     INTEGER,
    pinned_at INTEGER NOT NULL
  ) STRICT;

  CREATE TABLE sessions (
    tag            TEXT PRIMARY KEY,
    branch         TEXT NOT NULL,
    base_commit    TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    mcp_session_id TEXT,
    client_name    TEXT,
    client_version TEXT
  ) STRICT;

  CREATE TABLE experiments (
    id               INTEGER PRIMARY KEY,
    session_tag      TEXT NOT NULL REFERENCES sessions (tag),
    description      TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'crashed', 'timed_out', 'cancelled', 'rejected')),
    decision         TEXT CHECK (decision IN ('keep', 'discard')),
    decision_reason  TEXT,
    decided_at       INTEGER,
    parent_commit    TEXT NOT NULL,
    candidate_commit TEXT,
    rebase_of        INTEGER REFERENCES experiments (id),
    slot             INTEGER,
    pid              INTEGER,
    val_bpb          REAL,
    training_seconds REAL,
    total_seconds    REAL,
    peak_vram_mb     REAL,
    mfu_percent      REAL,
    total_tokens_m   REAL,
    num_steps        INTEGER,
    num_params_m     REAL,
    depth            INTEGER,
    eval_tokens      INTEGER,
    eval_bytes       INTEGER,
    queued_at        INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    duration_ms      INTEGER,
    exit_code        INTEGER,
    signal           TEXT,
    error            TEXT,
    log_path         TEXT,
    result_path      TEXT,
    harness_hashes   TEXT CHECK (json_valid(harness_hashes)),
    progress         TEXT CHECK (json_valid(progress)),
    mcp_session_id   TEXT,
    client_name      TEXT,
    -- a metric is what makes a success; only a success can be kept
    CHECK (status <> 'succeeded' OR val_bpb IS NOT NULL),
    CHECK (decision IS NOT 'keep' OR status = 'succeeded'),
    CHECK ((decision IS NULL) = (decided_at IS NULL))
  ) STRICT;
  CREATE INDEX experiments_by_status ON experiments (status, id);
  CREATE INDEX experiments_by_session ON experiments (session_tag, id);
  -- serve ORDER BY val_bpb IS NULL, val_bpb, id (best first, NULLs last), overall and per status
  CREATE INDEX experiments_by_val_bpb ON experiments (val_bpb IS NULL, val_bpb, id);
  CREATE INDEX experiments_by_status_val_bpb ON experiments (status, val_bpb IS NULL, val_bpb, id);
  ${AUDIT_LOG_SCHEMA}
  `,
  // 2: the content hash of the train.py an experiment ran, so repeated runs of one text show the noise.
  `
  ALTER TABLE experiments ADD COLUMN train_hash TEXT;
  CREATE INDEX experiments_train_hash ON experiments (session_tag, train_hash);
  `,
];

interface ExperimentRecord {
  id: number;
  train_hash: string | null;
  session_tag: string;
  description: string;
  status: ExperimentStatus;
  decision: Decision | null;
  decision_reason: string | null;
  decided_at: number | null;
  parent_commit: string;
  candidate_commit: string | null;
  rebase_of: number | null;
  slot: number | null;
  pid: number | null;
  val_bpb: number | null;
  training_seconds: number | null;
  total_seconds: number | null;
  peak_vram_mb: number | null;
  mfu_percent: number | null;
  total_tokens_m: number | null;
  num_steps: number | null;
  num_params_m: number | null;
  depth: number | null;
  eval_tokens: number | null;
  eval_bytes: number | null;
  queued_at: number;
  started_at: number | null;
  finished_at: number | null;
  duration_ms: number | null;
  exit_code: number | null;
  signal: string | null;
  error: string | null;
  log_path: string | null;
  result_path: string | null;
  harness_hashes: string | null;
  progress: string | null;
  mcp_session_id: string | null;
  client_name: string | null;
}

interface SessionRecord {
  tag: string;
  branch: string;
  base_commit: string;
  created_at: number;
  mcp_session_id: string | null;
  client_name: string | null;
  client_version: string | null;
}

type SqlValue = string | number | null;

const UNFINISHED = "('queued', 'running')";

export class Store {
  readonly audit: AuditLog;
  /** Compiling a statement costs more than running most of ours; the SQL texts are few and fixed. */
  private readonly statements = new Map<string, Database.Statement>();

  private constructor(
    private readonly db: Database.Database,
    auditOptions: AuditLogOptions | undefined,
  ) {
    this.audit = new AuditLog(db, auditOptions);
  }

  /** Opens (creating the file and folder if needed) and migrates to the current schema. */
  static open(dbPath: string, options: StoreOptions = {}): Store {
    if (dbPath !== ':memory:') mkdirSync(dirname(dbPath), { recursive: true });
    const db = new Database(dbPath);
    try {
      db.pragma(`busy_timeout = ${Math.max(0, Math.floor(options.busyTimeoutMs ?? 10_000))}`);
      db.pragma('journal_mode = WAL');
      db.pragma('foreign_keys = ON');
      migrate(db);
    } catch (error) {
      db.close();
      throw error;
    }
    return new Store(db, options.audit);
  }

  /** The applied schema version (PRAGMA user_version). */
  get schemaVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  close(): void {
    this.db.close();
  }

  // ---- meta ----------------------------------------------------------------------------------

  /** Any JSON value under a key (workspace info, profile, constants ...). */
  setMeta(key: string, value: unknown): void {
    const json = JSON.stringify(value);
    if (json === undefined) throw new StoreError('invalid_argument', `meta "${key}" must be a JSON value`);
    this.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(key, json);
  }

  /** The value stored under a key, typed by the caller; undefined when absent. */
  getMeta<T = unknown>(key: string): T | undefined {
    const row = this.prepare<[string], { value: string }>('SELECT value FROM meta WHERE key = ?').get(key);
    return row === undefined ? undefined : (JSON.parse(row.value) as T);
  }

  // ---- pinned harness hashes -----------------------------------------------------------------

  /**
   * Pins the evaluation files' hashes. Done once at init: pins that exist are only replaced with
   * `replace: true`, since re-pinning would bless whatever the harness files now contain.
   */
  setPins(pins: HarnessHashes, options: { replace?: boolean; bytes?: Record<string, number>; pinnedAt?: number } = {}): void {
    const names = Object.keys(pins);
    if (names.length === 0) throw new StoreError('invalid_argument', 'no files to pin');
    const pinnedAt = options.pinnedAt ?? Date.now();
    this.db
      .transaction(() => {
        const existing = this.prepare<[], { n: number }>('SELECT COUNT(*) AS n FROM pins').get()!.n;
        if (existing > 0 && !options.replace) {
          throw new StoreError('pins_already_set', 'harness hashes are already pinned; pass replace: true to re-pin deliberately');
        }
        this.prepare('DELETE FROM pins').run();
        const insert = this.prepare('INSERT INTO pins (name, sha256, bytes, pinned_at) VALUES (?, ?, ?, ?)');
        for (const name of names) insert.run(name, pins[name].toLowerCase(), options.bytes?.[name] ?? null, pinnedAt);
      })
      .immediate();
  }

  /** File name -> pinned SHA-256 (empty before init pinned them). */
  getPins(): HarnessHashes {
    return Object.fromEntries(this.listPins().map((pin) => [pin.name, pin.sha256]));
  }

  listPins(): PinnedFile[] {
    return this.prepare<[], PinnedFile>('SELECT name, sha256, bytes, pinned_at AS pinnedAt FROM pins ORDER BY name')
      .all();
  }

  // ---- sessions ------------------------------------------------------------------------------

  createSession(session: NewSession): Session {
    try {
      this.prepare(
          `INSERT INTO sessions (tag, branch, base_commit, created_at, mcp_session_id, client_name, client_version)
           VALUES (?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(
          session.tag,
          session.branch,
          session.baseCommit,
          session.createdAt ?? Date.now(),
          session.mcpSessionId ?? null,
          session.clientName ?? null,
          session.clientVersion ?? null,
        );
    } catch (error) {
      if (isConstraint(error, 'SQLITE_CONSTRAINT_PRIMARYKEY')) throw new StoreError('duplicate', `session "${session.tag}" already exists`);
      throw error;
    }
    return this.getSession(session.tag)!;
  }

  getSession(tag: string): Session | undefined {
    const record = this.prepare<[string], SessionRecord>('SELECT * FROM sessions WHERE tag = ?').get(tag);
    return record && toSession(record);
  }

  /** Oldest first. */
  listSessions(): Session[] {
    return this.prepare<[], SessionRecord>('SELECT * FROM sessions ORDER BY created_at, rowid').all().map(toSession);
  }

  // ---- experiments: lifecycle ----------------------------------------------------------------

  createExperiment(input: NewExperiment): Experiment {
    const status = input.status ?? 'queued';
    const queuedAt = input.queuedAt ?? Date.now();
    let id: number;
    try {
      id = Number(
        this.prepare(
            `INSERT INTO experiments (session_tag, description, status, parent_commit, candidate_commit, rebase_of,
                                      error, queued_at, finished_at, duration_ms, mcp_session_id, client_name, train_hash)
             VALUES (@sessionTag, @description, @status, @parentCommit, @candidateCommit, @rebaseOf,
                     @error, @queuedAt, @finishedAt, @durationMs, @mcpSessionId, @clientName, @trainHash)`,
          )
          .run({
            sessionTag: input.sessionTag,
            description: input.description,
            status,
            parentCommit: input.parentCommit,
            candidateCommit: input.candidateCommit ?? null,
            rebaseOf: input.rebaseOf ?? null,
            error: input.error ?? null,
            queuedAt,
            // a rejected candidate is finished the moment it is recorded
            finishedAt: status === 'rejected' ? queuedAt : null,
            durationMs: status === 'rejected' ? 0 : null,
            mcpSessionId: input.mcpSessionId ?? null,
            clientName: input.clientName ?? null,
            trainHash: input.trainHash ?? null,
          }).lastInsertRowid,
      );
    } catch (error) {
      if (isConstraint(error, 'SQLITE_CONSTRAINT_FOREIGNKEY')) {
        throw new StoreError(
          'not_found',
          `session "${input.sessionTag}"${input.rebaseOf != null ? ` or experiment ${input.rebaseOf} (rebase_of)` : ''} does not exist`,
        );
      }
      throw error;
    }
    return this.getExperiment(id)!;
  }

  /** Records the commit and run files of a queued experiment (known only once its id exists). */
  setCandidate(id: number, candidate: { candidateCommit?: string; logPath?: string; resultPath?: string }): Experiment {
    const changed = this.prepare(
        `UPDATE experiments
         SET candidate_commit = COALESCE(@candidateCommit, candidate_commit),
             log_path = COALESCE(@logPath, log_path),
             result_path = COALESCE(@resultPath, result_path)
         WHERE id = @id AND status = 'queued'`,
      )
      .run({ id, candidateCommit: candidate.candidateCommit ?? null, logPath: candidate.logPath ?? null, resultPath: candidate.resultPath ?? null });
    if (changed.changes === 0) throw this.stateError(id, 'queued');
    return this.getExperiment(id)!;
  }

  /**
   * Queued -> running. Called again while running it records the pid (and slot) once the
   * process exists, keeping the first started_at.
   */
  markRunning(id: number, run: { slot: number; pid?: number | null; startedAt?: number }): Experiment {
    const changed = this.prepare(
        `UPDATE experiments
         SET status = 'running', slot = @slot, pid = COALESCE(@pid, pid), started_at = COALESCE(started_at, @startedAt)
         WHERE id = @id AND status IN ${UNFINISHED}`,
      )
      .run({ id, slot: run.slot, pid: run.pid ?? null, startedAt: run.startedAt ?? Date.now() });
    if (changed.changes === 0) throw this.stateError(id, 'queued or running');
    return this.getExperiment(id)!;
  }

  /** Latest progress of a running experiment; false when it is no longer running (a late line). */
  updateProgress(id: number, progress: ExperimentProgress): boolean {
    return (
      this.prepare(`UPDATE experiments SET progress = ? WHERE id = ? AND status = 'running'`).run(JSON.stringify(progress), id).changes > 0
    );
  }

  /**
   * Queued or running -> a final status, with whatever metrics are known (missing ones are NULL).
   * A success must carry a finite val_bpb: the runner decides success from the result record.
   */
  markFinished(id: number, run: FinishedRun): Experiment {
    const valBpb = finiteOrNull(run.valBpb);
    if (run.status === 'succeeded' && valBpb === null) {
      throw new StoreError('invalid_argument', `experiment ${id} cannot succeed without a finite val_bpb`);
    }
    const changed = this.prepare(
        `UPDATE experiments
         SET status = @status, finished_at = @finishedAt,
             duration_ms = CASE WHEN started_at IS NULL THEN NULL ELSE @finishedAt - started_at END,
             error = @error, exit_code = @exitCode, signal = @signal, harness_hashes = @harnessHashes,
             val_bpb = @valBpb, training_seconds = @trainingSeconds, total_seconds = @totalSeconds,
             peak_vram_mb = @peakVramMb, mfu_percent = @mfuPercent, total_tokens_m = @totalTokensM,
             num_steps = @numSteps, num_params_m = @numParamsM, depth = @depth,
             eval_tokens = @evalTokens, eval_bytes = @evalBytes
         WHERE id = @id AND status IN ${UNFINISHED}`,
      )
      .run({
        id,
        status: run.status,
        finishedAt: Math.round(run.finishedAt ?? Date.now()),
        error: run.error ?? null,
        exitCode: integerOrNull(run.exitCode),
        signal: run.signal ?? null,
        harnessHashes: run.harnessHashes ? JSON.stringify(run.harnessHashes) : null,
        valBpb,
        trainingSeconds: finiteOrNull(run.trainingSeconds),
        totalSeconds: finiteOrNull(run.totalSeconds),
        peakVramMb: finiteOrNull(run.peakVramMb),
        mfuPercent: finiteOrNull(run.mfuPercent),
        totalTokensM: finiteOrNull(run.totalTokensM),
        // counts come from the printed summary of an agent-edited script: rounded, never refused
        numSteps: integerOrNull(run.numSteps),
        numParamsM: finiteOrNull(run.numParamsM),
        depth: integerOrNull(run.depth),
        evalTokens: integerOrNull(run.evalTokens),
        evalBytes: integerOrNull(run.evalBytes),
      });
    if (changed.changes === 0) throw this.stateError(id, 'queued or running');
    return this.getExperiment(id)!;
  }

  /**
   * Records keep or discard once; decisions are final because the branch moves with them. Keep
   * needs a success; discard needs any finished experiment.
   */
  setDecision(id: number, decision: Decision, reason: string, decidedAt: number = Date.now()): Experiment {
    const changed = this.prepare(
        `UPDATE experiments SET decision = @decision, decision_reason = @reason, decided_at = @decidedAt
         WHERE id = @id AND decision IS NULL AND status NOT IN ${UNFINISHED}
           AND (@decision = 'discard' OR status = 'succeeded')`,
      )
      .run({ id, decision, reason, decidedAt });
    if (changed.changes === 0) {
      const experiment = this.getExperiment(id);
      if (!experiment) throw new StoreError('not_found', `no experiment ${id}`);
      if (experiment.decision) throw new StoreError('invalid_state', `experiment ${id} was already decided: ${experiment.decision}`);
      throw new StoreError('invalid_state', `experiment ${id} is ${experiment.status}; it cannot be marked ${decision}`);
    }
    return this.getExperiment(id)!;
  }

  /**
   * At server start: experiments left 'running' by a server that died are marked crashed (their
   * processes were not watched to the end, so no result of theirs is trusted). Returns those and
   * the queued ones (FIFO) for the caller to run or cancel.
   */
  reconcileOnStart(now: number = Date.now()): { interrupted: Experiment[]; queued: Experiment[] } {
    return this.db
      .transaction(() => {
        const running = this.listExperiments({ status: 'running', order: 'id', ascending: true });
        const crash = this.prepare(
          `UPDATE experiments
           SET status = 'crashed', error = @error, finished_at = @now,
               duration_ms = CASE WHEN started_at IS NULL THEN NULL ELSE @now - started_at END
           WHERE id = @id`,
        );
        for (const experiment of running) {
          crash.run({
            id: experiment.id,
            now,
            error:
              `server stopped while running (pid ${experiment.pid ?? 'unknown'}); ` +
              'the run was not watched to the end, so its result is not trusted',
          });
        }
        return {
          interrupted: running.map((experiment) => this.getExperiment(experiment.id)!),
          queued: this.listExperiments({ status: 'queued', order: 'id', ascending: true }),
        };
      })
      .immediate();
  }

  // ---- experiments: queries ------------------------------------------------------------------

  getExperiment(id: number): Experiment | undefined {
    const record = this.prepare<[number], ExperimentRecord>('SELECT * FROM experiments WHERE id = ?').get(id);
    return record && toExperiment(record);
  }

  listExperiments(query: ExperimentQuery = {}): Experiment[] {
    const conditions: string[] = [];
    const params: SqlValue[] = [];
    const statuses = query.status === undefined ? [] : typeof query.status === 'string' ? [query.status] : [...query.status];
    if (statuses.length > 0) {
      conditions.push(`status IN (${statuses.map(() => '?').join(', ')})`);
      params.push(...statuses);
    }
    if (query.session !== undefined) {
      conditions.push('session_tag = ?');
      params.push(query.session);
    }
    const where = conditions.length > 0 ? `WHERE ${conditions.join(' AND ')}` : '';
    const order = query.order === 'best' ? 'val_bpb IS NULL, val_bpb, id' : query.ascending ? 'id ASC' : 'id DESC';
    params.push(query.limit ?? -1, query.offset ?? 0);
    return this.prepare<SqlValue[], ExperimentRecord>(`SELECT * FROM experiments ${where} ORDER BY ${order} LIMIT ? OFFSET ?`)
      .all(...params)
      .map(toExperiment);
  }

  /**
   * The oldest queued experiment that can run. One without a candidate commit is still being
   * prepared (its commit needs its id) and is skipped until the commit is recorded.
   */
  nextQueued(): Experiment | undefined {
    const record = this.prepare<[], ExperimentRecord>(
        `SELECT * FROM experiments WHERE status = 'queued' AND candidate_commit IS NOT NULL ORDER BY id LIMIT 1`,
      )
      .get();
    return record && toExperiment(record);
  }

  /**
   * The best kept experiment: lowest val_bpb among experiments that succeeded AND were kept (of
   * one session, or all). This is the head's measured score, the number a new candidate must beat.
   * Ties go to the earlier experiment.
   */
  bestExperiment(session?: string): Experiment | undefined {
    return this.lowestValBpb("status = 'succeeded' AND decision = 'keep'", session);
  }

  /** Lowest val_bpb among all succeeded experiments, decided or not (of one session, or all). */
  bestSucceededExperiment(session?: string): Experiment | undefined {
    return this.lowestValBpb("status = 'succeeded'", session);
  }

  /** val_bpb of every succeeded run whose train.py ran more than once in the session (repeats). */
  repeatedResults(session: string): { trainHash: string; valBpb: number }[] {
    return this.prepare(
      `SELECT train_hash AS trainHash, val_bpb AS valBpb FROM experiments
        WHERE session_tag = @session AND status = 'succeeded' AND train_hash IN (
          SELECT train_hash FROM experiments
           WHERE session_tag = @session AND status = 'succeeded' AND train_hash IS NOT NULL
           GROUP BY train_hash HAVING count(*) > 1)`,
    ).all({ session }) as { trainHash: string; valBpb: number }[];
  }

  /** Count per status, every status present (zero when none). */
  countByStatus(session?: string): Record<ExperimentStatus, number> {
    const counts = Object.fromEntries(EXPERIMENT_STATUSES.map((status) => [status, 0])) as Record<ExperimentStatus, number>;
    const rows =
      session === undefined
        ? this.prepare<[], { status: ExperimentStatus; n: number }>('SELECT status, COUNT(*) AS n FROM experiments GROUP BY status').all()
        : this.prepare<[string], { status: ExperimentStatus; n: number }>(
              'SELECT status, COUNT(*) AS n FROM experiments WHERE session_tag = ? GROUP BY status',
            )
            .all(session);
    for (const row of rows) counts[row.status] = row.n;
    return counts;
  }

  private lowestValBpb(condition: string, session: string | undefined): Experiment | undefined {
    const sessionCondition = session === undefined ? '' : 'AND session_tag = ?';
    const record = this.prepare<string[], ExperimentRecord>(
        `SELECT * FROM experiments WHERE ${condition} AND val_bpb IS NOT NULL ${sessionCondition} ORDER BY val_bpb IS NULL, val_bpb, id LIMIT 1`,
      )
      .get(...(session === undefined ? [] : [session]));
    return record && toExperiment(record);
  }

  private prepare<Params extends unknown[] | {} = unknown[], Result = unknown>(source: string): Database.Statement<Params, Result> {
    let statement = this.statements.get(source);
    if (!statement) {
      statement = this.db.prepare(source);
      this.statements.set(source, statement);
    }
    return statement as unknown as Database.Statement<Params, Result>;
  }

  /** Why a conditional update touched nothing: no such experiment, or not in an allowed status. */
  private stateError(id: number, allowed: string): StoreError {
    const experiment = this.getExperiment(id);
    if (!experiment) return new StoreError('not_found', `no experiment ${id}`);
    return new StoreError('invalid_state', `experiment ${id} is ${experiment.status}, not ${allowed}`);
  }
}

/**
 * Applies pending migrations in one IMMEDIATE transaction; user_version is re-read under the
 * write lock, so two processes opening a new file at once migrate it exactly once.
 */
function migrate(db: Database.Database): void {
  db.transaction(() => {
    const applied = db.pragma('user_version', { simple: true }) as number;
    if (applied > MIGRATIONS.length) {
      throw new StoreError(
        'schema_too_new',
        `the database has schema version ${applied} but this server knows only ${MIGRATIONS.length}; upgrade autoresearch-mcp`,
      );
    }
    for (let version = applied; version < MIGRATIONS.length; version += 1) {
      db.exec(MIGRATIONS[version]);
      db.pragma(`user_version = ${version + 1}`);
    }
  }).immediate();
}

function toExperiment(record: ExperimentRecord): Experiment {
  return {
    id: record.id,
    trainHash: record.train_hash,
    sessionTag: record.session_tag,
    description: record.description,
    status: record.status,
    decision: record.decision,
    decisionReason: record.decision_reason,
    decidedAt: record.decided_at,
    parentCommit: record.parent_commit,
    candidateCommit: record.candidate_commit,
    rebaseOf: record.rebase_of,
    slot: record.slot,
    pid: record.pid,
    valBpb: record.val_bpb,
    trainingSeconds: record.training_seconds,
    totalSeconds: record.total_seconds,
    peakVramMb: record.peak_vram_mb,
    mfuPercent: record.mfu_percent,
    totalTokensM: record.total_tokens_m,
    numSteps: record.num_steps,
    numParamsM: record.num_params_m,
    depth: record.depth,
    evalTokens: record.eval_tokens,
    evalBytes: record.eval_bytes,
    queuedAt: record.queued_at,
    startedAt: record.started_at,
    finishedAt: record.finished_at,
    durationMs: record.duration_ms,
    exitCode: record.exit_code,
    signal: record.signal,
    error: record.error,
    logPath: record.log_path,
    resultPath: record.result_path,
    harnessHashes: record.harness_hashes === null ? null : (JSON.parse(record.harness_hashes) as HarnessHashes),
    progress: record.progress === null ? null : (JSON.parse(record.progress) as ExperimentProgress),
    mcpSessionId: record.mcp_session_id,
    clientName: record.client_name,
  };
}

function toSession(record: SessionRecord): Session {
  return {
    tag: record.tag,
    branch: record.branch,
    baseCommit: record.base_commit,
    createdAt: record.created_at,
    mcpSessionId: record.mcp_session_id,
    clientName: record.client_name,
    clientVersion: record.client_version,
  };
}

function isConstraint(error: unknown, code: string): boolean {
  return error instanceof Database.SqliteError && error.code === code;
}

function finiteOrNull(value: number | null | undefined): number | null {
  return value === undefined || value === null || !Number.isFinite(value) ? null : value;
}

function integerOrNull(value: number | null | undefined): number | null {
  const finite = finiteOrNull(value);
  return finite === null ? null : Math.round(finite);
}
