"""Discovery: an archive's files grouped by StudyInstanceUID, every header read once, in worker processes.

Discovery also leaves the parsed series of each study in the run's state folder (``headers/``), patient
identifiers removed, so the worker that later prepares a study reads no header a second time; and it saves
its result (``studies.json``): every file listed with its size, modification time, study and instance. A
resumed run lists the archive again (no header is read for that) and reads the headers of new and modified
files only, so it sees the studies added, changed (a file more, fewer, or rewritten) and removed since.

A source that lists studies rather than files (a PACS query, ``query.PacsQuery``) gives one entry per study,
its address ``pacs://NODE/STUDY_UID`` in place of a file and what the node says of its size (series and
instance counts) in place of the SOPInstanceUID: the same index, grouping, fingerprints and comparison with the
earlier run (``refresh_listed``), so added, changed and removed studies mean the same for both sources.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cmrdx import config
from cmrdx.errors import CmrdxError
from cmrdx.fileio import atomic_write
from cmrdx.pacs.config import is_address

# One listed file: (str(FileRef), size, modification time in ns, StudyInstanceUID or "", SOPInstanceUID or, for a
# file that joined no study, the reason it was skipped). Size and time are the file's, or its zip's. A listed
# study (a PACS query's hit): (its address, 0, 0, StudyInstanceUID, its fingerprint on the node).
Entry = tuple[str, int, int, str, str]

DISCOVERY_SCHEMA = "cmrdx-batch-discovery/2"


@dataclass
class Discovery:
    """Every study of an archive: StudyInstanceUID -> its files (str(FileRef)), sorted; duplicates dropped."""

    studies: dict[str, list[str]]
    duplicates: dict[str, int] = field(default_factory=dict)  # study -> files dropped as duplicate SOP instances
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> files
    files: int = 0
    index: list[Entry] = field(default_factory=list)  # every listed file, in listing order (empty: not known)

    def fingerprints(self, root: str) -> dict[str, str]:
        """StudyInstanceUID -> a hash of its files (paths relative to ``root``, the archive as the listing was
        given, sizes and modification times, instances; dropped duplicates included): equal while the study is
        unchanged, wherever the archive was moved. A zip member has its zip's size and time: a zip rewritten
        changes every study in it. A listed study's entry holds its fingerprint on the node."""
        import hashlib

        per: dict[str, list[str]] = {}
        for ref, size, mtime, uid, sop in self.index:
            if uid:
                per.setdefault(uid, []).append(f"{_relative(ref, root)}\0{size}\0{mtime}\0{sop}")
        return {uid: hashlib.sha256("\n".join(sorted(v)).encode("utf-8", "surrogateescape")).hexdigest()
                for uid, v in per.items()}


@dataclass
class DiscoveryUpdate:
    """A run's discovery and what changed in the archive since the discovery of an earlier run on the same
    results (``previous``: there was one). ``added``, ``changed`` and ``removed`` are StudyInstanceUIDs."""

    discovery: Discovery
    previous: bool = False
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    chunks: int = 0  # header files' chunk numbers used so far (the next discovery of new files starts here)


def _relative(ref: str, root: str) -> str:
    """A file's name relative to the archive ``root`` (a zip member: its zip's, then ``!member``); a study's
    address as it is."""
    if is_address(ref):
        return ref
    r = file_ref(ref)
    try:
        rel = os.path.relpath(r.path, root)
    except ValueError:  # another drive (Windows)
        rel = r.path
    return rel if r.member is None else f"{rel}!{r.member}"


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


def source_folder(files: Sequence[str], archive: str | os.PathLike[str]) -> str:
    """The study's folder relative to the archive (common parent of its files); a listed study's address."""
    if len(files) == 1 and is_address(files[0]):
        return files[0]
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


