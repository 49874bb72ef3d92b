"""`cmrdx listen` (cmrdx.pacs.listen) as a DICOM node: studies sent to it by C-STORE (from Orthanc, the "PACS
routing rule" path, and from a storescu-like sender here) are spooled, classified once complete (the bundled
model, on the CPU), and their SR is stored on a real PACS (Orthanc). Unknown calling AE titles are refused; a
restart in the middle of a study loses nothing; SIGTERM stops `cmrdx listen` cleanly.

No test depends on speed: the listener's clock is a manual one the test advances once everything was sent (so
a study can never be taken as complete early), and waits for outcomes have generous timeouts as hang guards only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cmrdx.errors import NoCineError
from cmrdx.pacs.config import get_node
from cmrdx.pacs.listen import (
    CANNOT_UNDERSTAND,
    JOURNAL_NAME,
    OUT_OF_RESOURCES,
    Listener,
    StudyClassifier,
    StudyOutputs,
    journal_events,
    read_journal,
)
from cmrdx.pacs.outbox import Outbox

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "phantom-study" / "DICOM"
EXAMPLE_UID = "1.2.826.0.1.3680043.8.498.82186712074145673253092799472301541514"
EXAMPLE_FILES = sorted(p for p in EXAMPLE.rglob("*.dcm"))
HANG_GUARD = 300.0  # seconds: only ever reached when something is broken


class ManualClock:
    """The listener's clock, moved by the test: a study is complete only when the test says time has passed."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def wait_for(what: str, pred: Callable[[], Any], timeout: float = HANG_GUARD) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def c_store(files: Iterable[Path], port: int, *, calling: str = "STORESCU", called: str = "CMRDX") -> list[int]:
    """A storescu: one association, each file sent as it is; the status of each (-1: no answer). TCP_NODELAY as
    DCMTK's storescu sets it: pynetdicom writes each C-STORE as two PDUs, and without it the second waits for the
    peer's delayed ACK (about 40 ms an instance)."""
    import socket

    from pynetdicom import AE, evt

    def nodelay(event: Any) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    items = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling)
    for sop_class, ts in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in items}):
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
    assert assoc.is_established, f"association to the listener not established (rejected: {assoc.is_rejected})"
    try:
        out = []
        for ds in items:
            st = assoc.send_c_store(ds)
            out.append(int(st.Status) if "Status" in st else -1)
        return out
    finally:
        assoc.release()


def tiny_mr(folder: Path, study_uid: str, n: int = 3) -> list[Path]:
    """``n`` small MR images of one study (for tests where the classifier is a stand-in)."""
    series = generate_uid()
    out = []
    for k in range(n):
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series
        ds.Modality, ds.PatientID, ds.PatientName = "MR", "LISTEN-TEST", "Listen^Test"
        ds.InstanceNumber = k + 1
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.full((8, 8), k, dtype="<u2").tobytes()
        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = fm
        p = folder / study_uid / f"{k}.dcm"
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


class FakeClassifier:
    """Stands in for the model where classification itself is not under test: records each call, writes nothing
    but a marker, and fails for the studies it is told to."""

    def __init__(self, fail: dict[str, Exception] | None = None):
        self.calls: list[tuple[str, int]] = []
        self.fail = fail or {}

    def __call__(self, study_dir: Path, out_dir: Path, study_uid: str) -> StudyOutputs:
        self.calls.append((study_uid, len(list(study_dir.glob("*.dcm")))))
        if study_uid in self.fail:
            raise self.fail[study_uid]
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "marker").write_text(study_uid)
        return StudyOutputs(study_uid=study_uid, sr=None, views=["sax"], findings=1, present=0)


def events(listener: Listener, study: str | None = None, *kinds: str) -> list[dict[str, Any]]:
    return journal_events(listener.spool / JOURNAL_NAME, study, kinds or None)


@pytest.fixture
def make_listener(tmp_path):
    """Listeners on a free port with their spool, outputs and outbox in tmp_path; closed after the test."""
    made: list[Listener] = []

    def make(**kw: Any) -> Listener:
        kw.setdefault("spool", tmp_path / "spool")
        kw.setdefault("out", tmp_path / "out")
        kw.setdefault("outbox", Outbox(tmp_path / "outbox"))
        kw.setdefault("aet", "CMRDX")
        kw.setdefault("port", 0)
        kw.setdefault("allowed_aets", {"STORESCU"})
        kw.setdefault("quiet_seconds", 30.0)
        worker = kw.pop("worker", True)
        lst = Listener(**kw)
        made.append(lst)
        return lst.start(worker=worker)

    yield make
    for lst in made:
        lst.close()


