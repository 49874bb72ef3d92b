"""The ``cmrdx`` command: typer sub-apps, each a thin layer over the Python API.

Each command group lives in its own module (light to import: heavy work is imported inside the commands) and
registers here with one ``add_typer``/``command`` line.
"""

from __future__ import annotations

import logging
import sys

import typer

from cmrdx import __version__
from cmrdx.cli import batch as _batch
from cmrdx.cli import classify as _classify
from cmrdx.cli import eval as _eval
from cmrdx.cli import fewshot as _fewshot
from cmrdx.cli import inspect as _inspect
from cmrdx.cli import models as _models
from cmrdx.cli import prompts as _prompts
from cmrdx.cli import search as _search
from cmrdx.cli import send as _send
from cmrdx.cli import synth as _synth
from cmrdx.cli import train as _train
from cmrdx.errors import CmrdxError

app = typer.Typer(
    name="cmrdx",
    help="Zero-shot cardiac MRI diagnosis (research and demonstration use only; not for clinical use).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cmrdx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log diagnostics to stderr."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# --- command registration: one line per command or group ---
app.command("inspect")(_inspect.inspect_cmd)
app.command("classify")(_classify.classify_cmd)
app.add_typer(_prompts.app, name="prompts")
app.add_typer(_fewshot.app, name="fewshot")
app.command("batch")(_batch.batch_cmd)
app.command("index")(_search.index_cmd)
app.command("search")(_search.search_cmd)
app.command("similar")(_search.similar_cmd)
app.add_typer(_models.app, name="models")
_models.app.command("export")(_train.export_cmd)
app.add_typer(_synth.app, name="synth")
app.command("train")(_train.train_cmd)
app.add_typer(_eval.app, name="eval")
app.command("send")(_send.send_cmd)


def main() -> None:
    """Console entry point: CmrdxError becomes a clear message and its documented exit code."""
    try:
        rc = app(standalone_mode=False)
        # click returns (rather than raises) typer.Exit's code when standalone_mode is off
        if isinstance(rc, int) and not isinstance(rc, bool):
            sys.exit(rc)
    except CmrdxError as exc:
        from rich.console import Console

        err = Console(stderr=True)
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.hint:
            err.print(f"[yellow]fix:[/] {exc.hint}", highlight=False)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
