"""Render a phantom on real imaging planes: the straight-to-arrays API (no DICOM).

Each plane has DICOM geometry (ImageOrientationPatient rows/columns, ImagePositionPatient of the first pixel,
pixel spacing, slice thickness); pixels are the phantom sampled at those patient coordinates. Through-plane
partial volume averages two sub-planes at +-thickness/4; in-plane partial volume comes from the soft
membership ramps one pixel wide. Then coil shading, Rician noise, and a vendor gain turn the relative
signal into the unsigned 12-bit integers that the DICOM writer stores unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from cmrdx.synth.geometry import Plane, make_plane, uid
from cmrdx.synth.params import StudyParams, uid_root
from cmrdx.synth.phantom import CONTRAST, TISSUES, Phantom, volume_curve
from cmrdx.synth.variety import cine_contrast, lge_contrast
from cmrdx.vocab import CINE_VIEWS, LGE_VIEWS, Role, view_key

log = logging.getLogger(__name__)

MAX_VALUE = 4095  # 12-bit stored values
PSIR_OFFSET = 4096  # Siemens-style PSIR: stored = (value + 4096) / 2


def _rotate(v: np.ndarray, axis: np.ndarray, deg: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    t = np.radians(deg)
    return v * np.cos(t) + np.cross(axis, v) * np.sin(t) + axis * (axis @ v) * (1 - np.cos(t))


@dataclass
class RenderedView:
    """One rendered view: (slices, phases, rows, cols) float32 integer-valued pixels plus geometry."""

    role: str
    view: str
    pixels: np.ndarray
    planes: list[Plane]
    trigger_times: np.ndarray  # (phases,) ms after the R wave

    @property
    def key(self) -> str:
        return view_key(self.role, self.view)


@dataclass
class Rendered:
    """A rendered study: params, the phantom, its truth, and views keyed "cine:SAX", "lge:4CH", ..."""

    params: StudyParams
    phantom: Phantom
    truth: dict[str, float]
    views: dict[str, RenderedView] = field(default_factory=dict)

    def to_study(self, study_uid: str | None = None):
        """The views as a ``cmrdx.study.types.Study`` (what the DICOM reader would assemble from the same study)."""
        from cmrdx.study.types import Study, StudyView

        # The same StudyInstanceUID the DICOM writer gives this seed, so arrays and files can be matched.
        st = Study(study_uid=study_uid or uid(uid_root(self.params), "study"), source="cmrdx.synth")
        for key, rv in self.views.items():
            pos = np.array([pl.position for pl in rv.planes])
            st.views[key] = StudyView.from_array(
                rv.role, rv.view, rv.pixels,
                pixel_spacing=(rv.planes[0].spacing, rv.planes[0].spacing),
                slice_positions=pos,
                trigger_times=rv.trigger_times,
                rr_interval=self.params.acq.rr_ms,
                notes=["synthetic phantom"],
            )
        return st


class Renderer:
    """Samples one phantom on planes; holds the per-study static pieces (body, shading)."""

    def __init__(self, params: StudyParams, phantom: Phantom | None = None):
        self.p = params
        self.ph = phantom or Phantom(params)
        rng = np.random.default_rng([params.seed, 0xB0D7])
        self.shade_g = rng.normal(0, 0.3, 3)
        self.shade_c = self.ph.to_patient(np.array([[0, 0, 0.5 * self.ph.Le]]))[0]
        self.shade_q = 0.0
        self.v = params.variety
        self.psir = self.v is not None and self.v.lge == "psir"
        base = dict(CONTRAST)
        if self.v is not None:
            vr = np.random.default_rng([params.seed, 0xB0D7, 0xD0A1])
            self.shade_g = self.shade_g * self.v.shading_strength
            self.shade_q = float(vr.uniform(-0.5, 0.3))  # centre brightening (< 0) or darkening (> 0)
            base = {"cine": cine_contrast(self.v, CONTRAST["cine"]), "lge": lge_contrast(self.v, params.acq.rr_ms)[0]}
        jit = np.array(params.anatomy.contrast_jitter)
        self.contrast = {}
        for role in ("cine", "lge"):
            c = dict(base[role])
            for i, t in enumerate(TISSUES):
                if t not in ("air", "blood"):
                    c[t] *= float(jit[i % len(jit)])
            self.contrast[role] = c

    def lge_variant(self, mode: str | None = None, ti_scale: float = 1.0) -> dict[str, float]:
        """The study's LGE contrast (randomised generator) as another image of the same acquisition (``mode``:
        "magnitude", "psir", "dark_blood") or at another inversion time (``ti_scale`` x TI), with the study's
        tissue jitter."""
        from dataclasses import replace

        assert self.v is not None
        v = replace(self.v, lge=mode or self.v.lge, nulling_error=(1 + self.v.nulling_error) * ti_scale - 1)
        c = lge_contrast(v, self.p.acq.rr_ms)[0]
        jit = np.array(self.p.anatomy.contrast_jitter)
        for i, t in enumerate(TISSUES):
            if t not in ("air", "blood"):
                c[t] *= float(jit[i % len(jit)])
        return c

    # ------------------------------------------------------------------ planes
    def view_planes(self, role: str, view: str) -> list[Plane]:
        """Imaging planes of a view in patient coordinates; SAX ordered by ascending position along its normal."""
        p, ph = self.p, self.ph
        acq = p.acq
        s, a, u = ph.R[:, 0], ph.R[:, 1], ph.R[:, 2]
        rng = np.random.default_rng([p.seed, 0x9A7E, CINE_VIEWS.index(view), role == "lge"])
        shape = acq.matrix if role == "cine" else acq.lge_matrix
        spacing = acq.pixel_mm if role == "cine" else acq.lge_pixel_mm
        d3 = np.cos(np.radians(35)) * s + np.sin(np.radians(35)) * a
        jit = acq.plane_jitter_deg

        def wobble(row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            axis = rng.normal(size=3)
            ang = float(rng.uniform(-jit, jit))
            return _rotate(row, axis, ang), _rotate(col, axis, ang)

        if view == "SAX":
            t_apex = float(ph.T[0].mean())
            top = ph.Le - 0.25 * acq.sax_thickness_mm
            bottom = -0.4 * t_apex
            if self.v is not None:  # coverage: some stacks reach into the atria, some miss the apex
                top += self.v.sax_coverage_mm[0]
                bottom -= self.v.sax_coverage_mm[1]
            if role == "cine":
                spacing_z = acq.sax_thickness_mm + acq.sax_gap_mm
                n = int(np.clip(np.floor((top - bottom) / spacing_z) + 1, 6, 18))
                thick = acq.sax_thickness_mm
            else:
                n = acq.lge_n_slices
                spacing_z = (top - bottom) / (n - 1)
                thick = min(acq.lge_thickness_mm, spacing_z)
            row, col = wobble(-s, -a)
            normal = np.cross(row, col)
            normal = normal / np.linalg.norm(normal)
            centre0 = ph.apex + u * top + s * 0.3 * ph.rv_D
            planes = [
                make_plane(centre0 - normal * (k * spacing_z) * float(np.sign(normal @ u)), row, col, shape, spacing, thick)
                for k in range(n)
            ]
            return self._misregister(sorted(planes, key=lambda pl: pl.position), role, view)
        thick = acq.lax_thickness_mm
        mid = ph.apex + u * (0.55 * ph.Le)
        if view == "4CH":
            row, col, c = -s, u, mid + s * 0.4 * ph.rv_D
        elif view == "2CH":
            row, col, c = a, u, mid
        elif view == "3CH":
            row, col, c = -d3, u, mid + d3 * 0.15 * ph.Re
        elif view == "LVOT":
            root, v, _ = ph.aortic_geometry(0.0)
            vp = ph.R @ v
            n3 = np.cross(-d3, u)
            row, col, c = n3, -vp, ph.to_patient(root[None])[0] + vp * 15
        else:
            raise ValueError(f"unknown view {view!r}")
        row, col = wobble(row, col)
        return self._misregister([make_plane(c, row, col, shape, spacing, thick)], role, view)

    def _misregister(self, planes: list[Plane], role: str, view: str) -> list[Plane]:
        """Each plane its own breath-hold: the anatomy displaced, mostly head-feet, by the study's
        misregistration (randomised generator; planes unchanged otherwise)."""
        if self.v is None or self.v.misregistration_mm <= 0:
            return planes
        rng = np.random.default_rng([self.p.seed, 0x5111, CINE_VIEWS.index(view), role == "lge"])
        sd = self.v.misregistration_mm
        for pl in planes:
            pl.shift = np.round(sd * rng.normal(0, 1, 3) * np.array([0.2, 0.35, 1.0]), 3)
        return planes

    # ------------------------------------------------------------------ static body
    def background(self, pts: np.ndarray, c: dict[str, float], w: float) -> np.ndarray:
        """Static surroundings (body, fat, chest wall, lungs, liver, mediastinum, spine, descending aorta) at
        patient points (N, 3); returns relative signal (N,) float32."""
        from cmrdx.synth.phantom import _soft

        bx, by = self.p.anatomy.body_axes_mm
        x = pts[:, 0].astype(np.float32)
        y = (pts[:, 1] - 10.0).astype(np.float32)
        z = pts[:, 2].astype(np.float32)
        sig = np.zeros(len(pts), np.float32)

        def lerp(val: float, m: np.ndarray) -> None:
            sig[:] = sig + (val - sig) * m

        def ell2(cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
            return _soft((1 - ((x - cx) / ax) ** 2 - ((y - cy) / ay) ** 2) * (0.5 * min(ax, ay)), w)

        def ell3(cen: np.ndarray, ax: tuple[float, float, float]) -> np.ndarray:
            d = ((x - cen[0]) / ax[0]) ** 2 + ((y - cen[1]) / ax[1]) ** 2 + ((z - cen[2]) / ax[2]) ** 2
            return _soft((1 - d) * (0.5 * min(ax)), w)

        hc = self.ph.to_patient(np.array([[0.3 * self.ph.rv_D, 0, 0.5 * self.ph.Le]]))[0]
        hc = hc - np.array([0, 10.0, 0])
        lerp(c["fat"], ell2(0, 0, bx, by))
        lerp(c["muscle"], ell2(0, 0, bx - 14, by - 12))
        lerp(c["fat"], ell2(0, 0, bx - 24, by - 20) * 0.6)
        lerp(c["lung"], ell3(np.array([bx * 0.48, 8, hc[2] + 40]), (bx * 0.4, by * 0.72, 150)))
        lerp(c["lung"], ell3(np.array([-bx * 0.48, 8, hc[2] + 40]), (bx * 0.42, by * 0.74, 150)))
        lerp(c["liver"], ell3(np.array([-bx * 0.25, 5, hc[2] - 115]), (bx * 0.7, by * 0.8, 80)))
        lerp(c["medfat"], ell3(hc, (64.0, 56.0, 85.0)))
        sy = by * 0.62
        lerp(c["bone"], ell2(0, sy, 17, 15))
        lerp(c["fluid"], ell2(0, sy + 24, 7, 6))
        lerp(c["blood"], ell2(24, sy - 26, 11, 11))
        return sig

    def shading(self, pts: np.ndarray) -> np.ndarray:
        """Smooth multiplicative receive-coil sensitivity (N,) float32, ~0.6-1.6 over the chest (wider, with a
        quadratic term, in the randomised generator)."""
        d = (pts - self.shade_c) @ self.shade_g / 200.0
        if self.shade_q:
            d = d - self.shade_q * np.sum(((pts - self.shade_c) / 200.0) ** 2, axis=1)
        return np.exp(d).astype(np.float32)

    # ------------------------------------------------------------------ rendering
    def render_planes(self, role: str, planes: list[Plane], times_ms: np.ndarray, *, noise: bool = True,
                      seed_key: int = 0, contrast: dict[str, float] | None = None, gain: float | None = None,
                      snr: float | None = None, shading: bool = True, signed: bool | None = None) -> np.ndarray:
        """Render (len(planes), len(times_ms), rows, cols) float32 stored values (0..4095, integral).

        ``role`` ("cine" or "lge") picks the default contrast, SNR and gain; ``contrast`` (relative signal per
        tissue of TISSUES) overrides it, e.g. for T1 maps or TI scouts. ``signed`` keeps the sign of the signal
        (a PSIR real image: Gaussian noise, values down to -4095); None: for a randomised PSIR study's LGE.
        """
        ph = self.ph
        if signed is None:  # PSIR: the real image, with its sign
            signed = self.psir and role == "lge" and contrast is None
        c = contrast or self.contrast[role]
        fs = volume_curve(np.asarray(times_ms, float), self.p.acq.rr_ms)
        h, w = planes[0].shape
        out = np.empty((len(planes), len(fs), h, w), np.float32)
        snr = snr or (self.p.acq.snr_cine if role == "cine" else self.p.acq.snr_lge)
        if gain is None and self.v is not None and role == "lge":
            # the randomised LGE contrast can make a tissue brighter than scar: keep the brightest in range
            gain = self.p.acq.gain * 1.6 / max(1.0, max(abs(x) for x in c.values()))
        gain = gain or self.p.acq.gain * (1.0 if role == "cine" else 1.6)
        inflow = self.v is not None and self.v.cine == "gre" and role == "cine" and contrast is None
        u = ph.R[:, 2]
        rng = np.random.default_rng([self.p.seed, 0x401CE, seed_key, role == "lge"])
        # Gaussian draws cost more than the rendering itself: draw a small bank per view and give every frame
        # a different randomly shifted, sign-flipped pair from it.
        n_bank = min(2 * len(planes) * len(fs), 8)
        bank = rng.standard_normal((n_bank, h, w), dtype=np.float32) * np.float32(1.0 / snr) if noise else None
        for si, pl in enumerate(planes):
            wv = pl.spacing
            offs = (-pl.thickness / 4, pl.thickness / 4)
            pts = [pl.points(o) if pl.shift is None else pl.points(o) + pl.shift for o in offs]
            if inflow and self.v is not None and abs(float(pl.normal @ u)) < 0.5:
                # spoiled gradient echo: blood flowing within a long-axis plane saturates (less inflow signal)
                c = dict(self.contrast[role], blood=self.contrast[role]["blood"] * self.v.lax_inflow)
            elif inflow:
                c = self.contrast[role]
            bgs = [self.background(pp, c, wv) for pp in pts]
            bg_mean = 0.5 * (bgs[0] + bgs[1])
            shade = self.shading(pts[0] * 0.5 + pts[1] * 0.5).reshape(h, w) if shading else 1.0
            # Only pixels near the heart change over the cycle: find their bounding box on a coarse grid.
            q_mid = ph.to_heart(0.5 * (pts[0] + pts[1]))
            r0, r1, c0, c1 = self._roi(q_mid, (h, w))
            qs = []
            bgr = []
            for pp, bg in zip(pts, bgs):
                sub = pp.reshape(h, w, 3)[r0:r1, c0:c1].reshape(-1, 3)
                qs.append(ph.prepare(ph.to_heart(sub)))
                bgr.append(bg.reshape(h, w)[r0:r1, c0:c1].ravel())
            blk = out[si]
            blk[:] = bg_mean.reshape(h, w)
            if r1 > r0 and c1 > c0:
                for ti, f in enumerate(fs):
                    sig = ph.heart_signal(qs[0], float(f), wv, bgr[0], c)
                    sig += ph.heart_signal(qs[1], float(f), wv, bgr[1], c)
                    sig *= 0.5
                    blk[ti, r0:r1, c0:c1] = sig.reshape(r1 - r0, c1 - c0)
            blk *= shade
            if bank is not None and signed:  # PSIR: the real part, Gaussian noise
                for fr in blk:
                    fr += self._noise(rng, bank)[0]
            elif bank is not None:  # noise on. Rician: magnitude of (signal + complex Gaussian noise), in place
                for fr in blk:
                    n1, n2 = self._noise(rng, bank)
                    fr += n1
                    np.square(fr, out=fr)
                    fr += n2
                    np.sqrt(fr, out=fr)
        np.multiply(out, gain, out=out)
        if signed and self.p.acq.vendor == "siemens":
            # stored unsigned as (value + 4096) / 2 (RescaleSlope 2, RescaleIntercept -4096): even values only
            np.clip(out, -PSIR_OFFSET, PSIR_OFFSET - 2, out=out)
            np.multiply(np.rint(out * 0.5), 2.0, out=out)
            return out
        np.clip(out, -MAX_VALUE if signed else 0, MAX_VALUE, out=out)
        np.rint(out, out=out)
        return out

    @staticmethod
    def _noise(rng: np.random.Generator, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Real part and squared imaginary part of one frame's complex noise, drawn from ``bank``."""
        n, h, w = bank.shape
        i, j = rng.choice(n, 2, replace=False) if n > 1 else (0, 0)
        dy, dx, dy2, dx2 = (int(v) for v in rng.integers(0, [h, w, h, w]))
        s1, s2 = (np.float32(v) for v in rng.choice([-1.0, 1.0], 2))
        n1 = np.roll(bank[i], (dy, dx), axis=(0, 1))
        n1 *= s1
        n2 = np.roll(bank[j], (dy2, dx2), axis=(0, 1))
        np.square(n2, out=n2)
        return n1, n2

    def _roi(self, q: np.ndarray, shape: tuple[int, int], stride: int = 4) -> tuple[int, int, int, int]:
        """Bounding box (r0, r1, c0, c1) of pixels the heart can reach at any phase (from a coarse grid)."""
        h, w = shape
        grid = q.reshape(3, h, w)[:, ::stride, ::stride].reshape(3, -1)
        m = np.zeros(grid.shape[1], bool)
        for f in (0.0, 1.0):
            fl = self.ph.fields(grid, f, 4.0 * stride)
            for k in ("env_peri", "lv_epi", "rv_out", "la_wall", "ra_wall", "ao_wall"):
                m |= fl[k] > 0
        if not m.any():
            return 0, 0, 0, 0
        ii, jj = np.nonzero(m.reshape(len(range(0, h, stride)), len(range(0, w, stride))))
        r0 = max(int(ii.min()) * stride - 2 * stride, 0)
        r1 = min(int(ii.max()) * stride + 3 * stride, h)
        c0 = max(int(jj.min()) * stride - 2 * stride, 0)
        c1 = min(int(jj.max()) * stride + 3 * stride, w)
        return r0, r1, c0, c1


