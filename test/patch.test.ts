import { describe, expect, it } from 'vitest';
import {
  PATCH_MAX_BYTES,
  TRAIN_PY_MAX_BYTES,
  applySearchReplace,
  applyUnifiedDiff,
  assertUtf8,
  checkTrainPyText,
  diffStat,
  unifiedDiff,
  validatePatchTarget,
  type PatchResult,
} from '../src/core/patch.js';

const ORIGINAL = [
  'import math',
  'import torch',
  '',
  'DEPTH = 4',
  'LR = 0.04',
  'BATCH = 8',
  '',
  'def lr_at(step):',
  '    return LR * min(1.0, step / 100)',
  '',
  'print("depth", DEPTH)',
  '',
].join('\n');

function ok(result: PatchResult): string {
  if (!result.ok) throw new Error(`expected success, got ${result.code}: ${result.error}`);
  return result.text;
}

function failure(result: PatchResult) {
  if (result.ok) throw new Error('expected a failure, got success');
  return result;
}

const GIT_HEADER = 'diff --git a/train.py b/train.py\nindex 3b18e51..a9c2f1e 100644\n--- a/train.py\n+++ b/train.py\n';
const DEPTH_HUNK = '@@ -3,4 +3,4 @@ import torch\n \n-DEPTH = 4\n+DEPTH = 6\n LR = 0.04\n BATCH = 8\n';

describe('validatePatchTarget', () => {
  it.each(['train.py', 'a/train.py', 'b/train.py', ' train.py '])('accepts %j', (path) => {
    expect(validatePatchTarget(path)).toEqual({ ok: true, path: 'train.py' });
  });
  it.each([
    ['../train.py', /leaves the workspace/],
    ['a/../train.py', /leaves the workspace/],
    ['a/../../etc/passwd', /leaves the workspace/],
    ['/etc/passwd', /absolute/],
    ['/work/ws/train.py', /absolute/],
    ['C:/train.py', /absolute/],
    ['~/train.py', /absolute/],
    ['python\\train.py', /backslash/],
    ['train.py\u0000', /NUL/],
    ['prepare.py', /touches "prepare.py"/],
    ['a/prepare.py', /touches/],
    ['b/data/val.bin', /touches/],
    ['./train.py', /touches/],
    ['src/train.py', /touches/],
    ['train.py.orig', /touches/],
    ['', /touches/],
  ])('refuses %j', (path, message) => {
    const result = validatePatchTarget(path);
    expect(result.ok).toBe(false);
    if (!result.ok) {
      expect(result.code).toBe('bad_target');
      expect(result.error).toMatch(message);
      expect(result.error).toMatch(/Only train\.py may be changed/);
    }
  });
  it('refuses /dev/null as creating or deleting the file', () => {
    const result = validatePatchTarget('/dev/null');
    expect(result).toMatchObject({ ok: false, code: 'create_delete' });
  });
});

