"""Similar prior cases for one classified study (``add_similar(result, store)``, `cmrdx classify --db`): the k nearest studies of a search store (``cmrdx.pipeline.search``),
with the impression of each one's report when the archive holds one, the findings cmrdx calls on its stored
embedding, and, where the archive's studies carry labels, a nearest-neighbour vote per finding.

The vote is not a zero-shot score: it counts how many of the k most similar labelled studies were labelled with
the finding, and is shown as such, next to the zero-shot score and never in its place. The study itself (same
StudyInstanceUID) is never among its own priors.

Where things come from: the store's ``index.json`` names the archive it was built from; a prior's report is the
``report.txt`` in its folder or a parent folder inside the archive (cmrdx synth's layout); its labels are the
archive's ``labels.csv`` or ``truth.json`` files (``cmrdx.evaluation.archive.read_archive``). Report text is data:
only the impression section is kept, and outputs escape it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrdx.errors import CmrdxError
from cmrdx.pipeline.search import Store, open_store
from cmrdx.vocab import Call
from cmrdx.zeroshot.bank import PromptBank
from cmrdx.zeroshot.scoring import score_bank

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.pipeline.classify import ClassifyResult

log = logging.getLogger(__name__)

REPORT_NAMES = ("report.txt",)
IMPRESSION_CHARS = 400  # a prior's impression is cut here (with an ellipsis): the table stays readable
_HEAD = re.compile(r"\b(impression|conclusions?|in summary|summary)\b\s*[:.\-]?\s*", re.IGNORECASE)


def report_impression(text: str) -> str | None:
    """The impression of a report's text: what follows its last "Impression" / "Conclusion" / "Summary" heading,
    else its last paragraph; whitespace collapsed, cut at ``IMPRESSION_CHARS``. None for an empty report."""
    text = text.strip()
    if not text:
        return None
    heads = list(_HEAD.finditer(text))
    tail = text[heads[-1].end():] if heads and text[heads[-1].end():].strip() else text.split("\n\n")[-1]
    tail = " ".join(tail.split())
    return tail if len(tail) <= IMPRESSION_CHARS else tail[:IMPRESSION_CHARS - 3].rstrip() + "..."


def find_report(archive: Path, source: str) -> Path | None:
    """A prior's ``report.txt``: in its folder (``source``, relative to ``archive``) or a parent folder, never
    above the archive."""
    root = archive.resolve()
    d = (archive / source).resolve()
    while True:
        for n in REPORT_NAMES:
            if (d / n).is_file():
                return d / n
        if d == root or root not in d.parents:
            return None
        d = d.parent


@dataclass
class PriorCase:
    """One similar study: rank (from 1), UID, folder in the archive, cosine similarity, its report's impression,
    the findings cmrdx calls present on its stored embedding, and its labels (finding id -> 0/1/None) if any."""

    rank: int
    study_uid: str
    source: str
    similarity: float
    impression: str | None = None
    findings: list[str] = field(default_factory=list)
    labels: dict[str, int | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SimilarCases:
    """The k prior cases of one study, and the nearest-neighbour vote per finding where they carry labels
    (``votes[id] = {"present": n, "labelled": m, "fraction": n / m, "call": ...}``)."""

    store: str
    k: int
    cases: list[PriorCase]
    votes: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    VOTE_METHOD = ("nearest-neighbour vote: the share of the k most similar labelled studies labelled with the "
                   "finding; not the zero-shot score")

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "k": self.k, "cases": [c.to_dict() for c in self.cases],
                "votes": self.votes, "vote_method": self.VOTE_METHOD if self.votes else None, "notes": self.notes}


def _labels_by_uid(archive: Path) -> dict[str, dict[str, int | None]]:
    from cmrdx.evaluation.archive import read_archive

    try:
        rows = read_archive(archive)
    except CmrdxError as exc:
        log.info("%s: no labels (%s)", archive, exc.message)
        return {}
    return {r.study_uid: dict(r.labels) for r in rows if r.study_uid}


def vote(cases: Sequence[PriorCase], finding_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per finding id, among ``cases`` with a known label for it: how many are labelled present; the call is the
    majority (a tie is "uncertain")."""
    out: dict[str, dict[str, Any]] = {}
    for fid in finding_ids:
        known = [c.labels[fid] for c in cases if c.labels and c.labels.get(fid) is not None]
        if not known:
            continue
        n = int(sum(1 for x in known if x))
        frac = n / len(known)
        call = Call.PRESENT if frac > 0.5 else Call.ABSENT if frac < 0.5 else Call.UNCERTAIN
        out[fid] = {"present": n, "labelled": len(known), "fraction": round(frac, 4), "call": str(call)}
    return out


