/**
 * Static rules on train.py, checked before a patch is written and before a run spends GPU time.
 *
 * python/inspect_train.py turns the source into facts (imports, calls, attribute chains, names,
 * strings...) with names resolved through import aliases; `checkTrainFacts` judges those facts
 * against a policy. The judgement is a pure function so it is testable on hand-written facts.
 *
 * What the rules are for: catching, before a run, the changes that would make a result
 * meaningless or the machine unsafe: reading validation data, touching the result record or the
 * harness, monkeypatching what evaluate_bpb relies on, running processes, using the network,
 * writing files outside out/. They stop accidents and plain attempts; a determined adversary can
 * hide names from any static check (e.g. by building strings at run time). The runner's pinned
 * hashes, the nonce-checked result record and the external time limit are the backstop.
 *
 * Policy decisions (all configurable through `RulesPolicy`):
 * - Imports: an allow-list (safe standard library, torch and its submodules, numpy, triton, and
 *   `prepare` for its public names only). Modules with a known reason to refuse (processes,
 *   network, native code, pickle, dynamic imports, file-system tools, frame introspection,
 *   signals, threads, atexit) get that reason in the message.
 * - `inspect`, `traceback`, `threading`, `atexit`, `signal` are refused even though they are
 *   standard: frames reach evaluate_bpb's locals (the targets) while it calls the model; threads
 *   and exit hooks run during or after evaluation; a signal handler could ignore the kill.
 * - `os`, `sys` and `gc` are allowed with an attribute allow-list (os.environ reads/writes of
 *   ordinary variables, os.path, os.cpu_count, os.makedirs under out/; sys.stdout/argv/exit...;
 *   gc.collect/disable/freeze...). gc.get_objects/get_referrers and sys._getframe/modules/settrace
 *   reach the harness's objects, so they are out.
 * - Assigning to attributes of imported modules is monkeypatching and refused (time.time,
 *   torch.nn.functional.cross_entropy, prepare.*), except for torch's configuration namespaces
 *   (torch.backends.*, torch._dynamo.config.*, torch._inductor.config.*, torch._functorch.config.*),
 *   which are normal tuning knobs. Item assignment is refused too, except into os.environ.
 * - Files: every read or write names its path as a string literal so it can be checked. Reads
 *   must be relative and inside the workspace; writes (open in w/a/x/+ mode, torch.save,
 *   numpy.save..., os.makedirs) must go under `allowedOutputDir` ("out/"). f-strings are accepted
 *   for writes when their static prefix is already under out/.
 * - Validation data is recognised by paths, not identifiers: "val.bin", a path component named
 *   val/valid/validation, or a file named val_*.bin (and similar data extensions). Identifiers and
 *   messages such as `val_bpb` or "val_bpb: {}" are fine: names cannot read data, paths can.
 * - The result record: any string or identifier with AUTORESEARCH_ (the run's environment:
 *   data dir, result path, nonce) or "result.json".
 * - Defining __torch_function__ / __torch_dispatch__, or using torch.overrides, torch.library,
 *   torch.utils._python_dispatch or torch._C, could intercept the operations evaluate_bpb runs on
 *   the model's outputs, so they are refused.
 * - train.py must call prepare.evaluate_bpb (else the run yields no result record).
 */
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { checkTrainPyText } from './patch.js';

// ---- facts (the JSON printed by python/inspect_train.py) --------------------------------------

export type ArgFact =
  | { kind: 'str'; value: string }
  | { kind: 'fstring'; value: string; prefix: string | null }
  | { kind: 'name'; name: string; imported: boolean }
  | { kind: 'starred' }
  | { kind: 'other' };

export interface ImportFact {
  module: string;
  names: string[];
  asname?: string | null;
  line: number;
  level: number;
}

export interface CallFact {
  /** Dotted, alias-resolved name of the callee; "<expr>.m" for a method on a computed object. */
  name: string;
  /** The leading name was bound by an import (so `name` is a module path). */
  imported?: boolean;
  line: number;
  args_count: number;
  args?: ArgFact[];
  /** `name` null stands for `**kwargs`. */
  keywords?: { name: string | null; value: ArgFact }[];
  first_arg_str?: string | null;
  mode_arg?: string | null;
}

export interface NameRefFact {
  name: string;
  imported?: boolean;
  line: number;
}

export interface NameFact extends NameRefFact {
  raw?: string;
  ctx?: 'load' | 'store' | 'del';
  called?: boolean;
}

export interface StringFact {
  value: string;
  line: number;
  truncated?: boolean;
  length?: number;
}

export interface AssignmentFact {
  target: string;
  line: number;
  imported?: boolean;
  via?: string;
}

export interface TrainFacts {
  imports: ImportFact[];
  calls: CallFact[];
  attributes: NameRefFact[];
  names: NameFact[];
  strings: StringFact[];
  assignments_to_attributes: AssignmentFact[];
  subscript_assignments?: AssignmentFact[];
  definitions?: { name: string; line: number; kind: string }[];
}

