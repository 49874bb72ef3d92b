"""Series -> role (what the series is: cine, LGE, perfusion, T1 mapping, flow, ...) and, for the model's inputs,
view (SAX, 2CH, 3CH, 4CH, LVOT, LAX); each with the evidence that decided it, as the reason ``cmrdx inspect`` shows.

Names are a hint and tags decide. SeriesDescription and ProtocolName are often empty after anonymisation and
sometimes lie (a map keeps the name of the scan it was computed from), so the decision runs in four stages:

1. the object itself: structured report, encapsulated document, presentation state, secondary capture, non-MR;
2. header values that settle it whatever the name says: reformatted / secondary images, parametric-map image
   types, phase-contrast encoding, Enhanced MR acquisition contrasts and frame types, dynamics over many heartbeats;
3. the vendors' names (description, protocol, sequence name), each vocabulary checked against the tags it implies
   (a cine name needs cine timing; a MOLLI name is raw images or a map depending on what the images hold);
4. with names silent or not borne out: inversion times, echo times, trigger and acquisition times, geometry.

docs/series-types.md lists every type and the evidence for it. Views come from the name in the vendor
vocabularies, then from geometry (a short-axis stack is many parallel positions; long-axis planes are roughly
perpendicular to it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cmrdx.dicom.geometry import angle_between_deg, reference_normal
from cmrdx.dicom.series import (
    MR_SOP_CLASSES,
    PRESENTATION_STATE_PREFIX,
    SECONDARY_CAPTURE_PREFIX,
    SR_PREFIX,
    Frame,
    Series,
)
from cmrdx.vocab import MODEL_ROLES, Role

Decision = tuple[str, str]  # (role, reason)

# Plausible TriggerTime ceiling: Philips sometimes fills TriggerTime on non-cardiac scans.
MAX_TRIGGER_MS = 2000.0
ENCAPSULATED_DOCUMENT_PREFIX = "1.2.840.10008.5.1.4.1.1.104."
# When the RR interval is not in the header, 1000 ms (60 bpm) stands in for it in the timing rules below.
DEFAULT_RR_MS = 1000.0
# First-pass perfusion runs 40-80 dynamics, one per heartbeat (or every other at high heart rates), for 30-60 s.
# 20 dynamics at least 250 ms apart over 10 s tells it from a cine (all within one RR interval), a real-time cine
# (frames 30-100 ms apart) and the few repeated averages of a free-breathing LGE.
PERF_MIN_DYNAMICS = 20
PERF_MIN_STEP_MS = 250.0
PERF_MIN_SPAN_MS = 10000.0
# Real-time cine: many frames at one position a few tens of milliseconds apart over more than a heartbeat.
REALTIME_MIN_FRAMES = 20
REALTIME_MAX_STEP_MS = 150.0
# Segmented cines have 10-40 phases; fewer than 5 is not a cine (a few repeated single shots, a double-phase scan).
CINE_MIN_PHASES = 5
# Inversion times within one position: MOLLI / ShMOLLI sample 7-11 inversion times spread over 4-5 heartbeats
# (from each inversion, one image per beat); a TI scout / Look-Locker cine IR samples 15-40 times within 1-2 beats.
T1MAP_MIN_SPAN_RR = 2.5
T1MAP_MAX_TIMES = 16
# LGE is acquired with the myocardium nulled: TI about 150-450 ms after contrast (up to about 700 ms at 3 T or long
# delays). A single inversion recovery image outside that range is another inversion-recovery scan.
LGE_TI_RANGE_MS = (150.0, 700.0)
# Multi-echo gradient echo for T2* samples echo times up to about 20-40 ms; spin-echo and T2-prepared series used for
# T2 mapping reach 50-100 ms.
T2STAR_MAX_TE_MS = 40.0
# A spin echo one image per position with TE over 40 ms is T2-weighted; shorter is T1- or proton-density weighted.
T2W_MIN_TE_MS = 40.0
# STIR nulls fat with TI about 130-180 ms at 1.5 T and 200-250 ms at 3 T: a spin echo inverted this early is a STIR.
STIR_MAX_TI_MS = 300.0
# A cardiac-gated 3D volume with this many thin partitions and no inversion is a whole-heart / angiography volume.
ANGIO_MIN_PARTITIONS = 20


def _match(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text, flags=re.IGNORECASE)
    return m.group(0) if m else None


# --- vocabularies (descriptions / protocol names / sequence names), matched case-insensitively ------------------
# Word boundaries in DICOM names are '_', '-', ' ', digits: use lookarounds instead of \b.
_B = r"(?<![a-z])"
_E = r"(?![a-z])"
RE_DIXON = rf"dixon|{_B}fat[_ \-]?frac|{_B}fat{_E}|{_B}water{_E}|in[_ \-]?phase|out[_ \-]?phase|{_B}opp{_E}"
RE_DERIVED_NAME = (
    rf"inlinevf|{_B}mpr{_E}|{_B}mip{_E}|projection|{_B}report|screen[_ \-]?(?:shot|save|capture)|snapshot|"
    rf"{_B}evaluation|{_B}processed|{_B}summary|<mpr|<mip|{_B}vrt{_E}"
)
RE_TI_SCOUT = (
    rf"ti[_ \-]?scout|{_B}cine[_ \-]?ir(?![a-z])|look[_ \-]?locker|{_B}ll{_E}|{_B}ti[_ \-]?(?:find|map{_E})|"
    rf"inversion[_ \-]?scout"
)
RE_T1 = rf"molli|sasha|smart[_ \-]?1|t1[_ \-]?map|t1[_ \-]?mapping|{_B}ecv{_E}|myomaps?"
RE_T2STAR = (
    rf"t2\*|t2[_ \-]?star|{_B}r2\*|r2[_ \-]?star|{_B}me[_ \-]?t2|mfgre|{_B}\d+[_ \-]?echo{_E}|{_B}\d+ec{_E}|"
    rf"{_B}m[_ \-]?ffe{_E}|multi[_ \-]?echo[_ \-]?gre"
)
RE_T2MAP = rf"t2[_ \-]?map|t2[_ \-]?mapping|{_B}t2[_ \-]?r2{_E}"
RE_PERF = rf"perf|first[_ \-]?pass|{_B}fpp{_E}|{_B}aif{_E}"
RE_FLOW = (
    rf"{_B}flow|qflow|fastpc|fastcard[_ \-]?pc|{_B}pc{_E}|{_B}pc[_ \-]|phase[_ \-]?contrast|{_B}venc|"
    rf"{_B}v[_ ]?=[_ ]?\d{{2,3}}|velocit|{_B}vec{_E}"
)
RE_TAGGING = rf"{_B}tags?{_E}|tagging|spamm|{_B}grid|{_B}mtag"
RE_LGE = (
    rf"{_B}lge{_E}|{_B}de{_E}|{_B}dhe{_E}|{_B}dme{_E}|delay|{_B}del[_ \-]?enh|late[_ \-]?(?:gad|enh)|psir|mde{_E}|"
    rf"ir[_ \-]?tfe|irp?[_ \-]?fgre|{_B}ti[_ =]?\d{{3}}|{_B}mag[:_ \-]|{_B}ps[:_ \-]|viab|scar"
)
RE_T2W = (
    rf"stir|tirm|{_B}t2[_ \-]?w|{_B}t2{_E}|dark[_ \-]?blood|black[_ \-]?blood|{_B}db{_E}|{_B}bb{_E}|{_B}dir[_ \-]?fse|"
    rf"tirfse|haste|{_B}tse|{_B}fse|{_B}fase"
)
RE_T1_WEIGHTED = rf"{_B}t1(?:[_ \-]?w)?{_E}|{_B}t1[_ \-]?(?:tse|fse|dirfse|se)|double[_ \-]?ir[_ \-]?t1"
RE_LOCALIZER = (
    rf"{_B}loc(?:ali[sz]er|ator)?{_E}|{_B}loc[_ \-]|survey|scout|{_B}3[_ \-]?p(?:l(?:ane)?)?{_E}|three[_ \-]?plane|"
    rf"3[_ \-]?plane|{_B}define|{_B}plan(?:ning|scan)?{_E}|{_B}tri[_ \-]?pilot|{_B}pilot|calibration|"
    rf"{_B}asset[_ \-]?cal|{_B}ref{_E}|{_B}shim|interactive|{_B}haste[_ \-]?loc"
)
RE_ANGIO = (
    rf"{_B}mra{_E}|angio|whole[_ \-]?heart|{_B}coro|3d[_ \-]?heart|bolus|i[_ \-]?drive|{_B}timing{_E}|{_B}tof{_E}|"
    rf"{_B}twist{_E}|{_B}tricks|{_B}s?3d[_ \-]?dyn|{_B}mslab|{_B}3d[_ \-]?b?tfe[_ \-]?nav"
)
RE_CINE = (
    rf"cine|fiesta|{_B}s?b[_ \-]?tfe|b[_ \-]?ffe|truefisp|{_B}trufi|tfisp|{_B}tfi2d|{_B}b?ssfp|balanced|"
    rf"true[_ \-]?ssfp|real[_ \-]?time|{_B}tf2d|fastcine|fspgr"
)
RE_BSSFP = rf"fiesta|{_B}s?b[_ \-]?tfe|b[_ \-]?ffe|truefisp|{_B}trufi|tfisp|{_B}tfi2d|{_B}b?ssfp|balanced|true[_ \-]?ssfp"
RE_SPOILED = rf"fspgr|{_B}fl2d|{_B}gre{_E}|{_B}fgre|{_B}t1[_ \-]?ffe|{_B}fast[_ \-]?fe|{_B}ffe{_E}|gre[_ \-]?fsp"
# A map series often carries its kind at the end of the name: '_T1MAP', '_MOCO_T1', '_FITPARAMS'.
RE_MAP_END = rf"(?:map|{_B}moco[_ \-]?t[12]|fitparams|{_B}t[12])[^a-z0-9]*$"
RE_POST = rf"{_B}post|{_B}gad{_E}|\+c|{_B}c\+|enhanced|{_B}\d+[_ \-]?min"
RE_NATIVE = rf"native|{_B}pre{_E}|{_B}pre[_ \-]?con"
RE_STRESS = r"stress|adeno|regadenoson|dobutamine"
RE_REST = rf"{_B}rest{_E}"

# View vocabulary: order matters (LVOT before 3CH/LAX; 3CH before LAX because of "VLAX_(LV3CH)").
VIEW_PATTERNS: list[tuple[str, str]] = [
    ("LVOT", rf"{_B}lvot|{_B}lv[_ \-]?outflow|{_B}outflow"),
    ("3CH", rf"3[_ \-]?ch|3[_ \-]?cn|three[_ \-]?ch|{_B}lv3ch|{_B}3c{_E}|{_B}apical[_ \-]?long"),
    ("2CH", rf"2[_ \-]?ch|2[_ \-]?cn|two[_ \-]?ch|{_B}vla{_E}|{_B}vlax{_E}|{_B}2c{_E}"),
    ("4CH", rf"4[_ \-]?ch|4[_ \-]?cn|four[_ \-]?ch|{_B}hla{_E}|{_B}hlax{_E}|{_B}4c{_E}"),
    ("SAX", rf"{_B}sax|{_B}sa{_E}|short[_ \-]?ax|{_B}sa[_ \-]?(?:stack|cine)|{_B}sa\d|_sa{_E}|{_B}sh?ort|{_B}shax"),
    ("LAX", rf"{_B}lax{_E}|long[_ \-]?ax|{_B}la{_E}"),
]

# ImageType / FrameType values that decide by themselves.
REFORMAT_TYPES = {"PROJECTION IMAGE", "PROJECTION", "MIP", "MAX_IP", "MIN_IP", "MPR", "CURVED_MPR", "CSA MPR",
                  "CSA 3D EDITOR", "VOLUME_RENDER", "SURFACE_RENDER", "VRT"}
T1_MAP_TYPES = {"T1 MAP", "T1_MAP", "T1MAP"}
T2_MAP_TYPES = {"T2 MAP", "T2_MAP", "T2MAP"}
T2STAR_MAP_TYPES = {"T2* MAP", "T2*MAP", "T2_STAR_MAP", "T2STAR MAP", "T2STAR_MAP", "R2*", "R2* MAP", "R2_STAR",
                    "R2STAR", "R2_STAR_MAP"}
ECV_TYPES = {"ECV", "ECV MAP", "ECV_MAP"}
GENERIC_MAP_TYPES = {"MAP", "PARAMETRIC MAP", "PARAMETRIC_MAP"}
VELOCITY_TYPES = {"VELOCITY", "VELOCITY MAP", "FLOW_ENCODED", "MFSPLIT"}
PHASE_TYPES = {"P", "PHASE"}
REAL_TYPES = {"R", "REAL", "PSIR"}
MAGNITUDE_TYPES = {"M", "MAGNITUDE"}


def view_from_text(text: str) -> tuple[str | None, str]:
    """View from a description / protocol name, with the matched words as the reason."""
    for view, pat in VIEW_PATTERNS:
        m = re.search(pat, text, flags=re.IGNORECASE)
        if m:
            return view, f"name matches {view} ('{m.group(0)}')"
    return None, "no view in the name"


# ---------------------------------------------------------------------------------------------------
# Evidence: what the headers of one series say, computed once per series


@dataclass
class _Timing:
    """Images at one position along one time axis."""

    n: int  # distinct image times
    span_ms: float
    step_ms: float  # median step between successive times
    axis: str  # which header the times come from


@dataclass
class Evidence:
    """The header values the role rules read, gathered over the series and all its frames."""

    text: str  # description + protocol, lower case
    seq: str  # SequenceName / PulseSequenceName, lower case
    itype: frozenset[str]  # ImageType of the series and ImageType / FrameType of every frame
    scanning: frozenset[str]
    variant: frozenset[str]
    flags: dict[str, str]
    contrast: frozenset[str]  # Enhanced MR AcquisitionContrast values
    components: frozenset[str]  # Enhanced MR ComplexImageComponent values
    groups: list[list[Frame]]  # frames by position
    rr: float | None
    n_pos: int
    n_phases: int
    tis: list[list[float]]  # distinct inversion times at each position
    tes: list[list[float]]  # distinct echo times at each position
    images_per_position: int  # most frames at one position

    @property
    def rr_or_default(self) -> float:
        return self.rr or DEFAULT_RR_MS

    @property
    def max_tis(self) -> list[float]:
        return max(self.tis, key=len, default=[])

    @property
    def max_tes(self) -> list[float]:
        return max(self.tes, key=len, default=[])

    def ir(self) -> str | None:
        """Evidence of an inversion-recovery preparation, or None."""
        why = ["ScanningSequence IR"] if "IR" in self.scanning else []
        ti = [t for ts in self.tis for t in ts if t > 0]
        if ti:
            why.append(f"InversionTime {min(ti):.0f} ms" if min(ti) == max(ti) else
                       f"InversionTime {min(ti):.0f}-{max(ti):.0f} ms")
        return ", ".join(why) or None

    def saturation(self) -> str | None:
        """Evidence of a saturation-recovery preparation, or None."""
        if self.flags.get("SaturationRecovery") == "YES":
            return "SaturationRecovery YES"
        if "SR" in self.scanning or "SR" in self.variant:
            return "saturation recovery (SR) in ScanningSequence / SequenceVariant"
        if "MP" in self.variant and "IR" not in self.scanning:
            return "magnetization-prepared (SequenceVariant MP) without inversion"
        return None

    def named(self, pattern: str) -> str | None:
        """The words of the description / protocol name matching ``pattern`` (or of the sequence name)."""
        return _match(pattern, self.text) or (_match(pattern, self.seq) if self.seq else None)


def _distinct(values: Sequence[float], ndigits: int = 1) -> list[float]:
    return sorted({round(float(v), ndigits) for v in values})


def evidence(s: Series) -> Evidence:
    """Gather what the role rules read from one series' headers."""
    groups = s.slice_groups()
    itype = set(s.image_type)
    contrast, components = set(), set()
    for f in s.frames:
        itype.update(f.image_type)
        if f.acquisition_contrast:
            contrast.add(f.acquisition_contrast)
        if f.complex_component:
            components.add(f.complex_component)
    for key, dest in (("AcquisitionContrast", contrast), ("ComplexImageComponent", components)):
        v = s.mr_flags.get(key)
        if v and v != "MIXED":
            dest.add(v)
    tis = [_distinct([f.inversion_time for f in g if f.inversion_time is not None]) for g in groups]
    if s.inversion_time is not None and not any(tis):
        tis = [[round(s.inversion_time, 1)] for _ in groups]
    tes = [_distinct([f.echo_time for f in g if f.echo_time is not None], 2) for g in groups]
    return Evidence(
        text=" ".join([s.description, s.protocol]).lower(),
        seq=s.sequence_name.lower(),
        itype=frozenset(itype),
        scanning=frozenset(s.scanning_sequence),
        variant=frozenset(s.sequence_variant),
        flags=dict(s.mr_flags),
        contrast=frozenset(contrast),
        components=frozenset(components),
        groups=groups,
        rr=s.rr_interval,
        n_pos=s.n_positions,
        n_phases=s.n_phases,
        tis=tis,
        tes=tes,
        images_per_position=max((len(g) for g in groups), default=0),
    )


