"""`cmrdx explain STUDY`: why each finding scored as it did (views, phases of the cycle, regions), and the draft
impression. A thin layer over ``cmrdx.pipeline.classify`` with ``explain=True``; the text views of an explanation,
a draft impression and similar prior cases are here, shared with `cmrdx classify`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cmrdx.cli.text import console as _console
from cmrdx.cli.text import plain, safe

BLOCKS = " ▁▂▃▄▅▆▇█"


def _bar(value: float | None, scale: float, width: int = 12) -> str:
    """A signed text bar: '+' cells right of the axis for a positive value, '-' cells left of it."""
    if value is None:
        return " " * width + "|" + " " * width
    n = int(round(min(1.0, abs(value) / scale) * width)) if scale > 0 else 0
    left = " " * (width - n) + "-" * n if value < 0 else " " * width
    right = "+" * n + " " * (width - n) if value > 0 else " " * width
    return f"{left}|{right}"


def _spark(values: list[float]) -> str:
    """A sparkline of a curve, scaled to its own range (flat: a middle line)."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        return BLOCKS[4] * len(values)
    return "".join(BLOCKS[1 + int(round((v - lo) / (hi - lo) * 7))] for v in values)


def show_explanation(console: Console, res: Any) -> None:
    """Per explained finding: view bars, the phase curve and the strongest region; then the cost."""
    ex = res.explanation
    if ex is None:
        return
    calls = {f.id: f for f in res.findings}
    console.print("[bold]Why[/] (score change when a part of the input is taken away; + supported the score)")
    for fe in ex.findings:
        f = calls.get(fe.id)
        call = f"{f.call}{f' ({f.severity})' if f.severity else ''}" if f else ""
        t = Table(title=f"{safe(fe.label)}: score {fe.score:.3f}, {safe(call)}", title_justify="left",
                  header_style="bold", show_edge=False)
        for col in ("segment", "view", "attribution", "", "left out", "alone"):
            t.add_column(col, overflow="fold")
        vals = [abs(v) for v in fe.views.values() if v is not None]
        scale = max(vals) if vals else 1.0
        seg_view = {s["segment"]: s["view"] for s in ex.segments}
        for seg, v in fe.views.items():
            mark = " *" if seg == fe.top_segment else ""
            t.add_row(safe(seg) + mark, safe(seg_view.get(seg, "")), "-" if v is None else f"{v:+.4f}",
                      _bar(v, scale), "-" if fe.leave_out.get(seg) is None else f"{fe.leave_out[seg]:+.4f}",
                      "-" if fe.alone.get(seg) is None else f"{fe.alone[seg]:+.4f}")
        console.print(t)
        if fe.roles:
            console.print("  roles (all of a role's segments left out): "
                          + ", ".join(f"{safe(r)} {v:+.4f}" for r, v in fe.roles.items()), highlight=False)
        if fe.phase:
            k = max(range(len(fe.phase)), key=lambda i: fe.phase[i])
            console.print(f"  phases (window of {ex.phase_width:.0%} of the cycle, from the R wave): "
                          f"{_spark(fe.phase)}  strongest at {ex.phase_centres[k]:.0%} ({fe.phase[k]:+.4f})",
                          highlight=False)
        if fe.region is not None:
            g = fe.region.grid
            i, j = max(((a, b) for a in range(len(g)) for b in range(len(g[a]))), key=lambda ab: g[ab[0]][ab[1]])
            console.print(f"  regions on {safe(fe.region.segment)} ({safe(fe.region.view)}, {len(g)}x{len(g)} patches"
                          f"{', as the only segment of its role' if fe.region.alone else ''}): strongest patch "
                          f"row {i + 1}, column {j + 1} ({g[i][j]:+.4f}); the map is in --json and --report",
                          highlight=False)
        elif fe.region_note:
            console.print(f"  [dim]{safe(fe.region_note)}[/]", highlight=False)
    for fid, why in ex.skipped.items():
        console.print(f"  [dim]{safe(fid)}: not explained: {safe(why)}[/]", highlight=False)
    n = max(1, len(ex.findings))
    total = ex.timings_ms.get("total_ms", 0.0) / 1000
    console.print(f"[dim]attribution: {ex.n_inputs} encoder inputs in {total:.1f} s ({total / n:.2f} s per finding "
                  f"explained, {n})[/]", highlight=False)


def show_impression(console: Console, res: Any) -> None:
    imp = res.impression
    if imp is None:
        return
    console.print("[bold white on dark_orange3] DRAFT impression - not for clinical use [/]")
    for s in imp.sentences:
        console.print(f"  {safe(s)}", highlight=False)
    if res.similar is not None and res.similar.cases:
        console.print("  [dim]impressions of the most similar prior cases are listed below[/]")