// ---- violations and policy ------------------------------------------------------------------

export type RuleId =
  | 'syntax' // does not compile
  | 'text' // size / characters (see patch.ts)
  | 'import' // module not on the allow-list, relative or star import
  | 'forbidden-api' // module or attribute with a known reason to refuse
  | 'harness' // prepare internals, prepare used as a value, prepare attributes assigned
  | 'module-attribute' // os/sys/gc attribute outside their allow-lists
  | 'builtin' // eval, exec, compile, __import__, globals, locals, ...
  | 'introspection' // frames, __globals__, __subclasses__, module __dict__, computed getattr on modules
  | 'monkeypatch' // assigning into imported modules
  | 'op-interception' // __torch_function__ / __torch_dispatch__
  | 'file-read'
  | 'file-write'
  | 'validation-data'
  | 'result-record'
  | 'long-string'
  | 'evaluation' // evaluate_bpb never called
  | 'inspector'; // the checker itself could not run (fails closed)

export interface Violation {
  rule: RuleId;
  line: number;
  message: string;
}

/** A call that reads or writes a file: where its path is and how to tell which it does. */
export interface FileCall {
  /** Resolved dotted name (`torch.save`), a builtin (`open`), or `.method` for a method on any object. */
  name: string;
  pathArg: number;
  pathKeyword: string;
  /** 'mode': decided by a mode argument (open, numpy.memmap); a missing mode means `defaultMode`. */
  access: 'read' | 'write' | 'mode';
  modeArg?: number;
  modeKeyword?: string;
  defaultMode?: string;
}

export interface StringPattern {
  rule: 'validation-data' | 'result-record';
  /** Regular expression source, matched case-insensitively. */
  pattern: string;
  reason: string;
}

export interface RulesPolicy {
  /** A module is allowed if it equals an entry or is a submodule of one. */
  allowedModules: string[];
  /** Dotted prefix (module or attribute path) -> why it is refused. Checked before allowedModules. */
  forbidden: Record<string, string>;
  harnessModule: string;
  harnessPublicNames: string[];
  evaluateFunction: string;
  requireEvaluateCall: boolean;
  /** Module -> the only attribute paths allowed under it: "x" exactly, "x.*" for x and anything below. */
  restrictedModules: Record<string, string[]>;
  /** Builtins that may not appear at all (name -> why). */
  forbiddenBuiltins: Record<string, string>;
  /** Builtins that may only be called directly, never passed around (their calls are checked). */
  callOnlyBuiltins: string[];
  /** Attribute names refused on any object (frames and function internals). */
  forbiddenAttributeNames: string[];
  /** Attribute names refused on imported modules (their namespace dict and setters). */
  forbiddenModuleAttributeNames: string[];
  /** Prefixes under which module attributes may be assigned (configuration knobs). */
  assignableModuleAttributes: string[];
  /** Imported objects whose items may be assigned (e.g. os.environ["X"] = ...). */
  assignableSubscripts: string[];
  /** Names whose definition intercepts torch operations. */
  forbiddenDefinitions: string[];
  allowedOutputDir: string;
  fileCalls: FileCall[];
  forbiddenStrings: StringPattern[];
  forbiddenIdentifierPattern: string;
  maxStringChars: number;
}

const HARNESS_PUBLIC_NAMES = ['PROFILE', 'MAX_SEQ_LEN', 'TIME_BUDGET', 'EVAL_TOKENS', 'VOCAB_SIZE', 'get_tokenizer', 'make_dataloader', 'evaluate_bpb'];

const PROCESSES = 'it starts or controls processes; train.py must do its work in this one process';
const NETWORK = 'runs have no network access and must not depend on it';
const NATIVE = 'it loads native code, which the static rules cannot see into';
const PICKLE = 'unpickling runs arbitrary code; use torch.save/torch.load (weights only) under out/';
const DYNAMIC = 'it imports or runs code chosen at run time, which the static rules cannot check';
const FILES = 'it can change or list files; write only with open()/torch.save to literal paths under out/';
const FRAMES = 'frames and tracebacks reach evaluate_bpb\'s locals (the targets) while it calls the model';
const LIFETIME = 'code in threads, exit hooks or signal handlers can run during or after evaluation, or outlive the time limit';
const INTERCEPT = 'it can intercept the torch operations evaluate_bpb runs on the model\'s outputs';

