"""Score whole archives: resumable, failure-isolated, decode overlapped with encoding.

    discover (headers: StudyInstanceUID per file, duplicates dropped)  ->  per study, in worker processes:
    scan its files, assemble, apply the model's recipe  ->  in this process: encode in batches, score
    against the banks  ->  one journal line per study (appended, flushed, fsynced)  ->  results file.

The journal (``OUT.cmrdx-batch/journal.jsonl``) is the commit log: a run killed at any moment (SIGKILL
included) leaves at most one torn last line, which the next run drops; studies already in the journal are
skipped, so running the same command again finishes the job with exactly the results of an uninterrupted
run. The results file (Parquet, CSV or JSONL, by suffix) is rewritten atomically from the journal at the end.
Memory stays bounded: only the file lists of the archive and ``max_in_flight`` prepared studies are held.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import logging
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from cmrdx import config
from cmrdx.errors import CmrdxError

log = logging.getLogger(__name__)

JOURNAL_SCHEMA = "cmrdx-batch-journal/1"
_DISCOVER_TAGS = ("StudyInstanceUID", "SOPInstanceUID", "SeriesInstanceUID")


# ---------------------------------------------------------------------------------------------------
# Discovery


@dataclass
class Discovery:
    """Every study of an archive: StudyInstanceUID -> its files (str(FileRef)), sorted; duplicates dropped."""

    studies: dict[str, list[str]]
    duplicates: dict[str, int] = field(default_factory=dict)  # study -> files dropped as duplicate SOP instances
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> files
    files: int = 0


def _headers_path(headers: Path, uid: str, chunk_id: int) -> Path:
    import hashlib

    return Path(headers) / hashlib.sha256(uid.encode()).hexdigest()[:24] / f"{chunk_id:07d}.pkl"


def _discover_chunk(job: tuple[int, list[str], str | None]) -> list[tuple[str, str, str]]:
    """Worker: read a chunk's headers once. Returns (file, StudyInstanceUID or "", SOPInstanceUID or a skip
    reason) per file and, when a headers folder is given, leaves the parsed series of each study there, so the
    worker that later prepares the study does not read these headers a second time."""
    import pickle

    from cmrdx.dicom.scan import scan_refs

    chunk_id, refs, headers = job
    out: list[tuple[str, str, str]] = []

    def seen(ref, ds) -> None:
        uid = str(ds.get("StudyInstanceUID", "") or "") if ds is not None else ""
        if ds is None:
            out.append((str(ref), "", "unreadable or not DICOM"))
        elif not uid:
            out.append((str(ref), "", "no StudyInstanceUID"))
        else:
            out.append((str(ref), uid, str(ds.get("SOPInstanceUID", "") or "")))

    try:
        res = scan_refs((_ref(r) for r in refs), root="discovery", on_file=seen)
    except Exception:  # noqa: BLE001 - a crash in one chunk must not stop the run: fall back per file
        return [(r, "", "unreadable") for r in refs]
    if headers is not None:
        for uid, series in res.studies.items():
            for x in series:
                x.phi = {}  # patient identifiers never reach the state folder
            p = _headers_path(Path(headers), uid, chunk_id)
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(pickle.dumps(series, protocol=pickle.HIGHEST_PROTOCOL))
            os.replace(tmp, p)  # a kill never leaves a torn header file
    return out


def discover(archive: str | os.PathLike[str], workers: int | None = None, chunk: int = 512,
             headers: Path | None = None) -> Discovery:
    """Group an archive's files by StudyInstanceUID, reading every header once, in ``workers`` processes (on a big
    archive this pass is a large part of the run). With ``headers``, the parsed series are kept there on disk
    (memory stays bounded) for the study workers. A study whose files are spread over folders is one study; a
    second copy of an instance (same SOPInstanceUID) is dropped. The result does not depend on workers."""
    from cmrdx.dicom.source import iter_refs

    refs = [str(r) for r in iter_refs(archive)]
    jobs = [(k, refs[i:i + chunk], str(headers) if headers else None) for k, i in enumerate(range(0, len(refs), chunk))]
    workers = workers or config.cpu_count()
    if workers > 1 and len(jobs) > 1:
        with cf.ProcessPoolExecutor(max_workers=workers) as ex:
            results = list(ex.map(_discover_chunk, jobs))
    else:
        results = [_discover_chunk(j) for j in jobs]
    studies: dict[str, list[str]] = {}
    seen: dict[str, set[str]] = {}
    dup: Counter = Counter()
    skipped: Counter = Counter()
    for part in results:
        for r, uid, sop in part:
            if not uid:
                skipped[sop] += 1
                continue
            s = seen.setdefault(uid, set())
            if sop and sop in s:
                dup[uid] += 1
                continue
            s.add(sop)
            studies.setdefault(uid, []).append(r)
    return Discovery({u: sorted(f) for u, f in sorted(studies.items())}, dict(dup), dict(skipped), len(refs))


def _ref(s: str):
    from cmrdx.dicom.source import FileRef

    if "!" in s and s.split("!", 1)[0].lower().endswith(".zip"):
        path, member = s.split("!", 1)
        return FileRef(path, member)
    return FileRef(s)


def _source_folder(files: Sequence[str], archive: Path) -> str:
    """The study's folder relative to the archive (common parent of its files)."""
    parents = [os.path.dirname(f.split("!", 1)[0]) for f in files]
    common = os.path.commonpath(parents) if parents else str(archive)
    try:
        return os.path.relpath(common, archive)
    except ValueError:
        return common


