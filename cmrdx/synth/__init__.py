"""Synthetic cardiac MR studies with known ground truth (numpy only: no torch, no onnxruntime).

    params = sample_params(7, {"lv_dilation": "moderate"}, vendor="ge")
    study = render_study(params)              # arrays straight to a cmrdx.study.Study (no DICOM)
    write_study("out/phantom", params)        # DICOM + truth.json + report.txt
    write_archive("out/archive", n=200, seed=1)
"""

from cmrdx.synth.archive import write_archive
from cmrdx.synth.params import FINDINGS, SEVERITIES, VENDORS, StudyParams, parse_findings, sample_params
from cmrdx.synth.render import Rendered, render, render_study
from cmrdx.synth.report import HELDOUT_STYLES, STYLES, TRAIN_STYLES, make_report
from cmrdx.synth.vendors import expected_series
from cmrdx.synth.writer import WrittenStudy, write_study

__all__ = [
    "FINDINGS", "SEVERITIES", "VENDORS", "STYLES", "TRAIN_STYLES", "HELDOUT_STYLES", "StudyParams", "Rendered",
    "WrittenStudy", "sample_params", "parse_findings", "render", "render_study", "write_study", "write_archive",
    "make_report", "expected_series",
]
