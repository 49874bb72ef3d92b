"""What the PACS clients answer with: studies found, transfers, store outcomes. Defined apart from the client
protocol (``cmrdx.pacs.client``) so that the clients import these without importing the module that chooses
between them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class StudyHit:
    """A study a query found: its UID and what the node says about it (counts may be unknown: None)."""

    study_uid: str
    study_date: str = ""
    modalities: tuple[str, ...] = ()
    n_series: int | None = None
    n_instances: int | None = None

    def fingerprint(self) -> str:
        """Changes when the study gains or loses series or instances (a resumed batch scores it again)."""
        return f"{self.n_series}/{self.n_instances}"


@dataclass
class TransferStats:
    """What a retrieve moved: instances written to the cache and their bytes (as stored in the cache)."""

    instances: int = 0
    bytes: int = 0
    seconds: float = 0.0
    requests: int = 0

    def add(self, other: TransferStats) -> None:
        self.instances += other.instances
        self.bytes += other.bytes
        self.seconds += other.seconds
        self.requests += other.requests


@dataclass
class StoreResult:
    """The outcome of storing one file: ``ok``, and the node's status (a DIMSE status or an HTTP answer)."""

    path: Path
    sop_instance_uid: str
    ok: bool
    status: str
    detail: str = ""


# dest(sop_instance_uid) -> where the retrieved instance is to be written (the client writes it atomically).
Destination = Callable[[str], Path]
