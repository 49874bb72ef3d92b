"""Choose series per view and assemble them into a Study (lazy stacks + a manifest of every choice).

Repairs real archives need (DICOM.md): a short-axis stack split into one series per slice is merged; a
repeated position keeps the latest acquisition; missing phases are detected and reported; slices with
differing phase counts are resampled on normalised time (TriggerTime / RR); mixed matrix sizes are
resampled to the most common one. Only headers are read here; pixels are decoded by the views' loaders.

Damaged headers never silently change what a view holds: images whose ImagePositionPatient or
ImageOrientationPatient is unusable, a stack whose positions collapse to one, cine phases that TriggerTime cannot
order, and two files of one SOPInstanceUID with different pixels are each handled by a stated rule (``_placeable``,
``PHASE_KEYS``) and reported as an input check naming the view and series; a view that cannot be placed is left
out, and a study left without a cine is a NoCineError that says why (docs/bad-input.md).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmrdx.dicom.geometry import (
    PARALLEL_DOT,
    POSITION_TOL_MM,
    angle_between_deg,
    group_by_position,
    positions_along,
    reference_normal,
    stack_axis,
)
from cmrdx.dicom.pixels import decode_frame
from cmrdx.dicom.scan import ScanResult, scan
from cmrdx.dicom.series import Frame, ReadWarnings, Series, capture_read_warnings
from cmrdx.errors import MultipleStudiesError, NoCineError, NoDicomError, NoMRError
from cmrdx.study.roles import classify_study_series, frame_is_psir_real, lge_image_kind
from cmrdx.study.types import AssemblyManifest, InputCheck, SeriesDecision, SliceGeometry, Study, StudyView
from cmrdx.vocab import MODEL_ROLES, Role, view_key
from cmrdx.vocab import VIEW_KEYS as STANDARD_VIEWS

log = logging.getLogger(__name__)

GAP_FACTOR = 1.5  # a trigger-time step over 1.5x the median step means a phase is missing


@dataclass
class StudyInspection:
    """One study's series with their roles and views (headers only), and what the scan skipped."""

    study_uid: str
    series: list[Series]
    scan: ScanResult
    other_studies: list[str] = field(default_factory=list)

    @property
    def views_found(self) -> dict[str, list[Series]]:
        out: dict[str, list[Series]] = {}
        for s in self.series:
            if s.role in MODEL_ROLES and s.view:
                out.setdefault(view_key(s.role, s.view), []).append(s)
        return out

    @property
    def views_missing(self) -> list[str]:
        found = self.views_found
        return [k for k in STANDARD_VIEWS if k not in found]

    @property
    def read_warnings(self) -> ReadWarnings:
        """What pydicom complained about in this study's files during the header scan (kind -> files)."""
        return self.scan.read_warnings.get(self.study_uid) or ReadWarnings()

    def to_dict(self, show_phi: bool = False) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "source": self.scan.root,
            "files_scanned": self.scan.files_scanned,
            "files_skipped": dict(self.scan.files_skipped),
            "series": [s.summary(show_phi) for s in self.series],
            "views_found": {k: [s.uid for s in v] for k, v in self.views_found.items()},
            "views_missing": self.views_missing,
            "other_studies": list(self.other_studies),
            "read_warnings": self.read_warnings.to_dict(),
        }


def _check_scan(res: ScanResult, path: str) -> None:
    if res.files_scanned == 0:
        raise NoDicomError(f"{path}: the folder is empty", hint="point cmrdx at the folder that holds the study's DICOM files")
    if not res.studies:
        skipped = ", ".join(f"{n} {r}" for r, n in res.files_skipped.items())
        raise NoDicomError(
            f"{path}: no DICOM files among {res.files_scanned} files ({skipped})",
            hint="check that this is a DICOM export (a PACS export folder or a .zip of one)",
        )


def list_studies(res: ScanResult) -> list[tuple[str, int]]:
    """(StudyInstanceUID, number of series) for every study found."""
    return [(uid, len(ss)) for uid, ss in res.studies.items()]


