"""What the renderer and the DICOM writer share: imaging planes in patient coordinates and the study's UIDs; and
the AHA 17-segment map that the phantom and the parameter sampler both use.

Both ``render`` (pixels on planes, ``Rendered.to_study``) and ``dicomio`` (headers from planes, UIDs) import
this module; neither imports the other. numpy only (pydicom is imported when a UID is first made).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Plane:
    """One image plane in patient coordinates (mm).

    ``origin`` is the centre of pixel (row 0, column 0) (= ImagePositionPatient); ``row`` is the direction of
    increasing column index and ``col`` of increasing row index (= ImageOrientationPatient); ``shape`` is
    (rows, columns); ``spacing`` the square pixel size; ``thickness`` the slice thickness.
    """

    origin: np.ndarray
    row: np.ndarray
    col: np.ndarray
    shape: tuple[int, int]
    spacing: float
    thickness: float
    # Breath-hold misregistration (randomised generator): where the anatomy imaged on this plane really was,
    # relative to the plane's header geometry (mm, patient coordinates). None: where the header says.
    shift: np.ndarray | None = None

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row, self.col)

    @property
    def position(self) -> float:
        """Signed distance along the normal, mm (normal . origin)."""
        return float(self.normal @ self.origin)

    def points(self, offset: float = 0.0) -> np.ndarray:
        """Patient coordinates (rows*cols, 3) float64 of the pixel centres, shifted ``offset`` mm along the normal."""
        h, w = self.shape
        i = np.arange(h, dtype=np.float64)[:, None, None]
        j = np.arange(w, dtype=np.float64)[None, :, None]
        p = self.origin + offset * self.normal + j * self.spacing * self.row + i * self.spacing * self.col
        return p.reshape(-1, 3)


def make_plane(centre: np.ndarray, row: np.ndarray, col: np.ndarray, shape: tuple[int, int], spacing: float,
               thickness: float) -> Plane:
    """The plane centred on ``centre`` with orthonormalised directions (``col`` made perpendicular to ``row``),
    rounded as DICOM headers store them."""
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    h, w = shape
    origin = centre - (w - 1) / 2 * spacing * row - (h - 1) / 2 * spacing * col
    return Plane(np.round(origin, 4), np.round(row, 6), np.round(col, 6), (int(h), int(w)), float(spacing),
                 float(thickness))


def uid(seed: int | str, *parts: object) -> str:
    """A UID derived from the study seed (or a randomised study's identity, ``params.uid_root``) and a path of
    names (deterministic, unique per input): the DICOM writer's UIDs, and the StudyInstanceUID a study rendered
    to arrays gets (``uid(seed, "study")``)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["cmrdx-synth", str(seed), *[str(p) for p in parts]])


def aha_segment(h: np.ndarray, psi_deg: np.ndarray) -> np.ndarray:
    """AHA segment (1-17) of LV points at relative height ``h`` (0 apex, 1 base) and angle ``psi_deg``
    (0 = septal centre, positive towards the anterior wall)."""
    h = np.asarray(h, float)
    psi = np.asarray(psi_deg, float)
    k6 = np.clip(np.floor((psi + 180.0) / 60.0).astype(int), 0, 5)
    basal = np.array([5, 4, 3, 2, 1, 6])[k6]
    k4 = np.floor((psi + 225.0) / 90.0).astype(int) % 4
    apical = np.array([16, 15, 14, 13])[k4]
    seg = np.where(h >= 2 / 3, basal, np.where(h >= 1 / 3, basal + 6, apical))
    return np.where(h < 0.12, 17, seg)
