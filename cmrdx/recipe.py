"""Input recipes: a Study -> the float32 video array a model was trained on. numpy only.

A recipe is a name plus parameters (``RecipeParams``); both are stored in a model's manifest, so the input
spec travels with the weights. ``cmrclip-v1`` reproduces the CMR-CLIP reference input
(docs/cmrclip.md):

1. Montage, in order: ``cine_lax`` (middle slice, every phase), ``cine_sa`` (middle slice, every phase),
   ``lge_sa`` (every slice), then ``lge_lax``, ``lge_2ch``, ``lge_3ch`` (one image each, repeated L times,
   L = number of ``lge_sa`` slices): 60 + 4L frames for 30-phase cines.
2. DICOM -> 8 bit (not in the public reference code; our choice, measured in bench/results/recipe_window.md):
   per view, a robust percentile window (1st..99.5th percentile of the view's frames) maps modality units
   to 0..255; the frame is resized (shorter edge) and centre-cropped to 224x224 and rounded to uint8, as
   the reference stored 224x224 uint8 frames; then /255.
3. ``frames`` indices at the midpoints of ``frames`` equal intervals over the montage (the reference's
   "uniform" test sampling, ``(start + end - 1) // 2``); fewer frames than that are zero-padded *after*
   normalisation (the reference fills a zero tensor).
4. The reference test transform: Resize(256) / CenterCrop(256) / Resize(224), bilinear with antialias
   (torch's ``interpolate(antialias=True)`` semantics, as precomputed separable weight matrices), ImageNet
   mean/std, grey repeated into 3 channels.

Not reproduced: the reference wrote its uint8 frames to MP4 (lossy ``mp4v``) and decoded them back; we use
the uint8 frames as they are. Our resize weights are exact; torch's float32 CPU kernel rounds its weights
(differences up to about 2e-5 on [0, 1] intensities, far below one 8-bit step).

Which long-axis plane the reference's ``cine_lax`` was is not recorded; we prefer 4CH (its most likely
meaning: the four-chamber view is the standard long-axis cine), then an unspecified LAX, 3CH, 2CH, LVOT.
Every departure (a missing view, another plane, a phase count other than 30) is recorded in
``RecipeResult.substitutions``; nothing is substituted silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from cmrdx.vocab import view_key

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.dicom.source import FileRef
    from cmrdx.study.heart import HeartLocation
    from cmrdx.study.types import Study, StudyView

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)



class Segment(NamedTuple):
    """A montage segment: the role and views (in preference order) it takes, and how they enter the video
    (``montage_plan``)."""

    role: str
    views: tuple[str, ...]
    kind: str  # "mid_slice_all_phases" | "all_slices" | "one_image_repeated"


# Montage segments by name, in the reference's order.
SEGMENTS: dict[str, Segment] = {
    "cine_lax": Segment("cine", ("4CH", "LAX", "3CH", "2CH", "LVOT"), "mid_slice_all_phases"),
    "cine_sa": Segment("cine", ("SAX",), "mid_slice_all_phases"),
    "lge_sa": Segment("lge", ("SAX",), "all_slices"),
    "lge_lax": Segment("lge", ("4CH", "LAX"), "one_image_repeated"),
    "lge_2ch": Segment("lge", ("2CH",), "one_image_repeated"),
    "lge_3ch": Segment("lge", ("3CH", "LVOT"), "one_image_repeated"),
}


@dataclass(frozen=True)
class RecipeParams:
    """Parameters of a recipe. Sizes in pixels; ``window`` in percentiles of the view's intensities.

    Attributes:
        segments: montage segments in order (keys of ``SEGMENTS``).
        frames: frames sampled from the montage (zero-padded when the montage is shorter).
        image_size: final square size fed to the model.
        resize: shorter-edge resize of the test transform; ``crop``: its centre crop.
        store_size: frames are first brought to store_size x store_size and rounded to 8 bit, as the
            reference stored them; None skips that step (no 8-bit rounding either).
        window: (low, high) percentiles mapped to 0 and 255.
        window_scope: "view" (one window per montage segment) or "frame" (one per image).
        cine_phases: resample cines to this many phases (nearest index) when they have another count;
            None keeps every phase.
        lge_repeats_default: L when there is no LGE short-axis stack.
        lge_repeats: each long-axis LGE image's repeats in the montage, whatever the short-axis stack; None (the
            reference) repeats it as often as the stack has slices (L), which balances the views for a transformer
            that reads frames in order, but leaves a 16-frame sample of the montage a quarter of the stack's
            slices. 1 suits a path that pools its frames (a finding stream): every slice then has its frame.
        mean, std: per-channel normalisation of [0, 1] intensities.
        heart_crop_mm: before anything else, cut every image to a square of this side (mm) centred on the heart,
            which the study's own plan locates (``cmrdx.study.heart``): the short-axis slices on the LV long axis,
            the long-axis images on the heart's centre. None (the reference) keeps the whole field of view; so
            does a study whose plan does not locate the heart (said in ``substitutions``).
        streams: further inputs whose frames follow this recipe's own in the model's input, each a whole recipe
            of its own (segments, frames, heart cut) run on the same study, with the same ``image_size``, mean and
            std and no streams of its own; a model with a second stream (a finding stream of ``cmrdx train``)
            reads them. Empty (the reference): the input is this recipe's frames alone.
    """

    segments: tuple[str, ...] = ("cine_lax", "cine_sa", "lge_sa", "lge_lax", "lge_2ch", "lge_3ch")
    frames: int = 64
    image_size: int = 224
    resize: int = 256
    crop: int = 256
    store_size: int | None = 224
    window: tuple[float, float] = (1.0, 99.5)
    window_scope: str = "view"
    cine_phases: int | None = 30
    lge_repeats_default: int = 12
    lge_repeats: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    heart_crop_mm: float | None = None
    streams: tuple[RecipeParams, ...] = ()

    def __post_init__(self) -> None:
        unknown = [s for s in self.segments if s not in SEGMENTS]
        if unknown:
            raise ValueError(f"unknown recipe segments {unknown}; known: {list(SEGMENTS)}")
        if self.window_scope not in ("view", "frame"):
            raise ValueError(f"window_scope must be 'view' or 'frame', not {self.window_scope!r}")
        if not 0 <= self.window[0] < self.window[1] <= 100:
            raise ValueError(f"window percentiles must satisfy 0 <= low < high <= 100, got {self.window}")
        if self.lge_repeats is not None and not (isinstance(self.lge_repeats, int)
                                                 and not isinstance(self.lge_repeats, bool)
                                                 and 1 <= self.lge_repeats <= 64):
            raise ValueError(f"lge_repeats must be between 1 and 64 (a whole number, or None), got {self.lge_repeats!r}")
        if self.heart_crop_mm is not None and not 20.0 <= float(self.heart_crop_mm) <= 1000.0:
            raise ValueError(f"heart_crop_mm must be between 20 and 1000 mm (or None), got {self.heart_crop_mm}")
        for k, st in enumerate(self.streams):
            if not isinstance(st, RecipeParams):
                raise ValueError(f"recipe stream {k + 1} is not a recipe")
            if st.streams:
                raise ValueError(f"recipe stream {k + 1} has streams of its own; streams do not nest")
            if (st.image_size, st.mean, st.std) != (self.image_size, self.mean, self.std):
                raise ValueError(f"recipe stream {k + 1}: image_size, mean and std must be the main recipe's "
                                 f"({self.image_size}, {self.mean}, {self.std})")

    @property
    def main(self) -> RecipeParams:
        """This recipe without its streams: the input of the model's first (main) video path."""
        return replace(self, streams=()) if self.streams else self

    @property
    def input_frames(self) -> int:
        """Frames of the model's whole input: this recipe's own, then every stream's."""
        return self.frames + sum(st.frames for st in self.streams)

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "streams"}
        for opt in ("heart_crop_mm", "lge_repeats"):  # the reference input: recorded as before the options existed
            if d[opt] is None:
                del d[opt]
        out: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        if self.streams:  # recorded only when there are any: a recipe without keeps its old record and digest
            out["streams"] = [st.to_dict() for st in self.streams]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecipeParams:
        known = set(cls.__dataclass_fields__)
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown recipe parameters {sorted(extra)}")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "streams"}
        streams = d.get("streams") or []
        if not isinstance(streams, list) or not all(isinstance(x, dict) for x in streams):
            raise ValueError("recipe streams must be a list of recipe parameter mappings")
        fields["streams"] = tuple(cls.from_dict(x) for x in streams)
        return cls(**fields)


