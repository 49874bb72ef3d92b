"""Batch runs on hostile and broken input: studies that share series UIDs, an archive that changed between runs,
a corrupt journal or state file, two runs on one output, a run killed with its reader workers alive, options
that would never finish. Each test is named after the defect it keeps fixed."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cmrdx.errors import CmrdxError
from cmrdx.pipeline.batch import (
    BatchOptions,
    Journal,
    decode_embedding,
    journal_path,
    read_results,
    run_batch,
    state_dir,
)
from helpers.cine_factory import build_cine_study

# caches (prompt and study embeddings) in a folder of this module's own, not the user's
pytestmark = pytest.mark.usefixtures("module_home")


def _opts(model: Path, **kw) -> BatchOptions:
    return BatchOptions(model=str(model), device="cpu", workers=kw.pop("workers", 1), **kw)


def _records(out: Path) -> dict[str, dict]:
    j = Journal(journal_path(out))
    j.close()
    return j.records


def _by_source(out: Path) -> dict[str, dict]:
    return {r["source"]: r for r in read_results(out)}


def _same_rows(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        ra, rb = a[key], b[key]
        assert set(ra) == set(rb), key
        for k in ra:
            if k.endswith("_score") or k == "typicality_score":
                assert ra[k] == pytest.approx(rb[k], abs=1e-5), (key, k)
            else:
                assert ra[k] == rb[k], (key, k)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}, "CMRDX_HOME": str(tmp_path / "home"),
            "OMP_NUM_THREADS": "1"}


def _read_line(p: subprocess.Popen, timeout: float) -> str:
    """The child's next stdout line; fails (with its stderr) if none comes within ``timeout`` seconds."""
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    if not ready:
        p.kill()
        pytest.fail(f"no line from the child in {timeout} s: {p.stderr.read() if p.stderr else ''}")
    line = p.stdout.readline()
    if not line:
        p.wait()
        pytest.fail(f"the child exited ({p.returncode}) early: {p.stderr.read() if p.stderr else ''}")
    return line.strip()


# --- series belong to their study ----------------------------------------------------------------------------


def test_two_studies_sharing_series_uids_each_get_their_own_cine(tiny_model, tmp_path):
    """After an anonymisation that changes only StudyInstanceUID, two studies can carry the same SeriesInstanceUID:
    each study keeps its own series (the batch embedding of each equals the one classify gives on its folder)."""
    from cmrdx.pipeline.classify import classify

    arch = tmp_path / "archive"
    a = build_cine_study(arch / "a", vendor="ge", n_slices=5, n_phases=8, seed=0)
    sax = next(p for p in a.files if p.parent.name == "SAX_FIESTA_BH")
    shared = str(pydicom.dcmread(sax, stop_before_pixels=True).SeriesInstanceUID)

    def share(ds):
        if ds.SeriesDescription == "SAX_FIESTA_BH":
            ds.SeriesInstanceUID = shared

    b = build_cine_study(arch / "b", vendor="ge", n_slices=7, n_phases=10, seed=1, edit=share)
    out = tmp_path / "r.jsonl"
    s = run_batch(arch, out, _opts(tiny_model))
    assert (s.total, s.ok) == (2, 2)
    recs = _records(out)
    for built in (a, b):
        rec = recs[built.study_uid]
        alone = classify(built.root, model=str(tiny_model), banks=[], device="cpu")
        assert shared in rec["series_used"], built.root.name
        assert rec["series_used"] == alone.series_used, built.root.name
        np.testing.assert_allclose(decode_embedding(rec["embedding"]), alone.embedding, atol=1e-5,
                                   err_msg=built.root.name)


# --- a file that crashes the header reader ----------------------------------------------------------------------


def test_a_file_that_crashes_the_header_reader_costs_only_itself(phantom_archive, tmp_path, monkeypatch):
    """Discovery reads headers in chunks of files: a file on which the reader raises is skipped with its reason,
    and the other files of its chunk are discovered as usual (not all called unreadable)."""
    import importlib

    from cmrdx.pipeline.batch import discover

    scan_mod = importlib.import_module("cmrdx.dicom.scan")
    arch = tmp_path / "archive"
    shutil.copytree(phantom_archive / "study_0001", arch / "study_0001")
    files = sorted(str(f) for f in arch.rglob("*.dcm"))
    victim = files[5]
    real = scan_mod.scan_refs

    def fragile(refs, root, on_file=None):
        refs = list(refs)
        if any(str(r) == victim for r in refs):
            raise RecursionError("a header nested beyond the parser")
        return real(refs, root, on_file)

    monkeypatch.setattr(scan_mod, "scan_refs", fragile)
    disc = discover(arch, workers=1)
    assert disc.skipped == {"unreadable (the header reader failed)": 1}
    assert [sorted(v) for v in disc.studies.values()] == [[f for f in files if f != victim]]