export const defaultPolicy: RulesPolicy = {
  allowedModules: [
    '__future__', 'abc', 'argparse', 'array', 'bisect', 'cmath', 'collections', 'contextlib', 'copy', 'dataclasses',
    'datetime', 'decimal', 'enum', 'fractions', 'functools', 'gc', 'heapq', 'itertools', 'json', 'math', 'numbers',
    'operator', 'os', 'pprint', 'random', 're', 'statistics', 'string', 'struct', 'sys', 'textwrap', 'time', 'types',
    'typing', 'typing_extensions', 'warnings',
    'torch', 'numpy', 'triton',
    'prepare',
  ],
  forbidden: {
    subprocess: PROCESSES, multiprocessing: PROCESSES, concurrent: PROCESSES, pty: PROCESSES,
    'torch.multiprocessing': PROCESSES, 'torch.distributed': 'runs are single-process (it also opens network sockets)',
    socket: NETWORK, ssl: NETWORK, urllib: NETWORK, urllib3: NETWORK, http: NETWORK, requests: NETWORK, httpx: NETWORK,
    aiohttp: NETWORK, ftplib: NETWORK, smtplib: NETWORK, telnetlib: NETWORK, xmlrpc: NETWORK, asyncio: NETWORK,
    websockets: NETWORK, 'torch.hub': NETWORK, kernels: NETWORK, huggingface_hub: NETWORK,
    ctypes: NATIVE, cffi: NATIVE, 'torch.utils.cpp_extension': NATIVE, 'torch.ops.load_library': NATIVE,
    'torch.classes.load_library': NATIVE, 'numpy.ctypeslib': NATIVE,
    pickle: PICKLE, _pickle: PICKLE, cPickle: PICKLE, marshal: PICKLE, shelve: PICKLE, dill: PICKLE, cloudpickle: PICKLE,
    joblib: PICKLE, copyreg: PICKLE,
    importlib: DYNAMIC, imp: DYNAMIC, runpy: DYNAMIC, pkgutil: DYNAMIC, code: DYNAMIC, codeop: DYNAMIC,
    builtins: DYNAMIC, __builtin__: DYNAMIC, zipimport: DYNAMIC, __main__: DYNAMIC,
    shutil: FILES, tempfile: FILES, glob: FILES, pathlib: FILES, io: FILES, fileinput: FILES, zipfile: FILES,
    tarfile: FILES, mmap: FILES,
    inspect: FRAMES, traceback: FRAMES, dis: FRAMES, faulthandler: FRAMES,
    signal: 'a signal handler could ignore the time limit\'s SIGTERM; the runner owns signals',
    threading: LIFETIME, _thread: LIFETIME, atexit: LIFETIME, sched: LIFETIME,
    'torch.overrides': INTERCEPT, 'torch.library': INTERCEPT, 'torch.utils._python_dispatch': INTERCEPT, 'torch._C': INTERCEPT,
  },
  harnessModule: 'prepare',
  harnessPublicNames: HARNESS_PUBLIC_NAMES,
  evaluateFunction: 'evaluate_bpb',
  requireEvaluateCall: true,
  restrictedModules: {
    os: ['environ', 'environ.get', 'environ.setdefault', 'getenv', 'path.*', 'cpu_count', 'sched_getaffinity', 'getpid', 'sep', 'linesep', 'name', 'makedirs'],
    sys: [
      'argv', 'stdout.*', 'stderr.*', 'exit', 'version', 'version_info.*', 'platform', 'maxsize', 'float_info.*', 'byteorder',
      'getrecursionlimit', 'setrecursionlimit', 'flags.*', 'implementation.*', 'getsizeof',
    ],
    gc: ['collect', 'disable', 'enable', 'isenabled', 'freeze', 'unfreeze', 'get_freeze_count', 'get_count', 'get_threshold', 'set_threshold', 'get_stats'],
  },
  forbiddenBuiltins: {
    eval: 'it runs code built at run time',
    exec: 'it runs code built at run time',
    compile: 'it builds code at run time (torch.compile is fine)',
    __import__: 'it imports modules chosen at run time',
    globals: 'the globals dict reaches every imported module, prepare included',
    locals: 'it exposes namespaces the rules cannot follow',
    breakpoint: 'runs are unattended; a debugger would hang until the time limit',
    __builtins__: 'changing builtins changes the harness too',
    __loader__: 'module loaders can load or re-load code at run time',
    __spec__: 'module specs can load or re-load code at run time',
  },
  callOnlyBuiltins: ['open', 'getattr', 'setattr', 'delattr', 'vars'],
  forbiddenAttributeNames: [
    'f_back', 'f_globals', 'f_locals', 'f_builtins', 'f_code', 'tb_frame', 'tb_next', 'gi_frame', 'cr_frame', 'ag_frame',
    '__globals__', '__builtins__', '__subclasses__', '__code__', '__closure__', '__loader__', '__spec__', '__import__',
  ],
  forbiddenModuleAttributeNames: ['__dict__', '__setattr__', '__delattr__', '__getattribute__'],
  assignableModuleAttributes: ['torch.backends', 'torch._dynamo.config', 'torch._inductor.config', 'torch._functorch.config'],
  assignableSubscripts: ['os.environ'],
  forbiddenDefinitions: ['__torch_function__', '__torch_dispatch__'],
  allowedOutputDir: 'out/',
  fileCalls: [
    { name: 'open', pathArg: 0, pathKeyword: 'file', access: 'mode', modeArg: 1, modeKeyword: 'mode', defaultMode: 'r' },
    { name: 'torch.load', pathArg: 0, pathKeyword: 'f', access: 'read' },
    { name: 'torch.from_file', pathArg: 0, pathKeyword: 'filename', access: 'read' },
    { name: 'numpy.load', pathArg: 0, pathKeyword: 'file', access: 'mode', modeKeyword: 'mmap_mode', defaultMode: 'r' },
    { name: 'numpy.fromfile', pathArg: 0, pathKeyword: 'file', access: 'read' },
    { name: 'numpy.loadtxt', pathArg: 0, pathKeyword: 'fname', access: 'read' },
    { name: 'numpy.genfromtxt', pathArg: 0, pathKeyword: 'fname', access: 'read' },
    { name: 'numpy.memmap', pathArg: 0, pathKeyword: 'filename', access: 'mode', modeArg: 2, modeKeyword: 'mode', defaultMode: 'r+' },
    { name: 'torch.save', pathArg: 1, pathKeyword: 'f', access: 'write' },
    { name: 'torch.jit.save', pathArg: 1, pathKeyword: 'f', access: 'write' },
    { name: 'torch.export.save', pathArg: 1, pathKeyword: 'f', access: 'write' },
    { name: 'torch.onnx.export', pathArg: 2, pathKeyword: 'f', access: 'write' },
    { name: 'numpy.save', pathArg: 0, pathKeyword: 'file', access: 'write' },
    { name: 'numpy.savez', pathArg: 0, pathKeyword: 'file', access: 'write' },
    { name: 'numpy.savez_compressed', pathArg: 0, pathKeyword: 'file', access: 'write' },
    { name: 'numpy.savetxt', pathArg: 0, pathKeyword: 'fname', access: 'write' },
    { name: 'os.makedirs', pathArg: 0, pathKeyword: 'name', access: 'write' },
    { name: '.tofile', pathArg: 0, pathKeyword: 'fid', access: 'write' },
  ],
  forbiddenStrings: [
    { rule: 'validation-data', pattern: 'val\\.bin', reason: 'val.bin is the validation data: only evaluate_bpb reads it' },
    {
      rule: 'validation-data',
      pattern: '(^|[\\\\/])(val|valid|validation)[\\\\/]|[\\\\/](val|valid|validation)$',
      reason: 'a path into a validation folder: only evaluate_bpb reads validation data',
    },
    {
      rule: 'validation-data',
      pattern: '(^|[\\\\/])(val|valid|validation)[._-][^\\\\/]*\\.(bin|npy|npz|pt|pth|idx|tok|dat|u16|u32|txt|jsonl?|parquet|arrow)$',
      reason: 'a validation data file: only evaluate_bpb reads validation data',
    },
    {
      rule: 'result-record',
      pattern: 'AUTORESEARCH_',
      reason: 'AUTORESEARCH_* variables (data dir, result path, nonce) belong to the harness',
    },
    { rule: 'result-record', pattern: 'result\\.json', reason: 'the result record is written by evaluate_bpb alone' },
  ],
  forbiddenIdentifierPattern: 'AUTORESEARCH_',
  maxStringChars: 4096,
};

