"""Domain randomisation: the appearance axes of a phantom study, each drawn per study from its seed.

A study made with ``sample_params(seed, variety=True)`` carries a ``Variety``: one value per categorical axis
(its *families*, named ``"axis:value"``: ``scar:midwall``, ``lge:psir``, ``anatomy:trabeculated``, ``cine:gre``,
...) and the continuous choices that go with them (nulling error, blood-pool brightness, shape modes, noise, coil
shading, misregistration, ...). Every choice is recorded in the study's ``truth.json`` (``variety`` and
``families``), so studies can be filtered on any of them.

Family filters (``FamilyFilter``) constrain what is drawn, never whether a finding is present: excluding
``scar:midwall`` means a drawn scar is never mid-wall; ``only=["lge:psir"]`` makes every study's LGE a PSIR
image (axes not named in ``only`` stay free). That is what a leave-one-family-out benchmark needs: train on an
archive written with ``exclude=[F]``, test on one written with ``only=[F]``.

Each axis draws from its own random stream (keyed by the study seed and the axis), so constraining one axis
leaves every other axis's draw unchanged. numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# The version of the randomised generator; recorded in truth.json and mixed into the UIDs of its studies (so a
# variety study never shares a StudyInstanceUID, hence a cached embedding, with a classic study of the same seed).
VARIETY_VERSION = 1

# axis -> {value: default weight}. Conditional axes ("hypertrophy", "scar") apply only when their finding is
# present. The first value of each unconditional axis is what the classic generator draws.
AXES: dict[str, dict[str, float]] = {
    "anatomy": {"ellipsoid": 0.3, "trabeculated": 0.35, "papillary": 0.35},
    "septum": {"straight": 0.5, "curved": 0.5},
    "hypertrophy": {"concentric": 0.4, "septal": 0.35, "apical": 0.25},
    "scar": {"subendocardial": 0.2, "transmural": 0.18, "midwall": 0.15, "epicardial": 0.13, "rv_insertion": 0.1,
             "patchy": 0.13, "diffuse_subendocardial": 0.11},
    "lge": {"magnitude": 0.45, "psir": 0.35, "dark_blood": 0.2},
    "cine": {"bssfp": 0.6, "gre": 0.4},
    "breathhold": {"aligned": 0.5, "misregistered": 0.5},
    "views": {"complete": 0.5, "missing": 0.3, "extra": 0.2},
}
CONDITIONAL = {"hypertrophy": "lv_hypertrophy", "scar": "lge"}  # axis -> the finding it describes
FAMILIES: tuple[str, ...] = tuple(f"{a}:{v}" for a, vals in AXES.items() for v in vals)
# What each axis bears on: the findings whose appearance it changes (None: every finding).
AXIS_FINDINGS: dict[str, tuple[str, ...] | None] = {
    "anatomy": None, "septum": None, "hypertrophy": ("lv_hypertrophy",), "scar": ("lge",), "lge": ("lge",),
    "cine": None, "breathhold": None, "views": None,
}

ISCHAEMIC = ("subendocardial", "transmural")
# Views that a "missing" study may lack (never the short-axis stacks nor the cine 4CH).
OPTIONAL_VIEWS = ("cine:LVOT", "cine:3CH", "cine:2CH", "lge:2CH", "lge:3CH", "lge:4CH")
# Extra series a study may hold beside its views, each set aside by a reader that chooses one series per view:
# an earlier aborted repeat of a long-axis cine (fewer phases), an earlier LGE 4CH at a shorter inversion time, and
# the phase-sensitive companion of a magnitude LGE short-axis stack.
EXTRA_KINDS = ("cine_repeat", "lge_repeat", "psir_companion")


def parse_families(names: Iterable[str] | str | None) -> list[str]:
    """Validate family names (``"axis:value"``; a comma-separated string is split); ValueError names the valid
    ones. ``"axis:*"`` stands for every value of the axis."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    out: list[str] = []
    for raw in names:
        n = raw.strip()
        if not n:
            continue
        axis, _, value = n.partition(":")
        if axis not in AXES:
            raise ValueError(f"unknown family {n!r}: axes are {', '.join(AXES)} (e.g. scar:midwall, lge:psir)")
        if value == "*":
            out += [f"{axis}:{v}" for v in AXES[axis] if f"{axis}:{v}" not in out]
            continue
        if value not in AXES[axis]:
            raise ValueError(f"unknown family {n!r}; {axis} is one of {', '.join(f'{axis}:{v}' for v in AXES[axis])}")
        if n not in out:
            out.append(n)
    return out


