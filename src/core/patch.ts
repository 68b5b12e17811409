/**
 * Changing train.py: unified diffs, exact search/replace edits, target-path validation and the
 * content limits every resulting train.py must meet. Pure functions; failures are values
 * (`{ ok: false, code, error }`) whose `error` tells a model what was wrong and what to do next.
 *
 * Decisions:
 * - Only `train.py` may be touched (`a/train.py` / `b/train.py` diff prefixes are accepted). Git
 *   extended headers that create, delete, rename, copy, re-mode (e.g. to a 120000 symlink) or
 *   binary-patch a file are refused, whichever file they name.
 * - Hunks apply with exact context, no fuzz. A hunk whose header line numbers are off still
 *   applies if its context + removed lines occur exactly once (after the previous hunk); if they
 *   occur several times the diff is refused as ambiguous rather than guessing (git would pick
 *   the nearest). Header line *counts* must be right: a miscounted hunk is malformed.
 * - Line endings: the patch text and search/replace strings are normalised from CRLF to LF
 *   (transports and Windows clients add `\r`). A train.py that consistently uses CRLF is
 *   patched in its LF view and converted back, so it keeps its convention; a file with mixed
 *   endings is matched byte for byte.
 * - A diff without `---`/`+++` headers (bare `@@` hunks) is taken to be for train.py, and one
 *   wrapping Markdown code fence (```diff ... ```) is removed: both are common in model output.
 * - "\ No newline at end of file" is honoured on both sides; a hunk that reaches the end of the
 *   file must state the file's final-newline state correctly, like git.
 */
import { FILE_HEADERS_ONLY, formatPatch, parsePatch, structuredPatch } from 'diff';
import type { StructuredPatch, StructuredPatchHunk } from 'diff';

/** Largest accepted patch (unified diff text or all search/replace strings together). */
export const PATCH_MAX_BYTES = 256 * 1024;
/** Largest train.py a patch may produce. */
export const TRAIN_PY_MAX_BYTES = 512 * 1024;
export const TRAIN_PY = 'train.py';

export type PatchErrorCode =
  | 'too_large' // patch or result over the byte limits
  | 'invalid_text' // invalid UTF-8, NUL / control characters, bidi overrides
  | 'bad_target' // a path other than train.py, ../, absolute, backslash, NUL
  | 'create_delete' // /dev/null, new file mode, deleted file mode
  | 'rename' // rename / copy headers
  | 'mode_change' // old/new mode, symlink or gitlink modes
  | 'binary' // GIT binary patch, "Binary files ... differ"
  | 'malformed' // not parseable as a unified diff, bad hunk header or counts, no hunks
  | 'does_not_apply' // context / removed lines not found
  | 'ambiguous' // context found more than once, or search text found more than once
  | 'no_match' // search text not found
  | 'bad_edit'; // empty edit list, empty search text

export interface PatchFailure {
  ok: false;
  code: PatchErrorCode;
  error: string;
  /** 1-based hunk number within the diff, when the failure is about one hunk. */
  hunk?: number;
  /** 0-based index into the edits array, when the failure is about one edit. */
  edit?: number;
}

export interface PatchSuccess {
  ok: true;
  text: string;
  /** Things worth telling the model that did not stop the patch (e.g. hunks found at an offset). */
  notes: string[];
}

export type PatchResult = PatchSuccess | PatchFailure;

export interface SearchReplaceEdit {
  search: string;
  replace: string;
}

const NEXT_STEP_REREAD =
  'Call read_train_py for the current text and rebuild the patch from it, or use search/replace edits.';

function fail(code: PatchErrorCode, error: string, extra: { hunk?: number; edit?: number } = {}): PatchFailure {
  return { ok: false, code, error, ...extra };
}

/** A line quoted for an error message: JSON quoting shows tabs, trailing spaces and `\r`. */
function quote(line: string, max = 120): string {
  const shown = line.length > max ? `${line.slice(0, max)}…` : line;
  return JSON.stringify(shown);
}

function utf8Length(text: string): number {
  return Buffer.byteLength(text, 'utf8');
}

function lineNumberAt(text: string, index: number): number {
  let line = 1;
  for (let i = 0; i < index; i++) if (text.charCodeAt(i) === 10) line++;
  return line;
}

// ---- text validity ------------------------------------------------------------------------------

