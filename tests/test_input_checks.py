"""Input checks of the assembled study, on cine studies with planted defects (tests/helpers/cine_factory.py): each
failed check names its view and series, is in the manifest's warnings, and is absent on clean studies."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmrdx.study.assemble import CINE_MIN_PHASES, SAX_MAX_STEP_MM, SAX_MIN_COVERAGE_MM, assemble_study
from helpers.cine_factory import build_cine_study

ROOT = Path(__file__).resolve().parent.parent
CLEAN = {"n_slices": 8, "n_phases": 16}  # 78 mm of coverage at 10 mm steps; 16 phases


def _checks(study) -> dict[str, list]:
    out: dict[str, list] = {}
    for c in study.manifest.input_checks:
        out.setdefault(c.rule, []).append(c)
        assert c.message in study.manifest.warnings
    return out


@pytest.mark.parametrize("vendor", ["ge", "siemens"])  # one SAX series, and one series per slice
def test_clean_studies_pass_every_check(tmp_path, vendor):
    b = build_cine_study(tmp_path / vendor, vendor=vendor, lge=True, **CLEAN)
    study = assemble_study(b.root)
    assert study.get("lge", "SAX") is not None and study.get("cine", "4CH") is not None
    assert study.manifest.input_checks == []


def test_the_example_phantom_study_passes_every_check():
    study = assemble_study(ROOT / "examples" / "phantom-study")
    assert study.manifest.input_checks == []


def test_missing_slice_is_a_gap_named_by_its_neighbours(tmp_path):
    # one series per slice: the gap names the two series around it, not the whole stack
    b = build_cine_study(tmp_path / "s", vendor="siemens", lge=False, lax_views=(), skip_slices=(4,), **CLEAN)
    study = assemble_study(b.root)
    (gap,) = _checks(study)["slice-gap"]
    assert gap.view == "cine:SAX" and "gap of 20.0 mm between slices 3 and 4" in gap.message
    names = {s.uid: s.description for s in _series(b.root)}
    assert sorted(names[u] for u in gap.series_uids) == ["CINE_segmented_SAX_b4", "CINE_segmented_SAX_b6"]
    assert "#4 'CINE_segmented_SAX_b4', #6 'CINE_segmented_SAX_b6'" in gap.message  # #5 was never acquired


def test_uneven_spacing(tmp_path):
    b = build_cine_study(tmp_path / "s", vendor="ge", lge=False, lax_views=(), slice_offsets={5: 4.0}, **CLEAN)
    checks = _checks(assemble_study(b.root))
    assert set(checks) == {"uneven-spacing"}
    (c,) = checks["uneven-spacing"]
    assert "2 step(s) of 6.0-14.0 mm around a median of 10.0 mm" in c.message and "'SAX_FIESTA_BH'" in c.message


def test_a_short_stack_does_not_cover_the_ventricle(tmp_path):
    b = build_cine_study(tmp_path / "s", vendor="ge", n_slices=4, n_phases=16, lge=True, lax_views=())
    checks = _checks(assemble_study(b.root))
    assert {c.view for c in checks["sax-coverage"]} == {"cine:SAX", "lge:SAX"}
    cine = next(c for c in checks["sax-coverage"] if c.view == "cine:SAX")
    # 3 steps of 10 mm plus one 8 mm slice
    assert "covers 38 mm (4 slices, 10.0 mm apart)" in cine.message and f"{SAX_MIN_COVERAGE_MM:.0f} mm" in cine.message
    assert "'SAX_FIESTA_BH'" in cine.message


def test_sparse_slices(tmp_path):
    b = build_cine_study(tmp_path / "s", vendor="ge", n_slices=6, n_phases=16, lge=False, lax_views=(), slice_step=18.0)
    checks = _checks(assemble_study(b.root))
    assert set(checks) == {"sax-sparse"}  # 5 x 18 + 8 = 98 mm: the coverage is fine, the sampling is not
    assert f"18.0 mm apart (more than {SAX_MAX_STEP_MM:.0f} mm)" in checks["sax-sparse"][0].message


def test_a_slice_turned_in_plane_is_a_mixed_orientation(tmp_path):
    b = build_cine_study(tmp_path / "s", vendor="ge", lge=False, lax_views=(), rotate_slice=(3, 90.0), **CLEAN)
    checks = _checks(assemble_study(b.root))
    assert set(checks) == {"mixed-orientation"}
    (c,) = checks["mixed-orientation"]
    assert "16 of 128 images in another orientation (up to 90 degrees" in c.message and "'SAX_FIESTA_BH'" in c.message


def test_duplicated_images_at_one_position_and_time(tmp_path):
    b = build_cine_study(tmp_path / "s", vendor="ge", lge=False, lax_views=(), duplicate_slice=2, **CLEAN)
    study = assemble_study(b.root)
    checks = _checks(study)
    assert set(checks) == {"duplicate-images"}
    (c,) = checks["duplicate-images"]
    assert "in 16 place(s) (e.g. slice 2, 0 ms: 2 images, instances 1, 17)" in c.message
    assert study.get("cine", "SAX").n_slices == 8  # the copy did not become a slice of its own


def test_copies_of_one_image_are_not_duplicates(tmp_path):
    """The same file twice (an export with two copies of an instance): same headers, not a conflict."""
    import shutil

    b = build_cine_study(tmp_path / "s", vendor="ge", lge=False, lax_views=(), **CLEAN)
    src = b.root / "SAX_FIESTA_BH"
    shutil.copytree(src, b.root / "copy_of_SAX")
    assert _checks(assemble_study(b.root)) == {}


def test_too_few_phases_names_every_cine_view(tmp_path):
    b = build_cine_study(tmp_path / "s", vendor="ge", n_slices=8, n_phases=8, lge=False, lax_views=("2CH", "4CH"))
    checks = _checks(assemble_study(b.root))
    assert set(checks) == {"few-phases"}
    assert {c.view for c in checks["few-phases"]} == {"cine:SAX", "cine:2CH", "cine:4CH"}
    four = next(c for c in checks["few-phases"] if c.view == "cine:4CH")
    assert f"only 8 phases of 112 ms (fewer than {CINE_MIN_PHASES})" in four.message and "'4CH_FIESTA_BH'" in four.message


def _series(root: Path):
    from cmrdx.study.assemble import inspect_study

    return inspect_study(root).series
