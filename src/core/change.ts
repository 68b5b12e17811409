import { execa } from 'execa';
import type { ChangeKind } from './store.js';

/**
 * What a candidate changes, as Python's parser sees it: 'none' when both texts parse to the
 * same AST (whitespace, comments), 'seed_only' when they differ only in seed values (assignments
 * to a name containing SEED, arguments of manual_seed / manual_seed_all / seed calls), else
 * 'code'. A change the checker cannot judge (a parse error, no Python) counts as 'code'.
 */
const SCRIPT = String.raw`
import ast, json, sys
a, b = json.load(sys.stdin)
class Seedless(ast.NodeTransformer):
    def _seedname(self, t):
        return isinstance(t, ast.Name) and 'SEED' in t.id.upper()
    def visit_Assign(self, node):
        self.generic_visit(node)
        if any(self._seedname(t) for t in node.targets):
            node.value = ast.Constant(0)
        return node
    def visit_AnnAssign(self, node):
        self.generic_visit(node)
        if self._seedname(node.target) and node.value is not None:
            node.value = ast.Constant(0)
        return node
    def visit_Call(self, node):
        self.generic_visit(node)
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, 'id', '')
        if name in ('manual_seed', 'manual_seed_all', 'seed'):
            node.args = [ast.Constant(0) for _ in node.args]
        return node
try:
    ta, tb = ast.parse(a), ast.parse(b)
except SyntaxError:
    print('code'); sys.exit(0)
if ast.dump(ta) == ast.dump(tb):
    print('none')
elif ast.dump(Seedless().visit(ta)) == ast.dump(Seedless().visit(tb)):
    print('seed_only')
else:
    print('code')
`;

export async function classifyChange(before: string, after: string, python = '/usr/bin/python3'): Promise<ChangeKind> {
  if (before === after) return 'none';
  try {
    const result = await execa(python, ['-c', SCRIPT], { input: JSON.stringify([before, after]), timeout: 20_000, reject: false });
    const out = result.stdout.trim();
    return out === 'none' || out === 'seed_only' ? out : 'code';
  } catch {
    return 'code';
  }
}
