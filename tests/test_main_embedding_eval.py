"""A model with a finding stream has two study embeddings: the one prompts score (``Encoder.encode_studies``) and
its main paths' one (``Encoder.encode_studies_main``), which every distance between studies uses. These tests hold
the evaluation side to that: the study embedding cache keeps both, few-shot benchmarks and prototypes and the
typicality reference use the main one, zero-shot the other; a model without a second output is untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


class StreamEncoder:
    """The shipped model's manifest and recipe with a stand-in video tower of two outputs: an embedding made from
    the input's statistics, and a main embedding made from them differently (as a finding stream turns one away
    from the other). ``main_output=None`` makes it a model without a second output."""

    def __init__(self, main_output: str | None = "main_embedding"):
        from cmrdx.model.manifest import load_manifest

        self.manifest = load_manifest(ROOT / "models" / "cmrdx-phantom-small", verify=False)
        self.precision, self.device, self.threads, self.calls = "float32", "cpu", 1, 0
        self.main_output = main_output

    @staticmethod
    def _unit(v: np.ndarray) -> np.ndarray:
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def encode_studies(self, x):
        return self.encode_studies_main(x)[0]

    def encode_studies_main(self, x):
        self.calls += len(x)
        d = self.manifest.embedding_dim
        e = self._unit(np.stack([np.cos(np.arange(d) * float(s.mean()) + float(s.std())) for s in x]))
        if self.main_output is None:
            return e, e
        m = self._unit(np.stack([np.sin(np.arange(d) * float(s.std()) + 3 * float(s.mean())) for s in x]))
        return e, m


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    from cmrdx.synth import write_archive

    arch = tmp_path_factory.mktemp("main") / "arch"
    write_archive(arch, 8, 91, prevalence=0.5, n_phases=8, matrix=64, report_styles=["telegraphic"])
    return arch


def test_the_cache_keeps_the_main_embedding_beside_the_embedding_and_nothing_more_without_one(tmp_path):
    from cmrdx.evaluation.archive import StudyEmbeddingCache

    cache = StudyEmbeddingCache("ab" * 32, tmp_path, precision="float32")
    e, m = np.arange(4, dtype=np.float32), -np.arange(4, dtype=np.float32)
    cache.put("1.2.3", e, m)
    got = cache.get_main("1.2.3")
    assert got is not None
    np.testing.assert_array_equal(got[0], e)
    np.testing.assert_array_equal(got[1], m)
    np.testing.assert_array_equal(cache.get("1.2.3"), e)
    # without one (or with the embedding itself): the entry is the (D,) array every earlier cache wrote
    cache.put("4.5.6", e)
    cache.put("7.8.9", e, e)
    for uid in ("4.5.6", "7.8.9"):
        (f,) = [p for p in tmp_path.rglob("*.npy") if cache._path(uid) == p]
        assert np.load(f).shape == (4,)
        one = cache.get_main(uid)
        assert one is not None and one[0] is one[1]
    # an entry of any other shape is damaged: recomputed, never fatal
    np.save(cache._path("1.2.3"), np.zeros((3, 4), np.float32))
    assert cache.get_main("1.2.3") is None


def test_embedded_studies_carry_the_main_embedding_and_a_cache_without_it_is_not_used(archive, tmp_path):
    from cmrdx.evaluation.archive import StudyEmbeddingCache, embed_labelled, read_archive

    plain, stream = StreamEncoder(None), StreamEncoder()
    es = embed_labelled(read_archive(archive), plain, StudyEmbeddingCache.for_encoder(plain, tmp_path))
    assert es.main is None and es.distance_embeddings is es.embeddings
    # the same model identity and precision, now with a second output: the (D,) entries lack it, so every study
    # is embedded again, and the entries rewritten hold both
    es2 = embed_labelled(read_archive(archive), stream, StudyEmbeddingCache.for_encoder(stream, tmp_path))
    assert stream.calls == 8 and es2.cached == 0 and es2.main is not None
    np.testing.assert_allclose(es2.embeddings, es.embeddings, atol=1e-6)
    assert np.abs(es2.main - es2.embeddings).max() > 0.1
    es3 = embed_labelled(read_archive(archive), stream, StudyEmbeddingCache.for_encoder(stream, tmp_path))
    assert stream.calls == 8 and es3.cached == 8
    np.testing.assert_array_equal(es3.main, es2.main)
    assert es3.distance_embeddings is es3.main


def test_few_shot_and_prototypes_use_the_main_embedding_zero_shot_the_other(archive, tmp_path):
    from cmrdx.evaluation.archive import embed_labelled, read_archive
    from cmrdx.evaluation.benchmarks import fewshot, fewshot_auc, load_eval_set, zeroshot
    from cmrdx.evaluation.families import subset
    from cmrdx.zeroshot.bank import get_bank
    from cmrdx.zeroshot.fewshot import fit_from_labelled, fit_prototypes, labels_for_prototypes

    enc = StreamEncoder()
    ev = load_eval_set(archive, enc, cache_dir=tmp_path)
    assert ev.study_main is not None and ev.distance_emb is ev.study_main
    f = next(k for k in ev.severity if ev.known(k).sum() >= 6 and 2 <= ev.labels(k)[ev.known(k)].sum() <= 6)
    known = ev.known(f)
    got = fewshot(ev, [f], shots=(1,), episodes=20)["findings"][f]["1"]["mean"]
    on_main = fewshot_auc(ev.study_main[known], ev.labels(f)[known], 1, episodes=20)[0]
    on_emb = fewshot_auc(ev.study_emb[known], ev.labels(f)[known], 1, episodes=20)[0]
    assert got == on_main and on_main != on_emb
    # a subset keeps each study's main embedding with it
    half = subset(ev, np.arange(len(ev.ids)) % 2 == 0)
    np.testing.assert_array_equal(half.study_main, ev.study_main[::2])

    # zero-shot scores compare prompts with the embedding, as classify does
    from cmrdx.zeroshot.scoring import bank_text_embeddings, score_finding

    class Texts:  # the real text tower is not needed: any fixed prompt vectors show which embedding is scored
        manifest = enc.manifest

        @staticmethod
        def encode_texts(texts):
            rng = np.random.default_rng(len(texts))
            v = rng.normal(size=(len(texts), enc.manifest.embedding_dim))
            return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    bank = get_bank("cmr-findings")
    temb = bank_text_embeddings(bank, Texts.encode_texts, None)
    finding = next(x for x in bank.findings if x.id == f)
    from cmrdx.evaluation.benchmarks import auc

    zs = zeroshot(ev, bank, Texts, n_boot=0)
    y = ev.labels(f)[known]
    by = {name: auc(np.array([score_finding(e, finding, temb, bank, "m", None).score for e in em])[known], y)
          for name, em in (("embedding", ev.study_emb), ("main", ev.study_main))}
    assert by["embedding"] != by["main"] and zs["findings"][f]["auc"] == pytest.approx(by["embedding"])
    # retrieval scores a report as search scores a text query: the mean of its cosines with both embeddings
    from cmrdx.evaluation.benchmarks import retrieval, retrieval_metrics

    t = Texts.encode_texts(ev.reports)
    rt = retrieval(ev, Texts)
    assert rt["text_to_study"] == retrieval_metrics((t @ ev.study_emb.T + t @ ev.study_main.T) / 2)
    assert rt["study_to_text"] == retrieval_metrics(((t @ ev.study_emb.T + t @ ev.study_main.T) / 2).T)

    # prototypes fitted from labelled studies: centred on the main embeddings
    es = embed_labelled(read_archive(archive), enc, None)
    protos = fit_from_labelled(es, [f], None, "m", "s")
    y = labels_for_prototypes(es.rows, [f])[f]
    want = fit_prototypes(es.main, {f: y}, "m", "s")
    np.testing.assert_allclose(protos.centre, want.centre)
    assert not np.allclose(protos.centre, fit_prototypes(es.embeddings, {f: y}, "m", "s").centre)


def test_a_typicality_reference_from_an_archive_holds_main_embeddings(archive, tmp_path, monkeypatch):
    from cmrdx.evaluation.archive import embed_labelled, read_archive
    from cmrdx.model.reference import reference_from_archive

    enc = StreamEncoder()
    monkeypatch.setattr("cmrdx.model.loader.get_encoder", lambda *a, **k: enc)
    monkeypatch.setenv("CMRDX_HOME", str(tmp_path / "home"))
    built = reference_from_archive(None, archive, k=3, min_studies=4)
    es = embed_labelled(read_archive(archive), StreamEncoder(), None)
    order = {r.study_uid: i for i, r in enumerate(es.rows)}
    rows = [order[r.study_uid] for r in built.embedded.rows]
    np.testing.assert_allclose(built.reference.embeddings, es.main[rows], atol=1e-6)
