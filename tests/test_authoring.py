"""Prompt authoring: lint finds planted defects, evaluate's AUC equals scikit-learn's, calibrate meets
the asked criterion and keeps the YAML's comments, few-shot prototypes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cmrdx.errors import CmrdxError, ModelError
from cmrdx.evaluation.archive import StudyEmbeddingCache, embed_labelled, load_labels
from cmrdx.model.loader import get_encoder, model_sha256
from cmrdx.pipeline.classify import classify
from cmrdx.zeroshot.authoring import calibrate_bank, evaluate_bank, finding_scores, lint_bank, write_thresholds
from cmrdx.zeroshot.bank import load_bank
from cmrdx.zeroshot.calibration import auc_ci, fit, sens_spec
from cmrdx.zeroshot.fewshot import Prototypes, fit_prototypes
from cmrdx.zeroshot.scoring import bank_text_embeddings

BANK = """\
# A test bank. This comment must survive calibration.
schema: cmrdx-prompt-bank/1
name: authoring-test
version: "1"
authors: [Dr A]
findings:
  - id: lv_dilation   # inline comment kept too
    label: LV dilation
    prompts:
      - Left ventricle is dilated
      - Left ventricle is enlarged in size
  - id: lge
    label: LGE
    prompts:
      - Delayed-enhancement imaging reveals transmural enhancement
      - There is a large area of LAD scar