def show_similar(console: Console, res: Any) -> None:
    sim = res.similar
    if sim is None:
        return
    t = Table(title=f"Similar prior cases ({len(sim.cases)} of {safe(sim.store)})", title_justify="left",
              header_style="bold")
    for col in ("#", "study", "similarity", "report impression", "cmrdx findings"):
        t.add_column(col, overflow="fold")
    for c in sim.cases:
        t.add_row(str(c.rank), safe(c.source or c.study_uid), f"{c.similarity:.3f}", safe(c.impression or "-"),
                  safe(", ".join(c.findings) or "none called present"))
    console.print(t)
    for n in sim.notes:
        console.print(f"[dim]{safe(n)}[/]", highlight=False)


def vote_cell(res: Any, fid: str) -> str | None:
    """The nearest-neighbour vote of a finding as a table cell, or None when there is none."""
    sim = res.similar
    if sim is None or fid not in sim.votes:
        return None
    v = sim.votes[fid]
    return f"{v['present']}/{v['labelled']} ({v['call']})"


def explain_cmd(
    study_dir: str = typer.Argument(..., help="Folder (or .zip) holding one study's DICOM files, or "
                                              "pacs://NODE/STUDY_INSTANCE_UID."),
    finding: list[str] | None = typer.Option(None, "--finding", "-f", help="Explain this finding only (repeatable; "
                                             "default: every finding the study lets cmrdx assess)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name or folder (default: the bundled model)."),
    bank: list[str] | None = typer.Option(None, "--bank", "-b", help="Prompt bank name or YAML file (repeatable)."),
    device: str = typer.Option("auto", "--device", help="auto | cuda | cpu"),
    study: str | None = typer.Option(None, "--study", help="StudyInstanceUID when the folder holds several."),
    grid: int = typer.Option(4, "--grid", min=0, help="Region map: patches per side (0: no map)."),
    regions: int = typer.Option(1, "--regions", min=0, help="Segments that get a region map (each costs "
                                                            "2 grid^2 + 2 encoder inputs)."),
    phases: int = typer.Option(8, "--phases", min=0, help="Positions of the sliding window over the cycle."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (schema cmrdx-classify/1, with "
                                                       "\"explain\" and \"impression\")."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Also write the JSON result to this file."),
    report: Path | None = typer.Option(None, "--report", help="Write the HTML report, with the attribution next to "
                                                              "each finding, to this file."),
    pacs_config: Path | None = typer.Option(None, "--pacs-config", help="PACS nodes (default: $CMRDX_HOME/pacs.yaml)."),
) -> None:
    """Show why each finding scored as it did: the views, the phases of the cycle and the regions behind it."""
    from cmrdx.outputs.common import check_targets
    from cmrdx.pipeline.classify import classify
    from cmrdx.pipeline.explain import ExplainOptions
    from cmrdx.vocab import DEFAULT_BANKS

    if device not in ("auto", "cuda", "cpu"):
        raise typer.BadParameter(f"{device!r}: use auto, cuda or cpu", param_hint="--device")
    check_targets(output=output, report=report)
    opts = ExplainOptions(grid=grid, region_views=regions, phase_windows=phases)
    src = None
    pacs: dict = {}
    from cmrdx.pacs.config import is_address

    if is_address(study_dir):
        from cmrdx.model.loader import get_encoder
        from cmrdx.outputs import StudySource
        from cmrdx.pacs.study import read_pacs_study

        ps = read_pacs_study(study_dir, get_encoder(model, device).manifest.recipe_params(), config=pacs_config,
                             all_views=report is not None)
        src, pacs = StudySource.from_pacs(ps), ps.to_dict()
    elif report:
        from cmrdx.outputs import StudySource

        src = StudySource.read(study_dir, study)
    res = classify(src.study if src else study_dir, model=model, banks=tuple(bank) if bank else DEFAULT_BANKS,
                   device=device, study_uid=study, explain=opts, explain_findings=finding or None)
    res.pacs = pacs
    payload = json.dumps(res.to_dict(), indent=2)
    if output is not None:
        from cmrdx.outputs import write_atomic

        write_atomic(output, payload + "\n")
    if report:
        from cmrdx.outputs import write_outputs

        for kind, w in write_outputs(res, src, report=report).items():
            typer.echo(f"wrote {kind}: {plain(w['path'])} ({w['bytes']} bytes, {w['ms']:.0f} ms)", err=True)
    if as_json:
        typer.echo(payload)
        return
    console = _console()
    from cmrdx.vocab import DEFAULT_MODEL

    if res.model["name"] == DEFAULT_MODEL:
        console.print("[bold yellow]Demonstration model trained on synthetic phantoms: not for clinical use.[/]")
    console.print(f"[bold]Study {safe(res.study_uid)}[/]")
    show_explanation(console, res)
    show_impression(console, res)
