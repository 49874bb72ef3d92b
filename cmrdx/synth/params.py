"""Study parameters: findings with severities mapped to measurable targets, anatomy, acquisition.

Everything random about a phantom study is drawn here, from one ``numpy.random.Generator`` seeded by the
study seed, so that ``sample_params(seed)`` alone fixes a study (pixels, headers and text).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cmrdx.synth.geometry import aha_segment
from cmrdx.synth.variety import ISCHAEMIC, FamilyFilter, Variety, lge_contrast, sample_variety
from cmrdx.vocab import SEVERITY_LEVELS, Severity

FINDINGS = (
    "lv_dysfunction",
    "rv_dysfunction",
    "lv_dilation",
    "rv_dilation",
    "lv_hypertrophy",
    "lge",
    "aortic_dilation",
    "pericardial_effusion",
)
SEVERITIES: tuple[str, ...] = (Severity.NONE, *SEVERITY_LEVELS)
VENDORS = ("siemens", "ge", "philips")
LGE_PATTERNS = ("subendocardial", "transmural", "midwall", "diffuse_subendocardial")
TERRITORIES = ("LAD", "RCA", "LCx")

# AHA 17-segment model: coronary territory -> segments (1-based).
TERRITORY_SEGMENTS = {
    "LAD": (1, 2, 7, 8, 13, 14, 17),
    "RCA": (3, 4, 9, 10, 15),
    "LCx": (5, 6, 11, 12, 16),
}

# Severity -> (low, high) range of the quantity that defines the finding. Adult reference values
# (roughly SCMR normal ranges, not indexed to body size to keep the truth simple).
RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "lv_edv_ml": {"none": (110, 170), "mild": (195, 220), "moderate": (230, 265), "severe": (280, 340)},
    "lv_ef_pct": {"none": (57, 70), "mild": (45, 52), "moderate": (35, 42), "severe": (18, 30)},
    "lv_wall_mm": {"none": (7, 10.5), "mild": (13, 15), "moderate": (16, 20), "severe": (21, 27)},
    "rv_edv_ml": {"none": (120, 175), "mild": (205, 230), "moderate": (240, 275), "severe": (290, 350)},
    "rv_ef_pct": {"none": (52, 66), "mild": (41, 47), "moderate": (31, 39), "severe": (18, 28)},
    "aortic_root_mm": {"none": (27, 34), "mild": (38, 41), "moderate": (42, 46), "severe": (47, 54)},
    "effusion_mm": {"none": (0, 0), "mild": (4, 8), "moderate": (10, 16), "severe": (18, 24)},
}
FINDING_QUANTITY = {
    "lv_dilation": "lv_edv_ml",
    "lv_dysfunction": "lv_ef_pct",
    "lv_hypertrophy": "lv_wall_mm",
    "rv_dilation": "rv_edv_ml",
    "rv_dysfunction": "rv_ef_pct",
    "aortic_dilation": "aortic_root_mm",
    "pericardial_effusion": "effusion_mm",
}


@dataclass
class Acquisition:
    """Imaging parameters shared by the series of one study (lengths in mm, times in ms)."""

    vendor: str
    heart_rate_bpm: float
    rr_ms: float
    n_phases: int
    matrix: tuple[int, int]  # (rows, columns) of cine images
    pixel_mm: float  # square pixels
    sax_thickness_mm: float
    sax_gap_mm: float
    lax_thickness_mm: float
    lge_matrix: tuple[int, int]
    lge_pixel_mm: float
    lge_thickness_mm: float
    lge_n_slices: int
    inversion_time_ms: float
    lge_trigger_ms: float
    snr_cine: float
    snr_lge: float
    gain: float  # stored value of blood signal 1.0 in cine
    plane_jitter_deg: float


@dataclass
class Anatomy:
    """Heart placement and shape (patient LPS coordinates, mm)."""

    long_axis: tuple[float, float, float]  # unit vector, apex -> base
    septal_dir: tuple[float, float, float]  # unit vector in the SAX plane, LV centre -> RV
    apex_mm: tuple[float, float, float]  # LV endocardial apex
    lv_sphericity: float  # ED endocardial long semi-axis / short radius
    rv_shape: tuple[float, float, float]  # RV ellipsoid (septal, anterior, long) relative scales
    la_radius_mm: float
    ra_radius_mm: float
    body_axes_mm: tuple[float, float]  # body ellipse semi-axes (x, y)
    contrast_jitter: tuple[float, ...]  # per-tissue multiplicative jitter


@dataclass
class StudyParams:
    """Everything that defines one phantom study.

    ``findings`` maps each of FINDINGS to a severity in SEVERITIES; the targets (``lv_edv_ml`` ...) are the
    quantities those severities were mapped to. The rendered phantom is built to hit the targets and
    ``truth.json`` records what the phantom actually measures.
    """

    seed: int
    findings: dict[str, str]
    lv_edv_ml: float
    lv_ef_pct: float
    lv_wall_mm: float
    hypertrophy_pattern: str  # "none" | "concentric" | "septal"
    rv_edv_ml: float
    rv_ef_pct: float
    aortic_root_mm: float
    effusion_mm: float
    lge_pattern: str  # "none" or one of LGE_PATTERNS
    lge_territory: str | None
    lge_segments: list[int]
    wall_motion: dict[int, str]  # AHA segment -> "hypokinetic" | "akinetic" (absent: normal)
    anatomy: Anatomy
    acq: Acquisition
    report_style: str = "narrative"
    extra: dict[str, Any] = field(default_factory=dict)
    variety: Variety | None = None  # the randomised appearance (``sample_params(variety=True)``); None: classic

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["wall_motion"] = {str(k): v for k, v in self.wall_motion.items()}
        if self.variety is None:
            d.pop("variety")  # classic studies keep the truth.json they always had
        return d

    @property
    def families(self) -> list[str]:
        """The appearance families of a randomised study (``"scar:midwall"``, ``"lge:psir"``, ...); [] if classic."""
        return self.variety.families() if self.variety is not None else []

    @property
    def present(self) -> list[str]:
        return [f for f in FINDINGS if self.findings.get(f, "none") != "none"]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _jitter_dir(rng: np.random.Generator, v: np.ndarray, deg: float) -> np.ndarray:
    return _unit(v + rng.normal(0, np.tan(np.radians(deg)), 3))


def parse_findings(items: Mapping[str, str] | None) -> dict[str, str]:
    """Validate a {finding: severity} mapping; unknown names raise ValueError naming the valid ones."""
    out: dict[str, str] = {}
    for k, v in (items or {}).items():
        if k not in FINDINGS:
            raise ValueError(f"unknown finding {k!r}; use one of {', '.join(FINDINGS)}")
        if v not in SEVERITIES:
            raise ValueError(f"unknown severity {v!r} for {k}; use one of {', '.join(SEVERITIES)}")
        out[k] = v
    return out


def sample_findings(rng: np.random.Generator, prevalence: Mapping[str, float] | float = 0.25) -> dict[str, str]:
    """Draw each finding present with its prevalence, severity uniform over mild/moderate/severe."""
    out = {}
    for f in FINDINGS:
        p = prevalence if isinstance(prevalence, (int, float)) else prevalence.get(f, 0.25)
        out[f] = str(rng.choice(SEVERITIES[1:])) if rng.random() < p else "none"
    return out


def sample_params(
    seed: int,
    findings: Mapping[str, str] | None = None,
    *,
    vendor: str | None = None,
    prevalence: Mapping[str, float] | float = 0.0,
    report_style: str | None = None,
    n_phases: int | None = None,
    matrix: int | None = None,
    variety: bool = False,
    only_families: Iterable[str] | str | None = None,
    exclude_families: Iterable[str] | str | None = None,
) -> StudyParams:
    """Draw a full study description from ``seed``.

    Args:
        seed: non-negative int; the only source of randomness.
        findings: fixed severities (others are "none" unless ``prevalence`` > 0 draws them).
        vendor: one of VENDORS, or None to draw one.
        prevalence: probability that each unspecified finding is present (0 = a normal heart).
        report_style: a style of ``cmrdx.synth.report.STYLES``; None draws a training style.
        n_phases: cine phases (20-30 drawn when None); tests use fewer for speed.
        matrix: force a square cine matrix of this size (drawn 160-256 when None).
        variety: randomise every appearance axis (``cmrdx.synth.variety``): shapes, wall and scar patterns, LGE
            and cine contrast, noise, shading, field of view, matrix, slices, heart rate, misregistration, views.
            False (the default) draws the classic study, unchanged.
        only_families, exclude_families: family filters of the randomised generator (``"scar:midwall"``,
            ``"lge:psir"``, ...; see ``cmrdx.synth.variety.FamilyFilter``); they imply ``variety``.
    """
    from cmrdx.synth.report import TRAIN_STYLES  # local: report imports this module

    rng = np.random.default_rng([int(seed), 0x5EED])
    fixed = parse_findings(findings)
    drawn = sample_findings(rng, prevalence)
    sev = {f: fixed.get(f, drawn[f]) for f in FINDINGS}

    def draw(q: str, s: str) -> float:
        lo, hi = RANGES[q][s]
        return float(rng.uniform(lo, hi))

    lv_edv = draw("lv_edv_ml", sev["lv_dilation"])
    lv_ef = draw("lv_ef_pct", sev["lv_dysfunction"])
    wall = draw("lv_wall_mm", sev["lv_hypertrophy"])
    hyp = "none" if sev["lv_hypertrophy"] == "none" else str(rng.choice(["concentric", "septal"]))
    rv_edv = draw("rv_edv_ml", sev["rv_dilation"])
    rv_ef = draw("rv_ef_pct", sev["rv_dysfunction"])
    ao = draw("aortic_root_mm", sev["aortic_dilation"])
    eff = draw("effusion_mm", sev["pericardial_effusion"])

    lge_pattern, territory, segments = "none", None, []
    wall_motion: dict[int, str] = {}
    if sev["lge"] != "none":
        lge_pattern = str(rng.choice(LGE_PATTERNS, p=[0.35, 0.3, 0.2, 0.15]))
        n_seg = {"mild": 2, "moderate": 4, "severe": 6}[sev["lge"]]
        if lge_pattern in ("subendocardial", "transmural"):
            territory = str(rng.choice(TERRITORIES))
            pool = list(TERRITORY_SEGMENTS[territory])
            # Infarcts grow from the mid/apical segments of a territory outwards.
            start = int(rng.integers(len(pool)))
            segments = sorted(pool[(start + i) % len(pool)] for i in range(min(n_seg, len(pool))))
            kind = "akinetic" if lge_pattern == "transmural" else "hypokinetic"
            wall_motion = {s: kind for s in segments}
        elif lge_pattern == "midwall":
            pool = [3, 2, 9, 8, 4, 10, 5, 11]  # septal first, then inferior/inferolateral
            segments = sorted(pool[: n_seg + 1])
        else:
            segments = list(range(1, 17))

    # Heart orientation: apex points left, anterior and inferior; long axis oblique by 30-60 degrees.
    u = _jitter_dir(rng, np.array([-0.62, 0.42, 0.66]), 10)
    s = np.array([-0.80, -0.55, -0.1])
    s = _jitter_dir(rng, s - s.dot(u) * u, 8)
    s = _unit(s - s.dot(u) * u)
    sph = float(rng.uniform(2.4, 2.9) - (0.4 if sev["lv_dilation"] in ("moderate", "severe") else 0.0))
    apex = np.array([50.0, -35.0, -50.0]) + rng.normal(0, 8, 3)

    anatomy = Anatomy(
        long_axis=tuple(float(x) for x in u),  # type: ignore[arg-type]
        septal_dir=tuple(float(x) for x in s),  # type: ignore[arg-type]
        apex_mm=tuple(float(x) for x in apex),  # type: ignore[arg-type]
        lv_sphericity=sph,
        rv_shape=tuple(float(x) for x in rng.uniform([0.95, 0.9, 0.85], [1.1, 1.1, 1.0])),  # type: ignore[arg-type]
        la_radius_mm=float(rng.uniform(19, 24)),
        ra_radius_mm=float(rng.uniform(19, 24)),
        body_axes_mm=(float(rng.uniform(150, 190)), float(rng.uniform(105, 130))),
        contrast_jitter=tuple(float(x) for x in rng.uniform(0.9, 1.1, 12)),
    )

    hr = float(rng.uniform(52, 95))
    n_ph = int(n_phases) if n_phases else int(rng.choice([20, 25, 30]))
    m = int(matrix) if matrix else int(rng.choice([160, 176, 192, 208, 224, 256]))
    cols = m
    rows = m if matrix or rng.random() < 0.6 else int(round(m * rng.choice([0.75, 0.8125, 0.875]) / 2) * 2)
    fov = float(rng.uniform(300, 380))
    lge_m = int(rng.choice([160, 192, 208, 224, 256])) if not matrix else m
    acq = Acquisition(
        vendor=vendor if vendor else str(rng.choice(VENDORS)),
        heart_rate_bpm=round(hr, 1),
        rr_ms=round(60000.0 / hr, 1),
        n_phases=n_ph,
        matrix=(rows, cols),
        pixel_mm=round(fov / cols, 4),
        sax_thickness_mm=float(rng.choice([6.0, 7.0, 8.0])),
        sax_gap_mm=float(rng.choice([0.0, 1.0, 2.0, 2.0])),
        lax_thickness_mm=float(rng.choice([6.0, 7.0, 8.0])),
        lge_matrix=(lge_m, lge_m),
        lge_pixel_mm=round(float(rng.uniform(300, 380)) / lge_m, 4),
        lge_thickness_mm=float(rng.choice([6.0, 8.0, 10.0])),
        lge_n_slices=int(rng.integers(10, 16)),
        inversion_time_ms=float(rng.choice(np.arange(220, 341, 10))),
        lge_trigger_ms=0.0,  # filled below from the RR interval (mid-diastole)
        snr_cine=float(rng.uniform(18, 40)),
        snr_lge=float(rng.uniform(12, 25)),
        gain=float(rng.uniform(700, 1800)),
        plane_jitter_deg=float(rng.uniform(0, 4)),
    )
    acq.lge_trigger_ms = round(acq.rr_ms * float(rng.uniform(0.6, 0.75)), 1)
    style = report_style or str(rng.choice(TRAIN_STYLES))
    out = StudyParams(
        seed=int(seed),
        findings=sev,
        lv_edv_ml=lv_edv,
        lv_ef_pct=lv_ef,
        lv_wall_mm=wall,
        hypertrophy_pattern=hyp,
        rv_edv_ml=rv_edv,
        rv_ef_pct=rv_ef,
        aortic_root_mm=ao,
        effusion_mm=eff,
        lge_pattern=lge_pattern,
        lge_territory=territory,
        lge_segments=segments,
        wall_motion=wall_motion,
        anatomy=anatomy,
        acq=acq,
        report_style=style,
    )
    if variety or only_families or exclude_families:
        _randomise(out, FamilyFilter.make(only_families, exclude_families), report_style, n_phases, matrix)
    return out


def uid_root(p: StudyParams) -> int | str:
    """What a study's UIDs derive from: its seed (classic), or for a randomised study the seed, the generator
    version and a digest of all its parameters (the same seed drawn with other family filters is another
    study, with other UIDs, and never shares a cached embedding with a classic study)."""
    if p.variety is None:
        return p.seed
    digest = hashlib.sha256(json.dumps(p.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{p.seed}-v{p.variety.version}-{digest}"


# Per-severity number of AHA segments a scar pattern covers.
_N_SEG = {"mild": 2, "moderate": 4, "severe": 6}


def _scar_segments(v: Variety, sev: str, rng: np.random.Generator) -> tuple[str | None, list[int], list[dict[str, float]]]:
    """(territory, AHA segments, blobs) of the randomised scar pattern ``v.scar`` at severity ``sev``. Blobs
    (rv_insertion, patchy) are (psi_deg, h, width_deg, height, lo, hi) in the phantom's table coordinates."""
    d = v.scar_detail
    n = int(np.clip(_N_SEG[sev] + int(d["extent_shift"]), 1, 7))
    pat = v.scar
    if pat in ISCHAEMIC:
        terr = str(d["territory"])
        pool = list(TERRITORY_SEGMENTS[terr])
        start = int(rng.integers(len(pool)))
        return terr, sorted(pool[(start + i) % len(pool)] for i in range(min(n, len(pool)))), []
    if pat == "midwall":
        pool = [3, 2, 9, 8, 4, 10, 5, 11] if d["midwall_site"] == "septal" else [5, 11, 4, 10, 6, 12, 16, 15]
        return None, sorted(pool[: n + 1]), []
    if pat == "epicardial":
        pool = [11, 5, 12, 6, 16, 10, 4]
        return None, sorted(pool[:n]), []
    if pat == "diffuse_subendocardial":
        return None, list(range(1, 17)), []
    blobs: list[dict[str, float]] = []
    if pat == "rv_insertion":
        ins = float(rng.uniform(55, 75))
        sites = [-ins] if sev == "mild" else [-ins, ins]
        for psi in sites:
            blobs.append({"psi": psi + float(rng.normal(0, 4)), "h": float(rng.uniform(0.55, 0.75)),
                          "width": float(rng.uniform(10, 18)), "height": float(rng.uniform(0.2, 0.35) * (1.4 if sev == "severe" else 1.0)),
                          "lo": 0.15, "hi": 0.9})
    else:  # patchy: multifocal blobs anywhere, mid-wall or epicardial or transmural
        for _ in range(int(rng.integers(2, 4)) + n // 2):
            kind = int(rng.integers(3))
            lo, hi = [(0.3, 0.75), (0.55, 1.3), (-1.0, 1.3)][kind]
            blobs.append({"psi": float(rng.uniform(-180, 180)), "h": float(rng.uniform(0.2, 0.9)),
                          "width": float(rng.uniform(10, 25)), "height": float(rng.uniform(0.08, 0.2)), "lo": lo, "hi": hi})
    segs = sorted({int(aha_segment(np.array([b["h"]]), np.array([((b["psi"] + 180) % 360) - 180]))[0]) for b in blobs})
    return None, segs, blobs


def _randomise(p: StudyParams, flt: FamilyFilter, report_style: str | None, n_phases: int | None,
               matrix: int | None) -> None:
    """Turn the classic draw ``p`` into a randomised one (in place): its findings and targets stay; the appearance
    axes are drawn from streams of their own (``cmrdx.synth.variety``)."""
    from cmrdx.synth.report import VARIETY_TRAIN_STYLES, report_options  # local: report imports this module

    v = sample_variety(p.seed, p.findings, flt)
    p.variety = v
    rng = np.random.default_rng([p.seed, 0xD0A1, 0x5CA2])
    sev = p.findings
    p.hypertrophy_pattern = v.hypertrophy or "none"
    p.lge_pattern, p.lge_territory, p.lge_segments, p.wall_motion = "none", None, [], {}
    if v.scar:
        p.lge_pattern = v.scar
        p.lge_territory, p.lge_segments, blobs = _scar_segments(v, sev["lge"], rng)
        v.scar_detail["blobs"] = blobs
        if v.scar in ISCHAEMIC:
            kind = "akinetic" if v.scar == "transmural" else "hypokinetic"
            p.wall_motion = {s: kind for s in p.lge_segments}
    ra = np.random.default_rng([p.seed, 0xD0A1, 0xACC])
    p.anatomy.contrast_jitter = tuple(float(x) for x in ra.uniform(1 - v.contrast_spread, 1 + v.contrast_spread, 12))
    p.anatomy.lv_sphericity = float(np.clip(p.anatomy.lv_sphericity * ra.uniform(0.88, 1.12), 1.6, 3.2))
    p.anatomy.rv_shape = tuple(float(x) for x in ra.uniform([0.85, 0.8, 0.8], [1.2, 1.2, 1.05]))  # type: ignore[assignment]
    # acquisition: wider ranges than the classic generator's
    a = p.acq
    hr = float(ra.uniform(45, 110))
    a.heart_rate_bpm = round(hr, 1)
    a.rr_ms = round(60000.0 / hr, 1)
    a.n_phases = int(n_phases) if n_phases else int(ra.choice([16, 20, 25, 30]))
    m = int(matrix) if matrix else int(ra.choice([128, 144, 160, 176, 192, 208, 224, 256]))
    rows = m if matrix or ra.random() < 0.5 else int(round(m * ra.choice([0.75, 0.8125, 0.875]) / 2) * 2)
    fov = float(ra.uniform(280, 420))
    a.matrix = (rows, m)
    a.pixel_mm = round(fov / m, 4)
    a.sax_thickness_mm = float(ra.choice([5.0, 6.0, 7.0, 8.0, 10.0]))
    a.sax_gap_mm = float(ra.choice([0.0, 0.0, 1.0, 2.0, 3.0, 4.0]))
    a.lax_thickness_mm = float(ra.choice([5.0, 6.0, 7.0, 8.0, 10.0]))
    lm = int(matrix) if matrix else int(ra.choice([128, 160, 192, 208, 224, 256]))
    a.lge_matrix = (lm, lm)
    a.lge_pixel_mm = round(float(ra.uniform(280, 420)) / lm, 4)
    a.lge_thickness_mm = float(ra.choice([5.0, 6.0, 8.0, 10.0]))
    a.lge_n_slices = int(ra.integers(8, 17))
    a.snr_cine = float(ra.uniform(10, 50)) * (0.75 if v.cine == "gre" else 1.0)
    a.snr_lge = float(ra.uniform(8, 35))
    a.gain = float(ra.uniform(400, 1800))
    a.plane_jitter_deg = float(ra.uniform(0, 7))
    a.lge_trigger_ms = round(a.rr_ms * float(ra.uniform(0.55, 0.8)), 1)
    a.inversion_time_ms = lge_contrast(v, a.rr_ms)[1]
    v.report = report_options(p.seed)
    p.report_style = report_style or str(np.random.default_rng([p.seed, 0xD0A1, 0x7E47]).choice(VARIETY_TRAIN_STYLES))
