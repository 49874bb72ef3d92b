"""Vendor styles: how each scanner family names and tags the series of a CMR study (see DICOM.md).

A style maps a series kind ("cine", "lge", "localizer", "t1map", "flow", "tiscout") and a view to the header
values that identify it. The expected (role, view) of each description is in ``expected_series``, which is also
what a reader's classifier should assign (tests and the bundled example use it).
"""

from __future__ import annotations

from dataclasses import dataclass

from cmrdx.vocab import CINE_VIEWS, LGE_VIEWS, View


@dataclass(frozen=True)
class SeriesStyle:
    """Identity tags of one series kind. ``description`` may contain ``{view}``, ``{ti}`` and ``{k}``."""

    description: str
    sequence_name: str
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    image_type: tuple[str, ...]
    scan_options: tuple[str, ...] = ("CG",)
    repetition_ms: float = 3.0
    echo_ms: float = 1.3
    flip_deg: float = 50.0


@dataclass(frozen=True)
class VendorStyle:
    name: str
    manufacturer: str
    model: str
    software: str
    field_t: float
    view_names: dict[str, str]  # canonical view -> spelling in descriptions
    lge_view_names: dict[str, str]
    cine: SeriesStyle
    lge: SeriesStyle
    localizer: SeriesStyle
    t1map: SeriesStyle
    flow: SeriesStyle
    tiscout: SeriesStyle
    sax_one_series_per_slice: bool = False


_CINE_TYPE = ("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D")
_IR = ("GR", "IR")

STYLES: dict[str, VendorStyle] = {
    # UK Biobank-like Siemens: one series per SAX breath-hold slice, named b1 (base) .. bN (apex).
    "siemens": VendorStyle(
        name="siemens",
        manufacturer="SIEMENS",
        model="Aera",
        software="syngo MR E11",
        field_t=1.5,
        view_names={"2CH": "LAX_2Ch", "3CH": "LAX_3Ch", "4CH": "LAX_4Ch", "LVOT": "LVOT", "SAX": "SAX"},
        lge_view_names={"SAX": "SAX", "2CH": "2Ch", "3CH": "3Ch", "4CH": "4Ch"},
        cine=SeriesStyle("CINE_segmented_{view}", "*tfi2d1_12", ("GR",), ("SK", "SS"), _CINE_TYPE, ("CG",), 2.8, 1.2, 52),
        lge=SeriesStyle("DE_TI_{ti}_{view}", "*tfl2d1", _IR, ("SK", "SP", "MP"), _CINE_TYPE, ("CG",), 700.0, 3.3, 20),
        localizer=SeriesStyle("localizer", "*tfi2d1_192", ("GR",), ("SK", "SS"), _CINE_TYPE, ("CG",), 3.0, 1.3, 50),
        t1map=SeriesStyle("MOLLI_T1MAP_SAX", "*tfi2d1_72", ("GR",), ("SK", "SS"),
                          ("DERIVED", "PRIMARY", "T1 MAP", "NORM", "MOCO"), ("CG",), 2.6, 1.1, 35),
        flow=SeriesStyle("Flow_AAo_VENC150", "*fl2d1_v150in", ("GR",), ("SP",), ("ORIGINAL", "PRIMARY", "P", "ND"),
                         ("CG",), 5.0, 2.5, 20),
        tiscout=SeriesStyle("TI_Scout", "*tfi2d1_12", _IR, ("SK", "SS", "MP"), _CINE_TYPE, ("CG",), 2.8, 1.2, 50),
        sax_one_series_per_slice=True,
    ),
    "ge": VendorStyle(
        name="ge",
        manufacturer="GE MEDICAL SYSTEMS",
        model="SIGNA Artist",
        software="27\\LX\\MR Software release:RX27.0",
        field_t=1.5,
        view_names={"2CH": "2CH", "3CH": "LV3CH", "4CH": "4CH", "LVOT": "LVOT", "SAX": "SAX"},
        lge_view_names={"SAX": "SAX", "2CH": "2CH", "3CH": "3CH", "4CH": "4CH"},
        cine=SeriesStyle("{view}_FIESTA_BH", "fiestacine2d", ("GR",), ("SS",), ("ORIGINAL", "PRIMARY", "OTHER"),
                         ("CG", "FAST_GEMS"), 3.4, 1.5, 55),
        lge=SeriesStyle("{view}_DELAY_TI={ti}_BH", "irfgre2d", _IR, ("SS", "SK", "MP"), ("ORIGINAL", "PRIMARY", "OTHER"),
                        ("CG", "IR_GEMS"), 6.5, 3.1, 20),
        localizer=SeriesStyle("3-pl_Loc", "fgre2d", ("GR",), ("SS",), ("ORIGINAL", "PRIMARY", "OTHER"), ("FAST_GEMS",),
                              4.0, 1.6, 30),
        t1map=SeriesStyle("SMART1Map", "smart1map", ("GR",), ("SS",), ("DERIVED", "PRIMARY", "T1 MAP"), ("CG",),
                          3.0, 1.2, 35),
        flow=SeriesStyle("FastPC_AAo", "fastpc", ("GR",), ("SS",), ("ORIGINAL", "PRIMARY", "P"), ("CG",), 5.5, 2.8, 20),
        tiscout=SeriesStyle("CINE_IR", "fiestacine2d", _IR, ("SS", "MP"), ("ORIGINAL", "PRIMARY", "OTHER"), ("CG",),
                            3.4, 1.5, 50),
    ),
    "philips": VendorStyle(
        name="philips",
        manufacturer="Philips Medical Systems",
        model="Ingenia",
        software="5.6.1\\5.6.1.2",
        field_t=1.5,
        view_names={"2CH": "2CH", "3CH": "3CH", "4CH": "4CH", "LVOT": "LVOT", "SAX": "M2D_SA"},
        lge_view_names={"SAX": "SA", "2CH": "2CH", "3CH": "3CH", "4CH": "4CH"},
        cine=SeriesStyle("B-TFE_{view}", "B-TFE", ("GR",), ("SS",), ("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"),
                         ("CG",), 2.9, 1.45, 45),
        lge=SeriesStyle("PSIR_{view}", "IR_TFE", _IR, ("SS", "MP"), ("ORIGINAL", "PRIMARY", "M_IR", "M", "IR"),
                        ("CG",), 6.1, 3.0, 25),
        localizer=SeriesStyle("SURVEY", "", ("GR",), ("SS",), ("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"), ("OTHER",),
                              3.8, 1.8, 20),
        t1map=SeriesStyle("T1map_MOLLI_SA", "MOLLI", ("GR",), ("SS",), ("DERIVED", "PRIMARY", "T1 MAP", "T1"),
                          ("CG",), 2.4, 1.1, 35),
        flow=SeriesStyle("Flow_Ao_VENC150", "FFE", ("GR",), ("SS",), ("ORIGINAL", "PRIMARY", "PHASE CONTRAST M", "P", "PCA"),
                         ("CG",), 4.8, 2.9, 15),
        tiscout=SeriesStyle("TI_SCOUT", "IR_TFE_LL", _IR, ("SS", "MP"), ("ORIGINAL", "PRIMARY", "M_IR", "M", "IR"),
                            ("CG",), 3.0, 1.4, 10),
    ),
}


