"""`cmrdx models list` and `info` work without loading a model: no onnxruntime, no torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
