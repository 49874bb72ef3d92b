"""The randomised generator (``sample_params(variety=True)``): every axis varies and shows in the pixels, each
choice is recorded and deterministic, family filters hold, held-out report styles stay out of training, and the
new DICOM objects are valid and read back as the arrays."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cmrdx.synth import render, render_study, sample_params, write_archive, write_study
from cmrdx.synth.arrays import phantom_report, phantom_study
from cmrdx.synth.phantom import NH, NPSI, Phantom
from cmrdx.synth.report import HELDOUT_STYLES, STYLES, VARIETY_TRAIN_STYLES, make_report
from cmrdx.synth.variety import AXES, FAMILIES, FamilyFilter, lge_contrast, parse_families

TINY = dict(n_phases=6, matrix=64)
SEEDS = range(60)


def _fake_truth(p) -> dict[str, float]:
    return {"lv_edv_ml": p.lv_edv_ml, "lv_ef_pct": p.lv_ef_pct, "rv_edv_ml": p.rv_edv_ml, "rv_ef_pct": p.rv_ef_pct,
            "lv_max_wall_mm": p.lv_wall_mm, "aortic_root_mm": p.aortic_root_mm, "effusion_mm": p.effusion_mm}


# ---------------------------------------------------------------- families, filters, determinism


def test_families_are_named_and_validated():
    assert "scar:midwall" in FAMILIES and "lge:psir" in FAMILIES and "anatomy:trabeculated" in FAMILIES
    assert parse_families("lge:psir, scar:midwall") == ["lge:psir", "scar:midwall"]
    assert parse_families(["cine:*"]) == ["cine:bssfp", "cine:gre"]
    with pytest.raises(ValueError, match="unknown family"):
        parse_families(["scar:wiggly"])
    with pytest.raises(ValueError, match="axes are"):
        parse_families(["colour:red"])
    with pytest.raises(ValueError, match="leaves no value"):
        FamilyFilter.make(only=["lge:psir"], exclude=["lge:psir"])


def test_every_axis_varies_and_is_recorded():
    ps = [sample_params(s, prevalence=0.5, variety=True) for s in SEEDS]
    for axis, values in AXES.items():
        seen = {f.split(":", 1)[1] for p in ps for f in p.families if f.startswith(axis + ":")}
        assert seen == set(values), (axis, seen)
    acq = lambda k: {getattr(p.acq, k) for p in ps}  # noqa: E731
    for k in ("matrix", "pixel_mm", "n_phases", "heart_rate_bpm", "sax_thickness_mm", "sax_gap_mm", "lge_n_slices",
              "snr_cine", "inversion_time_ms", "lge_matrix"):
        assert len(acq(k)) >= 3, k
    v = {json.dumps(p.to_dict()["variety"], sort_keys=True) for p in ps}
    assert len(v) == len(ps)
    d = ps[0].to_dict()["variety"]
    for k in ("shading_strength", "misregistration_mm", "nulling_error", "lge_t1_s", "sax_coverage_mm", "report"):
        assert k in d
    # conditional axes only when their finding is present
    for p in ps:
        assert (any(f.startswith("scar:") for f in p.families)) == (p.findings["lge"] != "none")
        assert (any(f.startswith("hypertrophy:") for f in p.families)) == (p.findings["lv_hypertrophy"] != "none")


def test_same_seed_same_study_and_axes_draw_independently():
    a = sample_params(17, prevalence=0.6, variety=True)
    b = sample_params(17, prevalence=0.6, variety=True)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict() != sample_params(18, prevalence=0.6, variety=True).to_dict()
    # constraining one axis leaves the others' draws alone
    c = sample_params(17, prevalence=0.6, only_families=["cine:gre"])
    assert c.variety.cine == "gre"
    for axis in ("anatomy", "septum", "lge", "breathhold", "views"):
        assert getattr(c.variety, axis) == getattr(a.variety, axis)
    r1 = render(replace(a, acq=replace(a.acq, n_phases=4, matrix=(48, 48), lge_matrix=(48, 48))), views=("lge:4CH",))
    r2 = render(replace(b, acq=replace(b.acq, n_phases=4, matrix=(48, 48), lge_matrix=(48, 48))), views=("lge:4CH",))
    assert np.array_equal(r1.views["lge:4CH"].pixels, r2.views["lge:4CH"].pixels)


def test_family_filters_include_and_exclude():
    ex = [sample_params(s, {"lge": "moderate"}, exclude_families=["scar:midwall", "lge:psir"]) for s in SEEDS]
    assert all(p.lge_pattern != "midwall" and p.variety.lge != "psir" for p in ex)
    only = [sample_params(s, prevalence=0.4, only_families=["scar:midwall", "lge:psir"]) for s in range(20)]
    assert all(p.variety.lge == "psir" for p in only)
    assert all(p.lge_pattern == "midwall" for p in only if p.findings["lge"] != "none")
    assert any(p.findings["lge"] == "none" for p in only)  # a filter constrains the look, not the findings
    flt = FamilyFilter.make(exclude=["scar:midwall"])
    assert flt.admits(["scar:transmural", "lge:psir"]) and not flt.admits(["scar:midwall"])


def test_classic_mode_is_unchanged_and_has_other_uids():
    from cmrdx.synth.geometry import uid
    from cmrdx.synth.params import uid_root

    c = sample_params(5, {"lge": "mild"}, **TINY)
    assert c.variety is None and c.families == [] and "variety" not in c.to_dict()
    assert uid_root(c) == 5
    v = sample_params(5, {"lge": "mild"}, variety=True, **TINY)
    assert uid(uid_root(v), "study") != uid(5, "study")
    w = sample_params(5, {"lge": "mild"}, only_families=["lge:psir"], **TINY)
    assert uid_root(w) != uid_root(v) or w.to_dict() == v.to_dict()
    assert c.findings == v.findings and c.lv_edv_ml == v.lv_edv_ml  # same findings and targets, another look


# ---------------------------------------------------------------- the axes show in the phantom and pixels


def _radial_depth(ph: Phantom, fl_key: str = "scar") -> float:
    """Scar-weighted mean relative depth in the wall (0 endocardium, 1 epicardium), along rays through the
    bins where the scar table is strongest, at end-diastole."""
    mid = ph.scar[NH // 4: 3 * NH // 4]  # away from the apical cap and the base plane
    ih, ip = np.unravel_index(np.argmax(mid), mid.shape)
    h = (ih + NH // 4 + 0.5) / NH
    psi = np.radians(-180 + (ip + 0.5) * 360 / NPSI)
    za = h * ph.Le
    r = np.linspace(0.5 * ph.Re, ph.Re + 2.5 * ph.T.max(), 600, dtype=np.float32)
    q = np.stack([r * np.cos(psi), r * np.sin(psi), np.full_like(r, za)]).astype(np.float32)
    fl = ph.fields(q, 0.0, 0.3, scar=True)
    r_endo = r[np.argmin(np.abs(fl["lv_cav"] - 0.5))]
    r_epi = r[np.argmin(np.abs(fl["lv_epi"] - 0.5))]
    w = fl[fl_key] * (fl["lv_epi"] - fl["lv_cav"])
    assert w.sum() > 0
    return float(((r - r_endo) / (r_epi - r_endo) * w).sum() / w.sum())


@pytest.mark.parametrize("pattern,lo,hi", [("subendocardial", -0.1, 0.4), ("midwall", 0.3, 0.7), ("epicardial", 0.6, 1.1),
                                           ("transmural", 0.3, 0.7)])
def test_scar_patterns_lie_at_their_depth(pattern, lo, hi):
    p = sample_params(3, {"lge": "severe"}, only_families=[f"scar:{pattern}"])
    assert p.lge_pattern == pattern and p.lge_segments
    d = _radial_depth(Phantom(p))
    assert lo < d < hi, d


def test_rv_insertion_and_patchy_scars_are_focal():
    for pat in ("rv_insertion", "patchy"):
        p = sample_params(4, {"lge": "moderate"}, only_families=[f"scar:{pat}"])
        ph = Phantom(p)
        frac = float((ph.scar > 0.3).mean())
        assert 0.01 < frac < 0.5, (pat, frac)
        assert p.variety.scar_detail["blobs"]
    p = sample_params(4, {"lge": "moderate"}, only_families=["scar:rv_insertion"])
    psi = -180 + (np.argmax(Phantom(p).scar.max(0)) + 0.5) * 360 / NPSI
    assert 40 < abs(psi) < 90  # at the junctions of the RV with the septum, not mid-septum nor the lateral wall


def test_trabeculation_and_papillary_muscles_change_the_endocardial_border():
    base = sample_params(8, only_families=["anatomy:ellipsoid", "septum:straight"], **TINY)
    trab = sample_params(8, only_families=["anatomy:trabeculated", "septum:straight"], **TINY)
    pap = sample_params(8, only_families=["anatomy:papillary", "septum:straight"], **TINY)
    out = {}
    for name, p in (("base", base), ("trab", trab), ("pap", pap)):
        ph = Phantom(p)
        g = np.linspace(-60, 60, 121, dtype=np.float32)
        X, Y = np.meshgrid(g, g, indexing="ij")
        q = np.stack([X.ravel(), Y.ravel(), np.full(X.size, 0.45 * ph.Le, np.float32)])
        fl = ph.fields(q, 0.0, 1.0)
        cav = fl["lv_cav"] > 0.99
        blood = fl.get("lv_blood", fl["lv_cav"])
        out[name] = float((blood[cav] < 0.5).mean())  # cavity (by its contour) painted as myocardium
    assert out["base"] == 0.0
    assert out["trab"] > 0.05 and out["pap"] > 0.01, out
    # volumes are measured from the contour, as CMR analysis counts trabeculae and papillary muscles as blood
    t = Phantom(trab).truth()
    assert t["lv_edv_ml"] == pytest.approx(trab.lv_edv_ml, rel=0.02)


def test_septal_curvature_and_wall_patterns():
    p = sample_params(9, {"lv_hypertrophy": "moderate"}, only_families=["septum:curved", "hypertrophy:apical"])
    ph = Phantom(p)
    sept = ph.Rmod[:, NPSI // 2 - 2:NPSI // 2 + 2].mean()
    lat = np.concatenate([ph.Rmod[:, :4], ph.Rmod[:, -4:]], 1).mean()
    assert abs(sept - lat) > 0.05 and np.sign(lat - sept) == np.sign(p.variety.septal_curvature)
    assert ph.truth()["lv_edv_ml"] == pytest.approx(p.lv_edv_ml, rel=0.02)
    assert ph.T[: NH // 4].mean() > ph.T[NH // 2:].mean()  # apical hypertrophy: thickest at the apex
    s = Phantom(sample_params(9, {"lv_hypertrophy": "moderate"}, only_families=["hypertrophy:septal"]))
    ip = np.argmax(s.T.max(0))
    assert abs(-180 + (ip + 0.5) * 360 / NPSI) < 60  # septal hypertrophy: thickest at the septum


def test_lge_contrast_modes():
    p = sample_params(6, {"lge": "severe"}, only_families=["lge:psir"], **TINY)
    r = render(p, views=("lge:SAX",), noise=False)
    px = r.views["lge:SAX"].pixels
    assert px.min() < -100 and px.max() > 100  # PSIR: signed range
    c, ti = lge_contrast(p.variety, p.acq.rr_ms)
    assert c["myo"] < 0 < c["scar"] and 150 < ti < 700
    m = replace(p.variety, lge="magnitude")
    cm, _ = lge_contrast(m, p.acq.rr_ms)
    assert all(x >= 0 for x in cm.values()) and cm["myo"] == pytest.approx(abs(c["myo"]))
    db, _ = lge_contrast(replace(p.variety, lge="dark_blood", dark_blood_factor=0.1), p.acq.rr_ms)
    assert db["blood"] == pytest.approx(0.1 * cm["blood"])
    # imperfect nulling: normal myocardium is not black when TI misses the null
    off, _ = lge_contrast(replace(m, nulling_error=0.15), p.acq.rr_ms)
    on, _ = lge_contrast(replace(m, nulling_error=0.0), p.acq.rr_ms)
    assert on["myo"] < 1e-9 < off["myo"]
    mag = render(sample_params(6, {"lge": "severe"}, only_families=["lge:magnitude"], **TINY), views=("lge:SAX",))
    assert mag.views["lge:SAX"].pixels.min() >= 0


def test_cine_contrast_gre_and_bssfp():
    def ratio(fam: str) -> tuple[float, float]:
        from cmrdx.synth.render import Renderer

        c = Renderer(sample_params(12, {"pericardial_effusion": "moderate"}, only_families=[fam], **TINY)).contrast["cine"]
        return c["blood"] / c["myo"], c["fluid"]

    (rb, fb), (rg, fg) = ratio("cine:bssfp"), ratio("cine:gre")
    assert rb > rg > 1.5  # bSSFP: more blood-myocardium contrast
    assert fb > 0.6 > fg  # fluid bright on bSSFP, dark on spoiled gradient echo


def test_misregistration_shifts_slices_not_headers():
    p = sample_params(14, only_families=["breathhold:misregistered"], **TINY)
    still = replace(p, variety=replace(p.variety, misregistration_mm=0.0))
    a = render(p, views=("cine:SAX",), noise=False).views["cine:SAX"]
    b = render(still, views=("cine:SAX",), noise=False).views["cine:SAX"]
    assert [pl.position for pl in a.planes] == [pl.position for pl in b.planes]
    assert all(pl.shift is not None and np.linalg.norm(pl.shift) > 0 for pl in a.planes)
    assert all(pl.shift is None for pl in b.planes)
    moved = [not np.array_equal(a.pixels[i], b.pixels[i]) for i in range(len(a.planes))]
    assert sum(moved) >= len(moved) - 1


def test_missing_views_are_left_out_of_arrays():
    p = sample_params(21, only_families=["views:missing"], **TINY)
    assert p.variety.missing_views
    st = render_study(p)
    assert not set(p.variety.missing_views) & set(st.views) and "cine:SAX" in st.views and "lge:SAX" in st.views
    lazy, report = phantom_study(p)
    assert set(lazy.views) == set(st.views) and report == phantom_report(p)


# ---------------------------------------------------------------- reports


def test_report_phrasing_varies_and_heldout_styles_stay_out():
    ps = [sample_params(s, prevalence=0.4, variety=True) for s in range(120)]
    assert {p.report_style for p in ps} == set(VARIETY_TRAIN_STYLES)
    assert not {p.report_style for p in ps} & set(HELDOUT_STYLES)
    texts = [phantom_report(p) for p in ps]
    assert len(set(texts)) > 0.9 * len(texts)  # brief reports of normal hearts may coincide ("Normal study.")
    joined = "\n".join(texts)
    for phrase in (r"No evidence of", r"\bNo LGE\b|No late gadolinium enhancement", r"absent", r"\bischemic\b",
                   r"\bischaemic\b", r"^- ", r"LVEDV \d+"):
        assert re.search(phrase, joined, re.M), phrase
    no_num = [t for p, t in zip(ps, texts) if not p.variety.report["measurements"] and p.report_style != "quantitative"]
    assert no_num and not any(re.search(r"\d+ ?(%|mm|ml|mL)", t) for t in no_num)
    american = [t for p, t in zip(ps, texts) if p.variety.report["spelling"] == "american"]
    assert not any(re.search(r"ischaemic|characterisation|calibre", t) for t in american)
    # the held-out style of the randomised generator speaks another vocabulary
    train_words = {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}
    held = [make_report(p, _fake_truth(p), "dictated") for p in ps[:20]]
    new = {w for t in held for w in re.findall(r"[a-z]+", t.lower())} - train_words
    assert len(new) >= 8, new
    assert "dictated" in STYLES and "dictated" in HELDOUT_STYLES
    # every scar pattern is named in its report
    for pat, word in (("epicardial", r"epicardial"), ("rv_insertion", r"insertion"), ("patchy", r"[Pp]atchy|[Mm]ultifocal"),
                      ("midwall", r"[Mm]id-(wall|myocardial)")):
        for s in range(6):
            p = sample_params(s, {"lge": "moderate"}, only_families=[f"scar:{pat}"], report_style="narrative")
            assert re.search(word, phantom_report(p)), (pat, phantom_report(p))


# ---------------------------------------------------------------- DICOM

# (vendor, families, enhanced, compression)
DICOM_KINDS = [
    ("siemens", ["lge:psir", "cine:gre", "views:extra"], False, None),
    ("ge", ["lge:dark_blood", "views:extra", "breathhold:misregistered"], True, "jpegls"),
    ("philips", ["lge:psir", "views:missing"], True, "j2k"),
    ("ge", ["lge:psir", "views:extra"], False, "rle"),
    ("siemens", ["lge:magnitude", "views:extra"], False, None),
]


@pytest.fixture(scope="module")
def variety_studies(tmp_path_factory) -> list[tuple[Path, object]]:
    root = tmp_path_factory.mktemp("variety")
    out = []
    for i, (vendor, fams, enh, comp) in enumerate(DICOM_KINDS):
        p = sample_params(7 + i, {"lge": "moderate"}, vendor=vendor, only_families=fams, **TINY)
        write_study(root / f"s{i}", p, enhanced=enh, compress=comp)
        out.append((root / f"s{i}", p))
    return out


def test_variety_dicom_is_valid(variety_studies):
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    for study, _ in variety_studies:
        for series_dir in sorted((study / "DICOM").iterdir()):
            f = sorted(series_dir.glob("*.dcm"))[0]
            res = subprocess.run([tool, str(f)], capture_output=True, text=True, timeout=60)
            errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
            assert not errors, f"{f}: {errors}"


def test_psir_is_written_signed_with_its_rescale(variety_studies):
    seen = set()
    for study, p in variety_studies:
        if p.variety.lge != "psir" and "psir_companion" not in p.variety.extra_series:
            continue
        for f in sorted((study / "DICOM").rglob("*.dcm")):
            ds = pydicom.dcmread(f)
            itype = set(ds.get("ImageType", []))
            real = "R" in itype or ds.get("ComplexImageComponent") == "REAL"
            if not real:
                continue
            slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
            if "PerFrameFunctionalGroupsSequence" in ds:
                pvt = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
                slope, intercept = float(pvt.RescaleSlope), float(pvt.RescaleIntercept)
            values = ds.pixel_array.astype(float) * slope + intercept
            assert values.min() < 0 < values.max(), f
            if p.acq.vendor == "siemens":
                assert ds.PixelRepresentation == 0 and (slope, intercept) == (2.0, -4096.0)
            else:
                assert ds.PixelRepresentation == 1 and (slope, intercept) == (1.0, 0.0)
            seen.add(p.acq.vendor)
    assert seen == {"siemens", "ge", "philips"}


def test_variety_dicom_is_classified_and_reads_back_as_the_arrays(variety_studies):
    from cmrdx.study.assemble import assemble_study, inspect_study

    for study, p in variety_studies:
        truth = json.loads((study / "truth.json").read_text())
        assert truth["families"] == p.families and truth["params"]["variety"]["lge"] == p.variety.lge
        ins = inspect_study(study)
        roles = {(s.role, s.view) for s in ins.series if s.role in ("cine", "lge")}
        assert roles == {tuple(k.split(":")) for k in truth["views"]}, (study, roles)
        arrays = render_study(p)
        files = assemble_study(study)
        assert files.study_uid == arrays.study_uid == truth["study_instance_uid"]
        assert set(files.views) == set(arrays.views)
        for key in arrays.views:
            a, b = arrays.views[key], files.views[key]
            assert (a.n_slices, a.n_phases, a.shape) == (b.n_slices, b.n_phases, b.shape), key
            assert np.array_equal(a.pixels(), b.pixels()), (study, key)


def test_archive_family_filters_and_cli(tmp_path):
    from typer.testing import CliRunner

    from cmrdx.cli import app

    rows = write_archive(tmp_path / "train", 3, 4, prevalence={"lge": 1.0}, exclude_families=["scar:midwall"],
                         distractors=False, **TINY)
    assert all("scar:midwall" not in str(r["families"]) and "scar:" in str(r["families"]) for r in rows)
    with open(tmp_path / "train" / "labels.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [g["families"] for g in got] == [r["families"] for r in rows]
    assert all(g["report_style"] in VARIETY_TRAIN_STYLES for g in got)
    run = CliRunner().invoke
    r = run(app, ["synth", "archive", str(tmp_path / "test"), "--n", "2", "--seed", "5", "--phases", "6", "--matrix", "64",
                  "--prevalence", "lge=1", "--only-families", "scar:midwall,lge:psir", "--no-distractors"])
    assert r.exit_code == 0, r.output
    for d in sorted((tmp_path / "test").glob("study_*")):
        t = json.loads((d / "truth.json").read_text())
        assert "scar:midwall" in t["families"] and "lge:psir" in t["families"]
    r = run(app, ["synth", "archive", str(tmp_path / "bad"), "--n", "1", "--only-families", "scar:wiggly"])
    assert r.exit_code != 0 and "unknown family" in r.output
    r = run(app, ["synth", "families"])
    assert r.exit_code == 0 and "scar:midwall" in r.output


@pytest.mark.parametrize("heart_crop_mm", [None, 170.0, "stream"])
def test_training_fast_path_is_exact_for_randomised_studies(heart_crop_mm):
    """``phantom_u8`` (only the sampled frames rendered) equals the recipe applied to the lazy study, for PSIR
    images, misregistered slices and missing views too, with the cut around the heart, and for a recipe with a
    stream (the bundled model's recipe: its main recipe, then 16 LGE frames cut 210 mm around the heart, each image
    once): training on randomised
    phantoms keeps its fast path."""
    from cmrdx.model.manifest import load_manifest
    from cmrdx.recipe import IMAGENET_MEAN, IMAGENET_STD, apply_recipe, get_recipe, recipe_view_keys
    from cmrdx.synth.arrays import phantom_u8

    if heart_crop_mm == "stream":  # the bundled model's recipe itself (0.6.0: a stream of every LGE image once)
        r = load_manifest(Path(__file__).resolve().parents[1] / "models" / "cmrdx-phantom-small",
                          verify=False).recipe_params()
        assert [(st.segments, st.frames, st.heart_crop_mm, st.lge_repeats) for st in r.streams] == [
            (("lge_sa", "lge_lax", "lge_2ch", "lge_3ch"), 16, 210.0, 1)]
    else:
        r = get_recipe("cmrclip-v1", frames=8, image_size=32, resize=48, crop=32, store_size=48,
                       window_scope="frame", heart_crop_mm=heart_crop_mm)
    p = sample_params(23, {"lge": "moderate"}, only_families=["lge:psir", "breathhold:misregistered", "views:missing"],
                      matrix=64, n_phases=8)
    u8, n = phantom_u8(p, r)
    rr = apply_recipe(phantom_study(p, recipe_view_keys(r))[0], r)
    assert (rr.heart is not None and rr.heart["located"]) == (heart_crop_mm is not None)
    arr = rr.array
    grey = np.rint((arr[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255.0)
    np.testing.assert_array_equal(u8, grey.astype(np.uint8))
    assert np.asarray(n).ravel()[0] == r.frames == len(rr.sampled) and u8.shape[0] == r.input_frames
    assert u8.std() > 10
    if r.streams:  # the stream's own frames: real LGE images, the same as the stream's fast path alone
        assert u8[r.frames:].std() > 10 and any(k.startswith("stream1:") for k in rr.used)
        alone = phantom_u8(p, r.streams[0])
        np.testing.assert_array_equal(u8[r.frames:], alone[0])
        assert n.tolist() == [r.frames, alone[1]]
        from cmrdx.train.data import u8_to_input

        np.testing.assert_allclose(u8_to_input(u8, n, r)[0], arr, atol=1e-6)
