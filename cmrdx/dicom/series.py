"""Typed series from DICOM headers: one model for classic single-frame MR and Enhanced MR multi-frame.

Only headers are read here (``stop_before_pixels``); pixels are decoded later, per frame, by
``cmrdx.dicom.pixels`` once the study assembly knows which frames a recipe uses.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pydicom
import pydicom.datadict
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from cmrdx.dicom.geometry import orientation_problem
from cmrdx.dicom.pixeldata import (
    MAX_FRAMES_PER_OBJECT,
    PixelDataInfo,
    frames_present,
    read_pixel_data_info,
    sniff,
)
from cmrdx.dicom.source import FileRef, UnreadableFileError, stream_size

log = logging.getLogger(__name__)

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.4"
MR_SOP_CLASSES = {MR_IMAGE, ENHANCED_MR, LEGACY_ENHANCED_MR}
ENHANCED_SOP_CLASSES = {ENHANCED_MR, LEGACY_ENHANCED_MR}
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
PRESENTATION_STATE_PREFIX = "1.2.840.10008.5.1.4.1.1.11."
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

# Tags that identify patients: kept apart, shown only with --show-phi.
PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName")


@dataclass
class Frame:
    """One 2D image of a series: a whole single-frame file, or frame ``index`` of a multi-frame file.

    Geometry in the DICOM patient coordinate system (mm). ``trigger_time`` is ms after the R wave.
    """

    ref: FileRef
    index: int | None  # frame number (0-based) inside a multi-frame object; None for single-frame
    rows: int
    cols: int
    position: np.ndarray | None  # (3,) ImagePositionPatient, mm
    orientation: np.ndarray | None  # (6,) row then column direction cosines
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing), mm
    slice_thickness: float | None
    trigger_time: float | None
    temporal_index: int | None
    instance_number: int | None
    acquisition_time: float | None  # seconds since midnight
    rescale: tuple[float, float]  # (slope, intercept)
    # Values that vary image by image inside one series and tell series types apart: the inversion times of a
    # MOLLI, the echo times of a multi-echo T2*, the magnitude and real images of a PSIR pair kept in one series.
    image_type: tuple[str, ...] = ()  # ImageType (classic) or FrameType (Enhanced MR), upper case
    inversion_time: float | None = None  # ms
    echo_time: float | None = None  # ms
    complex_component: str | None = None  # Enhanced MR: MAGNITUDE, PHASE, REAL or IMAGINARY
    acquisition_contrast: str | None = None  # Enhanced MR: T1, T2, PERFUSION, FLOW_ENCODED, TAGGING, ...
    # Why ``position`` or ``orientation`` is None (missing, not finite, not unit vectors, ...), for the assembly's
    # warnings; None when both are usable.
    geometry_issue: str | None = None

    @cached_property
    def normal(self) -> np.ndarray | None:
        """Unit slice normal (row x column direction cosines); cached: geometry checks ask for it often."""
        if self.orientation is None:
            return None
        r0, r1, r2, c0, c1, c2 = (float(v) for v in self.orientation)
        n = np.array([r1 * c2 - r2 * c1, r2 * c0 - r0 * c2, r0 * c1 - r1 * c0])
        norm = float(np.sqrt(n @ n))
        return n / norm if norm > 0 else None


@dataclass
class Series:
    """A DICOM series: identity tags plus its frames (headers only).

    ``role``, ``view`` and their reasons are filled in by ``cmrdx.study.roles.classify_series``.
    """

    uid: str
    study_uid: str
    frame_of_reference_uid: str | None
    number: int | None
    modality: str
    sop_class_uid: str
    description: str
    protocol: str
    sequence_name: str
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    image_type: tuple[str, ...]
    inversion_time: float | None
    manufacturer: str
    rr_interval: float | None  # ms
    heart_rate: float | None  # bpm
    cardiac_number_of_images: int | None
    series_time: float | None  # seconds since midnight
    photometric: str
    transfer_syntax: str
    phase_contrast: bool = False
    mr_acquisition_type: str = ""  # MRAcquisitionType: "2D" or "3D"
    # MR pulse-sequence attributes that name a technique (SaturationRecovery, T2Preparation, Tagging, AngioFlag,
    # AcquisitionContrast, ...): keyword -> upper-case value, only those present.
    mr_flags: dict[str, str] = field(default_factory=dict)
    contrast_agent: str = ""  # ContrastBolusAgent: filled on images acquired after contrast
    frames: list[Frame] = field(default_factory=list)
    phi: dict[str, str] = field(default_factory=dict)
    # Problems the scan found in this series' files that change what is read (plain text naming files, never a
    # value from them): e.g. two files with one SOPInstanceUID and different pixel data. The assembly reports
    # them for the series it uses.
    issues: list[str] = field(default_factory=list)
    role: str = "other"
    view: str | None = None
    reason: str = ""
    view_reason: str = ""
    _geom: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def is_enhanced(self) -> bool:
        return self.sop_class_uid in ENHANCED_SOP_CLASSES

    @property
    def n_files(self) -> int:
        return len({f.ref for f in self.frames})

    @property
    def matrix(self) -> tuple[int, int] | None:
        if not self.frames:
            return None
        shapes = [(f.rows, f.cols) for f in self.frames]
        return max(set(shapes), key=shapes.count)

    @property
    def pixel_spacing(self) -> tuple[float, float] | None:
        for f in self.frames:
            if f.pixel_spacing:
                return f.pixel_spacing
        return None

    def _geometry(self) -> tuple[list[list[Frame]], bool]:
        """(slice groups, all planes parallel), computed once per frame count (frames only grow during a scan)."""
        from cmrdx.dicom.geometry import all_parallel, group_by_position

        key = len(self.frames)
        if self._geom is None or self._geom[0] != key:
            self._geom = (key, group_by_position(self.frames), all_parallel(self.frames))
        return self._geom[1], self._geom[2]

    def slice_groups(self) -> list[list[Frame]]:
        """Frames grouped by position along the slice normal (within 0.5 mm), sorted ascending.
        Frames without geometry form one group. Never sorted by SliceLocation or InstanceNumber."""
        return self._geometry()[0]

    @property
    def parallel(self) -> bool:
        return self._geometry()[1]

    @property
    def n_positions(self) -> int:
        """Distinct slice positions; for non-parallel planes (a 3-plane localizer), distinct planes."""
        if not self.parallel:
            return len({(tuple(np.round(f.orientation, 3)), tuple(np.round(f.position, 1)))
                        for f in self.frames if f.orientation is not None and f.position is not None})
        return len(self.slice_groups())

    @property
    def n_phases(self) -> int:
        """Most distinct trigger times at one position (1 when there is no timing)."""
        best = 1
        for g in self.slice_groups():
            tt = {round(f.trigger_time, 1) for f in g if f.trigger_time is not None}
            ti = {f.temporal_index for f in g if f.temporal_index is not None}
            best = max(best, len(tt), len(ti))
        return best

    def summary(self, show_phi: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "series_uid": self.uid,
            "series_number": self.number,
            "description": self.description,
            "protocol": self.protocol,
            "sequence_name": self.sequence_name,
            "modality": self.modality,
            "sop_class_uid": self.sop_class_uid,
            "manufacturer": self.manufacturer,
            "enhanced": self.is_enhanced,
            "files": self.n_files,
            "frames": len(self.frames),
            "positions": self.n_positions,
            "phases": self.n_phases,
            "matrix": list(self.matrix) if self.matrix else None,
            "pixel_spacing": list(self.pixel_spacing) if self.pixel_spacing else None,
            "role": self.role,
            "view": self.view,
            "reason": self.reason,
            "view_reason": self.view_reason,
        }
        issues = getattr(self, "issues", [])  # (series pickled by an older version have none)
        if issues:
            d["issues"] = list(issues)
        if show_phi:
            d["phi"] = dict(self.phi)
        return d


# ---------------------------------------------------------------------------------------------------
# Header parsing


def _s(ds: Dataset, kw: str) -> str:
    v = ds.get(kw)
    if v is None:
        return ""
    if isinstance(v, pydicom.multival.MultiValue):
        return "\\".join(str(x) for x in v)
    return str(v).strip()


def _tuple(ds: Dataset, kw: str) -> tuple[str, ...]:
    v = ds.get(kw)
    if v is None or v == "":
        return ()
    if isinstance(v, (pydicom.multival.MultiValue, list, tuple)):
        return tuple(str(x).strip().upper() for x in v if str(x).strip())
    return tuple(p.strip().upper() for p in str(v).split("\\") if p.strip())


def _float(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        if isinstance(v, (pydicom.multival.MultiValue, list, tuple)):
            v = v[0]
        f = float(v)
    except (TypeError, ValueError, IndexError):
        return None
    return f if np.isfinite(f) else None


def _int(v: Any) -> int | None:
    f = _float(v)
    return int(f) if f is not None else None


def _vec(v: Any, n: int) -> np.ndarray | None:
    if v is None or v == "":
        return None
    try:
        arr = np.array([float(x) for x in v], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _time_seconds(v: Any) -> float | None:
    """DICOM TM ('HHMMSS.frac') or DT ('YYYYMMDDHHMMSS.frac') -> seconds since midnight."""
    s = str(v or "").strip()
    if not s:
        return None
    if len(s) >= 14 and s[:8].isdigit():  # DT
        s = s[8:]
    s = s.split("+")[0].split("-")[0]
    try:
        hh = int(s[0:2]) if len(s) >= 2 else 0
        mm = int(s[2:4]) if len(s) >= 4 else 0
        ss = float(s[4:]) if len(s) > 4 else 0.0
    except ValueError:
        return None
    return hh * 3600 + mm * 60 + ss


def _spacing(v: Any) -> tuple[float, float] | None:
    a = _vec(v, 2)
    return (float(a[0]), float(a[1])) if a is not None and np.all(a > 0) else None


def _first(seq_parent: Dataset | None, seq_kw: str) -> Dataset | None:
    if seq_parent is None:
        return None
    seq = seq_parent.get(seq_kw)
    if seq is None or len(seq) == 0:
        return None
    return seq[0]


def _fg(per_frame: Dataset | None, shared: Dataset | None, seq_kw: str) -> Dataset | None:
    """A functional group item: per-frame first, then shared (per DICOM PS3.3 C.7.6.16)."""
    return _first(per_frame, seq_kw) or _first(shared, seq_kw)


# The only top-level elements the reader uses: pydicom then converts nothing else (a 2-3x faster scan).
# Sequences listed here are read whole (Enhanced MR functional groups, dimension index).
HEADER_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "Modality", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SeriesNumber",
    "SeriesDescription", "ProtocolName", "SequenceName", "PulseSequenceName", "ScanningSequence", "SequenceVariant",
    "ScanOptions", "ImageType", "InversionTime", "InversionRecovery", "PhaseContrast", "Manufacturer", "EchoTime",
    "MRAcquisitionType", "AngioFlag", "ContrastBolusAgent", "AcquisitionContrast", "ComplexImageComponent",
    "SaturationRecovery", "SteadyStatePulseSequence", "EchoPulseSequence", "T2Preparation", "Tagging",
    "BloodSignalNulling",
    "NominalInterval", "HeartRate", "CardiacNumberOfImages", "TriggerTime", "SeriesTime", "AcquisitionTime",
    "AcquisitionDateTime", "InstanceNumber", "TemporalPositionIdentifier", "ImagePositionPatient",
    "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "RescaleSlope", "RescaleIntercept", "Rows",
    "Columns", "NumberOfFrames", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation", "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence", "DimensionIndexSequence", "DirectoryRecordSequence", *PHI_KEYWORDS,
)
def _tags(keywords: tuple[str, ...]) -> list[int]:
    tags = [pydicom.datadict.tag_for_keyword(k) for k in keywords]
    unknown = [k for k, t in zip(keywords, tags) if t is None]
    if unknown:  # a typo here would silently read nothing of that element
        raise ValueError(f"not DICOM keywords: {unknown}")
    return [t for t in tags if t is not None]


_HEADER_TAGS = _tags(HEADER_KEYWORDS)


SNIFF_BYTES = 140  # preamble, "DICM" and the first element's tag: all ``sniff`` needs to decide
DEFLATED = "1.2.840.10008.1.2.1.99"


@dataclass(frozen=True)
class StoredPixels:
    """What the file holds beyond its header: the pixel data element as stored (None when there is none) and
    whether the header ran past the end of the file (a file cut short inside its header)."""

    pixel_data: PixelDataInfo | None
    known: bool  # False when the pixel data could not be located (deflated data sets): nothing is checked
    cut_short: bool = False


def stored_pixels(ds: Dataset) -> StoredPixels:
    """What ``read_series_header`` found beyond the header of ``ds`` (unknown for a data set read otherwise)."""
    got = getattr(ds, "_cmrdx_stored", None)
    return got if isinstance(got, StoredPixels) else StoredPixels(None, known=False)


def _locate_pixels(ds: Dataset, fp: Any) -> StoredPixels:
    """The pixel data element after a ``stop_before_pixels`` read (which leaves ``fp`` at it)."""
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts == DEFLATED:  # the data set was inflated by pydicom from the whole file: positions are its own
        return StoredPixels(None, known=False)
    size = stream_size(fp)
    pos = fp.tell()
    if size is not None and pos > size:  # pydicom skipped over an element longer than the rest of the file
        return StoredPixels(None, known=True, cut_short=True)
    if size is not None and pos >= size:  # no pixel data: was an element it kept cut short?
        for elem in ds.elements():
            tell, length = getattr(elem, "value_tell", None), getattr(elem, "length", None)
            if isinstance(tell, int) and isinstance(length, int) and length != 0xFFFFFFFF and tell + length > size:
                return StoredPixels(None, known=True, cut_short=True)
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return StoredPixels(None, known=False)
    info = read_pixel_data_info(fp, implicit=bool(implicit), little=bool(little), size=size)
    return StoredPixels(info, known=True)


def read_series_header(ref: FileRef) -> tuple[Dataset | None, str | None]:
    """Read one object's header (only HEADER_KEYWORDS). Returns (dataset, None) or (None, skip-reason).

    A file is handed to pydicom only if its first bytes look like DICOM (``pixeldata.sniff``): pydicom told to
    read anything would walk a large non-DICOM file to its end. Where the pixel data starts and how much of it the
    file holds is recorded with the data set (``stored_pixels``), so that no frame count is trusted beyond it."""
    try:
        # Only HEADER_KEYWORDS are parsed and values are converted (and validated) as the reader uses them: run
        # this under ``capture_read_warnings`` so that pydicom's complaints are counted, not printed. pydicom's
        # validation switch is process-wide, so it is left alone (toggling it per file races between threads).
        with ref.open() as fp:
            head = fp.read(SNIFF_BYTES)
            why = sniff(head)
            if why is not None:
                return None, why
            fp.seek(0)
            preamble = head[128:132] == b"DICM"
            # Without a preamble: an old-style or raw data set, read with ``force`` (its first element was checked).
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not preamble, specific_tags=_HEADER_TAGS)
            if not preamble and "SOPClassUID" not in ds and "Modality" not in ds:
                return None, "not DICOM"
            ds._cmrdx_stored = _locate_pixels(ds, fp)
    except UnreadableFileError as exc:
        log.debug("%s: %s", ref, exc.reason)
        return None, exc.reason
    except (InvalidDicomError, EOFError) as exc:
        log.debug("%s: not DICOM (%s)", ref, exc)
        return None, "not DICOM"
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed input; a file is skipped, never fatal
        log.warning("%s: unreadable DICOM header (%s), skipped", ref, exc.__class__.__name__)
        return None, "unreadable header"
    return ds, None


def note_read_warning(kind: str, ref: FileRef) -> None:
    """Record a problem of ``ref`` the reader found itself (a kind, never a value) like pydicom's complaints: into
    the enclosing ``capture_read_warnings`` (counted per study), else logged."""
    sink = _SINK.get()
    if sink is not None:
        sink.append(kind)
    else:
        log.warning("%s: %s", ref.name, kind)


# ---------------------------------------------------------------------------------------------------
# pydicom's complaints while reading: counted by kind per study, never printed per file
#
# pydicom reports a non-conformant value (a UID with a leading zero, a DS longer than 16 characters, ...) twice: on
# its logger and through the warnings module (``pydicom.misc.warn_and_log``); the pixel plugins log on their own
# loggers. On a real study that is one or two lines per file. While ``capture_read_warnings`` is active, both
# routes are turned into kinds in a list instead of printed; the ContextVar makes that per thread (and per
# asyncio task), so concurrent readers each collect their own and nothing accumulates across studies.

READ_WARNING_EXAMPLES = 3  # example file names kept per kind (the names only, never a value)
# Loggers of pydicom and of the pixel-data plugins it calls (their child loggers are covered too).
_READER_LOGGERS = ("pydicom", "pylibjpeg", "openjpeg", "_openjpeg", "jpeg_ls", "libjpeg", "rle", "gdcm")
_PYDICOM_DIR = os.path.dirname(os.path.abspath(pydicom.__file__))

# message -> kind. The kind names what is wrong (and the VR where the message gives it), never the value: the
# messages quote values, which can be identifiers.
_KINDS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), k) for p, k in (
    (r"Invalid value for VR ([A-Z]{2})\b", r"invalid \1 value"),
    (r"not valid for elements with a VR of ([A-Z]{2})\b", r"invalid \1 value"),
    (r"VR of 'DS' values must be <= 16 characters", "DS value too long"),
    (r"exceeds the maximum length of \d+ allowed for VR ([A-Z]{2})\b", r"\1 value too long"),
    (r"cannot be assigned to a tag with VR ([A-Z]{2})\b", r"wrong value type for VR \1"),
    (r"PN component", "invalid PN value"),
    (r"Expected (?:explicit|implicit) VR, but found", "VR mismatch (explicit/implicit)"),
    (r"Unknown VR", "unknown VR"),
    (r"Expected length (?:to be multiple|between)", "invalid value length"),
    (r"allow a value of '60'", "leap second in a time value"),
    (r"Expected sequence item|after delimiter", "malformed sequence"),
    (r"Unknown DICOM tag", "unknown tag"),
    (r"(?i)end of file|EOF", "file ends early"),
    (r"excess padding|non-conformant padding|misses a padding byte", "pixel data padding"),
    (r"'Number of Frames'", "invalid Number of Frames"),
    (r"'Photometric Interpretation'", "photometric interpretation mismatch"),
    (r"compressed pixel data matches the expected number for uncompressed", "transfer syntax mismatch"),
    (r"failed to decode", "decoding plugin failed"),
    (r"'Bits Stored'", "Bits Stored mismatch"),
    (r"Extended Offset Table", "extended offset table mismatch"),
))


def warning_kind(message: str) -> str:
    """A reading warning's kind: what is wrong, without the value (``invalid UI value``, ``DS value too long``,
    ...). An unknown message keeps at most its first few plain words, with quoted text and numbers removed."""
    for pattern, kind in _KINDS:
        m = pattern.search(message)
        if m is not None:
            return m.expand(kind)
    text = re.sub(r"'[^']*'|\"[^\"]*\"|<[^>]*>|\([^)]*\)", " ", message).split(":")[0].split(". ")[0]
    words = [w for w in text.split() if w.isalpha()][:6]
    return ("other: " + " ".join(words).lower()) if words else "other reading warning"


@dataclass
class ReadWarnings:
    """What pydicom (and its pixel plugins) complained about while a study's files were read, by kind: in how
    many files, and a few example file names. The files were read anyway; kinds hold no values (``warning_kind``).
    """

    files: dict[str, set[str]] = field(default_factory=dict)  # kind -> the files (FileRef strings) it was seen in
    examples: dict[str, list[str]] = field(default_factory=dict)  # kind -> up to READ_WARNING_EXAMPLES file names

    def add(self, kinds: Iterable[str], ref: FileRef) -> None:
        """Record ``kinds`` seen while reading ``ref`` (a file counts once per kind however often it warns)."""
        for kind in kinds:
            seen = self.files.setdefault(kind, set())
            if str(ref) in seen:
                continue
            seen.add(str(ref))
            ex = self.examples.setdefault(kind, [])
            if len(ex) < READ_WARNING_EXAMPLES and ref.name not in ex:
                ex.append(ref.name)

    def merge(self, other: ReadWarnings) -> None:
        for kind, refs in other.files.items():
            self.files.setdefault(kind, set()).update(refs)
            ex = self.examples.setdefault(kind, [])
            ex.extend(n for n in other.examples.get(kind, []) if n not in ex)
            del ex[READ_WARNING_EXAMPLES:]

    def __bool__(self) -> bool:
        return bool(self.files)

    @property
    def counts(self) -> dict[str, int]:
        """kind -> number of files, most frequent first."""
        return dict(sorted(((k, len(v)) for k, v in self.files.items()), key=lambda kv: (-kv[1], kv[0])))

    @property
    def n_files(self) -> int:
        """Files with at least one warning."""
        return len(set().union(*self.files.values())) if self.files else 0

    def summary(self) -> str | None:
        """One line for a terminal, e.g. ``240 files: invalid UI value (240), DS value too long (3); read anyway``."""
        if not self.files:
            return None
        n = self.n_files
        kinds = ", ".join(f"{k} ({c})" for k, c in self.counts.items())
        return f"{n} file{'s' if n != 1 else ''}: {kinds}; read anyway"

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.n_files,
            "kinds": {k: {"files": c, "examples": list(self.examples.get(k, []))} for k, c in self.counts.items()},
        }


_SINK: ContextVar[list[str] | None] = ContextVar("cmrdx_read_warnings", default=None)
_HOOK_LOCK = threading.Lock()
_loggers_seen = -1  # size of logging's logger table when the filters were last placed


class _CountFilter(logging.Filter):
    """On pydicom's and the plugins' loggers: while a capture is active in this context, a warning becomes a kind
    in the capture's list and goes no further; otherwise records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        sink = _SINK.get()
        if sink is None or record.levelno < logging.WARNING:
            return True
        if record.levelno >= logging.ERROR and record.name.startswith("pydicom.pixels.decoders"):
            # One plugin failed (with a traceback) and the next is tried; if all fail, the read raises.
            sink.append("decoding plugin failed")
        else:
            sink.append(warning_kind(record.getMessage()))
        return False


