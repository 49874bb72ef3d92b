"""The batch pipeline on Ray Data, for archives one machine cannot score in time (the ``ray`` extra).

CPU tasks read and assemble studies (the same ``prepare_study`` as the local engine), an actor pool holds
the encoder (one actor per GPU when there are GPUs, else one on the CPU), and the driver scores and commits
each study to the same journal as the local engine, so a Ray run is resumable and its results identical.
Without ``--address`` Ray is started on this machine.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _prepare_row(row: dict[str, Any], recipe: dict[str, Any], shape: tuple[int, ...], headers: str | None) -> dict[str, Any]:
    from cmrdx.pipeline.batch import prepare_study

    # discovery's header files are on this machine's disk; on a cluster, workers elsewhere read the headers
    p = prepare_study(row["uid"], list(row["files"]), recipe, headers if headers and os.path.isdir(headers) else None)
    ok = p["error"] is None
    return {
        "uid": p["uid"],
        "ok": ok,
        # Ray Data columns need one dtype and shape: failed studies carry zeros and ok=False
        "array": p["array"] if ok else np.zeros(shape, np.float32),
        "meta": json.dumps(p["meta"] if ok else p["error"]),
        "seconds": float(p["seconds"]),
    }


class _EncodeActor:
    """Loads the encoder once per actor and embeds batches of prepared studies."""

    def __init__(self, model_root: str, device: str):
        from cmrdx.model.encoder import Encoder

        self.enc = Encoder(model_root, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["ok"].astype(bool)
        d = self.enc.manifest.embedding_dim
        emb = np.zeros((len(ok), d), np.float32)
        if ok.any():
            emb[ok] = self.enc.encode_studies(np.stack(batch["array"][ok]))
        return {"uid": batch["uid"], "ok": batch["ok"], "embedding": emb, "meta": batch["meta"], "seconds": batch["seconds"]}


def run_ray(todo, disc, archive: Path, opts, scorer, journal, progress, total, headers: str | None = None) -> float:
    try:
        import ray
    except ImportError as exc:
        from cmrdx.errors import CmrdxError

        raise CmrdxError("--engine ray needs Ray", hint="pip install 'cmrdx[ray]'") from exc
    from cmrdx.pipeline.batch import _b64  # noqa: PLC2701 - same record encoding as the local engine
    from cmrdx.zeroshot.scoring import score_bank

    if not todo:
        return 0.0
    started = False
    if not ray.is_initialized():
        ray.init(address=opts.ray_address, include_dashboard=False, log_to_driver=False,
                 num_cpus=None if opts.ray_address else (opts.workers or None), logging_level=logging.WARNING)
        started = True
    try:
        shape = scorer.enc.video_shape
        gpus = int(ray.cluster_resources().get("GPU", 0))
        ds = ray.data.from_items([{"uid": u, "files": disc.studies[u]} for u in todo])
        ds = ds.map(_prepare_row, fn_kwargs={"recipe": scorer.recipe, "shape": shape, "headers": headers}, num_cpus=1)
        ds = ds.map_batches(
            _EncodeActor, fn_constructor_kwargs={"model_root": str(scorer.enc.manifest.root),
                                                 "device": "cuda" if gpus else "cpu"},
            batch_size=opts.batch_size, concurrency=max(1, gpus), num_gpus=1 if gpus else 0, batch_format="numpy",
        )
        prep_seconds = 0.0
        done = total - len(todo)
        model, sha = scorer.enc.manifest.name, scorer.sha
        from cmrdx.pipeline.batch import JOURNAL_SCHEMA, _source_folder

        for row in ds.iter_rows():
            uid = str(row["uid"])
            meta = json.loads(str(row["meta"]))
            prep_seconds += float(row["seconds"])
            rec: dict[str, Any] = {"schema": JOURNAL_SCHEMA, "study_uid": uid,
                                   "source": _source_folder(disc.studies[uid], archive), "n_files": len(disc.studies[uid]),
                                   "duplicate_files": disc.duplicates.get(uid, 0), "model": model, "model_sha256": sha}
            if not bool(row["ok"]):
                rec.update(status="failed", error=meta)
            else:
                e = np.asarray(row["embedding"], np.float32)
                findings = {}
                for bank, temb in zip(scorer.banks, scorer.text_emb):
                    for fs in score_bank(e, bank, temb, model, sha):
                        findings[fs.id] = {"score": round(fs.score, 6), "call": fs.call, "bank": bank.name}
                rec.update(status="ok", findings=findings, embedding=_b64(e), **meta)
            journal.commit(rec)
            done += 1
            if progress:
                progress(done, total, uid)
        return prep_seconds
    finally:
        if started:
            ray.shutdown()