def _timing(g: Sequence[Frame], rr: float) -> _Timing | None:
    """The images of one position as a time series: trigger times that run past a few heartbeats count from the
    start of the run (GE time courses); otherwise acquisition times, else temporal positions (no spacing known)."""
    tt = _distinct([f.trigger_time for f in g if f.trigger_time is not None])
    if len(tt) >= 2 and tt[-1] - tt[0] > 2.0 * rr:
        return _series_timing(tt, "TriggerTime counting from the start of the run")
    at = _distinct([1000.0 * f.acquisition_time for f in g if f.acquisition_time is not None], 0)
    if len(at) >= 2 and len(at) >= 0.5 * len(g):
        return _series_timing(at, "AcquisitionTime")
    ti = sorted({f.temporal_index for f in g if f.temporal_index is not None})
    if len(ti) >= 2:
        return _Timing(n=len(ti), span_ms=float("nan"), step_ms=float("nan"), axis="temporal positions")
    return None


def _series_timing(times: list[float], axis: str) -> _Timing:
    steps = np.diff(times)
    return _Timing(n=len(times), span_ms=float(times[-1] - times[0]), step_ms=float(np.median(steps)), axis=axis)


def _trigger_times(s: Series) -> list[float]:
    return [f.trigger_time for f in s.frames if f.trigger_time is not None]


