"""The words cmrdx uses between its steps, defined once: series roles, views, calls, severities, the default
model and bank. String enums: each member equals its plain string, so JSON, YAML and golden files keep
writing ``"cine"``, ``"4CH"``, ``"present"``. Imports nothing heavy.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """What a series is: the type of acquisition or object, as ``cmrdx inspect`` shows it.

    Only ``cine`` and ``lge`` are model input (``MODEL_ROLES``); every other type is recognised so that it is set
    aside with its name and evidence instead of being mistaken for one of them. docs/series-types.md lists the
    evidence for each.
    """

    CINE = "cine"  # bSSFP or spoiled-GRE cine, segmented or real-time: many phases over the cardiac cycle
    LGE = "lge"  # late gadolinium enhancement: inversion-recovery image(s) per position, magnitude or PSIR, 2D or 3D
    PERFUSION = "perfusion"  # first-pass perfusion (stress / rest, AIF companion): dynamics over many heartbeats
    T1_MAPPING = "t1_mapping"  # raw T1-mapping images (MOLLI, ShMOLLI, SASHA): several inversion/saturation times
    T1_MAP = "t1_map"  # computed T1 map (native or post-contrast) or ECV map
    T2_MAPPING = "t2_mapping"  # raw T2-mapping images: several T2-preparation or echo times at one position
    T2_MAP = "t2_map"  # computed T2 map
    T2STAR = "t2star"  # raw multi-echo gradient echo for T2* (several echo times at one position)
    T2STAR_MAP = "t2star_map"  # computed T2* or R2* map
    T2W = "t2w"  # T2-weighted: STIR, black-blood (double/triple inversion) turbo spin echo
    FLOW = "flow"  # phase-contrast velocity mapping: phase (velocity) and magnitude images
    TAGGING = "tagging"  # myocardial tagging (SPAMM grid or line tags)
    TI_SCOUT = "ti_scout"  # TI scout / Look-Locker cine IR, run to choose the LGE inversion time
    LOCALIZER = "localizer"  # localizers, surveys, scouts, planning and calibration scans
    ANGIO = "angio"  # MR angiography, 3D whole-heart / coronary volumes, bolus tracking
    DERIVED = "derived"  # reformats (MPR, MIP, projections), secondary captures, screenshots, vendor results
    SR = "sr"  # structured report
    DOCUMENT = "document"  # encapsulated document (a PDF or CDA report)
    NON_MR = "non_mr"  # an object of another modality (CT, US, ...)
    OTHER = "other"  # anything else: presentation states, other MR (T1-weighted, Dixon, ...), unreadable timing


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
    NOT_ASSESSABLE = "not assessable"  # the study lacks the images the finding needs (the bank's ``requires``)


class Severity(StrEnum):
    NONE = "none"
    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"


#: Every series type, in the order above.
ROLES: tuple[str, ...] = tuple(Role)
#: The series types the model takes as input; every other type is set aside with its reason.
MODEL_ROLES: tuple[str, ...] = (Role.CINE, Role.LGE)
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
