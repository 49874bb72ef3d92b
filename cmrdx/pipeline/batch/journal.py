"""The journal of a batch run (``OUT.cmrdx-batch/journal.jsonl``): one JSON line per finished study, appended,
flushed and fsynced; and the one function that builds a study's record, for every engine and for failures.

The journal is the commit log: a run killed at any moment (SIGKILL included) leaves at most one torn last line,
which the next run drops. It is append-only: a study's later record supersedes its earlier ones, and a study
that changed or left the archive since it was scored gets a record saying so ("changed", "removed"). A record
never holds patient identifiers: the study's UID, its folder relative to the archive (a PACS study: its address
``pacs://NODE/STUDY_UID``), the model, the scores, the embedding (base64 little-endian float32; a model with a
finding stream adds its main paths' embedding, ``main_embedding``, in the same encoding), the recipe's notes and,
for a PACS study, what was transferred (``pacs``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrdx.errors import CmrdxError
from cmrdx.pipeline.batch.discover import source_folder
from cmrdx.pipeline.batch.engine import EncodedStudy

if TYPE_CHECKING:
    from cmrdx.pipeline.batch.discover import Discovery

log = logging.getLogger(__name__)

JOURNAL_SCHEMA = "cmrdx-batch-journal/1"


def state_dir(out: Path) -> Path:
    """The run's state folder next to its results: journal, discovery, parsed headers."""
    return Path(str(out) + ".cmrdx-batch")


def journal_path(out: Path) -> Path:
    return state_dir(out) / "journal.jsonl"


# State folders a run of this process holds: a POSIX record lock never excludes its own process, so a second run
# in the same process (another thread, a progress callback) is refused here.
_HELD: set[str] = set()
_HELD_GUARD = threading.Lock()


@contextmanager
def state_lock(sd: Path) -> Iterator[None]:
    """Hold the state folder ``sd`` for one run: a second run on the same results, from any process, is refused
    with a clear error instead of interleaving its records and rewriting the results under the first.

    The lock is a POSIX record lock (``lockf``) on ``sd/lock``: the system releases it when its process ends,
    SIGKILL included, so a killed run never locks its results out, and a record lock belongs to its process only,
    so reader workers forked from the run (which inherit the open file) never hold it after the run is gone. The
    file holds the holder's process id, for the message."""
    sd = Path(sd)
    sd.mkdir(parents=True, exist_ok=True)
    path = sd / "lock"
    key = str(path.resolve())
    with _HELD_GUARD:
        if key in _HELD:
            raise _locked(sd, os.getpid())
        _HELD.add(key)
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no record locks (Windows): runs of one process are still kept apart
            yield
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                raise _locked(sd, int(holder) if holder.isdigit() else None) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock
    finally:
        with _HELD_GUARD:
            _HELD.discard(key)


def _locked(sd: Path, pid: int | None) -> CmrdxError:
    who = f"process {pid}" if pid is not None else "another process"
    return CmrdxError(f"{sd}: another cmrdx batch ({who}) is running on these results",
                      hint="wait for that run to end (a run that was killed holds nothing), or give another --out")


class Journal:
    """Append-only JSONL commit log of finished studies. Survives SIGKILL: a torn last line is dropped.

    Only the last line can be torn by a kill (each record is one write ending in its newline), so only a last
    line without its newline is cut off. A complete line that is not a record (a disk or an editor damaged it)
    is skipped and reported (``skipped_lines``, 1-based) and left where it is: the records after it stand, and
    the study it held, if any, is scored again and its new record appended. A file of which no line is a
    record is not a journal: a clear error, never a silent new start."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.skipped_lines: list[int] = []
        self.torn_bytes = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._recover()
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run's appends
        except OSError as exc:
            raise CmrdxError(f"{self.path}: cannot open the batch journal ({exc.strerror or exc})",
                             hint=f"make it a writable file, or delete {self.path.parent} to start the run again"
                             ) from None

    def _recover(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # what follows the last newline: nothing, or a record torn by a kill
        for number, line in enumerate(lines, 1):
            rec = _record(line)
            if rec is not None:
                self.records[rec["study_uid"]] = rec
            elif line.strip():
                self.skipped_lines.append(number)
        if self.skipped_lines and not self.records:
            raise CmrdxError(f"{self.path}: not a cmrdx batch journal (none of its {len(lines)} lines is a record)",
                             hint=f"give another --out, or delete {self.path.parent} to start the run again")
        if self.skipped_lines:
            shown = ", ".join(map(str, self.skipped_lines[:10])) + (", ..." if len(self.skipped_lines) > 10 else "")
            log.warning("%s: skipped %d corrupt line(s) (line %s): the studies they held are scored again",
                        self.path, len(self.skipped_lines), shown)
        if tail:
            self.torn_bytes = len(tail)
            log.warning("%s: dropped a torn last record (%d bytes) from an interrupted run", self.path, len(tail))
            with open(self.path, "r+b") as fh:
                fh.truncate(len(data) - len(tail))

    def commit(self, rec: dict[str, Any]) -> None:
        self._fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.records[rec["study_uid"]] = rec

    def supersede(self, uids: Sequence[str], status: str) -> None:
        """Append a record that ends the scored record of each of ``uids`` (``status``: "changed", the study's
        files changed and it is to be scored again; "removed", it left the archive). The log stays append-only:
        the earlier records stay in it, the later one counts."""
        lines = [json.dumps({"schema": JOURNAL_SCHEMA, "study_uid": u, "status": status}, separators=(",", ":"))
                 for u in uids if is_scored(self.records.get(u))]
        if not lines:
            return
        self._fh.write("\n".join(lines) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        for u in uids:
            if is_scored(self.records.get(u)):
                self.records[u] = {"schema": JOURNAL_SCHEMA, "study_uid": u, "status": status}

    def scored(self, uids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The current records of ``uids`` that score them (ok or failed), in the order of ``uids``."""
        return {u: self.records[u] for u in uids if is_scored(self.records.get(u))}

    def close(self) -> None:
        self._fh.close()


