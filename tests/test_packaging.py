"""A non-editable install carries what cmrdx needs at run time (prompt banks, bundled models)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def _training_base(parts: tuple[str, ...]) -> bool:
    return parts[:2] == ("models", "bases") and len(parts) > 3


def test_non_editable_install_ships_prompts_and_models(tmp_path):
    target = tmp_path / "site"
    # Build from a clean copy: setuptools' in-tree build/ folder would otherwise carry stale files.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", ".pytest_cache", ".hypothesis", "__pycache__", "examples", "bench"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    code = (
        "import cmrdx, cmrdx.config as c, sys;"
        "assert 'site' in cmrdx.__file__, cmrdx.__file__;"
        "import json; print(json.dumps(sorted(p.relative_to(c.DATA_DIR).as_posix() for p in c.DATA_DIR.rglob('*') if p.is_file())))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    shipped = json.loads(r.stdout)
    expected = sorted(
        p.relative_to(REPO).as_posix()
        for top in ("prompts", "models")
        for p in (REPO / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
        and not _training_base(p.relative_to(REPO).parts)
    )
    assert sorted(shipped) == expected
    # training bases (models/bases/NAME/...) are read from a checkout by recipes, not shipped
    assert not [s for s in shipped if _training_base(tuple(s.split("/")))]
    assert any(_training_base(p.relative_to(REPO).parts) for p in (REPO / "models" / "bases").rglob("*.onnx"))
    # the console script runs from the installed copy
    r = subprocess.run([sys.executable, "-m", "cmrdx", "--version"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0 and "cmrdx" in r.stdout


def test_one_version_source_and_a_changelog_entry_for_it():
    import re
    import tomllib

    import cmrdx

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert cmrdx.__version__ == declared  # read through importlib.metadata, never written twice
    headings = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (REPO / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)
    assert headings and headings[0] == declared, f"CHANGELOG.md's newest entry {headings[:1]} is not {declared}"
