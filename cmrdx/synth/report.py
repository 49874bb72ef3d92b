"""CMR report text from a phantom's findings: varied phrasing, synonyms, negations, severity words, numbers.

Styles: ``TRAIN_STYLES`` are for training; ``HELDOUT_STYLES`` use their own vocabulary and layout so a benchmark
can test generalisation to wording a model never saw (exclude them from training with ``report_style``). The
randomised generator (``sample_params(variety=True)``) adds ``VARIETY_STYLES`` to the training styles and phrases
every style more widely (``report_variety``); its studies never draw a held-out style unless asked.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cmrdx.synth.report_variety import variety_report
from cmrdx.synth.wording import _SEV_ADJ, _SEV_ADV, _WALL_NAMES, _Pick, report_options  # noqa: F401

# the training styles' wording; bumped whenever their sentences change, so that a training cache of reports written
# before is re-worded (its videos do not depend on the wording). 2: every carrier word ("size", "fluid", "imaging",
# "dimensions", "EF") in both a finding's positive and its negated sentences; in wording 1 some stood only in negated
# ones, and a text tower learned them as signs of normality ("Pericardial fluid is present" scored effusion 0.31 AUC)
WORDING = 2
TRAIN_STYLES = ("narrative", "structured", "terse")
# The held-out style family: layouts and vocabulary no training style uses. A study gets one of them only when an
# archive or a caller asks for it (``report_style=`` / ``--report-style``); nothing draws them by default.
HELDOUT_STYLES = ("telegraphic", "dictated")
# Training styles the randomised generator (``sample_params(variety=True)``) adds to TRAIN_STYLES.
VARIETY_STYLES = ("bulleted", "quantitative", "brief")
VARIETY_TRAIN_STYLES = TRAIN_STYLES + VARIETY_STYLES
# Order matters: a style's index seeds its wording (the classic four keep theirs).
STYLES = TRAIN_STYLES + ("telegraphic",) + VARIETY_STYLES + ("dictated",)

def _sentences(p: Any, m: dict[str, float], pick: _Pick) -> dict[str, str]:
    """One sentence per finding (present or negated), training vocabulary."""
    f = p.findings
    adj = lambda s: pick(_SEV_ADJ[s])  # noqa: E731
    adv = lambda s: pick(_SEV_ADV[s])  # noqa: E731
    edv, ef = round(m["lv_edv_ml"]), round(m["lv_ef_pct"])
    redv, ref = round(m["rv_edv_ml"]), round(m["rv_ef_pct"])
    out: dict[str, str] = {}
    s = f["lv_dilation"]
    out["lv_dilation"] = (
        pick([f"The left ventricle is {adv(s)} dilated (LVEDV {edv} mL).", f"{adj(s).capitalize()} LV dilatation, EDV {edv} ml.",
              f"The left ventricle is {adv(s)} enlarged with an end-diastolic volume of {edv} mL.",
              # unqualified statements, as many reports make them (no grade, no number)
              "The left ventricle is dilated.", "Dilated left ventricle.", "LV cavity is enlarged.",
              f"Left ventricular size is {adv(s)} increased (LVEDV {edv} mL).", f"LV cavity size: {adj(s)} dilatation."])
        if s != "none" else
        pick([f"Normal left ventricular size (LVEDV {edv} mL).", "The left ventricle is not dilated.",
              "LV cavity size is within normal limits.", "No LV dilatation.", "The left ventricle is not enlarged."])
    )
    s = f["lv_dysfunction"]
    wma = ""
    if p.wall_motion and p.lge_territory:
        kinds = set(p.wall_motion.values())
        word = "akinesia" if kinds == {"akinetic"} else "hypokinesia"
        wma = f" with regional {word} of the {pick(_WALL_NAMES[p.lge_territory])}"
    out["lv_dysfunction"] = (
        pick([f"{adj(s).capitalize()} LV systolic dysfunction{wma}, LVEF {ef}%.",
              f"Left ventricular systolic function is {adv(s)} impaired{wma} (ejection fraction {ef}%).",
              f"{adv(s).capitalize()} reduced LV ejection fraction of {ef}%{wma}.",
              f"Reduced left ventricular systolic function{wma}.", f"Impaired LV systolic function{wma}.",
              f"There is {adj(s)} left ventricular systolic dysfunction{wma} (EF {ef}%)."])
        if s != "none" else
        pick([f"Normal LV systolic function (LVEF {ef}%){wma}.", f"Preserved left ventricular ejection fraction, {ef}%{wma}.",
              f"No LV systolic dysfunction{wma} (EF {ef}%).",
              f"Good biventricular systolic function{wma}, LVEF {ef}%." if f["rv_dysfunction"] == "none"
              else f"LV systolic function is normal{wma}, EF {ef}%."])
    )
    s = f["lv_hypertrophy"]
    mw = round(m["lv_max_wall_mm"])
    if s != "none":
        if p.hypertrophy_pattern == "septal":
            out["lv_hypertrophy"] = pick([f"{adj(s).capitalize()} asymmetric septal hypertrophy, maximal septal thickness {mw} mm.",
                                          f"There is {adj(s)} septal hypertrophy ({mw} mm).",
                                          "Asymmetric hypertrophy of the septum.", "The septum is thickened."])
        else:
            out["lv_hypertrophy"] = pick([f"{adj(s).capitalize()} concentric left ventricular hypertrophy, maximal wall thickness {mw} mm.",
                                          f"The LV walls are {adv(s)} thickened (up to {mw} mm), in keeping with LV hypertrophy.",
                                          "Concentric left ventricular hypertrophy.", "The LV myocardium is thickened.",
                                          f"Maximum LV wall thickness {mw} mm, in keeping with {adj(s)} LVH."])
    else:
        out["lv_hypertrophy"] = pick(["No left ventricular hypertrophy.", f"Normal LV wall thickness (maximum {mw} mm).",
                                      "No LVH.", "The LV walls are not thickened."])
    s = f["rv_dilation"]
    out["rv_dilation"] = (
        pick([f"The right ventricle is {adv(s)} dilated (RVEDV {redv} mL).", f"{adj(s).capitalize()} RV dilatation, RVEDV {redv} ml.",
              f"{adv(s).capitalize()} enlarged right ventricle.",
              "The right ventricle is dilated.", "Dilated right ventricle.", "RV cavity is enlarged.",
              f"Right ventricular size is {adv(s)} increased (RVEDV {redv} mL).", f"RV cavity size: {adj(s)} dilatation."])
        if s != "none" else
        pick(["Normal right ventricular size.", f"The right ventricle is not dilated (RVEDV {redv} mL).", "RV size normal.",
              "No RV dilatation.", "The right ventricle is not enlarged."])
    )
    s = f["rv_dysfunction"]
    out["rv_dysfunction"] = (
        pick([f"{adj(s).capitalize()} RV systolic dysfunction, RVEF {ref}%.",
              f"Right ventricular systolic function is {adv(s)} impaired (RVEF {ref}%).",
              "Reduced right ventricular systolic function.", "Impaired RV systolic function.",
              f"There is {adj(s)} right ventricular systolic dysfunction (EF {ref}%).", f"{adj(s).capitalize()} RV systolic impairment."])
        if s != "none" else
        pick([f"Normal RV systolic function (RVEF {ref}%).", "Preserved right ventricular function.",
              "No RV systolic impairment.", f"No right ventricular systolic dysfunction (EF {ref}%)."])
    )
    s = f["lge"]
    if s != "none":
        segs = ", ".join(str(x) for x in p.lge_segments[:6])
        pat = p.lge_pattern
        if pat == "subendocardial":
            out["lge"] = pick([f"{adj(s).capitalize()} subendocardial late gadolinium enhancement in the {pick(_WALL_NAMES[p.lge_territory])} "
                               f"(AHA segments {segs}), consistent with prior infarction; the myocardium remains viable.",
                               f"Subendocardial LGE in the {p.lge_territory} territory, ischaemic pattern, <50% transmurality.",
                               f"LGE imaging shows {adj(s)} subendocardial enhancement of the {pick(_WALL_NAMES[p.lge_territory])}."])
        elif pat == "transmural":
            out["lge"] = pick([f"Transmural late gadolinium enhancement of the {pick(_WALL_NAMES[p.lge_territory])} in keeping with "
                               f"a {adj(s)} completed infarct; non-viable segments {segs}.",
                               f"There is a {'large' if s == 'severe' else 'moderate-sized' if s == 'moderate' else 'small'} area of "
                               f"{p.lge_territory} scar with transmural enhancement.",
                               f"LGE imaging shows transmural enhancement of the {pick(_WALL_NAMES[p.lge_territory])}, "
                               "in keeping with infarction."])
        elif pat == "midwall":
            out["lge"] = pick(["Mid-wall linear enhancement of the septum, a non-ischaemic pattern.",
                               f"{adj(s).capitalize()} non-ischaemic mid-myocardial LGE stripe involving the septum.",
                               "There is evidence of mid-wall fibrosis of the septum on LGE imaging."])
        else:
            out["lge"] = pick(["Diffuse subendocardial late enhancement with difficulty nulling the myocardium, suggestive of "
                               "cardiac amyloidosis.", "Global subendocardial LGE, amyloid pattern.",
                               "LGE imaging shows diffuse myocardial enhancement, suggestive of amyloidosis."])
    else:
        out["lge"] = pick(["No late gadolinium enhancement.", "No LGE to suggest myocardial scar or fibrosis.",
                           "There is no myocardial late enhancement.", "No evidence of infarction or fibrosis on LGE imaging.",
                           "LGE imaging shows no myocardial enhancement."])
    s = f["aortic_dilation"]
    ao = round(m["aortic_root_mm"])
    out["aortic_dilation"] = (
        pick([f"The aortic root is {adv(s)} dilated, measuring {ao} mm.", f"{adj(s).capitalize()} aortic root dilatation ({ao} mm).",
              f"Ectatic aortic root ({ao} mm) and ascending aorta.",
              "The aortic root is dilated.", "Dilated aortic root.", "Aortic root dilatation.",
              f"Aortic root dimensions are {adv(s)} increased ({ao} mm).", f"{adj(s).capitalize()} dilatation of the aortic root."])
        if s != "none" else
        pick([f"Normal aortic root dimensions ({ao} mm).", "The aortic root is not dilated.", "Aortic root of normal calibre.",
              "No aortic root dilatation.", f"The aortic root and ascending aorta are not dilated ({ao} mm)."])
    )
    s = f["pericardial_effusion"]
    eff = round(m["effusion_mm"])
    out["pericardial_effusion"] = (
        pick([f"{adj(s).capitalize()} pericardial effusion measuring up to {eff} mm.", f"There is a {adj(s)} pericardial effusion.",
              f"There is a {'small' if s == 'mild' else 'moderate' if s == 'moderate' else 'large'} amount of pericardial "
              f"fluid ({eff} mm).", f"Pericardial fluid of {eff} mm, a {adj(s)} effusion."])
        if s != "none" else
        pick(["No pericardial effusion.", "The pericardium is normal with no effusion.", "No pericardial fluid."])
    )
    return out


def _telegraphic(p: Any, m: dict[str, float], pick: _Pick) -> str:
    """Held-out style: list layout, arrows and abbreviations never used by the training styles."""
    f = p.findings
    sev = {"mild": "+", "moderate": "++", "severe": "+++"}
    lines = ["CMR SUMMARY"]
    lv = f"LV: EDV {round(m['lv_edv_ml'])} ml"
    lv += f" (enlarged {sev[f['lv_dilation']]})" if f["lv_dilation"] != "none" else " (nl)"
    lv += f"; EF {round(m['lv_ef_pct'])} %"
    lv += f" - decreased {sev[f['lv_dysfunction']]}" if f["lv_dysfunction"] != "none" else " - nl"
    lines.append(lv)
    lines.append(f"Wall: {round(m['lv_max_wall_mm'])} mm" + (f", thick {sev[f['lv_hypertrophy']]}" if f["lv_hypertrophy"] != "none" else ", nl"))
    rv = f"RV: EDV {round(m['rv_edv_ml'])} ml" + (f" (enlarged {sev[f['rv_dilation']]})" if f["rv_dilation"] != "none" else " (nl)")
    rv += f"; EF {round(m['rv_ef_pct'])} %" + (f" - decreased {sev[f['rv_dysfunction']]}" if f["rv_dysfunction"] != "none" else " - nl")
    lines.append(rv)
    if f["lge"] != "none":
        where = p.lge_territory or "septum" if p.lge_pattern == "midwall" else p.lge_territory or "global"
        lines.append(f"Delayed enh: POS, {p.lge_pattern.replace('_', ' ')} ({where}) {sev[f['lge']]}")
    else:
        lines.append("Delayed enh: neg")
    lines.append(f"Ao root: {round(m['aortic_root_mm'])} mm" + (f" {sev[f['aortic_dilation']]}" if f["aortic_dilation"] != "none" else " nl"))
    lines.append("Pericard.: " + (f"fluid {round(m['effusion_mm'])} mm {sev[f['pericardial_effusion']]}" if f["pericardial_effusion"] != "none" else "dry"))
    return "\n".join(lines)


def make_report(p: Any, measurements: dict[str, float], style: str | None = None) -> str:
    """Report text for StudyParams ``p`` with phantom ``measurements`` (``Phantom.truth()``).

    The wording is drawn from the study seed, so the same study always gets the same report. A randomised study
    (``p.variety``), or a style of ``VARIETY_STYLES`` / "dictated", takes the randomised generator's phrasing
    (``cmrdx.synth.report_variety``).
    """
    style = style or p.report_style
    if style not in STYLES:
        raise ValueError(f"unknown report style {style!r}; use one of {', '.join(STYLES)}")
    pick = _Pick(np.random.default_rng([p.seed, 0x7E47, STYLES.index(style)]))
    m = measurements
    if style == "telegraphic":
        return _telegraphic(p, m, pick)
    if getattr(p, "variety", None) is not None or style not in TRAIN_STYLES:
        return variety_report(p, m, style, pick)
    sent = _sentences(p, m, pick)
    present = [k for k in sent if p.findings[k] != "none"]
    absent = [k for k in sent if p.findings[k] == "none"]
    order = ["lv_dilation", "lv_hypertrophy", "lv_dysfunction", "rv_dilation", "rv_dysfunction", "lge",
             "aortic_dilation", "pericardial_effusion"]
    if style == "structured":
        groups = [("Left ventricle", ["lv_dilation", "lv_hypertrophy", "lv_dysfunction"]),
                  ("Right ventricle", ["rv_dilation", "rv_dysfunction"]),
                  ("Tissue characterisation", ["lge"]),
                  ("Aorta", ["aortic_dilation"]), ("Pericardium", ["pericardial_effusion"])]
        lines = ["FINDINGS:"] + [f"{g}: " + " ".join(sent[k] for k in ks) for g, ks in groups]
        lines.append("")
        lines.append("IMPRESSION:")
        imp = [sent[k] for k in order if k in present] or [pick(["Structurally and functionally normal heart.",
                                                                   "Normal cardiac MRI."])]
        lines += [f"{i}. {s}" for i, s in enumerate(imp, 1)]
        return "\n".join(lines)
    if style == "terse":
        bits = [sent[k] for k in order if k in present]
        neg = [sent[k] for k in ("lge", "pericardial_effusion", "lv_dysfunction") if k in absent]
        head = pick(["Impression:", "Conclusion:", "IMPRESSION"])
        return head + " " + " ".join(bits + neg[:2] if bits else [pick(["Normal study.", "Normal CMR."])] + neg)
    # narrative
    pick_order = order[:]
    intro = pick(["Cardiac MRI with cine SSFP and late gadolinium enhancement imaging.",
                  "CMR performed with functional cine imaging and LGE.",
                  "Comprehensive cardiac MR study."])
    body = " ".join(sent[k] for k in pick_order)
    if present:
        def clause(s: str) -> str:  # "Moderate RV ..." -> "moderate RV ..." inside a sentence; keep "LV ..."
            s = s.rstrip(".")
            return s[0].lower() + s[1:] if len(s) > 1 and s[1].islower() else s

        impression = "; ".join(clause(sent[k]) for k in order if k in present)
        conclusion = (pick(["In summary: ", "Conclusion: ", "Impression: "]) + impression[0].upper() + impression[1:]
                      + ".")
    else:
        conclusion = pick(["Impression: normal cardiac MRI.", "Conclusion: structurally normal heart with normal "
                           "biventricular function and no LGE."])
    return f"{intro}\n\n{body}\n\n{conclusion}"
