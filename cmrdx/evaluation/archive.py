"""Labelled archives and their study embeddings, for every path that scores a model on labelled studies (the
benchmarks of ``cmrdx.evaluation.benchmarks``, prompt authoring, few-shot fitting):

* one reader of labels: ``load_labels`` (a labels CSV) and ``read_archive`` (an archive folder: its
  ``labels.csv``, else each study folder's ``truth.json``), both giving ``LabelledStudy`` rows;
* one cache of study embeddings (``StudyEmbeddingCache``), keyed by the model's identity (``Manifest.sha256``),
  the precision its video tower runs at (the embedding depends on it) and the StudyInstanceUID;
* one way to embed labelled rows through it (``embed_labelled``), each study read as a user's study is
  (``embed_study_folder``: ``assemble_study`` + the model's recipe).

Evaluating a new prompt on 500 studies then costs text encoding only.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmrdx import config
from cmrdx.errors import CmrdxError
from cmrdx.fileio import atomic_write
from cmrdx.model.loader import model_sha256

log = logging.getLogger(__name__)

LABELS_CSV = "labels.csv"
TRUTH_JSON = "truth.json"  # cmrdx synth's ground truth, one per study folder
REPORT_TXT = "report.txt"


class StudyEmbeddingCache:
    """Study embeddings on disk, one ``.npy`` per (model sha256, precision, StudyInstanceUID), written
    atomically; a damaged entry is recomputed, never fatal.

    ``StudyEmbeddingCache.for_encoder(encoder)`` is bound to what the encoder runs; a cache made from a model
    sha256 alone is bound to the encoder's precision when ``embed_labelled`` uses it (``bind``)."""

    def __init__(self, model_sha256: str, folder: Path | None = None, *, precision: str | None = None):
        self.model_sha256 = model_sha256
        self.precision = precision
        self.base = Path(folder) if folder else config.home() / "cache" / "studies"

    @classmethod
    def for_encoder(cls, encoder: Any, folder: Path | None = None) -> StudyEmbeddingCache:
        return cls(model_sha256(encoder.manifest), folder, precision=encoder.precision)

    def bind(self, encoder: Any) -> StudyEmbeddingCache:
        """This cache for ``encoder``'s embeddings: ValueError when it was made for another model or precision."""
        sha = model_sha256(encoder.manifest)
        if sha != self.model_sha256:
            raise ValueError(f"study embedding cache of model {self.model_sha256[:12]}... used with model "
                             f"{encoder.manifest.name!r} ({sha[:12]}...)")
        if self.precision == encoder.precision:
            return self
        if self.precision is not None:
            raise ValueError(f"study embedding cache of {self.precision} embeddings used with an encoder running "
                             f"{encoder.precision}")
        return StudyEmbeddingCache(sha, self.base, precision=encoder.precision)

    @property
    def folder(self) -> Path:
        if self.precision is None:
            raise ValueError("the study embedding cache is not bound to a precision: use "
                             "StudyEmbeddingCache.for_encoder(encoder) or cache.bind(encoder)")
        return self.base / f"{self.model_sha256[:32]}-{self.precision}"

    def _path(self, study_uid: str) -> Path:
        h = hashlib.sha256(study_uid.encode()).hexdigest()
        return self.folder / h[:2] / f"{h}.npy"

    def get(self, study_uid: str) -> np.ndarray | None:
        """The cached embedding, (D,); None when there is none (or it is damaged)."""
        got = self.get_main(study_uid)
        return got[0] if got is not None else None

    def get_main(self, study_uid: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(embedding, main) as ``Encoder.encode_studies_main`` gave them (main is the embedding itself for an
        entry of a model without a second output); None when there is none (or it is damaged)."""
        p = self._path(study_uid)
        if not p.is_file():
            return None
        try:
            arr = np.load(p)
        except (OSError, ValueError) as exc:
            log.warning("%s: damaged cache entry (%s); recomputing", p, exc)
            return None
        if arr.ndim == 2 and len(arr) == 2:
            return arr[0], arr[1]
        if arr.ndim != 1:
            log.warning("%s: damaged cache entry (shape %s); recomputing", p, arr.shape)
            return None
        return arr, arr

    def put(self, study_uid: str, emb: np.ndarray, main: np.ndarray | None = None) -> None:
        """Cache a study's embedding, and its main paths' embedding when the model has one (stored as rows 0 and
        1 of one (2, D) array; an entry without it stays (D,), as before)."""
        arr = np.asarray(emb, dtype=np.float32)
        if main is not None and main is not emb:
            arr = np.stack([arr, np.asarray(main, dtype=np.float32)])
        try:
            atomic_write(self._path(study_uid), lambda f: np.save(f, arr))
        except OSError as exc:
            log.warning("study embedding not cached in %s: %s", self.folder, exc)


@dataclass
class LabelledStudy:
    """One labelled study: where it is, its UID if known, and 0/1/None per finding (severity when given)."""

    key: str  # the row's study reference as written (the folder name for an archive read from truth.json)
    path: Path | None
    study_uid: str | None
    labels: dict[str, int | None] = field(default_factory=dict)
    severities: dict[str, str] = field(default_factory=dict)

    def report(self) -> str | None:
        """The study folder's ``report.txt`` (stripped), or None when there is none."""
        p = self.path / REPORT_TXT if self.path is not None else None
        return p.read_text(encoding="utf-8").strip() if p is not None and p.is_file() else None


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


def _from_truth(d: Path) -> LabelledStudy | None:
    try:
        truth = json.loads((d / TRUTH_JSON).read_text(encoding="utf-8"))
        findings = {str(k): str(v) for k, v in dict(truth.get("findings", {})).items()}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("%s: unreadable %s (%s)", d, TRUTH_JSON, exc)
        return None
    return LabelledStudy(key=d.name, path=d, study_uid=truth.get("study_instance_uid") or None,
                         labels={f: int(s != "none") for f, s in findings.items()}, severities=findings)


def read_archive(root: str | Path) -> list[LabelledStudy]:
    """The labelled studies of an archive folder: its ``labels.csv`` (``load_labels``; study folders relative
    to ``root``), else one row per study folder (in name order) holding a ``truth.json`` written by
    ``cmrdx synth`` (its findings' severities, 0/1 labels from them, and its StudyInstanceUID)."""
    root = Path(root)
    if not root.is_dir():
        raise CmrdxError(f"{root} is not a folder", hint="pass an archive folder (cmrdx synth archive writes one)")
    if (root / LABELS_CSV).is_file():
        return load_labels(root / LABELS_CSV, root)
    rows = [_from_truth(d) for d in sorted(p for p in root.iterdir() if p.is_dir() and (p / TRUTH_JSON).is_file())]
    return [r for r in rows if r is not None]


@dataclass
class EmbeddedSet:
    """Embeddings of labelled studies, aligned with ``rows``; ``failed`` holds (key, reason) of the rest.

    Attributes:
        cached: studies whose embedding came from the cache.
        failure_kinds: failures counted by kind ("no study folder", "unreadable (NoDicomError)", ...).
        read_seconds, encode_seconds: per study embedded in this call (not cached), reading + recipe and
            encoding.
    """

    rows: list[LabelledStudy]
    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    # (N, D): the main paths' embeddings (``Encoder.encode_studies_main``), which distances between studies use
    # (few-shot, typicality references); None when they are ``embeddings`` (a model without a finding stream)
    main: np.ndarray | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)
    cached: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    read_seconds: list[float] = field(default_factory=list)
    encode_seconds: list[float] = field(default_factory=list)

    @property
    def distance_embeddings(self) -> np.ndarray:
        """What distances between studies use: ``main`` when the model has a finding stream, else ``embeddings``."""
        return self.main if self.main is not None else self.embeddings

    def labels(self, fid: str) -> tuple[np.ndarray, np.ndarray]:
        """(indices with a known label, their 0/1 labels) for finding ``fid``."""
        idx = [i for i, r in enumerate(self.rows) if r.labels.get(fid) is not None]
        return np.array(idx, dtype=int), np.array([self.rows[i].labels[fid] for i in idx], dtype=int)


