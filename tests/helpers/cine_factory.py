"""Small cine studies built from a real DICOM file (pydicom's MR_small.dcm: its pixels and headers) with
cardiac geometry and timing set, in several vendor naming styles, classic or Enhanced MR.

Used by the tests and `make bench`; independent of cmrdx's own phantom generator on purpose, so the DICOM
layer is checked against files it did not write itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pydicom.config
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR = "1.2.840.10008.5.1.4.1.1.4"
ENH = "1.2.840.10008.5.1.4.1.1.4.1"

NAMES = {
    # vendor: cine SAX (format with k for per-slice series), LAX views, LGE SAX, LGE LAX format, seq name
    "siemens": {
        "sax": "CINE_segmented_SAX_b{k}",
        "split_sax": True,
        "lax": {"2CH": "CINE_segmented_LAX_2Ch", "3CH": "CINE_segmented_LAX_3Ch", "4CH": "CINE_segmented_LAX_4Ch", "LVOT": "CINE_segmented_LVOT"},
        "lge_sax": "DE_TI_300_SAX_MAG",
        "lge_lax": "DE_TI_300_{v}",
        "seq": "*tfi2d1_12",
        "manufacturer": "SIEMENS",
    },
    "ge": {
        "sax": "SAX_FIESTA_BH",
        "split_sax": False,
        "lax": {"2CH": "2CH_FIESTA_BH", "3CH": "LV3CH_FIESTA_BH", "4CH": "4CH_FIESTA_BH", "LVOT": "LVOT_FIESTA_BH"},
        "lge_sax": "SAX_IrP-FGRE_TI=240",
        "lge_lax": "{v}_DELAY_TI=260_BH",
        "seq": "fiestac",
        "manufacturer": "GE MEDICAL SYSTEMS",
    },
    "philips": {
        "sax": "sBTFE_BH_M2D",  # no view in the name: the stack geometry must tell
        "split_sax": False,
        "lax": {"2CH": "B-TFE_2CH", "3CH": "B-TFE_3CH", "4CH": "B-TFE_4CH", "LVOT": "B-TFE_LVOT"},
        "lge_sax": "IR_TFE_SA",
        "lge_lax": "IR_TFE_{v}",
        "seq": "B-TFE",
        "manufacturer": "Philips Medical Systems",
    },
    "kaggle": {
        "sax": "sax_{n}",
        "split_sax": True,
        "lax": {"2CH": "2ch_{n}", "4CH": "4ch_{n}"},
        "lge_sax": None,
        "lge_lax": None,
        "seq": "*tfi2d1_12",
        "manufacturer": "SIEMENS",
    },
}


@dataclass
class Built:
    root: Path
    study_uid: str
    n_slices: int
    n_phases: int
    sax_normal: np.ndarray
    series: dict[str, str] = field(default_factory=dict)  # description -> expected "role:view" or "other"
    files: list[Path] = field(default_factory=list)


def _basis(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An oblique short-axis frame: row, column, normal (orthonormal)."""
    rng = np.random.default_rng(seed)
    n = np.array([0.55, 0.45, -0.70]) + rng.normal(0, 0.05, 3)
    n /= np.linalg.norm(n)
    r = np.cross(n, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r)
    c = np.cross(n, r)
    return r, c, n


def _template() -> Dataset:
    return pydicom.dcmread(get_testdata_file("MR_small.dcm"))


def _frame_pixels(base: np.ndarray, slice_k: int, phase: int, n_phases: int, shape: tuple[int, int]) -> np.ndarray:
    """A distinct, deterministic image per (slice, phase): the real image shifted and scaled."""
    img = np.roll(base, shift=(slice_k * 3, phase), axis=(0, 1)).astype(np.float64)
    img *= 0.8 + 0.2 * np.cos(2 * np.pi * phase / max(n_phases, 1))
    if img.shape != shape:
        yy = (np.arange(shape[0]) * base.shape[0] / shape[0]).astype(int)
        xx = (np.arange(shape[1]) * base.shape[1] / shape[1]).astype(int)
        img = img[np.ix_(yy, xx)]
    return np.clip(img, 0, 4000).astype(np.uint16)