@dataclass(frozen=True)
class FamilyFilter:
    """Which families may be drawn: ``only`` restricts the axes it names to the values it names; ``exclude``
    removes values. An axis left with no value raises ValueError (``allowed``)."""

    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def make(cls, only: Iterable[str] | str | None = None, exclude: Iterable[str] | str | None = None) -> FamilyFilter:
        f = cls(tuple(parse_families(only)), tuple(parse_families(exclude)))
        for axis in AXES:
            f.allowed(axis)  # fail early, naming the axis
        return f

    def allowed(self, axis: str) -> dict[str, float]:
        vals = dict(AXES[axis])
        named = [n.split(":", 1)[1] for n in self.only if n.split(":", 1)[0] == axis]
        if named:
            vals = {v: w for v, w in vals.items() if v in named}
        for n in self.exclude:
            a, v = n.split(":", 1)
            if a == axis:
                vals.pop(v, None)
        if not vals:
            raise ValueError(f"the family filter leaves no value of {axis!r} (only={list(self.only)}, "
                             f"exclude={list(self.exclude)})")
        return vals

    def admits(self, families: Iterable[str]) -> bool:
        """Whether a study with these families could have been drawn under this filter."""
        fams = set(families)
        for axis in AXES:
            present = [f for f in fams if f.split(":", 1)[0] == axis]
            for f in present:
                if f.split(":", 1)[1] not in self.allowed(axis):
                    return False
        return True

    def to_dict(self) -> dict[str, list[str]]:
        return {"only": list(self.only), "exclude": list(self.exclude)}


def _stream(seed: int, axis: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), 0xD0A1, sum(ord(c) * 31**i for i, c in enumerate(axis)) % (2**31)])


def _choose(rng: np.random.Generator, weights: Mapping[str, float]) -> str:
    keys = list(weights)
    w = np.array([weights[k] for k in keys], float)
    return str(keys[int(rng.choice(len(keys), p=w / w.sum()))])


@dataclass
class Variety:
    """The randomised appearance of one study (see the module docstring). Lengths in mm, times in ms."""

    anatomy: str
    septum: str
    hypertrophy: str | None  # None when there is no LV hypertrophy
    scar: str | None  # None when there is no LGE
    lge: str
    cine: str
    breathhold: str
    views: str
    # shape
    shape_modes: dict[str, float] = field(default_factory=dict)  # ellipticity, its angle, apex conicity
    septal_curvature: float = 0.0  # > 0 flattens the septum into the LV, < 0 bows it into the RV (x LV radius)
    trabeculation: dict[str, float] = field(default_factory=dict)  # depth_mm, lobes, phase (empty: smooth)
    papillary: dict[str, float] = field(default_factory=dict)  # radius_frac, angle_deg (empty: none)
    wall_variation: float = 0.0  # amplitude of smooth regional wall-thickness variation
    # scar
    scar_detail: dict[str, Any] = field(default_factory=dict)
    # contrast
    lge_t1_s: dict[str, float] = field(default_factory=dict)  # post-contrast T1 of myocardium, blood, scar
    nulling_error: float = 0.0  # TI / TI_null - 1
    dark_blood_factor: float = 1.0
    cine_contrast: dict[str, float] = field(default_factory=dict)
    lax_inflow: float = 1.0  # GRE blood signal in long-axis planes relative to short-axis (in-plane saturation)
    contrast_spread: float = 0.1
    # acquisition
    shading_strength: float = 1.0
    sax_coverage_mm: tuple[float, float] = (0.0, 0.0)  # extra coverage above the base, below the apex
    misregistration_mm: float = 0.0  # sd of the per-breath-hold displacement
    missing_views: list[str] = field(default_factory=list)
    extra_series: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)  # phrasing options of the report (spelling, numbers)
    version: int = VARIETY_VERSION
    filter: dict[str, list[str]] = field(default_factory=dict)

    def families(self) -> list[str]:
        out = [f"anatomy:{self.anatomy}", f"septum:{self.septum}"]
        if self.hypertrophy:
            out.append(f"hypertrophy:{self.hypertrophy}")
        if self.scar:
            out.append(f"scar:{self.scar}")
        out += [f"lge:{self.lge}", f"cine:{self.cine}", f"breathhold:{self.breathhold}", f"views:{self.views}"]
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Variety:
        d = dict(d)
        d["sax_coverage_mm"] = tuple(d.get("sax_coverage_mm", (0.0, 0.0)))
        return cls(**d)