def _listing(archive: str | os.PathLike[str], not_read: Counter[str] | None = None) -> list[tuple[str, int, int]]:
    """The archive's candidate files, in listing order, each with its size and modification time (a zip
    member's are its zip's): what tells a resumed run which files are new or modified, without reading any.
    Entries never opened (pipes, devices, broken links, zip members over the limits) are counted by reason in
    ``not_read``."""
    from cmrdx.dicom.source import iter_refs

    def on_skip(where: str, why: str) -> None:
        if not_read is not None:
            not_read[why] += 1

    stats: dict[str, tuple[int, int]] = {}
    out = []
    for ref in iter_refs(archive, on_skip=on_skip):
        st = stats.get(ref.path)
        if st is None:
            try:
                s = os.stat(ref.path)
                st = stats[ref.path] = (s.st_size, s.st_mtime_ns)
            except OSError:  # gone since it was listed: read (and skipped) as any unreadable file
                st = (-1, -1)
        out.append((str(ref), *st))
    return out


def _read_headers(listing: Sequence[tuple[str, int, int]], workers: int | None, chunk: int, headers: Path | None,
                  first_chunk: int = 0) -> tuple[list[Entry], int]:
    """Read the headers of ``listing``'s files in chunks (in ``workers`` processes); the entries, in listing
    order, and the number of chunks (their header files are numbered from ``first_chunk``)."""
    refs = [r for r, _, _ in listing]
    jobs = [(first_chunk + k, refs[i:i + chunk], str(headers) if headers else None)
            for k, i in enumerate(range(0, len(refs), chunk))]
    workers = workers or config.cpu_count()
    if workers > 1 and len(jobs) > 1:
        with cf.ProcessPoolExecutor(max_workers=workers, initializer=exit_with_parent) as ex:
            results = list(ex.map(_discover_chunk, jobs))
    else:
        results = [_discover_chunk(j) for j in jobs]
    read = {r: (uid, sop) for part in results for r, uid, sop in part}
    return [(r, size, mtime, *read.get(r, ("", "unreadable"))) for r, size, mtime in listing], len(jobs)


def _group(index: list[Entry]) -> Discovery:
    """Files grouped by study, in listing order; a second copy of an instance (same SOPInstanceUID) dropped."""
    studies: dict[str, list[str]] = {}
    seen: dict[str, set[str]] = {}
    dup: Counter = Counter()
    skipped: Counter = Counter()
    for r, _, _, uid, sop in index:
        if not uid:
            skipped[sop] += 1
            continue
        s = seen.setdefault(uid, set())
        if sop and sop in s:
            dup[uid] += 1
            continue
        s.add(sop)
        studies.setdefault(uid, []).append(r)
    return Discovery({u: sorted(f) for u, f in sorted(studies.items())}, dict(dup), dict(skipped), len(index), index)


def discover(archive: str | os.PathLike[str], workers: int | None = None, chunk: int = 512,
             headers: Path | None = None) -> Discovery:
    """Group an archive's files by StudyInstanceUID, reading every header once, in ``workers`` processes (on a big
    archive this pass is a large part of the run). With ``headers``, the parsed series are kept there on disk
    (memory stays bounded) for the study workers. A study whose files are spread over folders is one study; a
    second copy of an instance (same SOPInstanceUID) is dropped. The result does not depend on workers."""
    not_read: Counter[str] = Counter()
    index, _ = _read_headers(_listing(archive, not_read), workers, chunk, headers)
    return _with_not_read(_group(index), not_read)


def _with_not_read(disc: Discovery, not_read: Counter[str]) -> Discovery:
    """Add the listing's never-opened entries to the discovery's skipped files, by reason."""
    for why, n in not_read.items():
        disc.skipped[why] = disc.skipped.get(why, 0) + n
    return disc


def _is_entry(e: object) -> bool:
    return (isinstance(e, list) and len(e) == 5 and isinstance(e[0], str) and isinstance(e[1], int)
            and isinstance(e[2], int) and isinstance(e[3], str) and isinstance(e[4], str))


