"""Hostile and broken input to the DICOM layer: what is not a study is skipped with its reason, nothing hangs, nothing
takes the process down, nothing is read beyond what the file holds, and a damaged header never silently changes
what the model is given (docs/bad-input.md states each rule and limit).

Studies come from tests/helpers/cine_factory.py (headers and pixels of pydicom's MR_small.dcm) and single files from
pydicom's own test files; the hostile constructions are in tests/helpers/hostile.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pydicom.config
import pytest
from pydicom.dataset import Dataset

from cmrdx.dicom import FileRef, scan
from cmrdx.dicom.pixels import decode_frame
from cmrdx.dicom.series import read_series_header, series_from_dataset
from cmrdx.errors import NoCineError, NoDicomError, PixelDecodeError
from cmrdx.study.assemble import assemble_study, inspect_study
from helpers.cine_factory import build_cine_study
from helpers.hostile import (
    CountingReader,
    pixel_data_offset,
    real_file,
    run_bounded,
    run_python,
    zip_bytes,
    zip_with_encrypted_flag,
    zip_with_overlapping_member,
)

BOUND_S = 60  # generous: each of these finishes in well under a second when it works


def _one_file_folder(tmp_path: Path) -> Path:
    d = tmp_path / "study"
    d.mkdir()
    shutil.copy(real_file("MR_small.dcm"), d / "IM0001.dcm")
    return d


# --- item 5: hangs and runaway work -------------------------------------------------------------------------------


def test_named_pipe_in_a_study_folder_is_skipped_not_read(tmp_path):
    d = _one_file_folder(tmp_path)
    fifo = d / "IM0002.dcm"
    os.mkfifo(fifo)
    try:
        res = run_bounded(lambda: scan(d), BOUND_S)
    finally:  # release a reader stuck on the pipe (none when it works)
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert res.n_series == 1 and res.files_scanned == 2
    assert dict(res.files_skipped) == {"not a regular file (named pipe)": 1}
    assert res.skipped_examples["not a regular file (named pipe)"] == str(fifo)


def test_links_to_dev_zero_and_urandom_are_skipped_not_read(tmp_path):
    d = _one_file_folder(tmp_path)
    os.symlink("/dev/zero", d / "zero.dcm")
    os.symlink("/dev/urandom", d / "random")
    os.symlink(d / "gone.dcm", d / "dangling.dcm")
    res = run_bounded(lambda: scan(d), BOUND_S)
    assert res.n_series == 1 and res.files_scanned == 4
    assert dict(res.files_skipped) == {"not a regular file (character device)": 2, "broken symbolic link": 1}


def test_a_device_given_as_the_study_is_no_dicom_with_its_reason():
    with pytest.raises(NoDicomError) as ei:
        run_bounded(lambda: assemble_study("/dev/zero"), BOUND_S)
    assert "not a regular file (character device)" in ei.value.message


def test_100_mb_of_zeros_is_rejected_after_reading_a_few_kb(tmp_path, monkeypatch):
    d = _one_file_folder(tmp_path)
    zeros = d / "zeros.dcm"
    with open(zeros, "wb") as f:  # sparse: 100 MB of zeros without writing them
        f.truncate(100_000_000)
    read: dict[str, list[int]] = {}
    real_open = FileRef.open

    def counting_open(self: FileRef):
        counter = read.setdefault(self.name, [0])
        return CountingReader(real_open(self), counter)

    monkeypatch.setattr(FileRef, "open", counting_open)
    res = run_bounded(lambda: scan(d), BOUND_S)
    assert res.files_skipped == {"not DICOM": 1} and res.n_series == 1
    assert read["zeros.dcm"][0] <= 4096, f"read {read['zeros.dcm'][0]} bytes of a file of zeros"


def test_dicm_marker_followed_by_zeros_is_not_read_through(tmp_path, monkeypatch):
    d = _one_file_folder(tmp_path)
    p = d / "fake.dcm"
    with open(p, "wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        f.truncate(50_000_000)
    read = [0]
    real_open = FileRef.open
    monkeypatch.setattr(FileRef, "open", lambda self: CountingReader(real_open(self), read)
                        if self.name == "fake.dcm" else real_open(self))
    res = run_bounded(lambda: scan(d), BOUND_S)
    assert sum(res.files_skipped.values()) == 1 and next(iter(res.files_skipped)).startswith("not DICOM")
    assert read[0] <= 4096


def _with_frames(tmp_path: Path, value: str, copies: int = 1) -> Path:
    d = tmp_path / "frames"
    d.mkdir()
    for k in range(copies):
        ds = pydicom.dcmread(real_file("MR_small.dcm"))
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k + 1}"
        with pydicom.config.disable_value_validation():
            ds.NumberOfFrames = value
        ds.save_as(d / f"IM{k:04d}.dcm")
    return d


def test_header_claiming_999999999_frames_lists_only_the_frames_present(tmp_path):
    d = _with_frames(tmp_path, "999999999")
    code = ("import sys; from cmrdx.dicom import scan; r = scan(sys.argv[1]); "
            "print(sum(len(s.frames) for v in r.studies.values() for s in v)); "
            "print(sorted(k for rw in r.read_warnings.values() for k in rw.counts))")
    out = run_python(code, str(d), timeout=BOUND_S, memory_gib=2)
    assert out.returncode == 0, out.stderr[-2000:]
    frames, kinds = out.stdout.splitlines()[-2:]
    assert frames == "1"  # MR_small holds one 64x64 frame
    assert "NumberOfFrames beyond the pixel data" in kinds


def test_100000_frames_on_20_files_is_bounded_by_the_pixel_data(tmp_path):
    d = _with_frames(tmp_path, "100000", copies=20)
    res = run_bounded(lambda: scan(d), BOUND_S)
    (series,) = [s for v in res.studies.values() for s in v]
    assert len(series.frames) == 20
    (rw,) = res.read_warnings.values()
    assert rw.counts == {"NumberOfFrames beyond the pixel data (only the frames present are listed)": 20}


def test_negative_frame_count_does_not_drop_a_frame(tmp_path):
    def negative(ds: Dataset) -> None:
        if ds.SeriesDescription == "SAX_FIESTA_BH" and ds.InstanceNumber == 3:
            ds.NumberOfFrames = "-1"

    b = build_cine_study(tmp_path / "s", vendor="ge", n_slices=3, n_phases=16, lge=False, lax_views=(), edit=negative)
    res = scan(b.root)
    (sax,) = [s for v in res.studies.values() for s in v if s.description == "SAX_FIESTA_BH"]
    assert len(sax.frames) == 3 * 16  # one frame per file, the one with NumberOfFrames -1 too
    sv = assemble_study(b.root).get("cine", "SAX")
    assert (sv.n_slices, sv.n_phases) == (3, 16)
    assert not any("resampled" in n for n in sv.notes)  # no slice lost a phase


# --- item 6: zip archives -----------------------------------------------------------------------------------------


def _dcm() -> bytes:
    return real_file("MR_small.dcm").read_bytes()


def test_zip_bomb_member_is_skipped_with_its_reason(tmp_path):
    z = tmp_path / "study.zip"
    z.write_bytes(zip_bytes([("IM0001.dcm", _dcm()), ("IM0002.dcm", b"\0" * (64 << 20))]))
    res = run_bounded(lambda: scan(z), BOUND_S)
    assert res.n_series == 1 and res.files_scanned == 2
    assert dict(res.files_skipped) == {"zip member over the compression ratio limit (200:1)": 1}
    assert res.skipped_examples["zip member over the compression ratio limit (200:1)"] == f"{z}!IM0002.dcm"


def test_zip_member_over_the_size_limit_is_skipped(tmp_path, monkeypatch):
    from cmrdx.dicom import source

    monkeypatch.setattr(source, "ZIP_MAX_MEMBER_BYTES", 1 << 20)
    z = tmp_path / "study.zip"
    z.write_bytes(zip_bytes([("IM0001.dcm", _dcm()), ("IM0002.dcm", _dcm() + os.urandom(2 << 20))]))
    res = scan(z)
    assert res.n_series == 1 and sum(res.files_skipped.values()) == 1
    (reason,) = res.files_skipped
    assert reason.startswith("zip member over the size limit")
    with pytest.raises(OSError, match="size limit"):  # a member named directly is refused too
        FileRef(str(z), "IM0002.dcm").open()


def test_zip_archive_over_the_total_limit_skips_what_is_beyond(tmp_path, monkeypatch):
    from cmrdx.dicom import source

    monkeypatch.setattr(source, "ZIP_MAX_TOTAL_BYTES", len(_dcm()) + 10)
    z = tmp_path / "study.zip"
    z.write_bytes(zip_bytes([("IM0001.dcm", _dcm()), ("IM0002.dcm", _dcm())]))
    res = scan(z)
    assert res.files_scanned == 2 and res.n_series == 1
    assert [r for r in res.files_skipped] == [source.SKIP_TOTAL_SIZE]


def test_zip_member_is_streamed_not_inflated_whole(tmp_path):
    z = tmp_path / "study.zip"
    z.write_bytes(zip_bytes([("IM0001.dcm", _dcm() + b"\0" * (32 << 20))], compression=zipfile.ZIP_STORED))
    tracemalloc.start()
    try:
        ds, why = read_series_header(FileRef(str(z), "IM0001.dcm"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert why is None and ds.Rows == 64
    assert peak < 8 << 20, f"{peak >> 20} MiB held to read a header from a 32 MiB member"


def test_zip_inside_a_zip_is_reported_not_called_not_dicom(tmp_path):
    inner = zip_bytes([("IM0002.dcm", _dcm())])
    z = tmp_path / "study.zip"
    z.write_bytes(zip_bytes([("IM0001.dcm", _dcm()), ("more/series2.zip", inner)]))
    res = scan(z)
    assert dict(res.files_skipped) == {"zip inside a zip (not opened: unpack it first)": 1}
    assert res.skipped_examples["zip inside a zip (not opened: unpack it first)"] == f"{z}!more/series2.zip"


def test_corrupt_zip_is_reported_not_called_not_dicom(tmp_path):
    d = _one_file_folder(tmp_path)
    good = zip_bytes([("IM0002.dcm", _dcm()), ("IM0003.dcm", _dcm())])
    (d / "cut.zip").write_bytes(good[: len(good) // 2])  # no central directory
    (d / "noise.zip").write_bytes(os.urandom(4096))
    res = scan(d)
    assert dict(res.files_skipped) == {"corrupt zip archive": 2} and res.n_series == 1


def test_duplicate_zip_member_names_are_reported(tmp_path):
    a = pydicom.dcmread(real_file("MR_small.dcm"))
    b = pydicom.dcmread(real_file("MR_small.dcm"))
    b.SOPInstanceUID = a.SOPInstanceUID + ".2"
    blobs = []
    for ds in (a, b):
        p = tmp_path / "x.dcm"
        ds.save_as(p)
        blobs.append(p.read_bytes())
    z = tmp_path / "study.zip"
    with pytest.warns(UserWarning, match="Duplicate name"):
        z.write_bytes(zip_bytes([("IM0001.dcm", blobs[0]), ("IM0001.dcm", blobs[1])]))
    res = scan(z)
    assert dict(res.files_skipped) == {"duplicate zip member name (the last copy is read)": 1}
    (series,) = [s for v in res.studies.values() for s in v]
    assert len(series.frames) == 1


def test_overlapping_zip_members_are_skipped(tmp_path):
    z = tmp_path / "study.zip"
    z.write_bytes(zip_with_overlapping_member(zip_bytes([("IM0001.dcm", _dcm())]), "IM0001.dcm", "IM0002.dcm"))
    res = scan(z)
    assert dict(res.files_skipped) == {"zip member overlapping another (zip bomb construction)": 2}


def test_encrypted_zip_member_is_skipped_with_its_reason(tmp_path):
    z = tmp_path / "study.zip"
    z.write_bytes(zip_with_encrypted_flag(zip_bytes([("IM0001.dcm", _dcm())])))
    with pytest.raises(NoDicomError) as ei:
        assemble_study(z)
    assert "1 encrypted zip member" in ei.value.message


# --- item 8: matrix sizes the decoder must never see -------------------------------------------------------------

_DECODE = """
import sys
from cmrdx.dicom.source import FileRef
from cmrdx.dicom.series import read_series_header, series_from_dataset
from cmrdx.dicom.pixels import decode_frame
from cmrdx.errors import CmrdxError
ref = FileRef(sys.argv[1])
ds, why = read_series_header(ref)
s = series_from_dataset(ds, ref)
try:
    decode_frame(s.frames[0])
    print("DECODED")
