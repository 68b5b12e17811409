/**
 * What the red-team suite observes from outside a run: a snapshot of everything in a workspace a
 * run must not change, marker files and processes, and listeners that record connections.
 */
import Database from 'better-sqlite3';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join, relative } from 'node:path';

const sha = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');

function git(workspace: string, args: string[]): string {
  // Never run anything the workspace's .git configures (hooks, fsmonitor) from the observer either.
  return execFileSync('git', ['-c', 'core.fsmonitor=false', '-c', 'core.hooksPath=/dev/null', ...args], {
    cwd: workspace,
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
}

/** Every regular file under root (relative path -> sha256), symlinks as "link:<target>". */
function hashTree(root: string, skip: (rel: string) => boolean = () => false): Map<string, string> {
  const out = new Map<string, string>();
  if (!existsSync(root)) return out;
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      const rel = relative(root, path);
      if (skip(rel)) continue;
      const st = lstatSync(path);
      if (st.isSymbolicLink()) out.set(rel, `link:${readlinkSync(path)}`);
      else if (st.isDirectory()) walk(path);
      else if (st.isFile()) out.set(rel, sha(readFileSync(path)));
      else out.set(rel, `special:${st.mode}`);
    }
  };
  walk(root);
  return out;
}

export interface Snapshot {
  refs: Map<string, string>;
  /** .git files other than objects, refs, logs, the index and transient ones: hooks, config, info, HEAD... */
  gitFiles: Map<string, string>;
  /** The working tree outside .git and .autoresearch. */
  treeFiles: Map<string, string>;
  /** .autoresearch without the database files, the lock and transient worktrees. */
  stateFiles: Map<string, string>;
  /** Contents of append-only files in .autoresearch (audit anchors): they may only grow. */
  appendOnly: Map<string, Buffer>;
  dataFiles: Map<string, string>;
  /** table -> JSON of every row. */
  rows: Map<string, Set<string>>;
  objects: Set<string>;
}

const GIT_TRANSIENT = /^(objects|refs|logs|worktrees)(\/|$)|^(index|packed-refs|ORIG_HEAD|FETCH_HEAD|COMMIT_EDITMSG|gc\.log|AUTO_MERGE)$|\.lock$/;
const STATE_TRANSIENT = /^(state\.db(-wal|-shm|-journal)?|server\.pid|worktrees(\/.*)?|standby(\/.*)?)$/;
/** Files beside the database that only ever grow (an audit head anchored outside the database). */
const APPEND_ONLY = /^[^/]*(audit|anchor|chain)[^/]*$/i;

export function takeSnapshot(workspace: string, dataDir: string): Snapshot {
  const refs = new Map<string, string>();
  for (const line of git(workspace, ['for-each-ref', '--format=%(refname) %(objectname)']).trim().split('\n')) {
    if (!line) continue;
    const [name, value] = line.split(' ');
    refs.set(name, value);
  }
  refs.set('HEAD', readFileSync(join(workspace, '.git', 'HEAD'), 'utf8').trim());
  const state = join(workspace, '.autoresearch');
  const stateFiles = hashTree(state, (rel) => STATE_TRANSIENT.test(rel));
  const appendOnly = new Map<string, Buffer>();
  for (const rel of stateFiles.keys()) if (APPEND_ONLY.test(rel)) appendOnly.set(rel, readFileSync(join(state, rel)));
  const rows = new Map<string, Set<string>>();
  const db = new Database(join(state, 'state.db'), { readonly: true, fileMustExist: true });
  try {
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").all() as { name: string }[];
    for (const { name } of tables) {
      rows.set(name, new Set((db.prepare(`SELECT * FROM "${name}"`).all() as object[]).map((r) => JSON.stringify(r))));
    }
  } finally {
    db.close();
  }
  const objects = new Set(
    git(workspace, ['cat-file', '--batch-all-objects', '--batch-check=%(objectname)'])
      .trim()
      .split('\n')
      .filter(Boolean),
  );
  return {
    refs,
    gitFiles: hashTree(join(workspace, '.git'), (rel) => GIT_TRANSIENT.test(rel)),
    treeFiles: hashTree(workspace, (rel) => rel === '.git' || rel === '.autoresearch'),
    stateFiles,
    appendOnly,
    dataFiles: hashTree(dataDir),
    rows,
    objects,
  };
}