/**
 * Decodes bytes as strict UTF-8 (no replacement characters). Use on any Buffer that becomes
 * train.py or a patch, so invalid bytes are refused instead of silently turned into U+FFFD.
 */
export function assertUtf8(buf: Uint8Array): { ok: true; text: string } | PatchFailure {
  try {
    const text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(buf);
    return { ok: true, text };
  } catch {
    const offset = firstInvalidUtf8Offset(buf);
    return fail(
      'invalid_text',
      `The content is not valid UTF-8 (first bad byte at offset ${offset}). train.py must be UTF-8 text; ` +
        're-send it as plain UTF-8 without binary data.',
    );
  }
}

/** Offset of the first byte that does not start or continue a valid UTF-8 sequence. */
function firstInvalidUtf8Offset(buf: Uint8Array): number {
  const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  // Binary search on the longest valid prefix is wrong for truncated sequences; a linear
  // walk over sequence lengths is simple and the input is bounded by the patch limits.
  let i = 0;
  while (i < buf.length) {
    const b = buf[i];
    const length = b < 0x80 ? 1 : b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
    if (length === 0 || i + length > buf.length) return i;
    try {
      decoder.decode(buf.subarray(i, i + length));
    } catch {
      return i;
    }
    i += length;
  }
  return buf.length;
}

// Control characters other than \t \n \f \r have no place in Python source, and bidi
// override/isolate characters can make code read differently from how it runs ("Trojan Source").
const FORBIDDEN_CHARACTER = /[\u0000-\u0008\u000B\u000E-\u001F\u007F\u202A-\u202E\u2066-\u2069]/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function describeCodePoint(ch: string): string {
  return `U+${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}`;
}

/**
 * Refuses a change that adds U+FFFD, the replacement character: it is what invalid UTF-8
 * becomes when a client or transport decodes it leniently, so a patch carrying one was almost
 * certainly damaged in transit. A train.py that already held such characters keeps them.
 */
export function checkNoReplacementCharacter(before: string, after: string): { ok: true } | { ok: false; error: string } {
  const count = (text: string) => text.split('\uFFFD').length - 1;
  if (count(after) <= count(before)) return { ok: true };
  const index = after.indexOf('\uFFFD', 0);
  return {
    ok: false,
    error:
      `The change adds U+FFFD (the replacement character) at line ${after.slice(0, index).split('\n').length}: that is what invalid UTF-8 ` +
      'turns into on the way, so the patch was refused and nothing was written. Re-send it as valid UTF-8; if you really mean the ' +
      'character, write the escape "\\ufffd" inside a string literal.',
  };
}

/** Checks a candidate train.py: size limit, valid Unicode, no NUL/control/bidi characters. */
export function checkTrainPyText(text: string): { ok: true } | PatchFailure {
  const bytes = utf8Length(text);
  if (bytes > TRAIN_PY_MAX_BYTES) {
    return fail(
      'too_large',
      `The resulting train.py would be ${bytes} bytes; the limit is ${TRAIN_PY_MAX_BYTES}. ` +
        'Keep train.py a compact script (no embedded data or generated code).',
    );
  }
  return checkCharacters(text, 'train.py');
}

function checkCharacters(text: string, what: string): { ok: true } | PatchFailure {
  const surrogate = LONE_SURROGATE.exec(text);
  if (surrogate) {
    return fail(
      'invalid_text',
      `${what} contains an unpaired UTF-16 surrogate at line ${lineNumberAt(text, surrogate.index)}, which is not valid UTF-8. ` +
        'Send plain UTF-8 text.',
    );
  }
  const bad = FORBIDDEN_CHARACTER.exec(text);
  if (bad) {
    const kind = bad[0] === '\u0000' ? 'a NUL byte' : /[\u202A-\u202E\u2066-\u2069]/.test(bad[0]) ? 'a bidirectional-override character' : 'a control character';
    return fail(
      'invalid_text',
      `${what} contains ${kind} (${describeCodePoint(bad[0])}) at line ${lineNumberAt(text, bad.index)}. ` +
        'Only tab, newline, carriage return and form feed are allowed as control characters; remove it ' +
        '(write escapes such as "\\x1b" inside string literals instead).',
    );
  }
  return { ok: true };
}

// ---- line endings ---------------------------------------------------------------------------

type LineEnding = 'lf' | 'crlf' | 'mixed';

