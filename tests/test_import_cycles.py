"""No import cycle through cmrdx.pipeline: every import statement is counted, at module level or inside a
function (a function-local import that closes a cycle is a cycle waiting for the day it runs first).

The graph is built from the source with ``ast``: an edge goes from a module to each cmrdx module it names
(``from pkg import name`` goes to ``pkg.name`` when that is a module, else to ``pkg``), TYPE_CHECKING imports
included. The parent packages Python imports implicitly before a submodule are not edges: a package
``__init__`` that re-exports from its submodules is not a cycle as long as no submodule imports the package
back. Two checks: among cmrdx.pipeline's own modules, no cycle at all; over the whole of cmrdx, no cycle
through a pipeline module, the root package aside (``cmrdx/__init__.py`` is the lazy public API: it imports
the pipeline inside ``__getattr__``, and modules read its ``__version__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_names(root: Path = ROOT, package: str = "cmrdx") -> dict[str, Path]:
    out = {}
    for p in sorted((root / package).rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the cmrdx modules it imports anywhere in its source."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        here = name if is_pkg else name.rsplit(".", 1)[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # `import a.b.c` of a name inside a module: the module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def restrict(graph: dict[str, set[str]], keep) -> dict[str, set[str]]:
    """The subgraph of the modules for which ``keep(name)`` is true."""
    return {m: {t for t in e if keep(t)} for m, e in graph.items() if keep(m)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_function_local_cycle(tmp_path):
    pkg = tmp_path / "cmrdx" / "pipeline"
    pkg.mkdir(parents=True)
    for f in ("cmrdx/__init__.py", "cmrdx/pipeline/__init__.py"):
        (tmp_path / f).write_text("")
    (pkg / "a.py").write_text("from cmrdx.pipeline.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from cmrdx.pipeline import a\n")
    (pkg / "c.py").write_text("from . import a\n")
    g = import_graph(module_names(tmp_path))
    assert g["cmrdx.pipeline.c"] == {"cmrdx.pipeline.a"}
    assert cycles(g) == [["cmrdx.pipeline.a", "cmrdx.pipeline.b"]]


def _pipeline(m: str) -> bool:
    return m == "cmrdx.pipeline" or m.startswith("cmrdx.pipeline.")


def test_no_import_cycle_within_pipeline():
    g = import_graph(module_names())
    assert "cmrdx.pipeline.batch.run" in g["cmrdx.pipeline.batch"]  # the graph sees the package's modules
    assert "cmrdx.pipeline.batch.ray_engine" in g["cmrdx.pipeline.batch.run"]  # and function-local imports
    assert "cmrdx.pipeline.batch" in g["cmrdx.pipeline.search"]
    assert cycles(restrict(g, _pipeline)) == []


def test_no_import_cycle_through_pipeline_in_the_whole_package():
    g = restrict(import_graph(module_names()), lambda m: m != "cmrdx")
    bad = [c for c in cycles(g) if any(_pipeline(m) for m in c)]
    assert not bad, bad
