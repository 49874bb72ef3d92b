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

import pydicom
import pydicom.config
import pytest
from pydicom.dataset import Dataset

from cmrdx.dicom import FileRef, scan
from cmrdx.dicom.pixels import decode_frame
from cmrdx.dicom.series import read_series_header, series_from_dataset
from cmrdx.errors import NoDicomError, PixelDecodeError
from cmrdx.study.assemble import assemble_study
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
