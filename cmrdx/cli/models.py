"""``cmrdx models``: list, info, verify (no model loaded, no onnxruntime), reference and validate-int8 (the model's
encoder) and import-cmrclip (torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cmrdx.cli.text import plain, safe

app = typer.Typer(help="Installed models: list, inspect, verify, import.", no_args_is_help=True)

PRECISION_HELP = ("Video precision: auto (float16 on CUDA; on the CPU float32, or int8 when the model's int8 copy "
                  "is validated), float32, float16 or int8.")


PRECISIONS = ("auto", "float32", "float16", "int8")


def _check_precision(value: str) -> str:
    if value not in PRECISIONS:
        raise typer.BadParameter(f"{value!r}: use {', '.join(PRECISIONS)}")
    return value


def precision_option(default: str = "auto") -> Any:
    """The --precision option of every command that encodes studies (a usage error, exit 2, for another value)."""
    return typer.Option(default, "--precision", help=PRECISION_HELP, callback=_check_precision)


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

    m = get_manifest(name, verify=False)
    m.verify(cached=False)  # every byte of every file, whatever was remembered from earlier loads
    typer.echo(plain(f"{m.name} {m.version}: {len(m.files)} files intact ({m.root}); identity {m.sha256}"))
    if m.reference:
        typer.echo(plain(f"  reference: {m.reference.get('n')} studies, threshold {m.reference.get('threshold')} "
                         f"({m.reference.get('data')})"))
    else:
        typer.echo(plain(f"  no reference: build one with `cmrdx models reference {m.name} --data ARCHIVE`"))
    typer.echo(plain(f"  video precisions: {', '.join(m.precisions())}; {_int8_line(m)}"))


def _int8_line(m) -> str:
    """What `precision auto` does with this model's int8 copy, and why."""
    if not m.video.get("int8"):
        return "no int8 copy"
    rec = m.validation.get("int8")
    if m.validated("int8", "cpu") is not None:
        from cmrdx.model.encoder import describe_validation

        return f"int8 validated for the CPU, used by `--precision auto` there ({describe_validation(rec)})"
    if isinstance(rec, dict) and rec.get("status") == "failed":
        return "int8 validation failed (" + "; ".join(map(str, rec.get("reasons") or [])) + "): auto keeps float32"
    if isinstance(rec, dict):
        return f"int8 validation of other files: run `cmrdx models validate-int8 {m.name}`"
    return f"int8 copy not validated (auto keeps float32): `cmrdx models validate-int8 {m.name}`"


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
    precision: str = precision_option(),
) -> None:
    """Build the model's reference of typical studies from an archive and write it into the model folder (the
    manifest lists it; the model's identity, and so its calibrations and caches, stay as they are)."""
    from cmrdx.cli.progress import counter
    from cmrdx.cli.text import console
    from cmrdx.model.reference import install_reference, reference_from_archive
    from cmrdx.model.registry import get_manifest

    m = get_manifest(name, verify=True)
    if m.reference and not replace:  # before reading a whole archive
        from cmrdx.errors import ModelError

        raise ModelError(f"{m.name} in {m.root} already has a reference ({m.reference.get('n')} studies: "
                         f"{m.reference.get('data')})", hint="pass --replace to build a new one in its place")
    con = console(stderr=True)
    with counter("reading + encoding studies") as progress:
        built = reference_from_archive(m.root, data, k=k, quantile=quantile, min_studies=min_studies, device=device,
                                       precision=precision, source=source, progress=progress)
    ref = built.reference
    es = built.embedded
    left = ", ".join(f"{n} {kind}" for kind, n in es.failure_kinds.items())
    con.print(f"{built.folders} folders: {ref.n} studies used ({es.cached} from the cache)"
              + (f"; left out: {safe(left)}" if left else "") + (f"; {built.duplicates} duplicates" if built.duplicates else ""))
    m2 = install_reference(m, ref, replace=replace)
    typer.echo(plain(f"wrote {m2.root / m2.reference['file']}: {ref.n} studies, k={ref.k}, threshold {ref.threshold:.4f} "
                     f"(the {ref.quantile:.0%} quantile of the reference's own leave-one-out scores; {ref.precision} "
                     "embeddings)"))