"""


@pytest.fixture(scope="module")
def embedded(phantom_archive, tiny_model, tmp_path_factory):
    enc = get_encoder(tiny_model, "cpu")
    sha = model_sha256(enc.manifest)
    rows = load_labels(phantom_archive / "labels.csv")
    es = embed_labelled(rows, enc, StudyEmbeddingCache(sha, tmp_path_factory.mktemp("cache")))
    assert not es.failed and len(es.rows) == 12
    return enc, sha, es


def test_lint_finds_each_planted_defect(tmp_path, tiny_model):
    enc = get_encoder(tiny_model, "cpu")
    bad = BANK.replace("      - Left ventricle is enlarged in size\n",
                       "      - Left ventricle is enlarged in size\n      - left ventricle is  dilated\n"
                       "      - Xylophonequasidodecahedral ventricle\n      - " + "dilated " * 80 + "\n")
    bad = bad.replace("      - There is a large area of LAD scar\n", "      - Left ventricle is dilated\n")
    p = tmp_path / "bad.yaml"
    p.write_text(bad)
    bank, issues = lint_bank(p, enc, model_sha256(enc.manifest))
    text = [(i.level, i.message) for i in issues]
    assert ("error", "duplicate prompt 'left ventricle is dilated' in this finding") in text
    assert any(lvl == "error" and "tokens, over the model's 64" in m for lvl, m in text)
    assert any(lvl == "warning" and "Xylophonequasidodecahedral" in m and "unknown" in m for lvl, m in text)
    assert any(lvl == "warning" and "also used by finding 'lv_dilation'" in m for lvl, m in text)
    assert any(lvl == "warning" and "no threshold for model 'tiny-test-model'" in m for lvl, m in text)
    assert all(str(p) in i.where for i in issues)
    # schema errors come back with file:line; the CLI exits 1 on errors and 0 with warnings only
    (tmp_path / "schema.yaml").write_text(BANK.replace("    label: LGE\n", ""))
    _, issues = lint_bank(tmp_path / "schema.yaml")
    assert issues[0].level == "error" and f"{tmp_path / 'schema.yaml'}:12" in issues[0].message
    good = tmp_path / "good.yaml"
    good.write_text(BANK)
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "cmrdx", "prompts", "lint", str(good), "--model", str(tiny_model)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "cmrdx", "prompts", "lint", str(p), "--no-model"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "duplicate prompt" in r.stdout


def test_evaluate_auc_equals_scikit_learn(embedded, tmp_path):
    enc, sha, es = embedded
    p = tmp_path / "b.yaml"
    p.write_text(BANK)
    bank = load_bank(p)
    temb = bank_text_embeddings(bank, enc.encode_texts, None)
    evals = {e.id: e for e in evaluate_bank(es, bank, temb, enc.manifest.name, sha, n_boot=200)}
    scores = finding_scores(es, bank, temb, enc.manifest.name, sha)
    for fid in ("lv_dilation", "lge"):
        idx, y = es.labels(fid)
        assert evals[fid].auc.auc == pytest.approx(roc_auc_score(y, scores[fid][idx]))
        assert evals[fid].auc.low <= evals[fid].auc.auc <= evals[fid].auc.high
        # per-prompt AUC and leave-one-out are computed on the single prompts
        t0 = bank.finding(fid).prompts[0]
        assert evals[fid].per_prompt[t0].auc == pytest.approx(roc_auc_score(y, es.embeddings[idx] @ temb[t0]))
        t1 = bank.finding(fid).prompts[1]
        assert evals[fid].leave_one_out[t0] == pytest.approx(evals[fid].per_prompt[t1].auc)


def test_calibrate_meets_criterion_and_keeps_comments(embedded, phantom_archive, tmp_path):
    enc, sha, es = embedded
    p = tmp_path / "b.yaml"
    p.write_text(BANK)
    bank = load_bank(p)
    temb = bank_text_embeddings(bank, enc.encode_texts, None)
    fits = calibrate_bank(es, bank, temb, enc.manifest.name, sha, "sens-eq-spec", min_positives=3)
    scores = finding_scores(es, bank, temb, enc.manifest.name, sha)
    for fid, ft in fits.items():
        idx, y = es.labels(fid)
        sens, spec = sens_spec(y, scores[fid][idx], ft.threshold)
        assert (sens, spec) == pytest.approx((ft.sensitivity, ft.specificity))
        # sens = spec up to one study of the smaller class
        assert abs(sens - spec) <= 1.0 / min(y.sum(), len(y) - y.sum()) + 1e-9
    write_thresholds(p, enc.manifest.name, sha, fits, {f: {"n_positive": 1} for f in fits})
    text = p.read_text()
    assert "# A test bank. This comment must survive calibration." in text
    assert "# inline comment kept too" in text
    assert text.index("id: lv_dilation") < text.index("id: lge")
    again = load_bank(p)
    for fid, ft in fits.items():
        cal = again.finding(fid).calibration_for(enc.manifest.name, sha)
        assert cal.threshold == pytest.approx(ft.threshold, abs=1e-6) and cal.method == "sens-eq-spec"
    # calibrating again replaces this model's entry instead of adding a second one
    write_thresholds(p, enc.manifest.name, sha, fits, {})
    assert len(load_bank(p).finding("lge").calibrations) == 1
    # a classify with the calibrated bank now makes calls
    res = classify(phantom_archive / "study_0001", model=enc.manifest.root, banks=[p], device="cpu", text_cache_dir=tmp_path)
    assert {f.call for f in res.findings} <= {"present", "absent", "uncertain"}


def test_calibrate_refuses_too_few_positives(embedded, tmp_path):
    enc, sha, es = embedded
    p = tmp_path / "b.yaml"
    p.write_text(BANK)
    bank = load_bank(p)
    temb = bank_text_embeddings(bank, enc.encode_texts, None)
    with pytest.raises(CmrdxError) as ei:
        calibrate_bank(es, bank, temb, enc.manifest.name, sha, "youden", min_positives=50)
    assert "positives" in ei.value.message and "b.yaml" in ei.value.message


@pytest.mark.parametrize("method", ["sens-eq-spec", "youden", "platt", "isotonic"])
def test_fit_methods_on_separable_scores(method):
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(40, int), np.ones(40, int)]
    s = np.r_[rng.normal(0.50, 0.01, 40), rng.normal(0.53, 0.01, 40)]
    ft = fit(y, s, method)
    assert 0.5 < ft.threshold < 0.53
    assert ft.sensitivity > 0.8 and ft.specificity > 0.8
    if method == "platt":
        a, b = ft.platt
        assert a > 0 and 1 / (1 + np.exp(-(a * 0.56 + b))) > 0.9
    assert auc_ci(y, s, n_boot=100).auc > 0.9


def test_one_shot_prototypes_beat_chance_on_a_separable_finding():
    """Two clusters in embedding space (a finding that changes the image): 1 example each separates them."""
    rng = np.random.default_rng(1)
    d = 16
    a, b = rng.normal(size=d), rng.normal(size=d)
    emb = np.r_[a + 0.6 * rng.normal(size=(50, d)), b + 0.6 * rng.normal(size=(50, d))]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    support = np.full(100, -1)
    support[[0, 50]] = [0, 1]  # one shot per class
    protos = fit_prototypes(emb, {"f": support}, "m", "0" * 64)
    scores = np.array([protos.score(e)["f"] for e in emb])
    assert roc_auc_score(y, scores) > 0.9


def test_fewshot_fit_cli_and_classify_with_prototypes(phantom_archive, tiny_model, tmp_path):
    out = tmp_path / "protos.npz"
    env = {"PATH": "/usr/bin:/bin", "CMRDX_HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "cmrdx", "fewshot", "fit", "--labels", str(phantom_archive / "labels.csv"),
                        "--out", str(out), "--finding", "lge", "--finding", "lv_dilation", "--shots", "2",
                        "--model", str(tiny_model), "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    protos = Prototypes.load(out)
    assert protos.findings == ["lge", "lv_dilation"] and (protos.shots <= 2).all()
    with np.load(out) as z:
        assert set(z.files) == {"meta", "centre", "protos", "shots"}  # no UIDs, paths or names
    res = classify(phantom_archive / "study_0002", model=tiny_model, device="cpu", prototypes=out, text_cache_dir=tmp_path)
    assert set(res.fewshot) == {"lge", "lv_dilation"}
    assert res.to_dict()["fewshot"]["lge"]["call"] in ("present", "absent")
    other = Prototypes(protos.model_name, "f" * 64, protos.findings, protos.centre, protos.protos, protos.shots)
    other.save(tmp_path / "other.npz")
    with pytest.raises(ModelError):
        classify(phantom_archive / "study_0002", model=tiny_model, device="cpu", prototypes=tmp_path / "other.npz",
                 text_cache_dir=tmp_path)
