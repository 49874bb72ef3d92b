"""`cmrdx pacs list | echo NODE | find NODE | flush NODE`: the configured PACS nodes, a connection check, a study
query, and the SRs waiting to be stored back. A thin layer over ``cmrdx.pacs``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from cmrdx.cli.text import console as _console
from cmrdx.cli.text import plain, safe

app = typer.Typer(help="PACS nodes (DICOMweb and DIMSE) configured in $CMRDX_HOME/pacs.yaml or --pacs-config: "
                       "list, check, query, flush the store-back outbox.", no_args_is_help=True)

CONFIG_HELP = "PACS nodes (default: $CMRDX_PACS_CONFIG, else $CMRDX_HOME/pacs.yaml)."

_SHAPE = """The file's shape:

  nodes:
    - name: orthanc-web
      dicomweb: http://127.0.0.1:8042/dicom-web
      auth: {kind: basic, user_env: PACS_USER, password_env: PACS_PASSWORD}   # optional
    - name: orthanc-dimse
      aet: ORTHANC
      host: 127.0.0.1
      port: 4242
      calling_aet: CMRDX
"""


@app.command("list", help="List the configured nodes (secrets are never shown: only the names of their variables).\n\n" + _SHAPE)
def list_cmd(
    pacs_config: Path | None = typer.Option(None, "--pacs-config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    from cmrdx.pacs.config import load_nodes

    nodes = load_nodes(pacs_config)
    if as_json:
        typer.echo(json.dumps([n.to_dict() for n in nodes.values()], indent=2))
        return
    t = Table(header_style="bold")
    t.add_column("node")
    t.add_column("where")
    for n in nodes.values():
        t.add_row(safe(n.name), safe(n.describe()))
    _console().print(t)


@app.command("echo")
def echo_cmd(
    node: str = typer.Argument(..., help="Node name."),
    pacs_config: Path | None = typer.Option(None, "--pacs-config", help=CONFIG_HELP),
) -> None:
    """Check that a node answers: C-ECHO for DIMSE, a QIDO-RS request for DICOMweb."""
    from cmrdx.pacs.client import open_client
    from cmrdx.pacs.config import get_node

    n = get_node(node, pacs_config)
    client = open_client(n)
    try:
        typer.echo(f"{n.name}: {plain(client.echo())}")
    finally:
        client.close()


@app.command("find")
def find_cmd(
    node: str = typer.Argument(..., help="Node name."),
    query: list[str] | None = typer.Option(None, "--query", "-q", help="KEYWORD=VALUE, e.g. StudyDate=20260101-20260131 "
                                           "or ModalitiesInStudy=MR (repeatable)."),
    pacs_config: Path | None = typer.Option(None, "--pacs-config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the studies a query finds on a node (UIDs, dates, modalities and counts; no patient names)."""
    from cmrdx.pacs.client import open_client
    from cmrdx.pacs.config import get_node, parse_query

    n = get_node(node, pacs_config)
    q = parse_query(query or [])
    client = open_client(n)
    try:
        hits = client.find_studies(q)
    finally:
        client.close()
    if as_json:
        typer.echo(json.dumps([{"study_uid": h.study_uid, "study_date": h.study_date, "modalities": list(h.modalities),
                                "series": h.n_series, "instances": h.n_instances} for h in hits], indent=2))
        return
    t = Table(title=safe(f"{n.name}: {len(hits)} studies"), header_style="bold")
    for col in ("StudyInstanceUID", "date", "modalities", "series", "instances"):
        t.add_column(col, overflow="fold")
    for h in hits:
        t.add_row(safe(h.study_uid), safe(h.study_date), safe(",".join(h.modalities)),
                  "-" if h.n_series is None else str(h.n_series), "-" if h.n_instances is None else str(h.n_instances))
    _console().print(t)


@app.command("flush")
def flush_cmd(
    node: str = typer.Argument(..., help="Node name."),
    pacs_config: Path | None = typer.Option(None, "--pacs-config", help=CONFIG_HELP),
) -> None:
    """Store the SRs waiting in the outbox for a node (those a --store-back could not store). Exit 12 while some
    remain."""
    from cmrdx.errors import StoreFailedError
    from cmrdx.pacs.config import get_node
    from cmrdx.pacs.outbox import Outbox

    n = get_node(node, pacs_config)
    rep = Outbox().flush(n)
    typer.echo(f"{n.name}: {len(rep.stored)} stored, {rep.pending} pending")
    if rep.pending:
        why = rep.error or "; ".join(f"{plain(r.sop_instance_uid)}: {plain(r.status)}" for r in rep.failed)
        raise StoreFailedError(f"{n.name}: {rep.pending} file(s) not stored ({why})",
                               hint=f"check the node (`cmrdx pacs echo {n.name}`) and run the flush again")