function detectLineEnding(text: string): LineEnding {
  const newlines = (text.match(/\n/g) ?? []).length;
  if (newlines === 0) return 'lf';
  const crlf = (text.match(/\r\n/g) ?? []).length;
  if (crlf === 0) return 'lf';
  return crlf === newlines ? 'crlf' : 'mixed';
}

function crlfToLf(text: string): string {
  return text.replace(/\r\n/g, '\n');
}

/** Runs `edit` on the LF view of a consistently-CRLF text and converts the result back. */
function inLfView(original: string, edit: (lfText: string) => PatchResult): PatchResult {
  const ending = detectLineEnding(original);
  if (ending !== 'crlf') return edit(original);
  const result = edit(crlfToLf(original));
  return result.ok ? { ...result, text: result.text.replace(/\n/g, '\r\n') } : result;
}

function finish(text: string, notes: string[]): PatchResult {
  const check = checkTrainPyText(text);
  return check.ok ? { ok: true, text, notes } : check;
}

// ---- target paths ---------------------------------------------------------------------------

/**
 * Accepts only train.py, bare or with the `a/` / `b/` prefixes git puts in diffs. Every refusal
 * says why, so a model can fix the header instead of guessing.
 */
export function validatePatchTarget(path: string): { ok: true; path: typeof TRAIN_PY } | PatchFailure {
  const onlyTrainPy = 'Only train.py may be changed; name it `train.py` (or `a/train.py` / `b/train.py` in diff headers).';
  if (path.includes('\u0000')) return fail('bad_target', `The path contains a NUL byte. ${onlyTrainPy}`);
  const trimmed = path.trim();
  if (trimmed === '/dev/null') {
    return fail(
      'create_delete',
      'The diff creates or deletes a file (/dev/null in a header). train.py already exists and must stay; ' +
        'send a diff that modifies it: `--- a/train.py` and `+++ b/train.py`.',
    );
  }
  if (trimmed.includes('\\')) return fail('bad_target', `The path ${quote(trimmed)} contains a backslash. ${onlyTrainPy}`);
  if (trimmed.startsWith('/') || /^[A-Za-z]:/.test(trimmed) || trimmed.startsWith('~')) {
    return fail('bad_target', `The path ${quote(trimmed)} is absolute. ${onlyTrainPy}`);
  }
  if (trimmed.split('/').some((segment) => segment === '..')) {
    return fail('bad_target', `The path ${quote(trimmed)} leaves the workspace (contains ".."). ${onlyTrainPy}`);
  }
  if (trimmed === TRAIN_PY || trimmed === `a/${TRAIN_PY}` || trimmed === `b/${TRAIN_PY}`) {
    return { ok: true, path: TRAIN_PY };
  }
  return fail('bad_target', `The patch touches ${quote(trimmed)}. ${onlyTrainPy} Drop the parts for other files.`);
}

// ---- unified diffs --------------------------------------------------------------------------

/** Removes one Markdown code fence around the whole diff, which models often add. */
function stripCodeFence(diff: string): string {
  const lines = diff.split('\n');
  while (lines.length > 0 && lines[0].trim() === '') lines.shift();
  while (lines.length > 0 && lines[lines.length - 1].trim() === '') lines.pop();
  if (lines.length >= 2 && /^```[\w-]*\s*$/.test(lines[0]) && /^```\s*$/.test(lines[lines.length - 1])) {
    return lines.slice(1, -1).join('\n') + '\n';
  }
  return diff;
}

const GIT_REGULAR_FILE_MODES = new Set(['100644', '100755']);

/**
 * Refuses git extended headers that do more than modify train.py's text. These lines never
 * start with ' ', '+', '-' or '\', so they cannot be confused with hunk body lines.
 */
