"""Recipes with streams (``RecipeParams.streams``): further video paths whose frames follow the main recipe's in the
model's one input. The record round-trips; ``apply_recipe``, ``phantom_u8``, the PACS fetch list, the manifest
check and the attribution all handle the streams; a stream whose views the study lacks gives empty frames, never a
failed study."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cmrdx.errors import ModelError
from cmrdx.recipe import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RecipeParams,
    apply_recipe,
    get_recipe,
    montage_plan,
    plan_refs,
    recipe_view_keys,
)
from cmrdx.study.types import Study
from cmrdx.synth.arrays import phantom_study, phantom_u8
from cmrdx.synth.params import sample_params
from cmrdx.vocab import LGE_VIEWS, view_key

BASE = Path(__file__).resolve().parents[1] / "models" / "bases" / "cmrdx-phantom-small-0.5.0"
LGE_SEGMENTS = ("lge_sa", "lge_lax", "lge_2ch", "lge_3ch")
LGE_KEYS = tuple(view_key("lge", v) for v in LGE_VIEWS)
# whole grey levels and one window per frame: what phantom_u8 reproduces exactly
MAIN = get_recipe("cmrclip-v1", frames=8, image_size=32, resize=48, crop=32, store_size=48, window_scope="frame")


def with_stream(main: RecipeParams = MAIN, frames: int = 6, heart_crop_mm: float | None = 150.0) -> RecipeParams:
    st = dataclasses.replace(main, segments=LGE_SEGMENTS, frames=frames, heart_crop_mm=heart_crop_mm)
    return dataclasses.replace(main, streams=(st,))


@pytest.fixture(scope="module")
def small_phantom():
    params = sample_params(2, {"lge": "moderate"}, n_phases=8, matrix=64)
    return params, phantom_study(params)[0]


def without_lge(study: Study) -> Study:
    return dataclasses.replace(study, views={k: v for k, v in study.views.items() if not k.startswith("lge:")})


# --------------------------------------------------------------------------------------------------------------
# The record


def test_streams_round_trip_and_what_is_refused():
    p = with_stream()
    st = p.streams[0]
    assert p.input_frames == 8 + 6 and p.main.streams == () and p.main.frames == 8 and MAIN.main is MAIN
    d = json.loads(json.dumps(p.to_dict()))
    assert [s["segments"] for s in d["streams"]] == [list(LGE_SEGMENTS)] and d["streams"][0]["heart_crop_mm"] == 150.0
    assert "streams" not in d["streams"][0] and RecipeParams.from_dict(d) == p
    assert "streams" not in MAIN.to_dict() and RecipeParams.from_dict(MAIN.to_dict()) == MAIN
    with pytest.raises(ValueError, match="do not nest"):
        dataclasses.replace(MAIN, streams=(p,))
    with pytest.raises(ValueError, match="image_size, mean and std"):
        dataclasses.replace(MAIN, streams=(dataclasses.replace(st, image_size=64),))
    with pytest.raises(ValueError, match="image_size, mean and std"):
        dataclasses.replace(MAIN, streams=(dataclasses.replace(st, std=(0.5, 0.5, 0.5)),))
    with pytest.raises(ValueError, match="is not a recipe"):
        dataclasses.replace(MAIN, streams=(st.to_dict(),))
    with pytest.raises(ValueError, match="list of recipe parameter"):
        RecipeParams.from_dict({**MAIN.to_dict(), "streams": {"frames": 4}})
    with pytest.raises(ValueError, match="unknown recipe parameters"):
        RecipeParams.from_dict({**MAIN.to_dict(), "streams": [{"framez": 4}]})
    assert recipe_view_keys(dataclasses.replace(MAIN, segments=("cine_sa",), streams=(st,))) == (
        "cine:SAX", "lge:SAX", "lge:4CH", "lge:LAX", "lge:2CH", "lge:3CH", "lge:LVOT")


# --------------------------------------------------------------------------------------------------------------
# apply_recipe


def test_the_input_is_the_main_recipes_then_each_streams(small_phantom):
    _, study = small_phantom
    st2 = dataclasses.replace(MAIN, segments=("lge_sa",), frames=40)  # more frames than the stack: padded
    p = dataclasses.replace(with_stream(), streams=(*with_stream().streams, st2))
    rr = apply_recipe(study, p)
    main, s1, s2 = (apply_recipe(study, q) for q in (p.main, *p.streams))
    assert rr.array.shape == (8 + 6 + 40, 3, 32, 32) and rr.array.dtype == np.float32
    n2 = len(s2.sampled)
    assert 0 < n2 < 40 and np.all(rr.array[14 + n2:] == 0) and not np.any(np.all(rr.array[:14 + n2] == 0, (1, 2, 3)))
    np.testing.assert_array_equal(rr.array, np.concatenate([main.array, s1.array, s2.array]))
    assert not np.array_equal(s1.array, main.array[:6])  # the stream is cut around the heart: other pixels
    assert list(rr.used) == list(main.used) + [f"stream1:{s}" for s in s1.used] + [f"stream2:{s}" for s in s2.used]
    assert rr.used["stream1:lge_sa"] == s1.used["lge_sa"] and "crop_px" in rr.used["stream1:lge_sa"]
    assert rr.substitutions == (main.substitutions + [f"stream 1 (lge_sa, lge_lax, lge_2ch, lge_3ch): {s}"
                                                      for s in s1.substitutions if "zero-padded" not in s]
                                + [f"stream 2 (lge_sa): {s}" for s in s2.substitutions if "zero-padded" not in s])
    # a stream's padding is by design (it pools over its real frames): not reported, where the main recipe's is
    assert f"montage has {n2} frames < 40: zero-padded" in s2.substitutions
    assert not any("zero-padded" in s for s in rr.substitutions)
    assert rr.departures == main.departures and rr.montage_length == main.montage_length
    assert rr.sampled == main.sampled
    assert main.heart is None and rr.heart == s1.heart and rr.heart is not None and rr.heart["located"]


def test_the_images_a_stream_shares_with_the_main_recipe_are_decoded_once(small_phantom):
    _, study = small_phantom
    decoded: list[tuple[str, int, int]] = []

    def counting(key, load):
        def run(slices, phases):
            decoded.extend((key, int(a), int(b)) for a in slices for b in phases)
            return load(slices, phases)
        return run

    counted = dataclasses.replace(study, views={k: dataclasses.replace(v, _loader=counting(k, v._loader))
                                                for k, v in study.views.items()})
    p = with_stream()
    rr = apply_recipe(counted, p)
    assert decoded and len(decoded) == len(set(decoded))  # each (view, slice, phase) image once
    lge = {d for d in decoded if d[0].startswith("lge:")}
    decoded.clear()
    apply_recipe(counted, p.main)
    apply_recipe(counted, p.streams[0])
    assert lge & {d for d in decoded if d[0].startswith("lge:")} and len(decoded) > len(set(decoded))  # shared
    # the same input as each recipe alone, and the study given is left as it was
    np.testing.assert_array_equal(rr.array, np.concatenate([apply_recipe(study, p.main).array,
                                                            apply_recipe(study, p.streams[0]).array]))
    assert all(counted.views[k]._loader is not None for k in counted.views)


def test_lge_repeats_puts_each_long_axis_image_in_once_and_the_reference_is_recorded_as_before(small_phantom):
    params, study = small_phantom
    n = study.views[view_key("lge", "SAX")].n_slices
    ref = montage_plan(MAIN, study.views)
    assert {e.segment: e.repeats for e in ref.entries if e.kind == "one_image_repeated"} == dict.fromkeys(
        ("lge_lax", "lge_2ch", "lge_3ch"), n)  # the reference: as often as the stack has slices
    once = dataclasses.replace(MAIN, lge_repeats=1)
    plan = montage_plan(once, study.views)
    assert {e.segment: e.repeats for e in plan.entries if e.kind == "one_image_repeated"} == dict.fromkeys(
        ("lge_lax", "lge_2ch", "lge_3ch"), 1)
    # a stream of n + 3 frames then holds every slice of the stack and each long-axis image once
    st = dataclasses.replace(MAIN, segments=LGE_SEGMENTS, frames=n + 3, lge_repeats=1, heart_crop_mm=150.0)
    rr = apply_recipe(study, st)
    assert rr.montage_length == n + 3 and rr.used["lge_sa"]["slices"] == list(range(n))
    assert not np.any(np.all(rr.array == 0, axis=(1, 2, 3)))  # no padding, no frame twice
    # the fast path reads the option as apply_recipe does
    u8, n_real = phantom_u8(params, st)
    assert int(n_real) == n + 3 and u8.shape[0] == n + 3
    # the reference's record and digest are as before the option existed; the option's round-trips
    assert "lge_repeats" not in MAIN.to_dict() and once.to_dict()["lge_repeats"] == 1
    assert RecipeParams.from_dict(once.to_dict()) == once
    for bad in (0, 65, 1.5, True):  # a recipe record from a manifest is checked as strictly as a config
        with pytest.raises(ValueError, match="lge_repeats must be between 1 and 64"):
            RecipeParams.from_dict({**MAIN.to_dict(), "lge_repeats": bad})


def test_a_stream_without_its_views_is_empty_and_said_while_the_main_still_raises(small_phantom):
    _, study = small_phantom
    lacking = without_lge(study)
    p = with_stream()
    rr = apply_recipe(lacking, p)
    np.testing.assert_array_equal(rr.array[:8], apply_recipe(lacking, p.main).array)
    assert rr.array.shape == (14, 3, 32, 32) and np.all(rr.array[8:] == 0) and rr.array[:8].std() > 0
    assert ("stream 1: none of its views (lge:SAX, lge:4CH, lge:LAX, lge:2CH, lge:3CH, lge:LVOT) in the study: "
            "its frames are empty") in rr.substitutions
    assert not [k for k in rr.used if k.startswith("stream")]
    # the main recipe finding none of its views fails the study, as without streams
    cine_main = dataclasses.replace(p, segments=("cine_lax", "cine_sa"))
    lge_only = dataclasses.replace(study, views={k: v for k, v in study.views.items() if k.startswith("lge:")})
    with pytest.raises(ValueError, match="recipe found none of its views"):
        apply_recipe(lge_only, cine_main)
    with pytest.raises(ValueError, match="recipe found none of its views"):
        apply_recipe(dataclasses.replace(study, views={}), p)


# --------------------------------------------------------------------------------------------------------------
# phantom_u8


def grey_of(arr: np.ndarray) -> np.ndarray:
    return np.rint((arr[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255.0).clip(0, 255).astype(np.uint8)


def test_phantom_u8_of_a_recipe_with_a_stream_missing_its_views():
    """A phantom that lacks every LGE view: the stream's frames are zero in phantom_u8 as in apply_recipe, n_real
    counts each part's real frames, and the model input made from them is apply_recipe's, padding included."""
    params = sample_params(5, matrix=64, n_phases=8, variety=True)
    params = dataclasses.replace(params, variety=dataclasses.replace(params.variety, missing_views=list(LGE_KEYS)))
    p = with_stream(frames=4)
    u8, n = phantom_u8(params, p)
    rr = apply_recipe(phantom_study(params, recipe_view_keys(p))[0], p)
    assert u8.shape == (12, 32, 32) and n.tolist() == [len(rr.sampled), 0] == [8, 0]
    from cmrdx.train.data import u8_to_input

    np.testing.assert_allclose(u8_to_input(u8, n, p)[0], rr.array, atol=1e-6)
    assert np.all(u8[8:] == 0) and np.all(rr.array[8:] == 0) and u8[:8].std() > 10
    np.testing.assert_array_equal(u8[:8], grey_of(rr.array[:8]))
    assert any("stream 1: none of its views" in s for s in rr.substitutions)
    assert np.array_equal(phantom_u8(params, p.main)[0], u8[:8])


# --------------------------------------------------------------------------------------------------------------
# What a PACS fetch brings


def test_a_pacs_fetch_brings_what_the_main_recipe_and_every_stream_read(small_phantom):
    from cmrdx.pacs.study import recipe_refs

    _, study = small_phantom
    views = {k: dataclasses.replace(v, _refs=[[f"{k}/{s}/{t}" for t in range(v.n_phases)] for s in range(v.n_slices)])
             for k, v in study.views.items()}
    study = dataclasses.replace(study, views=views)
    cine_main = dataclasses.replace(MAIN, segments=("cine_lax", "cine_sa"))
    p = dataclasses.replace(cine_main, streams=with_stream().streams)
    main_refs = plan_refs(study, montage_plan(cine_main, study.views))
    stream_refs = plan_refs(study, montage_plan(p.streams[0], study.views))
    assert main_refs and stream_refs and not set(main_refs) & set(stream_refs)
    assert recipe_refs(study, cine_main) == main_refs
    assert recipe_refs(study, p) == main_refs + stream_refs
    # a stream reading views the main recipe reads too: each object once
    both = with_stream(dataclasses.replace(MAIN, cine_phases=None))
    refs = recipe_refs(study, both)
    assert len(refs) == len(set(refs)) and set(refs) == set(plan_refs(study, montage_plan(both.main, study.views)))


# --------------------------------------------------------------------------------------------------------------
# The manifest


def test_the_manifest_takes_the_frames_of_the_main_recipe_and_its_streams(tmp_path):
    from cmrdx.model.manifest import load_manifest

    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(BASE / "manifest.json", d / "manifest.json")  # a model without a stream
    raw = json.loads((d / "manifest.json").read_text())
    main = RecipeParams.from_dict(raw["recipe"]["params"])
    assert raw["video"]["frames"] == main.frames == main.input_frames == load_manifest(d, verify=False).video["frames"]

    def write(frames: int, params: RecipeParams) -> None:
        x = json.loads(json.dumps(raw))
        x["video"]["frames"], x["recipe"]["params"] = frames, params.to_dict()
        (d / "manifest.json").write_text(json.dumps(x))

    streamed = with_stream(main, frames=16, heart_crop_mm=210.0)
    write(main.frames + 16, streamed)
    m = load_manifest(d, verify=False)
    assert m.recipe_params() == streamed and m.recipe_params().input_frames == m.video["frames"] == main.frames + 16
    write(main.frames, streamed)
    with pytest.raises(ModelError, match=rf"takes {main.frames} frames but the recipe makes {main.frames + 16} "
                                         rf"\({main.frames} of its own \+ 16 of stream 1\)"):
        load_manifest(d, verify=False)
    write(main.frames + 1, main)
    with pytest.raises(ModelError, match=rf"takes {main.frames + 1} frames but the recipe makes {main.frames}"):
        load_manifest(d, verify=False)
    # a recipe record that cannot be read: the folder's fault, said with the manifest's path and the fix
    x = json.loads(json.dumps(raw))
    x["recipe"]["params"]["lge_repeats"] = 1.5
    (d / "manifest.json").write_text(json.dumps(x))
    with pytest.raises(ModelError, match=r"model/manifest.json: its recipe cannot be read: lge_repeats must be") as ei:
        load_manifest(d, verify=False).recipe_params()
    assert "export the model again" in (ei.value.hint or "")


# --------------------------------------------------------------------------------------------------------------
# Attribution


def test_attribution_appends_the_streams_frames_to_every_perturbed_input(small_phantom):
    """Every input the encoder is given holds the stream's frames after the main recipe's: the study's own stream
    frames for the unperturbed and phase inputs; for a views perturbation, the stream planned without the views
    taken out (all zero when it has none left), as ``apply_recipe`` makes it for a study lacking them; for the region
    map of an LGE segment the stream also shares, that stream with its patches taken away (and the note says so)."""
    from cmrdx.pipeline.explain import ExplainOptions, explain
    from cmrdx.zeroshot.bank import get_bank

    _, study = small_phantom
    p = with_stream(get_recipe("cmrclip-v1", frames=8, image_size=32, resize=36, crop=36, store_size=36,
                               cine_phases=None))
    full = apply_recipe(study, p).array
    seen: list[np.ndarray] = []

    def encode(x: np.ndarray) -> np.ndarray:
        seen.extend(x)
        flat = x.reshape(len(x), x.shape[1], -1)
        e = np.stack([flat[:, :8].mean(axis=(1, 2)), flat[:, 8:].sum(axis=(1, 2)) / 1e5, np.ones(len(x))], 1)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    bank = get_bank("cmr-findings")
    targets = [(bank.findings[0], bank)]
    ex = explain(study, p, encode, targets, lambda e, f, b: float(e[0] + e[1]),
                 options=ExplainOptions(phase_windows=2, grid=2, batch=3, region_segments=("lge_sa",)))
    assert ex.n_inputs == len(seen) and all(x.shape == (14, 3, 32, 32) for x in seen)
    assert any(np.array_equal(x, full) for x in seen)
    # the unperturbed input and the phase windows at least keep the study's own stream frames
    assert sum(np.array_equal(x[8:], full[8:]) for x in seen) >= 1 + 2
    # every stream part is the stream of the study without some of its LGE views (the leave-outs), or empty
    lge = sorted(k for k in study.views if k.startswith("lge:"))
    honest = [np.zeros((6, 3, 32, 32), np.float32)]
    for bits in range(1 << len(lge)):
        kept_ = {k: v for k, v in study.views.items() if not (k in lge and bits >> lge.index(k) & 1)}
        if any(k in kept_ for k in lge):
            honest.append(apply_recipe(dataclasses.replace(study, views=kept_), p.streams[0]).array)
    altered = [x for x in seen if not any(np.array_equal(x[8:], h) for h in honest)]
    # only the region map's inputs (each patch taken away, each patch alone, the whole field away) alter the stream
    assert 1 <= len(altered) <= 2 * 2 * 2 + 1
    # the leave-one-out of the LGE SAX stack replans the stream without it; every LGE view out: an empty stream
    no_sax = dataclasses.replace(study, views={k: v for k, v in study.views.items() if k != "lge:SAX"})
    assert any(np.array_equal(x[8:], apply_recipe(no_sax, p.streams[0]).array) for x in seen)
    assert any(np.all(x[8:] == 0) and not np.all(x[:8] == 0) for x in seen)
    note = ex.to_dict()["method"]["streams"]
    assert "stream 1: lge_sa, lge_lax, lge_2ch, lge_3ch, 6 frames, 150 mm around the heart" in note
    assert "took the same part of the heart away in the stream's frames of the same images (stream 1: lge_sa)" in note
    assert "streams" not in explain(study, p.main, encode, targets, lambda e, f, b: float(e[0]),
                                    options=ExplainOptions(phase_windows=0, grid=0)).to_dict()["method"]
