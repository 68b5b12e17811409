import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { AUDIT_LOG_SCHEMA, AuditLog, type AuditLogOptions } from './audit.js';

/**
 * The server's state in one SQLite file (WAL): workspace metadata, pinned harness hashes,
 * sessions, experiments and the audit log. Times are epoch milliseconds (the audit log keeps
 * ISO strings, see audit.ts).
 */

export const EXPERIMENT_STATUSES = ['preparing', 'queued', 'running', 'succeeded', 'crashed', 'over_budget', 'timed_out', 'cancelled', 'rejected'] as const;
export type ExperimentStatus = (typeof EXPERIMENT_STATUSES)[number];
/** The statuses an experiment can end in. */
export type FinishedStatus = Exclude<ExperimentStatus, 'preparing' | 'queued' | 'running'>;

/** Finished: the experiment will not change any more, except for its decision. */
export function isFinishedStatus(status: string): status is FinishedStatus {
  return (EXPERIMENT_STATUSES as readonly string[]).includes(status) && status !== 'preparing' && status !== 'queued' && status !== 'running';
}
export type Decision = 'keep' | 'discard';

/** candidate: a change measured from its parent; noise: a repeat of one commit to measure seed noise; confirm: a re-run for a paired comparison. */
export const EXPERIMENT_KINDS = ['candidate', 'noise', 'confirm'] as const;
export type ExperimentKind = (typeof EXPERIMENT_KINDS)[number];
/** What the candidate changes relative to its parent, as the Python AST sees it. */
export type ChangeKind = 'code' | 'seed_only' | 'none';

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
  /** Measured by the supervisor (seconds from spawn to the first batch, hand-over to model, CPU of the trainer). */
  startupSeconds: number | null;
  exportSeconds: number | null;
  cpuSeconds: number | null;
  tokensServed: number | null;
  evalSeconds: number | null;
  seed: number | null;
  /** true: ran in the sandbox; false: --unsandboxed (unverified); null: never ran (or before sandboxes existed). */
  sandboxed: boolean | null;
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
  kind: ExperimentKind;
  /** Seed the server gave the run (AUTORESEARCH_SEED); null for runs before seeds were supplied. */
  seed: number | null;
  /** The undecided experiment whose commit this one's parent is (explicit stacking). */
  stackedOn: number | null;
  /** For confirm runs: the candidate experiment they confirm. */
  confirms: number | null;
  /** For noise runs: the noise measurement they belong to. */
  noiseId: number | null;
  changeKind: ChangeKind | null;
  /** The figures the last decision (or inconclusive verdict) was based on. */
  decisionFigures: Record<string, unknown> | null;
  /** The last auto verdict, also when it was inconclusive (decision stays NULL then). */
  verdict: 'keep' | 'discard' | 'inconclusive' | null;
  /** Branch move (undo) that took this kept commit off the branch. */
  undoneBy: number | null;
  /** Who proposed it: the agent's own name, or its MCP client and session. */
  agent: string | null;
}

export interface NewExperiment {
  sessionTag: string;
  trainHash?: string | null;
  description: string;
  parentCommit: string;
  /** 'rejected' records a candidate refused before it could run (it never enters the queue); 'preparing': its commit does not exist yet. */
  status?: 'preparing' | 'queued' | 'rejected';
  kind?: ExperimentKind;
  seed?: number | null;
  stackedOn?: number | null;
  confirms?: number | null;
  noiseId?: number | null;
  changeKind?: ChangeKind | null;
  error?: string | null;
  candidateCommit?: string | null;
  rebaseOf?: number | null;
  mcpSessionId?: string | null;
  clientName?: string | null;
  agent?: string | null;
  queuedAt?: number;
}

export interface FinishedRun extends Partial<Omit<RunMetrics, 'sandboxed'>> {
  status: FinishedStatus;
  sandboxed?: boolean | null;
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
  /** 'baseline' or the tag of the session whose head it started from. */
  startFrom: string | null;
  createdAt: number;
  mcpSessionId: string | null;
  clientName: string | null;
  clientVersion: string | null;
}

