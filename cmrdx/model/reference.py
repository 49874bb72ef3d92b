"""How typical a study is of the studies a model was trained on. Numpy only: no torch, no onnxruntime.

A model that has only seen synthetic phantoms still scores a real scanner study, and its scores then mean
nothing. Every model can carry a *reference*: the embeddings of studies drawn like its training studies (or a
user's own archive), in ``reference.npz`` in its model folder, listed in ``manifest.json`` ("files" with its
sha256, and a "reference" section saying how it was built). A study is then assessed against it:

* score: the mean cosine distance from the study's embedding to its ``k`` nearest reference embeddings;
* threshold: the ``quantile`` (0.99) of the reference's own leave-one-out scores (each reference study scored
  against the others), so about 1% of studies like the reference's are called atypical;
* percentile: the share (in %) of the reference's leave-one-out scores below the study's.

Why nearest neighbours rather than one Gaussian (Mahalanobis): the reference is a mixture (findings present
or absent in every combination), which a mean and a covariance describe poorly; a covariance in 128-512
dimensions needs shrinkage that a user's reference of 20-50 studies cannot estimate, and nearest neighbours
need none. The leave-one-out scores are those of studies the distance never saw, so the threshold is the one a
new study drawn like the reference meets (slightly conservatively: it has one more neighbour to choose from).

Embeddings are L2-normalised (the encoder's output); a study's embedding is normalised again before scoring.

What it cannot say: "typical" means "near the reference", so a reference is only as narrow as what it is drawn
from. A model trained on wide, randomised phantoms gets a wide reference, and non-cardiac real MR images can fall
inside it: the mixed adaptation 0.6.0.dev2, with a reference drawn like its training, called all 19 real-pixel cine
studies of the benchmark typical, where the bundled model (classic phantoms) calls all 19 atypical
(bench/results/families-adapt.md). Check a new model's reference on such studies
(``bench/build_reference.py measure``) before trusting its "typical".
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from cmrdx.errors import CmrdxError, ModelError
from cmrdx.fileio import atomic_write
from cmrdx.model.manifest import Manifest, load_manifest, sha256_file, update_manifest

if TYPE_CHECKING:
    from cmrdx.evaluation.archive import EmbeddedSet

log = logging.getLogger(__name__)

METHOD = "knn-mean-cosine-distance"
FORMAT = 1
REFERENCE_FILE = "reference.npz"
DEFAULT_K = 10
DEFAULT_QUANTILE = 0.99
MIN_STUDIES = 20  # fewer leave-one-out scores than this say little about a 99th percentile
STATUSES = ("typical", "atypical", "unknown")


@dataclass(frozen=True)
class Typicality:
    """How typical one study is of a model's reference.

    ``status``: "typical" (score at or below the threshold), "atypical" (above it: the model has seen nothing
    like this study, so its scores are not to be trusted), or "unknown" (the model has no reference). ``score``
    and ``threshold`` are mean cosine distances to the ``k`` nearest reference studies; ``percentile`` is the
    share (%) of the reference's own studies that score lower. ``reason`` says it in words."""

    status: str
    score: float | None
    threshold: float | None
    percentile: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def unknown(cls, model: str) -> Typicality:
        """The assessment of a study by a model that has no reference."""
        return cls("unknown", None, None, None,
                   f"model {model!r} carries no reference of its training studies, so whether this study is like "
                   f"them is unknown; build one with `cmrdx models reference {model} --data ARCHIVE`")


