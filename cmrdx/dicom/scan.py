"""Scan a folder / zip into studies and series, reading headers only.

Files that are not DICOM, or whose header is unreadable, are skipped and counted by reason: never fatal. So are
entries that are never opened (named pipes, devices, zip members over the limits: ``cmrdx.dicom.source``).
pydicom's complaints about the files that are read (non-conformant values, ...) and the reader's own (a frame
count the pixel data does not hold) are counted by kind per study (``ScanResult.read_warnings``), never printed
per file.

A second file with the SOPInstanceUID of one already read (in the same series) is not read again: with the same
pixel data it is a copy, counted as skipped; with other pixel data the two are in conflict, the file first in path
order is used and the series records the conflict (``Series.issues``), which the assembly reports.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cmrdx.dicom.series import (
    MEDIA_STORAGE_DIRECTORY,
    ReadWarnings,
    Series,
    StoredPixels,
    _text_values,
    capture_read_warnings,
    frames_from_dataset,
    read_series_header,
    series_from_dataset,
    stored_pixels,
)
from cmrdx.dicom.source import FileRef, iter_refs

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)


@dataclass
class ScanResult:
    """Everything a scan found: series grouped by study, what was skipped (reason -> count), and what pydicom
    complained about in the files read (``read_warnings``: StudyInstanceUID -> ReadWarnings; "" for files that
    joined no study)."""

    root: str
    studies: dict[str, list[Series]] = field(default_factory=dict)
    files_scanned: int = 0
    files_skipped: Counter = field(default_factory=Counter)
    skipped_examples: dict[str, str] = field(default_factory=dict)  # reason -> one file, for messages
    read_warnings: dict[str, ReadWarnings] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_series(self) -> int:
        return sum(len(v) for v in self.studies.values())

    @property
    def n_dicom(self) -> int:
        return sum(len(s.frames) if not s.is_enhanced else s.n_files for v in self.studies.values() for s in v)


# Skip reasons of files that were read but not taken (the others come from ``source`` and ``pixeldata``).
SKIP_NO_SERIES_UID = "no SeriesInstanceUID"
SKIP_NO_SOP_CLASS = "no SOPClassUID or Modality"
SKIP_CUT_SHORT = "header cut short (truncated file)"
SKIP_COPY = "copy of another file (same SOPInstanceUID and pixel data)"
SKIP_CONFLICT = "conflicting copy (same SOPInstanceUID, different pixel data)"


def scan(path: str | os.PathLike[str]) -> ScanResult:
    """Read every object's header under ``path`` and group by StudyInstanceUID, then SeriesInstanceUID.

    Series within a study are ordered by SeriesNumber then UID. Frames keep their file order; geometry-based
    ordering is the assembly's job. Entries that are not read at all (not regular files, zip members over the
    limits, corrupt archives) are counted as scanned and skipped, with their reason.
    """
    not_read: list[tuple[str, str]] = []
    res = scan_refs(iter_refs(path, on_skip=lambda where, why: not_read.append((where, why))), str(path))
    for where, why in not_read:
        res.files_scanned += 1
        _skip(res, why, where)
    return res


@dataclass
class _Instances:
    """The SOPInstanceUIDs read so far (per series), and conflicts between copies."""

    first: dict[tuple[str, str], tuple[FileRef, StoredPixels]] = field(default_factory=dict)
    conflicts: dict[str, list[tuple[FileRef, FileRef]]] = field(default_factory=dict)  # series -> (kept, dropped)


def scan_refs(refs: Iterable[FileRef], root: str,
              on_file: Callable[[FileRef, Dataset | None], None] | None = None) -> ScanResult:
    """``scan`` over an explicit list of objects (a batch run's files of one study, spread over folders).
    ``on_file(ref, header or None)`` sees every file's header as it is read (a batch's discovery uses it)."""
    t0 = time.perf_counter()
    res = ScanResult(root=root)
    by_series: dict[str, Series] = {}
    instances = _Instances()
    for ref in refs:
        res.files_scanned += 1
        with capture_read_warnings() as kinds:
            study_uid = _read_one(res, by_series, ref, on_file, instances)
        if kinds:
            res.read_warnings.setdefault(study_uid or "", ReadWarnings()).add(kinds, ref)
    for series_uid, pairs in instances.conflicts.items():
        kept, dropped = pairs[0]
        by_series[series_uid].issues.append(
            f"{len(pairs)} SOPInstanceUID{'s' if len(pairs) != 1 else ''} stored twice with different pixel data "
            f"(e.g. {_rel(kept, root)} and {_rel(dropped, root)}): the file first in path order is used")
    _group(res, by_series)
    res.seconds = time.perf_counter() - t0
    return res


def scan_datasets(headers: Iterable[tuple[Dataset, FileRef]], root: str) -> ScanResult:
    """``scan`` over headers that were not read from files here: data sets a PACS answered with (WADO-RS metadata,
    C-FIND at image level), each with the ``FileRef`` its object will be read from once it is retrieved.

    The same grouping and rules as for files, except the copy check: a second data set of one SOPInstanceUID is
    counted as a copy without comparing pixels (a PACS holds one object per SOPInstanceUID; there are none here to
    compare). Frame counts are the headers' own (no stored pixel data bounds them yet; decoding checks them)."""
    t0 = time.perf_counter()
    res = ScanResult(root=root)
    by_series: dict[str, Series] = {}
    seen: set[tuple[str, str]] = set()
    for ds, ref in headers:
        res.files_scanned += 1
        with capture_read_warnings() as kinds:
            sop_uid = (_text_values(ds, "SOPInstanceUID") or [""])[0]
            key = (str(ds.get("SeriesInstanceUID", "") or ""), sop_uid)
            if sop_uid and key in seen:
                _skip(res, SKIP_COPY, ref)
                study_uid: str | None = None
            else:
                seen.add(key)
                study_uid = _add_header(res, by_series, ref, ds, None)
        if kinds:
            res.read_warnings.setdefault(study_uid or "", ReadWarnings()).add(kinds, ref)
    _group(res, by_series)
    res.seconds = time.perf_counter() - t0
    return res


