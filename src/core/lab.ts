import { EventEmitter } from 'node:events';
import { existsSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { UserError } from './errors.js';
import { contentHash, FileHashCache, sha256 } from './hashing.js';
import { applySearchReplace, applyUnifiedDiff, diffStat, unifiedDiff } from './patch.js';
import { stateDir } from './paths.js';
import { checkTrainPy, type Violation } from './rules.js';
import { ProcessRunner, readLogTail, type RunProgress, type Slot } from './runner.js';
import { isFinishedStatus, Store, type Experiment } from './store.js';
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
  log?: (message: string) => void;
}

export const MAX_WAIT_SECONDS = 50;

/** Files the evaluation depends on; prepare.py is read from each run's worktree, the rest from the data dir. */
const HARNESS_IN_TREE = new Set(['prepare.py']);

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
export class Lab extends EventEmitter {
  private readonly running = new Map<number, Promise<void>>();
  private readonly busySlots = new Map<number, number>();
  private readonly checkedTexts = new Map<string, Violation[]>();
  /** For the status view only; runs always re-hash every byte. */
  private readonly statusHashes = new FileHashCache();
  private mutationChain: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(
    readonly workspace: Workspace,
    readonly store: Store,
    readonly meta: WorkspaceMeta,
    readonly runner: ProcessRunner,
    readonly slots: Slot[],
    readonly ceilingSeconds: number,
    private readonly log: (message: string) => void,
    private readonly serving: boolean,
  ) {
    super();
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
    const ceilingSeconds = options.ceilingSeconds ?? 2 * meta.timeBudget + 60;
    const runner = new ProcessRunner({
      python: meta.python,
      dataDir: meta.dataDir,
      pins,
      pinnedFilePath: (name, cwd) => (HARNESS_IN_TREE.has(name) ? join(cwd, name) : join(meta.dataDir, name)),
      ceilingSeconds,
    });
    const log = options.log ?? ((message: string) => process.stderr.write(`[autoresearch] ${message}\n`));
    const serving = (options.mode ?? 'serve') === 'serve';
    if (serving) {
      try {
        acquireServerLock(dir);
      } catch (error) {
        store.close();
        throw error;
      }
    }
    const lab = new Lab(new Workspace(dir), store, meta, runner, options.slots ?? [{ index: 0 }], ceilingSeconds, log, serving);
    if (serving) await lab.reconcile();
    return lab;
  }

  /** Experiments a dead server left running are marked crashed; queued ones run now. */
  private async reconcile(): Promise<void> {
    const { interrupted, queued } = this.store.reconcileOnStart(Date.now());
    for (const experiment of interrupted) {
      this.store.audit.append({
        transport: 'cli',
        kind: 'event',
        method: 'reconcile',
        experimentId: experiment.id,
        message: `experiment ${experiment.id} was running when the server stopped; marked crashed, log kept at ${experiment.logPath}`,
      });
    }
    await this.workspace.pruneWorktrees();
    if (queued.length > 0) this.log(`re-queued ${queued.length} experiment(s) left queued by a previous server`);
    this.pump();
  }

  /** Serialises every call that changes train.py, the branch or the queue. */
  private exclusive<T>(work: () => Promise<T>): Promise<T> {
    const next = this.mutationChain.then(work, work);
    this.mutationChain = next.catch(() => undefined);
    return next;
  }

  // ---- reading ------------------------------------------------------------------------------

