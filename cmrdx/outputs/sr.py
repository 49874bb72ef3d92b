"""DICOM SR: a Comprehensive 3D SR holding a TID 1500 measurement report, built with highdicom.

Layout (one TID 1501 measurement group per finding, in ranked order):

- tracking identifier ``"<bank>/<finding id>"`` (so a reader gets the finding back), finding type = the finding's
  code from the bank (else a private ``99CMRDX`` code), method = how the score was computed, algorithm = the model;
- qualitative evaluation: finding code -> Present / Absent / Indeterminate (uncertain, near the threshold) /
  a private "not called" code (no threshold for this model in the bank); severity when the bank has levels;
- measurements: the score, and the threshold and calibrated probability when there are any (UCUM "1").

After the groups, the draft impression (``cmrdx.zeroshot.impression``) as a text item "Impression" (DCM 121073),
its text marked DRAFT / not for clinical use (``read_sr_impression`` reads it back).

Observer context: a device observer (cmrdx and its model; the device UID derives from the model's sha256). The
Image Library holds one entry per (classic, single-frame) series the model input came from; the evidence sequence
lists every instance of those series, Enhanced MR included. The
patient and study modules are copied from those instances by highdicom (required by the IOD); cmrdx never logs
them.
"""

from __future__ import annotations

import logging
import os
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmrdx import __version__
from cmrdx.outputs.common import (
    OutputError,
    StudySource,
    as_source,
    check_target,
    code_system,
    is_demo_model,
    write_atomic,
)

if TYPE_CHECKING:  # pragma: no cover
    import pydicom

    from cmrdx.pipeline.classify import ClassifyResult

log = logging.getLogger(__name__)

PRIVATE_SCHEME = "99CMRDX"  # "99" prefix: a local coding scheme (PS3.16 section 8.2)
SR_SERIES_NUMBER = 9900  # high, so that viewers list the SR after the images it reports on
MAX_TEXT = 10240  # characters of a text item cmrdx writes (UT may hold more; viewers show less)
SCORE_KINDS = {
    "mean-cosine": "Mean cosine similarity to prompts",
    "softmax": "Softmax of positive vs negative prompts",
}


def _codes():
    """The codes the SR uses (built lazily: importing highdicom costs ~0.5 s)."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    return {
        "present": codes.SCT.Present,
        "absent": codes.SCT.Absent,
        "uncertain": codes.SCT.Indeterminate,
        "no threshold": CodedConcept("not-called", PRIVATE_SCHEME, "Not called: no threshold for this model"),
        "severity": codes.SCT.Severity,
        "mild": codes.SCT.Mild,
        "moderate": codes.SCT.Moderate,
        "severe": codes.SCT.Severe,
        "score": CodedConcept("score", PRIVATE_SCHEME, "Zero-shot score"),
        "threshold": CodedConcept("threshold", PRIVATE_SCHEME, "Decision threshold"),
        "probability": CodedConcept("probability", PRIVATE_SCHEME, "Calibrated probability"),
        "unit": CodedConcept("1", "UCUM", "no units"),
        "procedure": codes.SCT.CardiacMRI,
        "comment": codes.DCM.Comment,
        "impression": codes.DCM.Impression,
    }


def finding_code(f) -> Any:
    """The finding's code from its bank (SNOMED CT, LOINC, RadLex, DCM), else a private cmrdx code."""
    from highdicom.sr import CodedConcept

    meaning = f.label[:64]
    if f.code:
        sys = code_system(f.code.get("system", ""))
        if sys is not None:
            return CodedConcept(str(f.code["code"]), sys[0], str(f.code.get("display") or f.label)[:64])
        log.warning("finding %s: code system %r unknown to the SR writer; using a private code", f.id, f.code.get("system"))
    return CodedConcept(f.id, PRIVATE_SCHEME, meaning)


