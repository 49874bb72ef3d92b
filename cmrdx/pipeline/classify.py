"""The main job as a Python API: a study folder -> ranked zero-shot findings, with a run manifest.

files -> series -> views -> Study (``assemble``) -> model input (``recipe``) -> embedding (``model.encoder``)
-> scores against prompt banks (``scoring``). Models and banks are loaded once per process and reused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrdx import __version__
from cmrdx.errors import UsageError
from cmrdx.model.loader import get_encoder, model_sha256
from cmrdx.model.manifest import Manifest
from cmrdx.model.reference import Typicality, load_reference
from cmrdx.pacs.config import is_address
from cmrdx.study.assemble import StudyInspection, assemble_study
from cmrdx.study.types import Study
from cmrdx.vocab import DEFAULT_BANKS, Call
from cmrdx.zeroshot.bank import get_bank
from cmrdx.zeroshot.impression import Impression, compose_impression
from cmrdx.zeroshot.scoring import (
    FindingScore,
    TextEmbeddingCache,
    bank_text_embeddings,
    make_uncertain,
    note_departures,
    rank,
    score_bank,
)

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.pipeline.explain import ExplainOptions, Explanation
    from cmrdx.pipeline.priors import SimilarCases

RESULT_SCHEMA = "cmrdx-classify/1"


@dataclass
class ClassifyResult:
    """Everything ``cmrdx classify`` shows, as data. ``to_dict`` follows RESULT_SCHEMA."""

    study_uid: str
    source: str
    findings: list[FindingScore]
    embedding: np.ndarray  # (D,) float32, L2-normalised
    model: dict[str, Any]
    banks: list[dict[str, Any]]
    device: str
    views_used: dict[str, dict[str, Any]]
    series_used: list[str]
    warnings: list[str]
    skipped_series: list[dict[str, Any]]
    timings_ms: dict[str, float]
    files_scanned: int = 0
    files_skipped: dict[str, int] = field(default_factory=dict)
    # pydicom's complaints while reading, counted by kind (``ReadWarnings.to_dict()``); never values
    read_warnings: dict[str, Any] = field(default_factory=dict)
    read_summary: str | None = None
    # how typical the study is of the model's training studies (``cmrdx.model.reference``)
    typicality: dict[str, Any] = field(default_factory=dict)
    # few-shot: finding -> {"score": cos(present) - cos(absent), "call": "present"/"absent", "shots": [n0, n1]}
    fewshot: dict[str, dict[str, Any]] = field(default_factory=dict)
    # a study read from a PACS: its address and what moved (``PacsStudy.to_dict``); empty for a folder
    pacs: dict[str, Any] = field(default_factory=dict)
    # the draft impression (``cmrdx.zeroshot.impression``), marked DRAFT wherever it is shown
    impression: Impression | None = None
    # attribution of the findings (``cmrdx.pipeline.explain``), when asked for
    explanation: Explanation | None = None
    # similar prior cases from a search store (``cmrdx.pipeline.priors.add_similar``), when asked for
    similar: SimilarCases | None = None
    # the main paths' embedding of a model with a finding stream (``Encoder.encode_studies_main``): what distances
    # to other studies use (typicality, few-shot, similar cases); None when it is ``embedding`` itself
    main_embedding: np.ndarray | None = None

    def to_dict(self, *, include_embedding: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema": RESULT_SCHEMA,
            "study_uid": self.study_uid,
            "typicality": self.typicality,
            "findings": [f.to_dict() for f in self.findings],
            "fewshot": self.fewshot,
            "warnings": list(self.warnings),
            "views_used": self.views_used,
            "skipped_series": self.skipped_series,
            "run": {
                "cmrdx_version": __version__,
                "model": self.model,
                "banks": self.banks,
                "device": self.device,
                "series_uids_used": self.series_used,
                "files_scanned": self.files_scanned,
                "files_skipped": self.files_skipped,
                "read_warnings": self.read_warnings,
                "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
            },
        }
        if self.pacs:
            d["run"]["pacs"] = self.pacs
        if self.impression is not None:
            d["impression"] = self.impression.to_dict()
        if self.explanation is not None:
            d["explain"] = self.explanation.to_dict()
        if self.similar is not None:
            d["similar"] = self.similar.to_dict()
        if include_embedding:
            d["embedding"] = [round(float(x), 6) for x in self.embedding]
            if self.main_embedding is not None:
                d["main_embedding"] = [round(float(x), 6) for x in self.main_embedding]
        return d

    @property
    def distance_embedding(self) -> np.ndarray:
        """The embedding that distances to other studies use: the main paths' (``main_embedding``) when the model
        has a finding stream, else ``embedding``."""
        return self.main_embedding if self.main_embedding is not None else self.embedding


def assess_typicality(manifest: Manifest, embedding: np.ndarray) -> Typicality:
    """How typical a study's embedding (its main paths' one: ``Encoder.encode_studies_main``) is of the model's
    training studies; "unknown" without a reference."""
    ref = load_reference(manifest)
    return ref.assess(embedding) if ref is not None else Typicality.unknown(manifest.name)


def _input_warnings(study: Study, recipe_result) -> list[str]:
    out = list(study.manifest.warnings)
    out += [f"recipe: {s}" for s in recipe_result.substitutions]
    for seg, rec in recipe_result.used.items():  # too few phases: the study's input checks say so
        win = rec.get("window")
        if win and len(win) == 2 and not win[1] > win[0]:
            out.append(f"{seg}: flat intensities in {rec.get('view')} (window {win[0]:g}..{win[1]:g}): blank or corrupt images?")
    return list(dict.fromkeys(out))


def classify(
    path: str | os.PathLike[str] | StudyInspection | Study,
    *,
    model: str | Path | None = None,
    banks: Sequence[str | Path] = DEFAULT_BANKS,
    device: str = "auto",
    precision: str = "auto",
    study_uid: str | None = None,
    text_cache_dir: Path | None = None,
    prototypes: str | os.PathLike[str] | None = None,
    pacs_config: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
    explain: bool | ExplainOptions = False,
    explain_findings: Sequence[str] | None = None,
) -> ClassifyResult:
    """Classify one study zero-shot against ``banks`` with ``model``; returns a typed result.

    ``path`` is a folder or .zip, a study already read, or a PACS address ``pacs://NODE/STUDY_UID`` (nodes from
    ``pacs_config``, default ``$CMRDX_HOME/pacs.yaml``): its headers are queried and only the instances the
    model's recipe reads are retrieved (``cmrdx.pacs.study``).

    ``explain`` (True, or ``ExplainOptions``): attribution of the assessable findings (``explain_findings``: these
    ids only), in ``result.explanation``. A draft impression is always composed (``result.impression``). Similar
    prior cases from a search store: ``cmrdx.pipeline.priors.add_similar(result, store)``.

    Raises the DICOM layer's errors (NoDicomError, NoCineError, ...), ModelError / PromptBankError, and the PACS
    clients' errors for an address; UsageError for an ``explain_findings`` id no bank has.

    ``precision``: auto, float32, float16 or int8 (``cmrdx.model.encoder``); ``progress(message)`` is told when
    each stage starts (the CLI shows it on a terminal).
    """
    from cmrdx.recipe import apply_recipe

    stage = progress or (lambda _msg: None)
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    loaded_banks = [get_bank(b) for b in banks]  # bank errors before any heavy work
    stage("loading the model")
    enc = get_encoder(model, device, precision)
    if explain_findings:
        known = {f.id for b in loaded_banks for f in b.findings}
        unknown = [x for x in explain_findings if x not in known]
        if unknown:
            raise UsageError(f"--finding {', '.join(unknown)}: no such finding in the prompt banks",
                             hint=f"use one of: {', '.join(sorted(known))}")
    t["load_ms"] = (time.perf_counter() - t0) * 1000
    stage("reading the study")
    t1 = time.perf_counter()
    pacs: dict[str, Any] = {}
    if isinstance(path, str) and is_address(path):
        from cmrdx.pacs.study import read_pacs_study

        ps = read_pacs_study(path, enc.manifest.recipe_params(), config=pacs_config)
        study, pacs = ps.study, ps.to_dict()
    else:
        study = path if isinstance(path, Study) else assemble_study(path, study_uid)
    t["read_ms"] = (time.perf_counter() - t1) * 1000
    t2 = time.perf_counter()
    rr = apply_recipe(study, enc.manifest.recipe_params())
    t["recipe_ms"] = (time.perf_counter() - t2) * 1000
    t3 = time.perf_counter()
    stage(f"encoding the study ({enc.manifest.name}, {enc.description})")
    embs, mains = enc.encode_studies_main(rr.array[None])
    emb, main = embs[0], mains[0]  # main: what distances to other studies use (the same array without a stream)
    t["encode_ms"] = (time.perf_counter() - t3) * 1000
    t4 = time.perf_counter()
    msha = model_sha256(enc.manifest)
    cache = TextEmbeddingCache(msha, text_cache_dir)
    scores: list[FindingScore] = []
    tembs: dict[str, dict[str, np.ndarray]] = {}
    for bank in loaded_banks:
        temb = bank_text_embeddings(bank, enc.encode_texts, cache)
        tembs[bank.name] = temb
        found = score_bank(emb, bank, temb, enc.manifest.name, msha, views=set(study.views))
        note_departures(found, bank, [(d.wanted, d.message) for d in rr.departures])
        scores += found
    fewshot: dict[str, dict[str, Any]] = {}
    if prototypes is not None:
        from cmrdx.zeroshot.fewshot import Prototypes

        protos = Prototypes.load(Path(prototypes))
        protos.check_model(enc.manifest.name, msha)
        findings = {f.id: f for b in loaded_banks for f in b.findings}
        for (fid, sc), shots in zip(protos.score(main).items(), protos.shots):
            rec: dict[str, Any] = {"score": sc, "call": Call.PRESENT if sc > 0 else Call.ABSENT,
                                   "shots": [int(x) for x in shots]}
            missing = findings[fid].missing(set(study.views)) if fid in findings else []
            if missing:  # the same evidence rule as the zero-shot call
                rec["call"] = Call.NOT_ASSESSABLE
                rec["reason"] = "needs " + "; and ".join(r.describe() for r in missing) + ": not in this study"
            rec["call"] = str(rec["call"])
            fewshot[fid] = rec
    typ = assess_typicality(enc.manifest, main)
    if typ.status == "atypical":  # the model has seen nothing like this study: no confident call stands
        for s in scores:
            make_uncertain(s, "atypical study: " + typ.reason)
        for rec in fewshot.values():
            if rec["call"] in (Call.PRESENT, Call.ABSENT):
                rec["call"], rec["reason"] = str(Call.UNCERTAIN), "atypical study"
    ranked = rank(scores)
    impression = compose_impression(ranked, loaded_banks, typicality=typ.status)
    t["score_ms"] = (time.perf_counter() - t4) * 1000
    explanation = None
    if explain:
        from cmrdx.pipeline.explain import ExplainOptions, explain_findings_of

        t5 = time.perf_counter()
        opts = explain if isinstance(explain, ExplainOptions) else ExplainOptions()
        explanation = explain_findings_of(study, enc, ranked, loaded_banks, tembs, msha, options=opts,
                                          only=explain_findings)
        t["explain_ms"] = (time.perf_counter() - t5) * 1000
    used_series = list(dict.fromkeys(u for rec in rr.used.values() for u in rec.get("series_uids", [])))
    skipped = [d.to_dict() for d in study.manifest.decisions if d.used_as is None]
    return ClassifyResult(
        study_uid=study.study_uid,
        source=str(study.source or path),
        findings=ranked,
        embedding=emb,
        main_embedding=None if mains is embs else main,
        model={"name": enc.manifest.name, "version": enc.manifest.version, "sha256": msha,
               "recipe": enc.manifest.recipe.get("name"), "licence": enc.manifest.licence},
        banks=[{"name": b.name, "version": b.version, "sha256": b.sha256, "path": str(b.path)} for b in loaded_banks],
        device=enc.description,
        views_used={seg: {k: v for k, v in rec.items() if k != "series_uids"} for seg, rec in rr.used.items()},
        series_used=used_series,
        warnings=_input_warnings(study, rr),
        skipped_series=skipped,
        timings_ms=t,
        files_scanned=study.manifest.files_scanned,
        files_skipped=dict(study.manifest.files_skipped),
        read_warnings=study.manifest.read_warnings.to_dict(),
        read_summary=study.manifest.read_warnings.summary(),
        typicality=typ.to_dict(),
        fewshot=fewshot,
        pacs=pacs,
        impression=impression,
        explanation=explanation,
    )