def cine_description(style: VendorStyle, view: str, k: int | None = None) -> str:
    """SeriesDescription of a cine series; Siemens SAX gets ``_b{k}`` (k = 1 at the base)."""
    d = style.cine.description.format(view=style.view_names[view])
    if view == "SAX" and style.sax_one_series_per_slice and k is not None:
        d = f"{d}_b{k}"
    return d


def lge_description(style: VendorStyle, view: str, ti: float) -> str:
    return style.lge.description.format(view=style.lge_view_names[view], ti=int(round(ti)))


def expected_series(vendor: str, n_sax: int = 12, ti: float = 260) -> list[tuple[str, str, str | None]]:
    """(SeriesDescription, expected role, expected view) for every series a study in this style has.

    Roles: "cine", "lge" or "other" (distractors to skip: localizer, T1 map, flow, TI scout; view None).
    """
    st = STYLES[vendor]
    out: list[tuple[str, str, str | None]] = []
    if st.sax_one_series_per_slice:
        out += [(cine_description(st, "SAX", k), "cine", "SAX") for k in range(1, n_sax + 1)]
    else:
        out.append((cine_description(st, "SAX"), "cine", "SAX"))
    out += [(cine_description(st, v), "cine", v) for v in CINE_VIEWS if v != View.SAX]
    out += [(lge_description(st, v, ti), "lge", v) for v in LGE_VIEWS]
    out += [(getattr(st, k).description, "other", None) for k in ("localizer", "t1map", "flow", "tiscout")]
    return out


# ---------------------------------------------------------------- the randomised generator's series

