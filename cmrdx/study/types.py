"""A study as the model sees it: per (role, view) one assembled stack, plus a manifest of choices.

Data flow: ``dicom`` (files -> Series) -> ``views`` (Series -> role/view) -> **study** (chosen series ->
StudyView stacks + AssemblyManifest) -> ``recipe`` (StudyView -> model input).

A StudyView is a lazy (slices x phases) grid of frames: nothing is decoded until ``pixels()`` asks for
the slices and phases it needs, so a recipe that uses the middle slice of a cine stack decodes 1/S of it.
Views built from in-memory arrays (phantom renders used for training) offer the same interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmrdx.dicom.series import ReadWarnings
from cmrdx.dicom.source import FileRef
from cmrdx.vocab import VIEW_KEYS, view_key

# The vocabulary is defined once in cmrdx.vocab; STANDARD_VIEWS is the nine view keys a complete study has.
STANDARD_VIEWS = VIEW_KEYS


@dataclass(frozen=True)
class SliceGeometry:
    """Where one slice of a view lies in the DICOM patient coordinate system (mm), as its headers say.

    ``origin``: centre of pixel (row 0, column 0) (ImagePositionPatient); ``row_dir``: direction of increasing column
    index and ``col_dir`` of increasing row index (ImageOrientationPatient); ``spacing``: (row spacing, column
    spacing) (PixelSpacing); ``shape``: (rows, columns) of the image the header describes (a view may resample
    a slice of another matrix to its own ``shape``; ``pixel_of`` scales to it).
    """

    origin: tuple[float, float, float]
    row_dir: tuple[float, float, float]
    col_dir: tuple[float, float, float]
    spacing: tuple[float, float]
    shape: tuple[int, int]

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(np.asarray(self.row_dir), np.asarray(self.col_dir))
        return n / max(float(np.linalg.norm(n)), 1e-12)

    @property
    def centre(self) -> np.ndarray:
        """Patient coordinates of the image's centre."""
        h, w = self.shape
        return (np.asarray(self.origin) + (w - 1) / 2 * self.spacing[1] * np.asarray(self.row_dir)
                + (h - 1) / 2 * self.spacing[0] * np.asarray(self.col_dir))

    def pixel_of(self, point: np.ndarray, shape: tuple[int, int] | None = None) -> tuple[float, float]:
        """(row, column) of ``point`` projected onto the slice, in pixels of an image of ``shape`` (default: the
        header's own matrix) covering the same field of view."""
        d = np.asarray(point, float) - np.asarray(self.origin)
        r = float(d @ np.asarray(self.col_dir)) / self.spacing[0]
        c = float(d @ np.asarray(self.row_dir)) / self.spacing[1]
        if shape is not None and tuple(shape) != tuple(self.shape):
            # pixel centres of a resampled matrix over the same field of view
            r = (r + 0.5) * shape[0] / self.shape[0] - 0.5
            c = (c + 0.5) * shape[1] / self.shape[1] - 0.5
        return r, c

    def mm_per_pixel(self, shape: tuple[int, int] | None = None) -> tuple[float, float]:
        """(row, column) pixel size in mm of an image of ``shape`` over this slice's field of view."""
        if shape is None or tuple(shape) == tuple(self.shape):
            return self.spacing
        return (self.spacing[0] * self.shape[0] / shape[0], self.spacing[1] * self.shape[1] / shape[1])