RECIPES: dict[str, RecipeParams] = {"cmrclip-v1": RecipeParams()}


@dataclass
class RecipeResult:
    """A recipe's output and the record of how it was made.

    Attributes:
        array: (frames, 3, image_size, image_size) float32, normalised; for a recipe with streams
            (``input_frames``, 3, S, S): the main recipe's frames, then each stream's.
        used: segment name -> what went in (view key, series, slices, phases, window in modality units,
            number of montage frames); a stream's segments under "stream<k>:<segment>" (k from 1).
        substitutions: human-readable departures from the recipe (missing or replaced views, resampling); a
            stream's prefixed "stream <k> (<its segments>): ".
        montage_length: frames in the (main recipe's) montage before sampling; ``sampled``: indices taken from it.
        departures: the main recipe's (a stream reads a subset of the same views).
        heart: the main recipe's record of the heart, else the first stream's that has one.
    """

    array: np.ndarray
    used: dict[str, dict[str, Any]] = field(default_factory=dict)
    substitutions: list[str] = field(default_factory=list)
    montage_length: int = 0
    sampled: list[int] = field(default_factory=list)
    departures: list[Departure] = field(default_factory=list)
    heart: dict[str, Any] | None = None  # where the heart was found and how (recipes with heart_crop_mm)


