import Database from 'better-sqlite3';
import { randomInt } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { existsSync, mkdirSync, readFileSync, realpathSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { availableParallelism, hostname } from 'node:os';
import { join } from 'node:path';
import { classifyChange } from './change.js';
import { FUTILITY_SHARE, MAX_CONFIRM_PAIRS, keepRule, noiseStats, pooledSigma, worthConfirming } from './keep-rule.js';
import { UserError } from './errors.js';
import { gpuUsage, type GpuUsage } from './gpus.js';
import { contentHash, FileHashCache, sha256 } from './hashing.js';
import { applySearchReplace, applyUnifiedDiff, checkNoReplacementCharacter, diffStat, unifiedDiff } from './patch.js';
import { CompileCache } from './compile-cache.js';
import { compileCacheDir, harnessDir, runDir, standbyDir, stateDir } from './paths.js';
import { runFolder } from './run-folder.js';
import { checkTrainPy, type Violation } from './rules.js';
import { cpuThreadsPerRun, ProcessRunner, readLogTail, type Budget, type BudgetClock, type RunProgress, type Slot } from './runner.js';
import { recordedPythonProblem } from './python.js';
import { sandboxProblem } from './sandbox.js';
import { deviceFault, drainedMessage, SlotHealth, slotName } from './slot-health.js';
import { cancelRecordedJobs, recordedJobId, restartCause, sharedFolderProblem, slurmProblem, writableProblem, type SlurmOptions } from './slurm.js';
import { isFinishedStatus, Store, type Experiment, type NoiseMeasurement } from './store.js';
import { BASELINE_BRANCH, SESSION_BRANCH_PREFIX, TRAIN_FILE, Workspace, validateSessionTag } from './workspace.js';
import { resultsTsv } from './report.js';

export { UserError };

/** Who is calling, as far as the transport knows; recorded with experiments and decisions. */
export interface Caller {
  transport: 'stdio' | 'http' | 'cli';
  sessionId?: string;
  clientName?: string;
  clientVersion?: string;
}

export interface LabOptions {
  workspace: string;
  /** Slots to run experiments in; default one (CPU, or GPU 0 when CUDA is present). */
  slots?: Slot[];
  /** Hard wall-clock ceiling per run; default 2 x budget + 60 s. */
  ceilingSeconds?: number;
  /**
   * serve (default): this process owns the workspace's queue; it takes the server lock and
   * reconciles what a dead server left behind. inspect: read-only views (status, report, audit)
   * that are safe while a server runs.
   */
  mode?: 'serve' | 'inspect';
  /**
   * Run without bubblewrap (where no sandbox can be made): the same pipeline, results stored
   * with sandboxed = false and shown as unverified. Without it, a server that cannot make a
   * sandbox refuses to start.
   */
  unsandboxed?: boolean;
  /**
   * Run each experiment as a Slurm job (src/core/slurm.ts) instead of local processes; `slots`
   * then bounds how many are submitted at once. `sharedDir`: the folder the cluster's nodes mount
   * at the same path; the workspace and its data must be under it.
   */
  slurm?: SlurmOptions & { sharedDir?: string };
  log?: (message: string) => void;
}

export const MAX_WAIT_SECONDS = 50;

/** What stops a Slurm backend from working here (controller, partition, shared folder), or undefined. */
async function slurmSetupProblem(slurm: SlurmOptions & { sharedDir?: string }, workspace: string, dataDir: string): Promise<string | undefined> {
  const problem = await slurmProblem(slurm);
  if (problem || !slurm.sharedDir) return problem;
  const shared = realpathOr(slurm.sharedDir);
  if (!existsSync(shared)) return `the shared folder ${slurm.sharedDir} (--slurm-shared-dir) does not exist`;
  return (
    sharedFolderProblem(shared, [
      { name: 'run folders', path: join(realpathOr(stateDir(workspace)), 'runs') },
      { name: 'data folder', path: realpathOr(dataDir) },
    ]) ?? (await writableProblem(shared))
  );
}

/** A workspace pinned before runs were sandboxed lacks these; it cannot run the new pipeline. */
const REQUIRED_PINS = ['harness/supervise.py', 'harness/evaluate.py', 'train.bin', 'manifest.json'];

export interface WorkspaceMeta {
  profile: string;
  timeBudget: number;
  dataDir: string;
  python: string;
  constants: Record<string, unknown>;
}

export type DecisionAction = 'keep' | 'discard' | 'auto';

/**
 * The research loop as plain methods: read, patch, run, wait, decide. Knows nothing about MCP;
 * the tools, the CLI and the tests all drive it directly.
 */
/** Audit event names for runs that ended without a result. */
const RUN_EVENTS = { rejected: 'harness_mismatch', timed_out: 'ceiling_kill', over_budget: 'over_budget', crashed: 'run_crashed', cancelled: 'run_cancelled' } as const;

export class Lab extends EventEmitter {
  private readonly running = new Map<number, Promise<void>>();
  private readonly busySlots = new Map<number, number>();
  /** Device faults per slot and the slots drained (for this server's life: a restart tries them again). */
  private readonly health = new SlotHealth();
  /** The slots each experiment failed on for its device: a retry goes elsewhere when it can. */
  private readonly faultedOn = new Map<number, Set<number>>();
  private readonly checkedTexts = new Map<string, Violation[]>();
  private readonly trainPyVersions = new Map<string, string>();
  /** For the status view only; runs always re-hash every byte. */
  private readonly statusHashes = new FileHashCache();
  private mutationChain: Promise<unknown> = Promise.resolve();
  private closed = false;

  private readonly compileCache: CompileCache;

  private constructor(
    readonly workspace: Workspace,
    readonly store: Store,
    readonly meta: WorkspaceMeta,
    readonly runner: ProcessRunner,
    readonly slots: Slot[],
    readonly ceilingSeconds: number,
    private readonly log: (message: string) => void,
    private readonly serving: boolean,
    /** Whether a slot is a device that can be drained; with Slurm it is a share of the cluster, each job on whatever node Slurm picks. */
    private readonly slotsAreDevices: boolean,
  ) {
    super();
    this.compileCache = new CompileCache(compileCacheDir(workspace.dir));
    runner.on('progress', (id: number, progress: RunProgress) => this.emit('progress', id, progress));
  }

  static async open(options: LabOptions): Promise<Lab> {
    const dir = options.workspace;
    const dbPath = join(stateDir(dir), 'state.db');
    if (!existsSync(dbPath)) {
      throw new Error(`${dir} is not an autoresearch workspace (no ${dbPath}). Create one with: autoresearch-mcp init ${dir}`);
    }
    const store = Store.open(dbPath);
    const meta = store.getMeta<WorkspaceMeta>('workspace');
    if (!meta) throw new Error(`${dbPath} has no workspace record; re-create the workspace with autoresearch-mcp init.`);
    const pins = store.getPins();
    const serving = (options.mode ?? 'serve') === 'serve';
    if (serving) {
      const problem =
        REQUIRED_PINS.some((name) => !(name in pins))
          ? `${dir} was created by an older autoresearch-mcp (its harness and training data are not pinned); create a new workspace with: autoresearch-mcp init DIR`
          : ((options.unsandboxed ? undefined : await sandboxProblem()) ??
            (await recordedPythonProblem(meta.python)) ??
            (options.slurm ? await slurmSetupProblem(options.slurm, dir, meta.dataDir) : undefined));
      if (problem) {
        store.close();
        throw new UserError(problem);
      }
    }
    const budget = budgetOf(meta);
    const ceilingSeconds =
      options.ceilingSeconds ??
      Math.ceil(Math.max(2 * meta.timeBudget + 60, budget.timeBudget + budget.slack + budget.startupAllowance + budget.exportAllowance + 60));
    const workspace = new Workspace(dir);
    const slots = options.slots ?? [{ index: 0 }];
    const cpuSlots = slots.filter((slot) => slot.cudaDevices === undefined).length;
    const runner = new ProcessRunner({
      python: meta.python,
      sandbox: options.unsandboxed ? 'none' : 'bwrap',
      dataDir: meta.dataDir,
      harnessDir: harnessDir(dir),
      pins,
      readBlob: (commit, path) => workspace.readFileAt(commit, path),
      budget,
      ceilingSeconds,
      forbidden: [...new Set([dir, stateDir(dir), meta.dataDir].flatMap((path) => [path, realpathOr(path)]))],
      cpuThreads: cpuThreadsPerRun(availableParallelism(), cpuSlots, budget.clock),
      standbyDir: serving ? standbyDir(dir) : undefined,
      slurm: options.slurm,
      compileCache: serving && !options.unsandboxed ? compileCacheDir(dir) : undefined,
    });
    const log = options.log ?? ((message: string) => process.stderr.write(`[autoresearch] ${message}\n`));
    if (serving) {
      try {
        acquireServerLock(dir);
        mkdirSync(compileCacheDir(dir), { recursive: true });
      } catch (error) {
        store.close();
        throw error;
      }
    }
    if (serving && options.unsandboxed) log('running WITHOUT a sandbox (--unsandboxed): results are stored as unverified (sandboxed = 0)');
    const lab = new Lab(workspace, store, meta, runner, slots, ceilingSeconds, log, serving, !options.slurm);
    if (serving) {
      await lab.reconcile(options.slurm !== undefined);
      // Pre-started trainers of a server that was killed died with it; their folders go too.
      rmSync(standbyDir(dir), { recursive: true, force: true });
      for (const slot of slots) runner.prestart(slot);
    }
    return lab;
  }

  /**
   * Repairs what a dead server left behind, before anything new happens: half-done branch moves
   * are completed or abandoned from where the ref actually is; rows still being prepared get
   * their commit if it was written, else are closed; runs left running are marked crashed, except
   * that with Slurm a run whose job was submitted is followed on (re-attached), one per slot, and
   * the jobs of any beyond the slots are cancelled; queued ones run now.
   */
  private async reconcile(slurm: boolean): Promise<void> {
    await this.repairMoves();
    await this.repairPreparing();
    const causes = new Map<number, string>();
    const reattach: { experiment: Experiment; job: string }[] = [];
    const usable = this.usableSlots();
    if (slurm) {
      for (const experiment of this.store.listExperiments({ status: 'running', order: 'id', ascending: true })) {
        const folder = runDir(this.workspace.dir, experiment.id);
        const job = recordedJobId(folder);
        if (job !== undefined && reattach.length < usable.length) {
          reattach.push({ experiment, job });
          continue;
        }
        const found = await cancelRecordedJobs(folder);
        if (found) causes.set(experiment.id, restartCause(found));
      }
    }
    const { interrupted, queued } = this.store.reconcileOnStart(Date.now(), causes, new Set(reattach.map(({ experiment }) => experiment.id)));
    for (const { experiment, job } of reattach) {
      const slot = usable.find((s) => s.index === experiment.slot && !this.busySlots.has(s.index)) ?? usable.find((s) => !this.busySlots.has(s.index)) as Slot;
      const message = `experiment ${experiment.id} was running when the server stopped; its Slurm job ${job} is followed on (re-attached) on slot ${slot.index}`;
      this.store.audit.append({ transport: 'cli', kind: 'event', method: 'reconcile', experimentId: experiment.id, message });
      this.log(message);
      this.startOn(slot, experiment, job);
    }
    for (const experiment of interrupted) {
      const cause = causes.get(experiment.id);
      this.store.audit.append({
        transport: 'cli',
        kind: 'event',
        method: 'reconcile',
        experimentId: experiment.id,
        message: `experiment ${experiment.id} was running when the server stopped; marked crashed${cause ? ` (${cause})` : ''}, log kept at ${experiment.logPath}`,
      });
      if (cause) this.log(`experiment ${experiment.id}: ${cause}`);
    }
    await this.workspace.pruneWorktrees();
    for (const noise of this.store.listNoise().filter((n) => n.state === 'measuring')) this.settleNoise(noise.id);
    if (queued.length > 0) this.log(`re-queued ${queued.length} experiment(s) left queued by a previous server`);
    this.pump();
  }

  /** Journal repair: an intent row means the server died between writing it and completing the move. */
  private async repairMoves(): Promise<void> {
    for (const move of this.store.listMoves({ state: 'intent' })) {
      const at = (await this.workspace.git.raw(['for-each-ref', '--format=%(objectname)', `refs/heads/${move.branch}`])).trim();
      let message: string;
      if (at === move.toCommit) {
        const undone = (move.figures?.undone as number[] | undefined) ?? [];
        this.store.completeMove(move.id, undone);
        if ((await this.currentSessionTag()) === move.sessionTag) {
          const [working, before] = await Promise.all([this.workspace.readTrainPy(), this.workspace.readFileAt(move.fromCommit, TRAIN_FILE)]);
          if (working === before) await this.workspace.writeTrainPy(await this.workspace.readFileAt(move.toCommit, TRAIN_FILE));
        }
        message = `branch ${move.branch} had moved to ${move.toCommit.slice(0, 8)} (${move.kind}${move.experimentId ? ` of experiment ${move.experimentId}` : ''}) when the server stopped; the record was completed`;
      } else if (at === move.fromCommit) {
        this.store.abandonMove(move.id, 'the server stopped before the branch moved; nothing changed');
        message = `a ${move.kind}${move.experimentId ? ` of experiment ${move.experimentId}` : ''} was interrupted before the branch moved; nothing changed${move.kind === 'keep' ? ' (the experiment is still undecided: decide it again)' : ''}`;
      } else {
        this.store.abandonMove(move.id, `branch is at ${at.slice(0, 8) || 'nothing'}, neither the start nor the target of the move`);
        message = `an interrupted ${move.kind} found branch ${move.branch} at ${at.slice(0, 8)}, neither ${move.fromCommit.slice(0, 8)} nor ${move.toCommit.slice(0, 8)}; left as is`;
      }
      this.store.audit.append({ transport: 'cli', kind: 'event', method: 'reconcile', experimentId: move.experimentId ?? undefined, message });
      this.log(message);
    }
  }

  /** Rows inserted before their candidate commit existed: queued if the commit was written, else closed. */
  private async repairPreparing(): Promise<void> {
    const rows = [
      ...this.store.listExperiments({ status: 'preparing', order: 'id', ascending: true }),
      ...this.store.listExperiments({ status: 'queued', order: 'id', ascending: true }).filter((e) => !e.candidateCommit),
    ];
    for (const experiment of rows) {
      const ref = `${EXPERIMENT_REF}${experiment.id}`;
      const commit = (await this.workspace.git.raw(['for-each-ref', '--format=%(objectname)', ref])).trim();
      let parent = '';
      if (commit) parent = (await this.workspace.git.raw(['rev-parse', `${commit}^`]).catch(() => '')).trim();
      if (commit && parent === experiment.parentCommit) {
        const runDir = join(stateDir(this.workspace.dir), 'runs', String(experiment.id));
        this.store.setCandidate(experiment.id, { candidateCommit: commit, logPath: join(runDir, 'run.log'), resultPath: join(runDir, 'result.json') });
        this.log(`experiment ${experiment.id}: its candidate commit was written before the server stopped; queued`);
      } else {
        const error = 'the server stopped while preparing it, before its candidate commit existed; it never ran. Queue it again with run_experiment.';
        if (experiment.status === 'preparing') this.store.abandonPreparing(experiment.id, error);
        else this.store.markFinished(experiment.id, { status: 'cancelled', error });
      }
    }
  }

  private exclusive<T>(work: () => Promise<T>): Promise<T> {
    const next = this.mutationChain.then(work, work);
    this.mutationChain = next.catch(() => undefined);
    return next;
  }

  // ---- reading ------------------------------------------------------------------------------

  async readTrainPy(experimentId?: number): Promise<{ text: string; hash: string; source: string; commit?: string }> {
    if (experimentId === undefined) {
      const text = await this.workspace.readTrainPy();
      return { text, hash: this.rememberTrainPy(text), source: 'working tree' };
    }
    const experiment = this.experiment(experimentId);
    if (!experiment.candidateCommit) throw new UserError(`Experiment ${experimentId} has no commit (it was rejected before committing).`);
    const text = await this.workspace.readFileAt(experiment.candidateCommit, TRAIN_FILE);
    return { text, hash: this.rememberTrainPy(text), source: `experiment ${experimentId}`, commit: experiment.candidateCommit };
  }

  /**
   * The train.py whose content hash is `hash`, if this workspace has had it: one this lab served
   * or wrote, or one committed as an experiment's candidate or parent (newest first). Lets a
   * reader that holds an earlier version ask only for what changed since.
   */
  async trainPyVersion(hash: string): Promise<string | undefined> {
    const known = this.trainPyVersions.get(hash);
    if (known !== undefined) return known;
    const commits = new Set<string>([await this.workspace.headCommit()]);
    for (const e of this.store.listExperiments({ order: 'id', limit: TRAIN_PY_VERSION_SCAN })) {
      if (e.candidateCommit) commits.add(e.candidateCommit);
      commits.add(e.parentCommit);
    }
    for (const commit of commits) {
      const text = await this.workspace.readFileAt(commit, TRAIN_FILE).catch(() => undefined);
      if (text !== undefined && this.rememberTrainPy(text) === hash) return text;
    }
    return undefined;
  }

  private rememberTrainPy(text: string): string {
    const hash = contentHash(text);
    this.trainPyVersions.delete(hash);
    this.trainPyVersions.set(hash, text);
    if (this.trainPyVersions.size > TRAIN_PY_VERSIONS_KEPT) this.trainPyVersions.delete(this.trainPyVersions.keys().next().value as string);
    return hash;
  }

  /** prepare.py and program.md as committed at the branch head (read-only for agents). */
  async readHarnessFile(name: 'prepare.py' | 'program.md'): Promise<string> {
    return this.workspace.readFileAt(await this.workspace.headCommit(), name);
  }

  experiment(id: number): Experiment {
    const experiment = this.store.getExperiment(id);
    if (!experiment) {
      const last = this.store.listExperiments({ order: 'id', limit: 1 })[0];
      throw new UserError(
        `No experiment ${id}. ${last ? `Experiment ids run from 1 to ${last.id}.` : 'No experiments yet: call run_experiment.'} Call get_results to list them.`,
      );
    }
    return experiment;
  }

  runLog(id: number, lines: number): { log: string; path: string } {
    const experiment = this.experiment(id);
    if (!experiment.logPath || !existsSync(experiment.logPath)) {
      return { log: '', path: experiment.logPath ?? '' };
    }
    const tail = readLogTail(experiment.logPath, 256 * 1024).split('\n');
    return { log: tail.slice(-lines - 1).join('\n'), path: experiment.logPath };
  }

  // ---- patching ------------------------------------------------------------------------------

  /**
   * Static rules for a train.py text. The check is a pure function of the text, so results are
   * remembered by content hash: run_experiment after apply_patch does not pay for it twice.
   */
  private async violationsOf(text: string): Promise<Violation[]> {
    const key = sha256(text);
    const known = this.checkedTexts.get(key);
    if (known) return known;
    const violations = await checkTrainPy(text, this.meta.python);
    // A checker that could not run says nothing about the text: never remember that.
    if (!violations.some((v) => v.rule === 'inspector')) {
      this.checkedTexts.set(key, violations);
      if (this.checkedTexts.size > 64) this.checkedTexts.delete(this.checkedTexts.keys().next().value as string);
    }
    return violations;
  }

  /** The experiment whose change the working train.py carries (apply_patch base_experiment), if the file still derives from it. */
  private workingBase(workingText: string): { experimentId: number; hash: string } | undefined {
    const base = this.store.getMeta<{ experimentId: number; hash: string }>(WORKING_BASE_KEY);
    return base && base.hash === contentHash(workingText) ? base : undefined;
  }

  private setWorkingBase(base: { experimentId: number; hash: string } | null): void {
    this.store.setMeta(WORKING_BASE_KEY, base);
  }

  /** An undecided experiment of the current session that a new candidate may be stacked on. */
  private stackBase(id: number, sessionTag: string | undefined, head: string): Experiment {
    const base = this.experiment(id);
    if (base.kind !== 'candidate') throw new UserError(`Experiment ${id} is a ${base.kind} run, not a change; stack on a candidate experiment.`);
    if (base.sessionTag !== sessionTag) {
      throw new UserError(
        `Experiment ${id} belongs to session "${base.sessionTag}", not the current one (${sessionTag ?? 'none'}). Stacking works within a session; ` +
          `switch with start_session({tag: "${base.sessionTag}", resume: true}) or redo the idea here.`,
      );
    }
    if (!base.candidateCommit) throw new UserError(`Experiment ${id} has no commit (${base.status}); nothing to stack on.`);
    if (base.decision === 'discard') {
      throw new UserError(`Experiment ${id} was discarded; stacking on it would bring a discarded change back unmeasured. Patch the head instead.`);
    }
    if (base.decision === 'keep') {
      throw new UserError(
        base.candidateCommit === head
          ? `Experiment ${id} is the head already: patch train.py and run_experiment without base_experiment.`
          : `Experiment ${id} was kept, but the branch has moved since; patch the head instead.`,
      );
    }
    if (['crashed', 'timed_out', 'cancelled', 'rejected'].includes(base.status)) {
      throw new UserError(`Experiment ${id} ${base.status}; stack only on a change that runs. Fix it and run it again first.`);
    }
    return base;
  }

  async applyPatch(input: {
    diff?: string;
    edits?: { search: string; replace: string }[];
    expectedHash?: string;
    dryRun?: boolean;
    baseExperiment?: number;
  }): Promise<{ hash: string; previousHash: string; diff: string; added: number; removed: number; written: boolean; baseExperiment: number | null }> {
    if ((input.diff === undefined) === (input.edits === undefined)) {
      throw new UserError('Pass exactly one of `diff` (a unified diff of train.py) or `edits` (search/replace pairs).');
    }
    return this.exclusive(async () => {
      const working = await this.workspace.readTrainPy();
      let before = working;
      let baseExperiment: number | null = null;
      if (input.baseExperiment !== undefined) {
        const base = this.stackBase(input.baseExperiment, await this.currentSessionTag(), await this.workspace.headCommit());
        const carried = this.workingBase(working);
        before = carried?.experimentId === base.id ? working : await this.workspace.readFileAt(base.candidateCommit as string, TRAIN_FILE);
        baseExperiment = base.id;
      } else {
        baseExperiment = this.workingBase(working)?.experimentId ?? null;
      }
      const previousHash = contentHash(before);
      if (input.expectedHash !== undefined && input.expectedHash !== previousHash) {
        throw new UserError(
          `train.py changed since you read it (expected hash ${input.expectedHash}, now ${previousHash}). Call read_train_py${
            input.baseExperiment !== undefined ? `({experiment_id: ${input.baseExperiment}})` : ''
          } and redo the edit on the current text.`,
        );
      }
      const applied = input.diff !== undefined ? applyUnifiedDiff(before, input.diff) : applySearchReplace(before, input.edits ?? []);
      if (!applied.ok) throw new UserError(applied.error);
      const after = applied.text;
      const replacement = checkNoReplacementCharacter(before, after);
      if (!replacement.ok) throw new UserError(replacement.error);
      const violations = await this.violationsOf(after);
      if (violations.length > 0) {
        throw new UserError(
          `The patched train.py breaks ${violations.length} rule(s); nothing was written:\n` +
            violations.map((v) => `- line ${v.line}: ${v.message}`).join('\n'),
        );
      }
      const stat = diffStat(before, after);
      this.rememberTrainPy(before);
      this.rememberTrainPy(after);
      if (!input.dryRun) {
        await this.workspace.writeTrainPy(after);
        this.setWorkingBase(baseExperiment === null ? null : { experimentId: baseExperiment, hash: contentHash(after) });
      }
      return {
        hash: contentHash(after),
        previousHash,
        diff: unifiedDiff(before, after),
        added: stat.added,
        removed: stat.removed,
        written: !input.dryRun,
        baseExperiment,
      };
    });
  }

  // ---- sessions ------------------------------------------------------------------------------

  /**
   * A new session starts from the baseline commit (default) or from another session's head, and
   * train.py is written from that commit, so its first run measures what git records as its
   * parent. `resume` switches back to an existing session instead (a new conversation).
   */
  async startSession(
    tag: string,
    caller: Caller,
    options: { from?: string; resume?: boolean } = {},
  ): Promise<{ tag: string; branch: string; baseCommit: string; startFrom: string; resumed: boolean; head: string; savedEdits: string | null }> {
    const bad = validateSessionTag(tag);
    if (bad) throw new UserError(bad);
    return this.exclusive(() => (options.resume ? this.resumeSessionLocked(tag) : this.startSessionLocked(tag, caller, options.from ?? 'baseline')));
  }

  private async startSessionLocked(tag: string, caller: Caller, from = 'baseline') {
    if (this.store.getSession(tag) || (await this.workspace.branchExists(SESSION_BRANCH_PREFIX + tag))) {
      throw new UserError(
        `Session "${tag}" already exists (branch ${SESSION_BRANCH_PREFIX}${tag}). To continue it call start_session({tag: "${tag}", resume: true}); to start anew choose a new tag.`,
      );
    }
    let baseCommit: string;
    if (from === 'baseline') {
      baseCommit = (await this.workspace.git.raw(['rev-parse', '--verify', `refs/heads/${BASELINE_BRANCH}`])).trim();
    } else {
      const source = this.store.getSession(from);
      if (!source) {
        const known = this.store.listSessions().map((s) => s.tag);
        throw new UserError(`No session "${from}" to start from. Pass from: "baseline" or one of: ${known.join(', ') || '(no sessions yet)'}.`);
      }
      baseCommit = (await this.workspace.git.raw(['rev-parse', '--verify', `refs/heads/${source.branch}`])).trim();
    }
    const savedEdits = await this.saveUnsavedEdits();
    const branch = await this.workspace.createSessionBranch(tag, baseCommit);
    await this.workspace.writeTrainPy(await this.workspace.readFileAt(baseCommit, TRAIN_FILE));
    this.setWorkingBase(null);
    this.store.createSession({
      tag,
      branch,
      baseCommit,
      startFrom: from,
      mcpSessionId: caller.sessionId,
      clientName: caller.clientName,
      clientVersion: caller.clientVersion,
    });
    return { tag, branch, baseCommit, startFrom: from, resumed: false, head: baseCommit, savedEdits };
  }

  private async resumeSessionLocked(tag: string) {
    const session = this.store.getSession(tag);
    if (!session) {
      const known = this.store.listSessions().map((s) => s.tag);
      throw new UserError(`No session "${tag}" to resume. Sessions: ${known.join(', ') || '(none yet)'}; start one with start_session({tag}).`);
    }
    const current = await this.workspace.currentBranch();
    const head = (await this.workspace.git.raw(['rev-parse', '--verify', `refs/heads/${session.branch}`])).trim();
    let savedEdits: string | null = null;
    if (current !== session.branch) {
      savedEdits = await this.saveUnsavedEdits();
      await this.workspace.git.raw(['symbolic-ref', 'HEAD', `refs/heads/${session.branch}`]);
      await this.workspace.git.raw(['read-tree', 'HEAD']);
      await this.workspace.writeTrainPy(await this.workspace.readFileAt(head, TRAIN_FILE));
      this.setWorkingBase(null);
    }
    return { tag, branch: session.branch, baseCommit: session.baseCommit, startFrom: session.startFrom ?? 'baseline', resumed: true, head, savedEdits };
  }

  /** Edits in train.py that no experiment holds are copied aside before train.py is replaced. */
  private async saveUnsavedEdits(): Promise<string | null> {
    const working = await this.workspace.readTrainPy();
    const head = await this.workspace.readFileAt(await this.workspace.headCommit(), TRAIN_FILE);
    if (working === head) return null;
    const path = join(stateDir(this.workspace.dir), 'saved', `train.py.${Date.now()}`);
    await mkdir(join(stateDir(this.workspace.dir), 'saved'), { recursive: true });
    await writeFile(path, working, 'utf8');
    return path;
  }

  /** The session the working tree is on; starts one named by the date when still on the baseline. */
  private async currentSession(caller: Caller): Promise<{ tag: string; branch: string; started: boolean }> {
    const branch = await this.workspace.currentBranch();
    if (branch.startsWith(SESSION_BRANCH_PREFIX)) {
      return { tag: branch.slice(SESSION_BRANCH_PREFIX.length), branch, started: false };
    }
    const stamp = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
    // A session started implicitly keeps the working train.py: the caller is queueing it.
    const working = await this.workspace.readTrainPy();
    const session = await this.startSessionLocked(`run-${stamp}`, caller);
    await this.workspace.writeTrainPy(working);
    return { tag: session.tag, branch: session.branch, started: true };
  }

  // ---- running -------------------------------------------------------------------------------

  /**
   * Queues the working train.py as a change measured from the head (or, with baseExperiment,
   * from an undecided experiment's commit: stacking). The row exists ('preparing') before its
   * commit, so a crash in between is repaired on start; once queued, train.py returns to the head:
   * the change lives in its commit, and the next idea starts clean.
   */
  async runExperiment(
    input: {
      description: string;
      rebaseOf?: number;
      baseExperiment?: number;
      agent?: string;
      acknowledgeCrashes?: boolean;
      /** The change itself, applied to the head's (or the base experiment's) train.py; the working copy is left alone. */
      change?: { diff?: string; edits?: { search: string; replace: string }[] };
    },
    caller: Caller,
  ): Promise<{
    experiment: Experiment;
    sessionStarted?: string;
    warnings: string[];
    restoredTrainPy: boolean;
    /** Content hash of train.py as it is now (the head's): the next apply_patch's expected_hash. */
    trainPyHash: string;
    stackedOn: number | null;
  }> {
    const description = input.description.trim();
    if (!description) throw new UserError('Give the experiment a short description of what it changes (e.g. "LR 0.04 -> 0.06").');
    if (input.rebaseOf !== undefined && input.baseExperiment !== undefined) {
      throw new UserError('Pass rebase_of (replay an old change onto the head) or base_experiment (stack on an undecided experiment), not both.');
    }
    if (input.change && ((input.change.diff === undefined) === (input.change.edits === undefined) || input.rebaseOf !== undefined)) {
      throw new UserError('With a change in run_experiment pass exactly one of `diff` or `edits`, and no rebase_of. Nothing was queued.');
    }
    const agent = agentName(input.agent, caller);
    return this.exclusive(async () => {
      const session = await this.currentSession(caller);
      const head = await this.workspace.headCommit();
      const warnings: string[] = [];
      this.requireUsableSlot();
      if (input.acknowledgeCrashes) this.acknowledgeCrashes(agent);
      const streak = this.crashStreak(agent);
      if (streak) throw new UserError(crashStreakMessage(agent, streak));
      const working = await this.workspace.readTrainPy();
      const headText = await this.workspace.readFileAt(head, TRAIN_FILE);
      let parent = head;
      let parentText = headText;
      let stackedOn: number | null = null;
      let text: string;
      const carried = input.change ? undefined : this.workingBase(working);
      if (input.change) {
        if (input.baseExperiment !== undefined) {
          const base = this.stackBase(input.baseExperiment, session.tag, head);
          parent = base.candidateCommit as string;
          parentText = await this.workspace.readFileAt(parent, TRAIN_FILE);
          stackedOn = base.id;
        }
        const { diff, edits } = input.change;
        const applied = diff !== undefined ? applyUnifiedDiff(parentText, diff) : applySearchReplace(parentText, edits ?? []);
        if (!applied.ok) {
          throw new UserError(`${applied.error} (the change applies to ${stackedOn ? `experiment ${stackedOn}'s` : "the head's"} train.py; read it with read_train_py). Nothing was queued.`);
        }
        text = applied.text;
      } else if (input.rebaseOf !== undefined) {
        text = await this.rebasedTrainPy(input.rebaseOf, head);
      } else if (input.baseExperiment !== undefined || carried) {
        const baseId = input.baseExperiment ?? (carried as { experimentId: number }).experimentId;
        if (carried && input.baseExperiment !== undefined && carried.experimentId !== input.baseExperiment) {
          throw new UserError(
            `train.py was patched on top of experiment ${carried.experimentId} (apply_patch base_experiment), not ${input.baseExperiment}. ` +
              `Pass base_experiment: ${carried.experimentId}, or start from experiment ${input.baseExperiment} with apply_patch({base_experiment: ${input.baseExperiment}, ...}).`,
          );
        }
        const kept = this.store.getExperiment(baseId);
        if (!input.baseExperiment && kept?.decision === 'keep' && kept.candidateCommit === head) {
          // The experiment this file was stacked on has become the head: an ordinary candidate now.
          text = working;
        } else {
          const base = this.stackBase(baseId, session.tag, head);
          parent = base.candidateCommit as string;
          parentText = await this.workspace.readFileAt(parent, TRAIN_FILE);
          stackedOn = base.id;
          if (carried?.experimentId === base.id) {
            text = working;
          } else {
            // Your edits (head -> working copy) replayed onto the experiment's version.
            const merged = await this.workspace.mergeTrainPy(headText, parentText, working);
            if (merged === undefined) {
              throw new UserError(
                `Your edits to train.py conflict with experiment ${base.id}'s change. Start from its version instead: ` +
                  `read_train_py({experiment_id: ${base.id}}) and apply_patch({base_experiment: ${base.id}, ...}), then run_experiment.`,
              );
            }
            text = merged;
          }
          warnings.push(
            `Stacked on experiment ${base.id} (undecided): this candidate is measured from ${parent.slice(0, 8)}, experiment ${base.id}'s commit. ` +
              `It can only be kept once experiment ${base.id} is kept; if ${base.id} is discarded, re-run this one with rebase_of.`,
          );
        }
      } else {
        text = working;
      }
      const replacement = checkNoReplacementCharacter(parentText, text);
      if (!replacement.ok) throw new UserError(replacement.error);
      // Re-running an unchanged program is a re-measurement, not an idea anyone can claim.
      const twins = text === parentText ? [] : this.store.candidatesOfProgram(session.tag, parent, contentHash(text));
      const claimed = twins.find((e) => !isFinishedStatus(e.status) || (e.status === 'succeeded' && e.decision === null));
      if (claimed) {
        throw new UserError(
          `The same change from the same parent is already experiment ${claimed.id} ("${claimed.description}", ${claimed.status}, proposed by ${claimed.agent ?? 'an earlier client'}): ` +
            `it is claimed, so it is not run twice. Wait for it with get_results({experiment_id: ${claimed.id}, wait_seconds: 45}), or try another idea. train.py is unchanged.`,
        );
      }
      const measured = twins.find((e) => e.decision !== null);
      if (measured) warnings.push(`The same change from the same parent was measured before as experiment ${measured.id}: ${measured.decision} (${measured.decisionReason ?? ''}). This run measures it again.`);
      const queued = await this.queueCandidate({ sessionTag: session.tag, parent, parentText, text, description, rebaseOf: input.rebaseOf, stackedOn, caller, agent });
      warnings.push(...queued.warnings);
      const created = queued.experiment;
      const tree = await this.workspace.workingTreeState();
      if (tree.strayChanges.length > 0) {
        warnings.push(`Files other than train.py differ from the branch and are NOT part of this experiment: ${tree.strayChanges.join(', ')}.`);
      }
      // The change now lives in its commit; the working copy goes back to the head (a change
      // passed to this call never touched it, and edits in progress there stay).
      let restoredTrainPy = false;
      if (!input.change) {
        if ((await this.workspace.readTrainPy()) !== headText) {
          await this.workspace.writeTrainPy(headText);
          restoredTrainPy = true;
        }
        this.setWorkingBase(null);
      }
      this.pump();
      return {
        experiment: this.experiment(created.id),
        sessionStarted: session.started ? session.tag : undefined,
        warnings,
        restoredTrainPy,
        trainPyHash: this.rememberTrainPy(input.change ? working : headText),
        stackedOn,
      };
    });
  }

  /**
   * Records, commits and queues one candidate: `text` measured from `parent`. Refused by the
   * rules, it is recorded as rejected and the error names the lines. Touches no working copy.
   */
  private async queueCandidate(input: {
    sessionTag: string;
    parent: string;
    parentText: string;
    text: string;
    description: string;
    rebaseOf?: number;
    stackedOn?: number | null;
    caller?: Caller;
    agent: string;
  }): Promise<{ experiment: Experiment; warnings: string[] }> {
    const warnings: string[] = [];
    const violations = await this.violationsOf(input.text);
    const base = {
      sessionTag: input.sessionTag,
      trainHash: contentHash(input.text),
      description: input.description,
      parentCommit: input.parent,
      rebaseOf: input.rebaseOf,
      stackedOn: input.stackedOn ?? null,
      mcpSessionId: input.caller?.sessionId,
      clientName: input.caller?.clientName,
      agent: input.agent,
    };
    if (violations.length > 0) {
      const error = violations.map((v) => `line ${v.line}: ${v.message}`).join('; ');
      const rejected = this.store.createExperiment({ ...base, status: 'rejected', error });
      throw new UserError(
        `Experiment ${rejected.id} rejected before running: train.py breaks ${violations.length} rule(s):\n` +
          violations.map((v) => `- line ${v.line}: ${v.message}`).join('\n'),
      );
    }
    const changeKind = await classifyChange(input.parentText, input.text, this.meta.python);
    if (changeKind === 'seed_only') {
      warnings.push('This candidate changes only seeds: it measures noise, never progress, and cannot be kept as a gain. Use measure_noise for noise.');
    } else if (changeKind === 'none' && this.headRuns(input.parent).length > 0) {
      warnings.push('This candidate changes nothing the model or the optimiser sees (same program as its parent): it re-measures the head and cannot be kept as a gain.');
    }
    const created = this.store.createExperiment({ ...base, status: 'preparing', kind: 'candidate', seed: CANDIDATE_SEED, changeKind });
    crashPoint('after_preparing_row');
    let commit: string;
    try {
      commit = await this.workspace.commitCandidate(created.id, input.parent, input.text, `exp ${created.id}: ${input.description}`);
    } catch (error) {
      this.store.abandonPreparing(created.id, `could not commit the candidate: ${(error as Error).message}`);
      this.emit('finished', created.id);
      throw error;
    }
    crashPoint('after_candidate_commit');
    const runDir = join(stateDir(this.workspace.dir), 'runs', String(created.id));
    try {
      this.store.setCandidate(created.id, { candidateCommit: commit, logPath: join(runDir, 'run.log'), resultPath: join(runDir, 'result.json') });
    } catch (error) {
      // Cancelled while it was being prepared: nothing to queue.
      if (!isFinishedStatus(this.experiment(created.id).status)) throw error;
    }
    return { experiment: this.experiment(created.id), warnings };
  }

  /** The change of an experiment replayed onto the current head (three-way merge of train.py). */
  private async rebasedTrainPy(id: number, head: string): Promise<string> {
    const original = this.experiment(id);
    if (!original.candidateCommit || !original.parentCommit) throw new UserError(`Experiment ${id} has no commit to rebase.`);
    if (original.parentCommit === head) {
      throw new UserError(`Experiment ${id} already ran from the current head ${head.slice(0, 8)}; decide on it with commit_or_revert.`);
    }
    const [base, ours, theirs] = await Promise.all([
      this.workspace.readFileAt(original.parentCommit, TRAIN_FILE),
      this.workspace.readFileAt(head, TRAIN_FILE),
      this.workspace.readFileAt(original.candidateCommit, TRAIN_FILE),
    ]);
    const merged = await this.workspace.mergeTrainPy(base, ours, theirs);
    if (merged === undefined) {
      throw new UserError(
        `Experiment ${id}'s change conflicts with changes kept since it ran. Read train.py, redo the idea by hand with apply_patch, then run_experiment.`,
      );
    }
    return merged;
  }

  /** Queues a run of an existing commit (noise and confirmation runs: no new commit, no change). */
  private queueRun(run: {
    sessionTag: string;
    commit: string;
    parent: string;
    trainHash: string;
    description: string;
    kind: 'noise' | 'confirm';
    seed: number;
    noiseId?: number;
    confirms?: number;
  }): Experiment {
    const created = this.store.createExperiment({
      sessionTag: run.sessionTag,
      trainHash: run.trainHash,
      description: run.description,
      parentCommit: run.parent,
      candidateCommit: run.commit,
      status: 'preparing',
      kind: run.kind,
      seed: run.seed,
      noiseId: run.noiseId,
      confirms: run.confirms,
      changeKind: 'none',
    });
    const runDir = join(stateDir(this.workspace.dir), 'runs', String(created.id));
    return this.store.setCandidate(created.id, { candidateCommit: run.commit, logPath: join(runDir, 'run.log'), resultPath: join(runDir, 'result.json') });
  }

  /**
   * Measures the seed-to-seed noise: k runs of the head commit with distinct seeds chosen by
   * the server. The measurement (mean, sigma, MAD) is stored per profile and machine once they finish.
   */
  async measureNoise(input: { k?: number }, caller: Caller): Promise<{ noise: NoiseMeasurement; experiments: Experiment[]; alreadyMeasuring: boolean }> {
    const k = input.k ?? DEFAULT_NOISE_RUNS;
    if (!Number.isInteger(k) || k < 2 || k > 20) throw new UserError(`k must be an integer from 2 to 20 (got ${k}); the default is ${DEFAULT_NOISE_RUNS}.`);
    return this.exclusive(async () => {
      const session = await this.currentSession(caller);
      this.requireUsableSlot();
      return this.measureNoiseLocked(session.tag, k);
    });
  }

  private async measureNoiseLocked(sessionTag: string, k: number) {
    const measuring = this.store.latestNoise(this.meta.profile, this.machine, 'measuring');
    if (measuring) return { noise: measuring, experiments: this.store.experimentsOfNoise(measuring.id), alreadyMeasuring: true };
    const head = await this.workspace.headCommit();
    const trainHash = contentHash(await this.workspace.readFileAt(head, TRAIN_FILE));
    const noise = this.store.createNoise({ sessionTag, profile: this.meta.profile, machine: this.machine, commit: head, k });
    const seeds = distinctSeeds(k);
    const experiments = seeds.map((seed, i) =>
      this.queueRun({
        sessionTag,
        commit: head,
        parent: head,
        trainHash,
        description: `noise ${i + 1}/${k} of ${head.slice(0, 8)} (seed ${seed})`,
        kind: 'noise',
        seed,
        noiseId: noise.id,
      }),
    );
    this.pump();
    return { noise, experiments, alreadyMeasuring: false };
  }

  /**
   * The agent's last CRASH_STREAK finished candidates, when all of them failed since it last
   * acknowledged a streak: its queue is paused until it does.
   */
  crashStreak(agent: string): Experiment[] | undefined {
    const acknowledged = this.store.getMeta<number>(`${CRASH_ACK_KEY}${agent}`) ?? 0;
    const recent = this.store.recentFinishedOf(agent, CRASH_STREAK).filter((e) => e.id > acknowledged);
    return recent.length === CRASH_STREAK && recent.every((e) => e.status !== 'succeeded') ? recent : undefined;
  }

  private acknowledgeCrashes(agent: string): void {
    const last = this.store.recentFinishedOf(agent, 1)[0];
    if (last) this.store.setMeta(`${CRASH_ACK_KEY}${agent}`, last.id);
    this.pump();
  }

  /** Agents whose queue is paused by a crash streak, with the crashes and the runs held back. */
  pausedAgents(): { agent: string; crashed: number[]; held: number[] }[] {
    const queued = this.store.listExperiments({ status: 'queued', order: 'id', ascending: true }).filter((e) => e.kind === 'candidate' && e.agent !== null);
    const agents = new Set([...queued.map((e) => e.agent as string), ...this.store.listExperiments({ order: 'id', limit: 50 }).flatMap((e) => (e.agent ? [e.agent] : []))]);
    return [...agents].flatMap((agent) => {
      const streak = this.crashStreak(agent);
      return streak ? [{ agent, crashed: streak.map((e) => e.id).reverse(), held: queued.filter((e) => e.agent === agent).map((e) => e.id) }] : [];
    });
  }

  /** Closes a noise measurement once all its runs finished. */
  private settleNoise(noiseId: number): void {
    const noise = this.store.getNoise(noiseId);
    if (!noise || noise.state !== 'measuring') return;
    const runs = this.store.experimentsOfNoise(noiseId);
    if (runs.some((e) => !isFinishedStatus(e.status))) return;
    const values = runs.filter((e) => e.status === 'succeeded' && e.valBpb !== null).map((e) => e.valBpb as number);
    if (values.length < 2) {
      this.store.finishNoise(noiseId, { state: 'failed', runs: values.length, values, note: `only ${values.length} of ${runs.length} noise runs succeeded` });
      return;
    }
    const stats = noiseStats(values);
    this.store.finishNoise(noiseId, { state: 'done', runs: values.length, mean: stats.mean, sigma: stats.sigma, mad: stats.mad, values });
  }

  private pump(): void {
    if (this.closed || !this.serving) return;
    const usable = this.usableSlots();
    for (const slot of usable) {
      if (this.busySlots.has(slot.index)) continue;
      // A paused agent's candidates wait; noise and confirmation runs never do. A run its device
      // failed waits for another slot, if there is one.
      const next = this.store.nextQueued(
        (e) =>
          (e.kind === 'candidate' && e.agent !== null && this.crashStreak(e.agent) !== undefined) ||
          (usable.length > 1 && (this.faultedOn.get(e.id)?.has(slot.index) ?? false)),
      );
      if (!next) continue;
      this.startOn(slot, next);
    }
  }

  /** Runs an experiment on a slot (or, with `job`, follows its Slurm job on), the slot busy until it ends; then looks for the next. */
  private startOn(slot: Slot, experiment: Experiment, job?: string): void {
    this.busySlots.set(slot.index, experiment.id);
    const run = this.execute(experiment, slot, job).finally(() => {
      this.busySlots.delete(slot.index);
      this.running.delete(experiment.id);
      this.pump();
    });
    this.running.set(experiment.id, run);
  }

  private async execute(experiment: Experiment, slot: Slot, job?: string): Promise<void> {
    const id = experiment.id;
    const folder = runDir(this.workspace.dir, id);
    // A retry after a device fault appends to the same log: only this attempt's lines judge it.
    const logStart = experiment.logPath && existsSync(experiment.logPath) ? statSync(experiment.logPath).size : 0;
    this.store.markRunning(id, { slot: slot.index, startedAt: Date.now() });
    if (!experiment.candidateCommit) {
      this.finish(id, { status: 'crashed', error: 'the experiment has no candidate commit', finishedAt: Date.now() });
      return;
    }
    try {
      // The server chooses the seed (AUTORESEARCH_SEED through the supervisor).
      const request = { experimentId: id, commit: experiment.candidateCommit, runDir: folder, slot, seed: experiment.seed ?? undefined };
      const outcome = job
        ? await this.runner.attach(request, job, experiment.startedAt ?? Date.now())
        : await this.runner.run(request, (pid) => this.store.markRunning(id, { slot: slot.index, pid, startedAt: Date.now() }));
      if (this.slotFailed(experiment, slot, outcome, logStart)) return;
      const summary = outcome.summary;
      this.finish(id, {
        status: outcome.status,
        error: outcome.error,
        exitCode: outcome.exitCode,
        signal: outcome.signal,
        finishedAt: outcome.finishedAt,
        // the metric is the evaluator's, the times the supervisor's; the printed summary only informs
        valBpb: outcome.status === 'succeeded' ? outcome.valBpb : undefined,
        evalTokens: outcome.evalTokens,
        evalBytes: outcome.evalBytes,
        evalSeconds: outcome.evalSeconds,
        harnessHashes: outcome.hashes,
        trainingSeconds: outcome.trainingSeconds,
        startupSeconds: outcome.startupSeconds,
        exportSeconds: outcome.exportSeconds,
        cpuSeconds: outcome.cpuSeconds,
        tokensServed: outcome.tokensServed,
        totalTokensM: outcome.tokensServed !== undefined ? outcome.tokensServed / 1e6 : summary.total_tokens_M,
        totalSeconds: (outcome.finishedAt - outcome.startedAt) / 1000,
        peakVramMb: summary.peak_vram_mb,
        mfuPercent: summary.mfu_percent,
        numSteps: summary.num_steps,
        numParamsM: summary.num_params_M,
        depth: summary.depth,
        seed: outcome.seed,
        sandboxed: outcome.sandboxed,
      }, outcome.slurmJob);
      await this.settleSnapshot(experiment, outcome.status);
    } catch (error) {
      this.finish(id, { status: 'crashed', error: `the server could not run it: ${(error as Error).message}`, finishedAt: Date.now() });
    }
  }

  /**
   * A run's compile snapshot (compile-cache.ts) becomes the workspace's cache when the run's commit
   * is the head (a baseline, a noise run); a succeeded candidate's waits for its decision; any
   * other is dropped. A failure here costs later runs a compile, never this run its result.
   */
  private async settleSnapshot(experiment: Experiment, status: string): Promise<void> {
    const snapshot = this.snapshotOf(experiment.id);
    if (!existsSync(snapshot)) return;
    try {
      if (status === 'succeeded' && experiment.candidateCommit === (await this.workspace.headCommit())) await this.promoteSnapshot(experiment);
      else if (status !== 'succeeded' || experiment.kind !== 'candidate') await this.compileCache.drop(snapshot);
    } catch (error) {
      this.log(`compile cache: experiment ${experiment.id}'s snapshot was not taken in (${(error as Error).message})`);
    }
  }

  private async promoteSnapshot(experiment: Experiment): Promise<void> {
    const { id, candidateCommit } = experiment;
    try {
      if (candidateCommit && (await this.compileCache.promote(this.snapshotOf(id), candidateCommit, id))) this.log(`compile cache: now what experiment ${id} compiled before its first batch`);
    } catch (error) {
      this.log(`compile cache: experiment ${id}'s snapshot was not taken in (${(error as Error).message})`);
    }
  }

  private snapshotOf(id: number): string {
    return runFolder(runDir(this.workspace.dir, id)).compileSnapshot;
  }

  /**
   * Tells the slot's health how the run ended. A run that failed for its device (slot-health.ts)
   * is queued again with the same seed, on another slot when there is one, up to MAX_FAULT_RETRIES
   * times; true when it was. The third fault in a row on a slot drains the slot.
   */
  private slotFailed(experiment: Experiment, slot: Slot, outcome: { status: string; error?: string; seed?: number }, logStart: number): boolean {
    const id = experiment.id;
    const failed = outcome.status !== 'succeeded' && outcome.status !== 'cancelled';
    const fault = failed ? deviceFault(`${outcome.error ?? ''}\n${experiment.logPath ? readLogTail(experiment.logPath, undefined, logStart) : ''}`) : undefined;
    const drain = this.slotsAreDevices ? this.health.record(slot.index, { experimentId: id, status: outcome.status, fault, at: Date.now() }) : undefined;
    if (fault === undefined) return false;
    if (drain) {
      const message = drainedMessage(slot, drain);
      this.log(message);
      this.store.audit.append({ transport: 'cli', kind: 'event', method: 'slot_drained', experimentId: id, message, isError: true });
    }
    const requeue = this.usableSlots().length > 0 && this.health.retry(id);
    this.faultedOn.set(id, new Set([...(this.faultedOn.get(id) ?? []), slot.index]));
    this.store.audit.append({
      transport: 'cli',
      kind: 'event',
      method: 'slot_fault',
      experimentId: id,
      message: `${slotName(slot)} failed the run for its device: ${fault}; ${requeue ? `queued again with the same seed${outcome.seed !== undefined ? ` ${outcome.seed}` : ''} (retry ${this.health.retriesOf(id)})` : 'not queued again'}`,
      isError: true,
    });
    if (!requeue) return false;
    this.store.requeue(id, outcome.seed ?? null);
    return true;
  }

  /** The slots that take runs: all but the drained ones. */
  private usableSlots(): Slot[] {
    return this.slots.filter((slot) => !this.health.isDrained(slot.index));
  }

  /** Why a slot takes no more runs, or null while it does. */
  private drainedBecause(slot: Slot): string | null {
    const drain = this.health.drainOf(slot.index);
    return drain ? drainedMessage(slot, drain) : null;
  }

  /** Refuses new runs when no slot is left to run them: they would wait for ever. */
  private requireUsableSlot(): void {
    if (this.usableSlots().length > 0) return;
    throw new UserError(`Every slot is drained, so nothing would run it; nothing was queued. ${this.slots.map((slot) => this.drainedBecause(slot)).join(' ')}`);
  }

  /**
   * Stores an outcome and wakes the waiters at once. If the store refuses the outcome the run is
   * still closed as crashed, never left running. An experiment already finished (cancelled while
   * its process was still stopping) keeps its first outcome.
   */
  private finish(id: number, finished: Parameters<Store['markFinished']>[1], slurmJob?: string): void {
    const current = this.store.getExperiment(id);
    if (!current || isFinishedStatus(current.status)) return;
    // With Slurm, the run's event names its job, so the record leads to sacct and the job's output.
    const result = slurmJob ? { slurm_job: slurmJob } : undefined;
    if (finished.status !== 'succeeded') {
      // Every run that did not produce a result leaves its reason in the audit log, not only in its row.
      const method = RUN_EVENTS[finished.status as keyof typeof RUN_EVENTS] ?? `run_${finished.status}`;
      this.store.audit.append({ transport: 'cli', kind: 'event', method, experimentId: id, message: finished.error, result, isError: finished.status !== 'cancelled' });
    } else if (result) {
      this.store.audit.append({ transport: 'cli', kind: 'event', method: 'run_finished', experimentId: id, message: `succeeded as Slurm job ${slurmJob}`, result });
    }
    try {
      this.store.markFinished(id, finished);
    } catch (error) {
      this.store.markFinished(id, {
        status: 'crashed',
        error: `the run's outcome could not be recorded (${(error as Error).message})`,
        finishedAt: finished.finishedAt ?? Date.now(),
      });
    }
    if (current.noiseId !== null) this.settleNoise(current.noiseId);
    this.emit('finished', id);
  }

  /**
   * Cancels in any unfinished state at once: preparing and queued rows are closed; a running one
   * is recorded cancelled immediately and its process group is stopped (retrying until the
   * runner has a process to stop, for a run that is still starting).
   */
  async cancel(id: number): Promise<Experiment> {
    const experiment = this.experiment(id);
    if (experiment.status === 'preparing' || experiment.status === 'queued') {
      this.finish(id, { status: 'cancelled', error: 'cancelled before it started', finishedAt: Date.now() });
      return this.experiment(id);
    }
    if (experiment.status === 'running') {
      this.finish(id, { status: 'cancelled', error: 'cancelled while running', finishedAt: Date.now() });
      if (!this.runner.stop(id, 'cancelled')) {
        const retry = setInterval(() => {
          if (this.runner.stop(id, 'cancelled') || !this.running.has(id)) clearInterval(retry);
        }, 50);
        retry.unref();
        void this.running.get(id)?.finally(() => clearInterval(retry));
      }
      return this.experiment(id);
    }
    throw new UserError(
      `Experiment ${id} is already ${experiment.status}; only preparing, queued or running experiments can be cancelled. ` +
        (experiment.decision ? 'Nothing to do.' : `Decide it with commit_or_revert({experiment_id: ${id}}).`),
    );
  }

  /**
   * Waits up to `seconds` for an experiment (or, without an id, the oldest unfinished one) to
   * finish, reporting progress. Returns early on abort.
   */
  async waitFor(
    id: number | undefined,
    seconds: number,
    onProgress?: (id: number, progress: RunProgress) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    const target = id ?? this.store.listExperiments({ status: ['running', 'queued', 'preparing'], order: 'id', limit: 1, ascending: true })[0]?.id;
    if (target === undefined || isFinishedStatus(this.experiment(target).status)) return;
    const bounded = Math.min(Math.max(seconds, 0), MAX_WAIT_SECONDS);
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.off('finished', onFinished);
        this.off('progress', onRunProgress);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const onFinished = (finishedId: number) => finishedId === target && done();
      const onRunProgress = (progressId: number, progress: RunProgress) => progressId === target && onProgress?.(target, progress);
      const timer = setTimeout(done, bounded * 1000);
      this.on('finished', onFinished);
      this.on('progress', onRunProgress);
      signal?.addEventListener('abort', done);
      if (isFinishedStatus(this.experiment(target).status)) done();
    });
  }

  busySlotCount(): number {
    return this.busySlots.size;
  }

  /** The session tag of the checked-out branch, or undefined while still on the baseline. */
  async currentSessionTag(): Promise<string | undefined> {
    const branch = await this.workspace.currentBranch();
    return branch.startsWith(SESSION_BRANCH_PREFIX) ? branch.slice(SESSION_BRANCH_PREFIX.length) : undefined;
  }

  progressOf(id: number): RunProgress | undefined {
    return this.runner.progressOf(id);
  }

  // ---- noise ---------------------------------------------------------------------------------

  /** The machine noise is measured on (noise depends on the hardware and its load). */
  get machine(): string {
    return process.env.AUTORESEARCH_MACHINE || hostname();
  }

  /**
   * The noise floor for this profile and machine: sigma pooled over the newest NOISE_POOL finished
   * measurements (each around its own mean), mean and MAD of the newest, and how far the head has
   * moved since that one.
   */
  noiseFloor(): NoiseView | null {
    const pool = this.store.recentNoise(this.meta.profile, this.machine, NOISE_POOL);
    const noise = pool[0];
    const measuring = this.store.latestNoise(this.meta.profile, this.machine, 'measuring');
    if (!noise) return measuring ? { ...emptyNoiseView(), measuring: measuring.id } : null;
    const keepsSince = this.store
      .listExperiments({ status: 'succeeded' })
      .filter((e) => e.decision === 'keep' && (e.decidedAt ?? 0) > (noise.finishedAt ?? 0)).length;
    return {
      id: noise.id,
      sigma: pooledSigma(pool.map((m) => ({ sigma: m.sigma as number, runs: m.runs ?? m.k }))),
      mad: noise.mad as number,
      mean: noise.mean as number,
      k: pool.reduce((sum, m) => sum + (m.runs ?? m.k), 0),
      pooled: pool.length,
      commit: noise.commit,
      profile: noise.profile,
      machine: noise.machine,
      measuredAt: noise.finishedAt,
      keepsSince,
      stale: keepsSince >= NOISE_STALE_KEEPS,
      measuring: measuring?.id ?? null,
    };
  }

  /** Succeeded runs of the program at `commit` (any session, any kind): the head's measured values. */
  private headRuns(commit: string, excluding?: number): Experiment[] {
    const runs = this.store.listExperiments({ status: 'succeeded' }).filter((e) => e.candidateCommit === commit && e.id !== excluding);
    const byHash = this.programHashes.get(commit);
    if (byHash === undefined) return runs;
    const seen = new Set(runs.map((e) => e.id));
    const all = [...runs];
    for (const session of this.store.listSessions()) {
      for (const e of this.store.runsOfProgram(session.tag, byHash)) if (!seen.has(e.id) && e.id !== excluding) all.push(e), seen.add(e.id);
    }
    return all;
  }

  private readonly programHashes = new Map<string, string>();

  private async programHash(commit: string): Promise<string> {
    let hash = this.programHashes.get(commit);
    if (!hash) {
      hash = contentHash(await this.workspace.readFileAt(commit, TRAIN_FILE));
      this.programHashes.set(commit, hash);
    }
    return hash;
  }

  /** Unverified results (unsandboxed, or from before sandboxes existed) never count for auto. */
  private verified(e: Experiment): boolean {
    return e.sandboxed === true;
  }

  // ---- deciding ------------------------------------------------------------------------------

  /** The head's measured score as a pseudo-best: the kept experiment at the head (or the best kept). */
  best(sessionTag?: string): Experiment | undefined {
    return this.store.bestExperiment(sessionTag);
  }

  /** Seed-to-seed noise of this session, from repeated runs of the same train.py (legacy view). */
  noise(sessionTag?: string): Noise | null {
    return sessionTag ? pooledNoise(this.store.repeatedResults(sessionTag)) : null;
  }

  async decide(
    id: number,
    action: DecisionAction,
    minImprovement = 0,
    options: { confidence?: number; confirm?: boolean; confirmPairs?: number } = {},
  ): Promise<DecideResult> {
    const confidence = options.confidence ?? DEFAULT_CONFIDENCE;
    if (!(confidence > 0 && confidence < 1)) throw new UserError(`confidence must be strictly between 0 and 1 (got ${confidence}); e.g. 0.95. Nothing was changed.`);
    return this.exclusive(async () => {
      const experiment = this.experiment(id);
      if (experiment.kind !== 'candidate') {
        throw new UserError(
          `Experiment ${id} is a ${experiment.kind} run of commit ${experiment.candidateCommit?.slice(0, 8)}, not a change; there is nothing to keep or discard.` +
            (experiment.confirms ? ` Decide the candidate it confirms: commit_or_revert({experiment_id: ${experiment.confirms}}).` : ''),
        );
      }
      if (experiment.decision) {
        throw new UserError(
          `Experiment ${id} was already decided: ${experiment.decision} (${experiment.decisionReason ?? ''}). Decisions are final; ` +
            (experiment.decision === 'keep'
              ? `to take it off the branch call undo({to: <an earlier kept experiment id or "baseline">, reason}).`
              : `to try the idea again, re-run it on the head with run_experiment({description, rebase_of: ${id}}).`),
        );
      }
      if (!isFinishedStatus(experiment.status)) {
        throw new UserError(`Experiment ${id} is ${experiment.status}; wait for it with get_results({experiment_id: ${id}, wait_seconds: 45}) before deciding.`);
      }
      const sessionTag = await this.currentSessionTag();
      if (experiment.sessionTag !== sessionTag) {
        throw new UserError(
          `Experiment ${id} belongs to session "${experiment.sessionTag}", but the workspace is on ${sessionTag ? `session "${sessionTag}"` : 'the baseline'}. ` +
            `Switch with start_session({tag: "${experiment.sessionTag}", resume: true}) to decide it.`,
        );
      }
      const branch = await this.workspace.currentBranch();
      const head = await this.workspace.headCommit();
      let verdict: { verdict: 'keep' | 'discard' | 'inconclusive'; reason: string; figures: Record<string, unknown>; scheduled: number[]; next: string | null };
      if (action === 'keep') {
        if (experiment.status !== 'succeeded') {
          throw new UserError(`Experiment ${id} ${experiment.status}; only a succeeded experiment can be kept. Discard it (commit_or_revert action "discard").`);
        }
        if (experiment.changeKind === 'seed_only') {
          throw new UserError(`Experiment ${id} changes only seeds: a different seed is noise, not progress, and is never kept. Discard it.`);
        }
        const figures = await this.figuresFor(experiment, confidence, minImprovement);
        verdict = { verdict: 'keep', reason: 'kept by request', figures: { ...figures, rule: 'by_request' }, scheduled: [], next: null };
      } else if (action === 'discard') {
        verdict = { verdict: 'discard', reason: 'discarded by request', figures: await this.figuresFor(experiment, confidence, minImprovement), scheduled: [], next: null };
      } else {
        verdict = await this.autoVerdict(experiment, head, confidence, minImprovement, options);
      }

      let restoredTrainPy = false;
      const reruns: { experiment: number; rerun: number }[] = [];
      if (verdict.verdict === 'keep' && experiment.parentCommit !== head) {
        const stacked = experiment.stackedOn !== null ? this.store.getExperiment(experiment.stackedOn) : undefined;
        if (stacked && stacked.decision === null) {
          throw new UserError(`Experiment ${id} is stacked on experiment ${stacked.id}, which is still undecided; decide ${stacked.id} first (commit_or_revert({experiment_id: ${stacked.id}})).`);
        }
        if (action !== 'auto') {
          throw new UserError(
            `Experiment ${id} ran from ${experiment.parentCommit?.slice(0, 8)}, but the branch head is now ${head.slice(0, 8)} ` +
              `(a change was kept or undone since). Keeping it would drop that change or keep an untested combination. ` +
              `Re-run it on the head with run_experiment({description, rebase_of: ${id}}) and decide on the new experiment, or let auto do that.`,
          );
        }
        // A real gain from a parent that is no longer the head: measured again on the head, not lost.
        verdict = await this.supersede(experiment, head, verdict);
        if (verdict.verdict === 'discard' && verdict.scheduled.length > 0) reruns.push({ experiment: id, rerun: verdict.scheduled[0] });
      }
      if (verdict.verdict === 'keep') {
        const move = this.store.beginMove({
          kind: 'keep',
          sessionTag: experiment.sessionTag,
          branch,
          fromCommit: head,
          toCommit: experiment.candidateCommit as string,
          experimentId: id,
          reason: verdict.reason,
          figures: verdict.figures,
          savedRef: null,
        });
        crashPoint('before_branch_move');
        await this.workspace.advanceBranch(branch, head, experiment.candidateCommit as string);
        crashPoint('after_branch_move');
        this.store.completeMove(move.id);
        await this.promoteSnapshot(experiment);
        restoredTrainPy = await this.followHead(head, experiment.candidateCommit as string, id);
        reruns.push(...(await this.reconcileSiblings(experiment, head, confidence, minImprovement)));
      } else if (verdict.verdict === 'discard') {
        if (experiment.candidateCommit) {
          await this.workspace.markDiscarded(id, experiment.candidateCommit);
          const candidateText = await this.workspace.readFileAt(experiment.candidateCommit, TRAIN_FILE);
          const working = await this.workspace.readTrainPy();
          if (working === candidateText || this.workingBase(working)?.experimentId === id) {
            await this.workspace.writeTrainPy(await this.workspace.readFileAt(head, TRAIN_FILE));
            this.setWorkingBase(null);
            restoredTrainPy = true;
          }
        }
        this.store.setDecision(id, 'discard', verdict.reason, Date.now(), verdict.figures);
        await this.compileCache.drop(this.snapshotOf(id));
      } else {
        this.store.setVerdict(id, 'inconclusive', verdict.reason, verdict.figures);
      }
      const noise = this.noise(experiment.sessionTag);
      const gain = typeof verdict.figures.gain === 'number' ? (verdict.figures.gain as number) : null;
      const sigma = typeof verdict.figures.sigma === 'number' ? (verdict.figures.sigma as number) : noise?.sigma;
      const withinNoise = sigma !== undefined && gain !== null && gain > 0 ? gain < 2 * sigma : null;
      return {
        experiment: this.experiment(id),
        decision: verdict.verdict,
        reason: verdict.reason,
        head: await this.workspace.headCommit(),
        restoredTrainPy,
        trainPyHash: this.rememberTrainPy(await this.workspace.readTrainPy()),
        noise,
        withinNoise,
        figures: verdict.figures,
        scheduled: verdict.scheduled,
        nextStep: verdict.next,
        noiseFloor: this.noiseFloor(),
        reruns,
      };
    });
  }

  /**
   * The verdict for a candidate that beat its parent beyond noise after the head moved on: its
   * change is replayed onto the head and queued as a new experiment (or the one already queued
   * for it is named), and it is discarded as superseded, naming the re-run.
   */
  private async supersede(experiment: Experiment, head: string, verdict: Verdict): Promise<Verdict> {
    const id = experiment.id;
    const from = `from ${experiment.parentCommit.slice(0, 8)}, but the head moved to ${head.slice(0, 8)}`;
    let text: string;
    try {
      text = await this.rebasedTrainPy(id, head);
    } catch (error) {
      if (!(error instanceof UserError)) throw error;
      return {
        verdict: 'inconclusive',
        reason: `${verdict.reason} ${from}, and its change conflicts with what was kept since`,
        figures: { ...verdict.figures, rule: 'superseded_conflict' },
        scheduled: [],
        next: `redo the idea by hand on the head (read_train_py, apply_patch, run_experiment), then discard experiment ${id}`,
      };
    }
    const headText = await this.workspace.readFileAt(head, TRAIN_FILE);
    if (text === headText) {
      return { verdict: 'discard', reason: `superseded: ${verdict.reason} ${from}, which already contains its change`, figures: { ...verdict.figures, rule: 'superseded', contained: true }, scheduled: [], next: null };
    }
    const open = this.store.candidatesOfProgram(experiment.sessionTag, head, contentHash(text)).find((e) => !isFinishedStatus(e.status) || e.decision === null);
    const rerun =
      open ??
      (
        await this.queueCandidate({
          sessionTag: experiment.sessionTag,
          parent: head,
          parentText: headText,
          text,
          description: `${experiment.description.slice(0, 150)} (re-run of ${id} on ${head.slice(0, 8)})`,
          rebaseOf: id,
          agent: experiment.agent ?? 'lab',
        })
      ).experiment;
    this.pump();
    return {
      verdict: 'discard',
      reason: `superseded: ${verdict.reason} ${from}; its change is measured again on the head as experiment ${rerun.id}`,
      figures: { ...verdict.figures, rule: 'superseded', rerun: rerun.id },
      scheduled: [rerun.id],
      next: `wait for experiment ${rerun.id} (get_results with wait_seconds), then commit_or_revert({experiment_id: ${rerun.id}})`,
    };
  }

  /**
   * After a keep, the other finished candidates from the same parent that beat it beyond noise
   * are real improvements too: each is superseded and re-run on the new head, not lost.
   */
  private async reconcileSiblings(kept: Experiment, oldHead: string, confidence: number, minImprovement: number): Promise<{ experiment: number; rerun: number }[]> {
    const floor = this.noiseFloor();
    if (!floor || floor.id === undefined) return [];
    const newHead = await this.workspace.headCommit();
    const siblings = this.store
      .listExperiments({ session: kept.sessionTag, order: 'id', ascending: true })
      .filter((e) => e.kind === 'candidate' && e.id !== kept.id && e.parentCommit === oldHead && e.status === 'succeeded' && e.decision === null);
    const reruns: { experiment: number; rerun: number }[] = [];
    for (const sibling of siblings) {
      const verdict = await this.autoVerdict(sibling, oldHead, confidence, minImprovement, { siblings: false });
      if (verdict.verdict !== 'keep') continue;
      const superseded = await this.supersede(sibling, newHead, verdict);
      if (superseded.verdict !== 'discard') continue;
      if (sibling.candidateCommit) await this.workspace.markDiscarded(sibling.id, sibling.candidateCommit);
      this.store.setDecision(sibling.id, 'discard', superseded.reason, Date.now(), superseded.figures);
      if (superseded.scheduled.length > 0) reruns.push({ experiment: sibling.id, rerun: superseded.scheduled[0] });
    }
    return reruns;
  }

  /**
   * After the branch moved forward, the working train.py follows: unchanged copies become the
   * new head; edits in progress are replayed onto it (three-way merge), or copied aside when
   * they conflict. Returns whether train.py was rewritten.
   */
  private async followHead(oldHead: string, newHead: string, keptId: number): Promise<boolean> {
    const working = await this.workspace.readTrainPy();
    const [before, after] = await Promise.all([this.workspace.readFileAt(oldHead, TRAIN_FILE), this.workspace.readFileAt(newHead, TRAIN_FILE)]);
    if (this.workingBase(working)?.experimentId === keptId) {
      // Stacked on the experiment just kept: the file already builds on the new head.
      this.setWorkingBase(null);
      return false;
    }
    if (working === after) return false;
    if (working === before) {
      await this.workspace.writeTrainPy(after);
      return true;
    }
    const merged = await this.workspace.mergeTrainPy(before, after, working);
    if (merged === undefined) await this.saveUnsavedEdits();
    await this.workspace.writeTrainPy(merged ?? after);
    this.setWorkingBase(null);
    return true;
  }

  /** Figures for a decision made by hand: what auto would have compared. */
  private async figuresFor(experiment: Experiment, confidence: number, minImprovement: number): Promise<Record<string, unknown>> {
    const floor = this.noiseFloor();
    const headValues = this.headRuns(experiment.parentCommit, experiment.id).map((e) => e.valBpb as number);
    const candidate = this.candidateValues(experiment);
    if (floor?.sigma === undefined || !Number.isFinite(floor.sigma) || headValues.length === 0 || candidate.length === 0) {
      return { rule: 'none', val_bpb: experiment.valBpb, head_runs: headValues.length, noise_id: floor?.id ?? null };
    }
    return { ...keepRule({ candidate, head: headValues, sigma: floor.sigma, confidence, minImprovement }).figures, noise_id: floor.id };
  }

  private candidateValues(experiment: Experiment): number[] {
    const own = experiment.status === 'succeeded' && experiment.valBpb !== null ? [experiment.valBpb] : [];
    const confirms = this.store
      .confirmationsOf(experiment.id)
      .filter((e) => e.status === 'succeeded' && e.candidateCommit === experiment.candidateCommit && e.valBpb !== null)
      .map((e) => e.valBpb as number);
    return [...own, ...confirms];
  }

  /** The auto rule; see keepRule. Schedules noise or confirmation runs when the numbers cannot decide yet. */
  private async autoVerdict(
    experiment: Experiment,
    head: string,
    confidence: number,
    minImprovement: number,
    options: { confirm?: boolean; confirmPairs?: number; siblings?: boolean },
  ): Promise<Verdict> {
    const id = experiment.id;
    const done = (verdict: 'keep' | 'discard' | 'inconclusive', reason: string, figures: Record<string, unknown> = {}, scheduled: number[] = [], next: string | null = null) => ({
      verdict,
      reason,
      figures,
      scheduled,
      next,
    });
    if (experiment.status !== 'succeeded') return done('discard', `${experiment.status}: always discarded`, { rule: 'failed_run' });
    await this.programHash(experiment.parentCommit);
    const headRuns = this.headRuns(experiment.parentCommit, id).filter((e) => this.verified(e));
    if (!this.verified(experiment)) {
      return done(
        'inconclusive',
        'unverified result (the run was not sandboxed): auto never keeps it. Re-run it sandboxed, or decide by hand with action "keep" or "discard".',
        { rule: 'unverified', sandboxed: experiment.sandboxed },
        [],
        `commit_or_revert({experiment_id: ${id}, action: "discard"})`,
      );
    }
    // An unchanged program re-measures the head: the session's first such run is its baseline
    // (kept: the branch gains an empty change), any later one is never a gain.
    const sessionHeadRuns = headRuns.filter((e) => e.sessionTag === experiment.sessionTag && e.id < experiment.id);
    if (experiment.changeKind === 'seed_only' || (experiment.changeKind === 'none' && sessionHeadRuns.length > 0)) {
      return done(
        'discard',
        experiment.changeKind === 'seed_only'
          ? 'changes only seeds: a different seed measures noise, never progress'
          : 'changes nothing the model or optimiser sees (same program as the head): a re-measurement, never a gain',
        { rule: 'no_change', change_kind: experiment.changeKind },
      );
    }
    if (experiment.changeKind === 'none') {
      return done('keep', 'first measurement of this head in the session (no change to train.py): the baseline to beat', { rule: 'baseline', val_bpb: experiment.valBpb });
    }
    const floor = this.noiseFloor();
    const scheduled: number[] = [];
    if (!floor || floor.id === undefined) {
      const measuring = await this.measureNoiseLocked(experiment.sessionTag, DEFAULT_NOISE_RUNS);
      const ids = measuring.experiments.filter((e) => !isFinishedStatus(e.status)).map((e) => e.id);
      return done(
        'inconclusive',
        `the noise floor of profile ${this.meta.profile} on ${this.machine} is not measured yet, so no gain can be told from luck; ` +
          `${measuring.alreadyMeasuring ? 'noise runs are in progress' : 'queued noise runs'} ${ids.join(', ')} of the head ${head.slice(0, 8)}`,
        { rule: 'no_noise', noise_id: measuring.noise.id },
        ids,
        `wait for experiments ${ids.join(', ')} (get_results with wait_seconds), then call commit_or_revert({experiment_id: ${id}}) again`,
      );
    }
    if (floor.stale && floor.measuring === null) {
      const again = await this.measureNoiseLocked(experiment.sessionTag, floor.k);
      scheduled.push(...again.experiments.map((e) => e.id));
    }
    const pending = this.store.confirmationsOf(id).filter((e) => !isFinishedStatus(e.status));
    if (pending.length > 0) {
      return done(
        'inconclusive',
        `confirmation runs ${pending.map((e) => e.id).join(', ')} are not finished yet`,
        { rule: 'confirming' },
        pending.map((e) => e.id),
        `wait for experiments ${pending.map((e) => e.id).join(', ')}, then call commit_or_revert({experiment_id: ${id}}) again`,
      );
    }
    const headValues = headRuns.map((e) => e.valBpb as number);
    if (headValues.length === 0) {
      return done(
        'inconclusive',
        `the head ${experiment.parentCommit.slice(0, 8)} this experiment ran from has no verified measurement to compare with`,
        { rule: 'no_head_measurement' },
        scheduled,
        'measure the head: run_experiment({description: "baseline"}) on the unmodified train.py, or measure_noise()',
      );
    }
    const rule = keepRule({ candidate: this.candidateValues(experiment), head: headValues, sigma: floor.sigma, confidence, minImprovement });
    const pairsDone = Math.floor(this.store.confirmationsOf(id).length / 2);
    const worth = rule.verdict === 'inconclusive' && worthConfirming(rule.figures, pairsDone);
    const figures = { ...rule.figures, noise_id: floor.id, noise_k: floor.k, noise_stale: floor.stale, confirm_pairs_done: pairsDone, worth_confirming: worth };
    // confirm: true asks for paired re-runs before deciding (once), and again while inconclusive and worth it.
    const wantsConfirmation = options.confirm === true && (pairsDone === 0 || worth);
    if (rule.verdict === 'keep' && options.siblings !== false) {
      const better = this.betterSibling(experiment, headValues, floor.sigma, confidence, minImprovement);
      if (better) {
        return done(
          'inconclusive',
          `experiment ${better.id} from the same parent is better (mean ${better.mean.toFixed(6)} against ${mean(this.candidateValues(experiment)).toFixed(6)}) ` +
            `and beats the head beyond noise too: the best is kept first; keeping ${better.id} re-runs this one on it`,
          { ...figures, rule: 'better_sibling', better: better.id },
          scheduled,
          `commit_or_revert({experiment_id: ${better.id}})`,
        );
      }
    }
    if (rule.verdict !== 'inconclusive' && !wantsConfirmation) return done(rule.verdict, rule.reason, figures, scheduled);
    if (wantsConfirmation) {
      const pairs = Math.min(options.confirmPairs ?? DEFAULT_CONFIRM_PAIRS, MAX_CONFIRM_PAIRS - pairsDone);
      const parentHash = await this.programHash(experiment.parentCommit);
      for (const seed of distinctSeeds(pairs)) {
        // A pair shares its seed (data order and initialisation), so the difference is paired.
        scheduled.push(
          this.queueRun({ sessionTag: experiment.sessionTag, commit: experiment.candidateCommit as string, parent: experiment.parentCommit, trainHash: experiment.trainHash ?? '', description: `confirm ${id}: candidate (seed ${seed})`, kind: 'confirm', seed, confirms: id }).id,
          this.queueRun({ sessionTag: experiment.sessionTag, commit: experiment.parentCommit, parent: experiment.parentCommit, trainHash: parentHash, description: `confirm ${id}: head ${experiment.parentCommit.slice(0, 8)} (seed ${seed})`, kind: 'confirm', seed, confirms: id }).id,
        );
      }
      this.pump();
      return done(
        'inconclusive',
        `${rule.reason}; queued ${pairs} confirmation pair(s) (candidate and head with fresh shared seeds): ${scheduled.join(', ')}`,
        figures,
        scheduled,
        `wait for experiments ${scheduled.join(', ')}, then call commit_or_revert({experiment_id: ${id}}) again`,
      );
    }
    if (worth) {
      return done(
        'inconclusive',
        rule.reason,
        figures,
        scheduled,
        `confirm with commit_or_revert({experiment_id: ${id}, confirm: true}) (re-runs candidate and head with fresh seeds), or discard it`,
      );
    }
    const futile =
      pairsDone >= MAX_CONFIRM_PAIRS
        ? `${pairsDone} confirmation pairs have run, the most one candidate gets`
        : `after ${pairsDone} confirmation pair(s) the gain is under ${FUTILITY_SHARE} of the margin, which more pairs almost never overturn`;
    return done(
      'inconclusive',
      `${rule.reason}; not worth confirming further: ${futile}`,
      figures,
      scheduled,
      `discard it (commit_or_revert({experiment_id: ${id}, action: "discard"})): if a real gain is there, it is too small to tell from noise at this confidence`,
    );
  }

  /** A finished, undecided candidate from the same parent with a lower mean that the rule would keep too. */
  private betterSibling(experiment: Experiment, headValues: number[], sigma: number, confidence: number, minImprovement: number): { id: number; mean: number } | undefined {
    const own = mean(this.candidateValues(experiment));
    let best: { id: number; mean: number } | undefined;
    for (const e of this.store.listExperiments({ session: experiment.sessionTag, order: 'id', ascending: true })) {
      if (e.id === experiment.id || e.kind !== 'candidate' || e.parentCommit !== experiment.parentCommit || e.status !== 'succeeded' || e.decision !== null) continue;
      if (e.changeKind !== 'code' || !this.verified(e)) continue;
      const values = this.candidateValues(e);
      const m = mean(values);
      if (!(m < own) || (best && best.mean <= m)) continue;
      if (keepRule({ candidate: values, head: headValues, sigma, confidence, minImprovement }).verdict === 'keep') best = { id: e.id, mean: m };
    }
    return best;
  }

  /**
   * Moves the session branch back to an earlier kept commit (or the session's start) with a
   * reason. Nothing is deleted: the old head stays under refs/autoresearch/undone/, and the
   * move is journalled like a keep.
   */
  async undo(input: { to: number | 'baseline' | string; reason: string }): Promise<UndoResult> {
    const reason = input.reason.trim();
    if (!reason) throw new UserError('Give a reason for the undo (it is recorded), e.g. "exp 12 gain did not replicate".');
    return this.exclusive(async () => {
      const sessionTag = await this.currentSessionTag();
      const session = sessionTag ? this.store.getSession(sessionTag) : undefined;
      if (!session) throw new UserError('No session is active; nothing to undo. Start or resume one with start_session.');
      const branch = await this.workspace.currentBranch();
      const head = await this.workspace.headCommit();
      const kept = this.store.listExperiments({ session: session.tag, order: 'id', ascending: true }).filter((e) => e.decision === 'keep' && e.candidateCommit);
      const onBranch = new Set((await this.workspace.git.raw(['rev-list', head])).split('\n').filter(Boolean));
      const choices = () =>
        [`"baseline" (${session.baseCommit.slice(0, 8)})`, ...kept.filter((e) => onBranch.has(e.candidateCommit as string) && e.candidateCommit !== head).map((e) => `${e.id}`)].join(', ');
      let target: string;
      let targetExperiment: Experiment | undefined;
      if (input.to === 'baseline' || input.to === session.baseCommit) {
        target = session.baseCommit;
      } else if (typeof input.to === 'number') {
        targetExperiment = this.experiment(input.to);
        if (targetExperiment.sessionTag !== session.tag || targetExperiment.decision !== 'keep') {
          throw new UserError(`Experiment ${input.to} was never kept in session "${session.tag}"; undo can only go back to a kept commit. Choices: ${choices()}. Nothing changed.`);
        }
        target = targetExperiment.candidateCommit as string;
      } else {
        targetExperiment = kept.find((e) => e.candidateCommit?.startsWith(String(input.to)));
        if (!targetExperiment || String(input.to).length < 7) {
          throw new UserError(`${input.to} is not a kept commit of session "${session.tag}". Choices: ${choices()}. Nothing changed.`);
        }
        target = targetExperiment.candidateCommit as string;
      }
      if (target === head) throw new UserError(`The branch is already at ${head.slice(0, 8)}; nothing to undo.`);
      if (!onBranch.has(target)) {
        throw new UserError(`${target.slice(0, 8)} is no longer on the branch (it was undone before). Choices: ${choices()}. Nothing changed.`);
      }
      const leaving = new Set((await this.workspace.git.raw(['rev-list', `${target}..${head}`])).split('\n').filter(Boolean));
      const undone = kept.filter((e) => leaving.has(e.candidateCommit as string)).map((e) => e.id);
      const savedRef = `${UNDONE_REF}${session.tag}/${Date.now()}`;
      await this.workspace.git.raw(['update-ref', savedRef, head]);
      const move = this.store.beginMove({
        kind: 'undo',
        sessionTag: session.tag,
        branch,
        fromCommit: head,
        toCommit: target,
        experimentId: targetExperiment?.id ?? null,
        reason,
        figures: { undone },
        savedRef,
      });
      crashPoint('before_branch_move');
      await this.workspace.advanceBranch(branch, head, target);
      crashPoint('after_branch_move');
      const saved = await this.saveUnsavedEdits();
      await this.workspace.writeTrainPy(await this.workspace.readFileAt(target, TRAIN_FILE));
      this.setWorkingBase(null);
      this.store.completeMove(move.id, undone);
      this.store.audit.append({
        transport: 'cli',
        kind: 'event',
        method: 'undo',
        experimentId: targetExperiment?.id,
        message: `branch ${branch} moved back from ${head.slice(0, 8)} to ${target.slice(0, 8)} (undoing experiment(s) ${undone.join(', ') || 'none'}): ${reason}; old head kept at ${savedRef}`,
      });
      return { from: head, to: target, undone, savedRef, moveId: move.id, reason, savedEdits: saved };
    });
  }

  // ---- overview ------------------------------------------------------------------------------

  async status() {
    const branch = await this.workspace.currentBranch();
    const head = await this.workspace.headCommit();
    const tree = await this.workspace.workingTreeState();
    const sessionTag = branch.startsWith(SESSION_BRANCH_PREFIX) ? branch.slice(SESSION_BRANCH_PREFIX.length) : undefined;
    const session = sessionTag ? this.store.getSession(sessionTag) : undefined;
    const best = this.best(sessionTag);
    const drift = await this.runner.harnessDrift(this.workspace.dir, (path) => this.statusHashes.hash(path));
    const queued = this.store.listExperiments({ status: 'queued', order: 'id', ascending: true }).map((e) => e.id);
    const running = this.store.listExperiments({ status: ['running', 'preparing'], order: 'id', ascending: true }).map((e) => e.id);
    const undecided = sessionTag
      ? this.store
          .listExperiments({ session: sessionTag, order: 'id', ascending: true })
          .filter((e) => e.kind === 'candidate' && e.decision === null && isFinishedStatus(e.status))
          .map((e) => ({ id: e.id, description: e.description, status: e.status, valBpb: e.valBpb, verdict: e.verdict, stackedOn: e.stackedOn }))
      : [];
    const noise = this.noiseFloor();
    await this.programHash(head);
    const headValues = this.headRuns(head).map((e) => e.valBpb as number);
    const headMeasured = headValues.length > 0 ? { runs: headValues.length, mean: headValues.reduce((a, b) => a + b, 0) / headValues.length } : null;
    const working = await this.workspace.readTrainPy();
    const stackedOn = this.workingBase(working)?.experimentId ?? null;
    const sessions = this.store.listSessions().map((s) => s.tag);
    const pausedAgents = this.pausedAgents();
    const gpus = this.slots.some((slot) => slot.cudaDevices !== undefined) ? gpuUsage() : undefined;
    let nextStep: string;
    if (this.usableSlots().length === 0) nextStep = `every slot is drained (${this.drainedBecause(this.slots[0])}): tell the person running this lab; nothing can run until the server restarts on working devices`;
    else if (drift.length > 0) nextStep = `restore the harness files that changed (${drift.join(', ')}): runs are refused until they match their pins`;
    else if (!sessionTag) {
      nextStep =
        sessions.length > 0
          ? `continue a session with start_session({tag: "${sessions[sessions.length - 1]}", resume: true}) (sessions: ${sessions.join(', ')}), or start a new one with start_session({tag})`
          : 'start_session({tag}) (e.g. the date), then run_experiment({description: "baseline"}) on the unmodified train.py';
    } else if (pausedAgents.length > 0) {
      const paused = pausedAgents[0];
      nextStep = `${paused.agent}'s queue is paused after failed experiments ${paused.crashed.join(', ')}: read get_run_log({experiment_id: ${paused.crashed.at(-1)}}), fix the cause, then run_experiment with acknowledge_crashes: true`;
    } else if (running.length > 0 || queued.length > 0) {
      nextStep = `experiment(s) ${[...running, ...queued].join(', ')} are running or queued: get_results({experiment_id: ${[...running, ...queued][0]}, wait_seconds: 45}); meanwhile prepare the next idea`;
    } else if (undecided.length > 0) {
      nextStep = `decide experiment ${undecided[0].id} with commit_or_revert({experiment_id: ${undecided[0].id}})${undecided.length > 1 ? ` (undecided: ${undecided.map((u) => u.id).join(', ')})` : ''}`;
    } else if (!headMeasured) nextStep = 'measure the head: run_experiment({description: "baseline"}) on the unmodified train.py';
    else if (!noise || noise.id === undefined) nextStep = 'measure the noise floor: measure_noise() (k runs of the head with server-chosen seeds)';
    else if (noise.stale) nextStep = `the head moved ${noise.keepsSince} keeps since the noise was measured: measure_noise() again`;
    else nextStep = 'next idea: read_train_py -> apply_patch -> run_experiment({description})';
    return {
      workspace: this.workspace.dir,
      branch,
      session: sessionTag ?? null,
      sessionStart: session ? { from: session.startFrom ?? 'baseline', commit: session.baseCommit } : null,
      head,
      headMeasured,
      best: best ? { id: best.id, valBpb: best.valBpb, description: best.description } : null,
      profile: this.meta.profile,
      timeBudgetSeconds: this.meta.timeBudget,
      ceilingSeconds: this.ceilingSeconds,
      python: this.meta.python,
      dataDir: this.meta.dataDir,
      slots: this.slots.map((slot) => ({
        index: slot.index,
        cudaDevices: slot.cudaDevices ?? null,
        experimentId: this.busySlots.get(slot.index) ?? null,
        gpu: slotGpu(slot, gpus),
        drained: this.drainedBecause(slot),
        deviceFaultsInARow: this.health.faultsOf(slot.index),
      })),
      queue: queued,
      running,
      undecided,
      pausedAgents,
      noise,
      stackedOn,
      sessions,
      nextStep,
      counts: this.store.countByStatus(),
      pinnedHashes: this.store.getPins(),
      harnessIntact: drift.length === 0,
      harnessDrift: drift,
      trainPyModified: tree.trainPyModified,
      strayChanges: tree.strayChanges,
      compileCache: this.compileCache.describe(),
    };
  }

  async resultsTsv(sessionTag?: string): Promise<string> {
    return resultsTsv(this.store.listExperiments({ order: 'id', ascending: true, session: sessionTag }), { noise: this.noiseFloor() });
  }

  /** Stops running experiments (whole process groups), cancels the queue, closes the database. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (!this.serving) {
      this.store.close();
      return;
    }
    for (const experiment of this.store.listExperiments({ status: ['queued', 'preparing'], order: 'id' })) {
      this.finish(experiment.id, { status: 'cancelled', error: 'server stopped before it ran', finishedAt: Date.now() });
    }
    this.runner.stopAll('cancelled');
    await Promise.allSettled([...this.running.values(), this.runner.closeStandbys()]);
    this.store.close();
    releaseServerLock(this.workspace.dir);
  }
}

export interface DecideResult {
  experiment: Experiment;
  decision: 'keep' | 'discard' | 'inconclusive';
  reason: string;
  head: string;
  restoredTrainPy: boolean;
  /** Content hash of the working train.py after the decision: the next apply_patch's expected_hash. */
  trainPyHash: string;
  noise: Noise | null;
  withinNoise: boolean | null;
  figures: Record<string, unknown>;
  scheduled: number[];
  nextStep: string | null;
  noiseFloor: NoiseView | null;
  /** Candidates superseded by this decision (or this one), with the re-run on the head that measures each again. */
  reruns: { experiment: number; rerun: number }[];
}

