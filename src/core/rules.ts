/**
 * Quick checks on train.py before a patch is written and before a run spends compute.
 *
 * They are feedback for honest mistakes, not the security boundary: the run executes in a
 * sandbox that cannot see validation data, the state, the repository or the network, and the
 * metric comes from an evaluator in its own process (docs/run-protocol.md). What is checked is
 * what would certainly fail or be wasted in that sandbox, each with what to do instead:
 * - train.py must compile (and pass patch.ts's text limits);
 * - imports: a module the sandbox would block anyway (network, child processes), a module not
 *   installed for the Python that runs train.py, a relative import;
 * - `from prepare import NAME` / `prepare.NAME` must be a public name of the harness's
 *   prepare.py (read from the file; evaluate_bpb is gone: the server evaluates);
 * - plain string paths to validation data (val.bin), to the data folder or the state folder,
 *   neither of which is in the sandbox;
 * - train.py must hand its model over with finish_training(model) (when prepare.py has it).
 *
 * python/inspect_train.py turns the source into facts (imports, calls, attribute chains on
 * imported names, string literals); `checkTrainFacts` judges them against a policy, as a pure
 * function so it is testable on hand-written facts.
 */
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { checkTrainPyText } from './patch.js';

// ---- facts (the JSON printed by python/inspect_train.py) --------------------------------------

export interface ImportFact {
  module: string;
  names: string[];
  line: number;
  /** Leading dots of a relative import. */
  level: number;
}

export interface CallFact {
  /** Dotted name of the callee, resolved through `import x as y`; "<expr>" for a computed callee. */
  name: string;
  /** The leading name was bound by an import (so `name` is a module path). */
  imported: boolean;
  line: number;
}

/** An attribute chain whose leading name was bound by an import (`prepare.TIME_BUDGET`). */
export interface AttributeFact {
  name: string;
  line: number;
}

export interface StringFact {
  value: string;
  line: number;
}

export interface TrainFacts {
  imports: ImportFact[];
  calls: CallFact[];
  attributes: AttributeFact[];
  strings: StringFact[];
  /** Top-level modules train.py imports that the inspecting Python cannot find. */
  unavailable_modules?: string[];
  /** Public names of the harness module (from its file); null or absent: use the policy's list. */
  harness_names?: string[] | null;
}

// ---- violations and policy ------------------------------------------------------------------

export type RuleId =
  | 'text' // size / characters (see patch.ts)
  | 'syntax' // does not compile
  | 'import' // blocked in the sandbox, not installed, or relative
  | 'harness' // a name prepare.py does not have, or its internal wiring
  | 'validation-data' // a plain path to validation data
  | 'data-path' // a plain path to the data or state folder (not in the sandbox)
  | 'handover' // finish_training(model) never called
  | 'inspector'; // the checker itself could not run (fails closed)

export interface Violation {
  rule: RuleId;
  line: number;
  message: string;
}

export interface StringPattern {
  rule: 'validation-data' | 'data-path' | 'harness';
  /** Regular expression source, matched case-insensitively. */
  pattern: string;
  /** The whole message after the quoted string: what it is and what to do instead. */
  advice: string;
}

export interface RulesPolicy {
  /** Module (or dotted prefix) -> why the sandbox would stop it and what to do instead. */
  blockedModules: Record<string, string>;
  harnessModule: string;
  /** prepare.py's public names when they cannot be read from the file. */
  harnessNames: string[];
  /** Names that used to be in prepare.py -> what replaces them. */
  removedHarnessNames: Record<string, string>;
  /** The hand-over every train.py must call. */
  handoverFunction: string;
  forbiddenStrings: StringPattern[];
}

/** prepare.py's API as docs/run-protocol.md describes it. */
export const HARNESS_API = [
  'PROFILE', 'MAX_SEQ_LEN', 'TIME_BUDGET', 'VOCAB_SIZE', 'EVAL_BATCH', 'SEED',
  'get_tokenizer', 'make_dataloader', 'budget_used', 'finish_training',
];

const NETWORK = 'the sandbox has no network, so it would fail at run time. Downloads and pretrained weights are not available: train from scratch on make_dataloader\'s batches';
const PROCESSES =
  'a run is one process in a sandbox: child processes see no more than train.py does, gain nothing and are killed at the hand-over. Do the work in train.py itself';

