"""Paths and defaults. Imports nothing heavy."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# Files shipped with the package (prompt banks, bundled models, the example study) live under cmrdx/data,
# mirrored from the repository's top-level prompts/, models/ and examples/ at build time is avoided on
# purpose: the top-level folders are links into cmrdx/data so a non-editable install carries them.
DATA_DIR = PACKAGE_DIR / "data"


def home() -> Path:
    """cmrdx's cache and user-model folder: $CMRDX_HOME, else ~/.cache/cmrdx."""
    env = os.environ.get("CMRDX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cmrdx"


def cpu_count() -> int:
    """Cores this process may use (respects affinity / cgroup-limited sched masks)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)
