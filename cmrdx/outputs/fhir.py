"""FHIR: a Bundle (type "collection") of one DiagnosticReport, one Observation per finding and the Device that
made them, built and validated with ``fhir.resources`` (FHIR R4B, which R4 servers accept for these resources).

No Patient resource and no patient identifier: the report points at the imaging study by its DICOM Study Instance
UID (``ImagingStudy`` identifier, system ``urn:dicom:uid``), which a receiving system resolves to its patient.
Everything is ``preliminary``: no person has verified it.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmrdx import __version__
from cmrdx.outputs.common import DEMO_NOTICE, RESEARCH_NOTICE, code_system, is_demo_model, write_atomic

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.pipeline.classify import ClassifyResult

FHIR_VERSION = "R4B"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
# SNOMED CT codes of the calls (the same concepts the SR uses).
CALLS = {
    "present": ("52101004", "Present"),
    "absent": ("272519000", "Absent"),
    "uncertain": ("82334004", "Indeterminate"),
}
REPORT_CODE = ("241620005", "Magnetic resonance imaging of heart")


def _bank_system(bank: str) -> str:
    """The code system of a finding that has no standard code: its prompt bank (a URN, so no URL is implied)."""
    return f"urn:cmrdx:prompt-bank:{bank}"


def _finding_coding(f) -> list[dict[str, str]]:
    codings = []
    if f.code:
        sys = code_system(f.code.get("system", ""))
        if sys is not None:
            codings.append({"system": sys[1], "code": str(f.code["code"]), "display": str(f.code.get("display") or f.label)})
    codings.append({"system": _bank_system(f.bank), "code": f.id, "display": f.label})
    return codings


def _quantity(name: str, value: float) -> dict[str, Any]:
    return {
        "code": {"coding": [{"system": "urn:cmrdx:score", "code": name}], "text": name},
        "valueQuantity": {"value": round(float(value), 6), "unit": "1", "system": UCUM, "code": "1"},
    }


def build_bundle(result: ClassifyResult, *, now: dt.datetime | None = None):
    """A validated ``fhir.resources.R4B.bundle.Bundle`` for ``result`` (raises pydantic's ValidationError if a
    resource breaks the FHIR rules: that is a cmrdx bug, never silently written)."""
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.device import Device
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from fhir.resources.R4B.observation import Observation

    issued = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
    study_ref = {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{result.study_uid}"},
                 "display": "the classified CMR study"}
    dev_id = str(uuid.uuid4())
    m = result.model
    device = Device(
        id=dev_id,
        deviceName=[{"name": "cmrdx", "type": "manufacturer-name"}, {"name": str(m.get("name")), "type": "model-name"}],
        version=[{"value": f"cmrdx {__version__}"}, {"value": f"{m.get('name')} {m.get('version')} sha256 {m.get('sha256')}"}],
        note=[{"text": (DEMO_NOTICE + " " if is_demo_model(result) else "") + RESEARCH_NOTICE}],
    )
    obs_entries = []
    for f in result.findings:
        oid = str(uuid.uuid4())
        obs: dict[str, Any] = {
            "id": oid,
            "status": "preliminary",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "imaging", "display": "Imaging"}]}],
            "code": {"coding": _finding_coding(f), "text": f.label},
            "issued": issued,
            "device": {"reference": f"urn:uuid:{dev_id}"},
            "derivedFrom": [study_ref],
            "method": {"text": f"zero-shot {f.kind} score against prompt bank {f.bank}"},
            "component": [_quantity("score", f.score)]
            + ([_quantity("threshold", f.threshold)] if f.threshold is not None else [])
            + ([_quantity("probability", f.probability)] if f.probability is not None else []),
        }
        if f.call in CALLS:
            code, display = CALLS[f.call]
            obs["valueCodeableConcept"] = {"coding": [{"system": SNOMED, "code": code, "display": display}],
                                           "text": f.call + (f" ({f.severity})" if f.severity else "")}
        elif f.call == "not assessable":  # the images the finding needs are not in the study
            obs["dataAbsentReason"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                                   "code": "not-performed", "display": "Not Performed"}],
                                       "text": f"not assessable: {f.reason}"}
        else:  # scores without a threshold for this model: ranked, but not called
            obs["dataAbsentReason"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                                   "code": "not-applicable", "display": "Not Applicable"}],
                                       "text": "no threshold for this model in the prompt bank: not called"}
        notes = ([f.reason] if f.reason and f.call != "not assessable" else []) + list(f.notes)
        if notes:
            obs["note"] = [{"text": n} for n in notes]
        obs_entries.append((oid, Observation(**obs)))
    present = [f.label + (f" ({f.severity})" if f.severity else "") for f in result.findings if f.call == "present"]
    conclusion = ("Present: " + ", ".join(present) + "." if present else "No finding called present.")
    if result.impression is not None:  # the draft impression, marked DRAFT / not for clinical use in its own text
        conclusion = result.impression.text + " " + conclusion
    conclusion += " " + (DEMO_NOTICE + " " if is_demo_model(result) else "") + RESEARCH_NOTICE
    rid = str(uuid.uuid4())
    report = DiagnosticReport(
        id=rid,
        status="preliminary",
        category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                               "display": "Radiology"}]}],
        code={"coding": [{"system": SNOMED, "code": REPORT_CODE[0], "display": REPORT_CODE[1]}],
              "text": "cmrdx zero-shot CMR findings"},
        issued=issued,
        imagingStudy=[study_ref],
        result=[{"reference": f"urn:uuid:{oid}", "display": o.code.text} for oid, o in obs_entries],
        conclusion=conclusion,
    )
    entries = [{"fullUrl": f"urn:uuid:{rid}", "resource": report}]
    entries += [{"fullUrl": f"urn:uuid:{oid}", "resource": o} for oid, o in obs_entries]
    entries.append({"fullUrl": f"urn:uuid:{dev_id}", "resource": device})
    return Bundle(type="collection", timestamp=issued, entry=entries)


def write_fhir(result: ClassifyResult, path: str | os.PathLike[str]) -> Path:
    """Build the Bundle and write it as JSON, atomically, to ``path``."""
    return write_atomic(path, build_bundle(result).model_dump_json(indent=2) + "\n")


def read_bundle(path: str | os.PathLike[str]):
    """Parse (and so validate) a Bundle JSON file with fhir.resources."""
    from fhir.resources.R4B.bundle import Bundle

    return Bundle.model_validate_json(Path(path).read_text(encoding="utf-8"))
