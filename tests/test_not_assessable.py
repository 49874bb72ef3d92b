"""A finding is called only on the evidence it needs: the bundled example study with its LGE series removed, or with
its 3-chamber and LVOT cines removed, gives "not assessable" (with the reason) for the findings that need them, in
the table, the JSON, the HTML report, the DICOM SR, FHIR and batch results; the other findings are still called."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cmrdx.cli import app
from cmrdx.dicom.scan import scan
from cmrdx.study.roles import classify_study_series
from cmrdx.zeroshot.bank import Requirement, load_bank, parse_bank
from helpers.data import dciodvfy_errors

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "phantom-study"


def _without(tmp: Path, drop) -> Path:
    """A copy of the example study without the series for which ``drop(series)`` is true."""
    res = scan(EXAMPLE)
    series = [s for group in res.studies.values() for s in group]
    classify_study_series(series)
    dropped = {f.ref.path for s in series if drop(s) for f in s.frames}
    assert dropped, "nothing to drop: the example changed"
    out = tmp / "study"
    for p in sorted(EXAMPLE.rglob("*")):
        if p.is_file() and str(p) not in dropped:
            (out / p.relative_to(EXAMPLE)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, out / p.relative_to(EXAMPLE))
    return out


@pytest.fixture(scope="module")
def no_lge(tmp_path_factory) -> Path:
    return _without(tmp_path_factory.mktemp("nolge"), lambda s: s.role == "lge")


@pytest.fixture(scope="module")
def no_aortic_view(tmp_path_factory) -> Path:
    return _without(tmp_path_factory.mktemp("noao"), lambda s: s.role == "cine" and s.view in ("3CH", "LVOT"))


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("CMRDX_HOME", str(tmp_path / "home"))


def _classify_json(study: Path, *extra: str) -> dict:
    r = CliRunner().invoke(app, ["classify", str(study), "--json", *extra])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_requirements_in_the_bank_schema():
    bank = load_bank("cmr-findings")
    assert all(f.requires for f in bank.findings), "every shipped finding declares what it needs"
    assert {f.id: f.requires for f in bank.findings}["lge"] == [Requirement(("lge:*",), "late gadolinium enhancement images")]
    r = Requirement(("cine:3CH", "cine:LVOT"))
    assert r.met_by({"cine:SAX", "cine:LVOT"}) and not r.met_by({"cine:SAX", "lge:3CH"})
    assert Requirement(("lge:*",)).met_by({"lge:2CH"}) and not Requirement(("lge:*",)).met_by({"cine:2CH"})
    bad = ("schema: cmrdx-prompt-bank/1\nname: b\nversion: '1'\nauthors: [x]\nfindings:\n  - id: f\n    label: F\n"
           "    prompts: [p]\n    requires:\n      - {any: [cine:AORTA]}\n")
    with pytest.raises(Exception, match=r"b.yaml:10: findings\[f\].requires\[0\].any\[0\]: unknown view 'cine:AORTA'"):
        parse_bank(bad, Path("b.yaml"))


def test_a_study_without_lge_cannot_have_lge_called(no_lge):
    d = _classify_json(no_lge)
    by = {f["id"]: f for f in d["findings"]}
    assert by["lge"]["call"] == "not assessable"
    assert "late gadolinium enhancement images (lge:*): not in this study" in by["lge"]["reason"]
    assert by["lge"]["probability"] is None and by["lge"]["severity"] is None and by["lge"]["threshold"] is None
    assessed = [f for f in d["findings"] if f["call"] != "not assessable"]
    assert {f["id"] for f in assessed} == {f["id"] for f in d["findings"]} - {"lge"}
    assert all(f["call"] in ("present", "absent", "uncertain") for f in assessed)
    assert d["findings"][-1]["id"] == "lge"  # ranked after every assessed finding
    # the recipe says once, consistently, that the LGE segments are missing (no "repeated" for absent images)
    recipe = [w for w in d["warnings"] if w.startswith("recipe:")]
    assert any("no lge view in the study" in w for w in recipe), recipe
    assert not any("repeated" in w for w in recipe), recipe


def test_a_study_without_an_aortic_view_cannot_have_aortic_dilation_called(no_aortic_view):
    d = _classify_json(no_aortic_view)
    by = {f["id"]: f for f in d["findings"]}
    assert by["aortic_dilation"]["call"] == "not assessable"
    assert "a view of the aortic root (cine:3CH or cine:LVOT)" in by["aortic_dilation"]["reason"]
    assert by["lge"]["call"] != "not assessable" and by["lv_dilation"]["call"] != "not assessable"


def test_the_table_says_not_assessable_and_why(no_lge):
    r = CliRunner().invoke(app, ["classify", str(no_lge)], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.stdout.splitlines() if "Late gadolinium" in ln)
    assert "not assessable" in line and "late gadolinium enhancement images" in line


def test_every_output_says_not_assessable(no_lge, tmp_path):
    from cmrdx.outputs.sr import read_sr_findings

    report, sr, fhir = tmp_path / "r.html", tmp_path / "r.dcm", tmp_path / "r.json"
    r = CliRunner().invoke(app, ["classify", str(no_lge), "--report", str(report), "--sr", str(sr), "--fhir", str(fhir)])
    assert r.exit_code == 0, r.output
    html = report.read_text()
    row = html[html.index('<tr class="finding-row" data-id="lge" data-call="not assessable"'):]
    row = row[:row.index("</tr>")]
    assert "not assessable" in row and "late gadolinium enhancement images" in row
    by = {f["id"]: f for f in read_sr_findings(sr)}
    assert by["lge"]["call"] == "not assessable"  # no qualitative evaluation asserted
    assert any("late gadolinium enhancement images" in c for c in by["lge"]["comments"])
    assert all(by[i]["call"] in ("present", "absent", "uncertain") for i in by if i != "lge")
    assert not dciodvfy_errors(sr)  # a group with no evaluation and a text comment is still a valid SR
    bundle = json.loads(fhir.read_text())
    obs = {e["resource"]["code"]["text"]: e["resource"] for e in bundle["entry"]
           if e["resource"]["resourceType"] == "Observation"}
    lge = obs["Late gadolinium enhancement"]
    assert "valueCodeableConcept" not in lge
    assert lge["dataAbsentReason"]["coding"][0]["code"] == "not-performed"
    assert "late gadolinium enhancement images" in lge["dataAbsentReason"]["text"]
    assert "valueCodeableConcept" in obs["LV dilation"]


def test_batch_results_say_not_assessable(no_lge, tmp_path):
    from cmrdx.pipeline.batch import BatchOptions, read_results, run_batch

    archive = tmp_path / "archive"
    shutil.copytree(no_lge, archive / "a")
    out = tmp_path / "results.jsonl"
    run_batch(archive, out, BatchOptions(device="cpu", workers=1))
    (row,) = read_results(out)
    assert row["lge_call"] == "not assessable" and "late gadolinium" in row["lge_reason"]
    assert row["lv_dilation_call"] in ("present", "absent", "uncertain") and row["lv_dilation_reason"] == ""


def test_an_atypical_study_gets_no_confident_call_in_any_output(tmp_path):
    """A cine study made from a real scanner file's pixels is unlike the phantoms the bundled model learned from:
    classify says so (JSON, table banner, HTML banner, batch column) and turns present/absent into uncertain."""
    from helpers.cine_factory import build_cine_study

    study = build_cine_study(tmp_path / "real", vendor="siemens", n_slices=10, n_phases=20)
    d = _classify_json(study.root)
    assert d["typicality"]["status"] == "atypical", d["typicality"]
    assert d["typicality"]["score"] > d["typicality"]["threshold"]
    called = [f for f in d["findings"] if f["call"] != "not assessable"]
    assert called and all(f["call"] == "uncertain" and f["reason"].startswith("atypical study") for f in called)
    r = CliRunner().invoke(app, ["classify", str(study.root), "--report", str(tmp_path / "r.html")],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "ATYPICAL STUDY" in r.stdout
    assert 'id="typicality" data-status="atypical"' in (tmp_path / "r.html").read_text()
    from cmrdx.pipeline.batch import BatchOptions, read_results, run_batch

    out = tmp_path / "results.jsonl"
    run_batch(study.root.parent, out, BatchOptions(device="cpu", workers=1))
    (row,) = read_results(out)
    assert row["typicality"] == "atypical" and row["typicality_score"] > 0


def test_the_example_study_is_typical():
    d = _classify_json(EXAMPLE)
    assert d["typicality"]["status"] == "typical", d["typicality"]
    assert any(f["call"] == "present" for f in d["findings"])
