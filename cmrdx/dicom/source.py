"""Where DICOM bytes come from: files in a folder tree, members of a .zip, files listed by a DICOMDIR.

A ``FileRef`` names one object so that it can be re-opened later (header scan first, pixels on demand).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cmrdx.errors import InputNotFoundError

# Files that are certainly not DICOM objects worth opening (saves time on big archives).
_SKIP_SUFFIXES = {
    ".txt", ".json", ".csv", ".md", ".py", ".html", ".htm", ".xml", ".png", ".jpg", ".jpeg", ".gif",
    ".nii", ".gz", ".npy", ".npz", ".yaml", ".yml", ".pdf", ".log", ".parquet", ".tsv", ".sh",
}


@dataclass(frozen=True, order=True)
class FileRef:
    """One DICOM object: a file path, or a member of a zip archive (``container`` = the zip's path)."""

    path: str
    member: str | None = None

    def open(self) -> BinaryIO:
        if self.member is None:
            return open(self.path, "rb")
        with zipfile.ZipFile(self.path) as zf:
            return io.BytesIO(zf.read(self.member))

    def __str__(self) -> str:
        return self.path if self.member is None else f"{self.path}!{self.member}"

    @property
    def name(self) -> str:
        return os.path.basename(self.member or self.path)


def iter_refs(root: str | os.PathLike[str]) -> Iterator[FileRef]:
    """Every candidate object under ``root`` (a folder walked recursively, a .zip, or one file), in a stable
    (sorted) order. Whether a candidate is DICOM is decided by the reader, not here, except for suffixes
    that are never DICOM."""
    p = Path(root)
    if not p.exists():
        raise InputNotFoundError(f"{p}: no such file or folder", hint="check the path (it is case-sensitive)")
    if p.is_file():
        if zipfile.is_zipfile(p):
            yield from _iter_zip(p)
        else:
            yield FileRef(str(p))
        return
    for dirpath, dirnames, filenames in os.walk(p):
        dirnames.sort()
        # Skip hidden folders (e.g. .git) and caches: they never hold a study.
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            full = os.path.join(dirpath, fn)
            suffix = os.path.splitext(fn)[1].lower()
            if suffix == ".zip" and zipfile.is_zipfile(full):
                yield from _iter_zip(Path(full))
            elif suffix in _SKIP_SUFFIXES:
                continue
            else:
                yield FileRef(full)


def _iter_zip(path: Path) -> Iterator[FileRef]:
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if not n.endswith("/"))
    for n in names:
        base = os.path.basename(n)
        if base.startswith(".") or os.path.splitext(base)[1].lower() in _SKIP_SUFFIXES:
            continue
        yield FileRef(str(path), n)
