"""`cmrdx batch ARCHIVE --out results.parquet` (or `--pacs NODE --query Keyword=value ...`): score every study of
an archive folder, or every study a PACS query finds, resumably; `--store-back NODE` stores each study's DICOM SR
on a PACS node."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cmrdx.cli.models import precision_option

PACS_CONFIG_HELP = "PACS nodes (default: $CMRDX_PACS_CONFIG, else $CMRDX_HOME/pacs.yaml)."


def _check_source(archive: Path | None, pacs: str | None, query: list[str] | None) -> None:
    """Exactly one source: ARCHIVE, or --pacs NODE with at least one --query."""
    from cmrdx.errors import UsageError

    if archive is not None and pacs is not None:
        raise UsageError(f"give ARCHIVE ({archive}) or --pacs {pacs}, not both",
                         hint="one run scores one source; give another --out for the other")
    if archive is None and pacs is None:
        raise UsageError("no studies to score: give an ARCHIVE folder, or --pacs NODE --query Keyword=value",
                         hint="e.g. cmrdx batch /data/archive --out r.parquet, or cmrdx batch --pacs orthanc "
                              "--query ModalitiesInStudy=MR --out r.parquet")
    if query and pacs is None:
        raise UsageError("--query needs --pacs NODE (it selects studies on a PACS)",
                         hint="add --pacs NODE, or leave --query out to score the archive folder")
    if pacs is not None and not query:
        raise UsageError(f"--pacs {pacs} needs at least one --query (a whole PACS is never scored by accident)",
                         hint="e.g. --query StudyDate=20260101-20260131 --query ModalitiesInStudy=MR")


def batch_cmd(
    archive: Path | None = typer.Argument(None, help="Archive folder (nested folders, zips; studies may span "
                                                     "folders). Or give --pacs NODE instead."),
    out: Path = typer.Option(..., "--out", "-o", help="Results file: .parquet, .csv or .jsonl."),
    model: str | None = typer.Option(None, "--model", "-m"),
    bank: list[str] | None = typer.Option(None, "--bank", "-b"),
    device: str = typer.Option("auto", "--device"),
    precision: str = precision_option(),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Reader processes (default: one per core)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Studies per encoder call."),
    engine: str = typer.Option("local", "--engine", help="local (process pool) or ray."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address (default: start Ray locally)."),
    limit: int | None = typer.Option(None, "--limit", min=0, help="Stop after this many new studies."),
    reports: Path | None = typer.Option(None, "--reports", help="Also write one HTML report per study under this folder."),
    pacs: str | None = typer.Option(None, "--pacs", help="Score the studies a query finds on this PACS node "
                                                         "(instead of ARCHIVE); each study is read header-first."),
    query: list[str] | None = typer.Option(None, "--query", "-q", help="With --pacs: Keyword=value that the studies "
                                           "match (repeatable, all must match), e.g. StudyDate=20260101-20260131, "
                                           "ModalitiesInStudy=MR."),
    pacs_config: Path | None = typer.Option(None, "--pacs-config", help=PACS_CONFIG_HELP),
    store_back: str | None = typer.Option(None, "--store-back", help="Store each scored study's DICOM SR on this PACS "
                                          "node; an SR it cannot take now is kept and stored by the next run (exit 12 "
                                          "while some SR is not stored)."),
) -> None:
    """Read, assemble and score every study; one record per study. Killed, it resumes where it stopped."""
    from cmrdx.cli.text import console as make_console
    from cmrdx.cli.text import safe
    from cmrdx.outputs.common import check_folder_target, check_target
    from cmrdx.pacs.config import get_node, parse_query
    from cmrdx.pipeline.batch import BatchOptions, run_batch, run_batch_pacs, store_back_results, write_reports

    _check_source(archive, pacs, query)
    if pacs is not None:  # the query and the nodes checked before any work
        parse_query(query or [])
        get_node(pacs, pacs_config)
    if store_back is not None:
        get_node(store_back, pacs_config)
    check_target(out)  # every output checked before any study is read
    if reports is not None:
        check_folder_target(reports)
    opts = BatchOptions(model=model, banks=tuple(bank) if bank else ("cmr-findings",), device=device,
                        precision=precision, workers=workers, batch_size=batch_size, engine=engine, ray_address=address,
                        limit=limit)
    console = make_console()
    from cmrdx.cli.progress import interactive

    # the bar only on a terminal: piped, the command prints its table and nothing else
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console, transient=False,
                  disable=not interactive()) as prog:
        task = prog.add_task("batch", total=None, rate="")
        import time

        start: list[tuple[float, int]] = []  # (clock, studies done) at the first progress call

        def on_progress(done: int, total: int, uid: str) -> None:
            if not start:
                start.append((time.perf_counter(), done - 1))
            t0, n0 = start[0]
            dt = time.perf_counter() - t0
            rate = (done - n0) / dt if dt > 0 else 0.0
            prog.update(task, completed=done, total=total, rate=f"{rate:.2f} studies/s")

        if pacs is not None:
            s = run_batch_pacs(pacs, query or [], out, opts, config=pacs_config, progress=on_progress)
        else:
            assert archive is not None  # _check_source: exactly one source
            s = run_batch(archive, out, opts, progress=on_progress)
        stored = None
        if store_back is not None:
            sr_task = prog.add_task("store-back", total=None, rate="")
            stored = store_back_results(out, store_back, opts, pacs_config=pacs_config,
                                        progress=lambda k, n, uid: prog.update(sr_task, completed=k, total=n))
    # paths and failure reasons come from the archive (or the PACS): data, never markup or terminal control
    t = Table(title=safe(f"{s.source} -> {s.out}"), header_style="bold", show_header=False)
    t.add_row("studies", str(s.total))
    if s.resumed:
        where = "PACS query" if pacs is not None else "archive"
        changes = [f"{s.added} added", f"{s.changed} changed (scored again)",
                   f"{s.removed} removed (dropped from the results)"]
        t.add_row(f"{where} since the last run",
                  ", ".join(changes) if s.added or s.changed or s.removed else "unchanged")
    t.add_row("already done (resumed)", str(s.done_before))
    t.add_row("ok", str(s.ok))
    t.add_row("failed", safe(", ".join(f"{n} {k}" for k, n in s.failed.items()) or "0"))
    if pacs is None or s.duplicates:
        t.add_row("duplicate files dropped", str(s.duplicates))
    if pacs is None or s.files_skipped:
        t.add_row("files skipped", safe(", ".join(f"{n} {k}" for k, n in s.files_skipped.items()) or "0"))
    if s.journal_skipped:
        t.add_row("corrupt journal lines skipped", f"{s.journal_skipped} (their studies were scored again)")
    if pacs is not None:
        needed, got = s.transfer.get("instances_needed", 0), s.transfer.get("instances_retrieved", 0)
        t.add_row("PACS transfer", f"{needed} instances read: {got} retrieved "
                                   f"({s.transfer.get('bytes_retrieved', 0) / 1e6:.1f} MB), {needed - got} from the cache")
    if s.device:
        t.add_row("encoder", safe(f"{s.device}: {s.precision_note}" if s.precision_note else s.device))
    t.add_row("throughput", f"{s.studies_per_s:.2f} studies/s in {s.seconds:.1f} s "
                            f"(reading {s.prepare_seconds:.1f} s summed over workers, encoding {s.encode_seconds:.1f} s)")
    if stored is not None:
        t.add_row(f"SR stored on {safe(stored.node)}",
                  f"{len(stored.stored)} now, {stored.before} by earlier runs, {len(stored.pending)} not stored")
        for uid, why in list(stored.pending.items())[:10]:
            t.add_row("  not stored", safe(f"{uid}: {why}"))
        if len(stored.pending) > 10:
            t.add_row("", f"... and {len(stored.pending) - 10} more")
    console.print(t)
    if reports is not None:
        written, kept = write_reports(out, reports, opts, pacs_config=pacs_config)
        console.print(safe(f"HTML reports in {reports}: {written} written, {kept} already there"))
    if stored is not None and stored.pending:
        from cmrdx.errors import StoreFailedError

        raise StoreFailedError(f"{stored.node}: {len(stored.pending)} SR(s) not stored"
                               + (f" ({stored.error})" if stored.error else ""),
                               hint=f"run the same command again once {stored.node} takes them: it stores what is "
                                    f"pending (the SRs built wait in the outbox; `cmrdx pacs flush {stored.node}` "
                                    "sends those too)")
