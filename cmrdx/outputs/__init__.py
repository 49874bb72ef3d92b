"""Outputs people can read and systems can file: a self-contained HTML report (``html``), a DICOM SR with a
TID 1500 measurement report (``sr``, highdicom), a FHIR Bundle (``fhir``, fhir.resources), and C-STORE of DICOM
objects to a PACS (``send``, pynetdicom).

Each output is built from a ``ClassifyResult`` (the findings) and, where it needs the images, a ``StudySource``
(the study's headers for SR references, its pixels for the report's previews). Every file is written atomically:
a reader sees the old file or the whole new one, never half of it. Patient identifiers are never logged; the SR
copies the source study's patient module because DICOM requires it, and nothing else does.

Heavy imports (highdicom, fhir.resources, Pillow, pynetdicom) happen inside the submodules, not here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from cmrdx.outputs.common import (
    CODE_SYSTEMS,
    DEMO_MODEL,
    DEMO_NOTICE,
    RESEARCH_NOTICE,
    OutputError,
    StudySource,
    as_source,
    check_target,
    code_system,
    is_demo_model,
    write_atomic,
)

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.pipeline.classify import ClassifyResult

__all__ = [
    "CODE_SYSTEMS", "DEMO_MODEL", "DEMO_NOTICE", "RESEARCH_NOTICE", "OutputError", "StudySource", "as_source",
    "check_target", "code_system", "is_demo_model", "write_atomic", "write_outputs",
]


def write_outputs(
    result: ClassifyResult,
    source: StudySource | str | os.PathLike[str] | None = None,
    *,
    report: str | os.PathLike[str] | None = None,
    sr: str | os.PathLike[str] | None = None,
    fhir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the outputs asked for; returns {kind: {"path": Path, "ms": milliseconds, "bytes": size}}."""
    import time

    out: dict[str, Any] = {}
    for p in (report, sr, fhir):  # all targets checked first: a bad path must not leave the others half-done
        if p is not None:
            check_target(p)
    src = as_source(source, result) if (report or sr) and source is not None else None
    if (report or sr) and src is None:
        raise OutputError("the HTML report and the SR need the study's images", hint="pass the study folder as source")
    for kind, path in (("fhir", fhir), ("sr", sr), ("report", report)):
        if path is None:
            continue
        t0 = time.perf_counter()
        if kind == "fhir":
            from cmrdx.outputs.fhir import write_fhir

            p = write_fhir(result, path)
        elif kind == "sr":
            from cmrdx.outputs.sr import write_sr

            assert src is not None  # checked above: the SR needs the study
            p = write_sr(result, src, path)
        else:
            from cmrdx.outputs.html import write_report

            assert src is not None  # checked above: the report needs the study
            p = write_report(result, src, path)
        out[kind] = {"path": p, "ms": (time.perf_counter() - t0) * 1000, "bytes": p.stat().st_size}
    return out
