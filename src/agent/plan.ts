import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { isMap, LineCounter, parseDocument, type Node } from 'yaml';
import { z } from 'zod';
import { UsageError } from '../core/errors.js';
import { ResearchClient, ToolError, type Progress } from './client.js';
import { ProgressBar } from './terminal.js';

const editShape = z.object({ search: z.string().min(1), replace: z.string() });
const literal = z.union([z.number(), z.boolean(), z.string()]);

const stepShape = z
  .object({
    description: z.string().min(1).max(200),
    diff: z.string().optional(),
    edits: z.array(editShape).min(1).optional(),
    set: z.record(z.string(), literal).optional().describe('Module constants of train.py to change, NAME: value'),
  })
  .strict()
  .refine((step) => [step.diff, step.edits, step.set].filter((x) => x !== undefined).length === 1, {
    message: 'each step needs exactly one of diff, edits or set',
  });

const planShape = z
  .object({
    baseline: z.boolean().default(true).describe('Run the unmodified train.py first when the session has no result yet'),
    on_crash: z.enum(['continue', 'stop']).default('continue'),
    steps: z.array(stepShape).min(1),
  })
  .strict();

/** A validated plan; `set` values are Python source, ready to write into train.py. */
export interface PlanStep {
  description: string;
  diff?: string;
  edits?: { search: string; replace: string }[];
  set?: Record<string, string>;
}
export interface Plan {
  baseline: boolean;
  on_crash: 'continue' | 'stop';
  steps: PlanStep[];
}

/** A plan problem, with the line of the plan file it is about. */
export class PlanError extends UsageError {}

const CONSTANT_LINE = /^([A-Z][A-Z0-9_]*)(\s*=\s*)(.+?)(\s*#.*)?$/;

interface ConstantLine {
  line: string;
  value: string;
  /** The line with the value swapped, spacing and comment kept. */
  withValue: (value: string) => string;
}

/** Module-level UPPER_CASE assignments of train.py: the knobs a plan or sweep may set. */
export function trainConstants(source: string): Map<string, ConstantLine> {
  const constants = new Map<string, ConstantLine>();
  for (const line of source.split('\n')) {
    const match = CONSTANT_LINE.exec(line);
    if (!match || constants.has(match[1])) continue;
    const [, name, equals, value, comment = ''] = match;
    constants.set(name, { line, value, withValue: (next) => `${name}${equals}${next}${comment}` });
  }
  return constants;
}

/** Python source for a plan value: numbers and booleans as literals, strings quoted. */
export function pythonLiteral(value: string | number | boolean): string {
  if (typeof value === 'boolean') return value ? 'True' : 'False';
  if (typeof value === 'number') return String(value);
  return JSON.stringify(value);
}

/** The search/replace edit that sets one constant (the value given as Python source). */
export function constantEdit(source: string, name: string, pythonValue: string, profile?: string): { search: string; replace: string } {
  const constant = trainConstants(source).get(name);
  if (!constant) throw new PlanError(`train.py has no module constant ${name}.`);
  if (profile === undefined) return { search: constant.line, replace: constant.withValue(pythonValue) };
  const entry = profileEntry(profile);
  if (!entry.test(constant.value)) throw new PlanError(`${name} has no "${profile}" entry: ${constant.line.trim()}`);
  return { search: constant.line, replace: constant.withValue(constant.value.replace(entry, `$1${pythonValue}$3`)) };
}

/**
 * Which entry an edit of `name` for `profile` changes: `profile` when the constant holds one value
 * per profile ({"gpu": 8, "cpu": 1, "smoke": 2}[PROFILE]), undefined when it holds one value.
 */
export function entryFor(source: string, name: string, profile: string): string | undefined {
  return trainConstants(source).get(name)?.value.trim().startsWith('{') ? profile : undefined;
}

/** One profile's entry of a per-profile constant ({"gpu": 8, "cpu": 1, "smoke": 2}[PROFILE]): key, value, what follows. */
function profileEntry(profile: string): RegExp {
  return new RegExp(`("${profile}"\\s*:\\s*)([^,}]+?)(\\s*[,}])`);
}

/** The value of a numeric constant (or of its entry for one profile) as a number. */
export function constantNumber(source: string, name: string, profile?: string): number {
  const constant = trainConstants(source).get(name);
  if (!constant) throw new PlanError(`train.py has no module constant ${name}.`);
  const text = profile === undefined ? constant.value : profileEntry(profile).exec(constant.value)?.[2];
  const value = Number(text?.trim());
  if (text === undefined || !Number.isFinite(value)) throw new PlanError(`${name}${profile ? ` (${profile})` : ''} is not a number: ${constant.line.trim()}`);
  return value;
}

/**
 * Parses a plan (YAML or JSON: JSON is YAML) and checks it against train.py, naming the line of
 * every problem. Nothing runs before the whole plan is valid.
 */
export function parsePlan(text: string, trainPy: string, fileName = 'plan'): Plan {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false });
  if (doc.errors.length > 0) {
    const error = doc.errors[0];
    const line = error.linePos?.[0]?.line ?? lines.linePos(error.pos[0]).line;
    throw new PlanError(`${fileName}:${line}: cannot parse: ${error.message.split('\n')[0]}`);
  }
  const lineOf = (node: Node | null | undefined) => (node?.range ? lines.linePos(node.range[0]).line : 1);
  const parsed = planShape.safeParse(doc.toJS());
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const node = doc.getIn(issue.path as (string | number)[], true) as Node | undefined;
    const where = issue.path.length > 0 ? ` at ${issue.path.join('.')}` : '';
    throw new PlanError(`${fileName}:${lineOf(node ?? (doc.contents as Node))}: ${issue.message}${where}`);
  }
  const constants = trainConstants(trainPy);
  parsed.data.steps.forEach((step, index) => {
    for (const name of Object.keys(step.set ?? {})) {
      if (!constants.has(name)) {
        const setNode = doc.getIn(['steps', index, 'set'], true);
        const pair = isMap(setNode) ? setNode.items.find((item) => (item.key as { value?: unknown })?.value === name) : undefined;
        const known = [...constants.keys()].join(', ');
        throw new PlanError(`${fileName}:${lineOf((pair?.key as Node) ?? (setNode as Node))}: train.py has no constant ${name}. Known constants: ${known}.`);
      }
    }
  });
  const steps = parsed.data.steps.map((step) => ({
    ...step,
    set: step.set && Object.fromEntries(Object.entries(step.set).map(([name, value]) => [name, pythonLiteral(value)])),
  }));
  return { ...parsed.data, steps };
}