def _has_reliable_timing(s: Series) -> bool:
    """Trigger times (or temporal positions) that sample one cardiac cycle."""
    tt = _trigger_times(s)
    if not tt:
        return s.n_phases > 1 and any(f.temporal_index for f in s.frames)
    if max(tt) > MAX_TRIGGER_MS:
        return False
    return not (s.rr_interval and max(tt) > 1.2 * s.rr_interval)


def _phase_text(s: Series, e: Evidence) -> str:
    tt = _trigger_times(s)
    where = f"at {e.n_pos} position{'s' if e.n_pos != 1 else ''}"
    if tt:
        rr = f", RR {e.rr:.0f} ms" if e.rr else ""
        return f"{e.n_phases} phases over the RR interval (TriggerTime {min(tt):.0f}-{max(tt):.0f} ms{rr}) {where}"
    return f"{e.n_phases} phases (temporal positions) {where}"


def _fmt_list(vals: Sequence[float]) -> str:
    return f"{len(vals)} ({min(vals):.0f}-{max(vals):.0f} ms)"


# ---------------------------------------------------------------------------------------------------
# Stage 1: the object


def _object_kind(s: Series) -> Decision | None:
    sop = s.sop_class_uid
    if sop.startswith(SR_PREFIX) or s.modality == "SR":
        return Role.SR, f"structured report (SOP class {sop or 'none'}, modality {s.modality or 'none'}), not an image"
    if sop.startswith(ENCAPSULATED_DOCUMENT_PREFIX) or s.modality == "DOC":
        return Role.DOCUMENT, f"encapsulated document (SOP class {sop or 'none'}), not an image"
    if sop.startswith(PRESENTATION_STATE_PREFIX) or s.modality == "PR":
        return Role.OTHER, "presentation state (display settings for other images), not an image"
    if sop.startswith(SECONDARY_CAPTURE_PREFIX):
        return Role.DERIVED, f"secondary capture (SOP class {sop}), not an acquired image"
    if s.modality != "MR" and sop not in MR_SOP_CLASSES:
        return Role.NON_MR, f"non-MR ({s.modality or 'no modality'})"
    if sop not in MR_SOP_CLASSES:
        return Role.OTHER, f"not an MR image object (SOP class {sop})"
    if not s.frames:
        return Role.OTHER, "no image frames"
    return None


