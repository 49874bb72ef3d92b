"""Why a finding scored as it did: occlusion attribution on the model's own input. numpy + the encoder.

Every attribution is a score difference: the finding's score on the study's input minus its score on a perturbed
input, in the finding's score units (positive: the part taken away supported the score). Three perturbations, all
made on the recipe's montage (``cmrdx.recipe``) from frames decoded, windowed and stored once (``Montage``):

* **views**: each montage segment (cine long axis, cine SAX, LGE SAX stack, LGE long-axis images) is left out the
  way the recipe leaves out a view a study lacks: the views the segment could take are taken out of the study, the
  montage is planned again (``montage_plan``: the other segments fill the sampled frames; without an LGE SAX stack
  the long-axis LGE images are repeated the recipe's default count), and sampled again;
* **phases**: a window of the cardiac cycle (``phase_width`` of the RR interval) slides over ``phase_windows``
  positions; the frames of every cine segment inside the window are replaced by that segment's mean frame (the
  anatomy stays, the motion in the window goes), giving a curve over the cycle;
* **regions**: for the segment that matters most to a finding (the largest view attribution), a ``grid`` x ``grid``
  patch of the model's field of view is taken away on every frame of that segment (``smoothed``: the patch without
  its fine bright structures), giving a map shown over key frames of that segment. Each patch's value is the mean
  of two differences, as a view's is: *deletion* (the study's score minus the score with the patch taken away) and
  *insertion* (the score with only that patch left, the rest of the field taken away, minus the score with the whole
  field taken away). Deletion alone misses evidence the model sees twice: a model that asks whether any patch
  shows enhancement (a max over the image) keeps its score when one of two scarred patches is hidden; insertion
  finds each of them.

The perturbations do not depend on the finding, so one set of perturbed inputs serves every finding: a study costs
(plans + phase_windows + (2 grid^2 + 2) x region views) encoder inputs, run ``batch`` at a time. Findings that
cannot be assessed (the study lacks what they need) are not explained.

A recipe with streams (``RecipeParams.streams``: further video paths whose frames follow the main recipe's in the
model's input) is explained over the main recipe's segments. The stream frames are appended to every perturbed
input. A views perturbation removes its views from the whole study, so each stream is planned again without them
(a stream left with none of its views gets all-zero frames, as ``apply_recipe`` gives it). A region perturbation
takes the same part of the heart away in a stream's frames of the same images: the patch's edges are carried from
the main recipe's stored frame to the view's image and on through the stream's own cut (around the heart) and
resize (``Montage.boundary_map``), and that rectangle of the stream's frame gets the same replacement
(``smoothed``). Phase perturbations change the main recipe's cine frames only. ``Explanation.to_dict`` says what
was done to the streams' frames.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrdx.recipe import (
    SEGMENTS,
    MontagePlan,
    PlanEntry,
    RecipeParams,
    _resize_crop_matrices,
    _short_edge_size,
    apply_window,
    entry_crop,
    heart_crops,
    montage_plan,
    read_entry,
    read_plan,
    resize_crop,
    sample_indices,
    store_frames,
    window_bounds,
)
from cmrdx.vocab import view_key

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.model.encoder import Encoder
    from cmrdx.study.types import Study
    from cmrdx.zeroshot.bank import Finding, PromptBank
    from cmrdx.zeroshot.scoring import FindingScore

CYCLE_KIND = "mid_slice_all_phases"  # the segments that hold a cardiac cycle (cines)
END_SYSTOLE_FRACTION = 0.35  # a cine key frame: end-systole falls near a third of the RR interval at most rates
PREPARE_BYTES = 256 << 20  # perturbed inputs made ahead of the encoder at most (CMR-CLIP's input: 38 MB)


@dataclass(frozen=True)
class ExplainOptions:
    """How much attribution to compute. The encoder inputs per study are at most ``plans + phase_windows +
    (2 grid**2 + 2) x (segments with a region map)``: the plans (the study, each segment left out, each alone among
    its role, each role left out: 13 for six segments of two roles), the phase windows, and per mapped segment its
    context plan, the whole field taken away and each patch twice (deletion and insertion): at most
    ``13 + 8 + 34 = 55`` with the defaults (the view attributions alone: 21).

    Attributes:
        phase_windows: positions of the sliding window over the cycle (0 leaves the phase curve out).
        phase_width: the window's width, as a fraction of the cycle.
        grid: the region map's patches per side over the model's field of view (0 leaves the maps out).
        region_views: at most this many segments get a region map: the segments that matter most to the explained
            findings, taken in the findings' order (the first finding's first); a finding whose own most important
            segment is not among them gets none (``region_note``).
        region_segments: map these segments instead (e.g. ``("lge_sa",)``), for every finding.
        batch: perturbed inputs per encoder call.
    """

    phase_windows: int = 8
    phase_width: float = 0.25
    grid: int = 4
    region_views: int = 1
    region_segments: tuple[str, ...] = ()
    batch: int = 4

    def __post_init__(self) -> None:
        if self.phase_windows < 0 or self.grid < 0 or self.region_views < 0 or self.batch < 1:
            raise ValueError("phase_windows, grid and region_views must be >= 0 and batch >= 1")
        unknown = [s for s in self.region_segments if s not in SEGMENTS]
        if unknown:
            raise ValueError(f"unknown segments {unknown}; known: {', '.join(SEGMENTS)}")
        if not 0 < self.phase_width < 1:
            raise ValueError(f"phase_width must be a fraction of the cycle in (0, 1), not {self.phase_width}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


# --------------------------------------------------------------------------------------------------------------
# The montage, decoded once


def _stored(frames: np.ndarray, p: RecipeParams) -> np.ndarray:
    """(n, H, W) modality units -> the frames as ``apply_recipe`` holds them before sampling: windowed and stored
    at 8 bit (``store_size``), else resized to the crop (float32, 0..255)."""
    lo, hi = window_bounds(frames, p.window, p.window_scope)
    x = apply_window(frames, lo, hi)
    return store_frames(x, p) if p.store_size is not None else resize_crop(x, p.resize, p.crop)


class Montage:
    """A study's montage under recipe ``p`` with every planned image decoded, windowed and stored once, from
    which the model's input is rebuilt for any plan over the same views and any frames put in place of the
    stored ones. ``input()`` equals ``apply_recipe(study, p).array`` (a test checks it). A recipe with streams is
    taken as its main recipe (``p.main``): ``input()`` is then the first ``p.frames`` frames of the model's input
    (``explain`` appends the streams' frames)."""

    def __init__(self, study: Study, p: RecipeParams):
        p = p.main
        self.study = study
        self.p = p
        self.plan = montage_plan(p, study.views)
        if not self.plan.entries:
            raise ValueError("recipe found none of its views in the study: " + "; ".join(self.plan.substitutions))
        self.crops, self.heart, _ = heart_crops(study.views, self.plan, p)
        images, self.used = read_plan(study, self.plan, self.crops)
        self.entries: dict[str, PlanEntry] = {e.segment: e for e in self.plan.entries}
        self.stored: dict[str, np.ndarray] = {e.segment: _stored(f, p) for e, f in zip(self.plan.entries, images)}
        # the transform of ``frames_to_input`` as ``apply_recipe`` calls it
        self._q = p if p.store_size is not None else replace(p, resize=p.crop)
        self._finals: dict[str, np.ndarray] = {}

    @property
    def segments(self) -> list[str]:
        return [e.segment for e in self.plan.entries]

    def frames_of(self, entry: PlanEntry) -> np.ndarray:
        """The stored frames of a plan entry (a replanned segment takes the same images as in the full plan)."""
        base = self.entries.get(entry.segment)
        if base is not None and base.images == entry.images and base.key == entry.key:
            return self.stored[entry.segment]
        view = self.study.views[entry.key]
        crop = entry_crop(view, entry, self.heart, float(self.p.heart_crop_mm)) \
            if self.heart is not None and self.p.heart_crop_mm is not None else None
        return _stored(read_entry(view, entry, crop), self.p)

    def _final(self, frames: np.ndarray) -> np.ndarray:
        """Stored frames (n, h, w) 0..255 -> (n, S, S) grey images of the model input, before normalisation:
        what ``frames_to_input`` computes frame by frame."""
        q = self._q
        return resize_crop((frames / 255.0).astype(np.float32), q.resize, q.crop, q.image_size)

    def patch_change(self, segment: str, new: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        """(n, S, S) change of the segment's grey images when its stored frames take ``new`` in the patch
        (rows, cols): the transform is linear, so only the patch's columns of its matrices are needed."""
        return self.patch_change_each(segment, new, [(rows, cols)] * len(self.stored[segment]))

    def patch_change_each(self, segment: str, new: np.ndarray,
                          rects: Sequence[tuple[slice, slice] | None]) -> np.ndarray:
        """``patch_change`` with a patch of its own for each stored frame of the segment (None: the frame keeps
        its own)."""
        q = self._q
        st = self.stored[segment]
        r, c = _resize_crop_matrices(st.shape[1], st.shape[2], q.resize, q.crop, q.image_size)
        out = np.zeros((len(st), q.image_size, q.image_size), np.float32)
        for k, rc in enumerate(rects):
            if rc is None:
                continue
            rows, cols = rc
            d = ((new[k, rows, cols] - st[k, rows, cols]) / 255.0).astype(np.float32)
            out[k] = r[:, rows] @ d @ c[:, cols].T
        return out

    def boundary_map(self, segment: str, image: int) -> tuple[float, float, float, float]:
        """(a_r, b_r, a_c, b_c): a pixel edge at row y (column x) of the view's image lies at ``y * a_r - b_r``
        (``x * a_c - b_c``) of the segment's stored frame of ``image`` (an index into its entry's images): the
        entry's cut around the heart, then the resize of the shorter edge and the centre crop."""
        e = self.entries[segment]
        crop = self.crops.get(segment)
        h, w = crop.size if crop is not None else self.study.views[e.key].shape
        r0, c0 = crop.starts[image] if crop is not None else (0, 0)
        p = self.p
        size, out = (p.store_size, p.store_size) if p.store_size is not None else (p.resize, p.crop)
        rh, rw = _short_edge_size(h, w, size)
        a_r, a_c = rh / h, rw / w
        return a_r, r0 * a_r + round((rh - out) / 2.0), a_c, c0 * a_c + round((rw - out) / 2.0)

    def input(self, plan: MontagePlan | None = None, frames: Mapping[str, np.ndarray] | None = None,
              grey: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """(frames, 3, S, S) float32 model input of ``plan`` (default: the study's own), with ``frames[segment]``
        (stored frames, 0..255) or ``grey[segment]`` (grey images as ``final_of`` gives them) in place of a
        segment's own. Each image is transformed once per study (``_final``); only the sampled images of replaced
        frames are transformed again."""
        plan = plan if plan is not None else self.plan  # an empty plan (a stream without its views): zeros
        seq = plan.frames()
        idx = sample_indices(len(seq), self.p.frames)
        picked = [seq[i] for i in idx]
        shown: list[np.ndarray] = [np.zeros(0)] * len(picked)
        for ei, e in enumerate(plan.entries):
            pos = [k for k, (ej, _) in enumerate(picked) if ej == ei]
            if not pos:
                continue
            ims = [picked[k][1] for k in pos]
            if grey is not None and e.segment in grey:
                imgs = [grey[e.segment][ii] for ii in ims]
            elif frames is not None and e.segment in frames:
                done = self._final(frames[e.segment][sorted(set(ims))])
                row = {ii: done[n] for n, ii in enumerate(sorted(set(ims)))}
                imgs = [row[ii] for ii in ims]
            else:
                fin = self.final_of(e)
                imgs = [fin[ii] for ii in ims]
            for k, im in zip(pos, imgs):
                shown[k] = im
        q, s = self._q, self._q.image_size
        out = np.zeros((q.frames, 3, s, s), dtype=np.float32)
        if picked:
            img = np.stack(shown)
            for c in range(3):
                out[:len(picked), c] = (img - q.mean[c]) / q.std[c]
        return out

    def final_of_frames(self, frames: np.ndarray) -> np.ndarray:
        """``_final`` of any stored frames (n, h, w) of this study."""
        return self._final(frames)

    def final_of(self, entry: PlanEntry) -> np.ndarray:
        """``_final`` of a plan entry's stored frames, computed once per segment."""
        base = self.entries.get(entry.segment)
        if base is not None and base.images == entry.images and base.key == entry.key:
            if entry.segment not in self._finals:
                self._finals[entry.segment] = self._final(self.stored[entry.segment])
            return self._finals[entry.segment]
        return self._final(self.frames_of(entry))

    def keys_of(self, segment: str) -> frozenset[str]:
        """The view keys ``segment`` could take (its preference list)."""
        spec = SEGMENTS[segment]
        return frozenset(view_key(spec.role, v) for v in spec.views)

    def plan_without(self, gone: frozenset[str] | set[str]) -> MontagePlan:
        """The plan of the study with the views ``gone`` taken out, as the recipe plans a study that lacks them."""
        return montage_plan(self.p, {k: v for k, v in self.study.views.items() if k not in gone})

    def without(self, segment: str) -> MontagePlan:
        """The plan with ``segment`` left out as the recipe leaves out a view a study lacks: every view it could
        take is taken out (another preference would otherwise stand in for it)."""
        return self.plan_without(self.keys_of(segment))

    def visible(self) -> tuple[int, int]:
        """[lo, hi) of the stored frames' rows (= columns: stored frames are square) that the model sees after the
        test transform's resize and centre crop."""
        p = self.p
        size = p.store_size if p.store_size is not None else p.crop
        resize = p.resize if p.store_size is not None else p.crop
        off = int(round((resize - p.crop) / 2.0))
        return int(round(off * size / resize)), int(round((off + p.crop) * size / resize))


# --------------------------------------------------------------------------------------------------------------
# Perturbations


@dataclass
class _Perturbation:
    kind: str  # "plan" | "phase" | "region" (a patch taken away) | "kept" (a patch alone) | "none" (no patch)
    key: Any  # view keys taken out | window index | (segment, row, col) | segment
    make: Callable[[], np.ndarray]


def _phase_masks(n: int, windows: int, width: float) -> list[np.ndarray]:
    """For a cycle of ``n`` evenly spaced images, the images inside each of ``windows`` windows of ``width`` (a
    fraction of the cycle) centred at k / windows, distance measured around the cycle."""
    pos = np.arange(n) / n
    out = []
    for k in range(windows):
        d = np.abs(pos - k / windows)
        d = np.minimum(d, 1.0 - d)
        out.append(d < width / 2.0 + 1e-9)
    return out


def _grid_edges(lo: int, hi: int, g: int) -> np.ndarray:
    return np.round(np.linspace(lo, hi, g + 1)).astype(int)


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) Gaussian smoothing along one axis, rows renormalised at the edges (no dark border)."""
    x = np.arange(n, dtype=np.float64)
    w = np.exp(-0.5 * ((x[:, None] - x[None, :]) / max(sigma, 1e-6)) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _running(frames: np.ndarray, k: int, op: Callable[..., np.ndarray]) -> np.ndarray:
    """``op`` (np.minimum / np.maximum) over a k x k square around every pixel of (n, H, W) frames, edges
    replicated: k shifted comparisons along each axis."""
    a, b = k // 2, k - 1 - k // 2
    h, w = frames.shape[1:]
    x = np.pad(frames, ((0, 0), (a, b), (0, 0)), mode="edge")
    out = x[:, :h].copy()
    for d in range(1, k):
        op(out, x[:, d:d + h], out=out)
    x = np.pad(out, ((0, 0), (0, 0), (a, b)), mode="edge")
    out = x[:, :, :w].copy()
    for d in range(1, k):
        op(out, x[:, :, d:d + w], out=out)
    return out


def smoothed(frames: np.ndarray, role: str, patch: float, p: RecipeParams) -> np.ndarray:
    """What a region of ``frames`` (n, S, S) is replaced with, ``patch`` being the patch's size in pixels.

    LGE: a grey-level opening with a square a third of the patch wide: enhancement (bright myocardium, a bright
    rim) narrower than that is taken away and the rest of the anatomy stays, i.e. the patch as it would look without
    enhancement. Cine: a Gaussian blur of half the patch: the patch keeps its brightness and loses its detail
    (edges, walls, a rim of fluid). Either way the model sees no artificial flat square. Whole grey levels when
    frames are stored at 8 bit."""
    if role == "lge":
        k = max(3, int(round(patch / 3)))
        out = _running(_running(frames, k, np.minimum), k, np.maximum)
    else:
        b = _blur_matrix(frames.shape[-1], patch / 2.0)
        out = np.matmul(np.matmul(b, frames), b.T)
    return (np.rint(out) if p.store_size is not None else out).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class RegionMap:
    """A finding's occlusion map over one segment: ``grid[i][j]`` is the score change when patch (i, j) of the
    model's field of view is replaced on every frame of the segment; ``images`` (not in ``to_dict``) are the key
    frames as the model sees them (uint8), ``frames`` says which they are."""

    segment: str
    view: str
    grid: list[list[float]]  # the mean of deletion and insertion
    frames: list[str]
    alone: bool = False  # made with the segment as the only one of its role
    images: list[np.ndarray] = field(default_factory=list, repr=False)
    deletion: list[list[float]] = field(default_factory=list)  # score minus the score with the patch taken away
    insertion: list[list[float]] = field(default_factory=list)  # score with the patch alone minus with none

    def to_dict(self) -> dict[str, Any]:
        return {"segment": self.segment, "view": self.view, "grid": self.grid, "key_frames": self.frames,
                "alone": self.alone, "deletion": self.deletion, "insertion": self.insertion}


def _grid_of(a: np.ndarray, ti: int) -> list[list[float]]:
    """Target ``ti``'s map of a (grid, grid, targets) array, rounded."""
    return [[round(float(x), 6) for x in row] for row in a[:, :, ti]]


def _rounded(d: Mapping[str, float | None]) -> dict[str, float | None]:
    return {k: (None if x is None else round(x, 6)) for k, x in d.items()}


@dataclass
class FindingExplanation:
    """One finding's attribution. ``views``: segment -> score change when the segment is left out (None: it was
    the only segment); ``phase``: score change per window position (``Explanation.phase_centres``); ``region``:
    the map over ``top_segment`` when it got one."""

    id: str
    label: str
    bank: str
    score: float
    views: dict[str, float | None]
    leave_out: dict[str, float | None]
    alone: dict[str, float | None]
    roles: dict[str, float]
    phase: list[float]
    top_segment: str | None
    region: RegionMap | None = None
    region_note: str | None = None
    # segments whose removal would leave the finding without the images it requires
    needed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "bank": self.bank, "score": self.score,
                "views": _rounded(self.views), "leave_out": _rounded(self.leave_out), "alone": _rounded(self.alone),
                "roles": {k: round(v, 6) for k, v in self.roles.items()},
                "phase": [round(v, 6) for v in self.phase], "top_segment": self.top_segment,
                "needed": self.needed, "region": self.region.to_dict() if self.region else None,
                "region_note": self.region_note}


@dataclass
class Explanation:
    """Attribution for the explained findings of one study, and what it cost."""

    segments: list[dict[str, Any]]
    phase_centres: list[float]
    phase_width: float
    findings: list[FindingExplanation]
    skipped: dict[str, str]
    options: ExplainOptions
    n_inputs: int
    timings_ms: dict[str, float]
    streams: str | None = None  # what the perturbations did to the frames of the recipe's streams, when it has any

    def finding(self, fid: str) -> FindingExplanation | None:
        return next((f for f in self.findings if f.id == fid), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": {
                "views": "score minus the score with the segment left out as the recipe leaves out a missing view",
                "phase": "score minus the score with the cine frames in a window of the cycle replaced by their "
                         "segment's mean frame",
                "region": "per patch of the field of view, the mean of deletion (score minus the score with the "
                          "patch taken away on every frame of the segment: its fine bright structures removed, "
                          "or blurred on a cine) and insertion (the score with the patch alone left, the rest of "
                          "the field taken away, minus the score with the whole field taken away)",
                "options": self.options.to_dict(),
                **({"streams": self.streams} if self.streams else {}),
            },
            "segments": self.segments,
            "phase_centres": [round(c, 4) for c in self.phase_centres],
            "phase_width": self.phase_width,
            "findings": [f.to_dict() for f in self.findings],
            "skipped": self.skipped,
            "n_inputs": self.n_inputs,
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }


