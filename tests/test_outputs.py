"""Outputs on real inputs: the HTML report, the DICOM SR (TID 1500) and the FHIR Bundle from the example study
(``examples/phantom-study``), from a phantom with known findings (cmrdx synth, Enhanced MR) and from a cine-factory
study built from pydicom's real MR file; the SR read back with highdicom and checked by dciodvfy; the report opened
in headless Chromium; the SR stored by C-STORE on a pynetdicom SCP on the loopback.

The tiny random-weight model scores the findings; thresholds are then placed around its own scores so that each
finding gets a known call (present / absent / uncertain / no threshold), which every output must carry.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from cmrdx.errors import PixelDecodeError
from cmrdx.model.loader import get_encoder, model_sha256
from cmrdx.outputs import DEMO_NOTICE, RESEARCH_NOTICE, OutputError, StudySource, write_outputs
from cmrdx.pipeline.classify import classify
from helpers.cine_factory import build_cine_study
from helpers.data import dciodvfy_errors, findings_bank_without_thresholds, require_tool

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "phantom-study"
SCT_CALL = {"present": "52101004", "absent": "272519000", "uncertain": "82334004"}


def calibrated_bank(path: Path, model: Path, scores: dict[str, float], calls: dict[str, str],
                    platt: dict[str, tuple[float, float]] | None = None) -> Path:
    """The shipped findings bank with thresholds for the tiny model placed so that finding ``id`` gets ``calls[id]``
    (present: 0.05 under its score; absent: 0.05 over; uncertain: within the bank's 0.01 margin)."""
    sha = model_sha256(get_encoder(model, "cpu").manifest)
    text = findings_bank_without_thresholds()
    offset = {"present": -0.05, "absent": 0.05, "uncertain": 0.001}
    for fid, call in calls.items():
        anchor = f"  - id: {fid}\n"
        extra = ""
        if platt and fid in platt:
            extra = f"        platt: {{a: {platt[fid][0]}, b: {platt[fid][1]}}}\n"
        text = text.replace(anchor, anchor + f"    thresholds:\n      - model: tiny-test-model\n        sha256: {sha}\n"
                                             f"        threshold: {scores[fid] + offset[call]:.6f}\n"
                                             f"        method: {'platt' if extra else 'manual'}\n{extra}", 1)
    path.write_text(text)
    return path


def classify_with_calls(src: StudySource, model: Path, tmp: Path, calls: dict[str, str], **kw):
    first = classify(src.study, model=model, device="cpu", text_cache_dir=tmp)
    bank = calibrated_bank(tmp / "bank.yaml", model, {f.id: f.score for f in first.findings}, calls, **kw)
    return classify(src.study, model=model, banks=[bank], device="cpu", text_cache_dir=tmp), bank


def source_phi(folder: Path) -> list[str]:
    ds = pydicom.dcmread(next(folder.rglob("*.dcm")), stop_before_pixels=True)
    return [str(ds.PatientName), str(ds.PatientID)]


@pytest.fixture(scope="module")
def example(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("example_outputs")
    src = StudySource.read(EXAMPLE)
    calls = {"lv_dysfunction": "present", "pericardial_effusion": "present", "lge": "absent",
             "rv_dilation": "uncertain", "lv_dilation": "present"}
    res, bank = classify_with_calls(src, tiny_model, tmp, calls, platt={"lv_dilation": (20.0, -6.0)})
    written = write_outputs(res, src, report=tmp / "report.html", sr=tmp / "sr.dcm", fhir=tmp / "fhir.json")
    return SimpleNamespace(src=src, res=res, bank=bank, tmp=tmp, written=written, calls=calls,
                           report=tmp / "report.html", sr=tmp / "sr.dcm", fhir=tmp / "fhir.json")


def test_example_calls_cover_every_state(example):
    by = {f.id: f for f in example.res.findings}
    assert {f.call for f in example.res.findings} == {"present", "absent", "uncertain", "no threshold"}
    assert by["lv_dysfunction"].severity in ("mild", "moderate", "severe")  # severity prompts: a level is chosen
    assert by["lv_dilation"].probability is not None  # Platt map
    assert {k: v["path"] for k, v in example.written.items()} == {"report": example.report, "sr": example.sr,
                                                                   "fhir": example.fhir}


# --------------------------------------------------------------------------------------------------------------
# DICOM SR


def test_sr_reads_back_to_the_same_findings(example):
    from cmrdx.outputs.sr import read_sr_findings

    back = read_sr_findings(example.sr)
    assert [(b["bank"], b["id"]) for b in back] == [(f.bank, f.id) for f in example.res.findings]
    for f, b in zip(example.res.findings, back):
        assert b["call"] == f.call and b["severity"] == f.severity and b["kind"] == f.kind
        assert b["score"] == pytest.approx(f.score, rel=1e-9, abs=1e-12)
        for k in ("threshold", "probability"):
            assert (b[k] is None) == (getattr(f, k) is None)
            if b[k] is not None:
                assert b[k] == pytest.approx(getattr(f, k), rel=1e-9, abs=1e-12)
        if f.code:  # the bank's SNOMED CT code, else a private code named after the finding
            assert (b["code"]["scheme"], b["code"]["code"]) == ("SCT", f.code["code"])
        else:
            assert (b["code"]["scheme"], b["code"]["code"], b["label"]) == ("99CMRDX", f.id, f.label)


def test_sr_keeps_labels_in_any_script(example, tmp_path):
    from cmrdx.outputs.sr import read_sr_findings, write_sr

    f = dataclasses.replace(example.res.findings[0], label="Réhaussement tardif – cicatrice", code=None)
    write_sr(dataclasses.replace(example.res, findings=[f]), example.src, tmp_path / "utf8.dcm")
    assert read_sr_findings(tmp_path / "utf8.dcm")[0]["label"] == f.label  # the source study is Latin-1


def test_sr_references_observer_and_identity(example):
    import highdicom.sr as hsr
    from pydicom.sr.codedict import codes

    ds = pydicom.dcmread(example.sr)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.StudyInstanceUID == example.res.study_uid
    assert (ds.CompletionFlag, ds.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    # evidence: exactly the instances of the series the model used, read independently from the files
    expected = {}
    for p in EXAMPLE.rglob("*.dcm"):
        h = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SOPInstanceUID"])
        if h.SeriesInstanceUID in example.res.series_used:
            expected[h.SOPInstanceUID] = h.SeriesInstanceUID
    got = {}
    for st in ds.CurrentRequestedProcedureEvidenceSequence:
        for se in st.ReferencedSeriesSequence:
            for inst in se.ReferencedSOPSequence:
                got[inst.ReferencedSOPInstanceUID] = se.SeriesInstanceUID
    assert got == expected and len(set(got.values())) == len(example.res.series_used)
    sr = hsr.srread(example.sr)
    devices = sr.content.get_observer_contexts(observer_type=codes.DCM.Device)
    attrs = devices[0].observer_identifying_attributes
    assert attrs.name == "cmrdx" and attrs.model_name.startswith(example.res.model["name"])
    assert ds.PatientID == pydicom.dcmread(next(EXAMPLE.rglob("*.dcm")), stop_before_pixels=True).PatientID  # IOD


def test_sr_passes_dciodvfy(example):
    assert not dciodvfy_errors(example.sr)


def test_no_patient_identifiers_in_logs_or_report_or_fhir(example, caplog, tmp_path):
    from cmrdx.outputs.sr import write_sr

    with caplog.at_level(logging.DEBUG):
        write_sr(example.res, example.src, tmp_path / "again.dcm")
    phi = source_phi(EXAMPLE)
    assert all(p not in caplog.text for p in phi)
    for f in (example.report, example.fhir):
        text = f.read_text()
        assert all(p not in text for p in phi), f


def test_outputs_are_atomic_and_errors_name_the_file(example, tmp_path):
    from cmrdx.outputs.html import write_report
    from cmrdx.outputs.sr import write_sr

    target = tmp_path / "sr.dcm"
    target.write_bytes(b"previous")
    other = dataclasses.replace(example.res, study_uid="1.2.3.4")
    with pytest.raises(OutputError, match="not the classified study"):
        write_sr(other, example.src, target)
    assert target.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["sr.dcm"]
    with pytest.raises(OutputError, match=re.escape(str(tmp_path)) + ": is a folder"):
        write_report(example.res, example.src, tmp_path)
    with pytest.raises(OutputError, match="is a file, not a folder"):  # checked before anything is written
        write_outputs(example.res, example.src, fhir=tmp_path / "f.json", report=target / "r.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr.dcm"]



def test_output_errors_name_the_cause_and_the_fix_with_exit_13(tmp_path):
    """A full disk, a folder, a path under a file, a name too long: OutputError (exit 13) naming the file and a fix
    that fits the cause, before or instead of a traceback."""
    import errno

    from cmrdx.errors import EXIT_CODES
    from cmrdx.outputs import check_target, write_atomic

    if Path("/dev/full").exists():
        with pytest.raises(OutputError, match="/dev/full: cannot write here .No space left") as ei:
            write_atomic("/dev/full", "{}")
        assert ei.value.exit_code == EXIT_CODES["OutputError"] == 13 and "disk space" in ei.value.hint
    (tmp_path / "folder").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "folder")
    with pytest.raises(OutputError, match="link: is a folder"):  # a link is judged by its target
        check_target(tmp_path / "link")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_target(tmp_path / "file" / "deeper" / "out.json")
    with pytest.raises(OutputError) as ei:
        check_target(tmp_path / ("n" * 300))
    assert "File name too long" in ei.value.message and ei.value.hint == "choose a shorter file name"
    assert OutputError.from_os_error(OSError(errno.EROFS, "Read-only file system", "/x")).hint.startswith("the disk is")


def test_write_atomic_writes_a_pipe_behind_a_link_in_place(tmp_path):
    """/dev/stdout on a pipe resolves to /proc/PID/fd/pipe:[N], a name that cannot be opened: the link itself is
    opened and written, and no temporary file is made next to anything."""
    import os

    from cmrdx.outputs import write_atomic

    r, w = os.pipe()
    link = tmp_path / "stdout"
    link.symlink_to(f"/proc/self/fd/{w}")
    try:
        assert write_atomic(link, "through the pipe\n") == link
        os.close(w)
        assert os.read(r, 100) == b"through the pipe\n"
    finally:
        os.close(r)
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["stdout"]


# --------------------------------------------------------------------------------------------------------------
# FHIR


def test_fhir_bundle_validates_and_carries_the_findings(example):
    from cmrdx.outputs.fhir import read_bundle

    bundle = read_bundle(example.fhir)  # fhir.resources parses and validates every resource
    raw = json.loads(example.fhir.read_text())
    by_url = {e["fullUrl"]: e["resource"] for e in raw["entry"]}
    report = raw["entry"][0]["resource"]
    assert bundle.type == "collection" and report["resourceType"] == "DiagnosticReport"
    assert report["status"] == "preliminary" and "subject" not in report
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{example.res.study_uid}"
    obs = [by_url[r["reference"]] for r in report["result"]]  # every reference resolves inside the bundle
    assert len(obs) == len(example.res.findings)
    for f, o in zip(example.res.findings, obs):
        assert o["resourceType"] == "Observation" and by_url[o["device"]["reference"]]["resourceType"] == "Device"
        codes = {(c["system"], c["code"]) for c in o["code"]["coding"]}
        assert (f"urn:cmrdx:prompt-bank:{f.bank}", f.id) in codes
        if f.code:
            assert ("http://snomed.info/sct", f.code["code"]) in codes
        if f.call in SCT_CALL:
            assert o["valueCodeableConcept"]["coding"][0]["code"] == SCT_CALL[f.call]
        else:
            assert "valueCodeableConcept" not in o and o["dataAbsentReason"]["coding"][0]["code"] == "not-applicable"
        comps = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in o["component"]}
        assert comps["score"] == pytest.approx(f.score, abs=1e-6)
        assert ("threshold" in comps) == (f.threshold is not None) and ("probability" in comps) == (f.probability is not None)
    present = [f.label for f in example.res.findings if f.call == "present"]
    assert all(p in report["conclusion"] for p in present) and RESEARCH_NOTICE in report["conclusion"]


# --------------------------------------------------------------------------------------------------------------
# HTML report


def _data_images(html: str) -> dict[str, object]:
    from PIL import Image

    out = {}
    for view, _mime, b64 in re.findall(r'data-view="([^"]+)"><img class="preview" alt="[^"]*" src="data:(image/\w+);base64,([^"]+)"', html):
        out[view] = Image.open(io.BytesIO(base64.b64decode(b64)))
    return out


def test_html_report_is_self_contained_and_complete(example):
    html = example.report.read_text()
    assert not re.findall(r'(?:src|href)\s*=\s*["\'](?!data:|#)', html), "external reference in the report"
    assert "url(" not in html and "<link" not in html and "@import" not in html
    imgs = _data_images(html)
    assert set(imgs) == set(example.src.study.views)
    for key, im in imgs.items():
        v = example.src.study.views[key]
        if v.role == "cine":
            assert getattr(im, "n_frames", 1) == v.n_phases  # animated: every phase
        else:  # LGE: the stack side by side
            assert im.width >= v.n_slices * min(v.shape) * 0.5 and im.height > 0
        assert np.asarray(im.convert("L")).std() > 5  # an image, not a blank
    rows = re.findall(r'<tr class="finding-row" data-id="([^"]+)" data-call="[^"]+">', html)
    assert rows == [f.id for f in example.res.findings]  # ranked as the result ranks them
    bars = re.findall(r'<g class="finding" data-id="([^"]+)" data-call="([^"]+)">', html)
    assert sorted(bars) == sorted((f.id, f.call) for f in example.res.findings)
    assert html.count("<title>threshold ") == sum(f.threshold is not None for f in example.res.findings)
    for d in example.src.study.manifest.decisions:
        assert d.description in html
    assert html.count('class="skipped-series"') == len(example.res.skipped_series)
    assert example.res.model["sha256"] in html and all(b["sha256"] in html for b in example.res.banks)
    assert RESEARCH_NOTICE in html and DEMO_NOTICE not in html  # the tiny test model is not the bundled one


def test_html_report_warns_for_the_demo_model_and_survives_an_undecodable_view(example):
    from cmrdx.outputs.html import render_report

    demo = dataclasses.replace(example.res, model={**example.res.model, "name": "cmrdx-phantom-small"},
                               warnings=["cine:SAX: only 10 phases (fewer than 15): motion is under-sampled"])
    # one view whose pixels cannot be decoded: the report still comes, saying which preview is missing and why
    def undecodable(slices, phases):
        raise PixelDecodeError("IM00042.dcm: JPEG 2000 pixel data cannot be decoded", hint="install pylibjpeg-openjpeg")

    study = dataclasses.replace(example.src.study, views=dict(example.src.study.views))
    study.views["lge:2CH"] = dataclasses.replace(study.views["lge:2CH"], _loader=undecodable)
    html = render_report(demo, StudySource(inspection=example.src.inspection, study=study))
    notice = re.search(r'<p class="notice" id="notice">([^<]*)</p>', html).group(1)
    assert DEMO_NOTICE in notice and "not for clinical use" in notice
    assert "only 10 phases" in html
    assert "preview unavailable: IM00042.dcm: JPEG 2000" in html
    assert set(_data_images(html)) == set(study.views) - {"lge:2CH"}


def _chromium(tool: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"chromium-profile-{time.monotonic_ns()}"
    cmd = [tool, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_html_report_renders_in_headless_chromium(example, tmp_path):
    from PIL import Image

    tool = require_tool("chromium")
    url = example.report.resolve().as_uri()
    shot = tmp_path / "shot.png"
    r = _chromium(tool, tmp_path, "--window-size=1200,1800", "--hide-scrollbars", f"--screenshot={shot}", url)
    assert shot.is_file(), r.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert px.std() > 20 and (px.min(axis=2) < 200).mean() > 0.05  # not blank: text, chart and images drawn
    red = (np.abs(px - np.array([0xC6, 0x28, 0x28])).max(axis=2) < 40).sum()
    assert red > 200  # the "present" bars of the chart are drawn in the call colour
    dom = _chromium(tool, tmp_path, "--virtual-time-budget=5000", "--dump-dom", url).stdout
    assert f'data-previews-loaded="{len(example.src.study.views)}"' in dom  # every preview decoded by the browser
    labels = re.findall(r'<tr class="finding-row"[^>]*>.*?<td class="label">([^<]+)</td>.*?<td class="call"[^>]*>([^<]+)</td>', dom)
    assert [lab for lab, _ in labels] == [f.label for f in example.res.findings]
    assert [c for _, c in labels] == [f.call + (f" ({f.severity})" if f.severity else "") for f in example.res.findings]


# --------------------------------------------------------------------------------------------------------------
# Other studies: a phantom with known findings (Enhanced MR), a cine-factory study (real pixels, classic MR)


def test_cli_outputs_follow_a_phantoms_known_findings(tiny_model, tmp_path):
    from cmrdx.cli import app
    from cmrdx.outputs.sr import read_sr_findings

    runner = CliRunner()
    study = tmp_path / "phantom"
    r = runner.invoke(app, ["synth", "study", str(study), "--seed", "11", "--finding", "pericardial_effusion=moderate",
                            "--finding", "lge=mild", "--vendor", "ge", "--enhanced", "--phases", "8", "--matrix", "64",
                            "--no-distractors"])
    assert r.exit_code == 0, r.output
    truth = {k: v != "none" for k, v in json.loads((study / "truth.json").read_text())["findings"].items()}
    src = StudySource.read(study)
    first = classify(src.study, model=tiny_model, device="cpu", text_cache_dir=tmp_path)
    bank = calibrated_bank(tmp_path / "bank.yaml", tiny_model, {f.id: f.score for f in first.findings},
                           {fid: "present" if truth[fid] else "absent" for fid in truth})
    out = tmp_path / "out"
    r = runner.invoke(app, ["classify", str(study), "-m", str(tiny_model), "-b", str(bank), "--device", "cpu", "--json",
                            "--report", str(out / "r.html"), "--sr", str(out / "sr.dcm"), "--fhir", str(out / "f.json")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # --json stays pure JSON; the "wrote ..." lines go to stderr
    assert {f["id"]: f["call"] == "present" for f in doc["findings"]} == truth
    assert "wrote sr" in r.stderr and sorted(p.name for p in out.iterdir()) == ["f.json", "r.html", "sr.dcm"]
    assert {b["id"]: b["call"] == "present" for b in read_sr_findings(out / "sr.dcm")} == truth
    fh = json.loads((out / "f.json").read_text())
    obs = [e["resource"] for e in fh["entry"] if e["resource"]["resourceType"] == "Observation"]
    said = {next(c["code"] for c in o["code"]["coding"] if c["system"].startswith("urn:cmrdx")):
            o["valueCodeableConcept"]["coding"][0]["code"] == SCT_CALL["present"] for o in obs}
    assert said == truth
    html = (out / "r.html").read_text()
    calls = dict(re.findall(r'<g class="finding" data-id="([^"]+)" data-call="([^"]+)">', html))
    assert {k: v == "present" for k, v in calls.items()} == truth
    assert not dciodvfy_errors(out / "sr.dcm")  # Enhanced MR sources: evidence only, no Image Library entries


def test_outputs_from_a_cine_factory_study(tiny_model, tmp_path):
    from cmrdx.outputs.sr import read_sr_findings

    b = build_cine_study(tmp_path / "cf", vendor="siemens", n_slices=5, n_phases=12, distractors=True)
    src = StudySource.read(b.root)
    res, _ = classify_with_calls(src, tiny_model, tmp_path, {"lv_dilation": "present", "rv_dilation": "absent"})
    w = write_outputs(res, src, report=tmp_path / "r.html", sr=tmp_path / "sr.dcm", fhir=tmp_path / "f.json")
    assert set(w) == {"report", "sr", "fhir"}
    back = {x["id"]: x["call"] for x in read_sr_findings(tmp_path / "sr.dcm")}
    assert back == {f.id: f.call for f in res.findings} and back["lv_dilation"] == "present"
    html = (tmp_path / "r.html").read_text()
    assert "model input (cine_sa)" in html and "under-sampled" in html  # 12 phases: the warning is shown
    assert len(_data_images(html)) == len(src.study.views)
    ds = pydicom.dcmread(tmp_path / "sr.dcm")
    lib = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028"]  # Image Library
    assert lib, "classic images get an Image Library entry"
    assert not dciodvfy_errors(tmp_path / "sr.dcm")


# --------------------------------------------------------------------------------------------------------------
# C-STORE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def storescp():
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    received = []

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    ae = AE(ae_title="STORESCP")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.require_called_aet = True
    port = _free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield SimpleNamespace(port=port, received=received)
    server.shutdown()


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from cmrdx.cli import main

    monkeypatch.setattr(sys, "argv", ["cmrdx", *args])
    try:
        main()  # returns on success, exits with the error's code otherwise
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out + out.err


def test_send_stores_the_sr_unchanged(example, storescp, monkeypatch, capsys):
    code, text = _main(monkeypatch, capsys, "send", str(example.sr), "--host", "127.0.0.1", "--port",
                       str(storescp.port), "--aet", "STORESCP")
    assert code == 0, text
    assert "stored sr.dcm" in text
    sent = pydicom.dcmread(example.sr)
    (got,) = storescp.received
    assert got == sent  # every element, the content tree included
    assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID


def test_send_errors_name_the_peer_and_the_fix(example, storescp, monkeypatch, capsys, tmp_path):
    code, text = _main(monkeypatch, capsys, "send", str(example.sr), "--host", "127.0.0.1", "--port",
                       str(storescp.port), "--aet", "NOTTHEPACS")
    assert code == 11 and f"127.0.0.1:{storescp.port}" in text and "--aet" in text and not storescp.received
    closed = _free_port()
    code, text = _main(monkeypatch, capsys, "send", str(example.sr), "--host", "127.0.0.1", "--port", str(closed),
                       "--aet", "STORESCP", "--timeout", "3")
    assert code == 10 and f"127.0.0.1:{closed}" in text and "--port" in text
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")
    code, text = _main(monkeypatch, capsys, "send", str(junk), "--host", "127.0.0.1", "--port", str(storescp.port),
                       "--aet", "STORESCP")
    assert code == 3 and str(junk) in text and "not a DICOM" in text and not storescp.received
