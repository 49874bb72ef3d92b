"""The words cmrdx uses between its steps, defined once: series roles, views, calls, severities, the default
model and bank. String enums: each member equals its plain string, so JSON, YAML and golden files keep
writing ``"cine"``, ``"4CH"``, ``"present"``. Imports nothing heavy.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """What a series is for the model (other series types are recognised but not used as model input)."""

    CINE = "cine"
    LGE = "lge"


class View(StrEnum):
    """Imaging plane. ``LAX`` is a long axis whose plane could not be told."""

    SAX = "SAX"
    CH2 = "2CH"
    CH3 = "3CH"
    CH4 = "4CH"
    LVOT = "LVOT"
    LAX = "LAX"


class Call(StrEnum):
    """A finding's call against its threshold."""

    PRESENT = "present"
    ABSENT = "absent"
    UNCERTAIN = "uncertain"
    NO_THRESHOLD = "no threshold"


class Severity(StrEnum):
    NONE = "none"
    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"


ROLES: tuple[str, ...] = tuple(Role)
VIEWS: tuple[str, ...] = tuple(View)
#: Graded severities (``none`` excluded), mildest first.
SEVERITY_LEVELS: tuple[str, ...] = (Severity.MILD, Severity.MODERATE, Severity.SEVERE)
#: Views rendered by the phantom generator per role (LGE of the LVOT is not routinely acquired).
CINE_VIEWS: tuple[str, ...] = (View.SAX, View.CH2, View.CH3, View.CH4, View.LVOT)
LGE_VIEWS: tuple[str, ...] = (View.SAX, View.CH2, View.CH3, View.CH4)


def view_key(role: str, view: str) -> str:
    """Canonical key of a view in ``Study.views``: ``"cine:SAX"``, ``"lge:4CH"``, ..."""
    return f"{role}:{view}"


#: The nine views a complete CMR study is expected to have, in the order cmrdx lists them.
VIEW_KEYS: tuple[str, ...] = tuple(view_key(Role.CINE, v) for v in CINE_VIEWS) + tuple(
    view_key(Role.LGE, v) for v in LGE_VIEWS
)

#: The model ``classify`` uses when none is named (bundled; demonstration only).
DEFAULT_MODEL = "cmrdx-phantom-small"
#: The prompt banks ``classify`` scores when none is named.
DEFAULT_BANKS: tuple[str, ...] = ("cmr-findings",)