# --------------------------------------------------------------------------------------------------------------
# Explaining


Target = tuple["Finding", "PromptBank"]
ScoreFn = Callable[[np.ndarray, "Finding", "PromptBank"], float]


def _stream_montage(study: Study, st: RecipeParams) -> Montage | None:
    """The montage of stream ``st``, or None when the study has none of its views (its frames are all zero)."""
    return Montage(study, st) if montage_plan(st, study.views).entries else None


def _streams_note(p: RecipeParams, occluded: Mapping[int, set[str]]) -> str | None:
    """What the perturbations did to the streams' frames; ``occluded``: per stream (0-based) the segments whose
    region perturbations took the same part of the heart away in its frames."""
    if not p.streams:
        return None
    names = "; ".join(f"stream {k}: {', '.join(st.segments)}, {st.frames} frames"
                      + (f", {st.heart_crop_mm:g} mm around the heart" if st.heart_crop_mm is not None else "")
                      for k, st in enumerate(p.streams, 1))
    regions = "; ".join(f"stream {k + 1}: {', '.join(sorted(segs))}" for k, segs in sorted(occluded.items()) if segs)
    return (f"the model's input also holds the frames of {len(p.streams)} stream(s) ({names}) after the main "
            "recipe's: a views perturbation leaves its views out of the streams too (each stream planned again "
            "without them, as for a study that lacks them); "
            + (f"a region perturbation took the same part of the heart away in the stream's frames of the same "
               f"images ({regions}); " if regions else "the region perturbations did not reach the streams' "
               "frames (no mapped segment is one of theirs); ")
            + "the phase perturbations change the main recipe's cine frames only")