def study_view_keys(params: StudyParams) -> tuple[str, ...]:
    """The views a study acquires: all nine, less those a randomised study is missing."""
    keys = [view_key(Role.CINE, v) for v in CINE_VIEWS] + [view_key(Role.LGE, v) for v in LGE_VIEWS]
    missing = set(params.variety.missing_views) if params.variety is not None else set()
    return tuple(k for k in keys if k not in missing)


def cine_times(params: StudyParams) -> np.ndarray:
    """Nominal trigger times (ms after the R wave) of the cine phases: P equal steps over the RR interval."""
    n = params.acq.n_phases
    return np.round(np.arange(n) * params.acq.rr_ms / n, 1)


def render(params: StudyParams, *, views: tuple[str, ...] | None = None, noise: bool = True) -> Rendered:
    """Render a study's views straight to arrays.

    Args:
        params: from ``sample_params``.
        views: subset of view keys ("cine:SAX", ..., "lge:4CH"); default all nine (less the views a
            randomised study is missing).
        noise: add Rician noise (turn off for exact measurements in tests).
    Returns:
        Rendered with per-view (slices, phases, rows, cols) float32 stored values; LGE has one phase.
    """
    ph = Phantom(params)
    r = Renderer(params, ph)
    out = Rendered(params=params, phantom=ph, truth=ph.truth())
    keys = views or study_view_keys(params)
    for i, key in enumerate(keys):
        role, view = key.split(":")
        planes = r.view_planes(role, view)
        times = cine_times(params) if role == "cine" else np.array([params.acq.lge_trigger_ms])
        px = r.render_planes(role, planes, times, noise=noise, seed_key=i)
        out.views[key] = RenderedView(role, view, px, planes, times)
        log.debug("seed %d %s: %s", params.seed, key, px.shape)
    return out


def render_study(params: StudyParams, *, views: tuple[str, ...] | None = None, noise: bool = True):
    """Straight-to-arrays ``cmrdx.study.types.Study`` for training at scale (no DICOM written)."""
    return render(params, views=views, noise=noise).to_study()
