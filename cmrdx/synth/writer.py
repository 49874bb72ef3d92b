"""Whole phantom studies on disk: DICOM series (with distractors), truth.json and report.txt."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmrdx.fileio import atomic_write
from cmrdx.synth import dicomio
from cmrdx.synth.geometry import make_plane
from cmrdx.synth.params import FINDINGS, StudyParams, uid_root
from cmrdx.synth.render import Rendered, Renderer, cine_times, render
from cmrdx.synth.report import make_report
from cmrdx.synth.vendors import (
    STYLES,
    SeriesStyle,
    cine_description,
    cine_style,
    lge_description,
    lge_style,
    styled_description,
)
from cmrdx.vocab import CINE_VIEWS, LGE_VIEWS, Role, View, view_key

log = logging.getLogger(__name__)

# Native (pre-contrast) T1 in seconds, the value a T1 map shows per tissue; post-contrast T1 for TI scouts.
T1_NATIVE = dict(air=0.0, fat=0.28, muscle=1.1, lung=1.3, liver=0.6, bone=0.5, blood=1.6, myo=1.0, scar=1.35,
                 fluid=2.6, peri=0.9, medfat=0.3)
T1_POST = dict(air=1.0, fat=0.26, muscle=0.55, lung=0.6, liver=0.4, bone=0.3, blood=0.3, myo=0.45, scar=0.26,
               fluid=1.2, peri=0.45, medfat=0.27)
PD = dict(air=0.0, fat=0.9, muscle=0.7, lung=0.1, liver=0.7, bone=0.5, blood=1.0, myo=0.75, scar=0.8,
          fluid=1.0, peri=0.5, medfat=0.85)


@dataclass
class WrittenStudy:
    """What ``write_study`` produced."""

    path: Path
    study_uid: str
    n_files: int
    n_bytes: int
    series: list[tuple[int, str, str, str | None]]  # (number, description, role, view)


def _distractors(r: Rendered, ren: Renderer, vendor: str) -> list[dicomio.SeriesData]:
    p, ph = r.params, r.phantom
    st = STYLES[vendor]
    out = []
    # Localizer: three orthogonal planes through the heart in one series.
    centre = ph.to_patient(np.array([[0, 0, 0.5 * ph.Le]]))[0]
    ex, ey, ez = np.eye(3)
    planes = [make_plane(centre, rw, cl, (192, 192), 2.2, 8.0) for rw, cl in ((ex, ey), (ex, -ez), (ey, -ez))]
    px = np.concatenate([ren.render_planes("cine", [pl], np.array([0.0]), seed_key=100 + i) for i, pl in enumerate(planes)])
    out.append(dicomio.SeriesData("localizer", None, st.localizer.description, st.localizer, px, planes, np.zeros(1)))
    # T1 map: three SAX slices, pixel value = T1 in ms.
    sax = ren.view_planes("cine", "SAX")
    pick = [sax[1], sax[len(sax) // 2], sax[-2]]
    px = ren.render_planes("cine", pick, np.array([p.acq.lge_trigger_ms]), contrast=T1_NATIVE, gain=1000.0,
                           snr=40.0, shading=False, seed_key=110)
    out.append(dicomio.SeriesData("t1map", "SAX", st.t1map.description, st.t1map, px, pick,
                                  np.array([p.acq.lge_trigger_ms])))
    # Flow: a plane across the ascending aorta, phase image (2048 = zero velocity) over the cycle.
    root, v, _ = ph.aortic_geometry(0.0)
    vp = ph.R @ v
    c = ph.to_patient((root + v * 25.0)[None])[0]
    row = np.cross(vp, ez)
    row = row / np.linalg.norm(row)
    fplane = make_plane(c, row, np.cross(vp, row), (160, 160), 2.0, 6.0)
    times = cine_times(p)
    q = ph.to_heart(fplane.points())
    rng = np.random.default_rng([p.seed, 0xF10])
    from cmrdx.synth.phantom import end_systole_ms

    ts = end_systole_ms(p.acq.rr_ms)
    frames = []
    for t in times:
        ao = ph.fields(q, float(min(t / ts, 1.0)), fplane.spacing)["ao"]
        vel = 110.0 * np.sin(np.pi * t / ts) if t < ts else 0.0  # cm/s, systolic forward flow
        img = 2048 + 2047 * (vel / 150.0) * ao + rng.normal(0, 40, ao.shape)
        frames.append(np.clip(np.rint(img), 0, 4095).reshape(fplane.shape))
    px = np.asarray(frames, np.float32)[None]
    out.append(dicomio.SeriesData("flow", None, st.flow.description, st.flow, px, [fplane], times))
    # TI scout: one mid-ventricular SAX slice imaged at increasing inversion times (Look-Locker-like).
    mid = [sax[len(sax) // 2]]
    tis = np.arange(100.0, 100.0 + 30 * 16, 30)
    imgs = []
    for i, ti in enumerate(tis):
        con = {k: PD[k] * abs(1 - 2 * np.exp(-ti / 1000.0 / T1_POST[k])) for k in PD}
        con["air"] = 0.0
        imgs.append(ren.render_planes("lge", mid, np.array([p.acq.lge_trigger_ms]), contrast=con, seed_key=120 + i,
                                      gain=p.acq.gain * 1.3)[0, 0])
    px = np.asarray(imgs, np.float32)[None]
    out.append(dicomio.SeriesData("tiscout", "SAX", st.tiscout.description, st.tiscout, px, mid,
                                  np.full(len(tis), p.acq.lge_trigger_ms), inversion_times=tis))
    return out


def build_series(r: Rendered, ren: Renderer, vendor: str, *, distractors: bool = True) -> list[dicomio.SeriesData]:
    """All series of a study in acquisition order, numbered from 1.

    A randomised study (``params.variety``) names its cine and LGE series by their contrast (spoiled gradient
    echo, PSIR, dark blood), lacks the views it is missing, and holds its extra series: an earlier, aborted
    repeat of a long-axis cine (fewer phases), an earlier LGE 4CH at a shorter inversion time, the PSIR companion
    of a magnitude LGE short-axis stack. A reader choosing one series per view sets each extra aside."""
    st = STYLES[vendor]
    p = r.params
    v = p.variety
    series: list[dicomio.SeriesData] = []
    extra = _distractors(r, ren, vendor) if distractors else []
    if extra:
        series.append(extra[0])  # localizer first
    extras = set(v.extra_series) if v is not None else set()
    cine_ss = cine_style(st, v.cine) if v is not None else st.cine

    def cine_desc(view: str, k: int | None = None) -> str:
        return cine_description(st, view, k) if v is None else styled_description(st, cine_ss, "cine", view, k=k)

    sax = r.views[view_key(Role.CINE, View.SAX)]
    if st.sax_one_series_per_slice:
        # b1 is the base: the slice with the largest position along the (apex -> base) normal.
        for k, si in enumerate(range(len(sax.planes) - 1, -1, -1), start=1):
            series.append(dicomio.SeriesData("cine", "SAX", cine_desc("SAX", k), cine_ss,
                                             sax.pixels[si:si + 1], [sax.planes[si]], sax.trigger_times))
    else:
        series.append(dicomio.SeriesData("cine", "SAX", cine_desc("SAX"), cine_ss, sax.pixels, sax.planes,
                                         sax.trigger_times))
    lax = [vw for vw in CINE_VIEWS if vw != View.SAX and view_key(Role.CINE, vw) in r.views]
    for vw in lax:
        rv = r.views[view_key(Role.CINE, vw)]
        if "cine_repeat" in extras and vw == lax[-1]:
            n = max(6, p.acq.n_phases // 2)
            times = np.round(np.arange(n) * p.acq.rr_ms / n, 1)
            px = ren.render_planes("cine", rv.planes, times, seed_key=200)
            series.append(dicomio.SeriesData("cine", vw, cine_desc(vw), cine_ss, px, rv.planes, times))
        series.append(dicomio.SeriesData("cine", vw, cine_desc(vw), cine_ss, rv.pixels, rv.planes, rv.trigger_times))
    series += extra[1:]
    ti = p.acq.inversion_time_ms
    mode = v.lge if v is not None else "magnitude"
    lge_ss = lge_style(st, mode)
    psir = mode == "psir"
    rescale = (2.0, -4096.0) if psir and vendor == "siemens" else (1.0, 0.0)

    def lge_desc(view: str, t: float, ss: SeriesStyle = lge_ss) -> str:
        return lge_description(st, view, t) if v is None else styled_description(st, ss, "lge", view, ti=t)

    for vw in LGE_VIEWS:
        key = view_key(Role.LGE, vw)
        if key not in r.views:
            continue
        rv = r.views[key]
        if "lge_repeat" in extras and vw == View.CH4:
            px = ren.render_planes("lge", rv.planes, rv.trigger_times, seed_key=210, contrast=ren.lge_variant(ti_scale=0.8),
                                   signed=psir)
            series.append(dicomio.SeriesData("lge", vw, lge_desc(vw, ti * 0.8), lge_ss, px, rv.planes, rv.trigger_times,
                                              inversion_times=np.array([ti * 0.8]), signed=psir, rescale=rescale,
                                              blood_nulled=mode == "dark_blood"))
        series.append(dicomio.SeriesData("lge", vw, lge_desc(vw, ti), lge_ss, rv.pixels, rv.planes, rv.trigger_times,
                                          inversion_times=np.array([ti]), signed=psir, rescale=rescale,
                                          blood_nulled=mode == "dark_blood"))
        if "psir_companion" in extras and vw == View.SAX and not psir:
            comp = lge_style(st, "psir_companion")
            px = ren.render_planes("lge", rv.planes, rv.trigger_times, seed_key=220, contrast=ren.lge_variant("psir"),
                                   signed=True)
            series.append(dicomio.SeriesData("lge", vw, lge_desc(vw, ti, comp), comp, px, rv.planes, rv.trigger_times,
                                              inversion_times=np.array([ti]), signed=True,
                                              rescale=(2.0, -4096.0) if vendor == "siemens" else (1.0, 0.0)))
    for i, s in enumerate(series, start=1):
        s.number = i
    return series


def truth_dict(r: Rendered, study_uid: str) -> dict:
    p = r.params
    return {
        "schema": "cmrdx.synth.truth/1",
        "seed": p.seed,
        "study_instance_uid": study_uid,
        "findings": {f: p.findings[f] for f in FINDINGS},
        "present": p.present,
        "measurements": r.truth,
        "targets": {
            "lv_edv_ml": round(p.lv_edv_ml, 1), "lv_ef_pct": round(p.lv_ef_pct, 1), "lv_wall_mm": round(p.lv_wall_mm, 1),
            "rv_edv_ml": round(p.rv_edv_ml, 1), "rv_ef_pct": round(p.rv_ef_pct, 1),
            "aortic_root_mm": round(p.aortic_root_mm, 1), "effusion_mm": round(p.effusion_mm, 1),
        },
        "lge": {"pattern": p.lge_pattern, "territory": p.lge_territory, "aha_segments": p.lge_segments},
        "wall_motion": {str(k): v for k, v in sorted(p.wall_motion.items())},
        "hypertrophy_pattern": p.hypertrophy_pattern,
        "report_style": p.report_style,
        "params": p.to_dict(),
    } | ({"generator": f"cmrdx.synth variety/{p.variety.version}", "families": p.families,
          "views": sorted(r.views)} if p.variety is not None else {})


def write_study(out: str | Path, params: StudyParams, *, enhanced: bool = False, compress: str | None = None,
                distractors: bool = True) -> WrittenStudy:
    """Render ``params`` and write ``out/DICOM/S###/...``, ``out/truth.json`` and ``out/report.txt``.

    Args:
        out: study folder (created).
        enhanced: write each series as one Enhanced MR Image multi-frame object instead of single frames.
        compress: None, "rle", "jpegls" or "j2k" (lossless transfer syntaxes).
        distractors: also write a localizer, T1 map, flow and TI scout series.
    """
    out = Path(out)
    p = params
    if compress is not None and compress not in dicomio.COMPRESSION:
        raise ValueError(f"unknown compression {compress!r}; use one of {', '.join(dicomio.COMPRESSION)}")
    r = render(p)
    ren = Renderer(p, r.phantom)
    info = dicomio.study_info(p.seed, p.acq.rr_ms, p.acq.heart_rate_bpm, p.acq.n_phases,
                              uid_root(p) if p.variety is not None else None)
    vendor = STYLES[p.acq.vendor]
    series = build_series(r, ren, p.acq.vendor, distractors=distractors)
    files: list[Path] = []
    for s in series:
        d = out / "DICOM" / f"S{s.number:03d}"
        if enhanced:
            files += dicomio.write_enhanced(d, s, info, vendor, compress=compress)
        else:
            files += dicomio.write_classic(d, s, info, vendor, compress=compress)
    log.info("%s: %d series, %d files (seed %d, %s%s%s)", out, len(series), len(files), p.seed, p.acq.vendor,
             ", enhanced" if enhanced else "", f", {compress}" if compress else "")
    truth = truth_dict(r, info.study_uid)
    atomic_write(out / "truth.json", json.dumps(truth, indent=2, default=float) + "\n")
    atomic_write(out / "report.txt", make_report(p, r.truth) + "\n")
    role = {"cine": "cine", "lge": "lge"}
    return WrittenStudy(
        path=out,
        study_uid=info.study_uid,
        n_files=len(files),
        n_bytes=sum(f.stat().st_size for f in files),
        series=[(s.number, s.description, role.get(s.kind, "other"), s.view if s.kind in role else None)
                for s in series],
    )