/** `NAME=v1,v2,...` -> one step per value; values are Python expressions, inserted as written. */
export function sweepPlan(specs: string[], trainPy: string): Plan {
  const constants = trainConstants(trainPy);
  const steps: PlanStep[] = [];
  for (const spec of specs) {
    const match = /^([A-Z][A-Z0-9_]*)=(.+)$/.exec(spec.trim());
    if (!match) throw new PlanError(`--sweep "${spec}": write NAME=v1,v2,... with an UPPER_CASE constant of train.py.`);
    const [, name, values] = match;
    if (!constants.has(name)) throw new PlanError(`--sweep ${name}: train.py has no constant ${name}. Known: ${[...constants.keys()].join(', ')}.`);
    for (const value of values.split(',').map((v) => v.trim()).filter(Boolean)) {
      steps.push({ description: `${name} = ${value}`, set: { [name]: value } });
    }
  }
  if (steps.length === 0) throw new PlanError('--sweep needs at least one NAME=value.');
  return { baseline: true, on_crash: 'continue', steps };
}

export interface StepOutcome {
  description: string;
  experimentId?: number;
  status: string;
  valBpb?: number | null;
  decision?: string;
  reason?: string;
  error?: string;
}

export interface PlanReporter {
  stepStarted?(description: string, experimentId: number): void;
  progress?(experimentId: number, progress: Progress): void;
  stepFinished?(outcome: StepOutcome): void;
}