# Spoiled gradient-echo cine, PSIR (phase-sensitive real image) LGE and dark-blood LGE in each vendor's naming.
# Descriptions keep each vendor's view spellings; every one is classified by cmrdx's reader like its classic twin
# (tests/test_synth_variety.py checks it).
_GRE_CINE = {
    "siemens": SeriesStyle("CINE_FLASH_{view}", "*fl2d1_r12", ("GR",), ("SK", "SP"), _CINE_TYPE, ("CG",), 5.2, 2.4, 12),
    "ge": SeriesStyle("{view}_FGRE_CINE", "fgre2d_cine", ("GR",), ("SS", "SP"), ("ORIGINAL", "PRIMARY", "OTHER"),
                      ("CG", "FAST_GEMS"), 6.0, 2.6, 15),
    "philips": SeriesStyle("T1-FFE_CINE_{view}", "T1FFE", ("GR",), ("SP",), ("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"),
                           ("CG",), 5.5, 2.5, 15),
}
_PSIR_LGE = {
    "siemens": SeriesStyle("DE_PSIR_TI_{ti}_{view}", "*tfl2d1", _IR, ("SK", "SP", "MP"),
                           ("ORIGINAL", "PRIMARY", "R", "NORM", "DIS2D"), ("CG",), 700.0, 3.3, 20),
    "ge": SeriesStyle("PS:{view}_DELAY_TI={ti}", "irfgre2d", _IR, ("SS", "SK", "MP"), ("ORIGINAL", "PRIMARY", "OTHER", "R"),
                      ("CG", "IR_GEMS"), 6.5, 3.1, 20),
    "philips": SeriesStyle("PSIR_{view}", "IR_TFE", _IR, ("SS", "MP"), ("ORIGINAL", "PRIMARY", "R_IR", "R", "IR"),
                           ("CG",), 6.1, 3.0, 25),
}
_DARK_BLOOD_LGE = {
    "siemens": SeriesStyle("DE_FIDDLE_TI_{ti}_{view}", "*tfl2d1_t2p", _IR, ("SK", "SP", "MP"), _CINE_TYPE, ("CG",),
                           700.0, 3.3, 20),
    "ge": SeriesStyle("{view}_DELAY_T2P_TI={ti}", "irfgre2d", _IR, ("SS", "SK", "MP"), ("ORIGINAL", "PRIMARY", "OTHER"),
                      ("CG", "IR_GEMS"), 6.5, 3.1, 20),
    "philips": SeriesStyle("LGE_T2prep_{view}", "IR_TFE", _IR, ("SS", "MP"), ("ORIGINAL", "PRIMARY", "M_IR", "M", "IR"),
                           ("CG",), 6.1, 3.0, 25),
}
# The same vendor's magnitude/real companions of a PSIR acquisition (the reader uses the magnitude image).
_PSIR_COMPANION = {
    "siemens": SeriesStyle("DE_TI_{ti}_{view}_PSIR", "*tfl2d1", _IR, ("SK", "SP", "MP"),
                           ("ORIGINAL", "PRIMARY", "R", "NORM", "DIS2D"), ("CG",), 700.0, 3.3, 20),
    "ge": SeriesStyle("PS:{view}_DELAY_TI={ti}_BH", "irfgre2d", _IR, ("SS", "SK", "MP"), ("ORIGINAL", "PRIMARY", "OTHER", "R"),
                      ("CG", "IR_GEMS"), 6.5, 3.1, 20),
    "philips": SeriesStyle("PSIR_real_{view}", "IR_TFE", _IR, ("SS", "MP"), ("ORIGINAL", "PRIMARY", "R_IR", "R", "IR"),
                           ("CG",), 6.1, 3.0, 25),
}


def cine_style(style: VendorStyle, mode: str) -> SeriesStyle:
    """The cine series style of ``mode`` ("bssfp": the vendor's classic cine, "gre": spoiled gradient echo)."""
    return style.cine if mode == "bssfp" else _GRE_CINE[style.name]


def lge_style(style: VendorStyle, mode: str) -> SeriesStyle:
    """The LGE series style of ``mode`` ("magnitude": the classic one, "psir", "dark_blood", "psir_companion")."""
    return {"magnitude": style.lge, "psir": _PSIR_LGE[style.name], "dark_blood": _DARK_BLOOD_LGE[style.name],
            "psir_companion": _PSIR_COMPANION[style.name]}[mode]


def styled_description(style: VendorStyle, ss: SeriesStyle, role: str, view: str, *, ti: float = 0.0,
                       k: int | None = None) -> str:
    """A description from series style ``ss`` with the vendor's view spelling (Siemens SAX cines ``_b{k}``)."""
    names = style.view_names if role == "cine" else style.lge_view_names
    d = ss.description.format(view=names[view], ti=int(round(ti)))
    if role == "cine" and view == "SAX" and style.sax_one_series_per_slice and k is not None:
        d = f"{d}_b{k}"
    return d
