"""The 3D + time heart phantom: analytic shapes in a heart frame, sampled at arbitrary points.

Coordinates: patient LPS in mm. The heart frame has its origin at the (fixed) LV endocardial apex and axes
(s, a, u): s points from the LV axis to the RV (septal direction), a = u x s (anterior), u from apex to base.
The LV is a thick-walled ellipsoid truncated at the base plane ``zA = L(t)``; its endocardial radius and wall
thickness come from (height x angle) tables so that regional wall motion, septal hypertrophy and scar follow
the AHA 17-segment model. Membership functions are "soft" (a linear ramp one sampling width wide across each
surface), which is both anti-aliasing and partial volume.

Motion: one scalar contraction state f(t) in [0, 1] (0 = end-diastole, 1 = end-systole) drives radial
shortening, longitudinal shortening (the base descends towards the fixed apex), wall thickening (myocardial
volume is conserved ring by ring), RV contraction and atrial filling.
"""

from __future__ import annotations

import numpy as np

from cmrdx.synth.geometry import aha_segment
from cmrdx.synth.params import StudyParams
from cmrdx.synth.variety import Variety

NPSI, NH = 72, 24  # angular x height bins of the LV tables
MYO_DENSITY = 1.05  # g/mL

TISSUES = ("air", "fat", "muscle", "lung", "liver", "bone", "blood", "myo", "scar", "fluid", "peri", "medfat")
# Relative signal per tissue (blood = 1 in cine). Cine: bSSFP (T2/T1 weighted, bright blood and fat, dark
# myocardium). LGE: inversion recovery ~10 min after gadolinium, TI set to null normal myocardium.
CONTRAST = {
    "cine": dict(air=0.0, fat=0.85, muscle=0.2, lung=0.04, liver=0.3, bone=0.32, blood=1.0, myo=0.22,
                 scar=0.22, fluid=0.95, peri=0.08, medfat=0.5),
    "lge": dict(air=0.0, fat=0.5, muscle=0.1, lung=0.02, liver=0.28, bone=0.22, blood=0.35, myo=0.03,
                scar=1.0, fluid=0.1, peri=0.3, medfat=0.18),
}


def volume_curve(t_ms: np.ndarray, rr_ms: float) -> np.ndarray:
    """Contraction state f(t) in [0, 1] over one RR interval: 0 at the R wave (end-diastole), 1 at
    end-systole. Fast ejection, isovolumic relaxation, rapid filling (to 75 %), diastasis, atrial kick.

    Args:
        t_ms: times after the R wave, ms (any shape).
        rr_ms: RR interval, ms.
    Returns:
        float64 array of the same shape.
    """
    t = np.mod(np.asarray(t_ms, dtype=np.float64), rr_ms)
    ts = end_systole_ms(rr_ms)
    ivr = 60.0
    ta = min(130.0, 0.16 * rr_ms)  # atrial contraction lasts until the next R wave
    t_fill_end = ts + ivr + min(160.0, 0.5 * (rr_ms - ts - ivr - ta))
    f = np.zeros_like(t)
    e = t < ts
    x = t[e] / ts
    f[e] = 0.5 * (1 - np.cos(np.pi * x**0.8))
    f[(t >= ts) & (t < ts + ivr)] = 1.0
    r = (t >= ts + ivr) & (t < t_fill_end)
    y = (t[r] - ts - ivr) / (t_fill_end - ts - ivr)
    f[r] = 1.0 - 0.75 * 0.5 * (1 - np.cos(np.pi * y**0.7))
    d = (t >= t_fill_end) & (t < rr_ms - ta)
    y = (t[d] - t_fill_end) / max(rr_ms - ta - t_fill_end, 1.0)
    f[d] = 0.25 - 0.07 * y
    k = t >= rr_ms - ta
    y = (t[k] - (rr_ms - ta)) / ta
    f[k] = 0.18 * 0.5 * (1 + np.cos(np.pi * y))
    return f


def end_systole_ms(rr_ms: float) -> float:
    """Time of end-systole after the R wave, ms (shortens with heart rate, ~340 ms at 60 bpm)."""
    return 1000.0 * (0.12 + 0.22 * np.sqrt(rr_ms / 1000.0))


def _soft(d: np.ndarray, w: float) -> np.ndarray:
    """Fraction inside from a signed distance ``d`` (mm, > 0 inside) over a ramp of width ``w`` mm."""
    return np.clip(0.5 + d * (1.0 / w), 0.0, 1.0)