# ---------------------------------------------------------------------------------------------------
# Stage 2: header values that decide whatever the name says


def _by_reformat(s: Series, e: Evidence) -> Decision | None:
    hit = sorted(REFORMAT_TYPES & e.itype)
    if hit:
        return Role.DERIVED, f"reformatted image (ImageType {hit[0]}), not an acquisition"
    if "SECONDARY" in e.itype and not _map_types(e):
        return Role.DERIVED, "secondary image (ImageType DERIVED\\SECONDARY): post-processed, not an acquisition"
    return None


def _map_types(e: Evidence) -> set[str]:
    return (T1_MAP_TYPES | T2_MAP_TYPES | T2STAR_MAP_TYPES | ECV_TYPES | GENERIC_MAP_TYPES) & e.itype


def _contrast_state(s: Series, e: Evidence) -> str:
    """'post-contrast, name ...' / 'native, name ...' / '' (not told)."""
    post = e.named(RE_POST)
    if post:
        return f"post-contrast, name '{post}'"
    if s.contrast_agent:
        return "post-contrast, ContrastBolusAgent set"
    native = e.named(RE_NATIVE)
    return f"native, name '{native}'" if native else ""


def _with(*parts: str) -> str:
    """Evidence parts joined with '; ', empty parts left out."""
    return "; ".join(p for p in parts if p)


def _by_map_type(s: Series, e: Evidence) -> Decision | None:
    types = _map_types(e)
    if not types:
        return None
    shown = "\\".join(sorted(types))
    if types & ECV_TYPES or (types & GENERIC_MAP_TYPES and e.named(rf"{_B}ecv{_E}")):
        return Role.T1_MAP, f"ECV map (ImageType {shown})"
    if types & T2STAR_MAP_TYPES:
        return Role.T2STAR_MAP, f"T2*/R2* map (ImageType {shown})"
    if types & T2_MAP_TYPES:
        return Role.T2_MAP, f"T2 map (ImageType {shown})"
    if types & T1_MAP_TYPES:
        return Role.T1_MAP, f"T1 map ({_with(f'ImageType {shown}', _contrast_state(s, e))})"
    for role, pattern, what in ((Role.T2STAR_MAP, RE_T2STAR, "T2* map"), (Role.T2_MAP, RE_T2MAP, "T2 map"),
                                (Role.T1_MAP, RE_T1, "T1 map")):
        word = e.named(pattern)
        if word:
            return role, f"{what} (ImageType {shown}, name '{word}')"
    return Role.OTHER, f"parametric map of an unstated quantity (ImageType {shown})"


def _venc(e: Evidence) -> str | None:
    m = re.search(r"_v(\d+)(in|ip|rl|lr|ap|pa|fh|hf|through)?", e.seq)
    return f"VENC {m.group(1)} cm/s in SequenceName '{e.seq}'" if m else None


def _by_flow_tags(s: Series, e: Evidence) -> Decision | None:
    if s.phase_contrast:
        return Role.FLOW, "phase contrast (PhaseContrast YES)"
    if "FLOW_ENCODED" in e.contrast:
        return Role.FLOW, "phase contrast (AcquisitionContrast FLOW_ENCODED)"
    hit = sorted(VELOCITY_TYPES & e.itype)
    if hit:
        return Role.FLOW, f"phase contrast (ImageType {hit[0]})"
    venc = _venc(e)
    if venc:
        part = " phase" if PHASE_TYPES & e.itype else (" magnitude" if MAGNITUDE_TYPES & e.itype else "")
        return Role.FLOW, f"phase contrast{part} ({venc})"
    return None


def _stress_rest(e: Evidence) -> str:
    if "STRESS" in e.itype:
        return "stress, FrameType STRESS"
    if "REST" in e.itype:
        return "rest, FrameType REST"
    stress = e.named(RE_STRESS)
    if stress:
        return f"stress, name '{stress}'"
    rest = e.named(RE_REST)
    return f"rest, name '{rest}'" if rest else ""