function checkExtendedHeaders(lines: string[]): { ok: true } | PatchFailure {
  const makesSymlink = lines.some((line) => /^(old|new) mode 120000\s*$/.test(line));
  for (const line of lines) {
    const gitDiff = /^diff --git (.*)$/.exec(line);
    if (gitDiff) {
      const paths = /^(\S+) (\S+)$/.exec(gitDiff[1].trim());
      if (!paths) {
        return fail(
          'bad_target',
          `Cannot read the paths in ${quote(line)}. Only train.py may be changed: use \`diff --git a/train.py b/train.py\`.`,
        );
      }
      for (const path of [paths[1], paths[2]]) {
        const target = validatePatchTarget(path);
        if (!target.ok) return target;
      }
      continue;
    }
    if (/^GIT binary patch/.test(line) || /^Binary files .* differ/.test(line) || /^(literal|delta) \d+$/.test(line)) {
      return fail('binary', 'The diff contains a binary patch. train.py is text: send a text unified diff (or search/replace edits).');
    }
    if (/^new file mode /.test(line)) {
      return fail('create_delete', 'The diff creates a new file ("new file mode"). Only the existing train.py may be modified.');
    }
    if (/^deleted file mode /.test(line)) {
      return fail('create_delete', 'The diff deletes a file ("deleted file mode"). train.py must stay; modify it instead.');
    }
    if (/^(rename|copy) (from|to) /.test(line) || /^(dis)?similarity index /.test(line)) {
      return fail('rename', `The diff renames or copies a file (${quote(line)}). Only edit train.py in place; keep its name.`);
    }
    const modeChange = /^(old|new) mode (\d+)/.exec(line);
    if (modeChange) {
      const symlink = makesSymlink ? ' (mode 120000 would turn train.py into a symlink)' : '';
      return fail(
        'mode_change',
        `The diff changes file mode${symlink}: ${quote(line)}. Remove the mode lines; only train.py's text may change.`,
      );
    }
    const index = /^index [0-9a-fA-F]+\.\.[0-9a-fA-F]+ (\d+)\s*$/.exec(line);
    if (index && !GIT_REGULAR_FILE_MODES.has(index[1])) {
      const kind = index[1] === '120000' ? 'a symlink' : index[1] === '160000' ? 'a submodule' : 'not a regular file';
      return fail('mode_change', `The diff's ${quote(line)} describes ${kind}. train.py is a regular file; remove that line.`);
    }
    const svnIndex = /^Index: (.*)$/.exec(line);
    if (svnIndex) {
      const target = validatePatchTarget(svnIndex[1]);
      if (!target.ok) return target;
    }
  }
  return { ok: true };
}

/** The file as lines, plus whether its last line ends with a newline. */
interface LineFile {
  lines: string[];
  finalNewline: boolean;
}

function toLineFile(text: string): LineFile {
  if (text === '') return { lines: [], finalNewline: true };
  const lines = text.split('\n');
  const finalNewline = lines[lines.length - 1] === '';
  if (finalNewline) lines.pop();
  return { lines, finalNewline };
}

function fromLineFile(file: LineFile): string {
  if (file.lines.length === 0) return '';
  return file.lines.join('\n') + (file.finalNewline ? '\n' : '');
}

/** A hunk reduced to what applying it needs. */
interface Hunk {
  number: number; // 1-based, across the whole diff
  oldStart: number; // 1-based line of the first old line (jsdiff already undid the 0-count quirk)
  before: string[]; // context + removed lines, in order
  after: string[]; // context + added lines, in order
  beforeLacksFinalNewline: boolean;
  afterLacksFinalNewline: boolean;
}

function toHunk(raw: StructuredPatchHunk, number: number): Hunk | PatchFailure {
  if (![raw.oldStart, raw.oldLines, raw.newStart, raw.newLines].every(Number.isFinite)) {
    return fail(
      'malformed',
      `Hunk ${number} has an unreadable header; it must look like \`@@ -12,7 +12,8 @@\` (old start,count new start,count). ` +
        NEXT_STEP_REREAD,
      { hunk: number },
    );
  }
  const hunk: Hunk = { number, oldStart: raw.oldStart, before: [], after: [], beforeLacksFinalNewline: false, afterLacksFinalNewline: false };
  let previous = '';
  for (const line of raw.lines) {
    // jsdiff reads an empty line inside a hunk as an empty context line (editors strip the space).
    const op = line.length === 0 ? ' ' : line[0];
    const content = line.slice(1);
    if (op === '\\') {
      if (previous === '-' || previous === ' ') hunk.beforeLacksFinalNewline = true;
      if (previous === '+' || previous === ' ') hunk.afterLacksFinalNewline = true;
      continue;
    }
    if (op === ' ' || op === '-') hunk.before.push(content);
    if (op === ' ' || op === '+') hunk.after.push(content);
    previous = op;
  }
  return hunk;
}