describe('applyUnifiedDiff: applying', () => {
  it('applies a git diff with an index line', () => {
    const text = ok(applyUnifiedDiff(ORIGINAL, GIT_HEADER + DEPTH_HUNK));
    expect(text).toBe(ORIGINAL.replace('DEPTH = 4', 'DEPTH = 6'));
  });

  it('applies a plain diff with timestamps in the headers', () => {
    const diff = '--- train.py\t2026-03-01 10:00:00\n+++ train.py\t2026-03-01 10:05:00\n' + DEPTH_HUNK;
    expect(ok(applyUnifiedDiff(ORIGINAL, diff))).toContain('DEPTH = 6');
  });

  it('applies bare hunks without file headers as train.py', () => {
    expect(ok(applyUnifiedDiff(ORIGINAL, DEPTH_HUNK))).toContain('DEPTH = 6');
  });

  it('strips one Markdown code fence around the diff', () => {
    const diff = '```diff\n' + GIT_HEADER + DEPTH_HUNK + '```\n';
    expect(ok(applyUnifiedDiff(ORIGINAL, diff))).toContain('DEPTH = 6');
  });

  it('applies several hunks, later ones shifted by earlier insertions', () => {
    const diff =
      '--- a/train.py\n+++ b/train.py\n' +
      '@@ -1,3 +1,5 @@\n import math\n+import time\n+import random\n import torch\n \n' +
      '@@ -9,3 +11,3 @@ def lr_at(step):\n     return LR * min(1.0, step / 100)\n \n-print("depth", DEPTH)\n+print("depth", DEPTH, "lr", LR)\n';
    const text = ok(applyUnifiedDiff(ORIGINAL, diff));
    expect(text.split('\n').slice(0, 4)).toEqual(['import math', 'import time', 'import random', 'import torch']);
    expect(text).toContain('print("depth", DEPTH, "lr", LR)');
  });

  it('applies a hunk whose header line numbers are off when its context is unique, and says so', () => {
    const diff = '--- a/train.py\n+++ b/train.py\n@@ -7,4 +7,4 @@\n \n-DEPTH = 4\n+DEPTH = 6\n LR = 0.04\n BATCH = 8\n';
    const result = applyUnifiedDiff(ORIGINAL, diff);
    expect(ok(result)).toContain('DEPTH = 6');
    expect(result.ok && result.notes.join(' ')).toMatch(/Hunk 1 applied at line 3, 4 line\(s\) above/);
  });

  it('carries an offset found for one hunk over to the next', () => {
    const diff =
      '@@ -10,1 +10,1 @@\n-DEPTH = 4\n+DEPTH = 6\n' + // really line 4: offset -6
      '@@ -12,1 +12,1 @@\n-BATCH = 8\n+BATCH = 16\n'; // really line 6
    const text = ok(applyUnifiedDiff(ORIGINAL, diff));
    expect(text).toContain('DEPTH = 6\nLR = 0.04\nBATCH = 16\n');
  });

  it('applies a context-free insertion at the header position', () => {
    const diff = '@@ -4,0 +5,1 @@\n+WIDTH = 64\n';
    expect(ok(applyUnifiedDiff(ORIGINAL, diff))).toContain('DEPTH = 4\nWIDTH = 64\nLR = 0.04\n');
  });

  it('inserts at the top of the file', () => {
    const diff = '--- a/train.py\n+++ b/train.py\n@@ -0,0 +1 @@\n+# header\n';
    expect(ok(applyUnifiedDiff(ORIGINAL, diff))).toBe('# header\n' + ORIGINAL);
  });

  it('fills an empty train.py', () => {
    const diff = '--- a/train.py\n+++ b/train.py\n@@ -0,0 +1,2 @@\n+x = 1\n+print(x)\n';
    expect(ok(applyUnifiedDiff('', diff))).toBe('x = 1\nprint(x)\n');
  });

  it('can delete every line', () => {
    const original = 'a = 1\nb = 2\n';
    expect(ok(applyUnifiedDiff(original, '@@ -1,2 +0,0 @@\n-a = 1\n-b = 2\n'))).toBe('');
  });

  it('accepts blank context lines whose leading space was stripped', () => {
    const diff = '@@ -2,3 +2,3 @@\n import torch\n\n-DEPTH = 4\n+DEPTH = 5\n';
    expect(ok(applyUnifiedDiff(ORIGINAL, diff))).toContain('DEPTH = 5');
  });

  it('applies two sections for train.py in order', () => {
    const diff =
      '--- a/train.py\n+++ b/train.py\n@@ -4 +4 @@\n-DEPTH = 4\n+DEPTH = 5\n' +
      '--- a/train.py\n+++ b/train.py\n@@ -4 +4 @@\n-DEPTH = 5\n+DEPTH = 7\n';
    expect(ok(applyUnifiedDiff(ORIGINAL, diff))).toContain('DEPTH = 7');
  });

  it('keeps "$&" and other replacement patterns literal', () => {
    const diff = '@@ -4 +4 @@\n-DEPTH = 4\n+DEPTH = "$&$1"\n';
    expect(ok(applyUnifiedDiff(ORIGINAL, diff))).toContain('DEPTH = "$&$1"');
  });
});