def similar_cases(store: Store | str | os.PathLike[str], embedding: np.ndarray, *, k: int, banks: Sequence[PromptBank],
                  text_embeddings: Mapping[str, Mapping[str, np.ndarray]], model_name: str, model_sha256: str,
                  exclude_uid: str | None = None, main: np.ndarray | None = None) -> SimilarCases:
    """The ``k`` studies of ``store`` nearest to the study whose embedding is ``embedding`` and main paths'
    embedding ``main`` (None: the embedding itself; distances between studies use it, ``Store.search_study``),
    the study ``exclude_uid`` left out, with their impressions, their findings called present by ``banks``
    (``text_embeddings``: bank name -> prompt -> vector) and the vote of their labels. Raises ModelError when the
    store was built with another model."""
    st = open_store(store)
    st.check_model(model_name, model_sha256)
    hits = [h for h in st.search_study(embedding, main, k + 1, exact=None) if h.study_uid != exclude_uid][:k]
    archive = Path(st.info["archive"]) if st.info.get("archive") else None
    notes: list[str] = ["a prior's findings are cmrdx's calls on its stored embedding; which views it lacked is not "
                        "known here, so none is called not assessable"]
    labels: dict[str, dict[str, int | None]] = {}
    if archive is None or not archive.is_dir():
        notes.append("the store does not name an archive folder that is here: no report impressions or labels")
    else:
        labels = _labels_by_uid(archive)
        if not labels:
            notes.append("the archive's studies carry no labels (labels.csv or truth.json): no vote")
    index = {r["study_uid"]: i for i, r in enumerate(st.rows)}
    cases: list[PriorCase] = []
    for h in hits:
        emb = np.asarray(st.emb[index[h.study_uid]], dtype=np.float32)  # its findings: prompts meet the embedding
        called = [s.label for b in banks
                  for s in score_bank(emb, b, dict(text_embeddings[b.name]), model_name, model_sha256)
                  if s.call == Call.PRESENT]
        imp = None
        if archive is not None and archive.is_dir():
            rep = find_report(archive, h.source)
            if rep is not None:
                try:
                    imp = report_impression(rep.read_text(encoding="utf-8", errors="replace"))
                except OSError as exc:
                    log.info("%s: unreadable report (%s)", rep, exc)
        cases.append(PriorCase(rank=len(cases) + 1, study_uid=h.study_uid, source=h.source,
                               similarity=round(h.score, 6), impression=imp, findings=called,
                               labels=labels.get(h.study_uid)))
    ids = list(dict.fromkeys(f.id for b in banks for f in b.findings))
    votes = vote(cases, ids) if labels else {}
    if labels and not votes:
        notes.append("no label of the similar studies names a finding of the banks: no vote")
    return SimilarCases(store=str(st.db), k=k, cases=cases, votes=votes, notes=notes)


def add_similar(result: ClassifyResult, store: Store | str | os.PathLike[str], *, k: int = 5, model: str | None = None,
                device: str = "auto", text_cache_dir: Path | None = None) -> SimilarCases:
    """``similar_cases`` for a classified study, with the model and banks it was classified with (``model``: the
    name or folder it was classified with; the encoder is the process's own, already loaded); sets and returns
    ``result.similar``. Raises ModelError when the store or ``model`` is not the result's model."""
    import time

    from cmrdx.errors import ModelError
    from cmrdx.model.loader import get_encoder, model_sha256
    from cmrdx.zeroshot.bank import get_bank
    from cmrdx.zeroshot.scoring import TextEmbeddingCache, bank_text_embeddings

    t0 = time.perf_counter()
    enc = get_encoder(model, device)
    sha = model_sha256(enc.manifest)
    if sha != result.model.get("sha256"):
        raise ModelError(f"model {enc.manifest.name!r} ({sha[:12]}) is not the model the study was classified with "
                         f"({str(result.model.get('sha256'))[:12]})", hint="pass the same --model")
    banks = [get_bank(b["path"]) for b in result.banks]
    cache = TextEmbeddingCache(sha, text_cache_dir)
    tembs = {b.name: bank_text_embeddings(b, enc.encode_texts, cache) for b in banks}
    result.similar = similar_cases(store, result.embedding, k=k, banks=banks, text_embeddings=tembs,
                                   model_name=enc.manifest.name, model_sha256=sha, exclude_uid=result.study_uid,
                                   main=result.distance_embedding)
    result.timings_ms["similar_ms"] = (time.perf_counter() - t0) * 1000
    return result.similar
