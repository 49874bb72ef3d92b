"""The DICOM layer on real files from pydicom, pydicom-data, nibabel, pynetdicom and heudiconv."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from cmrdx.dicom import FileRef, scan
from cmrdx.dicom.pixels import decode_frame
from cmrdx.dicom.scan import SKIP_CONFLICT, SKIP_COPY, SKIP_CUT_SHORT, SKIP_NO_SERIES_UID, SKIP_NO_SOP_CLASS
from cmrdx.dicom.series import frames_from_dataset, read_series_header, series_from_dataset
from cmrdx.study.roles import classify_study_series
from cmrdx.vocab import MODEL_ROLES, ROLES


@pytest.mark.parametrize("key", ["pydicom", "pydicom-data", "nibabel", "pynetdicom", "heudiconv"])
def test_every_real_file_is_read_or_skipped_with_a_reason(real_dirs, key):
    res = scan(real_dirs[key])
    assert res.files_scanned > 0
    assert res.n_series > 0
    known = {"not DICOM", "DICOMDIR (directory index)", "unreadable header", "uninterpretable header",
             "incomplete header (truncated file?)", SKIP_NO_SERIES_UID, SKIP_NO_SOP_CLASS, SKIP_CUT_SHORT, SKIP_COPY,
             SKIP_CONFLICT}
    for reason in res.files_skipped:  # the test packages hold re-encodings and copies of one instance
        # a file lacking the elements that place it may also say it has no pixel data
        assert reason in known or reason.startswith((SKIP_NO_SERIES_UID, SKIP_NO_SOP_CLASS)), reason
    for series in res.studies.values():
        classify_study_series(series)
        for s in series:
            assert s.role in ROLES
            assert s.reason, f"{s.description}: no reason recorded"
            # None of these packages ships a cardiac cine or LGE.
            assert s.role not in MODEL_ROLES, (key, s.description, s.reason)


def _decode_all(path) -> np.ndarray:
    ref = FileRef(str(path))
    ds, why = read_series_header(ref)
    assert ds is not None, why
    s = series_from_dataset(ds, ref)
    return np.stack([decode_frame(f, s.photometric) for f in s.frames])


@pytest.mark.parametrize(
    "variant",
    ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_RLE.dcm",
     "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"],
)
def test_encodings_of_mr_small_decode_to_the_same_pixels(real_dirs, variant):
    ref = _decode_all(real_dirs["pydicom"] / "MR_small.dcm")
    got = _decode_all(real_dirs["pydicom"] / variant)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("variant", ["emri_small_RLE.dcm", "emri_small_big_endian.dcm",
                                     "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"])
def test_enhanced_mr_encodings_decode_frame_by_frame(real_dirs, variant):
    ref = _decode_all(real_dirs["pydicom-data"] / "emri_small.dcm")
    assert ref.shape == (10, 64, 64)
    got = _decode_all(real_dirs["pydicom-data"] / variant)
    np.testing.assert_array_equal(got, ref)


def test_single_frame_of_multiframe_decoded_alone(real_dirs):
    """Asking for frame 7 decodes frame 7 (and matches the full decode)."""
    path = real_dirs["pydicom-data"] / "emri_small_jpeg_2k_lossless.dcm"
    full = pydicom.dcmread(path).pixel_array
    ref = FileRef(str(path))
    ds, _ = read_series_header(ref)
    frames = frames_from_dataset(ds, ref)
    np.testing.assert_array_equal(decode_frame(frames[7]), full[7].astype(np.float32))


def test_philips_12bit_lossless_j2k_equals_uncompressed(real_dirs):
    ref = _decode_all(real_dirs["pydicom-data"] / "MR2_UNCR.dcm")
    got = _decode_all(real_dirs["pydicom-data"] / "MR2_J2KR.dcm")
    assert ref.shape == (1, 1024, 1024)
    np.testing.assert_array_equal(got, ref)


def test_lossy_j2k_matches_its_decompressed_reference(real_dirs):
    """MR2_UNCI is the uncompressed copy of the lossy MR2_J2KI (and close to the lossless original)."""
    unci = _decode_all(real_dirs["pydicom-data"] / "MR2_UNCI.dcm")
    got = _decode_all(real_dirs["pydicom-data"] / "MR2_J2KI.dcm")
    orig = _decode_all(real_dirs["pydicom-data"] / "MR2_UNCR.dcm")
    assert np.abs(got - unci).max() <= np.abs(orig).max() * 0.01
    assert np.corrcoef(got.ravel(), orig.ravel())[0, 1] > 0.99


def test_rescale_is_applied(real_dirs):
    path = real_dirs["nibabel"] / "decimal_rescale.dcm"
    ds = pydicom.dcmread(path)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    assert (slope, intercept) != (1.0, 0.0)
    got = _decode_all(path)[0]
    np.testing.assert_allclose(got, ds.pixel_array * slope + intercept, rtol=1e-5, atol=1e-3)


def test_enhanced_per_frame_geometry_from_philips_mprage(philips_mprage):
    ref = FileRef(str(philips_mprage))
    ds, _ = read_series_header(ref)
    s = series_from_dataset(ds, ref)
    assert s.is_enhanced and len(s.frames) == 176
    f0 = s.frames[0]
    np.testing.assert_allclose(f0.position, [92.7090416119899, -125.12766968458, 136.495256863534])
    assert f0.pixel_spacing == (1.0, 1.0)
    assert f0.rescale[0] == pytest.approx(2.1079365079365)
    # 176 sagittal partitions, 1 mm apart along the normal, all parallel: one stack, one phase.
    assert s.n_positions == 176
    assert s.n_phases == 1
    d = [float(np.dot(f.normal, f.position)) for f in s.slice_groups()[0][:1] + s.slice_groups()[-1][:1]]
    assert abs(d[1] - d[0]) == pytest.approx(175.0, abs=1.0)


def test_localizers_and_projections_get_their_type_and_evidence(real_dirs):
    res = scan(real_dirs["pydicom"] / "dicomdirtests")
    reasons = {}
    for series in res.studies.values():
        classify_study_series(series)
        for s in series:
            reasons[s.description] = (s.role, s.reason)
    assert reasons["FAST LOCALIZER"] == ("localizer", "localizer / planning (name 'localizer')")
    assert reasons["T/S/C RF FAST PILOT"] == ("localizer", "localizer / planning (name 'pilot')")
    # Philips MIPs of an angiogram: seven projections at different angles, told by their ImageType
    assert reasons["ANGIO Projected from   C"] == ("derived", "reformatted image (ImageType PROJECTION IMAGE), not an acquisition")
    assert res.files_skipped["DICOMDIR (directory index)"] >= 1


def test_siemens_mpr_with_overlay_is_derived(real_dirs):
    res = scan(real_dirs["pydicom"] / "examples_overlay.dcm")
    (series,) = res.studies.values()
    classify_study_series(series)
    assert (series[0].role, series[0].reason) == ("derived", "reformatted image (ImageType CSA MPR), not an acquisition")


def test_field_map_phase_image_is_not_flow(real_dirs):
    """A gradient-echo field map's phase image (ImageType P, one image, no velocity encoding, no cardiac phases) is
    not a phase-contrast flow series."""
    res = scan(real_dirs["heudiconv"] / "01-fmap_acq-3mm")
    (series,) = res.studies.values()
    classify_study_series(series)
    assert series[0].role == "other" and "ImageType P" in series[0].reason and "velocity" in series[0].reason


def test_structured_reports_and_non_mr_objects_are_named(real_dirs):
    roles: dict[str, set[str]] = {}
    for key in ("pydicom", "heudiconv"):
        for series in scan(real_dirs[key]).studies.values():
            classify_study_series(series)
            for s in series:
                roles.setdefault(s.modality, set()).add(s.role)
    assert roles["SR"] == {"sr"}
    assert roles["CT"] == {"non_mr"} and roles["US"] == {"non_mr"}
    assert "derived" in roles["OT"]  # secondary captures


def test_truncated_file_is_skipped_not_fatal(real_dirs, tmp_path):
    (tmp_path / "a.dcm").write_bytes((real_dirs["pydicom"] / "MR_small.dcm").read_bytes())
    (tmp_path / "b.dcm").write_bytes((real_dirs["pydicom"] / "MR_small.dcm").read_bytes()[:300])
    (tmp_path / "c.dcm").write_bytes(b"\x00" * 10 + b"garbage" * 50)
    res = scan(tmp_path)
    assert res.files_scanned == 3
    assert res.n_series == 1
    assert sum(res.files_skipped.values()) == 2