describe('applyUnifiedDiff: end of file newlines', () => {
  const noNewline = 'a = 1\nb = 2';

  it('changes a last line that has no newline', () => {
    const diff = '@@ -1,2 +1,2 @@\n a = 1\n-b = 2\n\\ No newline at end of file\n+b = 3\n\\ No newline at end of file\n';
    expect(ok(applyUnifiedDiff(noNewline, diff))).toBe('a = 1\nb = 3');
  });

  it('adds the missing final newline', () => {
    const diff = '@@ -1,2 +1,2 @@\n a = 1\n-b = 2\n\\ No newline at end of file\n+b = 2\n';
    expect(ok(applyUnifiedDiff(noNewline, diff))).toBe('a = 1\nb = 2\n');
  });

  it('removes the final newline', () => {
    const diff = '@@ -1,2 +1,2 @@\n a = 1\n-b = 2\n+b = 2\n\\ No newline at end of file\n';
    expect(ok(applyUnifiedDiff('a = 1\nb = 2\n', diff))).toBe('a = 1\nb = 2');
  });

  it('refuses a hunk that reaches a newline-less end without saying so', () => {
    const diff = '@@ -1,2 +1,2 @@\n a = 1\n-b = 2\n+b = 3\n';
    const result = failure(applyUnifiedDiff(noNewline, diff));
    expect(result.code).toBe('does_not_apply');
    expect(result.error).toMatch(/No newline at end of file/);
  });

  it('refuses a "No newline" marker when the file does end with a newline', () => {
    const diff = '@@ -1,2 +1,2 @@\n a = 1\n-b = 2\n\\ No newline at end of file\n+b = 3\n';
    expect(failure(applyUnifiedDiff('a = 1\nb = 2\n', diff)).code).toBe('does_not_apply');
  });

  it('refuses a "No newline" marker on a line that is not last', () => {
    const diff = '@@ -4,1 +4,1 @@\n-DEPTH = 4\n+DEPTH = 5\n\\ No newline at end of file\n';
    expect(failure(applyUnifiedDiff(ORIGINAL, diff)).code).toBe('malformed');
  });
});

describe('applyUnifiedDiff: line endings', () => {
  const crlf = ORIGINAL.replace(/\n/g, '\r\n');

  it('patches a CRLF train.py with an LF diff and keeps CRLF', () => {
    const text = ok(applyUnifiedDiff(crlf, GIT_HEADER + DEPTH_HUNK));
    expect(text).toBe(crlf.replace('DEPTH = 4', 'DEPTH = 6'));
  });

  it('patches an LF train.py with a CRLF-transported diff and keeps LF', () => {
    const text = ok(applyUnifiedDiff(ORIGINAL, (GIT_HEADER + DEPTH_HUNK).replace(/\n/g, '\r\n')));
    expect(text).toBe(ORIGINAL.replace('DEPTH = 4', 'DEPTH = 6'));
    expect(text).not.toContain('\r');
  });

  it('round-trips unifiedDiff on CRLF text', () => {
    const after = crlf.replace('LR = 0.04', 'LR = 0.05').replace('BATCH = 8', 'BATCH = 16');
    expect(ok(applyUnifiedDiff(crlf, unifiedDiff(crlf, after)))).toBe(after);
  });

  it('matches a mixed-ending file byte for byte and shows the \\r in the error', () => {
    const mixed = 'a = 1\r\nb = 2\nc = 3\n';
    const result = failure(applyUnifiedDiff(mixed, '@@ -1,2 +1,2 @@\n a = 1\n-b = 2\n+b = 5\n'));
    expect(result.code).toBe('does_not_apply');
    expect(result.error).toContain('\\r');
  });
});