@pytest.fixture
def new_srs(orthanc):
    """The SR series of the example study Orthanc gains during the test (deleted afterwards: other tests count
    what the session's Orthanc holds)."""
    before = set(orthanc.find("Series", {"StudyInstanceUID": EXAMPLE_UID, "Modality": "SR"}))

    def gained() -> list[str]:
        return sorted(set(orthanc.find("Series", {"StudyInstanceUID": EXAMPLE_UID, "Modality": "SR"})) - before)

    yield gained
    for oid in gained():
        orthanc.request("DELETE", f"/series/{oid}")


def sr_sop_uids(orthanc, series_ids: list[str]) -> set[str]:
    out = set()
    for sid in series_ids:
        for inst in orthanc.get(f"/series/{sid}/instances"):
            out.add(inst["MainDicomTags"]["SOPInstanceUID"])
    return out


# --- the listener's own rules (a stand-in classifier) ----------------------------------------------------------------
def test_unknown_calling_or_called_ae_title_is_refused(make_listener, tmp_path):
    from pynetdicom import AE

    lst = make_listener(classify_fn=FakeClassifier(), worker=False)
    files = tiny_mr(tmp_path / "in", generate_uid(), 1)
    for calling, called in (("INTRUDER", "CMRDX"), ("STORESCU", "NOTCMRDX")):
        ae = AE(ae_title=calling)
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", lst.port, ae_title=called)
        assert assoc.is_rejected, (calling, called)
        prim = assoc.acceptor.primitive
        assert prim.result_str == "Rejected Permanent"
        assert prim.reason_str == ("Calling AE title not recognised" if called == "CMRDX" else "Called AE title not recognised")
    assert c_store(files, lst.port) == [0]  # an allowed sender is served
    assert list(lst.studies()) == [pydicom.dcmread(files[0]).StudyInstanceUID]


def test_a_study_is_classified_after_its_quiet_period_and_again_after_new_instances(make_listener, tmp_path):
    clock, fake = ManualClock(), FakeClassifier()
    lst = make_listener(classify_fn=fake, clock=clock, worker=False)
    uid = generate_uid()
    files = tiny_mr(tmp_path / "in", uid, 4)
    assert c_store(files[:3], lst.port) == [0, 0, 0]
    # every acknowledged instance is on disk, named by its UIDs, with its file meta
    spooled = sorted((lst.spool / uid).glob("*.dcm"))
    assert len(spooled) == 3 and pydicom.dcmread(spooled[0]).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert lst.poll_once(clock() + 29.9) == []  # not quiet long enough yet
    assert lst.poll_once(clock() + 30) == [uid] and fake.calls == [(uid, 3)]
    assert lst.poll_once(clock() + 1000) == []  # classified once
    clock.advance(40)
    assert c_store(files[3:], lst.port) == [0]
    assert lst.poll_once(clock() + 30) == [uid] and fake.calls[-1] == (uid, 4)
    classified = events(lst, uid, "classified")
    assert [r["instances"] for r in classified] == [3, 4]
    assert len(events(lst, uid, "received")) == 4


def test_a_failed_study_is_journaled_and_the_listener_goes_on(make_listener, tmp_path):
    bad, good = generate_uid(), generate_uid()
    fake = FakeClassifier(fail={bad: NoCineError("no cine series", hint="send a study with cine"),
                                good: RuntimeError("a bug")})
    clock = ManualClock()
    lst = make_listener(classify_fn=fake, clock=clock, worker=False)
    assert c_store(tiny_mr(tmp_path / "in", bad, 2) + tiny_mr(tmp_path / "in", good, 2), lst.port) == [0] * 4
    assert sorted(lst.poll_once(clock() + 30)) == sorted([bad, good])
    fail_bad, = events(lst, bad, "failed")
    assert fail_bad["error"] == {"type": "NoCineError", "message": "no cine series"} and fail_bad["retry"] is False
    fail_good, = events(lst, good, "failed")
    assert fail_good["error"]["type"] == "RuntimeError" and fail_good["retry"] is True
    # still serving
    assert c_store(tiny_mr(tmp_path / "in2", generate_uid(), 1), lst.port) == [0]