type Verdict = { verdict: 'keep' | 'discard' | 'inconclusive'; reason: string; figures: Record<string, unknown>; scheduled: number[]; next: string | null };

export interface UndoResult {
  from: string;
  to: string;
  undone: number[];
  savedRef: string;
  moveId: number;
  reason: string;
  savedEdits: string | null;
}

export interface NoiseView {
  id?: number;
  sigma: number;
  mad: number;
  mean: number;
  /** Runs behind sigma, over all pooled measurements. */
  k: number;
  /** Measurements pooled into sigma (the newest, up to NOISE_POOL). */
  pooled: number;
  commit: string;
  profile: string;
  machine: string;
  measuredAt: number | null;
  keepsSince: number;
  stale: boolean;
  /** A measurement in progress (its id), or null. */
  measuring: number | null;
}

function emptyNoiseView(): NoiseView {
  return { sigma: NaN, mad: NaN, mean: NaN, k: 0, pooled: 0, commit: '', profile: '', machine: '', measuredAt: null, keepsSince: 0, stale: false, measuring: null };
}

export const DEFAULT_NOISE_RUNS = 3;
export const DEFAULT_CONFIDENCE = 0.99;
export const DEFAULT_CONFIRM_PAIRS = 2;
/** Keeps after which the noise floor is measured again (the program has moved far from the one measured). */
export const NOISE_STALE_KEEPS = 5;
/**
 * Measurements pooled into the noise floor's sigma: one of 3 runs gave estimates from 0.16 to 1.4
 * times a fixed noise in bench/campaign-server.mjs; the newest few together follow a drifting noise
 * and still have several times the degrees of freedom.
 */
