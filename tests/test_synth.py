"""Phantom, renderer, truth and reports: the ground truth must be measurable from the pixels."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cmrdx.synth import FINDINGS, HELDOUT_STYLES, TRAIN_STYLES, make_report, render, render_study, sample_params
from cmrdx.synth.phantom import Phantom, aha_segment, end_systole_ms, volume_curve

SMALL = dict(n_phases=20, matrix=160)


def otsu(x: np.ndarray) -> float:
    """Otsu threshold of a 1-D sample (blood vs myocardium inside the LV contour)."""
    h, e = np.histogram(x, 128)
    c = (e[:-1] + e[1:]) / 2
    w0 = np.cumsum(h)
    w1 = w0[-1] - w0
    s = np.cumsum(h * c)
    m0 = s / np.maximum(w0, 1)
    m1 = (s[-1] - s) / np.maximum(w1, 1)
    return float(c[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def measure_lv(r) -> tuple[float, float, float]:
    """LV EDV, ESV (mL) and EF (%) from the rendered cine SAX stack, the way an analyst would: threshold the
    blood pool inside the LV contour on every slice and phase, sum area x slice spacing (Simpson's rule), and
    leave out what lies above the mitral plane of that phase. The contour and mitral plane come from the
    phantom's geometry (standing in for the analyst's tracing); the blood pool comes from the pixels only."""
    ph = r.phantom
    v = r.views["cine:SAX"]
    planes = v.planes
    fs = volume_curve(v.trigger_times, r.params.acq.rr_ms)
    sp = abs(planes[1].position - planes[0].position)
    qs = [ph.to_heart(p.points()) for p in planes]
    rad = [np.hypot(q[0], q[1]).reshape(p.shape) for q, p in zip(qs, planes)]
    mid = len(planes) // 2
    thr = otsu(v.pixels[mid, 0][rad[mid] < ph.Re + 0.5 * float(np.median(ph.T))])
    vols = []
    for ti, f in enumerate(fs):
        L = ph.length(f)
        R = ph.Re * (1 - ph.a_r * f * ph.W.mean())
        T = np.sqrt(R * R + ph.A_ed.mean() * ph.Le / (np.pi * L)) - R
        vol = 0.0
        for si, p in enumerate(planes):
            zc = float(qs[si][2].mean())
            w = np.clip((L - (zc - sp / 2)) / sp, 0, 1)
            blood = v.pixels[si, ti][rad[si] < R + 0.5 * T] > thr
            vol += blood.sum() * p.spacing**2 * sp * w / 1000.0
        vols.append(vol)
    vols = np.array(vols)
    return float(vols[0]), float(vols.min()), float(100 * (1 - vols.min() / vols[0]))


def test_volume_curve_is_physiological():
    rr = 900.0
    t = np.linspace(0, rr, 901)
    f = volume_curve(t, rr)
    assert f[0] == pytest.approx(0.0, abs=1e-9)
    ts = end_systole_ms(rr)
    assert abs(t[np.argmax(f)] - ts) < 70  # peak contraction at end-systole (plateau during IVR)
    assert f.max() == pytest.approx(1.0)
    # ejection is faster than filling, and the atrial kick refills the last ~20 %
    assert np.diff(f[t < ts]).min() >= 0
    assert 0.1 < volume_curve(np.array([rr - 140.0]), rr)[0] < 0.3
    assert volume_curve(np.array([rr - 1.0]), rr)[0] < 0.01


def test_aha_segments_cover_17():
    h, psi = np.meshgrid(np.linspace(0.01, 0.99, 50), np.linspace(-179, 179, 90), indexing="ij")
    segs = set(np.unique(aha_segment(h, psi)).tolist())
    assert segs == set(range(1, 18))
    assert aha_segment(np.array([0.9]), np.array([30.0]))[0] == 2  # basal anteroseptal next to the septum centre


@pytest.mark.parametrize("findings", [{}, {"lv_dilation": "severe", "lv_dysfunction": "severe"},
                                      {"lge": "severe", "lv_hypertrophy": "moderate", "rv_dilation": "moderate"}])
def test_phantom_hits_its_targets(findings):
    p = sample_params(11, findings)
    t = Phantom(p).truth()
    assert t["lv_edv_ml"] == pytest.approx(p.lv_edv_ml, rel=0.02)
    assert abs(t["lv_ef_pct"] - p.lv_ef_pct) < 3.0
    assert t["rv_edv_ml"] == pytest.approx(p.rv_edv_ml, rel=0.03)
    assert abs(t["rv_ef_pct"] - p.rv_ef_pct) < 3.0
    assert t["lv_max_wall_mm"] == pytest.approx(p.lv_wall_mm, abs=0.2)
    assert 60 < t["lv_mass_g"] < 400


def test_severity_orders_the_quantities():
    m = {s: Phantom(sample_params(3, {"lv_dilation": s, "lv_dysfunction": s})).truth() for s in
         ("none", "mild", "moderate", "severe")}
    edv = [m[s]["lv_edv_ml"] for s in m]
    ef = [m[s]["lv_ef_pct"] for s in m]
    assert edv == sorted(edv) and ef == sorted(ef, reverse=True)


def test_render_study_views_and_shapes():
    p = sample_params(2, {"lge": "moderate"}, **SMALL)
    st = render_study(p)
    assert set(st.views) == {"cine:SAX", "cine:2CH", "cine:3CH", "cine:4CH", "cine:LVOT", "lge:SAX", "lge:2CH",
                             "lge:3CH", "lge:4CH"}
    sax = st.views["cine:SAX"]
    assert sax.n_phases == 20 and sax.n_slices >= 6 and sax.shape == (160, 160)
    assert np.all(np.diff(sax.slice_positions) > 0)
    assert np.all(np.diff(sax.trigger_times) > 0) and sax.trigger_times[-1] < p.acq.rr_ms
    lge = st.views["lge:SAX"]
    assert lge.n_phases == 1 and 10 <= lge.n_slices <= 15
    px = sax.pixels([0], [0, 5])
    assert px.dtype == np.float32 and px.shape == (1, 2, 160, 160)
    assert np.all(px == np.rint(px)) and px.min() >= 0 and px.max() <= 4095
    for v in ("2CH", "3CH", "4CH", "LVOT"):
        assert st.views[f"cine:{v}"].n_slices == 1


def test_views_see_one_heart():
    """The 4CH plane crosses the SAX stack: their pixels along the intersection line agree at ED."""
    p = sample_params(4, **SMALL)
    r = render(p, views=("cine:SAX", "cine:4CH"), noise=False)
    sax, ch4 = r.views["cine:SAX"], r.views["cine:4CH"]
    si = len(sax.planes) // 2
    a, b = sax.planes[si], ch4.planes[0]
    d = np.cross(a.normal, b.normal)
    d /= np.linalg.norm(d)
    # a point on both planes: solve the two plane equations plus d . x = 0
    A = np.stack([a.normal, b.normal, d])
    x0 = np.linalg.solve(A, np.array([a.position, b.position, 0.0]))
    ts = np.linspace(-60, 60, 25)
    pts = x0 + ts[:, None] * d

    def sample(pl, img):
        rel = pts - pl.origin
        j = np.rint(rel @ pl.row / pl.spacing).astype(int)
        i = np.rint(rel @ pl.col / pl.spacing).astype(int)
        return img[i, j]

    va = sample(a, sax.pixels[si, 0])
    vb = sample(b, ch4.pixels[0, 0])
    assert np.corrcoef(va, vb)[0, 1] > 0.8


def test_same_seed_same_pixels_other_seed_differs():
    p = sample_params(9, {"lge": "mild"}, **SMALL)
    views = ("cine:4CH", "lge:SAX")
    a, b = render(p, views=views), render(sample_params(9, {"lge": "mild"}, **SMALL), views=views)
    for k in views:
        assert np.array_equal(a.views[k].pixels, b.views[k].pixels)
    c = render(sample_params(10, {"lge": "mild"}, **SMALL), views=views)
    assert not np.array_equal(a.views["cine:4CH"].pixels, c.views["cine:4CH"].pixels)


@pytest.mark.parametrize("seed,findings", [(1, {}), (3, {"lv_dysfunction": "severe"}),
                                           (6, {"lv_dilation": "severe", "lv_dysfunction": "moderate"})])
def test_ef_measured_from_pixels_matches_truth(seed, findings):
    r = render(sample_params(seed, findings, **SMALL), views=("cine:SAX",))
    edv, esv, ef = measure_lv(r)
    assert abs(ef - r.truth["lv_ef_pct"]) < 5.0, (edv, esv, ef, r.truth)
    assert edv == pytest.approx(r.truth["lv_edv_ml"], rel=0.15)


def test_moderate_dilation_measures_larger():
    normal = render(sample_params(21, {}, **SMALL), views=("cine:SAX",))
    dilated = render(sample_params(21, {"lv_dilation": "moderate"}, **SMALL), views=("cine:SAX",))
    assert measure_lv(dilated)[0] > measure_lv(normal)[0] + 40


def test_lge_scar_is_bright_and_myocardium_nulled():
    views = ("lge:SAX",)
    scar = render(sample_params(31, {"lge": "severe"}, **SMALL), views=views, noise=False)
    clean = render(sample_params(31, {}, **SMALL), views=views, noise=False)

    def myo_max(r):
        vals = []
        f = float(volume_curve(r.views["lge:SAX"].trigger_times, r.params.acq.rr_ms)[0])
        for si, pl in enumerate(r.views["lge:SAX"].planes):
            q = r.phantom.to_heart(pl.points())
            fl = r.phantom.fields(q, f, pl.spacing)
            m = (fl["lv_epi"] - fl["lv_cav"]) > 0.99
            if m.any():
                vals.append(r.views["lge:SAX"].pixels[si, 0].ravel()[m])
        return np.percentile(np.concatenate(vals), 99)

    blood = np.median(clean.views["lge:SAX"].pixels)
    assert myo_max(clean) < 0.5 * myo_max(scar)
    assert myo_max(scar) > blood


def test_reports_vary_negate_and_quote_numbers():
    reports = []
    for seed in range(40):
        p = sample_params(seed, prevalence=0.3)
        reports.append((p, make_report(p, Phantom(p).truth() if seed < 8 else _fake_truth(p))))
    texts = [t for _, t in reports]
    assert len(set(texts)) == len(texts)
    normal_lge = [t for p, t in reports if p.findings["lge"] == "none" and p.report_style != "telegraphic"]
    assert any(re.search(r"no (late gadolinium enhancement|LGE)", t, re.I) for t in normal_lge)
    assert all(re.search(r"\bno\b|not|normal|preserved", t, re.I) for t in normal_lge)
    assert any(re.search(r"(LVEF|ejection fraction|EF) (of )?\d+ ?%", t) for t in texts)
    sev = [t for p, t in reports if any(p.findings[f] == "severe" for f in FINDINGS)]
    assert any(re.search(r"severe|marked|significant", t, re.I) for t in sev)
    # and some state a finding plainly, with neither a grade nor a number (as real reports often do)
    many = [make_report(q, _fake_truth(q), "terse") for q in (sample_params(s, {"lv_dilation": "severe"}) for s in range(40))]
    assert any(re.search(r"(The left ventricle is dilated|Dilated left ventricle|LV cavity is enlarged)\.", t) for t in many)


def test_heldout_style_uses_unseen_wording():
    p = sample_params(5, {"lv_dilation": "moderate", "lge": "moderate"})
    t = Phantom(p).truth()
    train_words = set()
    for s in TRAIN_STYLES:
        for seed in range(5):
            q = sample_params(seed, {"lv_dilation": "moderate", "lge": "moderate"})
            train_words |= set(re.findall(r"[A-Za-z]+", make_report(q, t, s).lower()))
    held = make_report(p, t, HELDOUT_STYLES[0])
    new = set(re.findall(r"[A-Za-z]+", held.lower())) - train_words
    assert len(new) >= 4, new
    with pytest.raises(ValueError, match="report style"):
        make_report(p, t, "shakespeare")


def _fake_truth(p) -> dict[str, float]:
    """Targets as measurements (skips the phantom to keep the wording test fast)."""
    return {"lv_edv_ml": p.lv_edv_ml, "lv_ef_pct": p.lv_ef_pct, "rv_edv_ml": p.rv_edv_ml, "rv_ef_pct": p.rv_ef_pct,
            "lv_max_wall_mm": p.lv_wall_mm, "aortic_root_mm": p.aortic_root_mm, "effusion_mm": p.effusion_mm}


def test_unknown_finding_or_severity_is_refused():
    with pytest.raises(ValueError, match="unknown finding"):
        sample_params(1, {"lv_bigness": "mild"})
    with pytest.raises(ValueError, match="severity"):
        sample_params(1, {"lge": "huge"})


def test_lazy_phantom_frames_and_the_fast_recipe_path():
    """``cmrdx.synth.arrays``: a frame's pixels do not depend on which other frames were rendered, and
    ``phantom_u8`` (only the sampled montage frames rendered) gives the grey levels of the recipe applied to
    the lazy study; recipes it cannot reproduce exactly are refused."""
    from cmrdx.recipe import IMAGENET_MEAN, IMAGENET_STD, apply_recipe, get_recipe, recipe_view_keys
    from cmrdx.synth.arrays import phantom_report, phantom_study, phantom_u8

    p = sample_params(11, prevalence=0.5, matrix=64, n_phases=12)
    study, report = phantom_study(p)
    assert report == phantom_report(p) and len(study.views) == 9
    sax = study.views["cine:SAX"]
    both = sax.pixels(slices=[1, 2], phases=[0, 5])
    np.testing.assert_array_equal(both[1, 1], phantom_study(p)[0].views["cine:SAX"].pixels([2], [5])[0, 0])
    assert not np.array_equal(both[0, 0], both[1, 1])
    r = get_recipe("cmrclip-v1", frames=8, image_size=32, resize=48, crop=32, store_size=48, window_scope="frame")
    u8, n = phantom_u8(p, r)
    assert u8.dtype == np.uint8 and u8.shape == (8, 32, 32) and n == 8 and u8.std() > 10
    arr = apply_recipe(phantom_study(p, recipe_view_keys(r))[0], r).array
    grey = np.rint((arr[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255.0)
    np.testing.assert_array_equal(u8, grey.astype(np.uint8))
    for c in range(3):
        np.testing.assert_allclose(arr[:, c], (u8 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], atol=1e-6)
    with pytest.raises(ValueError, match="window_scope"):
        phantom_u8(p, get_recipe("cmrclip-v1", frames=8, image_size=32, resize=48, crop=32, store_size=48))
    with pytest.raises(ValueError, match="whole grey levels"):
        phantom_u8(p, get_recipe("cmrclip-v1", frames=8, image_size=32, window_scope="frame"))
