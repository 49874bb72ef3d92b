"""`cmrdx inspect STUDY_DIR`: the series of a study, their roles and views, what is missing, the input checks that
failed, and (once per study) what pydicom complained about while reading the files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.table import Table

from cmrdx.cli.text import console as _console
from cmrdx.cli.text import safe


def inspect_cmd(
    study_dir: str = typer.Argument(..., help="Folder (or .zip) holding one study's DICOM files, or a study on a "
                                              "PACS: pacs://NODE/STUDY_INSTANCE_UID (headers only are queried)."),
    study: str | None = typer.Option(None, "--study", help="StudyInstanceUID to inspect when the folder holds several."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
    show_phi: bool = typer.Option(False, "--show-phi", help="Also show patient name / ID (hidden by default)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="List every kind of reading warning with example files."),
    pacs_config: Path | None = typer.Option(None, "--pacs-config", help="PACS nodes (default: $CMRDX_HOME/pacs.yaml)."),
) -> None:
    """List every series with its role (cine and LGE feed the model; every other type is named) and view, and the
    reason for each decision."""
    from cmrdx.dicom.scan import scan
    from cmrdx.errors import MultipleStudiesError
    from cmrdx.pacs.config import is_address
    from cmrdx.study.assemble import assemble_study, inspect_study
    from cmrdx.study.heart import locate_heart

    if is_address(study_dir):  # the PACS answers with headers; no image is retrieved
        from cmrdx.pacs.study import inspect_pacs_study

        ps = inspect_pacs_study(study_dir, config=pacs_config)
        insp, res, assembled = ps.inspection, ps.inspection.scan, ps.study
    else:
        res = scan(study_dir)
        try:
            insp = inspect_study(res, study)
        except MultipleStudiesError:
            if as_json:
                raise
            _print_studies(res)
            raise
        # Headers only: the assembly decodes nothing until pixels are asked for; it runs the input checks.
        assembled = assemble_study(insp, require_cine=False)
    manifest = assembled.manifest
    # where the plan puts the heart (headers only): what a recipe that cuts around it would use
    heart, how = locate_heart(assembled.views)
    if as_json:
        d = insp.to_dict(show_phi=show_phi)
        d["input_checks"] = [c.to_dict() for c in manifest.input_checks]
        d["warnings"] = list(manifest.warnings)
        d["heart"] = {"located": heart is not None, "how": how, **(heart.to_dict() if heart is not None else {})}
        typer.echo(json.dumps(d, indent=2))
        return
    console = _console()
    # Everything from the files (UIDs, descriptions, reasons quoting them, file names) is data: escaped for the
    # terminal (markup and control characters), never interpreted.
    title = f"Study {safe(insp.study_uid)}  ({res.files_scanned} files, {len(insp.series)} series)"
    table = Table(title=title, show_lines=False, header_style="bold")
    for col in ("#", "description", "role", "view", "slices x phases", "matrix", "spacing mm", "reason"):
        table.add_column(col, overflow="fold")
    style = {"cine": "green", "lge": "magenta", "other": "dim"}
    for s in insp.series:
        sp = s.pixel_spacing
        table.add_row(
            str(s.number if s.number is not None else "-"),
            safe(s.description) or "(none)",
            f"[{style.get(s.role, 'dim')}]{safe(s.role)}[/]",
            safe(s.view or "-"),
            f"{s.n_positions} x {s.n_phases}",
            f"{s.matrix[0]}x{s.matrix[1]}" if s.matrix else "-",
            f"{sp[0]:.2f}x{sp[1]:.2f}" if sp else "-",
            safe(s.reason + (f"; {s.view_reason}" if s.view_reason else "")),
        )
    console.print(table)
    found = insp.views_found
    console.print("[bold]views found:[/] " + (safe(", ".join(f"{k} ({len(v)} series)" for k, v in sorted(found.items()))) or "none"))
    if insp.views_missing:
        console.print("[bold yellow]views missing:[/] " + safe(", ".join(insp.views_missing)))
    console.print(("[bold]heart:[/] " if heart is not None else "[bold]heart:[/] not located: ") + safe(how))
    if res.files_skipped:
        console.print("[bold]files skipped:[/] " + safe(", ".join(f"{n} {r}" for r, n in res.files_skipped.items())))
    missing_line = "views not found: " + ", ".join(insp.views_missing)  # already said above
    for w in manifest.warnings:
        if w != missing_line:
            console.print(f"[yellow]warning:[/] {safe(w)}")
    rw = insp.read_warnings
    if rw:
        verbose = verbose or logging.getLogger().isEnabledFor(logging.INFO)  # `cmrdx -v inspect` too
        console.print(f"[yellow]reading:[/] {safe(rw.summary() or '')}" + ("" if verbose else " [dim](-v lists them)[/]"))
        if verbose:
            for kind, n in rw.counts.items():
                ex = ", ".join(rw.examples.get(kind, []))
                console.print(f"  {safe(kind)}: {n} file{'s' if n != 1 else ''}" + (f" (e.g. {safe(ex)})" if ex else ""))
    if insp.other_studies:
        console.print(f"[yellow]{len(insp.other_studies)} other study(ies) in this folder:[/] " + safe(", ".join(insp.other_studies)))
    if show_phi:
        phi = next((s.phi for s in insp.series if s.phi), {})
        console.print("[bold red]patient:[/] " + safe(", ".join(f"{k}={v}" for k, v in phi.items())))


def _print_studies(res) -> None:
    console = _console(stderr=True)
    table = Table(title=f"{len(res.studies)} studies in {safe(res.root)}")
    table.add_column("StudyInstanceUID")
    table.add_column("series")
    table.add_column("descriptions", overflow="fold")
    for uid, ss in res.studies.items():
        table.add_row(safe(uid), str(len(ss)), safe(", ".join(s.description for s in ss[:6]) + (" ..." if len(ss) > 6 else "")))
    console.print(table)
