"""``cmrdx train``: contrastive training of a small CMR-CLIP-style model, then ONNX export (the ``train`` extra);
``cmrdx models export``: a trained.pt written by training (e.g. by bench/train_gpu.py) to a model folder.

torch is imported inside the commands only: ``import cmrdx.cli`` stays light. ``cmrdx train --check-reports``
needs no torch at all (it matches a RIS export to an archive and stops). Under torchrun (data parallel), every
process runs this command and only rank 0 prints.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from cmrdx.errors import CmrdxError


def train_cmd(
    out: Path = typer.Option(None, "--out", help="Model folder to export to (e.g. models/cmrdx-phantom-small); "
                                                 "required unless --check-reports."),
    data: Path = typer.Option(None, "--data", help="Archive of study folders (DICOM + report.txt). Omit to render "
                                                   "phantom studies straight to arrays (--phantoms, --seed)."),
    reports: Path = typer.Option(None, "--reports", help="The archive's reports as the RIS exports them: a CSV or "
                                 "JSONL file of StudyInstanceUID or AccessionNumber and report text, matched to the "
                                 "studies of --data (the impression section is what trains). A study no row matches "
                                 "keeps its report.txt."),
    check_reports: bool = typer.Option(False, "--check-reports", help="Match --reports to the studies of --data, "
                                       "say what matched and what did not, write reports-match.json to the work "
                                       "folder, and stop (no training; needs no torch)."),
    phantoms: int = typer.Option(None, "--phantoms", min=1, help="Phantom studies to render (default from the config)."),
    seed: int = typer.Option(None, "--seed", help="Source and training seed."),
    config: Path = typer.Option(None, "--config", help="YAML/JSON file of TrainConfig fields, or a recipe of "
                                "stages (a 'stages' list: each stage's work in a subfolder of --work, each started "
                                "from the previous one, the model exported after the last; see "
                                "cmrdx/train/configs/cmrdx-phantom-small-0.5.0.yaml)."),
    work: Path = typer.Option(None, "--work", help="Cache + checkpoint folder (default $CMRDX_HOME/train/NAME). "
                                                   "Rerunning with the same folder resumes."),
    epochs: int = typer.Option(None, "--epochs", min=1),
    batch_size: int = typer.Option(None, "--batch-size", min=1),
    max_steps: int = typer.Option(None, "--max-steps", min=1, help="Stop after this many more steps (no export unless done)."),
    threads: int = typer.Option(None, "--threads", min=1, help="torch intra-op threads."),
    init_from: Path = typer.Option(None, "--init-from", help="Start from these weights: a checkpoint.pt or "
                                   "trained.pt of cmrdx training (same shapes), or CMR-CLIP's (the released "
                                   "pytorch_model.bin with config.json and vocab.txt beside it, that folder, or a "
                                   "model folder imported with its weights), whose shapes the run takes."),
    device: str = typer.Option(None, "--device", help="auto (a CUDA GPU when torch sees one), cpu or cuda."),
    workers: int = typer.Option(None, "--workers", min=1, help="Processes that render phantom studies into the cache."),
    max_train_seconds: float = typer.Option(None, "--max-train-seconds", min=1.0,
                                            help="Fit the schedule (cosine decay included) to this wall-clock budget."),
    export_trained: Path = typer.Option(None, "--export-trained", hidden=True,
                                        help="Moved: `cmrdx models export TRAINED --out DIR`."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Log lines instead of progress bars (for logs)."),
) -> None:
    """Train on (study, report) pairs and export the model with its manifest.

    A recipe of stages (`--config` with a `stages` list) runs every stage in order and exports the model (and its
    model card's training section) after the last; rerun the same command to resume. On a GPU when torch sees one.

    Data parallel over GPUs and nodes: start it with torchrun (`torchrun --nproc-per-node N -m cmrdx train ...`);
    --batch-size is the global batch, split over the processes."""
    if export_trained is not None:  # the command line of earlier versions keeps working, and names the new one
        from cmrdx.cli.text import console

        console(stderr=True).print("note: `cmrdx train --export-trained` is now `cmrdx models export TRAINED --out DIR`",
                                   highlight=False)
        _export(export_trained, out)
        return
    if reports is not None and data is None:
        raise typer.BadParameter("the reports are matched to the studies of an archive: give --data too",
                                 param_hint="--reports")
    if data is not None and not data.is_dir():
        raise typer.BadParameter(f"{data} is not a folder (give the folder of study folders)", param_hint="--data")
    if check_reports:
        if reports is None:
            raise typer.BadParameter("--check-reports checks --reports against --data: give both",
                                     param_hint="--check-reports")
        _check_reports(data, reports, work, config)
        return
    if out is None:
        raise typer.BadParameter("give the model folder to export to", param_hint="--out")
    _need_torch("cmrdx train")
    from cmrdx import config as cfgmod
    from cmrdx.cli.text import console, safe
    from cmrdx.outputs.common import check_folder_target
    from cmrdx.train.distributed import env_info
    from cmrdx.train.trainer import TrainConfig, train

    over = {"phantoms": phantoms, "seed": seed, "epochs": epochs, "batch_size": batch_size, "threads": threads,
            "archive": str(data) if data else None, "reports": str(reports) if reports else None,
            "device": device, "workers": workers,
            "max_train_seconds": max_train_seconds,
            "init_from": str(init_from) if init_from else None}
    if config is not None and _is_recipe(config):
        _train_recipe(config, over, out=out, work=work, max_steps=max_steps, no_progress=no_progress)
        return
    try:
        cfg = TrainConfig.from_file(config, **over) if config else TrainConfig.from_dict({k: v for k, v in over.items() if v is not None})
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from None
    _log_lines(no_progress)
    work = work or cfgmod.home() / "train" / cfg.name
    for folder in (out, work):  # before hours of training
        check_folder_target(folder)
    con = console()
    try:
        res = train(cfg, out=out, work=work, progress=not no_progress, max_steps=max_steps)
    except ValueError as exc:  # options that do not fit the data, the work folder or the machine
        raise CmrdxError(str(exc), hint="check --config/--init-from/--device, or use another --work folder") from None
    if not env_info().is_main:  # rank 0 reports for the run
        return
    con.print(f"trained {res.steps} steps ({res.epochs_done} epochs) on {res.n_train} pairs "
              f"(+{res.n_val} validation) in {res.seconds / 60:.1f} min; skipped: {safe(res.skipped or 'none')}")
    if res.losses:
        con.print(f"loss {sum(res.losses[:10]) / min(10, len(res.losses)):.3f} -> {sum(res.losses[-10:]) / min(10, len(res.losses)):.3f}")
    if res.export:
        con.print(f"exported to {safe(out)}: {safe(', '.join(res.export['files']))}")
    else:
        con.print(f"not finished: rerun with --work {safe(work)} to resume")


def _is_recipe(config: Path) -> bool:
    from cmrdx.train.stages import is_recipe

    if not config.is_file():
        raise typer.BadParameter(f"{config}: no such file", param_hint="--config")
    try:
        return is_recipe(config)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from None


def _log_lines(no_progress: bool) -> None:
    if no_progress:
        logging.getLogger("cmrdx").setLevel(logging.INFO)
        if not logging.getLogger().handlers:
            logging.basicConfig(format="%(asctime)s %(message)s")
        logging.getLogger("cmrdx.train.trainer").setLevel(logging.INFO)


def _train_recipe(config: Path, over: dict[str, object], *, out: Path, work: Path | None, max_steps: int | None,
                  no_progress: bool) -> None:
    """``cmrdx train --config RECIPE``: every stage in order, resumable, then the export."""
    from cmrdx import config as cfgmod
    from cmrdx.cli.text import console, safe
    from cmrdx.outputs.common import check_folder_target
    from cmrdx.train.distributed import env_info
    from cmrdx.train.stages import load_recipe, run_recipe

    for opt, key in (("--epochs", "epochs"), ("--batch-size", "batch_size")):
        if over.get(key) is not None:
            raise typer.BadParameter(f"{config} is a recipe of stages: set {key} in its stages, not on the command "
                                     "line", param_hint=opt)
    try:
        recipe = load_recipe(config, **over)
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from None
    _log_lines(no_progress)
    work = work or cfgmod.home() / "train" / f"{recipe.name}-{recipe.version}"
    for folder in (out, work):  # before hours of training
        check_folder_target(folder)
    main = env_info().is_main
    con = console()
    say = (lambda line: con.print(safe(line), highlight=False)) if main else (lambda line: None)
    command = f"cmrdx train --config {config} --work WORK --out OUT"
    try:
        res = run_recipe(recipe, work=work, out=out, progress=not no_progress, max_steps=max_steps, say=say,
                         command=command)
    except ValueError as exc:  # settings that do not fit the data, the work folder or the machine
        raise CmrdxError(str(exc), hint="check the recipe, --init-from and --device, or use another --work "
                                        "folder") from None
    if not main:
        return
    for r in res.stages:
        if r.result is not None and r.record:
            con.print(safe(f"stage {r.stage}: {r.record.get('steps')} steps in "
                           f"{float(r.record.get('seconds') or 0) / 60:.1f} min on {r.record.get('device')}"),
                      highlight=False)
    if res.finished and res.export:
        con.print(f"exported to {safe(out)}: {safe(', '.join(res.export['files']))} and {safe('MODEL_CARD.md')}")
    else:
        con.print(f"not finished: rerun the same command (--work {safe(work)}) to resume")


def _check_reports(data: Path, reports: Path, work: Path | None, config: Path | None) -> None:
    """``--check-reports``: the match of a RIS export to an archive, said and written, without training."""
    from cmrdx import config as cfgmod
    from cmrdx.cli.text import console, safe
    from cmrdx.train.data import ArchiveSource
    from cmrdx.train.trainer import TrainConfig

    try:
        if config is not None and _is_recipe(config):
            from cmrdx.train.stages import load_recipe

            recipe = load_recipe(config)
            name = f"{recipe.name}-{recipe.version}"  # the recipe's default work folder
        else:
            name = TrainConfig.from_file(config).name if config else TrainConfig().name
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from None
    match = ArchiveSource(data, reports=reports).report_match()
    if match is None:  # not reached: a reports file was given
        return
    path = match.write((work or cfgmod.home() / "train" / name) / "reports-match.json")
    c = match.counts()
    con = console()
    con.print(f"{c['report_rows']} reports with a study key and text in {safe(reports.name)}; {c['studies']} study "
              f"folders with images in {safe(data)}")
    how = ", ".join(f"{n} by {h}" for h, n in sorted(c["matched_by"].items())) or "none"
    con.print(f"matched: {how}; the impression section found in {c['impression_found']}, "
              f"{c['taken_whole']} taken whole")
    for what, items in (("studies without a report", match.unmatched_studies),
                        ("reports matching no study", match.unmatched_reports)):
        con.print(f"{len(items)} {what}" + (":" if items else ""))
        for k in items[:20]:
            con.print("  " + safe(", ".join(f"{a} {b}" for a, b in k.items())))
        if len(items) > 20:
            con.print(f"  ... {len(items) - 20} more in the JSON summary")
    for key, what in (("rows_without_key", "rows without a study key"), ("rows_without_text", "rows without text"),
                      ("duplicate_rows", "rows repeating a key (the first row is used)"),
                      ("reports_matching_several_studies", "reports matching several studies"),
                      ("studies_without_dicom", "folders without a readable DICOM header")):
        if c[key]:
            con.print(f"{c[key]} {what}")
    con.print(f"summary: {safe(path)}")


def export_cmd(
    trained: Path = typer.Argument(..., help="A trained.pt written by training (Trainer.save_trained, e.g. by "
                                             "bench/train_gpu.py)."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (e.g. models/my-model)."),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="Also write an int8 CPU video variant."),
    float16: bool = typer.Option(True, "--float16/--no-float16", help="Also write a float16 GPU video variant."),
) -> None:
    """Export a trained model to a model folder: ONNX towers, tokenizer and manifest, checked against torch (needs
    the `train` extra). No training."""
    _export(trained, out, int8=int8, float16=float16)


def _need_torch(what: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CmrdxError(f"{what} needs torch", hint='pip install "cmrdx[train]"') from None


def _export(trained: Path, out: Path, *, int8: bool = True, float16: bool = True) -> None:
    _need_torch("cmrdx models export")
    from cmrdx.cli.text import console, safe
    from cmrdx.outputs.common import check_folder_target
    from cmrdx.train.trainer import export_trained

    if not trained.is_file():
        raise CmrdxError(f"{trained}: no such file", hint="give the trained.pt that training wrote")
    check_folder_target(out)
    try:
        rep = export_trained(trained, out, int8=int8, float16=float16)
    except ValueError as exc:
        raise CmrdxError(str(exc), hint="give a trained.pt written by training (Trainer.save_trained)") from None
    console().print(safe(f"exported {trained} to {out}: {', '.join(rep['files'])}"))
