"""A model with a finding stream has two embeddings per study: the one prompts are compared with and the main paths'
one, which distances between studies use. Batch runs measure typicality on the main embedding and keep it (journal,
``OUT.embeddings.npz``, search store) only when it differs; study -> study search and similar prior cases rank by
it, text search by the embedding. A model without a finding stream writes exactly what it always did.

The finding stream is stood in for by the bundled model with ``encode_studies_main`` patched to return a fixed
non-orthogonal mix of its embedding (a rotation would keep every cosine, so rankings could not tell the two apart)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cmrdx.errors import CmrdxError
from cmrdx.model.loader import get_encoder, model_sha256
from cmrdx.model.reference import load_reference
from cmrdx.model.registry import get_manifest
from cmrdx.pipeline.batch import (
    BatchOptions,
    Discovery,
    EncodedStudy,
    RecordContext,
    build_record,
    decode_embedding,
    embeddings_path,
    encode_embedding,
    journal_path,
    run_batch,
    write_results,
)
from cmrdx.pipeline.batch.local import LocalEngine
from cmrdx.pipeline.batch.ray_engine import _EncodeActor, _encoded
from cmrdx.pipeline.search import MAIN_FILE, Store, build_store, similar, store_from_batch

# caches (prompt and study embeddings) in a folder of this module's own, not the user's
pytestmark = pytest.mark.usefixtures("module_home")

MODEL = "cmrdx-phantom-small"
# a model without a stream of its own (0.5.0, the bundled model's main paths): the stream here is a fake one
BASE = str(Path(__file__).resolve().parents[1] / "models" / "bases" / "cmrdx-phantom-small-0.5.0")
MIX = np.random.default_rng(7).standard_normal((128, 128)).astype(np.float32)


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _main_of(emb: np.ndarray) -> np.ndarray:
    return _l2(np.asarray(emb, np.float32) @ MIX)


@pytest.fixture(scope="module")
def manifest():
    return get_manifest(BASE)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    from cmrdx.synth.archive import write_archive

    out = tmp_path_factory.mktemp("main") / "archive"
    write_archive(out, n=2, seed=3, prevalence=0.5, n_phases=8, matrix=64)
    return out


@pytest.fixture
def stream(monkeypatch):
    """0.5.0's encoder (the one batch runs and study queries load with ``model=BASE``) with a main embedding of its
    own."""
    enc = get_encoder(BASE, "cpu", "auto")
    real = enc.encode_studies_main

    def encode_studies_main(batch, progress=None):
        emb, _ = real(batch, progress)
        return emb, _main_of(emb)

    monkeypatch.setattr(enc, "encode_studies_main", encode_studies_main)
    return enc


def _ctx(tmp_path: Path, manifest, banks=(), text_emb=()) -> RecordContext:
    disc = Discovery({"1.2.3": [str(tmp_path / "a" / "s1" / "f1.dcm")]})
    return RecordContext(tmp_path / "a", disc, MODEL, model_sha256(manifest), list(banks), list(text_emb),
                         load_reference(manifest))


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in journal_path(out).read_text().splitlines()]


def test_typicality_is_measured_on_main_and_scores_on_the_embedding(tmp_path, manifest):
    from cmrdx.zeroshot.bank import get_bank

    ref = load_reference(manifest)
    bank = get_bank("cmr-findings")
    rng = np.random.default_rng(0)
    temb = {t: v for t, v in zip(bank.texts, _l2(rng.standard_normal((len(bank.texts), 128))))}
    ctx = _ctx(tmp_path, manifest, [bank], [temb])
    emb = _l2(rng.standard_normal(128))  # far from the reference's studies: atypical
    main = _l2(ref.embeddings[3] + 0.01 * rng.standard_normal(128))  # one of them: typical
    assert ref.assess(emb).status == "atypical" and ref.assess(main).status == "typical"
    meta = {"views_used": {}, "series_used": [], "warnings": [], "files_skipped": 0}
    rec = build_record(EncodedStudy("1.2.3", emb, dict(meta), main=main), ctx)
    assert rec["typicality"] == {"status": "typical", "score": ref.assess(main).score}
    assert rec["typicality"]["score"] != ref.assess(emb).score
    assert np.array_equal(decode_embedding(rec["main_embedding"]), main)
    assert np.array_equal(decode_embedding(rec["embedding"]), emb)
    assert list(rec).index("main_embedding") == list(rec).index("embedding") + 1
    plain = build_record(EncodedStudy("1.2.3", emb, dict(meta)), ctx)
    assert {k: v["score"] for k, v in rec["findings"].items()} == {k: v["score"] for k, v in plain["findings"].items()}
    # no main of its own (None, or equal values in another array): the record is what it always was
    assert "main_embedding" not in plain and plain["typicality"]["status"] == "atypical"
    same = build_record(EncodedStudy("1.2.3", emb, dict(meta), main=emb.copy()), ctx)
    assert json.dumps(same) == json.dumps(plain)


class _FakeEncoder:
    """Just what the engines call: ``encode_studies_main`` (and the Ray actor's ``manifest`` / ``main_output``)."""

    def __init__(self, own_main: bool):
        self.own_main = own_main
        self.main_output = "main_embedding" if own_main else None
        self.manifest = SimpleNamespace(embedding_dim=128)

    def encode_studies_main(self, batch, progress=None):
        emb = _l2(np.asarray(batch, np.float32).reshape(len(batch), 128, -1).mean(-1) + 0.1)
        return (emb, _main_of(emb)) if self.own_main else (emb, emb)


def _prepared() -> list[dict]:
    rng = np.random.default_rng(1)
    ok = [{"uid": f"u{i}", "array": rng.random((2, 128), np.float32), "meta": {"w": i}, "error": None, "seconds": 0.1}
          for i in range(3)]
    bad = {"uid": "bad", "array": None, "meta": {}, "error": {"type": "NoMRError", "message": "no MR"}, "seconds": 0.1}
    return [ok[0], bad, *ok[1:]]


@pytest.mark.parametrize("own_main", [True, False])
def test_both_engines_carry_the_main_embedding(own_main):
    enc = _FakeEncoder(own_main)
    prepared = _prepared()
    want_emb, want_main = enc.encode_studies_main(np.stack([p["array"] for p in prepared if p["error"] is None]))
    local = list(LocalEngine(batch_size=8)._encode(list(prepared), SimpleNamespace(encoder=enc), force=True))
    actor = _EncodeActor.__new__(_EncodeActor)  # without loading a model: the fake stands in for it
    actor.enc = enc
    batch = {"uid": np.array([p["uid"] for p in prepared]), "ok": np.array([p["error"] is None for p in prepared]),
             "array": np.array([p["array"] if p["error"] is None else np.zeros((2, 128), np.float32) for p in prepared]),
             "meta": np.array([json.dumps(p["meta"] or p["error"]) for p in prepared]),
             "seconds": np.array([p["seconds"] for p in prepared])}
    out = actor(batch)
    assert ("main" in out) is own_main  # a column of its own only for a model with a main embedding
    ray = [_encoded({k: v[i] for k, v in out.items()}) for i in range(len(prepared))]
    for studies in (local, ray):
        ok = [s for s in studies if s.ok]
        assert [s.uid for s in ok] == ["u0", "u1", "u2"] and next(s for s in studies if not s.ok).main is None
        np.testing.assert_array_equal(np.stack([s.embedding for s in ok]), want_emb)
        if own_main:
            np.testing.assert_array_equal(np.stack([s.main for s in ok]), want_main)
        else:
            assert all(s.main is None for s in ok)
        np.testing.assert_array_equal(np.stack([s.distance_embedding for s in ok]), want_main)


def test_the_npz_holds_main_only_when_a_record_has_one(tmp_path):
    rng = np.random.default_rng(2)
    embs = _l2(rng.standard_normal((3, 128)))
    recs = {f"u{i}": {"study_uid": f"u{i}", "status": "ok", "source": f"s{i}", "model": "m", "model_sha256": "a" * 64,
                      "embedding": encode_embedding(embs[i])} for i in range(3)}
    write_results(recs, tmp_path / "r.jsonl")
    with np.load(embeddings_path(tmp_path / "r.jsonl")) as z:
        assert sorted(z.files) == ["embedding", "model", "model_sha256", "source", "study_uid"]
    recs["u1"]["main_embedding"] = encode_embedding(_main_of(embs[1]))  # one record with a main of its own
    write_results(recs, tmp_path / "r.jsonl")
    with np.load(embeddings_path(tmp_path / "r.jsonl")) as z:
        np.testing.assert_array_equal(z["embedding"], embs)
        np.testing.assert_array_equal(z["main_embedding"], np.stack([embs[0], _main_of(embs[1]), embs[2]]))


def test_a_stream_run_keeps_main_through_journal_npz_store_and_study_queries(archive, stream, manifest, tmp_path):
    out = tmp_path / "r.jsonl"
    s = run_batch(archive, out, BatchOptions(model=BASE, device="cpu", workers=1))
    assert s.ok == 2
    ref = load_reference(manifest)
    recs = {r["study_uid"]: r for r in _records(out)}
    for r in recs.values():
        emb, main = decode_embedding(r["embedding"]), decode_embedding(r["main_embedding"])
        np.testing.assert_allclose(main, _main_of(emb), atol=1e-6)
        assert r["typicality"]["score"] == pytest.approx(ref.assess(main).score, abs=1e-9)
        assert r["typicality"]["score"] != pytest.approx(ref.assess(emb).score, abs=1e-6)
    s2 = run_batch(archive, out, BatchOptions(model=BASE, device="cpu", workers=1))  # resumed: the results from the journal
    assert s2.done_before == 2
    with np.load(embeddings_path(out)) as z:
        uids = list(z["study_uid"])
        np.testing.assert_array_equal(z["main_embedding"],
                                      np.stack([decode_embedding(recs[u]["main_embedding"]) for u in uids]))
    db = tmp_path / "db"
    info = store_from_batch(out, db)
    st = Store(db)
    assert info["main"] == MAIN_FILE and st.main is not None and (db / MAIN_FILE).is_file()
    np.testing.assert_array_equal(np.asarray(st.main), np.stack([decode_embedding(recs[u]["main_embedding"])
                                                                for u in uids]))
    # a study query ranks by the main embeddings: its scores are their cosines, not the embeddings'
    hits = similar(db, archive / st.rows[0]["source"], 2, model=BASE, device="cpu")
    assert hits[0].study_uid == uids[0]
    main_cos = np.asarray(st.main) @ np.asarray(st.main)[0]
    emb_cos = np.asarray(st.emb) @ np.asarray(st.emb)[0]
    assert abs(main_cos[1] - emb_cos[1]) > 1e-3  # the two measures differ, so the check below tells them apart
    assert [h.score for h in hits] == pytest.approx([main_cos[0], main_cos[1]], abs=1e-4)
    # similar prior cases of a classified study: its main embedding against the store's main embeddings
    from cmrdx.pipeline.priors import add_similar
    from cmrdx.zeroshot.bank import get_bank

    bank = get_bank("cmr-findings")
    from cmrdx.pipeline.classify import ClassifyResult

    result = SimpleNamespace(embedding=np.asarray(st.emb[0]).copy(), main_embedding=np.asarray(st.main[0]).copy(),
                             study_uid="not-in-the-store", model={"sha256": model_sha256(manifest)},
                             banks=[{"path": str(bank.path)}], timings_ms={}, similar=None)
    result.distance_embedding = ClassifyResult.distance_embedding.fget(result)  # the result's own rule
    assert result.distance_embedding is result.main_embedding
    cases = add_similar(result, db, k=2, model=BASE, device="cpu").cases
    assert [c.study_uid for c in cases] == uids[:2]
    assert [c.similarity for c in cases] == pytest.approx([main_cos[0], main_cos[1]], abs=1e-5)


def test_a_model_without_a_stream_writes_what_it_always_did(archive, manifest, tmp_path):
    out = tmp_path / "r.jsonl"
    assert get_encoder(BASE, "cpu", "auto").main_output is None
    assert run_batch(archive, out, BatchOptions(model=BASE, device="cpu", workers=1)).ok == 2
    recs = _records(out)
    assert all("main_embedding" not in r for r in recs)
    ref = load_reference(manifest)
    assert all(r["typicality"]["score"] == ref.assess(decode_embedding(r["embedding"])).score for r in recs)
    with np.load(embeddings_path(out)) as z:
        assert "main_embedding" not in z.files
    db = tmp_path / "db"
    info = store_from_batch(out, db)
    assert "main" not in info and sorted(p.name for p in db.iterdir()) == ["embeddings.npy", "index.json",
                                                                          "studies.jsonl"]
    assert Store(db).main is None
    hits = similar(db, archive / Store(db).rows[0]["source"], 2, model=BASE, device="cpu")
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_study_queries_search_the_main_matrix_exactly_and_text_queries_the_embeddings(tmp_path):
    rng = np.random.default_rng(3)
    n = 400
    emb = _l2(rng.standard_normal((n, 16)))
    main = _l2(rng.standard_normal((n, 16)))  # unrelated to emb: the two rankings disagree
    uids = [str(i) for i in range(n)]
    db = tmp_path / "db"
    build_store(db, uids, ["x"] * n, emb, "m", "a" * 64, ann="exact", main=main)
    st = Store(db)
    q_emb, q_main = emb[5], main[9]
    by_main = [h.study_uid for h in st.search_study(q_emb, q_main, 10)]
    assert by_main == [uids[i] for i in np.argsort(-(main @ q_main), kind="stable")[:10]] and by_main[0] == "9"
    by_emb = [h.study_uid for h in st.search_vector(q_emb, 10)]  # text queries: the embeddings, as ever
    assert by_emb[0] == "5" and by_emb != by_main
    assert [h.study_uid for h in st.search_study(q_emb, None, 10)] == by_emb  # no main given: like with like
    # a text query meets both: each row scores the mean of its cosines with the embedding and the main embedding
    q_text = _l2((emb[5] + main[9])[None])[0]
    hits = st.search_vector(q_text, 10, text=True)
    mean = (emb @ q_text + main @ q_text) / 2
    assert [h.study_uid for h in hits] == [uids[i] for i in np.argsort(-mean, kind="stable")[:10]]
    assert hits[0].score == pytest.approx(float(mean.max()), abs=1e-6)
    assert [h.study_uid for h in hits] != [h.study_uid for h in st.search_vector(q_text, 10)]
    # the model check is unchanged
    st.check_model("m", "a" * 64)
    with pytest.raises(Exception, match="was built with model"):
        st.check_model("m", "b" * 64)
    # rebuilt in place without main embeddings (or with equal ones): the store is a plain one again
    build_store(db, uids, ["x"] * n, emb, "m", "a" * 64, ann="exact", main=emb.copy())
    assert not (db / MAIN_FILE).exists() and "main" not in json.loads((db / "index.json").read_text())
    assert Store(db).search_study(q_emb, q_main, 10)[0].study_uid == "5"


def test_an_ivf_store_answers_study_queries_exactly_over_main(tmp_path):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    n = 3000
    emb = _l2(rng.standard_normal((n, 16)))
    main = _l2(rng.standard_normal((n, 16)))
    info = build_store(tmp_path / "db", [str(i) for i in range(n)], ["x"] * n, emb, "m", "a" * 64, ann="ivf",
                       main=main)
    assert info["ann"]["kind"] == "faiss-ivf-flat" and info["main"] == MAIN_FILE
    st = Store(tmp_path / "db")
    hits = st.search_study(emb[0], main[42], 20)
    want = np.argsort(-(main @ main[42]), kind="stable")[:20]
    assert [h.study_uid for h in hits] == [str(i) for i in want]
    assert st.search_vector(emb[7], 1)[0].study_uid == "7"
    # a text query meets both matrices, so it is answered exactly too
    q = _l2((emb[7] + main[7])[None])[0]
    want = np.argsort(-((emb @ q + main @ q) / 2), kind="stable")[:20]
    assert [h.study_uid for h in st.search_vector(q, 20, text=True)] == [str(i) for i in want]


def test_the_bundled_models_records_keep_its_main_paths_embedding_which_is_0_5_0s(archive, tmp_path):
    """The bundled model (0.6.0: 0.5.0 with an LGE stream) in float32: each record's main embedding is 0.5.0's
    embedding of the study, and its typicality 0.5.0's; its embedding is turned away from it."""
    runs = {}
    for name, model in (("bundled", None), ("base", BASE)):
        out = tmp_path / f"{name}.jsonl"
        assert run_batch(archive, out, BatchOptions(model=model, device="cpu", precision="float32", workers=1)).ok == 2
        runs[name] = {r["study_uid"]: r for r in _records(out)}
    assert runs["bundled"].keys() == runs["base"].keys()
    for uid, r in runs["bundled"].items():
        b = runs["base"][uid]
        assert "main_embedding" in r and "main_embedding" not in b
        np.testing.assert_allclose(decode_embedding(r["main_embedding"]), decode_embedding(b["embedding"]), atol=1e-5)
        assert float(decode_embedding(r["embedding"]) @ decode_embedding(b["embedding"])) < 0.999
        assert r["typicality"]["score"] == pytest.approx(b["typicality"]["score"], abs=1e-5)
        assert r["typicality"]["status"] == b["typicality"]["status"]


def test_a_manifest_naming_an_output_its_file_lacks_is_refused_at_load(tmp_path):
    import shutil

    from cmrdx.errors import ModelError
    from cmrdx.model.encoder import Encoder

    folder = tmp_path / "model"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "cmrdx-phantom-small", folder)
    m = json.loads((folder / "manifest.json").read_text())
    assert m["video"]["main_output"] == "main_embedding"
    assert Encoder(folder, device="cpu", precision="float32", saved_graphs=False).main_output == "main_embedding"
    m["video"]["main_output"] = "no_such_output"
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="names output.*no_such_output.*video.onnx does not have") as ei:
        Encoder(folder, device="cpu", precision="float32", saved_graphs=False)
    assert "manifest.json" in str(ei.value) and "export the model again" in (ei.value.hint or "")


def test_a_store_whose_main_embeddings_are_missing_or_foreign_says_so(tmp_path):
    rng = np.random.default_rng(5)
    emb, main = _l2(rng.standard_normal((6, 16))), _l2(rng.standard_normal((6, 16)))
    db = tmp_path / "db"
    build_store(db, [str(i) for i in range(6)], ["x"] * 6, emb, "m", "a" * 64, ann="exact", main=main)
    (db / MAIN_FILE).unlink()
    with pytest.raises(CmrdxError, match=f"{MAIN_FILE}: cannot be read") as ei:
        Store(db)
    assert ei.value.hint == "rebuild the index"
    np.save(db / MAIN_FILE, main[:3])
    with pytest.raises(CmrdxError, match="shape"):
        Store(db)
    info = json.loads((db / "index.json").read_text())
    info["main"] = "../elsewhere.npy"  # a store reads only its own files
    (db / "index.json").write_text(json.dumps(info))
    with pytest.raises(CmrdxError, match="unknown main embeddings file"):
        Store(db)
