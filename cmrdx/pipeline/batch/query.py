"""A batch run's studies from a PACS query: ``cmrdx batch --pacs NODE --query Keyword=value ...``.

The node lists the studies matching the query (QIDO-RS or C-FIND at study level; ``PacsClient.find_studies``).
Each becomes one discovery entry: its address ``pacs://NODE/STUDY_UID`` (the study's only "file") and its
fingerprint on the node (series and instance counts, ``StudyHit.fingerprint``). The rest of the run is the
folder run's: the journal records each study by StudyInstanceUID, a resumed run scores again a study that gained
or lost instances and drops one the query no longer finds, and the worker that prepares a study reads it from the
node header-first (``cmrdx.pacs.study.read_pacs_study``: only the instances the recipe reads are retrieved).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmrdx.errors import UsageError
from cmrdx.pacs.config import PacsAddress, PacsNode, get_node, parse_address, parse_query
from cmrdx.pipeline.batch.discover import DiscoveryUpdate, Entry, refresh_listed, save_discovery


@dataclass
class PacsQuery:
    """The studies ``query`` finds on the PACS node ``node`` (nodes from ``config``: ``--pacs-config``, else
    ``$CMRDX_PACS_CONFIG`` or ``$CMRDX_HOME/pacs.yaml``)."""

    node: PacsNode
    query: dict[str, str]
    pacs_config: str | None = None  # the configuration file, absolute (reader workers open it by this path)
    hits: int = field(default=0, init=False)  # studies the last listing found

    @classmethod
    def create(cls, node: str, queries: Sequence[str] | Mapping[str, str],
               config: str | os.PathLike[str] | None = None) -> PacsQuery:
        """Check the query and find the node now (UsageError for either), before any work."""
        items = [f"{k}={v}" for k, v in queries.items()] if isinstance(queries, Mapping) else list(queries)
        query = parse_query(items)
        cfg = str(Path(config).expanduser().resolve()) if config is not None else None
        return cls(get_node(node, cfg), query, cfg)

    @property
    def key(self) -> str:
        """What names this source in the run's saved discovery, and in messages: ``pacs://NODE?Keyword=value&...``."""
        return f"pacs://{self.node.name}?" + "&".join(f"{k}={v}" for k, v in sorted(self.query.items()))

    @property
    def root(self) -> str:
        return self.key

    def describe(self) -> str:
        return self.key

    def listing(self) -> list[Entry]:
        """One discovery entry per study the node finds, in its order (a UID that is not a DICOM UID is skipped
        with the reason: it could never be read)."""
        from cmrdx.pacs.client import open_client

        client = open_client(self.node)
        try:
            hits = client.find_studies(self.query)
        finally:
            client.close()
        self.hits = len(hits)
        out: list[Entry] = []
        for h in hits:
            try:
                addr = parse_address(str(PacsAddress(self.node.name, h.study_uid)))
            except UsageError:
                out.append((f"pacs://{self.node.name}/?", 0, 0, "", "a study whose UID is not a DICOM UID"))
                continue
            out.append((str(addr), 0, 0, addr.study_uid, h.fingerprint()))
        return out

    def refresh(self, state: Path, workers: int | None = None) -> DiscoveryUpdate:
        """The studies the query finds now, and what changed since the last run on the same results."""
        return refresh_listed(self.key, self.listing(), state)

    def save(self, state: Path, update: DiscoveryUpdate) -> None:
        save_discovery(state, self.key, update)