def sample_variety(seed: int, findings: Mapping[str, str], flt: FamilyFilter | None = None) -> Variety:
    """Draw every appearance axis of study ``seed`` (``findings``: finding -> severity, deciding whether the
    conditional axes apply), within the family filter ``flt``."""
    flt = flt or FamilyFilter()

    def cat(axis: str) -> tuple[str, np.random.Generator]:
        rng = _stream(seed, axis)
        return _choose(rng, flt.allowed(axis)), rng

    anatomy, r_an = cat("anatomy")
    septum, r_se = cat("septum")
    hyp, _ = cat("hypertrophy")
    scar, r_sc = cat("scar")
    lge, r_lg = cat("lge")
    cine, r_ci = cat("cine")
    bh, r_bh = cat("breathhold")
    views, r_vi = cat("views")
    v = Variety(anatomy=anatomy, septum=septum,
                hypertrophy=hyp if findings.get("lv_hypertrophy", "none") != "none" else None,
                scar=scar if findings.get("lge", "none") != "none" else None,
                lge=lge, cine=cine, breathhold=bh, views=views, filter=flt.to_dict())
    # shape: every study gets mild non-ellipsoidal modes; the families add their features
    v.shape_modes = {"ellipticity": round(float(r_an.uniform(0.0, 0.08)), 4),
                     "ellipticity_deg": round(float(r_an.uniform(0, 180)), 1),
                     "conicity": round(float(r_an.uniform(-0.1, 0.12)), 4)}
    v.wall_variation = round(float(r_an.uniform(0.03, 0.12)), 4)
    if anatomy == "trabeculated":
        v.trabeculation = {"depth_mm": round(float(r_an.uniform(2.0, 5.5)), 2), "lobes": float(r_an.integers(11, 23)),
                           "phase": round(float(r_an.uniform(0, 2 * np.pi)), 4),
                           "twist": round(float(r_an.uniform(-2.0, 2.0)), 3), "fill": round(float(r_an.uniform(0.3, 0.5)), 3),
                           "irregular": round(float(r_an.uniform(0.3, 0.7)), 3)}
    if anatomy in ("trabeculated", "papillary"):
        v.papillary = {"radius_frac": round(float(r_an.uniform(0.15, 0.24)), 4),
                       "angle_deg": round(float(r_an.uniform(115, 145)), 1),
                       "spread_deg": round(float(r_an.uniform(95, 125)), 1)}
    if septum == "curved":
        mag = float(r_se.uniform(0.1, 0.28))
        v.septal_curvature = round(mag if r_se.random() < 0.6 else -0.6 * mag, 4)
    # scar detail (drawn even for studies without scar, from their own stream, so the filter never shifts others)
    v.scar_detail = {"territory": str(r_sc.choice(["LAD", "RCA", "LCx"])),
                     "depth": round(float(r_sc.uniform(0.2, 0.6)), 3),
                     "intensity": round(float(r_sc.uniform(0.6, 1.0)), 3),
                     "midwall_site": str(r_sc.choice(["septal", "septal", "inferolateral"])),
                     "band_centre": round(float(r_sc.uniform(0.4, 0.6)), 3),
                     "band_width": round(float(r_sc.uniform(0.15, 0.32)), 3),
                     "epi_depth": round(float(r_sc.uniform(0.25, 0.5)), 3),
                     "thinning": round(float(r_sc.uniform(0.2, 0.5)), 3),
                     "extent_shift": int(r_sc.integers(-1, 2)),
                     "patch_seed": int(r_sc.integers(0, 2**31 - 1))}
    # LGE contrast: an inversion-recovery signal model with post-contrast T1s
    t1m = float(r_lg.uniform(0.38, 0.52))
    v.lge_t1_s = {"myo": round(t1m, 4), "blood": round(t1m * float(r_lg.uniform(0.5, 0.88)), 4),
                  "scar": round(t1m * float(r_lg.uniform(0.38, 0.58)), 4), "fluid": round(float(r_lg.uniform(1.6, 2.6)), 3)}
    v.nulling_error = round(float(r_lg.uniform(-0.35, -0.08)) if lge == "psir" else float(r_lg.uniform(-0.18, 0.15)), 4)
    v.dark_blood_factor = round(float(r_lg.uniform(0.05, 0.3)), 4) if lge == "dark_blood" else 1.0
    # cine contrast
    if cine == "bssfp":
        v.cine_contrast = {"myo": float(r_ci.uniform(0.15, 0.3)), "fat": float(r_ci.uniform(0.7, 1.0)),
                           "fluid": float(r_ci.uniform(0.8, 1.0)), "liver": float(r_ci.uniform(0.22, 0.38))}
    else:
        v.cine_contrast = {"myo": float(r_ci.uniform(0.33, 0.5)), "fat": float(r_ci.uniform(0.85, 1.2)),
                           "fluid": float(r_ci.uniform(0.15, 0.35)), "liver": float(r_ci.uniform(0.4, 0.6))}
        v.lax_inflow = round(float(r_ci.uniform(0.6, 0.9)), 4)
    v.cine_contrast = {k: round(x, 4) for k, x in v.cine_contrast.items()}
    v.contrast_spread = round(float(r_ci.uniform(0.05, 0.2)), 4)
    v.shading_strength = round(float(r_bh.uniform(0.2, 2.2)), 4)
    v.sax_coverage_mm = (round(float(r_vi.uniform(-6, 14)), 2), round(float(r_vi.uniform(-12, 6)), 2))
    if bh == "misregistered":
        v.misregistration_mm = round(float(r_bh.uniform(1.5, 6.0)), 3)
    if views == "missing":
        k = int(r_vi.integers(1, 4))
        v.missing_views = sorted(str(x) for x in r_vi.choice(OPTIONAL_VIEWS, k, replace=False))
    elif views == "extra":
        k = int(r_vi.integers(1, 3))
        kinds = [e for e in EXTRA_KINDS if e != "psir_companion" or lge != "psir"]
        v.extra_series = sorted(str(x) for x in r_vi.choice(kinds, min(k, len(kinds)), replace=False))
    return v