def _read_study(path: str | Path, params: Any, study_uid: str | None = None, inspection: Any = None) -> tuple[np.ndarray, str]:
    from cmrdx.recipe import apply_recipe
    from cmrdx.study.assemble import assemble_study

    study = assemble_study(inspection if inspection is not None else str(path), study_uid)
    return apply_recipe(study, params).array, study.study_uid


def embed_study_folder(path: str | Path, encoder: Any, params: Any = None, *,
                       main: bool = False) -> tuple[np.ndarray, str, float, float]:
    """One study folder read as a user's study is (``assemble_study`` + the model's recipe) and encoded:
    (embedding, StudyInstanceUID, seconds reading + preprocessing, seconds encoding). ``main``: the main paths'
    embedding instead (``Encoder.encode_studies_main``: what typicality and other distances use). Errors
    propagate."""
    t0 = time.perf_counter()
    x, uid = _read_study(path, params if params is not None else encoder.manifest.recipe_params())
    t1 = time.perf_counter()
    emb = encoder.encode_studies_main(x[None])[1][0] if main else encoder.encode_studies(x[None])[0]
    return emb, uid, t1 - t0, time.perf_counter() - t1


def embed_labelled(
    rows: list[LabelledStudy], encoder: Any, cache: StudyEmbeddingCache | None,
    progress: Callable[[int, int], None] | None = None, *, refresh: bool = False,
) -> EmbeddedSet:
    """Embed every labelled study, the cache first (``refresh`` recomputes and rewrites every entry). A row
    without a UID learns it from its folder's headers before the cache is asked. A study that cannot be read
    is recorded in ``failed``, not fatal; an encoder error propagates."""
    from cmrdx.study.assemble import inspect_study

    if cache is not None:
        cache = cache.bind(encoder)
    params = encoder.manifest.recipe_params()
    out = EmbeddedSet(rows=[], embeddings=np.zeros((0, encoder.manifest.embedding_dim), np.float32))
    embs, mains = [], []
    has_main = bool(getattr(encoder, "main_output", None))

    def fail(r: LabelledStudy, kind: str, reason: str) -> None:
        out.failed.append((r.key, reason))
        out.failure_kinds[kind] = out.failure_kinds.get(kind, 0) + 1

    for i, r in enumerate(rows):
        if progress:
            progress(i, len(rows))
        emb = None
        insp = None
        if cache is not None and not refresh and r.study_uid is None and r.path is not None:
            try:
                insp = inspect_study(str(r.path))  # headers only: the UID, then the cache
                r.study_uid = insp.study_uid
            except Exception as exc:  # noqa: BLE001 - recorded, the others go on
                fail(r, f"unreadable ({type(exc).__name__})", str(exc).splitlines()[0])
                continue
        main = None
        if cache is not None and not refresh and r.study_uid:
            got = cache.get_main(r.study_uid)
            # an entry without the main embedding, for a model that has one, is not this model's: embed again
            if got is not None and (got[1] is not got[0] or not has_main):
                emb, main = got
        if emb is not None:
            out.cached += 1
        elif r.path is None:
            fail(r, "no study folder", "no study folder and no cached embedding for this UID")
            continue
        else:
            t0 = time.perf_counter()
            try:
                x, uid = _read_study(r.path, params, r.study_uid, insp)
            except Exception as exc:  # noqa: BLE001 - recorded, the others go on
                log.warning("%s: %s", r.key, exc)
                fail(r, f"unreadable ({type(exc).__name__})", str(exc).splitlines()[0])
                continue
            t1 = time.perf_counter()
            if has_main:
                e1, m1 = encoder.encode_studies_main(x[None])
                emb, main = e1[0], m1[0]
            else:
                emb = encoder.encode_studies(x[None])[0]
            out.read_seconds.append(t1 - t0)
            out.encode_seconds.append(time.perf_counter() - t1)
            r.study_uid = r.study_uid or uid
            if cache is not None:
                cache.put(r.study_uid, emb, main)
        out.rows.append(r)
        embs.append(emb)
        mains.append(main if main is not None else emb)
    if progress:
        progress(len(rows), len(rows))
    if embs:
        out.embeddings = np.stack(embs).astype(np.float32)
        if has_main:
            out.main = np.stack(mains).astype(np.float32)
    return out
