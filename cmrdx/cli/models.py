"""``cmrdx models``: list, info, verify (no model loaded, no onnxruntime), reference (the model's encoder) and
import-cmrclip (torch)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cmrdx.cli.text import plain, safe

app = typer.Typer(help="Installed models: list, inspect, verify, import.", no_args_is_help=True)


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List bundled and user models (reads manifests only)."""
    from rich.table import Table

    from cmrdx.cli.text import console
    from cmrdx.model.registry import list_models, search_dirs

    models = list_models()
    if as_json:
        typer.echo(json.dumps([{**e.__dict__, "root": str(e.root)} for e in models], indent=2))
        return
    con = console()  # names, versions and folders come from manifests on disk: data (cmrdx.cli.text)
    if not models:
        con.print("no models found in " + safe(", ".join(str(d) for _, d in search_dirs())))
        con.print("import one: cmrdx models import-cmrclip --checkpoint pytorch_model.bin --config config.json --vocab vocab.txt --out DIR")
        return
    t = Table("name", "version", "source", "dim", "recipe", "folder")
    for e in models:
        t.add_row(safe(e.name), safe(e.version), safe(e.source), str(e.embedding_dim), safe(e.recipe), safe(e.root))
    con.print(t)


@app.command("info")
def info_cmd(name: str = typer.Argument(..., help="Model name or folder.")) -> None:
    """Show a model's manifest: files, embedding size, tokenizer, input recipe, provenance, licence."""
    from cmrdx.model.registry import get_manifest

    m = get_manifest(name, verify=False)
    d = m.to_dict()
    d["root"] = str(m.root)
    d["sha256"] = m.sha256
    typer.echo(json.dumps(d, indent=2))


@app.command("verify")
def verify_cmd(name: str = typer.Argument(..., help="Model name or folder.")) -> None:
    """Check every file of a model against its manifest's sha256 (exit code 8 names any altered file)."""
    from cmrdx.model.registry import get_manifest

    m = get_manifest(name, verify=True)
    typer.echo(plain(f"{m.name} {m.version}: {len(m.files)} files intact ({m.root}); identity {m.sha256}"))
    if m.reference:
        typer.echo(plain(f"  reference: {m.reference.get('n')} studies, threshold {m.reference.get('threshold')} "
                         f"({m.reference.get('data')})"))
    else:
        typer.echo(plain(f"  no reference: build one with `cmrdx models reference {m.name} --data ARCHIVE`"))


@app.command("reference")
def reference_cmd(
    name: str = typer.Argument(..., help="Model name or folder."),
    data: Path = typer.Option(..., "--data", help="Archive folder: one folder per study (DICOM inside)."),
    k: int = typer.Option(10, "--k", min=1, help="Nearest reference studies a study's distance is averaged over."),
    quantile: float = typer.Option(0.99, "--quantile", min=0.5, max=1.0,
                                   help="Quantile of the reference's own scores that is the threshold."),
    min_studies: int = typer.Option(20, "--min-studies", min=2, help="Refuse an archive with fewer readable studies."),
    replace: bool = typer.Option(False, "--replace", help="Replace the reference the model already has."),
    source: str | None = typer.Option(None, "--source", help="How to describe the studies (default: their count and folder name)."),
    device: str = typer.Option("cpu", "--device", help="auto, cpu or cuda."),
) -> None:
    """Build the model's reference of typical studies from an archive and write it into the model folder (the
    manifest lists it; the model's identity, and so its calibrations and caches, stay as they are)."""
    from rich.progress import Progress

    from cmrdx.cli.text import console
    from cmrdx.model.reference import install_reference, reference_from_archive
    from cmrdx.model.registry import get_manifest

    m = get_manifest(name, verify=True)
    if m.reference and not replace:  # before reading a whole archive
        from cmrdx.errors import ModelError

        raise ModelError(f"{m.name} in {m.root} already has a reference ({m.reference.get('n')} studies: "
                         f"{m.reference.get('data')})", hint="pass --replace to build a new one in its place")
    con = console(stderr=True)
    with Progress(console=con, transient=True) as prog:
        task = prog.add_task("reading + encoding studies", total=None)
        built = reference_from_archive(m.root, data, k=k, quantile=quantile, min_studies=min_studies, device=device,
                                       source=source, progress=lambda i, n: prog.update(task, completed=i, total=n))
    ref = built.reference
    es = built.embedded
    left = ", ".join(f"{n} {kind}" for kind, n in es.failure_kinds.items())
    con.print(f"{built.folders} folders: {ref.n} studies used ({es.cached} from the cache)"
              + (f"; left out: {safe(left)}" if left else "") + (f"; {built.duplicates} duplicates" if built.duplicates else ""))
    m2 = install_reference(m, ref, replace=replace)
    typer.echo(plain(f"wrote {m2.root / m2.reference['file']}: {ref.n} studies, k={ref.k}, threshold {ref.threshold:.4f} "
                     f"(the {ref.quantile:.0%} quantile of the reference's own leave-one-out scores)"))


@app.command("import-cmrclip")
def import_cmrclip_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", exists=True, dir_okay=False, help="pytorch_model.bin"),
    config: Path = typer.Option(..., "--config", exists=True, dir_okay=False, help="the checkpoint's config.json"),
    vocab: Path = typer.Option(..., "--vocab", exists=True, dir_okay=False, help="the BERT vocab.txt"),
    out: Path = typer.Option(..., "--out", help="model folder to write (e.g. $CMRDX_HOME/models/cmrclip)"),
    name: str = typer.Option("cmrclip", help="model name in the registry"),
    version: str = typer.Option("1.0", help="model version"),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="also write an int8 CPU video variant"),
    float16: bool = typer.Option(True, "--float16/--no-float16", help="also write a float16 GPU video variant"),
    legacy: bool = typer.Option(False, "--legacy-exporter", help="use the TorchScript exporter (no fused attention)"),
) -> None:
    """Convert the CMR-CLIP checkpoint to ONNX + tokenizer + manifest, and prove it matches torch (needs
    the `train` extra: torch, onnx, onnxscript, transformers)."""
    try:
        from cmrdx.train.cmrclip_import import import_cmrclip
        from cmrdx.train.export import ExportError, ExportOptions
    except ImportError as exc:
        from cmrdx.errors import ModelError

        raise ModelError(f"import-cmrclip needs torch: {exc}", hint="pip install 'cmrdx[train]'") from exc
    from cmrdx.errors import ModelError

    opts = ExportOptions(float16=float16, int8=int8, dynamo=not legacy)
    try:
        rep = import_cmrclip(checkpoint, config, vocab, out, name=name, version=version, options=opts)
    except ExportError as exc:
        raise ModelError(f"export failed its check: {exc}", hint="report this with `cmrdx --version` and the checkpoint's sha256") from exc
    typer.echo(plain(f"wrote {out}: " + ", ".join(rep.files)))
    for k, v in rep.checks.items():
        typer.echo(plain(f"  {k}: {v:.3g}" if isinstance(v, float) else f"  {k}: {v}"))
    for n in rep.notes:
        typer.echo(plain(f"  note: {n}"))