// ---- the pure checker -----------------------------------------------------------------------

function isUnder(dotted: string, prefix: string): boolean {
  return dotted === prefix || dotted.startsWith(prefix + '.');
}

function forbiddenReason(dotted: string, policy: RulesPolicy): { prefix: string; reason: string } | undefined {
  let best: { prefix: string; reason: string } | undefined;
  for (const [prefix, reason] of Object.entries(policy.forbidden)) {
    if (isUnder(dotted, prefix) && (!best || prefix.length > best.prefix.length)) best = { prefix, reason };
  }
  return best;
}

function isAllowedModule(module: string, policy: RulesPolicy): boolean {
  return policy.allowedModules.some((allowed) => isUnder(module, allowed));
}

function allowedUnderRestriction(rest: string, allowed: string[]): boolean {
  return allowed.some((entry) =>
    entry.endsWith('.*') ? isUnder(rest, entry.slice(0, -2)) : rest === entry,
  );
}

const OS_PROCESS_CALLS = /^(system|popen|exec\w*|spawn\w*|posix_spawn\w*|fork\w*|kill\w*|_exit|abort|wait\w*|startfile|setsid|nice)$/;
const OS_FILE_CALLS = /^(remove|unlink|rename\w*|replace|rmdir|removedirs|mkdir|chmod|chown|lchown|link|symlink|truncate|open|fdopen|write|pwrite|mkfifo|mknod|utime|scandir|listdir|walk|fwalk|chdir|chroot|putenv|unsetenv)$/;

