"""Leave-one-family-out benchmark logic (cmrdx.evaluation.families): splits, the families of an archive's studies,
per-family subsets and AUCs, and a randomised archive read through the evaluation path."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cmrdx.evaluation.benchmarks import EvalSet
from cmrdx.evaluation.families import (
    DEFAULT_HELD_OUT,
    family_mask,
    family_zeroshot,
    lofo_split,
    lofo_verdict,
    markdown_families,
    study_families,
    subset,
)


def test_splits_name_the_family_its_findings_and_archives():
    s = lofo_split("scar:midwall")
    assert s.findings == ("lge",)
    assert s.train_archive() == {"variety": True, "exclude_families": ["scar:midwall"]}
    t = s.test_archive()
    assert t["only_families"] == ["scar:midwall"] and t["prevalence"]["lge"] == 0.5 and t["prevalence"]["lv_dilation"] == 0.3
    cmds = s.commands("TRAIN", "TEST", n_train=4000, n_test=100, seed_train=40, seed_test=41, model="m")
    assert "--exclude-families scar:midwall" in cmds[0] and "--only-families scar:midwall" in cmds[1]
    assert cmds[2] == "cmrdx eval families --model m --data TEST --family scar:midwall"
    assert lofo_split("cine:bssfp").findings[0] == "lv_dysfunction"  # a family without a predefined split
    assert lofo_split("hypertrophy:septal").test_prevalence == {"lv_hypertrophy": 0.5}
    assert all(lofo_split(f) for f in DEFAULT_HELD_OUT)
    with pytest.raises(ValueError, match="unknown family"):
        lofo_split("scar:wiggly")


def _eval_set(n: int, rng: np.random.Generator, lge: np.ndarray) -> EvalSet:
    sev = {"lge": np.where(lge == 1, "moderate", "none"), "lv_dilation": np.where(rng.random(n) < 0.3, "mild", "none")}
    return EvalSet(ids=[f"study_{i + 1:04d}" for i in range(n)], study_emb=np.zeros((n, 4), np.float32),
                   reports=["r"] * n, severity=sev)


def test_study_families_mask_and_subset(tmp_path):
    root = tmp_path / "arch"
    fams = [["lge:psir", "scar:midwall"], ["lge:psir"], ["lge:magnitude", "scar:transmural"], ["lge:magnitude"], []]
    for i, f in enumerate(fams):
        d = root / f"study_{i + 1:04d}"
        d.mkdir(parents=True)
        (d / "truth.json").write_text(json.dumps({"families": f} if i < 4 else {"findings": {}}))
    (root / "labels.csv").write_text("study,families\nstudy_0005,lge:magnitude;cine:gre\n")
    es = _eval_set(5, np.random.default_rng(0), np.array([1, 0, 1, 0, 0]))
    got = study_families(root, es.ids)
    assert got[:4] == [set(f) for f in fams[:4]] and got[4] == {"lge:magnitude", "cine:gre"}
    # a family of the LGE contrast: the studies drawn with it
    assert family_mask(es, got, "lge:psir").tolist() == [True, True, False, False, False]
    # a scar pattern: its positives, and every study without LGE as a negative
    assert family_mask(es, got, "scar:midwall").tolist() == [True, True, False, True, True]
    sub = subset(es, family_mask(es, got, "scar:midwall"))
    assert sub.ids == ["study_0001", "study_0002", "study_0004", "study_0005"]
    assert sub.labels("lge").tolist() == [1, 0, 0, 0]


class _TextEncoder:
    """Prompt embeddings one axis per finding (negative prompts the opposite way): a study embedding along a
    finding's axis scores high for it."""

    def __init__(self, bank):
        self.manifest = SimpleNamespace(name="fake", embedding_dim=len(bank.findings) + 1)
        self.axis = {}
        for j, f in enumerate(bank.findings):
            e = np.zeros(self.manifest.embedding_dim, np.float32)
            e[j] = 1.0
            for t in f.prompts + [t for ts in f.severity.values() for t in ts]:
                self.axis[t] = e
            for t in f.negative_prompts:
                self.axis[t] = -e
        self.encode_texts = lambda texts: np.stack([self.axis[t] for t in texts])  # not a bound method


