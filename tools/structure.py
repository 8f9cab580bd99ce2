"""The structure measures of issue #17, on the source tree: file sizes, import cycles
(function-level imports included), private names imported across modules, private torch
symbols outside ``decaylab._compat``, and the length of ``Regularized``.

    python tools/structure.py            # print every measure
    python tools/structure.py --check    # exit 1 if any measure misses its limit
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES, MAX_WRAPPER = 400, 300
TORCH_PRIVATE_HOME = "decaylab._compat"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(mod: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods: dict[str, Path]):
    """(importer, imported module, names) for every import anywhere in a module's body."""
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    yield mod, a.name, [], node.lineno
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, node, is_pkg)
                names = [a.name for a in node.names]
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
                yield mod, target, [n for n in names if f"{target}.{n}" not in mods], node.lineno
                for s in subs:
                    yield mod, s, [], node.lineno


def cycles(mods: dict[str, Path]) -> list[list[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for a, b, _, _ in imports(mods):
        if b in mods and b != a and not (a.startswith(b + ".") or b == a.rsplit(".", 1)[0]):
            graph[a].add(b)
    # strongly connected components (Tarjan), each of more than one module is a cycle
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(mods):
    """``from decaylab.x import _name`` in another module, and ``x._name`` on a decaylab
    module bound by an import."""
    out = [f"{a}:{line} imports {n} from {b}" for a, b, names, line in imports(mods)
           if b.startswith("decaylab") for n in names if _private(n)]
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        bound = {}  # local name -> decaylab module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(mod, node, path.name == "__init__.py")
                for a in node.names:
                    if f"{target}.{a.name}" in mods:
                        bound[a.asname or a.name] = f"{target}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods and a.asname:
                        bound[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and bound[node.value.id] != mod):
                out.append(f"{mod}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
    return out


def torch_private(mods):
    hits = {}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            name = None
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(base, ast.Name) and base.id == "torch":
                    name = node.attr
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                mname = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                if mname and mname.startswith("torch") and any(p.startswith("_") for p in mname.split(".")):
                    name = mname
            if name:
                hits.setdefault(mod, set()).add(name)
    return hits


def wrapper_lines(mods) -> int:
    for path in mods.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name == "Regularized":
                return node.end_lineno - node.lineno + 1
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    mods = modules()
    big = {m: len(p.read_text().splitlines()) for m, p in mods.items()}
    big = {m: n for m, n in sorted(big.items(), key=lambda kv: -kv[1]) if n > MAX_LINES}
    cyc, priv, tp, wl = cycles(mods), private_imports(mods), torch_private(mods), wrapper_lines(mods)
    outside = {m: sorted(s) for m, s in tp.items() if m != TORCH_PRIVATE_HOME}
    print(f"files over {MAX_LINES} lines: {len(big)}" + "".join(f"\n  {m}: {n}" for m, n in big.items()))
    print(f"import cycles: {len(cyc)}" + "".join(f"\n  {' <-> '.join(c)}" for c in cyc))
    print(f"private names imported across modules: {len(priv)}" + "".join(f"\n  {x}" for x in priv))
    print(f"modules using private torch symbols besides {TORCH_PRIVATE_HOME}: {len(outside)}"
          + "".join(f"\n  {m}: {', '.join(s)}" for m, s in outside.items()))
    print(f"Regularized: {wl} lines (limit {MAX_WRAPPER})")
    ok = not (big or cyc or priv or outside) and wl <= MAX_WRAPPER
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
