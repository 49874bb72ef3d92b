"""`cmrdx models list` and `info` work without loading a model: no onnxruntime, no torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_py(code: str, tmp_path: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), CMRDX_HOME=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_models_list_info_verify_load_no_session(tmp_path):
    """`cmrdx models list` (and a missing-model `info`) run without importing onnxruntime."""
    out = run_py(
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cmrdx.cli import app\n"
        "r = CliRunner().invoke(app, ['models', 'list'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['models', 'info', 'absent'])\n"
        "assert r.exit_code != 0\n"
        "print('onnxruntime' in sys.modules, 'torch' in sys.modules)",
        tmp_path,
    )
    assert out.strip() == "False False"


def test_reference_and_identity_load_no_session(tmp_path):
    """The model's identity, its reference and a study's assessment need numpy only: `cmrdx models info` and
    `verify` print both, and `load_reference` + `assess` run without onnxruntime or torch."""
    out = run_py(
        "import sys, json\n"
        "import numpy as np\n"
        "from typer.testing import CliRunner\n"
        "from cmrdx.cli import app\n"
        "from cmrdx.model.registry import get_manifest\n"
        "from cmrdx.model.reference import load_reference, Typicality\n"
        "m = get_manifest('cmrdx-phantom-small')\n"
        "r = CliRunner().invoke(app, ['models', 'info', 'cmrdx-phantom-small'])\n"
        "assert r.exit_code == 0, r.output\n"
        "d = json.loads(r.output)\n"
        "assert d['sha256'] == m.sha256 and d['reference']['file'] == 'reference.npz'\n"
        "r = CliRunner().invoke(app, ['models', 'verify', 'cmrdx-phantom-small'])\n"
        "assert r.exit_code == 0 and m.sha256 in r.output and 'reference: ' in r.output, r.output\n"
        "ref = load_reference(m)\n"
        "t = ref.assess(ref.embeddings[0])\n"
        "assert isinstance(t, Typicality) and t.status == 'typical'\n"
        "print('onnxruntime' in sys.modules, 'torch' in sys.modules)",
        tmp_path,
    )
    assert out.strip() == "False False"


def test_a_model_name_like_an_unknown_home_folder_is_a_name_not_a_crash():
    from cmrdx.errors import ModelError
    from cmrdx.model.registry import resolve

    with pytest.raises(ModelError, match="no model named '~nobody-here/x'"):
        resolve("~nobody-here/x")
