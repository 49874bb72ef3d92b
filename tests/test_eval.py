"""Benchmark metrics against their definitions, and `cmrdx eval` end to end on real DICOM phantom studies."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmrdx.evaluation.benchmarks import (
    auc,
    bootstrap_auc,
    fewshot_auc,
    markdown_tables,
    retrieval_metrics,
    simpleshot_scores,
)


def pairwise_auc(s, y):
    pos = [a for a, t in zip(s, y) if t]
    neg = [a for a, t in zip(s, y) if not t]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=40))
def test_auc_equals_pairwise_definition_with_ties(pairs):
    s = [float(a) for a, _ in pairs]
    y = [int(b) for _, b in pairs]
    if 0 < sum(y) < len(y):
        assert auc(s, y) == pytest.approx(pairwise_auc(s, y), abs=1e-12)
    else:
        assert np.isnan(auc(s, y))


def test_bootstrap_ci_brackets_the_auc_and_narrows_with_data():
    rng = np.random.default_rng(0)

    def sample(n):
        y = rng.integers(0, 2, n)
        return y + rng.normal(0, 1.0, n), y

    s, y = sample(60)
    lo, hi = bootstrap_auc(s, y, n_boot=400)
    assert lo <= auc(s, y) <= hi
    s2, y2 = sample(600)
    lo2, hi2 = bootstrap_auc(s2, y2, n_boot=400)
    assert hi2 - lo2 < hi - lo
    assert bootstrap_auc(s, y, n_boot=50, seed=3) == bootstrap_auc(s, y, n_boot=50, seed=3)


def test_retrieval_ranks():
    perfect = np.eye(5) + 0.1
    r = retrieval_metrics(perfect)
    assert r["R@1"] == 1.0 and r["median_rank"] == 1.0 and r["n"] == 5
    # the match is always the worst item: rank n for every query
    worst = -np.eye(5)
    r = retrieval_metrics(worst, ks=(1, 5))
    assert r["R@1"] == 0.0 and r["R@5"] == 1.0 and r["median_rank"] == 5.0
    # a tie with the match counts against the query
    assert retrieval_metrics(np.ones((3, 3)))["R@1"] == 0.0


def test_simpleshot_prototypes_separate_clusters():
    rng = np.random.default_rng(1)
    d = 16
    cpos, cneg = rng.normal(size=d), rng.normal(size=d)
    y = np.r_[np.ones(40, int), np.zeros(60, int)]
    emb = np.where(y[:, None] == 1, cpos, cneg) + 0.3 * rng.normal(size=(100, d))
    sc = simpleshot_scores(emb[[0, 1, 50, 51]], y[[0, 1, 50, 51]], emb)
    assert auc(sc, y) > 0.99
    m, sd, n = fewshot_auc(emb, y, 2, episodes=20)
    assert n == 20 and m > 0.99
    # no signal: chance level on average
    m0, _, _ = fewshot_auc(rng.normal(size=(100, d)), y, 4, episodes=40)
    assert 0.35 < m0 < 0.65
    # too few positives for the shot count
    assert fewshot_auc(emb, y, 40)[2] == 0


def test_markdown_tables_show_published_figures_side_by_side():
    zs = {"n": 3, "bank": "b", "findings": {"lge": {
        "label": "LGE", "kind": "mean-cosine", "auc": 0.9, "ci95": [0.8, 0.95], "positives": 1,
        "by_severity": {"none": {"n": 2, "mean_score": 0.1}, "mild": {"n": 1, "mean_score": 0.2, "auc_vs_none": 1.0},
                        "moderate": {"n": 0, "mean_score": None, "auc_vs_none": None},
                        "severe": {"n": 0, "mean_score": None, "auc_vs_none": None}}}}}
    md = markdown_tables(zs, None, None)
    assert "| LGE | 1 | 0.900 | 0.800-0.950 | 0.705 | 0.621 |" in md


# ---------------------------------------------------------------- one archive reader, one embedding cache


class FakeEncoder:
    """The shipped model's manifest (identity and recipe) with a stand-in video tower: a unit vector made
    from the input's statistics, counting the studies it encodes."""

    def __init__(self, precision: str = "float32"):
        from pathlib import Path

        from cmrdx.model.manifest import load_manifest

        self.manifest = load_manifest(Path(__file__).resolve().parents[1] / "models" / "cmrdx-phantom-small",
                                      verify=False)
        self.precision, self.device, self.threads, self.calls = precision, "cpu", 1, 0

    def encode_studies(self, x):
        self.calls += len(x)
        d = self.manifest.embedding_dim
        v = np.stack([np.cos(np.arange(d) * float(s.mean()) + float(s.std())) for s in x]).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory):
    from cmrdx.synth import write_archive

    arch = tmp_path_factory.mktemp("eval") / "arch"
    write_archive(arch, 3, 77, prevalence=0.5, n_phases=8, matrix=64, report_styles=["telegraphic"])
    return arch


