"""Write a rendered phantom study as DICOM MR: classic single-frame or Enhanced MR multi-frame.

Headers follow a vendor style (``vendors.py``); UIDs, dates and names derive from the study seed, so the
same seed writes byte-identical files. Patient identity is synthetic ("PHANTOM^<seed>").
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from cmrdx.synth.render import Plane
from cmrdx.synth.vendors import SeriesStyle, VendorStyle

log = logging.getLogger(__name__)

ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
COMPRESSION = {"rle": RLELossless, "jpegls": JPEGLSLossless, "j2k": JPEG2000Lossless}
_ENCODER_PLUGIN = {"rle": "pylibjpeg", "jpegls": "pyjpegls", "j2k": "pylibjpeg"}
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"  # pydicom's root: this software writes under it
IMPLEMENTATION_VERSION = "CMRDX_SYNTH_1"


@dataclass
class SeriesData:
    """One series to write: pixels (slices, phases, rows, cols) integral float32 and its geometry."""

    kind: str  # "cine" | "lge" | "localizer" | "t1map" | "flow" | "tiscout"
    view: str | None
    description: str
    style: SeriesStyle
    pixels: np.ndarray
    planes: list[Plane]
    trigger_times: np.ndarray  # (phases,) ms after the R wave
    inversion_times: np.ndarray | None = None  # (phases,) ms, for IR series
    number: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class StudyInfo:
    seed: int
    study_uid: str
    frame_of_reference_uid: str
    date: str
    time: str
    patient_name: str
    patient_id: str
    accession: str
    rr_ms: float
    hr_bpm: float
    n_phases: int


def uid(seed: int, *parts: object) -> str:
    """A UID derived from the study seed and a path of names (deterministic, unique per input)."""
    return generate_uid(entropy_srcs=["cmrdx-synth", str(seed), *[str(p) for p in parts]])


def study_info(seed: int, rr_ms: float, hr_bpm: float, n_phases: int) -> StudyInfo:
    rng = np.random.default_rng([seed, 0xDA7E])
    day = _dt.date(2019, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 2000)))
    t = _dt.time(int(rng.integers(8, 17)), int(rng.integers(0, 60)), int(rng.integers(0, 60)))
    return StudyInfo(
        seed=seed,
        study_uid=uid(seed, "study"),
        frame_of_reference_uid=uid(seed, "for"),
        date=day.strftime("%Y%m%d"),
        time=t.strftime("%H%M%S"),
        patient_name=f"PHANTOM^{seed:04d}",
        patient_id=f"PHANTOM-{seed:04d}",
        accession=f"SYN{seed:07d}",
        rr_ms=rr_ms,
        hr_bpm=hr_bpm,
        n_phases=n_phases,
    )


def _ds(v: float, nd: int = 4) -> str:
    """Decimal String value, at most 16 characters."""
    s = f"{v:.{nd}f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _series_time(info: StudyInfo, number: int) -> str:
    t0 = _dt.datetime.strptime(info.date + info.time, "%Y%m%d%H%M%S")
    return (t0 + _dt.timedelta(seconds=40 * number)).strftime("%H%M%S")


def _common(ds: Dataset, info: StudyInfo, vendor: VendorStyle, s: SeriesData) -> None:
    """Patient, study, series, equipment, frame of reference: the same in classic and enhanced objects."""
    st = s.style
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = info.date
    ds.SeriesDate = info.date
    ds.ContentDate = info.date
    ds.StudyTime = info.time
    ds.SeriesTime = _series_time(info, s.number)
    ds.ContentTime = ds.SeriesTime
    ds.AccessionNumber = info.accession
    ds.Modality = "MR"
    ds.Manufacturer = vendor.manufacturer
    ds.InstitutionName = "cmrdx synthetic phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Cardiac MRI^Phantom"
    ds.SeriesDescription = s.description
    ds.ManufacturerModelName = vendor.model
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientAge = "050Y"
    ds.BodyPartExamined = "HEART"
    ds.DeviceSerialNumber = f"SYN{vendor.name.upper()}"
    ds.SoftwareVersions = vendor.software
    ds.ProtocolName = s.description
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = uid(info.seed, "series", s.number)
    ds.StudyID = f"{info.seed % 100000}"
    ds.SeriesNumber = s.number
    ds.FrameOfReferenceUID = info.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = s.pixels.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = 12 if s.kind != "t1map" else 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0


def _file_meta(sop_class: str, sop_uid: str, ts: str) -> FileMetaDataset:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ts
    fm.ImplementationClassUID = IMPLEMENTATION_UID
    fm.ImplementationVersionName = IMPLEMENTATION_VERSION
    return fm


def _window(s: SeriesData) -> tuple[float, float]:
    hi = float(np.percentile(s.pixels, 99.5)) if s.pixels.size else 1.0
    return round(hi / 2, 1), round(max(hi, 1.0), 1)


def _pixels_bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<u2").tobytes()


_ENCODERS = {"rle": "RLELosslessEncoder", "jpegls": "JPEGLSLosslessEncoder", "j2k": "JPEG2000LosslessEncoder"}


def encode_frames(frames: np.ndarray, compress: str, bits_stored: int) -> list[bytes]:
    """Losslessly encode (N, rows, cols) uint16 frames with the transfer syntax ``compress``."""
    import pydicom.pixels.encoders as enc

    e = getattr(enc, _ENCODERS[compress])
    n, h, w = frames.shape
    kw = dict(rows=h, columns=w, samples_per_pixel=1, bits_allocated=16, bits_stored=bits_stored,
              pixel_representation=0, photometric_interpretation="MONOCHROME2", number_of_frames=1)
    return [e.encode(np.ascontiguousarray(f, dtype=np.uint16), encoding_plugin=_ENCODER_PLUGIN[compress], **kw)
            for f in frames]


def _set_pixels(ds: Dataset, frames: np.ndarray, compress: str | None) -> None:
    """PixelData from (N, rows, cols) integral frames: native little endian, or encapsulated and compressed."""
    if compress is None:
        ds.PixelData = _pixels_bytes(frames)
        ds["PixelData"].VR = "OW"
        return
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate(encode_frames(frames, compress, int(ds.BitsStored)))
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def write_classic(out: Path, s: SeriesData, info: StudyInfo, vendor: VendorStyle, *,
                  compress: str | None = None) -> list[Path]:
    """One MR Image Storage file per (slice, phase); returns the written paths.

    One dataset per series is built once and only the per-image attributes change between files (building
    every header from scratch cost more than rendering).
    """
    st = s.style
    out.mkdir(parents=True, exist_ok=True)
    n_sl, n_ph = s.pixels.shape[:2]
    wc, ww = _window(s)
    paths = []
    inst = 0
    ir = "IR" in st.scanning_sequence
    ts = COMPRESSION[compress] if compress else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = _file_meta(MRImageStorage, "1.2", ts)
    ds.ImageType = list(st.image_type)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = "1.2"
    _common(ds, info, vendor, s)
    ds.AcquisitionDate = info.date
    ds.AcquisitionTime = ds.SeriesTime
    ds.ScanningSequence = list(st.scanning_sequence)
    ds.SequenceVariant = list(st.sequence_variant)
    ds.ScanOptions = list(st.scan_options) if st.scan_options else ""
    ds.MRAcquisitionType = "2D"
    if st.sequence_name:
        ds.SequenceName = st.sequence_name
    ds.SliceThickness = _ds(s.planes[0].thickness, 2)
    ds.RepetitionTime = _ds(st.repetition_ms, 2)
    ds.EchoTime = _ds(st.echo_ms, 2)
    if ir:
        ds.InversionTime = "0"
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = _ds(42.577478 * vendor.field_t, 6)
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = _ds(vendor.field_t, 1)
    if n_sl > 1:
        gap = abs(s.planes[1].position - s.planes[0].position)
        ds.SpacingBetweenSlices = _ds(gap, 3)
    ds.EchoTrainLength = "1"
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = _ds(100.0 * ds.Rows / ds.Columns, 2)
    ds.PixelBandwidth = "930"
    ds.TriggerTime = "0"
    ds.NominalInterval = str(int(round(info.rr_ms)))
    ds.HeartRate = str(int(round(info.hr_bpm)))
    ds.CardiacNumberOfImages = n_ph
    ds.TriggerWindow = "0"
    ds.ReceiveCoilName = "Body18" if vendor.name == "siemens" else "Cardiac"
    ds.AcquisitionMatrix = [0, ds.Columns, ds.Rows, 0]
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.FlipAngle = _ds(st.flip_deg, 1)
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = "0"
    ds.PixelSpacing = [_ds(s.planes[0].spacing), _ds(s.planes[0].spacing)]
    ds.WindowCenter = _ds(wc, 1)
    ds.WindowWidth = _ds(ww, 1)
    for si in range(n_sl):
        pl = s.planes[si]
        ds.ImagePositionPatient = [_ds(x) for x in pl.origin]
        ds.ImageOrientationPatient = [_ds(x, 6) for x in np.concatenate([pl.row, pl.col])]
        ds.SliceLocation = _ds(pl.position, 3)
        for pi in range(n_ph):
            inst += 1
            sop = uid(info.seed, "sop", s.number, si, pi)
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.SOPInstanceUID = sop
            ds.InstanceNumber = inst
            ds.TriggerTime = _ds(float(s.trigger_times[pi]), 2)
            if ir:
                ti = s.inversion_times[pi if len(s.inversion_times) > 1 else 0] if s.inversion_times is not None else 300.0
                ds.InversionTime = _ds(float(ti), 1)
            _set_pixels(ds, s.pixels[si, pi][None], compress)
            p = out / f"IM{inst:05d}.dcm"
            ds.save_as(p, enforce_file_format=True)
            paths.append(p)
    return paths
