"""The heart located from a study's plan (``cmrdx.study.heart``) and the recipe's cut around it.

Phantom studies written to DICOM and read back as a user's are: the phantom knows where its LV long axis is (the
apex and the heart's axes), so the located axis and centre are checked against the truth, not against themselves.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pydicom
import pytest

from cmrdx.recipe import EntryCrop, RecipeParams, apply_recipe, get_recipe
from cmrdx.study.assemble import assemble_study
from cmrdx.study.heart import locate_heart
from cmrdx.study.types import SliceGeometry, StudyView
from cmrdx.synth.params import sample_params
from cmrdx.synth.phantom import Phantom
from cmrdx.synth.writer import write_study
from helpers.cli import in_process

SMALL = dict(matrix=64, n_phases=8)


def _axis_error(loc, params) -> tuple[float, float]:
    """(distance in mm of the located centre from the phantom's true LV long axis, angle in degrees between the
    located and the true axis)."""
    ph = Phantom(params)
    u = ph.R[:, 2]
    d = loc.centre - ph.apex
    return float(np.linalg.norm(d - (d @ u) * u)), float(np.degrees(np.arccos(min(1.0, abs(float(loc.axis @ u))))))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Two phantom studies on disk: a classic one and a randomised one with misregistered breath-holds."""
    root = tmp_path_factory.mktemp("heart")
    out = {}
    for name, params in {
        "classic": sample_params(41, {"lge": "moderate"}, **SMALL),
        "randomised": sample_params(42, {"lge": "moderate"}, variety=True,
                                    only_families=["breathhold:misregistered", "views:complete"], **SMALL),
    }.items():
        write_study(root / name, params, distractors=False)
        out[name] = (params, assemble_study(str(root / name)))
    return out


@pytest.mark.parametrize("name", ["classic", "randomised"])
def test_the_long_axis_read_from_the_headers_is_the_phantoms(written, name):
    params, study = written[name]
    assert all(len(v.geometry) == v.n_slices for v in study.views.values())
    loc, how = locate_heart(study.views)
    assert loc is not None, how
    dist, angle = _axis_error(loc, params)
    # the planes carry the generator's planning jitter (a few degrees): the axis is read to within it
    assert dist < 2.0 and angle < 8.0, (dist, angle)
    assert {"cine:4CH", "cine:2CH"} <= set(loc.planes) and loc.sax == "cine:SAX"
    # the centre is the middle of the short-axis stack, not the apex or the base
    ph = Phantom(params)
    height = float((loc.centre - ph.apex) @ ph.R[:, 2])
    assert 0.25 * ph.Le < height < 0.85 * ph.Le, (height, ph.Le)
    # on every short-axis slice the axis crosses near the image's LV: inside the image
    for g in study.views["cine:SAX"].geometry:
        r, c = g.pixel_of(loc.on_slice(g))
        assert 0 <= r < g.shape[0] and 0 <= c < g.shape[1]


def test_without_two_long_axis_planes_the_heart_is_not_guessed(written):
    _, study = written["classic"]
    keep = {k: v for k, v in study.views.items() if k in ("cine:SAX", "lge:SAX", "cine:4CH", "lge:4CH")}
    loc, how = locate_heart(keep)
    # the LGE four-chamber image copies the cine's plan: one plane, counted once
    assert loc is None and "two long-axis planes" in how and "cine:4CH" in how
    loc, how = locate_heart({k: v for k, v in study.views.items() if k.endswith(":SAX")})
    assert loc is None and "has none" in how


def test_an_axis_lying_in_the_short_axis_planes_is_refused(written):
    """A 'short-axis' stack whose planes contain the located axis is not a plan cmrdx reads: no centre."""
    _, study = written["classic"]
    sax = study.views["cine:SAX"]
    lax = study.views["cine:4CH"].geometry[0]
    # the 4CH plane's geometry put in place of each short-axis slice: the axis lies in it
    fake = dataclasses.replace(sax, geometry=tuple(lax for _ in range(sax.n_slices)))
    loc, how = locate_heart({**study.views, "cine:SAX": fake, "lge:SAX": fake})
    assert loc is None and "degrees off" in how


