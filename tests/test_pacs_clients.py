"""The two PACS clients (DICOMweb with dicomweb-client, DIMSE with pynetdicom) against a real Orthanc: they find
studies, read every instance's header without pixel data (the same values as the files), retrieve exactly the
instances asked (counted on Orthanc's side) as the files were stored, store a file, and name each failure with the
error class the CLI maps to its exit code (no secret in any message)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from cmrdx.dicom.series import HEADER_KEYWORDS
from cmrdx.errors import AssociationRejectedError, PacsError, SendError, UsageError
from cmrdx.pacs.client import PacsClient, open_client
from cmrdx.pacs.config import PacsNode, load_nodes
from helpers.orthanc import Orthanc, free_port, write_pacs_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "phantom-study" / "DICOM"
EXAMPLE_UID = "1.2.826.0.1.3680043.8.498.82186712074145673253092799472301541514"
KINDS = ["web", "dimse"]


@pytest.fixture(scope="module")
def example_files() -> dict[str, tuple[Path, pydicom.Dataset]]:
    """The example study's files by SOP Instance UID, with their headers."""
    out = {}
    for p in sorted(EXAMPLE.rglob("*")):
        if p.is_file():
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            out[str(ds.SOPInstanceUID)] = (p, ds)
    return out


@pytest.fixture(scope="module")
def stall_port() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung service)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.1)
    stop = threading.Event()
    held: list[socket.socket] = []

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                held.append(conn)
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        srv.close()


@pytest.fixture(scope="module")
def nodes(orthanc: Orthanc, stall_port: int, tmp_path_factory) -> dict[str, PacsNode]:
    """The session's Orthanc as ``web`` and ``dimse`` (write_pacs_config), plus a C-MOVE node and broken ones.
    Orthanc must know the calling AE title CMRDX (its C-FIND refuses unknown ones; C-MOVE sends to it)."""
    move_port = free_port()
    orthanc.add_modality("cmrdx", "CMRDX", "127.0.0.1", move_port)
    dimse = {"aet": orthanc.aet, "host": "127.0.0.1", "port": orthanc.port, "calling_aet": "CMRDX", "timeout": 30}
    extra = [
        {"name": "move", **dimse, "retrieve": "move", "move_port": move_port},
        {"name": "badaet", **dimse, "aet": "NOT-THE-PACS"},
        {"name": "closed", **dimse, "port": free_port()},
        {"name": "dimse-stall", **dimse, "port": stall_port, "timeout": 1},
        {"name": "web-closed", "dicomweb": f"http://127.0.0.1:{free_port()}/dicom-web", "timeout": 30},
        {"name": "web-path", "dicomweb": f"{orthanc.url}/not-dicomweb", "timeout": 30},
        {"name": "web-stall", "dicomweb": f"http://127.0.0.1:{stall_port}/dicom-web", "timeout": 1},
        {"name": "web-tls", "dicomweb": orthanc.dicomweb.replace("http://", "https://"), "timeout": 30},
    ]
    path = write_pacs_config(orthanc, tmp_path_factory.mktemp("pacs") / "pacs.yaml", extra)
    return load_nodes(path)


@pytest.fixture(scope="module")
def clients(nodes: dict[str, PacsNode]) -> Iterator[dict[str, PacsClient]]:
    """One client per node name, shared by the module's tests."""
    made = {name: open_client(node) for name, node in nodes.items()}
    yield made
    for c in made.values():
        c.close()


@pytest.fixture(scope="module")
def headers(clients) -> dict[str, tuple[list[pydicom.Dataset], float]]:
    """The example study's headers over each protocol (read once), and how long that took."""
    out = {}
    for kind in KINDS:
        t0 = time.perf_counter()
        datasets, whole = clients[kind].study_headers(EXAMPLE_UID, lambda sop: Path("/nonexistent") / sop)
        assert whole == []  # no Enhanced MR in the example: nothing retrieved with the headers
        out[kind] = (datasets, time.perf_counter() - t0)
    return out