export const NOISE_POOL = 4;
/** Candidates all run with one seed, so a candidate and its parent's baseline run differ by the change, not the seed. */
export const CANDIDATE_SEED = 42;
const WORKING_BASE_KEY = 'working_base';
/** Failed candidates in a row that pause an agent's queue, and where its acknowledgement is kept. */
export const CRASH_STREAK = 3;
const CRASH_ACK_KEY = 'crash_ack:';
/** train.py versions held in memory for diffs since a hash, and experiments scanned for an older one. */
const TRAIN_PY_VERSIONS_KEPT = 64;
const TRAIN_PY_VERSION_SCAN = 500;
const EXPERIMENT_REF = 'refs/autoresearch/experiments/';
const UNDONE_REF = 'refs/autoresearch/undone/';

function distinctSeeds(n: number): number[] {
  const seeds = new Set<number>();
  while (seeds.size < n) {
    const seed = randomInt(1, 2 ** 31 - 1);
    if (seed !== CANDIDATE_SEED) seeds.add(seed);
  }
  return [...seeds];
}

/**
 * Test hook: AUTORESEARCH_CRASH_AT=<point> makes the server die (SIGKILL, no cleanup) at that
 * point, so tests can check that the next start repairs the record. Unset in normal use.
 */
function crashPoint(name: string): void {
  if (process.env.AUTORESEARCH_CRASH_AT === name) process.kill(process.pid, 'SIGKILL');
}