@dataclass
class Reference:
    """Reference embeddings (N, D), L2-normalised, and their leave-one-out scores (sorted ascending).

    Build one with ``build_reference``; ``save`` / ``Reference.load`` write and read ``reference.npz``."""

    embeddings: np.ndarray
    loo_scores: np.ndarray
    k: int
    quantile: float
    threshold: float
    source: str
    method: str = METHOD
    model_sha256: str | None = None  # the identity of the model whose embeddings these are, when known
    precision: str | None = None  # the video tower precision that made them ("float32", ...), when known
    extra: dict[str, Any] = field(default_factory=dict)  # anything else a builder records (seeds, counts)

    @property
    def n(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    # ------------------------------------------------------------------ scoring
    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Mean cosine distance of each row of ``embeddings`` (M, D) to its ``k`` nearest reference rows."""
        q = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
        if q.shape[1] != self.dim:
            raise ModelError(f"an embedding of {q.shape[1]} values was assessed against a reference of {self.dim}",
                             hint="assess embeddings of the model the reference was built for")
        if not np.all(np.isfinite(q)):
            raise ValueError("embedding holds NaN or infinite values")
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        d = 1.0 - q @ self.embeddings.astype(np.float64).T
        return np.partition(d, self.k - 1, axis=1)[:, : self.k].mean(axis=1)

    def percentile(self, score: float) -> float:
        """Share (%) of the reference's leave-one-out scores strictly below ``score``."""
        return 100.0 * float(np.searchsorted(self.loo_scores, score, side="left")) / self.n

    def assess(self, embedding: np.ndarray) -> Typicality:
        """The typicality of one study embedding (D,)."""
        return self.assess_many(np.asarray(embedding)[None])[0]

    def assess_many(self, embeddings: np.ndarray) -> list[Typicality]:
        """The typicality of each row of ``embeddings`` (M, D)."""
        out = []
        for s in self.scores(embeddings):
            score = float(s)
            pct = self.percentile(score)
            atypical = score > self.threshold
            where = (f"mean cosine distance {score:.3f} to its {self.k} nearest of the {self.n} reference studies; "
                     f"{pct:.1f}% of the reference's own studies lie closer to theirs")
            reason = (f"unlike the studies this model knows: {where}, beyond the {self.quantile:.0%} threshold "
                      f"{self.threshold:.3f}; its scores are not to be trusted" if atypical else
                      f"like the studies this model knows: {where} (threshold {self.threshold:.3f})")
            out.append(Typicality("atypical" if atypical else "typical", score, float(self.threshold), pct, reason))
        return out

    # ------------------------------------------------------------------ files
    def meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "method": self.method, "k": self.k, "quantile": self.quantile,
                "threshold": self.threshold, "n": self.n, "embedding_dim": self.dim, "source": self.source,
                "model_sha256": self.model_sha256, "precision": self.precision, "extra": self.extra}

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (an .npz: ``embeddings``, ``loo_scores``, ``meta`` JSON) atomically. The same
        reference always gives the same bytes (fixed zip timestamps), so a rebuilt file has the same sha256."""
        arrays: dict[str, np.ndarray] = {"embeddings": self.embeddings.astype(np.float32), "loo_scores": self.loo_scores.astype(np.float64),
                  "meta": np.array(json.dumps(self.meta(), sort_keys=True))}
        return atomic_write(path, lambda f: _write_npz(f, arrays))

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        """Read a reference written by ``save``; ModelError names the file when it cannot be read."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                emb = np.asarray(z["embeddings"], dtype=np.float32)
                loo = np.asarray(z["loo_scores"], dtype=np.float64)
                meta = json.loads(str(z["meta"][()]))
            ref = cls(embeddings=emb, loo_scores=loo, k=int(meta["k"]), quantile=float(meta["quantile"]),
                      threshold=float(meta["threshold"]), source=str(meta["source"]), method=str(meta["method"]),
                      model_sha256=meta.get("model_sha256"), precision=meta.get("precision"),
                      extra=dict(meta.get("extra") or {}))
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise ModelError(f"{path}: not a readable reference ({type(exc).__name__}: {exc})",
                             hint="rebuild it with `cmrdx models reference MODEL --data ARCHIVE`") from exc
        if meta.get("format") != FORMAT or ref.method != METHOD:
            raise ModelError(f"{path}: reference format {meta.get('format')!r}, method {ref.method!r} is not supported "
                             f"(expected format {FORMAT}, {METHOD})", hint="rebuild it with `cmrdx models reference`")
        if emb.ndim != 2 or loo.shape != (emb.shape[0],) or not 0 < ref.k < emb.shape[0]:
            raise ModelError(f"{path}: inconsistent reference ({emb.shape} embeddings, {loo.shape} scores, k={ref.k})",
                             hint="rebuild it with `cmrdx models reference`")
        return ref

    def section(self, file: str = REFERENCE_FILE) -> dict[str, Any]:
        """The manifest's "reference" section for this reference stored as ``file``."""
        return {"file": file, "method": self.method, "k": self.k, "quantile": self.quantile,
                "threshold": round(self.threshold, 6), "n": self.n, "precision": self.precision, "data": self.source,
                **({"details": self.extra} if self.extra else {})}