export interface NewSession {
  tag: string;
  branch: string;
  baseCommit: string;
  startFrom?: string | null;
  createdAt?: number;
  mcpSessionId?: string | null;
  clientName?: string | null;
  clientVersion?: string | null;
}

export interface BranchMove {
  id: number;
  kind: 'keep' | 'undo';
  sessionTag: string;
  branch: string;
  fromCommit: string;
  toCommit: string;
  experimentId: number | null;
  reason: string;
  figures: Record<string, unknown> | null;
  savedRef: string | null;
  state: 'intent' | 'done' | 'abandoned';
  createdAt: number;
  finishedAt: number | null;
  note: string | null;
}

interface BranchMoveRecord {
  id: number;
  kind: 'keep' | 'undo';
  session_tag: string;
  branch: string;
  from_commit: string;
  to_commit: string;
  experiment_id: number | null;
  reason: string;
  figures: string | null;
  saved_ref: string | null;
  state: 'intent' | 'done' | 'abandoned';
  created_at: number;
  finished_at: number | null;
  note: string | null;
}

function toMove(r: BranchMoveRecord): BranchMove {
  return {
    id: r.id,
    kind: r.kind,
    sessionTag: r.session_tag,
    branch: r.branch,
    fromCommit: r.from_commit,
    toCommit: r.to_commit,
    experimentId: r.experiment_id,
    reason: r.reason,
    figures: r.figures ? JSON.parse(r.figures) : null,
    savedRef: r.saved_ref,
    state: r.state,
    createdAt: r.created_at,
    finishedAt: r.finished_at,
    note: r.note,
  };
}

export interface NoiseMeasurement {
  id: number;
  sessionTag: string;
  profile: string;
  machine: string;
  commit: string;
  k: number;
  state: 'measuring' | 'done' | 'failed';
  runs: number | null;
  mean: number | null;
  sigma: number | null;
  mad: number | null;
  values: number[] | null;
  createdAt: number;
  finishedAt: number | null;
  note: string | null;
}

interface NoiseRecord {
  id: number;
  session_tag: string;
  profile: string;
  machine: string;
  commit_sha: string;
  k: number;
  state: 'measuring' | 'done' | 'failed';
  runs: number | null;
  mean: number | null;
  sigma: number | null;
  mad: number | null;
  values_json: string | null;
  created_at: number;
  finished_at: number | null;
  note: string | null;
}