describe('applyUnifiedDiff: refusals', () => {
  it('refuses stale context, naming the line, what was expected and what is there', () => {
    const stale = ORIGINAL.replace('LR = 0.04', 'LR = 0.06');
    const result = failure(applyUnifiedDiff(stale, GIT_HEADER + DEPTH_HUNK));
    expect(result.code).toBe('does_not_apply');
    expect(result.hunk).toBe(1);
    expect(result.error).toMatch(/train\.py line 5 should be "LR = 0\.04" but is "LR = 0\.06"/);
    expect(result.error).toMatch(/read_train_py/);
  });

  it('refuses a removed line that is not in the file', () => {
    const result = failure(applyUnifiedDiff(ORIGINAL, '@@ -4 +4 @@\n-DEPTH = 12\n+DEPTH = 6\n'));
    expect(result.code).toBe('does_not_apply');
    expect(result.error).toMatch(/"DEPTH = 12" does not occur/);
  });

  it('does not fuzz: one differing context line is enough to refuse', () => {
    const diff = '@@ -3,4 +3,4 @@\n \n-DEPTH = 4\n+DEPTH = 6\n LR = 0.04\n BATCH  = 8\n';
    expect(failure(applyUnifiedDiff(ORIGINAL, diff)).code).toBe('does_not_apply');
  });

  it('refuses ambiguous context when the header line is wrong', () => {
    const original = 'x = 1\ny = 2\nz = 0\nx = 1\ny = 2\nw = 0\n';
    const result = failure(applyUnifiedDiff(original, '@@ -3,2 +3,2 @@\n x = 1\n-y = 2\n+y = 3\n'));
    expect(result.code).toBe('ambiguous');
    expect(result.error).toMatch(/occurs 2 times \(at lines 1, 4\)/);
  });

  it('uses the header position when repeated context matches there', () => {
    const original = 'x = 1\ny = 2\nz = 0\nx = 1\ny = 2\nw = 0\n';
    expect(ok(applyUnifiedDiff(original, '@@ -4,2 +4,2 @@\n x = 1\n-y = 2\n+y = 3\n'))).toBe('x = 1\ny = 2\nz = 0\nx = 1\ny = 3\nw = 0\n');
  });

  it('refuses hunks out of order', () => {
    const diff = '@@ -6 +6 @@\n-BATCH = 8\n+BATCH = 9\n@@ -4 +4 @@\n-DEPTH = 4\n+DEPTH = 6\n';
    expect(failure(applyUnifiedDiff(ORIGINAL, diff)).code).toBe('does_not_apply');
  });

  it('refuses a context-free insertion outside the file', () => {
    expect(failure(applyUnifiedDiff(ORIGINAL, '@@ -90,0 +91,1 @@\n+x = 1\n')).code).toBe('does_not_apply');
  });

  it('refuses miscounted hunk headers with a counting hint', () => {
    const diff = '--- a/train.py\n+++ b/train.py\n@@ -3,5 +3,4 @@\n \n-DEPTH = 4\n+DEPTH = 6\n LR = 0.04\n';
    const result = failure(applyUnifiedDiff(ORIGINAL, diff));
    expect(result.code).toBe('malformed');
    expect(result.error).toMatch(/not a valid unified diff/);
  });

  it('refuses a hunk body longer than its header says', () => {
    const diff = '--- a/train.py\n+++ b/train.py\n@@ -4,1 +4,1 @@\n-DEPTH = 4\n+DEPTH = 6\n LR = 0.04\n+BATCH = 9\n';
    expect(failure(applyUnifiedDiff(ORIGINAL, diff)).code).toBe('malformed');
  });

  it('refuses a hunk header without numbers', () => {
    const result = failure(applyUnifiedDiff(ORIGINAL, '--- a/train.py\n+++ b/train.py\n@@ @@\n-DEPTH = 4\n+DEPTH = 6\n'));
    expect(result.code).toBe('malformed');
  });

  it.each([
    ['empty text', ''],
    ['whitespace', '  \n\n'],
    ['prose', 'Please change DEPTH to 6.\n'],
    ['headers without hunks', '--- a/train.py\n+++ b/train.py\n'],
  ])('refuses %s as malformed', (_label, diff) => {
    expect(failure(applyUnifiedDiff(ORIGINAL, diff)).code).toBe('malformed');
  });

  it.each([
    ['another file', '--- a/prepare.py\n+++ b/prepare.py\n@@ -1 +1 @@\n-x\n+y\n', 'bad_target'],
    ['another file in diff --git', 'diff --git a/prepare.py b/prepare.py\n--- a/train.py\n+++ b/train.py\n' + DEPTH_HUNK, 'bad_target'],
    ['a ../ path', '--- a/../train.py\n+++ b/../train.py\n' + DEPTH_HUNK, 'bad_target'],
    ['an absolute path', '--- /work/ws/train.py\n+++ /work/ws/train.py\n' + DEPTH_HUNK, 'bad_target'],
    ['a backslash path', '--- a\\train.py\n+++ b\\train.py\n' + DEPTH_HUNK, 'bad_target'],
    ['an svn Index line for another file', 'Index: prepare.py\n===================================================================\n--- prepare.py\n+++ prepare.py\n@@ -1 +1 @@\n-x\n+y\n', 'bad_target'],
    ['a new file from /dev/null', '--- /dev/null\n+++ b/train.py\n@@ -0,0 +1 @@\n+x = 1\n', 'create_delete'],
    ['a deletion to /dev/null', '--- a/train.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-import math\n', 'create_delete'],
    ['new file mode', 'diff --git a/train.py b/train.py\nnew file mode 100644\n--- /dev/null\n+++ b/train.py\n@@ -0,0 +1 @@\n+x\n', 'create_delete'],
    ['deleted file mode', 'diff --git a/train.py b/train.py\ndeleted file mode 100644\n', 'create_delete'],
    ['a rename', 'diff --git a/train.py b/train2.py\nsimilarity index 100%\nrename from train.py\nrename to train2.py\n', 'bad_target'],
    ['rename headers', 'diff --git a/train.py b/train.py\nsimilarity index 90%\nrename from train.py\nrename to train.py\n' + DEPTH_HUNK, 'rename'],
    ['copy headers', 'diff --git a/train.py b/train.py\ncopy from train.py\ncopy to train.py\n', 'rename'],
    ['a mode change', 'diff --git a/train.py b/train.py\nold mode 100644\nnew mode 100755\n', 'mode_change'],
    ['a symlink mode', 'diff --git a/train.py b/train.py\nold mode 100644\nnew mode 120000\n', 'mode_change'],
    ['a symlink index line', 'diff --git a/train.py b/train.py\nindex 3b18e51..a9c2f1e 120000\n--- a/train.py\n+++ b/train.py\n' + DEPTH_HUNK, 'mode_change'],
    ['a submodule index line', 'diff --git a/train.py b/train.py\nindex 3b18e51..a9c2f1e 160000\n--- a/train.py\n+++ b/train.py\n' + DEPTH_HUNK, 'mode_change'],
    ['a git binary patch', 'diff --git a/train.py b/train.py\nindex 3b18e51..a9c2f1e 100644\nGIT binary patch\nliteral 12\nzcmZ?wbhEHbRA5k$\n\nliteral 0\nHcmV?d00001\n', 'binary'],
    ['"Binary files differ"', 'diff --git a/train.py b/train.py\nBinary files a/train.py and b/train.py differ\n', 'binary'],
    ['a NUL byte', GIT_HEADER + '@@ -4 +4 @@\n-DEPTH = 4\n+DEPTH = "\u0000"\n', 'binary'],
  ])('refuses %s', (_label, diff, code) => {
    expect(failure(applyUnifiedDiff(ORIGINAL, diff)).code).toBe(code);
  });

  it('refuses a multi-file diff that also touches prepare.py, even when train.py comes first', () => {
    const diff = GIT_HEADER + DEPTH_HUNK + 'diff --git a/prepare.py b/prepare.py\n--- a/prepare.py\n+++ b/prepare.py\n@@ -1 +1 @@\n-x\n+y\n';
    const result = failure(applyUnifiedDiff(ORIGINAL, diff));
    expect(result.code).toBe('bad_target');
    expect(result.error).toMatch(/prepare\.py/);
  });

  it('refuses a multi-file diff without git lines', () => {
    const diff = '--- a/train.py\n+++ b/train.py\n' + DEPTH_HUNK + '--- a/data/val.bin\n+++ b/data/val.bin\n@@ -1 +1 @@\n-x\n+y\n';
    expect(failure(applyUnifiedDiff(ORIGINAL, diff)).code).toBe('bad_target');
  });

  it('explains a symlink mode as such', () => {
    const diff = 'diff --git a/train.py b/train.py\nold mode 100644\nnew mode 120000\n';
    expect(failure(applyUnifiedDiff(ORIGINAL, diff)).error).toMatch(/symlink/);
  });

  it('refuses a diff over PATCH_MAX_BYTES', () => {
    const lines = Array.from({ length: PATCH_MAX_BYTES / 16 }, (_, i) => `+x${i} = ${'1'.repeat(10)}`);
    const diff = `@@ -0,0 +1,${lines.length} @@\n${lines.join('\n')}\n`;
    const result = failure(applyUnifiedDiff(ORIGINAL, diff));
    expect(result.code).toBe('too_large');
    expect(result.error).toMatch(/limit is 262144/);
  });

  it('refuses a result over TRAIN_PY_MAX_BYTES', () => {
    const big = '# ' + 'x'.repeat(TRAIN_PY_MAX_BYTES - 100) + '\n';
    const addition = '# ' + 'y'.repeat(200);
    const result = failure(applyUnifiedDiff(big, `@@ -1,0 +2,1 @@\n+${addition}\n`));
    expect(result.code).toBe('too_large');
    expect(result.error).toMatch(/resulting train\.py/);
  });

  it.each([
    ['an escape character', '\u001b[31m'],
    ['a bell', '\u0007'],
    ['DEL', '\u007f'],
    ['a bidi override', 'admin\u202e'],
    ['an unpaired surrogate', '\ud800'],
  ])('refuses a diff adding %s', (_label, bad) => {
    expect(failure(applyUnifiedDiff(ORIGINAL, `@@ -4 +4 @@\n-DEPTH = 4\n+DEPTH = "${bad}"\n`)).code).toBe('invalid_text');
  });

  it('allows tabs and form feeds', () => {
    expect(ok(applyUnifiedDiff(ORIGINAL, '@@ -4 +4 @@\n-DEPTH = 4\n+DEPTH = 4\t# tab\f\n'))).toContain('\t# tab\f');
    expect(checkTrainPyText('x = 1\n\f\ny = 2\r\n').ok).toBe(true);
  });
});

