"""Phantom studies as lazily rendered arrays, frame by frame: what training renders (no DICOM, numpy only).

``phantom_study`` gives a ``Study`` whose views render only the (slice, phase) frames a caller asks for;
``phantom_u8`` renders only the montage frames a recipe samples. Every frame's noise stream is keyed by
(view, slice, phase), so a frame's pixels never depend on which other frames were rendered, and both paths
give the same pixels. (``render.render`` renders whole views at once, with per-view noise streams: other
pixels.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrdx.vocab import CINE_VIEWS, LGE_VIEWS, VIEW_KEYS, Role

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.recipe import RecipeParams
    from cmrdx.study.types import SliceGeometry, Study
    from cmrdx.synth.geometry import Plane
    from cmrdx.synth.params import StudyParams
    from cmrdx.synth.render import Renderer


def render_frame(ren: Renderer, role: str, plane: Plane, time_ms: float, vi: int, s: int, t: int) -> np.ndarray:
    """One (rows, cols) float32 frame of view ``VIEW_KEYS[vi]``, slice ``s``, phase ``t``; its noise is keyed
    by all three (the index in ``VIEW_KEYS``, not in a caller's list of views, so it is stable)."""
    return ren.render_planes(role, [plane], np.array([time_ms]), seed_key=(vi * 1000 + s) * 1000 + t)[0, 0]


def phantom_report(params: StudyParams) -> str:
    """The synth report of ``params``, quoting the sampled targets (EDV, EF, wall, root, effusion) rather
    than the phantom's measured values: the severities and wording are the same, and skipping the volume
    measurement saves about a third of a training study's cost."""
    from cmrdx.synth.report import make_report

    m = {"lv_edv_ml": params.lv_edv_ml, "lv_ef_pct": params.lv_ef_pct, "rv_edv_ml": params.rv_edv_ml,
         "rv_ef_pct": params.rv_ef_pct, "lv_max_wall_mm": params.lv_wall_mm, "aortic_root_mm": params.aortic_root_mm,
         "effusion_mm": params.effusion_mm}
    return make_report(params, m)


def phantom_study(params: StudyParams, views: Sequence[str] | None = None) -> tuple[Study, str]:
    """(Study with lazily rendered views, report text) for StudyParams ``params``.

    ``views``: view keys to include (default ``VIEW_KEYS``); a plane the phantom does not acquire (e.g.
    "LAX", LGE LVOT) is left out, as in a real study, and so is a view a randomised study is missing. A view's loader renders only the requested (slice,
    phase) frames (``render_frame``)."""
    from cmrdx.study.types import Study, StudyView
    from cmrdx.synth.phantom import Phantom
    from cmrdx.synth.render import Renderer, cine_times

    ren = Renderer(params, Phantom(params))
    st = Study(study_uid=f"phantom-{params.seed}", source="cmrdx.synth (arrays)")
    missing = set(params.variety.missing_views) if params.variety is not None else set()
    for key in views or VIEW_KEYS:
        role, view = key.split(":")
        if view not in (CINE_VIEWS if role == Role.CINE else LGE_VIEWS) or key in missing:
            continue
        vi = VIEW_KEYS.index(key)
        planes = ren.view_planes(role, view)
        times = cine_times(params) if role == Role.CINE else np.array([params.acq.lge_trigger_ms])
        h, w = planes[0].shape

        def loader(sl, phs, _planes=planes, _times=times, _role=role, _vi=vi):
            out = np.empty((len(sl), len(phs), *_planes[0].shape), np.float32)
            for a, s in enumerate(sl):
                for b, t in enumerate(phs):
                    out[a, b] = render_frame(ren, _role, _planes[s], _times[t], _vi, s, t)
            return out

        st.views[key] = StudyView(
            role=role, view=view, n_slices=len(planes), n_phases=len(times), shape=(h, w),
            pixel_spacing=(planes[0].spacing, planes[0].spacing),
            slice_positions=np.array([pl.position for pl in planes]), trigger_times=np.asarray(times, float),
            rr_interval=params.acq.rr_ms, series_uids=[], notes=["synthetic phantom (arrays)"],
            geometry=tuple(_slice_geometry(pl) for pl in planes), _loader=loader,
        )
    return st, phantom_report(params)


def _slice_geometry(pl: Plane) -> SliceGeometry:
    """A plane's header geometry, as its DICOM file would state it."""
    from cmrdx.study.types import SliceGeometry

    def v3(x: np.ndarray) -> tuple[float, float, float]:
        return float(x[0]), float(x[1]), float(x[2])

    return SliceGeometry(origin=v3(pl.origin), row_dir=v3(pl.row), col_dir=v3(pl.col), spacing=(pl.spacing, pl.spacing),
                         shape=(int(pl.shape[0]), int(pl.shape[1])))


def phantom_u8(params: StudyParams, p: RecipeParams) -> tuple[np.ndarray, Any]:
    """The recipe's input for ``params`` as uint8 grey frames, rendering only the montage frames the recipe
    samples (about 13 rendered frames instead of about 75). Returns ((F, S, S) uint8, n_real): the grey levels
    of ``apply_recipe(phantom_study(params)[0], p)`` (a test checks it).

    Exact for recipes with ``window_scope == "frame"`` (each frame windowed on its own, so unsampled frames
    are never needed) whose output is whole grey levels (``cmrdx.recipe.u8_exact``); others are refused.

    A recipe with streams: F = ``p.input_frames``, the main recipe's frames (``p.main``), then each stream's, as
    ``apply_recipe`` concatenates them; a stream none of whose views the study has gives all-zero frames. Every
    part must be exact as above. ``n_real`` is then an array of each part's count of real frames (the main
    recipe's first): each part pads its own frames after its own real ones, which ``cmrdx.train.data.u8_to_input``
    restores to the recipe's zeros."""
    from cmrdx.recipe import recipe_view_keys, u8_exact

    parts = (p.main, *p.streams)
    for q in parts:
        if q.window_scope != "frame":
            raise ValueError("phantom_u8 is exact only for window_scope='frame'; apply the recipe to phantom_study")
        if not u8_exact(q):
            raise ValueError("phantom_u8 needs a recipe whose output is whole grey levels (store_size == resize and "
                             f"crop == image_size; got store_size={q.store_size}, resize={q.resize}, crop={q.crop}, "
                             f"image_size={q.image_size})")
    keys = recipe_view_keys(p)
    if any(q.heart_crop_mm is not None for q in parts):  # the heart is located from every plane the study has,
        from cmrdx.study.heart import AXIS_VIEWS, SAX_VIEWS  # as apply_recipe does

        keys = tuple(dict.fromkeys((*keys, *AXIS_VIEWS, *SAX_VIEWS)))
    study = phantom_study(params, keys)[0]
    outs = [_sampled_u8(study, q) for q in parts]
    if outs[0] is None:
        raise ValueError(f"recipe found none of its views in phantom study {params.seed}")
    u8 = [o if o is not None else (np.zeros((q.frames, q.image_size, q.image_size), np.uint8), 0)
          for o, q in zip(outs, parts)]
    if len(u8) == 1:
        return u8[0]
    return np.concatenate([x for x, _ in u8]), np.array([k for _, k in u8], np.int64)


def _sampled_u8(study: Study, p: RecipeParams) -> tuple[np.ndarray, int] | None:
    """``phantom_u8`` of one recipe (its streams ignored) over the lazily rendered ``study``; None when the study
    has none of its views."""
    from cmrdx.recipe import (
        EntryCrop,
        heart_crops,
        montage_plan,
        resize_crop,
        sample_indices,
        store_frames,
        window_to_unit,
    )

    plan = montage_plan(p, study.views)
    if not plan.entries:
        return None
    crops = heart_crops(study.views, plan, p)[0]
    montage = plan.frames()
    idx = sample_indices(len(montage), p.frames)
    frames = []
    for i in idx:
        ei, ii = montage[i]
        e = plan.entries[ei]
        s, t = e.images[ii]
        img = study.views[e.key].pixels(slices=[s], phases=[t])[0, 0]
        if e.segment in crops:
            c = crops[e.segment]
            img = EntryCrop((c.starts[ii],), c.size).apply(img[None])[0]
        x, _ = window_to_unit(img[None], p.window, "frame")
        frames.append(store_frames(x, p)[0])
    grey = resize_crop(np.stack(frames) / 255.0, p.resize, p.crop, p.image_size)  # identity resize, centre crop
    u8 = np.zeros((p.frames, p.image_size, p.image_size), np.uint8)
    u8[: len(idx)] = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
    return u8, len(idx)
