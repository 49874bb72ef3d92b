"""Synthetic cardiac MR studies with known ground truth (numpy only: no torch, no onnxruntime).

    params = sample_params(7, {"lv_dilation": "moderate"}, vendor="ge")
    study = render_study(params)              # arrays straight to a cmrdx.study.types.Study (no DICOM)
    write_study("out/phantom", params)        # DICOM + truth.json + report.txt
    write_archive("out/archive", n=200, seed=1)
"""

from cmrdx.synth.params import FINDINGS, SEVERITIES, VENDORS, StudyParams, parse_findings, sample_params
from cmrdx.synth.render import Rendered, render, render_study
from cmrdx.synth.report import HELDOUT_STYLES, STYLES, TRAIN_STYLES, make_report
from cmrdx.synth.vendors import expected_series

# The DICOM writers import pydicom: loaded on first use, so that rendering to arrays (training on a machine
# without pydicom) needs numpy alone.
_LAZY = {"write_archive": "cmrdx.synth.archive", "write_study": "cmrdx.synth.writer", "WrittenStudy": "cmrdx.synth.writer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cmrdx.synth' has no attribute {name!r}")


__all__ = [
    "FINDINGS", "SEVERITIES", "VENDORS", "STYLES", "TRAIN_STYLES", "HELDOUT_STYLES", "StudyParams", "Rendered",
    "WrittenStudy", "sample_params", "parse_findings", "render", "render_study", "write_study", "write_archive",
    "make_report", "expected_series",
]