def test_slice_geometry_maps_points_to_pixels():
    g = SliceGeometry(origin=(10.0, -20.0, 5.0), row_dir=(1.0, 0.0, 0.0), col_dir=(0.0, 0.0, -1.0),
                      spacing=(2.0, 1.5), shape=(100, 80))
    assert g.pixel_of(np.asarray(g.origin)) == (0.0, 0.0)
    r, c = g.pixel_of(g.centre)
    assert (r, c) == pytest.approx((49.5, 39.5))
    # a point 30 mm along the column direction and 15 mm along the row direction
    p = np.asarray(g.origin) + 30.0 * np.array([0.0, 0.0, -1.0]) + 15.0 * np.array([1.0, 0.0, 0.0])
    assert g.pixel_of(p) == pytest.approx((15.0, 10.0))
    # the same field of view resampled to half the matrix: half the pixel coordinates (pixel centres kept)
    assert g.pixel_of(p, (50, 40)) == pytest.approx((7.25, 4.75))
    assert g.mm_per_pixel((50, 40)) == pytest.approx((4.0, 3.0))
    assert np.allclose(g.normal, [0.0, 1.0, 0.0])


def test_a_cut_beyond_the_image_is_filled_with_its_minimum():
    img = np.arange(16, dtype=np.float32).reshape(1, 4, 4) + 5.0
    out = EntryCrop(((-1, 2),), (3, 3)).apply(img)
    assert out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out[0, 0], [5.0, 5.0, 5.0])  # the row above the image
    np.testing.assert_array_equal(out[0, 1:, :2], [[7.0, 8.0], [11.0, 12.0]])
    np.testing.assert_array_equal(out[0, 1:, 2], [5.0, 5.0])  # the column right of it


def _recipe(**kw) -> RecipeParams:
    return get_recipe("cmrclip-v1", frames=16, image_size=32, resize=48, crop=32, store_size=48, window_scope="frame",
                      **kw)


def test_the_recipe_cuts_every_image_around_the_heart(written):
    params, study = written["classic"]
    p = _recipe(heart_crop_mm=160.0)
    rr = apply_recipe(study, p)
    assert rr.heart is not None and rr.heart["located"] and rr.heart["crop_mm"] == 160.0
    sax = study.views["cine:SAX"]
    mm = sax.geometry[0].mm_per_pixel(sax.shape)
    assert rr.used["cine_sa"]["crop_px"] == [round(160.0 / mm[0]), round(160.0 / mm[1])]
    # the cut's centre on a short-axis slice is where the true LV axis crosses it (within a pixel and the jitter)
    from cmrdx.recipe import entry_crop, montage_plan
    from cmrdx.study.heart import HeartLocation

    plan = montage_plan(p, study.views)
    e = next(x for x in plan.entries if x.segment == "lge_sa")
    ph = Phantom(params)
    truth = HeartLocation(ph.apex + 0.5 * ph.Le * ph.R[:, 2], ph.R[:, 2], (), None)
    cut = entry_crop(study.views[e.key], e, locate_heart(study.views)[0], 160.0)
    assert cut is not None
    for (s, _), (r0, c0) in zip(e.images, cut.starts):
        g = study.views[e.key].geometry[s]
        r, c = g.pixel_of(truth.on_slice(g), study.views[e.key].shape)
        lge_mm = g.mm_per_pixel(study.views[e.key].shape)[0]
        assert abs(r0 + (cut.size[0] - 1) / 2 - r) * lge_mm < 4.0 and abs(c0 + (cut.size[1] - 1) / 2 - c) * lge_mm < 4.0
    # the input differs from the whole field of view's, and the reference recipe is untouched by the option
    full = apply_recipe(study, _recipe())
    assert full.heart is None and not np.array_equal(full.array, rr.array)


def test_a_study_without_geometry_keeps_its_whole_field_of_view(written):
    _, study = written["classic"]
    bare = dataclasses.replace(study, views={k: dataclasses.replace(v, geometry=()) for k, v in study.views.items()})
    p = _recipe(heart_crop_mm=160.0)
    rr = apply_recipe(bare, p)
    assert rr.heart is not None and not rr.heart["located"]
    assert any("heart not located" in s and "whole field of view" in s for s in rr.substitutions)
    np.testing.assert_array_equal(rr.array, apply_recipe(bare, _recipe()).array)


def test_the_option_is_recorded_only_when_set():
    """A manifest written before the option existed reads back as the same recipe, and writes the same dict."""
    ref = RecipeParams()
    assert "heart_crop_mm" not in ref.to_dict()
    assert RecipeParams.from_dict(ref.to_dict()) == ref
    p = dataclasses.replace(ref, heart_crop_mm=210.0)
    assert p.to_dict()["heart_crop_mm"] == 210.0 and RecipeParams.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="heart_crop_mm"):
        RecipeParams(heart_crop_mm=5.0)