/**
 * One serving process per workspace: two would run the same queue twice and mark each other's
 * runs as crashed. The lock is an EXCLUSIVE transaction on .autoresearch/lock.db held for the
 * server's lifetime: atomic, released by the OS when the process dies however it dies (no pid
 * to go stale or be reused, no /proc). server.pid beside it only names the holder in messages.
 */
const heldLocks = new Map<string, Database.Database>();

/**
 * How long a starting server waits on lock.db. Two servers starting at the same instant each hold
 * a brief shared lock while they open it; without a wait each could see the other's and both would
 * give up (seen on a loaded 2-core machine). A server that holds the lock holds it for its whole
 * life, so the second one is still refused, this much later.
 */
const LOCK_WAIT_MS = 2000;

function acquireServerLock(workspace: string): void {
  const dir = stateDir(workspace);
  const db = new Database(join(dir, 'lock.db'), { timeout: LOCK_WAIT_MS });
  try {
    db.pragma('journal_mode = DELETE');
    db.exec('BEGIN EXCLUSIVE');
  } catch (error) {
    db.close();
    if ((error as { code?: string }).code === 'SQLITE_BUSY' || /locked|busy/i.test((error as Error).message)) {
      let holder = 'unknown';
      try {
        holder = readFileSync(join(dir, 'server.pid'), 'utf8').trim() || 'unknown';
      } catch {
        // no pid file yet: the holder is still starting
      }
      throw new UserError(
        `Another autoresearch-mcp server (pid ${holder}) is serving ${workspace}. Connect to it instead ` +
          `(serve it with --http to share it between clients) or stop it first.`,
      );
    }
    throw error;
  }
  heldLocks.set(workspace, db);
  writeFileSync(join(dir, 'server.pid'), String(process.pid));
}

