"""``run_batch`` (an archive folder) and ``run_batch_pacs`` (a PACS query): one pipeline over a study source
(``discover.StudySource``). Discovery (on a resumed run, what changed in the source since), then an engine
prepares and encodes the studies without a result in the journal (new, changed, not reached before, or failed on
reaching their PACS node), and each encoded study becomes its record (``journal.build_record``), committed before
the next; then the results file is rewritten from the journal, for the studies the source holds now."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmrdx.errors import CmrdxError
from cmrdx.model.reference import load_reference
from cmrdx.pipeline.batch.discover import ArchiveFolder, StudySource
from cmrdx.pipeline.batch.engine import Engine, EngineJob
from cmrdx.pipeline.batch.journal import (
    Journal,
    RecordContext,
    build_record,
    is_done,
    is_scored,
    journal_path,
    state_dir,
    state_lock,
)
from cmrdx.pipeline.batch.options import BatchOptions, BatchSummary
from cmrdx.pipeline.batch.results import FORMATS, write_results

if TYPE_CHECKING:
    from cmrdx.model.encoder import Encoder


def get_engine(opts: BatchOptions) -> Engine:
    """The engine ``opts.engine`` names ("local" or "ray"), configured from ``opts``; an Engine is used as is."""
    if not isinstance(opts.engine, str):
        return opts.engine
    if opts.engine == "local":
        from cmrdx.pipeline.batch.local import LocalEngine

        return LocalEngine(workers=opts.workers, batch_size=opts.batch_size, max_in_flight=opts.max_in_flight)
    if opts.engine == "ray":
        from cmrdx.pipeline.batch.ray_engine import RayEngine

        return RayEngine(address=opts.ray_address, workers=opts.workers, batch_size=opts.batch_size,
                         precision=opts.precision)
    raise CmrdxError(f"unknown engine {opts.engine!r}", hint="use --engine local or --engine ray")


@dataclass
class _Model:
    """The encoder, banks and prompt embeddings of a run, loaded once."""

    encoder: Encoder
    sha: str
    banks: list[Any]  # PromptBank
    text_emb: list[dict[str, Any]]
    recipe: dict[str, Any]

    @classmethod
    def load(cls, opts: BatchOptions) -> _Model:
        from cmrdx.model.loader import get_encoder, model_sha256
        from cmrdx.zeroshot.bank import get_bank
        from cmrdx.zeroshot.scoring import TextEmbeddingCache, bank_text_embeddings

        enc = get_encoder(opts.model, opts.device, opts.precision)
        sha = model_sha256(enc.manifest)
        banks = [get_bank(b) for b in opts.banks]
        cache = TextEmbeddingCache(sha)
        text_emb = [bank_text_embeddings(b, enc.encode_texts, cache) for b in banks]
        return cls(enc, sha, banks, text_emb, enc.manifest.recipe_params().to_dict())


def run_batch(archive: str | os.PathLike[str], out: str | os.PathLike[str], opts: BatchOptions | None = None,
              progress: Callable[[int, int, str], None] | None = None) -> BatchSummary:
    """Score every study under ``archive`` into ``out`` (.parquet, .csv or .jsonl). Resumable."""
    opts = opts or BatchOptions()
    opts.validate()
    archive = Path(archive)
    if not archive.exists():
        from cmrdx.errors import InputNotFoundError

        raise InputNotFoundError(f"{archive}: no such archive folder", hint="check the path")
    return _run_locked(ArchiveFolder(archive), Path(out), opts, progress)


def run_batch_pacs(node: str, queries: Sequence[str] | Mapping[str, str], out: str | os.PathLike[str],
                   opts: BatchOptions | None = None, config: str | os.PathLike[str] | None = None,
                   progress: Callable[[int, int, str], None] | None = None) -> BatchSummary:
    """Score every study the PACS node ``node`` finds for ``queries`` (``"Keyword=value"`` items, or a mapping)
    into ``out``, each recorded by StudyInstanceUID with its address as source. Resumable as a folder run: a
    study that gained or lost instances is scored again, one the query no longer finds leaves the results, and
    a study that failed on reaching the node is tried again. ``config``: the nodes' file (default
    ``$CMRDX_PACS_CONFIG``, else ``$CMRDX_HOME/pacs.yaml``). A bad query or node is a UsageError before any work."""
    from cmrdx.pipeline.batch.query import PacsQuery

    opts = opts or BatchOptions()
    opts.validate()
    return _run_locked(PacsQuery.create(node, queries, config), Path(out), opts, progress)


def _run_locked(source: StudySource, out: Path, opts: BatchOptions,
                progress: Callable[[int, int, str], None] | None) -> BatchSummary:
    if out.suffix.lower() not in FORMATS:
        raise CmrdxError(f"{out}: unknown results format {out.suffix!r}", hint="use .parquet, .csv or .jsonl")
    engine = get_engine(opts)  # an unknown engine, or Ray missing, fails before any work
    with state_lock(state_dir(out)):
        return _run(source, out, opts, engine, progress)


def _run(source: StudySource, out: Path, opts: BatchOptions, engine: Engine,
         progress: Callable[[int, int, str], None] | None) -> BatchSummary:
    t_start = time.perf_counter()
    sd = state_dir(out)
    update = source.refresh(sd, opts.workers)
    disc = update.discovery
    journal = Journal(journal_path(out))
    # Results that no longer hold are marked in the journal before the new discovery is saved: a run killed in
    # between finds the same changes again, one killed after finds the marks.
    journal.supersede(update.changed, "changed")
    journal.supersede(update.removed, "removed")
    source.save(sd, update)
    headers = str(sd / "headers") if (sd / "headers").is_dir() else None
    model = _Model.load(opts)
    mismatched = {r["model_sha256"] for r in journal.records.values() if is_scored(r)} - {model.sha}
    if mismatched:
        journal.close()
        raise CmrdxError(f"{sd}: this run was started with another model ({', '.join(m[:12] for m in mismatched)})",
                         hint=f"use the same --model, or delete {sd} (and {out}) to start again")
    done_before = sum(is_done(journal.records.get(u)) for u in disc.studies)
    todo = [u for u in disc.studies if not is_done(journal.records.get(u))]
    if opts.limit is not None:
        todo = todo[: opts.limit]
    total = len(disc.studies)
    ctx = RecordContext(source.root, disc, model.encoder.manifest.name, model.sha, model.banks, model.text_emb,
                        load_reference(model.encoder.manifest))
    job = EngineJob(disc.studies, model.recipe, model.encoder, headers, source.pacs_config)
    done = total - len(todo)
    transfer: Counter[str] = Counter()
    encoded = engine.run(todo, job) if todo else iter(())
    try:
        for study in encoded:
            journal.commit(build_record(study, ctx))
            for k in ("instances_needed", "instances_retrieved", "bytes_retrieved"):
                transfer[k] += int(study.meta.get("pacs", {}).get(k, 0))
            done += 1
            if progress:
                progress(done, total, study.uid)
    finally:
        close = getattr(encoded, "close", None)
        if close is not None:  # a generator engine: stop its workers now, even on an error or Ctrl-C
            close()
        journal.close()
    records = journal.scored(list(disc.studies))  # the archive's studies only: a removed study's result is gone
    write_results(records, out)
    if headers and len(records) == total:
        import shutil

        shutil.rmtree(headers, ignore_errors=True)  # the run is complete: the parsed headers are no longer needed
    failed = Counter(r["error"]["type"] for r in records.values() if r["status"] == "failed")
    return BatchSummary(
        total=total, done_before=done_before, ok=sum(r["status"] == "ok" for r in records.values()),
        failed=dict(failed), seconds=time.perf_counter() - t_start, prepare_seconds=engine.prepare_seconds,
        encode_seconds=engine.encode_seconds, out=out, duplicates=sum(disc.duplicates.values()), files_skipped=disc.skipped,
        journal_skipped=len(journal.skipped_lines), resumed=update.previous, added=len(update.added),
        changed=len(update.changed), removed=len(update.removed), source=source.describe(),
        transfer=dict(transfer), device=model.encoder.description, precision_note=model.encoder.precision_note,
    )
