"""`cmrdx index`, `cmrdx search`, `cmrdx similar`: an archive's embeddings, searched by text or by study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table


def index_cmd(
    archive: Optional[Path] = typer.Argument(None, help="Archive to embed (resumable, like `cmrdx batch`)."),
    db: Path = typer.Option(..., "--db", help="Store folder to write."),
    from_batch: Optional[Path] = typer.Option(None, "--from-batch", help="Use a batch run's results (no re-encoding)."),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    device: str = typer.Option("auto", "--device"),
    ann: str = typer.Option("auto", "--ann", help="auto (FAISS IVF from 200k studies), exact or ivf."),
) -> None:
    """Build an embedding store from an archive or a batch run."""
    from cmrdx.pipeline.batch import BatchOptions, run_batch
    from cmrdx.pipeline.search import store_from_batch

    if (archive is None) == (from_batch is None):
        raise typer.BadParameter("give an ARCHIVE or --from-batch RESULTS (one of them)")
    if archive is not None:
        out = db / "batch.jsonl"
        s = run_batch(archive, out, BatchOptions(model=model, device=device))
        Console().print(f"embedded {s.ok} studies ({sum(s.failed.values())} failed) in {s.seconds:.1f} s")
        from_batch = out
    info = store_from_batch(from_batch, db, ann=ann, archive=str(archive.resolve()) if archive else None)
    Console().print(f"{db}: {info['count']} studies, {info['dim']}-d, model {info['model']}, "
                    f"{'FAISS IVF' if info['ann'] else 'exact'} search")


def _show(hits, title: str, store, show_phi: bool, as_json: bool) -> None:
    from cmrdx.pipeline.search import patient_of

    rows = [h.to_dict() for h in hits]
    if show_phi:
        base = Path(store.info.get("archive") or ".")
        for r in rows:
            r["patient"] = patient_of(base / r["source"])
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    t = Table(title=title, header_style="bold")
    for c in ["rank", "score", "study UID", "source"] + (["patient"] if show_phi else []):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(str(r["rank"]), f"{r['score']:.4f}", r["study_uid"], r["source"], *([r["patient"]] if show_phi else []))
    Console().print(t)


def _open(db: Path, model: Optional[str], device: str):
    from cmrdx.model.loader import get_encoder, model_sha256
    from cmrdx.pipeline.search import Store

    from cmrdx.errors import ModelError

    store = Store(db)
    try:
        enc = get_encoder(model or store.info["model"], device)
    except ModelError as exc:
        raise ModelError(f"{db} was built with model {store.info['model']!r}, which is not installed: {exc.message}",
                         hint="pass --model with that model's folder") from exc
    store.check_model(enc.manifest.name, model_sha256(enc.manifest))
    return store, enc


def search_cmd(
    query: str = typer.Argument(..., help="Free text, e.g. 'moderately dilated left ventricle with reduced function'."),
    db: Path = typer.Option(..., "--db"),
    k: int = typer.Option(10, "-k", help="How many studies."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Default: the index's model."),
    device: str = typer.Option("auto", "--device"),
    exact: bool = typer.Option(False, "--exact", help="Exact search even when the store has an ANN index."),
    show_phi: bool = typer.Option(False, "--show-phi", help="Also show patient name / ID (read from the files)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Rank the store's studies by similarity to a text query."""
    store, enc = _open(db, model, device)
    q = enc.encode_texts([query])[0]
    _show(store.search_vector(q, k, exact=exact or None), f"{query!r} in {db}", store, show_phi, as_json)


def similar_cmd(
    study_dir: Path = typer.Argument(..., help="A study folder."),
    db: Path = typer.Option(..., "--db"),
    k: int = typer.Option(10, "-k"),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    device: str = typer.Option("auto", "--device"),
    show_phi: bool = typer.Option(False, "--show-phi"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The store's studies nearest to a given study."""
    from cmrdx.study.assemble import assemble_study
    from cmrdx.recipe import apply_recipe

    store, enc = _open(db, model, device)
    x = apply_recipe(assemble_study(study_dir), enc.manifest.recipe_params()).array
    q = enc.encode_studies(x[None])[0]
    _show(store.search_vector(q, k), f"studies like {study_dir}", store, show_phi, as_json)