def test_array_views_carry_no_geometry_unless_given():
    v = StudyView.from_array("cine", "SAX", np.zeros((2, 3, 8, 8), np.float32))
    assert v.geometry == ()


def test_inspect_says_where_the_plan_puts_the_heart(written, tmp_path):
    """`cmrdx inspect` reports the located heart (JSON and text), and says why when the plan cannot place it."""
    _, study = written["classic"]
    folder = study.source
    code, out, err = in_process("inspect", str(folder), "--json")
    assert code == 0, err
    h = json.loads(out)["heart"]
    assert h["located"] and h["planes"][:2] == ["cine:4CH", "cine:2CH"] and len(h["centre_mm"]) == 3
    code, out, err = in_process("inspect", str(folder))
    assert code == 0 and "heart: LV long axis from cine:4CH, cine:2CH" in " ".join(out.split()), out
    # the same study without its two- and three-chamber series: one long-axis plane, not located
    bare = tmp_path / "one-plane"
    shutil.copytree(folder, bare)
    for f in bare.rglob("*.dcm"):
        if any(k in str(pydicom.dcmread(f, stop_before_pixels=True).SeriesDescription).upper() for k in ("2CH", "3CH")):
            f.unlink()
    code, out, err = in_process("inspect", str(bare), "--json")
    assert code == 0, err
    h = json.loads(out)["heart"]
    assert not h["located"] and "two long-axis planes" in h["how"]


@pytest.mark.parametrize("vendor,enhanced", [("siemens", False), ("ge", False), ("philips", True)])
def test_the_long_axis_of_studies_cmrdx_did_not_write(tmp_path, vendor, enhanced):
    """Studies built by the test factory (a real DICOM file's pixels and headers, oblique geometry, vendor naming,
    the short-axis cine as Enhanced MR for Philips) rather than by cmrdx's generator: the long-axis planes are set
    through the line along the short-axis normal, and that is the axis read back."""
    from helpers.cine_factory import build_cine_study

    b = build_cine_study(tmp_path / vendor, vendor=vendor, n_slices=8, n_phases=6, enhanced_sax=enhanced,
                         seed=5)
    study = assemble_study(str(b.root))
    loc, how = locate_heart(study.views)
    assert loc is not None, how
    assert abs(float(loc.axis @ b.sax_normal)) > np.cos(np.radians(0.5))
    # the centre lies in every long-axis plane and halfway along the short-axis stack
    for key in loc.planes:
        g = study.views[key].geometry[0]
        assert abs(float(g.normal @ (loc.centre - np.asarray(g.origin)))) < 0.1
    sax = study.views["cine:SAX"].geometry
    ends = [float(b.sax_normal @ np.asarray(g.origin)) for g in (sax[0], sax[-1])]
    assert float(b.sax_normal @ loc.centre) == pytest.approx(sum(ends) / 2, abs=0.1)


def test_an_absurd_pixel_spacing_leaves_that_view_uncut(written):
    """A header claiming 0.001 mm pixels would make a 210 mm cut a 160,000-pixel square: that view keeps its whole
    field of view (said in the substitutions), the others are still cut, and nothing huge is allocated."""
    _, study = written["classic"]
    lge = study.views["lge:SAX"]
    tiny = tuple(dataclasses.replace(g, spacing=(0.001, 0.001)) for g in lge.geometry)
    odd = dataclasses.replace(study, views={**study.views, "lge:SAX": dataclasses.replace(lge, geometry=tiny)})
    p = _recipe(heart_crop_mm=160.0)
    rr = apply_recipe(odd, p)
    assert rr.heart is not None and rr.heart["whole_field_of_view"] == ["lge:SAX"]
    assert "crop_px" not in rr.used["lge_sa"] and "crop_px" in rr.used["cine_sa"]
    assert any("no usable geometry" in s and "lge:SAX" in s for s in rr.substitutions)


def test_a_training_recipe_with_an_impossible_cut_is_refused_naming_the_file(tmp_path):
    from cmrdx.train.stages import load_recipe

    f = tmp_path / "cut.yaml"
    f.write_text("name: x\nversion: 0.0.1\nheart_crop_mm: 5\nstages:\n  - stage: one\n")
    with pytest.raises(ValueError, match=r"cut\.yaml: stage 1 \(one\): heart_crop_mm must be between 20 and 1000"):
        load_recipe(f)