def _stream_rects(m: Montage, segment: str, sm: Montage, rows: slice, cols: slice,
                  ) -> list[tuple[slice, slice] | None]:
    """Per stored frame of stream montage ``sm``'s ``segment``: the rectangle that shows the part of the view's
    image that ``rows`` x ``cols`` of the main montage's stored frames of the same image show (None: the image is
    not one of the main segment's, or the rectangle lies outside the stream's frame)."""
    main_e, st_e = m.entries[segment], sm.entries[segment]
    where = {im: k for k, im in enumerate(main_e.images)} if main_e.key == st_e.key else {}
    n_r, n_c = sm.stored[segment].shape[1:]
    out: list[tuple[slice, slice] | None] = []
    for k, im in enumerate(st_e.images):
        j = where.get(im)
        if j is None:
            out.append(None)
            continue
        a_r, b_r, a_c, b_c = m.boundary_map(segment, j)
        s_ar, s_br, s_ac, s_bc = sm.boundary_map(segment, k)
        # main stored edge -> the view's image -> the stream's stored frame, in whole pixels within the frame
        r0, r1 = (int(np.clip(round((e + b_r) / a_r * s_ar - s_br), 0, n_r)) for e in (rows.start, rows.stop))
        c0, c1 = (int(np.clip(round((e + b_c) / a_c * s_ac - s_bc), 0, n_c)) for e in (cols.start, cols.stop))
        out.append((slice(r0, r1), slice(c0, c1)) if r1 > r0 and c1 > c0 else None)
    return out


