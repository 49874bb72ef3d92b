"""`cmrdx batch ARCHIVE --out results.parquet`: score every study of an archive, resumably."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


def batch_cmd(
    archive: Path = typer.Argument(..., help="Archive folder (nested folders, zips; studies may span folders)."),
    out: Path = typer.Option(..., "--out", "-o", help="Results file: .parquet, .csv or .jsonl."),
    model: str | None = typer.Option(None, "--model", "-m"),
    bank: list[str] | None = typer.Option(None, "--bank", "-b"),
    device: str = typer.Option("auto", "--device"),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Reader processes (default: one per core)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Studies per encoder call."),
    engine: str = typer.Option("local", "--engine", help="local (process pool) or ray."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address (default: start Ray locally)."),
    limit: int | None = typer.Option(None, "--limit", min=0, help="Stop after this many new studies."),
    reports: Path | None = typer.Option(None, "--reports", help="Also write one HTML report per study under this folder."),
) -> None:
    """Read, assemble and score every study; one record per study. Killed, it resumes where it stopped."""
    from cmrdx.cli.text import console as make_console
    from cmrdx.cli.text import safe
    from cmrdx.outputs.common import check_folder_target, check_target
    from cmrdx.pipeline.batch import BatchOptions, run_batch, write_reports

    check_target(out)  # every output checked before any study is read
    if reports is not None:
        check_folder_target(reports)
    opts = BatchOptions(model=model, banks=tuple(bank) if bank else ("cmr-findings",), device=device, workers=workers,
                        batch_size=batch_size, engine=engine, ray_address=address, limit=limit)
    console = make_console()
    with Progress(TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                  TimeRemainingColumn(), console=console, transient=False) as prog:
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

        s = run_batch(archive, out, opts, progress=on_progress)
    # paths and failure reasons come from the archive: data, never markup or terminal control
    t = Table(title=safe(f"{archive} -> {s.out}"), header_style="bold", show_header=False)
    t.add_row("studies", str(s.total))
    if s.resumed:
        changes = [f"{s.added} added", f"{s.changed} changed (scored again)",
                   f"{s.removed} removed (dropped from the results)"]
        t.add_row("archive since the last run", ", ".join(changes) if s.added or s.changed or s.removed else "unchanged")
    t.add_row("already done (resumed)", str(s.done_before))
    t.add_row("ok", str(s.ok))
    t.add_row("failed", safe(", ".join(f"{n} {k}" for k, n in s.failed.items()) or "0"))
    t.add_row("duplicate files dropped", str(s.duplicates))
    t.add_row("files skipped", safe(", ".join(f"{n} {k}" for k, n in s.files_skipped.items()) or "0"))
    if s.journal_skipped:
        t.add_row("corrupt journal lines skipped", f"{s.journal_skipped} (their studies were scored again)")
    t.add_row("throughput", f"{s.studies_per_s:.2f} studies/s in {s.seconds:.1f} s "
                            f"(reading {s.prepare_seconds:.1f} s summed over workers, encoding {s.encode_seconds:.1f} s)")
    console.print(t)
    if reports is not None:
        written, kept = write_reports(out, reports, opts)
        console.print(safe(f"HTML reports in {reports}: {written} written, {kept} already there"))
