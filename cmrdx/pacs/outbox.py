"""The outbox: DICOM files (the SR of a classified study) on their way to a PACS, kept until the PACS took them.

A result stored back to a PACS must never be lost silently: a PACS that is down, restarting or refusing a file
today is common, and nobody re-runs a classification to resend its SR. So a file to store is first copied into
the outbox (``$CMRDX_HOME/pacs-outbox/<node>/<SOPInstanceUID>.dcm``, written atomically and fsynced), and only
then offered to the node. A file the node stored leaves the outbox; a file it refused stays, with the reason in a
small JSON side file (attempts, last status, last error); a node that cannot be reached leaves everything where it
is. A node that refuses a whole request (an HTTP 400 for a STOW-RS body holding one bad file) is offered each file
alone, so that one file it will never take does not hold the others back for ever. The next ``flush`` (the next run of ``classify --store-back``, ``batch --store-back``, or ``cmrdx listen``)
offers every pending file again, so earlier failures are retried along with the new ones.

Files are named by their SOP Instance UID, so putting the same object twice is one pending file, and a PACS
(which keys instances by that UID) never receives two different files under one name from here. Two processes
flushing the same node are kept apart by a lock file per node folder (``flock``: released by the system when its
holder ends, SIGKILL included), so no file is stored twice at the same time.

``flush`` does not raise for an unreachable node or a refused file: it reports them (``FlushReport``), and the
caller decides the exit code. Imports nothing heavy (pydicom is imported when a file is put).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmrdx import config as _config
from cmrdx.errors import (
    AssociationRejectedError,
    CmrdxError,
    NoDicomError,
    OutputError,
    SendError,
    UsageError,
)
from cmrdx.fileio import atomic_write
from cmrdx.pacs.types import StoreResult

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.pacs.client import PacsClient
    from cmrdx.pacs.config import PacsNode

log = logging.getLogger(__name__)

_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # the node names of cmrdx.pacs.config
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
SIDE_SUFFIX = ".json"


def default_root() -> Path:
    return _config.home() / "pacs-outbox"


@dataclass
class FlushReport:
    """What one flush did for ``node``: the files it stored (and removed from the outbox), the files the node
    refused (still pending, the reason in ``StoreResult.status`` / ``detail``), how many files are pending now,
    and ``error``: why nothing could be stored at all (the node unreachable, the association rejected), else None.
    """

    node: str
    stored: list[StoreResult] = field(default_factory=list)
    failed: list[StoreResult] = field(default_factory=list)
    pending: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Nothing is left waiting: every pending file was stored."""
        return self.error is None and not self.failed and self.pending == 0

    def describe(self) -> str:
        """One line for a message: stored, refused, pending, and why."""
        parts = [f"{len(self.stored)} stored"]
        if self.failed:
            parts.append(f"{len(self.failed)} refused ({'; '.join(_reason(r) for r in self.failed[:3])}"
                         + (", ..." if len(self.failed) > 3 else "") + ")")
        parts.append(f"{self.pending} pending")
        text = f"PACS node {self.node}: " + ", ".join(parts)
        return text + (f": {self.error}" if self.error else "")


def _reason(r: StoreResult) -> str:
    return r.status + (f": {r.detail}" if r.detail else "")