def test_family_zeroshot_finds_the_family_a_model_is_blind_to(tmp_path):
    from cmrdx.zeroshot.bank import load_bank

    bank = load_bank("cmr-findings")
    enc = _TextEncoder(bank)
    rng = np.random.default_rng(3)
    n = 120
    lge = (rng.random(n) < 0.4).astype(int)
    psir = rng.random(n) < 0.5
    es = _eval_set(n, rng, lge)
    j = [f.id for f in bank.findings].index("lge")
    emb = rng.normal(0, 0.3, (n, enc.manifest.embedding_dim)).astype(np.float32)
    emb[:, j] += np.where(psir, 0.0, 1.5 * lge)  # the model sees scar on magnitude images only
    es.study_emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    root = tmp_path / "arch"
    for i, sid in enumerate(es.ids):
        (root / sid).mkdir(parents=True)
        (root / sid / "truth.json").write_text(json.dumps({"families": ["lge:psir" if psir[i] else "lge:magnitude"]}))
    r = family_zeroshot(es, root, bank, enc, n_boot=50)
    assert set(r["families"]) == {"lge:psir", "lge:magnitude"}
    mag, ps = r["families"]["lge:magnitude"]["findings"]["lge"], r["families"]["lge:psir"]["findings"]["lge"]
    assert mag["auc"] > 0.95 and ps["auc"] < 0.75 and r["overall"]["lge"]["auc"] > ps["auc"]
    assert mag["n"] + ps["n"] == n
    md = markdown_families(r)
    assert "| `lge:psir` |" in md and "**" in md and "Late gadolinium enhancement" in md
    v = lofo_verdict(r, "lge:psir")
    assert v["passed"] is False and v["auc"]["lge"] == ps["auc"]
    assert lofo_verdict(r, "lge:magnitude", threshold=0.9)["passed"] is True
    # too few positives: no AUC, the counts instead
    few = family_zeroshot(es, root, bank, enc, families=["lge:psir"], n_boot=0, min_positives=1000)
    assert few["families"]["lge:psir"]["findings"] == {} and few["overall"]["lge"]["auc"] is None


class _VideoEncoder:
    """The shipped model's manifest and recipe with a stand-in video tower (as in test_eval.py)."""

    def __init__(self):
        from cmrdx.model.manifest import load_manifest

        self.manifest = load_manifest(Path(__file__).resolve().parents[1] / "models" / "cmrdx-phantom-small",
                                      verify=False)
        self.precision, self.device, self.threads = "float32", "cpu", 1

    def encode_studies(self, x):
        d = self.manifest.embedding_dim
        v = np.stack([np.cos(np.arange(d) * float(s.mean()) + float(s.std())) for s in x]).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_randomised_archive_reads_through_the_evaluation_path(tmp_path):
    """PSIR images, missing views and extra series go through assembly and the model's recipe like any study."""
    from cmrdx.evaluation.benchmarks import load_eval_set
    from cmrdx.synth import write_archive

    arch = tmp_path / "arch"
    write_archive(arch, 3, 91, prevalence=0.5, n_phases=6, matrix=64, only_families=["lge:psir", "views:missing"],
                  distractors=False)
    es = load_eval_set(arch, _VideoEncoder(), cache_dir=tmp_path / "cache")
    assert len(es.ids) == 3 and not es.skipped
    fams = study_families(arch, es.ids)
    assert all({"lge:psir", "views:missing"} <= f for f in fams)


def test_eval_families_command_scores_a_held_out_family_and_refuses_an_unknown_one(tmp_path, monkeypatch):
    """`cmrdx eval families` with the bundled model on a small randomised archive: a table per family, the held-out
    family's verdict against the target, the JSON written; an unknown family is a usage error."""
    from typer.testing import CliRunner

    from cmrdx.cli import app
    from cmrdx.synth import write_archive

    monkeypatch.setenv("CMRDX_HOME", str(tmp_path / "home"))
    arch = tmp_path / "arch"
    write_archive(arch, 6, 17, prevalence=0.5, n_phases=6, matrix=64, variety=True, distractors=False)
    out = tmp_path / "fam.json"
    r = CliRunner().invoke(app, ["eval", "families", "--data", str(arch), "--family", "cine:bssfp", "--bootstrap", "0",
                                 "--min-positives", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert [v["family"] for v in d["lofo"]] == ["cine:bssfp"] and "threshold" in d["lofo"][0]
    assert "cine:bssfp" in r.output and "AUC >= 0.85" in r.output  # the verdict line (wrapped by the terminal)
    r = CliRunner().invoke(app, ["eval", "families", "--data", str(arch), "--family", "scar:nonsense"])
    assert r.exit_code == 2 and "--family" in r.output