def inspect_study(
    path: str | os.PathLike[str] | ScanResult, study_uid: str | None = None
) -> StudyInspection:
    """Scan ``path`` (or reuse a ScanResult) and classify the series of one study.

    Raises NoDicomError, MultipleStudiesError (several studies and none chosen) or NoMRError.
    """
    res = path if isinstance(path, ScanResult) else scan(path)
    _check_scan(res, res.root)
    uids = list(res.studies)
    if study_uid is None:
        mr_uids = [u for u in uids if any(s.modality == "MR" for s in res.studies[u])]
        if len(mr_uids) > 1:
            listing = "; ".join(f"{u} ({len(res.studies[u])} series)" for u in mr_uids)
            raise MultipleStudiesError(
                f"{res.root}: {len(mr_uids)} MR studies are mixed in this folder: {listing}",
                hint="choose one with --study UID (or study_uid=...), or run `cmrdx batch` on the folder",
            )
        study_uid = mr_uids[0] if mr_uids else uids[0]
    elif study_uid not in res.studies:
        raise MultipleStudiesError(
            f"{res.root}: no study {study_uid}; found {', '.join(uids)}", hint="use one of the UIDs listed"
        )
    series = res.studies[study_uid]
    if not any(s.modality == "MR" for s in series):
        mods = Counter(s.modality or "?" for s in series)
        raise NoMRError(
            f"{res.root}: DICOM found but no MR series (modalities: {dict(mods)})",
            hint="cmrdx reads cardiac MR studies; check that this export holds the MR series",
        )
    classify_study_series(series)
    return StudyInspection(study_uid=study_uid, series=series, scan=res, other_studies=[u for u in uids if u != study_uid])


# ---------------------------------------------------------------------------------------------------
# Assembly


def _latest_key(s: Series) -> tuple:
    """Order by acquisition: later series time, then higher series number, wins."""
    return (s.series_time if s.series_time is not None else -1.0, s.number if s.number is not None else -1, s.uid)


def _frame_time_key(f: Frame) -> tuple:
    return (f.acquisition_time if f.acquisition_time is not None else -1.0, f.instance_number or 0, str(f.ref), f.index or 0)


# How the phases of a cine position are ordered: the first of these header values that every image of every position
# of the view has, with more than one value at each position holding several images. TriggerTime (ms after the R
# wave) is the cardiac phase itself; the others give the order only, so a fallback is reported. Values are rounded
# to the ``ndigits`` given (a repeated value keeps the latest acquisition).
PHASE_KEYS: tuple[tuple[str, Callable[[Frame], float | None], int], ...] = (
    ("TriggerTime", lambda f: f.trigger_time, 1),
    ("TemporalPositionIdentifier", lambda f: None if f.temporal_index is None else float(f.temporal_index), 0),
    ("InstanceNumber", lambda f: None if f.instance_number is None else float(f.instance_number), 0),
    ("AcquisitionTime", lambda f: f.acquisition_time, 4),
)


def _phase_key(groups: Sequence[Sequence[Frame]]) -> tuple[str, Callable[[Frame], float | None], int] | None:
    """The first PHASE_KEYS entry usable at every position (None when none is)."""
    for name, get, nd in PHASE_KEYS:
        ok = True
        for g in groups:
            vals = [get(f) for f in g]
            if any(v is None for v in vals) or (len(g) > 1 and len({round(float(v), nd) for v in vals if v is not None}) < 2):
                ok = False
                break
        if ok:
            return name, get, nd
    return None


def _order_phases(frames: list[Frame], key: tuple[str, Callable[[Frame], float | None], int] | None) -> list[Frame]:
    """Frames of one position ordered by the view's phase key; a repeated value keeps the latest acquisition.
    Without a key, the frames keep their file order (one phase each)."""
    if key is None:
        return sorted(frames, key=lambda f: (str(f.ref), f.index or 0))
    _, get, nd = key
    by_time: dict[float, Frame] = {}
    for f in sorted(frames, key=_frame_time_key):
        by_time[round(float(get(f) or 0.0), nd)] = f  # later acquisition overwrites
    return [by_time[k] for k in sorted(by_time)]


def _norm_times(frames: list[Frame], rr: float | None) -> np.ndarray:
    tt = [f.trigger_time for f in frames]
    if rr and all(x is not None for x in tt):
        return np.array(tt, dtype=np.float64) / rr
    n = len(frames)
    return np.arange(n, dtype=np.float64) / max(n, 1)


class _Grid:
    """A (slices x phases) grid of frames with the decode-and-resample loader."""

    def __init__(self, grid: list[list[Frame]], photometric: dict[int, str], shape: tuple[int, int],
                 read_warnings: ReadWarnings | None = None):
        self.grid = grid
        self.photometric = photometric  # id(frame) -> photometric of its series
        self.shape = shape
        self.read_warnings = read_warnings  # pydicom's complaints while decoding are counted here

    def load(self, slices: Sequence[int], phases: Sequence[int]) -> np.ndarray:
        out = np.empty((len(slices), len(phases), *self.shape), dtype=np.float32)
        cache: dict[int, np.ndarray] = {}  # frames repeated by phase resampling are decoded once
        for i, si in enumerate(slices):
            for j, pj in enumerate(phases):
                f = self.grid[si][pj]
                key = id(f)
                if key not in cache:
                    with capture_read_warnings() as kinds:
                        img = decode_frame(f, self.photometric.get(key, "MONOCHROME2"))
                    if kinds and self.read_warnings is not None:
                        self.read_warnings.add(kinds, f.ref)
                    cache[key] = _resize(img, self.shape) if img.shape != self.shape else img
                out[i, j] = cache[key]
        return out