_COUNT_FILTER = _CountFilter()


def _wrap_showwarning(previous: Any) -> Any:
    def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: Any = None, line: str | None = None) -> None:
        sink = _SINK.get()
        if sink is None:
            previous(message, category, filename, lineno, file, line)
        elif not os.path.abspath(filename).startswith(_PYDICOM_DIR):
            sink.append(warning_kind(str(message)))
        # pydicom's own warnings went to its logger too and were counted there: dropped here

    showwarning._cmrdx_read_hook = True  # type: ignore[attr-defined]
    return showwarning


def _install_hooks() -> None:
    """Place the logger filters and the ``warnings.showwarning`` hook (idempotent; cheap when in place). The hook
    is checked each time: ``warnings.catch_warnings`` (pytest uses one per test) restores the function it found."""
    global _loggers_seen
    table = logging.Logger.manager.loggerDict
    if getattr(warnings.showwarning, "_cmrdx_read_hook", False) and len(table) == _loggers_seen:
        return
    with _HOOK_LOCK:
        if not getattr(warnings.showwarning, "_cmrdx_read_hook", False):
            warnings.showwarning = _wrap_showwarning(warnings.showwarning)
        if len(table) != _loggers_seen:
            names = {n for n in list(table) if any(n == p or n.startswith(p + ".") for p in _READER_LOGGERS)}
            for name in names | set(_READER_LOGGERS):
                lg = logging.getLogger(name)
                if _COUNT_FILTER not in lg.filters:
                    lg.addFilter(_COUNT_FILTER)
            _loggers_seen = len(table)


