"""Series -> role (cine / LGE / other) and view (SAX, 2CH, 3CH, 4CH, LVOT, LAX), each with its reason.

No single tag decides (DICOM.md): a cine is several trigger times per position within the RR interval and
no inversion recovery; an LGE is inversion recovery, one image per position; look-alikes (TI scouts, maps,
flow, localizers, derived images) are recognised first and set aside with the reason recorded.
Views come from the description in the vendor vocabularies, then from geometry (a short-axis stack is many
parallel positions; long-axis planes are roughly perpendicular to it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from cmrdx.dicom.geometry import angle_between_deg, reference_normal
from cmrdx.dicom.series import MR_SOP_CLASSES, PRESENTATION_STATE_PREFIX, SECONDARY_CAPTURE_PREFIX, SR_PREFIX, Series

# Plausible TriggerTime ceiling: Philips sometimes fills TriggerTime on non-cardiac scans (DICOM.md).
MAX_TRIGGER_MS = 2000.0


def _text(s: Series) -> str:
    return " ".join([s.description, s.protocol]).lower()


def _has(pattern: str, text: str) -> bool:
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


# --- vocabularies (descriptions / protocol names), matched case-insensitively ---------------------------
# Word boundaries in DICOM names are '_', '-', ' ', digits: use lookarounds instead of \b.
_B = r"(?<![a-z])"
_E = r"(?![a-z])"
RE_TI_SCOUT = rf"ti[_ \-]?scout|{_B}cine[_ \-]?ir{_E}|look[_ \-]?locker|{_B}ti[_ \-]?(?:find|map{_E})|inversion[_ \-]?scout"
RE_MAP = rf"molli|shmolli|smart1|t1[_ \-]?map|t2[_ \-]?map|t2\*?[_ \-]?map|{_B}t1map|{_B}t2map|mapping|{_B}ecv{_E}|saturation[_ \-]?recovery[_ \-]?map"
RE_FLOW = rf"{_B}flow{_E}|fastpc|{_B}pc[_ \-]|phase[_ \-]?contrast|{_B}venc|{_B}qflow|{_B}fl2d.*_v\d+|mfsplit"
RE_LOCALIZER = rf"{_B}loc(?:ali[sz]er)?{_E}|survey|scout|3[_ \-]?pl(?:ane)?[_ \-]?loc|{_B}define|{_B}plan(?:ning|scan)?{_E}|{_B}tri[_ \-]?pilot|{_B}pilot|{_B}haste[_ \-]?loc"
RE_DERIVED_NAME = rf"inlinevf|{_B}mpr{_E}|{_B}mip{_E}|projection|{_B}report|screenshot|{_B}evaluation"
RE_LGE = (
    rf"{_B}lge{_E}|{_B}de{_E}|delay|{_B}del[_ \-]?enh|late[_ \-]?(?:gad|enh)|{_B}psir{_E}|{_B}mde{_E}|{_B}3d[_ \-]?mde|"
    rf"ir[_ \-]?tfe|irp[_ \-]?fgre|{_B}ti[_ =]?\d{{3}}|{_B}mag[_ \-]|{_B}ps[_ \-]|viability|scar"
)
RE_CINE = rf"cine|fiesta|{_B}b[_ \-]?tfe|{_B}sbtfe|truefisp|{_B}trufi|{_B}tfi2d|{_B}ssfp|{_B}bssfp|balanced"

# View vocabulary: order matters (LVOT before 3CH/LAX; 3CH before LAX because of "VLAX_(LV3CH)").
VIEW_PATTERNS: list[tuple[str, str]] = [
    ("LVOT", rf"{_B}lvot|{_B}lv[_ \-]?outflow|{_B}outflow"),
    ("3CH", rf"3[_ \-]?ch|3[_ \-]?cn|three[_ \-]?ch|{_B}lv3ch|{_B}3c{_E}|{_B}apical[_ \-]?long"),
    ("2CH", rf"2[_ \-]?ch|2[_ \-]?cn|two[_ \-]?ch|{_B}vla{_E}|{_B}vlax{_E}|{_B}2c{_E}"),
    ("4CH", rf"4[_ \-]?ch|4[_ \-]?cn|four[_ \-]?ch|{_B}hla{_E}|{_B}hlax{_E}|{_B}4c{_E}"),
    ("SAX", rf"{_B}sax|{_B}sa{_E}|short[_ \-]?ax|{_B}sa[_ \-]?(?:stack|cine)|{_B}sa\d|_sa{_E}|{_B}sh?ort"),
    ("LAX", rf"{_B}lax{_E}|long[_ \-]?ax|{_B}la{_E}"),
]


def view_from_text(text: str) -> tuple[str | None, str]:
    """View from a description / protocol name, with the matched words as the reason."""
    for view, pat in VIEW_PATTERNS:
        m = re.search(pat, text, flags=re.IGNORECASE)
        if m:
            return view, f"name matches {view} ('{m.group(0)}')"
    return None, "no view in the name"


def _trigger_times(s: Series) -> list[float]:
    return [f.trigger_time for f in s.frames if f.trigger_time is not None]


def _has_reliable_timing(s: Series) -> bool:
    tt = _trigger_times(s)
    if not tt:
        return s.n_phases > 1 and any(f.temporal_index for f in s.frames)
    if max(tt) > MAX_TRIGGER_MS:
        return False
    return not (s.rr_interval and max(tt) > 1.2 * s.rr_interval)


def _is_ir(s: Series) -> bool:
    if "IR" in s.scanning_sequence:
        return True
    ti = s.inversion_time
    return ti is not None and 50.0 <= ti <= 1200.0


def classify_role(s: Series) -> tuple[str, str]:
    """(role, reason). role is 'cine', 'lge' or 'other'."""
    text = _text(s)
    seqname = s.sequence_name.lower()
    itype = {t.upper() for t in s.image_type}
    sop = s.sop_class_uid
    if s.modality != "MR" and sop not in MR_SOP_CLASSES:
        if sop.startswith(SR_PREFIX) or s.modality == "SR":
            return "other", "structured report (SR), not an image"
        if sop.startswith(PRESENTATION_STATE_PREFIX) or s.modality == "PR":
            return "other", "presentation state, not an image"
        if sop.startswith(SECONDARY_CAPTURE_PREFIX):
            return "other", "secondary capture, not an acquired image"
        return "other", f"non-MR ({s.modality or 'no modality'})"
    if sop.startswith(SECONDARY_CAPTURE_PREFIX):
        return "other", "secondary capture, not an acquired image"
    if sop not in MR_SOP_CLASSES:
        return "other", f"not an MR image object (SOP class {sop})"
    if not s.frames:
        return "other", "no image frames"
    n_pos, n_ph = s.n_positions, s.n_phases
    multiphase = n_ph > 1 and _has_reliable_timing(s)

    # Look-alikes first, most specific first.
    if _has(RE_TI_SCOUT, text) or (multiphase and _is_ir(s) and not _has(RE_CINE, text)):
        return "other", "TI scout / cine IR (multi-phase inversion recovery)"
    if {"T1 MAP", "T2 MAP", "T2* MAP", "MAP", "T1MAP", "T2MAP"} & itype or _has(RE_MAP, text) or "tfi2d1_72" in seqname:
        return "other", "T1/T2 map"
    if (
        s.phase_contrast
        or _has(RE_FLOW, text)
        or re.search(r"_v\d+(in|ip|through)?", seqname)
        or "MFSPLIT" in itype
        or ("P" in itype and "M" not in itype and not _has(RE_LGE, text))
        or "PHASE" in itype
    ):
        return "other", "flow / phase contrast"
    if _has(RE_LOCALIZER, text) or "tfi2d1_192" in seqname:
        return "other", "localizer"
    if not s.parallel:
        return "other", "localizer (non-parallel planes in one series)"
    if "PROJECTION IMAGE" in itype or "PROJECTION" in itype or "MIP" in itype or "MPR" in itype:
        return "other", "projection / reformatted image"
    derived = "DERIVED" in itype or "SECONDARY" in itype or _has(RE_DERIVED_NAME, text)
    if derived and not _has(RE_LGE, text):
        return "other", "derived or secondary image"

    if multiphase:
        if n_ph < 5:
            return "other", f"only {n_ph} phases per position (too few for a cine)"
        return "cine", f"{n_ph} phases over the RR interval at {n_pos} position(s), no inversion recovery"
    lge_name = _has(RE_LGE, text)
    if _is_ir(s) or lge_name:
        why = []
        if "IR" in s.scanning_sequence:
            why.append("ScanningSequence IR")
        if s.inversion_time:
            why.append(f"TI {s.inversion_time:.0f} ms")
        if lge_name:
            why.append("LGE name")
        if s.inversion_time and s.inversion_time > 700 and not lge_name:
            return "other", f"inversion recovery with TI {s.inversion_time:.0f} ms (not an LGE)"
        return "lge", "inversion recovery, one image per position (" + ", ".join(why) + ")"
    if "trigger" in text or n_ph == 1 and _has(RE_CINE, text):
        return "other", "single-phase image named like a cine (incomplete cine?)"
    return "other", "single-phase MR without inversion recovery (not cine, not LGE)"


def classify_view(s: Series, sax_normal: np.ndarray | None = None) -> tuple[str | None, str]:
    """(view, reason) for a cine or LGE series. ``sax_normal`` is the study's short-axis normal, if known."""
    view, why = view_from_text(_text(s))
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


def classify_study_series(series: Sequence[Series]) -> None:
    """Set role/view/reasons on every series of one study (in place).

    Roles first; the short-axis normal (from the cine SAX series, else any multi-position stack) then
    lets single-slice series without a view name be told apart by angle.
    """
    for s in series:
        s.role, s.reason = classify_role(s)
        s.view, s.view_reason = None, ""
    named_sax = [s for s in series if s.role in ("cine", "lge") and view_from_text(_text(s))[0] == "SAX"]
    stacks = [s for s in series if s.role in ("cine", "lge") and s.n_positions >= 3]
    ref = next((reference_normal(s.frames) for s in named_sax + stacks if reference_normal(s.frames) is not None), None)
    for s in series:
        if s.role in ("cine", "lge"):
            s.view, s.view_reason = classify_view(s, ref)
