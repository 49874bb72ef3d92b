"""``cmrdx batch ... --store-back NODE``: the DICOM SR of every study a run scored, stored on a PACS node.

After a run, each study scored ok whose SR the node has not stored yet gets one: the study is read again (from
its files, or from its PACS node: the instances the recipe reads, which the run left in the instance cache),
classified again (the embedding and findings of its record) and its SR (``cmrdx.outputs.sr``) handed to the
outbox (``cmrdx.pacs.outbox.store_back``), which keeps a copy until the node has stored it and offers every
pending file again on each flush. What this module keeps, in the run's state folder (``store-back/``):

- ``NODE/<study>-<record>.dcm``: an SR built and not yet seen stored. It is offered again, the same object (one
  SOPInstanceUID), until the node has stored it: a failed store never leads to a second, different SR.
- ``NODE.jsonl``: one line per SR the node stored (``study_uid``, ``record``, ``sop_instance_uid``), appended
  and fsynced; then the built file goes.

A study scored again gets a new SR only if what its SR reports changed (``record_id``). A study that cannot be read again,
an SR the node refuses, a node that cannot be reached: each is reported (``StoreBackReport.pending``, with the
reason) and retried by the next run; nothing is lost silently.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmrdx.errors import CmrdxError
from cmrdx.pipeline.batch.journal import state_dir, state_lock
from cmrdx.pipeline.batch.options import BatchOptions
from cmrdx.pipeline.batch.results import scored_studies, study_source

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.pacs.outbox import Outbox


@dataclass
class StoreBackReport:
    """What a store-back did for ``node``: the studies whose SR it stored now, how many an earlier run had
    stored, and the studies whose SR is not stored (yet), each with the reason; ``error``: why the node could
    not be reached at all, else None."""

    node: str
    stored: list[str] = field(default_factory=list)
    before: int = 0
    pending: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.pending


def record_id(rec: dict[str, Any]) -> str:
    """What a study's SR reports, in short: the model, the series its input came from and the call on each
    finding. A study scored again with the same outcome (an SR series more on the PACS, a file touched) keeps the
    SR it has; another outcome (another series used, a call changed) gets a new SR. Scores alone never make a new
    SR: they move in the last digits with the encoder's batch."""
    calls = sorted((fid, f.get("call")) for fid, f in rec.get("findings", {}).items())
    key = json.dumps([rec.get("model_sha256"), rec.get("series_used", []), calls], separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _study_key(uid: str) -> str:
    # UIDs come from the archive's headers: hashed, never used as a file name
    return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:24]


class _StoredLog:
    """``store-back/NODE.jsonl``: (study, record) pairs whose SR the node stored. A torn or damaged line (a kill,
    a disk error) is ignored: its SR is offered again, and the node keeps one object per SOPInstanceUID."""

    def __init__(self, path: Path):
        self.path = path
        self.done: set[tuple[str, str]] = set()
        try:
            lines = path.read_bytes().split(b"\n")
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                d = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(d, dict) and isinstance(d.get("study_uid"), str) and isinstance(d.get("record"), str):
                self.done.add((d["study_uid"], d["record"]))

    def add(self, uid: str, record: str, sop: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as fh:
            data = json.dumps({"study_uid": uid, "record": record, "sop_instance_uid": sop}, separators=(",", ":"))
            fh.write(data.encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.done.add((uid, record))


def _sop_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def _build_sr(uid: str, files: Sequence[str], rec: dict[str, Any], path: Path, opts: BatchOptions,
              pacs_config: str | os.PathLike[str] | None) -> None:
    """Read the study again, classify it, write its SR to ``path`` (atomically)."""
    from cmrdx.model.loader import get_encoder, model_sha256
    from cmrdx.outputs.sr import write_sr
    from cmrdx.pipeline.classify import classify

    enc = get_encoder(opts.model, opts.device)
    if model_sha256(enc.manifest) != rec["model_sha256"]:
        raise CmrdxError(f"study {uid} was scored with another model ({str(rec['model_sha256'])[:12]})",
                         hint="store back with the --model the run used")
    src = study_source(uid, files, rec["source"], enc.manifest.recipe_params(), pacs_config=pacs_config)
    res = classify(src.study, model=opts.model, banks=opts.banks, device=opts.device)
    write_sr(res, src, path)


def store_back_results(out: str | os.PathLike[str], node: str, opts: BatchOptions | None = None, *,
                       pacs_config: str | os.PathLike[str] | None = None, outbox: Outbox | None = None,
                       progress: Callable[[int, int, str], None] | None = None) -> StoreBackReport:
    """Store on the PACS node ``node`` the SR of every study of the run on ``out`` scored ok whose SR it has not
    stored yet (with ``opts``' model, banks and device: those of the run). Holds the run's state folder while it
    works; ``progress(k, total, study_uid)`` as it takes up each study. Raises UsageError for a node not
    configured; every other failure is in the report."""
    from cmrdx.pacs.config import get_node
    from cmrdx.pacs.outbox import store_back

    opts = opts or BatchOptions()
    target = get_node(node, pacs_config)
    out = Path(out)
    sd = state_dir(out)
    report = StoreBackReport(target.name)
    with state_lock(sd):
        studies, records = scored_studies(out)
        folder = sd / "store-back" / target.name
        stored = _StoredLog(sd / "store-back" / f"{target.name}.jsonl")
        offered: dict[str, tuple[str, str, Path]] = {}  # SOPInstanceUID -> (study, record, built file)
        for k, (uid, rec) in enumerate(records.items(), 1):
            if progress is not None:
                progress(k, len(records), uid)
            rid = record_id(rec)
            if (uid, rid) in stored.done:
                report.before += 1
                continue
            path = folder / f"{_study_key(uid)}-{rid}.dcm"
            try:
                if not path.is_file():
                    for old in folder.glob(f"{_study_key(uid)}-*.dcm"):  # an SR of an earlier record
                        old.unlink(missing_ok=True)
                    _build_sr(uid, studies[uid], rec, path, opts, pacs_config)
                offered[_sop_uid(path)] = (uid, rid, path)
            except CmrdxError as exc:
                report.pending[uid] = f"SR not built: {type(exc).__name__}: {exc.message}"
            except Exception as exc:  # noqa: BLE001 - one study's SR never stops the others; the report says why
                report.pending[uid] = f"SR not built: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        flush = store_back(target, [p for _, _, p in offered.values()], outbox)
        report.error = flush.error
        for r in flush.stored:
            hit = offered.pop(r.sop_instance_uid, None)
            if hit is not None:
                uid, rid, path = hit
                stored.add(uid, rid, r.sop_instance_uid)
                path.unlink(missing_ok=True)
                report.stored.append(uid)
        refused = {r.sop_instance_uid: f"{r.status}" + (f": {r.detail}" if r.detail else "") for r in flush.failed}
        for sop, (uid, _, _) in offered.items():
            report.pending[uid] = refused.get(sop) or flush.error or "still in the outbox"
    return report
