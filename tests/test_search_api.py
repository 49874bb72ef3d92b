"""Search as a Python API: ``index_archive``, ``search`` and ``similar`` give what `cmrdx index / search /
similar` print (the commands only parse and print), refuse another model, and write the store atomically."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from cmrdx.cli import app
from cmrdx.errors import ModelError
from cmrdx.pipeline.search import Hit, Store, build_store, index_archive, search, similar

# caches (prompt and study embeddings) in a folder of this module's own, not the user's
pytestmark = pytest.mark.usefixtures("module_home")


@pytest.fixture(scope="module")
def store(phantom_archive, tiny_model, tmp_path_factory):
    """A store over six phantom studies, built by the command (an archive, so through a batch run)."""
    tmp = tmp_path_factory.mktemp("search")
    arch = tmp / "archive"
    for i in range(1, 7):
        shutil.copytree(phantom_archive / f"study_{i:04d}", arch / f"study_{i:04d}")
    db = tmp / "db"
    r = CliRunner().invoke(app, ["index", str(arch), "--db", str(db), "--model", str(tiny_model), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())  # rich wraps long lines
    assert "embedded 6 studies (0 failed)" in said and "6 studies, 16-d, model tiny-test-model, exact search" in said
    return arch, db


def _cli_json(*args: str) -> list[dict]:
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_search_api_equals_the_command(store, tiny_model):
    arch, db = store
    query = "the left ventricle is dilated"
    hits = search(db, query, 4, model=str(tiny_model), device="cpu")
    assert all(isinstance(h, Hit) for h in hits) and [h.rank for h in hits] == [1, 2, 3, 4]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    cli = _cli_json("search", query, "--db", str(db), "-k", "4", "--model", str(tiny_model), "--device", "cpu")
    assert cli == [h.to_dict() for h in hits]
    assert "patient" not in cli[0]  # never unless asked for
    # the Store object and --exact give the same (the store has no ANN index)
    assert search(Store(db), query, 4, model=str(tiny_model), device="cpu", exact=True) == hits


def test_similar_api_equals_the_command_and_finds_the_study_itself(store, tiny_model):
    arch, db = store
    study = arch / "study_0003"
    hits = similar(db, study, 3, model=str(tiny_model), device="cpu")
    assert hits[0].source.startswith("study_0003") and hits[0].score == pytest.approx(1.0, abs=1e-4)
    cli = _cli_json("similar", str(study), "--db", str(db), "-k", "3", "--model", str(tiny_model), "--device", "cpu")
    assert cli == [h.to_dict() for h in hits]
    from cmrdx.study.assemble import assemble_study

    assert similar(db, assemble_study(study), 3, model=str(tiny_model), device="cpu") == hits  # a Study works too


def test_patients_only_on_request_and_as_the_command_shows_them(store, tiny_model):
    arch, db = store
    hits = similar(db, arch / "study_0001", 2, model=str(tiny_model), device="cpu", show_phi=True)
    assert all(h.patient and not h.patient.startswith("?") for h in hits)
    cli = _cli_json("similar", str(arch / "study_0001"), "--db", str(db), "-k", "2", "--model", str(tiny_model),
                    "--device", "cpu", "--show-phi")
    assert [r["patient"] for r in cli] == [h.patient for h in hits]


def test_another_model_is_refused(store, tiny_model, tmp_path):
    arch, db = store
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    m = other / "manifest.json"
    m.write_text(m.read_text().replace('"version": "0.0.1"', '"version": "0.0.2"'))
    with pytest.raises(ModelError, match="was built with model 'tiny-test-model'"):
        search(db, "effusion", model=str(other), device="cpu")
    with pytest.raises(ModelError, match="which is not installed"):  # the store's own model, not in the registry
        search(db, "effusion", device="cpu")


def test_index_archive_resumes_its_batch_run(store, tiny_model, tmp_path):
    arch, _ = store
    db = tmp_path / "db"
    info, s = index_archive(arch, db, model=str(tiny_model), device="cpu")
    assert (info["count"], s.ok, s.done_before) == (6, 6, 0) and info["archive"] == str(arch.resolve())
    info2, s2 = index_archive(arch, db, model=str(tiny_model), device="cpu")
    assert s2.done_before == 6 and info2 == info


def test_stores_are_written_atomically_and_the_ann_index_reads_back(tmp_path):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((3000, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    info = build_store(tmp_path / "db", [str(i) for i in range(3000)], ["x"] * 3000, emb, "m", "a" * 64, ann="ivf")
    assert sorted(p.name for p in (tmp_path / "db").iterdir()) == ["ann.faiss", "embeddings.npy", "index.json", "studies.jsonl"]
    st = Store(tmp_path / "db")
    assert st.info == info and info["ann"]["kind"] == "faiss-ivf-flat"
    assert st.search_vector(emb[7], 1)[0].study_uid == "7"