function releaseServerLock(workspace: string): void {
  const db = heldLocks.get(workspace);
  if (!db) return;
  heldLocks.delete(workspace);
  try {
    if (readFileSync(join(stateDir(workspace), 'server.pid'), 'utf8').trim() === String(process.pid)) unlinkSync(join(stateDir(workspace), 'server.pid'));
  } catch {
    // already gone
  }
  try {
    db.exec('ROLLBACK');
  } finally {
    db.close();
  }
}

export interface Noise {
  /** Pooled standard deviation of val_bpb over repeated runs of the same train.py. */
  sigma: number;
  /** Distinct train.py texts run more than once, and the runs among them. */
  programs: number;
  runs: number;
}

/** Pooled standard deviation over groups of runs of one program; null without any repeat. */
export function pooledNoise(results: { trainHash: string; valBpb: number }[]): Noise | null {
  const groups = new Map<string, number[]>();
  for (const { trainHash, valBpb } of results) groups.set(trainHash, [...(groups.get(trainHash) ?? []), valBpb]);
  let squares = 0;
  let degrees = 0;
  let runs = 0;
  let programs = 0;
  for (const values of groups.values()) {
    if (values.length < 2) continue;
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    squares += values.reduce((sum, v) => sum + (v - mean) ** 2, 0);
    degrees += values.length - 1;
    runs += values.length;
    programs += 1;
  }
  return degrees === 0 ? null : { sigma: Math.sqrt(squares / degrees), programs, runs };
}

