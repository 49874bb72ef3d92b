"""`cmrdx prompts lint | try | evaluate | calibrate`: authoring prompt banks. Thin over cmrdx.zeroshot.authoring."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

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

    console = Console()
    enc = sha = None
    if not no_model:
        try:
            enc, sha = _model(model)
        except ModelError as exc:
            if model is not None:
                raise
            console.print(f"[yellow]no model checks:[/] {exc.message}")
    n_err = 0
    for b in banks:
        _, issues = lint_bank(b, enc, sha)
        for i in issues:
            style = "bold red" if i.level == "error" else "yellow"
            console.print(f"[{style}]{i.level}[/] {i.where}: {i.message}", highlight=False)
        errs = sum(i.level == "error" for i in issues)
        n_err += errs
        console.print(f"{b}: {errs} error(s), {len(issues) - errs} warning(s)")
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
    table = Table(title=f"{bank} on {res.study_uid}", header_style="bold")
    for c in ("finding", "prompt", "similarity", "finding score", "call"):
        table.add_column(c, overflow="fold")
    for f in res.findings:
        for k, (text, sim) in enumerate(sorted(f.prompt_similarities.items(), key=lambda kv: -kv[1])):
            table.add_row(f.label if k == 0 else "", text, f"{sim:.4f}", f"{f.score:.4f}" if k == 0 else "", f.call if k == 0 else "")
    Console().print(table)


def _embedded(labels: Path, data: Path | None, model: str | None, device: str):
    from rich.progress import Progress

    from cmrdx.evaluation.archive import StudyEmbeddingCache, embed_labelled, load_labels

    enc, sha = _model(model, device)
    rows = load_labels(labels, data)
    with Progress(transient=True) as prog:
        task = prog.add_task("embedding studies", total=len(rows))
        es = embed_labelled(rows, enc, StudyEmbeddingCache(sha), progress=lambda i, n: prog.update(task, completed=i))
    if es.failed:
        Console(stderr=True).print(f"[yellow]{len(es.failed)} study(ies) could not be read[/]: "
                                   + "; ".join(f"{k}: {why}" for k, why in es.failed[:5]))
    return enc, sha, es


@app.command("evaluate")
def evaluate_cmd(
    bank: Path = typer.Argument(...),
    labels: Path = typer.Option(..., "--labels", help="labels.csv: `study` (folder) or `study_instance_uid`, one 0/1 column per finding id."),
    data: Path | None = typer.Option(None, "--data", help="Archive folder the `study` column is relative to (default: the CSV's folder)."),
    model: str | None = typer.Option(None, "--model", "-m"),
    device: str = typer.Option("auto", "--device"),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% CI."),
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
    t = Table(title=f"{b.name} on {len(es.rows)} studies ({es.cached} cached) with {enc.manifest.name}", header_style="bold")
    for c in ("finding", "AUC [95% CI]", "pos/neg", "threshold", "sens", "spec", "prompt", "prompt AUC", "AUC without it"):
        t.add_column(c, overflow="fold")
    for e in evals:
        first = True
        for p, a in e.per_prompt.items():
            t.add_row(
                e.label if first else "", str(e.auc) if first else "", f"{e.auc.n_pos}/{e.auc.n_neg}" if first else "",
                (f"{e.threshold:.4f}" if e.threshold is not None else "-") if first else "",
                (f"{e.sensitivity:.2f}" if e.sensitivity is not None else "-") if first else "",
                (f"{e.specificity:.2f}" if e.specificity is not None else "-") if first else "",
                p, f"{a.auc:.3f}", f"{e.leave_one_out[p]:.3f}" if p in e.leave_one_out else "-",
            )
            first = False
    Console().print(t)


@app.command("calibrate")
def calibrate_cmd(
    bank: Path = typer.Argument(..., help="The bank YAML to write thresholds into (in place)."),
    labels: Path = typer.Option(..., "--labels"),
    data: Path | None = typer.Option(None, "--data"),
    method: str = typer.Option("sens-eq-spec", "--method", help="sens-eq-spec | youden | platt | isotonic"),
    model: str | None = typer.Option(None, "--model", "-m"),
    device: str = typer.Option("auto", "--device"),
    min_positives: int = typer.Option(5, "--min-positives", help="Refuse a finding with fewer positives (or negatives)."),
) -> None:
    """Fit thresholds (and a probability map) for the model and write them into the bank with provenance,
    keeping its comments and order."""
    from cmrdx.zeroshot.authoring import calibrate_bank, provenance_for, write_thresholds
    from cmrdx.zeroshot.bank import load_bank
    from cmrdx.zeroshot.scoring import TextEmbeddingCache, bank_text_embeddings

    if not bank.is_file():
        raise typer.BadParameter(f"{bank}: calibrate writes into a bank file; copy a shipped bank first")
    enc, sha, es = _embedded(labels, data, model, device)
    b = load_bank(bank)
    temb = bank_text_embeddings(b, enc.encode_texts, TextEmbeddingCache(sha))
    fits = calibrate_bank(es, b, temb, enc.manifest.name, sha, method, min_positives=min_positives)
    write_thresholds(bank, enc.manifest.name, sha, fits, {fid: provenance_for(es, fid, labels, method) for fid in fits})
    t = Table(title=f"{bank}: {method} thresholds for {enc.manifest.name}", header_style="bold")
    for c in ("finding", "threshold", "sensitivity", "specificity"):
        t.add_column(c)
    for fid, ft in fits.items():
        t.add_row(fid, f"{ft.threshold:.4f}", f"{ft.sensitivity:.2f}", f"{ft.specificity:.2f}")
    Console().print(t)