function restrictedMessage(module: string, rest: string, allowed: string[]): string {
  const first = rest.split('.')[0];
  const shown = allowed.map((entry) => `${module}.${entry}`).join(', ');
  let why = '';
  if (module === 'os' && OS_PROCESS_CALLS.test(first)) why = ' It starts or signals processes.';
  else if (module === 'os' && OS_FILE_CALLS.test(first)) why = ' It changes or lists files, or the environment outside os.environ.';
  else if (module === 'sys' && /^(modules|meta_path|path_hooks|path|_getframe|settrace|setprofile|addaudithook|exc_info|exception|last_\w+)$/.test(first)) {
    why = ' It reaches loaded modules, import machinery or frames, which the harness shares.';
  } else if (module === 'gc' && /^get_(objects|referrers|referents)$/.test(first)) why = ' It reaches every live object, the harness\'s included.';
  return `${module}.${rest} is not allowed.${why} Allowed from ${module}: ${shown}.`;
}

/** Rules for a dotted name whose leading name came from an import (a module path). */
function checkModuleReference(name: string, line: number, policy: RulesPolicy, bare: boolean): Violation[] {
  const found: Violation[] = [];
  const forbidden = forbiddenReason(name, policy);
  if (forbidden) {
    found.push({ rule: 'forbidden-api', line, message: `${name} is not allowed: ${forbidden.reason}.` });
    return found;
  }
  const harness = policy.harnessModule;
  if (name === harness && bare) {
    found.push({
      rule: 'harness',
      line,
      message: `The ${harness} module is used as a value on line ${line}. Use only ${harness}.NAME for its public names (${policy.harnessPublicNames.join(', ')}), or import them with \`from ${harness} import NAME\`.`,
    });
  } else if (name.startsWith(harness + '.')) {
    const rest = name.slice(harness.length + 1);
    if (!policy.harnessPublicNames.includes(rest)) {
      const first = rest.split('.')[0];
      const detail = policy.harnessPublicNames.includes(first)
        ? `${harness}.${first} may be used, not its attributes (${rest})`
        : `${harness}.${first} is not part of the harness API`;
      found.push({
        rule: 'harness',
        line,
        message: `${detail}. The harness exposes only ${policy.harnessPublicNames.join(', ')}; its internals (data paths, evaluation helpers) are off limits.`,
      });
    }
  }
  for (const [module, allowed] of Object.entries(policy.restrictedModules)) {
    if (name === module && bare) {
      found.push({
        rule: 'module-attribute',
        line,
        message: `The ${module} module is used as a value; use its allowed attributes directly (${allowed.map((a) => `${module}.${a}`).join(', ')}).`,
      });
    } else if (name.startsWith(module + '.')) {
      const rest = name.slice(module.length + 1);
      if (!allowedUnderRestriction(rest, allowed)) found.push({ rule: 'module-attribute', line, message: restrictedMessage(module, rest, allowed) });
    }
  }
  const parts = name.split('.');
  const dunder = parts.slice(1).find((part) => policy.forbiddenModuleAttributeNames.includes(part));
  if (dunder) {
    found.push({
      rule: 'introspection',
      line,
      message: `${name} reaches into a module's namespace (${dunder}), which the harness shares. Use the module's public functions instead.`,
    });
  }
  return found;
}

function checkAttributeNames(name: string, line: number, policy: RulesPolicy): Violation[] {
  const bad = name.split('.').slice(1).find((part) => policy.forbiddenAttributeNames.includes(part));
  if (!bad) return [];
  return [
    {
      rule: 'introspection',
      line,
      message: `${name} uses ${bad}: frame and function internals reach evaluate_bpb's state and other modules' globals. Remove it.`,
    },
  ];
}

function checkImports(facts: TrainFacts, policy: RulesPolicy): Violation[] {
  const found: Violation[] = [];
  const allowedList = 'allowed: torch, numpy and basic standard-library modules (math, time, dataclasses, functools, ...)';
  for (const fact of facts.imports) {
    const { line, module } = fact;
    if (fact.level > 0) {
      found.push({ rule: 'import', line, message: `Relative import (from ${'.'.repeat(fact.level)}${module} ...): train.py is a single file. Import from torch, numpy, the standard library or ${policy.harnessModule}.` });
      continue;
    }
    const forbidden = forbiddenReason(module, policy);
    if (forbidden) {
      found.push({ rule: 'forbidden-api', line, message: `import ${module} is not allowed: ${forbidden.reason}.` });
      continue;
    }
    if (!isAllowedModule(module, policy)) {
      found.push({ rule: 'import', line, message: `import ${module}: ${module.split('.')[0]} is not on the allowed import list (${allowedList}). No new packages; remove the import.` });
      continue;
    }
    if (fact.names.includes('*')) {
      found.push({ rule: 'import', line, message: `from ${module} import * hides which names are used; import the names you need explicitly.` });
      continue;
    }
    if (isUnder(module, policy.harnessModule) && module !== policy.harnessModule) {
      found.push({ rule: 'harness', line, message: `${module} is not part of the harness API; import only ${policy.harnessPublicNames.join(', ')} from ${policy.harnessModule}.` });
      continue;
    }
    // `from M import x` uses M.x: the same rules as writing M.x.
    for (const imported of fact.names) found.push(...checkModuleReference(`${module}.${imported}`, line, policy, false));
  }
  return found;
}

