"""What an engine is: something that prepares (reads, assembles, applies the recipe) and encodes studies, and
yields one ``EncodedStudy`` per study, failed ones included. Engines never build journal records: the run
turns every ``EncodedStudy`` into its record with the one builder (``journal.build_record``), so every engine
writes the same journal.

Engines: ``local`` (a process pool reads, this process encodes; ``local.LocalEngine``) and ``ray`` (Ray Data
tasks read, an actor pool encodes; ``ray_engine.RayEngine``). ``run.get_engine`` picks one by name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from cmrdx.model.encoder import Encoder


@dataclass
class EncodedStudy:
    """One study as an engine hands it back: its embedding and the recipe's notes, or why it failed.

    ``main`` is the main paths' embedding of a model with a finding stream (``Encoder.encode_studies_main``):
    typicality and study -> study search measure distances on it, while the scores compare ``embedding`` with
    the prompts. None means it is ``embedding`` itself (every model without a finding stream)."""

    uid: str
    embedding: np.ndarray | None  # (D,) float32, L2-normalised; None when the study failed
    meta: dict[str, Any] = field(default_factory=dict)  # views_used, series_used, warnings, files_skipped
    error: dict[str, str] | None = None  # {"type", "message"} when the study failed
    seconds: float = 0.0  # time spent preparing it (reading, assembling, recipe)
    main: np.ndarray | None = None  # (D,) float32, L2-normalised; None: the same as ``embedding``

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def distance_embedding(self) -> np.ndarray | None:
        """The embedding that distances to other studies use: ``main`` when the model has one, else
        ``embedding`` (None when the study failed)."""
        return self.main if self.main is not None else self.embedding

    @classmethod
    def failed(cls, uid: str, type_: str, message: str, seconds: float = 0.0) -> EncodedStudy:
        return cls(uid, None, {}, {"type": type_, "message": message}, seconds)

    @classmethod
    def from_prepared(cls, prepared: Mapping[str, Any], embedding: np.ndarray | None,
                      main: np.ndarray | None = None) -> EncodedStudy:
        """From ``prepare_study``'s result and the embedding of its array (None when it failed); ``main``: its main
        paths' embedding, when the model has one."""
        if prepared["error"] is not None:
            return cls(prepared["uid"], None, {}, dict(prepared["error"]), float(prepared["seconds"]))
        return cls(prepared["uid"], np.asarray(embedding, np.float32), dict(prepared["meta"]), None,
                   float(prepared["seconds"]), None if main is None else np.asarray(main, np.float32))


@dataclass
class EngineJob:
    """What every engine is given: the studies' files, the model's recipe and its encoder (loaded in this
    process; an engine may load its own copies elsewhere from ``encoder.manifest.root``)."""

    studies: Mapping[str, Sequence[str]]  # StudyInstanceUID -> its files (a PACS study: its address)
    recipe: dict[str, Any]
    encoder: Encoder
    headers: str | None = None  # discovery's header files, when on this machine's disk
    pacs_config: str | None = None  # the PACS nodes' configuration file for PACS studies (None: the default)


@runtime_checkable
class Engine(Protocol):
    """Prepares and encodes the studies ``todo`` (UIDs of ``job.studies``), yielding one ``EncodedStudy`` per
    study as soon as it is encoded (in any order). After the run, ``prepare_seconds`` (summed over workers)
    and ``encode_seconds`` (time in the encoder, where the engine can measure it) say where the time went."""

    name: str
    prepare_seconds: float
    encode_seconds: float

    def run(self, todo: Sequence[str], job: EngineJob) -> Iterator[EncodedStudy]: ...
