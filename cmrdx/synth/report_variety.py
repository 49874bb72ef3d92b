"""Report texts of the randomised generator: wider phrasing than the classic styles.

Every finding has several phrasings, positive and negated; the study's report options (``Variety.report``,
drawn from its seed) choose British or American spelling, whether measurements are quoted, and the register of
negations ("No LGE." / "No evidence of late gadolinium enhancement." / "Late enhancement: absent."). Layouts:
the classic three (narrative, structured, terse) plus bulleted, quantitative and brief; ``dictated`` is the
held-out style of this generator, with a vocabulary and layout that no training style uses.
"""

from __future__ import annotations

import re
from typing import Any

from cmrdx.synth.wording import _SEV_ADJ, _SEV_ADV, _WALL_NAMES, _Pick, report_options

ORDER = ("lv_dilation", "lv_hypertrophy", "lv_dysfunction", "rv_dilation", "rv_dysfunction", "lge", "aortic_dilation",
         "pericardial_effusion")

# British -> American spelling (whole words, case kept for the first letter).
_AMERICAN = {
    "ischaemic": "ischemic", "ischaemia": "ischemia", "characterisation": "characterization", "calibre": "caliber",
    "oedema": "edema", "centre": "center", "haemodynamically": "hemodynamically", "normalised": "normalized",
    "localised": "localized", "recognised": "recognized", "generalised": "generalized", "dilatation": "dilation",
    "anaemia": "anemia", "oesophagus": "esophagus", "visualised": "visualized", "summarised": "summarized",
}
_AMERICAN_RE = re.compile(r"\b(" + "|".join(_AMERICAN) + r")\b", re.IGNORECASE)