@contextmanager
def capture_read_warnings() -> Iterator[list[str]]:
    """Collect the kinds of pydicom's warnings raised inside the block (in this thread / context) into the yielded
    list instead of printing them. Captures nest: what an inner one collected reaches the enclosing one too."""
    _install_hooks()
    outer = _SINK.get()
    sink: list[str] = []
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)
        if outer is not None:
            outer.extend(sink)


def _text_values(ds: Dataset, keyword: str) -> list[str] | None:
    """A text-VR element's values (DS, IS, TM, ...) read straight from its raw bytes.

    Why: pydicom converts each accessed element through its generic value machinery (~30 us each); a scan
    touches a dozen per file, which was a third of the scan time. Text VRs are ASCII with '\\' between
    values, so the raw bytes are parsed directly; anything already converted goes through pydicom."""
    elem = ds.get_item(keyword)
    if elem is None:
        return None
    raw = elem.value
    if isinstance(raw, (bytes, bytearray)):
        text = raw.decode("ascii", "replace").strip(" \x00")
        return [v.strip(" \x00") for v in text.split("\\")] if text else None
    v = ds.get(keyword)
    if v is None or v == "":
        return None
    return [str(x) for x in v] if isinstance(v, (pydicom.multival.MultiValue, list, tuple)) else [str(v)]