# --- a resumed run looks at the archive again ----------------------------------------------------------------


def test_resume_after_adding_removing_and_changing_studies(phantom_archive, tiny_model, tmp_path):
    arch = tmp_path / "archive"
    for name in ("study_0001", "study_0002", "study_0003", "study_0005"):
        shutil.copytree(phantom_archive / name, arch / name)
    late = sorted((arch / "study_0003" / "DICOM").iterdir())[-1]  # a series that reaches the archive late
    held = tmp_path / "held"
    shutil.move(late, held)
    out = tmp_path / "r.parquet"
    first = run_batch(arch, out, _opts(tiny_model))
    assert (first.total, first.ok) == (4, 4)
    journal_before = journal_path(out).read_bytes()

    shutil.copytree(phantom_archive / "study_0004", arch / "study_0004")  # added
    shutil.rmtree(arch / "study_0002")  # removed
    shutil.move(held, late)  # changed: a series more
    f = sorted((arch / "study_0001").rglob("*.dcm"))[40]  # changed: one file rewritten in place, same size
    ds = pydicom.dcmread(f)
    px = ds.pixel_array
    ds.PixelData = (px.max() - px).astype(px.dtype).tobytes()
    size = f.stat().st_size
    ds.save_as(f)
    assert f.stat().st_size == size
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 5_000_000_000))

    scored: list[str] = []
    again = run_batch(arch, out, _opts(tiny_model), progress=lambda d, t, uid: scored.append(uid))
    rows = _by_source(out)
    assert sorted(rows) == ["study_0001/DICOM", "study_0003/DICOM", "study_0004/DICOM", "study_0005/DICOM"]
    assert sorted(scored) == sorted(rows[k]["study_uid"] for k in ("study_0001/DICOM", "study_0003/DICOM",
                                                                  "study_0004/DICOM"))
    assert (again.total, again.done_before, again.ok) == (4, 1, 4)  # study_0005 was not touched: kept
    assert (again.added, again.changed, again.removed) == (1, 2, 1)
    # the resumed results are those of a fresh run on the archive as it is now
    fresh = tmp_path / "fresh.parquet"
    run_batch(arch, fresh, _opts(tiny_model))
    _same_rows(rows, _by_source(fresh))
    emb = np.load(out.with_name("r.embeddings.npz"))
    assert sorted(emb["source"]) == sorted(rows)
    # the journal is an append-only log: what was committed stays, later records supersede
    assert journal_path(out).read_bytes().startswith(journal_before)

    scored.clear()
    idle = run_batch(arch, out, _opts(tiny_model), progress=lambda d, t, uid: scored.append(uid))
    assert (idle.resumed, idle.added, idle.changed, idle.removed, idle.done_before, scored) == (True, 0, 0, 0, 4, [])
    _same_rows(_by_source(out), rows)
    assert not first.resumed and (first.added, first.changed, first.removed) == (0, 0, 0)


class _FailingEngine:
    """An engine that raises ``exc`` as soon as it is asked for a study."""

    prepare_seconds = encode_seconds = 0.0

    def __init__(self, name: str, exc: BaseException):
        self.name, self.exc = name, exc

    def run(self, todo, job):
        raise self.exc


def _crash():
    """A run stopped after its discovery was saved."""
    return _FailingEngine("crash", RuntimeError("stopped"))


