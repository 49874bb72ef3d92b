"""Input recipes: sampling, padding, view order, normalisation, resize parity with torch, missing views."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmrdx.recipe import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RecipeParams,
    aa_bilinear_matrix,
    apply_recipe,
    get_recipe,
    montage_plan,
    resize_crop,
    sample_indices,
    window_to_unit,
)
from cmrdx.study.types import Study, StudyView

SMALL = dict(frames=16, image_size=32, resize=36, crop=36, store_size=32)


def const_view(role, view, value, s=1, p=1, hw=(40, 48), log=None):
    """A view whose every frame holds ``value + slice * 0.01 + phase * 0.0001`` (so frames are traceable)
    with a small bright/dark border so that the percentile window is not degenerate."""
    arr = np.zeros((s, p, *hw), np.float32)
    for i in range(s):
        for j in range(p):
            arr[i, j] = value + i * 0.01 + j * 1e-4
    v = StudyView.from_array(role, view, arr)
    if log is not None:
        inner = v._loader
        v._loader = lambda sl, ph: (log.append((v.key, list(sl), list(ph))), inner(sl, ph))[1]
    return v


def study_of(views) -> Study:
    return Study(study_uid="1.2.3", views={v.key: v for v in views})


# ---------------------------------------------------------------- sampling


def test_sample_indices_reference_midpoints():
    idx = sample_indices(120, 64)
    edges = np.linspace(0, 120, 65).astype(int)
    assert idx.tolist() == [(a + b - 1) // 2 for a, b in zip(edges[:-1], edges[1:])]
    assert sample_indices(10, 64).tolist() == list(range(10))  # fewer frames: each once
    assert sample_indices(0, 64).size == 0


@given(st.integers(1, 400), st.integers(1, 128))
def test_sample_indices_properties(length, frames):
    idx = sample_indices(length, frames)
    assert len(idx) == min(length, frames)
    assert np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] < length


# ---------------------------------------------------------------- resampling


def test_aa_matrix_rows_sum_to_one_and_identity():
    for i, o in ((224, 256), (256, 224), (300, 97), (7, 7)):
        m = aa_bilinear_matrix(i, o)
        np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)
        assert (m >= 0).all()
    np.testing.assert_array_equal(aa_bilinear_matrix(9, 9), np.eye(9))


def test_resize_crop_matches_torch_interpolate_antialias():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    for h, w in ((224, 224), (208, 256), (300, 190)):
        x = rng.random((2, h, w))
        # torch's chain in float64 (exact weights): Resize(256) / CenterCrop(256) / Resize(224)
        rh, rw = (256, int(256 * w / h)) if h <= w else (int(256 * h / w), 256)
        t = F.interpolate(torch.from_numpy(x)[:, None], size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
        top, left = int(round((rh - 256) / 2)), int(round((rw - 256) / 2))
        t = t[..., top:top + 256, left:left + 256]
        t = F.interpolate(t, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)[:, 0].numpy()
        np.testing.assert_allclose(resize_crop(x, 256, 256, 224), t, atol=2e-6)
        # torch's float32 CPU kernel rounds its weights (about 2**-16): still within 5e-5 of ours
        t32 = F.interpolate(torch.from_numpy(x.astype(np.float32))[:, None], size=(rh, rw), mode="bilinear", antialias=True)
        t32 = F.interpolate(t32[..., top:top + 256, left:left + 256], size=(224, 224), mode="bilinear", antialias=True)
        np.testing.assert_allclose(resize_crop(x, 256, 256, 224), t32[:, 0].numpy(), atol=5e-5)


def test_window_maps_percentiles_to_0_255():
    x = np.arange(1000, dtype=np.float32).reshape(1, 10, 100)
    y, win = window_to_unit(x, (1.0, 99.0))
    assert win == pytest.approx([9.99, 989.01], abs=1e-2)
    assert y.min() == 0 and y.max() == 255
    flat, _ = window_to_unit(np.full((2, 4, 4), 7.0, np.float32), (1.0, 99.5))
    assert np.isfinite(flat).all()


# ---------------------------------------------------------------- the montage


def full_study(log=None, cine_phases=30, lge_slices=10):
    return study_of([
        const_view("cine", "4CH", 100, s=1, p=cine_phases, log=log),
        const_view("cine", "2CH", 900, s=1, p=cine_phases, log=log),
        const_view("cine", "SAX", 200, s=9, p=cine_phases, log=log),
        const_view("lge", "SAX", 300, s=lge_slices, log=log),
        const_view("lge", "4CH", 400, log=log),
        const_view("lge", "2CH", 500, log=log),
        const_view("lge", "3CH", 600, log=log),
    ])


def test_view_order_and_lengths_and_lazy_decoding():
    log: list = []
    res = apply_recipe(full_study(log), "cmrclip-v1")
    assert res.array.shape == (64, 3, 224, 224) and res.array.dtype == np.float32
    assert res.montage_length == 30 + 30 + 10 + 3 * 10
    assert list(res.used) == ["cine_lax", "cine_sa", "lge_sa", "lge_lax", "lge_2ch", "lge_3ch"]
    assert res.used["cine_lax"]["view"] == "cine:4CH"  # preferred over 2CH
    assert res.used["cine_sa"]["slices"] == [4]  # middle of 9 slices: depth // 2
    assert res.used["lge_lax"]["repeats"] == 10
    assert res.substitutions == []
    # only the middle cine SAX slice was decoded, and nothing of the unused cine 2CH
    assert ("cine:SAX", [4], list(range(30))) in log
    assert not [e for e in log if e[0] == "cine:2CH"]


def test_normalisation_and_grey_to_three_channels():
    p = get_recipe("cmrclip-v1", **SMALL)
    # one cine view with a constant image: the window maps it to black (0) -> (0 - mean) / std per channel
    st_ = study_of([StudyView.from_array("cine", "SAX", np.full((1, 30, 40, 48), 50.0, np.float32))])
    res = apply_recipe(st_, RecipeParams(segments=("cine_sa",), **SMALL))
    for c in range(3):
        np.testing.assert_allclose(res.array[:16, c], (0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], atol=1e-6)
    assert p.frames == 16


def test_intensity_mapping_and_frame_source():
    """Frames come from the right view in montage order: distinct grey levels per view survive the window
    because each view's window is computed on that view alone with a black/white frame border."""
    def view(role, name, level, s=1, p=1):
        arr = np.zeros((s, p, 40, 48), np.float32)
        arr[..., 6:34, 8:40] = 1.0  # a bright square sets the window (0..1) ...
        arr[..., 14:26, 16:32] = level  # ... and a central marker whose level identifies the view
        return StudyView.from_array(role, name, arr)

    st_ = study_of([view("cine", "SAX", 0.5, p=30), view("lge", "SAX", 0.25, s=2)])
    res = apply_recipe(st_, RecipeParams(segments=("cine_sa", "lge_sa"), frames=64, image_size=32, resize=36,
                                         crop=36, store_size=32, window=(0.0, 100.0)))
    assert res.montage_length == 32
    centre = res.array[:32, 0, 16, 16] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    assert np.allclose(centre[:30], 128 / 255, atol=0.02)  # cine marker 0.5 -> mid grey
    assert np.allclose(centre[30:], 64 / 255, atol=0.02)  # LGE marker 0.25 -> quarter grey
    # zero padding after normalisation for the 32 missing frames
    assert np.all(res.array[32:] == 0)
    assert any("zero-padded" in s for s in res.substitutions)


