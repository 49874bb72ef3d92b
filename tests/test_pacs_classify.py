"""A study read from a PACS is the study read from its folder: the same series, roles and views from headers the
PACS answered with (WADO-RS metadata, C-FIND at image level), the same embedding and findings, with only the
instances the recipe reads retrieved (counted on Orthanc's side) and none a second time; the SR stored back is
in Orthanc and passes dciodvfy. Also headers that went through DICOM JSON (no PACS needed) decide the same."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from cmrdx.cli import app
from cmrdx.dicom.scan import scan, scan_datasets
from cmrdx.dicom.series import read_series_header
from cmrdx.dicom.source import FileRef, iter_refs
from cmrdx.errors import EXIT_CODES
from cmrdx.pacs.cache import InstanceCache
from cmrdx.study.assemble import assemble_study, inspect_study
from helpers.data import dciodvfy_errors
from helpers.protocols import build_protocols

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "phantom-study"
EXAMPLE_UID = "1.2.826.0.1.3680043.8.498.82186712074145673253092799472301541514"


def _decisions(insp) -> list[tuple]:
    return [(s.uid, s.role, s.view, s.reason, len(s.frames)) for s in insp.series]


def _json_headers(folder: Path) -> list[tuple[pydicom.Dataset, FileRef]]:
    """Every file's header as a DICOMweb server would send it: through DICOM JSON and back, no pixel data."""
    out = []
    for ref in iter_refs(folder):
        ds, _ = read_series_header(ref)
        if ds is not None:
            out.append((pydicom.Dataset.from_json(ds.to_json_dict()), ref))
    return out


@pytest.fixture(scope="module")
def protocols(tmp_path_factory):
    return build_protocols(tmp_path_factory.mktemp("protocols"))


def test_headers_through_dicom_json_decide_every_series_type_as_the_files_do(protocols):
    """101 series of five vendors (classic and Enhanced MR): roles, views, reasons and frames are the same whether
    the headers come from the files or from DICOM JSON (what WADO-RS metadata is)."""
    for vendor, folder in protocols.studies.items():
        from_files = inspect_study(scan(folder))
        res = scan_datasets(_json_headers(folder), root=f"pacs://test/{vendor}")
        from_json = inspect_study(res)
        assert _decisions(from_json) == _decisions(from_files), vendor
        a = assemble_study(from_files, require_cine=False)
        b = assemble_study(from_json, require_cine=False)
        assert sorted(a.views) == sorted(b.views), vendor
        assert [c.to_dict() for c in a.manifest.input_checks] == [c.to_dict() for c in b.manifest.input_checks], vendor


def test_instance_cache_keeps_current_study_and_evicts_least_recent(tmp_path):
    import os

    cache = InstanceCache(tmp_path / "c", max_bytes=3000)
    uids = [f"1.2.3.{k}" for k in range(5)]
    for k, u in enumerate(uids):
        p = cache.path(u)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * 1000)
        os.utime(p, (1000 + k, 1000 + k))  # file k used at time 1000 + k (no clock: times are set)
    assert cache.path("../../etc/passwd").parent.parent == cache.root  # a hostile UID never escapes the cache
    removed, freed = cache.evict(keep=[uids[0]])
    assert (removed, freed) == (2, 2000)
    assert [cache.has(u) for u in uids] == [True, False, False, True, True]  # the oldest not kept went first


# ---------------------------------------------------------------------------------------------------------------
# Against a real PACS


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CMRDX_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def folder_result(tmp_path_factory):
    from cmrdx.pipeline.classify import classify

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CMRDX_HOME", str(tmp_path_factory.mktemp("home-folder")))
        return classify(EXAMPLE, device="cpu")


@pytest.mark.parametrize("node", ["web", "dimse"])
def test_classify_from_pacs_equals_folder_and_moves_only_what_the_recipe_reads(orthanc, pacs_config, home, node,
                                                                               folder_result):
    from cmrdx.pipeline.classify import classify

    mark = orthanc.log_mark()
    res = classify(f"pacs://{node}/{EXAMPLE_UID}", device="cpu", pacs_config=pacs_config)
    served = orthanc.instance_reads(mark)
    assert res.study_uid == folder_result.study_uid
    assert float(res.embedding @ folder_result.embedding) > 0.99999
    np.testing.assert_allclose(res.embedding, folder_result.embedding, atol=2e-6)
    assert [(f.id, f.call) for f in res.findings] == [(f.id, f.call) for f in folder_result.findings]
    assert [f.score for f in res.findings] == pytest.approx([f.score for f in folder_result.findings], abs=1e-5)
    assert res.views_used == folder_result.views_used and res.series_used == folder_result.series_used
    p = res.pacs
    assert p["instances_in_study"] == 317
    assert 0 < p["instances_needed"] < 317 // 3  # most of the study never crosses the network
    assert p["instances_retrieved"] == p["instances_needed"] == served  # counted on Orthanc's side
    # a second run retrieves nothing: every instance it needs is in the cache
    mark = orthanc.log_mark()
    again = classify(f"pacs://{node}/{EXAMPLE_UID}", device="cpu", pacs_config=pacs_config)
    assert orthanc.instance_reads(mark) == 0
    assert again.pacs["instances_from_cache"] == again.pacs["instances_needed"] and again.pacs["instances_retrieved"] == 0
    np.testing.assert_array_equal(again.embedding, res.embedding)


