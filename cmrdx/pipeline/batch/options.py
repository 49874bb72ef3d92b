"""A batch run's options and summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmrdx.pipeline.batch.engine import Engine
from cmrdx.vocab import DEFAULT_BANKS

ENGINES = ("local", "ray")


@dataclass
class BatchOptions:
    model: str | None = None
    banks: Sequence[str] = DEFAULT_BANKS
    device: str = "auto"
    workers: int | None = None  # reader processes; default: one per core (the encoder thread mostly waits)
    batch_size: int = 4
    max_in_flight: int | None = None  # prepared studies held at once; default 2 x workers + batch
    engine: str | Engine = "local"  # "local", "ray", or an Engine
    ray_address: str | None = None
    limit: int | None = None  # stop after this many new studies (tests, trial runs)


@dataclass
class BatchSummary:
    total: int
    done_before: int
    ok: int
    failed: dict[str, int]
    seconds: float
    prepare_seconds: float  # summed over workers
    encode_seconds: float
    out: Path
    duplicates: int = 0
    files_skipped: dict[str, int] = field(default_factory=dict)

    @property
    def studies_per_s(self) -> float:
        new = self.ok + sum(self.failed.values()) - self.done_before
        return new / self.seconds if self.seconds > 0 else float("nan")
