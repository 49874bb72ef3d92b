"""Write a rendered phantom study as DICOM MR: classic single-frame or Enhanced MR multi-frame.

Headers follow a vendor style (``vendors.py``); UIDs, dates and names derive from the study seed, so the
same seed writes byte-identical files. Patient identity is synthetic ("PHANTOM^<seed>").
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)

from cmrdx.synth.geometry import Plane, uid
from cmrdx.synth.vendors import SeriesStyle, VendorStyle

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
    # Signed images (PSIR): pixels hold values with their sign. ``rescale`` (slope, intercept) (1, 0) writes them
    # as two's complement (PixelRepresentation 1); another stores (value - intercept) / slope unsigned, as Siemens
    # does (2, -4096).
    signed: bool = False
    rescale: tuple[float, float] = (1.0, 0.0)
    blood_nulled: bool = False  # dark-blood preparation (Enhanced MR BloodSignalNulling)

    @property
    def stored(self) -> np.ndarray:
        """The stored values of ``pixels`` (the inverse of the rescale)."""
        slope, intercept = self.rescale
        return self.pixels if (slope, intercept) == (1.0, 0.0) else (self.pixels - intercept) / slope

    @property
    def pixel_representation(self) -> int:
        return 1 if self.signed and self.rescale == (1.0, 0.0) else 0


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
    uid_root: int | str = 0  # what the study's UIDs derive from: the seed (classic) or a randomised study's identity


def study_info(seed: int, rr_ms: float, hr_bpm: float, n_phases: int, uid_root: int | str | None = None) -> StudyInfo:
    """Identity, dates and timing of a study. ``uid_root`` (default: the seed) is what its UIDs derive from; a
    randomised study's carries its parameters' digest, so it never shares UIDs with a classic study."""
    root = seed if uid_root is None else uid_root
    rng = np.random.default_rng([seed, 0xDA7E])
    day = _dt.date(2019, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 2000)))
    t = _dt.time(int(rng.integers(8, 17)), int(rng.integers(0, 60)), int(rng.integers(0, 60)))
    return StudyInfo(
        seed=seed,
        study_uid=uid(root, "study"),
        frame_of_reference_uid=uid(root, "for"),
        date=day.strftime("%Y%m%d"),
        time=t.strftime("%H%M%S"),
        patient_name=f"PHANTOM^{seed:04d}",
        patient_id=f"PHANTOM-{seed:04d}",
        accession=f"SYN{seed:07d}" if uid_root is None else f"SYV{str(root).rsplit('-', 1)[-1][:12].upper()}",
        rr_ms=rr_ms,
        hr_bpm=hr_bpm,
        n_phases=n_phases,
        uid_root=root,
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
    ds.SeriesInstanceUID = uid(info.uid_root, "series", s.number)
    ds.StudyID = f"{info.seed % 100000}"
    ds.SeriesNumber = s.number
    ds.FrameOfReferenceUID = info.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = s.pixels.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = 12 if s.kind != "t1map" and s.pixel_representation == 0 else 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = s.pixel_representation


def _file_meta(sop_class: str, sop_uid: str, ts: str) -> FileMetaDataset:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = UID(sop_class)
    fm.MediaStorageSOPInstanceUID = UID(sop_uid)
    fm.TransferSyntaxUID = UID(ts)
    fm.ImplementationClassUID = UID(IMPLEMENTATION_UID)
    fm.ImplementationVersionName = IMPLEMENTATION_VERSION
    return fm


def _window(s: SeriesData) -> tuple[float, float]:
    if s.signed:  # over the signed range the image holds
        lo, hi = (float(x) for x in np.percentile(s.pixels[..., ::4, ::4], [0.5, 99.5]))
        return round((lo + hi) / 2, 1), round(max(hi - lo, 1.0), 1)
    hi = float(np.percentile(s.pixels[..., ::4, ::4], 99.5)) if s.pixels.size else 1.0  # a subsample suffices
    return round(hi / 2, 1), round(max(hi, 1.0), 1)


def _pixels_bytes(a: np.ndarray, signed: bool = False) -> bytes:
    return np.ascontiguousarray(a, dtype="<i2" if signed else "<u2").tobytes()


_ENCODERS = {"rle": "RLELosslessEncoder", "jpegls": "JPEGLSLosslessEncoder", "j2k": "JPEG2000LosslessEncoder"}


def encode_frames(frames: np.ndarray, compress: str, bits_stored: int, pixel_representation: int = 0) -> list[bytes]:
    """Losslessly encode (N, rows, cols) uint16 (int16 when ``pixel_representation`` is 1) frames with the
    transfer syntax ``compress``."""
    import pydicom.pixels.encoders as enc

    e = getattr(enc, _ENCODERS[compress])
    n, h, w = frames.shape
    kw = dict(rows=h, columns=w, samples_per_pixel=1, bits_allocated=16, bits_stored=bits_stored,
              pixel_representation=pixel_representation, photometric_interpretation="MONOCHROME2", number_of_frames=1)
    dtype = np.int16 if pixel_representation else np.uint16
    return [e.encode(np.ascontiguousarray(f, dtype=dtype), encoding_plugin=_ENCODER_PLUGIN[compress], **kw)
            for f in frames]


def _set_pixels(ds: Dataset, frames: np.ndarray, compress: str | None) -> None:
    """PixelData from (N, rows, cols) integral stored values: native little endian, or encapsulated and
    compressed (two's complement when the dataset's PixelRepresentation is 1)."""
    signed = int(ds.PixelRepresentation) == 1
    if compress is None:
        ds.PixelData = _pixels_bytes(frames, signed)
        ds["PixelData"].VR = "OW"
        return
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate(encode_frames(frames, compress, int(ds.BitsStored), int(signed)))
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


class _SeriesEncoder:
    """Serialises the images of one series fast: the header elements that are the same in every image are
    encoded once, only the per-image ones (UIDs, position, timing, pixels) are encoded per file.

    pydicom's writer costs ~5 ms per file for a 70-element header, more than rendering the image; the output
    is byte-identical to ``Dataset.save_as(enforce_file_format=True)`` (explicit VR little endian body).
    """

    def __init__(self, template: Dataset, variable: set[int]):
        self.runs: list[bytes | int] = []
        cur = Dataset()
        for tag in sorted(set(template.keys()) | variable):
            if tag in variable:
                if len(cur):
                    self.runs.append(self._encode(cur))
                    cur = Dataset()
                self.runs.append(int(tag))
            else:
                cur[tag] = template[tag]
        if len(cur):
            self.runs.append(self._encode(cur))

    @staticmethod
    def _encode(ds: Dataset) -> bytes:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        write_dataset(fp, ds)
        return fp.getvalue()

    def write(self, path: Path, ds: Dataset) -> None:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_file_meta_info

        meta = DicomBytesIO()
        meta.is_little_endian = True
        meta.is_implicit_VR = False
        write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
        parts = [b"\0" * 128, b"DICM", meta.getvalue()]
        for r in self.runs:
            if isinstance(r, bytes):
                parts.append(r)
            elif r in ds:
                one = Dataset()
                one[r] = ds[r]
                parts.append(self._encode(one))
        path.write_bytes(b"".join(parts))


_PER_IMAGE_TAGS = {0x00080018, 0x00200013, 0x00200032, 0x00200037, 0x00201041, 0x00181060, 0x00180082, 0x7FE00010}


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
    gated = bool({"CG", "PPG"} & set(st.scan_options))  # timing tags are only defined for gated scans
    if gated:
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
    if s.signed:  # the values' meaning: rescaled to the signed range (Siemens stores them offset, unsigned)
        ds.RescaleIntercept = _ds(s.rescale[1])
        ds.RescaleSlope = _ds(s.rescale[0])
        ds.RescaleType = "US"
    stored = s.stored
    encoder = _SeriesEncoder(ds, _PER_IMAGE_TAGS)
    for si in range(n_sl):
        pl = s.planes[si]
        ds.ImagePositionPatient = [_ds(x) for x in pl.origin]
        ds.ImageOrientationPatient = [_ds(x, 6) for x in np.concatenate([pl.row, pl.col])]
        ds.SliceLocation = _ds(pl.position, 3)
        for pi in range(n_ph):
            inst += 1
            sop = uid(info.uid_root, "sop", s.number, si, pi)
            ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
            ds.SOPInstanceUID = sop
            ds.InstanceNumber = inst
            if gated:
                ds.TriggerTime = _ds(float(s.trigger_times[pi]), 2)
            if ir:
                ti = s.inversion_times[pi if len(s.inversion_times) > 1 else 0] if s.inversion_times is not None else 300.0
                ds.InversionTime = _ds(float(ti), 1)
            _set_pixels(ds, stored[si, pi][None], compress)
            p = out / f"IM{inst:05d}.dcm"
            encoder.write(p, ds)
            paths.append(p)
    return paths


def _item(**kw) -> Dataset:
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def write_enhanced(out: Path, s: SeriesData, info: StudyInfo, vendor: VendorStyle, *,
                   compress: str | None = None) -> list[Path]:
    """One Enhanced MR Image object holding every (slice, phase) frame of the series.

    Frames are ordered slice-major (all phases of slice 0, then slice 1, ...). Dimensions: StackID,
    InStackPositionNumber (1 = first slice) and TemporalPositionIndex (1 = first phase); cardiac timing per
    frame in CardiacSynchronizationSequence (NominalCardiacTriggerDelayTime, RRIntervalTimeNominal).
    """
    st = s.style
    out.mkdir(parents=True, exist_ok=True)
    n_sl, n_ph, h, w = s.pixels.shape
    ir = "IR" in st.scanning_sequence
    original = st.image_type[0] == "ORIGINAL"
    flavor = {"localizer": "LOCALIZER", "t1map": "CARDIAC", "flow": "CARDIAC_GATED"}.get(s.kind, "CARDIAC_GATED")
    image_type = [st.image_type[0], "PRIMARY", flavor, "NONE" if original else "T1_MAP"]
    sop = uid(info.uid_root, "sop-enh", s.number)
    ts = COMPRESSION[compress] if compress else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = _file_meta(ENHANCED_MR_STORAGE, sop, ts)
    ds.ImageType = image_type
    ds.SOPClassUID = ENHANCED_MR_STORAGE
    ds.SOPInstanceUID = sop
    _common(ds, info, vendor, s)
    dt = info.date + ds.SeriesTime
    ds.AcquisitionDateTime = dt
    ds.AcquisitionDuration = round(n_ph * info.rr_ms / 1000.0 * 12, 1)
    ds.InstanceNumber = 1
    ds.ContentQualification = "RESEARCH"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = _ds(vendor.field_t, 1)
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = Sequence([])
    ds.NumberOfFrames = n_sl * n_ph
    if original:  # MR Pulse Sequence module: only for ORIGINAL images
        ds.PulseSequenceName = st.sequence_name or s.description
        ds.MRAcquisitionType = "2D"
        ds.EchoPulseSequence = "GRADIENT"
        ds.MultiPlanarExcitation = "NO"
        ds.PhaseContrast = "YES" if s.kind == "flow" else "NO"
        ds.TimeOfFlightContrast = "NO"
        ds.SteadyStatePulseSequence = "FREE_PRECESSION" if s.kind in ("cine", "localizer", "tiscout") else "NONE"
        ds.EchoPlanarPulseSequence = "NO"
        ds.SaturationRecovery = "NO"
        ds.SpectrallySelectedSuppression = "NONE"
        ds.OversamplingPhase = "NONE"
        ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
        ds.RectilinearPhaseEncodeReordering = "LINEAR"
        ds.SegmentedKSpaceTraversal = "PARTIAL"
        ds.NumberOfKSpaceTrajectories = 1
        if s.kind == "flow":
            ds.VelocityEncodingAcquisitionSequence = Sequence([_item(VelocityEncodingDirection=[0.0, 0.0, 1.0])])
    # Cardiac Synchronization module
    ds.CardiacSynchronizationTechnique = "RETROSPECTIVE" if n_ph > 1 else "PROSPECTIVE"
    ds.CardiacSignalSource = "ECG"
    ds.CardiacBeatRejectionTechnique = "NONE"
    ds.LowRRValue = _ds(info.rr_ms * 0.8, 0)
    ds.HighRRValue = _ds(info.rr_ms * 1.2, 0)
    if original:  # acquisition details of the gating, not defined for derived images (maps)
        ds.CardiacRRIntervalSpecified = round(float(info.rr_ms), 1)
        ds.IntervalsAcquired = str(12 * max(n_ph // 2, 1))
        ds.IntervalsRejected = "0"
    ds.CardiacFramingType = "FORW"
    ds.HeartRate = str(int(round(info.hr_bpm)))
    ds.NominalInterval = str(int(round(info.rr_ms)))
    ds.CardiacNumberOfImages = n_ph

    # Multi-frame Dimension module
    dim_uid = uid(info.uid_root, "dim", s.number)
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=dim_uid)])
    ds.DimensionOrganizationType = "3D_TEMPORAL" if n_ph > 1 else "3D"
    dims = [(0x00209056, "Stack ID"), (0x00209057, "In-Stack Position Number"), (0x00209128, "Temporal Position Index")]
    ds.DimensionIndexSequence = Sequence([
        _item(DimensionIndexPointer=tag, FunctionalGroupPointer=0x00209111, DimensionOrganizationUID=dim_uid,
              DimensionDescriptionLabel=label) for tag, label in dims])

    same_orientation = all(np.allclose(np.r_[p.row, p.col], np.r_[s.planes[0].row, s.planes[0].col]) for p in s.planes)
    pl0 = s.planes[0]
    shared = Dataset()
    spacing_between = abs(s.planes[1].position - pl0.position) if n_sl > 1 and same_orientation else pl0.thickness
    shared.PixelMeasuresSequence = Sequence([_item(PixelSpacing=[_ds(pl0.spacing), _ds(pl0.spacing)],
                                                   SliceThickness=_ds(pl0.thickness, 2),
                                                   SpacingBetweenSlices=_ds(spacing_between, 3))])
    if same_orientation:
        shared.PlaneOrientationSequence = Sequence([_item(ImageOrientationPatient=[
            _ds(x, 6) for x in np.r_[pl0.row, pl0.col]])])
    shared.FrameAnatomySequence = Sequence([_item(
        AnatomicRegionSequence=Sequence([_code("80891009", "SCT", "Heart")]), FrameLaterality="U")])
    shared.PixelValueTransformationSequence = Sequence([_item(RescaleIntercept=_ds(s.rescale[1]), RescaleSlope=_ds(s.rescale[0]),
                                                              RescaleType="US")])
    wc, ww = _window(s)
    shared.FrameVOILUTSequence = Sequence([_item(WindowCenter=_ds(wc, 1), WindowWidth=_ds(ww, 1))])
    descr = dict(PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE",
                 ComplexImageComponent="PHASE" if s.kind == "flow" else "REAL" if s.signed else "MAGNITUDE",
                 AcquisitionContrast={"lge": "T1", "t1map": "T1", "flow": "FLOW_ENCODED", "tiscout": "T1"}.get(
                     s.kind, "UNKNOWN"))
    for k, v in descr.items():
        setattr(ds, k, v)
    shared.MRImageFrameTypeSequence = Sequence([_item(FrameType=image_type, **descr)])
    shared.MRTimingAndRelatedParametersSequence = Sequence([_item(
        RepetitionTime=_ds(st.repetition_ms, 2), FlipAngle=_ds(st.flip_deg, 1), EchoTrainLength=1,
        RFEchoTrainLength=1, GradientEchoTrainLength=1, SpecificAbsorptionRateSequence=Sequence([
            _item(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY", SpecificAbsorptionRateValue=1.2)]),
        GradientOutputType="DB_DT", GradientOutput=10.0, OperatingModeSequence=Sequence([
            _item(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL"),
            _item(OperatingModeType="RF", OperatingMode="IEC_NORMAL"),
            _item(OperatingModeType="GRADIENT", OperatingMode="IEC_NORMAL")]))])
    shared.MRFOVGeometrySequence = Sequence([_item(
        InPlanePhaseEncodingDirection="ROW", MRAcquisitionFrequencyEncodingSteps=w,
        MRAcquisitionPhaseEncodingStepsInPlane=h, PercentSampling=100.0, PercentPhaseFieldOfView=100.0 * h / w)])
    shared.MREchoSequence = Sequence([_item(EffectiveEchoTime=float(st.echo_ms))])
    shared.MRImagingModifierSequence = Sequence([_item(
        MagnetizationTransfer="NONE", BloodSignalNulling="YES" if s.blood_nulled else "NO", Tagging="NONE",
        TransmitterFrequency=round(42.577478 * vendor.field_t, 6), PixelBandwidth=930.0)])
    shared.MRReceiveCoilSequence = Sequence([_item(
        ReceiveCoilName="Cardiac", ReceiveCoilManufacturerName=vendor.manufacturer, ReceiveCoilType="MULTICOIL",
        QuadratureReceiveCoil="NO", MultiCoilDefinitionSequence=Sequence([
            _item(MultiCoilElementName="H1", MultiCoilElementUsed="YES")]))])
    shared.MRTransmitCoilSequence = Sequence([_item(
        TransmitCoilName="Body", TransmitCoilManufacturerName=vendor.manufacturer, TransmitCoilType="BODY")])
    shared.MRAveragesSequence = Sequence([_item(NumberOfAverages=1.0)])
    # one inversion time per frame (per-frame MR modifiers), else None
    frame_tis = s.inversion_times if ir and s.inversion_times is not None and len(s.inversion_times) > 1 else None
    per_frame_ir = frame_tis is not None

    def modifier(ti: float | None) -> Dataset:
        m = _item(InversionRecovery="YES" if ir else "NO", FlowCompensation="NONE", T2Preparation="NO",
                  SpectrallySelectedExcitation="NONE", SpatialPresaturation="NONE", PartialFourier="NO",
                  ParallelAcquisition="NO")
        if ir:
            m.InversionTimes = [float(ti if ti is not None else 300.0)]
        if s.kind == "flow":
            m.FlowCompensation = "NONE"
        return m

    if not per_frame_ir:
        shared.MRModifierSequence = Sequence([modifier(float(s.inversion_times[0]) if ir and s.inversion_times is not None
                                                       else None)])
    if s.kind == "flow":
        shared.MRVelocityEncodingSequence = Sequence([_item(VelocityEncodingDirection=[0.0, 0.0, 1.0],
                                                            VelocityEncodingMinimumValue=-150.0,
                                                            VelocityEncodingMaximumValue=150.0)])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    frames = []
    items = []
    stored = s.stored
    for si in range(n_sl):
        pl = s.planes[si]
        for pi in range(n_ph):
            f = Dataset()
            f.FrameContentSequence = Sequence([_item(
                FrameAcquisitionDateTime=dt, FrameReferenceDateTime=dt, FrameAcquisitionDuration=float(st.repetition_ms),
                StackID="1", InStackPositionNumber=si + 1, TemporalPositionIndex=pi + 1,
                DimensionIndexValues=[1, si + 1, pi + 1])])
            f.PlanePositionSequence = Sequence([_item(ImagePositionPatient=[_ds(x) for x in pl.origin])])
            if not same_orientation:
                f.PlaneOrientationSequence = Sequence([_item(ImageOrientationPatient=[
                    _ds(x, 6) for x in np.r_[pl.row, pl.col]])])
            f.CardiacSynchronizationSequence = Sequence([_item(
                NominalCardiacTriggerDelayTime=float(s.trigger_times[pi]), RRIntervalTimeNominal=float(info.rr_ms),
                ActualCardiacTriggerDelayTime=float(s.trigger_times[pi]))])
            if frame_tis is not None:
                f.MRModifierSequence = Sequence([modifier(float(frame_tis[pi]))])
            items.append(f)
            frames.append(stored[si, pi])
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    _set_pixels(ds, np.asarray(frames), compress)
    p = out / "EnhancedMR.dcm"
    ds.save_as(p, enforce_file_format=True)
    return [p]