class Outbox:
    """Files waiting to be stored on PACS nodes, one folder per node under ``root``."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else default_root()

    # --- where things are -------------------------------------------------------------------------------------
    def folder(self, node: str) -> Path:
        if not isinstance(node, str) or not _NODE.match(node):
            raise UsageError(f"{node!r} is not a PACS node name", hint="use the name of a node in pacs.yaml")
        return self.root / node

    def pending(self, node: str) -> list[Path]:
        """The files waiting for ``node``, oldest first (then by name)."""
        folder = self.folder(node)
        try:
            files = [p for p in folder.iterdir() if p.suffix == ".dcm" and not p.name.startswith(".") and p.is_file()]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise OutputError.from_os_error(exc, folder, doing="cannot read the PACS outbox") from None

        def key(p: Path) -> tuple[float, str]:
            try:
                return (p.stat().st_mtime, p.name)
            except OSError:
                return (0.0, p.name)

        return sorted(files, key=key)

    def info(self, node: str, sop_instance_uid: str) -> dict[str, Any]:
        """The side record of a pending file: ``study_uid``, ``queued`` (time put), ``attempts``, ``last_status``,
        ``last_error``, ``last_attempt``; {} when there is none (or it is unreadable)."""
        return _read_json(self.folder(node) / f"{sop_instance_uid}{SIDE_SUFFIX}")

    # --- put ----------------------------------------------------------------------------------------------------
    def put(self, node: str, file: Path) -> Path:
        """Copy ``file`` (a DICOM Part 10 file) into ``node``'s folder as ``<SOPInstanceUID>.dcm``, atomically and
        fsynced; returns the outbox copy. Putting the same object again replaces its copy (one pending file).

        Raises NoDicomError (not a DICOM file, no SOP Instance UID), OutputError (the outbox cannot be written)."""
        file = Path(file)
        sop, study = _uids(file)
        folder = self.folder(node)
        target = folder / f"{sop}.dcm"
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise OutputError.from_os_error(exc, file, doing="cannot read the file to store") from None
        try:
            with self._lock(folder):
                atomic_write(target, data)
                side = folder / f"{sop}{SIDE_SUFFIX}"
                rec = _read_json(side)
                rec.setdefault("queued", _now())
                rec.update({"sop_instance_uid": sop, "study_uid": study, "source": str(file)})
                rec.setdefault("attempts", 0)
                atomic_write(side, json.dumps(rec, indent=1) + "\n")
        except OSError as exc:
            raise OutputError.from_os_error(exc, target, doing="cannot write to the PACS outbox") from None
        log.info("outbox %s: queued %s (study %s)", node, sop, study or "?")
        return target

    # --- flush --------------------------------------------------------------------------------------------------
    def flush(self, node: PacsNode, client: PacsClient | None = None) -> FlushReport:
        """Offer every pending file for ``node`` to it (``client``, default ``open_client(node)``): a stored file
        leaves the outbox, a refused one stays with its reason (a node that refuses a whole request is offered
        each file alone), and a node that cannot be reached or rejects the association leaves them all, the
        cause in ``error``. Never raises for those; holds the node's lock while storing so that no other process
        stores the same files at the same time."""
        folder = self.folder(node.name)
        report = FlushReport(node=node.name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError.from_os_error(exc, folder, doing="cannot make the PACS outbox") from None
        with self._lock(folder):
            files = self.pending(node.name)  # listed under the lock: another flush may have just stored some
            if not files:
                return report
            own = client is None
            try:
                if client is None:
                    from cmrdx.pacs.client import open_client

                    client = open_client(node)
                results = _store_each(client, files)
            except (SendError, AssociationRejectedError) as exc:  # the node cannot be reached or turned us away
                report.error = exc.message
                for f in files:
                    self._note(folder, f.stem, status=type(exc).__name__, error=exc.message)
                report.pending = len(files)
                log.warning("outbox %s: %d file(s) not stored: %s", node.name, len(files), exc.message)
                return report
            finally:
                if own and client is not None:
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001 - closing a connection that failed must not hide the report
                        log.debug("outbox %s: closing the client failed", node.name, exc_info=True)
            by_path = {Path(r.path): r for r in results}
            for f in files:
                r = by_path.get(f)
                if r is None:  # a client that skipped a file: it stays, and says so
                    r = StoreResult(path=f, sop_instance_uid=f.stem, ok=False, status="no result",
                                    detail="the client returned no result for this file")
                if r.ok:
                    report.stored.append(r)
                    for p in (f, folder / f"{f.stem}{SIDE_SUFFIX}"):
                        p.unlink(missing_ok=True)
                else:
                    report.failed.append(r)
                    self._note(folder, f.stem, status=r.status, error=r.detail or r.status)
            report.pending = len(self.pending(node.name))
        if report.failed:
            log.warning("outbox %s: %d file(s) refused: %s", node.name, len(report.failed),
                        "; ".join(_reason(r) for r in report.failed[:3]))
        return report

    def _note(self, folder: Path, sop: str, *, status: str, error: str) -> None:
        """Record a failed attempt in the file's side record (best effort: the file itself stays pending)."""
        side = folder / f"{sop}{SIDE_SUFFIX}"
        rec = _read_json(side)
        rec["attempts"] = int(rec.get("attempts", 0)) + 1
        rec.update({"last_attempt": _now(), "last_status": status, "last_error": error})
        try:
            atomic_write(side, json.dumps(rec, indent=1) + "\n")
        except OSError:
            log.warning("outbox: cannot record the failed attempt for %s in %s", sop, side)

    @contextmanager
    def _lock(self, folder: Path) -> Iterator[None]:
        """Hold ``folder/.lock`` exclusively (``flock``: per open file, so threads of one process are kept apart
        too; released by the system when the holder ends)."""
        folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process lock
            yield
            return
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def store_back(node: PacsNode, files: Sequence[Path], outbox: Outbox | None = None) -> FlushReport:
    """Put ``files`` into the outbox for ``node``, then flush everything pending for it (earlier failures are
    retried too). Returns the flush's report; raises only for a file that cannot be put (NoDicomError,
    OutputError)."""
    box = outbox if outbox is not None else Outbox()
    for f in files:
        box.put(node.name, Path(f))
    return box.flush(node)


