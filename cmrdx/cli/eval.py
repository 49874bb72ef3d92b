"""``cmrdx eval``: zero-shot, retrieval and few-shot benchmarks of a model on a labelled archive, and the speed
of one study's embedding. Parsing and printing only: the benchmarks are ``cmrdx.evaluation.benchmarks``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cmrdx.cli.models import precision_option
from cmrdx.vocab import DEFAULT_BANKS, DEFAULT_MODEL

app = typer.Typer(help="Benchmarks on a labelled archive (cmrdx synth archive): zero-shot, retrieval, few-shot.",
                  no_args_is_help=True)

_MODEL = typer.Option(DEFAULT_MODEL, "--model", help="Model name or folder.")
_DATA = typer.Option(..., "--data", help="Archive folder: study folders with DICOM + report.txt, labels.csv.")
_BANK = typer.Option(DEFAULT_BANKS[0], "--bank", help="Prompt bank name or YAML file.")
_JSON = typer.Option(None, "--json", help="Also write the results as JSON to this file.")
_MD = typer.Option(None, "--markdown", help="Also write the tables as Markdown to this file.")
_PRECISION = precision_option()


def _load(model: str, data: Path, device: str, precision: str = "auto", *, refresh: bool = False):
    from cmrdx.cli.progress import counter
    from cmrdx.cli.text import console, safe
    from cmrdx.evaluation.benchmarks import load_eval_set
    from cmrdx.model.encoder import Encoder

    enc = Encoder(model, device=device, precision=precision)
    con = console(stderr=True)
    with counter("reading + encoding studies") as progress:
        es = load_eval_set(data, enc, progress=progress, refresh=refresh)
    skipped = ", ".join(f"{k}: {v}" for k, v in es.skipped.items()) or "none"
    con.print(safe(f"{len(es.ids)} studies ({enc.manifest.name} on {enc.description}: {enc.precision_note}; "
                   f"{es.cached} from the cache); skipped: {skipped}"))
    return enc, es


def _check(*, json_out: Path | None = None, md_out: Path | None = None) -> None:
    """The output files, checked before a benchmark spends minutes encoding an archive."""
    from cmrdx.outputs.common import check_targets

    check_targets(json=json_out, markdown=md_out)


def _emit(results: dict[str, Any], md: str, json_out: Path | None, md_out: Path | None) -> None:
    from rich.markdown import Markdown

    from cmrdx.cli.text import console, plain
    from cmrdx.outputs.common import write_atomic

    console().print(Markdown(plain(md, lines=True)))  # finding labels come from the bank file: data
    if json_out:
        write_atomic(json_out, json.dumps(results, indent=1, default=float) + "\n")
    if md_out:
        write_atomic(md_out, md + "\n")


@app.command("zeroshot")
def zeroshot_cmd(model: str = _MODEL, bank: str = _BANK, data: Path = _DATA, device: str = "cpu",
                 precision: str = _PRECISION, boot: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples for the 95% CI."),
                 json_out: Path = _JSON, md_out: Path = _MD) -> None:
    """AUC per finding with a bootstrap 95% CI, and by severity level."""
    from cmrdx.evaluation.benchmarks import markdown_tables, zeroshot
    from cmrdx.zeroshot.bank import load_bank

    _check(json_out=json_out, md_out=md_out)
    b = load_bank(bank)
    enc, es = _load(model, data, device, precision)
    r = zeroshot(es, b, enc, n_boot=boot)
    _emit(r, markdown_tables(r, None, None), json_out, md_out)


@app.command("retrieval")
def retrieval_cmd(model: str = _MODEL, data: Path = _DATA, device: str = "cpu", precision: str = _PRECISION,
                  json_out: Path = _JSON, md_out: Path = _MD) -> None:
    """Report <-> study recall@1/5/10 and median rank."""
    from cmrdx.evaluation.benchmarks import markdown_tables, retrieval

    _check(json_out=json_out, md_out=md_out)
    enc, es = _load(model, data, device, precision)
    r = retrieval(es, enc)
    _emit(r, markdown_tables(None, r, None), json_out, md_out)


@app.command("fewshot")
def fewshot_cmd(model: str = _MODEL, data: Path = _DATA, device: str = "cpu", precision: str = _PRECISION,
                bank: str = _BANK, episodes: int = typer.Option(100, "--episodes", min=1), json_out: Path = _JSON, md_out: Path = _MD) -> None:
    """SimpleShot prototype AUC at 1/2/4/8/16 shots (mean over episodes), for the bank's findings."""
    from cmrdx.evaluation.benchmarks import fewshot, markdown_tables
    from cmrdx.zeroshot.bank import load_bank

    _check(json_out=json_out, md_out=md_out)
    b = load_bank(bank)
    enc, es = _load(model, data, device, precision)
    r = fewshot(es, [f.id for f in b.findings], episodes=episodes)
    _emit(r, markdown_tables(None, None, r), json_out, md_out)