  async readTrainPy(experimentId?: number): Promise<{ text: string; hash: string; source: string; commit?: string }> {
    if (experimentId === undefined) {
      const text = await this.workspace.readTrainPy();
      return { text, hash: contentHash(text), source: 'working tree' };
    }
    const experiment = this.experiment(experimentId);
    if (!experiment.candidateCommit) throw new UserError(`Experiment ${experimentId} has no commit (it was rejected before committing).`);
    const text = await this.workspace.readFileAt(experiment.candidateCommit, TRAIN_FILE);
    return { text, hash: contentHash(text), source: `experiment ${experimentId}`, commit: experiment.candidateCommit };
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

  async applyPatch(input: {
    diff?: string;
    edits?: { search: string; replace: string }[];
    expectedHash?: string;
    dryRun?: boolean;
  }): Promise<{ hash: string; previousHash: string; diff: string; added: number; removed: number; written: boolean }> {
    if ((input.diff === undefined) === (input.edits === undefined)) {
      throw new UserError('Pass exactly one of `diff` (a unified diff of train.py) or `edits` (search/replace pairs).');
    }
    return this.exclusive(async () => {
      const before = await this.workspace.readTrainPy();
      const previousHash = contentHash(before);
      if (input.expectedHash !== undefined && input.expectedHash !== previousHash) {
        throw new UserError(
          `train.py changed since you read it (expected hash ${input.expectedHash}, now ${previousHash}). Call read_train_py and redo the edit on the current text.`,
        );
      }
      const applied = input.diff !== undefined ? applyUnifiedDiff(before, input.diff) : applySearchReplace(before, input.edits ?? []);
      if (!applied.ok) throw new UserError(applied.error);
      const after = applied.text;
      const violations = await this.violationsOf(after);
      if (violations.length > 0) {
        throw new UserError(
          `The patched train.py breaks ${violations.length} rule(s); nothing was written:\n` +
            violations.map((v) => `- line ${v.line}: ${v.message}`).join('\n'),
        );
      }
      const stat = diffStat(before, after);
      if (!input.dryRun) await this.workspace.writeTrainPy(after);
      return {
        hash: contentHash(after),
        previousHash,
        diff: unifiedDiff(before, after),
        added: stat.added,
        removed: stat.removed,
        written: !input.dryRun,
      };
    });
  }

  // ---- sessions ------------------------------------------------------------------------------

  async startSession(tag: string, caller: Caller): Promise<{ tag: string; branch: string; baseCommit: string }> {
    const bad = validateSessionTag(tag);
    if (bad) throw new UserError(bad);
    return this.exclusive(() => this.startSessionLocked(tag, caller));
  }

  private async startSessionLocked(tag: string, caller: Caller) {
    if (this.store.getSession(tag) || (await this.workspace.branchExists(SESSION_BRANCH_PREFIX + tag))) {
      throw new UserError(`Session "${tag}" already exists (branch ${SESSION_BRANCH_PREFIX}${tag}). Choose a new tag.`);
    }
    const baseCommit = (await this.workspace.git.raw(['rev-parse', '--verify', `refs/heads/${BASELINE_BRANCH}`])).trim();
    const branch = await this.workspace.createSessionBranch(tag, baseCommit);
    this.store.createSession({
      tag,
      branch,
      baseCommit,
      mcpSessionId: caller.sessionId,
      clientName: caller.clientName,
      clientVersion: caller.clientVersion,
    });
    return { tag, branch, baseCommit };
  }

  /** The session the working tree is on; starts one named by the date when still on the baseline. */
  private async currentSession(caller: Caller): Promise<{ tag: string; branch: string; started: boolean }> {
    const branch = await this.workspace.currentBranch();
    if (branch.startsWith(SESSION_BRANCH_PREFIX)) {
      return { tag: branch.slice(SESSION_BRANCH_PREFIX.length), branch, started: false };
    }
    const stamp = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
    const session = await this.startSessionLocked(`run-${stamp}`, caller);
    return { tag: session.tag, branch: session.branch, started: true };
  }

  // ---- running -------------------------------------------------------------------------------

  async runExperiment(
    input: { description: string; rebaseOf?: number },
    caller: Caller,
  ): Promise<{ experiment: Experiment; sessionStarted?: string; warnings: string[] }> {
    const description = input.description.trim();
    if (!description) throw new UserError('Give the experiment a short description of what it changes (e.g. "LR 0.04 -> 0.06").');
    return this.exclusive(async () => {
      const session = await this.currentSession(caller);
      const head = await this.workspace.headCommit();
      const warnings: string[] = [];
      const text = input.rebaseOf !== undefined ? await this.rebasedTrainPy(input.rebaseOf, head) : await this.workspace.readTrainPy();
      const violations = await this.violationsOf(text);
      const base = {
        sessionTag: session.tag,
        trainHash: contentHash(text),
        description,
        parentCommit: head,
        rebaseOf: input.rebaseOf,
        mcpSessionId: caller.sessionId,
        clientName: caller.clientName,
      };
      if (violations.length > 0) {
        const error = violations.map((v) => `line ${v.line}: ${v.message}`).join('; ');
        const rejected = this.store.createExperiment({ ...base, status: 'rejected', error });
        throw new UserError(
          `Experiment ${rejected.id} rejected before running: train.py breaks ${violations.length} rule(s):\n` +
            violations.map((v) => `- line ${v.line}: ${v.message}`).join('\n'),
        );
      }
      const created = this.store.createExperiment({ ...base, status: 'queued' });
      let commit: string;
      let tree: Awaited<ReturnType<Workspace['workingTreeState']>>;
      try {
        [commit, tree] = await Promise.all([
          this.workspace.commitCandidate(created.id, head, text, `exp ${created.id}: ${description}`),
          this.workspace.workingTreeState(),
        ]);
      } catch (error) {
        this.finish(created.id, { status: 'crashed', error: `could not commit the candidate: ${(error as Error).message}`, finishedAt: Date.now() });
        throw error;
      }
      if (tree.strayChanges.length > 0) {
        warnings.push(`Files other than train.py differ from the branch and are NOT part of this experiment: ${tree.strayChanges.join(', ')}.`);
      }
      const runDir = join(stateDir(this.workspace.dir), 'runs', String(created.id));
      this.store.setCandidate(created.id, {
        candidateCommit: commit,
        logPath: join(runDir, 'run.log'),
        resultPath: join(runDir, 'result.json'),
      });
      this.pump();
      return { experiment: this.experiment(created.id), sessionStarted: session.started ? session.tag : undefined, warnings };
    });
  }

  /** The candidate's change replayed onto the current head (three-way merge of train.py). */
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

  /** Starts queued experiments while slots are free (FIFO). */
  private pump(): void {
    if (this.closed || !this.serving) return;
    for (const slot of this.slots) {
      if (this.busySlots.has(slot.index)) continue;
      const next = this.store.nextQueued();
      if (!next) return;
      this.busySlots.set(slot.index, next.id);
      const run = this.execute(next, slot).finally(() => {
        this.busySlots.delete(slot.index);
        this.running.delete(next.id);
        this.pump();
      });
      this.running.set(next.id, run);
    }
  }

  private async execute(experiment: Experiment, slot: Slot): Promise<void> {
    const id = experiment.id;
    const logPath = experiment.logPath ?? join(stateDir(this.workspace.dir), 'runs', String(id), 'run.log');
    const resultPath = experiment.resultPath ?? join(stateDir(this.workspace.dir), 'runs', String(id), 'result.json');
    this.store.markRunning(id, { slot: slot.index, startedAt: Date.now() });
    let cwd: string;
    try {
      if (!experiment.candidateCommit) throw new Error('no candidate commit');
      cwd = await this.workspace.addWorktree(id, experiment.candidateCommit);
    } catch (error) {
      this.finish(id, { status: 'crashed', error: `could not create the run's worktree: ${(error as Error).message}`, finishedAt: Date.now() });
      return;
    }
    try {
      const outcome = await this.runner.run({ experimentId: id, cwd, logPath, resultPath, slot }, (pid) =>
        this.store.markRunning(id, { slot: slot.index, pid, startedAt: Date.now() }),
      );
      const summary = outcome.summary;
      const record = outcome.record;
      this.finish(id, {
        status: outcome.status,
        error: outcome.error,
        exitCode: outcome.exitCode,
        signal: outcome.signal,
        finishedAt: outcome.finishedAt,
        valBpb: outcome.status === 'succeeded' ? record?.val_bpb : undefined,
        evalTokens: record?.eval_tokens,
        evalBytes: record?.eval_bytes,
        harnessHashes: record?.hashes,
        trainingSeconds: summary.training_seconds,
        totalSeconds: (outcome.finishedAt - outcome.startedAt) / 1000,
        peakVramMb: summary.peak_vram_mb,
        mfuPercent: summary.mfu_percent,
        totalTokensM: summary.total_tokens_M,
        numSteps: summary.num_steps,
        numParamsM: summary.num_params_M,
        depth: summary.depth,
      });
      if (outcome.status === 'rejected' || outcome.status === 'timed_out') {
        this.store.audit.append({
          transport: 'cli',
          kind: 'event',
          method: outcome.status === 'rejected' ? 'harness_mismatch' : 'ceiling_kill',
          experimentId: id,
          message: outcome.error,
          isError: true,
        });
      }
    } catch (error) {
      this.finish(id, { status: 'crashed', error: `the server could not run it: ${(error as Error).message}`, finishedAt: Date.now() });
    } finally {
      // Waiters already have the result; the slot frees once the worktree is gone.
      await this.workspace.removeWorktree(id).catch(() => undefined);
    }
  }

  /**
   * Stores an outcome and wakes the waiters at once. If the store refuses the outcome the run is
   * still closed as crashed, never left running.
   */
  private finish(id: number, finished: Parameters<Store['markFinished']>[1]): void {
    try {
      this.store.markFinished(id, finished);
    } catch (error) {
      this.store.markFinished(id, {
        status: 'crashed',
        error: `the run's outcome could not be recorded (${(error as Error).message})`,
        finishedAt: finished.finishedAt ?? Date.now(),
      });
    }
    this.emit('finished', id);
  }

  async cancel(id: number): Promise<Experiment> {
    const experiment = this.experiment(id);
    if (experiment.status === 'queued') {
      this.finish(id, { status: 'cancelled', error: 'cancelled before it started', finishedAt: Date.now() });
      return this.experiment(id);
    }
    if (experiment.status === 'running') {
      this.runner.stop(id, 'cancelled');
      await this.running.get(id);
      return this.experiment(id);
    }
    throw new UserError(`Experiment ${id} is already ${experiment.status}; only queued or running experiments can be cancelled.`);
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
    const target = id ?? this.store.listExperiments({ status: ['running', 'queued'], order: 'id', limit: 1, ascending: true })[0]?.id;
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

  // ---- deciding ------------------------------------------------------------------------------

  /** Lowest val_bpb among kept experiments of the session: the number a new candidate must beat. */
  best(sessionTag?: string): Experiment | undefined {
    return this.store.bestExperiment(sessionTag);
  }

  /** Seed-to-seed noise of this session, from repeated runs of the same train.py. */
  noise(sessionTag?: string): Noise | null {
    return sessionTag ? pooledNoise(this.store.repeatedResults(sessionTag)) : null;
  }

  async decide(
    id: number,
    action: DecisionAction,
    minImprovement = 0,
  ): Promise<{
    experiment: Experiment;
    decision: 'keep' | 'discard';
    reason: string;
    head: string;
    restoredTrainPy: boolean;
    noise: Noise | null;
    withinNoise: boolean | null;
  }> {
    return this.exclusive(async () => {
      const experiment = this.experiment(id);
      if (experiment.decision) {
        throw new UserError(`Experiment ${id} was already decided: ${experiment.decision} (${experiment.decisionReason ?? ''}).`);
      }
      if (!isFinishedStatus(experiment.status)) {
        throw new UserError(`Experiment ${id} is ${experiment.status}; wait for it with get_results(wait_seconds) before deciding.`);
      }
      const branch = await this.workspace.currentBranch();
      const head = await this.workspace.headCommit();
      const best = this.best(experiment.sessionTag);
      let decision: 'keep' | 'discard';
      let reason: string;
      if (action === 'keep') {
        if (experiment.status !== 'succeeded') {
          throw new UserError(`Experiment ${id} ${experiment.status}; only a succeeded experiment can be kept. Discard it (commit_or_revert action "discard").`);
        }
        decision = 'keep';
        reason = 'kept by request';
      } else if (action === 'discard') {
        decision = 'discard';
        reason = 'discarded by request';
      } else if (experiment.status !== 'succeeded') {
        decision = 'discard';
        reason = `${experiment.status}: always discarded`;
      } else if (best === undefined) {
        decision = 'keep';
        reason = 'first result of the session: the baseline to beat';
      } else if ((experiment.valBpb ?? Infinity) < (best.valBpb ?? Infinity) - minImprovement) {
        decision = 'keep';
        reason = `val_bpb ${fmt(experiment.valBpb)} < best ${fmt(best.valBpb)} (experiment ${best.id})${minImprovement > 0 ? ` by more than ${minImprovement}` : ''}`;
      } else {
        decision = 'discard';
        reason = `val_bpb ${fmt(experiment.valBpb)} is not below best ${fmt(best.valBpb)} (experiment ${best.id})${minImprovement > 0 ? ` by more than ${minImprovement}` : ''}`;
      }
      const noise = this.noise(experiment.sessionTag);
      const gain = best?.valBpb != null && experiment.valBpb != null ? best.valBpb - experiment.valBpb : null;
      // Advisory: a gain smaller than twice the measured noise may be luck; re-run to confirm.
      const withinNoise = noise && gain !== null && gain > 0 ? gain < 2 * noise.sigma : null;

      let restoredTrainPy = false;
      if (decision === 'keep') {
        if (experiment.parentCommit !== head) {
          throw new UserError(
            `Experiment ${id} ran from ${experiment.parentCommit?.slice(0, 8)}, but the branch head is now ${head.slice(0, 8)} ` +
              `(a change was kept since). Keeping it would drop that change or keep an untested combination. ` +
              `Re-run it on the head with run_experiment({description, rebase_of: ${id}}) and decide on the new experiment.`,
          );
        }
        await this.workspace.advanceBranch(branch, head, experiment.candidateCommit as string);
      } else {
        if (experiment.candidateCommit) {
          await this.workspace.markDiscarded(id, experiment.candidateCommit);
          const candidateText = await this.workspace.readFileAt(experiment.candidateCommit, TRAIN_FILE);
          if ((await this.workspace.readTrainPy()) === candidateText) {
            await this.workspace.writeTrainPy(await this.workspace.readFileAt(head, TRAIN_FILE));
            restoredTrainPy = true;
          }
        }
      }
      this.store.setDecision(id, decision, reason);
      return { experiment: this.experiment(id), decision, reason, head: await this.workspace.headCommit(), restoredTrainPy, noise, withinNoise };
    });
  }

  // ---- overview ------------------------------------------------------------------------------

  async status() {
    const branch = await this.workspace.currentBranch();
    const head = await this.workspace.headCommit();
    const tree = await this.workspace.workingTreeState();
    const sessionTag = branch.startsWith(SESSION_BRANCH_PREFIX) ? branch.slice(SESSION_BRANCH_PREFIX.length) : undefined;
    const best = this.best(sessionTag);
    const drift = await this.runner.harnessDrift(this.workspace.dir, (path) => this.statusHashes.hash(path));
    const queued = this.store.listExperiments({ status: 'queued', order: 'id', ascending: true }).map((e) => e.id);
    return {
      workspace: this.workspace.dir,
      branch,
      session: sessionTag ?? null,
      head,
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
      })),
      queue: queued,
      counts: this.store.countByStatus(),
      pinnedHashes: this.store.getPins(),
      harnessIntact: drift.length === 0,
      harnessDrift: drift,
      trainPyModified: tree.trainPyModified,
      strayChanges: tree.strayChanges,
    };
  }

  async resultsTsv(sessionTag?: string): Promise<string> {
    return resultsTsv(this.store.listExperiments({ order: 'id', ascending: true, session: sessionTag }));
  }

  /** Stops running experiments (whole process groups), cancels the queue, closes the database. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (!this.serving) {
      this.store.close();
      return;
    }
    for (const experiment of this.store.listExperiments({ status: 'queued', order: 'id' })) {
      this.finish(experiment.id, { status: 'cancelled', error: 'server stopped before it ran', finishedAt: Date.now() });
    }
    this.runner.stopAll('cancelled');
    await Promise.allSettled([...this.running.values()]);
    this.store.close();
    releaseServerLock(this.workspace.dir);
  }
}

function serverLockPath(workspace: string): string {
  return join(stateDir(workspace), 'server.pid');
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z');
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * One serving process per workspace: two would run the same queue twice and mark each other's
 * runs as crashed. A lock left by a dead process is taken over.
 */
function acquireServerLock(workspace: string): void {
  const path = serverLockPath(workspace);
  try {
    writeFileSync(path, String(process.pid), { flag: 'wx' });
    return;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  const holder = Number(readFileSync(path, 'utf8').trim());
  if (holder !== process.pid && Number.isInteger(holder) && holder > 0 && processAlive(holder)) {
    throw new UserError(
      `Another autoresearch-mcp server (pid ${holder}) is serving ${workspace}. Connect to it instead ` +
        `(serve it with --http to share it between clients) or stop it first.`,
    );
  }
  writeFileSync(path, String(process.pid));
}

function releaseServerLock(workspace: string): void {
  try {
    if (readFileSync(serverLockPath(workspace), 'utf8').trim() === String(process.pid)) unlinkSync(serverLockPath(workspace));
  } catch {
    // Already gone.
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

export async function readManifest(dataDir: string): Promise<Record<string, any>> {
  return JSON.parse(await readFile(join(dataDir, 'manifest.json'), 'utf8'));
}