def test_benchmarks_and_authoring_share_one_study_embedding_cache(small_archive, tmp_path):
    from cmrdx.evaluation.archive import StudyEmbeddingCache, embed_labelled, read_archive
    from cmrdx.evaluation.benchmarks import load_eval_set

    enc, cache_dir = FakeEncoder(), tmp_path / "cache"
    sha = enc.manifest.sha256  # the model's identity
    # the authoring / few-shot path fills the cache (labels.csv gives each study's UID)...
    es = embed_labelled(read_archive(small_archive), enc, StudyEmbeddingCache(sha, cache_dir))
    assert enc.calls == 3 and es.cached == 0 and len(es.encode_seconds) == 3
    # ... and the benchmarks read the same entries: nothing is encoded again
    ev = load_eval_set(small_archive, enc, cache_dir=cache_dir)
    assert enc.calls == 3 and ev.cached == 3 and ev.encode_ms is None and ev.read_ms is None
    np.testing.assert_array_equal(ev.study_emb, es.embeddings)
    assert ev.ids == ["study_0001", "study_0002", "study_0003"] and all(ev.reports)
    # the precision the encoder runs at is part of the key
    assert load_eval_set(small_archive, FakeEncoder("float16"), cache_dir=cache_dir).cached == 0
    # a row without a UID learns it from the DICOM headers, then finds its entry
    rows = read_archive(small_archive)
    for r in rows:
        r.study_uid = None
    again = embed_labelled(rows, enc, StudyEmbeddingCache.for_encoder(enc, cache_dir))
    assert enc.calls == 3 and again.cached == 3 and [r.study_uid for r in rows] == [r.study_uid for r in es.rows]
    # refresh recomputes and rewrites; entries are written atomically, no temporary file is left
    fresh = load_eval_set(small_archive, enc, cache_dir=cache_dir, refresh=True)
    assert enc.calls == 6 and fresh.cached == 0 and fresh.encode_ms is not None
    assert sorted(p.parent.parent.name for p in cache_dir.rglob("*.npy")) == [f"{sha[:32]}-float16"] * 3 + [
        f"{sha[:32]}-float32"] * 3
    assert not [p for p in cache_dir.rglob("*") if p.is_file() and p.suffix != ".npy"]
    # a cache made for another model or another precision is refused, never mixed
    with pytest.raises(ValueError, match="used with an encoder running float32"):
        embed_labelled(rows, enc, StudyEmbeddingCache(sha, cache_dir, precision="float16"))
    with pytest.raises(ValueError, match="used with model"):
        StudyEmbeddingCache("0" * 64, cache_dir).bind(enc)
    with pytest.raises(ValueError, match="not bound to a precision"):
        StudyEmbeddingCache(sha, cache_dir).get("1.2.3")


def test_archive_labels_from_csv_or_truth_json_and_blank_labels(small_archive, tmp_path):
    import csv
    import shutil

    from cmrdx.evaluation.archive import read_archive
    from cmrdx.evaluation.benchmarks import fewshot, load_eval_set

    from_csv = read_archive(small_archive)
    arch = tmp_path / "arch"
    shutil.copytree(small_archive, arch)
    (arch / "labels.csv").unlink()
    (arch / "study_0002" / "truth.json").unlink()  # a study folder without labels is skipped and counted
    (arch / "study_0003" / "report.txt").unlink()  # as is one without a report
    from_truth = read_archive(arch)
    assert [(r.key, r.study_uid, r.labels, r.severities) for r in from_truth] == [
        (r.key, r.study_uid, r.labels, r.severities) for r in from_csv if r.key != "study_0002"]
    enc = FakeEncoder()
    ev = load_eval_set(arch, enc, cache_dir=tmp_path / "cache")
    assert ev.ids == ["study_0001"] and ev.skipped == {"no labels": 1, "no report.txt": 1}
    # a labels CSV with a blank label and no severity columns: "present", "none" and "unknown"
    with open(small_archive / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["lge"], rows[1]["lge"], rows[2]["lge"] = "1", "0", ""
    cols = ["study", "study_instance_uid", "lge"]
    with open(small_archive / "blank.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    shutil.copy(small_archive / "blank.csv", tmp_path / "labels.csv")
    arch2 = tmp_path / "arch2"
    shutil.copytree(small_archive, arch2, ignore=shutil.ignore_patterns("labels.csv", "blank.csv"))
    shutil.copy(tmp_path / "labels.csv", arch2 / "labels.csv")
    ev = load_eval_set(arch2, enc, cache_dir=tmp_path / "cache")
    assert ev.severity["lge"].tolist() == ["present", "none", "unknown"]
    assert ev.known("lge").tolist() == [True, True, False] and ev.labels("lge")[:2].tolist() == [1, 0]
    assert fewshot(ev, ["lge"], shots=(1,), episodes=2)["findings"]["lge"]["1"]["episodes"] == 0  # 1+1 known


def test_speed_times_one_study_on_the_given_clock():
    from pathlib import Path

    from cmrdx.evaluation.benchmarks import SpeedResult, speed

    ticks = iter(range(1000))
    enc = FakeEncoder()
    r = speed(Path(__file__).resolve().parents[1] / "examples" / "phantom-study", enc, repeats=3,
              clock=lambda: float(next(ticks)))
    assert isinstance(r, SpeedResult) and enc.calls == 4  # a warm-up, then the repeats
    # one tick a reading: reading + recipe 1 s, each encoder run 1 s
    assert (r.read_and_recipe_ms, r.encode_ms_median, r.encode_ms_min, r.repeats) == (1000.0, 1000.0, 1000.0, 3)
    fr = enc.manifest.recipe_params()
    assert r.input_shape == [1, fr.input_frames, 3, fr.image_size, fr.image_size]
    assert r.to_dict()["model"] == "cmrdx-phantom-small" and r.cpu
