"""`cmrdx fewshot fit`: SimpleShot prototypes per finding from labelled studies."""

from __future__ import annotations

from pathlib import Path

import typer

from cmrdx.cli.models import precision_option
from cmrdx.cli.text import console, safe

app = typer.Typer(help="Few-shot prototypes from a handful of labelled studies.", no_args_is_help=True)


@app.command("fit")
def fit_cmd(
    labels: Path = typer.Option(..., "--labels", help="labels.csv (`study` folder column, one 0/1 column per finding)."),
    out: Path = typer.Option(..., "--out", help="Prototype file to write (.npz)."),
    data: Path | None = typer.Option(None, "--data", help="Archive folder the `study` column is relative to."),
    finding: list[str] | None = typer.Option(None, "--finding", help="Only these finding columns (repeatable)."),
    shots: int | None = typer.Option(None, "--shots", min=1, help="Use at most k examples per class (the first k rows)."),
    model: str | None = typer.Option(None, "--model", "-m"),
    device: str = typer.Option("auto", "--device"),
    precision: str = precision_option(),
) -> None:
    """Fit prototypes; the file holds embeddings-derived prototypes and labels only, and names its model."""
    from cmrdx.evaluation.archive import StudyEmbeddingCache, embed_labelled, load_labels
    from cmrdx.model.loader import get_encoder, model_sha256
    from cmrdx.outputs.common import OutputError, check_target
    from cmrdx.zeroshot.fewshot import fit_from_labelled

    check_target(out)  # before any study is read
    enc = get_encoder(model, device, precision)
    sha = model_sha256(enc.manifest)
    rows = load_labels(labels, data, finding)
    from cmrdx.cli.progress import counter

    with counter(f"reading + encoding studies ({enc.description})") as progress:
        es = embed_labelled(rows, enc, StudyEmbeddingCache(sha), progress)
    protos = fit_from_labelled(es, finding or None, shots, enc.manifest.name, sha)
    try:
        protos.save(out)
    except OSError as exc:
        raise OutputError.from_os_error(exc, out) from exc
    console().print(safe(f"wrote {out}: {len(protos.findings)} finding(s), shots (absent/present): "
                         + ", ".join(f"{f} {s[0]}/{s[1]}" for f, s in zip(protos.findings, protos.shots))
                         + f"; embeddings from {enc.manifest.name} on {enc.description}"))
