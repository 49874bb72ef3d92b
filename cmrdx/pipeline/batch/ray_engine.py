"""The Ray engine, for archives one machine cannot score in time (the ``ray`` extra).

CPU tasks read and assemble studies (the same ``prepare_study`` as the local engine), an actor pool holds the
encoder (one actor per GPU when there are GPUs, else one on the CPU), and the run turns each encoded study into
its record with the same builder as the local engine, into the same journal: a Ray run is resumable and its
results identical. Without an address Ray is started on this machine (and stopped after the run).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from cmrdx.errors import CmrdxError
from cmrdx.pipeline.batch.engine import EncodedStudy, EngineJob


def _prepare_row(row: dict[str, Any], recipe: dict[str, Any], shape: tuple[int, ...], headers: str | None,
                 pacs_config: str | None = None) -> dict[str, Any]:
    from cmrdx.pipeline.batch.prepare import prepare_study

    # discovery's header files are on this machine's disk; on a cluster, workers elsewhere read the headers
    # (and a PACS study's workers need the PACS configuration at the same path, or their own default)
    p = prepare_study(row["uid"], list(row["files"]), recipe, headers if headers and os.path.isdir(headers) else None,
                      pacs_config if pacs_config and os.path.isfile(pacs_config) else None)
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

    def __init__(self, model_root: str, device: str, precision: str = "auto"):
        from cmrdx.model.encoder import Encoder

        self.enc = Encoder(model_root, device=device, precision=precision)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["ok"].astype(bool)
        d = self.enc.manifest.embedding_dim
        emb = np.zeros((len(ok), d), np.float32)
        main = np.zeros((len(ok), d), np.float32)
        if ok.any():
            emb[ok], main[ok] = self.enc.encode_studies_main(np.stack(batch["array"][ok]))
        out = {"uid": batch["uid"], "ok": batch["ok"], "embedding": emb, "meta": batch["meta"], "seconds": batch["seconds"]}
        if self.enc.main_output:  # a column of its own only for a model with a finding stream (every batch alike)
            out["main"] = main
        return out


def _encoded(row: dict[str, Any]) -> EncodedStudy:
    """A Ray row back into the engine-neutral form (failures carry their error in ``meta``; ``main`` only from
    a model with a main paths' embedding of its own)."""
    uid, meta, seconds = str(row["uid"]), json.loads(str(row["meta"])), float(row["seconds"])
    if not bool(row["ok"]):
        return EncodedStudy(uid, None, {}, meta, seconds)
    main = np.asarray(row["main"], np.float32) if "main" in row else None
    return EncodedStudy(uid, np.asarray(row["embedding"], np.float32), meta, None, seconds, main)


class RayEngine:
    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, batch_size: int = 4,
                 precision: str = "auto"):
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise CmrdxError("--engine ray needs Ray", hint="pip install 'cmrdx[ray]'") from exc
        self.address = address
        self.workers = workers  # CPUs for a Ray started here (default: all)
        self.batch_size = batch_size
        self.precision = precision  # each actor resolves it on its own device (auto: float16 on a GPU)
        self.prepare_seconds = 0.0
        self.encode_seconds = 0.0  # spent in the actors, not measured here

    def run(self, todo: Sequence[str], job: EngineJob) -> Iterator[EncodedStudy]:
        import ray

        if not todo:
            return
        started = False
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     num_cpus=None if self.address else (self.workers or None), logging_level=logging.WARNING)
            started = True
        try:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            ds: Any = ray.data.from_items([{"uid": u, "files": list(job.studies[u])} for u in todo])
            ds = ds.map(_prepare_row, fn_kwargs={"recipe": job.recipe, "shape": job.encoder.video_shape,
                                                 "headers": job.headers, "pacs_config": job.pacs_config},
                        num_cpus=1)
            ds = ds.map_batches(
                _EncodeActor, fn_constructor_kwargs={"model_root": str(job.encoder.manifest.root),
                                                     "device": "cuda" if gpus else "cpu", "precision": self.precision},
                batch_size=self.batch_size, concurrency=max(1, gpus), num_gpus=1 if gpus else 0, batch_format="numpy",
            )
            for row in ds.iter_rows():
                s = _encoded(row)
                self.prepare_seconds += s.seconds
                yield s
        finally:
            if started:
                ray.shutdown()
