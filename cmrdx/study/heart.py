"""Where the heart is, read from the planes the study was planned on. numpy only.

A CMR examination is planned on the left ventricle: the long-axis cines (four-, two- and three-chamber) are set
through the LV long axis, so any two of them meet along it, and the short-axis stack is set across it. cmrdx reads
that plan back from the headers (ImagePositionPatient, ImageOrientationPatient, PixelSpacing), no pixel needed:

* the LV long axis: the line that lies closest to every long-axis plane (least squares over their normals; planes
  less than ``MIN_PLANE_ANGLE_DEG`` apart count once). The LVOT view is not used: it is set through the aortic
  valve, not along the axis.
* the heart's centre: where that axis crosses the middle of the short-axis stack (each short-axis slice has its own
  crossing: the centre of that slice); without a short-axis stack, the point of the axis nearest the middle of the
  long-axis images.

With one long-axis plane, or none, the axis is not determined and ``locate_heart`` says so (None and a reason): a
recipe that crops around the heart then keeps the whole field of view rather than guess. An axis that does not cross
the short-axis stack at a steep angle (``MIN_AXIS_TO_SAX_COS``), or a centre outside the short-axis images, is taken
for a plan cmrdx does not understand and refused the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.study.types import SliceGeometry, StudyView

# Long-axis views set through the LV long axis, in the order their planes are taken (cine first: it is always
# planned on the axis; an LGE long-axis image copies the cine's plan).
AXIS_VIEWS = ("cine:4CH", "cine:2CH", "cine:3CH", "cine:LAX", "lge:4CH", "lge:2CH", "lge:3CH", "lge:LAX")
SAX_VIEWS = ("cine:SAX", "lge:SAX")
MIN_PLANE_ANGLE_DEG = 20.0  # two long-axis planes closer than this do not fix a line
MIN_AXIS_TO_SAX_COS = float(np.cos(np.radians(45.0)))  # the axis crosses the short-axis planes within 45 degrees


@dataclass(frozen=True)
class HeartLocation:
    """The LV long axis and the heart's centre in patient coordinates (mm), and what they were read from."""

    centre: np.ndarray  # (3,)
    axis: np.ndarray  # (3,) unit direction of the LV long axis (sign arbitrary)
    planes: tuple[str, ...]  # view keys of the long-axis planes used
    sax: str | None  # the short-axis view the centre was placed in

    def on_slice(self, g: SliceGeometry) -> np.ndarray:
        """The point where the long axis crosses the plane of slice ``g`` (the centre's projection onto it when the
        axis runs nearly parallel to the plane, as on a long-axis image)."""
        n = g.normal
        o = np.asarray(g.origin, float)
        denom = float(n @ self.axis)
        if abs(denom) >= MIN_AXIS_TO_SAX_COS:
            t = float(n @ (o - self.centre)) / denom
            return self.centre + t * self.axis
        return self.centre - float(n @ (self.centre - o)) * n

    def to_dict(self) -> dict[str, Any]:
        return {"centre_mm": [round(float(v), 2) for v in self.centre],
                "axis": [round(float(v), 4) for v in self.axis], "planes": list(self.planes), "sax": self.sax}


def _plane(v: StudyView) -> tuple[np.ndarray, float] | None:
    """(unit normal, offset) of a view's middle slice, or None without geometry."""
    if not v.geometry:
        return None
    g = v.geometry[len(v.geometry) // 2]
    n = g.normal
    return n, float(n @ np.asarray(g.origin, float))


def _inside(g: SliceGeometry, point: np.ndarray) -> bool:
    r, c = g.pixel_of(point)
    h, w = g.shape
    return -0.5 <= r <= h - 0.5 and -0.5 <= c <= w - 0.5


def locate_heart(views: Mapping[str, StudyView]) -> tuple[HeartLocation | None, str]:
    """(the heart's location, or None, and a sentence saying how it was found or why not) from a study's views
    (view key -> StudyView, e.g. ``Study.views``)."""
    normals: list[np.ndarray] = []
    offsets: list[float] = []
    used: list[str] = []
    centres: list[np.ndarray] = []
    for key in AXIS_VIEWS:
        v = views.get(key)
        pl = _plane(v) if v is not None else None
        if pl is None:
            continue
        n, d = pl
        if any(abs(float(n @ m)) > np.cos(np.radians(MIN_PLANE_ANGLE_DEG)) for m in normals):
            continue  # the same plane again (an LGE copy of a cine's plan) or too close to fix a line
        normals.append(n)
        offsets.append(d)
        used.append(key)
        assert v is not None
        centres.append(v.geometry[len(v.geometry) // 2].centre)
    if len(normals) < 2:
        have = ", ".join(used) if used else "none"
        return None, (f"the LV long axis needs two long-axis planes (4CH, 2CH, 3CH) with their geometry; "
                      f"the study has {have}")
    a = np.stack(normals)
    _, vecs = np.linalg.eigh(a.T @ a)
    axis = vecs[:, 0]  # the direction every long-axis normal is most nearly perpendicular to
    sax_key = next((k for k in SAX_VIEWS if k in views and views[k].geometry), None)
    if sax_key is not None:
        sg = views[sax_key].geometry
        anchor = (sg[0].centre + sg[-1].centre) / 2.0
    else:
        anchor = np.mean(centres, axis=0)
    # the axis line: closest to every plane, pinned along its own direction at the anchor
    rows = np.vstack([a, axis[None]])
    rhs = np.concatenate([np.asarray(offsets), [float(axis @ anchor)]])
    point = np.linalg.lstsq(rows, rhs, rcond=None)[0]
    if sax_key is None:
        return (HeartLocation(point, axis, tuple(used), None),
                f"LV long axis from {', '.join(used)}; no short-axis stack: centre at the middle of the long-axis images")
    sg = views[sax_key].geometry
    mid = sg[len(sg) // 2]
    cos = abs(float(mid.normal @ axis))
    if cos < MIN_AXIS_TO_SAX_COS:
        return None, (f"the long axis from {', '.join(used)} runs {np.degrees(np.arccos(cos)):.0f} degrees off the "
                      f"{sax_key} normal: not a plan cmrdx reads")
    n = mid.normal
    centre = point + float(n @ (anchor - point)) / float(n @ axis) * axis
    if not _inside(mid, centre):
        return None, f"the long axis from {', '.join(used)} crosses the middle {sax_key} slice outside its image"
    return (HeartLocation(centre, axis, tuple(used), sax_key),
            f"LV long axis from {', '.join(used)}, centred in the middle of {sax_key}")
