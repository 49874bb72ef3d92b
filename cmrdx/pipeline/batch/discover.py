"""Discovery: an archive's files grouped by StudyInstanceUID, every header read once, in worker processes.

Discovery also leaves the parsed series of each study in the run's state folder (``headers/``), patient
identifiers removed, so the worker that later prepares a study reads no header a second time; and it saves
its result (``studies.json``), so a resumed run does not read the archive's headers again.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmrdx import config
from cmrdx.errors import CmrdxError
from cmrdx.fileio import atomic_write


@dataclass
class Discovery:
    """Every study of an archive: StudyInstanceUID -> its files (str(FileRef)), sorted; duplicates dropped."""

    studies: dict[str, list[str]]
    duplicates: dict[str, int] = field(default_factory=dict)  # study -> files dropped as duplicate SOP instances
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> files
    files: int = 0


def exit_with_parent() -> None:
    """Initializer of every worker process of a batch run (discovery's and the local engine's): the worker ends
    when the run's process ends, however it ends. A run killed with SIGKILL runs no cleanup, and its idle workers
    would otherwise wait for work forever (each holds its own end of the work queue open), re-parented to init.

    On Linux the kernel kills the worker when its parent dies (``PR_SET_PDEATHSIG``), even while the worker is
    busy in a decoder; everywhere, a thread waits on multiprocessing's parent sentinel (a pipe the parent holds
    open until it ends) and exits the worker when it closes. A parent that died before this ran is noticed too.
    (It lives in this module, the package's lowest, so that every pool of the package can use it.)"""
    import multiprocessing
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl in this libc: the sentinel thread still does it
            pass
    parent = multiprocessing.parent_process()
    if parent is None:  # not started by multiprocessing: nothing to watch
        return
    if not parent.is_alive():
        os._exit(1)
    threading.Thread(target=_exit_when_gone, args=(parent,), name="cmrdx-exit-with-parent", daemon=True).start()


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _exit_when_gone(parent) -> None:
    parent.join()  # returns when the parent's sentinel closes: the parent has ended
    os._exit(1)


def headers_path(headers: Path, uid: str, chunk_id: int) -> Path:
    """Where discovery leaves one chunk's parsed series of study ``uid`` (the folder is named by a hash)."""
    import hashlib

    return Path(headers) / hashlib.sha256(uid.encode()).hexdigest()[:24] / f"{chunk_id:07d}.pkl"


def file_ref(s: str):
    """A FileRef from its string form (``path`` or ``archive.zip!member``)."""
    from cmrdx.dicom.source import FileRef

    if "!" in s and s.split("!", 1)[0].lower().endswith(".zip"):
        path, member = s.split("!", 1)
        return FileRef(path, member)
    return FileRef(s)


def source_folder(files: Sequence[str], archive: Path) -> str:
    """The study's folder relative to the archive (common parent of its files)."""
    parents = [os.path.dirname(f.split("!", 1)[0]) for f in files]
    common = os.path.commonpath(parents) if parents else str(archive)
    try:
        return os.path.relpath(common, archive)
    except ValueError:
        return common


def _discover_chunk(job: tuple[int, list[str], str | None]) -> list[tuple[str, str, str]]:
    """Worker: read a chunk's headers once. Returns (file, StudyInstanceUID or "", SOPInstanceUID or a skip
    reason) per file and, when a headers folder is given, leaves the parsed series of each study there, so the
    worker that later prepares the study does not read these headers a second time."""
    import pickle

    from cmrdx.dicom.scan import scan_refs

    chunk_id, refs, headers = job
    out: list[tuple[str, str, str]] = []

    def seen(ref, ds) -> None:
        uid = str(ds.get("StudyInstanceUID", "") or "") if ds is not None else ""
        if ds is None:
            out.append((str(ref), "", "unreadable or not DICOM"))
        elif not uid:
            out.append((str(ref), "", "no StudyInstanceUID"))
        else:
            out.append((str(ref), uid, str(ds.get("SOPInstanceUID", "") or "")))

    try:
        res = scan_refs((file_ref(r) for r in refs), root="discovery", on_file=seen)
    except Exception:  # noqa: BLE001 - a file that crashes the reader must not take its chunk's other files along
        crashing = set()
        for r in refs:
            try:
                scan_refs([file_ref(r)], root="discovery")
            except Exception:  # noqa: BLE001 - the file is reported as skipped, with the reason
                crashing.add(r)
        out.clear()
        rest = [r for r in refs if r not in crashing]
        try:
            res = scan_refs((file_ref(r) for r in rest), root="discovery", on_file=seen)
        except Exception:  # noqa: BLE001 - only files that crash together: give up on the chunk
            return [(r, "", "unreadable (the header reader failed)") for r in refs]
        out.extend((r, "", "unreadable (the header reader failed)") for r in sorted(crashing))
    if headers is not None:
        for uid, series in _series_by_study(res, out).items():
            for x in series:
                x.phi = {}  # patient identifiers never reach the state folder
            # a kill never leaves a torn header file
            atomic_write(headers_path(Path(headers), uid, chunk_id), pickle.dumps(series, protocol=pickle.HIGHEST_PROTOCOL))
    return out


def _series_by_study(res, seen: list[tuple[str, str, str]]) -> dict[str, list]:
    """A chunk's series per study, every series holding files of its own study only.

    Series belong to their study: two studies can carry the same SeriesInstanceUID (an anonymisation that gave
    a copy a new StudyInstanceUID and kept the rest), and a scan that put files of both in one series would
    give one study the other's images and leave the other without them. Should any series of the scan hold
    files of another study, the studies concerned are read again one by one (files from the chunk only)."""
    from cmrdx.dicom.scan import scan_refs

    study_of = {ref: uid for ref, uid, _ in seen if uid}
    tangled: set[str] = set()
    for uid, series in res.studies.items():
        for s in series:
            owners = {study_of.get(str(f.ref), uid) for f in s.frames}
            if owners != {uid}:
                tangled |= owners | {uid}
    out = {uid: series for uid, series in res.studies.items() if uid not in tangled}
    for uid in sorted(tangled):
        own = [file_ref(ref) for ref, u, _ in seen if u == uid]
        out[uid] = scan_refs(own, root="discovery").studies.get(uid, [])
    return out


def discover(archive: str | os.PathLike[str], workers: int | None = None, chunk: int = 512,
             headers: Path | None = None) -> Discovery:
    """Group an archive's files by StudyInstanceUID, reading every header once, in ``workers`` processes (on a big
    archive this pass is a large part of the run). With ``headers``, the parsed series are kept there on disk
    (memory stays bounded) for the study workers. A study whose files are spread over folders is one study; a
    second copy of an instance (same SOPInstanceUID) is dropped. The result does not depend on workers."""
    from cmrdx.dicom.source import iter_refs

    refs = [str(r) for r in iter_refs(archive)]
    jobs = [(k, refs[i:i + chunk], str(headers) if headers else None) for k, i in enumerate(range(0, len(refs), chunk))]
    workers = workers or config.cpu_count()
    if workers > 1 and len(jobs) > 1:
        with cf.ProcessPoolExecutor(max_workers=workers, initializer=exit_with_parent) as ex:
            results = list(ex.map(_discover_chunk, jobs))
    else:
        results = [_discover_chunk(j) for j in jobs]
    studies: dict[str, list[str]] = {}
    seen: dict[str, set[str]] = {}
    dup: Counter = Counter()
    skipped: Counter = Counter()
    for part in results:
        for r, uid, sop in part:
            if not uid:
                skipped[sop] += 1
                continue
            s = seen.setdefault(uid, set())
            if sop and sop in s:
                dup[uid] += 1
                continue
            s.add(sop)
            studies.setdefault(uid, []).append(r)
    return Discovery({u: sorted(f) for u, f in sorted(studies.items())}, dict(dup), dict(skipped), len(refs))


def read_discovery(state: Path) -> tuple[str, Discovery] | None:
    """The discovery saved in a run's state folder (``STATE/studies.json``) and the archive it was made of, or
    None when there is none. A file that is not what a run saved is a clear error, naming it and the fix."""
    f = Path(state) / "studies.json"
    if not f.exists():
        return None
    try:
        d = json.loads(f.read_bytes())
        if not (isinstance(d, dict) and isinstance(d.get("archive"), str) and isinstance(d.get("studies"), dict)
                and all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in d["studies"].values())
                and isinstance(d.get("duplicates", {}), dict) and isinstance(d.get("skipped", {}), dict)
                and isinstance(d.get("files", 0), int)):
            raise ValueError("not the discovery of a batch run")
    except (OSError, ValueError, RecursionError) as exc:
        raise CmrdxError(f"{f}: unreadable discovery state ({exc})",
                         hint=f"delete {f} to read the archive's headers again (studies in the journal are kept), "
                              f"or delete {Path(state)} to start the run again") from None
    return d["archive"], Discovery(d["studies"], d.get("duplicates", {}), d.get("skipped", {}), d.get("files", 0))


def load_or_discover(archive: Path, state: Path, workers: int | None = None) -> Discovery:
    """Discovery is saved with the journal (``STATE/studies.json``), so a resumed run does not re-read every
    header."""
    saved = read_discovery(state)
    if saved is not None and saved[0] == str(archive.resolve()):
        return saved[1]
    import shutil

    shutil.rmtree(state / "headers", ignore_errors=True)  # left by a discovery that was interrupted
    disc = discover(archive, workers, headers=state / "headers")
    atomic_write(state / "studies.json", json.dumps({
        "archive": str(archive.resolve()), "studies": disc.studies, "duplicates": disc.duplicates,
        "skipped": disc.skipped, "files": disc.files}))
    return disc