function diffMaps(what: string, before: Map<string, string>, after: Map<string, string>, allowNew: (key: string) => boolean = () => false): string[] {
  const problems: string[] = [];
  for (const [key, value] of before) {
    if (!after.has(key)) problems.push(`${what}: ${key} was removed`);
    else if (after.get(key) !== value) problems.push(`${what}: ${key} changed`);
  }
  for (const key of after.keys()) if (!before.has(key) && !allowNew(key)) problems.push(`${what}: ${key} is new`);
  return problems;
}

/**
 * What changed between two snapshots that the runs of these experiments (the variants that ran
 * side by side; none: no run was created) may not change: their own rows, run folders and
 * candidate/discarded refs are allowed.
 */
export function snapshotProblems(workspace: string, before: Snapshot, after: Snapshot, experimentIds: number[] = []): string[] {
  const own = new Set(experimentIds.map(String));
  const ownRef = (ref: string) => own.has(/^refs\/autoresearch\/(?:experiments|discarded)\/(\d+)$/.exec(ref)?.[1] ?? '');
  const ownRun = (rel: string) => own.has(/^runs\/(\d+)(?:\/|$)/.exec(rel)?.[1] ?? '');
  const problems = [
    ...diffMaps('git ref', before.refs, after.refs, ownRef),
    ...diffMaps('.git file', before.gitFiles, after.gitFiles),
    ...diffMaps('working tree', before.treeFiles, after.treeFiles),
    ...diffMaps('data dir', before.dataFiles, after.dataFiles),
  ];
  const appendOnly = (rel: string) => APPEND_ONLY.test(rel);
  const stateBefore = new Map([...before.stateFiles].filter(([rel]) => !appendOnly(rel)));
  const stateAfter = new Map([...after.stateFiles].filter(([rel]) => !appendOnly(rel)));
  problems.push(...diffMaps('.autoresearch', stateBefore, stateAfter, ownRun));
  for (const [rel, content] of before.appendOnly) {
    const now = after.appendOnly.get(rel);
    if (!now) problems.push(`.autoresearch: ${rel} (append-only) was removed`);
    else if (now.length < content.length || !now.subarray(0, content.length).equals(content)) problems.push(`.autoresearch: ${rel} (append-only) was rewritten`);
  }
  for (const [table, rows] of before.rows) {
    const now = after.rows.get(table);
    if (!now) {
      problems.push(`state.db: table ${table} is gone`);
      continue;
    }
    for (const row of rows) {
      if (now.has(row)) continue;
      const parsed = JSON.parse(row) as Record<string, unknown>;
      const mine = (table === 'experiments' && own.has(String(parsed.id))) || own.has(String(parsed.experiment_id));
      if (!mine) problems.push(`state.db: a row of ${table} changed or vanished: ${row.slice(0, 200)}`);
    }
  }
  const newObjects = [...after.objects].filter((o) => !before.objects.has(o));
  if (newObjects.length > 0) {
    const reachable = new Set<string>();
    for (const [ref, value] of after.refs) {
      if (!ownRef(ref)) continue;
      for (const line of git(workspace, ['rev-list', '--objects', value]).trim().split('\n')) reachable.add(line.split(' ')[0]);
    }
    const stray = newObjects.filter((o) => !reachable.has(o));
    if (stray.length > 0) problems.push(`git: ${stray.length} new object(s) not reachable from this experiment's ref, e.g. ${stray.slice(0, 3).join(', ')}`);
  }
  return problems;
}