def get_recipe(name: str, **overrides: Any) -> RecipeParams:
    """The named recipe's parameters, with ``overrides`` applied (e.g. ``frames=16, image_size=112``)."""
    try:
        base = RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}") from None
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return replace(base, **fields)


# ---------------------------------------------------------------- resampling (torch semantics, in numpy)


@lru_cache(maxsize=64)
def aa_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 weights of 1-D bilinear resampling with antialias, as torch's
    ``interpolate(mode="bilinear", antialias=True, align_corners=False)`` computes them: a triangle filter
    stretched by the scale when downsampling, centred at ``scale * (i + 0.5)``, weights renormalised."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    m = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        j = np.arange(xmin, xmax)
        w = np.clip(1.0 - np.abs((j - center + 0.5) * invscale), 0.0, None)
        total = w.sum()
        if total > 0:
            m[i, xmin:xmax] = w / total
    return m


def _short_edge_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)`` with an int: the shorter edge becomes ``size``, aspect kept."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def _crop_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) selection matrix of torchvision's CenterCrop offset ``round((in - out) / 2)``."""
    if out_size > in_size:
        raise ValueError(f"centre crop {out_size} larger than the image ({in_size})")
    top = int(round((in_size - out_size) / 2.0))
    m = np.zeros((out_size, in_size))
    m[np.arange(out_size), top + np.arange(out_size)] = 1.0
    return m


@lru_cache(maxsize=64)
def _resize_crop_matrices(h: int, w: int, resize: int, crop: int, final: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Row and column matrices of Resize(shorter edge -> resize) / CenterCrop(crop) [/ Resize(final)]."""
    rh, rw = _short_edge_size(h, w, resize)
    rows = _crop_matrix(rh, crop) @ aa_bilinear_matrix(h, rh)
    cols = _crop_matrix(rw, crop) @ aa_bilinear_matrix(w, rw)
    if final is not None and final != crop:
        rows = aa_bilinear_matrix(crop, final) @ rows
        cols = aa_bilinear_matrix(crop, final) @ cols
    return rows.astype(np.float32), cols.astype(np.float32)


def resize_crop(frames: np.ndarray, resize: int, crop: int, final: int | None = None) -> np.ndarray:
    """(N, H, W) float -> (N, S, S) float32: Resize(resize) / CenterCrop(crop) / Resize(final), antialiased.

    The resizes are linear, so the chain is one pair of (S, H) and (S, W) matrices applied as R @ x @ C^T
    (equal to running them in sequence up to float rounding)."""
    x = np.asarray(frames, dtype=np.float32)
    rows, cols = _resize_crop_matrices(x.shape[1], x.shape[2], resize, crop, final)
    return np.matmul(np.matmul(rows, x), cols.T)


def sample_indices(length: int, frames: int) -> np.ndarray:
    """Midpoints of ``min(frames, length)`` equal integer intervals over ``range(length)`` (reference
    "uniform" sampling): intervals ``linspace(0, length, k + 1).astype(int)``, index ``(a + b - 1) // 2``."""
    if length <= 0:
        return np.zeros(0, dtype=np.int64)
    k = min(frames, length)
    edges = np.linspace(0, length, k + 1).astype(int)
    return (edges[:-1] + edges[1:] - 1) // 2


# ---------------------------------------------------------------- intensity


def window_bounds(x: np.ndarray, window: tuple[float, float], scope: str = "view") -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) modality units -> per-frame (N,) float32 low and high window bounds: the ``window``
    percentiles of all N frames together (scope "view") or of each frame (scope "frame")."""
    x = np.asarray(x, dtype=np.float32)
    if scope == "view":
        lo, hi = np.percentile(x, window)
        return np.full(len(x), lo, np.float32), np.full(len(x), hi, np.float32)
    lo_a, hi_a = np.percentile(x.reshape(len(x), -1), window, axis=1)
    return lo_a.astype(np.float32), hi_a.astype(np.float32)


def apply_window(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(N, H, W) modality units and (N,) bounds -> float32 in [0, 255]."""
    lo_a, hi_a = np.asarray(lo, np.float32)[:, None, None], np.asarray(hi, np.float32)[:, None, None]
    # a constant image maps to black rather than dividing by zero
    return np.clip((np.asarray(x, np.float32) - lo_a) / np.maximum(hi_a - lo_a, 1e-6), 0.0, 1.0) * 255.0


