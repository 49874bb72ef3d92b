"""The ``cmrdx`` command: typer sub-apps, each a thin layer over the Python API.

Each command group lives in its own module (light to import: heavy work is imported inside the commands) and
registers here with one ``add_typer``/``command`` line.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import typer

from cmrdx import __version__
from cmrdx.cli import batch as _batch
from cmrdx.cli import classify as _classify
from cmrdx.cli import eval as _eval
from cmrdx.cli import explain as _explain
from cmrdx.cli import fewshot as _fewshot
from cmrdx.cli import inspect as _inspect
from cmrdx.cli import listen as _listen
from cmrdx.cli import models as _models
from cmrdx.cli import pacs as _pacs
from cmrdx.cli import prompts as _prompts
from cmrdx.cli import search as _search
from cmrdx.cli import send as _send
from cmrdx.cli import synth as _synth
from cmrdx.cli import train as _train
from cmrdx.errors import INTERRUPTED, CmrdxError, InternalError, OutputError

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


_STATE = {"verbose": False}  # -v: an unexpected error shows its traceback too


class _PlainFormatter(logging.Formatter):
    """Log lines carry file names and header values: control characters are shown as escapes, never sent raw."""

    def format(self, record: logging.LogRecord) -> str:
        from cmrdx.cli.text import plain

        return plain(super().format(record), lines=True)  # a traceback keeps its lines


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log diagnostics to stderr; show the traceback of an unexpected error."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    _STATE["verbose"] = verbose
    handler = logging.StreamHandler()
    handler.setFormatter(_PlainFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])


# --- command registration: one line per command or group ---
app.command("inspect")(_inspect.inspect_cmd)
app.command("classify")(_classify.classify_cmd)
app.command("explain")(_explain.explain_cmd)
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
app.add_typer(_pacs.app, name="pacs")
app.command("listen")(_listen.listen_cmd)


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Every way the command can end is one line on stderr and a documented exit code
    (``cmrdx.errors.EXIT_CODES``), never a traceback (``cmrdx -v``: an unexpected error shows its traceback):

    * a command line that cannot be parsed: typer prints the usage and the problem, exit 2;
    * a CmrdxError: its message and fix, its exit code;
    * an OSError no command turned into a CmrdxError (a full disk, a closed or full standard output): 13;
    * anything else: a bug, named in one line, exit 70.
    """
    watched = _WatchedStdout(sys.stdout)
    sys.stdout = watched  # a proxy: it only records a failed write
    try:
        code = _run(argv, watched)
    finally:
        sys.stdout = watched.stream
    code = _flush_stdout(code)
    sys.exit(code)


class _WatchedStdout:
    """Standard output that remembers the error of a write that failed (a full disk, a closed pipe), so that the
    error can be called a failure to write the output rather than a problem with some file."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.failed: OSError | None = None

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as exc:
            self.failed = exc
            raise

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            self.failed = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _run(argv: list[str] | None, stdout: _WatchedStdout) -> int:
    try:
        # standalone mode: typer (which carries its own copy of click) reports its usage errors itself, with
        # the usage, and turns typer.Exit, Ctrl-C and a broken pipe into exit codes; it always ends in SystemExit.
        app(args=argv, prog_name="cmrdx", standalone_mode=True)
    except SystemExit as exc:
        return _exit_code(exc.code)
    except CmrdxError as exc:
        _report(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return INTERRUPTED
    except OSError as exc:
        err = _os_error(exc, stdout)
        if err is None:
            return 1
        _report(err, exc)
        return err.exit_code
    except Exception as exc:
        _report(InternalError(f"internal error: {type(exc).__name__}: {exc}",
                              hint="this is a bug in cmrdx: run again as `cmrdx -v ...` for the traceback and report it"),
                exc)
        return InternalError.exit_code
    return 0


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"): Python's own convention, exit 1
    return 1


def _report(exc: CmrdxError, cause: BaseException | None = None) -> None:
    from cmrdx.cli.text import console, safe

    err = console(stderr=True)
    if cause is not None and _STATE["verbose"]:
        import traceback

        sys.stderr.write("".join(traceback.format_exception(cause)))
    err.print(f"[bold red]error:[/] {safe(exc.message)}", highlight=False, soft_wrap=True)  # one line each
    if exc.hint:
        err.print(f"[yellow]fix:[/] {safe(exc.hint)}", highlight=False, soft_wrap=True)


def _os_error(exc: OSError, stdout: _WatchedStdout) -> OutputError | None:
    """The OutputError for an OSError that reached the top; None for a reader that closed the pipe (``| head``),
    which ends the command quietly."""
    if stdout.failed is exc:
        _silence_stdout()
        if isinstance(exc, BrokenPipeError):
            return None
        return OutputError.from_os_error(exc, "standard output", doing="cannot write")
    return OutputError.from_os_error(exc, doing="cannot read or write" if exc.filename is not None else "system error")


def _silence_stdout() -> None:
    """Point standard output at /dev/null so that Python's flush at exit does not fail a second time."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):
        pass


def _flush_stdout(code: int) -> int:
    """Write what is still buffered for standard output now, while a failure can still be reported (at exit it
    would be a traceback-like "Exception ignored" and exit code 120)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return code or 1
    except OSError as exc:
        _silence_stdout()
        err = OutputError.from_os_error(exc, "standard output", doing="cannot write")
        _report(err)
        return code or err.exit_code
    except ValueError:  # standard output was closed by the command's caller
        return code
    return code