export const defaultPolicy: RulesPolicy = {
  blockedModules: {
    socket: NETWORK, ssl: NETWORK, urllib: NETWORK, urllib3: NETWORK, http: NETWORK, requests: NETWORK, httpx: NETWORK,
    aiohttp: NETWORK, ftplib: NETWORK, smtplib: NETWORK, websockets: NETWORK, 'torch.hub': NETWORK, huggingface_hub: NETWORK,
    'torch.utils.model_zoo': NETWORK,
    subprocess: PROCESSES, multiprocessing: PROCESSES, 'torch.multiprocessing': PROCESSES,
    'torch.distributed': 'runs are single-process on one device, and the sandbox has no network for a process group. Remove the distributed setup',
  },
  harnessModule: 'prepare',
  harnessNames: HARNESS_API,
  removedHarnessNames: {
    evaluate_bpb:
      'evaluate_bpb is gone: the server evaluates the model itself, in a separate process, after train.py hands it over. ' +
      'Remove it and end train.py with finish_training(model) (from prepare import finish_training)',
    EVAL_TOKENS: 'EVAL_TOKENS is gone: the evaluator decides how much validation data it scores. Remove it',
  },
  handoverFunction: 'finish_training',
  forbiddenStrings: [
    {
      rule: 'validation-data',
      pattern: '(^|[\\/])val\\.bin|(^|[\\/])(val|valid|validation)[._-][^\\/]*\\.(bin|npy|npz|pt)$',
      advice: 'names the validation data. It is not in the sandbox (only the evaluator reads it), and training on it would void the result. Train on make_dataloader(...) batches',
    },
    {
      rule: 'data-path',
      pattern: '(^|[\\/])train\\.bin|(^|[\\/])data[\\/](tokenizer\\.json|token_bytes\\.bin|manifest\\.json|(train|val)\\b)|/sandbox/data|AUTORESEARCH_DATA_DIR',
      advice: 'is a path into the prepared data. The sandbox has only what prepare.py needs there; training rows come from make_dataloader(...) and the tokenizer from get_tokenizer(). Use those',
    },
    {
      rule: 'data-path',
      pattern: '\\.autoresearch([\\/]|$)|state\\.db',
      advice: 'is the server\'s state folder, which a run cannot see. Remove it; results come from the tools (get_results)',
    },
    {
      rule: 'harness',
      pattern: 'AUTORESEARCH_',
      advice: 'is the harness\'s wiring with the supervisor (channel, seed, data dir); using it directly breaks the run. Use prepare\'s SEED, make_dataloader, budget_used and finish_training',
    },
  ],
};

// ---- the pure checker -----------------------------------------------------------------------

function isUnder(dotted: string, prefix: string): boolean {
  return dotted === prefix || dotted.startsWith(prefix + '.');
}

function blockedReason(module: string, policy: RulesPolicy): string | undefined {
  let best: string | undefined;
  let length = -1;
  for (const [prefix, reason] of Object.entries(policy.blockedModules)) {
    if (isUnder(module, prefix) && prefix.length > length) {
      best = reason;
      length = prefix.length;
    }
  }
  return best;
}

function harnessNameProblem(name: string, names: string[], policy: RulesPolicy): string | undefined {
  if (names.includes(name)) return undefined;
  const removed = policy.removedHarnessNames[name];
  if (removed) return removed;
  return `${policy.harnessModule}.py has no public name ${name}; it offers ${names.join(', ')}. Import one of those, or keep your own copy in train.py`;
}