function checkReferences(facts: TrainFacts, policy: RulesPolicy): Violation[] {
  const found: Violation[] = [];
  for (const fact of facts.attributes) {
    if (fact.imported) found.push(...checkModuleReference(fact.name, fact.line, policy, false));
    found.push(...checkAttributeNames(fact.name, fact.line, policy));
  }
  for (const fact of facts.names) {
    if ((fact.ctx ?? 'load') !== 'load') continue;
    if (fact.imported) {
      found.push(...checkModuleReference(fact.name, fact.line, policy, true));
      continue;
    }
    const raw = fact.raw ?? fact.name;
    if (Object.hasOwn(policy.forbiddenBuiltins, raw)) {
      const reason = policy.forbiddenBuiltins[raw];
      found.push({
        rule: 'builtin',
        line: fact.line,
        message: `${raw}${fact.called ? '()' : ''} is not allowed: ${reason}. If ${raw} is your own variable or parameter, rename it (e.g. use_${raw.replace(/_/g, '')}): these builtin names may not be shadowed.`,
      });
    } else if (policy.callOnlyBuiltins.includes(raw) && fact.called === false) {
      found.push({ rule: 'builtin', line: fact.line, message: `${raw} is passed around as a value; call ${raw}(...) directly so its arguments can be checked.` });
    }
  }
  return found;
}

function checkAssignments(facts: TrainFacts, policy: RulesPolicy): Violation[] {
  const found: Violation[] = [];
  for (const fact of facts.assignments_to_attributes) {
    found.push(...checkAttributeNames(fact.target, fact.line, policy));
    if (!fact.imported) continue;
    if (policy.assignableModuleAttributes.some((prefix) => fact.target.startsWith(prefix + '.'))) continue;
    const harness = policy.harnessModule;
    if (isUnder(fact.target, harness)) {
      found.push({ rule: 'harness', line: fact.line, message: `${fact.target} is assigned: the harness is read-only. Keep your own copy in a variable of train.py instead.` });
      continue;
    }
    const root = fact.target.split('.')[0];
    const timing = root === 'time' ? ' Timing is measured by the runner, not by time.*.' : '';
    const verb = fact.via === 'del' || fact.via === 'delattr' ? 'deletes' : 'replaces';
    found.push({
      rule: 'monkeypatch',
      line: fact.line,
      message: `Assigning to ${fact.target} ${verb} part of an imported module that the harness also uses (monkeypatching).${timing} ` +
        `Define your own function or variable instead. Only configuration under ${policy.assignableModuleAttributes.map((p) => p + '.*').join(', ')} may be set.`,
    });
  }
  for (const fact of facts.subscript_assignments ?? []) {
    if (!fact.imported || policy.assignableSubscripts.includes(fact.target)) continue;
    const rule: RuleId = isUnder(fact.target, policy.harnessModule) ? 'harness' : 'monkeypatch';
    found.push({
      rule,
      line: fact.line,
      message: `${fact.target}[...] is assigned: that changes state of an imported module the harness shares. Copy it into your own variable first.`,
    });
  }
  return found;
}

/** The path-like argument of a call: positional index or keyword. */
function argumentAt(call: CallFact, index: number | undefined, keyword: string | undefined): ArgFact | 'missing' | 'unknown' {
  const byKeyword = keyword === undefined ? undefined : call.keywords?.find((k) => k.name === keyword);
  if (byKeyword) return byKeyword.value;
  const args = call.args ?? [];
  if (args.some((a) => a.kind === 'starred') || call.keywords?.some((k) => k.name === null)) return 'unknown';
  if (index !== undefined && index < args.length) return args[index];
  return 'missing';
}

function callMatches(call: CallFact, fileCall: FileCall): boolean {
  if (fileCall.name.startsWith('.')) return call.name.endsWith(fileCall.name);
  const isBuiltin = !fileCall.name.includes('.');
  return call.name === fileCall.name && Boolean(call.imported) === !isBuiltin;
}

function normalizeRelative(path: string): string {
  return path.replace(/^(\.\/)+/, '');
}

function pathEscapes(path: string): boolean {
  return path.startsWith('/') || path.startsWith('~') || /^[A-Za-z]:/.test(path) || path.includes('\\') || path.split('/').includes('..');
}