def _write_npz(f: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps: the file's bytes depend on the arrays only."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
            z.writestr(info, buf.getvalue())


def build_reference(embeddings: np.ndarray, *, source: str, k: int = DEFAULT_K, quantile: float = DEFAULT_QUANTILE,
                    model_sha256: str | None = None, precision: str | None = None,
                    extra: dict[str, Any] | None = None) -> Reference:
    """A reference from study embeddings (N, D) of one model: each row L2-normalised, its leave-one-out score
    (mean cosine distance to its ``k`` nearest other rows) computed, the threshold their ``quantile``.

    ``source`` says in words what the studies are (it is shown with every assessment). Raises ValueError for
    fewer than ``k + 1`` rows, a ``quantile`` outside (0, 1], or values that are not finite."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {e.shape}")
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    if k < 1 or e.shape[0] < k + 1:
        raise ValueError(f"a reference with k={k} needs at least {k + 1} studies, got {e.shape[0]}")
    if not np.all(np.isfinite(e)):
        raise ValueError("embeddings hold NaN or infinite values")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    e32 = e.astype(np.float32)
    ref = Reference(embeddings=e32, loo_scores=np.zeros(0), k=int(k), quantile=float(quantile), threshold=0.0,
                    source=source, model_sha256=model_sha256, precision=precision, extra=dict(extra or {}))
    # leave-one-out in blocks (the whole N x N distance matrix of a large reference need not fit at once)
    loo = np.empty(e.shape[0])
    ref64 = e32.astype(np.float64)
    for a in range(0, e.shape[0], 1024):
        d = 1.0 - ref64[a:a + 1024] @ ref64.T
        d[np.arange(d.shape[0]), np.arange(a, a + d.shape[0])] = np.inf  # a study is not its own neighbour
        loo[a:a + 1024] = np.partition(d, k - 1, axis=1)[:, :k].mean(axis=1)
    ref.loo_scores = np.sort(loo)
    ref.threshold = float(np.quantile(loo, quantile))
    return ref


_LOADED: dict[tuple[str, str], Reference] = {}


def load_reference(manifest: Manifest) -> Reference | None:
    """The reference a model's manifest lists, or None when it lists none (assess as ``Typicality.unknown``).

    The file is checked against the manifest's sha256 and against the model (embedding size; the model
    identity it was built for), and read once per process. ModelError names the file and the fix when the
    listed reference is missing, altered, unreadable or another model's."""
    sec = manifest.reference
    if not sec:
        return None
    rel = str(sec.get("file", ""))
    path = manifest.path(rel)  # ModelError when the section names a file the manifest does not list
    listed = str(manifest.files[rel].get("sha256"))
    key = (str(path.resolve()), listed)
    if key in _LOADED:
        return _LOADED[key]
    fix = f"rebuild it with `cmrdx models reference {manifest.name} --data ARCHIVE --replace`"
    if not path.is_file():
        raise ModelError(f"{path}: the reference listed in {manifest.root / 'manifest.json'} is missing", hint=fix)
    digest = sha256_file(path)
    if digest != listed:
        raise ModelError(f"{path}: sha256 {digest[:12]}... differs from the manifest's {listed[:12]}...", hint=fix)
    ref = Reference.load(path)
    if ref.dim != manifest.embedding_dim:
        raise ModelError(f"{path}: reference embeddings of {ref.dim} values for a model of {manifest.embedding_dim}",
                         hint=fix)
    if ref.model_sha256 and ref.model_sha256 != manifest.sha256:
        raise ModelError(f"{path} was built for model {ref.model_sha256[:12]}..., not this one "
                         f"({manifest.name}, {manifest.sha256[:12]}...)", hint=fix)
    _LOADED[key] = ref
    return ref