def window_to_unit(x: np.ndarray, window: tuple[float, float], scope: str = "view") -> tuple[np.ndarray, list[float]]:
    """(N, H, W) modality units -> ((N, H, W) float32 in [0, 255], [lo, hi] of the first frame)."""
    lo, hi = window_bounds(x, window, scope)
    return apply_window(x, lo, hi), [float(lo[0]), float(hi[0])]


# ---------------------------------------------------------------- montage


def resample_phases(n: int, target: int | None) -> list[int]:
    """Phase indices of ``n`` phases resampled to ``target`` (nearest lower index); every phase when
    ``target`` is None or already ``n``."""
    if target is None or n == target:
        return list(range(n))
    return [int(i) for i in np.floor(np.arange(target) * n / target)]


def recipe_view_keys(p: RecipeParams) -> tuple[str, ...]:
    """Every view key any segment of the recipe, or of its streams, may use (its preference lists), in plan order
    (the main recipe's first)."""
    keys: list[str] = []
    for seg in p.segments + tuple(s for st in p.streams for s in st.segments):
        spec = SEGMENTS[seg]
        keys += [view_key(spec.role, v) for v in spec.views]
    return tuple(dict.fromkeys(keys))


@dataclass(frozen=True)
class Departure:
    """One place where the montage could not follow its recipe, as data: the view a segment wanted, the view
    it used instead (None: the segment is left out) and the message shown. Findings that depend on ``wanted``
    say so (``cmrdx.pipeline.classify``)."""

    segment: str
    wanted: str  # view key the recipe asks for first
    used: str | None  # view key used in its place; None when the segment is omitted
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"segment": self.segment, "wanted": self.wanted, "used": self.used, "message": self.message}


@dataclass(frozen=True)
class PlanEntry:
    """One montage segment as planned: which view it takes, which of its images, and how often each.

    Attributes:
        segment: key of ``SEGMENTS``; ``role``, ``view``: the view used (``view`` may be a later preference).
        kind: how the segment enters the video (``SEGMENTS``).
        images: (slice, phase) of each image of the segment, in montage order (a resampled cine may list a
            phase twice).
        repeats: times each image is listed in a row (an LGE long-axis image stands for L frames).
    """

    segment: str
    role: str
    view: str
    kind: str
    images: tuple[tuple[int, int], ...]
    repeats: int = 1

    @property
    def key(self) -> str:
        return view_key(self.role, self.view)

    @property
    def montage_frames(self) -> int:
        return len(self.images) * self.repeats


@dataclass
class MontagePlan:
    """The montage a recipe makes of a set of views (``montage_plan``), before any pixel is read.

    ``frames()`` lists the montage as (entry index, image index) pairs; ``substitutions`` are the departures
    from the recipe the plan had to make (missing or replaced views, resampled phases, defaults)."""

    entries: list[PlanEntry] = field(default_factory=list)
    substitutions: list[str] = field(default_factory=list)
    departures: list[Departure] = field(default_factory=list)

    def frames(self) -> list[tuple[int, int]]:
        return [(ei, ii) for ei, e in enumerate(self.entries) for ii in range(len(e.images)) for _ in range(e.repeats)]

    def __len__(self) -> int:
        return sum(e.montage_frames for e in self.entries)


