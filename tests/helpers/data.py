"""Where the real DICOM test files live (packages of the dev extra; docs/test-data.md says which file is
what), external checker tools, and a bank without thresholds for tests with their own model."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _pkg_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent if spec.origin else None


def real_data_dirs() -> dict[str, Path]:
    """Folders of real DICOM test files shipped by packages in the dev extra (none is copied into the repo)."""
    out = {}
    for key, pkg, sub in [
        ("pydicom", "pydicom", "data/test_files"),
        ("pydicom-data", "data_store", "data"),
        ("nibabel", "nibabel", "nicom/tests/data"),
        ("pynetdicom", "pynetdicom", "tests/dicom_files"),
        ("heudiconv", "heudiconv", "tests/data"),
    ]:
        d = _pkg_dir(pkg)
        if d is not None and (d / sub).is_dir():
            out[key] = d / sub
    return out


def require_tool(name: str) -> str:
    """Path of an external checker. Missing: skip with a reason locally, fail under CI (CI installs it)."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} not installed (Debian package; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(msg + " -- CI must run this check")
    pytest.skip(msg)


def findings_bank_without_thresholds() -> str:
    """The shipped cmr-findings bank's text with its per-model thresholds removed (comments kept), for tests that
    write their own thresholds for a test model."""
    import io

    from ruamel.yaml import YAML

    from cmrdx.zeroshot.bank import load_bank

    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    doc = yaml.load(Path(load_bank("cmr-findings").path).read_text())
    for f in doc["findings"]:
        f.pop("thresholds", None)
    buf = io.StringIO()
    yaml.dump(doc, buf)
    return buf.getvalue()


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for ``path`` (its warnings are allowed); fails if it did not recognise the SR IOD."""
    tool = require_tool("dciodvfy")
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    assert "Comprehensive3DSR" in text, text[-2000:]
    return [ln for ln in text.splitlines() if ln.startswith("Error")]