function toNoise(r: NoiseRecord): NoiseMeasurement {
  return {
    id: r.id,
    sessionTag: r.session_tag,
    profile: r.profile,
    machine: r.machine,
    commit: r.commit_sha,
    k: r.k,
    state: r.state,
    runs: r.runs,
    mean: r.mean,
    sigma: r.sigma,
    mad: r.mad,
    values: r.values_json ? JSON.parse(r.values_json) : null,
    createdAt: r.created_at,
    finishedAt: r.finished_at,
    note: r.note,
  };
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
type Migration = string | ((db: Database.Database) => void);
const MIGRATIONS: readonly Migration[] = [
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
  // 3: runs in sandboxes (docs/run-protocol.md): status 'over_budget', the supervisor's measured
  // times, the seed, and whether the run was sandboxed (NULL for older rows).
  (db) => {
    widenStatusCheck(db);
    db.exec(`
      ALTER TABLE experiments ADD COLUMN sandboxed INTEGER CHECK (sandboxed IN (0, 1));
      ALTER TABLE experiments ADD COLUMN startup_seconds REAL;
      ALTER TABLE experiments ADD COLUMN export_seconds REAL;
      ALTER TABLE experiments ADD COLUMN cpu_seconds REAL;
      ALTER TABLE experiments ADD COLUMN tokens_served INTEGER;
      ALTER TABLE experiments ADD COLUMN eval_seconds REAL;
      ALTER TABLE experiments ADD COLUMN seed INTEGER;
    `);
  },
  // 4: the research record (issue 8). CHECKs on nullable JSON columns accept NULL explicitly
  // (PRAGMA integrity_check on SQLite 3.40 reports `CHECK (json_valid(x))` rows with x NULL);
  // 'preparing' rows exist before their candidate commit; experiment kinds, seeds, stacking,
  // decision figures; the branch-move journal; measured noise.
  (db) => {
    rewriteTableSql(db, 'experiments', (sql) =>
      sql
        .replace(/CHECK \(json_valid\((\w+)\)\)/g, (_all, column: string) => `CHECK (${column} IS NULL OR json_valid(${column}))`)
        .replace(/CHECK \(status IN \([^)]*\)\)/, `CHECK (status IN (${EXPERIMENT_STATUSES.map((s) => `'${s}'`).join(', ')}))`),
    );
    db.exec(`
      ALTER TABLE experiments ADD COLUMN kind TEXT NOT NULL DEFAULT 'candidate' CHECK (kind IN ('candidate', 'noise', 'confirm'));
      ALTER TABLE experiments ADD COLUMN stacked_on INTEGER REFERENCES experiments (id);
      ALTER TABLE experiments ADD COLUMN confirms INTEGER REFERENCES experiments (id);
      ALTER TABLE experiments ADD COLUMN noise_id INTEGER;
      ALTER TABLE experiments ADD COLUMN change_kind TEXT CHECK (change_kind IS NULL OR change_kind IN ('code', 'seed_only', 'none'));
      ALTER TABLE experiments ADD COLUMN decision_figures TEXT CHECK (decision_figures IS NULL OR json_valid(decision_figures));
      ALTER TABLE experiments ADD COLUMN verdict TEXT CHECK (verdict IS NULL OR verdict IN ('keep', 'discard', 'inconclusive'));
      ALTER TABLE experiments ADD COLUMN undone_by INTEGER;
      CREATE INDEX experiments_confirms ON experiments (confirms);
      ALTER TABLE sessions ADD COLUMN start_from TEXT;

      -- Every branch move (keep, undo) is journalled: the intent row is written before the ref
      -- moves and completed with the decision in one transaction; a server that starts finds
      -- intents a killed one left and repairs them from the ref.
      CREATE TABLE branch_moves (
        id              INTEGER PRIMARY KEY,
        kind            TEXT NOT NULL CHECK (kind IN ('keep', 'undo')),
        session_tag     TEXT NOT NULL REFERENCES sessions (tag),
        branch          TEXT NOT NULL,
        from_commit     TEXT NOT NULL,
        to_commit       TEXT NOT NULL,
        experiment_id   INTEGER REFERENCES experiments (id),
        reason          TEXT NOT NULL,
        figures         TEXT CHECK (figures IS NULL OR json_valid(figures)),
        saved_ref       TEXT,
        state           TEXT NOT NULL CHECK (state IN ('intent', 'done', 'abandoned')),
        created_at      INTEGER NOT NULL,
        finished_at     INTEGER,
        note            TEXT
      ) STRICT;
      CREATE INDEX branch_moves_by_state ON branch_moves (state, id);

      -- Seed-to-seed noise of one commit, per profile and machine: k runs with distinct seeds.
      CREATE TABLE noise_measurements (
        id           INTEGER PRIMARY KEY,
        session_tag  TEXT NOT NULL REFERENCES sessions (tag),
        profile      TEXT NOT NULL,
        machine      TEXT NOT NULL,
        commit_sha   TEXT NOT NULL,
        k            INTEGER NOT NULL CHECK (k >= 2),
        state        TEXT NOT NULL CHECK (state IN ('measuring', 'done', 'failed')),
        runs         INTEGER,
        mean         REAL,
        sigma        REAL,
        mad          REAL,
        values_json  TEXT CHECK (values_json IS NULL OR json_valid(values_json)),
        created_at   INTEGER NOT NULL,
        finished_at  INTEGER,
        note         TEXT
      ) STRICT;
      CREATE INDEX noise_by_machine ON noise_measurements (profile, machine, state, id);
    `);
  },
  // 5: parallel research (issue 10): the agent that proposed each experiment.
  `
  ALTER TABLE experiments ADD COLUMN agent TEXT;
  CREATE INDEX experiments_by_agent ON experiments (agent, id);
  `,
];

