"""Slice geometry: normals, positions along the normal, grouping, parallelism.

Position along the slice normal n = row x column (ImageOrientationPatient) is d = n . IPP (mm).
Positions are never taken from SliceLocation (optional, vendor-specific sign and origin) or InstanceNumber.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

PARALLEL_DOT = 0.999  # |n1 . n2| above this: parallel planes (about 2.6 degrees)
POSITION_TOL_MM = 0.5
# ImageOrientationPatient holds two unit vectors at right angles. Scanners write them with 5-16 significant digits,
# so lengths are 1 and dot products 0 to far better than these tolerances; beyond them (a length off by 1%, an
# angle off 90 degrees by more than about 1 degree) the values were damaged, and the slice normal made of them is
# not the plane's.
UNIT_TOL = 0.01
PERPENDICULAR_TOL = 0.02

F = TypeVar("F")


def orientation_problem(o: Sequence[float] | np.ndarray) -> str | None:
    """What makes a 6-value ImageOrientationPatient unusable (None when it is two perpendicular unit vectors)."""
    r0, r1, r2, c0, c1, c2 = (float(v) for v in o)
    rr, cc, rc = r0 * r0 + r1 * r1 + r2 * r2, c0 * c0 + c1 * c1 + c2 * c2, r0 * c0 + r1 * c1 + r2 * c2
    if not all(math.isfinite(v) for v in (rr, cc, rc)):
        return "not finite (NaN or infinite)"
    if rr < 1e-12 or cc < 1e-12:
        return "with a zero-length direction"
    cos = rc / math.sqrt(rr * cc)
    if abs(cos) > PARALLEL_DOT:
        return "with parallel row and column directions"
    if abs(math.sqrt(rr) - 1.0) > UNIT_TOL or abs(math.sqrt(cc) - 1.0) > UNIT_TOL:
        return "not unit vectors"
    if abs(cos) > PERPENDICULAR_TOL:
        return "with row and column directions not perpendicular"
    return None


def axis_of_positions(positions: Sequence[np.ndarray]) -> np.ndarray | None:
    """The direction along which slice positions spread (their first principal axis), or None when they do not
    spread (fewer than two distinct positions). A stack of parallel slices is displaced along its normal, so
    this stands in for the normal when no image's orientation is usable; the sign is made to point the same
    way as the largest coordinate change, so the order is stable."""
    pts = np.asarray([p for p in positions if p is not None], dtype=np.float64)
    if pts.shape[0] < 2:
        return None
    centred = pts - pts.mean(axis=0)
    if float(np.max(np.linalg.norm(centred, axis=1))) <= POSITION_TOL_MM:
        return None
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axis = vt[0]
    k = int(np.argmax(np.abs(axis)))
    return axis if axis[k] > 0 else -axis


def reference_normal(frames: Sequence) -> np.ndarray | None:
    """The normal of the first frame with orientation (frames of one stack share it)."""
    for f in frames:
        n = f.normal
        if n is not None:
            return n
    return None


def all_parallel(frames: Sequence, min_dot: float = PARALLEL_DOT) -> bool:
    """True when every frame with geometry lies in a plane parallel to the first one."""
    n0 = reference_normal(frames)
    if n0 is None:
        return True
    return all(abs(float(np.dot(n0, f.normal))) > min_dot for f in frames if f.normal is not None)


def positions_along(frames: Sequence, normal: np.ndarray) -> np.ndarray:
    """(N,) float64 mm: d = n . IPP per frame (NaN where the position is unknown)."""
    return np.array([float(np.dot(normal, f.position)) if f.position is not None else np.nan for f in frames])


def stack_axis(frames: Sequence) -> np.ndarray | None:
    """The direction slices are ordered along: the normal of the frames' orientation, or, when no frame has a
    usable orientation, the direction their positions spread (``axis_of_positions``); None when neither."""
    n = reference_normal(frames)
    if n is not None:
        return n
    return axis_of_positions([f.position for f in frames if f.position is not None])


def group_by_position(frames: Sequence[F], tol_mm: float = POSITION_TOL_MM) -> list[list[F]]:
    """Frames grouped by position along the stack axis (``stack_axis``), groups sorted ascending by position.
    Frames without a position come back as one trailing group."""
    n = stack_axis(frames)
    if n is None:
        return [list(frames)] if frames else []
    d = positions_along(frames, n)
    known = [i for i in range(len(frames)) if np.isfinite(d[i])]
    unknown = [frames[i] for i in range(len(frames)) if not np.isfinite(d[i])]
    known.sort(key=lambda i: d[i])
    groups: list[list[F]] = []
    anchors: list[float] = []
    for i in known:
        if anchors and abs(d[i] - anchors[-1]) <= tol_mm:
            groups[-1].append(frames[i])
        else:
            groups.append([frames[i]])
            anchors.append(float(d[i]))
    if unknown:
        groups.append(unknown)
    return groups


def angle_between_deg(n1: np.ndarray, n2: np.ndarray) -> float:
    """Angle between two planes (0-90 degrees) from their normals."""
    c = min(1.0, abs(float(np.dot(n1, n2))))
    return float(np.degrees(np.arccos(c)))
