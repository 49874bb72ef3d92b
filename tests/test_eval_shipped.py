"""The shipped default model: its manifest verifies and carries provenance, it fits the size budget, its
embeddings of the example study match the golden file, and `cmrdx eval` runs on a real DICOM archive."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "cmrdx-phantom-small"
GOLDEN = ROOT / "tests" / "golden" / "cmrdx-phantom-small.json"


def test_manifest_verifies_with_provenance_and_size_budget():
    from cmrdx.model.manifest import load_manifest
    from cmrdx.model.registry import resolve

    m = load_manifest(MODEL, verify=True)
    assert resolve("cmrdx-phantom-small").resolve() == MODEL.resolve()  # the bundled default is found by name
    total = sum(p.stat().st_size for p in MODEL.iterdir() if p.is_file())
    assert total <= 30e6, total
    prov = m.provenance
    assert prov["data"]["kind"] == "phantom" and prov["data"]["generator"].startswith("cmrdx.synth")
    assert prov["data"]["pairs_train"] >= 500 and prov["training"]["seconds"] > 0
    assert prov["training"]["config"]["seed"] == prov["data"]["seed"]
    assert set(prov["metrics"]["zeroshot_auc"]) >= {"lv_dysfunction", "lge", "aortic_dilation"}
    r = m.recipe_params()
    assert (r.input_frames, r.image_size) == (m.video["frames"], m.video["image_size"])


def test_example_study_embeddings_match_golden():
    import sys

    sys.path.insert(0, str(GOLDEN.parent))
    from regenerate_phantom_small import compute

    gold = json.loads(GOLDEN.read_text())
    now = compute()
    assert now["video_sha256"] == gold["video_sha256"], "model changed: run tests/golden/regenerate_phantom_small.py"
    assert now["texts"] == gold["texts"], "bank prompts changed: run tests/golden/regenerate_phantom_small.py"
    np.testing.assert_allclose(now["study"], gold["study"], atol=2e-4)
    np.testing.assert_allclose(now["text_embeddings"], gold["text_embeddings"], atol=2e-4)
    assert abs(np.linalg.norm(now["study"]) - 1) < 1e-4


def test_eval_cli_on_a_dicom_archive(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cmrdx.cli import app
    from cmrdx.synth import write_archive

    monkeypatch.setenv("CMRDX_HOME", str(tmp_path / "home"))
    arch = tmp_path / "arch"
    write_archive(arch, 6, 4242, prevalence=0.5, n_phases=10, matrix=96, report_styles=["telegraphic"])
    (arch / "study_0006" / "report.txt").unlink()  # a study without a report is skipped and counted
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["eval", "all", "--model", str(MODEL), "--data", str(arch), "--bootstrap", "50",
                                   "--episodes", "5", "--json", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["n"] == 5 and r["skipped"] == {"no report.txt": 1}
    assert set(r["zeroshot"]["findings"]) == {"lv_dysfunction", "rv_dysfunction", "lv_dilation", "rv_dilation",
                                              "lv_hypertrophy", "lge", "aortic_dilation", "pericardial_effusion"}
    assert r["retrieval"]["text_to_study"]["n"] == 5
    assert 0 < r["study_encode_ms_median"] < 1000
    # second command on the same archive: embeddings come from the on-disk cache (same numbers)
    out2 = tmp_path / "z.json"
    res = CliRunner().invoke(app, ["eval", "retrieval", "--model", str(MODEL), "--data", str(arch), "--json", str(out2)])
    assert res.exit_code == 0, res.output
    assert json.loads(out2.read_text())["text_to_study"] == r["retrieval"]["text_to_study"]
    # --record writes the headline figures into a copy of the model: the archive by its folder name and its
    # labels' digest, never this machine's path; the model verifies and keeps its identity
    import shutil

    from cmrdx.evaluation.benchmarks import record_metrics
    from cmrdx.model.loader import model_sha256
    from cmrdx.model.manifest import load_manifest, sha256_file

    copy = tmp_path / "model"
    shutil.copytree(MODEL, copy)
    record_metrics(copy, r)
    m = load_manifest(copy, verify=True)
    bench = m.provenance["metrics"]["benchmark"]
    assert bench["data"] == "arch" and bench["labels_sha256"] == sha256_file(arch / "labels.csv") and bench["n"] == 5
    assert str(tmp_path) not in (copy / "manifest.json").read_text()
    assert model_sha256(m) == model_sha256(load_manifest(MODEL, verify=False))