def _by_frame_contrast(s: Series, e: Evidence) -> Decision | None:
    """Enhanced MR names the acquisition's contrast and flavour per frame (AcquisitionContrast, FrameType value 3)."""
    if "PERFUSION" in e.contrast or "PERFUSION" in e.itype:
        src = "AcquisitionContrast PERFUSION" if "PERFUSION" in e.contrast else "FrameType PERFUSION"
        return Role.PERFUSION, f"perfusion ({_with(src, _stress_rest(e))}){_dynamics_text(e)}"
    if "TAGGING" in e.contrast or "TAGGING" in e.itype or e.flags.get("Tagging") in ("GRID", "LINE"):
        src = f"Tagging {e.flags['Tagging']}" if e.flags.get("Tagging") in ("GRID", "LINE") else "TAGGING frame type"
        return Role.TAGGING, f"myocardial tagging ({src})"
    if "LOCALIZER" in e.itype:
        return Role.LOCALIZER, "localizer (ImageType LOCALIZER)"
    if {"ANGIO", "TOF"} & e.itype or "TOF" in e.contrast:
        return Role.ANGIO, "angiography (ANGIO / TOF frame type)"
    if "STIR" in e.contrast or "STIR" in e.itype:
        return Role.T2W, "T2-weighted STIR (AcquisitionContrast STIR)"
    return None


def _dynamics_text(e: Evidence) -> str:
    tm = _perf_timing(e)
    if tm is None:
        return ""
    n, t = tm
    if np.isnan(t.span_ms):
        return f": {n} dynamics ({t.axis}) at {e.n_pos} position{'s' if e.n_pos != 1 else ''}"
    return (f": {n} dynamics over {t.span_ms / 1000:.0f} s at {e.n_pos} position{'s' if e.n_pos != 1 else ''} "
            f"({t.axis}, {t.step_ms:.0f} ms apart)")


def _perf_timing(e: Evidence) -> tuple[int, _Timing] | None:
    """The time series at the fullest position (dynamics and its timing), or None."""
    best: _Timing | None = None
    for g in e.groups:
        t = _timing(g, e.rr_or_default)
        if t is not None and (best is None or t.n > best.n):
            best = t
    return (best.n, best) if best is not None else None


def _by_dynamics(s: Series, e: Evidence) -> Decision | None:
    """First-pass perfusion from timing alone: many dynamics about a heartbeat apart over tens of seconds at a few
    positions, one inversion or saturation time throughout (MOLLI images are also heartbeats apart, but at several
    inversion times)."""
    if len(e.max_tis) > 1 or e.n_pos > 6:
        return None
    tm = _perf_timing(e)
    if tm is None:
        return None
    n, t = tm
    if n < PERF_MIN_DYNAMICS or np.isnan(t.span_ms) or t.span_ms < PERF_MIN_SPAN_MS or t.step_ms < PERF_MIN_STEP_MS:
        return None
    word = e.named(RE_PERF)
    if word:
        return _by_name_perf(s, e, word)
    if "IR" in e.scanning:
        return None  # an inversion-recovery run: repeated LGE averages, not a first pass
    prep = e.saturation()
    prep_text = f"; {prep}" if prep else ""
    return Role.PERFUSION, (f"perfusion: {n} dynamics over {t.span_ms / 1000:.0f} s at {e.n_pos} "
                            f"position{'s' if e.n_pos != 1 else ''} ({t.axis}, {t.step_ms:.0f} ms apart: about one per "
                            f"heartbeat, not a cine){prep_text}")


# ---------------------------------------------------------------------------------------------------
# Stage 3: names, each checked against what its type implies


def _map_name_end(s: Series) -> str | None:
    for name in (s.description, s.protocol):
        m = _match(RE_MAP_END, name.lower())
        if m:
            return m
    return None


def _moco(e: Evidence) -> str:
    if "MOCO" in e.itype:
        return "motion-corrected, ImageType MOCO"
    return "motion-corrected, name 'moco'" if e.named(rf"{_B}moco{_E}") else ""


def _by_name_t1(s: Series, e: Evidence, word: str) -> Decision:
    """A T1-mapping name: raw images when a position holds several inversion times (or several images and no map
    word ends the name), else a computed map (one image per position)."""
    state = _contrast_state(s, e)
    label = _with(f"name '{word}'", state, _moco(e))
    tis = e.max_tis
    if len(tis) >= 3:
        return Role.T1_MAPPING, f"T1-mapping images ({label}): {_fmt_list(tis)} inversion times at one position"
    end = _map_name_end(s)
    if e.images_per_position >= 3 and not end:
        return Role.T1_MAPPING, f"T1-mapping images ({label}): {e.images_per_position} images at one position"
    how = f"'{end}' ends the name" if end else "one image per position"
    if e.named(rf"{_B}ecv{_E}"):
        return Role.T1_MAP, f"ECV map (name '{word}', {how})"
    return Role.T1_MAP, f"T1 map ({_with(f'name {word!r}, {how}', state)})"


def _by_name_t2(role_raw: str, role_map: str, what: str) -> Callable[[Series, Evidence, str], Decision]:
    def decide(s: Series, e: Evidence, word: str) -> Decision:
        tes = e.max_tes
        if len(tes) >= 3:
            return role_raw, f"{what} images (name '{word}'): {_fmt_list(tes)} echo times at one position"
        end = _map_name_end(s)
        if e.images_per_position >= 3 and not end:
            return role_raw, f"{what} images (name '{word}'): {e.images_per_position} images at one position"
        how = f"'{end}' ends the name" if end else "one image per position"
        return role_map, f"{what} map (name '{word}', {how})"

    return decide


def _by_name_perf(s: Series, e: Evidence, word: str) -> Decision:
    aif = "arterial-input-function (dual-sequence) companion" if e.named(rf"{_B}aif{_E}") else ""
    label = _with(f"name '{word}'", aif, _stress_rest(e), _moco(e))
    return Role.PERFUSION, f"perfusion ({label}){_dynamics_text(e)}"


def _by_name_flow(s: Series, e: Evidence, word: str) -> Decision:
    part = ""
    if PHASE_TYPES & e.itype or "PHASE" in e.components:
        part = "phase, ImageType P"
    elif MAGNITUDE_TYPES & e.itype:
        part = "magnitude, ImageType M"
    venc = e.named(rf"{_B}v[_ ]?=[_ ]?\d{{2,3}}|{_B}venc[_ ]?\d+")
    return Role.FLOW, f"phase-contrast flow ({_with(f'name {word!r}', venc or '', part)})"