def _resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample a frame to ``shape`` over the same field of view (linear), with SimpleITK."""
    import SimpleITK as sitk

    src = sitk.GetImageFromArray(img.astype(np.float32))
    out_spacing = (img.shape[1] / shape[1], img.shape[0] / shape[0])  # sitk is (x=cols, y=rows)
    origin = (0.5 * (out_spacing[0] - 1.0), 0.5 * (out_spacing[1] - 1.0))  # keep the FOV edges aligned
    res = sitk.Resample(src, [shape[1], shape[0]], sitk.Transform(), sitk.sitkLinear, origin, out_spacing,
                        src.GetDirection(), 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(res)


# A short-axis view whose images all lie at one position while 3 or more images share a position and time: the
# positions do not separate the slices (damaged or copied ImagePositionPatient), or one slice was imaged 3 times;
# neither is a short-axis stack. Two images are a repeated acquisition, which the assembly resolves (the latest).
COLLAPSED_MIN_IMAGES = 3


def _by_series(frames: Sequence[Frame], owner: dict[int, Series]) -> list[Series]:
    out: dict[int, Series] = {}
    for f in frames:
        s = owner[id(f)]
        out.setdefault(id(s), s)
    return list(out.values())


def _issue_text(frames: Sequence[Frame]) -> str:
    """The most common geometry issue of ``frames`` ("ImagePositionPatient missing", ...)."""
    issues = Counter(f.geometry_issue for f in frames if f.geometry_issue)
    return issues.most_common(1)[0][0] if issues else "not usable"


def _images_per_time(frames: Sequence[Frame], owner: dict[int, Series]) -> int:
    """Most images one series holds at one trigger time (all at one time when there is none)."""
    count = Counter((id(owner[id(f)]), None if f.trigger_time is None else round(f.trigger_time, 1)) for f in frames)
    return max(count.values(), default=0)


def _placeable(view: str, key: str, frames: list[Frame], owner: dict[int, Series],
               checks: list[InputCheck]) -> list[Frame] | None:
    """The frames of a view that can be placed in its stack, after the geometry rules; None when the view cannot be
    assembled. Every rule that applies adds a check naming the series:

    - orientation not usable in some images: they are placed along the stack's normal from the others; in all
      images: the slices are ordered along the direction their positions spread;
    - position not usable in some images: those images are left out; in all images: one slice if the view holds one
      image per time (a long-axis view), else the view is left out;
    - a short-axis view collapsed to one position with COLLAPSED_MIN_IMAGES or more images per time: left out.
    """
    no_ori = [f for f in frames if f.orientation is None]
    if no_ori:
        if len(no_ori) < len(frames):
            how = "placed along the stack's normal from the other images"
        elif len(group_by_position(frames)) > 1:
            how = "slices ordered along the direction their positions spread"
        else:
            how = "one slice, its plane not known"
        _check(checks, "orientation-unusable", key, _by_series(no_ori, owner),
               f"{_issue_text(no_ori)} in {len(no_ori)} of {len(frames)} images: {how}")
    no_pos = [f for f in frames if f.position is None]
    if no_pos and len(no_pos) == len(frames):
        if _images_per_time(frames, owner) <= 1 and len(_by_series(frames, owner)) == 1:
            _check(checks, "position-unusable", key, _by_series(no_pos, owner),
                   f"{_issue_text(no_pos)} in all {len(frames)} images: taken as one slice (the view holds one image "
                   "per time)")
            return frames
        _check(checks, "position-unusable", key, _by_series(no_pos, owner),
               f"{_issue_text(no_pos)} in all {len(frames)} images, which hold several slices: the slices cannot be "
               "placed, the view is left out")
        return None
    if no_pos:
        _check(checks, "position-unusable", key, _by_series(no_pos, owner),
               f"{_issue_text(no_pos)} in {len(no_pos)} of {len(frames)} images: those images are left out")
        gone = {id(f) for f in no_pos}
        frames = [f for f in frames if id(f) not in gone]
    if view == "SAX" and len(group_by_position(frames)) == 1:
        per_time = _images_per_time(frames, owner)
        n_series = len(_by_series(frames, owner))
        if per_time >= COLLAPSED_MIN_IMAGES or n_series >= COLLAPSED_MIN_IMAGES:
            what = (f"{n_series} series" if n_series >= COLLAPSED_MIN_IMAGES else
                    f"{per_time} images of one series at one time")
            _check(checks, "positions-collapsed", key, _by_series(frames, owner),
                   f"all {len(frames)} images at one position ({what}): ImagePositionPatient does not separate the "
                   "slices, the view is left out")
            return None
    return frames


def _build_view(role: str, view: str, chosen: list[Series], notes: list[str],
                read_warnings: ReadWarnings | None = None,
                checks: list[InputCheck] | None = None) -> StudyView | None:
    """The view's stack from ``chosen``; None when the geometry rules leave it out (``checks`` says why)."""
    checks = checks if checks is not None else []
    key = view_key(role, view)
    frames: list[Frame] = []
    photometric: dict[int, str] = {}
    owner: dict[int, Series] = {}
    for s in chosen:
        for f in _view_frames(role, s, notes):
            frames.append(f)
            photometric[id(f)] = s.photometric
            owner[id(f)] = s
    if not frames:
        _check(checks, "no-images", key, chosen, "no image to assemble: the view is left out")
        return None
    placed = _placeable(view, key, frames, owner, checks)
    if placed is None:
        return None
    frames = placed
    groups = group_by_position(frames)
    phase_key = None
    if role == "cine":
        phase_key = _phase_key(groups)
        if phase_key is None or phase_key[0] != "TriggerTime":
            bad = [f for f in frames if f.trigger_time is None]
            why = (f"missing or not a number in {len(bad)} of {len(frames)} images" if bad else
                   "the same for every image of a position")
            how = f"phases ordered by {phase_key[0]}" if phase_key else \
                "no other header orders them either: each position's images are kept in file order"
            _check(checks, "phase-order", key, _by_series(bad or frames, owner), f"TriggerTime {why}: {how}")
    rr = next((s.rr_interval for s in chosen if s.rr_interval), None)
    slices: list[list[Frame]] = []
    for g in groups:
        series_here = {id(owner[id(f)]): owner[id(f)] for f in g}
        if len(series_here) > 1:
            # The same position acquired more than once (a repeated breath-hold): keep the latest acquisition.
            keep = max(series_here.values(), key=_latest_key)
            dropped = [s for s in series_here.values() if s is not keep]
            notes.append(
                f"position repeated in {len(series_here)} series: kept #{keep.number} ({keep.description}), "
                f"dropped {', '.join('#' + str(s.number) for s in dropped)}"
            )
            g = [f for f in g if owner[id(f)] is keep]
        ordered = _order_phases(g, phase_key) if role == "cine" else sorted(g, key=_frame_time_key)[-1:]
        if role == "lge" and len(g) > 1:
            notes.append(f"{len(g)} images at one LGE position: kept the latest")
        slices.append(ordered)
    counts = [len(p) for p in slices]
    # The fullest slice sets the phase count; slices that lost phases are resampled onto it.
    n_phases = max(counts) if role == "cine" else 1
    expected = next((s.cardiac_number_of_images for s in chosen if s.cardiac_number_of_images), None)
    if role == "cine":
        for k, ph in enumerate(slices):
            if expected and len(ph) < expected:
                notes.append(f"slice {k}: {len(ph)} of {expected} phases (missing phases)")
            tt = [f.trigger_time for f in ph if f.trigger_time is not None]
            if len(tt) >= 3:
                steps = np.diff(tt)
                med = float(np.median(steps))
                if med > 0 and np.any(steps > GAP_FACTOR * med):
                    at = tt[int(np.argmax(steps))]
                    notes.append(f"slice {k}: trigger-time gap after {at:.0f} ms (a missing phase)")
    grid: list[list[Frame]] = []
    resampled = 0
    for ph in slices:
        if len(ph) == n_phases:
            grid.append(list(ph))
            continue
        resampled += 1
        src_t = _norm_times(ph, rr)
        dst_t = np.arange(n_phases, dtype=np.float64) / n_phases
        idx = [int(np.argmin(np.abs(src_t - t))) for t in dst_t]
        grid.append([ph[i] for i in idx])
    if resampled:
        notes.append(f"{resampled} slice(s) with a different phase count resampled to {n_phases} phases on normalised time")
    shapes = Counter((f.rows, f.cols) for row in grid for f in row)
    shape = max(shapes.items(), key=lambda kv: kv[1])[0]
    if len(shapes) > 1:
        notes.append(f"mixed matrix sizes {sorted(shapes)}: resampled to {shape[0]}x{shape[1]}")
    ref_frame = next(f for row in grid for f in row if (f.rows, f.cols) == shape)
    normal = stack_axis([f for row in grid for f in row])
    positions = positions_along([row[0] for row in grid], normal) if normal is not None else np.arange(len(grid), dtype=float)
    if not np.all(np.isfinite(positions)):  # a single slice without a position (its check says so)
        positions = np.arange(len(grid), dtype=float)
    spacing = ref_frame.pixel_spacing or (1.0, 1.0)
    mid = grid[len(grid) // 2]
    trig = np.array([f.trigger_time if f.trigger_time is not None else np.nan for f in mid], dtype=np.float64)
    loader = _Grid(grid, photometric, shape, read_warnings)
    return StudyView(
        role=role,
        view=view,
        n_slices=len(grid),
        n_phases=n_phases,
        shape=shape,
        pixel_spacing=spacing,
        slice_positions=positions,
        trigger_times=trig,
        rr_interval=rr,
        series_uids=[s.uid for s in chosen],
        notes=notes,
        geometry=_geometry(grid),
        _loader=loader.load,
        _refs=[[f.ref for f in row] for row in grid],
    )


def _geometry(grid: list[list[Frame]]) -> tuple[SliceGeometry, ...]:
    """Each slice's header geometry (its first image's); empty unless every slice has a usable one."""
    out = []
    for row in grid:
        f = row[0]
        if f.position is None or f.orientation is None or not f.pixel_spacing or min(f.pixel_spacing) <= 0:
            return ()
        o = [float(v) for v in f.orientation]
        out.append(SliceGeometry(origin=tuple(float(v) for v in f.position),  # type: ignore[arg-type]
                                 row_dir=(o[0], o[1], o[2]), col_dir=(o[3], o[4], o[5]),
                                 spacing=(float(f.pixel_spacing[0]), float(f.pixel_spacing[1])), shape=(f.rows, f.cols)))
    return tuple(out)


# PSIR LGE gives two images of one acquisition: the phase-sensitive real image and its magnitude companion, as two
# series (Siemens '_MAG' / '_PSIR', GE 'MAG:' / 'PS:') or as magnitude and real images in one series (Philips). The
# assembly uses the magnitude image, in every view and study: the model's LGE input is magnitude inversion
# recovery, the image every LGE technique produces, so one contrast reaches the model whatever the site saved.
# When only the real image was saved it is read as stored, with its sign. Its absolute value (the magnitude of the
# same acquisition) was tried and is worse for the bundled model: on 80 randomised PSIR-only phantoms (`cmrdx synth
# archive --variety --only-families lge:psir`, seed 3401) LGE AUC 0.653 as stored, 0.481 as |value|, 0.576 with the
# negative values set to 0 (2026-12). With a short inversion time normal myocardium is negative: as stored, the
# recipe's percentile window shows it black, as a well-nulled magnitude image does; |value| shows it grey.


def _one_psir_image(key: str, cands: list[Series]) -> tuple[list[Series], list[tuple[Series, str]], list[str]]:
    """The candidates of an LGE view without the phase-sensitive (real) series whose magnitude companion is there
    too; (kept, set aside with the reason, notes for the view)."""
    kind = {s.uid: lge_image_kind(s)[0] for s in cands}
    psir = [s for s in cands if kind[s.uid] == "psir"]
    mags = [s for s in cands if kind[s.uid] != "psir"]
    if not psir:
        return cands, [], []
    if not mags:
        return cands, [], [f"only the phase-sensitive (PSIR real) image was found for {key}: it is used"]
    used = ", ".join(f"#{s.number}" for s in mags)
    skipped = [(s, f"PSIR pair: the magnitude image ({used}) is used for {key}; this phase-sensitive (real) image "
                   "is set aside") for s in psir]
    note = f"PSIR pair: magnitude image {used} used, phase-sensitive image {', '.join(f'#{s.number}' for s in psir)} set aside"
    return mags, skipped, [note]


def _view_frames(role: str, s: Series, notes: list[str]) -> list[Frame]:
    """The frames of ``s`` that go into a view: all of them, except for an LGE series that holds a PSIR pair
    (magnitude and real images together), whose magnitude images alone are used."""
    if role != Role.LGE or lge_image_kind(s)[0] != "pair":
        return s.frames
    notes.append(f"PSIR pair in series #{s.number}: its magnitude images are used, the phase-sensitive real images "
                 "set aside")
    return [f for f in s.frames if not frame_is_psir_real(f)]


# Checks whose failure leaves a view out of the study.
LEFT_OUT_RULES = frozenset({"position-unusable", "positions-collapsed", "no-images"})


def _left_out_reason(checks: Sequence[InputCheck]) -> str:
    bad = [c for c in checks if c.rule in LEFT_OUT_RULES]
    return bad[-1].message.split("): ", 1)[-1] if bad else "not assembled"


def _series_issue_checks(key: str, chosen: Sequence[Series]) -> list[InputCheck]:
    """The problems the scan recorded in the chosen series' files (``Series.issues``), as checks of the view."""
    out: list[InputCheck] = []
    for s in chosen:
        for issue in getattr(s, "issues", ()):  # (series pickled by an older version have none)
            _check(out, "duplicate-instances", key, [s], issue)
    return out


def _choose(role: str, view: str, cands: list[Series]) -> tuple[list[Series], list[tuple[Series, str]]]:
    """Which series build a view. SAX merges parallel stacks (split per-slice series); other views take one."""
    if view == "SAX":
        base = max(cands, key=lambda s: (s.n_positions, _latest_key(s)))
        n0 = reference_normal(base.frames)
        used, skipped = [], []
        for s in cands:
            n = reference_normal(s.frames)
            if n0 is None or n is None or abs(float(np.dot(n0, n))) > PARALLEL_DOT:
                used.append(s)
            else:
                skipped.append((s, f"not parallel to the chosen short-axis stack #{base.number}"))
        return used, skipped
    best = max(cands, key=lambda s: (s.n_phases if role == "cine" else 0, _latest_key(s)))
    return [best], [(s, f"another series (#{best.number}) chosen for {view_key(role, view)}") for s in cands if s is not best]


def assemble_study(
    path: str | os.PathLike[str] | StudyInspection, study_uid: str | None = None, *, require_cine: bool = True
) -> Study:
    """Files -> Study: choose series per view, merge and repair, and record every decision.

    Raises NoCineError when ``require_cine`` and no cine series was found (naming what was found).
    """
    insp = path if isinstance(path, StudyInspection) else inspect_study(path, study_uid)
    manifest = AssemblyManifest(files_scanned=insp.scan.files_scanned, files_skipped=dict(insp.scan.files_skipped))
    manifest.read_warnings.merge(insp.read_warnings)  # a copy: decoding adds to the study's, not to the scan's
    study = Study(study_uid=insp.study_uid, manifest=manifest, source=insp.scan.root)
    found = insp.views_found
    used_by: dict[str, str] = {}
    why_skipped: dict[str, str] = {}
    left_out: list[str] = []  # views the geometry rules left out, with why
    for key, cands in found.items():
        role, view = key.split(":")
        psir_skipped: list[tuple[Series, str]] = []
        psir_notes: list[str] = []
        if role == Role.LGE:
            cands, psir_skipped, psir_notes = _one_psir_image(key, cands)
        chosen, skipped = _choose(role, view, cands)
        skipped = psir_skipped + skipped
        notes: list[str] = list(psir_notes)
        if view == "SAX" and len(chosen) > 1:
            notes.append(f"short-axis stack merged from {len(chosen)} series")
        checks = _series_issue_checks(key, chosen)
        sv = _build_view(role, view, chosen, notes, manifest.read_warnings, checks)
        if sv is None:  # the geometry rules left the view out; the checks say why
            manifest.input_checks.extend(checks)
            manifest.warnings.extend(c.message for c in checks)
            left_out.extend(c.message for c in checks if c.rule in LEFT_OUT_RULES)
            for s in chosen:
                why_skipped[s.uid] = f"{key} left out: {_left_out_reason(checks)}"
            for s, why in skipped:
                why_skipped[s.uid] = why
            continue
        study.views[key] = sv
        checks.extend(input_checks(sv, chosen))
        manifest.input_checks.extend(checks)
        manifest.warnings.extend(c.message for c in checks)
        for s in chosen:
            used_by[s.uid] = key
        for s, why in skipped:
            why_skipped[s.uid] = why
        manifest.warnings.extend(f"{key}: {n}" for n in notes if "missing" in n or "gap" in n or "repeated" in n)
    for s in insp.series:
        if s.uid in used_by:
            reason = s.reason
        elif s.uid in why_skipped:
            reason = why_skipped[s.uid]
        elif s.role in MODEL_ROLES and not s.view:
            reason = f"{s.role} of unknown view: {s.view_reason}"
        else:
            reason = s.reason
        manifest.decisions.append(
            SeriesDecision(
                series_uid=s.uid,
                series_number=s.number,
                description=s.description,
                role=s.role,
                view=s.view,
                used_as=used_by.get(s.uid),
                reason=reason,
            )
        )
    if require_cine and not any(k.startswith("cine:") for k in study.views):
        cine_left_out = [m for m in left_out if m.startswith("cine:")]
        if cine_left_out:
            raise NoCineError(
                f"{insp.scan.root}: no usable cine series in study {insp.study_uid}: " + "; ".join(cine_left_out),
                hint="the images' geometry headers (ImagePositionPatient, ImageOrientationPatient) are damaged: "
                     "re-export the study from the scanner or PACS",
            )
        roles = Counter(s.reason if s.role == "other" else s.role for s in insp.series)
        listing = ", ".join(f"{n} {r}" for r, n in roles.most_common())
        raise NoCineError(
            f"{insp.scan.root}: no cine series in study {insp.study_uid}; found: {listing}",
            hint=f"run `cmrdx inspect {insp.scan.root}` to see every series and why it was not taken as a cine",
        )
    missing = study.missing
    if missing:
        manifest.warnings.append("views not found: " + ", ".join(missing))
    return study


# ---------------------------------------------------------------------------------------------------
# Input checks: problems of an assembled view that its images cannot show but a reader of the results must know.
# Each failed check names its view and series, and goes into the manifest (``input_checks`` and ``warnings``).

# The adult LV measures about 70-120 mm from base to apex at end-diastole, and a short-axis stack is planned to
# span it. A stack covering less than 60 mm (its slices' extent plus one slice thickness) cannot hold a whole
# adult LV: the base or the apex is missing, and volumes or wall motion read from it are incomplete.
SAX_MIN_COVERAGE_MM = 60.0
# Cine short-axis stacks use 6-8 mm slices with gaps of 0-4 mm (steps of 6-12 mm between slice centres). Beyond
# 15 mm, more of the ventricle lies between the slices than in them: a thin apex or a focal finding can fall
# in between.
SAX_MAX_STEP_MM = 15.0
# A step over 1.5x the median step: a slice position is missing (one missing slice doubles a step; 1.5 sits
# halfway between a regular step and a doubled one).
SLICE_GAP_FACTOR = 1.5
# Steps that differ from the median by more than 20% and by more than 1 mm (positions are grouped within
# 0.5 mm, so smaller differences are rounding) are uneven: a scanner places one stack on a regular grid, so
# uneven steps mean slices of different plannings were merged, and sums over slices (volumes) are biased.
UNEVEN_SPACING_REL = 0.2
UNEVEN_SPACING_MIN_MM = 1.0
# Images whose plane is tilted, or whose in-plane axes are rotated, by more than 3 degrees from the stack's
# orientation (just beyond the 2.6 degrees of geometry.PARALLEL_DOT under which planes count as parallel) are
# another orientation: one pixel grid no longer maps the same anatomy through the stack.
MIXED_ORIENTATION_DEG = 3.0
# Cine guidelines ask for about 45 ms or less per phase (20-30 phases at usual heart rates). With fewer than 15
# phases (60 ms or more per phase at 60 bpm) end-systole is easily missed and motion is under-sampled.
CINE_MIN_PHASES = 15


def _series_names(series: Sequence[Series], limit: int = 3) -> str:
    """``series #3 'CINE_SAX', #4 'CINE_SAX_b2' and 7 more``: numbers and descriptions (plain text, from DICOM)."""
    names = [f"#{s.number if s.number is not None else '?'} '{s.description or '(no description)'}'" for s in series]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return "series " + ", ".join(names[:limit]) + more


def _check(out: list[InputCheck], rule: str, key: str, series: Sequence[Series], problem: str) -> None:
    out.append(InputCheck(rule=rule, view=key, series_uids=[s.uid for s in series],
                          message=f"{key} ({_series_names(series)}): {problem}"))


def _series_at(chosen: Sequence[Series], normal: np.ndarray, positions: Sequence[float]) -> list[Series]:
    """The chosen series with a frame at one of ``positions`` (mm along ``normal``)."""
    out = []
    for s in chosen:
        d = positions_along(s.frames, normal)
        if any(np.any(np.abs(d - p) <= POSITION_TOL_MM) for p in positions):
            out.append(s)
    return out or list(chosen)


def input_checks(sv: StudyView, chosen: Sequence[Series]) -> list[InputCheck]:
    """The input checks of one assembled view built from ``chosen``: short-axis coverage and slice step, gaps and
    uneven spacing, mixed orientations, different images at one position and time, too few cine phases."""
    out: list[InputCheck] = []
    key = sv.key
    frames = [f for s in chosen for f in s.frames if f.position is not None]
    normal = stack_axis(frames)
    pos = np.asarray(sv.slice_positions, dtype=np.float64)
    if normal is not None and pos.size and np.all(np.isfinite(pos)):
        _spacing_checks(out, sv, chosen, normal, pos)
    _orientation_check(out, key, chosen)
    if sv.role == "cine":
        _duplicate_check(out, key, chosen, normal, pos)
        if sv.n_phases < CINE_MIN_PHASES:
            per = f" of {sv.rr_interval / sv.n_phases:.0f} ms" if sv.rr_interval else ""
            _check(out, "few-phases", key, chosen,
                   f"only {sv.n_phases} phases{per} (fewer than {CINE_MIN_PHASES}): the cardiac cycle is under-sampled, "
                   "end-systole may be missed")
    return out


def _spacing_checks(out: list[InputCheck], sv: StudyView, chosen: Sequence[Series], normal: np.ndarray,
                    pos: np.ndarray) -> None:
    key = sv.key
    steps = np.diff(pos)
    med = float(np.median(steps)) if steps.size else 0.0
    thick = [f.slice_thickness for s in chosen for f in s.frames if f.slice_thickness and f.slice_thickness > 0]
    thickness = float(np.median(thick)) if thick else med
    if sv.view == "SAX":
        coverage = float(pos[-1] - pos[0]) + thickness
        if coverage < SAX_MIN_COVERAGE_MM:
            apart = f", {med:.1f} mm apart" if steps.size else ""
            _check(out, "sax-coverage", key, chosen,
                   f"covers {coverage:.0f} mm ({pos.size} slice{'s' if pos.size != 1 else ''}{apart}): a short-axis "
                   f"stack should span the LV from base to apex (about 70-120 mm), at least {SAX_MIN_COVERAGE_MM:.0f} mm")
        if steps.size and med > SAX_MAX_STEP_MM:
            _check(out, "sax-sparse", key, chosen,
                   f"slices {med:.1f} mm apart (more than {SAX_MAX_STEP_MM:.0f} mm): too few slices for the ventricle, "
                   "parts of it lie between them")
    if steps.size < 2 or med <= 0:
        return
    gaps = [k for k in range(steps.size) if steps[k] > SLICE_GAP_FACTOR * med]
    for k in gaps:
        _check(out, "slice-gap", key, _series_at(chosen, normal, [pos[k], pos[k + 1]]),
               f"gap of {steps[k]:.1f} mm between slices {k} and {k + 1} (median step {med:.1f} mm): "
               "a slice position is missing")
    tol = max(UNEVEN_SPACING_REL * med, UNEVEN_SPACING_MIN_MM)
    uneven = [k for k in range(steps.size) if k not in gaps and abs(steps[k] - med) > tol]
    if uneven:
        odd = steps[uneven]
        _check(out, "uneven-spacing", key, _series_at(chosen, normal, [p for k in uneven for p in (pos[k], pos[k + 1])]),
               f"uneven slice spacing: {len(uneven)} step(s) of {odd.min():.1f}-{odd.max():.1f} mm around a median "
               f"of {med:.1f} mm (slices of different plannings merged?)")


def _orientation_check(out: list[InputCheck], key: str, chosen: Sequence[Series]) -> None:
    owned = [(s, f.orientation, f.normal) for s in chosen for f in s.frames
             if f.orientation is not None and f.normal is not None]
    if len(owned) < 2:
        return
    # The stack's orientation is its most common one (rounded), so that the odd images are the ones named.
    common = Counter(tuple(np.round(o, 2)) for _, o, _ in owned).most_common(1)[0][0]
    ref_o, ref_n = next((o, n) for _, o, n in owned if tuple(np.round(o, 2)) == common)
    r0 = ref_o[:3] / max(float(np.linalg.norm(ref_o[:3])), 1e-9)
    worst = 0.0
    odd: dict[str, Series] = {}
    n_odd = 0
    for s, o, n in owned:
        r = o[:3] / max(float(np.linalg.norm(o[:3])), 1e-9)
        tilt = angle_between_deg(ref_n, n)
        turn = float(np.degrees(np.arccos(np.clip(float(np.dot(r0, r)), -1.0, 1.0))))
        if max(tilt, turn) > MIXED_ORIENTATION_DEG:
            n_odd += 1
            odd[s.uid] = s
            worst = max(worst, tilt, turn)
    if n_odd:
        _check(out, "mixed-orientation", key, list(odd.values()),
               f"{n_odd} of {len(owned)} images in another orientation (up to {worst:.0f} degrees from the stack's "
               "plane or in-plane axes): mixed orientations in one stack")


def _duplicate_check(out: list[InputCheck], key: str, chosen: Sequence[Series], normal: np.ndarray | None,
                     pos: np.ndarray) -> None:
    """Within one series, two different images at the same position and time (a re-acquisition stored in the same
    series, or two objects in conflict). The headers tell images apart: a frame of a multi-frame object by its
    index, a single-frame file by instance number, acquisition time, rescale and matrix (two files that agree on
    all of these are copies of one image, not a conflict). The assembly keeps the latest acquisition."""
    for s in chosen:
        n_pairs = 0
        example = ""
        groups = group_by_position([f for f in s.frames if f.position is not None])
        phase = _phase_key(groups)  # the key the assembly ordered the phases by (its fallback has its own check)
        if phase is None:
            continue
        _, get, nd = phase
        for g in groups:
            by_time: dict[float, list[Frame]] = {}
            for f in g:
                t = get(f)
                if t is not None:
                    by_time.setdefault(round(t, nd), []).append(f)
            for t, fs in by_time.items():
                ids = {(str(f.ref), f.index) if f.index is not None else
                       (f.instance_number, f.acquisition_time, f.rescale, f.rows, f.cols) for f in fs}
                if len(ids) < 2:
                    continue
                n_pairs += 1
                if not example:
                    where = ""
                    if normal is not None and pos.size and g[0].position is not None:
                        k = int(np.argmin(np.abs(pos - float(np.dot(normal, g[0].position)))))
                        where = f"slice {k}, "
                    inst = sorted({f.instance_number for f in fs if f.instance_number is not None})
                    at = f"{t:g} ms" if phase[0] == "TriggerTime" else f"{phase[0]} {t:g}"
                    example = f"{where}{at}: {len(ids)} images" + (f", instances {', '.join(map(str, inst))}" if inst else "")
        if n_pairs:
            _check(out, "duplicate-images", key, [s],
                   f"different images at the same position and time in {n_pairs} place(s) (e.g. {example}): "
                   "the latest acquisition is used")