export interface MarkerRoot {
  path: string;
  /** Also look inside files (else names only). */
  contents: boolean;
  maxDepth: number;
  /** Relative paths (prefixes) not to look into. */
  exclude?: string[];
  /** Relative paths (prefixes) whose files are checked by name only: they hold bytes the run sent on purpose. */
  namesOnly?: string[];
}

/** Files whose name or content holds a marker. */
export function findMarkers(markers: string[], roots: MarkerRoot[]): string[] {
  const hits: string[] = [];
  const needles = markers.map((m) => Buffer.from(m));
  for (const root of roots) {
    if (!existsSync(root.path)) continue;
    const walk = (dir: string, depth: number) => {
      let names: string[];
      try {
        names = readdirSync(dir);
      } catch {
        return;
      }
      for (const name of names) {
        const path = join(dir, name);
        const rel = relative(root.path, path);
        if (root.exclude?.some((e) => rel === e || rel.startsWith(e + '/'))) continue;
        const named = markers.find((m) => name.includes(m));
        if (named) hits.push(`${path} (name holds ${named})`);
        let st;
        try {
          st = lstatSync(path);
        } catch {
          continue;
        }
        if (st.isDirectory()) {
          if (depth < root.maxDepth) walk(path, depth + 1);
        } else if (root.contents && st.isFile() && st.size < 64 << 20 && !root.namesOnly?.some((e) => rel === e || rel.startsWith(e + '/'))) {
          let data: Buffer;
          try {
            data = readFileSync(path);
          } catch {
            continue;
          }
          needles.forEach((needle, i) => data.includes(needle) && hits.push(`${path} (content holds ${markers[i]})`));
        }
      }
    };
    walk(root.path, 1);
  }
  return hits;
}

/** Processes whose command line or name holds a marker (the variants name their children so). */
export function findMarkedProcesses(markers: string[]): string[] {
  const hits: string[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    if (Number(pid) === process.pid) continue;
    let cmdline = '';
    let comm = '';
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
      comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      continue;
    }
    const marker = markers.find((m) => cmdline.includes(m) || comm.includes(m));
    if (marker) hits.push(`pid ${pid} (${comm}): ${cmdline.slice(0, 200)}`);
  }
  return hits;
}

export interface Listeners {
  port: number;
  abstractSocket: string;
  /** One line per connection and per chunk received. */
  events: string[];
  close(): Promise<void>;
}

/** A TCP listener on 127.0.0.1 (and ::1 on the same port when it can) and an abstract unix socket. */
export async function startListeners(abstractSocket: string): Promise<Listeners> {
  const events: string[] = [];
  const servers: Server[] = [];
  const sockets = new Set<Socket>();
  const make = (label: string) => {
    const server = createServer((socket) => {
      sockets.add(socket);
      events.push(`${label}: connection from ${socket.remoteAddress ?? 'unix'}:${socket.remotePort ?? ''}`);
      socket.on('data', (chunk) => events.push(`${label}: ${JSON.stringify(chunk.toString('latin1').slice(0, 200))}`));
      socket.on('error', () => undefined);
      socket.on('close', () => sockets.delete(socket));
      socket.end();
    });
    server.on('error', () => undefined);
    servers.push(server);
    return server;
  };
  const tcp = make('tcp 127.0.0.1');
  await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
  const port = (tcp.address() as { port: number }).port;
  const six = make('tcp ::1');
  await new Promise<void>((resolve) => {
    six.once('error', () => resolve());
    six.listen(port, '::1', resolve);
  });
  const unix = make('abstract unix');
  await new Promise<void>((resolve, reject) => {
    unix.once('error', reject);
    unix.listen('\0' + abstractSocket, resolve);
  });
  return {
    port,
    abstractSocket,
    events,
    async close() {
      for (const socket of sockets) socket.destroy();
      await Promise.all(servers.map((s) => new Promise<void>((resolve) => (s.listening ? s.close(() => resolve()) : resolve()))));
    },
  };
}