describe('applySearchReplace', () => {
  it('applies one exact edit', () => {
    const text = ok(applySearchReplace(ORIGINAL, [{ search: 'DEPTH = 4', replace: 'DEPTH = 8' }]));
    expect(text).toBe(ORIGINAL.replace('DEPTH = 4', 'DEPTH = 8'));
  });

  it('applies edits in order, each on the previous result', () => {
    const text = ok(
      applySearchReplace(ORIGINAL, [
        { search: 'LR = 0.04', replace: 'LR = 0.05\nWD = 0.1' },
        { search: 'WD = 0.1', replace: 'WD = 0.2' },
      ]),
    );
    expect(text).toContain('LR = 0.05\nWD = 0.2\nBATCH = 8');
  });

  it('can delete text with an empty replacement', () => {
    expect(ok(applySearchReplace(ORIGINAL, [{ search: 'BATCH = 8\n', replace: '' }]))).not.toContain('BATCH');
  });

  it('keeps $-patterns in the replacement literal', () => {
    expect(ok(applySearchReplace(ORIGINAL, [{ search: 'BATCH = 8', replace: "BATCH = '$&$1$$'" }]))).toContain("BATCH = '$&$1$$'");
  });

  it('refuses a search that matches nowhere, naming the edit and read_train_py', () => {
    const result = failure(applySearchReplace(ORIGINAL, [{ search: 'DEPTH = 4', replace: 'DEPTH = 5' }, { search: 'WIDTH = 3', replace: 'x' }]));
    expect(result).toMatchObject({ code: 'no_match', edit: 1 });
    expect(result.error).toMatch(/edits\[1\]\.search was not found/);
    expect(result.error).toMatch(/read_train_py/);
  });

  it('hints at whitespace when only whitespace differs', () => {
    const result = failure(applySearchReplace(ORIGINAL, [{ search: 'def lr_at(step):\n  return LR', replace: 'x' }]));
    expect(result.error).toMatch(/whitespace is ignored/);
  });

  it('hints when an earlier edit consumed the text', () => {
    const result = failure(
      applySearchReplace(ORIGINAL, [
        { search: 'DEPTH = 4', replace: 'DEPTH = 5' },
        { search: 'DEPTH = 4', replace: 'DEPTH = 6' },
      ]),
    );
    expect(result.edit).toBe(1);
    expect(result.error).toMatch(/an earlier edit/);
  });

  it('refuses a search that matches several times, saying how many and where', () => {
    const result = failure(applySearchReplace(ORIGINAL, [{ search: 'DEPTH', replace: 'D' }]));
    expect(result).toMatchObject({ code: 'ambiguous', edit: 0 });
    expect(result.error).toMatch(/occurs 2 times in train\.py \(at lines 4, 11\)/);
    expect(result.error).toMatch(/more surrounding lines/);
  });

  it('counts overlapping matches as ambiguous', () => {
    expect(failure(applySearchReplace('x = "aaa"\n', [{ search: 'aa', replace: 'b' }])).code).toBe('ambiguous');
  });

  it.each([
    ['no edits', []],
    ['an empty search', [{ search: '', replace: 'x' }]],
    ['a non-string field', [{ search: 'DEPTH = 4', replace: 5 as unknown as string }]],
  ])('refuses %s', (_label, edits) => {
    expect(failure(applySearchReplace(ORIGINAL, edits)).code).toBe('bad_edit');
  });

  it('patches a CRLF file with LF search text and keeps CRLF', () => {
    const crlf = ORIGINAL.replace(/\n/g, '\r\n');
    const text = ok(applySearchReplace(crlf, [{ search: 'DEPTH = 4\nLR = 0.04', replace: 'DEPTH = 4\nLR = 0.02' }]));
    expect(text).toBe(crlf.replace('LR = 0.04', 'LR = 0.02'));
  });

  it('accepts CRLF search text on an LF file', () => {
    expect(ok(applySearchReplace(ORIGINAL, [{ search: 'DEPTH = 4\r\nLR = 0.04', replace: 'DEPTH = 4\r\nLR = 0.02' }]))).toBe(
      ORIGINAL.replace('LR = 0.04', 'LR = 0.02'),
    );
  });

  it('refuses NUL and control characters in edits', () => {
    expect(failure(applySearchReplace(ORIGINAL, [{ search: 'DEPTH = 4', replace: 'DEPTH = "\u0000"' }])).code).toBe('invalid_text');
    expect(failure(applySearchReplace(ORIGINAL, [{ search: 'DEPTH = 4', replace: 'DEPTH = "\u001b"' }]))).toMatchObject({ edit: 0 });
  });

  it('refuses edits over PATCH_MAX_BYTES', () => {
    expect(failure(applySearchReplace(ORIGINAL, [{ search: 'DEPTH = 4', replace: 'x'.repeat(PATCH_MAX_BYTES + 1) }])).code).toBe('too_large');
  });

  it('refuses a result over TRAIN_PY_MAX_BYTES', () => {
    const big = '# ' + 'x'.repeat(TRAIN_PY_MAX_BYTES - 10) + '\nDEPTH = 4\n';
    expect(failure(applySearchReplace(big, [{ search: 'DEPTH = 4', replace: 'DEPTH = 4  # ' + 'y'.repeat(100) }])).code).toBe('too_large');
  });
});