def _lge_kind_text(s: Series, e: Evidence) -> str:
    kind, why = lge_image_kind(s)
    parts = []
    if kind == "psir":
        parts.append(f"phase-sensitive (PSIR) real image ({why})")
    elif kind == "pair":
        parts.append(f"PSIR pair in one series ({why})")
    elif kind == "magnitude" and why:
        parts.append(f"magnitude image ({why})")
    if s.mr_acquisition_type == "3D" or e.named(rf"{_B}3d"):
        parts.append("3D")
    if e.named(rf"single[_ \-]?shot|{_B}ssh?(?:mde)?{_E}|{_B}ss[_ \-]|sshmde"):
        parts.append("single-shot")
    if "MOCO" in e.itype or e.named(rf"{_B}moco{_E}"):
        parts.append("motion-corrected")
    if e.named(rf"dark[_ \-]?blood|black[_ \-]?blood|{_B}db{_E}|{_B}bb{_E}") or e.flags.get("BloodSignalNulling") == "YES":
        parts.append("dark-blood")
    return ("; " + ", ".join(parts)) if parts else ""


def _by_name_lge(s: Series, e: Evidence, word: str) -> Decision | None:
    if len(e.max_tis) >= 3:
        return None  # several inversion times at one position: a TI scout or T1 mapping, whatever the name
    why = [f"name '{word}'"]
    ir = e.ir()
    if ir:
        why.append(ir)
    return Role.LGE, f"LGE: inversion recovery, one image per position ({', '.join(why)}){_lge_kind_text(s, e)}"


def _by_name_t2w(s: Series, e: Evidence, word: str) -> Decision:
    t1 = e.named(RE_T1_WEIGHTED)
    if t1:
        return Role.OTHER, f"T1-weighted spin echo / black blood (name '{t1}'), not T2-weighted"
    return Role.T2W, f"T2-weighted (name '{word}')"


def _by_name_cine(s: Series, e: Evidence, word: str) -> Decision | None:
    kind = _cine_kind(e, word)
    label = f"name '{word}'" + (f"; {kind}" if kind else "")
    if e.n_phases >= CINE_MIN_PHASES and _has_reliable_timing(s) and not e.ir():
        return Role.CINE, f"cine ({label}): {_phase_text(s, e)}, no inversion recovery"
    rt = _realtime(e)
    if rt:
        return Role.CINE, f"real-time cine ({label}): {rt}"
    return None  # named like a cine without cine timing: the tags decide


def _cine_kind(e: Evidence, word: str | None = None) -> str:
    """bSSFP or spoiled gradient echo, with its evidence ('' when neither is told)."""
    ss = e.named(RE_BSSFP)
    if ss:
        return "bSSFP" if ss == word else f"bSSFP, name '{ss}'"
    if e.flags.get("SteadyStatePulseSequence") == "FREE_PRECESSION":
        return "bSSFP, SteadyStatePulseSequence FREE_PRECESSION"
    sp = e.named(RE_SPOILED)
    if sp:
        return "spoiled gradient echo" if sp == word else f"spoiled gradient echo, name '{sp}'"
    if "SP" in e.variant:
        return "spoiled gradient echo, SequenceVariant SP"
    return ""


def _realtime(e: Evidence) -> str | None:
    """Real-time cine: many frames a few tens of ms apart at a position, spanning more than a heartbeat."""
    for g in e.groups:
        t = _timing(g, e.rr_or_default)
        tt = [f.trigger_time for f in g if f.trigger_time is not None]
        if t is None and tt:
            continue
        if t is not None and t.n >= REALTIME_MIN_FRAMES and not np.isnan(t.step_ms) and t.step_ms <= REALTIME_MAX_STEP_MS:
            return f"{t.n} frames {t.step_ms:.0f} ms apart over {t.span_ms / 1000:.1f} s at one position ({t.axis})"
    return None


NameRule = tuple[str, Callable[[Series, Evidence, str], Decision | None]]


def _fixed(role: str, what: str) -> Callable[[Series, Evidence, str], Decision]:
    return lambda s, e, word: (role, f"{what} (name '{word}')")


# Order settles overlaps: 'CINE_IR' is a TI scout before a cine, 'Tags_Grid_T2_FGRE' tagging before T2-weighted,
# '3-pl_Loc_Fiesta' a localizer before a cine, 'DIXON_Post_Delay' a Dixon image before an LGE ('delay'),
# 'REST_PERFUSION_(AERA_REF.)' perfusion before a localizer ('REF'), 'oAX_Coronary_T2_prep' a whole-heart volume
# before T2-weighted ('T2').
NAME_RULES: list[NameRule] = [
    (RE_DIXON, _fixed(Role.OTHER, "Dixon fat/water image")),
    (RE_DERIVED_NAME, _fixed(Role.DERIVED, "derived result or screenshot")),
    (RE_TI_SCOUT, _fixed(Role.TI_SCOUT, "TI scout / Look-Locker cine IR")),
    (RE_T2STAR, _by_name_t2(Role.T2STAR, Role.T2STAR_MAP, "T2*")),
    (RE_T1, _by_name_t1),
    (RE_T2MAP, _by_name_t2(Role.T2_MAPPING, Role.T2_MAP, "T2-mapping")),
    (RE_PERF, _by_name_perf),
    (RE_FLOW, _by_name_flow),
    (RE_TAGGING, _fixed(Role.TAGGING, "myocardial tagging")),
    (RE_LGE, _by_name_lge),
    (RE_LOCALIZER, _fixed(Role.LOCALIZER, "localizer / planning")),
    (RE_ANGIO, _fixed(Role.ANGIO, "angiography / whole-heart volume")),
    (RE_T2W, _by_name_t2w),
    (RE_CINE, _by_name_cine),
]


def _by_name(s: Series, e: Evidence) -> Decision | None:
    for pattern, decide in NAME_RULES:
        word = e.named(pattern)
        if word:
            d = decide(s, e, word)
            if d is not None:
                return d
    return None


# ---------------------------------------------------------------------------------------------------
# Stage 4: tags, when the names are silent


