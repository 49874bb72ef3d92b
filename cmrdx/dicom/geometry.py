"""Slice geometry: normals, positions along the normal, grouping, parallelism.

Position along the slice normal n = row x column (ImageOrientationPatient) is d = n . IPP (mm).
Positions are never taken from SliceLocation (optional, vendor-specific sign and origin) or InstanceNumber.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

PARALLEL_DOT = 0.999  # |n1 . n2| above this: parallel planes (about 2.6 degrees)
POSITION_TOL_MM = 0.5

F = TypeVar("F")


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


def group_by_position(frames: Sequence[F], tol_mm: float = POSITION_TOL_MM) -> list[list[F]]:
    """Frames grouped by position along the shared normal, groups sorted ascending by position.
    Frames without geometry come back as one trailing group."""
    n = reference_normal(frames)
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
