"""`cmrdx batch --pacs NODE --query ...` against a real PACS (Orthanc): a query over DICOMweb and over DIMSE gives
the results of the same studies read as folders; a run killed with SIGKILL resumes to the same results; a PACS that
stops answering mid-run fails only the studies it could not serve, and the next run scores them; `--store-back`
stores one SR per study, and what an unreachable node could not take is reported (exit 12) and stored by the next
run. Bad command lines are usage errors that name the problem. The bundled model on the CPU, as test_batch.py's
search test uses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cmrdx.cli import app
from cmrdx.errors import EXIT_CODES
from cmrdx.pipeline.batch import BatchOptions, Journal, read_results, run_batch_pacs, state_dir
from helpers.kill import kill_at_progress
from helpers.orthanc import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "phantom-study"
QUERY = ["--query", "ModalitiesInStudy=MR"]


def _env(home: Path) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}, "CMRDX_HOME": str(home),
            "OMP_NUM_THREADS": "1", "COLUMNS": "240"}  # a wide table: UIDs on one line


def _batch(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "cmrdx", "batch", *map(str, args), "--device", "cpu", "--workers", "2",
            "--batch-size", "2"]


def _run(cmd: list[str], home: Path) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=_env(home))
    return r, time.perf_counter() - t0


def _rows(out: Path) -> dict[str, dict]:
    return {r["study_uid"]: r for r in read_results(out)}


def _embeddings(out: Path) -> dict[str, np.ndarray]:
    z = np.load(out.with_name(out.stem + ".embeddings.npz"))
    return dict(zip(map(str, z["study_uid"]), z["embedding"]))


def _calls(row: dict) -> dict[str, str]:
    return {k: v for k, v in row.items() if k.endswith("_call")}


def _mr_studies(orthanc) -> set[str]:
    """The StudyInstanceUIDs of the MR studies Orthanc holds now (the query's answer, by Orthanc's own REST API)."""
    return {orthanc.get(f"/studies/{oid}")["MainDicomTags"]["StudyInstanceUID"]
            for oid in orthanc.find("Study", {"ModalitiesInStudy": "MR"})}


def _sr_series(orthanc, uids) -> dict[str, int]:
    """StudyInstanceUID -> its SR series in Orthanc."""
    return {u: len(orthanc.find("Series", {"StudyInstanceUID": u, "Modality": "SR"})) for u in uids}


def _delete_srs(orthanc, uids) -> None:
    """Remove the SR series stored in ``uids`` (other tests see the PACS as the fixture made it)."""
    for u in uids:
        for oid in orthanc.find("Series", {"StudyInstanceUID": u, "Modality": "SR"}):
            orthanc.request("DELETE", f"/series/{oid}")


def _same_as_folder(pacs: dict[str, dict], pacs_emb: dict[str, np.ndarray], folder: dict[str, dict],
                    folder_emb: dict[str, np.ndarray]) -> None:
    for uid, row in folder.items():
        other = pacs[uid]
        assert other["status"] == row["status"] == "ok", (uid, other.get("error"), row.get("error"))
        a, b = folder_emb[uid], pacs_emb[uid]
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.9999, uid
        assert _calls(other) == _calls(row), uid
        assert other["series_used"] == row["series_used"], uid


@pytest.fixture
def orthanc_knows_cmrdx(orthanc):
    """Orthanc answers C-FIND only to AE titles it knows: CMRDX (the DIMSE node's calling AE) is registered unless
    another module did it (test_pacs_clients registers it with its C-MOVE port: that one is kept)."""
    if not any(m.get("AET") == "CMRDX" for m in orthanc.get("/modalities?expand").values()):
        orthanc.add_modality("cmrdx", "CMRDX", "127.0.0.1", free_port())


@pytest.fixture(scope="module")
def folder_run(orthanc, phantom_archive, tmp_path_factory):
    """The PACS's studies as one archive folder (the phantom archive and the example study), scored from files."""
    base = tmp_path_factory.mktemp("folder")
    arch = base / "archive"
    shutil.copytree(phantom_archive, arch / "phantoms")
    shutil.copytree(EXAMPLE / "DICOM", arch / "example")
    out = base / "folder.parquet"
    r, wall = _run(_batch(arch, "--out", out), base / "home")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, wall


@pytest.fixture(scope="module")
def web_run(orthanc, folder_run, tmp_path_factory):
    """The same studies over DICOMweb, from a cold instance cache; (results, wall seconds, pacs.yaml, home)."""
    from helpers.orthanc import write_pacs_config

    base = tmp_path_factory.mktemp("web")
    cfg = write_pacs_config(orthanc, base / "pacs.yaml")
    out = base / "web.parquet"
    r, wall = _run(_batch("--pacs", "web", *QUERY, "--pacs-config", cfg, "--out", out), base / "home")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "PACS transfer" in r.stdout
    return out, wall, cfg, base / "home"


def test_batch_over_dicomweb_equals_batch_over_the_folders(orthanc, folder_run, web_run):
    folder_out, folder_wall = folder_run
    out, wall, _, _ = web_run
    folder, web = _rows(folder_out), _rows(out)
    assert set(folder) <= _mr_studies(orthanc) == set(web)
    assert len(folder) == 13
    _same_as_folder(web, _embeddings(out), folder, _embeddings(folder_out))
    for uid in folder:  # the source is the study's address; the study was read header-first
        assert web[uid]["source"] == f"pacs://web/{uid}"
    records = Journal(state_dir(out) / "journal.jsonl").records
    example = next(r for r in records.values() if r["pacs"]["instances_in_study"] > 100)
    assert 0 < example["pacs"]["instances_retrieved"] <= example["pacs"]["instances_needed"] \
        < example["pacs"]["instances_in_study"]
    # not an assertion (machine speed): what the benchmark reports
    print(f"\n13 studies: folder {13 / folder_wall:.2f} studies/s, DICOMweb {13 / wall:.2f} studies/s (whole command)")


def test_batch_over_dimse_equals_batch_over_the_folders(orthanc, orthanc_knows_cmrdx, folder_run, pacs_config,
                                                        tmp_path):
    folder_out, _ = folder_run
    out = tmp_path / "dimse.jsonl"
    r, _ = _run(_batch("--pacs", "dimse", *QUERY, "--pacs-config", pacs_config, "--out", out), tmp_path / "home")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    folder, dimse = _rows(folder_out), _rows(out)
    assert set(folder) <= _mr_studies(orthanc) == set(dimse)
    _same_as_folder(dimse, _embeddings(out), folder, _embeddings(folder_out))
    assert all(dimse[u]["source"] == f"pacs://dimse/{u}" for u in folder)


def test_sigkill_and_resume_equals_an_uninterrupted_run(web_run, tmp_path):
    reference, wall, cfg, _ = web_run
    out = tmp_path / "results.parquet"
    cmd = _batch("--pacs", "web", *QUERY, "--pacs-config", cfg, "--out", out)
    n = len(_rows(reference))
    done = kill_at_progress(cmd, out, _env(tmp_path / "home"), n)
    assert len(done) >= 2 and min(done) < n, f"the run was not interrupted mid-way: {done}"
    r, _ = _run(cmd, tmp_path / "home")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got, want = _rows(out), _rows(reference)
    assert sorted(got) == sorted(want)
    for uid in want:
        assert _calls(got[uid]) == _calls(want[uid]), uid
        for k, v in want[uid].items():
            if k.endswith("_score"):
                assert got[uid][k] == pytest.approx(v, abs=1e-5), (uid, k)
    lines = (state_dir(out) / "journal.jsonl").read_text().splitlines()
    assert len(lines) == len({line.split('"study_uid":"')[1].split('"')[0] for line in lines}) == n  # each once


def test_a_pacs_that_stops_answering_fails_only_its_studies_and_the_next_run_scores_them(web_run, orthanc,
                                                                                         tmp_path, monkeypatch):
    """The node goes away after the first study is committed: the studies read after that fail with the client's
    error type (the run goes on), and the next run, the node back, scores exactly those."""
    _, _, cfg, home = web_run
    monkeypatch.setenv("CMRDX_HOME", str(home))  # the instance cache of the DICOMweb run: headers still asked for
    mine = tmp_path / "pacs.yaml"
    shutil.copy(cfg, mine)
    good = mine.read_text()
    doc = yaml.safe_load(good)
    doc["nodes"][0]["dicomweb"] = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    doc["nodes"][0]["timeout"] = 5
    gone = yaml.safe_dump(doc)

    def node_goes_away(done: int, total: int, uid: str) -> None:
        if done == 1:
            mine.write_text(gone)  # workers read the configuration for each study

    out = tmp_path / "r.jsonl"
    opts = BatchOptions(device="cpu", workers=1, batch_size=1)
    first = run_batch_pacs("web", ["ModalitiesInStudy=MR"], out, opts, config=mine, progress=node_goes_away)
    assert set(first.failed) == {"SendError"}, first.failed
    failed = {u for u, r in _rows(out).items() if r["status"] == "failed"}
    assert len(failed) == sum(first.failed.values()) and first.ok + len(failed) == first.total
    mine.write_text(good)
    scored: list[str] = []
    again = run_batch_pacs("web", ["ModalitiesInStudy=MR"], out, opts, config=mine,
                           progress=lambda d, t, uid: scored.append(uid))
    assert sorted(scored) == sorted(failed)
    assert (again.ok, again.failed, again.done_before) == (again.total, {}, first.ok)


def test_store_back_stores_one_sr_per_study_once(orthanc, web_run, tmp_path):
    out, _, cfg, home = web_run
    uids = sorted(_rows(out))
    assert set(_sr_series(orthanc, uids).values()) == {0}
    try:
        sb = tmp_path / "sb.parquet"
        cmd = _batch("--pacs", "web", *QUERY, "--pacs-config", cfg, "--out", sb, "--store-back", "web")
        r, _ = _run(cmd, home)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert _sr_series(orthanc, uids) == {u: 1 for u in uids}
        assert f"{len(uids)} now" in r.stdout
        # again: the studies now hold an SR series more (the query sees them changed, so they are scored again),
        # but their findings are those their SR reports: no second SR
        r, _ = _run(cmd, home)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert _sr_series(orthanc, uids) == {u: 1 for u in uids}
    finally:
        _delete_srs(orthanc, uids)


def test_store_back_to_an_unreachable_node_is_reported_and_the_next_run_stores_it(orthanc, phantom_archive, web_run,
                                                                                  tmp_path):
    """A folder run with --store-back to a node that does not answer: the summary says which SRs are not stored,
    exit 12; the same command once the node answers stores them, one per study."""
    from helpers.orthanc import write_pacs_config

    _, _, _, home = web_run
    arch = tmp_path / "archive"
    for name in ("study_0001", "study_0002"):
        shutil.copytree(phantom_archive / name, arch / name)
    port = free_port()
    cfg = write_pacs_config(orthanc, tmp_path / "pacs.yaml", [
        {"name": "later", "dicomweb": f"http://127.0.0.1:{port}/dicom-web", "timeout": 5}])
    out = tmp_path / "r.csv"
    cmd = _batch(arch, "--out", out, "--pacs-config", cfg, "--store-back", "later")
    r, _ = _run(cmd, home)
    assert r.returncode == EXIT_CODES["StoreFailedError"] == 12, r.stdout[-3000:] + r.stderr[-3000:]
    uids = sorted(_rows(out))
    assert len(uids) == 2
    assert "0 now" in r.stdout and "2 not stored" in r.stdout and all(u in r.stdout for u in uids)
    assert "later" in r.stderr and "fix:" in r.stderr and "Traceback" not in r.stderr
    try:
        assert set(_sr_series(orthanc, uids).values()) == {0}
        cfg.write_text(cfg.read_text().replace(f"http://127.0.0.1:{port}/dicom-web", orthanc.dicomweb))
        r, _ = _run(cmd, home)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "2 now" in r.stdout
        assert _sr_series(orthanc, uids) == {u: 1 for u in uids}
    finally:
        _delete_srs(orthanc, uids)


# --- command lines that cannot run: usage errors naming the problem (no PACS needed) --------------------------


@pytest.mark.parametrize("args,needle", [
    (["--pacs", "web", "--query", "StudyDaet=20260101"], "StudyDaet"),
    (["--pacs", "web", "--query", "StudyDate"], "KEYWORD=VALUE"),
    (["--pacs", "web"], "--query"),
    (["--query", "ModalitiesInStudy=MR"], "--pacs"),
    ([], "ARCHIVE"),
    (["ARCHIVE", "--pacs", "web", "--query", "ModalitiesInStudy=MR"], "not both"),
    (["--pacs", "nowhere", "--query", "ModalitiesInStudy=MR"], "nowhere"),
    (["ARCHIVE", "--store-back", "nowhere"], "nowhere"),
])
def test_bad_pacs_command_lines_are_usage_errors(args, needle, tmp_path):
    cfg = tmp_path / "pacs.yaml"
    cfg.write_text(yaml.safe_dump({"nodes": [{"name": "web", "dicomweb": "http://127.0.0.1:9/dicom-web"}]}))
    (tmp_path / "a").mkdir()
    args = [str(tmp_path / "a") if a == "ARCHIVE" else a for a in args]
    r = CliRunner().invoke(app, ["batch", *args, "--out", str(tmp_path / "r.csv"), "--pacs-config", str(cfg)])
    assert getattr(r.exception, "exit_code", None) == EXIT_CODES["UsageError"], (r.output, r.exception)
    assert needle in str(r.exception)
    assert not (tmp_path / "r.csv").exists()