except CmrdxError as exc:
    print(type(exc).__name__, exc.message)
"""


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm"])
def test_rows_65535_is_an_error_not_an_abort(tmp_path, name):
    ds = pydicom.dcmread(real_file(name))
    ds.Rows, ds.Columns = 65535, 65535
    p = tmp_path / name
    ds.save_as(p)
    out = run_python(_DECODE, str(p), timeout=BOUND_S)
    assert out.returncode == 0, f"killed by signal {-out.returncode}" if out.returncode < 0 else out.stderr[-2000:]
    assert out.stdout.startswith("PixelDecodeError"), out.stdout + out.stderr[-2000:]
    assert str(p) in out.stdout and "65535 x 65535" in out.stdout


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_image_of_another_size_than_the_header_is_corrupt(tmp_path, name):
    ds = pydicom.dcmread(real_file(name))
    ds.Rows, ds.Columns = 512, 512
    p = tmp_path / name
    ds.save_as(p)
    out = run_python(_DECODE, str(p), timeout=BOUND_S)
    assert out.returncode == 0, f"killed by signal {-out.returncode}" if out.returncode < 0 else out.stderr[-2000:]
    assert f"corrupt or truncated pixel data in {p}: the header says 512 x 512, the compressed image is 64 x 64" \
        in out.stdout


# --- item 13 (DICOM part): say what is wrong ----------------------------------------------------------------------


def _decode_error(path: Path) -> PixelDecodeError:
    ref = FileRef(str(path))
    ds, why = read_series_header(ref)
    assert ds is not None, why
    with pytest.raises(PixelDecodeError) as ei:
        decode_frame(series_from_dataset(ds, ref).frames[0])
    return ei.value


def test_truncated_pixel_data_is_called_corrupt_not_a_missing_plugin(tmp_path):
    p = tmp_path / "cut.dcm"
    p.write_bytes(real_file("MR_small.dcm").read_bytes()[:-3000])
    err = _decode_error(p)
    assert err.message.startswith(f"corrupt or truncated pixel data in {p}")
    assert "8192 bytes" in err.message and "install" not in (err.hint or "")


def test_corrupt_compressed_pixel_data_is_called_corrupt_without_a_traceback(tmp_path, capfd):
    data = bytearray(real_file("MR_small_jpeg_ls_lossless.dcm").read_bytes())
    start = pixel_data_offset(bytes(data)) + 60  # inside the codestream, after its header
    data[start:start + 400] = bytes(400)
    p = tmp_path / "flipped.dcm"
    p.write_bytes(bytes(data))
    err = _decode_error(p)
    assert err.message.startswith(f"corrupt or truncated pixel data in {p}: JPEG-LS Lossless")
    assert "install" not in (err.hint or "")
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out


def test_file_without_series_uid_is_not_called_truncated(tmp_path):
    ds = pydicom.dcmread(real_file("MR_small.dcm"))
    del ds.SeriesInstanceUID
    d = _one_file_folder(tmp_path)
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.save_as(d / "IM0002.dcm")
    res = scan(d)
    assert dict(res.files_skipped) == {"no SeriesInstanceUID": 1}


def test_file_cut_inside_its_header_is_called_cut_short(tmp_path):
    d = _one_file_folder(tmp_path)
    (d / "IM0002.dcm").write_bytes(real_file("MR_small.dcm").read_bytes()[:700])  # inside an element
    res = scan(d)
    assert dict(res.files_skipped) == {"header cut short (truncated file)": 1}


# --- item 9: damaged geometry and timing never silently change the model's input ----------------------------------

SAX = "CINE_segmented_SAX_b"  # cine_factory's Siemens-style short-axis cine: one series per slice
GEOMETRY = {"n_slices": 6, "n_phases": 16, "lax_views": ("4CH",), "vendor": "siemens"}


def _checks(study, rule: str) -> list:
    found = [c for c in study.manifest.input_checks if c.rule == rule]
    for c in found:
        assert c.message in study.manifest.warnings
    return found


def _names(b, uids) -> set[str]:
    by_uid = {s.uid: s.description for v in scan(b.root).studies.values() for s in v}
    return {by_uid[u] for u in uids}


BAD_ORIENTATION = {
    "nan": (["nan"] * 6, "ImageOrientationPatient not finite (NaN or infinite)"),
    "zero": ([0.0] * 6, "ImageOrientationPatient with a zero-length direction"),
    "parallel": ([1.0, 0.0, 0.0, 1.0, 0.0, 0.0], "ImageOrientationPatient with parallel row and column directions"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ORIENTATION))
def test_nan_orientation_is_reported_not_silently_dropped(tmp_path, kind):
    value, issue = BAD_ORIENTATION[kind]

    def damage(ds: Dataset) -> None:
        ds.ImageOrientationPatient = value

    clean = assemble_study(build_cine_study(tmp_path / "clean", **GEOMETRY).root)
    b = build_cine_study(tmp_path / kind, edit=damage, **GEOMETRY)
    study = assemble_study(b.root)
    for key in ("cine:SAX", "lge:SAX"):  # every slice is still there, 10 mm apart
        sv, ref = study.views[key], clean.views[key]
        assert (sv.n_slices, sv.n_phases) == (ref.n_slices, ref.n_phases) == (6, 16 if key == "cine:SAX" else 1)
        np.testing.assert_allclose(np.abs(np.diff(sv.slice_positions)), 10.0, atol=0.01)
        got, want = sv.pixels(phases=[0]), ref.pixels(phases=[0])
        assert np.array_equal(got, want) or np.array_equal(got, want[::-1])  # the stack's sign is not known
    (cine,) = [c for c in _checks(study, "orientation-unusable") if c.view == "cine:SAX"]
    assert f"{issue} in 96 of 96 images: slices ordered along the direction their positions spread" in cine.message
    assert _names(b, cine.series_uids) == {f"{SAX}{k}" for k in range(1, 7)}


def test_orientation_damaged_in_some_images_places_them_with_the_others(tmp_path):
    def damage(ds: Dataset) -> None:
        if ds.SeriesDescription == f"{SAX}3":
            ds.ImageOrientationPatient = ["nan"] * 6

    study = assemble_study(build_cine_study(tmp_path / "s", edit=damage, **GEOMETRY).root)
    assert study.views["cine:SAX"].n_slices == 6
    (c,) = _checks(study, "orientation-unusable")
    assert c.view == "cine:SAX" and "in 16 of 96 images: placed along the stack's normal from the other images" \
        in c.message and f"'{SAX}3'" in c.message


@pytest.mark.parametrize("value", ["missing", "nan"])
def test_missing_position_leaves_the_short_axis_out_with_its_reason(tmp_path, value):
    def damage(ds: Dataset) -> None:
        if ds.SeriesDescription.startswith(SAX):
            if value == "missing":
                del ds.ImagePositionPatient
            else:
                ds.ImagePositionPatient = ["nan"] * 3

    b = build_cine_study(tmp_path / "s", edit=damage, **GEOMETRY)
    study = assemble_study(b.root)
    assert "cine:SAX" not in study.views and "cine:4CH" in study.views and study.views["lge:SAX"].n_slices == 6
    (c,) = _checks(study, "position-unusable")
    what = "missing" if value == "missing" else "not finite (NaN or infinite)"
    assert c.view == "cine:SAX" and (f"ImagePositionPatient {what} in all 96 images, which hold several slices: the "
                                     "slices cannot be placed, the view is left out") in c.message
    for d in study.manifest.decisions:
        if d.description.startswith(SAX):
            assert d.used_as is None and d.reason.startswith("cine:SAX left out: ImagePositionPatient")


def test_a_study_whose_only_cine_cannot_be_placed_is_a_clear_error(tmp_path):
    def damage(ds: Dataset) -> None:
        del ds.ImagePositionPatient

    b = build_cine_study(tmp_path / "s", **{**GEOMETRY, "lax_views": ()}, lge=False, edit=damage)
    with pytest.raises(NoCineError) as ei:
        assemble_study(b.root)
    assert "no usable cine series" in ei.value.message and "ImagePositionPatient missing" in ei.value.message


def test_position_missing_in_some_images_leaves_those_out_with_a_warning(tmp_path):
    def damage(ds: Dataset) -> None:
        if ds.SeriesDescription == f"{SAX}4":
            del ds.ImagePositionPatient

    study = assemble_study(build_cine_study(tmp_path / "s", edit=damage, **GEOMETRY).root)
    assert study.views["cine:SAX"].n_slices == 5
    (c,) = _checks(study, "position-unusable")
    assert c.view == "cine:SAX" and f"'{SAX}4'" in c.message
    assert "ImagePositionPatient missing in 16 of 96 images: those images are left out" in c.message


def test_identical_positions_are_reported_not_silently_collapsed(tmp_path):
    def damage(ds: Dataset) -> None:
        if ds.SeriesDescription.startswith(SAX) or ds.SeriesDescription == "DE_TI_300_SAX_MAG":
            ds.ImagePositionPatient = [0.0, 0.0, 0.0]

    study = assemble_study(build_cine_study(tmp_path / "s", edit=damage, **GEOMETRY).root)
    assert "cine:SAX" not in study.views and "lge:SAX" not in study.views
    checks = {c.view: c.message for c in _checks(study, "positions-collapsed")}
    assert "all 96 images at one position (6 series): ImagePositionPatient does not separate the slices" \
        in checks["cine:SAX"]
    assert "all 6 images at one position (6 images of one series at one time)" in checks["lge:SAX"]


def test_duplicate_sop_instance_uid_with_different_pixels_is_reported(tmp_path):
    b = build_cine_study(tmp_path / "s", **{**GEOMETRY, "vendor": "ge"})
    victim = sorted((b.root / "SAX_FIESTA_BH").iterdir())[3]
    ds = pydicom.dcmread(victim)
    px = ds.pixel_array.copy()
    px[:8] = 0
    ds.PixelData = px.tobytes()
    (b.root / "again").mkdir()
    ds.save_as(b.root / "again" / victim.name)
    study = assemble_study(b.root)
    assert study.manifest.files_skipped == {"conflicting copy (same SOPInstanceUID, different pixel data)": 1}
    (c,) = _checks(study, "duplicate-instances")
    assert c.view == "cine:SAX" and (f"1 SOPInstanceUID stored twice with different pixel data (e.g. SAX_FIESTA_BH/"
                                     f"{victim.name} and again/{victim.name}): the file first in path order is used") \
        in c.message
    listed = [i for s in inspect_study(b.root).to_dict()["series"] for i in s.get("issues", [])]
    assert listed == [c.message.split("): ", 1)[1]]  # inspect lists it with its series
    used = pydicom.dcmread(victim).pixel_array  # the kept copy is the one first in path order
    sv = study.views["cine:SAX"]
    assert any(np.array_equal(sv.pixels(slices=[k], phases=[p])[0, 0], used)
               for k in range(sv.n_slices) for p in range(sv.n_phases))


def test_identical_copy_of_an_instance_is_read_once(tmp_path):
    b = build_cine_study(tmp_path / "s", **{**GEOMETRY, "vendor": "ge"})
    victim = sorted((b.root / "SAX_FIESTA_BH").iterdir())[3]
    (b.root / "again").mkdir()
    shutil.copy(victim, b.root / "again" / victim.name)
    res = scan(b.root)
    assert res.files_skipped == {"copy of another file (same SOPInstanceUID and pixel data)": 1}
    (sax,) = [s for v in res.studies.values() for s in v if s.description == "SAX_FIESTA_BH"]
    assert len(sax.frames) == 6 * 16 and not sax.issues


def test_cine_with_constant_trigger_time_keeps_its_phases(tmp_path):
    def damage(ds: Dataset) -> None:
        if "TriggerTime" in ds:  # the cines: every image at 0 ms, the order kept in TemporalPositionIdentifier
            ds.TemporalPositionIdentifier = int(ds.InstanceNumber)
            ds.TriggerTime = 0

    b = build_cine_study(tmp_path / "s", edit=damage, **{**GEOMETRY, "vendor": "ge"}, lge=False)
    study = assemble_study(b.root)
    sv = study.views["cine:SAX"]
    assert (sv.n_slices, sv.n_phases) == (6, 16)
    first = sorted((b.root / "SAX_FIESTA_BH").iterdir())[:16]  # slice 0's phases, in instance order
    want = np.stack([pydicom.dcmread(p).pixel_array for p in first]).astype(np.float32)
    assert np.array_equal(sv.pixels(slices=[0])[0], want) or np.array_equal(sv.pixels(slices=[5])[0], want)
    c = [c for c in _checks(study, "phase-order") if c.view == "cine:SAX"]
    assert len(c) == 1 and ("TriggerTime the same for every image of a position: phases ordered by "
                            "TemporalPositionIdentifier") in c[0].message
    assert not _checks(study, "duplicate-images")


def test_cine_without_usable_trigger_time_is_a_clear_error_that_says_so(tmp_path):
    def damage(ds: Dataset) -> None:
        if "TriggerTime" in ds:
            ds.TriggerTime = "nan"

    b = build_cine_study(tmp_path / "s", edit=damage, **{**GEOMETRY, "vendor": "ge"}, lge=False)
    with pytest.raises(NoCineError) as ei:
        assemble_study(b.root)
    assert "16 images at one position, but no usable cardiac timing (TriggerTime missing, not a number" \
        in ei.value.message