def _group(res: ScanResult, by_series: dict[str, Series]) -> None:
    for s in by_series.values():
        res.studies.setdefault(s.study_uid, []).append(s)
    for uid in res.studies:
        res.studies[uid].sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid))


def _read_one(res: ScanResult, by_series: dict[str, Series], ref: FileRef,
              on_file: Callable[[FileRef, Dataset | None], None] | None, instances: _Instances) -> str | None:
    """Read one file's header into ``by_series``; its StudyInstanceUID, or None when it was skipped."""
    ds, why = read_series_header(ref)
    if on_file is not None:
        on_file(ref, ds)
    if ds is None:
        _skip(res, why or "unreadable", ref)
        return None
    return _add_header(res, by_series, ref, ds, instances)


def _add_header(res: ScanResult, by_series: dict[str, Series], ref: FileRef, ds: Dataset,
                instances: _Instances | None) -> str | None:
    """One header into ``by_series`` (copies of a SOPInstanceUID checked against ``instances`` when given); its
    StudyInstanceUID, or None when it was skipped."""
    sop = str(ds.get("SOPClassUID", ""))
    if sop == MEDIA_STORAGE_DIRECTORY or ds.get("DirectoryRecordSequence") is not None:
        _skip(res, "DICOMDIR (directory index)", ref)
        return None
    stored = stored_pixels(ds)
    if not (_text_values(ds, "SeriesInstanceUID") or [""])[0]:
        _skip(res, _incomplete(stored, SKIP_NO_SERIES_UID), ref)
        return None
    if "SOPClassUID" not in ds and "Modality" not in ds:
        _skip(res, _incomplete(stored, SKIP_NO_SOP_CLASS), ref)
        return None
    try:
        series_uid = str(ds.SeriesInstanceUID)
        sop_uid = (_text_values(ds, "SOPInstanceUID") or [""])[0]
        if sop_uid and instances is not None:
            key = (series_uid, sop_uid)
            first = instances.first.get(key)
            if first is not None:
                if _same_pixels(first, (ref, stored), single_frame=_single_frame(ds)):
                    _skip(res, SKIP_COPY, ref)
                else:
                    _skip(res, SKIP_CONFLICT, ref)
                    instances.conflicts.setdefault(series_uid, []).append((first[0], ref))
                return str(ds.get("StudyInstanceUID", "") or "") or None
            instances.first[key] = (ref, stored)
        have = by_series.get(series_uid)
        if have is None:
            have = by_series[series_uid] = series_from_dataset(ds, ref)
        else:
            # Series identity is parsed once per series; later files add only their frames.
            have.frames.extend(frames_from_dataset(ds, ref) if "Rows" in ds else [])
            if have.rr_interval is None:
                have.rr_interval = series_from_dataset(ds, ref).rr_interval
    except Exception as exc:  # noqa: BLE001 - pydicom converts values as they are read, raising many types
        log.warning("%s: header could not be interpreted (%s), skipped", ref, exc.__class__.__name__)
        _skip(res, "uninterpretable header", ref)
        return None
    return have.study_uid