def _write(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _classic(tmpl: Dataset, *, study_uid: str, series_uid: str, number: int, desc: str, ipp, row, col, spacing,
             pixels: np.ndarray, trigger: float | None, n_phases: int, rr: float, seq: str, manufacturer: str,
             instance: int, ir: bool = False, image_type=("ORIGINAL", "PRIMARY", "M", "NONE"), series_time: str = "120000",
             ti: float | None = None) -> Dataset:
    ds = copy.deepcopy(tmpl)
    ds.SOPClassUID = MR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = desc
    ds.ProtocolName = desc
    ds.SeriesTime = series_time
    ds.Manufacturer = manufacturer
    ds.SequenceName = seq
    ds.ScanningSequence = ["GR", "IR"] if ir else ["GR"]
    ds.SequenceVariant = ["SP", "MP"] if ir else ["SK", "SS"]
    ds.ScanOptions = "CG"
    ds.ImageType = list(image_type)
    ds.ImagePositionPatient = [float(x) for x in ipp]
    ds.ImageOrientationPatient = [float(x) for x in np.concatenate([row, col])]
    ds.PixelSpacing = [float(spacing), float(spacing)]
    ds.SliceThickness = 8.0
    ds.InstanceNumber = instance
    ds.NominalInterval = int(rr)
    ds.HeartRate = int(round(60000 / rr))
    if ti is not None or ir:
        ds.InversionTime = float(ti if ti is not None else 300.0)
    elif "InversionTime" in ds:
        del ds.InversionTime
    if trigger is not None:
        ds.TriggerTime = float(trigger)
        ds.CardiacNumberOfImages = n_phases
    else:
        for kw in ("TriggerTime", "CardiacNumberOfImages"):
            if kw in ds:
                delattr(ds, kw)
    if "SliceLocation" in ds:
        # A vendor-style SliceLocation with a sign that disagrees with the true order: never to be trusted.
        ds.SliceLocation = -float(np.dot(np.cross(row, col), ipp))
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    ds.PatientName = "PHANTOM^FIXTURE"
    ds.PatientID = "FIXTURE-0001"
    return ds


def build_cine_study(
    root: str | Path,
    *,
    vendor: str = "siemens",
    n_slices: int = 8,
    n_phases: int = 20,
    lax_views: tuple[str, ...] | None = None,
    lge: bool = True,
    distractors: bool = False,
    enhanced_sax: bool = False,
    seed: int = 0,
    drop_phase: tuple[int, int] | None = None,  # (slice, phase) left out
    repeat_slice: int | None = None,  # re-acquire this SAX slice later as its own series
    mixed_matrix: bool = False,  # odd slices at a different matrix
    rr: float = 900.0,
    file_names: str = "sequential",  # or "uid"
    matrix: int | None = None,  # upsample the 64x64 source to matrix x matrix (realistic file sizes)
    compress: str | None = None,  # a transfer syntax UID to re-encode every file with
    slice_step: float = 10.0,  # mm between short-axis slice centres (slices are 8 mm thick)
    skip_slices: tuple[int, ...] = (),  # SAX cine slice positions left out (a gap in the stack)
    slice_offsets: dict[int, float] | None = None,  # mm added to a SAX cine slice's position (uneven spacing)
    rotate_slice: tuple[int, float] | None = None,  # (slice, degrees): that SAX cine slice's axes turned in-plane
    duplicate_slice: int | None = None,  # that SAX cine slice stored twice in its series, different images
    edit: Callable[[Dataset], None] | None = None,  # applied to every written file, values not validated
) -> Built:
    """Write a cine study under ``root``; returns what a reader should find."""
    root = Path(root)
    names = NAMES[vendor]
    tmpl = _template()
    base = tmpl.pixel_array.astype(np.float64)
    if matrix:
        idx = (np.arange(matrix) * base.shape[0] / matrix).astype(int)
        base = base[np.ix_(idx, idx)]
        spacing_scale = 64 / matrix
    else:
        spacing_scale = 1.0
    study_uid = generate_uid()
    row, col, n = _basis(seed)
    origin = np.array([-40.0, -60.0, 30.0])
    gap = slice_step
    spacing = 1.5 * spacing_scale
    built = Built(root=root, study_uid=study_uid, n_slices=n_slices, n_phases=n_phases, sax_normal=n)
    counter = [0]

    def out_path(series_dir: str, inst: int) -> Path:
        counter[0] += 1
        fn = f"IM{counter[0]:05d}.dcm" if file_names == "sequential" else f"{generate_uid()}.dcm"
        return root / series_dir / fn

    number = 1
    # --- short-axis cine ---
    if enhanced_sax:
        uid = generate_uid()
        desc = names["sax"].format(k="", n=number)
        ds = build_enhanced_cine(tmpl, study_uid=study_uid, series_uid=uid, number=number, desc=desc, origin=origin,
                                 row=row, col=col, n=n, gap=gap, spacing=spacing, n_slices=n_slices, n_phases=n_phases, rr=rr, base=base)
        p = root / "sax_enhanced" / "EMR0001.dcm"
        _write(ds, p)
        built.files.append(p)
        built.series[desc] = "cine:SAX"
        number += 1
    else:
        sax_uid = generate_uid()
        for k in range(n_slices):
            if names["split_sax"]:
                uid = generate_uid()
                desc = names["sax"].format(k=k + 1, n=number)
                num = number
                number += 1
            else:
                uid, desc, num = sax_uid, names["sax"].format(k="", n=number), number
            if k in skip_slices:  # never acquired (or lost): with one series per slice, its number stays unused
                continue
            built.series[desc] = "cine:SAX"
            shape = (base.shape[0] * 3 // 4,) * 2 if (mixed_matrix and k % 2) else base.shape
            sp = spacing * base.shape[0] / shape[0]
            krow, kcol = row, col
            if rotate_slice is not None and rotate_slice[0] == k:  # same plane, row/column axes turned about the normal
                a = np.deg2rad(rotate_slice[1])
                krow, kcol = np.cos(a) * row + np.sin(a) * col, -np.sin(a) * row + np.cos(a) * col
            copies = 2 if duplicate_slice == k else 1
            for copy_k in range(copies):
                for ph in range(n_phases):
                    if drop_phase == (k, ph):
                        continue
                    ipp = origin + (k * gap + (slice_offsets or {}).get(k, 0.0)) * n
                    px = _frame_pixels(base, k + 150 * copy_k, ph, n_phases, shape)
                    ds = _classic(tmpl, study_uid=study_uid, series_uid=uid, number=num, desc=desc, ipp=ipp, row=krow,
                                  col=kcol, spacing=sp, pixels=px, trigger=ph * rr / n_phases, n_phases=n_phases, rr=rr,
                                  seq=names["seq"], manufacturer=names["manufacturer"], instance=copy_k * n_phases + ph + 1)
                    p = out_path(desc, ph)
                    _write(ds, p)
                    built.files.append(p)
        if not names["split_sax"]:
            number += 1
        if repeat_slice is not None:
            uid = generate_uid()
            desc = names["sax"].format(k=repeat_slice + 1, n=number) + "_repeat"
            built.series[desc] = "cine:SAX"
            for ph in range(n_phases):
                ipp = origin + repeat_slice * gap * n
                px = _frame_pixels(base, repeat_slice + 100, ph, n_phases, base.shape)
                ds = _classic(tmpl, study_uid=study_uid, series_uid=uid, number=number, desc=desc, ipp=ipp, row=row, col=col,
                              spacing=spacing, pixels=px, trigger=ph * rr / n_phases, n_phases=n_phases, rr=rr, seq=names["seq"],
                              manufacturer=names["manufacturer"], instance=ph + 1, series_time="130000")
                p = out_path(desc, ph)
                _write(ds, p)
                built.files.append(p)
            number += 1
    # --- long-axis cines: planes containing the LV long axis (normal perpendicular to the SAX normal) ---
    lax = names["lax"] if lax_views is None else {v: names["lax"][v] for v in lax_views if v in names["lax"]}
    centre = origin + (n_slices - 1) * gap * n / 2
    for i, (view, fmt) in enumerate(lax.items()):
        theta = np.deg2rad({"2CH": 0, "3CH": 120, "4CH": 60, "LVOT": 140}[view])
        lrow = n  # the long axis lies in the plane
        lcol = np.cos(theta) * row + np.sin(theta) * col
        desc = fmt.format(n=number)
        uid = generate_uid()
        built.series[desc] = f"cine:{view}"
        ipp = centre - 40 * lrow - 40 * lcol
        for ph in range(n_phases):
            px = _frame_pixels(base.T, 50 + i, ph, n_phases, base.shape)
            ds = _classic(tmpl, study_uid=study_uid, series_uid=uid, number=number, desc=desc, ipp=ipp, row=lrow, col=lcol,
                          spacing=spacing, pixels=px, trigger=ph * rr / n_phases, n_phases=n_phases, rr=rr, seq=names["seq"],
                          manufacturer=names["manufacturer"], instance=ph + 1)
            p = out_path(desc, ph)
            _write(ds, p)
            built.files.append(p)
        number += 1
    # --- LGE: SAX stack (one image per position) and LAX single images ---
    if lge and names["lge_sax"]:
        uid = generate_uid()
        desc = names["lge_sax"]
        built.series[desc] = "lge:SAX"
        for k in range(n_slices):
            px = _frame_pixels(base, k + 200, 0, 1, base.shape)
            ds = _classic(tmpl, study_uid=study_uid, series_uid=uid, number=number, desc=desc, ipp=origin + k * gap * n,
                          row=row, col=col, spacing=spacing, pixels=px, trigger=None, n_phases=1, rr=rr, seq="*tfl2d1",
                          manufacturer=names["manufacturer"], instance=k + 1, ir=True, ti=280.0, series_time="124000")
            p = out_path(desc, k)
            _write(ds, p)
            built.files.append(p)
        number += 1
        for view in ("2CH", "3CH", "4CH"):
            theta = np.deg2rad({"2CH": 0, "3CH": 120, "4CH": 60}[view])
            lcol = np.cos(theta) * row + np.sin(theta) * col
            desc = names["lge_lax"].format(v=view)
            built.series[desc] = f"lge:{view}"
            px = _frame_pixels(base.T, 300, 0, 1, base.shape)
            ds = _classic(tmpl, study_uid=study_uid, series_uid=generate_uid(), number=number, desc=desc,
                          ipp=centre - 40 * n - 40 * lcol, row=n, col=lcol, spacing=spacing, pixels=px, trigger=None,
                          n_phases=1, rr=rr, seq="*tfl2d1", manufacturer=names["manufacturer"], instance=1, ir=True,
                          ti=280.0, series_time="124500")
            p = out_path(desc, 0)
            _write(ds, p)
            built.files.append(p)
            number += 1
    if distractors:
        number = _distractors(tmpl, built, root, study_uid, number, row, col, n, origin, spacing, rr, base, names)
    if skip_slices:
        built.n_slices = n_slices - len({k for k in skip_slices if 0 <= k < n_slices})
    if edit is not None:
        for p in built.files:
            ds = pydicom.dcmread(p)
            with pydicom.config.disable_value_validation():  # permissive: the edit may plant invalid values
                edit(ds)
                ds.save_as(p, enforce_file_format=True)
    if compress:
        for p in built.files:
            ds = pydicom.dcmread(p)
            ds.compress(compress)  # pydicom's encoders: RLE native, JPEG-LS (pyjpegls), JPEG 2000 (openjpeg)
            ds.save_as(p, enforce_file_format=True)
    return built


def _distractors(tmpl, built, root, study_uid, number, row, col, n, origin, spacing, rr, base, names) -> int:
    man = names["manufacturer"]
    # 3-plane localizer: non-parallel planes in one series
    uid = generate_uid()
    built.series["localizer"] = "other:localizer"
    axes = [np.eye(3)[[0, 1]], np.eye(3)[[0, 2]], np.eye(3)[[1, 2]]]
    for i, (r, c) in enumerate(axes):
        ds = _classic(tmpl, study_uid=study_uid, series_uid=uid, number=number, desc="localizer", ipp=[-100, -100, 0],
                      row=r, col=c, spacing=3.0, pixels=_frame_pixels(base, i, 0, 1, base.shape), trigger=None, n_phases=1,
                      rr=rr, seq="*tfi2d1_192", manufacturer=man, instance=i + 1)
        _write(ds, root / "loc" / f"L{i}.dcm")
    number += 1
    # T1 map (MOLLI): single image, ImageType T1 MAP
    built.series["MOLLI_SAX_T1MAP"] = "other:T1/T2 map"
    ds = _classic(tmpl, study_uid=study_uid, series_uid=generate_uid(), number=number, desc="MOLLI_SAX_T1MAP",
                  ipp=origin + 3 * 10 * n, row=row, col=col, spacing=spacing, pixels=_frame_pixels(base, 7, 0, 1, base.shape),
                  trigger=None, n_phases=1, rr=rr, seq="*tfi2d1_72", manufacturer=man, instance=1,
                  image_type=("DERIVED", "PRIMARY", "T1 MAP", "T1"))
    _write(ds, root / "t1map" / "M1.dcm")
    number += 1
    # flow: phase images with VENC in the sequence name, multi-phase
    uid = generate_uid()
    built.series["Flow_AAo"] = "other:flow"
    for ph in range(10):
        ds = _classic(tmpl, study_uid=study_uid, series_uid=uid, number=number, desc="Flow_AAo", ipp=origin, row=row,
                      col=col, spacing=spacing, pixels=_frame_pixels(base, 9, ph, 10, base.shape), trigger=ph * rr / 10,
                      n_phases=10, rr=rr, seq="*fl2d1_v150in", manufacturer=man, instance=ph + 1,
                      image_type=("ORIGINAL", "PRIMARY", "P", "ND"))
        _write(ds, root / "flow" / f"F{ph}.dcm")
    number += 1
    # TI scout: multi-phase inversion recovery
    uid = generate_uid()
    built.series["TI_Scout_SAX"] = "other:TI scout"
    for ph in range(12):
        ds = _classic(tmpl, study_uid=study_uid, series_uid=uid, number=number, desc="TI_Scout_SAX", ipp=origin, row=row,
                      col=col, spacing=spacing, pixels=_frame_pixels(base, 11, ph, 12, base.shape), trigger=ph * 60.0,
                      n_phases=12, rr=rr, seq="*tfi2d1_12", manufacturer=man, instance=ph + 1, ir=True, ti=100 + 30 * ph)
        _write(ds, root / "tiscout" / f"T{ph}.dcm")
    number += 1
    return number


def build_enhanced_cine(tmpl, *, study_uid, series_uid, number, desc, origin, row, col, n, gap, spacing, n_slices,
                        n_phases, rr, base) -> Dataset:
    """An Enhanced MR multi-frame cine (slices x phases frames) with per-frame functional groups."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENH
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ENH
    ds.Modality = "MR"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.SeriesNumber = number
    ds.InstanceNumber = 1
    ds.SeriesDescription = desc
    ds.Manufacturer = "SIEMENS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.PulseSequenceName = "tfi2d1_12"
    ds.PhaseContrast = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = base.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.NumberOfFrames = n_slices * n_phases
    ds.PatientName = "PHANTOM^FIXTURE"
    ds.PatientID = "FIXTURE-0001"
    shared = Dataset()
    ori = Dataset()
    ori.ImageOrientationPatient = [float(x) for x in np.concatenate([row, col])]
    shared.PlaneOrientationSequence = Sequence([ori])
    meas = Dataset()
    meas.PixelSpacing = [spacing, spacing]
    meas.SliceThickness = 8.0
    shared.PixelMeasuresSequence = Sequence([meas])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    frames = []
    # Stored in time-major order (all slices of phase 0, then phase 1, ...): the reader must not assume order.
    for ph in range(n_phases):
        for k in range(n_slices):
            item = Dataset()
            pos = Dataset()
            pos.ImagePositionPatient = [float(x) for x in origin + k * gap * n]
            item.PlanePositionSequence = Sequence([pos])
            card = Dataset()
            card.NominalCardiacTriggerDelayTime = float(ph * rr / n_phases)
            card.RRIntervalTimeNominal = float(rr)
            item.CardiacSynchronizationSequence = Sequence([card])
            content = Dataset()
            content.StackID = "1"
            content.InStackPositionNumber = k + 1
            content.TemporalPositionIndex = ph + 1
            item.FrameContentSequence = Sequence([content])
            per.append(item)
            frames.append(_frame_pixels(base, k, ph, n_phases, base.shape))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = np.stack(frames).tobytes()
    return ds