function checkImports(facts: TrainFacts, policy: RulesPolicy): Violation[] {
  const found: Violation[] = [];
  const harnessNames = facts.harness_names ?? policy.harnessNames;
  const unavailable = new Set(facts.unavailable_modules ?? []);
  const reported = new Set<string>();
  for (const fact of facts.imports) {
    const { line, module } = fact;
    if (fact.level > 0) {
      found.push({
        rule: 'import',
        line,
        message: `Relative import (from ${'.'.repeat(fact.level)}${module} import ...): train.py runs alone beside prepare.py, with no package around it. Import from the standard library, torch, numpy or ${policy.harnessModule}.`,
      });
      continue;
    }
    // `from torch import hub` imports torch.hub
    const modules = fact.names.length > 0 ? [module, ...fact.names.map((name) => `${module}.${name}`)] : [module];
    const blocked = modules.map((m) => ({ m, why: blockedReason(m, policy) })).find((entry) => entry.why);
    if (blocked) {
      found.push({ rule: 'import', line, message: `import ${blocked.m}: ${blocked.why}.` });
      continue;
    }
    const top = module.split('.')[0];
    if (unavailable.has(top)) {
      found.push({
        rule: 'import',
        line,
        message: `import ${module}: ${top} is not installed for the Python that runs train.py, and a run cannot install packages (no network). Remove the import, or use the standard library, torch or numpy.`,
      });
      continue;
    }
    if (isUnder(module, policy.harnessModule)) {
      if (module !== policy.harnessModule) {
        found.push({ rule: 'harness', line, message: `${module} does not exist: ${policy.harnessModule} is one file. Use \`from ${policy.harnessModule} import NAME\` with NAME one of ${harnessNames.join(', ')}.` });
        continue;
      }
      for (const name of fact.names) {
        if (name === '*' || reported.has(`${line}:${name}`)) continue;
        const problem = harnessNameProblem(name, harnessNames, policy);
        if (problem) {
          reported.add(`${line}:${name}`);
          found.push({ rule: 'harness', line, message: `from ${policy.harnessModule} import ${name}: ${problem}.` });
        }
      }
    }
  }
  // `import prepare` then `prepare.NAME`
  for (const fact of facts.attributes) {
    if (!fact.name.startsWith(policy.harnessModule + '.')) continue;
    const name = fact.name.slice(policy.harnessModule.length + 1).split('.')[0];
    if (reported.has(`${fact.line}:${name}`)) continue;
    const problem = harnessNameProblem(name, harnessNames, policy);
    if (problem) {
      reported.add(`${fact.line}:${name}`);
      found.push({ rule: 'harness', line: fact.line, message: `${policy.harnessModule}.${name}: ${problem}.` });
    }
  }
  return found;
}

function checkStrings(facts: TrainFacts, policy: RulesPolicy): Violation[] {
  const found: Violation[] = [];
  const patterns = policy.forbiddenStrings.map((p) => ({ ...p, regex: new RegExp(p.pattern, 'i') }));
  for (const fact of facts.strings) {
    const pattern = patterns.find((candidate) => candidate.regex.test(fact.value));
    if (!pattern) continue;
    const shown = JSON.stringify(fact.value.length > 80 ? fact.value.slice(0, 80) + '…' : fact.value);
    found.push({ rule: pattern.rule, line: fact.line, message: `The string ${shown} ${pattern.advice}.` });
  }
  return found;
}

function checkHandover(facts: TrainFacts, policy: RulesPolicy): Violation[] {
  // A harness file without the hand-over (an older prepare.py) cannot be handed over to.
  if (facts.harness_names && !facts.harness_names.includes(policy.handoverFunction)) return [];
  const target = `${policy.harnessModule}.${policy.handoverFunction}`;
  if (facts.calls.some((call) => call.imported && call.name === target)) return [];
  const harnessImport = facts.imports.find((i) => i.module === policy.harnessModule && i.level === 0);
  return [
    {
      rule: 'handover',
      line: harnessImport?.line ?? 1,
      message:
        `train.py never calls ${policy.handoverFunction}(model): without the hand-over the run has no model to evaluate and counts as crashed. ` +
        `Import it (\`from ${policy.harnessModule} import ${policy.handoverFunction}\`) and call it once, with the trained model, when training ends.`,
    },
  ];
}

