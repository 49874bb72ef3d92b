"""`cmrdx index`, `cmrdx search`, `cmrdx similar`: an archive's embeddings, searched by text or by study."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from cmrdx.cli.models import precision_option
from cmrdx.cli.text import console, safe


def index_cmd(
    archive: Path | None = typer.Argument(None, help="Archive to embed (resumable, like `cmrdx batch`)."),
    db: Path = typer.Option(..., "--db", help="Store folder to write."),
    from_batch: Path | None = typer.Option(None, "--from-batch", help="Use a batch run's results (no re-encoding)."),
    model: str | None = typer.Option(None, "--model", "-m"),
    device: str = typer.Option("auto", "--device"),
    ann: str = typer.Option("auto", "--ann", help="auto (FAISS IVF from 200k studies), exact or ivf."),
    precision: str = precision_option(),
) -> None:
    """Build an embedding store from an archive or a batch run."""
    from cmrdx.pipeline.search import index_archive, store_from_batch

    if (archive is None) == (from_batch is None):
        raise typer.BadParameter("give an ARCHIVE or --from-batch RESULTS (one of them)")
    if archive is not None:
        info, s = index_archive(archive, db, model=model, device=device, ann=ann, precision=precision)
        console().print(f"embedded {s.ok} studies ({sum(s.failed.values())} failed) in {s.seconds:.1f} s")
    elif from_batch is not None:
        info = store_from_batch(from_batch, db, ann=ann)
    console().print(f"{safe(db)}: {info['count']} studies, {info['dim']}-d, model {safe(info['model'])}, "
                    f"{'FAISS IVF' if info['ann'] else 'exact'} search")


def _show(hits, title: str, show_phi: bool, as_json: bool) -> None:
    rows = [h.to_dict() for h in hits]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    t = Table(title=safe(title), header_style="bold")
    for c in ["rank", "score", "study UID", "source"] + (["patient"] if show_phi else []):
        t.add_column(c, overflow="fold")
    for r in rows:
        # UIDs, folders and names come from the files: data, never markup or terminal control
        t.add_row(str(r["rank"]), f"{r['score']:.4f}", safe(r["study_uid"]), safe(r["source"]),
                  *([safe(r["patient"])] if show_phi else []))
    console().print(t)


def search_cmd(
    query: str = typer.Argument(..., help="Free text, e.g. 'moderately dilated left ventricle with reduced function'."),
    db: Path = typer.Option(..., "--db"),
    k: int = typer.Option(10, "-k", min=1, help="How many studies."),
    model: str | None = typer.Option(None, "--model", "-m", help="Default: the index's model."),
    device: str = typer.Option("auto", "--device"),
    exact: bool = typer.Option(False, "--exact", help="Exact search even when the store has an ANN index."),
    show_phi: bool = typer.Option(False, "--show-phi", help="Also show patient name / ID (read from the files)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Rank the store's studies by similarity to a text query."""
    from cmrdx.pipeline.search import search

    hits = search(db, query, k, model=model, device=device, exact=exact, show_phi=show_phi)
    _show(hits, f"{query!r} in {db}", show_phi, as_json)


def similar_cmd(
    study_dir: Path = typer.Argument(..., help="A study folder."),
    db: Path = typer.Option(..., "--db"),
    k: int = typer.Option(10, "-k", min=1),
    model: str | None = typer.Option(None, "--model", "-m"),
    device: str = typer.Option("auto", "--device"),
    show_phi: bool = typer.Option(False, "--show-phi"),
    as_json: bool = typer.Option(False, "--json"),
    precision: str = precision_option(),
) -> None:
    """The store's studies nearest to a given study."""
    from cmrdx.pipeline.search import similar

    hits = similar(db, study_dir, k, model=model, device=device, show_phi=show_phi, precision=precision)
    _show(hits, f"studies like {study_dir}", show_phi, as_json)