/** Whether the hunk's old side matches the file at 0-based line `at`, final-newline state included. */
function matchesAt(file: LineFile, hunk: Hunk, at: number): boolean {
  const { lines } = file;
  if (at < 0 || at + hunk.before.length > lines.length) return false;
  for (let i = 0; i < hunk.before.length; i++) if (lines[at + i] !== hunk.before[i]) return false;
  const reachesEnd = at + hunk.before.length === lines.length && lines.length > 0;
  if (hunk.beforeLacksFinalNewline) return reachesEnd && !file.finalNewline && hunk.before.length > 0;
  // A context block that ends on a last line without newline must say so, as git requires.
  if (reachesEnd && hunk.before.length > 0 && !file.finalNewline) return false;
  return true;
}

/** Explains why a hunk matched nowhere, pointing at the closest near-match. */
function explainMismatch(file: LineFile, hunk: Hunk, expected: number, from: number): PatchFailure {
  const { lines } = file;
  const what = `Hunk ${hunk.number} (header line ${hunk.oldStart})`;
  let best = -1;
  let bestLength = -1;
  for (let at = from; at <= lines.length; at++) {
    let length = 0;
    while (length < hunk.before.length && at + length < lines.length && lines[at + length] === hunk.before[length]) length++;
    if (length > bestLength || (length === bestLength && Math.abs(at - expected) < Math.abs(best - expected))) {
      best = at;
      bestLength = length;
    }
  }
  let detail: string;
  if (bestLength <= 0) {
    detail = `its first context/removed line ${quote(hunk.before[0])} does not occur in train.py${from > 0 ? ` after line ${from}` : ''}.`;
    const wanted = hunk.before[0].trimEnd();
    const near = wanted === '' ? -1 : lines.findIndex((line, i) => i >= from && line.trimEnd() === wanted);
    if (near >= 0) detail += ` Line ${near + 1} differs only in trailing whitespace or a carriage return: ${quote(lines[near])}.`;
  } else if (bestLength === hunk.before.length) {
    detail = hunk.beforeLacksFinalNewline
      ? `its lines match at line ${best + 1}, but it says "\\ No newline at end of file" and that is not the end of train.py (or train.py does end with a newline).`
      : `its lines match at line ${best + 1} up to the end of train.py, whose last line has no final newline; the diff must mark it with "\\ No newline at end of file".`;
  } else {
    const lineNo = best + bestLength + 1;
    const actual = best + bestLength < lines.length ? quote(lines[best + bestLength]) : 'the end of the file';
    detail = `train.py line ${lineNo} should be ${quote(hunk.before[bestLength])} but is ${actual} (the first ${bestLength} line(s) of the hunk match from line ${best + 1}).`;
  }
  return fail('does_not_apply', `${what} does not apply: ${detail} Context must match exactly (no fuzzy matching). ${NEXT_STEP_REREAD}`, {
    hunk: hunk.number,
  });
}

/** Applies one hunk in place; returns where it went (0-based) or a failure. */
function applyHunk(file: LineFile, hunk: Hunk, expected: number, from: number): { at: number } | PatchFailure {
  const { lines } = file;
  let at: number;
  if (hunk.before.length === 0) {
    // A pure insertion without context has nothing to search for: trust the header, but only within the file.
    if (expected < from || expected > lines.length) {
      return fail(
        'does_not_apply',
        `Hunk ${hunk.number} inserts at line ${hunk.oldStart} without context, which is outside train.py (${lines.length} lines) or before the previous hunk. ` +
          'Include a few unchanged lines around the insertion. ' + NEXT_STEP_REREAD,
        { hunk: hunk.number },
      );
    }
    at = expected;
  } else if (expected >= from && matchesAt(file, hunk, expected)) {
    at = expected;
  } else {
    const candidates: number[] = [];
    for (let i = from; i + hunk.before.length <= lines.length; i++) if (matchesAt(file, hunk, i)) candidates.push(i);
    if (candidates.length === 0) return explainMismatch(file, hunk, expected, from);
    if (candidates.length > 1) {
      const shown = candidates.slice(0, 6).map((i) => i + 1).join(', ');
      return fail(
        'ambiguous',
        `Hunk ${hunk.number}'s context is not at line ${hunk.oldStart} as its header says, and it occurs ${candidates.length} times ` +
          `(at lines ${shown}${candidates.length > 6 ? ', …' : ''}). Fix the header line numbers or add more context lines so it is unique.`,
        { hunk: hunk.number },
      );
    }
    at = candidates[0];
  }
  const reachesEnd = at + hunk.before.length === lines.length;
  if (hunk.afterLacksFinalNewline && !reachesEnd) {
    return fail(
      'malformed',
      `Hunk ${hunk.number} marks "\\ No newline at end of file" on a line that is not the last line of train.py. Remove that marker.`,
      { hunk: hunk.number },
    );
  }
  lines.splice(at, hunk.before.length, ...hunk.after);
  if (reachesEnd) file.finalNewline = !hunk.afterLacksFinalNewline;
  return { at };
}