def montage_plan(p: RecipeParams, views: Mapping[str, Any]) -> MontagePlan:
    """Plan the montage of recipe ``p`` over ``views`` (view key -> anything with ``n_slices`` and
    ``n_phases``, e.g. ``Study.views``). Only the views a segment uses are looked up (a lazy mapping is
    asked for nothing else). Each segment takes the first of its preferred views present:

    * ``mid_slice_all_phases``: the middle slice, every phase (resampled to ``p.cine_phases``);
    * ``all_slices``: every slice at phase 0;
    * ``one_image_repeated``: the middle slice at phase 0, listed L times (L = slices of ``lge:SAX`` when the
      recipe has ``lge_sa`` and the view is there, else ``p.lge_repeats_default``).
    """
    plan = MontagePlan()
    subs = plan.substitutions

    def depart(seg: str, wanted: str, used: str | None, message: str) -> None:
        subs.append(message)
        plan.departures.append(Departure(seg, wanted, used, message))

    sa_key = view_key("lge", "SAX")
    lge_sa = views[sa_key] if "lge_sa" in p.segments and sa_key in views else None
    repeats = lge_sa.n_slices if lge_sa is not None else p.lge_repeats_default
    if p.lge_repeats is not None:
        repeats = int(p.lge_repeats)
    chosen = {seg: next((v for v in SEGMENTS[seg].views if view_key(SEGMENTS[seg].role, v) in views), None)
              for seg in p.segments}
    repeated = [s for s in p.segments if SEGMENTS[s].kind == "one_image_repeated" and chosen[s] is not None]
    if lge_sa is None and repeated and p.lge_repeats is None:  # only said when some long-axis LGE image is actually repeated
        subs.append(f"no lge:SAX stack: LGE long-axis images repeated {repeats} times (recipe default)")
    omitted_roles = {SEGMENTS[s].role for s in p.segments if chosen[s] is None}
    for role in sorted(omitted_roles):
        segs = [s for s in p.segments if SEGMENTS[s].role == role]
        if all(chosen[s] is None for s in segs):  # one message for a role the study lacks entirely
            subs.append(f"no {role} view in the study: segments {', '.join(segs)} omitted")
            plan.departures += [Departure(s, view_key(role, SEGMENTS[s].views[0]), None, subs[-1]) for s in segs]
    for seg in p.segments:
        role, prefs, kind = SEGMENTS[seg]
        view = chosen[seg]
        if view is None:
            if any(chosen[s] is not None for s in p.segments if SEGMENTS[s].role == role):
                depart(seg, view_key(role, prefs[0]), None, f"{seg}: no {role} view among {list(prefs)}: segment omitted")
            continue
        key = view_key(role, view)
        if view != prefs[0]:
            depart(seg, view_key(role, prefs[0]), key, f"{seg}: no {role}:{prefs[0]}; used {key}")
        grid = views[key]
        mid = grid.n_slices // 2
        if kind == "mid_slice_all_phases":
            phases = resample_phases(grid.n_phases, p.cine_phases)
            if len(phases) != grid.n_phases:
                subs.append(f"{seg}: {key} has {grid.n_phases} phases; resampled to {len(phases)} (nearest)")
            entry = PlanEntry(seg, role, view, kind, tuple((mid, t) for t in phases))
        elif kind == "all_slices":
            entry = PlanEntry(seg, role, view, kind, tuple((s, 0) for s in range(grid.n_slices)))
        else:
            entry = PlanEntry(seg, role, view, kind, ((mid, 0),), repeats)
            if grid.n_slices > 1:
                subs.append(f"{seg}: {key} has {grid.n_slices} slices; used the middle one ({mid})")
        plan.entries.append(entry)
    return plan


@dataclass(frozen=True)
class EntryCrop:
    """The square around the heart cut from each image of a plan entry: per image the (row, column) of its first
    pixel in the view's image (whole pixels; may lie outside it, where the cut is filled with the image's
    minimum) and the cut's size (rows, columns) in pixels, the same for every image of the entry."""

    starts: tuple[tuple[int, int], ...]
    size: tuple[int, int]

    def apply(self, images: np.ndarray) -> np.ndarray:
        """(n, H, W) -> (n, size[0], size[1]) float32: each image's cut."""
        h, w = self.size
        out = np.empty((len(images), h, w), np.float32)
        for k, (img, (r0, c0)) in enumerate(zip(images, self.starts)):
            out[k] = float(img.min())
            rs, cs = max(r0, 0), max(c0, 0)
            re, ce = min(r0 + h, img.shape[0]), min(c0 + w, img.shape[1])
            if rs < re and cs < ce:
                out[k, rs - r0:re - r0, cs - c0:ce - c0] = img[rs:re, cs:ce]
        return out


