"""The import graph of the cmrdx package, read from the source (nothing is imported): who imports whom, at
module level or inside functions, with imports under ``if TYPE_CHECKING:`` left out (they never run).

    python tests/helpers/imports.py          # prints module-level and function-local import cycles
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cmrdx"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, here: str, is_pkg: bool, known: set[str]) -> list[str]:
    out: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = here.split(".") if is_pkg else here.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
    for n in names:
        while n and n not in known:  # `import cmrdx.x.y` of a name inside a module: the module
            n = n.rpartition(".")[0]
        # an edge to the root package adds nothing: importing any submodule runs cmrdx/__init__ first (its API is lazy)
        if n.startswith("cmrdx.") and n in known and n != here:
            out.append(n)
    return out


def graph(*, local: bool) -> dict[str, set[str]]:
    """module -> cmrdx modules it imports; ``local`` includes imports inside functions."""
    mods = modules()
    known = set(mods)
    g: dict[str, set[str]] = {m: set() for m in mods}

    def visit(body: list[ast.stmt], here: str, is_pkg: bool, in_function: bool) -> None:
        for node in body:
            if isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse, here, is_pkg, in_function)
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if local or not in_function:
                    g[here].update(_targets(node, here, is_pkg, known))
                continue
            fn = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for field in ("body", "orelse", "finalbody", "handlers"):
                sub = getattr(node, field, None)
                if isinstance(sub, list):
                    visit([s for s in sub if isinstance(s, ast.stmt)] + [
                        s for h in sub if isinstance(h, ast.ExceptHandler) for s in h.body], here, is_pkg,
                        in_function or fn)

    for name, path in mods.items():
        visit(ast.parse(path.read_text(encoding="utf-8")).body, name, path.name == "__init__.py", False)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                strong(w)
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

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            strong(v)
    return sorted(out)


if __name__ == "__main__":
    for local in (False, True):
        found = cycles(graph(local=local))
        print(f"{'function-local included' if local else 'module level'}: {len(found)} cycle(s)")
        for c in found:
            print("  " + " <-> ".join(c))
