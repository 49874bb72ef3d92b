"""Realistic headers of every series type a clinical CMR examination holds, from five vendors, each series
labelled by hand with its role, view and the evidence that must decide it.

Each ``Spec`` below is one series: its vendor naming, the header values a scanner of that vendor writes, the
expected role and view, the words the reason must contain (the deciding evidence) and the public source of the
convention (``SOURCES``). Names are often empty: after anonymisation SeriesDescription and ProtocolName are gone
and only tags can decide, so many series here have no name at all. ``build_protocols(root)`` writes one study per
vendor with pydicom (8x8 pixels, synthetic patient); tests/helpers/protocols.md is the same list as a table
(``render_table()``; tests/test_protocols.py checks that the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
CT = "1.2.840.10008.5.1.4.1.1.2"

SOURCES = {
    "ukbb": "UK Biobank CMR series names: baiwenjia/ukbb_cardiac, data/biobank_utils.py",
    "cmrtk": "real series descriptions with their counts at GE, Philips and Siemens sites: rohanshad/cmr_toolkit, "
             "archive/series_descriptions_master.csv",
    "d2x1001": "Siemens phase contrast: magnitude (M / MAG) and phase (P) series, VENC in the sequence name: "
               "rordenlab/dcm2niix issue #1001",
    "d2x255": "Philips image types M, P and R (the corrected real image a PSIR writes), ImageType "
              "ORIGINAL\\PRIMARY\\R\\...: rordenlab/dcm2niix issues #255 and #194",
    "ps33e": "DICOM PS3.3 Enhanced MR: FrameType values 3-4 (CINE, PERFUSION, LOCALIZER, T1_MAP, ...), "
             "AcquisitionContrast, ComplexImageComponent, PhaseContrast, SaturationRecovery, InversionTimes",
    "ps33": "DICOM PS3.3 MR Image module: ScanningSequence (GR, SE, IR), SequenceVariant (SP, SS, MP), InversionTime, "
            "EchoTime, TriggerTime (absent when not gated)",
    "ps34": "DICOM PS3.4 storage SOP classes: Comprehensive SR, Encapsulated PDF, Secondary Capture, Grayscale "
            "Softcopy Presentation State, CT Image",
    "uih": "United Imaging header style (Manufacturer UIH, SequenceName gre_fsp, lower-case protocol names): "
           "neurolabusc/dcm_qa_uih, Ref/*.json",
    "canon": "Canon/Toshiba sequence names (TrueSSFP, FFE, FastSTIR) in the vendor acronym table of Siemens' "
             "'MRI Acronyms'; Canon classic headers are minimal (no sequence name): rordenlab/dcm2niix Canon/README.md",
    "molli": "MOLLI 5(3)3 and 3(3)3(3)5, ShMOLLI 5(1)1(1)1: Messroghli et al. 2004, Piechnik et al. 2010; one "
             "InversionTime per image, read per file by QIB-Sheffield/mdreg",
    "perf": "first-pass perfusion as a time series with TriggerTime in ms over about a minute (79 frames): "
            "mattiabestiaccia/bioimmagini_II, es_3 data README; GE time-course exports count TriggerTime from the run's start",
}


@dataclass(frozen=True)
class Img:
    """One image at each position of a series."""

    trigger: float | None = None  # TriggerTime, ms
    ti: float | None = None  # InversionTime, ms
    te: float | None = None  # EchoTime, ms
    t: float = 0.0  # AcquisitionTime, seconds after the series started
    image_type: tuple[str, ...] | None = None  # replaces the series' ImageType / FrameType
    component: str | None = None  # Enhanced MR ComplexImageComponent
    value: int = 100  # pixel value (tells images apart after assembly)


@dataclass(frozen=True)
class Spec:
    """One labelled series."""

    vendor: str
    number: int
    description: str  # SeriesDescription ('' = removed, as after anonymisation)
    role: str
    view: str | None
    evidence: tuple[str, ...]  # words the reason must contain: the evidence that decides
    decides: str  # the header values that decide, for the table
    source: str  # key of SOURCES
    protocol: str | None = None  # ProtocolName; None = the description
    sequence: str = ""
    kind: str = "mr"  # mr | enhanced | sr | pdf | sc | ct | pr
    plane: str = "sax"  # sax | 2ch | 3ch | 4ch | lvot | axial | ao | 3plane
    positions: int = 1
    first_position: int = 0  # index of the first slice in the study's short-axis grid
    step_mm: float = 10.0
    images: tuple[Img, ...] = (Img(),)
    interleave_s: float = 0.0  # later positions acquired this much later within each image time (multi-slice runs)
    scanning: tuple[str, ...] = ("GR",)
    variant: tuple[str, ...] = ("SK", "SS")
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "NONE")
    options: tuple[str, ...] = ("CG",)
    acq_type: str = "2D"
    thickness: float = 8.0
    extra: tuple[tuple[str, object], ...] = ()  # further top-level attributes (keyword, value)
    frame_contrast: str | None = None  # Enhanced MR AcquisitionContrast of every frame

    @property
    def key(self) -> tuple[str, int]:
        return (self.vendor, self.number)


VENDORS = {
    "siemens": ("SIEMENS", 1000.0),
    "ge": ("GE MEDICAL SYSTEMS", 700.0),
    "philips": ("Philips Medical Systems", 900.0),
    "canon": ("CANON_MEC", 1000.0),
    "uih": ("UIH", 1000.0),
}


# --- timing of the images at one position --------------------------------------------------------------------


def cine(n: int, rr: float) -> tuple[Img, ...]:
    """A segmented cine: n phases evenly over the RR interval, acquired in one breath-hold."""
    return tuple(Img(trigger=round(p * rr / n, 1)) for p in range(n))


def dynamics_from_trigger(n: int, seconds: float, ti: float | None = None) -> tuple[Img, ...]:
    """GE time course: TriggerTime counts from the first dynamic, one image per heartbeat."""
    step = 1000.0 * seconds / (n - 1)
    return tuple(Img(trigger=round(k * step, 1), ti=ti) for k in range(n))


def dynamics_from_clock(n: int, step_s: float, trigger: float = 100.0) -> tuple[Img, ...]:
    """Siemens / Philips / Canon / UIH dynamics: the same trigger delay each heartbeat, AcquisitionTime advancing."""
    return tuple(Img(trigger=trigger, t=round(k * step_s, 3)) for k in range(n))


def look_locker(tis_by_inversion: tuple[tuple[float, int], ...], rr: float) -> tuple[Img, ...]:
    """MOLLI-type sampling: after each inversion (first TI, images), one image per heartbeat; pauses of 3 beats."""
    out, beat = [], 0
    for ti0, count in tis_by_inversion:
        for k in range(count):
            out.append(Img(trigger=400.0, ti=ti0 + k * rr, t=round(beat * rr / 1000.0, 3)))
            beat += 1
        beat += 3
    return tuple(out)


def molli_5_3_3(rr: float, first: float = 100.0, second: float = 180.0) -> tuple[Img, ...]:
    return look_locker(((first, 5), (second, 3)), rr)


def molli_3_3_3_3_5(rr: float) -> tuple[Img, ...]:
    return look_locker(((100.0, 3), (180.0, 3), (260.0, 5)), rr)


def shmolli(rr: float) -> tuple[Img, ...]:
    return look_locker(((100.0, 5), (180.0, 1), (260.0, 1)), rr)


def ti_scout(n: int, rr: float) -> tuple[Img, ...]:
    """Look-Locker cine IR: n images over one RR interval after one inversion, each with its own TI."""
    return tuple(Img(trigger=round(p * rr / n, 1), ti=round(110.0 + p * rr / n, 1)) for p in range(n))


def echoes(tes: tuple[float, ...]) -> tuple[Img, ...]:
    return tuple(Img(trigger=400.0, te=te) for te in tes)


def realtime(n: int, step_ms: float) -> tuple[Img, ...]:
    """Ungated real-time cine: no TriggerTime, frames step_ms apart."""
    return tuple(Img(t=round(k * step_ms / 1000.0, 3)) for k in range(n))


def repeats(n: int, step_s: float) -> tuple[Img, ...]:
    """Several images at one position with nothing varying but the acquisition time (T2-prep images, SASHA)."""
    return tuple(Img(trigger=400.0, t=round(k * step_s, 3)) for k in range(n))


# --- the protocol ------------------------------------------------------------------------------------------

SIEMENS_RR, GE_RR, PHILIPS_RR, CANON_RR, UIH_RR = (VENDORS[v][1] for v in VENDORS)
M = ("ORIGINAL", "PRIMARY", "M", "NONE")
P = ("ORIGINAL", "PRIMARY", "P", "NONE")
IR = ("GR", "IR")
MP = ("SK", "SP", "MP")
SE = ("SE",)
SEIR = ("SE", "IR")
NAME = "name"
EMPTY = "empty names: "


def _siemens() -> list[Spec]:
    v, rr = "siemens", SIEMENS_RR
    c = cine(16, rr)
    sax_split = [
        Spec(v, 2 + k, f"CINE_segmented_SAX_b{k + 1}", "cine", "SAX", ("16 phases over the RR interval", "name 'cine'"),
             "name; 16 TriggerTimes within RR, no IR; one series per slice", "ukbb", sequence="*tfi2d1_12",
             first_position=k, images=c)
        for k in range(4)
    ]
    flow = cine(20, rr)
    return [
        Spec(v, 1, "AAHeart_Scout", "localizer", None, ("name 'scout'",), "name; 3 orthogonal planes", "cmrtk",
             sequence="*fl2d1", plane="3plane"),
        *sax_split,
        Spec(v, 6, "CINE_segmented_LAX_2Ch", "cine", "2CH", ("16 phases",), "name; TriggerTimes within RR", "ukbb",
             sequence="*tfi2d1_12", plane="2ch", images=c),
        Spec(v, 7, "CINE_segmented_LAX_4Ch", "cine", "4CH", ("16 phases",), "name; TriggerTimes within RR", "ukbb",
             sequence="*tfi2d1_12", plane="4ch", images=c),
        Spec(v, 8, "CINE_segmented_LVOT", "cine", "LVOT", ("16 phases",), "name; TriggerTimes within RR", "ukbb",
             sequence="*tfi2d1_12", plane="lvot", images=c),
        Spec(v, 9, "", "cine", "LAX", ("16 phases over the RR interval", "no inversion recovery"),
             EMPTY + "16 TriggerTimes within RR, no IR; plane perpendicular to the SAX stack", "ps33", plane="3ch",
             images=c),
        Spec(v, 10, "flow_250_tp_AoV_bh_ePAT@c_MAG", "flow", None, ("VENC 250", "magnitude"),
             "SequenceName *fl2d1_v250in (VENC); ImageType M", "d2x1001", sequence="*fl2d1_v250in", plane="ao",
             images=flow, image_type=("ORIGINAL", "PRIMARY", "M", "RETRO", "DIS2D")),
        Spec(v, 11, "flow_250_tp_AoV_bh_ePAT@c_P", "flow", None, ("VENC 250", "phase"),
             "SequenceName *fl2d1_v250in (VENC); ImageType P", "d2x1001", sequence="*fl2d1_v250in", plane="ao",
             images=flow, image_type=("ORIGINAL", "PRIMARY", "P", "RETRO", "DIS2D")),
        Spec(v, 12, "", "flow", None, ("VENC 150",), EMPTY + "SequenceName *fl2d1_v150in (VENC); ImageType P",
             "d2x1001", sequence="*fl2d1_v150in", plane="ao", images=flow, image_type=P),
        Spec(v, 13, "ShMOLLI_192i_SAX_b2s", "t1_mapping", None, ("7 (100-4100 ms) inversion times",),
             "name; 7 InversionTimes at one position", "ukbb", first_position=1, images=shmolli(rr), scanning=IR,
             variant=MP),
        Spec(v, 14, "ShMOLLI_192i_SAX_b2s_SAX_b2s_SAX_b2s_T1MAP", "t1_map", None, ("'map' ends the name",),
             "name ending T1MAP; one image per position", "ukbb", first_position=1,
             image_type=("DERIVED", "PRIMARY", "M", "NONE")),
        Spec(v, 15, "cine_tagging_3sl_SAX_b1s", "tagging", None, ("name 'tagging'",), "name", "ukbb",
             sequence="*fl2d9_grid", first_position=2, images=cine(20, rr), variant=("SK", "SP")),
        Spec(v, 16, "T1Map_LongT1_SA_MOCO", "t1_mapping", None, ("8 (100-4100 ms) inversion times", "MOCO"),
             "name; 8 InversionTimes at one position; ImageType MOCO", "cmrtk", first_position=2,
             images=molli_5_3_3(rr), scanning=IR, variant=MP, image_type=("DERIVED", "PRIMARY", "M", "MOCO")),
        Spec(v, 17, "T1Map_LongT1_SA_MOCO_T1", "t1_map", None, ("ImageType T1 MAP",), "ImageType T1 MAP", "cmrtk",
             first_position=2, image_type=("DERIVED", "PRIMARY", "T1 MAP", "MOCO")),
        Spec(v, 18, "", "t1_map", None, ("ImageType T1 MAP",), EMPTY + "ImageType T1 MAP", "cmrtk", first_position=1,
             image_type=("DERIVED", "PRIMARY", "T1 MAP", "T1")),
        Spec(v, 19, "T2Map_TrueFISP_mid_SA_MOCO_T2", "t2_map", None, ("ImageType T2 MAP",), "ImageType T2 MAP",
             "cmrtk", first_position=2, image_type=("DERIVED", "PRIMARY", "T2 MAP", "MOCO")),
        Spec(v, 20, "REST_PERFUSION_(AERA_REF.)_MOCO", "perfusion", None, ("name 'perf'", "rest", "40 dynamics"),
             "name; 40 dynamics 1 s apart (AcquisitionTime) at 3 positions", "cmrtk", sequence="*tfl2d1",
             positions=3, step_mm=20.0, images=dynamics_from_clock(40, 1.0), interleave_s=0.15, variant=MP,
             image_type=("DERIVED", "PRIMARY", "M", "MOCO")),
        Spec(v, 21, "STRESS_PERFUSION_AIF", "perfusion", None, ("arterial-input-function", "stress"),
             "name (AIF of a dual-sequence perfusion); 40 dynamics at 1 position", "cmrtk", sequence="*tfl2d1",
             first_position=2, images=dynamics_from_clock(40, 1.0), variant=MP),
        Spec(v, 22, "SAX_DE_2D_400_mBH_MAG", "lge", "SAX", ("name 'de'", "magnitude image (name 'MAG')"),
             "name; IR, TI 400 ms, one image per position; '_MAG' of a PSIR pair", "cmrtk", sequence="*tfi2d1",
             positions=4, images=(Img(trigger=450.0, ti=400.0, value=100),), scanning=IR, variant=MP,
             image_type=("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D")),
        Spec(v, 23, "SAX_DE_2D_400_mBH_PSIR", "lge", "SAX", ("phase-sensitive (PSIR) real image",
                                                             "PSIR pair with magnitude series #22"),
             "name; IR, TI 400 ms; '_PSIR' companion at the same positions", "cmrtk", sequence="*tfi2d1",
             positions=4, images=(Img(trigger=450.0, ti=400.0, value=2000),), scanning=IR, variant=MP,
             image_type=("DERIVED", "PRIMARY", "M", "NORM", "DIS2D")),
        Spec(v, 24, "tfi_psir_single-shot_4_chamber_stack_MAG", "lge", "4CH", ("single-shot", "name 'MAG'"),
             "name; IR, TI 380 ms; 3 parallel 4CH slices", "cmrtk", sequence="*tfi2d1", plane="4ch", positions=3,
             step_mm=8.0, images=(Img(trigger=450.0, ti=380.0),), scanning=IR, variant=MP),
        Spec(v, 25, "DB_T2TSE_SAX", "t2w", None, ("T2-weighted (name 'db')",), "name; spin echo, TE 60 ms", "cmrtk",
             sequence="*tse2d1_15", positions=3, step_mm=20.0, images=(Img(trigger=500.0, te=60.0),), scanning=SE,
             variant=("SK", "SP")),
        Spec(v, 26, "Trufi_Cine_SAX_InlineVF", "derived", None, ("name 'inlinevf'",),
             "name (inline ventricular-function result)", "cmrtk", sequence="*tfi2d1_12", images=c,
             image_type=("DERIVED", "PRIMARY", "M", "NONE")),
        Spec(v, 27, "EvidenceDocument", "sr", None, ("structured report",), "SOP class Comprehensive SR", "ps34",
             kind="sr"),
        Spec(v, 28, "SASHA_T1_SAX", "t1_mapping", None, ("10 images at one position",),
             "name; 10 saturation-recovery images at one position (no InversionTime)", "molli", first_position=2,
             images=repeats(10, 1.0), variant=MP),
    ]


def _ge() -> list[Spec]:
    v, rr = "ge", GE_RR
    c = cine(20, rr)
    return [
        Spec(v, 1, "3-pl_Loc_Fiesta", "localizer", None, ("name '3-pl'",), "name; 3 orthogonal planes", "cmrtk",
             plane="3plane"),
        Spec(v, 2, "", "cine", "SAX", ("20 phases over the RR interval", "at 4 positions"),
             EMPTY + "20 TriggerTimes within RR at 4 parallel positions, no IR", "ps33", positions=4, images=c,
             options=("FAST_GEMS", "CG")),
        Spec(v, 3, "4CH_FIESTA_BH", "cine", "4CH", ("name 'fiesta'",), "name; TriggerTimes within RR", "cmrtk",
             plane="4ch", images=c),
        Spec(v, 4, "2CH_FIESTA_BH", "cine", "2CH", ("name 'fiesta'",), "name; TriggerTimes within RR", "cmrtk",
             plane="2ch", images=c),
        Spec(v, 5, "LV3CH_FIESTA_BH", "cine", "3CH", ("name 'fiesta'",), "name; TriggerTimes within RR", "cmrtk",
             plane="3ch", images=c),
        Spec(v, 6, "", "perfusion", None, ("79 dynamics over 55 s", "TriggerTime counting from the start of the run"),
             EMPTY + "79 images at one position, TriggerTime 0-55 s; saturation-prepared (MP, no IR), TI 100 ms",
             "perf", first_position=1, images=dynamics_from_trigger(79, 55.0, ti=100.0), variant=("SS", "SP", "MP"),
             options=("FAST_GEMS", "CG")),
        Spec(v, 7, "CINE_IR", "ti_scout", None, ("name 'cine_ir'",), "name; IR, 20 TriggerTimes and TIs within RR",
             "cmrtk", plane="4ch", images=ti_scout(20, rr), scanning=IR, variant=MP),
        Spec(v, 8, "SAX_IrP-FGRE_TI=240", "lge", "SAX", ("name 'irp-fgre'", "InversionTime 240 ms"),
             "name; IR, TI 240 ms, one image per position", "cmrtk", positions=4,
             images=(Img(trigger=400.0, ti=240.0),), scanning=IR, variant=MP),
        Spec(v, 9, "MAG:DE_4CH_2D_MDE", "lge", "4CH", ("magnitude image (name 'MAG')",),
             "name prefix MAG: of a PSIR pair; IR, TI 260 ms", "cmrtk", plane="4ch",
             images=(Img(trigger=400.0, ti=260.0),), scanning=IR, variant=MP),
        Spec(v, 10, "PS:DE_4CH_2D_MDE", "lge", "4CH", ("phase-sensitive (PSIR) real image (name 'PS:')",
                                                       "PSIR pair with magnitude series #9"),
             "name prefix PS: (phase-sensitive); IR, TI 260 ms", "cmrtk", plane="4ch",
             images=(Img(trigger=400.0, ti=260.0),), scanning=IR, variant=MP),
        Spec(v, 11, "PA_FastPC_V=250_BH", "flow", None, ("name 'fastpc'", "v=250"), "name (FastPC, V=250)", "cmrtk",
             plane="ao", images=c, image_type=("ORIGINAL", "PRIMARY", "OTHER")),
        Spec(v, 12, "SMART1Map_4CH_T1Map_ARC_PRE_BH", "t1_map", None, ("native, name 'pre'", "one image per position"),
             "name (SMART1Map, PRE); one image", "cmrtk", plane="4ch", image_type=("ORIGINAL", "PRIMARY", "OTHER")),
        Spec(v, 13, "4CH_MOLLI_ARC_POST_BH", "t1_mapping", None, ("8 (80-2880 ms) inversion times", "post-contrast"),
             "name (MOLLI, POST); 8 InversionTimes at one position", "cmrtk", plane="4ch",
             images=molli_5_3_3(rr, 80.0, 160.0), scanning=IR, variant=MP),
        Spec(v, 14, "SAX_T2_DIRFSE_BH", "t2w", None, ("T2-weighted (name 't2')",), "name; spin echo, TE 70 ms", "cmrtk",
             positions=4, images=(Img(trigger=450.0, te=70.0),), scanning=SE),
        Spec(v, 15, "Short_AX_MFGRE_8ec_BH", "t2star", None, ("8 (2-18 ms) echo times",),
             "name; 8 EchoTimes 2.3-18.4 ms at one position", "cmrtk", first_position=1,
             images=echoes(tuple(round(2.3 * k, 1) for k in range(1, 9))), variant=("SP",)),
        Spec(v, 16, "SAX_T2MAP_FSE_BH", "t2_mapping", None, ("4 (10-70 ms) echo times",),
             "name; 4 EchoTimes at one position, spin echo", "cmrtk", first_position=1,
             images=echoes((10.0, 30.0, 50.0, 70.0)), scanning=SE),
        Spec(v, 17, "3D_MDE", "lge", "SAX", ("name 'mde'", "3D"), "name; IR, TI 280 ms, MRAcquisitionType 3D",
             "cmrtk", positions=20, step_mm=2.0, thickness=2.0, images=(Img(trigger=400.0, ti=280.0),), scanning=IR,
             variant=MP, acq_type="3D"),
        Spec(v, 18, "SAX_Tags_Grid_T2_FGRE_BH", "tagging", None, ("name 'tags'",), "name", "cmrtk", first_position=1,
             images=c, variant=("SP",)),
        Spec(v, 19, "oAX_Coronary_T2_prep_MSLAB_NAV", "angio", None, ("name 'coro'",), "name; 3D, 30 partitions",
             "cmrtk", plane="axial", positions=30, step_mm=1.5, thickness=1.5, images=(Img(trigger=600.0),),
             acq_type="3D"),
        Spec(v, 20, "Screen Save", "derived", None, ("secondary capture",), "SOP class Secondary Capture", "ps34",
             kind="sc"),
        Spec(v, 21, "Calcium Score", "non_mr", None, ("non-MR (CT)",), "Modality CT", "ps34", kind="ct"),
        Spec(v, 22, "R2*:_CSE_Ax_T2*_BH", "t2star_map", None, ("T2* map (name 'r2*', one image per position)",),
             "name (GE's 'R2*:' prefix of a computed map); one image per position", "cmrtk", plane="axial",
             positions=3, step_mm=10.0, image_type=("DERIVED", "PRIMARY", "OTHER")),
    ]


def _philips() -> list[Spec]:
    v, rr = "philips", PHILIPS_RR
    c = cine(16, rr)
    psir = tuple(Img(trigger=400.0, ti=280.0, image_type=("ORIGINAL", "PRIMARY", t, "IR"), value=val)
                 for t, val in (("M", 100), ("R", 3000)))
    return [
        Spec(v, 1, "SURVEY_BFFE", "localizer", None, ("name 'survey'",), "name; 3 orthogonal planes", "cmrtk",
             plane="3plane"),
        Spec(v, 2, "bFFE_BH_SA", "cine", "SAX", ("name 'bffe'", "16 phases"),
             "name; Enhanced MR, 16 trigger delays per position", "cmrtk", kind="enhanced", positions=4, images=c,
             image_type=("ORIGINAL", "PRIMARY", "CINE", "NONE")),
        Spec(v, 3, "bFFE_BH_4CH", "cine", "4CH", ("name 'bffe'",), "name; TriggerTimes within RR", "cmrtk",
             plane="4ch", images=c),
        Spec(v, 4, "", "cine", "LAX", ("16 phases over the RR interval", "SteadyStatePulseSequence FREE_PRECESSION"),
             EMPTY + "Enhanced MR, 16 trigger delays within RR; SteadyStatePulseSequence FREE_PRECESSION", "ps33e",
             kind="enhanced", plane="2ch", images=c, image_type=("ORIGINAL", "PRIMARY", "CINE", "NONE"),
             extra=(("SteadyStatePulseSequence", "FREE_PRECESSION"),)),
        Spec(v, 5, "PSIR_TFE_BH", "lge", "SAX", ("PSIR pair in one series", "ImageType M and R"),
             "ImageType M and R images at each position (one series); TI 280 ms", "d2x255", positions=4, images=psir,
             variant=MP),
        Spec(v, 6, "", "lge", "LAX", ("ComplexImageComponent MAGNITUDE and REAL", "InversionTime 300 ms"),
             EMPTY + "Enhanced MR, InversionRecovery YES, InversionTimes 300 ms; MAGNITUDE and REAL frames", "ps33e",
             kind="enhanced", plane="2ch",
             images=tuple(Img(trigger=400.0, ti=300.0, component=k, value=val)
                          for k, val in (("MAGNITUDE", 100), ("REAL", 3000))),
             scanning=IR, image_type=("ORIGINAL", "PRIMARY", "T1", "NONE")),
        Spec(v, 7, "VLA_DELAYED_ENHANCEMENT", "lge", "2CH", ("name 'delay'", "InversionTime 260 ms"),
             "name; TI 260 ms (SequenceVariant MP)", "cmrtk", plane="2ch", images=(Img(trigger=400.0, ti=260.0),),
             variant=MP),
        Spec(v, 8, "", "flow", None, ("PhaseContrast YES",),
             EMPTY + "Enhanced MR PhaseContrast YES; MAGNITUDE and PHASE frames", "ps33e", kind="enhanced", plane="ao",
             images=tuple(Img(trigger=p.trigger, component=k) for p in cine(16, rr) for k in ("MAGNITUDE", "PHASE")),
             extra=(("PhaseContrast", "YES"),), frame_contrast="FLOW_ENCODED",
             image_type=("ORIGINAL", "PRIMARY", "VELOCITY", "NONE")),
        Spec(v, 9, "T1_MOLLI_MAP_native_PRE", "t1_map", None, ("ImageType T1_MAP", "native"),
             "Enhanced MR FrameType DERIVED\\PRIMARY\\T1\\T1_MAP", "ps33e", kind="enhanced", first_position=1,
             image_type=("DERIVED", "PRIMARY", "T1", "T1_MAP")),
        Spec(v, 10, "", "t1_mapping", None, ("11 (100-3860 ms) inversion times", "MOLLI"),
             EMPTY + "Enhanced MR, 11 InversionTimes at one position spread over 4.2 RR", "molli", kind="enhanced",
             first_position=1, images=molli_3_3_3_3_5(rr), scanning=IR, image_type=("ORIGINAL", "PRIMARY", "T1", "NONE"),
             frame_contrast="T1"),
        Spec(v, 11, "mGraSE_BB_Sense_T2_MAP", "t2_map", None, ("ImageType T2 MAP",),
             "ImageType ORIGINAL\\PRIMARY\\T2 MAP (Philips maps are ORIGINAL)", "cmrtk", first_position=1,
             image_type=("ORIGINAL", "PRIMARY", "T2 MAP", "SE"), scanning=SE),
        Spec(v, 12, "T2_star_SA_MID", "t2star", None, ("8 (2-18 ms) echo times",), "name; 8 EchoTimes at one position",
             "cmrtk", first_position=2, images=echoes(tuple(round(2.3 * k, 1) for k in range(1, 9))), variant=("SP",)),
        Spec(v, 13, "T2w_BB_FS", "t2w", None, ("T2-weighted (name 't2w')",), "name; spin echo, TE 80 ms", "cmrtk",
             positions=3, step_mm=20.0, images=(Img(trigger=500.0, te=80.0),), scanning=SE),
        Spec(v, 14, "3D_TFE_NAV_WHOLE__HEART", "angio", None, ("name '3d_tfe_nav'",), "name; 3D, 30 partitions",
             "cmrtk", plane="axial", positions=30, step_mm=1.5, thickness=1.5, images=(Img(trigger=600.0),),
             acq_type="3D"),
        Spec(v, 15, "", "perfusion", None, ("AcquisitionContrast PERFUSION", "30 dynamics"),
             EMPTY + "Enhanced MR AcquisitionContrast PERFUSION, FrameType PERFUSION, SaturationRecovery YES; "
                     "30 dynamics 0.9 s apart at 3 positions", "ps33e", kind="enhanced", positions=3, step_mm=20.0,
             images=dynamics_from_clock(30, 0.9), interleave_s=0.15, frame_contrast="PERFUSION",
             image_type=("ORIGINAL", "PRIMARY", "PERFUSION", "NONE"), extra=(("SaturationRecovery", "YES"),)),
        Spec(v, 16, "IR_TFE_LL", "ti_scout", None, ("name 'll'",), "name (LL = Look-Locker); 25 TIs within RR",
             "cmrtk", first_position=2, images=ti_scout(25, rr), variant=MP),
        Spec(v, 17, "FFE_GRID_TAG", "tagging", None, ("name 'grid'",), "name", "cmrtk", first_position=1, images=c,
             variant=("SP",)),
        Spec(v, 18, "Cardiac MR report", "document", None, ("encapsulated document",), "SOP class Encapsulated PDF",
             "ps34", kind="pdf"),
        Spec(v, 19, "ao_sQFLOW_BH", "flow", None, ("name 'qflow'", "phase, ImageType P"),
             "name; ImageType M and P images in one series", "cmrtk", plane="ao",
             images=tuple(Img(trigger=p.trigger, image_type=("ORIGINAL", "PRIMARY", t, "PCA"))
                          for p in cine(16, rr) for t in ("M", "P"))),
        Spec(v, 20, "", "t2star_map", None, ("ImageType T2_STAR_MAP",),
             EMPTY + "Enhanced MR FrameType DERIVED\\PRIMARY\\T2_STAR\\T2_STAR_MAP", "ps33e", kind="enhanced",
             first_position=2, image_type=("DERIVED", "PRIMARY", "T2_STAR", "T2_STAR_MAP")),
    ]


def _canon() -> list[Spec]:
    v, rr = "canon", CANON_RR
    c = cine(12, rr)
    return [
        Spec(v, 1, "3-plane Locator", "localizer", None, ("name '3-plane'",), "name; 3 orthogonal planes", "canon",
             plane="3plane"),
        Spec(v, 2, "SA Cine TrueSSFP", "cine", "SAX", ("bSSFP, name 'truessfp'", "12 phases"),
             "name; 12 TriggerTimes within RR at 4 positions", "canon", positions=4, images=c),
        Spec(v, 3, "4ch Cine TrueSSFP", "cine", "4CH", ("12 phases",), "name; TriggerTimes within RR", "canon",
             plane="4ch", images=c),
        Spec(v, 4, "LVOT Cine FFE", "cine", "LVOT", ("spoiled gradient echo",), "name (FFE); SequenceVariant SP",
             "canon", plane="lvot", images=c, variant=("SP",)),
        Spec(v, 5, "", "cine", "LAX", ("12 phases over the RR interval",), EMPTY + "12 TriggerTimes within RR, no IR",
             "ps33", plane="3ch", images=c),
        Spec(v, 6, "Perfusion stress", "perfusion", None, ("stress", "40 dynamics"),
             "name; 40 dynamics 0.8 s apart at 3 positions", "canon", positions=3, step_mm=20.0,
             images=dynamics_from_clock(40, 0.8), interleave_s=0.15, variant=MP),
        Spec(v, 7, "Perfusion rest", "perfusion", None, ("rest", "40 dynamics"),
             "name; 40 dynamics 1 s apart at 3 positions", "canon", positions=3, step_mm=20.0,
             images=dynamics_from_clock(40, 1.0), interleave_s=0.15, variant=MP),
        Spec(v, 8, "", "ti_scout", None, ("24 (110-1068 ms) inversion times", "within 1.0 RR"),
             EMPTY + "IR; 24 InversionTimes at one position within one RR interval", "ps33", first_position=2,
             images=ti_scout(24, rr), scanning=IR, variant=MP),
        Spec(v, 9, "SA_LGE_FFE_IR", "lge", "SAX", ("name 'lge'",), "name; IR, TI 300 ms", "canon", positions=4,
             images=(Img(trigger=450.0, ti=300.0),), scanning=IR, variant=MP),
        Spec(v, 10, "", "lge", "LAX", ("ScanningSequence IR", "one inversion time per position"),
             EMPTY + "ScanningSequence GR\\IR, TI 300 ms, one image", "ps33", plane="2ch",
             images=(Img(trigger=450.0, ti=300.0),), scanning=IR, variant=MP),
        Spec(v, 11, "", "t2_mapping", None, ("6 (10-80 ms) echo times", "spin echo"),
             EMPTY + "spin echo, 6 EchoTimes at one position", "ps33", first_position=1,
             images=echoes((10.0, 24.0, 38.0, 52.0, 66.0, 80.0)), scanning=SE),
        Spec(v, 12, "SA_FastSTIR", "t2w", None, ("name 'stir'",), "name (FastSTIR); spin echo with IR, TI 160 ms",
             "canon", positions=3, step_mm=20.0, images=(Img(trigger=500.0, ti=160.0, te=64.0),), scanning=SEIR),
        Spec(v, 13, "", "t2w", None, ("STIR: spin echo", "short inversion"),
             EMPTY + "ScanningSequence SE\\IR, TI 160 ms, TE 64 ms (not an LGE: spin echo)", "ps33", positions=3,
             step_mm=20.0, images=(Img(trigger=500.0, ti=160.0, te=64.0),), scanning=SEIR),
        Spec(v, 14, "AAo_Flow_PC", "flow", None, ("name 'flow'", "phase, ImageType P"), "name; ImageType P", "canon",
             plane="ao", images=cine(20, rr), image_type=P),
        Spec(v, 15, "", "other", None, ("presentation state",), "SOP class Grayscale Softcopy Presentation State",
             "ps34", kind="pr"),
        Spec(v, 16, "", "derived", None, ("ImageType PROJECTION IMAGE",),
             EMPTY + "ImageType DERIVED\\SECONDARY\\PROJECTION IMAGE", "ps33", plane="axial",
             image_type=("DERIVED", "SECONDARY", "PROJECTION IMAGE")),
    ]


def _uih() -> list[Spec]:
    v, rr = "uih", UIH_RR
    c = cine(20, rr)
    flow = tuple(Img(trigger=p.trigger, t=round(k * 0.05, 3)) for k, p in enumerate(cine(20, rr)))
    return [
        Spec(v, 1, "localizer", "localizer", None, ("name 'localizer'",), "name; 3 orthogonal planes", "uih",
             sequence="gre_fsp", plane="3plane"),
        Spec(v, 2, "cine_sax", "cine", "SAX", ("name 'cine'",), "name; 20 TriggerTimes within RR at 4 positions", "uih",
             positions=4, images=c),
        Spec(v, 3, "cine_4ch", "cine", "4CH", ("name 'cine'",), "name", "uih", plane="4ch", images=c),
        Spec(v, 4, "cine_3ch", "cine", "3CH", ("name 'cine'",), "name", "uih", plane="3ch", images=c),
        Spec(v, 5, "cine_2ch", "cine", "2CH", ("name 'cine'",), "name", "uih", plane="2ch", images=c),
        Spec(v, 6, "lge_sax", "lge", "SAX", ("name 'lge'", "ScanningSequence IR"), "name; IR, TI 300 ms", "uih",
             sequence="gre_fsp", positions=4, images=(Img(trigger=450.0, ti=300.0),), scanning=IR, variant=("SP",)),
        Spec(v, 7, "t1map_molli_sax", "t1_mapping", None, ("11 (100-4260 ms) inversion times",),
             "name; 11 InversionTimes at one position", "molli", first_position=1, images=molli_3_3_3_3_5(rr),
             scanning=IR),
        Spec(v, 8, "t1map_molli_sax_post", "t1_mapping", None, ("post-contrast", "8 (100-4100 ms) inversion times"),
             "name (post); 8 InversionTimes at one position", "molli", first_position=1, images=molli_5_3_3(rr),
             scanning=IR),
        Spec(v, 9, "ECV_map", "t1_map", None, ("ECV map",), "name (ECV); one image per position", "uih",
             first_position=1, image_type=("DERIVED", "PRIMARY", "M", "NONE")),
        Spec(v, 10, "t2map_sax", "t2_mapping", None, ("3 images at one position",),
             "name; 3 T2-prepared images at one position", "uih", first_position=1, images=repeats(3, 3.0)),
        Spec(v, 11, "", "t2star", None, ("8 (2-18 ms) gradient-echo times",), EMPTY + "8 EchoTimes at one position, GR",
             "ps33", sequence="gre_fsp", first_position=2, images=echoes(tuple(round(2.3 * k, 1) for k in range(1, 9))),
             variant=("SP",)),
        Spec(v, 12, "", "cine", "LAX", ("real-time cine", "50 ms apart"),
             EMPTY + "40 frames 50 ms apart (AcquisitionTime), no TriggerTime", "ps33", plane="4ch",
             images=realtime(40, 50.0), options=()),
        Spec(v, 13, "", "flow", None, ("phase image (ImageType P) over the cardiac cycle",),
             EMPTY + "ImageType P, 20 TriggerTimes within RR at one position", "ps33", plane="ao", images=flow,
             image_type=P),
        Spec(v, 14, "", "flow", None, ("same plane, trigger times and acquisition times as the phase series #13",),
             EMPTY + "ImageType M with the plane, TriggerTimes and AcquisitionTimes of series 13", "ps33", plane="ao",
             images=flow, image_type=M),
        Spec(v, 15, "first_pass_perfusion", "perfusion", None, ("name 'first_pass'", "40 dynamics"),
             "name; 40 dynamics 0.9 s apart at 3 positions", "uih", positions=3, step_mm=20.0,
             images=dynamics_from_clock(40, 0.9), interleave_s=0.15, variant=("SP",)),
    ]


def all_specs() -> list[Spec]:
    return _siemens() + _ge() + _philips() + _canon() + _uih()


# --- geometry ----------------------------------------------------------------------------------------------


def _basis() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An oblique short-axis frame (row, column, normal) like a scanner's double-oblique planning."""
    n = np.array([0.55, 0.45, -0.70])
    n /= np.linalg.norm(n)
    r = np.cross(n, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r)
    return r, np.cross(n, r), n