def _by_tags(s: Series, e: Evidence) -> Decision:
    if not s.parallel:
        return Role.LOCALIZER, "localizer (non-parallel planes in one series)"
    tis = e.max_tis
    if len(tis) >= 3:
        span = tis[-1] - tis[0]
        if span > T1MAP_MIN_SPAN_RR * e.rr_or_default and len(tis) <= T1MAP_MAX_TIMES:
            moco = " (motion-corrected, ImageType MOCO)" if "MOCO" in e.itype else ""
            return Role.T1_MAPPING, (f"T1-mapping images{moco}: {_fmt_list(tis)} inversion times at one position, "
                                     f"spread over {span / e.rr_or_default:.1f} RR intervals (MOLLI-type Look-Locker)")
        return Role.TI_SCOUT, (f"TI scout / Look-Locker: {_fmt_list(tis)} inversion times at one position within "
                               f"{max(span, 1.0) / e.rr_or_default:.1f} RR intervals")
    multiphase = e.n_phases > 1 and _has_reliable_timing(s)
    if (PHASE_TYPES & e.itype or "PHASE" in e.components) and e.n_phases >= CINE_MIN_PHASES and multiphase:
        return Role.FLOW, f"phase image (ImageType P) over the cardiac cycle: {_phase_text(s, e)}"
    ir = e.ir()
    if multiphase and ir and e.n_phases >= 3:
        return Role.TI_SCOUT, f"TI scout / cine IR: {_phase_text(s, e)} with inversion recovery ({ir})"
    tes = e.max_tes
    if len(tes) >= 3:
        spin = "SE" in e.scanning or e.flags.get("T2Preparation") == "YES" or e.flags.get("EchoPulseSequence") == "SPIN"
        if spin or tes[-1] > T2STAR_MAX_TE_MS:
            src = "spin echo" if "SE" in e.scanning else ("T2 preparation" if spin else f"TE up to {tes[-1]:.0f} ms")
            return Role.T2_MAPPING, f"T2-mapping images: {_fmt_list(tes)} echo times at one position ({src})"
        return Role.T2STAR, f"T2* images: {_fmt_list(tes)} gradient-echo times at one position"
    if multiphase:
        if e.n_phases < CINE_MIN_PHASES:
            return Role.OTHER, f"only {e.n_phases} phases per position (too few for a cine)"
        kind = _cine_kind(e)
        return Role.CINE, f"cine{f' ({kind})' if kind else ''}: {_phase_text(s, e)}, no inversion recovery"
    rt = _realtime(e)
    if rt and not ir:
        kind = _cine_kind(e)
        return Role.CINE, f"real-time cine{f' ({kind})' if kind else ''}: {rt}"
    if e.flags.get("AngioFlag") == "Y":
        return Role.ANGIO, "angiography (AngioFlag Y)"
    gated = bool(_trigger_times(s)) or bool({"CG", "PPG"} & set(s.scan_options))
    if s.mr_acquisition_type == "3D" and e.n_pos >= ANGIO_MIN_PARTITIONS and gated and not ir:
        return Role.ANGIO, (f"3D whole-heart / angiography volume: MRAcquisitionType 3D, {e.n_pos} partitions, "
                            "cardiac-gated, no inversion recovery")
    if "SE" in e.scanning and "EP" not in e.scanning:
        return _by_spin_echo(e, ir)
    if ir:
        return _by_inversion(s, e, ir)
    if "DERIVED" in e.itype:
        return Role.DERIVED, "derived image (ImageType DERIVED) without acquisition evidence"
    if PHASE_TYPES & e.itype:
        return Role.OTHER, "phase image (ImageType P) without velocity encoding or cardiac phases (a field map?)"
    if e.named(RE_CINE):
        if e.images_per_position >= CINE_MIN_PHASES:
            # The images of a cine without the header that orders them in the cardiac cycle: not taken as a cine
            # (its phases would be guessed), and said so rather than called single-phase.
            return Role.OTHER, (f"named like a cine ('{e.named(RE_CINE)}') with {e.images_per_position} images at one "
                                "position, but no usable cardiac timing (TriggerTime missing, not a number or the "
                                "same in every image)")
        return Role.OTHER, f"single-phase image named like a cine ('{e.named(RE_CINE)}'): incomplete cine?"
    return Role.OTHER, "single-phase MR without inversion recovery (not cine, not LGE)"


def _by_spin_echo(e: Evidence, ir: str | None) -> Decision:
    te = e.max_tes[-1] if e.max_tes else None
    if ir and (not e.max_tis or e.max_tis[0] <= STIR_MAX_TI_MS):
        return Role.T2W, f"STIR: spin echo (ScanningSequence SE) with a short inversion ({ir})"
    if te is not None and te >= T2W_MIN_TE_MS:
        return Role.T2W, f"T2-weighted spin echo (ScanningSequence SE, EchoTime {te:.0f} ms)"
    what = f"EchoTime {te:.0f} ms" if te is not None else "no EchoTime"
    return Role.OTHER, f"spin echo with short echo time (ScanningSequence SE, {what}): T1- or PD-weighted"


def _by_inversion(s: Series, e: Evidence, ir: str) -> Decision:
    ti = e.max_tis[0] if e.max_tis else None
    if ti is not None and not LGE_TI_RANGE_MS[0] <= ti <= LGE_TI_RANGE_MS[1]:
        return Role.OTHER, f"inversion recovery with TI {ti:.0f} ms (outside the {LGE_TI_RANGE_MS[0]:.0f}-" \
                           f"{LGE_TI_RANGE_MS[1]:.0f} ms an LGE nulls myocardium with)"
    reps = e.images_per_position
    rep_text = f", {reps} repeated images per position (averaging)" if reps > 1 and lge_image_kind(s)[0] != "pair" else ""
    return Role.LGE, f"LGE: inversion recovery, one inversion time per position ({ir}){rep_text}{_lge_kind_text(s, e)}"


# ---------------------------------------------------------------------------------------------------
# PSIR: the phase-sensitive real image and its magnitude companion


def frame_is_psir_real(f: Frame) -> bool:
    """A phase-sensitive (real) image: ImageType value R / REAL / PSIR, or Enhanced ComplexImageComponent REAL."""
    return f.complex_component == "REAL" or bool(REAL_TYPES & set(f.image_type))


def _frame_is_magnitude(f: Frame) -> bool:
    return f.complex_component == "MAGNITUDE" or bool(MAGNITUDE_TYPES & set(f.image_type))


_RE_MAG_NAME = r"(?:^|[^a-z])(mag)(?:[^a-z]|$)"
_RE_PSIR_NAME = r"(psir)|(?:^|[^a-z])(ps):"


