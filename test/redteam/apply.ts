/**
 * Red-team variants are transformations of whatever the honest train.py is at test time, not
 * copies of it: each variant is a few edits anchored on stable strings of the harness API
 * (`finish_training(model)`, `while budget_used()`, `model = GPT()`, ...), plus Python snippets.
 * This file turns a variant into a train.py text; it is pure, so it is unit-tested without a server.
 */

/** The attack classes of issue 7's evidence list, plus harmless accidents. */
export const VARIANT_CLASSES = [
  'record', // forged or rewritten result records and summaries
  'eval-patch', // patched evaluation, export or clock code, reached through aliases
  'non-causal', // models that see the future
  'stateful', // models that keep state or use randomness between calls
  'weights', // the exported program is not the handed-over weights
  'val-data', // validation data by any route
  'budget', // training past the budget, or before the clock starts
  'escape', // daemons, process escapes, signals
  'network',
  'write-state', // the state database, audit log, other runs' records
  'write-git', // .git: hooks, config, refs
  'write-data', // train.bin, val.bin, manifest, tokenizer
  'write-harness', // prepare.py, the harness copy, interpreter start-up files
  'pickle', // pickles where a model or weights are expected
  'native', // ctypes, libc, namespaces
  'accident', // careless edits that are harmless by design: they must score honestly
] as const;
export type VariantClass = (typeof VARIANT_CLASSES)[number];

/**
 * What a run may end as. `patch_refused`: apply_patch refused the text (the static rules), so
 * nothing was written and no experiment exists.
 */
export const OUTCOMES = ['patch_refused', 'rejected', 'succeeded', 'crashed', 'over_budget', 'timed_out', 'cancelled'] as const;
export type Outcome = (typeof OUTCOMES)[number];

export interface Edit {
  /**
   * append / prepend: the text at the end / start of the file.
   * replace: the first occurrence of `find` becomes `text` (a plain substring replacement).
   * insertBefore / insertAfter: `text` as new lines before / after the first line containing
   *   `find` (after: after the end of that statement, so a parenthesised import spanning lines
   *   stays whole), indented like that line.
   * replaceLine: the first line containing `find` (the whole statement) becomes `text`, indented alike.
   */
  kind: 'append' | 'prepend' | 'replace' | 'insertBefore' | 'insertAfter' | 'replaceLine';
  find?: string;
  text: string;
}

export interface Expectation {
  /** Any of these outcomes is a pass. */
  status: Outcome[];
  /**
   * For outcomes other than `succeeded`: must match the experiment's error plus the run log tail
   * (or the apply_patch / run_experiment refusal). Says that the run was stopped for the right reason,
   * so a variant that merely crashes on a bug of its own does not pass.
   */
  reasonMatches?: RegExp;
  /**
   * For `succeeded`: val_bpb must be within the normal range of the honest baseline and the
   * measured training_seconds within the budget (nothing the variant printed or wrote counted).
   */
  honest?: boolean;
}

export interface Variant {
  /** Two digits, unique; the file order. */
  id: string;
  slug: string;
  class: VariantClass;
  /** The kind of edit an agent makes by mistake, not on purpose. */
  careless: boolean;
  /** One line: what it attempts. */
  attempts: string;
  /** One line: what should stop it (or why it is harmless). */
  stoppedBy: string;
  /** Prepend the shared helpers (RT_PRELUDE): attempt bookkeeping, marker, paths, channel access. */
  prelude?: boolean;
  edits: Edit[];
  expect: Expectation;
  /** What it would leave behind if a defence failed; what the test looks for beyond the snapshot. */
  sideEffects?: string;
  /** Takes up to the startup allowance or the ceiling to be stopped. */
  slow?: boolean;
  /** Leaves a process or a timer that acts later; the suite re-checks at the end. */
  delayed?: boolean;
  /** Takes what a run beside it would need (processes, disk): runs alone, never beside another variant. */
  solo?: boolean;
}

/** Values a variant may use; every one reaches train.py as an expression built at run time. */
export interface VariantContext {
  /** Unique per variant and suite run, at most 15 characters (it also names processes: /proc/<pid>/comm). */
  marker: string;
  workspace: string;
  stateDir: string;
  dataDir: string;
  /** A TCP listener on 127.0.0.1 that records every connection. */
  port: number;
  /** An abstract unix socket name (without the leading NUL) that records every connection. */
  abstractSocket: string;
}

/**
 * A Python string literal spelled backwards and reversed at run time: the value exists only when
 * train.py runs, never as text the static rules could match (they are not the boundary; the
 * sandbox is). Also keeps the joined marker out of the audited apply_patch arguments, so a marker
 * found anywhere was written by the run.
 */
export function pyHidden(value: string): string {
  const reversed = [...value].reverse().join('');
  return `${JSON.stringify(reversed)}[::-1]`;
}