def read_discovery(state: Path) -> tuple[str, str, Discovery, int] | None:
    """The discovery saved in a run's state folder (``STATE/studies.json``): (the archive's resolved path, the
    archive as it was given, the discovery, the header files' chunks used), or None when there is none. A
    discovery saved by an earlier version (no file index) is read too. A file that is not what a run saved is a
    clear error, naming it and the fix."""
    f = Path(state) / "studies.json"
    if not f.exists():
        return None
    try:
        d = json.loads(f.read_bytes())
        if not isinstance(d, dict) or not isinstance(d.get("archive"), str):
            raise ValueError("not the discovery of a batch run")
        if "index" in d:
            if not (isinstance(d["index"], list) and all(map(_is_entry, d["index"]))
                    and isinstance(d.get("root"), str) and isinstance(d.get("chunks"), int)):
                raise ValueError("its file index is damaged")
            disc = _group([(e[0], e[1], e[2], e[3], e[4]) for e in d["index"]])
            return d["archive"], d["root"], disc, d["chunks"]
        if not (isinstance(d.get("studies"), dict)
                and all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in d["studies"].values())
                and isinstance(d.get("duplicates", {}), dict) and isinstance(d.get("skipped", {}), dict)
                and isinstance(d.get("files", 0), int)):
            raise ValueError("not the discovery of a batch run")
    except (OSError, ValueError, RecursionError) as exc:
        raise CmrdxError(f"{f}: unreadable discovery state ({exc})",
                         hint=f"delete {f} to read the archive's headers again (studies in the journal are kept), "
                              f"or delete {Path(state)} to start the run again") from None
    disc = Discovery(d["studies"], d.get("duplicates", {}), d.get("skipped", {}), d.get("files", 0))
    return d["archive"], d["archive"], disc, 0


def save_discovery(state: Path, archive: Path | str, update: DiscoveryUpdate) -> None:
    """Save a run's discovery (``STATE/studies.json``), atomically: the baseline the next run compares with.
    ``archive``: the archive folder, or the key of a listed source (``refresh_listed``)."""
    key, root = (str(archive.resolve()), str(archive)) if isinstance(archive, Path) else (archive, archive)
    atomic_write(Path(state) / "studies.json", json.dumps({
        "schema": DISCOVERY_SCHEMA, "archive": key, "root": root, "chunks": update.chunks,
        "index": update.discovery.index}, separators=(",", ":")))


def _prune_headers(headers: Path, keep: set[str], chunks: int) -> None:
    """Leave in ``headers`` only what the saved discovery wrote: the folders of studies ``keep``, header files of
    chunks below ``chunks``. What an interrupted discovery of new files left goes, so it is never merged twice."""
    import shutil

    if not headers.is_dir():
        return
    folders = {headers_path(headers, uid, 0).parent.name for uid in keep}
    for d in headers.iterdir():
        if d.name not in folders:
            shutil.rmtree(d, ignore_errors=True)
            continue
        for f in d.glob("*.pkl"):
            if not f.stem.isdigit() or int(f.stem) >= chunks:
                f.unlink(missing_ok=True)


