"""`cmrdx prompts lint | try | evaluate | calibrate`: authoring prompt banks. Thin over cmrdx.zeroshot.authoring."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from cmrdx.cli.text import console as _console
from cmrdx.cli.text import safe

app = typer.Typer(help="Write, check, try, evaluate and calibrate prompt banks.", no_args_is_help=True)


def _model(model: str | None, device: str = "cpu"):
    from cmrdx.model.loader import get_encoder, model_sha256

    enc = get_encoder(model, device)
    return enc, model_sha256(enc.manifest)


@app.command("lint")
def lint_cmd(
    banks: list[Path] = typer.Argument(..., help="Prompt bank YAML files."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model for the tokenizer / embedding checks (default: bundled)."),
    no_model: bool = typer.Option(False, "--no-model", help="Schema and duplicate checks only (no model needed)."),
) -> None:
    """Schema errors with file:line, duplicates and near-duplicates, over-long prompts, shattered words, missing
    thresholds. Exits 1 on errors, 0 with warnings only."""
    from cmrdx.errors import ModelError
    from cmrdx.zeroshot.authoring import lint_bank

    console = _console()  # bank text, file names and messages quoting them are data: escaped (cmrdx.cli.text)
    enc = sha = None
    if not no_model:
        try:
            enc, sha = _model(model)
        except ModelError as exc:
            if model is not None:
                raise
            console.print(f"[yellow]no model checks:[/] {safe(exc.message)}")
    n_err = 0
    for b in banks:
        _, issues = lint_bank(b, enc, sha)
        for i in issues:
            style = "bold red" if i.level == "error" else "yellow"
            # one issue per line, never wrapped: editors and CI logs jump to FILE:LINE
            console.print(f"[{style}]{i.level}[/] {safe(i.where)}: {safe(i.message)}", highlight=False, soft_wrap=True)
        errs = sum(i.level == "error" for i in issues)
        n_err += errs
        console.print(f"{safe(b)}: {errs} error(s), {len(issues) - errs} warning(s)", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if n_err else 0)


@app.command("try")
def try_cmd(
    bank: Path = typer.Argument(..., help="Prompt bank YAML (or a shipped bank's name)."),
    study_dir: Path = typer.Argument(..., help="One study's folder."),
    model: str | None = typer.Option(None, "--model", "-m"),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every prompt's similarity with one study and its finding's score: which prompt drives a call."""
    from cmrdx.pipeline.classify import classify

    res = classify(study_dir, model=model, banks=[str(bank)], device=device)
    if as_json:
        typer.echo(json.dumps([f.to_dict() for f in res.findings], indent=2))
        return
    table = Table(title=safe(f"{bank} on {res.study_uid}"), header_style="bold")
    for c in ("finding", "prompt", "similarity", "finding score", "call"):
        table.add_column(c, overflow="fold")
    for f in res.findings:
        for k, (text, sim) in enumerate(sorted(f.prompt_similarities.items(), key=lambda kv: -kv[1])):
            table.add_row(safe(f.label) if k == 0 else "", safe(text), f"{sim:.4f}", f"{f.score:.4f}" if k == 0 else "",
                          safe(f.call) if k == 0 else "")
    _console().print(table)


def _embedded(labels: Path, data: Path | None, model: str | None, device: str):
    from rich.progress import Progress

    from cmrdx.evaluation.archive import StudyEmbeddingCache, embed_labelled, load_labels

    enc, sha = _model(model, device)
    rows = load_labels(labels, data)
    with Progress(transient=True) as prog:
        task = prog.add_task("embedding studies", total=len(rows))
        es = embed_labelled(rows, enc, StudyEmbeddingCache(sha), progress=lambda i, n: prog.update(task, completed=i))
    if es.failed:
        _console(stderr=True).print(f"[yellow]{len(es.failed)} study(ies) could not be read[/]: "
                                    + safe("; ".join(f"{k}: {why}" for k, why in es.failed[:5])))
    return enc, sha, es


