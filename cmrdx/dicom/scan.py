"""Scan a folder / zip into studies and series, reading headers only.

Files that are not DICOM, or whose header is unreadable, are skipped and counted by reason: never fatal.
pydicom's complaints about the files that are read (non-conformant values, ...) are counted by kind per study
(``ScanResult.read_warnings``), never printed per file.
"""

from __future__ import annotations

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
    capture_read_warnings,
    frames_from_dataset,
    read_series_header,
    series_from_dataset,
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


def scan(path: str | os.PathLike[str]) -> ScanResult:
    """Read every object's header under ``path`` and group by StudyInstanceUID, then SeriesInstanceUID.

    Series within a study are ordered by SeriesNumber then UID. Frames keep their file order; geometry-based
    ordering is the assembly's job.
    """
    return scan_refs(iter_refs(path), str(path))


def scan_refs(refs: Iterable[FileRef], root: str,
              on_file: Callable[[FileRef, Dataset | None], None] | None = None) -> ScanResult:
    """``scan`` over an explicit list of objects (a batch run's files of one study, spread over folders).
    ``on_file(ref, header or None)`` sees every file's header as it is read (a batch's discovery uses it)."""
    t0 = time.perf_counter()
    res = ScanResult(root=root)
    by_series: dict[str, Series] = {}
    for ref in refs:
        res.files_scanned += 1
        with capture_read_warnings() as kinds:
            study_uid = _read_one(res, by_series, ref, on_file)
        if kinds:
            res.read_warnings.setdefault(study_uid or "", ReadWarnings()).add(kinds, ref)
    for s in by_series.values():
        res.studies.setdefault(s.study_uid, []).append(s)
    for uid in res.studies:
        res.studies[uid].sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid))
    res.seconds = time.perf_counter() - t0
    return res


def _read_one(res: ScanResult, by_series: dict[str, Series], ref: FileRef,
              on_file: Callable[[FileRef, Dataset | None], None] | None) -> str | None:
    """Read one file's header into ``by_series``; its StudyInstanceUID, or None when it was skipped."""
    ds, why = read_series_header(ref)
    if on_file is not None:
        on_file(ref, ds)
    if ds is None:
        _skip(res, why or "unreadable", ref)
        return None
    sop = str(ds.get("SOPClassUID", ""))
    if sop == MEDIA_STORAGE_DIRECTORY or ds.get("DirectoryRecordSequence") is not None:
        _skip(res, "DICOMDIR (directory index)", ref)
        return None
    if "SeriesInstanceUID" not in ds or ("SOPClassUID" not in ds and "Modality" not in ds):
        # A file cut short inside its header parses as a few elements and then nothing.
        _skip(res, "incomplete header (truncated file?)", ref)
        return None
    try:
        series_uid = str(ds.SeriesInstanceUID)
        have = by_series.get(series_uid)
        if have is None:
            have = by_series[series_uid] = series_from_dataset(ds, ref)
        else:
            # Series identity is parsed once per series; later files add only their frames.
            have.frames.extend(frames_from_dataset(ds, ref) if "Rows" in ds else [])
            if have.rr_interval is None:
                have.rr_interval = series_from_dataset(ds, ref).rr_interval
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        log.warning("%s: header could not be interpreted (%s), skipped", ref, exc.__class__.__name__)
        _skip(res, "uninterpretable header", ref)
        return None
    return have.study_uid


def _skip(res: ScanResult, reason: str, ref: FileRef) -> None:
    res.files_skipped[reason] += 1
    res.skipped_examples.setdefault(reason, str(ref))