/**
 * SQLite cannot alter a CHECK constraint: the experiments table is rebuilt from its own stored
 * definition with the status list widened to EXPERIMENT_STATUSES, every column (whatever other
 * migrations added) and row kept, indexes recreated.
 */
function widenStatusCheck(db: Database.Database): void {
  const table = db.prepare(`SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'experiments'`).get() as { sql: string };
  const statuses = EXPERIMENT_STATUSES.map((status) => `'${status}'`).join(', ');
  const check = /CHECK \(status IN \(([^)]*)\)\)/;
  if (!check.test(table.sql)) throw new StoreError('invalid_state', 'the experiments table has no status CHECK to widen');
  const widened = table.sql.replace(check, `CHECK (status IN (${statuses}))`);
  const indexes = (db.prepare(`SELECT sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'experiments' AND sql IS NOT NULL`).all() as { sql: string }[]).map((row) => row.sql);
  const triggers = (db.prepare(`SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'experiments'`).all() as { sql: string }[]).map((row) => row.sql);
  const columns = (db.prepare(`SELECT name FROM pragma_table_info('experiments')`).all() as { name: string }[]).map((row) => `"${row.name}"`).join(', ');
  // Renaming first repoints the table's own rebase_of reference at the old copy, so dropping it
  // later checks nothing against the new table.
  db.exec('ALTER TABLE experiments RENAME TO experiments_before_v3');
  db.exec(widened);
  db.exec(`INSERT INTO experiments (${columns}) SELECT ${columns} FROM experiments_before_v3`);
  db.exec('DROP TABLE experiments_before_v3');
  for (const sql of [...indexes, ...triggers]) db.exec(sql);
  const broken = db.prepare('PRAGMA foreign_key_check').all();
  if (broken.length > 0) throw new StoreError('invalid_state', `rebuilding experiments broke ${broken.length} foreign key(s)`);
}

/**
 * Loosens or widens a table's CHECK constraints in place by editing its CREATE statement (the
 * documented writable_schema procedure; valid only when every existing row satisfies the new
 * text, which holds for constraints that only accept more). Bumps schema_version so every
 * connection re-reads the schema.
 */
function rewriteTableSql(db: Database.Database, table: string, edit: (sql: string) => string): void {
  const row = db.prepare(`SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?`).get(table) as { sql: string } | undefined;
  if (!row) throw new Error(`no table ${table} to migrate`);
  const sql = edit(row.sql);
  if (sql === row.sql) return;
  const version = db.pragma('schema_version', { simple: true }) as number;
  db.unsafeMode(true);
  try {
    db.pragma('writable_schema = ON');
    db.prepare(`UPDATE sqlite_schema SET sql = ? WHERE type = 'table' AND name = ?`).run(sql, table);
    db.pragma(`schema_version = ${version + 1}`);
    db.pragma('writable_schema = OFF');
  } finally {
    db.unsafeMode(false);
  }
}

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
  sandboxed: number | null;
  startup_seconds: number | null;
  export_seconds: number | null;
  cpu_seconds: number | null;
  tokens_served: number | null;
  eval_seconds: number | null;
  seed: number | null;
  kind: ExperimentKind;
  stacked_on: number | null;
  confirms: number | null;
  noise_id: number | null;
  change_kind: ChangeKind | null;
  decision_figures: string | null;
  verdict: 'keep' | 'discard' | 'inconclusive' | null;
  undone_by: number | null;
  agent: string | null;
}

interface SessionRecord {
  start_from: string | null;
  tag: string;
  branch: string;
  base_commit: string;
  created_at: number;
  mcp_session_id: string | null;
  client_name: string | null;
  client_version: string | null;
}