MAX_CUT_TO_IMAGE = 4  # a cut more than this many times the image's matrix is mostly padding: a spacing to distrust


def entry_crop(view: StudyView, entry: PlanEntry, heart: HeartLocation, side_mm: float) -> EntryCrop | None:
    """The crop of ``side_mm`` around the heart for each image of ``entry``; None when the view has no geometry, or
    a pixel spacing that would make the cut more than MAX_CUT_TO_IMAGE times the image (a header saying 0.001 mm
    must not allocate a 210,000-pixel square)."""
    if len(view.geometry) != view.n_slices:
        return None
    g0 = view.geometry[entry.images[0][0]]
    mm = g0.mm_per_pixel(view.shape)
    size = (max(1, int(round(side_mm / mm[0]))), max(1, int(round(side_mm / mm[1]))))
    if max(size) > MAX_CUT_TO_IMAGE * max(view.shape):
        return None
    starts = []
    for s, _ in entry.images:
        g = view.geometry[s]
        r, c = g.pixel_of(heart.on_slice(g), view.shape)
        starts.append((int(round(r - (size[0] - 1) / 2)), int(round(c - (size[1] - 1) / 2))))
    return EntryCrop(tuple(starts), size)


def heart_crops(views: Mapping[str, StudyView], plan: MontagePlan,
                p: RecipeParams) -> tuple[dict[str, EntryCrop], HeartLocation | None, dict[str, Any] | None]:
    """Per segment of ``plan`` the crop around the heart that recipe ``p`` asks for (none without
    ``heart_crop_mm``), the heart's location, and the record of how it was found (``RecipeResult.heart``); a study
    whose plan does not locate the heart, or a view without usable geometry, keeps the whole field of view and the
    record says why."""
    if p.heart_crop_mm is None:
        return {}, None, None
    from cmrdx.study.heart import locate_heart

    heart, how = locate_heart(views)
    record: dict[str, Any] = {"crop_mm": float(p.heart_crop_mm), "located": heart is not None, "how": how}
    if heart is None:
        return {}, None, record
    record.update(heart.to_dict())
    crops: dict[str, EntryCrop] = {}
    whole: list[str] = []
    for e in plan.entries:
        c = entry_crop(views[e.key], e, heart, float(p.heart_crop_mm))
        if c is None:
            whole.append(e.key)
        else:
            crops[e.segment] = c
    if whole:
        record["whole_field_of_view"] = sorted(set(whole))
    return crops, heart, record


def read_entry(view: StudyView, entry: PlanEntry, crop: EntryCrop | None = None) -> np.ndarray:
    """The images of a plan entry from its view: (len(entry.images), H, W) float32 modality units, each
    distinct (slice, phase) decoded once; cut to ``crop`` when given."""
    slices = sorted({s for s, _ in entry.images})
    phases = sorted({t for _, t in entry.images})
    px = view.pixels(slices=slices, phases=phases)  # (len(slices), len(phases), H, W)
    out = px[[slices.index(s) for s, _ in entry.images], [phases.index(t) for _, t in entry.images]]
    return crop.apply(out) if crop is not None else out


def plan_refs(study: Study, plan: MontagePlan) -> list[FileRef]:
    """The objects ``read_plan`` will read for ``plan`` (each once, in plan order): what a source that fetches
    files on demand (a PACS) must bring before the recipe runs."""
    out: dict[FileRef, None] = {}
    for e in plan.entries:
        view = study.views[e.key]
        for ref in view.image_refs(sorted({s for s, _ in e.images}), sorted({t for _, t in e.images})):
            out.setdefault(ref, None)
    return list(out)