def _blur_table(t: np.ndarray, n: int = 2) -> np.ndarray:
    """Smooth an (NH, NPSI) table: circular in angle, clamped in height, so segment borders are gradual."""
    for _ in range(n):
        t = (np.roll(t, 1, 1) + 2 * t + np.roll(t, -1, 1)) / 4
        p = np.pad(t, ((1, 1), (0, 0)), mode="edge")
        t = (p[:-2] + 2 * t + p[2:]) / 4
    return t


def _shape_table(v: Variety, H: np.ndarray, PSI: np.ndarray) -> np.ndarray:
    """Relative endocardial radius per (height, angle) bin of a randomised LV: elliptical cross-sections, a more
    conical or more globular apex, and the septum flattened into the LV (curvature > 0) or bowed into the RV."""
    m = v.shape_modes
    rad = np.radians(PSI)
    t = 1.0 + m["ellipticity"] * np.cos(2 * (rad - np.radians(m["ellipticity_deg"])))
    t = t * (1.0 + m["conicity"] * (H - 0.6))
    if v.septal_curvature:
        t = t * (1.0 - v.septal_curvature * np.exp(-((PSI / 45.0) ** 2)) * np.clip(0.3 + 1.4 * H, 0.0, 1.0))
    return _blur_table(t, 1)