@app.command("import-cmrclip")
def import_cmrclip_cmd(
    checkpoint: Path | None = typer.Option(None, "--checkpoint", exists=True, dir_okay=False, help="pytorch_model.bin"),
    config: Path | None = typer.Option(None, "--config", exists=True, dir_okay=False,
                                       help="the checkpoint's config.json"),
    vocab: Path | None = typer.Option(None, "--vocab", exists=True, dir_okay=False, help="the BERT vocab.txt"),
    from_hub: bool = typer.Option(False, "--from-hub", help="fetch config.json and pytorch_model.bin from the Hugging "
                                  "Face Hub (--repo, --revision) and the vocab.txt of the BERT its config names, "
                                  "verify them, and import them (instead of --checkpoint/--config/--vocab). "
                                  "HF_ENDPOINT, HF_HOME, HF_TOKEN and HF_HUB_OFFLINE apply"),
    repo: str | None = typer.Option(None, "--repo", help="with --from-hub: the weights repository "
                                    "(default makiyeah/CMRCLIP)"),
    revision: str | None = typer.Option(None, "--revision", help="with --from-hub: a branch, tag or commit of --repo "
                                        "(default main)"),
    keep_weights: bool = typer.Option(False, "--keep-weights", help="also keep the checkpoint and its config.json "
                                      "in the model folder (verified; a link where the file system allows), so that "
                                      "`cmrdx train --init-from FOLDER` can fine-tune from it"),
    out: Path = typer.Option(..., "--out", help="model folder to write (e.g. $CMRDX_HOME/models/cmrclip)"),
    name: str = typer.Option("cmrclip", help="model name in the registry"),
    version: str = typer.Option("1.0", help="model version"),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="also write an int8 CPU video variant"),
    float16: bool = typer.Option(True, "--float16/--no-float16", help="also write a float16 GPU video variant"),
    legacy: bool = typer.Option(False, "--legacy-exporter", help="use the TorchScript exporter (no fused attention)"),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="validate the int8 copy on real-looking "
                                  "studies and record it in the manifest (`--precision auto` uses a validated copy)"),
    phantoms: int = typer.Option(3, "--validate-phantoms", min=0, help="phantom studies for the int8 validation "
                                 "(with the example study of a cmrdx checkout)"),
) -> None:
    """Convert the CMR-CLIP checkpoint to ONNX + tokenizer + manifest, and prove it matches torch (needs
    the `train` extra: torch, onnx, onnxscript, transformers, huggingface_hub). The files are given
    (--checkpoint/--config/--vocab) or fetched (--from-hub). The checkpoint is read memory-mapped, one tower at a
    time. The int8 copy is validated, and onnxruntime's optimised graphs are saved, so the first use starts fast."""
    _check_import_sources(checkpoint, config, vocab, from_hub, repo, revision)
    try:
        from cmrdx.train.cmrclip_import import import_cmrclip
        from cmrdx.train.export import ExportError, ExportOptions
    except ImportError as exc:
        from cmrdx.errors import ModelError

        raise ModelError(f"import-cmrclip needs torch: {exc}", hint="pip install 'cmrdx[train]'") from exc
    from cmrdx.cli.progress import interactive, stages
    from cmrdx.errors import ModelError

    hub = None
    if from_hub:
        from cmrdx.train.hub import DEFAULT_REPO, fetch_released

        # no spinner here: huggingface_hub draws its own download bars (on a terminal, unless CMRDX_PROGRESS=0)
        fetched = fetch_released(repo or DEFAULT_REPO, revision, progress_bars=interactive())
        checkpoint, config, vocab, hub = fetched.checkpoint, fetched.config, fetched.vocab, fetched.provenance
        for f in fetched.files:
            typer.echo(plain(f"fetched {f.repo}/{f.filename} (commit {f.commit}, {f.verified} verified)"
                             + (" from the cache" if f.cached else "")), err=True)
    assert checkpoint is not None and config is not None and vocab is not None  # _check_import_sources

    opts = ExportOptions(float16=float16, int8=int8, dynamo=not legacy, validate_int8=validate,
                         validate_phantoms=phantoms)
    try:
        with stages("importing CMR-CLIP") as stage:
            rep = import_cmrclip(checkpoint, config, vocab, out, name=name, version=version, options=opts,
                                 keep_weights=keep_weights, hub=hub, progress=stage)
    except ExportError as exc:
        raise ModelError(f"export failed its check: {exc}", hint="report this with `cmrdx --version` and the checkpoint's sha256") from exc
    typer.echo(plain(f"wrote {out}: " + ", ".join(rep.files)))
    for k, v in rep.checks.items():
        typer.echo(plain(f"  {k}: {v:.6g}" if isinstance(v, float) else f"  {k}: {v}"))
    for n in rep.notes:
        typer.echo(plain(f"  note: {n}"))