function parseDiff(diff: string): StructuredPatch[] | PatchFailure {
  try {
    return parsePatch(diff);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    const countHint = /line count did not match/.test(reason)
      ? ' The numbers in the @@ header must equal the hunk\'s lines: old count = context + "-" lines, new count = context + "+" lines.'
      : '';
    return fail(
      'malformed',
      `The diff is not a valid unified diff: ${reason}.${countHint} Expected \`--- a/train.py\`, \`+++ b/train.py\`, then hunks ` +
        'starting with `@@ -start,count +start,count @@` whose lines begin with " ", "-" or "+". Small changes are easier as search/replace edits.',
    );
  }
}

/**
 * Applies a unified diff of train.py to `original`. Exact context, no fuzz; every file section
 * must be train.py; sections are applied in order.
 */
export function applyUnifiedDiff(original: string, diff: string): PatchResult {
  const size = utf8Length(diff);
  if (size > PATCH_MAX_BYTES) {
    return fail('too_large', `The diff is ${size} bytes; the limit is ${PATCH_MAX_BYTES}. Split the change into smaller patches.`);
  }
  if (diff.includes('\u0000')) {
    return fail('binary', 'The diff contains a NUL byte, so it is binary. Send a text unified diff of train.py.');
  }
  const diffText = checkCharacters(diff, 'The diff');
  if (!diffText.ok) return diffText;
  const normalized = stripCodeFence(crlfToLf(diff));
  if (normalized.trim() === '') return fail('malformed', 'The diff is empty. Send a unified diff of train.py or search/replace edits.');

  const headers = checkExtendedHeaders(normalized.split('\n'));
  if (!headers.ok) return headers;
  const files = parseDiff(normalized);
  if (!Array.isArray(files)) return files;

  return inLfView(original, (text) => {
    const file = toLineFile(text);
    const notes: string[] = [];
    let hunkNumber = 0;
    for (const section of files) {
      for (const name of [section.oldFileName, section.newFileName]) {
        if (name === undefined) continue;
        const target = validatePatchTarget(name);
        if (!target.ok) return target;
      }
      const hasHeaders = section.oldFileName !== undefined || section.newFileName !== undefined;
      if (section.hunks.length === 0) {
        if (hasHeaders) {
          return fail('malformed', `The diff has headers for train.py but no hunks (lines starting with @@). ${NEXT_STEP_REREAD}`);
        }
        continue;
      }
      // Line numbers of each section refer to the text as left by the previous sections.
      let shift = 0; // lines added minus removed by earlier hunks of this section, plus any offset found
      let from = 0;
      for (const raw of section.hunks) {
        hunkNumber++;
        const hunk = toHunk(raw, hunkNumber);
        if ('ok' in hunk) return hunk;
        const expected = hunk.oldStart - 1 + shift;
        const placed = applyHunk(file, hunk, expected, from);
        if ('ok' in placed) return placed;
        if (placed.at !== expected && hunk.before.length > 0) {
          const by = placed.at - expected;
          notes.push(`Hunk ${hunk.number} applied at line ${placed.at + 1}, ${Math.abs(by)} line(s) ${by > 0 ? 'below' : 'above'} where its header says.`);
        }
        shift = placed.at - (hunk.oldStart - 1) + (hunk.after.length - hunk.before.length);
        from = placed.at + hunk.after.length;
      }
    }
    if (hunkNumber === 0) {
      return fail('malformed', 'The diff contains no hunks (lines starting with `@@ -start,count +start,count @@`). ' + NEXT_STEP_REREAD);
    }
    return finish(fromLineFile(file), notes);
  });
}

// ---- search / replace -----------------------------------------------------------------------