def test_missing_views_are_recorded_never_silent():
    st_ = study_of([const_view("cine", "SAX", 200, s=5, p=30), const_view("cine", "LVOT", 100, p=30),
                    const_view("lge", "3CH", 600, s=3)])
    res = apply_recipe(st_, RecipeParams(**SMALL))
    subs = "\n".join(res.substitutions)
    assert "cine_lax: no cine:4CH; used cine:LVOT" in subs
    assert "lge_sa: no lge view" in subs
    assert "lge_lax: no lge view" in subs and "lge_2ch: no lge view" in subs
    assert "repeated 12 times" in subs  # L falls back to the recipe default, and says so
    assert "lge_3ch: lge:3CH has 3 slices; used the middle one (1)" in subs
    assert res.montage_length == 30 + 30 + 12
    assert set(res.used) == {"cine_lax", "cine_sa", "lge_3ch"}
    with pytest.raises(ValueError, match="none of its views"):
        apply_recipe(study_of([]), RecipeParams(**SMALL))


def test_cine_phase_count_resampled_and_recorded():
    log: list = []
    res = apply_recipe(full_study(log, cine_phases=25), RecipeParams(**SMALL))
    assert res.montage_length == 30 + 30 + 10 + 30
    assert any("has 25 phases; resampled to 30" in s for s in res.substitutions)
    kept = apply_recipe(full_study(cine_phases=25), RecipeParams(cine_phases=None, **SMALL))
    assert kept.montage_length == 25 + 25 + 10 + 30


