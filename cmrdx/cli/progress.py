"""Progress for the stages a user waits on (encoding with a large model, importing a model, building a
reference): a rich spinner or bar on standard error while the stage runs, when standard error is an interactive
terminal, and nothing at all otherwise (a pipe, a file, a test's CliRunner, ``--json``). Transient: when the
stage ends the line is gone, and what the command prints is what it printed without it.

    with stages("importing CMR-CLIP", enabled=not as_json) as stage:
        import_cmrclip(..., progress=stage)          # stage("exporting the video tower") ...
    with counter("encoding studies", enabled=...) as progress:
        encoder.encode_studies(batch, progress=progress)   # progress(done, total)

Imports rich only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cmrdx.cli.text import console, plain


def interactive(enabled: bool = True) -> bool:
    """Whether progress is shown: ``enabled`` (the command was not asked for --json), standard error a terminal
    and not a dumb one. ``CMRDX_PROGRESS=0`` turns it off, ``1`` on (a terminal still required)."""
    if not enabled or os.environ.get("CMRDX_PROGRESS", "1").strip() in ("0", "false", "no", "off"):
        return False
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


def _progress(total_known: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    cols: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total_known:
        cols += [BarColumn(), MofNCompleteColumn()]
    cols.append(TimeElapsedColumn())
    return Progress(*cols, console=console(stderr=True), transient=True)


@contextmanager
def stages(title: str, *, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A spinner with ``title``, the current stage and the time elapsed; yields ``stage(message)`` to move it on.
    Without a terminal the callback does nothing."""
    if not interactive(enabled):
        yield lambda _msg: None
        return
    with _progress(False) as prog:
        task = prog.add_task(plain(title), total=None)

        def stage(message: str) -> None:
            prog.update(task, description=plain(f"{title}: {message}"))

        yield stage


@contextmanager
def counter(title: str, *, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A bar with ``title``, done/total and the time elapsed; yields ``progress(done, total)``. Without a
    terminal the callback does nothing."""
    if not interactive(enabled):
        yield lambda _done, _total: None
        return
    with _progress(True) as prog:
        task = prog.add_task(plain(title), total=None)

        def progress(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield progress
