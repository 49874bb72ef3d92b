"""Batch engines behind one interface: every record comes from the one builder (``journal.build_record``),
whatever the engine, so the local and Ray engines write the same journal; a failure record is built the same
way; the journal's bytes are those earlier versions wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cmrdx.errors import CmrdxError
from cmrdx.pipeline.batch import (
    BatchOptions,
    Discovery,
    EncodedStudy,
    Engine,
    EngineJob,
    RecordContext,
    build_record,
    decode_embedding,
    journal_path,
    run_batch,
    state_dir,
)
from cmrdx.pipeline.batch.local import LocalEngine
from cmrdx.pipeline.batch.ray_engine import _encoded

# caches (prompt and study embeddings) in a folder of this module's own, not the user's
pytestmark = pytest.mark.usefixtures("module_home")


def _ctx(tmp_path: Path, banks=(), text_emb=()) -> RecordContext:
    disc = Discovery({"1.2.3": [str(tmp_path / "a" / "s1" / "f1.dcm"), str(tmp_path / "a" / "s1" / "f2.dcm")]},
                     duplicates={"1.2.3": 1})
    return RecordContext(tmp_path / "a", disc, "m", "ab" * 32, list(banks), list(text_emb))


def test_records_keep_their_bytes(tmp_path):
    """Journals written before stay readable and resumable: same keys, same order, same encoding."""
    ctx = _ctx(tmp_path)
    failed = EncodedStudy.failed("1.2.3", "PixelDecodeError", "could not be decoded")
    line = json.dumps(build_record(failed, ctx), separators=(",", ":"))
    assert line == ('{"schema":"cmrdx-batch-journal/1","study_uid":"1.2.3","source":"s1","n_files":2,"duplicate_files":1,'
                    '"model":"m","model_sha256":"' + "ab" * 32 + '","status":"failed",'
                    '"error":{"type":"PixelDecodeError","message":"could not be decoded"}}')
    meta = {"views_used": {"sax": "SAX"}, "series_used": ["9.8"], "warnings": [], "files_skipped": 0}
    ok = EncodedStudy("1.2.3", np.array([1.0, 0.0], np.float32), meta)
    line = json.dumps(build_record(ok, ctx), separators=(",", ":"))
    assert line == ('{"schema":"cmrdx-batch-journal/1","study_uid":"1.2.3","source":"s1","n_files":2,"duplicate_files":1,'
                    '"model":"m","model_sha256":"' + "ab" * 32 + '","status":"ok","findings":{},'
                    '"embedding":"AACAPwAAAAA=","typicality":{"status":"unknown","score":null},'
                    '"views_used":{"sax":"SAX"},"series_used":["9.8"],"warnings":[],"files_skipped":0}')


def test_both_engines_hand_the_builder_the_same_study(tmp_path):
    """What the local engine makes of a prepared study and what the Ray engine makes of its row are equal, ok or
    failed, so the one builder gives the same record."""
    from cmrdx.zeroshot.bank import get_bank

    bank = get_bank("cmr-findings")
    rng = np.random.default_rng(0)
    temb = {t: v / np.linalg.norm(v) for t, v in zip(bank.texts, rng.standard_normal((len(bank.texts), 8)))}
    ctx = _ctx(tmp_path, [bank], [temb])
    meta = {"views_used": {"sax": "SAX"}, "series_used": ["9.8"], "warnings": ["w"], "files_skipped": 1}
    emb = rng.standard_normal(8).astype(np.float32)
    emb /= np.linalg.norm(emb)
    err = {"type": "NoMRError", "message": "no MR"}
    cases = [
        ({"uid": "1.2.3", "array": np.zeros(1), "meta": meta, "error": None, "seconds": 0.5},
         {"uid": np.str_("1.2.3"), "ok": np.True_, "embedding": emb.astype(np.float64) * 1, "meta": json.dumps(meta),
          "seconds": 0.5}),
        ({"uid": "1.2.3", "array": None, "meta": {}, "error": err, "seconds": 0.1},
         {"uid": "1.2.3", "ok": False, "embedding": np.zeros(8, np.float32), "meta": json.dumps(err), "seconds": 0.1}),
    ]
    for prepared, row in cases:
        local = EncodedStudy.from_prepared(prepared, emb if prepared["error"] is None else None)
        ray = _encoded(row)
        assert local.ok == ray.ok and local.error == ray.error and local.meta == ray.meta
        a, b = build_record(local, ctx), build_record(ray, ctx)
        assert json.dumps(a) == json.dumps(b)
        if local.ok:
            assert set(a["findings"]) == {f.id for f in bank.findings}
            assert np.array_equal(decode_embedding(a["embedding"]), emb)


@pytest.fixture
def small_archive(phantom_archive, real_dirs, tmp_path):
    arch = tmp_path / "archive"
    for name in ("study_0001", "study_0002", "study_0003"):
        shutil.copytree(phantom_archive / name, arch / name)
    for f in (arch / "study_0003").rglob("*.dcm"):  # a corrupt study: a failure record from each engine
        f.write_bytes(f.read_bytes()[:-2000])
    (arch / "ct").mkdir()
    shutil.copy(real_dirs["pydicom"] / "CT_small.dcm", arch / "ct" / "ct.dcm")  # another kind of failure
    return arch


def _journal(out: Path) -> dict[str, dict]:
    lines = journal_path(out).read_text().splitlines()
    return {r["study_uid"]: r for r in map(json.loads, lines)}


@pytest.mark.slow
def test_local_and_ray_engines_write_the_same_journal_through_the_one_builder(small_archive, tiny_model, tmp_path,
                                                                            monkeypatch):
    pytest.importorskip("ray")
    import cmrdx.pipeline.batch.run as run_mod

    built: list[tuple[str, str]] = []
    real = run_mod.build_record

    def spy(study, ctx):
        built.append((engine, study.uid))
        return real(study, ctx)

    monkeypatch.setattr(run_mod, "build_record", spy)
    journals = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine / "r.jsonl"
        s = run_batch(small_archive, out, BatchOptions(model=str(tiny_model), device="cpu", workers=1, batch_size=1,
                                                       engine=engine))
        assert (s.total, s.ok, s.failed) == (4, 2, {"PixelDecodeError": 1, "NoMRError": 1}), engine
        journals[engine] = _journal(out)
    assert sorted(built) == sorted((e, u) for e in ("local", "ray") for u in journals[e])  # every record, once
    local, ray = journals["local"], journals["ray"]
    assert sorted(local) == sorted(ray)
    for uid in local:
        a, b = dict(local[uid]), dict(ray[uid])
        ea, eb = a.pop("embedding", None), b.pop("embedding", None)
        fa, fb = a.pop("findings", {}), b.pop("findings", {})
        assert a == b, uid  # status, error, source, counts, model, recipe notes: identical
        assert (ea is None) == (eb is None)
        if ea is not None:
            np.testing.assert_allclose(decode_embedding(ea), decode_embedding(eb), atol=1e-6)
        assert {k: (v["call"], v["bank"]) for k, v in fa.items()} == {k: (v["call"], v["bank"]) for k, v in fb.items()}
        for k in fa:
            assert fa[k]["score"] == pytest.approx(fb[k]["score"], abs=1e-5)


class _Replay:
    """An engine from outside the package: it satisfies the Protocol and is used as given."""

    name = "replay"

    def __init__(self):
        self.prepare_seconds = self.encode_seconds = 0.0
        self.seen: list[str] = []

    def run(self, todo, job: EngineJob):
        d = job.encoder.manifest.embedding_dim
        for i, uid in enumerate(todo):
            self.seen.append(uid)
            self.prepare_seconds += 0.25
            if i == 0:
                yield EncodedStudy.failed(uid, "WorkerCrash", "the reading process died on this study", 0.25)
            else:
                e = np.zeros(d, np.float32)
                e[0] = 1.0
                yield EncodedStudy(uid, e, {"views_used": {}, "series_used": [], "warnings": [], "files_skipped": 0},
                                   seconds=0.25)


def test_an_engine_instance_is_used_as_given_and_its_failures_become_records(small_archive, tiny_model, tmp_path):
    eng = _Replay()
    assert isinstance(eng, Engine) and isinstance(LocalEngine(), Engine)
    out = tmp_path / "r.jsonl"
    s = run_batch(small_archive, out, BatchOptions(model=str(tiny_model), device="cpu", workers=1, engine=eng))
    assert len(eng.seen) == s.total == 4 and s.failed == {"WorkerCrash": 1} and s.ok == 3
    assert s.prepare_seconds == pytest.approx(1.0)  # the summary reports the engine's own figures
    recs = _journal(out)
    crash = recs[eng.seen[0]]
    assert crash["status"] == "failed" and crash["error"]["type"] == "WorkerCrash" and "findings" not in crash
    assert all(recs[u]["status"] == "ok" and recs[u]["findings"] for u in eng.seen[1:])


def test_an_unknown_engine_fails_before_any_work(small_archive, tmp_path):
    out = tmp_path / "r.jsonl"
    with pytest.raises(CmrdxError, match="unknown engine 'spark'") as ei:
        run_batch(small_archive, out, BatchOptions(engine="spark"))
    assert "--engine local" in ei.value.hint
    assert not state_dir(out).exists()  # no discovery was run, no journal opened