# ---------------------------------------------------------------------------------------------------
# Worker side: read, assemble, recipe (no onnxruntime, no torch)


def _study_headers(uid: str, files: Sequence[str], headers: Path):
    """The study's series from discovery's header files (merged across chunks, duplicates dropped), or None."""
    import pickle

    from cmrdx.dicom.scan import ScanResult

    folder = _headers_path(headers, uid, 0).parent
    parts = sorted(folder.glob("*.pkl")) if folder.is_dir() else []
    if not parts:
        return None
    keep = set(files)
    merged: dict[str, Any] = {}
    for p in parts:
        try:
            chunk = pickle.loads(p.read_bytes())
        except Exception:  # noqa: BLE001 - unreadable: the caller reads the study's headers itself
            return None
        for s in chunk:
            s.frames = [f for f in s.frames if str(f.ref) in keep]
            s._geom = None
            if s.uid in merged:
                merged[s.uid].frames.extend(s.frames)
                merged[s.uid]._geom = None
            else:
                merged[s.uid] = s
    series = sorted((s for s in merged.values() if s.frames),
                    key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid))
    res = ScanResult(root=f"study {uid}", studies={uid: series}, files_scanned=len(files))
    return res


def prepare_study(uid: str, files: Sequence[str], recipe: dict[str, Any], headers: str | None = None) -> dict[str, Any]:
    """Runs in a worker: -> {"uid", "array" (frames, 3, S, S) float32 or None, "meta", "error", "seconds"}.
    With ``headers`` (discovery's header files) no header is read again."""
    from cmrdx.study.assemble import assemble_study, inspect_study
    from cmrdx.dicom.scan import scan_refs
    from cmrdx.recipe import RecipeParams, apply_recipe

    t0 = time.perf_counter()
    try:
        res = _study_headers(uid, files, Path(headers)) if headers else None
        if res is None:
            res = scan_refs((_ref(f) for f in files), root=f"study {uid}")
        study = assemble_study(inspect_study(res, uid))
        rr = apply_recipe(study, RecipeParams.from_dict(recipe))
        warnings_ = list(dict.fromkeys(list(study.manifest.warnings) + [f"recipe: {s}" for s in rr.substitutions]))
        meta = {
            "views_used": {seg: rec.get("view") for seg, rec in rr.used.items()},
            "series_used": list(dict.fromkeys(u for rec in rr.used.values() for u in rec.get("series_uids", []))),
            "warnings": warnings_,
            "files_skipped": sum(study.manifest.files_skipped.values()),
        }
        return {"uid": uid, "array": rr.array, "meta": meta, "error": None, "seconds": time.perf_counter() - t0}
    except CmrdxError as exc:
        err = {"type": type(exc).__name__, "message": exc.message}
    except Exception as exc:  # noqa: BLE001 - one bad study never stops the run; its record says why
        err = {"type": type(exc).__name__, "message": str(exc).splitlines()[0][:500] if str(exc) else repr(exc)}
    return {"uid": uid, "array": None, "meta": {}, "error": err, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------------
# Journal


class Journal:
    """Append-only JSONL commit log of finished studies. Survives SIGKILL: a torn last line is dropped."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict[str, Any]] = {}
        self._recover()
        self._fh = open(self.path, "a", encoding="utf-8")

    def _recover(self) -> None:
        if not self.path.is_file():
            return
        good = 0
        with open(self.path, "rb") as fh:
            data = fh.read()
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn by a kill mid-write
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            self.records[rec["study_uid"]] = rec
            good += len(line)
        if good < len(data):
            log.warning("%s: dropped a torn last record (%d bytes) from an interrupted run", self.path, len(data) - good)
            with open(self.path, "r+b") as fh:
                fh.truncate(good)

    def commit(self, rec: dict[str, Any]) -> None:
        self._fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.records[rec["study_uid"]] = rec

    def close(self) -> None:
        self._fh.close()


def _b64(emb: np.ndarray) -> str:
    return base64.b64encode(np.asarray(emb, dtype="<f4").tobytes()).decode("ascii")


def decode_embedding(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f4").copy()


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass
class BatchOptions:
    model: str | None = None
    banks: Sequence[str] = ("cmr-findings",)
    device: str = "auto"
    workers: int | None = None  # reader processes; default: one per core (the encoder thread mostly waits)
    batch_size: int = 4
    max_in_flight: int | None = None  # prepared studies held at once; default 2 x workers + batch
    engine: str = "local"  # "local" or "ray"
    ray_address: str | None = None
    limit: int | None = None  # stop after this many new studies (tests, trial runs)


@dataclass
class BatchSummary:
    total: int
    done_before: int
    ok: int
    failed: dict[str, int]
    seconds: float
    prepare_seconds: float  # summed over workers
    encode_seconds: float
    out: Path
    duplicates: int = 0
    files_skipped: dict[str, int] = field(default_factory=dict)

    @property
    def studies_per_s(self) -> float:
        new = self.ok + sum(self.failed.values()) - self.done_before
        return new / self.seconds if self.seconds > 0 else float("nan")


def state_dir(out: Path) -> Path:
    return Path(str(out) + ".cmrdx-batch")


def _load_or_discover(archive: Path, sd: Path, workers: int | None = None) -> Discovery:
    """Discovery is saved with the journal, so a resumed run does not re-read every header."""
    f = sd / "studies.json"
    if f.is_file():
        d = json.loads(f.read_text())
        if d.get("archive") == str(archive.resolve()):
            return Discovery(d["studies"], d.get("duplicates", {}), d.get("skipped", {}), d.get("files", 0))
    import shutil

    shutil.rmtree(sd / "headers", ignore_errors=True)  # left by a discovery that was interrupted
    disc = discover(archive, workers, headers=sd / "headers")
    _atomic_write(f, json.dumps({"archive": str(archive.resolve()), "studies": disc.studies, "duplicates": disc.duplicates,
                                 "skipped": disc.skipped, "files": disc.files}))
    return disc


def _atomic_write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Scorer:
    """Encoder + banks + text embeddings, built once; turns prepared studies into journal records."""

    def __init__(self, opts: BatchOptions):
        from cmrdx.zeroshot.bank import get_bank
        from cmrdx.model.loader import get_encoder, model_sha256
        from cmrdx.zeroshot.scoring import TextEmbeddingCache, bank_text_embeddings

        self.enc = get_encoder(opts.model, opts.device)
        self.sha = model_sha256(self.enc.manifest)
        self.banks = [get_bank(b) for b in opts.banks]
        cache = TextEmbeddingCache(self.sha)
        self.text_emb = [bank_text_embeddings(b, self.enc.encode_texts, cache) for b in self.banks]
        self.recipe = self.enc.manifest.recipe_params().to_dict()
        self.encode_seconds = 0.0

    def records(self, prepared: list[dict[str, Any]], files: dict[str, list[str]], archive: Path,
                dups: dict[str, int]) -> list[dict[str, Any]]:
        from cmrdx.zeroshot.scoring import score_bank

        ok = [p for p in prepared if p["error"] is None]
        embs = np.zeros((0, 0), np.float32)
        if ok:
            t0 = time.perf_counter()
            embs = self.enc.encode_studies(np.stack([p["array"] for p in ok]))
            self.encode_seconds += time.perf_counter() - t0
        emb_of = {p["uid"]: e for p, e in zip(ok, embs)}
        out = []
        for p in prepared:
            uid = p["uid"]
            rec: dict[str, Any] = {
                "schema": JOURNAL_SCHEMA, "study_uid": uid, "source": _source_folder(files[uid], archive),
                "n_files": len(files[uid]), "duplicate_files": dups.get(uid, 0),
                "model": self.enc.manifest.name, "model_sha256": self.sha,
            }
            if p["error"] is not None:
                rec.update(status="failed", error=p["error"])
            else:
                e = emb_of[uid]
                findings = {}
                for bank, temb in zip(self.banks, self.text_emb):
                    for fs in score_bank(e, bank, temb, self.enc.manifest.name, self.sha):
                        findings[fs.id] = {"score": round(fs.score, 6), "call": fs.call, "bank": bank.name}
                rec.update(status="ok", findings=findings, embedding=_b64(e), **p["meta"])
            out.append(rec)
        return out


def run_batch(archive: str | os.PathLike[str], out: str | os.PathLike[str], opts: BatchOptions | None = None,
              progress: Callable[[int, int, str], None] | None = None) -> BatchSummary:
    """Score every study under ``archive`` into ``out`` (.parquet, .csv or .jsonl). Resumable."""
    opts = opts or BatchOptions()
    archive, out = Path(archive), Path(out)
    if not archive.exists():
        from cmrdx.errors import InputNotFoundError

        raise InputNotFoundError(f"{archive}: no such archive folder", hint="check the path")
    if out.suffix.lower() not in (".parquet", ".csv", ".jsonl"):
        raise CmrdxError(f"{out}: unknown results format {out.suffix!r}", hint="use .parquet, .csv or .jsonl")
    t_start = time.perf_counter()
    sd = state_dir(out)
    disc = _load_or_discover(archive, sd, opts.workers)
    headers = str(sd / "headers") if (sd / "headers").is_dir() else None
    journal = Journal(sd / "journal.jsonl")
    scorer = _Scorer(opts)
    mismatched = {r["model_sha256"] for r in journal.records.values()} - {scorer.sha}
    if mismatched:
        journal.close()
        raise CmrdxError(f"{sd}: this run was started with another model ({', '.join(m[:12] for m in mismatched)})",
                         hint=f"use the same --model, or delete {sd} (and {out}) to start again")
    done_before = len(journal.records)
    todo = [u for u in disc.studies if u not in journal.records]
    if opts.limit is not None:
        todo = todo[: opts.limit]
    total = len(disc.studies)
    prep_seconds = 0.0
    try:
        if opts.engine == "ray":
            from cmrdx.pipeline.batch_ray import run_ray

            prep_seconds = run_ray(todo, disc, archive, opts, scorer, journal, progress, total, headers)
        elif opts.engine == "local":
            prep_seconds = _run_local(todo, disc, archive, opts, scorer, journal, progress, total, headers)
        else:
            raise CmrdxError(f"unknown engine {opts.engine!r}", hint="use --engine local or --engine ray")
    finally:
        journal.close()
    write_results(journal.records, out)
    if headers and all(u in journal.records for u in disc.studies):
        import shutil

        shutil.rmtree(headers, ignore_errors=True)  # the run is complete: the parsed headers are no longer needed
    failed = Counter(r["error"]["type"] for r in journal.records.values() if r["status"] == "failed")
    return BatchSummary(
        total=total, done_before=done_before, ok=sum(r["status"] == "ok" for r in journal.records.values()),
        failed=dict(failed), seconds=time.perf_counter() - t_start, prepare_seconds=prep_seconds,
        encode_seconds=scorer.encode_seconds, out=out, duplicates=sum(disc.duplicates.values()), files_skipped=disc.skipped,
    )


def _run_local(todo, disc, archive, opts, scorer, journal, progress, total, headers: str | None = None) -> float:
    workers = opts.workers or config.cpu_count()
    max_in_flight = opts.max_in_flight or (2 * workers + opts.batch_size)
    prep_seconds = 0.0
    done = total - len(todo)
    ready: list[dict[str, Any]] = []

    def flush(force: bool) -> None:
        nonlocal done
        while ready and (force or len(ready) >= opts.batch_size):
            chunk, ready[:] = ready[: opts.batch_size], ready[opts.batch_size:]
            for rec in scorer.records(chunk, disc.studies, archive, disc.duplicates):
                journal.commit(rec)
                done += 1
                if progress:
                    progress(done, total, rec["study_uid"])

    it: Iterator[str] = iter(todo)
    ex = cf.ProcessPoolExecutor(max_workers=workers)
    inflight: dict[cf.Future, str] = {}
    try:
        while True:
            while len(inflight) < max_in_flight:
                uid = next(it, None)
                if uid is None:
                    break
                inflight[ex.submit(prepare_study, uid, disc.studies[uid], scorer.recipe, headers)] = uid
            if not inflight:
                break
            finished, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                uid = inflight.pop(fut, None)
                if uid is None:  # re-queued after a pool crash
                    continue
                try:
                    p = fut.result()
                except cf.process.BrokenProcessPool:
                    # a worker died (out of memory, a crashing decoder): record the study, start a new pool
                    p = {"uid": uid, "array": None, "meta": {}, "seconds": 0.0,
                         "error": {"type": "WorkerCrash", "message": "the reading process died on this study"}}
                    for other, ouid in list(inflight.items()):
                        inflight.pop(other)
                        it = iter([ouid, *it])
                    ex.shutdown(cancel_futures=True)
                    ex = cf.ProcessPoolExecutor(max_workers=workers)
                prep_seconds += p["seconds"]
                ready.append(p)
            flush(force=not inflight)
        flush(force=True)
    finally:
        ex.shutdown(cancel_futures=True)
    return prep_seconds


# ---------------------------------------------------------------------------------------------------
# Results


FLAT_COLUMNS = ("study_uid", "status", "source", "n_files", "duplicate_files", "model", "model_sha256")


def flat_rows(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per study, sorted by StudyInstanceUID (the order never depends on run history)."""
    rows = []
    for uid in sorted(records):
        r = records[uid]
        row = {k: r.get(k) for k in FLAT_COLUMNS}
        row["error"] = f"{r['error']['type']}: {r['error']['message']}" if r["status"] == "failed" else ""
        row["warnings"] = " | ".join(r.get("warnings", []))
        row["series_used"] = " ".join(r.get("series_used", []))
        for fid, f in sorted(r.get("findings", {}).items()):
            row[f"{fid}_score"] = f["score"]
            row[f"{fid}_call"] = f["call"]
        rows.append(row)
    return rows


def write_results(records: dict[str, dict[str, Any]], out: Path) -> None:
    """Rewrite ``out`` (by suffix) and ``OUT.embeddings.npz`` atomically from the journal's records."""
    import io

    rows = flat_rows(records)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    suffix = out.suffix.lower()
    if suffix == ".jsonl":
        data = "".join(json.dumps({k: r.get(k) for k in cols}) + "\n" for r in rows).encode()
    elif suffix == ".csv":
        import csv

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        data = buf.getvalue().encode()
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([{k: r.get(k) for k in cols} for r in rows])
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        data = buf.getvalue().to_pybytes()
    _atomic_write(out, data)
    ok = [records[u] for u in sorted(records) if records[u]["status"] == "ok"]
    if ok:
        emb = np.stack([decode_embedding(r["embedding"]) for r in ok])
        buf = io.BytesIO()
        np.savez(buf, study_uid=np.array([r["study_uid"] for r in ok]), source=np.array([r["source"] for r in ok]),
                 embedding=emb, model=np.array(ok[0]["model"]), model_sha256=np.array(ok[0]["model_sha256"]))
        _atomic_write(embeddings_path(out), buf.getvalue())


def embeddings_path(out: Path) -> Path:
    return out.with_name(out.stem + ".embeddings.npz")


def read_results(out: Path) -> list[dict[str, Any]]:
    """Rows of a results file (any of the three formats), for tests and downstream tools."""
    suffix = out.suffix.lower()
    if suffix == ".jsonl":
        return [json.loads(line) for line in out.read_text().splitlines() if line]
    if suffix == ".csv":
        import csv

        with open(out, newline="") as fh:
            return list(csv.DictReader(fh))
    import pyarrow.parquet as pq

    return pq.read_table(out).to_pylist()


def write_reports(out: Path, reports: Path, opts: BatchOptions) -> tuple[int, int]:
    """One HTML report per successfully scored study of a finished run (on request: it re-reads and re-encodes
    each study, about one classify per study). Existing reports are kept, so this resumes too.
    Returns (written, kept)."""
    from cmrdx.study.assemble import assemble_study, inspect_study
    from cmrdx.pipeline.classify import classify
    from cmrdx.dicom.scan import scan_refs
    from cmrdx.outputs import StudySource
    from cmrdx.outputs.html import write_report

    sd = state_dir(out)
    disc = json.loads((sd / "studies.json").read_text())
    records = Journal(sd / "journal.jsonl")
    records.close()
    written = kept = 0
    for uid, rec in sorted(records.records.items()):
        if rec["status"] != "ok":
            continue
        target = Path(reports) / f"{rec['source'].replace(os.sep, '_').strip('._') or 'study'}.html"
        if target.is_file():
            kept += 1
            continue
        insp = inspect_study(scan_refs((_ref(f) for f in disc["studies"][uid]), root=rec["source"]), uid)
        src = StudySource(inspection=insp, study=assemble_study(insp))
        res = classify(src.study, model=opts.model, banks=opts.banks, device=opts.device)
        write_report(res, src, target)
        written += 1
    return written, kept