def test_inspect_over_pacs_lists_the_folders_series_without_retrieving_images(orthanc, pacs_config, home):
    mark = orthanc.log_mark()
    r = CliRunner().invoke(app, ["inspect", f"pacs://dimse/{EXAMPLE_UID}", "--json", "--pacs-config", str(pacs_config)])
    assert r.exit_code == 0, r.output
    assert orthanc.instance_reads(mark) == 0
    got = json.loads(r.output)
    want = json.loads(CliRunner().invoke(app, ["inspect", str(EXAMPLE), "--json"]).output)
    assert got["source"] == f"pacs://dimse/{EXAMPLE_UID}"
    strip = ("transfer_syntax",)  # known from a file's meta, not from a query
    assert [{k: v for k, v in s.items() if k not in strip} for s in got["series"]] == \
           [{k: v for k, v in s.items() if k not in strip} for s in want["series"]]
    assert got["views_found"] == want["views_found"] and got["input_checks"] == want["input_checks"]
    assert "PHANTOM" not in r.output  # no patient name without --show-phi


def test_store_back_puts_a_valid_sr_in_the_pacs_and_keeps_it_when_the_node_is_down(orthanc, pacs_config, home, tmp_path):
    uid = EXAMPLE_UID
    before = set(orthanc.find("Series", {"StudyInstanceUID": uid, "Modality": "SR"}))
    try:
        _store_back_then_down(orthanc, pacs_config, tmp_path, uid, before)
    finally:  # the session's PACS holds the example study as it was loaded, for the other tests
        for sid in set(orthanc.find("Series", {"StudyInstanceUID": uid, "Modality": "SR"})) - before:
            orthanc.request("DELETE", f"/series/{sid}")


def _store_back_then_down(orthanc, pacs_config, tmp_path, uid, before):
    import yaml

    r = CliRunner().invoke(app, ["classify", f"pacs://web/{uid}", "--device", "cpu", "--store-back", "dimse",
                                 "--pacs-config", str(pacs_config), "--json"])
    assert r.exit_code == 0, r.output
    new = set(orthanc.find("Series", {"StudyInstanceUID": uid, "Modality": "SR"})) - before
    assert len(new) == 1
    inst = orthanc.get(f"/series/{new.pop()}/instances")[0]["ID"]
    sr = tmp_path / "sr.dcm"
    sr.write_bytes(orthanc.instance_file(inst))
    assert dciodvfy_errors(sr) == []
    ds = pydicom.dcmread(sr)
    assert ds.StudyInstanceUID == uid and ds.Modality == "SR"
    # the node down: the SR waits in the outbox (exit 12 after the findings), and the next store-back sends it
    cfg = yaml.safe_load(pacs_config.read_text())
    from helpers.orthanc import free_port

    cfg["nodes"].append({"name": "down", "aet": orthanc.aet, "host": "127.0.0.1", "port": free_port(), "timeout": 5})
    pacs_config.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["classify", str(EXAMPLE), "--device", "cpu", "--store-back", "down",
                                 "--pacs-config", str(pacs_config), "--json"])
    assert getattr(r.exception, "exit_code", None) == EXIT_CODES["StoreFailedError"], r.output
    assert json.loads(r.stdout)["study_uid"] == uid  # the findings were shown first
    assert "outbox" in r.exception.message and "pacs flush down" in r.exception.hint
    n_sr = len(orthanc.find("Series", {"StudyInstanceUID": uid, "Modality": "SR"}))
    cfg["nodes"][-1]["port"] = orthanc.port
    pacs_config.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["pacs", "flush", "down", "--pacs-config", str(pacs_config)])
    assert r.exit_code == 0, r.output
    assert len(orthanc.find("Series", {"StudyInstanceUID": uid, "Modality": "SR"})) == n_sr + 1


def test_pacs_errors_name_the_node_and_the_fix(orthanc, pacs_config, home):
    """Through the real command (a subprocess): the message, the fix and the exit code, never a traceback."""
    import os
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cmrdx", *args, "--pacs-config", str(pacs_config)],
                              capture_output=True, text=True, timeout=300, env={**os.environ, "CMRDX_HOME": str(home)})

    r = run("classify", "pacs://nosuch/1.2.3")
    assert r.returncode == EXIT_CODES["UsageError"] and "nosuch" in r.stderr and "web, dimse" in r.stderr, r.stderr
    for node in ("web", "dimse"):  # a study the PACS does not hold
        r = run("inspect", f"pacs://{node}/1.2.3.4.5")
        assert r.returncode == EXIT_CODES["PacsError"], (node, r.stderr)
        assert "1.2.3.4.5" in r.stderr and node in r.stderr and "Traceback" not in r.stderr
    r = run("classify", "pacs://web/not-a-uid")
    assert r.returncode == EXIT_CODES["UsageError"] and "UID" in r.stderr and "Traceback" not in r.stderr