def _store_each(client: PacsClient, files: list[Path]) -> list[StoreResult]:
    """``client.store(files)``; when the node answers the whole request with an error (a DICOMweb node may answer
    HTTP 400 for a request holding one bad file, without saying which), each file is offered alone, so that one
    file the node will never take does not hold back the others for ever. A file the client cannot read (a
    damaged outbox copy) is a refused file. SendError / AssociationRejectedError propagate: the node is down."""
    try:
        return client.store(files)
    except (SendError, AssociationRejectedError):
        raise
    except CmrdxError as exc:
        if len(files) == 1:
            return [_refused(files[0], exc)]
        first = exc
    log.info("the node refused a request of %d files (%s): offering them one by one", len(files), first.message)
    out: list[StoreResult] = []
    for f in files:
        try:
            out.extend(client.store([f]))
        except (SendError, AssociationRejectedError):
            raise
        except CmrdxError as exc:
            out.append(_refused(f, exc))
    return out


def _refused(f: Path, exc: CmrdxError) -> StoreResult:
    return StoreResult(path=f, sop_instance_uid=f.stem, ok=False, status=type(exc).__name__, detail=exc.message)


def _uids(file: Path) -> tuple[str, str]:
    """(SOPInstanceUID, StudyInstanceUID or "") of a DICOM file, read from its header only."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "StudyInstanceUID"])
    except FileNotFoundError:
        raise NoDicomError(f"{file}: no such file", hint="check the path of the file to store") from None
    except (InvalidDicomError, OSError, ValueError, TypeError, EOFError) as exc:
        raise NoDicomError(f"{file}: not a readable DICOM file ({type(exc).__name__})",
                           hint="only DICOM Part 10 files (e.g. the SR cmrdx wrote) can be stored") from None
    sop = str(ds.get("SOPInstanceUID", "") or "").strip()
    if not _UID.match(sop) or len(sop) > 64:
        raise NoDicomError(f"{file}: no valid SOP Instance UID", hint="only complete DICOM objects can be stored")
    study = str(ds.get("StudyInstanceUID", "") or "").strip()
    return sop, study if _UID.match(study) else ""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