def source_headers(src: StudySource, series_uids: list[str]) -> list[pydicom.Dataset]:
    """Headers (no pixels) of every instance of ``series_uids``, one per file, in series then file order."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    by_uid = {s.uid: s for s in src.inspection.series}
    out: list[pydicom.Dataset] = []
    for uid in series_uids:
        s = by_uid.get(uid)
        if s is None:
            continue
        for ref in sorted({f.ref for f in s.frames}):
            known = src.headers.get(ref) if src.headers is not None else None
            if known is not None:  # a header the PACS answered with (the file itself was not retrieved)
                out.append(known)
                continue
            try:
                with ref.open() as fh:
                    out.append(pydicom.dcmread(fh, stop_before_pixels=True))
            except (OSError, InvalidDicomError) as exc:
                raise OutputError(f"{ref}: cannot re-read its header for the SR ({exc})",
                                  hint="the study changed since it was classified: classify it again") from exc
    if not out:
        raise OutputError(f"{src.inspection.scan.root}: none of the series the model used was found for the SR",
                          hint="pass the folder the study was classified from")
    return out


def _library_images(evidence: list[pydicom.Dataset]) -> list[pydicom.Dataset] | None:
    """One Image Library entry per series (highdicom's tree handling grows steeply with entries: 215 took 30 s), of
    classic images only: highdicom 0.28's cross-sectional descriptors read PixelSpacing and the plane geometry at
    the top level, which Enhanced MR keeps in functional groups. The evidence sequence lists every instance."""
    firsts: dict[str, pydicom.Dataset] = {}
    for ds in evidence:
        if all(k in ds for k in ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient")):
            firsts.setdefault(ds.SeriesInstanceUID, ds)
    return list(firsts.values()) or None


def _group(f, result: ClassifyResult, c: dict[str, Any]):
    import highdicom.sr as hsr
    from pydicom.uid import generate_uid

    code = finding_code(f)
    # A finding that cannot be assessed asserts no evaluation at all; its reason is a text item (below).
    evaluations = [hsr.QualitativeEvaluation(name=code, value=c[f.call])] if f.call in c else []
    if f.severity in ("mild", "moderate", "severe"):
        evaluations.append(hsr.QualitativeEvaluation(name=c["severity"], value=c[f.severity]))
    measurements = [hsr.Measurement(name=c["score"], value=float(f.score), unit=c["unit"])]
    if f.threshold is not None:
        measurements.append(hsr.Measurement(name=c["threshold"], value=float(f.threshold), unit=c["unit"]))
    if f.probability is not None:
        measurements.append(hsr.Measurement(name=c["probability"], value=float(f.probability), unit=c["unit"]))
    bank = next((b for b in result.banks if b["name"] == f.bank), None)
    params = [f"model sha256 {result.model.get('sha256', '')}"]
    if bank is not None:
        params.append(f"prompt bank {bank['name']} {bank['version']} sha256 {bank['sha256']}")
    group = hsr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hsr.TrackingIdentifier(uid=generate_uid(), identifier=f"{f.bank}/{f.id}"),
        finding_type=code,
        method=hsr.CodedConcept(f.kind, PRIVATE_SCHEME, SCORE_KINDS.get(f.kind, f.kind)[:64]),
        algorithm_id=hsr.AlgorithmIdentification(
            name=str(result.model.get("name")), version=str(result.model.get("version")), parameters=params
        ),
        qualitative_evaluations=evaluations or None,
        measurements=measurements,
    )
    for text in ([f.reason] if f.reason else []) + list(f.notes):
        # TID 1501 groups may hold text; "Comment" (DCM 121106) carries why a call is missing or uncertain.
        group[0].ContentSequence.append(hsr.TextContentItem(
            name=c["comment"], value=text[:1024], relationship_type=hsr.RelationshipTypeValues.CONTAINS))
    return group


def build_sr(result: ClassifyResult, source: StudySource | str | os.PathLike[str]):
    """A ``highdicom.sr.Comprehensive3DSR`` reporting ``result``'s findings on the study in ``source``."""
    import highdicom.sr as hsr
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    src = as_source(source, result)
    evidence = source_headers(src, list(result.series_used))
    c = _codes()
    sha = str(result.model.get("sha256", ""))
    device = hsr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[sha or str(result.model.get("name"))]),  # one stable UID per model
        name="cmrdx",
        manufacturer_name="cmrdx developers",
        model_name=f"{result.model.get('name')} {result.model.get('version')}"[:64],
        serial_number=sha[:16] or None,
    )
    context = hsr.ObservationContext(
        observer_device_context=hsr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    )
    report = hsr.MeasurementReport(
        observation_context=context,
        procedure_reported=c["procedure"],
        imaging_measurements=[_group(f, result, c) for f in result.findings],
        referenced_images=_library_images(evidence),
    )
    if result.impression is not None:
        # the draft impression as text in the report (DCM 121073 "Impression"), marked DRAFT in its own words
        report[0].ContentSequence.append(hsr.TextContentItem(
            name=c["impression"], value=result.impression.text[:MAX_TEXT],
            relationship_type=hsr.RelationshipTypeValues.CONTAINS))
    description = "cmrdx zero-shot findings" + (" - not for clinical use" if is_demo_model(result) else "")
    sr = hsr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="cmrdx",
        manufacturer_model_name=str(result.model.get("name"))[:64],
        software_versions=f"cmrdx {__version__}",
        series_description=description[:64],
        specific_character_set="ISO_IR 192",  # UTF-8: bank labels may hold any character (the source may be Latin-1)
        is_complete=True,
        is_final=False,  # preliminary: no person has verified it
        is_verified=False,
        coding_schemes=[CodingSchemeIdentificationItem(designator=PRIVATE_SCHEME, name="cmrdx findings and scores",
                                                        responsible_organization="cmrdx developers")],
    )
    return sr


