"""`cmrdx classify STUDY_DIR`: ranked zero-shot findings. A thin layer over ``cmrdx.pipeline.classify``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from cmrdx.cli.models import precision_option
from cmrdx.cli.text import console as _console
from cmrdx.cli.text import plain, safe
from cmrdx.vocab import Call

CALL_STYLE: dict[str, str] = {Call.PRESENT: "bold red", Call.ABSENT: "green", Call.UNCERTAIN: "yellow", Call.NO_THRESHOLD: "dim",
                              Call.NOT_ASSESSABLE: "dim italic"}


def classify_cmd(
    study_dir: str = typer.Argument(..., help="Folder (or .zip) holding one study's DICOM files, or a study on a "
                                              "PACS: pacs://NODE/STUDY_INSTANCE_UID."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name or folder (default: the bundled model)."),
    bank: list[str] | None = typer.Option(None, "--bank", "-b", help="Prompt bank name or YAML file (repeatable)."),
    device: str = typer.Option("auto", "--device", help="auto | cuda | cpu"),
    precision: str = precision_option(),
    study: str | None = typer.Option(None, "--study", help="StudyInstanceUID when the folder holds several."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (schema cmrdx-classify/1)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Also write the JSON result to this file."),
    prototypes: Path | None = typer.Option(None, "--prototypes", help="Few-shot prototypes (.npz from `cmrdx fewshot fit`)."),
    report: Path | None = typer.Option(None, "--report", help="Write a self-contained HTML report to this file."),
    sr: Path | None = typer.Option(None, "--sr", help="Write a DICOM SR (TID 1500 measurement report) to this file."),
    fhir: Path | None = typer.Option(None, "--fhir", help="Write a FHIR Bundle (DiagnosticReport + Observations) JSON."),
    store_back: str | None = typer.Option(None, "--store-back", help="Store the DICOM SR on this PACS node (kept and "
                                          "retried on the next run if the node cannot take it now)."),
    pacs_config: Path | None = typer.Option(None, "--pacs-config", help="PACS nodes (default: $CMRDX_HOME/pacs.yaml)."),
    explain: bool = typer.Option(False, "--explain", help="Also show why each finding scored as it did (views, "
                                 "phases, regions; a few seconds on a CPU); `cmrdx explain` has the options."),
    db: Path | None = typer.Option(None, "--db", help="A search store (`cmrdx index`): show the most similar prior "
                                   "cases, their report impressions and findings, and a vote of their labels."),
    k: int = typer.Option(5, "-k", min=1, help="Similar prior cases to show with --db."),
    embedding: bool = typer.Option(False, "--embedding", help="Put the study's embedding in the JSON result "
                                   "(--json, --output): \"embedding\", the one prompts score, and for a model with a "
                                   "finding stream \"main_embedding\", the one distances to other studies use."),
) -> None:
    """Score a study against prompt banks and print the findings ranked."""
    from cmrdx.pipeline.classify import classify
    from cmrdx.vocab import DEFAULT_BANKS

    if device not in ("auto", "cuda", "cpu"):
        raise typer.BadParameter(f"{device!r}: use auto, cuda or cpu", param_hint="--device")
    from cmrdx.outputs.common import check_targets

    check_targets(output=output, report=report, sr=sr, fhir=fhir)  # all-or-nothing: no work for an unwritable output
    if db is not None and not (db / "index.json").is_file():  # no work for a store that is not there
        from cmrdx.errors import UsageError

        raise UsageError(f"--db {db}: not a cmrdx search store (no index.json)",
                         hint="build one with `cmrdx index ARCHIVE --db DIR`, or give the store's folder")
    from cmrdx.pacs.config import get_node, is_address

    target = get_node(store_back, pacs_config) if store_back else None  # a node not configured: before any work
    src = None
    pacs: dict = {}
    if is_address(study_dir):  # headers first, then only the instances the recipe (and a report) reads
        from cmrdx.model.loader import get_encoder
        from cmrdx.outputs import StudySource
        from cmrdx.pacs.study import read_pacs_study

        ps = read_pacs_study(study_dir, get_encoder(model, device, precision).manifest.recipe_params(), config=pacs_config,
                             all_views=report is not None)
        src, pacs = StudySource.from_pacs(ps), ps.to_dict()
    elif report or sr or target:  # these outputs need the study's headers and pixels: read once, shared with classify
        from cmrdx.outputs import StudySource

        src = StudySource.read(study_dir, study)
    from cmrdx.cli.progress import stages

    with stages("classifying", enabled=not as_json) as stage:
        res = classify(src.study if src else study_dir, model=model, banks=tuple(bank) if bank else DEFAULT_BANKS, device=device, study_uid=study,
                       prototypes=prototypes, precision=precision, progress=stage, explain=explain)
    res.pacs = pacs
    if db is not None:
        from cmrdx.pipeline.priors import add_similar

        add_similar(res, db, k=k, model=model, device=device)
    payload = json.dumps(res.to_dict(include_embedding=embedding), indent=2)
    if output is not None:
        from cmrdx.outputs import write_atomic

        write_atomic(output, payload + "\n")
    if report or sr or fhir:
        from cmrdx.outputs import write_outputs

        for kind, w in write_outputs(res, src, report=report, sr=sr, fhir=fhir).items():
            typer.echo(f"wrote {kind}: {plain(w['path'])} ({w['bytes']} bytes, {w['ms']:.0f} ms)", err=True)
    unstored = _store_back(res, src, target, sr) if target is not None and src is not None else None
    _show(res, payload, as_json)
    if unstored is not None:  # the findings are shown; the SR waits in the outbox
        raise unstored


def _show(res, payload: str, as_json: bool) -> None:
    from cmrdx.vocab import DEFAULT_MODEL

    if as_json:
        typer.echo(payload)
        return
    console = _console()
    demo = res.model["name"] == DEFAULT_MODEL
    if demo:
        console.print("[bold yellow]Demonstration model trained on synthetic phantoms: not for clinical use.[/]")
    typ = res.typicality
    if typ.get("status") == "atypical":
        console.print(f"[bold white on red] ATYPICAL STUDY [/] [bold red]{safe(typ['reason'])}[/]\n"
                      "[red]Calls are shown as uncertain: the model has not seen studies like this one.[/]")
    elif typ.get("status") == "unknown":
        console.print(f"[yellow]typicality unknown:[/] {safe(typ['reason'])}", highlight=False)
    # Strings from files (UIDs, descriptions in warnings) and banks are data: markup and control characters
    # escaped, never interpreted by the terminal.
    from cmrdx.cli.explain import show_explanation, show_impression, show_similar, vote_cell

    table = Table(title=f"Study {safe(res.study_uid)}", header_style="bold")
    whys = {f.id: "; ".join(([f.reason] if f.reason else []) + list(f.notes)) for f in res.findings}
    votes = {f.id: vote_cell(res, f.id) for f in res.findings}
    cols = ("finding", "score", "threshold / probability", "call", "margin") + (("why",) if any(whys.values()) else ())
    cols += ("k-NN vote of similar labelled studies",) if any(votes.values()) else ()
    for col in cols:
        table.add_column(col, overflow="fold")
    for f in res.findings:
        ref = f"p = {f.probability:.2f}" if f.probability is not None else (f"{f.threshold:.3f}" if f.threshold is not None else "-")
        call = f.call + (f" ({f.severity})" if f.severity else "")
        cells = [
            safe(f.label),
            f"{f.score:.3f}" + (" (softmax)" if f.kind == "softmax" else ""),
            ref if f.assessable else "-",
            f"[{CALL_STYLE.get(f.call, '')}]{safe(call)}[/]",
            f"{f.margin:+.3f}" if f.margin is not None else "-",
        ]
        table.add_row(*cells, *((safe(whys[f.id]),) if "why" in cols else ()),
                      *((safe(votes[f.id] or "-"),) if len(cols) > 5 and cols[-1].startswith("k-NN") else ()))
    console.print(table)
    show_impression(console, res)
    show_similar(console, res)
    show_explanation(console, res)
    if res.fewshot:
        ft = Table(title="Few-shot (prototypes)", header_style="bold")
        for col in ("finding", "score", "call", "shots absent/present"):
            ft.add_column(col)
        for fid, r in sorted(res.fewshot.items(), key=lambda kv: -kv[1]["score"]):
            ft.add_row(safe(fid), f"{r['score']:+.3f}", f"[{CALL_STYLE.get(r['call'], '')}]{safe(r['call'])}[/]",
                       f"{r['shots'][0]}/{r['shots'][1]}")
        console.print(ft)
    used = ", ".join(f"{seg}: {rec['view']}" for seg, rec in res.views_used.items())
    console.print(f"[bold]views used:[/] {safe(used)}")
    console.print(f"[bold]series used:[/] {len(res.series_used)}; skipped: {len(res.skipped_series)} (see --json)")
    if res.read_summary:  # once per study; the kinds and example files are in --json
        console.print(f"[dim]reading:[/] {safe(res.read_summary)}", highlight=False)
    for w in res.warnings:
        console.print(f"[yellow]warning:[/] {safe(w)}", highlight=False)
    if any(f.call == "no threshold" for f in res.findings):
        console.print("[dim]no threshold for this model in the bank: scores are shown ranked without calls "
                      "(`cmrdx prompts calibrate` writes thresholds)[/]")
    banks = ", ".join(f"{b['name']} {b['version']} ({b['sha256'][:12]})" for b in res.banks)
    console.print(safe(f"model {res.model['name']} {res.model['version']} ({res.model['sha256'][:12]}) on {res.device}; "
                         f"banks {banks}; {sum(res.timings_ms.values()):.0f} ms"), style="dim")


def _store_back(res, src, node, sr: Path | None) -> Exception | None:
    """The SR of ``res`` stored on ``node`` through the outbox (with every SR an earlier run could not store there).
    Returns the StoreFailedError to raise after the findings are shown (exit 12) while some SR is pending."""
    import tempfile

    from cmrdx.errors import StoreFailedError
    from cmrdx.pacs.outbox import store_back

    with tempfile.TemporaryDirectory(prefix="cmrdx-sr-") as tmp:
        path = sr
        if path is None:
            from cmrdx.outputs import write_outputs

            path = Path(tmp) / "sr.dcm"
            write_outputs(res, src, sr=path)
        rep = store_back(node, [path])
    for r in rep.stored:
        typer.echo(f"stored on {node.name}: SR {plain(r.sop_instance_uid)}", err=True)
    if rep.pending:
        why = rep.error or "; ".join(f"{plain(r.sop_instance_uid)}: {plain(r.status)} {plain(r.detail)}" for r in rep.failed)
        return StoreFailedError(f"{node.name}: {rep.pending} SR(s) not stored ({why}); kept in the outbox",
                                hint=f"they are sent again by the next --store-back {node.name}, or by "
                                     f"`cmrdx pacs flush {node.name}`")
    return None