function fmt(value: number | null | undefined): string {
  return value === null || value === undefined ? 'n/a' : value.toFixed(6);
}

/**
 * What the budget counts: the manifest's BUDGET_CLOCK when it names one, else CPU seconds on the
 * cpu profile (a shared CPU gives a run the same work whatever else it runs: bench/budget_clock.py)
 * and wall seconds elsewhere (a GPU's time is what is scarce, and the smoke profile only exercises
 * the machinery).
 */
export function budgetClockOf(meta: Pick<WorkspaceMeta, 'profile' | 'constants'>): BudgetClock {
  const named = meta.constants?.BUDGET_CLOCK;
  if (named === 'wall' || named === 'cpu') return named;
  return meta.profile === 'cpu' ? 'cpu' : 'wall';
}

/** The budget and allowances of the workspace's profile (manifest constants, with defaults). */
export function budgetOf(meta: WorkspaceMeta): Budget {
  const constant = (name: string, fallback: number): number => {
    const value = Number(meta.constants?.[name]);
    return Number.isFinite(value) && value > 0 ? value : fallback;
  };
  return {
    timeBudget: meta.timeBudget,
    clock: budgetClockOf(meta),
    slack: constant('BUDGET_SLACK', 0.05 * meta.timeBudget),
    startupAllowance: constant('STARTUP_ALLOWANCE', 60),
    exportAllowance: constant('EXPORT_ALLOWANCE', 60),
    maxBatchTokens: constant('MAX_BATCH_TOKENS', 16 * 1024 * 1024),
    scratchBytes: constant('SCRATCH_BYTES', 4 * 1024 ** 3),
  };
}

