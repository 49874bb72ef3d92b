"""One process of a data-parallel test run, started by torchrun from tests/test_train_distributed.py:

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/helpers/ddp_train.py \\
        CONFIG.json WORK RESULT.json [--kill-at STEP] [--checks]

Trains ``TrainConfig`` (from CONFIG.json) in WORK through ``cmrdx.train.trainer.train`` (what ``cmrdx train``
runs), with no export. ``--kill-at STEP``: rank 0 sends itself SIGKILL when step STEP ends (a run killed without
warning, between two checkpoints). ``--checks``: first check the collectives on known tensors. Rank 0 writes
RESULT.json (losses, validation losses, steps, check results).

Also ``fixed_vocab``: a vocabulary that is the same in every process (WordPiece training breaks ties in hash
order), written into a work folder before a run so that runs compared with each other tokenise alike.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
from pathlib import Path
from typing import Any


def fixed_vocab(texts: list[str], out: Path) -> Path:
    """The specials, every character (alone and as a continuation piece) and every whole word of ``texts``."""
    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    words = sorted({w for t in texts for w in re.findall(r"[a-z0-9]+|[^a-z0-9\s]", t.lower())})
    chars = sorted({c for w in words for c in w})
    vocab = [*specials, *chars, *(f"##{c}" for c in chars), *(w for w in words if len(w) > 1)]
    out.write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    return out


def checks() -> dict[str, Any]:
    """The collectives on known tensors: rows gathered in rank order whatever their count per rank, and the
    gradient that reaches a rank's rows through ``gather_with_grad`` (the sum of every rank's)."""
    import torch

    from cmrdx.train import distributed as d

    info = d.env_info()
    d.init(info, "cpu")
    r, w = info.rank, info.world
    uneven = d.gather_rows(torch.full((r + 1, 2), float(r)), info)  # rank r holds r + 1 rows of r
    empty = d.gather_rows(torch.zeros((0 if r == 0 else 2, 3)), info)  # rank 0 holds none
    x = torch.full((2, 3), float(r + 1), requires_grad=True)
    g = d.gather_with_grad(x, info)
    c = torch.arange(g.numel(), dtype=torch.float32).view_as(g)  # the same weights on every rank
    (c * g).sum().backward()
    return {"uneven": uneven.tolist(), "empty_rows": int(empty.shape[0]), "gathered": g.detach().tolist(),
            "grad": x.grad.tolist(), "weights": c.tolist(), "world": w, "shards": [d.shard(7, d.DistInfo(k, w))
                                                                                  for k in range(w)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("work")
    ap.add_argument("result")
    ap.add_argument("--kill-at", type=int)
    ap.add_argument("--checks", action="store_true")
    a = ap.parse_args()

    from cmrdx.train.distributed import env_info
    from cmrdx.train.trainer import TrainConfig, train

    info = env_info()
    out: dict[str, Any] = {"world": info.world}
    if a.checks:
        out["checks"] = checks()

    def on_step(step: int, loss: float) -> None:
        if a.kill_at is not None and step == a.kill_at and info.is_main:
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = TrainConfig.from_dict(json.loads(Path(a.config).read_text()))
    res = train(cfg, out=None, work=a.work, progress=False, on_step=on_step)
    if info.is_main:
        out.update(steps=res.steps, losses=res.losses, val_losses=res.val_losses, n_train=res.n_train, n_val=res.n_val)
        Path(a.result).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