def refresh_discovery(archive: Path, state: Path, workers: int | None = None, chunk: int = 512) -> DiscoveryUpdate:
    """The archive's discovery for a run on results whose state folder is ``state``, and what changed since the
    discovery an earlier run saved there. The archive is listed again; only the headers of files that are new
    or modified (size or modification time) are read. Nothing is saved (``save_discovery``, once the journal
    knows what changed)."""
    import shutil

    saved = read_discovery(state)
    headers = Path(state) / "headers"
    not_read: Counter[str] = Counter()
    listing = _listing(archive, not_read)
    if saved is None or saved[0] != str(archive.resolve()) or not saved[2].index:
        # first run, another archive, or a discovery without a file index: read every header
        shutil.rmtree(headers, ignore_errors=True)  # left by a discovery that was interrupted
        index, chunks = _read_headers(listing, workers, chunk, headers)
        update = DiscoveryUpdate(_with_not_read(_group(index), not_read), previous=saved is not None, chunks=chunks)
        if saved is not None:
            _compare(update, saved[2], saved[1], str(archive))
        return update
    _, root, old, chunks = saved
    known = {e[0]: e for e in old.index}
    fresh = [x for x in listing if (k := known.get(x[0])) is None or (k[1], k[2]) != (x[1], x[2])]
    got: dict[str, Entry] = {}
    if fresh:
        _prune_headers(headers, set(old.studies), chunks)
        entries, n = _read_headers(fresh, workers, chunk, headers, first_chunk=chunks)
        got = {e[0]: e for e in entries}
        chunks += n
    index = [got.get(r) or known[r] for r, _, _ in listing]
    update = DiscoveryUpdate(_with_not_read(_group(index), not_read), previous=True, chunks=chunks)
    _compare(update, old, root, str(archive))
    for uid in update.changed + update.removed:
        # header files of a changed study mix its old and new files: its worker reads the study's headers itself
        shutil.rmtree(headers_path(headers, uid, 0).parent, ignore_errors=True)
    return update


def refresh_listed(key: str, index: list[Entry], state: Path) -> DiscoveryUpdate:
    """The discovery of a source that lists its studies (``index``: one entry per study, its address and its
    fingerprint; no header to read), and what changed since the discovery an earlier run saved in ``state``:
    a study whose fingerprint changed is scored again, one the listing lost is removed. ``key`` names the
    source (``save_discovery``). Nothing is saved."""
    import shutil

    saved = read_discovery(state)
    shutil.rmtree(Path(state) / "headers", ignore_errors=True)  # a listed study's worker reads its own headers
    update = DiscoveryUpdate(_group(index), previous=saved is not None)
    if saved is not None:
        _compare(update, saved[2], saved[1], key)
    return update


class StudySource(Protocol):
    """Where a batch run's studies come from: an archive folder (``ArchiveFolder``) or a PACS query
    (``query.PacsQuery``). ``root``: what the records' sources are relative to; ``pacs_config``: the PACS
    configuration the reader workers use (None: theirs by default)."""

    @property
    def root(self) -> str: ...

    @property
    def pacs_config(self) -> str | None: ...

    def describe(self) -> str: ...

    def refresh(self, state: Path, workers: int | None = None) -> DiscoveryUpdate:
        """The discovery now, and what changed since the one saved in ``state``; nothing saved."""
        ...

    def save(self, state: Path, update: DiscoveryUpdate) -> None: ...


@dataclass
class ArchiveFolder:
    """An archive folder's studies: its files' headers, read once (``refresh_discovery``)."""

    archive: Path
    pacs_config: str | None = None

    @property
    def root(self) -> str:
        return str(self.archive)

    def describe(self) -> str:
        return str(self.archive)

    def refresh(self, state: Path, workers: int | None = None) -> DiscoveryUpdate:
        return refresh_discovery(self.archive, state, workers)

    def save(self, state: Path, update: DiscoveryUpdate) -> None:
        save_discovery(state, self.archive, update)


def _compare(update: DiscoveryUpdate, old: Discovery, old_root: str, root: str) -> None:
    """Fill ``update``'s added, changed and removed studies against the ``old`` discovery."""
    new = update.discovery
    update.added = sorted(set(new.studies) - set(old.studies))
    update.removed = sorted(set(old.studies) - set(new.studies))
    both = sorted(set(new.studies) & set(old.studies))
    if old.index:
        before, now = old.fingerprints(old_root), new.fingerprints(root)
        update.changed = [u for u in both if before.get(u) != now.get(u)]
    else:  # an earlier version's discovery knows the files, not their sizes and times
        update.changed = [u for u in both if sorted(_relative(f, old_root) for f in old.studies[u])
                          != sorted(_relative(f, root) for f in new.studies[u])]