def _incomplete(stored: StoredPixels, missing: str) -> str:
    """Why a file without the elements that place it in a series is skipped. A file cut short inside its header
    parses as a few elements and then nothing, without a word from pydicom: cut short when one of its elements runs
    past the end of the file; possibly cut short when it ends without pixel data; else it lacks the element."""
    if stored.cut_short:
        return SKIP_CUT_SHORT
    if stored.known and stored.pixel_data is None:
        return f"{missing} and no pixel data (cut short?)"
    return missing


def _skip(res: ScanResult, reason: str, ref: FileRef | str) -> None:
    res.files_skipped[reason] += 1
    res.skipped_examples.setdefault(reason, str(ref))


def _pixel_digest(ref: FileRef, stored: StoredPixels) -> str | None:
    """SHA-256 of the stored pixel data of ``ref`` (None when it cannot be located or read)."""
    info = stored.pixel_data
    if info is None:
        return None
    h = hashlib.sha256()
    try:
        with ref.open() as fp:
            fp.seek(info.value_offset)
            left = info.available if info.length is not None else -1
            while left != 0:
                chunk = fp.read(1 << 20 if left < 0 else min(1 << 20, left))
                if not chunk:
                    break
                h.update(chunk)
                if left > 0:
                    left -= len(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _same_pixels(a: tuple[FileRef, StoredPixels], b: tuple[FileRef, StoredPixels], single_frame: bool) -> bool:
    """Whether two files hold the same image: the same stored pixel data or, for single-frame objects stored
    differently (another transfer syntax), the same decoded pixels. Unknown counts as different: the conflict is
    reported rather than hidden."""
    da, db = _pixel_digest(*a), _pixel_digest(*b)
    if da is not None and da == db:
        return True
    if not single_frame:
        return False
    from cmrdx.dicom.pixels import pixel_digest

    pa, pb = pixel_digest(a[0]), pixel_digest(b[0])
    return pa is not None and pa == pb


def _single_frame(ds: Dataset) -> bool:
    v = str(ds.get("NumberOfFrames", "") or "").strip()
    return v in ("", "1")


def _rel(ref: FileRef, root: str) -> str:
    """``ref`` relative to the scanned folder when it lies under it (shorter in messages), else as it is."""
    text = str(ref)
    if os.path.isdir(root):
        rel = os.path.relpath(text, root)
        if not rel.startswith(".."):
            return rel
    return text
