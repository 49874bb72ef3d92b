"""`cmrdx listen --aet CMRDX --port 11112 [--forward NODE]`: run as a DICOM node that classifies what it receives.
A thin layer over ``cmrdx.pacs.listen``: options, signal handlers, and one printed line per study event."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import typer


def listen_cmd(
    aet: str = typer.Option("CMRDX", "--aet", help="This node's AE title (the called AE title senders use)."),
    port: int = typer.Option(11112, "--port", min=0, max=65535, help="TCP port to listen on (0: any free port)."),
    spool: Path | None = typer.Option(None, "--spool",
                                      help="Where received instances and the journal are kept "
                                           "(default: $CMRDX_HOME/listen/spool)."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Where each study's outputs go, one folder per StudyInstanceUID "
                                         "(default: $CMRDX_HOME/listen/out)."),
    allow_aet: list[str] | None = typer.Option(None, "--allow-aet",
                                               help="A calling AE title allowed to send (repeatable). "
                                                    "None given: any sender is accepted."),
    forward: str | None = typer.Option(None, "--forward", help="PACS node (from pacs.yaml) to store each SR on."),
    pacs_config: Path | None = typer.Option(None, "--pacs-config", help="PACS nodes file (default: $CMRDX_HOME/pacs.yaml)."),
    quiet: float = typer.Option(30.0, "--quiet", min=0.0,
                                help="Seconds without a new instance after which a study is taken as complete."),
    max_spool_gb: float = typer.Option(10.0, "--max-spool-gb", min=0.001,
                                       help="Spool size limit; past it, classified studies are evicted, "
                                            "then new instances refused (0xA700)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name or folder (default: the bundled model)."),
    bank: list[str] | None = typer.Option(None, "--bank", "-b", help="Prompt bank name or YAML file (repeatable)."),
    device: str = typer.Option("auto", "--device", help="auto | cuda | cpu"),
) -> None:
    """Receive studies by C-STORE, classify each once complete, write its outputs, forward its SR.

    A study is complete when nothing arrived for it for --quiet seconds. SIGTERM or Ctrl-C stops cleanly: no new
    associations, the study being classified finishes (a second signal interrupts it; the next start redoes it).
    Exit code 0 after a clean stop, 130 after an interrupted one."""
    from cmrdx import config as _config
    from cmrdx.cli.text import plain
    from cmrdx.errors import INTERRUPTED
    from cmrdx.outputs.common import check_folder_target
    from cmrdx.pacs.config import get_node
    from cmrdx.pacs.listen import Listener, StudyClassifier

    if device not in ("auto", "cuda", "cpu"):
        raise typer.BadParameter(f"{device!r}: use auto, cuda or cpu", param_hint="--device")
    base = _config.home() / "listen"
    spool = spool if spool is not None else base / "spool"
    out = out if out is not None else base / "out"
    check_folder_target(spool)
    check_folder_target(out)
    node = get_node(forward, pacs_config) if forward else None
    # pynetdicom's own log lines can carry header values; ours name studies by UID only
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if not allow_aet:
        typer.echo("warning: no --allow-aet given: any calling AE title may send studies to this node", err=True)
    classifier = StudyClassifier(model, tuple(bank) if bank else None, device)
    classifier.preload()  # a bad model or bank fails now, not at the first study

    def show(rec: dict[str, Any]) -> None:
        line = describe_event(rec)
        if line:
            typer.echo(plain(line))  # UIDs and messages come from DICOM data: control characters escaped

    listener = Listener(spool, out, aet=aet, port=port, allowed_aets=set(allow_aet) if allow_aet else None,
                        forward=node, quiet_seconds=quiet, max_spool_bytes=int(max_spool_gb * 1024**3),
                        classify_fn=classifier, on_event=show)
    signals = {"n": 0}

    def on_signal(signum: int, frame: Any) -> None:
        signals["n"] += 1
        listener.stop(grace=None if signals["n"] == 1 else 0.0)  # sets flags only: safe here

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        listener.serve()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if signals["n"] > 1:
        raise typer.Exit(INTERRUPTED)


def describe_event(rec: dict[str, Any]) -> str | None:
    """One line for a study event of the listener (None: not shown). Plain text: the caller escapes it."""
    ev = rec.get("event")
    uid = rec.get("study_uid") or "?"
    if ev == "started":
        fwd = f"forwarding SRs to {rec['forward']}" if rec.get("forward") else "no --forward: SRs stay in --out"
        allowed = ", ".join(rec.get("allowed_aets") or []) or "any calling AE title"
        return (f"listening as {rec.get('aet')} on port {rec.get('port')} (accepting {allowed}); {fwd}; "
                f"{rec.get('studies_scheduled', 0)} study(ies) from the spool scheduled")
    if ev == "receiving":
        return f"study {uid}: receiving from {rec.get('calling_aet') or '?'}"
    if ev == "scheduled":
        return f"study {uid}: scheduled at start ({rec.get('instances')} instances, {rec.get('reason')})"
    if ev == "classified":
        views = ", ".join(rec.get("views") or []) or "none"
        return (f"study {uid}: classified ({rec.get('instances')} instances; views {views}; "
                f"{rec.get('present', 0)} of {rec.get('findings', 0)} findings present) in {rec.get('seconds', 0):.1f} s")
    if ev == "failed":
        err = rec.get("error") or {}
        again = "; classified again at the next start" if rec.get("retry") else ""
        return f"study {uid}: not classified: {err.get('type')}: {err.get('message')}{again}"
    if ev == "forwarded":
        return f"study {uid}: SR stored on {rec.get('node')}"
    if ev == "forward-pending":
        return f"study {uid}: SR pending for {rec.get('node')} (retried later): {rec.get('error')}"
    if ev == "interrupted":
        return f"study {uid}: interrupted; classified again at the next start"
    if ev == "evicted":
        return f"study {uid}: evicted from the full spool ({rec.get('instances')} instances, already classified)"
    if ev == "stopped":
        return f"stopped ({rec.get('studies_pending', 0)} study(ies) left for the next start)"
    return None
