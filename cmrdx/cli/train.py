"""``cmrdx train``: contrastive training of a small CMR-CLIP-style model, then ONNX export (the ``train`` extra);
``cmrdx models export``: a trained.pt written by training (e.g. by bench/train_gpu.py) to a model folder.

torch is imported inside the commands only: ``import cmrdx.cli`` stays light.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from cmrdx.errors import CmrdxError


def train_cmd(
    out: Path = typer.Option(..., "--out", help="Model folder to export to (e.g. models/cmrdx-phantom-small)."),
    data: Path = typer.Option(None, "--data", help="Archive of study folders (DICOM + report.txt). Omit to render "
                                                   "phantom studies straight to arrays (--phantoms, --seed)."),
    phantoms: int = typer.Option(None, "--phantoms", min=1, help="Phantom studies to render (default from the config)."),
    seed: int = typer.Option(None, "--seed", help="Source and training seed."),
    config: Path = typer.Option(None, "--config", help="YAML/JSON file of TrainConfig fields."),
    work: Path = typer.Option(None, "--work", help="Cache + checkpoint folder (default $CMRDX_HOME/train/NAME). "
                                                   "Rerunning with the same folder resumes."),
    epochs: int = typer.Option(None, "--epochs", min=1),
    batch_size: int = typer.Option(None, "--batch-size", min=1),
    max_steps: int = typer.Option(None, "--max-steps", min=1, help="Stop after this many more steps (no export unless done)."),
    threads: int = typer.Option(None, "--threads", min=1, help="torch intra-op threads."),
    init_from: Path = typer.Option(None, "--init-from", help="Start from this checkpoint.pt's weights (and its vocab.txt)."),
    device: str = typer.Option(None, "--device", help="auto (a CUDA GPU when torch sees one), cpu or cuda."),
    workers: int = typer.Option(None, "--workers", min=1, help="Processes that render phantom studies into the cache."),
    max_train_seconds: float = typer.Option(None, "--max-train-seconds", min=1.0,
                                            help="Fit the schedule (cosine decay included) to this wall-clock budget."),
    export_trained: Path = typer.Option(None, "--export-trained", hidden=True,
                                        help="Moved: `cmrdx models export TRAINED --out DIR`."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Log lines instead of progress bars (for logs)."),
) -> None:
    """Train on (study, report) pairs and export the model with its manifest."""
    if export_trained is not None:  # the command line of earlier versions keeps working, and names the new one
        from cmrdx.cli.text import console

        console(stderr=True).print("note: `cmrdx train --export-trained` is now `cmrdx models export TRAINED --out DIR`",
                                   highlight=False)
        _export(export_trained, out)
        return
    _need_torch("cmrdx train")
    from cmrdx import config as cfgmod
    from cmrdx.cli.text import console, safe
    from cmrdx.outputs.common import check_folder_target
    from cmrdx.train.trainer import TrainConfig, train

    over = {"phantoms": phantoms, "seed": seed, "epochs": epochs, "batch_size": batch_size, "threads": threads,
            "archive": str(data) if data else None, "device": device, "workers": workers,
            "max_train_seconds": max_train_seconds,
            "init_from": str(init_from) if init_from else None}
    try:
        cfg = TrainConfig.from_file(config, **over) if config else TrainConfig.from_dict({k: v for k, v in over.items() if v is not None})
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from None
    if no_progress:
        logging.getLogger("cmrdx").setLevel(logging.INFO)
        if not logging.getLogger().handlers:
            logging.basicConfig(format="%(asctime)s %(message)s")
        logging.getLogger("cmrdx.train.trainer").setLevel(logging.INFO)
    work = work or cfgmod.home() / "train" / cfg.name
    for folder in (out, work):  # before hours of training
        check_folder_target(folder)
    con = console()
    try:
        res = train(cfg, out=out, work=work, progress=not no_progress, max_steps=max_steps)
    except ValueError as exc:  # options that do not fit the data, the work folder or the machine
        raise CmrdxError(str(exc), hint="check --config/--init-from/--device, or use another --work folder") from None
    con.print(f"trained {res.steps} steps ({res.epochs_done} epochs) on {res.n_train} pairs "
              f"(+{res.n_val} validation) in {res.seconds / 60:.1f} min; skipped: {safe(res.skipped or 'none')}")
    if res.losses:
        con.print(f"loss {sum(res.losses[:10]) / min(10, len(res.losses)):.3f} -> {sum(res.losses[-10:]) / min(10, len(res.losses)):.3f}")
    if res.export:
        con.print(f"exported to {safe(out)}: {safe(', '.join(res.export['files']))}")
    else:
        con.print(f"not finished: rerun with --work {safe(work)} to resume")


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
