#!/usr/bin/env python3
"""Facts about a train.py for the server's static rules (src/core/rules.ts).

Reads Python source (UTF-8) on stdin and prints ONE JSON object on stdout:
  {"ok": false, "syntax_error": {"line", "col", "message"}}   when it does not compile, or
  {"ok": true, "facts": {...}}                                  otherwise.

The script only reports what the code says; every judgement (allowed imports, forbidden calls,
paths) lives in rules.ts so the policy is configurable and testable without Python. It never
imports or runs the code it inspects. Standard library only, Python 3.8+.

Names are resolved through import aliases and simple assignments, flow-insensitively:
`import torch.nn.functional as F` makes `F.relu` read "torch.nn.functional.relu", and
`from os import system as s` makes `s(...)` a call of "os.system". Entries whose leading name
was bound by an import carry "imported": true.
"""
import ast
import json
import sys

MAX_STRING_CHARS = 4096
ALIAS_PASSES = 5
ATTRIBUTE_BUILTINS = ("getattr", "hasattr", "setattr", "delattr")


def emit(obj):
    sys.stdout.write(json.dumps(obj, ensure_ascii=True))
    sys.stdout.write("\n")
    sys.stdout.flush()


def syntax_error(line, col, message):
    emit({"ok": False, "syntax_error": {"line": int(line or 1), "col": int(col or 0), "message": str(message)}})


def dotted_name(node):
    """'a.b.c' for a Name or a chain of Attributes on a Name; None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def attribute_tail(node):
    """'<expr>.a.b' for an attribute chain on something that is not a plain name (e.g. a call)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join(["<expr>"] + list(reversed(parts)))


def render_fstring(node):
    """Static text of an f-string with every replacement field shown as '{}'."""
    out = []
    for value in node.values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            out.append(value.value)
        else:
            out.append("{}")
    return "".join(out)


def static_prefix(node):
    """Text of an f-string up to its first replacement field."""
    out = []
    for value in node.values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            out.append(value.value)
        else:
            break
    return "".join(out)


def constant_text(value):
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        # bytes paths work with open() too; latin-1 maps every byte to one character
        return value.decode("latin-1")
    return None


def fold_string(node):
    """('value', is_fstring) for a literal, an f-string or a '+' of them; None otherwise."""
    if isinstance(node, ast.Constant):
        text = constant_text(node.value)
        return None if text is None else (text, False)
    if isinstance(node, ast.JoinedStr):
        return (render_fstring(node), True)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = fold_string(node.left), fold_string(node.right)
        if left is not None and right is not None:
            return (left[0] + right[0], left[1] or right[1])
    return None