def is_scored(rec: dict[str, Any] | None) -> bool:
    """Whether a journal record is a study's result (ok or failed), not a mark that its result no longer holds."""
    return rec is not None and rec.get("status") in ("ok", "failed")


# Failures to get a study from its PACS node (unreachable, association refused, an answer short of the study), not
# failures of the study itself: the record says so for this run, and the next run tries the study again.
RETRIED_ERRORS = frozenset({"SendError", "AssociationRejectedError", "PacsError"})


def is_done(rec: dict[str, Any] | None) -> bool:
    """Whether a run needs not prepare the study again: it is scored, and did not fail on reaching its node."""
    return is_scored(rec) and not (rec is not None and rec["status"] == "failed"
                                   and rec.get("error", {}).get("type") in RETRIED_ERRORS)


def _record(line: bytes) -> dict[str, Any] | None:
    """A journal line as its record, or None when it is not one."""
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested beyond the parser
        return None
    if isinstance(rec, dict) and isinstance(rec.get("study_uid"), str) and isinstance(rec.get("status"), str):
        return rec
    return None


def encode_embedding(emb: np.ndarray) -> str:
    """(D,) -> base64 of little-endian float32, as records hold it."""
    return base64.b64encode(np.asarray(emb, dtype="<f4").tobytes()).decode("ascii")


def decode_embedding(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f4").copy()


def record_main_embedding(rec: dict[str, Any]) -> np.ndarray:
    """An ok record's main paths' embedding: its ``main_embedding`` when it has one (a model with a finding
    stream), else its ``embedding`` (the same thing for every other model, and in every record written before)."""
    return decode_embedding(rec.get("main_embedding") or rec["embedding"])


@dataclass
class RecordContext:
    """What a record says besides the study itself: where its files are and which model and banks scored it."""

    archive: Path | str  # the archive folder, or a listed source's key (a PACS study's source is its address)
    discovery: Discovery
    model: str
    model_sha256: str
    banks: Sequence[Any]  # PromptBank
    text_emb: Sequence[dict[str, np.ndarray]]  # per bank: prompt text -> (D,) embedding
    reference: Any = None  # cmrdx.model.reference.Reference of the model, or None (typicality unknown)


def build_record(study: EncodedStudy, ctx: RecordContext) -> dict[str, Any]:
    """The journal record of one study, ok or failed: the only place a record is made (keys in this order).

    Scores compare the study's embedding with the prompts; typicality is a distance to the reference's studies,
    so it is measured on the main paths' embedding (``EncodedStudy.main``). The record holds ``main_embedding``
    only when it differs from ``embedding``, so a model without a finding stream writes what it always did."""
    from cmrdx.zeroshot.scoring import note_departures, score_bank

    uid = study.uid
    files = ctx.discovery.studies[uid]
    rec: dict[str, Any] = {
        "schema": JOURNAL_SCHEMA, "study_uid": uid, "source": source_folder(files, ctx.archive),
        "n_files": len(files), "duplicate_files": ctx.discovery.duplicates.get(uid, 0),
        "model": ctx.model, "model_sha256": ctx.model_sha256,
    }
    if study.error is not None:
        rec.update(status="failed", error=study.error)
        return rec
    e = np.asarray(study.embedding, np.float32)
    findings = {}
    from cmrdx.model.reference import Typicality
    from cmrdx.zeroshot.scoring import make_uncertain

    main = e if study.main is None else np.asarray(study.main, np.float32)
    typ = ctx.reference.assess(main) if ctx.reference is not None else Typicality.unknown(ctx.model)
    views = study.meta.get("views")  # None: the preparer gave no view list, so requirements are not checked
    departures = [(w, m) for w, m in study.meta.get("departures", [])]
    for bank, temb in zip(ctx.banks, ctx.text_emb):
        scored = score_bank(e, bank, temb, ctx.model, ctx.model_sha256, views=views)
        note_departures(scored, bank, departures)
        for fs in scored:
            if typ.status == "atypical":  # the same rule as classify: no confident call on an atypical study
                make_uncertain(fs, "atypical study")
            findings[fs.id] = {"score": round(fs.score, 6), "call": str(fs.call), "bank": bank.name}
            if fs.reason or fs.notes:
                findings[fs.id]["reason"] = "; ".join(([fs.reason] if fs.reason else []) + fs.notes)
    meta = {k: v for k, v in study.meta.items() if k != "departures"}  # already in the findings' reasons
    own_main = {} if main is e or np.array_equal(main, e) else {"main_embedding": encode_embedding(main)}
    rec.update(status="ok", findings=findings, embedding=encode_embedding(e), **own_main,
               typicality={"status": typ.status, "score": typ.score}, **meta)
    return rec
