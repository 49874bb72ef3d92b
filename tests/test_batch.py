"""Archive runs (#8): SIGKILL-and-resume equals an uninterrupted run; bad studies are reported, not fatal;
Ray gives the local engine's results; the embedding store refuses another model and searches exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cmrdx.errors import CmrdxError, ModelError
from cmrdx.pipeline.batch import BatchOptions, read_results, run_batch, state_dir, write_reports
from cmrdx.pipeline.search import Store, build_store
from helpers.kill import kill_at_progress


def _cmd(archive, out, model, *extra):
    return [sys.executable, "-m", "cmrdx", "batch", str(archive), "--out", str(out), "--model", str(model),
            "--device", "cpu", "--workers", "1", "--batch-size", "2", *extra]


def _env(tmp_path):
    return {**{k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}, "CMRDX_HOME": str(tmp_path / "home"),
            "OMP_NUM_THREADS": "1"}


def _table(path: Path) -> dict[str, dict]:
    return {r["study_uid"]: r for r in read_results(path)}


def _same(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert sorted(a) == sorted(b)
    for uid in a:
        ra, rb = a[uid], b[uid]
        assert set(ra) == set(rb)
        for k in ra:
            if k.endswith("_score"):
                assert ra[k] == pytest.approx(rb[k], abs=1e-5), (uid, k)
            else:
                assert ra[k] == rb[k], (uid, k)


@pytest.fixture(scope="module")
def reference(phantom_archive, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "results.parquet"
    t0 = time.perf_counter()
    r = subprocess.run(_cmd(phantom_archive, out, tiny_model), capture_output=True, text=True, timeout=600,
                       env=_env(out.parent))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "12" in r.stdout and "ok" in r.stdout
    return out, time.perf_counter() - t0


def test_sigkill_and_resume_equals_an_uninterrupted_run(phantom_archive, tiny_model, reference, tmp_path):
    reference, wall = reference
    out = tmp_path / "results.parquet"
    done = kill_at_progress(_cmd(phantom_archive, out, tiny_model), out, _env(tmp_path), 12)
    assert len(done) >= 2 and min(done) < 12, f"the run was not interrupted mid-way: {done}"
    r = subprocess.run(_cmd(phantom_archive, out, tiny_model), capture_output=True, text=True, timeout=600, env=_env(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    _same(_table(out), _table(reference))
    lines = (state_dir(out) / "journal.jsonl").read_text().splitlines()
    assert len(lines) == len({line.split('"study_uid":"')[1].split('"')[0] for line in lines}) == 12  # no duplicates


def test_bad_studies_are_reported_and_never_fatal(phantom_archive, tiny_model, real_dirs, tmp_path):
    arch = tmp_path / "archive"
    for name in ("study_0001", "study_0002", "study_0003"):
        shutil.copytree(phantom_archive / name, arch / name)
    shutil.copytree(phantom_archive / "study_0001", arch / "copy_of_0001")  # a duplicate copy of a study
    for f in (arch / "study_0003").rglob("*.dcm"):  # a corrupt study: every file's pixel data cut short
        f.write_bytes(f.read_bytes()[:-2000])
    (arch / "ct").mkdir()
    shutil.copy(real_dirs["pydicom"] / "CT_small.dcm", arch / "ct" / "ct.dcm")  # a non-cardiac study
    (arch / "junk.dcm").write_bytes(b"\x00garbage" * 100)  # unreadable files
    (arch / "notes.bin").write_bytes(b"x" * 10)
    s = run_batch(arch, tmp_path / "r.csv", BatchOptions(model=str(tiny_model), device="cpu", workers=1))
    assert s.total == 4 and s.ok == 2
    assert s.failed == {"PixelDecodeError": 1, "NoMRError": 1}
    assert s.duplicates > 0 and sum(s.files_skipped.values()) == 2
    rows = _table(tmp_path / "r.csv")
    bad = [r for r in rows.values() if r["status"] == "failed"]
    assert all(r["error"] for r in bad)
    # the decoder's failure names its type and the file it could not decode
    assert any(r["error"].startswith("PixelDecodeError: ") and "study_0003" in r["error"] for r in bad)
    dup = next(r for r in rows.values() if int(r["duplicate_files"]) > 0)
    assert dup["status"] == "ok"


def test_resume_refuses_another_model(phantom_archive, tiny_model, tmp_path):
    arch = tmp_path / "a"
    shutil.copytree(phantom_archive / "study_0001", arch / "s1")
    out = tmp_path / "r.jsonl"
    opts = BatchOptions(model=str(tiny_model), device="cpu", workers=1)
    run_batch(arch, out, opts)
    # one HTML report per study on request; a second call keeps what is there
    assert write_reports(out, tmp_path / "reports", opts) == (1, 0)
    html = (tmp_path / "reports" / "s1_DICOM.html").read_text()
    assert "<html" in html.lower() and "LV dilation" in html
    assert write_reports(out, tmp_path / "reports", opts) == (0, 1)
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    m = other / "manifest.json"
    m.write_text(m.read_text().replace('"version": "0.0.1"', '"version": "0.0.2"'))
    with pytest.raises(CmrdxError, match="started with another model") as ei:
        run_batch(arch, out, BatchOptions(model=str(other), device="cpu", workers=1))
    assert ei.value.hint


@pytest.mark.slow
def test_ray_engine_matches_local(phantom_archive, tiny_model, reference, tmp_path):
    pytest.importorskip("ray")
    reference, _ = reference
    out = tmp_path / "ray.parquet"
    r = subprocess.run(_cmd(phantom_archive, out, tiny_model, "--engine", "ray"), capture_output=True, text=True,
                       timeout=600, env=_env(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _same(_table(out), _table(reference))


def test_store_search_is_exact_and_refuses_another_model(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((5000, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    uids = [f"1.2.3.{i}" for i in range(5000)]
    build_store(tmp_path / "db", uids, [f"s{i}" for i in range(5000)], emb, "m", "a" * 64, ann="exact")
    store = Store(tmp_path / "db")
    q = emb[123] + 0.1 * rng.standard_normal(32).astype(np.float32)
    hits = store.search_vector(q, 10)
    want = np.argsort(-(emb @ q))[:10]
    assert [h.study_uid for h in hits] == [uids[i] for i in want]
    assert hits[0].study_uid == "1.2.3.123" and hits[0].score >= hits[-1].score
    store.check_model("m", "a" * 64)
    with pytest.raises(ModelError):
        store.check_model("m", "b" * 64)


def test_ivf_store_recall(tmp_path):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((50, 32))
    emb = (centres[rng.integers(0, 50, 20000)] + 0.3 * rng.standard_normal((20000, 32))).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    build_store(tmp_path / "db", [str(i) for i in range(20000)], ["x"] * 20000, emb, "m", "a" * 64, ann="ivf")
    store = Store(tmp_path / "db")
    assert store.info["ann"]["kind"] == "faiss-ivf-flat"
    recall = []
    for i in range(20):
        q = emb[i * 100]
        exact = {h.study_uid for h in store.search_vector(q, 10, exact=True)}
        approx = {h.study_uid for h in store.search_vector(q, 10)}
        recall.append(len(exact & approx) / 10)
    assert np.mean(recall) >= 0.8


@pytest.mark.parametrize("finding,query", [("pericardial_effusion", "There is a pericardial effusion"),
                                           ("lv_hypertrophy", "There is left ventricular hypertrophy"),
                                           ("lge", "There is a large area of LAD scar")])
def test_text_search_ranks_positives_first_with_the_default_model(phantom_archive, tmp_path, finding, query):
    """On a labelled phantom archive, `cmrdx search` for a finding puts the studies that have it on top
    (R-precision: precision at k = number of positives)."""
    from typer.testing import CliRunner

    from cmrdx.cli import app
    from cmrdx.evaluation.archive import load_labels

    out = tmp_path / "r.parquet"
    run_batch(phantom_archive, out, BatchOptions(device="cpu", workers=1))
    r = CliRunner().invoke(app, ["index", "--from-batch", str(out), "--db", str(tmp_path / "db")])
    assert r.exit_code == 0, r.output
    rows = load_labels(phantom_archive / "labels.csv")
    positive = {row.study_uid for row in rows if row.labels[finding] == 1}
    r = CliRunner().invoke(app, ["search", query, "--db", str(tmp_path / "db"), "-k", str(len(rows)), "--json",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)
    assert len(hits) == len(rows) and "patient" not in hits[0]
    top = [h["study_uid"] for h in hits[: len(positive)]]
    r_precision = len(positive & set(top)) / len(positive)
    assert r_precision >= 0.8, (finding, r_precision)