def read_plan(study: Study, plan: MontagePlan, crops: Mapping[str, EntryCrop] | None = None,
              ) -> tuple[list[np.ndarray], dict[str, dict[str, Any]]]:
    """Decode a plan's images from ``study``: per entry (n, H, W) float32 modality units (cut to the entry's
    crop in ``crops``, by segment, when it has one), and the ``used`` record (segment -> view, series, slices,
    phases, repeats, montage frames)."""
    used: dict[str, dict[str, Any]] = {}
    out: list[np.ndarray] = []
    for e in plan.entries:
        view = study.views[e.key]
        crop = (crops or {}).get(e.segment)
        out.append(read_entry(view, e, crop))
        used[e.segment] = {"slices": list(dict.fromkeys(s for s, _ in e.images)),
                           "phases": len(e.images) if e.kind == "mid_slice_all_phases" else 1, "repeats": e.repeats,
                           "view": view.key, "series_uids": list(view.series_uids), "montage_frames": e.montage_frames}
    return out, used


def collect_segments(study: Study, p: RecipeParams) -> tuple[list[tuple[str, np.ndarray, int]], dict, list[str]]:
    """Decode only what the montage uses. Returns [(segment, frames (n, H, W) float32 modality units,
    repeats)], the ``used`` record and the substitutions."""
    plan = montage_plan(p, study.views)
    frames, used = read_plan(study, plan)
    return [(e.segment, f, e.repeats) for e, f in zip(plan.entries, frames)], used, plan.substitutions


def u8_exact(p: RecipeParams) -> bool:
    """Whether the recipe's output is ``(k / 255 - mean) / std`` for whole grey levels ``k``: frames are stored
    at 8 bit (``store_size``) at the size the test transform resizes to, and cropped to the model's size
    without another resize (``store_size == resize``, ``crop == image_size``)."""
    return p.store_size is not None and p.store_size == p.resize and p.crop == p.image_size


def store_frames(x: np.ndarray, p: RecipeParams) -> np.ndarray:
    """(n, H, W) windowed intensities in [0, 255] -> (n, store_size, store_size) float32, resized and rounded
    to 8 bit as the reference stored its frames (``p.store_size`` must be set)."""
    if p.store_size is None:
        raise ValueError("the recipe stores no 8-bit frames (store_size is None)")
    return np.rint(resize_crop(x, p.store_size, p.store_size)).clip(0, 255)


def frames_to_input(frames01: np.ndarray, p: RecipeParams) -> np.ndarray:
    """(n, h, w) float32 intensities in [0, 1] -> (p.frames, 3, S, S) float32: test transform, ImageNet
    normalisation, grey into 3 channels, zero padding after normalisation."""
    n = len(frames01)
    s = p.image_size
    out = np.zeros((p.frames, 3, s, s), dtype=np.float32)
    if n:
        img = resize_crop(frames01, p.resize, p.crop, s)  # (n, S, S)
        for c in range(3):
            out[:n, c] = (img - p.mean[c]) / p.std[c]
    return out


class NoRecipeViews(ValueError):
    """The study holds none of the views a recipe (or a stream of it) reads."""


def apply_recipe(study: Study, recipe: str | RecipeParams = "cmrclip-v1") -> RecipeResult:
    """Study -> RecipeResult with ``array`` (frames, 3, S, S) float32; for a recipe with streams
    (``input_frames``, 3, S, S): the main recipe's array (``p.main``), then each stream's, along the frame axis.

    The window is computed on all of a view's frames, but only the frames the sampling picks are scaled,
    resized and rounded (about 64 of 100-120 montage frames).

    Raises ValueError (``NoRecipeViews``) when the study holds none of the main recipe's views. A stream that finds
    none of its views does not fail the study: its frames are all zero (padding: the model reads an all-zero
    stream as nothing to see) and a substitution says so. The records of a recipe with streams are merged as
    ``RecipeResult`` describes."""
    p = get_recipe(recipe) if isinstance(recipe, str) else recipe
    if not p.streams:
        return _apply_one(study, p)
    study = shared_decodes(study)  # a stream reads images the main recipe read: each is decoded once
    rr = _apply_one(study, p.main)
    arrays = [rr.array]
    for k, st in enumerate(p.streams, 1):
        try:
            sr = _apply_one(study, st, stream=True)
        except NoRecipeViews:
            arrays.append(np.zeros((st.frames, 3, st.image_size, st.image_size), np.float32))
            rr.substitutions.append(f"stream {k}: none of its views ({', '.join(recipe_view_keys(st))}) in the "
                                    f"study: its frames are empty")
            continue
        arrays.append(sr.array)
        rr.used.update({f"stream{k}:{seg}": rec for seg, rec in sr.used.items()})
        rr.substitutions += [f"stream {k} ({', '.join(st.segments)}): {s}" for s in sr.substitutions]
        if rr.heart is None and sr.heart is not None:
            rr.heart = sr.heart
    rr.array = np.concatenate(arrays)
    return rr