def test_spool_limit_evicts_classified_studies_then_refuses(make_listener, tmp_path):
    clock, fake = ManualClock(), FakeClassifier()
    a, b, c = generate_uid(), generate_uid(), generate_uid()
    fa, fb, fc = (tiny_mr(tmp_path / "in", u, 2) for u in (a, b, c))
    size = max(f.stat().st_size for f in fa + fb + fc) + 64
    lst = make_listener(classify_fn=fake, clock=clock, worker=False, max_spool_bytes=4 * size)
    assert c_store(fa, lst.port) == [0, 0]
    assert lst.poll_once(clock() + 30) == [a]  # a is classified: it may be evicted
    assert c_store(fb, lst.port) == [0, 0]
    assert c_store(fc, lst.port) == [0, 0]  # a evicted to make room
    assert not (lst.spool / a).exists() and events(lst, a, "evicted")
    more = tiny_mr(tmp_path / "in", b, 1)  # b and c await classification: never evicted
    assert c_store(more, lst.port) == [OUT_OF_RESOURCES]
    assert lst.spool_bytes <= 4 * size
    assert set(lst.studies()) == {b, c}


def test_an_instance_without_a_study_uid_is_not_understood(make_listener, tmp_path):
    lst = make_listener(classify_fn=FakeClassifier(), worker=False)
    f = tiny_mr(tmp_path / "in", generate_uid(), 1)[0]
    ds = pydicom.dcmread(f)
    del ds.StudyInstanceUID
    ds.save_as(f, enforce_file_format=True)
    assert c_store([f], lst.port) == [CANNOT_UNDERSTAND]
    assert lst.studies() == {}


def test_a_torn_journal_line_from_a_kill_is_dropped_at_start(make_listener, tmp_path):
    clock, fake = ManualClock(), FakeClassifier()
    uid = generate_uid()
    lst = make_listener(classify_fn=fake, clock=clock, worker=False)
    assert c_store(tiny_mr(tmp_path / "in", uid, 2), lst.port) == [0, 0]
    lst.close()
    journal = lst.spool / JOURNAL_NAME
    with open(journal, "ab") as fh:
        fh.write(b'{"event":"classified","study_uid":"' + uid.encode())  # a kill mid-append
    again = make_listener(classify_fn=fake, clock=clock, worker=False)
    assert journal.read_bytes().endswith(b"\n")
    assert [r["event"] for r in read_journal(journal)][-2:] == ["scheduled", "started"]
    assert again.poll_once(clock() + 30) == [uid] and fake.calls == [(uid, 2)]


def test_one_listener_per_spool(make_listener):
    from cmrdx.errors import CmrdxError

    make_listener(classify_fn=FakeClassifier(), worker=False)
    with pytest.raises(CmrdxError, match="another cmrdx listen"):
        make_listener(classify_fn=FakeClassifier(), worker=False)