def _key_frames(m: Montage, segment: str, phase_peak: int | None) -> tuple[list[str], list[np.ndarray]]:
    """Key frames of a segment as the model sees them (uint8, the visible square): a cine's first phase
    (end-diastole) and the phase near end-systole; up to three slices of an LGE stack; a repeated image once."""
    e = m.entries[segment]
    lo, hi = m.visible()
    frames = m.stored[segment]
    if e.kind == CYCLE_KIND:
        n = len(e.images)
        picks = [(0, "phase 1 (end-diastole)")]
        es = int(round(END_SYSTOLE_FRACTION * n)) % n
        if es != 0:
            picks.append((es, f"phase {es + 1} of {n} (near end-systole)"))
        if phase_peak is not None and phase_peak not in (i for i, _ in picks):
            picks.append((phase_peak, f"phase {phase_peak + 1} of {n} (most important window)"))
    elif e.kind == "all_slices":
        n = len(e.images)
        idx = sorted({int(round(q * (n - 1))) for q in (0.25, 0.5, 0.75)}) if n > 1 else [0]
        picks = [(i, f"slice {e.images[i][0] + 1} of {n}") for i in idx]
    else:
        picks = [(0, f"the image (slice {e.images[0][0] + 1} of the view)")]
    imgs = [np.clip(np.rint(frames[i, lo:hi, lo:hi]), 0, 255).astype(np.uint8) for i, _ in picks]
    return [label for _, label in picks], imgs


