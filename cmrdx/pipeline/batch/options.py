"""A batch run's options and summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmrdx.errors import CmrdxError
from cmrdx.pipeline.batch.engine import Engine
from cmrdx.vocab import DEFAULT_BANKS

ENGINES = ("local", "ray")


@dataclass
class BatchOptions:
    model: str | None = None
    banks: Sequence[str] = DEFAULT_BANKS
    device: str = "auto"
    precision: str = "auto"  # video precision: auto, float32, float16, int8 (cmrdx.model.encoder.resolve_precision)
    workers: int | None = None  # reader processes; default: one per core (the encoder thread mostly waits)
    batch_size: int = 4
    max_in_flight: int | None = None  # prepared studies held at once; default 2 x workers + batch
    engine: str | Engine = "local"  # "local", "ray", or an Engine
    ray_address: str | None = None
    limit: int | None = None  # stop after this many new studies (tests, trial runs)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Counts a run could never finish with (no study per encoder call, no reader) are refused here, at
        construction, and again when a run starts (a field may have been set since)."""
        for name, least, optional in (("batch_size", 1, False), ("workers", 1, True), ("max_in_flight", 1, True),
                                      ("limit", 0, True)):
            value = getattr(self, name)
            if value is None and optional:
                continue
            # bool is an int to Python, never a count here
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                flag = "--" + name.replace("_", "-")
                raise CmrdxError(f"BatchOptions.{name} must be a whole number of at least {least}, not {value!r}",
                                 hint=f"give {flag} {least} or more" + (" (or leave it out for the default)"
                                                                         if optional else ""))


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
    journal_skipped: int = 0  # corrupt journal lines skipped (their studies scored again)
    # The archive since the earlier run on the same results (``resumed``): studies added and changed (both scored
    # in this run) and removed (dropped from the results).
    resumed: bool = False
    added: int = 0
    changed: int = 0
    removed: int = 0
    source: str = ""  # the archive folder, or the PACS query (``pacs://NODE?Keyword=value&...``)
    # a PACS source: instances the studies scored in this run needed, retrieved (not cached) and their bytes
    transfer: dict[str, int] = field(default_factory=dict)
    device: str = ""  # what encoded: "cpu (int8)" (the local encoder; Ray actors resolve "auto" on their own device)
    precision_note: str = ""  # why that precision

    @property
    def studies_per_s(self) -> float:
        new = self.ok + sum(self.failed.values()) - self.done_before
        return new / self.seconds if self.seconds > 0 else float("nan")