ORIGIN = np.array([-40.0, -60.0, 30.0])
LAX_ANGLE = {"2ch": 0.0, "4ch": 60.0, "3ch": 120.0, "lvot": 140.0}


def _planes(spec: Spec) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(position, row, column) of each slice of a spec."""
    r, c, n = _basis()
    centre = ORIGIN + 1.5 * 10.0 * n
    if spec.plane == "3plane":
        eye = np.eye(3)
        return [(np.array([-100.0, -100.0, 0.0]), eye[a], eye[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    if spec.plane == "sax":
        return [(ORIGIN + (spec.first_position * 10.0 + k * spec.step_mm) * n, r, c) for k in range(spec.positions)]
    if spec.plane in LAX_ANGLE:
        th = np.deg2rad(LAX_ANGLE[spec.plane])
        col = np.cos(th) * r + np.sin(th) * c
        off = np.cross(n, col)
        return [(centre - 40 * n - 40 * col + k * spec.step_mm * off, n, col) for k in range(spec.positions)]
    if spec.plane == "axial":
        return [(np.array([-120.0, -120.0, -60.0 + k * spec.step_mm]), np.eye(3)[0], np.eye(3)[1])
                for k in range(spec.positions)]
    if spec.plane == "ao":  # an oblique plane through the aortic root, neither short nor long axis
        row = np.array([0.8, 0.6, 0.0])
        col = np.cross(row, [0.3, -0.4, 0.866])
        col /= np.linalg.norm(col)
        return [(np.array([-30.0, -20.0, 60.0]), row, col)]
    raise ValueError(spec.plane)


# --- writing -----------------------------------------------------------------------------------------------


@dataclass
class BuiltProtocols:
    """Where each vendor's study was written, and its specs by series number."""

    root: Path
    studies: dict[str, Path] = field(default_factory=dict)
    specs: dict[str, dict[int, Spec]] = field(default_factory=dict)
    series_uids: dict[tuple[str, int], str] = field(default_factory=dict)


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["cmrdx-protocols", *map(str, parts)])