def _check_import_sources(checkpoint: Path | None, config: Path | None, vocab: Path | None, from_hub: bool,
                          repo: str | None, revision: str | None) -> None:
    """The files given, or --from-hub: one or the other, whole (UsageError, exit 2, naming the options)."""
    from cmrdx.errors import UsageError

    given = [opt for opt, v in (("--checkpoint", checkpoint), ("--config", config), ("--vocab", vocab)) if v is not None]
    if from_hub and given:
        raise UsageError(f"--from-hub and {', '.join(given)} both say where the files come from: give one or the other",
                         hint="either --from-hub [--repo REPO] [--revision REV], or --checkpoint pytorch_model.bin "
                              "--config config.json --vocab vocab.txt")
    if from_hub:
        return
    hub_only = [opt for opt, v in (("--repo", repo), ("--revision", revision)) if v is not None]
    if hub_only:
        raise UsageError(f"{', '.join(hub_only)} choose what --from-hub fetches, and --from-hub is not given",
                         hint="add --from-hub, or give the files with --checkpoint, --config and --vocab")
    missing = [opt for opt in ("--checkpoint", "--config", "--vocab") if opt not in given]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}: give the checkpoint, its config.json and the BERT vocab.txt, "
                         "or --from-hub to fetch them",
                         hint="pass --checkpoint pytorch_model.bin --config config.json --vocab vocab.txt, or "
                              "--from-hub to fetch them from the Hugging Face Hub")


@app.command("validate-int8")
def validate_int8_cmd(
    name: str = typer.Argument(..., help="Model name or folder."),
    study: list[Path] | None = typer.Option(None, "--study", exists=True, file_okay=False,
                                            help="A study folder to compare the embeddings on (repeatable)."),
    phantoms: int = typer.Option(3, "--phantoms", min=0, help="Synthetic phantom studies to compare them on too."),
    data: Path | None = typer.Option(None, "--data", exists=True, file_okay=False,
                                     help="A labelled archive (`cmrdx synth archive`): zero-shot AUC with each file."),
    bank: str = typer.Option("cmr-findings", "--bank", help="Prompt bank for the score shift and the zero-shot AUC."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Measure and print; do not write the manifest."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    """Measure the model's int8 copy against its float32 file (embedding cosine on real-looking studies, score
    shift, and with --data zero-shot AUC) and record the result in its manifest, outside the model's identity.
    `--precision auto` runs a validated int8 copy on the CPU."""
    from cmrdx.cli.progress import stages
    from cmrdx.model.validate import CRITERIA, validate_int8

    with stages(f"validating the int8 copy of {name}", enabled=not as_json) as stage:
        rec = validate_int8(name, studies=study or (), phantoms=phantoms, data=data, bank=bank, write=not dry_run,
                            progress=stage)
    if as_json:
        typer.echo(json.dumps(rec, indent=2))
        return
    typer.echo(plain(f"int8 copy {rec['file']}: {rec['status']} for the CPU"
                     + ("" if dry_run else " (recorded in the manifest)")))
    typer.echo(plain(f"  {rec['studies']} studies: {rec['inputs']}"))
    typer.echo(plain(f"  embedding cosine vs float32: min {rec['min_cosine']:.5f}, median {rec['median_cosine']:.5f} "
                     f"(needs >= {CRITERIA['min_cosine']})"))
    if "relative_shift" in rec:
        typer.echo(plain(f"  int8 shift / median distance between studies: {rec['relative_shift']:.4f} "
                         f"(needs <= {CRITERIA['max_relative_shift']})"))
    if rec.get("max_score_shift") is not None:
        typer.echo(plain(f"  largest score change ({rec['bank']}): {rec['max_score_shift']:.4f}"))
    zs = rec.get("zeroshot")
    if zs:
        typer.echo(plain(f"  zero-shot AUC on {zs['n']} studies of {zs['data']}: largest drop {zs['max_auc_drop']} "
                         f"(needs <= {CRITERIA['max_auc_drop']})"))
        for f, a in zs["auc_float32"].items():
            typer.echo(plain(f"    {f}: float32 {a:.4f}, int8 {zs['auc_int8'].get(f, float('nan')):.4f}"))
    for r in rec["reasons"]:
        typer.echo(plain(f"  not validated: {r}"))
