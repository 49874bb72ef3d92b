"""The PACS outbox (cmrdx.pacs.outbox) against a real PACS (Orthanc): an SR stored back is found there; a node
that is down or a file it refuses leaves the file pending, with its reason, and a later flush stores it; two
flushes of one node at the same time store each file once."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cmrdx.errors import NoDicomError
from cmrdx.pacs.config import PacsNode, get_node
from cmrdx.pacs.outbox import FlushReport, Outbox, store_back
from helpers.orthanc import free_port

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def sr_like(path: Path, study_uid: str | None = "", *, note: str = "cmrdx outbox test") -> Path:
    """A small Comprehensive SR object (a root CONTAINER with one TEXT item) in its own new study; ``study_uid``
    None: without a StudyInstanceUID (a PACS refuses to file it)."""
    ds = Dataset()
    ds.SOPClassUID = COMPREHENSIVE_SR
    ds.SOPInstanceUID = generate_uid()
    if study_uid is not None:
        ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientID = "OUTBOX-TEST"
    ds.PatientName = "Outbox^Test"
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "126000", "DCM", "Imaging Measurement Report"
    ds.ConceptNameCodeSequence = [concept]
    ds.ContinuityOfContent = "SEPARATE"
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", note
    ds.ContentSequence = [item]
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = ds.SOPClassUID
    fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = fm
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def uids(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPInstanceUID), str(ds.get("StudyInstanceUID", ""))


@pytest.fixture
def cleanup(orthanc):
    """Study UIDs to delete from the session's Orthanc after the test (other tests count what it holds)."""
    studies: list[str] = []
    yield studies
    for uid in studies:
        orthanc.delete_study(uid)


def unreachable(node: PacsNode) -> PacsNode:
    """The same node (same name: same outbox folder) pointed at a port where nothing listens."""
    port = free_port()
    if node.dicomweb:
        return dataclasses.replace(node, dicomweb=f"http://127.0.0.1:{port}/dicom-web", timeout=5.0)
    return dataclasses.replace(node, port=port, timeout=5.0)


# --- without a PACS -------------------------------------------------------------------------------------------------
def test_put_names_the_copy_by_sop_uid_and_is_idempotent(tmp_path):
    box = Outbox(tmp_path / "outbox")
    f = sr_like(tmp_path / "sr.dcm")
    sop, study = uids(f)
    first = box.put("web", f)
    again = box.put("web", f)
    assert first == again == tmp_path / "outbox" / "web" / f"{sop}.dcm"
    assert first.read_bytes() == f.read_bytes()
    assert box.pending("web") == [first]
    assert box.info("web", sop)["study_uid"] == study
    assert box.pending("dimse") == []


def test_put_refuses_what_is_not_dicom(tmp_path):
    box = Outbox(tmp_path / "outbox")
    bad = tmp_path / "notes.txt"
    bad.write_text("not DICOM")
    with pytest.raises(NoDicomError, match="notes.txt"):
        box.put("web", bad)
    with pytest.raises(NoDicomError, match="no such file"):
        box.put("web", tmp_path / "missing.dcm")
    assert box.pending("web") == []


def test_flush_of_an_empty_outbox_connects_to_nothing(tmp_path):
    node = PacsNode(name="nowhere", aet="X", host="127.0.0.1", port=free_port(), timeout=1.0)
    report = Outbox(tmp_path / "outbox").flush(node)
    assert report == FlushReport(node="nowhere") and report.ok


# --- against Orthanc ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["web", "dimse"])
def test_store_back_is_found_in_the_pacs(orthanc, pacs_config, tmp_path, cleanup, name):
    node = get_node(name, pacs_config)
    f = sr_like(tmp_path / "sr.dcm")
    sop, study = uids(f)
    cleanup.append(study)
    box = Outbox(tmp_path / "outbox")
    report = store_back(node, [f], box)
    assert report.ok, report.describe()
    assert [r.sop_instance_uid for r in report.stored] == [sop]
    assert len(orthanc.find("Instance", {"SOPInstanceUID": sop})) == 1
    assert box.pending(name) == []
    assert not list((tmp_path / "outbox" / name).glob("*.json"))  # no side record left behind
    stored = orthanc.instance_file(orthanc.find("Instance", {"SOPInstanceUID": sop})[0])
    assert pydicom.dcmread(__import__("io").BytesIO(stored)).ContentSequence[0].TextValue == "cmrdx outbox test"


