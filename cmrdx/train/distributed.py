"""Data-parallel training over processes (``torchrun``, one process per GPU or per CPU share, on one or more
nodes), with the contrastive loss computed on the global batch.

Why the embeddings are gathered: InfoNCE contrasts each report with every study of the batch. Plain DDP would
give each process a loss over its own shard only (B / N negatives instead of B), so N processes would train
another model than one process with the same batch. Here each process embeds its shard, the embeddings of all
processes are gathered (``gather_with_grad``), and every process computes the same loss over the global batch.
The gradient of that loss reaches each process's shard through the gather's backward, which sums what every
process computed for it (all processes hold the same loss, so the sum is N times its gradient); DDP then
averages the parameter gradients over the N processes, which divides the N back out: the update equals one
process's on the whole batch, up to floating-point summation order.

What each process reads: the epoch's permutation of the training rows is drawn from (seed, epoch) as in a
single process; a step's global batch is the same slice of it, and process r takes the r-th contiguous part
(``shard``). Report sampling and shift augmentation are drawn for the whole global batch from (seed, step) in
every process, and each keeps its part. So a run is deterministic for a seed and its batches do not depend on
the number of processes (a run may resume under another count).

Who writes: only rank 0 builds the study cache, trains the vocabulary, writes checkpoints, logs and exports.
The other ranks wait for the cache on a gloo group with a long timeout (``WAIT_TIMEOUT``: building a cache
of thousands of studies takes hours, longer than a collective's default timeout) and then open it. The work
folder must be one that every process sees (a shared file system across nodes): ``check_shared_folder``
refuses to start otherwise.

The functions that need torch import it inside; ``DistInfo`` and ``env_info`` do not.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WAIT_TIMEOUT = _dt.timedelta(hours=24)  # non-zero ranks waiting for rank 0's cache build / vocabulary
STEP_TIMEOUT = _dt.timedelta(minutes=30)  # any other collective: a rank that hangs this long has failed

_wait_group: Any = None  # the gloo group of the long waits (created by ``init``)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world > 1


SINGLE = DistInfo()


def env_info() -> DistInfo:
    """Where torchrun (or any launcher that sets RANK / WORLD_SIZE / LOCAL_RANK) placed this process; one
    process alone otherwise."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is not within WORLD_SIZE {world}")
    return DistInfo(rank=rank, world=world, local_rank=local)


def init(info: DistInfo, device: str) -> None:
    """Join the process group (NCCL on CUDA, gloo on the CPU) and create the gloo group of long waits. On CUDA
    the process's GPU is its local rank's. Nothing for a single process."""
    global _wait_group
    if not info.active:
        return
    import torch
    import torch.distributed as dist

    if device == "cuda":
        if torch.cuda.device_count() <= info.local_rank:
            raise ValueError(f"local rank {info.local_rank} has no GPU (torch sees {torch.cuda.device_count()}); "
                             "start at most one process per GPU (torchrun --nproc-per-node)")
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=STEP_TIMEOUT)
    _wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)


def shutdown(info: DistInfo) -> None:
    global _wait_group
    if not info.active:
        return
    import torch.distributed as dist

    _wait_group = None
    if dist.is_initialized():
        dist.destroy_process_group()


def wait_for_main(info: DistInfo) -> None:
    """Every rank waits here until all arrive (rank 0 after building the cache and the vocabulary)."""
    if not info.active:
        return
    import torch.distributed as dist

    dist.barrier(group=_wait_group)


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (small picklable objects: tokens, schedule decisions)."""
    if not info.active:
        return obj
    import torch.distributed as dist

    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0, group=_wait_group)
    return box[0]


def all_true(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` holds on every rank."""
    if not info.active:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([0 if flag else 1], dtype=torch.int64)
    dist.all_reduce(t, group=_wait_group)
    return int(t.item()) == 0


def check_shared_folder(work: Path, info: DistInfo) -> None:
    """Refuse to start unless every rank sees the work folder rank 0 writes (the cache, vocabulary and
    checkpoints are written once, by rank 0, and read by all)."""
    if not info.active:
        return
    token = broadcast_object(secrets.token_hex(8), info)
    mark = work / f".ranks-see-this-{token}"
    if info.is_main:
        mark.write_text(token)
    wait_for_main(info)
    seen = mark.is_file() and mark.read_text() == token
    ok = all_true(seen, info)
    wait_for_main(info)
    if info.is_main:
        mark.unlink(missing_ok=True)
    if not ok:
        raise ValueError(f"not every process sees the work folder {work}: put it on a file system that every node "
                         "mounts at the same path")


def shard(n: int, info: DistInfo) -> tuple[int, int]:
    """[lo, hi) of this rank's contiguous part of ``n`` items (sizes differ by at most one; the first ranks get
    the larger parts, as ``numpy.array_split``)."""
    q, r = divmod(n, info.world)
    lo = info.rank * q + min(info.rank, r)
    return lo, lo + q + (1 if info.rank < r else 0)


def gather_with_grad(x: Any, info: DistInfo) -> Any:
    """(b, D) on each rank -> (N * b, D) in rank order, on every rank, differentiable: the gradient that reaches
    this rank's ``x`` is the sum over ranks of each rank's gradient for its rows (see the module's docstring).
    Every rank must pass the same ``b``."""
    if not info.active:
        return x
    return _GatherWithGrad.apply(x)


def gather_rows(x: Any, info: DistInfo) -> Any:
    """(b_r, D) on rank r -> all ranks' rows in rank order, without gradient; ``b_r`` may differ (even be 0)."""
    if not info.active:
        return x
    import torch
    import torch.distributed as dist

    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(info.world)]
    dist.all_gather(sizes, n)
    most = int(max(int(s.item()) for s in sizes))
    pad = torch.zeros((most, *x.shape[1:]), dtype=x.dtype, device=x.device)
    pad[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(pad) for _ in range(info.world)]
    dist.all_gather(parts, pad)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def _gather_function() -> Any:
    import torch
    import torch.distributed as dist

    class GatherWithGrad(torch.autograd.Function):
        """all_gather forward; backward all-reduces (sums) the full gradient and keeps this rank's rows. Written
        here rather than ``torch.distributed.nn.functional.all_gather`` (whose backward is an all-to-all on
        gloo): one all-reduce, on every backend."""

        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            x = x.contiguous()
            parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, x)
            ctx.rows = x.shape[0]
            return torch.cat(parts)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            grad = grad.contiguous().clone()
            dist.all_reduce(grad)
            r = dist.get_rank()
            return grad[r * ctx.rows:(r + 1) * ctx.rows]

    return GatherWithGrad


class _Lazy:
    """The autograd function, built on first use (its class statement needs torch)."""

    _fn: Any = None

    def apply(self, x: Any) -> Any:
        if self._fn is None:
            self._fn = _gather_function()
        return self._fn.apply(x)


_GatherWithGrad = _Lazy()


def quiet_other_ranks(info: DistInfo) -> None:
    """On ranks other than 0, keep the logs to warnings and errors, each named with its rank (rank 0 logs the
    run; else N processes print every line N times)."""
    if not info.active or info.is_main:
        return
    logging.disable(logging.INFO)
    make = logging.getLogRecordFactory()
    if getattr(make, "_cmrdx_rank", None) is not None:
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.msg = f"[rank {info.rank}] {record.msg}"
        return record

    factory._cmrdx_rank = info.rank  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
