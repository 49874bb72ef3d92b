"""Run the `cmrdx` command in the test's own process, as the console script does."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout


def in_process(*args: str) -> tuple[int, str, str]:
    """`cmrdx.cli.main` in this process: (exit code, stdout, stderr)."""
    from cmrdx.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()
