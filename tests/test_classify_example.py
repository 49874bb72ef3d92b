"""`cmrdx classify` with the shipped default model: the example study against its golden JSON (through typer's
CliRunner), and a phantom with a finding scoring above a normal phantom."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cmrdx.cli import app

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "classify-example.json"


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("CMRDX_HOME", str(tmp_path))


def test_example_study_matches_golden_json():
    g = json.loads(GOLDEN.read_text())
    r = CliRunner().invoke(app, ["classify", str(ROOT / "examples" / "phantom-study"), "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["schema"] == "cmrdx-classify/1" and d["study_uid"] == g["study_uid"]
    if d["run"]["model"]["sha256"] != g["model_sha256"] or [b["sha256"] for b in d["run"]["banks"]] != g["bank_sha256"]:
        pytest.fail("the default model or the shipped bank changed: run tests/golden/regenerate_classify_example.py "
                    "and review the new golden file")
    got = {f["id"]: f for f in d["findings"]}
    for f in g["findings"]:
        assert got[f["id"]]["score"] == pytest.approx(f["score"], abs=2e-4), f["id"]
        assert (got[f["id"]]["call"], got[f["id"]]["kind"]) == (f["call"], f["kind"]), f["id"]
    assert [f["id"] for f in d["findings"]] == [f["id"] for f in g["findings"]]  # the ranking
    assert {k: v["view"] for k, v in d["views_used"].items()} == g["views_used"]
    assert d["run"]["series_uids_used"] == g["series_uids_used"]
    assert d["typicality"]["status"] == g["typicality"] == "typical"  # the example is like the training phantoms
    assert "PHANTOM" not in r.output  # the example's synthetic patient name stays out of the output


def test_example_table_says_demo_model_and_no_cine_error(tmp_path):
    r = CliRunner().invoke(app, ["classify", str(ROOT / "examples" / "phantom-study"), "--device", "cpu"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "not for clinical use" in r.output and "LV systolic dysfunction" in r.output
    # a folder with no cine series: the no-usable-study error and its exit code
    import pydicom

    from cmrdx.errors import EXIT_CODES

    shutil.copytree(ROOT / "examples" / "phantom-study" / "DICOM", tmp_path / "nocine")
    for d in (tmp_path / "nocine").iterdir():
        desc = str(pydicom.dcmread(next(d.iterdir()), stop_before_pixels=True).get("SeriesDescription", ""))
        if desc.upper().startswith("CINE"):
            shutil.rmtree(d)
    r = CliRunner().invoke(app, ["classify", str(tmp_path / "nocine"), "--device", "cpu"])
    assert getattr(r.exception, "exit_code", None) == EXIT_CODES["NoCineError"], r.output
    assert "no cine series" in r.exception.message


@pytest.mark.parametrize("finding", ["lv_hypertrophy", "pericardial_effusion"])
def test_a_positive_phantom_scores_its_finding_above_a_normal_one(tmp_path, finding):
    from cmrdx.pipeline.classify import classify
    from cmrdx.synth.params import sample_params
    from cmrdx.synth.writer import write_study

    scores = {}
    for label, findings in (("normal", {}), ("positive", {finding: "severe"})):
        p = sample_params(11, findings, vendor="ge", n_phases=12, matrix=128)
        write_study(tmp_path / label, p, distractors=False)
        res = classify(tmp_path / label, device="cpu")
        scores[label] = next(f.score for f in res.findings if f.id == finding)
    assert scores["positive"] > scores["normal"], scores