def americanise(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        w = m.group(0)
        r = _AMERICAN[w.lower()]
        return r[0].upper() + r[1:] if w[0].isupper() else r

    return _AMERICAN_RE.sub(sub, text)


def _negation(key: str, register: str, pick: _Pick) -> str:
    """A negated finding in the study's register."""
    table = {
        "lge": {"plain": ["No LGE.", "No late gadolinium enhancement.", "No myocardial late enhancement."],
                "evidence": ["No evidence of late gadolinium enhancement.", "No evidence of late enhancement.",
                             "No evidence of myocardial scar or fibrosis."],
                "absent": ["Late gadolinium enhancement: none.", "Late enhancement absent.", "LGE: absent."]},
        "pericardial_effusion": {"plain": ["No pericardial effusion.", "No effusion."],
                                 "evidence": ["No evidence of a pericardial effusion.", "No evidence of pericardial fluid."],
                                 "absent": ["Pericardial effusion: none.", "Pericardial effusion absent."]},
        "lv_hypertrophy": {"plain": ["No LV hypertrophy.", "No left ventricular hypertrophy."],
                           "evidence": ["No evidence of left ventricular hypertrophy."],
                           "absent": ["LV hypertrophy: none.", "Left ventricular hypertrophy absent."]},
        "aortic_dilation": {"plain": ["No aortic root dilatation.", "The aortic root is not dilated."],
                            "evidence": ["No evidence of aortic root dilatation."],
                            "absent": ["Aortic root dilatation: none.", "Aortic root dilatation absent."]},
    }
    return pick(table[key][register])


def sentences(p: Any, m: dict[str, float], pick: _Pick, opts: dict[str, Any]) -> dict[str, str]:
    """One sentence per finding (present or negated) in the randomised generator's phrasing."""
    f = p.findings
    num = bool(opts.get("measurements", True))
    reg = str(opts.get("negation", "plain"))
    adj = lambda s: pick(_SEV_ADJ[s])  # noqa: E731
    adv = lambda s: pick(_SEV_ADV[s])  # noqa: E731
    ml = pick(["mL", "ml"])
    edv, ef = round(m["lv_edv_ml"]), round(m["lv_ef_pct"])
    redv, ref = round(m["rv_edv_ml"]), round(m["rv_ef_pct"])
    mw, ao, eff = round(m["lv_max_wall_mm"]), round(m["aortic_root_mm"]), round(m["effusion_mm"])

    def q(with_num: str, without: str) -> str:
        return with_num if num else without

    out: dict[str, str] = {}
    s = f["lv_dilation"]
    out["lv_dilation"] = pick([
        q(f"The left ventricle is {adv(s)} dilated (LVEDV {edv} {ml}).", f"The left ventricle is {adv(s)} dilated."),
        q(f"{adj(s).capitalize()} left ventricular dilatation, end-diastolic volume {edv} {ml}.",
          f"{adj(s).capitalize()} left ventricular dilatation."),
        "Dilated left ventricle.", "The LV is enlarged.", f"{adv(s).capitalize()} enlarged LV cavity.",
        q(f"LV cavity enlarged, LVEDV {edv} {ml}.", "LV cavity enlarged.")]) if s != "none" else pick([
        q(f"Normal LV size (LVEDV {edv} {ml}).", "Normal LV size."), "The left ventricle is normal in size.",
        "No LV dilatation.", "Left ventricular cavity size is normal.", "LV not dilated."])
    s = f["lv_dysfunction"]
    wma = ""
    if p.wall_motion and p.lge_territory:
        word = "akinesia" if set(p.wall_motion.values()) == {"akinetic"} else "hypokinesia"
        wma = f" with regional {word} of the {pick(_WALL_NAMES[p.lge_territory])}"
    out["lv_dysfunction"] = pick([
        q(f"{adj(s).capitalize()} LV systolic impairment{wma} (LVEF {ef}%).", f"{adj(s).capitalize()} LV systolic impairment{wma}."),
        q(f"Left ventricular systolic function is {adv(s)} reduced{wma}, ejection fraction {ef}%.",
          f"Left ventricular systolic function is {adv(s)} reduced{wma}."),
        f"Impaired left ventricular systolic function{wma}.", f"Reduced LV ejection fraction{wma}.",
        q(f"LVEF {ef}%, {adv(s)} reduced{wma}.", f"LV function {adv(s)} reduced{wma}.")]) if s != "none" else pick([
        q(f"Normal LV systolic function (LVEF {ef}%){wma}.", f"Normal LV systolic function{wma}."),
        q(f"Preserved left ventricular ejection fraction ({ef}%){wma}.", f"Preserved left ventricular ejection fraction{wma}."),
        f"Global LV systolic function is preserved{wma}." if wma else "No LV systolic impairment.",
        f"Left ventricular systolic function is globally preserved{wma}."])
    s = f["lv_hypertrophy"]
    if s != "none":
        pat = p.hypertrophy_pattern
        if pat == "septal":
            opts_h = [q(f"{adj(s).capitalize()} asymmetric septal hypertrophy (septum {mw} mm).",
                        f"{adj(s).capitalize()} asymmetric septal hypertrophy."),
                      "Asymmetric hypertrophy of the interventricular septum.", "The septum is thickened."]
        elif pat == "apical":
            opts_h = [q(f"{adj(s).capitalize()} apical hypertrophy, maximal apical wall thickness {mw} mm.",
                        f"{adj(s).capitalize()} apical hypertrophy."),
                      "Apical left ventricular hypertrophy with a spade-shaped cavity.",
                      "Hypertrophy confined to the apical segments.", "The apical walls are thickened."]
        else:
            opts_h = [q(f"{adj(s).capitalize()} concentric LV hypertrophy, maximal wall thickness {mw} mm.",
                        f"{adj(s).capitalize()} concentric LV hypertrophy."),
                      "Concentric left ventricular hypertrophy.", "The left ventricular walls are thickened.",
                      q(f"LV wall thickness up to {mw} mm, in keeping with hypertrophy.", "LV walls thickened.")]
        out["lv_hypertrophy"] = pick(opts_h)
    else:
        out["lv_hypertrophy"] = pick([_negation("lv_hypertrophy", reg, pick),
                                      q(f"Normal LV wall thickness (maximum {mw} mm).", "Normal LV wall thickness.")])
    s = f["rv_dilation"]
    out["rv_dilation"] = pick([
        q(f"The right ventricle is {adv(s)} dilated (RVEDV {redv} {ml}).", f"The right ventricle is {adv(s)} dilated."),
        f"{adj(s).capitalize()} RV dilatation.", "Dilated right ventricle.", "The RV is enlarged.",
        q(f"RV cavity enlarged, RVEDV {redv} {ml}.", "RV cavity enlarged.")]) if s != "none" else pick([
        q(f"Normal RV size (RVEDV {redv} {ml}).", "Normal RV size."), "The right ventricle is normal in size.",
        "No RV dilatation.", "RV not dilated."])
    s = f["rv_dysfunction"]
    out["rv_dysfunction"] = pick([
        q(f"{adj(s).capitalize()} RV systolic impairment (RVEF {ref}%).", f"{adj(s).capitalize()} RV systolic impairment."),
        q(f"Right ventricular systolic function is {adv(s)} reduced, ejection fraction {ref}%.",
          f"Right ventricular systolic function is {adv(s)} reduced."),
        "Impaired right ventricular systolic function.", "Reduced RV ejection fraction."]) if s != "none" else pick([
        q(f"Normal RV systolic function (RVEF {ref}%).", "Normal RV systolic function."),
        "Preserved right ventricular systolic function.", "No RV systolic impairment."])
    s = f["lge"]
    if s != "none":
        pat = p.lge_pattern
        segs = ", ".join(str(x) for x in p.lge_segments[:6])
        terr = p.lge_territory
        where = pick(_WALL_NAMES[terr]) if terr else ""
        size = {"mild": "small", "moderate": "moderate-sized", "severe": "large"}[s]
        site = "inferolateral wall" if getattr(p.variety, "scar_detail", {}).get("midwall_site") == "inferolateral" \
            else "septum"
        table = {
            "subendocardial": [
                f"{adj(s).capitalize()} subendocardial late gadolinium enhancement of the {where}, an ischaemic pattern.",
                q(f"Subendocardial LGE in the {terr} territory (AHA segments {segs}), less than 50% transmural: viable.",
                  f"Subendocardial LGE in the {terr} territory, less than 50% transmural: viable."),
                f"Late enhancement of the subendocardium in the {where}, consistent with prior infarction."],
            "transmural": [
                f"Transmural late gadolinium enhancement of the {where} in keeping with a {size} infarct.",
                q(f"Full-thickness scar in the {terr} territory, segments {segs} non-viable.",
                  f"Full-thickness scar in the {terr} territory, non-viable."),
                f"A {size} transmural infarct of the {where}."],
            "midwall": [f"Mid-wall late gadolinium enhancement of the {site}, a non-ischaemic pattern.",
                        f"Linear mid-myocardial LGE in the {site}.",
                        f"{adj(s).capitalize()} mid-wall fibrosis of the {site}."],
            "epicardial": ["Subepicardial late gadolinium enhancement of the inferolateral wall, a non-ischaemic pattern.",
                           f"{adj(s).capitalize()} epicardial enhancement of the lateral wall, as seen in myocarditis.",
                           "Subepicardial LGE in the lateral and inferolateral segments."],
            "rv_insertion": ["Late gadolinium enhancement at the right ventricular insertion points.",
                             "Focal LGE at the RV insertion points, a non-specific pattern.",
                             "Insertion-point enhancement of the septum."],
            "patchy": ["Patchy multifocal late gadolinium enhancement, non-ischaemic.",
                       f"{adj(s).capitalize()} patchy mid-wall and subepicardial LGE in several segments.",
                       "Multifocal patchy myocardial enhancement."],
            "diffuse_subendocardial": [
                "Diffuse subendocardial late enhancement with difficult myocardial nulling, suggestive of amyloidosis.",
                "Global subendocardial LGE, an amyloid pattern.",
                "Diffuse myocardial late gadolinium enhancement, raising the possibility of cardiac amyloid."],
        }
        out["lge"] = pick(table.get(pat, table["patchy"]))
    else:
        out["lge"] = _negation("lge", reg, pick)
    s = f["aortic_dilation"]
    out["aortic_dilation"] = pick([
        q(f"The aortic root is {adv(s)} dilated ({ao} mm).", f"The aortic root is {adv(s)} dilated."),
        q(f"{adj(s).capitalize()} aortic root dilatation, {ao} mm at the sinuses.", f"{adj(s).capitalize()} aortic root dilatation."),
        "Dilated aortic root.", "The aortic root is enlarged."]) if s != "none" else pick([
        _negation("aortic_dilation", reg, pick),
        q(f"Aortic root of normal calibre ({ao} mm).", "Aortic root of normal calibre.")])
    s = f["pericardial_effusion"]
    out["pericardial_effusion"] = pick([
        q(f"{adj(s).capitalize()} pericardial effusion, up to {eff} mm.", f"{adj(s).capitalize()} pericardial effusion."),
        f"There is a {'small' if s == 'mild' else 'moderate' if s == 'moderate' else 'large'} pericardial effusion.",
        "Pericardial effusion present."]) if s != "none" else _negation("pericardial_effusion", reg, pick)
    return out


def _dictated(p: Any, m: dict[str, float], pick: _Pick, num: bool) -> str:
    """Held-out style of the randomised generator: a dictation with its own vocabulary and grades."""
    f = p.findings
    g = {"mild": "grade 1", "moderate": "grade 2", "severe": "grade 3"}
    lines = ["Dictated summary."]
    lv = "Left heart: chamber " + (f"capacious ({g[f['lv_dilation']]})" if f["lv_dilation"] != "none" else "unremarkable")
    lv += "; pump " + (f"globally depressed ({g[f['lv_dysfunction']]})" if f["lv_dysfunction"] != "none" else "satisfactory")
    if num:
        lv += f", EF about {round(m['lv_ef_pct'])} percent"
    lv += "; myocardium " + (f"bulky ({g[f['lv_hypertrophy']]})" if f["lv_hypertrophy"] != "none" else "slender")
    lines.append(lv + ".")
    rv = "Right heart: chamber " + (f"capacious ({g[f['rv_dilation']]})" if f["rv_dilation"] != "none" else "unremarkable")
    rv += "; pump " + (f"globally depressed ({g[f['rv_dysfunction']]})" if f["rv_dysfunction"] != "none" else "satisfactory")
    lines.append(rv + ".")
    if f["lge"] != "none":
        words = {"subendocardial": "inner-layer", "transmural": "full-depth", "midwall": "intramural",
                 "epicardial": "outer-layer", "rv_insertion": "junctional", "patchy": "scattered",
                 "diffuse_subendocardial": "global inner-layer"}.get(p.lge_pattern, "scattered")
        lines.append(f"Post-gadolinium: {words} hyperenhancement ({g[f['lge']]}).")
    else:
        lines.append("Post-gadolinium: no hyperenhancement.")
    lines.append("Root of aorta: " + (f"aneurysmal ({g[f['aortic_dilation']]})." if f["aortic_dilation"] != "none" else "unremarkable."))
    lines.append("Sac: " + (f"fluid collection ({g[f['pericardial_effusion']]})." if f["pericardial_effusion"] != "none" else "dry."))
    return "\n".join(lines)


def variety_report(p: Any, m: dict[str, float], style: str, pick: _Pick) -> str:
    """The report of ``p`` in ``style`` with the randomised generator's phrasing (see the module docstring)."""
    v = getattr(p, "variety", None)
    opts = dict(v.report) if v is not None and v.report else report_options(p.seed)
    num = bool(opts.get("measurements", True))
    if style == "dictated":
        text = _dictated(p, m, pick, num)
    else:
        text = _layout(p, m, style, pick, sentences(p, m, pick, opts), num)
    return americanise(text) if opts.get("spelling") == "american" else text


def _layout(p: Any, m: dict[str, float], style: str, pick: _Pick, sent: dict[str, str], num: bool) -> str:
    present = [k for k in ORDER if p.findings[k] != "none"]
    absent = [k for k in ORDER if p.findings[k] == "none"]
    normal = pick(["Normal cardiac MRI.", "Structurally and functionally normal heart.", "Normal study.",
                   "No abnormality detected on CMR."])
    if style == "structured":
        groups = [("Left ventricle", ["lv_dilation", "lv_hypertrophy", "lv_dysfunction"]),
                  ("Right ventricle", ["rv_dilation", "rv_dysfunction"]), ("Tissue characterisation", ["lge"]),
                  ("Aorta", ["aortic_dilation"]), ("Pericardium", ["pericardial_effusion"])]
        lines = [pick(["FINDINGS:", "Findings:", "REPORT:"])] + [f"{g}: " + " ".join(sent[k] for k in ks) for g, ks in groups]
        lines += ["", pick(["IMPRESSION:", "Conclusion:", "SUMMARY:"])]
        lines += [f"{i}. {sent[k]}" for i, k in enumerate(present, 1)] or [normal]
        return "\n".join(lines)
    if style == "terse":
        bits = [sent[k] for k in present] + [sent[k] for k in absent if k in ("lge", "pericardial_effusion")][:1]
        return pick(["Impression:", "Conclusion:", "IMPRESSION"]) + " " + " ".join(bits if present else [normal] + bits)
    if style == "bulleted":
        lines = [pick(["Findings:", "Key findings:"])] + [f"- {sent[k]}" for k in ORDER]
        lines += ["", pick(["Impression:", "Summary:"])] + ([f"- {sent[k]}" for k in present] or [f"- {normal}"])
        return "\n".join(lines)
    if style == "quantitative":
        lines = []
        if num:
            lines.append(f"LVEDV {round(m['lv_edv_ml'])} mL, LVEF {round(m['lv_ef_pct'])}%, max wall "
                         f"{round(m['lv_max_wall_mm'])} mm; RVEDV {round(m['rv_edv_ml'])} mL, RVEF {round(m['rv_ef_pct'])}%; "
                         f"aortic root {round(m['aortic_root_mm'])} mm.")
        lines.append(pick(["Comment:", "Interpretation:"]) + " " + " ".join(
            [sent[k] for k in present] + [sent[k] for k in absent if k in ("lge", "lv_dysfunction")]))
        return "\n".join(lines)
    if style == "brief":
        if not present:
            return normal
        parts = [sent[k].rstrip(".") for k in present]
        parts = parts[:1] + [x[0].lower() + x[1:] if len(x) > 1 and x[1].islower() else x for x in parts[1:]]
        return "; ".join(parts) + "."
    # narrative
    intro = pick(["Cardiac MRI with cine imaging and late gadolinium enhancement.", "CMR study: cine and LGE.",
                  "Cardiac magnetic resonance examination.", ""])
    body = " ".join(sent[k] for k in ORDER)
    conclusion = (pick(["Conclusion: ", "In summary: ", "Impression: "]) + " ".join(sent[k] for k in present)
                  if present else pick(["Impression: ", "Conclusion: "]) + normal)
    return "\n\n".join(x for x in (intro, body, conclusion) if x)
