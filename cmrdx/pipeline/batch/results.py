"""A batch run's outputs, all made from its journal: the results file (Parquet, CSV or JSONL, by suffix; one flat
row per study, sorted by StudyInstanceUID), ``OUT.embeddings.npz`` for search stores (with ``main_embedding``
beside ``embedding`` when the model has a finding stream), and HTML reports on request."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrdx.errors import CmrdxError
from cmrdx.fileio import atomic_write
from cmrdx.pipeline.batch.discover import file_ref, read_discovery
from cmrdx.pipeline.batch.journal import Journal, decode_embedding, journal_path, record_main_embedding, state_dir
from cmrdx.pipeline.batch.options import BatchOptions

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.outputs import StudySource
    from cmrdx.recipe import RecipeParams

FLAT_COLUMNS = ("study_uid", "status", "source", "n_files", "duplicate_files", "model", "model_sha256")
FORMATS = (".parquet", ".csv", ".jsonl")


def flat_rows(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per study, sorted by StudyInstanceUID (the order never depends on run history)."""
    rows = []
    for uid in sorted(records):
        r = records[uid]
        row = {k: r.get(k) for k in FLAT_COLUMNS}
        row["error"] = f"{r['error']['type']}: {r['error']['message']}" if r["status"] == "failed" else ""
        row["warnings"] = " | ".join(r.get("warnings", []))
        row["series_used"] = " ".join(r.get("series_used", []))
        typ = r.get("typicality") or {}
        row["typicality"] = typ.get("status", "")  # typical / atypical / unknown ("" for failed studies)
        row["typicality_score"] = typ.get("score")
        for fid, f in sorted(r.get("findings", {}).items()):
            row[f"{fid}_score"] = f["score"]
            row[f"{fid}_call"] = f["call"]
            row[f"{fid}_reason"] = f.get("reason", "")
        rows.append(row)
    return rows


def write_results(records: dict[str, dict[str, Any]], out: Path) -> None:
    """Rewrite ``out`` (by suffix) and ``OUT.embeddings.npz`` atomically from the journal's records. The npz holds
    ``main_embedding`` (the main paths' embeddings, which study -> study search compares) only when a record has
    one: then a row per ok study, its record's ``embedding`` where it has none."""
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
        pbuf = pa.BufferOutputStream()
        pq.write_table(table, pbuf)
        data = pbuf.getvalue().to_pybytes()
    atomic_write(out, data)
    ok = [records[u] for u in sorted(records) if records[u]["status"] == "ok"]
    if ok:
        arrays: dict[str, Any] = {"study_uid": np.array([r["study_uid"] for r in ok]),
                                  "source": np.array([r["source"] for r in ok]),
                                  "embedding": np.stack([decode_embedding(r["embedding"]) for r in ok]),
                                  "model": np.array(ok[0]["model"]), "model_sha256": np.array(ok[0]["model_sha256"])}
        if any(r.get("main_embedding") for r in ok):  # a model with a finding stream
            arrays["main_embedding"] = np.stack([record_main_embedding(r) for r in ok])
        atomic_write(embeddings_path(out), lambda f: np.savez(f, **arrays))


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


def study_source(uid: str, files: Sequence[str], source: str, recipe: RecipeParams, *,
                 pacs_config: str | os.PathLike[str] | None = None, all_views: bool = False) -> StudySource:
    """A scored study read again for its outputs (report, SR): from its files, or from its PACS node (the
    instances the recipe reads, cached by the run; with ``all_views``, every instance of its views, for outputs
    that show them). Raises what reading the study raises."""
    from cmrdx.outputs import StudySource
    from cmrdx.pacs.config import is_address

    if len(files) == 1 and is_address(files[0]):
        from cmrdx.pacs.study import read_pacs_study

        return StudySource.from_pacs(read_pacs_study(files[0], recipe, config=pacs_config, all_views=all_views))
    from cmrdx.dicom.scan import scan_refs
    from cmrdx.study.assemble import assemble_study, inspect_study

    insp = inspect_study(scan_refs((file_ref(f) for f in files), root=source), uid)
    return StudySource(inspection=insp, study=assemble_study(insp))


def scored_studies(out: Path) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """The studies of the run's saved discovery (StudyInstanceUID -> files) and the journal's records of those
    scored ok, for outputs made after a run."""
    saved = read_discovery(state_dir(out))
    if saved is None:
        raise CmrdxError(f"{state_dir(out)}: no batch run has discovered an archive for {out}",
                         hint="run `cmrdx batch ARCHIVE --out` first")
    studies = saved[2].studies
    journal = Journal(journal_path(out))
    journal.close()
    ok = {u: r for u, r in sorted(journal.scored(list(studies)).items()) if r["status"] == "ok"}
    return studies, ok


def write_reports(out: Path, reports: Path, opts: BatchOptions,
                  pacs_config: str | os.PathLike[str] | None = None) -> tuple[int, int]:
    """One HTML report per successfully scored study of a finished run (on request: it re-reads and re-encodes
    each study, about one classify per study; a PACS study's views are retrieved whole, with the nodes of
    ``pacs_config``). Existing reports are kept, so this resumes too. Returns (written, kept)."""
    from cmrdx.model.loader import get_encoder
    from cmrdx.outputs.html import write_report
    from cmrdx.pacs.config import is_address
    from cmrdx.pipeline.classify import classify

    out = Path(out)
    studies, records = scored_studies(out)
    written = kept = 0
    for uid, rec in records.items():
        name = uid if is_address(rec["source"]) else rec["source"].replace(os.sep, "_").strip("._")
        target = Path(reports) / f"{name or 'study'}.html"
        if target.is_file():
            kept += 1
            continue
        recipe = get_encoder(opts.model, opts.device).manifest.recipe_params()
        src = study_source(uid, studies[uid], rec["source"], recipe, pacs_config=pacs_config, all_views=True)
        res = classify(src.study, model=opts.model, banks=opts.banks, device=opts.device)
        write_report(res, src, target)
        written += 1
    return written, kept
