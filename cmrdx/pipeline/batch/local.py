"""The local engine: worker processes prepare studies, this process encodes them in batches, decode overlapped
with encoding. Memory stays bounded: at most ``max_in_flight`` prepared studies are held at once. A worker that
dies (out of memory, a crashing decoder) fails its study only: the pool is replaced and the others re-queued."""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from cmrdx import config
from cmrdx.errors import CmrdxError
from cmrdx.pipeline.batch.engine import EncodedStudy, EngineJob
from cmrdx.pipeline.batch.prepare import exit_with_parent, prepare_study


class LocalEngine:
    name = "local"

    def __init__(self, workers: int | None = None, batch_size: int = 4, max_in_flight: int | None = None):
        if batch_size < 1 or (workers is not None and workers < 1) or (max_in_flight is not None and max_in_flight < 1):
            # a run with no study per encoder call, or no reader, would never end
            raise CmrdxError(f"LocalEngine: batch_size, workers and max_in_flight must be at least 1 "
                             f"(got {batch_size}, {workers}, {max_in_flight})", hint="give counts of 1 or more")
        self.workers = workers  # reader processes; default: one per core (the encoder thread mostly waits)
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight  # default 2 x workers + batch
        self.prepare_seconds = 0.0
        self.encode_seconds = 0.0

    def _encode(self, ready: list[dict[str, Any]], job: EngineJob, force: bool) -> Iterator[EncodedStudy]:
        """Encode full batches of ``ready`` (every study left when ``force``), removing them from it."""
        while ready and (force or len(ready) >= self.batch_size):
            chunk, ready[:] = ready[: self.batch_size], ready[self.batch_size:]
            ok = [p for p in chunk if p["error"] is None]
            embs: Any = ()
            mains: Any = None  # None: the model has no main paths' embedding of its own
            if ok:
                t0 = time.perf_counter()
                embs, main = job.encoder.encode_studies_main(np.stack([p["array"] for p in ok]))
                mains = None if main is embs else main
                self.encode_seconds += time.perf_counter() - t0
            emb_of = {p["uid"]: i for i, p in enumerate(ok)}
            for p in chunk:
                i = emb_of.get(p["uid"])
                yield EncodedStudy.from_prepared(p, None if i is None else embs[i],
                                                 None if i is None or mains is None else mains[i])

    def run(self, todo: Sequence[str], job: EngineJob) -> Iterator[EncodedStudy]:
        workers = self.workers or config.cpu_count()
        max_in_flight = self.max_in_flight or (2 * workers + self.batch_size)
        ready: list[dict[str, Any]] = []
        it: Iterator[str] = iter(todo)
        ex = cf.ProcessPoolExecutor(max_workers=workers, initializer=exit_with_parent)
        inflight: dict[cf.Future, str] = {}
        try:
            while True:
                while len(inflight) < max_in_flight:
                    uid = next(it, None)
                    if uid is None:
                        break
                    inflight[ex.submit(prepare_study, uid, job.studies[uid], job.recipe, job.headers,
                                       job.pacs_config)] = uid
                if not inflight:
                    break
                finished, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    uid = inflight.pop(fut, None)
                    if uid is None:  # re-queued after a pool crash
                        continue
                    try:
                        p = fut.result()
                    except cf.process.BrokenProcessPool:
                        # a worker died (out of memory, a crashing decoder): record the study, start a new pool
                        p = {"uid": uid, "array": None, "meta": {}, "seconds": 0.0,
                             "error": {"type": "WorkerCrash", "message": "the reading process died on this study"}}
                        for other, ouid in list(inflight.items()):
                            inflight.pop(other)
                            it = iter([ouid, *it])
                        ex.shutdown(cancel_futures=True)
                        ex = cf.ProcessPoolExecutor(max_workers=workers, initializer=exit_with_parent)
                    self.prepare_seconds += p["seconds"]
                    ready.append(p)
                yield from self._encode(ready, job, force=not inflight)
            yield from self._encode(ready, job, force=True)
        finally:
            ex.shutdown(cancel_futures=True)