function checkWritePath(call: CallFact, path: ArgFact | 'missing' | 'unknown', policy: RulesPolicy): Violation | undefined {
  const dir = policy.allowedOutputDir.endsWith('/') ? policy.allowedOutputDir : policy.allowedOutputDir + '/';
  const advice = `Write only to a string-literal path under ${dir} (e.g. "${dir}model.pt").`;
  const bad = (why: string): Violation => ({ rule: 'file-write', line: call.line, message: `${call.name}(...) writes a file ${why}. ${advice}` });
  if (path === 'missing' || path === 'unknown') return bad('to a path the rules cannot see');
  if (path.kind === 'str') {
    const normalized = normalizeRelative(path.value);
    if (pathEscapes(normalized)) return bad(`to ${JSON.stringify(path.value)}, outside the workspace`);
    const insideDir = normalized.startsWith(dir) || normalized === dir.slice(0, -1);
    return insideDir ? undefined : bad(`to ${JSON.stringify(path.value)}, outside ${dir}`);
  }
  if (path.kind === 'fstring' && path.prefix !== null) {
    const prefix = normalizeRelative(path.prefix);
    if (prefix.startsWith(dir) && !pathEscapes(normalizeRelative(path.value))) return undefined;
    return bad(`to an f-string path that does not start with "${dir}"`);
  }
  return bad('to a computed path');
}

function checkReadPath(call: CallFact, path: ArgFact | 'missing' | 'unknown'): Violation | undefined {
  const bad = (why: string): Violation => ({
    rule: 'file-read',
    line: call.line,
    message: `${call.name}(...) reads ${why}. Pass a relative string-literal path inside the workspace, so the rules can check it is not evaluation data; training data comes from make_dataloader.`,
  });
  if (path === 'missing' || path === 'unknown') return bad('a path the rules cannot see');
  if (path.kind !== 'str') return bad('a computed path');
  if (pathEscapes(normalizeRelative(path.value))) return bad(`${JSON.stringify(path.value)}, outside the workspace`);
  return undefined;
}

function modeOf(call: CallFact, fileCall: FileCall): string | null | undefined {
  const arg = argumentAt(call, fileCall.modeArg, fileCall.modeKeyword);
  if (arg === 'missing') return fileCall.defaultMode;
  if (arg === 'unknown' || arg.kind !== 'str') return null; // not a literal
  return arg.value;
}

function checkFileCalls(facts: TrainFacts, policy: RulesPolicy): Violation[] {
  const found: Violation[] = [];
  for (const call of facts.calls) {
    const fileCall = policy.fileCalls.find((candidate) => callMatches(call, candidate));
    if (!fileCall) continue;
    let writes = fileCall.access === 'write';
    if (fileCall.access === 'mode') {
      const mode = modeOf(call, fileCall);
      if (mode === null) {
        found.push({ rule: 'file-write', line: call.line, message: `${call.name}(...) gets its mode from a computed value; pass the mode as a string literal such as "r" or "rb".` });
        continue;
      }
      writes = mode !== undefined && /[wax+]/.test(mode);
    }
    const path = argumentAt(call, fileCall.pathArg, fileCall.pathKeyword);
    const violation = writes ? checkWritePath(call, path, policy) : checkReadPath(call, path);
    if (violation) found.push(violation);
  }
  return found;
}

function checkDynamicAttributeCalls(facts: TrainFacts): Violation[] {
  const found: Violation[] = [];
  for (const call of facts.calls) {
    if (call.imported) continue;
    const args = call.args ?? [];
    const first = args[0];
    const onModule = first?.kind === 'name' && first.imported;
    if (call.name === 'vars' && (args.length === 0 || onModule)) {
      found.push({
        rule: 'builtin',
        line: call.line,
        message: args.length === 0 ? 'vars() without an argument exposes local namespaces; name the variables you need.' : `vars(${first?.kind === 'name' ? first.name : ''}) exposes a module's namespace, which the harness shares.`,
      });
    }
    if (['getattr', 'setattr', 'delattr', 'hasattr'].includes(call.name) && onModule && args[1]?.kind !== 'str') {
      found.push({
        rule: 'introspection',
        line: call.line,
        message: `${call.name}(${first.kind === 'name' ? first.name : ''}, ...) on a module with a computed attribute name; the rules cannot check it. Use the attribute directly (module.name).`,
      });
    }
  }
  return found;
}

function checkStrings(facts: TrainFacts, policy: RulesPolicy): Violation[] {
  const found: Violation[] = [];
  const patterns = policy.forbiddenStrings.map((p) => ({ ...p, regex: new RegExp(p.pattern, 'i') }));
  for (const fact of facts.strings) {
    for (const pattern of patterns) {
      if (!pattern.regex.test(fact.value)) continue;
      found.push({
        rule: pattern.rule,
        line: fact.line,
        message: `The string ${JSON.stringify(fact.value.length > 80 ? fact.value.slice(0, 80) + '…' : fact.value)} refers to ${pattern.reason}. Remove it; the harness evaluates the model itself.`,
      });
    }
    const length = fact.length ?? fact.value.length;
    if (fact.truncated || length > policy.maxStringChars) {
      found.push({
        rule: 'long-string',
        line: fact.line,
        message: `A string literal of ${length} characters: train.py must not embed data or code in strings (limit ${policy.maxStringChars}).`,
      });
    }
  }
  return found;
}