/** Runs one experiment through the tools: patch (if any), run, wait, decide by the server's rule. */
async function runStep(client: ResearchClient, step: PlanStep | undefined, description: string, reporter: PlanReporter): Promise<StepOutcome> {
  try {
    if (step) {
      const current = await client.call('read_train_py');
      const edits = step.set
        ? Object.entries(step.set).map(([name, value]) => constantEdit(current.text, name, value))
        : step.edits;
      await client.call('apply_patch', { diff: step.diff, edits, expected_hash: current.hash });
    }
    const run = await client.call('run_experiment', { description });
    const id: number = run.experiment.id;
    reporter.stepStarted?.(description, id);
    const finished = await client.waitForExperiment(id, (p) => reporter.progress?.(id, p));
    const decided = await client.call('commit_or_revert', { experiment_id: id, action: 'auto' });
    return { description, experimentId: id, status: finished.status, valBpb: finished.val_bpb, decision: decided.decision, reason: decided.reason, error: finished.error ?? undefined };
  } catch (error) {
    if (!(error instanceof ToolError) && !(error instanceof PlanError)) throw error;
    // A refused patch leaves train.py as it was; later steps still run from the head.
    return { description, status: 'refused', error: error.message };
  }
}

export async function runPlan(client: ResearchClient, plan: Plan, reporter: PlanReporter = {}): Promise<StepOutcome[]> {
  const outcomes: StepOutcome[] = [];
  const finish = (outcome: StepOutcome) => {
    outcomes.push(outcome);
    reporter.stepFinished?.(outcome);
    return outcome;
  };
  const results = await client.call('get_results', { limit: 1 });
  if (plan.baseline && results.best === null) finish(await runStep(client, undefined, 'baseline', reporter));
  // The noise floor first: without it no gain can be told from luck, and auto keeps nothing.
  const status = await client.call('status');
  if (!status.noise || status.noise.id === undefined) {
    const measured = await client.call('measure_noise', {});
    for (const experiment of measured.experiments as { id: number }[]) {
      reporter.stepStarted?.(`noise run of the head`, experiment.id);
      const done = await client.waitForExperiment(experiment.id, (p) => reporter.progress?.(experiment.id, p));
      finish({ description: `noise run (seed ${done.seed ?? '?'})`, experimentId: experiment.id, status: done.status, valBpb: done.val_bpb, decision: 'noise' });
    }
  }
  for (const step of plan.steps) {
    const outcome = finish(await runStep(client, step, step.description, reporter));
    if (plan.on_crash === 'stop' && ['crashed', 'timed_out'].includes(outcome.status)) break;
  }
  return outcomes;
}

export function formatOutcome(outcome: StepOutcome): string {
  const id = outcome.experimentId !== undefined ? `#${outcome.experimentId}` : '-';
  const bpb = typeof outcome.valBpb === 'number' ? outcome.valBpb.toFixed(6) : '   n/a  ';
  const verdict = outcome.decision ?? outcome.status;
  return `${id.padEnd(4)} ${bpb}  ${outcome.status.padEnd(9)} ${verdict.padEnd(8)} ${outcome.description}${outcome.error ? `  (${outcome.error.split('\n')[0]})` : ''}`;
}

/** `autoresearch-mcp agent`: runs a plan file or a sweep against a workspace or an HTTP server. */
export async function runAgentCommand(options: {
  workspace?: string;
  plan?: string;
  sweep?: string[];
  url?: string;
  token?: string;
  unsandboxed?: boolean;
}): Promise<number> {
  if (!options.plan === !options.sweep?.length) throw new PlanError('Give either --plan FILE or --sweep NAME=v1,v2,...');
  if (!options.url && !options.workspace) throw new PlanError('Give --workspace DIR (a server is started for it) or --url of a running server.');
  const planText = options.plan ? await readFile(resolve(options.plan), 'utf8') : undefined;
  const client = options.url
    ? await ResearchClient.http(options.url, { token: options.token })
    : await ResearchClient.spawn(resolve(options.workspace as string), {
        serverLog: resolve(options.workspace as string, '.autoresearch', 'server.log'),
        serverArgs: options.unsandboxed ? ['--unsandboxed'] : [],
      });
  try {
    const trainPy = (await client.call('read_train_py')).text as string;
    const plan = planText !== undefined ? parsePlan(planText, trainPy, options.plan) : sweepPlan(options.sweep ?? [], trainPy);
    const bar = new ProgressBar(process.stderr);
    const outcomes = await runPlan(client, plan, {
      stepStarted: (description, id) => bar.start(`#${id} ${description}`),
      progress: (_id, p) => bar.update(p.progress, p.message),
      stepFinished: (outcome) => {
        bar.stop();
        process.stderr.write(`${formatOutcome(outcome)}\n`);
      },
    });
    const failed = outcomes.filter((o) => o.status === 'refused').length;
    return failed > 0 ? 1 : 0;
  } finally {
    await client.close();
  }
}