class Blocking(FakeClassifier):
    """A classifier that waits inside the classification until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, study_dir: Path, out_dir: Path, study_uid: str) -> StudyOutputs:
        self.entered.set()
        assert self.release.wait(HANG_GUARD)
        return super().__call__(study_dir, out_dir, study_uid)


def test_a_stop_lets_the_study_being_classified_finish(make_listener, tmp_path):
    clock, blocking = ManualClock(), Blocking()
    lst = make_listener(classify_fn=blocking, clock=clock)
    uid = generate_uid()
    assert c_store(tiny_mr(tmp_path / "in", uid, 2), lst.port) == [0, 0]
    clock.advance(31)
    assert blocking.entered.wait(HANG_GUARD)
    lst.stop()
    closing = threading.Thread(target=lst.close)
    closing.start()
    closing.join(0.5)
    assert closing.is_alive()  # it cannot end while the classification it waits for is blocked
    blocking.release.set()
    closing.join(HANG_GUARD)
    assert [r["event"] for r in read_journal(lst.spool / JOURNAL_NAME)][-3:] == ["classifying", "classified", "stopped"]


def test_a_stop_past_its_grace_journals_the_study_interrupted_and_the_next_start_redoes_it(make_listener, tmp_path):
    clock, blocking = ManualClock(), Blocking()
    lst = make_listener(classify_fn=blocking, clock=clock)
    uid = generate_uid()
    assert c_store(tiny_mr(tmp_path / "in", uid, 2), lst.port) == [0, 0]
    clock.advance(31)
    assert blocking.entered.wait(HANG_GUARD)
    lst.stop(grace=0)  # a second SIGTERM: do not wait
    lst.close()
    assert [r["event"] for r in read_journal(lst.spool / JOURNAL_NAME)][-2:] == ["interrupted", "stopped"]
    blocking.release.set()  # the old worker ends; the closed journal takes nothing more from it
    fake = FakeClassifier()
    again = make_listener(classify_fn=fake, clock=clock, worker=False)
    assert events(again, uid, "scheduled")
    assert again.poll_once(clock() + 30) == [uid] and fake.calls == [(uid, 2)]


# --- with the real PACS and the real classifier ----------------------------------------------------------------------
def test_a_study_routed_from_the_pacs_gets_its_sr_stored_there(orthanc, pacs_config, make_listener, new_srs,
                                                               module_home):
    """Orthanc sends the example study to the listener (``POST /modalities/NAME/store``: what a routing rule
    does); the listener classifies it once it is quiet and stores the SR on Orthanc (DIMSE node)."""
    clock = ManualClock()
    lst = make_listener(classify_fn=StudyClassifier(device="cpu"), clock=clock, allowed_aets={orthanc.aet},
                        forward=get_node("dimse", pacs_config))
    modality = f"cmrdx-listen-{lst.port}"
    orthanc.add_modality(modality, "CMRDX", "127.0.0.1", lst.port)
    mr_series = orthanc.find("Series", {"StudyInstanceUID": EXAMPLE_UID, "Modality": "MR"})
    expected = sum(len(orthanc.get(f"/series/{s}/instances")) for s in mr_series)
    assert expected == len(EXAMPLE_FILES) == 317
    answer = orthanc.request("POST", f"/modalities/{modality}/store",
                             json.dumps({"Resources": mr_series, "Synchronous": True}).encode())
    assert answer["InstancesCount"] == expected and answer["FailedInstancesCount"] == 0
    assert lst.studies()[EXAMPLE_UID]["instances"] == expected  # every acknowledged instance is spooled
    assert not events(lst, EXAMPLE_UID, "classifying")  # not complete before its quiet period
    clock.advance(31)
    gained = wait_for("the SR in Orthanc", new_srs)
    assert len(gained) == 1
    fwd, = wait_for("the forwarded record", lambda: events(lst, EXAMPLE_UID, "forwarded"))  # journaled after the store
    done, = events(lst, EXAMPLE_UID, "classified")
    assert done["instances"] == expected and done["views"]
    out = lst.out / EXAMPLE_UID
    assert {p.name for p in out.iterdir()} >= {"result.json", "report.html", "sr.dcm"}
    result = json.loads((out / "result.json").read_text())
    assert result["study_uid"] == EXAMPLE_UID and result["run"]["files_scanned"] == expected
    sr = pydicom.dcmread(out / "sr.dcm", stop_before_pixels=True)
    assert sr_sop_uids(orthanc, gained) == {sr.SOPInstanceUID}
    assert fwd["sr_sop_instance_uid"] == sr.SOPInstanceUID and fwd["node"] == "dimse"
    assert lst.outbox.pending("dimse") == []


def test_a_restart_in_the_middle_of_a_study_loses_nothing(orthanc, pacs_config, make_listener, new_srs, module_home):
    """Half the study arrives, the listener stops (as for a restart), a new listener on the same spool receives
    the rest: the study is classified once, from all 317 instances, and its SR reaches the PACS."""
    calls: list[int] = []
    real = StudyClassifier(device="cpu")

    def counting(study_dir: Path, out_dir: Path, uid: str) -> StudyOutputs:
        calls.append(len(list(study_dir.glob("*.dcm"))))
        return real(study_dir, out_dir, uid)

    forward = get_node("dimse", pacs_config)
    half = len(EXAMPLE_FILES) // 2
    first = make_listener(classify_fn=counting, clock=ManualClock(), forward=forward)
    assert c_store(EXAMPLE_FILES[:half], first.port) == [0] * half
    first.close()
    assert calls == []  # its clock never let the half study look complete
    assert [r["event"] for r in read_journal(first.spool / JOURNAL_NAME)][-1] == "stopped"

    clock = ManualClock()
    second = make_listener(classify_fn=counting, clock=clock, forward=forward)
    scheduled, = events(second, EXAMPLE_UID, "scheduled")
    assert scheduled["instances"] == half
    assert c_store(EXAMPLE_FILES[half:], second.port) == [0] * (len(EXAMPLE_FILES) - half)
    clock.advance(31)
    wait_for("the SR in Orthanc", new_srs)
    wait_for("the forwarded record", lambda: events(second, EXAMPLE_UID, "forwarded"))
    assert calls == [len(EXAMPLE_FILES)]  # classified once, with every instance
    done, = events(second, EXAMPLE_UID, "classified")
    assert done["instances"] == len(EXAMPLE_FILES)
    received = {r["sop_instance_uid"] for r in events(second, EXAMPLE_UID, "received")}
    assert received == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in EXAMPLE_FILES}
    assert len(list((second.spool / EXAMPLE_UID).glob("*.dcm"))) == len(EXAMPLE_FILES)
    result = json.loads((second.out / EXAMPLE_UID / "result.json").read_text())
    assert result["run"]["files_scanned"] == len(EXAMPLE_FILES)


def test_a_forward_node_that_is_down_leaves_the_sr_pending_until_it_is_back(orthanc, pacs_config, make_listener,
                                                                           new_srs, tmp_path):
    """The SR of a study classified while the PACS is down waits in the outbox ("forward-pending") and is stored
    by the next listener's start-up flush."""
    import dataclasses

    from helpers.orthanc import free_port

    node = get_node("dimse", pacs_config)
    down = dataclasses.replace(node, port=free_port(), timeout=5.0)
    clock = ManualClock()
    sr_path = tmp_path / "fake-sr.dcm"

    def with_sr(study_dir: Path, out_dir: Path, uid: str) -> StudyOutputs:
        from test_pacs_outbox import sr_like

        ds_path = sr_like(sr_path, study_uid=EXAMPLE_UID, note="listen forward test")
        return StudyOutputs(study_uid=uid, sr=ds_path, views=["sax"], findings=0, present=0)

    lst = make_listener(classify_fn=with_sr, clock=clock, forward=down, worker=False)
    assert c_store(EXAMPLE_FILES[:2], lst.port) == [0, 0]
    assert lst.poll_once(clock() + 30) == [EXAMPLE_UID]
    pending, = events(lst, EXAMPLE_UID, "forward-pending")
    assert pending["node"] == "dimse" and pending["error"]
    assert len(lst.outbox.pending("dimse")) == 1 and new_srs() == []
    lst.close()

    back = make_listener(classify_fn=with_sr, clock=ManualClock(), forward=node, worker=False)
    back.flush_forward()  # what the worker does first
    assert lst.outbox.pending("dimse") == [] and len(new_srs()) == 1
    fwd, = events(back, EXAMPLE_UID, "forwarded")
    assert fwd["sr_sop_instance_uid"] == pending["sr_sop_instance_uid"]