def shared_decodes(study: Study) -> Study:
    """``study`` with every view's loader remembering the images it decoded, so that the recipes of one
    ``apply_recipe`` call (the main recipe and its streams: an LGE stream reads the LGE images the main montage
    read) decode each (slice, phase) image once. A copy: ``study`` itself is unchanged, and the memory goes with
    the copy when the call returns."""
    views = {}
    for key, view in study.views.items():
        if view._loader is None:
            views[key] = view
            continue
        views[key] = replace(view, _loader=_MemoLoader(view._loader))
    return replace(study, views=views)


class _MemoLoader:
    """A view's loader(slices, phases) that decodes each (slice, phase) image once, slice by slice."""

    def __init__(self, load: Any):
        self.load = load
        self.seen: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, slices: Any, phases: Any) -> np.ndarray:
        for s in dict.fromkeys(int(i) for i in slices):
            missing = [int(t) for t in dict.fromkeys(phases) if (s, int(t)) not in self.seen]
            if missing:
                got = np.asarray(self.load([s], missing), dtype=np.float32)
                for j, t in enumerate(missing):
                    self.seen[(s, t)] = got[0, j]
        return np.stack([np.stack([self.seen[(int(s), int(t))] for t in phases]) for s in slices])


def _apply_one(study: Study, p: RecipeParams, *, stream: bool = False) -> RecipeResult:
    """``apply_recipe`` of one recipe, its streams ignored. ``stream``: the recipe is a stream of another, whose
    padding is no departure (a stream pools over its real frames only, and one that holds each image once is
    shorter than its frames in most studies), so it is not reported."""
    plan = montage_plan(p, study.views)
    subs = plan.substitutions
    if not plan.entries:
        raise NoRecipeViews("recipe found none of its views in the study: " + "; ".join(subs))
    crops, _, heart = heart_crops(study.views, plan, p)
    if heart is not None and not heart["located"]:
        subs.append(f"heart not located ({heart['how']}): the whole field of view is used")
    elif heart is not None and heart.get("whole_field_of_view"):
        subs.append(f"no usable geometry (position, orientation, pixel spacing) in "
                    f"{', '.join(heart['whole_field_of_view'])}: the whole field of view is used there")
    images, used = read_plan(study, plan, crops)
    for seg, c in crops.items():
        used[seg]["crop_px"] = list(c.size)
    # The montage as (entry, image) pairs; a repeated LGE image is one image listed L times.
    entries = plan.frames()
    windows: list[tuple[np.ndarray, np.ndarray]] = []
    for e, frames in zip(plan.entries, images):
        lo_a, hi_a = window_bounds(frames, p.window, p.window_scope)
        windows.append((lo_a, hi_a))
        used[e.segment]["window"] = [float(lo_a[0]), float(hi_a[0])]
    idx = sample_indices(len(entries), p.frames)
    if len(entries) < p.frames and not stream:
        subs.append(f"montage has {len(entries)} frames < {p.frames}: zero-padded")
    picked = [entries[i] for i in idx]
    done: dict[tuple[int, int], np.ndarray] = {}
    for si in sorted({e[0] for e in picked}):
        fis = sorted({fi for s_, fi in picked if s_ == si})
        x = apply_window(images[si][fis], windows[si][0][fis], windows[si][1][fis])
        if p.store_size is not None:
            x = store_frames(x, p)  # the stored uint8 frame
        else:
            x = resize_crop(x, p.resize, p.crop)  # sizes differ per view: bring each to the crop size now
        for j, fi in enumerate(fis):
            done[(si, fi)] = x[j] / 255.0
    montage = np.stack([done[e] for e in picked]).astype(np.float32) if picked else np.zeros((0, 1, 1), np.float32)
    # with store_size=None the frames are already at crop size; Resize(crop) on them is the identity
    arr = frames_to_input(montage, p if p.store_size is not None else replace(p, resize=p.crop))
    return RecipeResult(array=arr, used=used, substitutions=subs, montage_length=len(entries), sampled=idx.tolist(),
                        departures=list(plan.departures), heart=heart)