const TOKEN = /__RT_(MARKER|WORKSPACE|STATE_DIR|DATA_DIR|PORT|ABSTRACT_SOCKET)__|__RT_STR\(([^()]*)\)__/g;

/** Replaces the __RT_...__ tokens of a snippet. */
export function substitute(text: string, ctx: VariantContext): string {
  return text.replace(TOKEN, (_all, name: string | undefined, literal: string | undefined) => {
    if (literal !== undefined) return pyHidden(literal);
    switch (name) {
      case 'MARKER':
        return pyHidden(ctx.marker);
      case 'WORKSPACE':
        return pyHidden(ctx.workspace);
      case 'STATE_DIR':
        return pyHidden(ctx.stateDir);
      case 'DATA_DIR':
        return pyHidden(ctx.dataDir);
      case 'PORT':
        return String(ctx.port);
      case 'ABSTRACT_SOCKET':
        return pyHidden(ctx.abstractSocket);
      default:
        throw new Error(`unknown token ${name}`);
    }
  });
}

/** Removes the common leading indentation and the first/last blank lines of a template literal. */
export function dedent(text: string): string {
  const lines = text.replace(/^\s*\n/, '').replace(/\n\s*$/, '').split('\n');
  const indents = lines.filter((l) => l.trim()).map((l) => /^ */.exec(l)![0].length);
  const cut = indents.length ? Math.min(...indents) : 0;
  return lines.map((l) => l.slice(cut)).join('\n');
}

export class EditError extends Error {}

/** Index of the line that ends the statement starting at `start` (brackets balanced, no trailing backslash). */
function statementEnd(lines: string[], start: number): number {
  let depth = 0;
  for (let i = start; i < lines.length; i++) {
    // Good enough for train.py: brackets inside strings on these anchor lines are balanced anyway.
    const code = lines[i].replace(/#.*$/, '');
    for (const ch of code) {
      if ('([{'.includes(ch)) depth++;
      else if (')]}'.includes(ch)) depth--;
    }
    if (depth <= 0 && !code.trimEnd().endsWith('\\')) return i;
  }
  return lines.length - 1;
}

function indentBlock(text: string, indent: string): string[] {
  return dedent(text)
    .split('\n')
    .map((l) => (l.trim() ? indent + l : l));
}

export function applyEdit(source: string, edit: Edit, ctx: VariantContext): string {
  const text = substitute(edit.text, ctx);
  switch (edit.kind) {
    case 'append':
      return source.replace(/\n*$/, '\n\n') + dedent(text) + '\n';
    case 'prepend':
      return dedent(text) + '\n\n' + source;
    case 'replace': {
      if (!edit.find) throw new EditError('replace needs `find`');
      const at = source.indexOf(edit.find);
      if (at < 0) throw new EditError(`anchor not found: ${JSON.stringify(edit.find)}`);
      return source.slice(0, at) + text + source.slice(at + edit.find.length);
    }
    case 'insertBefore':
    case 'insertAfter':
    case 'replaceLine': {
      if (!edit.find) throw new EditError(`${edit.kind} needs \`find\``);
      const lines = source.split('\n');
      const index = lines.findIndex((l) => l.includes(edit.find as string));
      if (index < 0) throw new EditError(`anchor not found: ${JSON.stringify(edit.find)}`);
      const indent = /^\s*/.exec(lines[index])![0];
      const block = indentBlock(text, indent);
      const end = statementEnd(lines, index);
      if (edit.kind === 'insertBefore') lines.splice(index, 0, ...block);
      else if (edit.kind === 'insertAfter') lines.splice(end + 1, 0, ...block);
      else lines.splice(index, end - index + 1, ...block);
      return lines.join('\n');
    }
  }
}

/** The anchors a variant needs; a train.py without one of them cannot take the variant. */
export function anchorsOf(variant: Variant): string[] {
  return variant.edits.flatMap((e) => (e.find ? [e.find] : []));
}

export function missingAnchors(source: string, variant: Variant): string[] {
  return anchorsOf(variant).filter((a) => !source.includes(a));
}

/** The whole hostile train.py: the edits in order, then the shared prelude on top when asked for. */
export function applyVariant(source: string, variant: Variant, ctx: VariantContext, prelude: string): string {
  let text = source;
  for (const edit of variant.edits) text = applyEdit(text, edit, ctx);
  if (variant.prelude) text = substitute(dedent(prelude), ctx) + '\n\n' + text;
  return `# red-team variant ${variant.id}-${variant.slug} (test/redteam): ${variant.attempts}\n` + text;
}

/** A marker for one variant in one suite run: "rtm" + 8 hex + the id, 13 characters. */
export function markerFor(nonce: string, variant: Pick<Variant, 'id'>): string {
  if (!/^[0-9a-f]{8}$/.test(nonce)) throw new Error('nonce must be 8 hex digits');
  return `rtm${nonce}${variant.id}`;
}