# --- the command ----------------------------------------------------------------------------------------------------
def test_cmrdx_listen_stops_cleanly_on_sigterm(tmp_path):
    """`cmrdx listen` receives, then SIGTERM: exit 0, the journal whole (every line a record, "stopped" last), and
    a new listener on the same spool picks the unclassified study up."""
    from cmrdx.cli import app

    registered = {c.name for c in app.registered_commands}
    assert "listen" in registered, "cmrdx listen is not registered in cmrdx/cli/__init__.py"
    patient = str(pydicom.dcmread(EXAMPLE_FILES[0], stop_before_pixels=True).PatientName)
    env = dict(os.environ, CMRDX_HOME=str(tmp_path / "home"))
    cmd = [sys.executable, "-m", "cmrdx", "listen", "--port", "0", "--spool", str(tmp_path / "spool"),
           "--out", str(tmp_path / "out"), "--allow-aet", "STORESCU", "--quiet", "3600", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        first = wait_for("`cmrdx listen` to listen", lambda: next((ln for ln in lines if "listening as" in ln), None)
                         or (proc.poll() is not None and pytest.fail(f"exited {proc.returncode}: {proc.stderr.read()}")))  # type: ignore[union-attr]
        port = int(first.split(" on port ")[1].split()[0])
        assert c_store(EXAMPLE_FILES[:10], port) == [0] * 10
        wait_for("the receiving line", lambda: any("receiving from STORESCU" in ln for ln in lines))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(HANG_GUARD) == 0, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    journal = tmp_path / "spool" / JOURNAL_NAME
    raw = journal.read_bytes()
    assert raw.endswith(b"\n") and all(json.loads(ln) for ln in raw.splitlines())
    recs = read_journal(journal)
    assert recs[0]["event"] == "started" and recs[-1]["event"] == "stopped"
    assert len([r for r in recs if r["event"] == "received"]) == 10
    assert any(ln.startswith("stopped") for ln in lines)
    assert patient not in "".join(lines) and patient not in journal.read_text()  # studies by UID only
    clock = ManualClock()
    fake = FakeClassifier()
    again = Listener(tmp_path / "spool", tmp_path / "out", port=0, classify_fn=fake, clock=clock,
                     outbox=Outbox(tmp_path / "outbox")).start(worker=False)
    try:
        assert again.poll_once(clock() + 30) == [EXAMPLE_UID] and fake.calls == [(EXAMPLE_UID, 10)]
    finally:
        again.close()
