"""Instances retrieved from a PACS, kept by SOPInstanceUID under ``$CMRDX_HOME/pacs-cache`` so that a second run
on a study fetches nothing again.

A SOPInstanceUID names one object for ever (DICOM forbids reusing it for other content), so the UID is the cache
key. Files are written atomically by the clients (a run killed mid-retrieve leaves no partial file under a UID's
name). The cache is held under a size limit (``CMRDX_PACS_CACHE_GB``, default 20 GB: a few dozen CMR studies):
after each study the least recently used files are removed until it fits, never the files the current study uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cmrdx import config

CACHE_ENV = "CMRDX_PACS_CACHE_GB"
DEFAULT_MAX_BYTES = 20 << 30
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _default_max_bytes() -> int:
    raw = os.environ.get(CACHE_ENV)
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        gb = float(raw)
    except ValueError:
        return DEFAULT_MAX_BYTES
    return max(0, int(gb * (1 << 30))) if gb == gb else DEFAULT_MAX_BYTES


@dataclass
class InstanceCache:
    """Files by SOPInstanceUID: ``path(uid)`` is where an instance is (or is to be written)."""

    root: Path
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def default(cls) -> InstanceCache:
        return cls(config.home() / "pacs-cache", _default_max_bytes())

    def path(self, sop_uid: str) -> Path:
        # A UID is digits and dots (safe as a file name); anything else a PACS sends is hashed, never used as a path.
        name = sop_uid if _UID.match(sop_uid) and len(sop_uid) <= 64 else "x" + hashlib.sha256(sop_uid.encode()).hexdigest()
        return self.root / name[-2:] / f"{name}.dcm"

    def has(self, sop_uid: str) -> bool:
        try:
            return self.path(sop_uid).stat().st_size > 0
        except OSError:
            return False

    def touch(self, sop_uids: Iterable[str]) -> None:
        """Mark instances as used now (the eviction order is by modification time)."""
        for uid in sop_uids:
            with contextlib.suppress(OSError):
                os.utime(self.path(uid))

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*/*.dcm") if p.is_file())

    def evict(self, keep: Iterable[str] = ()) -> tuple[int, int]:
        """Remove the least recently used files until the cache is within ``max_bytes``; never the files of
        ``keep`` (SOPInstanceUIDs). Returns (files removed, bytes removed)."""
        keep_paths = {self.path(u) for u in keep}
        files: list[tuple[float, int, Path]] = []
        total = 0
        for p in self.root.glob("*/*.dcm"):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
            total += st.st_size
        removed = freed = 0
        for _, size, p in sorted(files):
            if total <= self.max_bytes:
                break
            if p in keep_paths:
                continue
            try:
                p.unlink()
            except OSError:
                continue
            total -= size
            removed += 1
            freed += size
        return removed, freed