describe('assertUtf8 and checkTrainPyText', () => {
  it('decodes valid UTF-8, keeping a BOM and non-ASCII text', () => {
    const result = assertUtf8(Buffer.from('\ufeffx = "héllo ✓ 🚀"\n', 'utf8'));
    expect(result).toEqual({ ok: true, text: '\ufeffx = "héllo ✓ 🚀"\n' });
  });
  it.each([
    ['a stray 0xff', [0x78, 0x3d, 0xff, 0x0a], 2],
    ['a truncated sequence', [0x61, 0xe2, 0x82], 1],
    ['an overlong encoding', [0x61, 0x62, 0xc0, 0xaf], 2],
    ['an encoded surrogate', [0xed, 0xa0, 0x80], 0],
    ['a lone continuation byte', [0x61, 0x80], 1],
  ])('refuses %s, naming the offset', (_label, bytes, offset) => {
    const result = assertUtf8(Uint8Array.from(bytes));
    expect(result).toMatchObject({ ok: false, code: 'invalid_text' });
    if (!result.ok) expect(result.error).toContain(`offset ${offset}`);
  });
  it('names the line of a forbidden character', () => {
    const result = checkTrainPyText('a = 1\nb = "\u0000"\n');
    expect(result).toMatchObject({ ok: false, code: 'invalid_text' });
    if (!result.ok) expect(result.error).toMatch(/NUL byte \(U\+0000\) at line 2/);
  });
  it('refuses a text over TRAIN_PY_MAX_BYTES, counting UTF-8 bytes', () => {
    expect(checkTrainPyText('é'.repeat(TRAIN_PY_MAX_BYTES / 2)).ok).toBe(true);
    expect(checkTrainPyText('é'.repeat(TRAIN_PY_MAX_BYTES / 2 + 1)).ok).toBe(false);
  });
});