def explain(
    study: Study,
    p: RecipeParams,
    encode: Callable[[np.ndarray], np.ndarray],
    targets: Sequence[Target],
    score: ScoreFn,
    *,
    options: ExplainOptions | None = None,
    skipped: Mapping[str, str] | None = None,
    montage: Montage | None = None,
) -> Explanation:
    """Attribution of ``targets`` (finding, its bank; the first ones get the region maps when there are more
    segments to map than ``options.region_views``) for ``study`` under recipe ``p`` (with streams: over the main
    recipe's segments, the streams' frames appended to every input; see the module docstring).

    ``encode``: (B, frames, 3, S, S) -> (B, D) L2-normalised embeddings (``Encoder.encode_studies``); ``score``:
    (embedding, finding, bank) -> the finding's score; ``skipped``: findings left out and why (shown as such).
    """
    opt = options or ExplainOptions()
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    m = montage or Montage(study, p)
    streams = [_stream_montage(study, st) for st in p.streams]
    t["montage_ms"] = (time.perf_counter() - t0) * 1000
    enc_ms = [0.0]
    n_inputs = [0]
    stream_frames: dict[frozenset[str], np.ndarray] = {}

    def with_streams(x: np.ndarray, gone: frozenset[str] = frozenset(),
                     grey: Sequence[Mapping[str, np.ndarray] | None] = ()) -> np.ndarray:
        """The main recipe's input ``x`` followed by every stream's frames, planned without the views ``gone``;
        ``grey[k]``: grey images in place of stream k's own for some of its segments (``Montage.input``)."""
        if not p.streams:
            return x
        if any(g is not None for g in grey):
            parts = []
            for k, (sm, st) in enumerate(zip(streams, p.streams)):
                g = grey[k] if k < len(grey) else None
                if sm is None:
                    parts.append(np.zeros((st.frames, 3, st.image_size, st.image_size), np.float32))
                else:
                    parts.append(sm.input(sm.plan_without(gone) if gone else None, grey=g))
            return np.concatenate([x, *parts])
        if gone not in stream_frames:
            parts = []
            for sm, st in zip(streams, p.streams):
                if sm is None:
                    parts.append(np.zeros((st.frames, 3, st.image_size, st.image_size), np.float32))
                else:
                    parts.append(sm.input(sm.plan_without(gone)) if gone else sm.input())
            stream_frames[gone] = np.concatenate(parts)
        return np.concatenate([x, stream_frames[gone]])

    per_input = 4 * p.input_frames * 3 * p.image_size * p.image_size
    group = max(1, PREPARE_BYTES // per_input // opt.batch) * opt.batch

    def run(inputs: Sequence[_Perturbation]) -> np.ndarray:
        """(len(inputs), len(targets)) scores of the perturbed inputs, encoded ``opt.batch`` at a time. The inputs
        of several batches are made before the encoder runs them back to back: numpy work between two encoder
        calls would compete with the encoder's threads, which keep spinning for a while after a call."""
        out: list[np.ndarray] = []
        for g in range(0, len(inputs), group):
            xs = [c.make() for c in inputs[g:g + group]]
            t1 = time.perf_counter()
            for i in range(0, len(xs), opt.batch):
                emb = encode(np.stack(xs[i:i + opt.batch]))
                out += [np.array([score(e, f, b) for f, b in targets], dtype=np.float64) for e in emb]
            enc_ms[0] += (time.perf_counter() - t1) * 1000
            n_inputs[0] += len(xs)
        return np.stack(out) if out else np.zeros((0, len(targets)))

    t2 = time.perf_counter()
    segs = m.segments
    lone = len(segs) == 1
    role_of = {s: m.entries[s].role for s in segs}
    roles = list(dict.fromkeys(role_of.values()))
    keys = {s: m.keys_of(s) for s in segs}

    # plans, each named by the view keys it takes out of the study (one input per distinct plan)
    plans: dict[frozenset[str], _Perturbation] = {}

    def plan_maker(gone: frozenset[str]) -> Callable[[], np.ndarray]:
        return lambda: with_streams(m.input(m.plan_without(gone)) if gone else m.input(), gone)

    def plan_input(gone: frozenset[str]) -> frozenset[str]:
        if gone not in plans:
            plans[gone] = _Perturbation("plan", gone, plan_maker(gone))
        return gone

    full = plan_input(frozenset())
    loo = {s: plan_input(frozenset(keys[s])) for s in segs} if not lone else {}
    others = {s: frozenset().union(*[keys[o] for o in segs if role_of[o] == role_of[s] and o != s]) for s in segs}
    alone = {s: plan_input(others[s]) for s in segs} if len(roles) > 1 else {}
    without_role = {r: plan_input(frozenset().union(*[keys[s] for s in segs if role_of[s] == r])) for r in roles} \
        if len(roles) > 1 else {}
    cines = [s for s in segs if m.entries[s].kind == CYCLE_KIND]
    masks = {s: _phase_masks(len(m.entries[s].images), opt.phase_windows, opt.phase_width) for s in cines}
    # a cine's mean frame (whole grey levels when frames are stored at 8 bit), as the model input sees it
    mean_grey = {s: m.final_of_frames(np.rint(m.stored[s].mean(axis=0, keepdims=True)) if p.store_size is not None
                                      else m.stored[s].mean(axis=0, keepdims=True))[0] for s in cines}

    def phase_input(k: int) -> Callable[[], np.ndarray]:
        def make() -> np.ndarray:
            grey = {}
            for s in cines:
                g = m.final_of(m.entries[s]).copy()
                g[masks[s][k]] = mean_grey[s]
                grey[s] = g
            return with_streams(m.input(grey=grey))
        return make

    first = list(plans.values())
    first += [_Perturbation("phase", k, phase_input(k)) for k in range(opt.phase_windows)] if cines else []
    sc1 = run(first)
    v = {pp.key: sc for pp, sc in zip(first, sc1) if pp.kind == "plan"}
    phases = [v[full] - sc for pp, sc in zip(first, sc1) if pp.kind == "phase"]
    base = v[full]

    def views_of(ti: int) -> dict[str, dict[str, float | None]]:
        out: dict[str, dict[str, float | None]] = {}
        for s in segs:
            lo_ = float(base[ti] - v[loo[s]][ti]) if s in loo else None
            al = float(v[alone[s]][ti] - v[without_role[role_of[s]]][ti]) if s in alone else None
            both = [x for x in (lo_, al) if x is not None]
            out[s] = {"value": (sum(both) / len(both)) if both else None, "leave_out": lo_, "alone": al}
        return out

    attributions = [views_of(ti) for ti in range(len(targets))]

    # a segment is "needed" by a finding when leaving it out would leave the finding without images it requires
    have = set(study.views)
    needed = [[s for s in segs if f.missing(have - keys[s]) and not f.missing(have)] for f, _ in targets]

    def top_of(ti: int) -> str:
        vals = {s: a["value"] for s, a in attributions[ti].items() if a["value"] is not None}
        if not vals:
            return segs[0]
        best = max(vals, key=lambda s: vals[s])
        return best if vals[best] > 0 else max(vals, key=lambda s: abs(vals[s]))

    tops = [top_of(ti) for ti in range(len(targets))]
    if opt.region_segments:
        region_segs = [s for s in opt.region_segments if s in segs] if opt.grid else []
    else:
        region_segs = list(dict.fromkeys(tops))[:opt.region_views] if opt.grid else []
    lo, hi = m.visible()
    edges = _grid_edges(lo, hi, opt.grid) if opt.grid else np.zeros(0, int)
    patch = (hi - lo) / max(opt.grid, 1)
    soft: dict[str, np.ndarray] = {}
    stream_soft: dict[tuple[int, str], np.ndarray] = {}
    occluded: dict[int, set[str]] = {}

    def stream_reaches(k: int, s: str) -> bool:
        """Whether stream k holds the images of segment ``s`` as planned for its region map (the role's other
        views taken out), so that its patches can be taken away there too."""
        sm = streams[k]
        if sm is None or s not in sm.entries:
            return False
        planned = sm.plan_without(others[s]) if others[s] else sm.plan
        pe = next((e for e in planned.entries if e.segment == s), None)
        return pe is not None and pe.images == sm.entries[s].images and pe.key == sm.entries[s].key

    field_ = slice(int(edges[0]), int(edges[-1])) if opt.grid else slice(0, 0)  # the patches' union
    stream_all: dict[tuple[int, str], np.ndarray] = {}
    soft_all: dict[str, np.ndarray] = {}  # a segment's change with the whole field taken away

    def stream_grey(s: str, r: slice | None, c: slice | None, kept: bool) -> list[Mapping[str, np.ndarray] | None]:
        """Per stream: its grey images of segment ``s`` with the part of the heart that patch (r, c) of the main
        frames shows taken away (``kept``: only that part left, the rest of the field taken away; no patch: the
        whole field taken away), replaced as the main frames' patch is; None when it does not hold them."""
        out: list[Mapping[str, np.ndarray] | None] = []
        for k, sm in enumerate(streams):
            if sm is None or not stream_reaches(k, s):
                out.append(None)
                continue
            if (k, s) not in stream_soft:  # the patch's size in the stream's pixels
                scale = sm.boundary_map(s, 0)[0] / m.boundary_map(s, 0)[0]
                stream_soft[(k, s)] = smoothed(sm.stored[s], role_of[s], patch * scale, sm.p)
                stream_all[(k, s)] = sm.patch_change_each(s, stream_soft[(k, s)],
                                                          _stream_rects(m, s, sm, field_, field_))
            d = sm.patch_change_each(s, stream_soft[(k, s)], _stream_rects(m, s, sm, r, c)) \
                if r is not None and c is not None else 0.0
            out.append({s: sm.final_of(sm.entries[s]) + (stream_all[(k, s)] - d if kept else d)})
            occluded.setdefault(k, set()).add(s)
        return out

    def region_input(s: str, ij: tuple[int, int] | None, kept: bool = False) -> Callable[[], np.ndarray]:
        """Patch ``ij`` of segment ``s`` taken away (``kept``: the only one left); None: the whole field taken
        away. The map is made with ``s`` the only segment of its role, so that evidence the role's other segments
        repeat (an infarct seen on the SAX stack and on every long-axis LGE image) does not hide it."""
        plan = m.plan_without(others[s]) if others[s] else None

        def make() -> np.ndarray:
            if s not in soft:
                soft[s] = smoothed(m.stored[s], role_of[s], patch, p)
                soft_all[s] = m.patch_change(s, soft[s], field_, field_)
            whole = soft_all[s]
            if ij is None:
                r = c = None
                g = m.final_of(m.entries[s]) + whole
            else:
                i, j = ij
                r, c = slice(edges[i], edges[i + 1]), slice(edges[j], edges[j + 1])
                d = m.patch_change(s, soft[s], r, c)
                g = m.final_of(m.entries[s]) + (whole - d if kept else d)
            return with_streams(m.input(plan, grey={s: g}), others[s], stream_grey(s, r, c, kept or ij is None))
        return make

    context = {s: others[s] for s in region_segs}
    second = [_Perturbation("plan", g, plan_maker(g)) for g in dict.fromkeys(context.values()) if g not in v]
    second += [_Perturbation("none", s, region_input(s, None)) for s in region_segs]
    second += [_Perturbation(kind, (s, i, j), region_input(s, (i, j), kind == "kept"))
               for s in region_segs for kind in ("region", "kept") for i in range(opt.grid) for j in range(opt.grid)]
    sc2 = run(second)
    v.update({pp.key: sc for pp, sc in zip(second, sc2) if pp.kind == "plan"})
    t["perturb_ms"] = (time.perf_counter() - t2) * 1000 - enc_ms[0]
    t["encode_ms"] = enc_ms[0]
    deletion = {s: np.zeros((opt.grid, opt.grid, len(targets))) for s in region_segs}
    insertion = {s: np.zeros((opt.grid, opt.grid, len(targets))) for s in region_segs}
    none = {pp.key: sc for pp, sc in zip(second, sc2) if pp.kind == "none"}
    for pp, sc in zip(second, sc2):
        if pp.kind == "region":
            seg, i, j = pp.key
            deletion[seg][i, j] = v[context[seg]] - sc
        elif pp.kind == "kept":
            seg, i, j = pp.key
            insertion[seg][i, j] = sc - none[seg]
    region_grid = {s: (deletion[s] + insertion[s]) / 2.0 for s in region_segs}

    out: list[FindingExplanation] = []
    for ti, (f, b) in enumerate(targets):
        phase = [float(x[ti]) for x in phases]
        top = tops[ti]
        att = attributions[ti]
        fe = FindingExplanation(
            id=f.id, label=f.label, bank=b.name, score=float(base[ti]),
            views={s: a["value"] for s, a in att.items()},
            leave_out={s: a["leave_out"] for s, a in att.items()},
            alone={s: a["alone"] for s, a in att.items()},
            roles={r: float(base[ti] - v[g][ti]) for r, g in without_role.items()},
            phase=phase, top_segment=top, needed=needed[ti])
        mapped = top if top in region_grid else (region_segs[0] if opt.region_segments and region_segs else None)
        if mapped is not None:
            peak = None
            n_img = len(m.entries[mapped].images)
            if m.entries[mapped].kind == CYCLE_KIND and phase and max(phase) > 0:
                peak = int(round(int(np.argmax(phase)) / opt.phase_windows * n_img)) % n_img
            labels, imgs = _key_frames(m, mapped, peak)
            fe.region = RegionMap(segment=mapped, view=m.entries[mapped].key, alone=bool(others[mapped]),
                                  grid=_grid_of(region_grid[mapped], ti), frames=labels, images=imgs,
                                  deletion=_grid_of(deletion[mapped], ti), insertion=_grid_of(insertion[mapped], ti))
        elif opt.grid:
            fe.region_note = (f"no region map: its most important segment ({top}) is not among the "
                              f"{opt.region_views} mapped for this study (the higher-ranked findings' first)")
        out.append(fe)
    t["total_ms"] = (time.perf_counter() - t0) * 1000
    seg_info = [{"segment": e.segment, "view": e.key, "kind": e.kind, "images": len(e.images), "repeats": e.repeats}
                for e in m.plan.entries]
    return Explanation(segments=seg_info,
                       phase_centres=[k / opt.phase_windows for k in range(opt.phase_windows)] if cines else [],
                       phase_width=opt.phase_width, findings=out, skipped=dict(skipped or {}), options=opt,
                       n_inputs=n_inputs[0], timings_ms=t, streams=_streams_note(p, occluded))


def explain_findings_of(study: Study, enc: Encoder, ranked: Sequence[FindingScore], banks: Sequence[PromptBank],
                        text_embeddings: Mapping[str, Mapping[str, np.ndarray]], model_sha256: str, *,
                        options: ExplainOptions | None = None, only: Sequence[str] | None = None) -> Explanation:
    """``explain`` for a classified study: its findings in ranked order (``only``: these ids), scored as
    ``classify`` scores them; findings that cannot be assessed are skipped with their reason."""
    from cmrdx.zeroshot.scoring import score_finding

    by = {(b.name, f.id): (f, b) for b in banks for f in b.findings}
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    for s in ranked:
        if only and s.id not in only:
            continue
        if not s.assessable:
            skipped[s.id] = f"not assessable ({s.reason})" if s.reason else "not assessable"
            continue
        if (s.bank, s.id) in by:
            targets.append(by[(s.bank, s.id)])
    opt = options or ExplainOptions()
    if not targets:
        return Explanation(segments=[], phase_centres=[], phase_width=opt.phase_width, findings=[], skipped=skipped,
                           options=opt, n_inputs=0, timings_ms={})

    def score(e: np.ndarray, f: Finding, b: PromptBank) -> float:
        return score_finding(e, f, dict(text_embeddings[b.name]), b, enc.manifest.name, model_sha256).score

    return explain(study, enc.manifest.recipe_params(), enc.encode_studies, targets, score, options=opt,
                   skipped=skipped)
