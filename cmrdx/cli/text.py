"""Text from files on the terminal: shown as data, never obeyed.

Strings read from DICOM headers, file and folder names, prompt banks and result files can hold rich markup
(``[/]`` would crash the renderer, ``[link=...]`` would make a hyperlink), emoji codes (``:warning:`` would
become a glyph), terminal control sequences (ESC ``[2J`` clears the screen, OSC sequences set the window title
or a clipboard) and bidirectional overrides that make text read differently from what it is. Every such string
goes through ``safe`` (markup contexts: rich ``print``, table cells, titles) or ``plain`` (no markup: ``typer.echo``,
log lines) before it reaches the terminal; the consoles come from ``console`` (emoji codes off).

Imports rich only.
"""

from __future__ import annotations

import re

from rich.console import Console
from rich.markup import escape

# C0 controls (tab and newline included: a value is one line of a table or a message), DEL, C1 controls (0x9b
# is a one-byte CSI), the Unicode bidirectional embeddings, overrides and isolates, and lone surrogates: a file
# name's bytes that are not UTF-8 arrive as U+DC80-U+DCFF, which no terminal encoding can write.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # the byte a file name held
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(value: object, *, lines: bool = False) -> str:
    """``value`` as text with every control character written as a visible escape (ESC becomes ``\\x1b``);
    ``lines``: newlines are kept (a multi-line text such as a Markdown table)."""
    if lines:
        return "\n".join(_CONTROLS.sub(_visible, line) for line in str(value).split("\n"))
    return _CONTROLS.sub(_visible, str(value))


def safe(value: object) -> str:
    """``value`` as text for a rich markup context: control characters as visible escapes, markup escaped."""
    return escape(plain(value))


def console(*, stderr: bool = False) -> Console:
    """The CLI's console: emoji codes are left as typed (a description ``:x:`` stays ``:x:``)."""
    return Console(stderr=stderr, emoji=False)
