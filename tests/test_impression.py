"""The draft impression: composed from the present findings in clinical order in the banks' phrases, naming the
findings near their threshold and those not assessable, marked DRAFT / not for clinical use; the banks' impression
schema (strict like the rest); and the impression in every output (JSON, table, SR text checked by dciodvfy, FHIR
conclusion)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cmrdx.errors import PromptBankError
from cmrdx.vocab import SEVERITY_LEVELS
from cmrdx.zeroshot.bank import load_bank, parse_bank
from cmrdx.zeroshot.impression import DRAFT_MARK, compose_impression
from cmrdx.zeroshot.scoring import FindingScore
from helpers.data import dciodvfy_errors

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "phantom-study"


def fs(fid: str, call: str, bank: str = "cmr-findings", severity: str | None = None, label: str | None = None,
       reason: str | None = None) -> FindingScore:
    return FindingScore(id=fid, label=label or fid.replace("_", " ").capitalize(), score=0.3, kind="mean-cosine",
                        threshold=0.2, margin=0.1, call=call, severity=severity, bank=bank, reason=reason)


def test_present_findings_in_clinical_order_with_severity_phrases_and_a_draft_mark():
    findings, diagnoses = load_bank("cmr-findings"), load_bank("cmr-diagnoses")
    scores = [  # ranked by score, not in clinical order; the bank lists lv_dysfunction first
        fs("pericardial_effusion", "present"),
        fs("lv_dysfunction", "present", severity="moderate"),
        fs("lge", "uncertain", label="Late gadolinium enhancement"),
        fs("lv_dilation", "present"),
        fs("rv_dilation", "absent"),
        fs("aortic_dilation", "not assessable", label="Aortic dilation",
           reason="needs a view of the aortic root (cine:3CH or cine:LVOT): not in this study"),
        fs("dilated_cardiomyopathy", "present", bank="cmr-diagnoses"),
    ]
    imp = compose_impression(scores, [findings, diagnoses])
    assert imp.sentences[:4] == [
        "Appearances consistent with dilated cardiomyopathy.",  # diagnoses first, then LV size, LV function, ...
        "Dilated left ventricle.",
        "Moderately impaired left ventricular systolic function.",  # the severity's own phrase
        "Pericardial effusion.",
    ]
    assert imp.sentences[4] == "Near the threshold (not called either way): late gadolinium enhancement."
    assert imp.sentences[5] == "Not assessable: aortic dilation (needs a view of the aortic root (cine:3CH or cine:LVOT))."
    assert imp.present == ["dilated_cardiomyopathy", "lv_dilation", "lv_dysfunction", "pericardial_effusion"]
    assert imp.uncertain == ["lge"] and imp.not_assessable == ["aortic_dilation"]
    assert imp.text.startswith(DRAFT_MARK + ".") and imp.text.count("not for clinical use") == 2
    d = imp.to_dict()
    assert d["draft"] is True and d["text"] == imp.text and d["sentences"] == imp.sentences


def test_nothing_present_no_thresholds_atypical_and_banks_without_phrases():
    bank = load_bank("cmr-findings")
    imp = compose_impression([fs("lge", "absent"), fs("lv_dilation", "absent")], [bank])
    assert imp.sentences == ["No finding called present among the 2 assessed."] and imp.present == []
    imp = compose_impression([fs("lge", "no threshold")], [bank])
    assert imp.sentences == ["No finding called: the prompt banks hold no thresholds for this model."]
    imp = compose_impression([fs("lge", "uncertain", label="LGE")], [bank], typicality="atypical")
    assert "unlike the model's training studies" in " ".join(imp.sentences)
    plain = parse_bank("schema: cmrdx-prompt-bank/1\nname: b\nversion: '1'\nauthors: [x]\nfindings:\n"
                       "  - {id: f1, label: Thing one, prompts: [a]}\n  - {id: f2, label: LV thing, prompts: [b]}\n",
                       Path("b.yaml"))
    imp = compose_impression([fs("f2", "present", bank="b", label="LV thing", severity="mild"),
                              fs("f1", "present", bank="b", label="Thing one")], [plain])
    assert imp.sentences == ["Thing one.", "LV thing (mild)."]  # labels, in bank order


def test_shipped_banks_give_every_finding_its_phrases():
    for name in ("cmr-findings", "cmr-diagnoses"):
        for f in load_bank(name).findings:
            assert f.impression.get("present") and f.impression_order is not None, (name, f.id)
            if name == "cmr-findings":
                assert all(f.impression_phrase(s) != f.impression["present"] for s in SEVERITY_LEVELS), f.id
    texts = [t for f in load_bank("cmr-findings").findings for t in f.all_texts]
    assert "Dilated left ventricle" not in texts  # impression phrases are never scored as prompts


BANK = """schema: cmrdx-prompt-bank/1
name: b
version: '1'
authors: [x]
findings:
  - id: f1
    label: F
    prompts: [a]
    impression:
{body}"""


@pytest.mark.parametrize("body, problem", [
    ("      order: 10\n", "missing required key `present`"),
    ("      present: Thing\n      severe: ''\n", "empty text"),
    ("      present: Thing\n      huge: Huge thing\n", "unknown key"),
    ("      present: Thing\n      order: first\n", "expected a number"),
    ("      present: Thing\n      order: .nan\n", "expected a finite number"),
    ("      - Thing\n", "expected a mapping"),
])
def test_impression_schema_is_strict(body, problem):
    with pytest.raises(PromptBankError) as e:
        parse_bank(BANK.format(body=body), Path("b.yaml"))
    assert problem in e.value.message and e.value.message.startswith("b.yaml:") and "impression" in e.value.message


def test_the_impression_in_json_table_sr_and_fhir(tmp_path, monkeypatch):
    monkeypatch.setenv("CMRDX_HOME", str(tmp_path / "home"))
    from cmrdx.cli import app
    from cmrdx.outputs.sr import read_sr_findings, read_sr_impression

    sr, fhir = tmp_path / "sr.dcm", tmp_path / "fhir.json"
    r = CliRunner().invoke(app, ["classify", str(EXAMPLE), "--json", "--device", "cpu", "--sr", str(sr),
                                 "--fhir", str(fhir)])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    imp = d["impression"]
    assert imp["draft"] and imp["text"].startswith(DRAFT_MARK)
    called = [f["id"] for f in d["findings"] if f["call"] == "present"]
    assert sorted(imp["present"]) == sorted(called) and called  # the example has findings called present
    assert read_sr_impression(sr) == imp["text"] and len(read_sr_findings(sr)) == len(d["findings"])
    assert dciodvfy_errors(sr) == []
    from cmrdx.outputs.fhir import read_bundle

    report = read_bundle(fhir).entry[0].resource
    assert report.conclusion.startswith(imp["text"]) and "not for clinical use" in report.conclusion
    table = CliRunner().invoke(app, ["classify", str(EXAMPLE), "--device", "cpu"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "DRAFT impression - not for clinical use" in table.output
    assert imp["sentences"][0] in table.output
