"""Phantom studies on disk: valid DICOM (dciodvfy), readable back, deterministic, classified right, CLI."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cmrdx.synth import expected_series, sample_params, write_study

DCIODVFY = shutil.which("dciodvfy")
TINY = dict(n_phases=6, matrix=96)  # headers and structure do not depend on size; keep the suite fast
FINDINGS = {"lge": "moderate", "lv_dilation": "mild"}

# (name, vendor, enhanced, compression): every kind of object the generator writes.
KINDS = [
    ("siemens", "siemens", False, None),
    ("ge", "ge", False, None),
    ("philips", "philips", False, None),
    ("siemens-rle", "siemens", False, "rle"),
    ("ge-jpegls", "ge", False, "jpegls"),
    ("philips-j2k", "philips", False, "j2k"),
    ("ge-enhanced", "ge", True, None),
    ("siemens-enhanced-rle", "siemens", True, "rle"),
    ("philips-enhanced-j2k", "philips", True, "j2k"),
]


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("phantoms")
    out = {}
    for name, vendor, enhanced, compress in KINDS:
        write_study(root / name, sample_params(42, FINDINGS, vendor=vendor, **TINY), enhanced=enhanced, compress=compress)
        out[name] = root / name
    return out


def _files(study: Path) -> list[Path]:
    return sorted((study / "DICOM").rglob("*.dcm"))


def _need_dciodvfy() -> str:
    if DCIODVFY is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy is missing but CI is set: install Debian's dicom3tools (apt-get install dicom3tools)")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools); DICOM validity not checked")
    return DCIODVFY


@pytest.mark.parametrize("kind", [k[0] for k in KINDS])
def test_dciodvfy_finds_no_errors(studies, kind):
    tool = _need_dciodvfy()
    checked = 0
    for series_dir in sorted((studies[kind] / "DICOM").iterdir()):
        files = sorted(series_dir.glob("*.dcm"))
        for f in {files[0], files[-1]}:  # first and last image of every series (all frames when multi-frame)
            res = subprocess.run([tool, str(f)], capture_output=True, text=True, timeout=60)
            errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
            assert not errors, f"{f}: {errors}"
            checked += 1
    assert checked >= 13


@pytest.mark.parametrize("kind", [k[0] for k in KINDS])
def test_pydicom_reads_every_file_and_decodes_pixels(studies, kind):
    compressed = "-" in kind and not kind.endswith("enhanced")
    for f in _files(studies[kind]):
        ds = pydicom.dcmread(f)
        assert ds.Modality == "MR" and str(ds.PatientName).startswith("PHANTOM^")
        if compressed or f.parent.name in ("S002", "S015"):
            px = ds.pixel_array
            assert px.dtype == np.uint16 and px.shape[-2:] == (ds.Rows, ds.Columns)


@pytest.mark.parametrize("lossless,plain", [("siemens-rle", "siemens"), ("ge-jpegls", "ge"), ("philips-j2k", "philips"),
                                            ("siemens-enhanced-rle", "siemens")])
def test_compression_is_lossless(studies, lossless, plain):
    """Same seed written plain and compressed: every frame decodes to the same pixels (frames of an Enhanced
    object are in the classic instance order: slice-major, phases inner)."""

    def frames(study: Path) -> dict[tuple[int, int], np.ndarray]:
        out = {}
        for f in _files(study):
            ds = pydicom.dcmread(f)
            px = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
            first = 0 if "PerFrameFunctionalGroupsSequence" in ds else int(ds.InstanceNumber) - 1
            for i, fr in enumerate(px):
                out[(int(ds.SeriesNumber), first + i)] = fr
        return out

    a, b = frames(studies[plain]), frames(studies[lossless])
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_same_seed_same_bytes(studies, tmp_path):
    write_study(tmp_path / "again", sample_params(42, FINDINGS, vendor="ge", **TINY))
    a, b = _files(studies["ge"]), _files(tmp_path / "again")
    assert [p.relative_to(studies["ge"]) for p in a] == [p.relative_to(tmp_path / "again") for p in b]
    for x, y in zip(a, b):
        assert x.read_bytes() == y.read_bytes(), x
    assert (studies["ge"] / "truth.json").read_text() == (tmp_path / "again" / "truth.json").read_text()
    assert (studies["ge"] / "report.txt").read_text() == (tmp_path / "again" / "report.txt").read_text()


def test_other_seed_other_uids(studies, tmp_path):
    write_study(tmp_path / "s43", sample_params(43, FINDINGS, vendor="ge", **TINY), distractors=False)
    a = pydicom.dcmread(_files(studies["ge"])[0])
    b = pydicom.dcmread(_files(tmp_path / "s43")[0])
    assert a.StudyInstanceUID != b.StudyInstanceUID and a.PatientID != b.PatientID


@pytest.mark.parametrize("vendor", ["siemens", "ge", "philips"])
def test_timing_and_identity_tags(studies, vendor):
    truth = json.loads((studies[vendor] / "truth.json").read_text())
    rr = truth["params"]["acq"]["rr_ms"]
    by_series: dict[str, list] = {}
    for f in _files(studies[vendor]):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        by_series.setdefault(ds.SeriesDescription, []).append(ds)
    expected = {d for d, _, _ in expected_series(vendor, n_sax=99, ti=truth["params"]["acq"]["inversion_time_ms"])}
    assert set(by_series) <= expected
    for desc, items in by_series.items():
        role = {d: r for d, r, _ in expected_series(vendor, 99, truth["params"]["acq"]["inversion_time_ms"])}[desc]
        ds0 = items[0]
        if role == "cine":
            times = sorted({float(d.TriggerTime) for d in items})
            assert len(times) == int(ds0.CardiacNumberOfImages) == 6
            assert max(times) < float(ds0.NominalInterval) == pytest.approx(rr, abs=1)
            assert "IR" not in ds0.ScanningSequence
        if role == "lge":
            assert "IR" in ds0.ScanningSequence and "MP" in ds0.SequenceVariant
            assert 200 <= float(ds0.InversionTime) <= 350 and int(ds0.CardiacNumberOfImages) == 1
            assert float(ds0.TriggerTime) < rr
        if role != "other":
            assert int(ds0.HeartRate) == pytest.approx(60000 / rr, abs=1)
    sax = [d for d in by_series if re.search(r"SAX|_SA$|M2D_SA", d) and "DE" not in d]
    assert sax


def test_truth_json_has_findings_and_measurements(studies):
    t = json.loads((studies["siemens"] / "truth.json").read_text())
    assert t["findings"]["lge"] == "moderate" and t["findings"]["lv_dilation"] == "mild"
    for k in ("lv_edv_ml", "lv_esv_ml", "lv_ef_pct", "rv_edv_ml", "rv_esv_ml", "rv_ef_pct", "lv_mass_g",
              "lv_max_wall_mm", "aortic_root_mm"):
        assert k in t["measurements"]
    assert t["study_instance_uid"] == pydicom.dcmread(_files(studies["siemens"])[0]).StudyInstanceUID
    report = (studies["siemens"] / "report.txt").read_text()
    assert len(report) > 40


@pytest.mark.parametrize("kind", ["siemens", "ge", "philips", "ge-enhanced", "siemens-enhanced-rle",
                                  "philips-enhanced-j2k"])
def test_inspect_assigns_every_series_its_role_and_view(studies, kind):
    from cmrdx.study.assemble import inspect_study

    truth = json.loads((studies[kind] / "truth.json").read_text())
    vendor = truth["params"]["acq"]["vendor"]
    expected = {d: (r, v) for d, r, v in expected_series(vendor, 99, truth["params"]["acq"]["inversion_time_ms"])}
    ins = inspect_study(studies[kind])
    assert len(ins.series) >= 13
    for s in ins.series:
        role = s.role if s.role in ("cine", "lge") else "other"
        view = s.view if role != "other" else None
        assert (role, view) == expected[s.description], (s.description, s.role, s.view)


def test_cli_study_and_archive(tmp_path):
    from typer.testing import CliRunner

    from cmrdx.cli import app

    run = CliRunner().invoke
    r = run(app, ["synth", "study", str(tmp_path / "one"), "--seed", "5", "--finding", "lv_dilation=moderate",
                  "--finding", "pericardial_effusion=mild", "--vendor", "philips", "--phases", "6", "--matrix", "96",
                  "--compress", "jpegls", "--no-distractors"])
    assert r.exit_code == 0, r.output
    t = json.loads((tmp_path / "one" / "truth.json").read_text())
    assert t["findings"]["lv_dilation"] == "moderate" and t["params"]["acq"]["vendor"] == "philips"
    r = run(app, ["synth", "study", str(tmp_path / "bad"), "--seed", "5", "--finding", "lv_bigness=mild"])
    assert r.exit_code != 0 and "unknown finding" in r.output
    r = run(app, ["synth", "archive", str(tmp_path / "arch"), "--n", "2", "--seed", "3", "--phases", "6",
                  "--matrix", "96", "--prevalence", "0.5", "--vendors", "ge,siemens"])
    assert r.exit_code == 0, r.output
    with open(tmp_path / "arch" / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and {"study", "study_instance_uid", "lge", "lge_severity"} <= set(rows[0])
    for row in rows:
        t = json.loads((tmp_path / "arch" / row["study"] / "truth.json").read_text())
        assert t["study_instance_uid"] == row["study_instance_uid"]
        assert all(int(row[f]) == (t["findings"][f] != "none") for f in t["findings"])


@pytest.mark.parametrize("kind", ["siemens", "ge-enhanced"])
def test_reader_assembles_the_same_arrays_as_render_study(studies, kind):
    """The straight-to-arrays API and the DICOM files of the same seed give the same Study."""
    from cmrdx.study.assemble import assemble_study
    from cmrdx.synth import render_study

    truth = json.loads((studies[kind] / "truth.json").read_text())
    vendor = truth["params"]["acq"]["vendor"]
    arrays = render_study(sample_params(42, FINDINGS, vendor=vendor, **TINY))
    files = assemble_study(studies[kind])
    assert files.study_uid == arrays.study_uid == truth["study_instance_uid"]
    for key in ("cine:SAX", "cine:4CH", "lge:SAX", "lge:3CH"):
        a, b = arrays.views[key], files.views[key]
        assert (a.n_slices, a.n_phases, a.shape) == (b.n_slices, b.n_phases, b.shape), key
        assert np.allclose(a.slice_positions, b.slice_positions, atol=0.01), key
        assert np.array_equal(a.pixels(), b.pixels()), key
