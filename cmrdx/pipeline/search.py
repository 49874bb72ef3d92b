"""Embedding store and retrieval: rank an archive's studies by a text query or by a study.

The store is a folder, no server: ``embeddings.npy`` (N, D) float32 read memory-mapped, ``studies.jsonl``
(UID and source folder per row; never patient identifiers), ``index.json`` (model name + sha256, so an index
is never queried with another model). Search is exact (a matrix-vector product over the memory map, in chunks)
up to a few hundred thousand studies; beyond that, or when asked, a FAISS IVF index (``ann.faiss``, the
``ann`` extra) answers approximately, with its recall measured against exact search in BENCHMARKS.md.

A model with a finding stream has two embeddings per study: text queries compare prompts with ``embeddings.npy``,
as ever, while study queries measure distances between studies on the main paths' embeddings,
``main_embeddings.npy`` (N, D), written only for such a model (``index.json`` names it under "main"). The IVF
index is built on ``embeddings.npy`` only, so study queries on a store with main embeddings are always exact:
one more index would double the store's build for the query that is asked least.

The jobs, as the CLI runs them: ``index_archive`` (an archive -> a store, through a resumable batch run),
``store_from_batch`` (a batch run's embeddings -> a store), ``search`` (text -> the nearest studies) and
``similar`` (a study -> the nearest studies). A store is queried only with the model that built it.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrdx.errors import CmrdxError, ModelError
from cmrdx.fileio import atomic_write

if TYPE_CHECKING:
    from cmrdx.model.encoder import Encoder
    from cmrdx.pipeline.batch import BatchSummary
    from cmrdx.study.types import Study

FORMAT = "cmrdx-index/1"
CHUNK = 262_144  # rows per matrix-vector product: bounded memory whatever the store size
ANN_AUTO_ROWS = 200_000
MAIN_FILE = "main_embeddings.npy"


@dataclass
class Hit:
    """One study found: its rank (from 1), UID, folder relative to the archive and cosine similarity.
    ``patient`` (PatientName / PatientID read from its files) only when asked for with ``show_phi``."""

    rank: int
    study_uid: str
    source: str
    score: float
    patient: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        if d["patient"] is None:
            del d["patient"]
        return d


def build_store(db: Path, uids: Sequence[str], sources: Sequence[str], emb: np.ndarray, model: str, model_sha256: str,
                *, ann: str = "auto", nlist: int | None = None, archive: str | None = None,
                main: np.ndarray | None = None) -> dict[str, Any]:
    """Write a store (atomically, file by file; ``index.json`` last, so a half-built store is never opened).
    ``main``: the studies' main paths' embeddings (N, D), written as ``main_embeddings.npy`` only when they differ
    from ``emb`` (a model with a finding stream), so every other store stays as it was."""
    db = Path(db)
    db.mkdir(parents=True, exist_ok=True)
    (db / "index.json").unlink(missing_ok=True)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if main is not None:
        main = np.ascontiguousarray(main, dtype=np.float32)
        if main.shape != emb.shape:
            raise CmrdxError(f"main embeddings of shape {main.shape} for embeddings of shape {emb.shape}",
                             hint="give one main embedding per study, of the model's size")
        if np.array_equal(main, emb):
            main = None
    buf = io.BytesIO()
    np.save(buf, emb)
    atomic_write(db / "embeddings.npy", buf.getvalue())
    if main is not None:
        buf = io.BytesIO()
        np.save(buf, main)
        atomic_write(db / MAIN_FILE, buf.getvalue())
    else:  # a store rebuilt in place with a model without a finding stream keeps no stale main embeddings
        (db / MAIN_FILE).unlink(missing_ok=True)
    atomic_write(db / "studies.jsonl", "".join(json.dumps({"study_uid": u, "source": s}) + "\n" for u, s in zip(uids, sources)))
    use_ann = ann == "ivf" or (ann == "auto" and len(emb) >= ANN_AUTO_ROWS)
    info: dict[str, Any] = {"format": FORMAT, "model": model, "model_sha256": model_sha256, "dim": int(emb.shape[1]),
                            "count": int(len(emb)), "ann": None, "archive": archive}
    if main is not None:
        info["main"] = MAIN_FILE
    if use_ann:
        info["ann"] = build_ivf(db, emb, nlist)
    atomic_write(db / "index.json", json.dumps(info, indent=2))
    return info


def build_ivf(db: Path, emb: np.ndarray, nlist: int | None = None) -> dict[str, Any]:
    """A FAISS inverted-file index (inner product on unit vectors = cosine), trained on a sample."""
    try:
        import faiss
    except ImportError as exc:
        raise CmrdxError("approximate search needs FAISS", hint="pip install 'cmrdx[ann]' (faiss-cpu), or use --ann exact") from exc
    n, d = emb.shape
    nlist = nlist or int(max(16, min(4096, 4 * np.sqrt(n))))
    quant = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = emb[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
    ivf.train(sample)
    ivf.add(emb)
    atomic_write(db / "ann.faiss", faiss.serialize_index(ivf).tobytes())
    return {"kind": "faiss-ivf-flat", "nlist": nlist, "nprobe": max(1, nlist // 64)}


class Store:
    """An opened store. ``check_model`` refuses queries from another model. ``main`` is the main paths' embeddings
    (``main_embeddings.npy``, memory-mapped) of a store built with a finding stream's model, else None."""

    def __init__(self, db: Path):
        self.db = Path(db)
        f = self.db / "index.json"
        if not f.is_file():
            raise CmrdxError(f"{self.db}: not a cmrdx index (no index.json)", hint="build one with `cmrdx index ARCHIVE --db DIR`")
        self.info = json.loads(f.read_text())
        if self.info.get("format") != FORMAT:
            raise CmrdxError(f"{f}: unsupported index format {self.info.get('format')!r}", hint="rebuild the index")
        self.emb = self._array("embeddings.npy")
        main = self.info.get("main")
        if main not in (None, MAIN_FILE):  # index.json names only the file build_store writes, inside the store
            raise CmrdxError(f"{f}: unknown main embeddings file {main!r}", hint="rebuild the index")
        self.main = self._array(MAIN_FILE) if main else None
        if self.main is not None and self.main.shape != self.emb.shape:
            raise CmrdxError(f"{self.db / MAIN_FILE}: shape {self.main.shape}, the embeddings' is {self.emb.shape}",
                             hint="rebuild the index")
        self.rows = [json.loads(line) for line in (self.db / "studies.jsonl").read_text().splitlines() if line]
        self._ivf: Any = None  # the FAISS index, read on first use

    def _array(self, name: str) -> np.ndarray:
        """A matrix of the store, memory-mapped; a missing or damaged file is the store's error, named."""
        try:
            return np.load(self.db / name, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise CmrdxError(f"{self.db / name}: cannot be read ({exc})", hint="rebuild the index") from exc

    def check_model(self, name: str, sha256: str) -> None:
        if sha256 != self.info["model_sha256"]:
            raise ModelError(
                f"{self.db} was built with model {self.info['model']!r} ({self.info['model_sha256'][:12]}), "
                f"not {name!r} ({sha256[:12]})",
                hint=f"query with --model {self.info['model']}, or rebuild the index with this model",
            )

    def search_vector(self, q: np.ndarray, k: int = 10, *, exact: bool | None = None, main: bool = False,
                      text: bool = False) -> list[Hit]:
        """The ``k`` rows nearest to ``q``, best first: in ``embeddings.npy``, or with ``main`` in the main
        embeddings (exactly: the IVF index holds ``embeddings.npy`` only). ``main`` on a store without main
        embeddings is an error: use ``search_study``, which picks the matrix and the query together.

        ``text``: ``q`` is a text's embedding. On a store with main embeddings a row's score is then the mean of
        its cosines with the study's embedding (where the finding stream put what it sees) and its main paths'
        embedding (where everything else stays), searched exactly: measured on 200 held-out phantoms with
        candidate 0.6.0, report -> study R@10 0.185, against 0.135 with the embedding alone and 0.150 with the
        main one (bench/results/release-0.6.0.md)."""
        q = np.asarray(q, dtype=np.float32).reshape(-1)
        k = min(k, len(self.rows))
        if main and self.main is None:
            raise CmrdxError(f"{self.db} holds no main embeddings", hint="search its embeddings (main=False)")
        matrix = self.main if main and self.main is not None else self.emb
        use_ann = self.info.get("ann") is not None and exact is not True and not main and not (text and self.main is not None)
        if use_ann:
            import faiss

            if self._ivf is None:
                self._ivf = faiss.read_index(str(self.db / "ann.faiss"))
                self._ivf.nprobe = int(self.info["ann"]["nprobe"])
            scores, idx = self._ivf.search(q[None], k)
            pairs = [(int(i), float(s)) for i, s in zip(idx[0], scores[0]) if i >= 0]
        else:
            other = self.main if text else None  # a text query: the mean of its cosines with both embeddings
            best_i = np.empty(0, dtype=np.int64)
            best_s = np.empty(0, dtype=np.float32)
            for start in range(0, len(matrix), CHUNK):
                s = np.asarray(matrix[start:start + CHUNK]) @ q
                if other is not None:
                    s = ((s + np.asarray(other[start:start + CHUNK]) @ q) / 2).astype(np.float32)
                top = np.argpartition(-s, k - 1)[:k] if len(s) > k else np.arange(len(s))
                best_i = np.r_[best_i, top + start]
                best_s = np.r_[best_s, s[top]]
            order = np.argsort(-best_s, kind="stable")[:k]
            pairs = [(int(best_i[o]), float(best_s[o])) for o in order]
        return [Hit(r + 1, self.rows[i]["study_uid"], self.rows[i]["source"], s) for r, (i, s) in enumerate(pairs)]

    def search_study(self, embedding: np.ndarray, main: np.ndarray | None = None, k: int = 10, *,
                     exact: bool | None = None) -> list[Hit]:
        """Study -> study search: the ``k`` studies nearest to a study whose embedding is ``embedding`` and whose
        main paths' embedding is ``main`` (None: the embedding itself). Distances between studies are measured
        on the main paths' embeddings when the store has them; a store without them (a model without a finding
        stream, or one built before main embeddings were kept) is searched with ``embedding``, like with like."""
        if self.main is not None and main is not None:
            return self.search_vector(main, k, exact=exact, main=True)
        return self.search_vector(embedding, k, exact=exact)


def store_from_batch(batch_out: Path, db: Path, *, ann: str = "auto", archive: str | None = None) -> dict[str, Any]:
    """Build a store from a batch run's ``OUT.embeddings.npz`` (no re-encoding)."""
    from cmrdx.outputs.common import check_folder_target
    from cmrdx.pipeline.batch import embeddings_path, state_dir

    check_folder_target(db)  # a file, or a folder that cannot be written, before anything is read

    p = embeddings_path(Path(batch_out))
    disc = state_dir(Path(batch_out)) / "studies.json"
    if archive is None and disc.is_file():
        archive = json.loads(disc.read_text()).get("archive")
    if not p.is_file():
        raise CmrdxError(f"{p}: no embeddings next to the batch results", hint="run `cmrdx batch` first")
    with np.load(p) as z:
        main = z["main_embedding"] if "main_embedding" in z.files else None  # a model with a finding stream only
        return build_store(db, list(z["study_uid"]), list(z["source"]), z["embedding"], str(z["model"]),
                           str(z["model_sha256"]), ann=ann, archive=archive, main=main)


def index_archive(archive: str | os.PathLike[str], db: str | os.PathLike[str], *, model: str | None = None,
                  device: str = "auto", ann: str = "auto", precision: str = "auto") -> tuple[dict[str, Any], BatchSummary]:
    """Embed an archive with a batch run kept in the store (``DB/batch.jsonl``, resumable like any batch run)
    and build the store from it. Returns the store's ``index.json`` and the batch run's summary."""
    from cmrdx.outputs.common import check_folder_target
    from cmrdx.pipeline.batch import BatchOptions, run_batch

    archive, db = Path(archive), Path(db)
    check_folder_target(db)  # before the archive is read and encoded
    out = db / "batch.jsonl"
    summary = run_batch(archive, out, BatchOptions(model=model, device=device, precision=precision))
    return store_from_batch(out, db, ann=ann, archive=str(archive.resolve())), summary


def open_store(store: Store | str | os.PathLike[str]) -> Store:
    return store if isinstance(store, Store) else Store(Path(store))


def store_encoder(store: Store | str | os.PathLike[str], model: str | None = None, device: str = "auto",
                  precision: str = "auto") -> Encoder:
    """The encoder to query ``store`` with: ``model`` (default: the store's own model), refused unless it is
    the model that built the store."""
    from cmrdx.model.loader import get_encoder, model_sha256

    store = open_store(store)
    try:
        enc = get_encoder(model or store.info["model"], device, precision)
    except ModelError as exc:
        raise ModelError(f"{store.db} was built with model {store.info['model']!r}, which is not installed: {exc.message}",
                         hint="pass --model with that model's folder") from exc
    store.check_model(enc.manifest.name, model_sha256(enc.manifest))
    return enc


def search(store: Store | str | os.PathLike[str], text: str, k: int = 10, *, model: str | None = None,
           device: str = "auto", exact: bool = False, show_phi: bool = False) -> list[Hit]:
    """The ``k`` studies of ``store`` (a Store or its folder) most similar to a free-text query, best first.
    ``exact`` searches exactly even when the store has an ANN index; ``show_phi`` also reads each study's
    patient name / ID from its files (``Hit.patient``)."""
    store = open_store(store)
    enc = store_encoder(store, model, device)
    q = enc.encode_texts([text])[0]
    return _with_patients(store.search_vector(q, k, exact=exact or None, text=True), store, show_phi)


def similar(store: Store | str | os.PathLike[str], study: str | os.PathLike[str] | Study, k: int = 10, *,
            model: str | None = None, device: str = "auto", exact: bool = False, show_phi: bool = False,
            precision: str = "auto") -> list[Hit]:
    """The ``k`` studies of ``store`` nearest to ``study`` (a study folder or an assembled Study), best first;
    the study itself is among them when the store holds it. Distances are those of the main paths' embeddings
    (``Store.search_study``), and exact when the store has them."""
    from cmrdx.recipe import apply_recipe
    from cmrdx.study.assemble import assemble_study
    from cmrdx.study.types import Study

    store = open_store(store)
    enc = store_encoder(store, model, device, precision)
    st = study if isinstance(study, Study) else assemble_study(study)
    x = apply_recipe(st, enc.manifest.recipe_params()).array
    emb, main = enc.encode_studies_main(x[None])
    return _with_patients(store.search_study(emb[0], None if main is emb else main[0], k, exact=exact or None),
                          store, show_phi)


def _with_patients(hits: list[Hit], store: Store, show_phi: bool) -> list[Hit]:
    if show_phi:
        base = Path(store.info.get("archive") or ".")
        for h in hits:
            h.patient = patient_of(base / h.source)
    return hits


def patient_of(source: Path) -> str:
    """PatientName / PatientID from the first DICOM file under ``source`` (only for --show-phi)."""
    import pydicom

    from cmrdx.dicom.source import iter_refs

    if not Path(source).exists():
        return "? (study folder not found)"
    for ref in iter_refs(source):
        try:
            with ref.open() as fp:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=["PatientName", "PatientID"])
            return f"{ds.get('PatientName', '')} / {ds.get('PatientID', '')}"
        except Exception:  # noqa: BLE001 - a non-DICOM file: try the next
            continue
    return "?"