def test_resume_of_an_unfinished_run_after_the_archive_changed(phantom_archive, tiny_model, tmp_path):
    """A study scored by a run that stopped early, then changed, is scored again, even when the run that saw the
    change was stopped before it scored anything; the parsed headers an unfinished run left are used for the
    studies that did not change, never for those that did."""
    arch = tmp_path / "archive"
    names = ("study_0001", "study_0002", "study_0003")
    for name in names:
        shutil.copytree(phantom_archive / name, arch / name)

    def uid(name):
        return str(pydicom.dcmread(next((arch / name).rglob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)

    first = min(names, key=uid)  # the study a run limited to one scores
    late = sorted((arch / first / "DICOM").iterdir())[-1]
    shutil.move(late, tmp_path / "held")
    out = tmp_path / "r.jsonl"
    s = run_batch(arch, out, _opts(tiny_model, limit=1))
    assert (s.total, s.ok) == (3, 1) and _by_source(out)[f"{first}/DICOM"]["status"] == "ok"
    assert (state_dir(out) / "headers").is_dir()  # unfinished: the parsed headers are kept for the next run

    shutil.move(tmp_path / "held", late)  # the scored study changes
    shutil.copytree(phantom_archive / "study_0004", arch / "study_0004")
    gone = next(n for n in names if n != first)
    shutil.rmtree(arch / gone)
    with pytest.raises(RuntimeError, match="stopped"):
        run_batch(arch, out, _opts(tiny_model, engine=_crash()))
    s = run_batch(arch, out, _opts(tiny_model))
    assert (s.total, s.ok, s.done_before) == (3, 3, 0)
    fresh = tmp_path / "fresh.jsonl"
    run_batch(arch, fresh, _opts(tiny_model))
    _same_rows(_by_source(out), _by_source(fresh))


def test_a_discovery_saved_without_a_file_index_is_brought_up_to_date(phantom_archive, tiny_model, tmp_path):
    """State folders of runs that saved only the studies' file lists resume: the headers are read again once, and
    a study whose file list is unchanged keeps its result."""
    arch = tmp_path / "archive"
    for name in ("study_0001", "study_0002"):
        shutil.copytree(phantom_archive / name, arch / name)
    out = tmp_path / "r.jsonl"
    run_batch(arch, out, _opts(tiny_model))
    before = _by_source(out)
    f = state_dir(out) / "studies.json"
    d = json.loads(f.read_text())
    studies: dict[str, list[str]] = {}
    for ref, _, _, study, _ in d["index"]:
        if study:
            studies.setdefault(study, []).append(ref)
    f.write_text(json.dumps({"archive": d["archive"], "studies": studies, "duplicates": {}, "skipped": {},
                             "files": len(d["index"])}))
    shutil.rmtree(arch / "study_0002")
    scored: list[str] = []
    s = run_batch(arch, out, _opts(tiny_model), progress=lambda d, t, uid: scored.append(uid))
    assert (s.resumed, s.added, s.changed, s.removed, s.done_before, scored) == (True, 0, 0, 1, 1, [])
    assert _by_source(out) == {"study_0001/DICOM": before["study_0001/DICOM"]}
    assert "index" in json.loads(f.read_text())


# --- journal recovery keeps good records -----------------------------------------------------------------------


def test_a_corrupt_middle_journal_line_keeps_the_records_after_it(phantom_archive, tiny_model, tmp_path):
    arch = tmp_path / "archive"
    for name in ("study_0001", "study_0002", "study_0003", "study_0004"):
        shutil.copytree(phantom_archive / name, arch / name)
    out = tmp_path / "r.csv"
    run_batch(arch, out, _opts(tiny_model))
    before = _by_source(out)
    jp = journal_path(out)
    lines = jp.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4
    lost = json.loads(lines[1])["study_uid"]
    lines[1] = b'{"schema":"cmrdx-batch-journal/1","study_uid":"' + b"\x00" * 40 + b"\n"  # a corrupt line
    jp.write_bytes(b"".join(lines) + b'{"schema":"cmrdx-batch-journal/1","study_u')  # and a torn last record

    j = Journal(jp)
    j.close()
    assert sorted(j.records) == sorted(json.loads(lines[i])["study_uid"] for i in (0, 2, 3))
    assert j.skipped_lines == [2] and j.torn_bytes > 0
    assert jp.read_bytes() == b"".join(lines)  # only the torn tail is cut; the corrupt line stays, reported

    scored: list[str] = []
    s = run_batch(arch, out, _opts(tiny_model), progress=lambda d, t, uid: scored.append(uid))
    assert scored == [lost] and s.done_before == 3 and s.journal_skipped == 1
    _same_rows(_by_source(out), before)


def test_malformed_journal_or_state_files_give_a_clear_error(phantom_archive, tiny_model, tmp_path):
    arch = tmp_path / "archive"
    shutil.copytree(phantom_archive / "study_0001", arch / "study_0001")
    out = tmp_path / "r.jsonl"
    run_batch(arch, out, _opts(tiny_model))
    studies = state_dir(out) / "studies.json"
    good = studies.read_bytes()
    for bad in (b"{not json", b"[1, 2, 3]", b'{"archive": 3, "index": "x"}', b"\xff\xfe\x00"):
        studies.write_bytes(bad)
        with pytest.raises(CmrdxError) as ei:
            run_batch(arch, out, _opts(tiny_model))
        assert str(studies) in ei.value.message and ei.value.hint and "delete" in ei.value.hint
    studies.write_bytes(good)

    jp = journal_path(out)
    record = jp.read_bytes()
    for bad in (b"\x89PNG\r\n\x1a\n" * 3 + b"\n", b"[]\n{}\n[]\n", b'"x"\n'):
        jp.write_bytes(bad)
        with pytest.raises(CmrdxError) as ei:
            Journal(jp)
        assert str(jp) in ei.value.message and ei.value.hint
    jp.unlink()
    jp.mkdir()
    with pytest.raises(CmrdxError) as ei:
        run_batch(arch, out, _opts(tiny_model))
    assert str(jp) in ei.value.message and ei.value.hint
    jp.rmdir()
    jp.write_bytes(record)
    assert run_batch(arch, out, _opts(tiny_model)).done_before == 1


# --- one run per output ------------------------------------------------------------------------------------------


_HOLDER = textwrap.dedent("""
    import sys
    from cmrdx.pipeline.batch import BatchOptions, run_batch

    class Held:
        # an engine that stops mid-run until told to go on: the run holds its output meanwhile
        name = "held"
        prepare_seconds = encode_seconds = 0.0

        def run(self, todo, job):
            print("running", flush=True)
            sys.stdin.readline()
            yield from ()

    run_batch(sys.argv[1], sys.argv[2], BatchOptions(model=sys.argv[3], device="cpu", workers=1, engine=Held()))
    print("done", flush=True)
""")


def test_a_second_concurrent_run_on_one_output_is_refused(phantom_archive, tiny_model, tmp_path):
    arch = tmp_path / "archive"
    shutil.copytree(phantom_archive / "study_0001", arch / "study_0001")
    out = tmp_path / "r.jsonl"
    env = _env(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(arch), str(out), str(tiny_model)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _read_line(holder, 300) == "running"
        with pytest.raises(CmrdxError, match="another cmrdx batch") as ei:
            run_batch(arch, out, _opts(tiny_model))
        assert str(holder.pid) in ei.value.message and ei.value.hint
        cli = subprocess.run([sys.executable, "-m", "cmrdx", "batch", str(arch), "--out", str(out), "--model",
                              str(tiny_model), "--device", "cpu", "--workers", "1"],
                             capture_output=True, text=True, timeout=300, env=env)
        assert cli.returncode == CmrdxError.exit_code, cli.stdout + cli.stderr
        assert "another cmrdx batch" in cli.stdout + cli.stderr and "Traceback" not in cli.stdout + cli.stderr
        # the lock dies with its process: a killed run never locks its output out
        holder.kill()
        holder.wait(60)
        s = run_batch(arch, out, _opts(tiny_model))
        assert (s.total, s.ok) == (1, 1)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(60)


def test_a_run_inside_a_run_on_one_output_is_refused(phantom_archive, tiny_model, tmp_path):
    """Two runs in one process (threads, or a callback) are refused too: the lock is not only per process."""
    arch = tmp_path / "archive"
    shutil.copytree(phantom_archive / "study_0001", arch / "study_0001")
    out = tmp_path / "r.jsonl"
    inner: list[BaseException] = []

    def progress(done, total, uid):
        try:
            run_batch(arch, out, _opts(tiny_model))
        except CmrdxError as exc:
            inner.append(exc)

    s = run_batch(arch, out, _opts(tiny_model), progress=progress)
    assert s.ok == 1 and len(inner) == 1 and "another cmrdx batch" in str(inner[0])
    assert run_batch(arch, out, _opts(tiny_model)).done_before == 1  # released when the run ended


# --- workers die with their run --------------------------------------------------------------------------------


_KILLED = textwrap.dedent("""
    import sys
    from cmrdx.pipeline.batch import BatchOptions, run_batch

    def progress(done, total, uid):
        print("progress", flush=True)  # the reader pool is alive: the run is between two studies
        sys.stdin.readline()

    run_batch(sys.argv[1], sys.argv[2], BatchOptions(model=sys.argv[3], device="cpu", workers=2, batch_size=1),
              progress=progress)
""")


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session) of a live process, or None when it is gone (zombies count as gone: their init
    may not reap them in a container)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw.rsplit(")", 1)[1].split()
    state, ppid, session = fields[0], int(fields[1]), int(fields[3])
    return None if state in ("Z", "X") else (state, ppid, session)


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _proc_stat(int(d.name))
            if st is not None and st[1] == pid:
                out.append(int(d.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_workers_exit_when_a_killed_batch_leaves_them(phantom_archive, tiny_model, tmp_path):
    arch = tmp_path / "archive"
    for name in ("study_0001", "study_0002", "study_0003"):
        shutil.copytree(phantom_archive / name, arch / name)
    out = tmp_path / "r.jsonl"
    run = subprocess.Popen([sys.executable, "-c", _KILLED, str(arch), str(out), str(tiny_model)], env=_env(tmp_path),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    workers: list[int] = []
    try:
        assert _read_line(run, 300) == "progress"
        workers = _children(run.pid)
        assert len(workers) >= 2, workers
        os.kill(run.pid, signal.SIGKILL)  # the run only: its workers are left to themselves
        run.wait(60)
        deadline = time.monotonic() + 120  # generous: the bound is on correctness, not speed
        while time.monotonic() < deadline and any(_proc_stat(w) for w in workers):
            time.sleep(0.2)
        alive = [w for w in workers if _proc_stat(w)]
        assert alive == [], f"reader workers outlived their killed run: {alive}"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(60)
        for w in workers:
            if _proc_stat(w):
                os.kill(w, signal.SIGKILL)
    # the resumed run needs nothing of the killed one
    s = run_batch(arch, out, _opts(tiny_model))
    assert (s.total, s.ok) == (3, 3)


# --- options that would never finish -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"batch_size": -2}, {"workers": 0}, {"workers": -1},
                                 {"max_in_flight": 0}, {"limit": -1}, {"batch_size": 2.5}, {"batch_size": True}])
def test_batch_size_0_is_an_error(bad):
    name = next(iter(bad))
    with pytest.raises(CmrdxError, match=name) as ei:
        BatchOptions(**bad)
    assert ei.value.hint


def _never():
    """An engine that must never be started."""
    return _FailingEngine("never", AssertionError("an engine was started with batch_size 0"))


def test_batch_size_0_never_reaches_an_engine(phantom_archive, tiny_model, tmp_path):
    opts = _opts(tiny_model, engine=_never())
    opts.batch_size = 0  # set after construction: run_batch checks again
    with pytest.raises(CmrdxError, match="batch_size"):
        run_batch(phantom_archive, tmp_path / "r.jsonl", opts)
    assert not state_dir(tmp_path / "r.jsonl").exists()


def test_batch_cli_counts_below_one_are_usage_errors_and_outputs_are_checked_first(tmp_path):
    """`--workers -1` / `--batch-size 0` print usage and exit 2; an --out that is a folder is refused (exit 13)
    before the archive is read."""
    import subprocess
    import sys

    arch = tmp_path / "archive"
    arch.mkdir()
    for opt in (["--workers", "-1"], ["--batch-size", "0"], ["--limit", "-1"]):
        r = subprocess.run([sys.executable, "-m", "cmrdx", "batch", str(arch), "--out", str(tmp_path / "r.csv"), *opt],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Usage" in r.stderr and "Traceback" not in r.stderr, (opt, r.stderr)
    (tmp_path / "outdir.csv").mkdir()
    r = subprocess.run([sys.executable, "-m", "cmrdx", "batch", str(tmp_path / "missing-archive"), "--out",
                        str(tmp_path / "outdir.csv")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 13 and "outdir.csv" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_pipes_and_devices_in_a_batch_archive_are_counted_as_skipped(tiny_model, tmp_path):
    """The reader never opens a named pipe or a link to a device; batch counts them by reason in its summary."""
    import os
    import shutil

    from cmrdx.pipeline.batch import BatchOptions, run_batch

    arch = tmp_path / "archive"
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "phantom-study", arch / "study")
    os.mkfifo(arch / "study" / "pipe.dcm")
    (arch / "study" / "zero.dcm").symlink_to("/dev/zero")
    s = run_batch(arch, tmp_path / "r.jsonl", BatchOptions(model=str(tiny_model), device="cpu", workers=1))
    assert s.ok == 1
    assert s.files_skipped.get("not a regular file (named pipe)") == 1
    assert s.files_skipped.get("not a regular file (character device)") == 1
