"""The pipeline's import structure, on the package-wide graph of ``helpers.imports`` (read from the source with
ast, imports inside functions included): the batch package imports downwards only, its engines know nothing of
each other, and nothing in it imports the package back (test_import_hygiene.py checks the whole package for
cycles; these are the pipeline's own rules on top)."""

from __future__ import annotations

from helpers.imports import cycles, graph

BATCH = "cmrdx.pipeline.batch"


def _pipeline(g: dict[str, set[str]]) -> dict[str, set[str]]:
    keep = {m for m in g if m == "cmrdx.pipeline" or m.startswith("cmrdx.pipeline.")}
    return {m: g[m] & keep for m in keep}


def test_pipeline_has_no_import_cycle_even_through_function_local_imports():
    g = _pipeline(graph(local=True))
    assert f"{BATCH}.ray_engine" in g[f"{BATCH}.run"]  # the engine is picked inside a function: seen
    assert BATCH in g["cmrdx.pipeline.search"]
    assert cycles(g) == []


def test_batch_modules_import_downwards_only():
    g = _pipeline(graph(local=True))
    subs = {m for m in g if m.startswith(BATCH + ".")}
    assert {f"{BATCH}.{n}" for n in ("discover", "prepare", "engine", "journal", "options", "results", "local",
                                     "ray_engine", "run")} <= subs
    for m in subs:
        assert BATCH not in g[m], f"{m} imports the package that imports it"
    # the engines share only the interface and the worker side; neither builds records nor knows the other
    for eng in ("local", "ray_engine"):
        assert g[f"{BATCH}.{eng}"] == {f"{BATCH}.engine", f"{BATCH}.prepare"}, g[f"{BATCH}.{eng}"]
    assert not any(m.startswith(BATCH + ".") for m in g[f"{BATCH}.discover"] | g[f"{BATCH}.engine"])
