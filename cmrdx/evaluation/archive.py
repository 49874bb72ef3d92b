"""Study embeddings computed once and reused: an on-disk cache keyed by StudyInstanceUID + model sha256,
and labelled archives (``labels.csv``) embedded through it. Evaluating a new prompt on 500 studies then
costs text encoding only.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from cmrdx import config
from cmrdx.errors import CmrdxError

log = logging.getLogger(__name__)


class StudyEmbeddingCache:
    """One ``.npy`` per (model, study), written atomically; a damaged entry is recomputed, never fatal."""

    def __init__(self, model_sha256: str, folder: Path | None = None):
        self.model_sha256 = model_sha256
        base = Path(folder) if folder else config.home() / "cache" / "studies"
        self.folder = base / model_sha256[:32]

    def _path(self, study_uid: str) -> Path:
        h = hashlib.sha256(study_uid.encode()).hexdigest()
        return self.folder / h[:2] / f"{h}.npy"

    def get(self, study_uid: str) -> np.ndarray | None:
        p = self._path(study_uid)
        if not p.is_file():
            return None
        try:
            return np.load(p)
        except (OSError, ValueError) as exc:
            log.warning("%s: damaged cache entry (%s); recomputing", p, exc)
            return None

    def put(self, study_uid: str, emb: np.ndarray) -> None:
        p = self._path(study_uid)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".npy.tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.asarray(emb, dtype=np.float32))
            os.replace(tmp, p)
        except OSError as exc:
            log.warning("study embedding not cached in %s: %s", self.folder, exc)


@dataclass
class LabelledStudy:
    """One row of a labels file: where the study is, its UID if given, and 0/1/None per label column."""

    key: str  # the row's study reference as written
    path: Path | None
    study_uid: str | None
    labels: dict[str, int | None] = field(default_factory=dict)
    severities: dict[str, str] = field(default_factory=dict)


def load_labels(labels_csv: Path, data_root: Path | None = None, finding_ids: Iterable[str] | None = None) -> list[LabelledStudy]:
    """Read a labels CSV.

    Format: a ``study`` column (a study folder, relative to ``data_root`` or to the CSV's folder) and/or a
    ``study_instance_uid`` column; then one column per finding id holding 1 (present), 0 (absent) or empty
    (unknown); optional ``<id>_severity`` columns (none/mild/moderate/severe). Other columns are ignored.
    """
    labels_csv = Path(labels_csv)
    root = Path(data_root) if data_root else labels_csv.parent
    if not labels_csv.is_file():
        raise CmrdxError(f"{labels_csv}: no such labels file", hint="pass the CSV written by `cmrdx synth archive` or your own")
    with open(labels_csv, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "study" not in cols and "study_instance_uid" not in cols:
            raise CmrdxError(f"{labels_csv}:1: needs a `study` or `study_instance_uid` column (found {cols})",
                             hint="name the column holding study folders `study`")
        records = list(reader)
        if finding_ids is not None:
            wanted = list(finding_ids)
            missing = [f for f in wanted if f not in cols]
            if missing:
                raise CmrdxError(f"{labels_csv}:1: no column for {missing} (found {cols})", hint="name label columns by finding id")
        else:
            # label columns: every value 0, 1 or empty (metadata columns such as seed or vendor are ignored)
            wanted = [c for c in cols if c not in ("study", "study_instance_uid") and not c.endswith("_severity")
                      and all((r.get(c) or "").strip() in ("", "0", "1") for r in records)]
        rows = []
        for line, r in enumerate(records, start=2):
            labels: dict[str, int | None] = {}
            for fid in wanted:
                v = (r.get(fid) or "").strip()
                if v == "":
                    labels[fid] = None
                elif v in ("0", "1"):
                    labels[fid] = int(v)
                else:
                    raise CmrdxError(f"{labels_csv}:{line}: column {fid!r} holds {v!r}", hint="use 1, 0 or leave it empty")
            key = (r.get("study") or r.get("study_instance_uid") or "").strip()
            path = (root / r["study"].strip()) if r.get("study") else None
            rows.append(LabelledStudy(key=key, path=path, study_uid=(r.get("study_instance_uid") or "").strip() or None,
                                      labels=labels, severities={f: (r.get(f"{f}_severity") or "").strip() for f in wanted}))
    return rows


@dataclass
class EmbeddedSet:
    """Embeddings of labelled studies, aligned with ``rows``; ``failed`` holds (key, reason) of the rest."""

    rows: list[LabelledStudy]
    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    failed: list[tuple[str, str]] = field(default_factory=list)
    cached: int = 0

    def labels(self, fid: str) -> tuple[np.ndarray, np.ndarray]:
        """(indices with a known label, their 0/1 labels) for finding ``fid``."""
        idx = [i for i, r in enumerate(self.rows) if r.labels.get(fid) is not None]
        return np.array(idx, dtype=int), np.array([self.rows[i].labels[fid] for i in idx], dtype=int)


def embed_study_folder(path: str | Path, encoder, params=None) -> tuple[np.ndarray, str, float, float]:
    """One study folder read as a user's study is (``assemble_study`` + the model's recipe) and encoded:
    (embedding, StudyInstanceUID, seconds reading + preprocessing, seconds encoding). Errors propagate."""
    import time

    from cmrdx.study.assemble import assemble_study
    from cmrdx.recipe import apply_recipe

    t0 = time.perf_counter()
    study = assemble_study(str(path))
    x = apply_recipe(study, params if params is not None else encoder.manifest.recipe_params()).array
    t1 = time.perf_counter()
    emb = encoder.encode_studies(x[None])[0]
    return emb, study.study_uid, t1 - t0, time.perf_counter() - t1


def embed_labelled(
    rows: list[LabelledStudy], encoder, cache: StudyEmbeddingCache | None, progress: Callable[[int, int], None] | None = None
) -> EmbeddedSet:
    """Embed every labelled study (cache first); a study that cannot be read is recorded, not fatal."""
    from cmrdx.errors import CmrdxError as _Err

    params = encoder.manifest.recipe_params()
    kept, embs, failed, cached = [], [], [], 0
    for i, r in enumerate(rows):
        emb = cache.get(r.study_uid) if (cache is not None and r.study_uid) else None
        if emb is not None:
            cached += 1
        else:
            if r.path is None:
                failed.append((r.key, "no study folder and no cached embedding for this UID"))
                continue
            try:
                emb, uid, _, _ = embed_study_folder(r.path, encoder, params)
            except (_Err, ValueError) as exc:
                failed.append((r.key, str(exc).splitlines()[0]))
                continue
            r.study_uid = r.study_uid or uid
            if cache is not None:
                cache.put(r.study_uid, emb)
        kept.append(r)
        embs.append(emb)
        if progress:
            progress(i + 1, len(rows))
    arr = np.stack(embs).astype(np.float32) if embs else np.zeros((0, encoder.manifest.embedding_dim), np.float32)
    return EmbeddedSet(rows=kept, embeddings=arr, failed=failed, cached=cached)