function realpathOr(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

export async function readManifest(dataDir: string): Promise<Record<string, any>> {
  return JSON.parse(await readFile(join(dataDir, 'manifest.json'), 'utf8'));
}

/** Who proposes an experiment: the name an agent gives itself, else its MCP client and session. */
export function agentName(explicit: string | undefined, caller: Caller): string {
  const named = explicit?.trim();
  if (named) return named;
  const client = caller.clientName ?? caller.transport;
  return caller.sessionId ? `${client}#${caller.sessionId.slice(0, 8)}` : client;
}

function crashStreakMessage(agent: string, streak: Experiment[]): string {
  const latest = streak[0];
  const firstLine = (latest.error ?? latest.status).split('\n')[0].slice(0, 300);
  return (
    `The last ${streak.length} experiments proposed by ${agent} (${streak.map((e) => e.id).reverse().join(', ')}) all failed ` +
    `(latest, ${latest.id}, ${latest.status}: ${firstLine}). Your queue is paused so the slots do not spend the night on broken code; ` +
    `queued experiments of yours wait. Read get_run_log({experiment_id: ${latest.id}}), fix the cause, then call run_experiment again ` +
    `with acknowledge_crashes: true (that also releases your queued experiments).`
  );
}

function mean(values: number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

/** A GPU slot's memory and utilisation as nvidia-smi reported them; null on CPU slots or without nvidia-smi. */
function slotGpu(slot: Slot, gpus: GpuUsage[] | undefined): { memoryUsedMb: number; memoryTotalMb: number; utilizationPercent: number | null } | null {
  const gpu = gpus?.find((g) => String(g.index) === slot.cudaDevices);
  if (!gpu) return null;
  return { memoryUsedMb: gpu.memoryUsedMb, memoryTotalMb: gpu.memoryTotalMb, utilizationPercent: Number.isFinite(gpu.utilizationPercent) ? gpu.utilizationPercent : null };
}