# ---------------------------------------------------------------- contrast

# Proton density and post-contrast T1 (s) of the tissues that gadolinium does not change much; myocardium, blood
# and scar take the study's drawn T1s.
PD = dict(air=0.0, fat=0.9, muscle=0.7, lung=0.1, liver=0.7, bone=0.5, blood=1.0, myo=0.75, scar=0.8, fluid=1.0,
          peri=0.5, medfat=0.85)
T1_FIXED = dict(fat=0.26, muscle=0.6, lung=0.6, liver=0.4, bone=0.3, fluid=2.0, peri=0.45, medfat=0.27)


def lge_contrast(v: Variety, rr_ms: float) -> tuple[dict[str, float], float]:
    """Relative LGE signal per tissue (scar = 1) and the inversion time used (ms).

    Inversion recovery with one inversion every other heartbeat (recovery time t = 2 RR):
    S = PD (1 - 2 exp(-TI / T1) + exp(-t / T1)); the myocardium's null is TI0 = -T1 ln((1 + exp(-t / T1)) / 2)
    and TI = TI0 (1 + nulling error). Magnitude and dark-blood images show |S| (dark blood also scales blood
    down); PSIR shows S with its sign (normal myocardium and long-T1 fluid negative)."""
    t1 = dict(T1_FIXED, myo=v.lge_t1_s["myo"], blood=v.lge_t1_s["blood"], scar=v.lge_t1_s["scar"])
    t1["fluid"] = v.lge_t1_s.get("fluid", T1_FIXED["fluid"])
    trep = 2.0 * rr_ms / 1000.0
    ti0 = -t1["myo"] * np.log((1.0 + np.exp(-trep / t1["myo"])) / 2.0)
    ti = ti0 * (1.0 + v.nulling_error)
    s = {k: (PD[k] * (1.0 - 2.0 * np.exp(-ti / t1[k]) + np.exp(-trep / t1[k])) if k != "air" else 0.0) for k in PD}
    ref = s["scar"]
    out = {k: float(x / ref) for k, x in s.items()}
    if v.lge != "psir":
        out = {k: abs(x) for k, x in out.items()}
    if v.lge == "dark_blood":
        out["blood"] *= v.dark_blood_factor
    return out, round(float(ti * 1000.0), 1)


def cine_contrast(v: Variety, base: Mapping[str, float]) -> dict[str, float]:
    """Relative cine signal per tissue (blood = 1): bSSFP (T2/T1: bright fluid, dark myocardium) or spoiled
    gradient echo (T1 and inflow: grey myocardium, dark fluid, bright fat)."""
    c = dict(base)
    c.update(v.cine_contrast)
    if v.cine == "gre":
        c.update(muscle=0.38, bone=0.5, peri=0.12, medfat=0.95 * c["fat"], scar=c["myo"], lung=0.05)
    else:
        c["scar"] = c["myo"]
        c["medfat"] = 0.6 * c["fat"]
    return c