@app.command("all")
def all_cmd(model: str = _MODEL, bank: str = _BANK, data: Path = _DATA, device: str = "cpu",
            precision: str = _PRECISION, episodes: int = typer.Option(100, "--episodes", min=1), boot: int = typer.Option(1000, "--bootstrap", min=0),
            json_out: Path = _JSON, md_out: Path = _MD,
            record: bool = typer.Option(False, "--record", help="Write the headline metrics into the model's manifest "
                                        "provenance (studies are then encoded afresh, so the encoder time is measured).")) -> None:
    """The three benchmarks in one run (studies read and encoded once)."""
    from cmrdx.evaluation.benchmarks import evaluate_all, record_metrics
    from cmrdx.zeroshot.bank import load_bank

    _check(json_out=json_out, md_out=md_out)
    b = load_bank(bank)
    enc, es = _load(model, data, device, precision, refresh=record)
    r = evaluate_all(es, b, enc, data=data, n_boot=boot, episodes=episodes)
    _emit(r.to_dict(), r.markdown(), json_out, md_out)
    if record:
        record_metrics(enc.manifest.root, r)


@app.command("families")
def families_cmd(model: str = _MODEL, bank: str = _BANK, data: Path = _DATA, device: str = "cpu",
                 precision: str = _PRECISION,
                 family: list[str] = typer.Option([], "--family", help="Family to score (repeatable; default: every "
                                                  "family of the archive), e.g. scar:midwall, lge:psir."),
                 boot: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples for the 95% CI."),
                 min_positives: int = typer.Option(5, "--min-positives", min=1, help="Fewest positives (and "
                                                   "negatives) for a finding's AUC on a family."),
                 threshold: float = typer.Option(0.85, "--threshold", help="Target AUC of a held-out family's "
                                                 "findings (leave-one-family-out)."),
                 json_out: Path = _JSON, md_out: Path = _MD) -> None:
    """Zero-shot AUC per finding on each appearance family of a randomised archive (`cmrdx synth archive
    --variety`): the test side of a leave-one-family-out split (`--only-families F`)."""
    from cmrdx.evaluation.families import family_zeroshot, lofo_verdict, markdown_families
    from cmrdx.synth.variety import parse_families
    from cmrdx.zeroshot.bank import load_bank

    try:
        fams = parse_families(family) or None
    except ValueError as e:
        raise typer.BadParameter(f"--family: {e}") from None
    _check(json_out=json_out, md_out=md_out)
    b = load_bank(bank)
    enc, es = _load(model, data, device, precision)
    r = family_zeroshot(es, data, b, enc, families=fams, n_boot=boot, min_positives=min_positives)
    md = markdown_families(r)
    if fams:
        r["lofo"] = [lofo_verdict(r, f, threshold) for f in fams]
        md += "\n" + "\n".join(
            f"- held out `{v['family']}`: "
            + ", ".join(f"{k} {a:.3f}" if a is not None else f"{k} -" for k, a in v["auc"].items())
            + f" -> {'meets' if v['passed'] else 'misses'} AUC >= {v['threshold']:g}" for v in r["lofo"]) + "\n"
    _emit(r, md, json_out, md_out)


@app.command("speed")
def speed_cmd(model: str = _MODEL, study: Path = typer.Option(Path("examples/phantom-study"), "--study", help="A study folder."),
              device: str = "cpu", precision: str = _PRECISION, repeats: int = typer.Option(20, "--repeats", min=1),
              threads: int = typer.Option(None, "--threads", min=1, help="onnxruntime intra-op threads (default: cores available)."),
              json_out: Path = _JSON) -> None:
    """Time one study's embedding: read + recipe once, then the encoder (median of repeats after a warm-up)."""
    from cmrdx.evaluation.benchmarks import speed
    from cmrdx.model.encoder import Encoder
    from cmrdx.outputs.common import write_atomic

    _check(json_out=json_out)
    r = speed(study, Encoder(model, device=device, precision=precision, threads=threads), repeats=repeats).to_dict()
    typer.echo(json.dumps(r, indent=1))
    if json_out:
        write_atomic(json_out, json.dumps(r, indent=1) + "\n")
