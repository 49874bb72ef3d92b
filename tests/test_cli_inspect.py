"""`cmrdx inspect`: output, JSON, PHI hiding, and a clear message + documented exit code for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmrdx.errors import EXIT_CODES
from helpers.cine_factory import build_cine_study


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run the real entry point (exit codes and stderr exactly as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-m", "cmrdx", *args], capture_output=True, text=True, timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "study"
    build_cine_study(root, vendor="ge", n_slices=4, n_phases=6, distractors=True)
    return root


def test_table_lists_series_roles_views_and_missing(study):
    r = run_cli("inspect", str(study))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in ("SAX_FIESTA_BH", "4CH_FIESTA_BH", "cine", "lge", "localizer", "t1_map", "views found"):
        assert needle in out, needle
    assert "PHANTOM" not in out and "FIXTURE-0001" not in out  # no patient name / ID by default


def test_show_phi_reveals_patient(study):
    r = run_cli("inspect", str(study), "--show-phi")
    assert r.returncode == 0
    assert "PHANTOM^FIXTURE" in r.stdout


def test_json_is_machine_readable(study):
    r = run_cli("inspect", str(study), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d["views_found"]) >= {"cine:SAX", "cine:2CH", "lge:SAX"}
    assert all("phi" not in s for s in d["series"])
    sax = next(s for s in d["series"] if s["description"] == "SAX_FIESTA_BH")
    assert (sax["role"], sax["view"], sax["positions"], sax["phases"]) == ("cine", "SAX", 4, 6)
    assert "PHANTOM" not in r.stdout


def test_missing_path(tmp_path):
    r = run_cli("inspect", str(tmp_path / "nope"))
    assert r.returncode == EXIT_CODES["InputNotFoundError"]
    assert "no such file or folder" in r.stderr and "nope" in r.stderr


def test_empty_folder(tmp_path):
    r = run_cli("inspect", str(tmp_path))
    assert r.returncode == EXIT_CODES["NoDicomError"]
    assert "empty" in r.stderr


def test_no_dicom_at_all(tmp_path):
    (tmp_path / "notes.bin").write_bytes(b"hello" * 100)
    (tmp_path / "scan.img").write_bytes(bytes(range(256)) * 10)
    r = run_cli("inspect", str(tmp_path))
    assert r.returncode == EXIT_CODES["NoDicomError"]
    assert "no DICOM files among 2 files" in r.stderr and "fix:" in r.stderr


def test_dicom_but_not_mr(tmp_path, real_dirs):
    shutil.copy(real_dirs["pydicom"] / "CT_small.dcm", tmp_path / "ct.dcm")
    r = run_cli("inspect", str(tmp_path))
    assert r.returncode == EXIT_CODES["NoMRError"]
    assert "no MR series" in r.stderr and "CT" in r.stderr


def test_mr_without_cine_is_listed_not_fatal_for_inspect(tmp_path, real_dirs):
    shutil.copy(real_dirs["pydicom"] / "MR_small.dcm", tmp_path / "mr.dcm")
    r = run_cli("inspect", str(tmp_path))
    assert r.returncode == 0
    assert "views missing" in r.stdout and "cine:SAX" in r.stdout


def test_garbage_and_truncated_files_are_skipped_and_counted(tmp_path, study):
    shutil.copytree(study, tmp_path / "s")
    (tmp_path / "s" / "junk.dcm").write_bytes(b"not dicom at all" * 20)
    victim = next((tmp_path / "s" / "SAX_FIESTA_BH").iterdir())
    (tmp_path / "s" / "cut.dcm").write_bytes(victim.read_bytes()[:200])
    r = run_cli("inspect", str(tmp_path / "s"), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert sum(d["files_skipped"].values()) == 2


def test_several_studies_need_a_choice(tmp_path):
    a = build_cine_study(tmp_path / "mix" / "a", vendor="ge", n_slices=3, n_phases=5, lge=False)
    build_cine_study(tmp_path / "mix" / "b", vendor="philips", n_slices=3, n_phases=5, lge=False)
    r = run_cli("inspect", str(tmp_path / "mix"))
    assert r.returncode == EXIT_CODES["MultipleStudiesError"]
    assert "2 MR studies" in r.stderr and "--study" in r.stderr
    r = run_cli("inspect", str(tmp_path / "mix"), "--study", a.study_uid, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["study_uid"] == a.study_uid and len(d["other_studies"]) == 1


def test_input_checks_are_printed_naming_the_series_and_in_json(study):
    r = run_cli("inspect", str(study))
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("warning:")]
    # 4 slices 10 mm apart and 6 phases: the short-axis stacks are too short, every cine has too few phases
    assert any(ln.startswith("warning: cine:SAX (series #1 'SAX_FIESTA_BH'): covers 38 mm") for ln in lines), lines
    assert any(ln.startswith("warning: cine:4CH (series #4 '4CH_FIESTA_BH'): only 6 phases") for ln in lines), lines
    assert not any("views not found" in ln for ln in lines)  # said once, by the views-missing line
    assert "reading:" not in r.stdout  # no reading warnings in these files: no summary line
    d = json.loads(run_cli("inspect", str(study), "--json").stdout)
    rules = {(c["rule"], c["view"]) for c in d["input_checks"]}
    assert {("sax-coverage", "cine:SAX"), ("sax-coverage", "lge:SAX"), ("few-phases", "cine:SAX")} <= rules
    assert all(c["message"] in d["warnings"] for c in d["input_checks"])
    sax = next(s["series_uid"] for s in d["series"] if s["description"] == "SAX_FIESTA_BH")
    assert next(c for c in d["input_checks"] if c["view"] == "cine:SAX")["series_uids"] == [sax]
    assert d["read_warnings"] == {"files": 0, "kinds": {}}


def test_text_from_the_files_is_printed_as_text_not_markup(tmp_path):
    def odd_name(ds) -> None:
        if ds.SeriesDescription == "SAX_FIESTA_BH":
            ds.SeriesDescription = "SAX_FIESTA_BH [/] [red]x"

    build_cine_study(tmp_path / "s", vendor="ge", n_slices=4, n_phases=6, lge=False, lax_views=(), edit=odd_name)
    r = run_cli("inspect", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    assert "SAX_FIESTA_BH [/] [red]x" in r.stdout.replace("\n", "")