function checkIdentifiers(facts: TrainFacts, policy: RulesPolicy): Violation[] {
  const pattern = new RegExp(policy.forbiddenIdentifierPattern);
  const found: Violation[] = [];
  const identifiers: { name: string; line: number }[] = [
    ...facts.names.map((n) => ({ name: n.raw ?? n.name, line: n.line })),
    ...facts.attributes,
    ...facts.assignments_to_attributes.map((a) => ({ name: a.target, line: a.line })),
    ...(facts.definitions ?? []),
  ];
  for (const { name, line } of identifiers) {
    if (pattern.test(name)) {
      found.push({ rule: 'result-record', line, message: `${name} looks like a harness variable (${policy.forbiddenIdentifierPattern}*): the run's data dir, result path and nonce are not for train.py.` });
    }
  }
  return found;
}

function checkDefinitions(facts: TrainFacts, policy: RulesPolicy): Violation[] {
  const found: Violation[] = [];
  const defined = [
    ...(facts.definitions ?? []),
    ...facts.names.filter((n) => n.ctx === 'store').map((n) => ({ name: n.raw ?? n.name, line: n.line })),
  ];
  for (const { name, line } of defined) {
    if (policy.forbiddenDefinitions.includes(name)) {
      found.push({
        rule: 'op-interception',
        line,
        message: `Defining ${name} lets tensors intercept torch operations, including the loss evaluate_bpb computes on the model's logits. Return plain torch.Tensor logits.`,
      });
    }
  }
  return found;
}

function checkEvaluationCalled(facts: TrainFacts, policy: RulesPolicy): Violation[] {
  if (!policy.requireEvaluateCall) return [];
  const target = `${policy.harnessModule}.${policy.evaluateFunction}`;
  if (facts.calls.some((call) => call.imported && call.name === target)) return [];
  const harnessImport = facts.imports.find((i) => i.module === policy.harnessModule);
  return [
    {
      rule: 'evaluation',
      line: harnessImport?.line ?? 1,
      message: `train.py never calls ${policy.evaluateFunction}(model, batch_size) from ${policy.harnessModule}; without it the run writes no result record and counts as a crash. Import it (\`from ${policy.harnessModule} import ${policy.evaluateFunction}\`) and call it once after training.`,
    },
  ];
}

/** Judges inspector facts against a policy. Pure; violations come back sorted by line. */
export function checkTrainFacts(facts: TrainFacts, policy: RulesPolicy = defaultPolicy): Violation[] {
  const all = [
    ...checkImports(facts, policy),
    ...checkReferences(facts, policy),
    ...checkAssignments(facts, policy),
    ...checkFileCalls(facts, policy),
    ...checkDynamicAttributeCalls(facts),
    ...checkStrings(facts, policy),
    ...checkIdentifiers(facts, policy),
    ...checkDefinitions(facts, policy),
    ...checkEvaluationCalled(facts, policy),
  ];
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

export type InspectResult =
  | { status: 'ok'; facts: TrainFacts }
  | { status: 'syntax-error'; syntaxError: { line: number; col: number; message: string } }
  | { status: 'failed'; error: string };

export interface InspectOptions {
  timeoutMs?: number;
  scriptPath?: string;
}

/**
 * Runs python/inspect_train.py on `source` (passed on stdin, never written to disk or imported).
 * Any stdlib-only Python 3.8+ works; it does not need torch.
 */
export async function inspectTrainPy(source: string, pythonPath: string, options: InspectOptions = {}): Promise<InspectResult> {
  const script = options.scriptPath ?? INSPECTOR_SCRIPT;
  let result;
  try {
    // -I: isolated mode, so PYTHON* variables, user site-packages and the cwd cannot change the inspector.
    result = await execa(pythonPath, ['-I', script], {
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
 * static rules. No violations means it may run. A checker that cannot run fails closed.
 */
export async function checkTrainPy(source: string, pythonPath: string, policy: RulesPolicy = defaultPolicy): Promise<Violation[]> {
  const text = checkTrainPyText(source);
  if (!text.ok) {
    const line = Number(/line (\d+)/.exec(text.error)?.[1] ?? 1);
    return [{ rule: 'text', line, message: text.error }];
  }
  const inspected = await inspectTrainPy(source, pythonPath);
  if (inspected.status === 'syntax-error') {
    const { line, col, message } = inspected.syntaxError;
    return [{ rule: 'syntax', line, message: `train.py does not compile: ${message} (line ${line}, column ${col}). Fix the syntax and try again.` }];
  }
  if (inspected.status === 'failed') {
    return [{ rule: 'inspector', line: 0, message: `The static checker could not run (${inspected.error}); nothing was checked, so nothing may run. This is a server problem: report it.` }];
  }
  return checkTrainFacts(inspected.facts, policy);
}