/** Judges inspector facts against a policy. Pure; violations come back sorted by line. */
export function checkTrainFacts(facts: TrainFacts, policy: RulesPolicy = defaultPolicy): Violation[] {
  const all = [...checkImports(facts, policy), ...checkStrings(facts, policy), ...checkHandover(facts, policy)];
  const seen = new Set<string>();
  const unique = all.filter((v) => {
    const key = `${v.line}\u0000${v.rule}\u0000${v.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  return unique.sort((a, b) => a.line - b.line || a.rule.localeCompare(b.rule));
}

// ---- running the inspector ------------------------------------------------------------------

export const INSPECTOR_SCRIPT = fileURLToPath(new URL('../../python/inspect_train.py', import.meta.url));
/** The harness file whose public names train.py may import: the package's prepare.py, which init copies and pins. */
export const HARNESS_SCRIPT = fileURLToPath(new URL('../../python/prepare.py', import.meta.url));

export type InspectResult =
  | { status: 'ok'; facts: TrainFacts }
  | { status: 'syntax-error'; syntaxError: { line: number; col: number; message: string } }
  | { status: 'failed'; error: string };

export interface InspectOptions {
  timeoutMs?: number;
  scriptPath?: string;
  /** prepare.py to read the public names from (default HARNESS_SCRIPT); null: none, the policy's list applies. */
  harnessPath?: string | null;
}

/**
 * Runs python/inspect_train.py on `source` (passed on stdin, never written to disk or imported).
 * Any stdlib-only Python 3.8+ works; it does not need torch. Use the Python that runs train.py:
 * it is the one asked which imported modules are installed.
 */
export async function inspectTrainPy(source: string, pythonPath: string, options: InspectOptions = {}): Promise<InspectResult> {
  const script = options.scriptPath ?? INSPECTOR_SCRIPT;
  let result;
  try {
    // -I: isolated mode, so PYTHON* variables, user site-packages and the cwd cannot change the inspector.
    const harness = options.harnessPath === undefined ? HARNESS_SCRIPT : options.harnessPath;
    result = await execa(pythonPath, ['-I', script, ...(harness ? ['--harness', harness] : [])], {
      input: source,
      timeout: options.timeoutMs ?? 20_000,
      reject: false,
      maxBuffer: 64 * 1024 * 1024,
      encoding: 'utf8',
    });
  } catch (error) {
    return { status: 'failed', error: `could not start ${pythonPath}: ${error instanceof Error ? error.message : String(error)}` };
  }
  if (result.timedOut) return { status: 'failed', error: `the inspector timed out after ${options.timeoutMs ?? 20_000} ms` };
  if (result.exitCode !== 0) {
    const stderr = String(result.stderr ?? '').trim().split('\n').slice(-5).join('\n');
    return { status: 'failed', error: `the inspector exited with ${result.exitCode ?? result.signal}: ${stderr || result.shortMessage}` };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(String(result.stdout));
  } catch {
    return { status: 'failed', error: `the inspector printed something that is not JSON: ${String(result.stdout).slice(0, 200)}` };
  }
  return interpretInspectorOutput(parsed);
}

function interpretInspectorOutput(parsed: unknown): InspectResult {
  if (typeof parsed !== 'object' || parsed === null) return { status: 'failed', error: 'the inspector output is not an object' };
  const output = parsed as { ok?: unknown; facts?: unknown; syntax_error?: { line?: unknown; col?: unknown; message?: unknown } };
  if (output.ok === true && typeof output.facts === 'object' && output.facts !== null) {
    return { status: 'ok', facts: output.facts as TrainFacts };
  }
  if (output.ok === false && output.syntax_error) {
    const { line, col, message } = output.syntax_error;
    return {
      status: 'syntax-error',
      syntaxError: { line: Number(line) || 1, col: Number(col) || 0, message: String(message ?? 'invalid syntax') },
    };
  }
  return { status: 'failed', error: 'the inspector output has neither facts nor a syntax error' };
}

/**
 * Everything checked on a train.py before it is written or run: text limits, compiling, and the
 * quick checks above. No violations means it may run (the sandbox, not this, keeps a run in its
 * place). A checker that cannot run fails closed.
 */
export async function checkTrainPy(
  source: string,
  pythonPath: string,
  policy: RulesPolicy = defaultPolicy,
  options: Pick<InspectOptions, 'harnessPath' | 'timeoutMs'> = {},
): Promise<Violation[]> {
  const text = checkTrainPyText(source);
  if (!text.ok) {
    const line = Number(/line (\d+)/.exec(text.error)?.[1] ?? 1);
    return [{ rule: 'text', line, message: text.error }];
  }
  const inspected = await inspectTrainPy(source, pythonPath, options);
  if (inspected.status === 'syntax-error') {
    const { line, col, message } = inspected.syntaxError;
    return [{ rule: 'syntax', line, message: `train.py does not compile: ${message} (line ${line}, column ${col}). Fix the syntax and try again.` }];
  }
  if (inspected.status === 'failed') {
    return [{ rule: 'inspector', line: 0, message: `The pre-run checker could not run (${inspected.error}); nothing was checked, so nothing may run. This is a server problem: report it.` }];
  }
  return checkTrainFacts(inspected.facts, policy);
}