def _fast_float(ds: Dataset, keyword: str) -> float | None:
    v = _text_values(ds, keyword)
    return _float(v[0]) if v else None


def _geo_vec(v: Any, n: int) -> tuple[np.ndarray | None, str | None]:
    """(vector, None), or (None, what is wrong with it)."""
    if v is None or (isinstance(v, (str, bytes)) and not v.strip()):
        return None, "missing"
    try:
        vals = [float(x) for x in (v if isinstance(v, (list, tuple, pydicom.multival.MultiValue)) else [v])]
    except (TypeError, ValueError, OverflowError):
        return None, f"not {n} numbers"
    if not vals:
        return None, "missing"
    if len(vals) != n:
        return None, f"not {n} numbers"
    arr = np.array(vals, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        return None, "not finite (NaN or infinite)"
    return arr, None


_ISSUES: dict[str, str] = {}  # one string object per distinct issue, shared by the frames that have it


def _plane(ipp: Any, iop: Any) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(position, orientation, issue): a value that is missing, not finite or (orientation) not two perpendicular
    unit vectors is None, and the issue says which and why."""
    pos, p_why = _geo_vec(ipp, 3)
    ori, o_why = _geo_vec(iop, 6)
    if ori is not None:
        o_why = orientation_problem(ori)
        if o_why is not None:
            ori = None
    if p_why is None and o_why is None:
        return pos, ori, None
    parts = ([f"ImageOrientationPatient {o_why}"] if o_why else []) + ([f"ImagePositionPatient {p_why}"] if p_why else [])
    issue = "; ".join(parts)
    return pos, ori, _ISSUES.setdefault(issue, issue)


# Reading warnings (kinds) for frame counts the reader does not take from the header as they are.
FRAMES_INVALID = "NumberOfFrames not a positive whole number (frames counted from the pixel data)"
FRAMES_BEYOND_DATA = "NumberOfFrames beyond the pixel data (only the frames present are listed)"
FRAMES_OVER_LIMIT = f"over {MAX_FRAMES_PER_OBJECT} frames in one object (the first {MAX_FRAMES_PER_OBJECT} are listed)"
PIXELS_SHORT = "pixel data shorter than one frame (truncated or corrupt; decoding fails)"
PIXELS_MISSING = "no pixel data (decoding fails)"
MATRIX_INVALID = "Rows or Columns not a positive number (decoding fails)"


def frame_count(ds: Dataset, ref: FileRef, rows: int | None = None, cols: int | None = None) -> int:
    """How many frames of ``ds`` are listed: NumberOfFrames, never more than the stored pixel data holds nor
    MAX_FRAMES_PER_OBJECT. An object whose pixel data cannot hold one frame lists one frame (so that it is seen;
    decoding it fails and says why). Each departure from the header is a reading warning of the file."""
    raw = _text_values(ds, "NumberOfFrames")
    claimed: int | None = 1
    if raw:
        f = _float(raw[0])
        claimed = int(f) if f is not None and f >= 1 and f == int(f) else None
    rows = rows if rows is not None else _int(ds.get("Rows")) or 0
    cols = cols if cols is not None else _int(ds.get("Columns")) or 0
    if rows <= 0 or cols <= 0:
        note_read_warning(MATRIX_INVALID, ref)
        return 1
    stored = stored_pixels(ds)
    present: int | None = None
    if stored.known:
        if stored.pixel_data is None:
            note_read_warning(PIXELS_MISSING, ref)
            return 1
        bits = _int(ds.get("BitsAllocated"))
        spp = _int(ds.get("SamplesPerPixel")) or 1
        # Unknown or odd BitsAllocated: one bit a pixel, the fewest bytes any frame takes, still bounds the count.
        bits = bits if bits in (1, 8, 16, 32, 64) else 1
        photometric = (_text_values(ds, "PhotometricInterpretation") or [""])[0]
        present = frames_present(stored.pixel_data, rows, cols, bits, max(spp, 1), photometric)
    n = claimed if claimed is not None else (present or 1)
    if claimed is None and n > 1:  # (an invalid count with one frame present is read as 1: nothing changes)
        note_read_warning(FRAMES_INVALID, ref)
    if present is not None and present < n:
        if present == 0:
            note_read_warning(PIXELS_SHORT, ref)
            return 1
        if claimed is not None:
            note_read_warning(FRAMES_BEYOND_DATA, ref)
        n = present
    if n > MAX_FRAMES_PER_OBJECT:
        note_read_warning(FRAMES_OVER_LIMIT, ref)
        n = MAX_FRAMES_PER_OBJECT
    return n


def frames_from_dataset(ds: Dataset, ref: FileRef) -> list[Frame]:
    """Per-frame geometry and timing of one object (classic: one frame; Enhanced: NumberOfFrames, as far as the
    pixel data holds them: ``frame_count``)."""
    rows, cols = _int(ds.get("Rows")) or 0, _int(ds.get("Columns")) or 0
    n_frames = frame_count(ds, ref, rows, cols)
    sop = str(ds.get("SOPClassUID", ""))
    acq_tm = _text_values(ds, "AcquisitionTime")
    acq = _time_seconds(acq_tm[0] if acq_tm else None) or _time_seconds(ds.get("AcquisitionDateTime"))
    if sop not in ENHANCED_SOP_CLASSES and n_frames == 1:
        inst = _fast_float(ds, "InstanceNumber")
        tidx = _fast_float(ds, "TemporalPositionIdentifier")
        position, orientation, issue = _plane(_text_values(ds, "ImagePositionPatient"),
                                              _text_values(ds, "ImageOrientationPatient"))
        return [
            Frame(
                ref=ref,
                index=None,
                rows=rows,
                cols=cols,
                position=position,
                orientation=orientation,
                pixel_spacing=_spacing(_text_values(ds, "PixelSpacing")),
                slice_thickness=_fast_float(ds, "SliceThickness"),
                trigger_time=_fast_float(ds, "TriggerTime"),
                temporal_index=int(tidx) if tidx is not None else None,
                instance_number=int(inst) if inst is not None else None,
                acquisition_time=acq,
                rescale=(_fast_float(ds, "RescaleSlope") or 1.0, _fast_float(ds, "RescaleIntercept") or 0.0),
                image_type=_image_type(ds),
                inversion_time=_fast_float(ds, "InversionTime"),
                echo_time=_fast_float(ds, "EchoTime"),
                geometry_issue=issue,
            )
        ]
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame_seq = ds.get("PerFrameFunctionalGroupsSequence") or []
    temporal_dim = _temporal_dimension_index(ds)
    frames = []
    for i in range(n_frames):
        pf = per_frame_seq[i] if i < len(per_frame_seq) else None
        pos = _fg(pf, shared, "PlanePositionSequence")
        ori = _fg(pf, shared, "PlaneOrientationSequence")
        meas = _fg(pf, shared, "PixelMeasuresSequence")
        card = _fg(pf, shared, "CardiacSynchronizationSequence")
        content = _fg(pf, shared, "FrameContentSequence")
        pvt = _fg(pf, shared, "PixelValueTransformationSequence")
        ftype = _fg(pf, shared, "MRImageFrameTypeSequence")
        echo = _fg(pf, shared, "MREchoSequence")
        modifier = _fg(pf, shared, "MRModifierSequence") or _fg(pf, shared, "MRTimingAndRelatedParametersSequence")
        tidx = _int(content.get("TemporalPositionIndex")) if content is not None else None
        if tidx is None and content is not None and temporal_dim is not None:
            div = content.get("DimensionIndexValues")
            if div is not None and isinstance(div, (list, pydicom.multival.MultiValue)) and temporal_dim < len(div):
                tidx = int(div[temporal_dim])
        position, orientation, issue = _plane(
            pos.get("ImagePositionPatient") if pos is not None else ds.get("ImagePositionPatient"),
            ori.get("ImageOrientationPatient") if ori is not None else ds.get("ImageOrientationPatient"))
        frames.append(
            Frame(
                ref=ref,
                index=i,
                rows=rows,
                cols=cols,
                position=position,
                orientation=orientation,
                pixel_spacing=_spacing(meas.get("PixelSpacing")) if meas is not None else _spacing(ds.get("PixelSpacing")),
                slice_thickness=_float(meas.get("SliceThickness")) if meas is not None else None,
                trigger_time=_float(card.get("NominalCardiacTriggerDelayTime")) if card is not None else None,
                temporal_index=tidx,
                instance_number=_int(ds.get("InstanceNumber")),
                acquisition_time=(_time_seconds(content.get("FrameAcquisitionDateTime")) if content is not None else None) or acq,
                rescale=(
                    (_float(pvt.get("RescaleSlope")) or 1.0, _float(pvt.get("RescaleIntercept")) or 0.0)
                    if pvt is not None
                    else (_float(ds.get("RescaleSlope")) or 1.0, _float(ds.get("RescaleIntercept")) or 0.0)
                ),
                image_type=_shared_tuple(ftype.get("FrameType")) if ftype is not None else (),
                inversion_time=_float(modifier.get("InversionTimes")) if modifier is not None else None,
                echo_time=_float(echo.get("EffectiveEchoTime")) if echo is not None else None,
                complex_component=_cs(ftype, "ComplexImageComponent"),
                acquisition_contrast=_cs(ftype, "AcquisitionContrast"),
                geometry_issue=issue,
            )
        )
    return frames


# One series has one or two ImageTypes over thousands of files: equal tuples are shared, not copied per frame,
# and a file's raw ImageType bytes are looked up before they are parsed (the scan reads it from every file).
_SHARED_TUPLES: dict[tuple[str, ...], tuple[str, ...]] = {}
_RAW_IMAGE_TYPES: dict[bytes, tuple[str, ...]] = {}


def _image_type(ds: Dataset) -> tuple[str, ...]:
    elem = ds.get_item("ImageType")
    if elem is None:
        return ()
    raw = elem.value
    if isinstance(raw, bytes):
        hit = _RAW_IMAGE_TYPES.get(raw)
        if hit is None:
            if len(_RAW_IMAGE_TYPES) > 4096:
                _RAW_IMAGE_TYPES.clear()
            hit = _RAW_IMAGE_TYPES[raw] = _shared_tuple(raw.decode("ascii", "replace").strip(" \x00").split("\\"))
        return hit
    return _shared_tuple(_text_values(ds, "ImageType"))


def _shared_tuple(values: Any) -> tuple[str, ...]:
    """A multi-valued code string (ImageType, FrameType) as an upper-case tuple, the same object for equal values."""
    if values is None or values == "":
        return ()
    if isinstance(values, str):
        values = values.split("\\")
    key = tuple(s for s in (str(v).strip().upper() for v in values) if s)
    if len(_SHARED_TUPLES) > 4096:  # distinct values are few; a bound keeps a long batch run from growing it
        _SHARED_TUPLES.clear()
    return _SHARED_TUPLES.setdefault(key, key)


def _cs(item: Dataset | None, keyword: str) -> str | None:
    """An upper-case single code string from a functional-group item, or None."""
    if item is None:
        return None
    v = str(item.get(keyword, "") or "").strip().upper()
    return v or None


# Attributes that name a technique, read from the top level (classic MR, the Enhanced MR Pulse Sequence and
# Image modules) and, for Enhanced MR, from the shared MR Modifier functional group.
MR_FLAG_KEYWORDS = ("SaturationRecovery", "SteadyStatePulseSequence", "EchoPulseSequence", "T2Preparation", "Tagging",
                    "BloodSignalNulling", "AngioFlag", "AcquisitionContrast", "ComplexImageComponent")


def _mr_flags(ds: Dataset) -> dict[str, str]:
    modifier = _first(_first(ds, "SharedFunctionalGroupsSequence"), "MRModifierSequence")
    out = {}
    for kw in MR_FLAG_KEYWORDS:
        v = _cs(ds, kw) or _cs(modifier, kw)
        if v:
            out[kw] = v
    return out


def _temporal_dimension_index(ds: Dataset) -> int | None:
    """Which DimensionIndexValues entry is time (TemporalPositionIndex or a trigger delay pointer)."""
    dims = ds.get("DimensionIndexSequence") or []
    temporal_tags = {0x00209128, 0x00209153, 0x00209241}  # TemporalPositionIndex, trigger delay, trigger time
    for k, item in enumerate(dims):
        ptr = item.get("DimensionIndexPointer")
        if ptr is not None and int(ptr) in temporal_tags:
            return k
    return None


def _enhanced_identity(ds: Dataset) -> dict[str, Any]:
    """Enhanced MR keeps some identity in the MR modules / shared functional groups instead of classic tags."""
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    out: dict[str, Any] = {}
    timing = _first(shared, "MRTimingAndRelatedParametersSequence")
    modifier = _first(shared, "MRModifierSequence")
    card = _first(shared, "CardiacSynchronizationSequence")
    frame_type = _first(shared, "MRImageFrameTypeSequence")
    if modifier is not None:
        ir = str(modifier.get("InversionRecovery", "")).upper()
        if ir == "YES":
            out["ir"] = True
        out["inversion_time"] = _float(modifier.get("InversionTimes"))
    if str(ds.get("InversionRecovery", "")).upper() == "YES":
        out["ir"] = True
    if timing is not None and out.get("inversion_time") is None:
        out["inversion_time"] = _float(timing.get("InversionTimes"))
    if card is not None:
        out["rr"] = _float(card.get("RRIntervalTimeNominal"))
    if frame_type is not None and frame_type.get("FrameType"):
        out["frame_type"] = _tuple(frame_type, "FrameType")
    return out


def series_from_dataset(ds: Dataset, ref: FileRef) -> Series:
    """A one-object Series (later merged with the other objects of the same SeriesInstanceUID)."""
    sop = str(ds.get("SOPClassUID", ""))
    ident = _enhanced_identity(ds) if sop in ENHANCED_SOP_CLASSES else {}
    scanning = _tuple(ds, "ScanningSequence")
    if ident.get("ir") and "IR" not in scanning:
        scanning = scanning + ("IR",)
    seq_name = _s(ds, "SequenceName") or _s(ds, "PulseSequenceName")
    image_type = _tuple(ds, "ImageType")
    if "frame_type" in ident:
        image_type = tuple(dict.fromkeys(image_type + ident["frame_type"]))
    rr = _float(ds.get("NominalInterval")) or ident.get("rr")
    if rr is None:
        hr = _float(ds.get("HeartRate"))
        rr = 60000.0 / hr if hr else None
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    phi = {k: str(ds.get(k)) for k in PHI_KEYWORDS if ds.get(k) not in (None, "")}
    return Series(
        uid=str(ds.get("SeriesInstanceUID", "")) or f"no-series-uid:{ref}",
        study_uid=str(ds.get("StudyInstanceUID", "")) or "no-study-uid",
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")) or None,
        number=_int(ds.get("SeriesNumber")),
        modality=_s(ds, "Modality").upper(),
        sop_class_uid=sop,
        description=_s(ds, "SeriesDescription"),
        protocol=_s(ds, "ProtocolName"),
        sequence_name=seq_name,
        scanning_sequence=scanning,
        sequence_variant=_tuple(ds, "SequenceVariant"),
        scan_options=_tuple(ds, "ScanOptions"),
        image_type=image_type,
        inversion_time=_float(ds.get("InversionTime")) or ident.get("inversion_time"),
        manufacturer=_s(ds, "Manufacturer"),
        rr_interval=rr,
        heart_rate=_float(ds.get("HeartRate")),
        cardiac_number_of_images=_int(ds.get("CardiacNumberOfImages")),
        series_time=_time_seconds(ds.get("SeriesTime")),
        photometric=_s(ds, "PhotometricInterpretation").upper() or "MONOCHROME2",
        transfer_syntax=ts,
        phase_contrast=str(ds.get("PhaseContrast", "")).upper() == "YES",
        mr_acquisition_type=_s(ds, "MRAcquisitionType").upper(),
        mr_flags=_mr_flags(ds),
        contrast_agent=_s(ds, "ContrastBolusAgent"),
        frames=frames_from_dataset(ds, ref) if "Rows" in ds else [],
        phi=phi,
    )
