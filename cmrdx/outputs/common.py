"""What every output shares: the notices, code systems, the output error, the checked atomic write and the
study read once for all outputs (``StudySource``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cmrdx.errors import CmrdxError
from cmrdx.fileio import atomic_write
from cmrdx.vocab import DEFAULT_MODEL

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.pipeline.classify import ClassifyResult
    from cmrdx.study.assemble import StudyInspection
    from cmrdx.study.types import Study

# Model whose findings must carry a plain "not for clinical use" notice (trained on synthetic phantoms).
DEMO_MODEL = DEFAULT_MODEL
DEMO_NOTICE = "Demonstration model trained on synthetic phantoms: not for clinical use."
RESEARCH_NOTICE = "cmrdx is research software: its findings are not a diagnosis and are not for clinical use."

# A prompt bank's code "system" -> (DICOM coding scheme designator, FHIR system URI).
CODE_SYSTEMS: dict[str, tuple[str, str]] = {}
for _names, _dcm, _uri in [
    (("SNOMED-CT", "SNOMED CT", "SNOMED", "SCT"), "SCT", "http://snomed.info/sct"),
    (("LOINC", "LN"), "LN", "http://loinc.org"),
    (("RadLex", "RADLEX"), "RADLEX", "http://radlex.org"),
    (("DCM", "DICOM"), "DCM", "http://dicom.nema.org/resources/ontology/DCM"),
]:
    for _n in (*_names, _uri):
        CODE_SYSTEMS[_n.upper()] = (_dcm, _uri)


class OutputError(CmrdxError):
    """An output cannot be built or written (the message names the file and the fix)."""

    exit_code = 1


def code_system(system: str) -> tuple[str, str] | None:
    """(DICOM designator, FHIR URI) of a bank code's system, or None for a system cmrdx does not know."""
    return CODE_SYSTEMS.get(str(system).strip().upper())


def is_demo_model(result: ClassifyResult) -> bool:
    return result.model.get("name") == DEMO_MODEL


def check_target(path: str | os.PathLike[str]) -> Path:
    """Fail before any work when ``path`` cannot be an output file (a folder, or under a file)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder", hint="give a file name, e.g. out/report.html")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: {parent} is a file, not a folder", hint="choose another output path")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"{path}: {parent} is not writable", hint="choose a writable folder")
            break
    return path


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` with ``cmrdx.fileio.atomic_write``; a failure is an OutputError naming the file."""
    path = check_target(path)
    try:
        return atomic_write(path, data)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write here ({exc.strerror})", hint="choose a writable folder") from exc


@dataclass
class StudySource:
    """One study read once and shared by classification and the outputs: its headers (``inspection``: series
    with frames and file references) and its assembled views (``study``: lazy pixels)."""

    inspection: StudyInspection
    study: Study

    @classmethod
    def read(cls, path: str | os.PathLike[str], study_uid: str | None = None) -> StudySource:
        from cmrdx.study.assemble import assemble_study, inspect_study

        insp = inspect_study(path, study_uid)
        return cls(inspection=insp, study=assemble_study(insp))


def as_source(source: StudySource | str | os.PathLike[str], result: ClassifyResult) -> StudySource:
    """A StudySource for ``result``'s study, read from a path when one is given."""
    src = source if isinstance(source, StudySource) else StudySource.read(source, result.study_uid)
    if src.study.study_uid != result.study_uid:
        raise OutputError(
            f"{src.inspection.scan.root}: holds study {src.study.study_uid}, not the classified study {result.study_uid}",
            hint="pass the folder the study was classified from",
        )
    return src
