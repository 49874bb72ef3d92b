"""Study assembly on cine studies built from a real file's pixels and headers (tests/cine_factory.py)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmrdx.errors import NoCineError, PixelDecodeError
from cmrdx.study.assemble import assemble_study, inspect_study
from helpers.cine_factory import build_cine_study

# The factory labels its distractors by kind ("other:localizer", ...); each kind is a series type of its own.
DISTRACTOR_ROLES = {"localizer": "localizer", "T1/T2 map": "t1_map", "flow": "flow", "TI scout": "ti_scout"}


def _expected_ok(expected: str, s) -> bool:
    if expected.startswith("other"):
        return s.role == DISTRACTOR_ROLES[expected.split(":", 1)[1]] and s.view is None
    return f"{s.role}:{s.view}" == expected


@pytest.mark.parametrize("vendor", ["siemens", "ge", "philips", "kaggle"])
def test_vendor_styles_get_the_right_role_and_view(tmp_path, vendor):
    b = build_cine_study(tmp_path / vendor, vendor=vendor, n_slices=6, n_phases=12, distractors=True)
    insp = inspect_study(b.root)
    assert insp.study_uid == b.study_uid
    seen = set()
    for s in insp.series:
        exp = b.series[s.description]
        assert _expected_ok(exp, s), (s.description, exp, s.role, s.view, s.reason, s.view_reason)
        seen.add(s.description)
    assert seen == set(b.series)


@pytest.mark.parametrize("vendor", ["siemens", "ge", "philips"])
def test_assembled_stack_is_ordered_along_the_normal_and_in_time(tmp_path, vendor):
    b = build_cine_study(tmp_path / vendor, vendor=vendor, n_slices=6, n_phases=12)
    study = assemble_study(b.root)
    sax = study.get("cine", "SAX")
    assert (sax.n_slices, sax.n_phases) == (6, 12)
    assert np.all(np.diff(sax.slice_positions) > 9.0)  # 10 mm apart, ascending
    assert np.allclose(np.diff(sax.trigger_times), 900.0 / 12)
    # the factory's pixels identify (slice, phase): slice k is the base image rolled by 3k rows, phase p by p columns
    arr = sax.pixels()
    assert arr.shape == (6, 12, 64, 64)
    np.testing.assert_array_equal(arr[2, 5], np.roll(arr[0, 5], 6, axis=0))
    # phase p is the phase-0 image shifted by p columns (and scaled): time order is right
    rolled = np.corrcoef(np.roll(arr[1, 0], 4, axis=1).ravel(), arr[1, 4].ravel())[0, 1]
    unrolled = np.corrcoef(arr[1, 0].ravel(), arr[1, 4].ravel())[0, 1]
    assert rolled > 0.999 and rolled > unrolled
    lge = study.get("lge", "SAX")
    assert (lge.n_slices, lge.n_phases) == (6, 1)
    for key in ("cine:2CH", "cine:3CH", "cine:4CH", "cine:LVOT", "lge:2CH", "lge:3CH", "lge:4CH"):
        assert key in study.views, key
    assert study.missing == []


def test_pixels_decodes_only_what_is_asked(tmp_path, monkeypatch):
    b = build_cine_study(tmp_path / "s", vendor="ge", n_slices=6, n_phases=10, lge=False)
    study = assemble_study(b.root)
    import cmrdx.study.assemble as asm

    calls = []
    real = asm.decode_frame
    monkeypatch.setattr(asm, "decode_frame", lambda f, p="MONOCHROME2": calls.append(f) or real(f, p))
    out = study.get("cine", "SAX").pixels(slices=[3])
    assert out.shape == (1, 10, 64, 64)
    assert len(calls) == 10


def test_enhanced_multiframe_cine_assembles_like_classic(tmp_path):
    classic = assemble_study(build_cine_study(tmp_path / "c", n_slices=5, n_phases=8, lge=False, seed=3).root)
    enhanced = assemble_study(build_cine_study(tmp_path / "e", n_slices=5, n_phases=8, lge=False, seed=3, enhanced_sax=True).root)
    a, b = classic.get("cine", "SAX"), enhanced.get("cine", "SAX")
    assert (b.n_slices, b.n_phases) == (5, 8)
    np.testing.assert_allclose(a.slice_positions, b.slice_positions)
    np.testing.assert_allclose(a.trigger_times, b.trigger_times)
    np.testing.assert_array_equal(a.pixels(), b.pixels())


def test_split_sax_is_merged_and_named(tmp_path):
    b = build_cine_study(tmp_path / "s", vendor="siemens", n_slices=7, n_phases=6, lge=False)
    study = assemble_study(b.root)
    sax = study.get("cine", "SAX")
    assert sax.n_slices == 7 and len(sax.series_uids) == 7
    assert any("merged from 7 series" in n for n in sax.notes)


def test_repeated_slice_keeps_the_latest_acquisition(tmp_path):
    b = build_cine_study(tmp_path / "s", vendor="ge", n_slices=5, n_phases=6, lge=False, repeat_slice=2)
    study = assemble_study(b.root)
    sax = study.get("cine", "SAX")
    assert sax.n_slices == 5
    assert any("repeated" in n for n in sax.notes)
    assert any("repeated" in w for w in study.manifest.warnings)
    # the repeat was rendered from a different base shift (slice index 102): its pixels must be the ones used
    plain = assemble_study(build_cine_study(tmp_path / "p", vendor="ge", n_slices=5, n_phases=6, lge=False).root)
    assert not np.array_equal(sax.pixels(slices=[2]), plain.get("cine", "SAX").pixels(slices=[2]))
    np.testing.assert_array_equal(sax.pixels(slices=[1]), plain.get("cine", "SAX").pixels(slices=[1]))


def test_dropped_phase_is_reported_and_resampled(tmp_path):
    b = build_cine_study(tmp_path / "s", vendor="ge", n_slices=4, n_phases=10, lge=False, drop_phase=(1, 4))
    study = assemble_study(b.root)
    sax = study.get("cine", "SAX")
    assert sax.n_phases == 10
    assert any("slice 1: 9 of 10 phases" in n for n in sax.notes)
    assert any("gap" in n for n in sax.notes)
    assert any("resampled" in n for n in sax.notes)
    assert sax.pixels().shape == (4, 10, 64, 64)


def test_mixed_matrix_sizes_are_resampled(tmp_path):
    b = build_cine_study(tmp_path / "s", vendor="siemens", n_slices=4, n_phases=5, lge=False, mixed_matrix=True)
    study = assemble_study(b.root)
    sax = study.get("cine", "SAX")
    assert sax.shape == (64, 64)
    arr = sax.pixels()
    assert arr.shape == (4, 5, 64, 64)
    assert any("mixed matrix" in n for n in sax.notes)
    # the 48x48 slice, resampled, still resembles its 64x64 neighbours' content (same base image)
    assert np.corrcoef(arr[1, 0].ravel(), np.roll(arr[0, 0], 3, axis=0).ravel())[0, 1] > 0.8


def test_no_cine_names_what_was_found(tmp_path):
    b = build_cine_study(tmp_path / "s", vendor="ge", n_slices=3, n_phases=6, lge=True)
    for d in Path(b.root).iterdir():
        if "FIESTA" in d.name:
            shutil.rmtree(d)
    with pytest.raises(NoCineError) as ei:
        assemble_study(b.root)
    assert "no cine series" in ei.value.message and "lge" in ei.value.message
    assert "cmrdx inspect" in ei.value.hint


def test_corrupt_pixel_data_names_the_file(tmp_path):
    b = build_cine_study(tmp_path / "s", vendor="ge", n_slices=3, n_phases=5, lge=False)
    victim = sorted((b.root / "SAX_FIESTA_BH").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-3000])  # pixel data cut short, header intact
    study = assemble_study(b.root)
    with pytest.raises(PixelDecodeError) as ei:
        study.get("cine", "SAX").pixels()
    assert victim.name in ei.value.message


def test_zip_archive_reads_like_the_folder(tmp_path):
    b = build_cine_study(tmp_path / "s", vendor="philips", n_slices=4, n_phases=5, lge=False)
    z = shutil.make_archive(str(tmp_path / "study"), "zip", b.root)
    a = assemble_study(b.root).get("cine", "SAX")
    c = assemble_study(z).get("cine", "SAX")
    np.testing.assert_array_equal(a.pixels(), c.pixels())


def _signature(study):
    return {
        k: (v.n_slices, v.n_phases, tuple(np.round(v.slice_positions, 3)), v.pixels().tobytes())
        for k, v in sorted(study.views.items())
    }


@pytest.fixture(scope="module")
def base_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("prop") / "base"
    build_cine_study(root, vendor="ge", n_slices=4, n_phases=6, lge=True, seed=5)
    return root, _signature(assemble_study(root))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), nest=st.booleans())
def test_file_order_and_names_do_not_matter(base_study, tmp_path_factory, seed, nest):
    """Shuffled, renamed and re-foldered files give the same assembly."""
    root, sig = base_study
    files = sorted(p for p in root.rglob("*") if p.is_file())
    rnd = random.Random(seed)
    rnd.shuffle(files)
    out = tmp_path_factory.mktemp("shuffled")
    for i, f in enumerate(files):
        name = f"{rnd.randrange(1 << 30):x}_{i}"  # no suffix, random names
        target = out / (f"d{i % 3}" if nest else "") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target)
    assert _signature(assemble_study(out)) == sig


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 1000))
def test_split_and_merged_sax_assemble_identically(tmp_path_factory, seed):
    split = tmp_path_factory.mktemp("split")
    merged = tmp_path_factory.mktemp("merged")
    b1 = build_cine_study(split, vendor="siemens", n_slices=4, n_phases=5, lge=False, seed=seed)
    b2 = build_cine_study(merged, vendor="ge", n_slices=4, n_phases=5, lge=False, seed=seed)
    s1, s2 = assemble_study(b1.root).get("cine", "SAX"), assemble_study(b2.root).get("cine", "SAX")
    np.testing.assert_allclose(s1.slice_positions, s2.slice_positions)
    np.testing.assert_array_equal(s1.pixels(), s2.pixels())