@dataclass
class StudyView:
    """One assembled stack of a study.

    Attributes:
        role: "cine" or "lge".
        view: one of VIEWS.
        n_slices, n_phases: grid shape; LGE views have n_phases == 1.
        shape: (H, W) of every frame ``pixels()`` returns (mixed matrices are resampled to it).
        pixel_spacing: (row, column) spacing in mm of the returned frames.
        slice_positions: (S,) float64, mm along the slice normal, ascending.
        trigger_times: (P,) float64, ms after the R wave (nominal, from the reference slice); NaN if unknown.
        rr_interval: ms, or None when unknown.
        series_uids: the series this view was built from.
        notes: human-readable repairs and warnings (a dropped phase, a merged stack, ...).
        geometry: each slice's place in patient coordinates (``SliceGeometry``), in slice order; empty when a
            slice's headers lack a usable position, orientation or pixel spacing (or the view is an array).
    """

    role: str
    view: str
    n_slices: int
    n_phases: int
    shape: tuple[int, int]
    pixel_spacing: tuple[float, float]
    slice_positions: np.ndarray
    trigger_times: np.ndarray
    rr_interval: float | None
    series_uids: list[str]
    notes: list[str] = field(default_factory=list)
    geometry: tuple[SliceGeometry, ...] = ()
    # loader(slices, phases) -> float32 (len(slices), len(phases), H, W)
    _loader: Callable[[Sequence[int], Sequence[int]], np.ndarray] | None = field(default=None, repr=False)
    # the files of each image of the grid (slices x phases), for a source that must fetch them before decoding
    _refs: list[list[FileRef]] | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return view_key(self.role, self.view)

    def pixels(self, slices: Sequence[int] | None = None, phases: Sequence[int] | None = None) -> np.ndarray:
        """Decode and return float32 (len(slices), len(phases), H, W) in modality units (rescale applied,
        MONOCHROME1 inverted so that bright is high signal). Default: every slice / every phase."""
        s = list(range(self.n_slices)) if slices is None else [int(i) for i in slices]
        p = list(range(self.n_phases)) if phases is None else [int(i) for i in phases]
        for i in s:
            if not 0 <= i < self.n_slices:
                raise IndexError(f"slice {i} out of range for {self.key} with {self.n_slices} slices")
        for i in p:
            if not 0 <= i < self.n_phases:
                raise IndexError(f"phase {i} out of range for {self.key} with {self.n_phases} phases")
        assert self._loader is not None, "StudyView built without a loader"
        out = self._loader(s, p)
        return np.asarray(out, dtype=np.float32)

    def image_refs(self, slices: Sequence[int], phases: Sequence[int]) -> list[FileRef]:
        """The objects ``pixels(slices, phases)`` reads (each once; several images may share a multi-frame
        object). Empty for a view over an array."""
        if self._refs is None:
            return []
        out = {self._refs[int(i)][int(j)]: None for i in slices for j in phases}
        return list(out)

    @classmethod
    def from_array(
        cls,
        role: str,
        view: str,
        array: np.ndarray,
        *,
        pixel_spacing: tuple[float, float] = (1.0, 1.0),
        slice_positions: np.ndarray | None = None,
        trigger_times: np.ndarray | None = None,
        rr_interval: float | None = None,
        series_uids: list[str] | None = None,
        notes: list[str] | None = None,
        geometry: Sequence[SliceGeometry] = (),
    ) -> StudyView:
        """A view over an in-memory (S, P, H, W) array, e.g. a phantom rendered without DICOM."""
        arr = np.asarray(array, dtype=np.float32)
        if arr.ndim != 4:
            raise ValueError(f"expected (slices, phases, H, W), got shape {arr.shape}")
        s, p, h, w = arr.shape
        return cls(
            role=role,
            view=view,
            n_slices=s,
            n_phases=p,
            shape=(h, w),
            pixel_spacing=tuple(float(x) for x in pixel_spacing),  # type: ignore[arg-type]
            slice_positions=np.arange(s, dtype=np.float64) if slice_positions is None else np.asarray(slice_positions, float),
            trigger_times=np.full(p, np.nan) if trigger_times is None else np.asarray(trigger_times, float),
            rr_interval=rr_interval,
            series_uids=list(series_uids or []),
            notes=list(notes or []),
            geometry=tuple(geometry),
            _loader=lambda sl, ph: arr[np.ix_(list(sl), list(ph))],
        )


@dataclass
class SeriesDecision:
    """Why a series was used or skipped, for the assembly manifest."""

    series_uid: str
    series_number: int | None
    description: str
    role: str
    view: str | None
    used_as: str | None  # view key it went into, or None when skipped
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class InputCheck:
    """One input check that failed on an assembled view: which rule, which view and series, and why (``message``
    is also in the manifest's ``warnings``)."""

    rule: str  # e.g. "sax-coverage", "slice-gap", "uneven-spacing", "mixed-orientation", "duplicate-images", "few-phases"
    view: str  # view key, e.g. "cine:SAX"
    series_uids: list[str]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "view": self.view, "series_uids": list(self.series_uids), "message": self.message}


@dataclass
class AssemblyManifest:
    """What went into a Study and what was left out, with reasons.

    ``warnings``: human-readable, one per problem (repairs worth knowing, missing views, failed input checks).
    ``input_checks``: the failed input checks as data. ``read_warnings``: what pydicom complained about in the
    study's files (kind -> files, examples), from the header scan and, as views are decoded, from pixel decoding.
    """

    decisions: list[SeriesDecision] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files_scanned: int = 0
    files_skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    input_checks: list[InputCheck] = field(default_factory=list)
    read_warnings: ReadWarnings = field(default_factory=ReadWarnings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decisions": [d.to_dict() for d in self.decisions],
            "warnings": list(self.warnings),
            "files_scanned": self.files_scanned,
            "files_skipped": dict(self.files_skipped),
            "input_checks": [c.to_dict() for c in self.input_checks],
            "read_warnings": self.read_warnings.to_dict(),
        }


@dataclass
class Study:
    """The assembled study: chosen views and the manifest that explains them."""

    study_uid: str
    views: dict[str, StudyView] = field(default_factory=dict)
    manifest: AssemblyManifest = field(default_factory=AssemblyManifest)
    source: str | None = None  # folder or archive the study was read from

    def get(self, role: str, view: str) -> StudyView | None:
        return self.views.get(view_key(role, view))

    def first(self, role: str, views: Sequence[str]) -> StudyView | None:
        """The first present view of ``role`` among ``views`` (a preference order)."""
        for v in views:
            sv = self.get(role, v)
            if sv is not None:
                return sv
        return None

    @property
    def missing(self) -> list[str]:
        """Standard views (STANDARD_VIEWS) absent from the study."""
        return [k for k in STANDARD_VIEWS if k not in self.views]