@app.command("evaluate")
def evaluate_cmd(
    bank: Path = typer.Argument(...),
    labels: Path = typer.Option(..., "--labels", help="labels.csv: `study` (folder) or `study_instance_uid`, one 0/1 column per finding id."),
    data: Path | None = typer.Option(None, "--data", help="Archive folder the `study` column is relative to (default: the CSV's folder)."),
    model: str | None = typer.Option(None, "--model", "-m"),
    device: str = typer.Option("auto", "--device"),
    n_boot: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples for the 95% CI (0: none)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Per finding and per prompt AUC (bootstrap 95% CI), sensitivity/specificity at the current threshold, and
    which prompts help or hurt (AUC without each prompt)."""
    from cmrdx.zeroshot.authoring import evaluate_bank
    from cmrdx.zeroshot.bank import get_bank
    from cmrdx.zeroshot.scoring import TextEmbeddingCache, bank_text_embeddings

    enc, sha, es = _embedded(labels, data, model, device)
    b = get_bank(str(bank))
    temb = bank_text_embeddings(b, enc.encode_texts, TextEmbeddingCache(sha))
    evals = evaluate_bank(es, b, temb, enc.manifest.name, sha, n_boot=n_boot)
    if as_json:
        typer.echo(json.dumps({"n_studies": len(es.rows), "failed": es.failed, "findings": [e.to_dict() for e in evals]}, indent=2))
        return
    t = Table(title=safe(f"{b.name} on {len(es.rows)} studies ({es.cached} cached) with {enc.manifest.name}"), header_style="bold")
    for c in ("finding", "AUC [95% CI]", "pos/neg", "threshold", "sens", "spec", "prompt", "prompt AUC", "AUC without it"):
        t.add_column(c, overflow="fold")
    for e in evals:
        first = True
        for p, a in e.per_prompt.items():
            t.add_row(
                safe(e.label) if first else "", str(e.auc) if first else "", f"{e.auc.n_pos}/{e.auc.n_neg}" if first else "",
                (f"{e.threshold:.4f}" if e.threshold is not None else "-") if first else "",
                (f"{e.sensitivity:.2f}" if e.sensitivity is not None else "-") if first else "",
                (f"{e.specificity:.2f}" if e.specificity is not None else "-") if first else "",
                safe(p), f"{a.auc:.3f}", f"{e.leave_one_out[p]:.3f}" if p in e.leave_one_out else "-",
            )
            first = False
    _console().print(t)


@app.command("calibrate")
def calibrate_cmd(
    bank: Path = typer.Argument(..., help="The bank YAML to write thresholds into (in place)."),
    labels: Path = typer.Option(..., "--labels"),
    data: Path | None = typer.Option(None, "--data"),
    method: str = typer.Option("sens-eq-spec", "--method", help="sens-eq-spec | youden | platt | isotonic"),
    model: str | None = typer.Option(None, "--model", "-m"),
    device: str = typer.Option("auto", "--device"),
    min_positives: int = typer.Option(5, "--min-positives", min=1, help="Refuse a finding with fewer positives (or negatives)."),
) -> None:
    """Fit thresholds (and a probability map) for the model and write them into the bank with provenance,
    keeping its comments and order."""
    from cmrdx.zeroshot.authoring import calibrate_bank, provenance_for, write_thresholds
    from cmrdx.zeroshot.bank import load_bank
    from cmrdx.zeroshot.scoring import TextEmbeddingCache, bank_text_embeddings

    if not bank.is_file():
        raise typer.BadParameter(f"{bank}: calibrate writes into a bank file; copy a shipped bank first")
    from cmrdx.outputs.common import check_target

    check_target(bank)  # written in place at the end: a folder that cannot take it is refused before any work
    enc, sha, es = _embedded(labels, data, model, device)
    b = load_bank(bank)
    temb = bank_text_embeddings(b, enc.encode_texts, TextEmbeddingCache(sha))
    fits = calibrate_bank(es, b, temb, enc.manifest.name, sha, method, min_positives=min_positives)
    write_thresholds(bank, enc.manifest.name, sha, fits, {fid: provenance_for(es, fid, labels, method) for fid in fits})
    t = Table(title=safe(f"{bank}: {method} thresholds for {enc.manifest.name}"), header_style="bold")
    for c in ("finding", "threshold", "sensitivity", "specificity"):
        t.add_column(c)
    for fid, ft in fits.items():
        t.add_row(safe(fid), f"{ft.threshold:.4f}", f"{ft.sensitivity:.2f}", f"{ft.specificity:.2f}")
    _console().print(t)
