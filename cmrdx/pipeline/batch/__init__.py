"""Score whole archives: resumable, failure-isolated, decode overlapped with encoding.

    discover (``discover``: headers, StudyInstanceUID per file, duplicates dropped; or ``query``: the studies a
    PACS query finds, one ``pacs://NODE/UID`` entry each)  ->  an engine (``engine``:
    ``local`` process pool, or ``ray``) prepares each study in workers (``prepare``: scan its files, assemble,
    apply the model's recipe) and encodes them in batches  ->  in this process, one record per study
    (``journal.build_record``: scores against the banks), appended, flushed, fsynced  ->  results (``results``).

The journal (``OUT.cmrdx-batch/journal.jsonl``) is the commit log: a run killed at any moment (SIGKILL
included) leaves at most one torn last line, which the next run drops; studies already in the journal are
skipped, so running the same command again finishes the job with exactly the results of an uninterrupted
run. A resumed run lists the archive again: studies added or changed since are scored, removed ones leave
the results (the journal stays append-only; a later record supersedes). One run at a time holds the state
folder (a lock the system releases when the run's process ends), and reader workers end with their run.
The results file (Parquet, CSV or JSONL, by suffix) is rewritten atomically from the journal at the end.
Memory stays bounded: only the file lists of the archive and a bounded number of prepared studies are held.
After a run, ``storeback`` stores each scored study's DICOM SR on a PACS node through the outbox (``--store-back``).

Modules import downwards only: discover <- prepare, query; discover, engine <- journal; engine <- options;
journal, options <- results <- storeback; engine, prepare <- local, ray_engine; all of them <- run, which picks
an engine by name. No module of this package imports this file (tests/test_import_cycles.py checks the graph).
"""

from __future__ import annotations

from cmrdx.pipeline.batch.discover import ArchiveFolder, Discovery, StudySource, discover, source_folder
from cmrdx.pipeline.batch.engine import EncodedStudy, Engine, EngineJob
from cmrdx.pipeline.batch.journal import (
    JOURNAL_SCHEMA,
    Journal,
    RecordContext,
    build_record,
    decode_embedding,
    encode_embedding,
    journal_path,
    state_dir,
    state_lock,
)
from cmrdx.pipeline.batch.options import ENGINES, BatchOptions, BatchSummary
from cmrdx.pipeline.batch.prepare import prepare_study
from cmrdx.pipeline.batch.query import PacsQuery
from cmrdx.pipeline.batch.results import (
    FLAT_COLUMNS,
    embeddings_path,
    flat_rows,
    read_results,
    scored_studies,
    study_source,
    write_reports,
    write_results,
)
from cmrdx.pipeline.batch.run import get_engine, run_batch, run_batch_pacs
from cmrdx.pipeline.batch.storeback import StoreBackReport, store_back_results

__all__ = [
    "ArchiveFolder", "BatchOptions", "BatchSummary", "Discovery", "ENGINES", "EncodedStudy", "Engine", "EngineJob",
    "FLAT_COLUMNS", "JOURNAL_SCHEMA", "Journal", "PacsQuery", "RecordContext", "StoreBackReport", "StudySource",
    "build_record", "decode_embedding", "discover", "embeddings_path", "encode_embedding", "flat_rows", "get_engine",
    "journal_path", "prepare_study", "read_results", "run_batch", "run_batch_pacs", "scored_studies",
    "source_folder", "state_dir", "state_lock", "store_back_results", "study_source", "write_reports",
    "write_results",
]