@pytest.mark.parametrize("name", ["web", "dimse"])
def test_a_node_that_is_down_keeps_the_file_until_a_later_flush(orthanc, pacs_config, tmp_path, cleanup, name):
    node = get_node(name, pacs_config)
    box = Outbox(tmp_path / "outbox")
    f = sr_like(tmp_path / "sr.dcm")
    sop, study = uids(f)
    cleanup.append(study)
    down = store_back(unreachable(node), [f], box)
    assert down.error and not down.stored and down.pending == 1 and not down.ok
    assert name in down.error or "127.0.0.1" in down.error  # the message names the node or where it is
    assert [p.name for p in box.pending(name)] == [f"{sop}.dcm"]
    side = box.info(name, sop)
    assert side["attempts"] == 1 and side["last_error"] == down.error
    assert orthanc.find("Instance", {"SOPInstanceUID": sop}) == []
    f.unlink()  # the outbox holds its own copy: the original may be gone by the next run

    later = box.flush(node)
    assert later.ok, later.describe()
    assert [r.sop_instance_uid for r in later.stored] == [sop]
    assert len(orthanc.find("Instance", {"SOPInstanceUID": sop})) == 1
    assert box.pending(name) == []


@pytest.mark.parametrize("name", ["web", "dimse"])
def test_a_refused_file_stays_with_its_reason_and_the_others_are_stored(orthanc, pacs_config, tmp_path, cleanup, name):
    """Orthanc refuses an instance without a StudyInstanceUID (it cannot file it): C-STORE answers 0xA700,
    STOW-RS 400. The refused file stays pending with the reason; a good file in the same flush is stored."""
    node = get_node(name, pacs_config)
    box = Outbox(tmp_path / "outbox")
    bad = sr_like(tmp_path / "bad.dcm", study_uid=None)
    bad_sop, _ = uids(bad)
    store_back(unreachable(node), [bad], box)  # an earlier failed run left the bad file waiting
    good = sr_like(tmp_path / "good.dcm")
    good_sop, good_study = uids(good)
    cleanup.append(good_study)

    report = store_back(node, [good], box)  # the earlier file is offered again with the new one
    assert report.error is None
    assert [r.sop_instance_uid for r in report.stored] == [good_sop]
    assert len(orthanc.find("Instance", {"SOPInstanceUID": good_sop})) == 1
    assert [r.sop_instance_uid for r in report.failed] == [bad_sop] and not report.failed[0].ok
    assert report.pending == 1 and [p.stem for p in box.pending(name)] == [bad_sop]
    assert orthanc.find("Instance", {"SOPInstanceUID": bad_sop}) == []
    side = box.info(name, bad_sop)
    assert side["attempts"] == 2  # the unreachable try, then this one
    assert side["last_status"] == report.failed[0].status and side["last_error"]  # the node's answer, kept


def test_two_flushes_of_one_node_store_each_file_once(orthanc, pacs_config, tmp_path, cleanup):
    """Two flushes at once (threads here; the lock is a flock on the node folder's lock file, which keeps
    processes and threads apart alike): every file is stored by exactly one of them."""
    from cmrdx.pacs.client import open_client

    node = get_node("dimse", pacs_config)
    box = Outbox(tmp_path / "outbox")
    files = [sr_like(tmp_path / f"sr{k}.dcm") for k in range(6)]
    for f in files:
        box.put(node.name, f)
        cleanup.append(uids(f)[1])
    offered: list[str] = []
    guard = threading.Lock()

    class Counting:
        def __init__(self) -> None:
            self.inner = open_client(node)
            self.node = node

        def store(self, paths):
            with guard:
                offered.extend(Path(p).stem for p in paths)
            return self.inner.store(paths)

        def close(self) -> None:
            self.inner.close()

    start = threading.Barrier(2)
    reports: list[FlushReport] = []

    def flush() -> None:
        start.wait()
        client = Counting()
        try:
            reports.append(box.flush(node, client))  # type: ignore[arg-type]
        finally:
            client.close()

    threads = [threading.Thread(target=flush) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(offered) == sorted(uids(f)[0] for f in files)  # each offered once, by one flush
    assert sum(len(r.stored) for r in reports) == 6 and all(r.error is None for r in reports)
    assert box.pending(node.name) == []
    for f in files:
        assert len(orthanc.find("Instance", {"SOPInstanceUID": uids(f)[0]})) == 1


def test_side_record_is_json_with_attempts(tmp_path):
    """The reason a file waits is readable by people and scripts: a small JSON file next to it."""
    box = Outbox(tmp_path / "outbox")
    f = sr_like(tmp_path / "sr.dcm")
    sop, _ = uids(f)
    node = PacsNode(name="down", aet="X", host="127.0.0.1", port=free_port(), timeout=2.0)
    report = store_back(node, [f], box)
    assert report.error and report.pending == 1
    rec = json.loads((tmp_path / "outbox" / "down" / f"{sop}.json").read_text())
    assert rec["attempts"] == 1 and rec["sop_instance_uid"] == sop and rec["last_status"] == "SendError"
