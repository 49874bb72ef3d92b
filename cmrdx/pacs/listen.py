"""``cmrdx listen``: cmrdx as a DICOM node. A C-STORE SCP (pynetdicom) receives studies (from a scanner, a PACS
routing rule, storescu), classifies each once it is complete, writes the outputs, and forwards the SR to a PACS.

Why it is built this way:

* **Nothing acknowledged is ever lost.** Each instance is written to the spool
  (``spool/<StudyInstanceUID>/<SOPInstanceUID>.dcm``) atomically *and fsynced* before the SCP answers success:
  a sender deletes or forgets what it was told is stored, so a success answer must survive a power cut. Then a
  "received" record is appended to the journal (``spool/journal.jsonl``, one JSON line per event, fsynced).
* **A study has no "end" in DICOM.** A study is taken as complete when nothing arrived for it for
  ``quiet_seconds`` (measured with an injectable clock, so tests drive time instead of sleeping). Instances that
  arrive for a study already classified make it classified again after the next quiet period.
* **It survives a restart.** The spool and the journal say what was received, classified and forwarded; at start,
  every study in the spool whose last classification does not cover all its files (none, an interrupted one, files
  that arrived later) is scheduled again, its quiet period counted from the start. The journal's last line may be
  torn by a kill; it is dropped. SRs not yet stored on the forward node wait in the outbox
  (``cmrdx.pacs.outbox``) and are offered again at start and then periodically.
* **It never crashes on a study.** A classification error is journaled with its type and message, and the
  listener goes on. Errors about the study itself (no cine, not MR, ...) are final until new instances arrive;
  others (a model that failed to load, a full disk) are retried at the next start.
* **Bounded.** Only configured calling AE titles may associate (the association is rejected, reason "calling AE
  title not recognised"), and the spool has a size limit: when a new instance would exceed it, studies already
  classified are evicted (oldest first); when that is not enough the instance is refused with status 0xA700
  (out of resources), which a sender retries later.
* **A clean stop.** ``stop()`` (the CLI calls it on SIGTERM / SIGINT) stops accepting associations, aborts those
  in flight (what they had been told is stored is on disk), lets the study being classified finish (or, past
  the grace period, journals it as interrupted so that the next start redoes it), and journals "stopped".
* **No patient data in logs or the journal**: studies are named by StudyInstanceUID only.

pynetdicom is imported here (never by ``import cmrdx`` or ``cmrdx.pacs``); classification is imported when the
first study is classified.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmrdx.errors import (
    CmrdxError,
    InputNotFoundError,
    MultipleStudiesError,
    NoCineError,
    NoDicomError,
    NoMRError,
    PixelDecodeError,
    UsageError,
)
from cmrdx.fileio import atomic_write
from cmrdx.pacs.outbox import Outbox

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.pacs.client import PacsClient
    from cmrdx.pacs.config import PacsNode

log = logging.getLogger(__name__)

JOURNAL_SCHEMA = "cmrdx-listen-journal/1"
JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = ".lock"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

# DIMSE statuses the SCP answers with (PS3.4 Annex B, Storage Service Class)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
VERIFICATION = "1.2.840.10008.1.1"  # the Verification SOP Class (C-ECHO)

# Errors that say the study itself cannot be classified: final until new instances arrive. Any other error (the
# model, the disk, a bug) leaves the study to be classified again at the next start.
FINAL_ERRORS: tuple[type[CmrdxError], ...] = (NoDicomError, NoMRError, NoCineError, MultipleStudiesError,
                                                PixelDecodeError, InputNotFoundError)

# Journal events about a study (every record but "started" / "stopped" names one by its UID)
RECEIVED, SCHEDULED, CLASSIFYING, CLASSIFIED, FAILED = "received", "scheduled", "classifying", "classified", "failed"
FORWARDED, FORWARD_PENDING, INTERRUPTED, EVICTED = "forwarded", "forward-pending", "interrupted", "evicted"


def is_uid(text: str) -> bool:
    return 0 < len(text) <= 64 and bool(_UID.match(text))


# --- what classifying a study produces ------------------------------------------------------------------------------
@dataclass
class StudyOutputs:
    """What the classifier wrote for one study: the SR to forward (None: no SR), the views used, how many
    findings were scored and how many called present, and the output files by kind."""

    study_uid: str
    sr: Path | None
    views: list[str] = field(default_factory=list)
    findings: int = 0
    present: int = 0
    files: dict[str, str] = field(default_factory=dict)


# classify_fn(study_folder, out_folder, study_uid) -> StudyOutputs; raises CmrdxError (or anything) on failure
ClassifyFn = Callable[[Path, Path, str], StudyOutputs]


class StudyClassifier:
    """The default ``classify_fn``: ``cmrdx.pipeline.classify.classify`` on the spooled study, then the JSON
    result (``result.json``), the HTML report (``report.html``) and the DICOM SR (``sr.dcm``) in the study's
    output folder, as ``cmrdx classify --output --report --sr`` writes them."""

    def __init__(self, model: str | Path | None = None, banks: Sequence[str | Path] | None = None,
                 device: str = "auto"):
        from cmrdx.vocab import DEFAULT_BANKS

        self.model = model
        self.banks: tuple[str | Path, ...] = tuple(banks) if banks else DEFAULT_BANKS
        self.device = device

    def preload(self) -> None:
        """Load the banks and the model now, so that a bad option fails at start, not at the first study."""
        from cmrdx.model.loader import get_encoder
        from cmrdx.zeroshot.bank import get_bank

        for b in self.banks:
            get_bank(b)
        get_encoder(self.model, self.device)

    def __call__(self, study_dir: Path, out_dir: Path, study_uid: str) -> StudyOutputs:
        from cmrdx.outputs import StudySource, write_atomic, write_outputs
        from cmrdx.pipeline.classify import classify
        from cmrdx.vocab import Call

        src = StudySource.read(study_dir, study_uid)
        res = classify(src.study, model=self.model, banks=self.banks, device=self.device, study_uid=study_uid)
        result = write_atomic(out_dir / "result.json", json.dumps(res.to_dict(), indent=2) + "\n")
        written = write_outputs(res, src, report=out_dir / "report.html", sr=out_dir / "sr.dcm")
        files = {"result": str(result)} | {k: str(v["path"]) for k, v in written.items()}
        return StudyOutputs(
            study_uid=res.study_uid, sr=Path(written["sr"]["path"]),
            views=sorted({str(rec.get("view")) for rec in res.views_used.values() if rec.get("view")}),
            findings=len(res.findings), present=sum(1 for f in res.findings if f.call == Call.PRESENT), files=files,
        )


# --- the journal --------------------------------------------------------------------------------------------------
class ListenJournal:
    """Append-only JSONL log of the listener's events, each line written, flushed and fsynced. A kill can tear
    only the last line (each record is one write ending in its newline): it is dropped when the journal is
    opened. A complete line that is not a record is skipped (and logged). Thread-safe; appends after ``close``
    are dropped (the spool's files stay the truth for what was received)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self.torn_bytes = 0
        self._lock = threading.Lock()
        self._recover()
        self._fh: Any = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the appends

    def _recover(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        tail = lines.pop()
        bad = 0
        for line in lines:
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                rec = None
            if isinstance(rec, dict) and isinstance(rec.get("event"), str):
                self.records.append(rec)
            elif line.strip():
                bad += 1
        if bad:
            log.warning("%s: skipped %d line(s) that are not records", self.path, bad)
        if tail:
            self.torn_bytes = len(tail)
            log.warning("%s: dropped a torn last record (%d bytes) from an interrupted run", self.path, len(tail))
            with open(self.path, "r+b") as fh:
                fh.truncate(len(data) - len(tail))

    def append(self, event: str, study_uid: str | None = None, **fields: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {"event": event}
        if study_uid is not None:
            rec["study_uid"] = study_uid
        rec.update(fields)
        rec["t"] = round(time.time(), 3)
        line = json.dumps(rec, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            if self._fh is None:
                log.debug("journal closed: dropped %s record", event)
                return rec
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        return rec

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The records of a listener journal (a torn last line left out; the file is not changed)."""
    out: list[dict[str, Any]] = []
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return out
    for line in data.split(b"\n")[:-1]:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("event"), str):
            out.append(rec)
    return out


# --- the listener -------------------------------------------------------------------------------------------------
@dataclass
class _Study:
    uid: str
    last: float  # clock time of the last instance received (or of the start that scheduled the study)
    instances: int = 0  # files in the spool
    bytes: int = 0
    dirty: bool = False  # received something its last classification did not see
    busy: bool = False  # being classified now
    gen: int = 0  # instances received in this run (a classification that started at gen N saw N)
    writing: int = 0  # instances being written to its folder now (never evicted meanwhile)


class Listener:
    """The C-STORE SCP, its spool and journal, and the worker that classifies complete studies.

    ``serve()`` blocks until ``stop()``; or ``start()`` and later ``close()``. ``poll_once(now)`` does one pass of
    the worker by hand (``start(worker=False)`` leaves it to the caller: tests drive time that way)."""

    def __init__(
        self,
        spool: Path,
        out: Path,
        aet: str = "CMRDX",
        port: int = 11112,
        allowed_aets: set[str] | None = None,
        forward: PacsNode | None = None,
        quiet_seconds: float = 30.0,
        max_spool_bytes: int = 10 * 1024**3,
        classify_fn: ClassifyFn | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        host: str = "",
        outbox: Outbox | None = None,
        forward_client: Callable[[], PacsClient] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        retry_seconds: float = 60.0,
    ):
        from cmrdx.pacs.config import check_ae_title

        self.spool = Path(spool)
        self.out = Path(out)
        self.aet = check_ae_title(aet, "--aet", "cmrdx listen")
        self.port = int(port)
        self.host = host
        self.allowed_aets = {check_ae_title(a, "--allow-aet", "cmrdx listen") for a in allowed_aets} \
            if allowed_aets else None
        self.forward = forward
        self.quiet_seconds = float(quiet_seconds)
        self.max_spool_bytes = int(max_spool_bytes)
        self.classify_fn: ClassifyFn = classify_fn if classify_fn is not None else StudyClassifier()
        self.clock = clock
        self.outbox = outbox if outbox is not None else Outbox()
        self.forward_client = forward_client
        self.on_event = on_event
        self.retry_seconds = retry_seconds
        self.journal: ListenJournal | None = None
        self._studies: dict[str, _Study] = {}
        self._spool_bytes = 0
        self._lock = threading.RLock()
        self._stop_asked = False  # plain attributes: stop() is called from signal handlers
        self._grace: float | None = None
        self._ae: Any = None
        self._server: Any = None
        self._worker: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._last_flush: float | None = None
        self._noted_pending: set[str] = set()
        self._closed = False

    # --- life cycle -------------------------------------------------------------------------------------------
    def serve(self) -> None:
        """Start, then block until ``stop()`` (from another thread or a signal handler), then close cleanly."""
        self.start()
        try:
            while not self._stop_asked:
                time.sleep(0.1)
        finally:
            self.close()

    def stop(self, grace: float | None = None) -> None:
        """Ask the listener to stop (safe in a signal handler: it only sets flags). ``grace``: seconds to let the
        study being classified finish (None: as long as it takes); a later call may shorten it (0: now)."""
        if grace is not None:
            self._grace = time.monotonic() + grace
        self._stop_asked = True

    @property
    def stopping(self) -> bool:
        return self._stop_asked

    def start(self, *, worker: bool = True) -> Listener:
        """Take the spool (one listener per spool), recover its state, listen on the port, start the worker."""
        self._take_spool()
        try:
            self.journal = ListenJournal(self.spool / JOURNAL_NAME)
            self._recover()
            self._start_server()
        except BaseException:
            if self.journal is not None:
                self.journal.close()
            self._release_spool()
            raise
        self._event("started", None, aet=self.aet, port=self.port, forward=self.forward.name if self.forward else None,
                    allowed_aets=sorted(self.allowed_aets) if self.allowed_aets else None,
                    studies_scheduled=sum(1 for s in self._studies.values() if s.dirty))
        log.info("listening as %s on port %d (spool %s)", self.aet, self.port, self.spool)
        if worker:
            self._worker = threading.Thread(target=self._work, name="cmrdx-listen-worker", daemon=True)
            self._worker.start()
        return self

    def close(self) -> None:
        """Stop accepting associations, abort those in flight, let the worker finish its study (within the grace
        given to ``stop``), journal what was interrupted and "stopped", release the spool."""
        if self._closed:
            return
        self._stop_asked = True
        if self._server is not None:
            self._server.shutdown()  # no new associations
            self._server = None
        if self._ae is not None:
            assocs = list(self._ae.active_associations)
            for assoc in assocs:
                assoc.abort()
            for assoc in assocs:
                assoc.join(timeout=10)
        worker = self._worker
        while worker is not None and worker.is_alive():
            if self._grace is not None and time.monotonic() >= self._grace:
                break
            worker.join(timeout=0.1)
        with self._lock:
            busy = [s.uid for s in self._studies.values() if s.busy]
        for uid in busy if worker is not None and worker.is_alive() else []:
            self._event(INTERRUPTED, uid, reason="stopped while classifying; the next start classifies it again")
        self._event("stopped", None, studies_pending=sum(1 for s in self._studies.values() if s.dirty))
        self._closed = True
        if self.journal is not None:
            self.journal.close()
        self._release_spool()
        log.info("stopped")

    def _take_spool(self) -> None:
        try:
            self.spool.mkdir(parents=True, exist_ok=True)
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CmrdxError(f"{exc.filename}: cannot make the folder ({exc.strerror or exc})",
                             hint="give --spool and --out folders this user can write") from None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        fd = os.open(self.spool / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise CmrdxError(f"{self.spool}: another cmrdx listen (process {holder or '?'}) uses this spool",
                             hint="stop it first, or give another --spool") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_spool(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _start_server(self) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        from cmrdx.pacs.dimse import quick_acks

        ae = AE(ae_title=self.aet)
        # Every storage SOP class in every transfer syntax: a file is spooled as it was sent, never transcoded
        # (a PACS that offers JPEG-LS would otherwise decompress each image for us).
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)  # C-ECHO
        ae.require_called_aet = True
        if self.allowed_aets:
            ae.require_calling_aet = sorted(self.allowed_aets)
        ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs
        try:
            self._server = ae.start_server((self.host, self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store),
                                                         (evt.EVT_CONN_OPEN, quick_acks)])
        except OSError as exc:
            raise UsageError(f"cmrdx listen: cannot listen on port {self.port} ({exc.strerror or exc})",
                             hint="choose another --port (one no other program uses; below 1024 needs privileges)"
                             ) from None
        self._ae = ae
        if self.port == 0:  # the system chose one
            self.port = int(self._server.server_address[1])

    # --- state at start -----------------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Rebuild the studies from the spool's files and the journal; schedule every study whose files its last
        classification does not cover, its quiet period counted from now."""
        assert self.journal is not None
        now = self.clock()
        total = 0
        for d in sorted(p for p in self.spool.iterdir() if p.is_dir() and is_uid(p.name)):
            n = size = 0
            for f in d.iterdir():
                if f.name.startswith(".") and f.name.endswith(".tmp"):  # an atomic write a kill interrupted
                    f.unlink(missing_ok=True)
                elif f.suffix == ".dcm" and f.is_file():
                    n += 1
                    size += f.stat().st_size
            if n:
                self._studies[d.name] = _Study(uid=d.name, last=now, instances=n, bytes=size)
                total += size
        self._spool_bytes = total
        last_received: dict[str, int] = {}
        outcome: dict[str, tuple[int, dict[str, Any]]] = {}
        for i, rec in enumerate(self.journal.records):
            uid = rec.get("study_uid")
            if not isinstance(uid, str):
                continue
            ev = rec["event"]
            if ev == RECEIVED:
                last_received[uid] = i
            elif ev == CLASSIFIED or (ev == FAILED and not rec.get("retry")):
                outcome[uid] = (i, rec)
            elif ev == EVICTED:
                outcome.pop(uid, None)
        for s in self._studies.values():
            done = outcome.get(s.uid)
            s.dirty = done is None or last_received.get(s.uid, -1) > done[0] or done[1].get("instances") != s.instances
            if s.dirty:
                self._event(SCHEDULED, s.uid, instances=s.instances,
                            reason="not classified" if done is None else "received since its classification")

    # --- receiving ----------------------------------------------------------------------------------------------
    def _on_store(self, event: Any) -> int:
        """C-STORE: spool the instance (atomic, fsynced), journal it, then answer success."""
        try:
            return self._store(event)
        except Exception:  # noqa: BLE001 - one bad instance must not take the SCP down; the sender is told
            log.exception("C-STORE handler failed")
            return OUT_OF_RESOURCES

    def _store(self, event: Any) -> int:
        import pydicom

        if self._stop_asked:
            return OUT_OF_RESOURCES  # the sender retries once we are back
        data = event.encoded_dataset(include_meta=True)
        sop = str(event.request.AffectedSOPInstanceUID or "").strip()
        try:
            head = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            study = str(head.get("StudyInstanceUID", "") or "").strip()
        except Exception:  # noqa: BLE001 - whatever pydicom raises for bytes it cannot parse
            study = ""
        if not (is_uid(sop) and is_uid(study)):
            log.warning("refused an instance without valid Study/SOP Instance UIDs")
            return CANNOT_UNDERSTAND
        target = self.spool / study / f"{sop}.dcm"
        with self._lock:
            if self._spool_bytes + len(data) > self.max_spool_bytes:
                self._evict(self._spool_bytes + len(data) - self.max_spool_bytes)
            if self._spool_bytes + len(data) > self.max_spool_bytes:
                log.warning("spool full (%d of %d bytes): refused an instance of study %s",
                            self._spool_bytes, self.max_spool_bytes, study)
                return OUT_OF_RESOURCES
            self._spool_bytes += len(data)  # reserved while writing
            s = self._studies.get(study)
            if s is None:
                s = self._studies[study] = _Study(uid=study, last=self.clock())
            s.writing += 1
        try:
            try:
                old = target.stat().st_size
            except FileNotFoundError:
                old = None
            atomic_write(target, data)
        except OSError as exc:
            with self._lock:
                self._spool_bytes -= len(data)
                s.writing -= 1
                if not (s.instances or s.writing) and self._studies.get(study) is s:
                    del self._studies[study]
            log.error("cannot write to the spool (%s): refused an instance of study %s", exc.strerror or exc, study)
            return OUT_OF_RESOURCES
        calling = str(getattr(event.assoc.requestor, "ae_title", "") or "").strip()
        with self._lock:
            s.writing -= 1
            was_dirty = s.dirty
            s.last = self.clock()
            s.dirty = True
            s.gen += 1
            s.instances += old is None
            s.bytes += len(data) - (old or 0)
            self._spool_bytes -= old or 0
        if self.journal is not None:
            self.journal.append(RECEIVED, study, sop_instance_uid=sop, calling_aet=calling, bytes=len(data))
        if not was_dirty:
            log.info("study %s: receiving from %s", study, calling)
            self._notify({"event": "receiving", "study_uid": study, "calling_aet": calling})
        return SUCCESS

    def _evict(self, need: int) -> None:
        """Free at least ``need`` bytes by removing studies already classified (not awaiting classification, not
        being classified), least recently received first. Called with the lock held."""
        done = sorted((s for s in self._studies.values() if not (s.dirty or s.busy or s.writing)),
                      key=lambda s: s.last)
        freed = 0
        for s in done:
            if freed >= need:
                break
            shutil.rmtree(self.spool / s.uid, ignore_errors=True)
            freed += s.bytes
            self._spool_bytes -= s.bytes
            del self._studies[s.uid]
            self._event(EVICTED, s.uid, instances=s.instances, bytes=s.bytes, reason="spool full")

    # --- the worker ---------------------------------------------------------------------------------------------
    def _work(self) -> None:
        tick = min(max(self.quiet_seconds / 10, 0.05), 0.25)
        while not self._stop_asked:
            try:
                self._retry_forward()
                self.poll_once()
            except Exception:  # noqa: BLE001 - the worker must outlive any one failure
                log.exception("listen worker: unexpected error")
            time.sleep(tick)

    def poll_once(self, now: float | None = None) -> list[str]:
        """Classify (and forward) every study that has been quiet for ``quiet_seconds`` at clock time ``now``
        (default: the clock's now), one after the other; returns their UIDs. Stops between studies when the
        listener is stopping (the rest stay scheduled for the next start)."""
        processed: list[str] = []
        while not self._stop_asked:
            t = self.clock() if now is None else now
            with self._lock:
                ready = [s for s in self._studies.values()
                         if s.dirty and not s.busy and t - s.last >= self.quiet_seconds]
                if not ready:
                    break
                s = min(ready, key=lambda x: x.last)
                s.busy = True
                gen0 = s.gen
            try:
                self._process(s.uid)
            finally:
                with self._lock:
                    s.busy = False
                    if s.gen == gen0:  # nothing arrived while it was classified
                        s.dirty = False
            processed.append(s.uid)
        return processed

    def _process(self, uid: str) -> None:
        folder = self.spool / uid
        n = sum(1 for f in folder.iterdir() if f.suffix == ".dcm" and not f.name.startswith("."))
        self._event(CLASSIFYING, uid, instances=n)
        t0 = time.perf_counter()
        try:
            res = self.classify_fn(folder, self.out / uid, uid)
        except CmrdxError as exc:
            final = isinstance(exc, FINAL_ERRORS)
            log.warning("study %s: not classified: %s", uid, exc.message)
            self._event(FAILED, uid, instances=n, error={"type": type(exc).__name__, "message": exc.message},
                        retry=not final, seconds=round(time.perf_counter() - t0, 3))
            return
        except Exception as exc:  # noqa: BLE001 - a bug in classification must not end the listener
            log.error("study %s: classification failed: %s: %s", uid, type(exc).__name__, exc,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            self._event(FAILED, uid, instances=n, error={"type": type(exc).__name__, "message": str(exc)},
                        retry=True, seconds=round(time.perf_counter() - t0, 3))
            return
        self._event(CLASSIFIED, uid, instances=n, views=res.views, findings=res.findings, present=res.present,
                    outputs=res.files, sr=str(res.sr) if res.sr else None, seconds=round(time.perf_counter() - t0, 3))
        if self.forward is not None and res.sr is not None:
            try:
                self.outbox.put(self.forward.name, res.sr)
            except CmrdxError as exc:
                self._event(FORWARD_PENDING, uid, node=self.forward.name, error=exc.message)
                return
            self._flush(uid)

    # --- forwarding ---------------------------------------------------------------------------------------------
    def _retry_forward(self) -> None:
        if self.forward is None:
            return
        now = self.clock()
        if self._last_flush is not None and now - self._last_flush < self.retry_seconds:
            return
        self._last_flush = now
        if self.outbox.pending(self.forward.name):
            self._flush(None)

    def flush_forward(self) -> None:
        """Offer every SR waiting in the outbox for the forward node now (the worker does this at start and every
        ``retry_seconds``)."""
        if self.forward is not None:
            self._flush(None)

    def _flush(self, current: str | None) -> None:
        """Flush the outbox for the forward node; journal "forwarded" for each SR stored and "forward-pending"
        (once per SR in this run, and always for ``current``'s) for each left waiting."""
        assert self.forward is not None
        node = self.forward.name
        infos = {p.stem: self.outbox.info(node, p.stem) for p in self.outbox.pending(node)}
        client = self.forward_client() if self.forward_client is not None else None
        report = self.outbox.flush(self.forward, client)
        self._last_flush = self.clock()
        for r in report.stored:
            study = infos.get(r.sop_instance_uid, {}).get("study_uid") or None
            self._noted_pending.discard(r.sop_instance_uid)
            self._event(FORWARDED, study, node=node, sr_sop_instance_uid=r.sop_instance_uid)
        left = {r.sop_instance_uid: f"{r.status}: {r.detail}" if r.detail else r.status for r in report.failed}
        if report.error:
            left.update({sop: report.error for sop in infos if sop not in left and sop not in
                         {r.sop_instance_uid for r in report.stored}})
        for sop, why in left.items():
            study = infos.get(sop, {}).get("study_uid") or None
            if sop in self._noted_pending and study != current:
                continue
            self._noted_pending.add(sop)
            self._event(FORWARD_PENDING, study, node=node, sr_sop_instance_uid=sop, error=why)

    # --- events -------------------------------------------------------------------------------------------------
    def _event(self, event: str, study_uid: str | None, **fields: Any) -> dict[str, Any]:
        """Journal a study event, log it by UID, and tell ``on_event``."""
        rec = self.journal.append(event, study_uid, **fields) if self.journal is not None else \
            {"event": event, "study_uid": study_uid, **fields}
        if study_uid is not None:
            log.info("study %s: %s", study_uid, event)
        self._notify(rec)
        return rec

    def _notify(self, rec: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(rec)
            except Exception:  # noqa: BLE001 - a failing printer must not stop the listener
                log.debug("on_event failed", exc_info=True)

    # --- for callers and tests ----------------------------------------------------------------------------------
    def studies(self) -> dict[str, dict[str, Any]]:
        """The studies the listener knows: instances, bytes, whether they await classification."""
        with self._lock:
            return {u: {"instances": s.instances, "bytes": s.bytes, "pending": s.dirty, "busy": s.busy}
                    for u, s in self._studies.items()}

    @property
    def spool_bytes(self) -> int:
        return self._spool_bytes


def journal_events(path: Path, study_uid: str | None = None, events: Iterable[str] | None = None
                   ) -> list[dict[str, Any]]:
    """The records of a listener journal, optionally only one study's and only some events."""
    want = set(events) if events is not None else None
    return [r for r in read_journal(path)
            if (study_uid is None or r.get("study_uid") == study_uid) and (want is None or r["event"] in want)]
