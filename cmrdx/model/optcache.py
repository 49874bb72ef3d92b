"""Saved optimised graphs: where onnxruntime's optimised copy of a model file is kept, so that a later session
loads it with graph optimisation off instead of optimising the graph again. No onnxruntime here (the Encoder,
``cmrdx.model.encoder``, builds the sessions and passes its version in).

An optimised graph belongs to one source file (its sha256 from the verified manifest), one onnxruntime version,
one execution provider and one CPU: at the highest optimisation level onnxruntime may lay weights out for the
instruction set of the CPU it ran on, so a graph saved on one machine is never used on another. Those make the
file's key; the sha256 of the bytes written is kept beside each file, and a file that no longer matches it is
not used. Files live in the model folder's ``.optimized/`` when the folder is a user's model folder that can be
written, else under ``$CMRDX_HOME/cache/optimized/MODEL_SHA/``; neither is listed in the manifest (they are not
part of the model: deleting them only costs one slower start). A file is written under a temporary name and
renamed into place, so a reader never sees half of one; an older key's file for the same source is removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from cmrdx import config

if TYPE_CHECKING:
    from cmrdx.model.manifest import Manifest

log = logging.getLogger(__name__)

FOLDER = ".optimized"
SUFFIX = ".onnx"  # ONNX, as onnxruntime writes it (its .ort format measured no faster to load here)
LAYOUT = "1"  # bump when what a key covers changes


@lru_cache(maxsize=1)
def cpu_fingerprint() -> str:
    """The CPU's model name and instruction-set flags (Linux /proc/cpuinfo), else what ``platform`` knows."""
    name, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key == "model name" and not name:
                    name = line.split(":", 1)[1].strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
                if name and flags:
                    break
    except OSError:
        pass
    return f"{platform.machine()}|{name or platform.processor()}|{flags}"


@dataclass(frozen=True)
class GraphKey:
    """What an optimised graph depends on."""

    source_sha256: str
    ort_version: str
    provider: str  # "cpu", "cuda"

    @property
    def digest(self) -> str:
        text = "|".join((LAYOUT, self.source_sha256, self.ort_version, self.provider, cpu_fingerprint()))
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def file_name(self, source_rel: str) -> str:
        return f"{Path(source_rel).stem}.{self.provider}.{self.digest}{SUFFIX}"


def _bundled(root: Path) -> bool:
    try:
        return Path(root).resolve().is_relative_to((config.DATA_DIR / "models").resolve())
    except OSError:
        return True


def folders(manifest: Manifest) -> list[Path]:
    """Where this model's optimised graphs may be, in the order they are looked for (and the first one that can
    be written is where a new one goes): the model folder's ``.optimized/`` (a user's model folder only: a
    bundled model's folder is part of the installed package), then the cache under ``$CMRDX_HOME``."""
    out = []
    if not _bundled(manifest.root):
        out.append(Path(manifest.root) / FOLDER)
    out.append(config.home() / "cache" / "optimized" / manifest.sha256[:32])
    return out


def find(manifest: Manifest, source_rel: str, key: GraphKey) -> Path | None:
    """The saved optimised graph of ``source_rel`` for ``key``, or None."""
    name = key.file_name(source_rel)
    for d in folders(manifest):
        p = d / name
        if p.is_file() and p.stat().st_size > 0:
            return p
    return None


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(d, os.W_OK | os.X_OK)


def target(manifest: Manifest, source_rel: str, key: GraphKey) -> Path | None:
    """Where to save the optimised graph of ``source_rel`` for ``key``: the first folder that can be written (None
    when none can: the model then loads as before, optimising each time)."""
    for d in folders(manifest):
        if _writable(d):
            return d / key.file_name(source_rel)
    return None


def temporary(path: Path) -> Path:
    """A name beside ``path`` for writing it (unique to this process), renamed into place by ``publish``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: Path) -> str | None:
    """The sha256 recorded beside a saved graph when it was written (None: no record, so not to be used)."""
    try:
        text = _sidecar(path).read_text().strip()
    except OSError:
        return None
    return text if len(text) == 64 else None


def publish(tmp: Path, path: Path) -> bool:
    """Record the sha256 of the written ``tmp``, rename it into place, and remove saved graphs of the same
    source under older keys. False (and nothing left behind) when it cannot."""
    from cmrdx.fileio import atomic_write
    from cmrdx.model.manifest import sha256_file

    try:
        if not tmp.is_file() or tmp.stat().st_size == 0:
            tmp.unlink(missing_ok=True)
            return False
        atomic_write(_sidecar(path), sha256_file(tmp) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("could not save the optimised graph %s: %s", path, exc)
        tmp.unlink(missing_ok=True)
        return False
    stem, provider = path.name.split(".")[:2]
    for old in path.parent.glob(f"{stem}.{provider}.*{SUFFIX}"):
        if old.name != path.name:
            discard(old)
    return True


def discard(path: Path) -> None:
    """Remove a saved graph (and its record) that cannot be used: it is made again next time."""
    for p in (path, _sidecar(path)):
        try:
            p.unlink(missing_ok=True)
        except OSError as exc:
            log.debug("could not remove %s: %s", p, exc)
