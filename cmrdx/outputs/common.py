"""What every output shares: the notices, code systems, the output error, the checked atomic write and the
study read once for all outputs (``StudySource``)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cmrdx.errors import OutputError  # defined with the other exit codes; callers import it from here too
from cmrdx.fileio import atomic_write
from cmrdx.vocab import DEFAULT_MODEL

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping

    from pydicom.dataset import Dataset

    from cmrdx.dicom.source import FileRef
    from cmrdx.pacs.study import PacsStudy
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


def code_system(system: str) -> tuple[str, str] | None:
    """(DICOM designator, FHIR URI) of a bank code's system, or None for a system cmrdx does not know."""
    return CODE_SYSTEMS.get(str(system).strip().upper())


def is_demo_model(result: ClassifyResult) -> bool:
    return result.model.get("name") == DEMO_MODEL


def check_target(path: str | os.PathLike[str]) -> Path:
    """Fail before any work when ``path`` cannot be an output file: a folder, a path under a file, a folder that
    cannot be written, a name the system refuses. A device or a pipe (``/dev/stdout``, ``/dev/null``) is a valid
    target: it is written in place. A symbolic link is judged by its target, which is what gets written."""
    path = Path(path)
    try:
        try:
            st = os.stat(path)  # through links: /dev/stdout -> /proc/self/fd/1 -> a pipe that has no path of its own
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{path}: is a folder", hint="give a file name, e.g. out/report.html")
        if st is not None and not stat.S_ISREG(st.st_mode):
            if not os.access(path, os.W_OK):
                raise OutputError(f"{path}: cannot be written", hint="choose another output path")
            return path
        _check_parent(path, Path(os.path.realpath(path)))
    except OSError as exc:  # a name too long, a loop of symbolic links
        raise OutputError.from_os_error(exc, path) from exc
    return path


def _check_parent(path: Path, real: Path) -> None:
    """The nearest existing folder above ``real`` is a folder and writable (a new file and its temporary file go
    there, and missing folders are made there)."""
    for parent in real.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: {parent} is a file, not a folder", hint="choose another output path")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"{path}: {parent} is not writable", hint="choose a folder you can write to")
            return


def check_targets(**paths: str | os.PathLike[str] | None) -> None:
    """Every output file of a command (by option name; None: not asked for), checked before any work with
    ``check_target``, and no file named for two outputs (the second would replace the first)."""
    seen: dict[Path, str] = {}
    for name, p in paths.items():
        if p is None:
            continue
        check_target(p)
        key = Path(os.path.realpath(p))
        if key in seen and not key.is_char_device():  # /dev/stdout twice is two writes to one stream, not one file
            first, second = (f"--{n.replace('_', '-')}" for n in (seen[key], name))
            raise OutputError(f"{p}: named for both {first} and {second}", hint="give each output its own file")
        seen[key] = name


def check_folder_target(path: str | os.PathLike[str]) -> Path:
    """Fail before any work when ``path`` cannot be an output folder (a store, a folder of reports): an existing
    file, a folder that cannot be written, or no writable folder to make it in."""
    path = Path(path)
    try:
        real = Path(os.path.realpath(path))
        if real.exists():
            if not real.is_dir():
                raise OutputError(f"{path}: is a file, not a folder", hint="give a folder, or remove the file")
            if not os.access(real, os.W_OK | os.X_OK):
                raise OutputError(f"{path}: the folder is not writable", hint="choose a folder you can write to")
            return path
        _check_parent(path, real)
    except OSError as exc:
        raise OutputError.from_os_error(exc, path) from exc
    return path


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` with ``cmrdx.fileio.atomic_write``; a failure is an OutputError naming the file
    and the fix for its cause (a full disk, a read-only folder, ...)."""
    path = check_target(path)
    try:
        if _is_stream(path):  # written in place, through the link: the link's own target may have no path
            with open(path, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            return path
        return atomic_write(path, data)
    except OSError as exc:
        raise OutputError.from_os_error(exc, path) from exc


def _is_stream(path: Path) -> bool:
    """A device or a pipe, reached directly or through symbolic links (``/dev/stdout`` when it is a pipe resolves
    to ``/proc/PID/fd/pipe:[N]``, which cannot be opened by that name)."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


@dataclass
class StudySource:
    """One study read once and shared by classification and the outputs: its headers (``inspection``: series
    with frames and file references) and its assembled views (``study``: lazy pixels)."""

    inspection: StudyInspection
    study: Study
    # header data sets by file reference, for a study whose files are not all here (a PACS study: only the images
    # the recipe reads were retrieved); outputs that cite every instance (the SR) take headers from here first
    headers: Mapping[FileRef, Dataset] | None = None

    @classmethod
    def from_pacs(cls, ps: PacsStudy) -> StudySource:
        return cls(inspection=ps.inspection, study=ps.study, headers=ps.headers)

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