function occurrences(text: string, search: string): number[] {
  const found: number[] = [];
  // Overlapping matches count too: "aa" in "aaa" is ambiguous.
  for (let i = text.indexOf(search); i !== -1; i = text.indexOf(search, i + 1)) found.push(i);
  return found;
}

function collapseWhitespace(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}

/**
 * Applies exact search/replace edits in order, each to the result of the previous ones.
 * Every search text must occur exactly once at the time it is applied.
 */
export function applySearchReplace(original: string, edits: readonly SearchReplaceEdit[]): PatchResult {
  if (!Array.isArray(edits) || edits.length === 0) {
    return fail('bad_edit', 'No edits given. Pass edits as [{search, replace}, ...] with text copied exactly from read_train_py.');
  }
  let total = 0;
  for (const [index, edit] of edits.entries()) {
    if (typeof edit?.search !== 'string' || typeof edit?.replace !== 'string') {
      return fail('bad_edit', `edits[${index}] must have string fields "search" and "replace".`, { edit: index });
    }
    if (edit.search.length === 0) {
      return fail('bad_edit', `edits[${index}].search is empty. Copy the exact text to replace (a few whole lines) from read_train_py.`, {
        edit: index,
      });
    }
    total += utf8Length(edit.search) + utf8Length(edit.replace);
  }
  if (total > PATCH_MAX_BYTES) {
    return fail('too_large', `The edits total ${total} bytes; the limit is ${PATCH_MAX_BYTES}. Split the change into smaller patches.`);
  }
  for (const [index, edit] of edits.entries()) {
    for (const [field, value] of [['search', edit.search], ['replace', edit.replace]] as const) {
      const check = checkCharacters(value, `edits[${index}].${field}`);
      if (!check.ok) return { ...check, edit: index };
    }
  }

  return inLfView(original, (start) => {
    let text = start;
    for (const [index, edit] of edits.entries()) {
      const search = crlfToLf(edit.search);
      const replace = crlfToLf(edit.replace);
      const found = occurrences(text, search);
      if (found.length === 0) return explainNoMatch(start, text, search, index);
      if (found.length > 1) {
        const lines = found.slice(0, 6).map((i) => lineNumberAt(text, i)).join(', ');
        return fail(
          'ambiguous',
          `edits[${index}].search occurs ${found.length} times in train.py (at lines ${lines}${found.length > 6 ? ', …' : ''}). ` +
            'It must match exactly once: include more surrounding lines to make it unique.',
          { edit: index },
        );
      }
      // Slicing, not String.replace: "$&" and friends in the replacement must stay literal.
      text = text.slice(0, found[0]) + replace + text.slice(found[0] + search.length);
    }
    return finish(text, []);
  });
}

function explainNoMatch(start: string, current: string, search: string, index: number): PatchFailure {
  let hint: string;
  if (index > 0 && start.includes(search)) {
    hint = `It occurred in train.py before, but an earlier edit (edits[0..${index - 1}]) changed that text; search for the text as it reads after the earlier edits.`;
  } else if (collapseWhitespace(current).includes(collapseWhitespace(search))) {
    hint = 'It matches only if whitespace is ignored: copy indentation (spaces, not tabs), line breaks and spacing exactly.';
  } else {
    hint = 'Call read_train_py and copy the text to replace exactly, including indentation.';
  }
  return fail('no_match', `edits[${index}].search was not found in train.py. ${hint}`, { edit: index });
}

// ---- creating diffs -------------------------------------------------------------------------

/** A git-style unified diff (3 lines of context) from `before` to `after`; '' when equal. */
export function unifiedDiff(before: string, after: string, path: string = TRAIN_PY): string {
  if (before === after) return '';
  const patch = structuredPatch(`a/${path}`, `b/${path}`, before, after, undefined, undefined, { context: 3 });
  return formatPatch(patch, FILE_HEADERS_ONLY);
}

/** Lines added and removed going from `before` to `after`. */
export function diffStat(before: string, after: string): { added: number; removed: number } {
  if (before === after) return { added: 0, removed: 0 };
  const patch = structuredPatch('a', 'b', before, after, undefined, undefined, { context: 0 });
  let added = 0;
  let removed = 0;
  for (const hunk of patch.hunks) {
    for (const line of hunk.lines) {
      if (line.startsWith('+')) added++;
      else if (line.startsWith('-')) removed++;
    }
  }
  return { added, removed };
}
