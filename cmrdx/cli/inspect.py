"""`cmrdx inspect STUDY_DIR`: the series of a study, their roles and views, and what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def inspect_cmd(
    study_dir: Path = typer.Argument(..., help="Folder (or .zip) holding one study's DICOM files."),
    study: str | None = typer.Option(None, "--study", help="StudyInstanceUID to inspect when the folder holds several."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
    show_phi: bool = typer.Option(False, "--show-phi", help="Also show patient name / ID (hidden by default)."),
) -> None:
    """List every series with its role (cine / LGE / other) and view, and the reason for each decision."""
    from cmrdx.dicom.scan import scan
    from cmrdx.errors import MultipleStudiesError
    from cmrdx.study.assemble import inspect_study

    res = scan(study_dir)
    try:
        insp = inspect_study(res, study)
    except MultipleStudiesError:
        if as_json:
            raise
        _print_studies(res)
        raise
    if as_json:
        typer.echo(json.dumps(insp.to_dict(show_phi=show_phi), indent=2))
        return
    console = Console()
    title = f"Study {insp.study_uid}  ({res.files_scanned} files, {len(insp.series)} series)"
    table = Table(title=title, show_lines=False, header_style="bold")
    for col in ("#", "description", "role", "view", "slices x phases", "matrix", "spacing mm", "reason"):
        table.add_column(col, overflow="fold")
    style = {"cine": "green", "lge": "magenta", "other": "dim"}
    for s in insp.series:
        sp = s.pixel_spacing
        table.add_row(
            str(s.number if s.number is not None else "-"),
            s.description or "(none)",
            f"[{style[s.role]}]{s.role}[/]",
            s.view or "-",
            f"{s.n_positions} x {s.n_phases}",
            f"{s.matrix[0]}x{s.matrix[1]}" if s.matrix else "-",
            f"{sp[0]:.2f}x{sp[1]:.2f}" if sp else "-",
            s.reason + (f"; {s.view_reason}" if s.view_reason else ""),
        )
    console.print(table)
    found = insp.views_found
    console.print("[bold]views found:[/] " + (", ".join(f"{k} ({len(v)} series)" for k, v in sorted(found.items())) or "none"))
    if insp.views_missing:
        console.print("[bold yellow]views missing:[/] " + ", ".join(insp.views_missing))
    if res.files_skipped:
        console.print("[bold]files skipped:[/] " + ", ".join(f"{n} {r}" for r, n in res.files_skipped.items()))
    if insp.other_studies:
        console.print(f"[yellow]{len(insp.other_studies)} other study(ies) in this folder:[/] " + ", ".join(insp.other_studies))
    if show_phi:
        phi = next((s.phi for s in insp.series if s.phi), {})
        console.print("[bold red]patient:[/] " + ", ".join(f"{k}={v}" for k, v in phi.items()))


def _print_studies(res) -> None:
    console = Console(stderr=True)
    table = Table(title=f"{len(res.studies)} studies in {res.root}")
    table.add_column("StudyInstanceUID")
    table.add_column("series")
    table.add_column("descriptions", overflow="fold")
    for uid, ss in res.studies.items():
        table.add_row(uid, str(len(ss)), ", ".join(s.description for s in ss[:6]) + (" ..." if len(ss) > 6 else ""))
    console.print(table)