def _base(spec: Spec, sop: str, modality: str, study_uid: str, instance: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.SOPInstanceUID = _uid(spec.vendor, spec.number, instance)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop
    ds.Modality = modality
    ds.Manufacturer = VENDORS[spec.vendor][0]
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = _uid(spec.vendor, spec.number, "series")
    ds.FrameOfReferenceUID = _uid(spec.vendor, "frame-of-reference")
    ds.SeriesNumber = spec.number
    ds.InstanceNumber = instance
    ds.SeriesDescription = spec.description
    ds.ProtocolName = spec.description if spec.protocol is None else spec.protocol
    ds.SeriesTime = f"{10 + spec.number // 60:02d}{spec.number % 60:02d}00"
    ds.StudyDate = ds.SeriesDate = "20240102"
    ds.PatientName = "PROTOCOL^FIXTURE"
    ds.PatientID = "PROTOCOL-0001"
    return ds


def _pixels(ds: Dataset, value: int) -> None:
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (np.full((8, 8), value, dtype=np.uint16) + np.arange(64, dtype=np.uint16).reshape(8, 8)).tobytes()


def _tm(seconds: float) -> str:
    base = 11 * 3600 + seconds
    h, rem = divmod(base, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}{int(m):02d}{s:09.6f}"


def _mr_common(ds: Dataset, spec: Spec, rr: float) -> None:
    ds.SequenceName = spec.sequence
    ds.ScanningSequence = list(spec.scanning)
    ds.SequenceVariant = list(spec.variant)
    ds.ScanOptions = list(spec.options) if spec.options else ""
    ds.MRAcquisitionType = spec.acq_type
    ds.NominalInterval = int(rr)
    ds.HeartRate = int(round(60000 / rr))
    for kw, value in spec.extra:
        setattr(ds, kw, value)


def _write(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _write_classic(spec: Spec, study_uid: str, rr: float, folder: Path) -> None:
    k = 0
    gated = any(img.trigger is not None for img in spec.images)
    for pi, (pos, row, col) in enumerate(_planes(spec)):
        for img in spec.images:
            k += 1
            ds = _base(spec, MR, "MR", study_uid, k)
            _mr_common(ds, spec, rr)
            ds.ImageType = list(img.image_type or spec.image_type)
            ds.ImagePositionPatient = [round(float(x), 4) for x in pos]
            ds.ImageOrientationPatient = [round(float(x), 6) for x in (*row, *col)]
            ds.PixelSpacing = [1.5, 1.5]
            ds.SliceThickness = spec.thickness
            ds.EchoTime = img.te if img.te is not None else 1.4
            if img.ti is not None:
                ds.InversionTime = img.ti
            if img.trigger is not None:
                ds.TriggerTime = img.trigger
            if gated:
                ds.CardiacNumberOfImages = len(spec.images)
            ds.AcquisitionTime = _tm(img.t + pi * spec.interleave_s)
            _pixels(ds, img.value + pi)
            _write(ds, folder / f"IM{k:05d}.dcm")


def _write_enhanced(spec: Spec, study_uid: str, rr: float, folder: Path) -> None:
    ds = _base(spec, ENHANCED_MR, "MR", study_uid, 1)
    _mr_common(ds, spec, rr)
    ds.PulseSequenceName = spec.sequence
    # Enhanced MR keeps these in its own modules and functional groups (EchoPulseSequence, MR Modifier, Cardiac
    # Synchronization), not in the classic attributes.
    for kw in ("SequenceName", "ScanningSequence", "SequenceVariant", "ScanOptions", "NominalInterval", "HeartRate"):
        delattr(ds, kw)
    ds.EchoPulseSequence = "SPIN" if "SE" in spec.scanning else "GRADIENT"
    ds.ImageType = list(spec.image_type)
    components = {img.component for img in spec.images if img.component}
    ds.ComplexImageComponent = components.pop() if len(components) == 1 else ("MIXED" if components else "MAGNITUDE")
    ds.AcquisitionContrast = spec.frame_contrast or "UNKNOWN"
    planes = _planes(spec)
    ds.NumberOfFrames = len(planes) * len(spec.images)
    shared = Dataset()
    meas = Dataset()
    meas.PixelSpacing = [1.5, 1.5]
    meas.SliceThickness = spec.thickness
    shared.PixelMeasuresSequence = Sequence([meas])
    ori = Dataset()
    ori.ImageOrientationPatient = [round(float(x), 6) for x in (*planes[0][1], *planes[0][2])]
    shared.PlaneOrientationSequence = Sequence([ori])
    if "IR" in spec.scanning:
        mod = Dataset()
        mod.InversionRecovery = "YES"
        shared.MRModifierSequence = Sequence([mod])
    if any(img.trigger is not None for img in spec.images):
        card = Dataset()
        card.RRIntervalTimeNominal = rr
        shared.CardiacSynchronizationSequence = Sequence([card])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per, pixels = [], []
    # One temporal position per image time: the magnitude and real (or phase) images of one time share it.
    times = sorted({(img.trigger or 0.0, img.t) for img in spec.images})
    # stored time-major (all positions of the first image time, then the next), as Philips writes dynamics
    for img in spec.images:
        for pi, (pos, _row, _col) in enumerate(planes):
            item = Dataset()
            content = Dataset()
            content.TemporalPositionIndex = times.index((img.trigger or 0.0, img.t)) + 1
            content.StackID = "1"
            content.InStackPositionNumber = pi + 1
            content.FrameAcquisitionDateTime = "20240102" + _tm(img.t + pi * spec.interleave_s)
            item.FrameContentSequence = Sequence([content])
            pp = Dataset()
            pp.ImagePositionPatient = [round(float(x), 4) for x in pos]
            item.PlanePositionSequence = Sequence([pp])
            if img.trigger is not None:
                card = Dataset()
                card.NominalCardiacTriggerDelayTime = img.trigger
                card.RRIntervalTimeNominal = rr
                item.CardiacSynchronizationSequence = Sequence([card])
            ft = Dataset()
            ft.FrameType = list(img.image_type or spec.image_type)
            ft.ComplexImageComponent = img.component or "MAGNITUDE"
            ft.AcquisitionContrast = spec.frame_contrast or "UNKNOWN"
            item.MRImageFrameTypeSequence = Sequence([ft])
            echo = Dataset()
            echo.EffectiveEchoTime = img.te if img.te is not None else 1.4
            item.MREchoSequence = Sequence([echo])
            if img.ti is not None:
                mod = Dataset()
                mod.InversionRecovery = "YES"
                mod.InversionTimes = [img.ti]
                item.MRModifierSequence = Sequence([mod])
            per.append(item)
            pixels.append(np.full((8, 8), img.value + pi, dtype=np.uint16) + np.arange(64, dtype=np.uint16).reshape(8, 8))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    _pixels(ds, 0)
    ds.PixelData = np.stack(pixels).tobytes()
    _write(ds, folder / "EMR00001.dcm")


def _write_other(spec: Spec, study_uid: str, folder: Path) -> None:
    if spec.kind == "sr":
        ds = _base(spec, COMPREHENSIVE_SR, "SR", study_uid, 1)
        ds.ValueType = "CONTAINER"
        ds.ContinuityOfContent = "SEPARATE"
        ds.CompletionFlag = "COMPLETE"
        ds.VerificationFlag = "UNVERIFIED"
    elif spec.kind == "pdf":
        ds = _base(spec, ENCAPSULATED_PDF, "DOC", study_uid, 1)
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.DocumentTitle = spec.description
        ds.BurnedInAnnotation = "YES"
        ds.EncapsulatedDocument = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    elif spec.kind == "pr":
        ds = _base(spec, GSPS, "PR", study_uid, 1)
        ds.ContentLabel = "VIEW"
        ds.PresentationCreationDate = "20240102"
    elif spec.kind == "sc":
        ds = _base(spec, SECONDARY_CAPTURE, "OT", study_uid, 1)
        ds.ConversionType = "WSD"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        _pixels(ds, 500)
    elif spec.kind == "ct":
        ds = _base(spec, CT, "CT", study_uid, 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-120.0, -120.0, 0.0]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.RescaleIntercept, ds.RescaleSlope = -1024.0, 1.0
        _pixels(ds, 1000)
    else:
        raise ValueError(spec.kind)
    _write(ds, folder / "OBJ00001.dcm")


def write_spec(spec: Spec, folder: Path, study_uid: str, rr: float) -> None:
    """Write one series into ``folder``."""
    if spec.kind == "mr":
        _write_classic(spec, study_uid, rr, folder)
    elif spec.kind == "enhanced":
        _write_enhanced(spec, study_uid, rr, folder)
    else:
        _write_other(spec, study_uid, folder)


def build_protocols(root: str | Path, vendors: tuple[str, ...] = tuple(VENDORS)) -> BuiltProtocols:
    """Write one study per vendor under ``root/<vendor>`` (a folder per series)."""
    out = BuiltProtocols(root=Path(root))
    for spec in all_specs():
        if spec.vendor not in vendors:
            continue
        study_uid = _uid(spec.vendor, "study")
        folder = out.root / spec.vendor / f"S{spec.number:03d}"
        write_spec(spec, folder, study_uid, VENDORS[spec.vendor][1])
        out.studies[spec.vendor] = out.root / spec.vendor
        out.specs.setdefault(spec.vendor, {})[spec.number] = spec
        out.series_uids[spec.key] = _uid(spec.vendor, spec.number, "series")
    return out


def perfusion_spec(n: int, step_s: float, *, from_trigger: bool, ti: float | None, positions: int,
                   vendor: str = "ge") -> Spec:
    """A first-pass perfusion series with empty names, for property tests: dynamics counted in the TriggerTime
    (GE) or in the AcquisitionTime (the others), with or without an InversionTime (the saturation delay)."""
    images = dynamics_from_trigger(n, step_s * (n - 1), ti) if from_trigger else tuple(
        replace(img, ti=ti) for img in dynamics_from_clock(n, step_s))
    return Spec(vendor, 90, "", "perfusion", None, ("dynamics",), "", "perf", positions=positions, step_mm=20.0,
                images=images, interleave_s=0.12, variant=("SS", "SP", "MP"))


def render_table() -> str:
    """tests/helpers/protocols.md: every labelled series as a row, then the sources."""
    lines = [
        "# The labelled protocol fixture",
        "",
        "Written by `tests/helpers/protocols.py` (`build_protocols`) and checked by `tests/test_protocols.py`; this",
        "table is generated from the same list (`render_table()`), and a test fails when the two differ. Each row is",
        "one series: its vendor, SeriesDescription (empty after anonymisation when shown as `(none)`), the header",
        "values that decide its type, the expected role and view (view only for the model's roles, cine and lge),",
        "and the public source of the naming or tag convention (keys below).",
        "",
        "| vendor | # | SeriesDescription | what decides | role | view | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in all_specs():
        desc = f"`{s.description}`" if s.description else "(none)"
        lines.append(f"| {s.vendor} | {s.number} | {desc} | {s.decides.replace('|', '/')} | {s.role} | "
                     f"{s.view or '-'} | {s.source} |")
    lines += ["", "Sources:", ""]
    lines += [f"- `{k}`: {v}" for k, v in SOURCES.items()]
    return "\n".join(lines) + "\n"
