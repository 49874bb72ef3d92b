"""Few-shot prototypes from labelled studies as an API: the support labels (``--shots`` truncation included) are
built by ``labels_for_prototypes``, fitted by ``fit_from_labelled``, and `cmrdx fewshot fit` writes exactly
what the API gives."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from cmrdx.errors import CmrdxError
from cmrdx.zeroshot.fewshot import Prototypes, fit_from_labelled, fit_prototypes, labels_for_prototypes

# caches (prompt and study embeddings) in a folder of this module's own, not the user's
pytestmark = pytest.mark.usefixtures("module_home")


@dataclass
class Row:
    labels: dict


@dataclass
class Embedded:
    rows: list
    embeddings: np.ndarray
    failed: list = field(default_factory=list)


ROWS = [Row({"a": 1, "b": 0}), Row({"a": 0, "b": None}), Row({"a": 1, "b": 1}), Row({"a": None, "b": 0}),
        Row({"a": 0, "b": 1}), Row({"a": 1, "b": 0}), Row({"a": 0, "b": 1})]


def test_labels_keep_the_first_shots_of_each_class_in_row_order():
    y = labels_for_prototypes(ROWS)
    assert list(y) == ["a", "b"]  # the first row's columns by default
    assert y["a"].tolist() == [1, 0, 1, -1, 0, 1, 0] and y["b"].tolist() == [0, -1, 1, 0, 1, 0, 1]
    y = labels_for_prototypes(ROWS, ["b"], shots=2)
    assert list(y) == ["b"] and y["b"].tolist() == [0, -1, 1, 0, 1, -1, -1]
    y = labels_for_prototypes(ROWS, ["a"], shots=1)
    assert y["a"].tolist() == [1, 0, -1, -1, -1, -1, -1]
    assert labels_for_prototypes(ROWS, ["a"], shots=None)["a"].tolist() == labels_for_prototypes(ROWS, ["a"])["a"].tolist()


def test_fit_from_labelled_is_fit_prototypes_on_those_labels():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(ROWS), 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    got = fit_from_labelled(Embedded(ROWS, emb), None, 2, "m", "0" * 64)
    want = fit_prototypes(emb, labels_for_prototypes(ROWS, None, 2), "m", "0" * 64)
    assert got.findings == want.findings == ["a", "b"]
    assert got.shots.tolist() == [[2, 2], [2, 2]]
    for k in ("centre", "protos"):
        assert np.array_equal(getattr(got, k), getattr(want, k))
    with pytest.raises(CmrdxError, match="no labelled study could be embedded: unreadable"):
        fit_from_labelled(Embedded([], np.zeros((0, 8)), [("s1", "unreadable")]), ["a"], None, "m", "0" * 64)
    with pytest.raises(CmrdxError, match="no finding"):
        fit_prototypes(emb, {}, "m", "0" * 64)


def test_save_is_atomic_and_reads_back(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((len(ROWS), 8)).astype(np.float32)
    p = fit_from_labelled(Embedded(ROWS, emb / np.linalg.norm(emb, axis=1, keepdims=True)), ["a"], None, "m", "0" * 64)
    out = tmp_path / "new" / "protos.npz"
    p.save(out)
    p.save(out)  # over an existing file
    assert [f.name for f in out.parent.iterdir()] == ["protos.npz"]  # no temporary file left
    q = Prototypes.load(out)
    assert q.findings == ["a"] and np.array_equal(q.protos, p.protos) and np.array_equal(q.shots, p.shots)


def test_the_command_writes_what_the_api_gives(phantom_archive, tiny_model, tmp_path):
    from typer.testing import CliRunner

    from cmrdx.cli import app
    from cmrdx.evaluation.archive import StudyEmbeddingCache, embed_labelled, load_labels
    from cmrdx.model.loader import get_encoder, model_sha256

    out = tmp_path / "protos.npz"
    r = CliRunner().invoke(app, ["fewshot", "fit", "--labels", str(phantom_archive / "labels.csv"), "--out", str(out),
                                 "--finding", "lge", "--finding", "lv_dilation", "--shots", "2",
                                 "--model", str(tiny_model), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    enc = get_encoder(str(tiny_model), "cpu")
    sha = model_sha256(enc.manifest)
    es = embed_labelled(load_labels(phantom_archive / "labels.csv", None, ["lge", "lv_dilation"]), enc,
                        StudyEmbeddingCache(sha))
    api = fit_from_labelled(es, ["lge", "lv_dilation"], 2, enc.manifest.name, sha)
    cli = Prototypes.load(out)
    assert cli.findings == api.findings and cli.shots.tolist() == api.shots.tolist() == [[2, 2], [2, 2]]
    assert np.allclose(cli.protos, api.protos, atol=1e-6) and np.allclose(cli.centre, api.centre, atol=1e-6)
    assert (cli.model_name, cli.model_sha256) == (api.model_name, api.model_sha256)
    assert "lge 2/2, lv_dilation 2/2" in " ".join(r.output.split())