def test_montage_plan_is_what_apply_recipe_reads_and_asks_only_for_the_views_it_uses():
    """The plan needs only view grids (slices, phases): a lazy mapping is asked for the views a segment takes,
    never for a later preference it does not need, and apply_recipe makes the montage the plan lists."""
    from collections.abc import Mapping
    from types import SimpleNamespace

    class Grids(Mapping):
        def __init__(self, grids):
            self.grids, self.asked = grids, []

        def __getitem__(self, key):
            self.asked.append(key)
            return self.grids[key]

        def __iter__(self):
            return iter(self.grids)

        def __len__(self):
            return len(self.grids)

    study = full_study(cine_phases=25)
    grids = Grids({k: SimpleNamespace(n_slices=v.n_slices, n_phases=v.n_phases) for k, v in study.views.items()})
    p = RecipeParams(**SMALL)
    plan = montage_plan(p, grids)
    assert sorted(set(grids.asked)) == ["cine:4CH", "cine:SAX", "lge:2CH", "lge:3CH", "lge:4CH", "lge:SAX"]
    assert [(e.segment, e.key, e.kind, e.repeats) for e in plan.entries] == [
        ("cine_lax", "cine:4CH", "mid_slice_all_phases", 1), ("cine_sa", "cine:SAX", "mid_slice_all_phases", 1),
        ("lge_sa", "lge:SAX", "all_slices", 1), ("lge_lax", "lge:4CH", "one_image_repeated", 10),
        ("lge_2ch", "lge:2CH", "one_image_repeated", 10), ("lge_3ch", "lge:3CH", "one_image_repeated", 10)]
    assert plan.entries[1].images[:3] == ((4, 0), (4, 0), (4, 1))  # 25 phases resampled to 30, nearest
    assert plan.entries[2].images == tuple((s, 0) for s in range(10))
    assert len(plan) == len(plan.frames()) == 30 + 30 + 10 + 30
    res = apply_recipe(study, p)
    assert res.montage_length == len(plan) and res.substitutions[:len(plan.substitutions)] == plan.substitutions
    assert [res.used[e.segment]["montage_frames"] for e in plan.entries] == [e.montage_frames for e in plan.entries]


def test_recipe_params_roundtrip_and_validation():
    p = get_recipe("cmrclip-v1", frames=8, image_size=112)
    d = p.to_dict()
    assert d["frames"] == 8 and isinstance(d["segments"], list)
    assert RecipeParams.from_dict(d) == p
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("nope")
    with pytest.raises(ValueError, match="segments"):
        RecipeParams(segments=("cine_xx",))
    with pytest.raises(ValueError, match="unknown recipe parameters"):
        RecipeParams.from_dict({"framez": 3})


def test_no_store_step_handles_mixed_matrix_sizes():
    st_ = study_of([const_view("cine", "SAX", 200, p=30, hw=(40, 48)), const_view("lge", "SAX", 300, s=4, hw=(52, 44))])
    res = apply_recipe(st_, RecipeParams(segments=("cine_sa", "lge_sa"), frames=16, image_size=32, resize=36, crop=36, store_size=None))
    assert res.array.shape == (16, 3, 32, 32)
    assert np.isfinite(res.array).all()
