"""pydicom's complaints while reading (its logger and the warnings module) are counted by kind per study, shown once
as a summary, listed in --json and with -v, and never printed per file; on real files, on studies with planted
defects, and with concurrent readers."""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import subprocess
import sys
import warnings
from collections.abc import Callable

import pydicom
import pydicom.config
import pytest
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

from cmrdx.dicom import FileRef, scan
from cmrdx.dicom.series import ReadWarnings, capture_read_warnings, warning_kind
from cmrdx.study.assemble import assemble_study, inspect_study
from helpers.cine_factory import build_cine_study

LGE_LAX = ("2CH_DELAY_TI=260_BH", "3CH_DELAY_TI=260_BH", "4CH_DELAY_TI=260_BH")  # GE style: one file per series
# An IS (integer string) written with a decimal, as some vendors write the nominal RR interval. (pydicom 3 reads an
# invalid DS silently, as text: no warning to count; so the planted numeric defect is an IS.)
BAD_IS = "857.5"


def _defects() -> tuple[Callable[[Dataset], None], dict[str, str]]:
    """An edit for the cine factory: every SeriesInstanceUID replaced by one with a leading zero in a component (a
    defect of real scanner exports), and a decimal NominalInterval (an IS) in the one-file LGE long-axis series."""
    bad_uids: dict[str, str] = {}

    def edit(ds: Dataset) -> None:
        old = str(ds.SeriesInstanceUID)
        ds.SeriesInstanceUID = bad_uids.setdefault(old, f"1.2.840.99.0{len(bad_uids) + 1}")
        if ds.SeriesDescription in LGE_LAX:
            ds.NominalInterval = BAD_IS

    return edit, bad_uids


@pytest.fixture(scope="module")
def defective(tmp_path_factory):
    edit, bad_uids = _defects()
    b = build_cine_study(tmp_path_factory.mktemp("rw") / "study", vendor="ge", n_slices=3, n_phases=4, edit=edit)
    return b, bad_uids


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cmrdx", *args], capture_output=True, text=True, timeout=120,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})


# --- kinds: real pydicom messages, normalised without their values ------------------------------------------


@pytest.mark.parametrize(("vr", "value", "kind"), [
    ("UI", "1.2.840.0123.4", "invalid UI value"),
    ("UI", "1." + "2" * 70, "UI value too long"),
    ("DS", "1.5e", "invalid DS value"),
    ("LO", "PATIENT-SECRET" * 6, "LO value too long"),
    ("IS", "12a", "invalid IS value"),
    ("CS", "lower case", "invalid CS value"),
    ("DA", "2024-01-01", "invalid DA value"),
])
def test_pydicom_validation_messages_become_kinds_without_values(vr, value, kind):
    with capture_read_warnings() as kinds:
        validate_value(vr, value, pydicom.config.WARN)  # pydicom's own validator and message
    assert kinds == [kind]
    assert value not in kinds[0] and "SECRET" not in kinds[0]


def test_unknown_messages_keep_plain_words_only():
    assert warning_kind("Something odd in 'DOE^JOHN' at 0x1F (tag 0010,0010): 12 bytes") == "other: something odd in at"
    assert warning_kind("'x' 12 (y)") == "other reading warning"


# --- capture: nothing printed, counted once per file and kind ------------------------------------------------


def test_capture_silences_both_routes_and_leaves_others_alone(caplog):
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with caplog.at_level(logging.WARNING), capture_read_warnings() as kinds:
            validate_value("UI", "1.02", pydicom.config.WARN)
        assert kinds == ["invalid UI value"]
        assert not shown and not [r for r in caplog.records if r.name.startswith("pydicom")]
        # outside a capture pydicom speaks as usual: cmrdx does not silence it for the whole process
        validate_value("UI", "1.03", pydicom.config.WARN)
    assert any("1.03" in str(w.message) for w in shown)
    assert any("1.03" in r.getMessage() for r in caplog.records)


def test_read_warnings_count_files_not_messages():
    rw = ReadWarnings()
    a, b = FileRef("/x/IM1.dcm"), FileRef("/x/IM2.dcm")
    rw.add(["invalid UI value", "invalid UI value", "DS value too long"], a)
    rw.add(["invalid UI value"], b)
    rw.add(["invalid UI value"], a)  # the same file read again (pixels after headers)
    assert rw.counts == {"invalid UI value": 2, "DS value too long": 1}
    assert rw.n_files == 2
    assert rw.summary() == "2 files: invalid UI value (2), DS value too long (1); read anyway"
    other = ReadWarnings()
    other.add(["invalid UI value"], FileRef("/y/IM3.dcm"))
    rw.merge(other)
    assert rw.to_dict()["kinds"]["invalid UI value"] == {"files": 3, "examples": ["IM1.dcm", "IM2.dcm", "IM3.dcm"]}


