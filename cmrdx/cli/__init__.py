"""The ``cmrdx`` command: typer sub-apps, each a thin layer over the Python API.

Each command group lives in its own module and registers here with one ``add_typer``/``command`` line.
"""

from __future__ import annotations

import logging
import sys

import typer

from cmrdx import __version__
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


# --- command registration (one line per command group) ---
from cmrdx.cli import inspect as _inspect  # noqa: E402

app.command("inspect")(_inspect.inspect_cmd)
from cmrdx.cli import classify as _classify  # noqa: E402
app.command("classify")(_classify.classify_cmd)
from cmrdx.cli import prompts as _prompts  # noqa: E402
app.add_typer(_prompts.app, name="prompts")
from cmrdx.cli import fewshot as _fewshot  # noqa: E402
app.add_typer(_fewshot.app, name="fewshot")
from cmrdx.cli import batch as _batch  # noqa: E402
app.command("batch")(_batch.batch_cmd)
from cmrdx.cli import search as _search  # noqa: E402
app.command("index")(_search.index_cmd)
app.command("search")(_search.search_cmd)
app.command("similar")(_search.similar_cmd)
from cmrdx.cli import models as _models  # noqa: E402
app.add_typer(_models.app, name="models")
from cmrdx.cli import synth as _synth  # noqa: E402
app.add_typer(_synth.app, name="synth")
from cmrdx.cli import train as _train  # noqa: E402
app.command("train")(_train.train_cmd)
_models.app.command("export")(_train.export_cmd)
from cmrdx.cli import eval as _eval  # noqa: E402
app.add_typer(_eval.app, name="eval")
from cmrdx.cli import send as _send  # noqa: E402
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