def install_reference(model: str | Path | Manifest, ref: Reference, *, replace: bool = False,
                      file: str = REFERENCE_FILE) -> Manifest:
    """Write ``ref`` into a model folder as ``file`` and list it in the manifest (file, sha256 and the
    "reference" section), each written atomically; the model's identity does not change. Refuses to replace an
    existing reference unless ``replace``; refuses a reference of another embedding size or model."""
    from cmrdx.model.registry import resolve

    m = model if isinstance(model, Manifest) else load_manifest(resolve(model), verify=False)
    if ref.dim != m.embedding_dim:
        raise ModelError(f"a reference of {ref.dim}-value embeddings cannot serve {m.name} ({m.embedding_dim} values)")
    if ref.model_sha256 and ref.model_sha256 != m.sha256:
        raise ModelError(f"the reference was built with model {ref.model_sha256[:12]}..., not {m.name} "
                         f"({m.sha256[:12]}...)", hint="build it with this model")
    if m.reference and not replace:
        raise ModelError(f"{m.name} in {m.root} already has a reference ({m.reference.get('n')} studies: "
                         f"{m.reference.get('data')})", hint="pass --replace to build a new one in its place")
    try:
        ref.save(m.root / file)
        return update_manifest(m.root, {"reference": ref.section(file)}, [file])
    except OSError as exc:
        raise ModelError(f"cannot write the reference into {m.root}: {exc}",
                         hint=f"copy the model folder somewhere writable (e.g. $CMRDX_HOME/models/{m.name}) and "
                              "build the reference there") from exc


@dataclass
class ArchiveReference:
    """What ``reference_from_archive`` built and what it read: the reference, the study folders found, those
    embedded (one per StudyInstanceUID), duplicates left out, and failures by kind."""

    reference: Reference
    folders: int
    embedded: EmbeddedSet
    duplicates: int


def reference_from_archive(model: str | Path | None, data: str | Path, *, k: int = DEFAULT_K,
                           quantile: float = DEFAULT_QUANTILE, min_studies: int = MIN_STUDIES, device: str = "cpu",
                           source: str | None = None, progress: Callable[[int, int], None] | None = None,
                           precision: str | None = "auto") -> ArchiveReference:
    """A reference from an archive folder of study folders, each read as a user's study is (header scan,
    assembly, the model's recipe, its encoder; embeddings cached like the benchmarks'). A folder that cannot be
    read is counted and left out; a study found twice (same StudyInstanceUID) counts once. Raises CmrdxError
    when fewer than ``min_studies`` studies could be read."""
    from cmrdx.evaluation.archive import LabelledStudy, StudyEmbeddingCache, embed_labelled
    from cmrdx.model.loader import get_encoder

    root = Path(data)
    if not root.is_dir():
        raise CmrdxError(f"{root} is not a folder", hint="pass a folder holding one folder per study")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    enc = get_encoder(model, device, precision)
    rows = [LabelledStudy(key=p.name, path=p, study_uid=None) for p in folders]
    es = embed_labelled(rows, enc, StudyEmbeddingCache.for_encoder(enc), progress)
    seen: set[str] = set()
    keep = []
    for i, r in enumerate(es.rows):
        uid = r.study_uid or r.key
        if uid not in seen:
            seen.add(uid)
            keep.append(i)
    duplicates = len(es.rows) - len(keep)
    need = max(min_studies, k + 1)
    if len(keep) < need:
        kinds = ", ".join(f"{n} {kind}" for kind, n in es.failure_kinds.items()) or "none unreadable"
        raise CmrdxError(
            f"{root}: {len(keep)} distinct readable studies in {len(folders)} folders ({kinds}"
            + (f"; {duplicates} duplicate" if duplicates else "") + f"); a reference needs at least {need}",
            hint=f"pass a folder holding at least {need} study folders (one study each) that `cmrdx classify` reads")
    m = enc.manifest
    text = source or (f"{len(keep)} studies of the archive {root.name!r}, read through recipe "
                      f"{m.recipe.get('name', '?')}")
    ref = build_reference(es.distance_embeddings[keep], source=text, k=k, quantile=quantile, model_sha256=m.sha256,
                          precision=enc.precision,
                          extra={"folders": len(folders), "unreadable": len(es.failed), "duplicates": duplicates})
    return ArchiveReference(reference=ref, folders=len(folders), embedded=es, duplicates=duplicates)
