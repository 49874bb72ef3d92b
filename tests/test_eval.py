"""Benchmark metrics against their definitions, and `cmrdx eval` end to end on real DICOM phantom studies."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmrdx.evaluation.benchmarks import (
    auc, bootstrap_auc, fewshot_auc, markdown_tables, retrieval_metrics, simpleshot_scores,
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


def test_cli_import_stays_light_and_lists_train_and_eval():
    import subprocess
    import sys

    code = ("import sys, cmrdx.cli; assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules; "
            "names = {c.name for c in cmrdx.cli.app.registered_commands} | {g.name for g in cmrdx.cli.app.registered_groups}; "
            "assert {'train', 'eval'} <= names, names")
    subprocess.run([sys.executable, "-c", code], check=True)