type SqlValue = string | number | null;

const UNFINISHED = "('preparing', 'queued', 'running')";

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

  /** Whether a table has a column (columns added by later migrations of other features). */
  hasColumn(table: string, column: string): boolean {
    const key = `${table}.${column}`;
    let known = this.columns.get(key);
    if (known === undefined) {
      known = (this.db.prepare(`SELECT name FROM pragma_table_info(?)`).all(table) as { name: string }[]).some((c) => c.name === column);
      this.columns.set(key, known);
    }
    return known;
  }

  private readonly columns = new Map<string, boolean>();

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
          `INSERT INTO sessions (tag, branch, base_commit, created_at, mcp_session_id, client_name, client_version, start_from)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(
          session.tag,
          session.branch,
          session.baseCommit,
          session.createdAt ?? Date.now(),
          session.mcpSessionId ?? null,
          session.clientName ?? null,
          session.clientVersion ?? null,
          session.startFrom ?? null,
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
                                      error, queued_at, finished_at, duration_ms, mcp_session_id, client_name, train_hash,
                                      kind, seed, stacked_on, confirms, noise_id, change_kind, agent)
             VALUES (@sessionTag, @description, @status, @parentCommit, @candidateCommit, @rebaseOf,
                     @error, @queuedAt, @finishedAt, @durationMs, @mcpSessionId, @clientName, @trainHash,
                     @kind, @seed, @stackedOn, @confirms, @noiseId, @changeKind, @agent)`,
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
            agent: input.agent ?? null,
            trainHash: input.trainHash ?? null,
            kind: input.kind ?? 'candidate',
            seed: input.seed ?? null,
            stackedOn: input.stackedOn ?? null,
            confirms: input.confirms ?? null,
            noiseId: input.noiseId ?? null,
            changeKind: input.changeKind ?? null,
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
             result_path = COALESCE(@resultPath, result_path),
             status = 'queued'
         WHERE id = @id AND status IN ('preparing', 'queued')`,
      )
      .run({ id, candidateCommit: candidate.candidateCommit ?? null, logPath: candidate.logPath ?? null, resultPath: candidate.resultPath ?? null });
    if (changed.changes === 0) throw this.stateError(id, 'preparing or queued');
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
    if (changed.changes === 0) {
      // Cancelled while starting: the runner's late pid report is not an error.
      if (this.getExperiment(id)?.status === 'cancelled') return this.getExperiment(id)!;
      throw this.stateError(id, 'queued or running');
    }
    return this.getExperiment(id)!;
  }

  /**
   * Running -> queued again, for a run its slot failed (src/core/slot-health.ts): it keeps its id,
   * its commit and its seed (so a retry is the same run, not a second draw), and waits for a slot.
   */
  requeue(id: number, seed: number | null): Experiment {
    const changed = this.prepare(
      `UPDATE experiments SET status = 'queued', slot = NULL, pid = NULL, started_at = NULL, progress = NULL, seed = COALESCE(@seed, seed)
         WHERE id = @id AND status = 'running'`,
    ).run({ id, seed });
    if (changed.changes === 0) throw this.stateError(id, 'running');
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
             eval_tokens = @evalTokens, eval_bytes = @evalBytes,
             sandboxed = @sandboxed, startup_seconds = @startupSeconds, export_seconds = @exportSeconds,
             cpu_seconds = @cpuSeconds, tokens_served = @tokensServed, eval_seconds = @evalSeconds, seed = @seed
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
        sandboxed: run.sandboxed === undefined || run.sandboxed === null ? null : run.sandboxed ? 1 : 0,
        startupSeconds: finiteOrNull(run.startupSeconds),
        exportSeconds: finiteOrNull(run.exportSeconds),
        cpuSeconds: finiteOrNull(run.cpuSeconds),
        tokensServed: integerOrNull(run.tokensServed),
        evalSeconds: finiteOrNull(run.evalSeconds),
        seed: integerOrNull(run.seed),
      });
    if (changed.changes === 0) throw this.stateError(id, 'queued or running');
    return this.getExperiment(id)!;
  }

  /**
   * Records keep or discard once; decisions are final because the branch moves with them. Keep
   * needs a success; discard needs any finished experiment.
   */
  setDecision(id: number, decision: Decision, reason: string, decidedAt: number = Date.now(), figures?: Record<string, unknown> | null): Experiment {
    const changed = this.prepare(
        `UPDATE experiments SET decision = @decision, decision_reason = @reason, decided_at = @decidedAt,
                verdict = @decision, decision_figures = COALESCE(@figures, decision_figures)
         WHERE id = @id AND decision IS NULL AND status NOT IN ${UNFINISHED}
           AND (@decision = 'discard' OR status = 'succeeded')`,
      )
      .run({ id, decision, reason, decidedAt, figures: figures ? JSON.stringify(figures) : null });
    if (changed.changes === 0) {
      const experiment = this.getExperiment(id);
      if (!experiment) throw new StoreError('not_found', `no experiment ${id}`);
      if (experiment.decision) throw new StoreError('invalid_state', `experiment ${id} was already decided: ${experiment.decision}`);
      throw new StoreError('invalid_state', `experiment ${id} is ${experiment.status}; it cannot be marked ${decision}`);
    }
    return this.getExperiment(id)!;
  }

  /** An auto verdict that decided nothing (inconclusive), with its figures; the experiment stays undecided. */
  setVerdict(id: number, verdict: 'inconclusive', reason: string, figures: Record<string, unknown>): Experiment {
    this.prepare(`UPDATE experiments SET verdict = ?, decision_reason = ?, decision_figures = ? WHERE id = ? AND decision IS NULL`).run(
      verdict,
      reason,
      JSON.stringify(figures),
      id,
    );
    return this.getExperiment(id)!;
  }

  /** A row being prepared when its server died: never committed, so it never ran. */
  abandonPreparing(id: number, error: string, now: number = Date.now()): void {
    this.prepare(`UPDATE experiments SET status = 'cancelled', error = ?, finished_at = ? WHERE id = ? AND status = 'preparing'`).run(error, now, id);
  }

  // ---- branch moves (journal) ----------------------------------------------------------------

  beginMove(move: Omit<BranchMove, 'id' | 'state' | 'createdAt' | 'finishedAt' | 'note'>): BranchMove {
    const id = Number(
      this.prepare(
        `INSERT INTO branch_moves (kind, session_tag, branch, from_commit, to_commit, experiment_id, reason, figures, saved_ref, state, created_at)
         VALUES (@kind, @sessionTag, @branch, @fromCommit, @toCommit, @experimentId, @reason, @figures, @savedRef, 'intent', @now)`,
      ).run({
        kind: move.kind,
        sessionTag: move.sessionTag,
        branch: move.branch,
        fromCommit: move.fromCommit,
        toCommit: move.toCommit,
        experimentId: move.experimentId ?? null,
        reason: move.reason,
        figures: move.figures ? JSON.stringify(move.figures) : null,
        savedRef: move.savedRef ?? null,
        now: Date.now(),
      }).lastInsertRowid,
    );
    return this.getMove(id)!;
  }

  getMove(id: number): BranchMove | undefined {
    const row = this.prepare<[number], BranchMoveRecord>('SELECT * FROM branch_moves WHERE id = ?').get(id);
    return row && toMove(row);
  }

  listMoves(query: { state?: BranchMove['state']; session?: string } = {}): BranchMove[] {
    return this.prepare<{ state: string | null; session: string | null }, BranchMoveRecord>(
      'SELECT * FROM branch_moves WHERE (@state IS NULL OR state = @state) AND (@session IS NULL OR session_tag = @session) ORDER BY id',
    )
      .all({ state: query.state ?? null, session: query.session ?? null })
      .map(toMove);
  }

  /**
   * Completes a move after the ref moved: for a keep, the decision is written in the same
   * transaction; for an undo, the kept experiments it took off the branch are marked.
   */
  completeMove(id: number, undone: number[] = [], now: number = Date.now()): void {
    this.db
      .transaction(() => {
        const move = this.getMove(id);
        if (!move || move.state !== 'intent') return;
        if (move.kind === 'keep' && move.experimentId !== null) {
          const experiment = this.getExperiment(move.experimentId);
          if (experiment && experiment.decision === null) this.setDecision(move.experimentId, 'keep', move.reason, now, move.figures);
        }
        const mark = this.prepare('UPDATE experiments SET undone_by = ? WHERE id = ? AND undone_by IS NULL');
        for (const experimentId of undone) mark.run(id, experimentId);
        this.prepare(`UPDATE branch_moves SET state = 'done', finished_at = ? WHERE id = ?`).run(now, id);
      })
      .immediate();
  }

  abandonMove(id: number, note: string, now: number = Date.now()): void {
    this.prepare(`UPDATE branch_moves SET state = 'abandoned', finished_at = ?, note = ? WHERE id = ? AND state = 'intent'`).run(now, note, id);
  }

  // ---- noise ---------------------------------------------------------------------------------

  createNoise(input: { sessionTag: string; profile: string; machine: string; commit: string; k: number }): NoiseMeasurement {
    const id = Number(
      this.prepare(
        `INSERT INTO noise_measurements (session_tag, profile, machine, commit_sha, k, state, created_at)
         VALUES (?, ?, ?, ?, ?, 'measuring', ?)`,
      ).run(input.sessionTag, input.profile, input.machine, input.commit, input.k, Date.now()).lastInsertRowid,
    );
    return this.getNoise(id)!;
  }

  getNoise(id: number): NoiseMeasurement | undefined {
    const row = this.prepare<[number], NoiseRecord>('SELECT * FROM noise_measurements WHERE id = ?').get(id);
    return row && toNoise(row);
  }

  finishNoise(id: number, result: { state: 'done' | 'failed'; runs: number; mean?: number; sigma?: number; mad?: number; values: number[]; note?: string }): NoiseMeasurement {
    this.prepare(
      `UPDATE noise_measurements SET state = @state, runs = @runs, mean = @mean, sigma = @sigma, mad = @mad,
              values_json = @values, finished_at = @now, note = @note
        WHERE id = @id AND state = 'measuring'`,
    ).run({
      id,
      state: result.state,
      runs: result.runs,
      mean: finiteOrNull(result.mean),
      sigma: finiteOrNull(result.sigma),
      mad: finiteOrNull(result.mad),
      values: JSON.stringify(result.values),
      now: Date.now(),
      note: result.note ?? null,
    });
    return this.getNoise(id)!;
  }

  /** The latest measurement for a profile on a machine (done, or still measuring when `measuring`). */
  latestNoise(profile: string, machine: string, state: NoiseMeasurement['state'] = 'done'): NoiseMeasurement | undefined {
    return this.recentNoise(profile, machine, 1, state)[0];
  }

  /** The newest measurements of a profile and machine in a state (finished by default), newest first. */
  recentNoise(profile: string, machine: string, limit: number, state: NoiseMeasurement['state'] = 'done'): NoiseMeasurement[] {
    return this.prepare<[string, string, string, number], NoiseRecord>(
      'SELECT * FROM noise_measurements WHERE profile = ? AND machine = ? AND state = ? ORDER BY id DESC LIMIT ?',
    )
      .all(profile, machine, state, limit)
      .map(toNoise);
  }

  listNoise(): NoiseMeasurement[] {
    return this.prepare<[], NoiseRecord>('SELECT * FROM noise_measurements ORDER BY id').all().map(toNoise);
  }

  experimentsOfNoise(noiseId: number): Experiment[] {
    return this.prepare<[number], ExperimentRecord>('SELECT * FROM experiments WHERE noise_id = ? ORDER BY id').all(noiseId).map(toExperiment);
  }

  confirmationsOf(candidateId: number): Experiment[] {
    return this.prepare<[number], ExperimentRecord>('SELECT * FROM experiments WHERE confirms = ? ORDER BY id').all(candidateId).map(toExperiment);
  }

  /** Succeeded runs of one train.py text in a session (any kind): the measured values of that program. */
  runsOfProgram(session: string, trainHash: string): Experiment[] {
    return this.prepare<[string, string], ExperimentRecord>(
      `SELECT * FROM experiments WHERE session_tag = ? AND train_hash = ? AND status = 'succeeded' ORDER BY id`,
    )
      .all(session, trainHash)
      .map(toExperiment);
  }

  /**
   * At server start: experiments left 'running' by a server that died are marked crashed (their
   * processes were not watched to the end, so no result of theirs is trusted), except those in
   * `stillRunning` (Slurm runs whose jobs the new server follows on). Returns the crashed ones and
   * the queued ones (FIFO) for the caller to run or cancel.
   */
  reconcileOnStart(now: number = Date.now(), causes: Map<number, string> = new Map(), stillRunning: ReadonlySet<number> = new Set()): { interrupted: Experiment[]; queued: Experiment[] } {
    return this.db
      .transaction(() => {
        const running = this.listExperiments({ status: 'running', order: 'id', ascending: true }).filter((experiment) => !stillRunning.has(experiment.id));
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
              causes.get(experiment.id) ??
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
  /** The oldest queued experiment ready to run, passing over those the predicate holds back. */
  nextQueued(held: (experiment: Experiment) => boolean = () => false): Experiment | undefined {
    const records = this.prepare<[], ExperimentRecord>(
      `SELECT * FROM experiments WHERE status = 'queued' AND candidate_commit IS NOT NULL ORDER BY id`,
    ).all();
    for (const record of records) {
      const experiment = toExperiment(record);
      if (!held(experiment)) return experiment;
    }
    return undefined;
  }

  /** Candidates of a session that ran (or will run) exactly this train.py from this parent. */
  candidatesOfProgram(sessionTag: string, parentCommit: string, trainHash: string): Experiment[] {
    return this.prepare<[string, string, string], ExperimentRecord>(
      `SELECT * FROM experiments WHERE session_tag = ? AND train_hash = ? AND parent_commit = ? AND kind = 'candidate'
         AND status <> 'rejected' ORDER BY id`,
    )
      .all(sessionTag, trainHash, parentCommit)
      .map(toExperiment);
  }

  /** The latest finished candidates an agent proposed (newest first), cancelled ones left out. */
  recentFinishedOf(agent: string, limit: number): Experiment[] {
    return this.prepare<[string, number], ExperimentRecord>(
      `SELECT * FROM experiments WHERE agent = ? AND kind = 'candidate'
         AND status IN ('succeeded', 'crashed', 'timed_out', 'over_budget') ORDER BY id DESC LIMIT ?`,
    )
      .all(agent, limit)
      .map(toExperiment);
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
      const migration = MIGRATIONS[version];
      if (typeof migration === 'string') db.exec(migration);
      else migration(db);
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
    startupSeconds: record.startup_seconds,
    exportSeconds: record.export_seconds,
    cpuSeconds: record.cpu_seconds,
    tokensServed: record.tokens_served,
    evalSeconds: record.eval_seconds,
    seed: record.seed,
    sandboxed: record.sandboxed === null ? null : record.sandboxed === 1,
    kind: record.kind ?? 'candidate',
    stackedOn: record.stacked_on ?? null,
    confirms: record.confirms ?? null,
    noiseId: record.noise_id ?? null,
    changeKind: record.change_kind ?? null,
    decisionFigures: record.decision_figures ? (JSON.parse(record.decision_figures) as Record<string, unknown>) : null,
    verdict: record.verdict ?? null,
    undoneBy: record.undone_by ?? null,
    agent: record.agent ?? null,
  };
}

function toSession(record: SessionRecord): Session {
  return {
    tag: record.tag,
    branch: record.branch,
    baseCommit: record.base_commit,
    startFrom: record.start_from ?? null,
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
