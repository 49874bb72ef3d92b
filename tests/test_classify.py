"""`cmrdx classify` end to end on cine studies with a tiny random-weight model: scores are the reference's
mean cosine, calls follow thresholds, prompt embeddings are cached, output is schema'd and PHI-free."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cmrdx.errors import EXIT_CODES
from cmrdx.model.loader import get_encoder, model_sha256
from cmrdx.pipeline.classify import classify
from cmrdx.recipe import apply_recipe
from cmrdx.study.assemble import assemble_study
from cmrdx.zeroshot.bank import load_bank
from helpers.cine_factory import build_cine_study
from helpers.data import findings_bank_without_thresholds


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classify") / "study"
    build_cine_study(root, vendor="siemens", n_slices=5, n_phases=20, distractors=True)
    return root


def test_scores_are_mean_cosines_of_the_prompts(study, tiny_model, tmp_path):
    res = classify(study, model=tiny_model, banks=["cmr-findings"], device="cpu", text_cache_dir=tmp_path)
    bank = load_bank("cmr-findings")
    assert {f.id for f in res.findings} == {f.id for f in bank.findings}
    enc = get_encoder(tiny_model, "cpu")
    x = apply_recipe(assemble_study(study), enc.manifest.recipe_params()).array
    emb = enc.encode_studies(x[None])[0]
    np.testing.assert_allclose(res.embedding, emb, atol=1e-6)
    f = bank.finding("lv_dilation")
    want = float(np.mean(emb @ enc.encode_texts(f.prompts).T))
    got = next(s for s in res.findings if s.id == "lv_dilation")
    assert got.kind == "mean-cosine" and got.score == pytest.approx(want, abs=1e-5)
    peff = next(s for s in res.findings if s.id == "pericardial_effusion")
    assert peff.kind == "softmax" and 0.0 < peff.score < 1.0
    assert all(s.call == "no threshold" for s in res.findings)  # the shipped bank has no thresholds for this model
    assert res.device.startswith("cpu")
    assert set(res.timings_ms) == {"load_ms", "read_ms", "recipe_ms", "encode_ms", "score_ms"}
    assert res.series_used and len(res.skipped_series) >= 4  # distractors are skipped, with reasons


def test_calls_follow_thresholds_and_margin(study, tiny_model, tmp_path):
    res0 = classify(study, model=tiny_model, device="cpu", text_cache_dir=tmp_path)
    s = {f.id: f.score for f in res0.findings}
    sha = model_sha256(get_encoder(tiny_model, "cpu").manifest)
    text = findings_bank_without_thresholds()
    thresholds = {"lv_dilation": s["lv_dilation"] - 0.05, "lge": s["lge"] + 0.05, "rv_dilation": s["rv_dilation"] + 0.001}
    for fid, thr in thresholds.items():
        anchor = f"  - id: {fid}\n"
        text = text.replace(anchor, anchor + f"    thresholds:\n      - model: tiny-test-model\n        sha256: {sha}\n"
                                             f"        threshold: {thr:.6f}\n        method: manual\n", 1)
    bank = tmp_path / "calibrated.yaml"
    bank.write_text(text)
    res = classify(study, model=tiny_model, banks=[bank], device="cpu", text_cache_dir=tmp_path)
    by = {f.id: f for f in res.findings}
    assert by["lv_dilation"].call == "present" and by["lv_dilation"].margin == pytest.approx(0.05, abs=1e-5)
    assert by["lge"].call == "absent"
    assert by["rv_dilation"].call == "uncertain"  # |margin| < uncertain_margin (0.01)
    assert by["lv_dysfunction"].call == "no threshold"
    assert res.findings[0].id == "lv_dilation"  # ranked by margin first


def test_prompt_embeddings_are_cached_per_model(study, tiny_model, tmp_path, monkeypatch):
    classify(study, model=tiny_model, device="cpu", text_cache_dir=tmp_path)
    enc = get_encoder(tiny_model, "cpu")
    calls = []
    real = enc.encode_texts
    monkeypatch.setattr(enc, "encode_texts", lambda texts: calls.append(list(texts)) or real(texts))
    classify(study, model=tiny_model, device="cpu", text_cache_dir=tmp_path)
    assert calls == []
    classify(study, model=tiny_model, banks=["cmr-findings", "cmr-diagnoses"], device="cpu", text_cache_dir=tmp_path)
    assert len(calls) == 1 and set(calls[0]) == set(load_bank("cmr-diagnoses").texts) - set(load_bank("cmr-findings").texts)


def test_missing_views_warn(tmp_path, tiny_model):
    root = tmp_path / "kaggle"
    build_cine_study(root, vendor="kaggle", n_slices=4, n_phases=10)
    res = classify(root, model=tiny_model, device="cpu", text_cache_dir=tmp_path)
    text = " ".join(res.warnings)
    assert "views not found" in text and "lge:SAX" in text
    assert "no lge" in text  # the recipe says what it substituted
    assert "only 10 phases" in text


def _cli(*args, home):
    return subprocess.run([sys.executable, "-m", "cmrdx", *args], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "CMRDX_HOME": str(home), "COLUMNS": "200"})


def test_cli_json_output_file_and_no_phi(study, tiny_model, tmp_path):
    out = tmp_path / "res" / "result.json"
    r = _cli("classify", str(study), "--model", str(tiny_model), "--device", "cpu", "--json", "--output", str(out), home=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d == json.loads(out.read_text())
    assert d["schema"] == "cmrdx-classify/1"
    assert d["run"]["model"]["name"] == "tiny-test-model" and len(d["run"]["model"]["sha256"]) == 64
    assert d["run"]["banks"][0]["name"] == "cmr-findings"
    assert len(d["findings"]) == 8 and d["run"]["series_uids_used"]
    assert "PHANTOM" not in r.stdout and "FIXTURE-0001" not in r.stdout
    assert not list(out.parent.glob(".*.tmp"))
    r = _cli("classify", str(study), "--model", str(tiny_model), "--device", "cpu", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "LV dilation" in r.stdout and "views used" in r.stdout


def test_cli_embedding_puts_the_study_embeddings_in_the_json(study, tmp_path):
    """``--embedding``: the embedding prompts score and, for the bundled model (a finding stream), the main paths'
    one that distances use; both unit vectors, equal to the Python API's (JSON keeps 6 decimals); none without it."""
    r = _cli("classify", str(study), "--device", "cpu", "--json", "--embedding", home=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    res = classify(study, device="cpu")
    for key, want in (("embedding", res.embedding), ("main_embedding", res.main_embedding)):
        got = np.array(d[key])
        assert got.shape == want.shape and abs(np.linalg.norm(got) - 1) < 1e-4
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(d["embedding"], d["main_embedding"], atol=1e-3)  # the stream turned the embedding
    r = _cli("classify", str(study), "--device", "cpu", "--json", home=tmp_path)
    assert r.returncode == 0 and "embedding" not in json.loads(r.stdout)


def test_cli_errors_have_documented_codes(study, tiny_model, tmp_path):
    r = _cli("classify", str(study), "--model", str(tmp_path / "nope"), home=tmp_path)
    assert r.returncode == EXIT_CODES["ModelError"] and "no model named" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: cmrdx-prompt-bank/1\nname: x\nversion: 1\nauthors: [a]\nfindings: []\n")
    r = _cli("classify", str(study), "--model", str(tiny_model), "--bank", str(bad), home=tmp_path)
    assert r.returncode == EXIT_CODES["PromptBankError"] and "bad.yaml:5" in r.stderr
    r = _cli("classify", str(study), "--model", str(tiny_model), "--device", "cuda", home=tmp_path)
    assert r.returncode == EXIT_CODES["ModelError"] and "cuda" in r.stderr.lower()
