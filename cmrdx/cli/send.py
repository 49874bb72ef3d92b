"""`cmrdx send FILE... --host H --port P --aet AET`: C-STORE DICOM files to a PACS. A thin layer over
``cmrdx.outputs.send``."""

from __future__ import annotations

import logging
from pathlib import Path

import typer


def send_cmd(
    files: list[Path] = typer.Argument(..., help="DICOM files to store, e.g. the SR from `cmrdx classify --sr`."),
    host: str = typer.Option(..., "--host", help="Host name or address of the storage SCP (PACS)."),
    port: int = typer.Option(..., "--port", min=1, max=65535, help="Its DICOM port (often 104 or 11112)."),
    aet: str = typer.Option(..., "--aet", help="Its AE title (the called AE title)."),
    calling_aet: str = typer.Option("CMRDX", "--calling-aet", help="This side's AE title, as the PACS knows it."),
    timeout: float = typer.Option(10.0, "--timeout", min=0.5, help="Seconds to wait for the connection and answers."),
) -> None:
    """Store DICOM files on a PACS by C-STORE (one association for all files)."""
    from cmrdx.cli.text import console, safe
    from cmrdx.outputs.send import send

    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # our errors say it better; -v shows pynetdicom's
    for o in send(list(files), host, port, aet, calling_aet=calling_aet, timeout=timeout):
        warn = f" (warning status 0x{o.status:04X})" if o.status else ""
        console().print(f"stored {safe(o.path.name)} on {safe(aet)}@{safe(host)}:{port}{warn}", highlight=False)