class Inspector(object):
    def __init__(self, tree):
        self.tree = tree
        self.parents = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
        self.docstrings = self.find_docstrings()
        self.bindings = {}  # local name -> canonical dotted name
        self.collect_bindings()

    # -- name resolution -----------------------------------------------------------------------

    def find_docstrings(self):
        found = set()
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                    found.add(first.value)
        return found

    def collect_bindings(self):
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.bindings[alias.asname] = alias.name
                    else:
                        root = alias.name.split(".")[0]
                        self.bindings[root] = root
            elif isinstance(node, ast.ImportFrom):
                # relative imports keep their dots ("..pkg.name") so they never pass for a real module
                base = "." * (node.level or 0) + (node.module or "")
                for alias in node.names:
                    if alias.name == "*":
                        continue
                    target = base + alias.name if base.endswith(".") else base + "." + alias.name
                    self.bindings[alias.asname or alias.name] = target
        imported = set(self.bindings)
        # `p = prepare` or `save = torch.save` makes the new name an alias too (imports win).
        for _ in range(ALIAS_PASSES):
            changed = False
            for node in ast.walk(self.tree):
                targets, value = self.simple_assignment(node)
                if value is None:
                    continue
                name = dotted_name(value)
                if name is None:
                    continue
                resolved, is_imported = self.resolve(name)
                if not is_imported:
                    continue
                for target in targets:
                    if isinstance(target, ast.Name) and target.id not in imported and self.bindings.get(target.id) != resolved:
                        self.bindings[target.id] = resolved
                        changed = True
            if not changed:
                break

    @staticmethod
    def simple_assignment(node):
        if isinstance(node, ast.Assign):
            return node.targets, node.value
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            return [node.target], node.value
        if isinstance(node, getattr(ast, "NamedExpr", ())):
            return [node.target], node.value
        return [], None

    def resolve(self, dotted):
        root, _, rest = dotted.partition(".")
        if root in self.bindings:
            base = self.bindings[root]
            return (base + "." + rest if rest else base), True
        return dotted, False

    def resolve_node(self, node):
        name = dotted_name(node)
        if name is None:
            return None, False
        return self.resolve(name)

    # -- facts ---------------------------------------------------------------------------------

    def describe_arg(self, node):
        if isinstance(node, ast.Starred):
            return {"kind": "starred"}
        folded = fold_string(node)
        if folded is not None:
            text, is_fstring = folded
            if is_fstring:
                prefix = static_prefix(node) if isinstance(node, ast.JoinedStr) else None
                return {"kind": "fstring", "value": text[:MAX_STRING_CHARS], "prefix": prefix}
            return {"kind": "str", "value": text[:MAX_STRING_CHARS]}
        name, imported = self.resolve_node(node)
        if name is not None:
            return {"kind": "name", "name": name, "imported": imported}
        return {"kind": "other"}

    def call_fact(self, node):
        func = node.func
        name, imported = self.resolve_node(func)
        if name is None:
            name = attribute_tail(func) if isinstance(func, ast.Attribute) else "<expr>"
        args = [self.describe_arg(a) for a in node.args]
        keywords = [{"name": k.arg, "value": self.describe_arg(k.value)} for k in node.keywords]
        first = args[0] if args else None
        mode = None
        mode_nodes = [k.value for k in node.keywords if k.arg == "mode"] or node.args[1:2]
        if mode_nodes and isinstance(mode_nodes[0], ast.Constant) and isinstance(mode_nodes[0].value, str):
            mode = mode_nodes[0].value
        return {
            "name": name,
            "imported": imported,
            "line": node.lineno,
            "args_count": len(node.args),
            "args": args,
            "keywords": keywords,
            "first_arg_str": first["value"] if first and first["kind"] == "str" else None,
            "mode_arg": mode,
        }

    def is_outermost_chain(self, node):
        parent = self.parents.get(node)
        return not (isinstance(parent, ast.Attribute) and parent.value is node)

    def run(self):
        imports, calls, attributes, names, strings, assignments, subscript_assignments, definitions = [], [], [], [], [], [], [], []
        seen_names = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    imports.append({"module": alias.name, "names": [], "asname": alias.asname, "line": node.lineno, "level": 0})
            elif isinstance(node, ast.ImportFrom):
                imports.append({
                    "module": node.module or "",
                    "names": [a.name for a in node.names],
                    "asname": None,
                    "line": node.lineno,
                    "level": node.level or 0,
                })
            elif isinstance(node, ast.Call):
                fact = self.call_fact(node)
                calls.append(fact)
                self.attribute_builtin_facts(node, fact, attributes, assignments)
            elif isinstance(node, ast.Attribute):
                if not self.is_outermost_chain(node):
                    continue
                name, imported = self.resolve_node(node)
                if name is None:
                    # a chain on a computed object, e.g. ().__class__.__subclasses__
                    name, imported = attribute_tail(node), False
                entry = {"name": name, "line": node.lineno, "imported": imported}
                if isinstance(node.ctx, ast.Load):
                    attributes.append(entry)
                else:
                    assignments.append({"target": name, "line": node.lineno, "imported": imported, "via": "del" if isinstance(node.ctx, ast.Del) else "assign"})
            elif isinstance(node, ast.Subscript) and not isinstance(node.ctx, ast.Load):
                name, imported = self.resolve_node(node.value)
                if name is not None:
                    subscript_assignments.append({"target": name, "line": node.lineno, "imported": imported})
            elif isinstance(node, ast.Name):
                parent = self.parents.get(node)
                if isinstance(parent, ast.Attribute) and parent.value is node:
                    continue  # part of an attribute chain, reported there
                resolved, imported = self.resolve(node.id)
                ctx = "load" if isinstance(node.ctx, ast.Load) else "store" if isinstance(node.ctx, ast.Store) else "del"
                called = isinstance(parent, ast.Call) and parent.func is node
                key = (node.id, node.lineno, ctx, called)
                if key in seen_names:
                    continue
                seen_names.add(key)
                names.append({"name": resolved, "raw": node.id, "line": node.lineno, "ctx": ctx, "called": called, "imported": imported})
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                definitions.append({"name": node.name, "line": node.lineno, "kind": kind})
            if isinstance(node, (ast.Constant, ast.JoinedStr, ast.BinOp)):
                self.string_fact(node, strings)
        # ast.walk is breadth-first; report in source order so output is stable and readable
        for entries in (imports, calls, attributes, names, strings, assignments, subscript_assignments, definitions):
            entries.sort(key=lambda entry: entry["line"])
        return {
            "imports": imports,
            "calls": calls,
            "attributes": attributes,
            "names": names,
            "strings": strings,
            "assignments_to_attributes": assignments,
            "subscript_assignments": subscript_assignments,
            "definitions": definitions,
        }

    def attribute_builtin_facts(self, node, fact, attributes, assignments):
        """getattr(m, "x") reads m.x and setattr(m, "x", v) writes it: report them as such."""
        if fact["name"] not in ATTRIBUTE_BUILTINS or fact["imported"] or len(node.args) < 2:
            return
        owner, imported = self.resolve_node(node.args[0])
        attr = node.args[1]
        if owner is None or not (isinstance(attr, ast.Constant) and isinstance(attr.value, str)):
            return  # a computed name is judged from the call fact itself
        entry_name = owner + "." + attr.value
        if fact["name"] in ("getattr", "hasattr"):
            attributes.append({"name": entry_name, "line": node.lineno, "imported": imported})
        else:
            assignments.append({"target": entry_name, "line": node.lineno, "imported": imported, "via": fact["name"]})

    def string_fact(self, node, strings):
        parent = self.parents.get(node)
        # Parts of an f-string or of a '+' chain are reported once, as the whole.
        if isinstance(parent, ast.JoinedStr) or isinstance(parent, ast.FormattedValue) and parent.format_spec is node:
            return
        if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Add) and fold_string(parent) is not None:
            return
        if node in self.docstrings:
            return
        if isinstance(node, ast.BinOp):
            folded = fold_string(node)
            if folded is None:
                return
            text = folded[0]
        elif isinstance(node, ast.JoinedStr):
            text = render_fstring(node)
        else:
            text = constant_text(node.value)
            if text is None:
                return
        strings.append({
            "value": text[:MAX_STRING_CHARS],
            "line": node.lineno,
            "truncated": len(text) > MAX_STRING_CHARS,
            "length": len(text),
        })


def main():
    data = sys.stdin.buffer.read()
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as error:
        syntax_error(data[: error.start].count(b"\n") + 1, 0, "train.py is not valid UTF-8")
        return 0
    try:
        compile(source, "train.py", "exec", dont_inherit=True)
        tree = ast.parse(source, "train.py")
    except SyntaxError as error:
        syntax_error(error.lineno, error.offset, error.msg)
        return 0
    except ValueError as error:  # e.g. NUL bytes on Python < 3.12
        line = source[: source.find("\0")].count("\n") + 1 if "\0" in source else 1
        syntax_error(line, 0, str(error))
        return 0
    except (RecursionError, MemoryError):
        syntax_error(1, 0, "the code is nested too deeply to compile")
        return 0
    try:
        facts = Inspector(tree).run()
    except RecursionError:
        syntax_error(1, 0, "the code is nested too deeply to inspect")
        return 0
    emit({"ok": True, "facts": facts})
    return 0


if __name__ == "__main__":
    sys.exit(main())
