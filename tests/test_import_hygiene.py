"""Import hygiene, checked once for every light entry point: `import cmrdx`, the CLI, the DICOM layer, study
assembly, the recipe, the registry, prompt banks and the phantom generator load neither torch nor onnxruntime
(nor the heavy output libraries, which load only when an output is written). And the package has no import
cycle, at module level or through imports inside functions."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.imports import cycles, graph, modules

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnxruntime", "onnx", "transformers")
OUTPUT_LIBS = ("highdicom", "pynetdicom", "fhir", "PIL")


@pytest.mark.parametrize(
    ("modules_", "forbidden"),
    [
        (("cmrdx",), HEAVY + OUTPUT_LIBS),
        (("cmrdx.cli",), HEAVY + OUTPUT_LIBS),
        (("cmrdx.dicom", "cmrdx.dicom.scan", "cmrdx.dicom.pixels"), HEAVY),
        (("cmrdx.study", "cmrdx.recipe", "cmrdx.vocab", "cmrdx.fileio"), HEAVY),
        (("cmrdx.model.registry", "cmrdx.model.manifest", "cmrdx.model.loader", "cmrdx.model.reference",
          "cmrdx.cli.models"), HEAVY),
        (("cmrdx.zeroshot.bank", "cmrdx.zeroshot.scoring", "cmrdx.zeroshot.authoring"), HEAVY),
        (("cmrdx.synth", "cmrdx.cli.synth"), HEAVY),
        (("cmrdx.outputs",), HEAVY + OUTPUT_LIBS),
    ],
    ids=["cmrdx", "cli", "dicom", "study-recipe", "model", "zeroshot", "synth", "outputs"],
)
def test_light_modules_import_nothing_heavy(modules_, forbidden, tmp_path):
    code = (f"import sys\nimport {', '.join(modules_)}\n"
            f"print(sorted(m for m in {forbidden!r} if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(ROOT), CMRDX_HOME=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"{modules_} imported {r.stdout.strip()}"


def test_the_cli_registers_every_command_without_heavy_imports(tmp_path):
    code = ("import sys, cmrdx.cli\n"
            "names = {c.name for c in cmrdx.cli.app.registered_commands} | {g.name for g in cmrdx.cli.app.registered_groups}\n"
            "print(sorted(names)); print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    names, heavy = r.stdout.strip().splitlines()
    assert {"inspect", "classify", "batch", "prompts", "models", "synth", "train", "eval"} <= set(ast.literal_eval(names))
    assert heavy == "[]"


@pytest.mark.parametrize("local", [False, True], ids=["module-level", "with-function-local"])
def test_no_import_cycle(local):
    assert cycles(graph(local=local)) == []


def test_the_graph_reader_sees_real_edges_and_would_see_a_cycle():
    g = graph(local=True)
    assert "cmrdx.study.assemble" in g["cmrdx.pipeline.classify"]  # a module-level import
    assert "cmrdx.recipe" in g["cmrdx.pipeline.classify"]  # an import inside a function
    assert len(modules()) > 40
    g["cmrdx.dicom.series"].add("cmrdx.study.assemble")  # planted: assemble imports the DICOM layer
    assert any({"cmrdx.dicom.series", "cmrdx.study.assemble"} <= set(c) for c in cycles(g))