def test_real_files_with_defects_are_counted_not_printed(real_dirs, caplog):
    """pydicom-data's bad_sequence.dcm has UIDs that are hashes (invalid UI); pydicom's SC_rgb_jpeg.dcm declares
    explicit VR but is encoded implicit."""
    with warnings.catch_warnings(record=True) as shown, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        res_data = scan(real_dirs["pydicom-data"])
        res_pd = scan(real_dirs["pydicom"])
    assert not shown and not [r for r in caplog.records if r.name.startswith("pydicom")]
    examples: dict[str, set[str]] = {}
    for rw in (rw for r in (res_data, res_pd) for rw in r.read_warnings.values()):
        for kind, names in rw.examples.items():
            examples.setdefault(kind, set()).update(names)
    assert "bad_sequence.dcm" in examples["invalid UI value"]
    assert "SC_rgb_jpeg.dcm" in examples["VR mismatch (explicit/implicit)"]
    dumped = json.dumps([rw.to_dict() for r in (res_data, res_pd) for rw in r.read_warnings.values()])
    assert "dbf60361338b" not in dumped  # the invalid UID's value is not kept


def test_study_scan_counts_each_file_once_per_kind(defective):
    b, bad_uids = defective
    insp = inspect_study(b.root)
    counts = insp.read_warnings.counts
    # every file's SeriesInstanceUID is read; the decimal IS only in the 3 one-file LGE long-axis series
    assert counts == {"invalid UI value": len(b.files), "invalid IS value": 3}
    assert set(insp.read_warnings.examples["invalid IS value"]) <= {p.name for p in b.files}
    assert insp.to_dict()["read_warnings"]["files"] == len(b.files)
    assert not any(uid in json.dumps(insp.to_dict()["read_warnings"]) for uid in bad_uids.values())


def test_pixel_decoding_warnings_reach_the_manifest(tmp_path):
    """NumberOfFrames 0 in single-frame files (an exporter's defect): the header scan reads it as text and takes one
    frame; pydicom's decoder complains, per decoded file."""
    def zero_frames(ds: Dataset) -> None:
        if ds.SeriesDescription == "SAX_FIESTA_BH":
            ds.NumberOfFrames = "0"

    b = build_cine_study(tmp_path / "s", vendor="ge", n_slices=3, n_phases=6, lge=False, lax_views=(), edit=zero_frames)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        study = assemble_study(b.root)
        assert not study.manifest.read_warnings  # the header scan stops before the pixels
        study.get("cine", "SAX").pixels(slices=[0, 2])
    assert not shown
    assert study.manifest.read_warnings.counts == {"invalid Number of Frames": 2 * 6}  # 2 slices x 6 phases decoded
    assert not inspect_study(b.root).read_warnings  # the scan's own record is not changed by decoding


# --- concurrent readers: each collects its own ---------------------------------------------------------------


def test_threads_and_processes_each_collect_their_own(defective, tmp_path):
    b, _ = defective
    clean = build_cine_study(tmp_path / "clean", vendor="ge", n_slices=3, n_phases=4, lge=False)
    roots = [b.root, clean.root] * 3
    expected = {"invalid UI value": len(b.files), "invalid IS value": 3}
    with cf.ThreadPoolExecutor(max_workers=4) as ex:
        results = list(ex.map(scan, roots))
    with cf.ProcessPoolExecutor(max_workers=2) as ex:
        results += list(ex.map(scan, roots[:2]))
    for root, res in zip(roots + roots[:2], results):
        counts = {k: v for rw in res.read_warnings.values() for k, v in rw.counts.items()}
        assert counts == (expected if root == b.root else {}), root


# --- the CLI: one summary line, the list in --json and with -v ----------------------------------------------


def test_inspect_prints_one_summary_and_no_per_file_lines(defective):
    b, bad_uids = defective
    n = len(b.files)
    r = run_cli("inspect", str(b.root))
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    for noise in ("Invalid value", "UserWarning", "WARNING", "pydicom", "VR of IS", BAD_IS, *bad_uids.values()):
        assert noise not in out, noise
    lines = [ln for ln in out.splitlines() if ln.startswith("reading:")]
    assert lines == [f"reading: {n} files: invalid UI value ({n}), invalid IS value (3); read anyway (-v lists them)"]

    r = run_cli("inspect", str(b.root), "--json")
    assert r.returncode == 0, r.stderr
    rw = json.loads(r.stdout)["read_warnings"]
    assert rw["files"] == n
    assert {k: v["files"] for k, v in rw["kinds"].items()} == {"invalid UI value": n, "invalid IS value": 3}
    assert all(0 < len(v["examples"]) <= 3 for v in rw["kinds"].values())
    assert not r.stderr.strip()

    r = run_cli("inspect", "-v", str(b.root))
    assert r.returncode == 0, r.stderr
    listed = [ln.strip() for ln in r.stdout.splitlines() if ln.startswith("  ") and "e.g." in ln]
    assert [ln.split(" (e.g.")[0] for ln in listed] == [f"invalid UI value: {n} files", "invalid IS value: 3 files"]
    assert "pydicom" not in r.stderr and "Invalid value" not in r.stdout + r.stderr


def test_planted_defects_really_are_invalid(defective):
    """The fixture's files do hold what the tests count: pydicom, validating, rejects those values."""
    b, _ = defective
    lge = next(p for p in b.files if pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription in LGE_LAX)
    ds = pydicom.dcmread(lge, stop_before_pixels=True)
    for vr, kw in (("UI", "SeriesInstanceUID"), ("IS", "NominalInterval")):
        raw = ds.get_item(kw).value
        with pytest.raises((ValueError, OverflowError)):
            validate_value(vr, raw.decode() if isinstance(raw, bytes) else str(raw), pydicom.config.RAISE)