def _five(example_files) -> list[tuple[str, str]]:
    """Five instances of the example: three of the first cine series, two of the late-enhancement stack."""
    by_desc: dict[str, list[pydicom.Dataset]] = {}
    for _, ds in example_files.values():
        by_desc.setdefault(str(ds.SeriesDescription), []).append(ds)
    cine = sorted(by_desc["CINE_segmented_SAX_b1"], key=lambda d: int(d.InstanceNumber))[:3]
    late = sorted(by_desc["DE_TI_300_SAX"], key=lambda d: int(d.InstanceNumber))[-2:]
    return [(str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in cine + late]


# -- echo and queries ----------------------------------------------------------------------------------------------
def test_echo_each_kind_from_the_config_file(pacs_config):
    nodes = load_nodes(pacs_config)
    web, dimse = open_client(nodes["web"]), open_client(nodes["dimse"])
    assert "answered QIDO-RS" in web.echo()
    assert "answered C-ECHO" in dimse.echo()
    web.close()
    dimse.close()


def _orthanc_studies(orthanc: Orthanc) -> dict[str, str]:
    """StudyInstanceUID -> StudyDate of every study Orthanc holds (its REST API: the truth to compare with)."""
    out = {}
    for oid in orthanc.get("/studies"):
        tags = orthanc.get(f"/studies/{oid}")["MainDicomTags"]
        out[tags["StudyInstanceUID"]] = tags.get("StudyDate", "")
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_find_studies_by_uid_modality_and_date_range(kind, clients, orthanc):
    client = clients[kind]
    (hit,) = client.find_studies({"StudyInstanceUID": EXAMPLE_UID})
    assert (hit.study_uid, hit.study_date, hit.modalities) == (EXAMPLE_UID, "20190510", ("MR",))
    assert (hit.n_series, hit.n_instances) == (21, 317)

    truth = _orthanc_studies(orthanc)
    assert len(truth) == 13
    mr = client.find_studies({"ModalitiesInStudy": "MR"})
    assert sorted(h.study_uid for h in mr) == sorted(truth)
    dates = sorted(truth.values())
    everything = client.find_studies({"ModalitiesInStudy": "MR", "StudyDate": f"{dates[0]}-{dates[-1]}"})
    assert sorted(h.study_uid for h in everything) == sorted(truth)
    lo, hi = dates[3], dates[8]  # a range matching some studies only: DICOM range matching, bounds included
    some = client.find_studies({"StudyDate": f"{lo}-{hi}"})
    assert sorted(h.study_uid for h in some) == sorted(u for u, d in truth.items() if lo <= d <= hi)
    assert 0 < len(some) < 13


@pytest.mark.parametrize(("query", "requests"), [
    ({"ModalitiesInStudy": "MR"}, 5),  # Orthanc answers matches[offset:limit] here: pages of 4, 4, 4, 1, 0
    ({"StudyDate": "19000101-29991231"}, 4),  # here as PS3.18 says (matches[offset:offset+limit]): 4, 8, 1, 0
])
def test_qido_pages_until_the_node_has_no_more(query, requests, clients, monkeypatch):
    """Small pages (a node may cap its answers) still yield every match, once each."""
    import cmrdx.pacs.dicomweb as dw

    monkeypatch.setattr(dw, "PAGE", 4)
    client = clients["web"]
    asked: list[str] = []
    session = client._client()._session
    real = session.request

    def counting(method, url, *args, **kwargs):
        asked.append(str(url))
        return real(method, url, *args, **kwargs)

    monkeypatch.setattr(session, "request", counting)
    hits = client.find_studies(query)
    assert len({h.study_uid for h in hits}) == len(hits) == 13
    assert len(asked) == requests


def test_dimse_query_keys_must_be_dicom_keywords(clients):
    with pytest.raises(UsageError, match="StudyDat"):
        clients["dimse"].find_studies({"StudyDat": "20190510"})


def _same(a, b) -> bool:
    """Two elements' values are the same (numbers as numbers: DICOM JSON writes DS "0" as 0, read back as 0.0)."""
    if a.VR in ("DS", "IS", "FL", "FD", "US", "SS", "UL", "SL"):
        va = [float(v) for v in (a.value if a.VM > 1 else [a.value])]
        vb = [float(v) for v in (b.value if b.VM > 1 else [b.value])]
        return va == pytest.approx(vb)
    return str(a.value) == str(b.value)


# -- headers ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_study_headers_are_the_files_headers_without_pixels(kind, headers, example_files, orthanc):
    datasets, seconds = headers[kind]
    assert len(datasets) == len(orthanc.find("Instance", {"StudyInstanceUID": EXAMPLE_UID})) == 317
    assert {str(d.SOPInstanceUID) for d in datasets} == set(example_files)
    for ds in datasets:
        _, f = example_files[str(ds.SOPInstanceUID)]
        assert ds.SeriesInstanceUID == f.SeriesInstanceUID
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx([float(v) for v in f.ImagePositionPatient])
        assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx(
            [float(v) for v in f.ImageOrientationPatient])
        assert float(ds.TriggerTime) == pytest.approx(float(f.TriggerTime))
        assert "PixelData" not in ds
        # every header element the file holds came with it; nothing the file lacks was made up (empty)
        for kw in HEADER_KEYWORDS:
            if kw in f and not f[kw].is_empty and f[kw].VR != "SQ":
                assert kw in ds, (kind, kw)
                assert _same(ds[kw], f[kw]), (kind, kw, ds[kw].value, f[kw].value)
            elif kw not in f:
                assert kw not in ds, (kind, kw)
        if kind == "dimse":  # C-FIND answers every asked element; the empty ones are dropped
            assert not [e.keyword for e in ds if e.is_empty]
        assert "QueryRetrieveLevel" not in ds and "RetrieveAETitle" not in ds
    print(f"\n{kind}: headers of {len(datasets)} instances in {seconds:.2f} s")


@pytest.mark.parametrize("kind", KINDS)
def test_study_headers_of_a_study_the_node_lacks(kind, clients):
    with pytest.raises(PacsError, match=r"does not hold study 1\.2\.3\.999") as err:
        clients[kind].study_headers("1.2.3.999", lambda sop: Path("/nonexistent") / sop)
    assert kind in str(err.value) and err.value.exit_code == 14


def test_enhanced_mr_headers_come_whole_over_dimse(clients, orthanc, philips_mprage, tmp_path):
    """Functional groups (the geometry of an Enhanced MR object) fit WADO-RS metadata but not a C-FIND answer: over
    DIMSE the object is retrieved whole, once (a second read finds it where ``dest`` says)."""
    src = pydicom.dcmread(philips_mprage, stop_before_pixels=True)
    uid, sop = str(src.StudyInstanceUID), str(src.SOPInstanceUID)
    orthanc.upload([philips_mprage])
    try:
        (web,), whole = clients["web"].study_headers(uid, lambda s: tmp_path / "web" / s)
        assert whole == [] and "PixelData" not in web
        assert len(web.PerFrameFunctionalGroupsSequence) == src.NumberOfFrames == 176
        for k in (0, 175):  # each frame's geometry came through DICOM JSON
            a, b = web.PerFrameFunctionalGroupsSequence[k], src.PerFrameFunctionalGroupsSequence[k]
            assert a.PlanePositionSequence[0].ImagePositionPatient == b.PlanePositionSequence[0].ImagePositionPatient
            assert a.PixelMeasuresSequence[0].PixelSpacing == b.PixelMeasuresSequence[0].PixelSpacing

        mark = orthanc.log_mark()
        headers, whole = clients["dimse"].study_headers(uid, lambda s: tmp_path / s)
        assert headers == [] and whole == [tmp_path / sop]
        assert orthanc.instance_reads(mark) == 1
        got = pydicom.dcmread(whole[0], stop_before_pixels=True)
        assert len(got.PerFrameFunctionalGroupsSequence) == 176
        mark = orthanc.log_mark()
        assert clients["dimse"].study_headers(uid, lambda s: tmp_path / s) == ([], [tmp_path / sop])
        assert orthanc.instance_reads(mark) == 0
    finally:
        orthanc.delete_study(uid)


# -- retrieve --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["web", "dimse", "move"])
def test_retrieve_moves_exactly_the_asked_instances_as_stored(kind, clients, headers, example_files, orthanc,
                                                               tmp_path):
    five = _five(example_files)
    mark = orthanc.log_mark()
    stats = clients[kind].retrieve(EXAMPLE_UID, five, lambda sop: tmp_path / f"{sop}.dcm")
    assert orthanc.instance_reads(mark) == 5
    written = sorted(tmp_path.iterdir())
    assert len(written) == stats.instances == 5
    assert stats.bytes == sum(p.stat().st_size for p in written)
    assert stats.requests >= 1
    for _, sop in five:
        got = pydicom.dcmread(tmp_path / f"{sop}.dcm")
        src = pydicom.dcmread(example_files[sop][0])
        assert got.SOPInstanceUID == sop
        assert got.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID  # as stored: not transcoded
        assert (got.pixel_array == src.pixel_array).all()
    print(f"\n{kind}: 5 instances, {stats.bytes} bytes, {stats.requests} request(s), {stats.seconds:.3f} s")


@pytest.mark.parametrize("kind", ["web", "dimse", "move"])
def test_retrieve_a_whole_series_in_one_request(kind, clients, headers, example_files, orthanc, tmp_path):
    series = sorted({(str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for _, d in example_files.values()
                     if d.SeriesDescription == "CINE_segmented_LAX_4Ch"})
    mark = orthanc.log_mark()
    stats = clients[kind].retrieve(EXAMPLE_UID, series, lambda sop: tmp_path / sop)
    assert orthanc.instance_reads(mark) == stats.instances == len(series) == 20
    assert stats.requests == 1
    assert len(list(tmp_path.iterdir())) == 20


@pytest.mark.parametrize("kind", ["web", "dimse", "move"])
def test_retrieve_names_an_instance_the_node_lacks(kind, clients, example_files, tmp_path):
    asked = [*_five(example_files)[:2], (_five(example_files)[0][0], "1.2.3.4.5.6.7")]
    with pytest.raises(PacsError, match=r"1 of the 3 instance\(s\).*1\.2\.3\.4\.5\.6\.7") as err:
        clients[kind].retrieve(EXAMPLE_UID, asked, lambda sop: tmp_path / sop)
    assert err.value.exit_code == 14
    assert len(list(tmp_path.iterdir())) == 2  # what did arrive is written (a cache keeps it)


# -- store -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_store_a_file_and_find_it_on_the_node(kind, clients, example_files, orthanc, tmp_path):
    src, _ = next(iter(example_files.values()))
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesDescription = "cmrdx store test"
    path = tmp_path / "copy.dcm"
    ds.save_as(path, enforce_file_format=True)
    try:
        (res,) = clients[kind].store([path])
        assert res.ok and res.path == path and res.sop_instance_uid == ds.SOPInstanceUID, res
        assert orthanc.find("Instance", {"SOPInstanceUID": ds.SOPInstanceUID})
    finally:
        orthanc.delete_study(ds.StudyInstanceUID)  # the other tests count the node's studies


def test_stow_answer_per_file():
    from pydicom.dataset import Dataset

    from cmrdx.pacs.dicomweb import parse_stow_answer

    ok, warned, failed = Dataset(), Dataset(), Dataset()
    ok.ReferencedSOPInstanceUID = "1.1"
    warned.ReferencedSOPInstanceUID, warned.WarningReason = "1.2", 0xB000
    failed.ReferencedSOPInstanceUID, failed.FailureReason = "1.3", 0xA900
    answer = Dataset()
    answer.ReferencedSOPSequence = [ok, warned]
    answer.FailedSOPSequence = [failed]
    res = parse_stow_answer(answer, [(Path(f"f{k}"), f"1.{k}") for k in (1, 2, 3, 4)])
    assert [(r.ok, r.status) for r in res] == [(True, "stored"), (True, "stored"), (False, "failed 0xA900"),
                                               (False, "not stored")]
    assert res[1].detail == "warning 0xB000" and "SOP class" in res[2].detail


# -- errors ------------------------------------------------------------------------------------------------------------
def test_wrong_called_ae_title_is_a_rejected_association(clients):
    with pytest.raises(AssociationRejectedError) as err:
        clients["badaet"].echo()
    e = err.value
    assert e.exit_code == 11
    assert "'badaet'" in e.message and "NOT-THE-PACS" in e.message
    assert "Called AE title not recognised" in e.message
    assert "calling_aet" in (e.hint or "")


@pytest.mark.parametrize("name", ["closed", "web-closed"])
def test_nothing_listening_is_a_send_error(name, clients):
    with pytest.raises(SendError) as err:
        clients[name].echo()
    assert err.value.exit_code == 10 and repr(name) in err.value.message


@pytest.mark.parametrize("name", ["dimse-stall", "web-stall"])
def test_a_node_that_never_answers_is_a_send_error(name, clients):
    with pytest.raises(SendError, match=name):
        clients[name].echo()


def test_dicomweb_wrong_path_is_a_pacs_error(clients):
    with pytest.raises(PacsError, match="HTTP 404") as err:
        clients["web-path"].echo()
    assert "'web-path'" in err.value.message and "/not-dicomweb" in err.value.message


def test_https_to_a_plain_http_node_is_a_tls_send_error(clients):
    with pytest.raises(SendError, match="TLS") as err:
        clients["web-tls"].echo()
    assert "https://" in err.value.message


def test_a_query_from_an_unknown_calling_ae_is_a_pacs_error(nodes):
    """Orthanc accepts the association (C-ECHO works) but aborts a C-FIND from an AE title it does not know."""
    from dataclasses import replace

    client = open_client(replace(nodes["dimse"], calling_aet="STRANGER"))
    assert "answered C-ECHO" in client.echo()
    with pytest.raises(PacsError, match="refused the request") as err:
        client.find_studies({"StudyInstanceUID": EXAMPLE_UID})
    assert "STRANGER" in (err.value.hint or "")


def test_ae_titles_are_checked_before_connecting():
    with pytest.raises(UsageError, match="aet"):
        open_client(PacsNode(name="x", aet="BAD\\AET", host="127.0.0.1", port=104))
    with pytest.raises(UsageError, match="calling_aet"):
        open_client(PacsNode(name="x", aet="PACS", host="127.0.0.1", port=104, calling_aet="WAY-TOO-LONG-AE-TITLE"))


# -- HTTP basic authentication (a second Orthanc that asks for it) ---------------------------------------------
@pytest.fixture(scope="module")
def auth_orthanc(tmp_path_factory) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc-auth"),
                   extra={"AuthenticationEnabled": True, "RegisteredUsers": {"alice": "s3cret"}}).start()
    try:
        yield pacs
    finally:
        pacs.stop()


def _auth_node(pacs: Orthanc) -> PacsNode:
    from cmrdx.pacs.config import Auth

    return PacsNode(name="secure", dicomweb=pacs.dicomweb, timeout=30,
                    auth=Auth("basic", user_env="TEST_PACS_USER", password_env="TEST_PACS_PASSWORD"))


def test_basic_auth(auth_orthanc, monkeypatch):
    monkeypatch.setenv("TEST_PACS_USER", "alice")
    monkeypatch.setenv("TEST_PACS_PASSWORD", "wrong-password-xyz")
    with pytest.raises(AssociationRejectedError) as err:
        open_client(_auth_node(auth_orthanc)).echo()
    text = f"{err.value}\n{err.value.hint}"
    assert "HTTP 401" in text and "'secure'" in text and "wrong-password-xyz" not in text
    assert "$TEST_PACS_USER" in text and "$TEST_PACS_PASSWORD" in text

    monkeypatch.setenv("TEST_PACS_PASSWORD", "s3cret")
    client = open_client(_auth_node(auth_orthanc))
    assert "answered QIDO-RS" in client.echo()
    assert client.find_studies({"ModalitiesInStudy": "MR"}) == []
    client.close()

    monkeypatch.delenv("TEST_PACS_PASSWORD")
    with pytest.raises(UsageError, match="TEST_PACS_PASSWORD") as uerr:
        open_client(_auth_node(auth_orthanc)).echo()
    assert "s3cret" not in str(uerr.value)


def test_bearer_token_is_sent_and_never_shown(auth_orthanc, monkeypatch):
    from cmrdx.pacs.config import Auth

    monkeypatch.setenv("TEST_PACS_TOKEN", "tok-123-secret")
    node = PacsNode(name="bearer", dicomweb=auth_orthanc.dicomweb, timeout=30, auth=Auth("bearer", token_env="TEST_PACS_TOKEN"))
    client = open_client(node)
    with pytest.raises(AssociationRejectedError) as err:  # this Orthanc knows only basic auth
        client.echo()
    assert client._session.headers["Authorization"] == "Bearer tok-123-secret"
    text = f"{err.value}\n{err.value.hint}"
    assert "tok-123-secret" not in text and "$TEST_PACS_TOKEN" in text