def write_sr(result: ClassifyResult, source: StudySource | str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Build the SR and write it (DICOM Part 10 file) atomically to ``path``."""
    from pydicom import dcmwrite

    from cmrdx.dicom.series import capture_read_warnings

    check_target(path)
    # Re-reading the source headers repeats pydicom's complaints about them; they were counted when the study
    # was read (the result's read_warnings), so here they are collected and dropped, never printed per file.
    with capture_read_warnings():
        sr = build_sr(result, source)
        buf = BytesIO()
        dcmwrite(buf, sr, enforce_file_format=True)
    return write_atomic(path, buf.getvalue())


def read_sr_findings(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The findings of an SR that ``write_sr`` wrote, read back with ``highdicom.sr.srread``, in report order:
    ``{"bank", "id", "label", "code", "call", "severity", "score", "threshold", "probability", "kind", "comments"}``;
    a group that asserts no call is "not assessable", its reason among the comments."""
    import highdicom.sr as hsr

    try:
        sr = hsr.srread(path)
    except Exception as exc:  # srread raises plain ValueError/AttributeError for non-SR input
        raise OutputError(f"{path}: not a structured report cmrdx can read ({exc})",
                          hint="pass an SR written by `cmrdx classify --sr`") from exc
    calls = {(cc.value, cc.scheme_designator): call for call, cc in _codes().items()
             if call in ("present", "absent", "uncertain", "no threshold")}
    sev = {(cc.value, cc.scheme_designator): k for k, cc in _codes().items() if k in ("mild", "moderate", "severe")}
    kinds = {"score", "threshold", "probability"}
    out = []
    for g in sr.content.get_image_measurement_groups():  # type: ignore[attr-defined]  # a TID 1500 report's content
        bank, _, fid = (g.tracking_identifier or "").partition("/")
        rec: dict[str, Any] = {"bank": bank, "id": fid, "label": None, "code": None, "call": None, "severity": None,
                               "score": None, "threshold": None, "probability": None, "kind": None, "comments": []}
        ft = g.finding_type
        if ft is not None:
            rec["label"] = ft.meaning
            rec["code"] = {"scheme": ft.scheme_designator, "code": ft.value, "display": ft.meaning}
        if g.method is not None:
            rec["kind"] = g.method.value
        for q in g.get_qualitative_evaluations():
            key = (q.value.value, q.value.scheme_designator)
            if key in calls:
                rec["call"] = calls[key]
            elif key in sev:
                rec["severity"] = sev[key]
        for m in g.get_measurements():
            if m.name.scheme_designator == PRIVATE_SCHEME and m.name.value in kinds:
                rec[m.name.value] = float(m.value)
        comment = _codes()["comment"]
        rec["comments"] = [str(item.TextValue) for item in g[0].ContentSequence
                           if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == comment.value]
        if rec["call"] is None:
            rec["call"] = "not assessable"
        out.append(rec)
    return out


def read_sr_impression(path: str | os.PathLike[str]) -> str | None:
    """The draft impression of an SR that ``write_sr`` wrote (the root's "Impression" text item), or None."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom raises several kinds for a file that is not DICOM
        raise OutputError(f"{path}: not a DICOM file cmrdx can read ({exc})",
                          hint="pass an SR written by `cmrdx classify --sr`") from exc
    code = _codes()["impression"]
    for item in ds.get("ContentSequence", []):
        name = item.get("ConceptNameCodeSequence")
        if item.get("ValueType") == "TEXT" and name and name[0].CodeValue == code.value \
                and name[0].CodingSchemeDesignator == code.scheme_designator:
            return str(item.TextValue)
    return None
