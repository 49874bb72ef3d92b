"""Few-shot prototypes (SimpleShot: centre on the support mean, L2-normalise, class mean) per finding.

A prototype file (.npz) holds embeddings and labels only, no patient data, and names the model (name and
sha256) it belongs to; prototypes of another model are refused.

From labelled studies (``cmrdx fewshot fit``): ``labels_for_prototypes`` turns rows of labels into the support
labels per finding (``shots`` per class at most), ``fit_from_labelled`` fits them on an embedded set
(``cmrdx.evaluation.archive.embed_labelled``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cmrdx.errors import CmrdxError, ModelError
from cmrdx.fileio import atomic_write


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class Prototypes:
    """Per finding: the support mean (D,) and the negative / positive class prototypes (2, D)."""

    model_name: str
    model_sha256: str
    findings: list[str]
    centre: np.ndarray  # (F, D)
    protos: np.ndarray  # (F, 2, D): [absent, present]
    shots: np.ndarray  # (F, 2) examples per class

    def score(self, emb: np.ndarray) -> dict[str, float]:
        """Few-shot score per finding: cos(present prototype) - cos(absent prototype), in [-2, 2]; > 0 leans
        present."""
        return {f: float(s[0]) for f, s in zip(self.findings, self.score_many(emb[None, :]))}

    def score_many(self, emb: np.ndarray) -> np.ndarray:
        """(N, D) embeddings -> (F, N) few-shot scores (as ``score``)."""
        q = _l2(emb[None, :, :] - self.centre[:, None, :])  # (F, N, D): centred on each finding's support mean
        sims = np.einsum("fnd,fcd->fnc", q, self.protos)
        return sims[..., 1] - sims[..., 0]

    def check_model(self, name: str, sha256: str) -> None:
        if sha256 != self.model_sha256:
            raise ModelError(
                f"prototypes were made with model {self.model_name!r} ({self.model_sha256[:12]}), not {name!r} ({sha256[:12]})",
                hint="re-run `cmrdx fewshot fit` with this model",
            )

    def save(self, path: Path) -> None:
        meta = json.dumps({"model_name": self.model_name, "model_sha256": self.model_sha256, "findings": self.findings,
                           "format": "cmrdx-prototypes/1"})
        atomic_write(path, lambda f: np.savez(f, meta=np.array(meta), centre=self.centre, protos=self.protos,
                                              shots=self.shots))

    @classmethod
    def load(cls, path: Path) -> Prototypes:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                return cls(meta["model_name"], meta["model_sha256"], list(meta["findings"]), z["centre"], z["protos"], z["shots"])
        except (OSError, KeyError, ValueError) as exc:
            raise CmrdxError(f"{path}: not a cmrdx prototype file ({exc})", hint="make one with `cmrdx fewshot fit`") from exc


def fit_prototypes(emb: np.ndarray, labels: dict[str, np.ndarray], model_name: str, model_sha256: str) -> Prototypes:
    """``emb`` (N, D) L2-normalised; ``labels`` finding -> (N,) of 0/1/-1 (-1 = unknown, not used)."""
    if not labels:
        raise CmrdxError("no finding to fit prototypes for", hint="name label columns with --finding")
    findings, centres, protos, shots = [], [], [], []
    for fid, y in labels.items():
        y = np.asarray(y)
        pos, neg = emb[y == 1], emb[y == 0]
        if len(pos) == 0 or len(neg) == 0:
            raise CmrdxError(f"{fid}: needs at least one present and one absent example ({len(pos)} / {len(neg)})",
                             hint="add labelled studies for this finding, or leave it out")
        c = np.concatenate([pos, neg]).mean(axis=0)
        findings.append(fid)
        centres.append(c)
        protos.append(np.stack([_l2(_l2(neg - c).mean(axis=0)), _l2(_l2(pos - c).mean(axis=0))]))
        shots.append([len(neg), len(pos)])
    return Prototypes(model_name, model_sha256, findings, np.stack(centres).astype(np.float32),
                      np.stack(protos).astype(np.float32), np.array(shots))


class _Labelled(Protocol):
    labels: Mapping[str, int | None]  # finding -> 1 / 0 / None (unknown)


def labels_for_prototypes(rows: Sequence[_Labelled], findings: Sequence[str] | None = None,
                          shots: int | None = None) -> dict[str, np.ndarray]:
    """Support labels per finding, aligned with ``rows`` (``LabelledStudy`` rows, or anything with a ``labels``
    mapping): finding -> (N,) of 1 / 0 / -1 (unknown). With ``shots``, only the first ``shots`` rows of each
    class (in row order) are kept, the rest become -1. ``findings`` default: the first row's label columns."""
    if findings is None:
        findings = list(rows[0].labels) if rows else []
    y: dict[str, np.ndarray] = {}
    for fid in findings:
        lab = np.array([r.labels.get(fid) if r.labels.get(fid) is not None else -1 for r in rows], dtype=int)
        if shots:
            for c in (0, 1):
                lab[np.flatnonzero(lab == c)[shots:]] = -1
        y[fid] = lab
    return y


def fit_from_labelled(embedded: Any, findings: Sequence[str] | None, shots: int | None, model_name: str,
                      model_sha256: str) -> Prototypes:
    """Prototypes from an embedded labelled set (``EmbeddedSet``: ``rows`` and their ``embeddings``), with at
    most ``shots`` examples per class and finding (all when None), for the model that embedded it."""
    if not embedded.rows:
        why = f": {embedded.failed[0][1]}" if getattr(embedded, "failed", None) else ""
        raise CmrdxError(f"no labelled study could be embedded{why}",
                         hint="check the labels file's `study` column and --data")
    y = labels_for_prototypes(embedded.rows, findings, shots)
    # the main paths' embeddings where the model has a finding stream: prototypes are distances between studies
    emb = getattr(embedded, "distance_embeddings", None)
    return fit_prototypes(np.asarray(emb if emb is not None else embedded.embeddings), y, model_name, model_sha256)
