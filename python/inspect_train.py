#!/usr/bin/env python3
"""Facts about a train.py for the server's quick pre-run checks (src/core/rules.ts).

Usage: inspect_train.py [--harness PATH_TO_PREPARE_PY] < train.py

Reads Python source (UTF-8) on stdin and prints ONE JSON object on stdout:
  {"ok": false, "syntax_error": {"line", "col", "message"}}   when it does not compile, or
  {"ok": true, "facts": {...}}                                  otherwise.

These checks are feedback for honest mistakes before a run spends compute, not a security
boundary: the run itself executes in a sandbox that cannot see validation data, the state or
the repository, and the metric comes from a separate evaluator. So the facts are few and
literal: the imports (and whether each top-level module is installed for this Python), the
calls and attribute chains on imported names (through `import x as y` only), the string
literals, and the public names of the harness module. The script never imports or runs the
code it inspects (installed modules are located with importlib.util.find_spec on top-level
names, which runs no module code). Standard library only, Python 3.8+.
"""
import ast
import importlib.util
import json
import sys

MAX_STRING_CHARS = 4096
HARNESS_MODULE = "prepare"


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


def constant_text(value):
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return None


def fold_string(node):
    """The text of a literal, an f-string (fields shown as '{}') or a '+' of them; None otherwise."""
    if isinstance(node, ast.Constant):
        return constant_text(node.value)
    if isinstance(node, ast.JoinedStr):
        out = []
        for value in node.values:
            text = constant_text(value.value) if isinstance(value, ast.Constant) else None
            out.append(text if text is not None else "{}")
        return "".join(out)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = fold_string(node.left), fold_string(node.right)
        if left is not None and right is not None:
            return left + right
    return None


def docstrings(tree):
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.add(first.value)
    return found


def module_available(name):
    """Whether a top-level module can be imported by this Python (found on sys.path or built in)."""
    if name in sys.builtin_module_names:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def inspect(tree):
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    skip = docstrings(tree)
    bindings = {}  # local name -> module path, from import statements only
    imports, calls, attributes, strings = [], [], [], []
    top_levels = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imports.append({"module": alias.name, "names": [], "line": node.lineno, "level": 0})
                top_levels.add(alias.name.split(".")[0])
                if alias.asname:
                    bindings[alias.asname] = alias.name
                else:
                    bindings[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            imports.append({"module": module, "names": [a.name for a in node.names], "line": node.lineno, "level": node.level or 0})
            if not node.level and module:
                top_levels.add(module.split(".")[0])
                for alias in node.names:
                    if alias.name != "*":
                        bindings[alias.asname or alias.name] = module + "." + alias.name

    def resolve(node):
        name = dotted_name(node)
        if name is None:
            return None, False
        root, _, rest = name.partition(".")
        if root in bindings:
            return (bindings[root] + ("." + rest if rest else "")), True
        return name, False

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name, imported = resolve(node.func)
            calls.append({"name": name or "<expr>", "imported": imported, "line": node.lineno})
        elif isinstance(node, ast.Attribute):
            parent = parents.get(node)
            if isinstance(parent, ast.Attribute) and parent.value is node:
                continue  # only the whole chain
            name, imported = resolve(node)
            if imported:
                attributes.append({"name": name, "line": node.lineno})
        if isinstance(node, (ast.Constant, ast.JoinedStr, ast.BinOp)) and node not in skip:
            parent = parents.get(node)
            if isinstance(parent, (ast.JoinedStr, ast.FormattedValue)):
                continue  # reported as part of the f-string
            if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Add) and fold_string(parent) is not None:
                continue  # reported as part of the whole '+'
            text = fold_string(node)
            if text is not None and (isinstance(node, ast.BinOp) or text):
                strings.append({"value": text[:MAX_STRING_CHARS], "line": node.lineno})
    for entries in (imports, calls, attributes, strings):
        entries.sort(key=lambda entry: entry["line"])
    unavailable = sorted(name for name in top_levels if name not in (HARNESS_MODULE, "__future__") and not module_available(name))
    return {"imports": imports, "calls": calls, "attributes": attributes, "strings": strings, "unavailable_modules": unavailable}


def public_names(path):
    """The names `from prepare import ...` can use: __all__ if it is a literal, else public top-level definitions."""
    try:
        with open(path, "rb") as handle:
            tree = ast.parse(handle.read().decode("utf-8"), path)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None
    names = []
    for node in tree.body:
        targets = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            targets = [node.name]
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                elements = target.elts if isinstance(target, ast.Tuple) else [target]
                targets += [t.id for t in elements if isinstance(t, ast.Name)]
            if targets == ["__all__"] and isinstance(node.value, (ast.List, ast.Tuple)):
                listed = [e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                if len(listed) == len(node.value.elts):
                    return sorted(listed)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        names += [name for name in targets if not name.startswith("_")]
    return sorted(set(names))


def main(argv):
    harness = None
    if len(argv) == 2 and argv[0] == "--harness":
        harness = argv[1]
    elif argv:
        sys.stderr.write("usage: inspect_train.py [--harness PREPARE_PY] < train.py\n")
        return 2
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
        facts = inspect(tree)
    except RecursionError:
        syntax_error(1, 0, "the code is nested too deeply to inspect")
        return 0
    facts["harness_names"] = public_names(harness) if harness else None
    emit({"ok": True, "facts": facts})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