class Phantom:
    """A heart built from StudyParams; ``fields(q, f, w)`` samples it at heart-frame points.

    Attributes (mm unless stated): Re, Le (ED LV endocardial short radius and long semi-axis), a_r, a_l
    (radial and longitudinal contraction amplitudes), tables W (contraction weight), T (ED wall thickness),
    scar (scar weight 0-1), RV ellipsoid offsets/axes, atrial radii, aortic root diameter, effusion.
    """

    def __init__(self, p: StudyParams):
        self.p = p
        an = p.anatomy
        u = np.array(an.long_axis)
        s = np.array(an.septal_dir)
        a = np.cross(u, s)
        self.R = np.stack([s, a, u], axis=1)  # columns: heart axes in patient coordinates
        self.apex = np.array(an.apex_mm)
        self.rr = p.acq.rr_ms

        vol = p.lv_edv_ml * 1000.0
        hc = (np.arange(NH) + 0.5) / NH
        pc = -180 + (np.arange(NPSI) + 0.5) * 360 / NPSI
        H, PSI = np.meshgrid(hc, pc, indexing="ij")
        self.v = p.variety
        self.Le = 0.0
        self._Re32: np.ndarray | None = None
        self._LO32: np.ndarray | None = None
        self._HI32: np.ndarray | None = None
        if self.v is None:
            self.Re = float((3 * vol / (2 * np.pi * an.lv_sphericity)) ** (1 / 3))
            self.Re_t: float | np.ndarray = self.Re  # endocardial short radius per (height, angle) bin
        else:
            # a non-ellipsoidal LV: the radius of each (height, angle) bin is Re x Rmod, and Re is scaled so the
            # cavity still holds the drawn volume (the table volume is that of the ellipsoid times mean(Rmod^2))
            self.Rmod = _shape_table(self.v, H, PSI)
            hw = 1.0 - (hc - 1.0) ** 2
            m2 = float(np.sum(self.Rmod**2 * hw[:, None]) / (np.sum(hw) * NPSI))
            self.Re = float((3 * vol / (2 * np.pi * an.lv_sphericity * m2)) ** (1 / 3))
            self.Re_t = self.Re * self.Rmod
            self._Re32 = np.ascontiguousarray(self.Re_t, np.float32).ravel()
        self.Le = an.lv_sphericity * self.Re

        self.seg = aha_segment(H, PSI)
        if self.v is None:
            self._tables(H, PSI)
        else:
            self._tables_variety(H, PSI)
        self._solve_lv()
        self._solve_rv()

    # ------------------------------------------------------------------ tables
    def _tables(self, H: np.ndarray, PSI: np.ndarray) -> None:
        p = self.p
        rng = np.random.default_rng([p.seed, 0xA7A])
        wall = p.lv_wall_mm
        taper = np.where(H < 1 / 3, 0.72 + 0.84 * H, 1.0)  # thinner apex
        wobble = 1.0 + 0.04 * np.cos(np.radians(PSI) * 2 + rng.uniform(0, 6.3))
        if p.hypertrophy_pattern == "septal":
            base_t = rng.uniform(8.0, 10.0) * taper * wobble
            lobe = np.exp(-((PSI - rng.uniform(-15, 15)) / 55.0) ** 2) * np.clip((H - 0.25) / 0.35, 0, 1)
            T = np.maximum(base_t, wall * lobe)
        else:
            T = wall * taper * wobble
        T = T * (wall / T.max()) if p.hypertrophy_pattern != "septal" else T

        W = np.ones_like(H) * (1.0 - 0.08 * np.exp(-(PSI / 50.0) ** 2))  # septum moves a bit less
        for seg, kind in p.wall_motion.items():
            W[self.seg == seg] = 0.45 if kind == "hypokinetic" else 0.05
        self.W = _blur_table(W, 2)

        scar = np.zeros_like(H)
        for seg in p.lge_segments:
            scar[self.seg == seg] = 1.0
        if p.lge_pattern == "diffuse_subendocardial":
            scar[:] = 1.0
        self.scar = _blur_table(scar, 2) if p.lge_pattern != "diffuse_subendocardial" else scar
        if p.lge_pattern == "transmural":  # chronic transmural infarcts are thinned
            T = T * (1.0 - 0.4 * self.scar)
        T = _blur_table(T, 1)
        self.T = T * (wall / T.max())  # the drawn wall thickness is the maximum, after smoothing
        sev = p.findings.get("lge", "none")
        self.scar_depth = {
            "subendocardial": {"mild": 0.3, "moderate": 0.45, "severe": 0.6},
            "transmural": {"mild": 1.3, "moderate": 1.3, "severe": 1.3},
            "diffuse_subendocardial": {"mild": 0.25, "moderate": 0.35, "severe": 0.5},
        }.get(p.lge_pattern, {}).get(sev, 0.0)
        self._finish_tables()

    def _finish_tables(self) -> None:
        self.A_ed = np.pi * (2 * self.Re_t * self.T + self.T**2)  # ED myocardial ring area, mm^2
        # float32 lookup copies keep the per-point arithmetic in float32 (half the memory traffic)
        self._W32, self._A32, self._S32 = (np.ascontiguousarray(x, np.float32).ravel()
                                           for x in (self.W, self.A_ed, self.scar))
        self.h_weight = 1.0 - ((np.arange(NH) + 0.5) / NH - 1.0) ** 2  # (1 - z^2/L^2) at bin centres

    def _tables_variety(self, H: np.ndarray, PSI: np.ndarray) -> None:
        """The randomised generator's tables: wall-thickness patterns (concentric, asymmetric septal, apical) with
        smooth regional variation, and scar as a weight plus a transmural band [lo, hi] per bin (0 = endocardium,
        1 = epicardium), which draws subendocardial, transmural, mid-wall, epicardial, RV-insertion and patchy
        scars alike."""
        p = self.p
        v = self.v
        assert v is not None
        rng = np.random.default_rng([p.seed, 0xA7A, 0xD0A1])
        wall = p.lv_wall_mm
        k = float(rng.uniform(0.6, 0.85))
        taper = np.where(H < 1 / 3, k + (1 - k) * 3 * H, 1.0)  # thinner apex
        rad = np.radians(PSI)
        fld = sum(float(rng.normal()) * np.cos(m * rad + float(rng.uniform(0, 6.3))) * (1 + float(rng.normal(0, 0.5)) * H)
                  for m in (1, 2, 3))
        var = 1.0 + v.wall_variation * fld / max(float(np.abs(fld).max()), 1e-6)
        pat = p.hypertrophy_pattern
        if pat in ("septal", "apical"):
            base_t = rng.uniform(7.5, 10.0) * taper * var
            if pat == "septal":
                lobe = (np.exp(-((PSI - rng.uniform(-20, 20)) / rng.uniform(40, 70)) ** 2)
                        * np.clip((H - rng.uniform(0.15, 0.35)) / 0.35, 0, 1))
            else:  # apical hypertrophy: the apical segments and cap thickest ("ace of spades")
                lobe = np.clip((rng.uniform(0.4, 0.55) - H) / 0.2, 0, 1) * (1 + 0.08 * np.cos(rad + rng.uniform(0, 6.3)))
            T = np.maximum(base_t, wall * lobe)
        else:
            T = wall * taper * var
        W = np.ones_like(H) * (1.0 - 0.08 * np.exp(-(PSI / 50.0) ** 2))
        for seg, kind in p.wall_motion.items():
            W[self.seg == seg] = 0.45 if kind == "hypokinetic" else 0.05
        self.W = _blur_table(W, 2)

        scar = np.zeros_like(H)
        lo = np.full_like(H, -1.0)
        hi = np.full_like(H, 1.3)
        sp = p.lge_pattern
        d = v.scar_detail
        srng = np.random.default_rng([p.seed, 0x5CA8])
        noise = _blur_table(srng.normal(0, 1, H.shape), 3)
        noise = noise / max(float(np.abs(noise).max()), 1e-6)
        if sp in ("rv_insertion", "patchy"):
            best = np.zeros_like(H)
            for b in d.get("blobs", []):
                dpsi = (PSI - b["psi"] + 180.0) % 360.0 - 180.0
                g = np.exp(-((dpsi / b["width"]) ** 4) - ((H - b["h"]) / b["height"]) ** 4)
                take = g > best
                best = np.maximum(best, g)
                lo = np.where(take, b["lo"], lo)
                hi = np.where(take, b["hi"], hi)
            scar = np.clip(1.6 * best, 0, 1)
        elif sp != "none":
            for seg in p.lge_segments:
                scar[self.seg == seg] = 1.0
            scar = _blur_table(scar, 2) if sp != "diffuse_subendocardial" else scar
            if sp == "subendocardial":
                hi = d["depth"] * (1.0 + 0.3 * noise)
            elif sp == "diffuse_subendocardial":
                hi = 0.7 * d["depth"] * (1.0 + 0.2 * noise)
            elif sp == "midwall":
                c = d["band_centre"] + 0.05 * noise
                lo, hi = c - d["band_width"] / 2, c + d["band_width"] / 2
            elif sp == "epicardial":
                lo = 1.0 - d["epi_depth"] * (1.0 + 0.3 * noise)
        self.scar = scar * d["intensity"] * (0.85 + 0.15 * noise) if sp != "none" else scar
        if sp == "transmural":
            T = T * (1.0 - d["thinning"] * scar)
        T = _blur_table(T, 1)
        self.T = T * (wall / T.max())
        self.scar_depth = 0.0
        self._LO32 = np.ascontiguousarray(lo, np.float32).ravel()
        self._HI32 = np.ascontiguousarray(hi, np.float32).ravel()
        self._finish_tables()

    def _lv_volume(self, f: float, a_r: float, a_l: float) -> float:
        """LV cavity volume (mL) from the tables: sum over bins of 1/2 R^2 (1 - z^2/L^2) dpsi L dh."""
        R = self.Re_t * (1 - a_r * f * self.W)
        L = self.Le * (1 - a_l * f)
        return float(np.sum(0.5 * R**2 * self.h_weight[:, None]) * (2 * np.pi / NPSI) * (L / NH) / 1000.0)

    def _solve_lv(self) -> None:
        p = self.p
        ef = p.lv_ef_pct / 100.0
        self.a_l = 0.04 + 0.12 * min(p.lv_ef_pct, 65.0) / 60.0
        target = p.lv_edv_ml * (1 - ef) / (1 - self.a_l)  # volume the radial part must reach
        # V(a) = C0 - 2 a C1 + a^2 C2 with the same bin weights as _lv_volume (quadratic in a_r).
        k = np.broadcast_to(0.5 * self.Re_t**2 * self.h_weight[:, None] * (2 * np.pi / NPSI) * (self.Le / NH) / 1000.0,
                            self.W.shape)
        c0, c1, c2 = np.sum(k), np.sum(k * self.W), np.sum(k * self.W**2)
        disc = max(c1 * c1 - c2 * (c0 - target), 0.0)
        a = (c1 - np.sqrt(disc)) / c2
        self.a_r = float(np.clip(a, 0.0, 0.62 / self.W.max()))

    # ------------------------------------------------------------------ RV
    def _solve_rv(self) -> None:
        p = self.p
        sx, sa, sl = p.anatomy.rv_shape
        re_epi = self.Re + float(np.median(self.T))
        self.rv_D = 0.7 * re_epi
        self.rv_axes = np.array([sx * (0.8 * re_epi + 16), sa * (1.1 * re_epi + 6), sl * 0.8 * self.Le])
        self.rv_wall = 3.5
        self.rv_k = 1.0
        self.rv_b = 0.0
        self.rv_k = self._secant(lambda k: self._rv_ml_with("rv_k", k, 0.0), p.rv_edv_ml, 1.0, 1.1)
        esv = p.rv_edv_ml * (1 - p.rv_ef_pct / 100.0)
        self.rv_b = self._secant(lambda b: self._rv_ml_with("rv_b", b, 1.0), esv, 0.2, 0.25)

    def _set(self, name: str, v: float) -> None:
        setattr(self, name, float(v))

    def _rv_ml_with(self, name: str, v: float, f: float) -> float:
        """RV volume (ml) at contraction state ``f`` once RV parameter ``name`` is set to ``v`` (a secant step)."""
        self._set(name, v)
        return self.measure(f, 2.5)["rv_ml"]

    @staticmethod
    def _secant(fn, target: float, x0: float, x1: float, it: int = 12) -> float:
        f0, f1 = fn(x0) - target, fn(x1) - target
        for _ in range(it):
            if abs(f1) < 0.3 or f1 == f0:
                break
            x0, x1, f0 = x1, x1 - f1 * (x1 - x0) / (f1 - f0), f1
            x1 = float(np.clip(x1, 0.05, 3.0))
            f1 = fn(x1) - target
        fn(x1)
        return x1

    # ------------------------------------------------------------------ sampling
    def to_heart(self, pts: np.ndarray) -> np.ndarray:
        """Patient points (N, 3) mm -> heart-frame (3, N) float32 (s, a, u from the apex)."""
        return ((pts - self.apex) @ self.R).T.astype(np.float32)

    def to_patient(self, q: np.ndarray) -> np.ndarray:
        """Heart-frame (N, 3) -> patient (N, 3)."""
        return np.asarray(q) @ self.R.T + self.apex

    def length(self, f: float) -> float:
        """LV endocardial long semi-axis at contraction state f (mm); the base plane sits at zA = length."""
        return self.Le * (1 - self.a_l * f)

    def aortic_geometry(self, f: float = 0.0) -> tuple[np.ndarray, np.ndarray, float]:
        """(root centre (3,), ascending direction (3,), root diameter mm) in the heart frame."""
        d3 = np.array([np.cos(np.radians(35)), np.sin(np.radians(35)), 0.0])
        dia = self.p.aortic_root_mm
        root = d3 * 0.55 * self.Re + np.array([0, 0, self.length(f) + 0.42 * dia])
        sup = self.R.T @ np.array([0.0, 0.0, 1.0])
        v = np.array([0, 0, 1.0]) + 0.35 * d3 + 0.5 * sup
        return root, v / np.linalg.norm(v), dia

    @staticmethod
    def prepare(q: np.ndarray) -> dict[str, np.ndarray]:
        """Per-point quantities that do not change over the cycle (radius^2 from the long axis, angle bin), so a
        plane rendered at many phases computes them once. ``q``: (3, N) float32 heart-frame points."""
        xs, xa = q[0], q[1]
        psi = np.arctan2(xa, xs)
        ip = ((psi + np.pi) * (NPSI / (2 * np.pi))).astype(np.int32) % NPSI
        return {"xs": xs, "xa": xa, "za": q[2], "r2": xs * xs + xa * xa, "ip": ip, "psi": psi}

    def fields(self, q: np.ndarray | dict, f: float, w: float, *, scar: bool = False,
               core: bool = False) -> dict[str, np.ndarray]:
        """Soft memberships of the heart's parts at heart-frame points.

        Args:
            q: (3, N) float32 heart-frame coordinates, mm (or ``prepare(q)`` of them).
            f: contraction state in [0, 1].
            w: ramp width in mm (the sampling width: pixel spacing or grid step).
            scar: also compute the scar fraction (LGE rendering).
            core: only the ventricles (lv_cav, lv_epi, rv_in, rv_out), for volume measurements.
        Returns:
            dict of (N,) float32 arrays in [0, 1]: lv_cav, lv_epi (epicardial ellipsoid incl. cavity),
            rv_in (RV ellipsoid), rv_out (RV incl. free wall), la, la_wall, ra, ra_wall, ao, ao_wall,
            env_peri, env_eff (pericardial envelopes), and scar (fraction of lv_epi) when asked; a randomised
            study with trabeculae or papillary muscles adds lv_blood and rv_blood (the cavities less them).
        """
        if not isinstance(q, dict):
            q = self.prepare(q)
        xs, xa, za, r2, ip = q["xs"], q["xa"], q["za"], q["r2"], q["ip"]
        L = self.length(f)
        z = za - L
        below = _soft(-z, w)
        ih = np.clip((za * (NH / L)).astype(np.int32), 0, NH - 1)
        idx = ih * NPSI + ip
        Wp = self._W32[idx]
        Re = self._Re32[idx] if self._Re32 is not None else np.float32(self.Re)
        R = Re * (np.float32(1) - np.float32(self.a_r * f) * Wp)
        T = np.sqrt(R * R + self._A32[idx] * np.float32(self.Le / (np.pi * L))) - R  # conserves ring area x L
        z2 = z * z
        re2 = r2 / (R * R) + z2 / (L * L)
        E = R + T
        ep2 = r2 / (E * E) + z2 / ((L + T) ** 2)
        out: dict[str, np.ndarray] = {}
        out["lv_cav"] = _soft((1 - re2) * R * 0.5, w) * below
        out["lv_epi"] = _soft((1 - ep2) * E * 0.5, w) * below
        if scar and self.p.lge_pattern != "none":
            d_endo = np.maximum((re2 - 1) * R * 0.5, 0)
            d_epi = np.maximum((1 - ep2) * E * 0.5, 0)
            tau = d_endo / (d_endo + d_epi + 1e-3)
            sw = self._S32[idx]
            if self._LO32 is not None and self._HI32 is not None:
                out["scar"] = (sw * _soft(tau - self._LO32[idx], 0.08) * _soft(self._HI32[idx] - tau, 0.08)).astype(np.float32)
            elif self.p.lge_pattern == "midwall":
                band = _soft(tau - 0.35, 0.08) * _soft(0.65 - tau, 0.08)
                out["scar"] = (sw * band).astype(np.float32)
            else:
                out["scar"] = _soft(self.scar_depth * sw - tau, 0.08).astype(np.float32)

        # RV: ellipsoid centred on the base plane, offset towards the septal direction, shrinking with f.
        k = self.rv_k * (1 - self.rv_b * f)
        ax, ay, al = (self.rv_axes * k).tolist()  # python floats keep float32 arrays float32
        xr = xs - self.rv_D
        rv2 = (xr / ax) ** 2 + (xa / ay) ** 2 + z2 / (al * al)
        out["rv_in"] = _soft((1 - rv2) * (0.5 * ay), w) * below
        wl = self.rv_wall
        rvo2 = (xr / (ax + wl)) ** 2 + (xa / (ay + wl)) ** 2 + z2 / ((al + wl) ** 2)
        out["rv_out"] = _soft((1 - rvo2) * (0.5 * (ay + wl)), w) * _soft(wl - z, w)
        if core:
            return out
        if self.v is not None and (self.v.trabeculation or self.v.papillary):
            self._endocardial_detail(out, q, f, w, R, L, re2, rv2, xr, ay)

        # Pericardial envelopes: LV epicardium or RV outer surface grown by the effusion depth.
        e = self.p.effusion_mm
        Tm = float(np.median(self.T))
        for name, grow in (("env_peri", e + 1.6), ("env_eff", e)):
            if grow <= 0:
                out[name] = np.zeros_like(xs)
                continue
            lv_env = r2 / ((E + grow) ** 2) + z2 / ((L + T + grow) ** 2)
            rv_env = (xr / (ax + wl + grow)) ** 2 + (xa / (ay + wl + grow)) ** 2 + z2 / ((al + wl + grow) ** 2)
            d = np.maximum((1 - lv_env) * (0.5 * (self.Re + Tm + grow)), (1 - rv_env) * (0.5 * (ay + wl + grow)))
            out[name] = _soft(d, w) * below

        # Atria sit on the base plane and fill during systole.
        g = 1.0 + 0.12 * f
        d3 = [float(np.cos(np.radians(35))), float(np.sin(np.radians(35)))]
        for name, c, rad in (
            ("la", (-0.35 * self.Re * d3[0], -0.35 * self.Re * d3[1]), self.p.anatomy.la_radius_mm),
            ("ra", (self.rv_D + 0.35 * float(self.rv_axes[0]), -6.0), self.p.anatomy.ra_radius_mm),
        ):
            rr = rad * g
            zc = L + 0.85 * rr
            d2 = ((xs - c[0]) / (1.1 * rr)) ** 2 + ((xa - c[1]) / rr) ** 2 + ((za - zc) / rr) ** 2
            out[name] = _soft((1 - d2) * (0.5 * rr), w)
            dw = ((xs - c[0]) / (1.1 * rr + 2)) ** 2 + ((xa - c[1]) / (rr + 2)) ** 2 + ((za - zc) / (rr + 2)) ** 2
            out[name + "_wall"] = _soft((1 - dw) * (0.5 * (rr + 2)), w)

        # Aortic root (sinus sphere) and ascending aorta (a capsule, 0.85 x root diameter).
        root, v, dia = self.aortic_geometry(f)
        root, v = root.tolist(), v.tolist()
        dx, dy, dz = xs - root[0], xa - root[1], za - root[2]
        tt = np.clip(dx * v[0] + dy * v[1] + dz * v[2], 0.0, 70.0)
        px, py, pz = dx - tt * v[0], dy - tt * v[1], dz - tt * v[2]
        dist_tube = np.sqrt(px * px + py * py + pz * pz)
        dist_root = np.sqrt(dx * dx + dy * dy + dz * dz)
        inner = np.maximum(0.5 * dia - dist_root, 0.425 * dia - dist_tube)
        out["ao"] = _soft(inner, w)
        out["ao_wall"] = _soft(inner + 2.0, w)
        return out

    def _endocardial_detail(self, out: dict[str, np.ndarray], q: dict[str, np.ndarray], f: float, w: float,
                            R: np.ndarray, L: float, re2: np.ndarray, rv2: np.ndarray, xr: np.ndarray,
                            ay: float) -> None:
        """Trabeculae and papillary muscles (randomised generator): myocardium inside the cavity contours. The
        contours (``lv_cav``, ``rv_in``) stay what volumes are measured from (trabeculae and papillary muscles
        counted in the blood pool, as CMR analysis conventionally does); ``lv_blood`` / ``rv_blood`` are what is
        painted as blood."""
        v = self.v
        assert v is not None
        za, psi = q["za"], q["psi"]
        lv_blood, rv_blood = out["lv_cav"], out["rv_in"]
        if v.trabeculation:
            tr = v.trabeculation
            n, ph, tw = tr["lobes"], tr["phase"], tr["twist"] * 2 * np.pi
            zr = za * np.float32(1.0 / L)
            irr = tr.get("irregular", 0.0)
            pat = (0.6 * np.cos(n * psi + tw * zr + ph) + 0.4 * np.cos(1.7 * n * psi - 0.5 * tw * zr + 2 * ph)
                   + irr * np.cos(0.45 * n * psi + 3.0 * zr + 3 * ph) * np.cos(2.3 * n * psi + 5.0 * zr))
            thr = 1.0 - 2.0 * tr["fill"]
            frac = np.clip((pat - thr) * 3.0 + 0.5, 0.0, 1.0)
            depth = tr["depth_mm"] * (1.0 - 0.4 * f) * np.clip(1.15 - 0.8 * zr, 0.25, 1.0)
            d_in = (1 - re2) * R * 0.5  # mm inside the LV contour
            lv_blood = lv_blood * (1 - _soft(depth - d_in, w) * frac)
            pr = np.cos(0.7 * q["xa"] + 0.25 * za + ph) * np.cos(0.55 * xr - 0.2 * za + 2 * ph)
            frac_r = np.clip((pr - thr) * 3.0 + 0.5, 0.0, 1.0)
            d_in_r = (1 - rv2) * (0.5 * ay)
            rv_blood = rv_blood * (1 - _soft(0.8 * depth - d_in_r, w) * frac_r)
        if v.papillary:
            pp = v.papillary
            rbar = self.Re * (1 - self.a_r * f)
            rp = pp["radius_frac"] * self.Re * (1 + 0.25 * f)
            rc = rbar * (1 - 1.2 * pp["radius_frac"])
            z0, z1 = 0.18 * L, 0.62 * L
            t = np.clip((za - z0) * np.float32(1.0 / (z1 - z0)), 0.0, 1.0)
            dz = za - (z0 + t * (z1 - z0))
            for ang in (pp["angle_deg"], -(360.0 - pp["angle_deg"] - pp["spread_deg"])):
                cx, cy = rc * float(np.cos(np.radians(ang))), rc * float(np.sin(np.radians(ang)))
                dist = np.sqrt((q["xs"] - cx) ** 2 + (q["xa"] - cy) ** 2 + dz * dz)
                lv_blood = lv_blood * (1 - _soft(rp * (1 - 0.45 * t) - dist, w))
        out["lv_blood"] = lv_blood.astype(np.float32, copy=False)
        out["rv_blood"] = rv_blood.astype(np.float32, copy=False)

    def heart_signal(self, q: np.ndarray | dict[str, np.ndarray], f: float, w: float, bg: np.ndarray,
                     contrast: dict[str, float]) -> np.ndarray:
        """Paint the heart over a background signal ``bg`` (N,) at heart-frame points q (3, N) (or ``prepare(q)``
        of them)."""
        fl = self.fields(q, f, w, scar=contrast["scar"] != contrast["myo"])
        c = contrast
        s = bg.astype(np.float32, copy=True)

        def lerp(val: float | np.ndarray, m: np.ndarray) -> None:
            s[:] = s + (val - s) * m

        lerp(c["peri"], fl["env_peri"])
        if self.p.effusion_mm > 0:
            lerp(c["fluid"], fl["env_eff"])
        for part in ("la", "ra"):
            lerp(c["myo"], fl[part + "_wall"])
            lerp(c["blood"], fl[part])
        lerp(c["myo"], fl["ao_wall"])
        lerp(c["blood"], fl["ao"])
        lerp(c["myo"], fl["rv_out"])
        lerp(c["blood"], fl.get("rv_blood", fl["rv_in"]))
        myo = c["myo"] + (c["scar"] - c["myo"]) * fl["scar"] if "scar" in fl else c["myo"]
        lerp(myo, fl["lv_epi"])
        lerp(c["blood"], fl.get("lv_blood", fl["lv_cav"]))
        return s

    # ------------------------------------------------------------------ truth
    def measure(self, f: float, step: float = 1.5) -> dict[str, float]:
        """Volumes (mL) of LV cavity, LV myocardium and RV cavity at contraction state f, by summing soft
        memberships over a heart-frame grid with spacing ``step`` mm."""
        re_epi = float(np.max(self.Re_t)) + float(self.T.max())
        ax = self.rv_axes * self.rv_k
        lo = np.array([-re_epi - 4, -max(re_epi, ax[1] + self.rv_wall) - 4, -float(self.T.max()) - 4])
        hi = np.array([self.rv_D + ax[0] + self.rv_wall + 4, max(re_epi, ax[1] + self.rv_wall) + 4, self.Le + 4])
        axes = [np.arange(lo[i], hi[i], step, dtype=np.float32) for i in range(3)]
        X, Y, Z = np.meshgrid(*axes, indexing="ij")
        q = np.stack([X.ravel(), Y.ravel(), Z.ravel()])
        fl = self.fields(q, f, step, core=True)
        v = step**3 / 1000.0
        lv = float(fl["lv_cav"].sum() * v)
        epi = fl["lv_epi"]
        return {
            "lv_ml": lv,
            "lv_myo_ml": float(epi.sum() * v) - lv,
            "rv_ml": float((fl["rv_in"] * (1 - epi)).sum() * v),
        }

    def truth(self) -> dict[str, float]:
        """Measurements of the phantom itself: volumes at ED (f=0) and ES (f=1), EF, mass, thickness."""
        ed, es = self.measure(0.0), self.measure(1.0)
        sept = np.isin(self.seg, (2, 3, 8, 9))
        return {
            "lv_edv_ml": round(ed["lv_ml"], 1),
            "lv_esv_ml": round(es["lv_ml"], 1),
            "lv_ef_pct": round(100 * (1 - es["lv_ml"] / ed["lv_ml"]), 1),
            "lv_sv_ml": round(ed["lv_ml"] - es["lv_ml"], 1),
            "lv_mass_g": round(ed["lv_myo_ml"] * MYO_DENSITY, 1),
            "rv_edv_ml": round(ed["rv_ml"], 1),
            "rv_esv_ml": round(es["rv_ml"], 1),
            "rv_ef_pct": round(100 * (1 - es["rv_ml"] / ed["rv_ml"]), 1),
            "lv_max_wall_mm": round(float(self.T.max()), 1),
            "septal_wall_mm": round(float(self.T[sept & (self.seg > 6)].mean()), 1),
            "aortic_root_mm": round(self.p.aortic_root_mm, 1),
            "effusion_mm": round(self.p.effusion_mm, 1),
            "heart_rate_bpm": self.p.acq.heart_rate_bpm,
            "end_systole_ms": round(end_systole_ms(self.rr), 1),
        }