def lge_image_kind(s: Series) -> tuple[str | None, str]:
    """Which image of an inversion-recovery acquisition the series holds: ``"pair"`` (magnitude and real images in
    one series), ``"magnitude"``, ``"psir"`` (the phase-sensitive real image) or None (not told), with the evidence.

    The frames decide when they say both; otherwise the name's MAG / PSIR (or GE's ``MAG:`` / ``PS:``) token, then
    the frames' image type."""
    n_real = sum(1 for f in s.frames if frame_is_psir_real(f))
    n_mag = sum(1 for f in s.frames if _frame_is_magnitude(f))
    if n_real and n_mag:
        src = "ComplexImageComponent MAGNITUDE and REAL" if any(f.complex_component for f in s.frames) else "ImageType M and R"
        return "pair", f"{n_mag} magnitude and {n_real} real images, {src}"
    name = " ".join([s.description, s.protocol]).lower()
    m = re.search(_RE_MAG_NAME, name)
    if m:
        return "magnitude", "name 'MAG'"
    p = re.search(_RE_PSIR_NAME, name)
    if p:
        return "psir", f"name '{(p.group(1) or p.group(2) + ':').upper()}'"
    if n_real:
        return "psir", "ComplexImageComponent REAL" if any(f.complex_component for f in s.frames) else "ImageType R"
    return ("magnitude", "") if n_mag else (None, "")


# ---------------------------------------------------------------------------------------------------
# The decision


RULES: list[Callable[[Series, Evidence], Decision | None]] = [
    _by_reformat,
    _by_map_type,
    _by_flow_tags,
    _by_frame_contrast,
    _by_dynamics,
    _by_name,
]


def classify_role(s: Series) -> tuple[str, str]:
    """(role, reason): the series type (a ``Role`` value) and the evidence that decided it."""
    kind = _object_kind(s)
    if kind is not None:
        return kind
    e = evidence(s)
    for rule in RULES:
        d = rule(s, e)
        if d is not None:
            return d
    return _by_tags(s, e)


def classify_view(s: Series, sax_normal: np.ndarray | None = None) -> tuple[str | None, str]:
    """(view, reason) for a cine or LGE series. ``sax_normal`` is the study's short-axis normal, if known."""
    view, why = view_from_text(" ".join([s.description, s.protocol]).lower())
    # Kaggle DSB2 folder-style names ('sax_5', '4ch_12') sometimes live only in the file path.
    if view is None and s.frames:
        parent = s.frames[0].ref.path.replace("\\", "/").split("/")
        for part in reversed(parent[:-1][-2:]):
            v, w = view_from_text(part)
            if v:
                view, why = v, f"folder name matches {v} ('{part}')"
                break
    n_pos = s.n_positions
    if view is not None:
        if view in ("2CH", "3CH", "4CH", "LVOT", "LAX") and n_pos >= 3:
            # Several parallel long-axis positions happen (radial LAX stacks are rare); trust the name.
            why += f"; {n_pos} positions"
        return view, why
    if n_pos >= 3 and s.parallel:
        return "SAX", f"no view in the name; {n_pos} parallel positions (a short-axis stack)"
    n = reference_normal(s.frames)
    if n is not None and sax_normal is not None:
        ang = angle_between_deg(n, sax_normal)
        if ang > 60:
            return "LAX", f"no view in the name; plane {ang:.0f} deg from the short axis (long axis, plane unknown)"
        if ang < 10:
            return "SAX", f"no view in the name; parallel to the short-axis stack ({ang:.0f} deg)"
        return None, f"no view in the name; plane {ang:.0f} deg from the short axis (oblique, unknown)"
    return None, "no view in the name and no short-axis stack to compare the plane with"


def _same_acquisition(a: Series, b: Series) -> bool:
    """Two series reconstructed from one acquisition: the same planes, trigger times and acquisition times."""
    def key(s: Series) -> set[tuple]:
        return {(tuple(np.round(f.position, 1)) if f.position is not None else None,
                 tuple(np.round(f.orientation, 3)) if f.orientation is not None else None,
                 round(f.trigger_time, 1) if f.trigger_time is not None else None,
                 round(f.acquisition_time, 2) if f.acquisition_time is not None else None) for f in s.frames}
    return bool(a.frames) and key(a) == key(b)


def _same_positions(a: Series, b: Series) -> bool:
    def key(s: Series) -> set[tuple]:
        return {tuple(np.round(f.position, 1)) for f in s.frames if f.position is not None}
    return bool(key(a)) and key(a) == key(b)


def _study_companions(series: Sequence[Series]) -> None:
    """Study-level evidence: the magnitude images of a phase-contrast acquisition carry no velocity tag when names
    are empty (they look like a cine at one position); they are recognised as the series that shares the phase
    series' planes, trigger times and acquisition times. PSIR pairs stored as two series are named in both reasons."""
    flows = [s for s in series if s.role == Role.FLOW]
    for s in series:
        if s.role != Role.CINE or s.description or s.protocol or s.n_positions != 1:
            continue
        mate = next((f for f in flows if _same_acquisition(s, f)), None)
        if mate is not None:
            s.role = Role.FLOW
            s.reason = (f"phase-contrast magnitude: the same plane, trigger times and acquisition times as the "
                        f"phase series #{mate.number}")
    lge = [s for s in series if s.role == Role.LGE]
    kinds = {s.uid: lge_image_kind(s)[0] for s in lge}
    for s in lge:
        if kinds[s.uid] != "psir":
            continue
        mate = next((m for m in lge if kinds[m.uid] == "magnitude" and _same_positions(s, m)), None)
        if mate is not None:
            s.reason += f"; PSIR pair with magnitude series #{mate.number}"
            mate.reason += f"; PSIR pair with phase-sensitive series #{s.number}"


def classify_study_series(series: Sequence[Series]) -> None:
    """Set role/view/reasons on every series of one study (in place).

    Roles first, then the evidence that needs the whole study (flow magnitude companions, PSIR pairs); the
    short-axis normal (from the cine SAX series, else any multi-position stack) then lets single-slice series
    without a view name be told apart by angle. Views are given to the model's roles only.
    """
    for s in series:
        s.role, s.reason = classify_role(s)
        s.view, s.view_reason = None, ""
    _study_companions(series)
    model = [s for s in series if s.role in MODEL_ROLES]
    named_sax = [s for s in model if view_from_text(" ".join([s.description, s.protocol]).lower())[0] == "SAX"]
    stacks = [s for s in model if s.n_positions >= 3]
    ref = next((reference_normal(s.frames) for s in named_sax + stacks if reference_normal(s.frames) is not None), None)
    for s in model:
        s.view, s.view_reason = classify_view(s, ref)