describe('unifiedDiff and diffStat', () => {
  it('is empty for equal texts', () => {
    expect(unifiedDiff(ORIGINAL, ORIGINAL)).toBe('');
    expect(diffStat(ORIGINAL, ORIGINAL)).toEqual({ added: 0, removed: 0 });
  });

  it('writes git-style headers and hunks', () => {
    const diff = unifiedDiff(ORIGINAL, ORIGINAL.replace('DEPTH = 4', 'DEPTH = 6'));
    expect(diff.startsWith('--- a/train.py\n+++ b/train.py\n@@ -1,7 +1,7 @@\n')).toBe(true);
    expect(diff).toContain('-DEPTH = 4\n+DEPTH = 6\n');
    expect(diff).not.toContain('====');
  });

  it('uses the given path', () => {
    expect(unifiedDiff('a\n', 'b\n', 'model.py')).toMatch(/^--- a\/model\.py\n\+\+\+ b\/model\.py\n/);
  });

  it('counts added and removed lines', () => {
    const after = ORIGINAL.replace('DEPTH = 4', 'DEPTH = 6').replace('BATCH = 8\n', '') + 'extra = 1\nmore = 2\n';
    expect(diffStat(ORIGINAL, after)).toEqual({ added: 3, removed: 2 });
  });

  it('marks a missing final newline', () => {
    expect(unifiedDiff('a\nb\n', 'a\nc')).toContain('\\ No newline at end of file');
  });

  function lineCount(text: string): number {
    return text === '' ? 0 : text.split('\n').length - (text.endsWith('\n') ? 1 : 0);
  }

  // A small deterministic PRNG so failures reproduce.
  function lcg(seed: number) {
    let state = seed >>> 0;
    return () => {
      state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
      return state / 2 ** 32;
    };
  }

  function mutate(text: string, random: () => number): string {
    const lines = text.split('\n');
    const edits = 1 + Math.floor(random() * 6);
    for (let e = 0; e < edits; e++) {
      const at = Math.floor(random() * (lines.length + 1));
      const kind = random();
      if (kind < 0.35) lines.splice(at, 0, `inserted_${e} = ${Math.floor(random() * 100)}`);
      else if (kind < 0.7 && lines.length > 1) lines.splice(Math.min(at, lines.length - 1), 1);
      else if (lines.length > 0) lines[Math.min(at, lines.length - 1)] = `changed_${e} = ${Math.floor(random() * 100)}`;
    }
    return lines.join('\n');
  }

  it('round-trips through applyUnifiedDiff for many random edits', () => {
    const random = lcg(42);
    const base = Array.from({ length: 60 }, (_, i) => (i % 7 === 0 ? '' : `line_${i} = ${i % 5}`)).join('\n') + '\n';
    for (let round = 0; round < 300; round++) {
      const before = round % 3 === 0 ? base.trimEnd() : mutate(base, random);
      const after = mutate(before, random);
      const diff = unifiedDiff(before, after);
      const result = applyUnifiedDiff(before, diff);
      if (!result.ok) throw new Error(`round ${round}: ${result.error}\n${diff}`);
      expect(result.text).toBe(after);
      const stat = diffStat(before, after);
      expect(stat.added - stat.removed).toBe(lineCount(after) - lineCount(before));
    }
  });
});
