"""Is randomised LGE in the model's input at all? A small CNN trained from scratch on the labels.

bench_lge_ceiling.py showed that the video tower, fine-tuned on the LGE labels at an adaptation's budget, leaves
randomised LGE near chance. That leaves two readings: the input does not carry the scar in a learnable form (the
recipe's sampling, windowing and resolution lose it), or the tower (a small space-time transformer with 12-pixel
patches) does not pick it up at that budget. This separates them: a small 2D convolutional network, shared by every
frame of the input (per-frame features, pooled over the frames by max and mean, then a linear head), is trained
from random weights on the LGE labels of a ``cmrdx train`` study cache, exactly the uint8 frames the model sees,
and scored on randomised and on classic studies of the cache kept out of it. A CNN that learns randomised LGE from
this input says the input holds it and the transformer (or its budget) is what misses it; a CNN that fails too
says the input is where it is lost.

    PYTHONPATH=. .venv/bin/python bench/bench_lge_cnn.py --cache WORK/caches/NAME --epochs 6 --label "whole field"

Appends a row to ``--results`` (a Markdown table); prints the kept-out AUCs after every epoch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name  # noqa: E402


def build(width: int):
    import torch
    from torch import nn

    def block(i: int, o: int, k: int = 3, s: int = 2) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    class FrameCNN(nn.Module):
        """(B, F, S, S) grey in [0, 1] -> (B,) logit: a shared 2D CNN per frame, max and mean over the frames."""

        def __init__(self) -> None:
            super().__init__()
            w = width
            self.body = nn.Sequential(block(1, w, 5, 2), block(w, 2 * w, 3, 1), block(2 * w, 2 * w), block(2 * w, 4 * w),
                                      block(4 * w, 8 * w))
            self.head = nn.Linear(32 * w, 1)

        def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x, real)).squeeze(1)

        def features(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
            """(B, F, S, S), (B, F) bool -> (B, 32 w): per-frame max and mean, then their max and mean over frames."""
            b, f, s, _ = x.shape
            z = self.body(x.reshape(b * f, 1, s, s))
            z = torch.cat([z.amax(dim=(2, 3)), z.mean(dim=(2, 3))], dim=1).reshape(b, f, -1)
            mask = real.view(b, f, 1)
            zmax = z.masked_fill(~mask, -1e4).amax(dim=1)
            zmean = (z * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            return torch.cat([zmax, zmean], dim=1)

    return FrameCNN()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="a study cache folder (WORK/caches/NAME of a cmrdx train run)")
    ap.add_argument("--label", required=True, help="the row's name in the results table")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--val", type=int, default=400, help="randomised studies kept out, from the cache's end")
    ap.add_argument("--val-classic", type=int, default=150, help="classic studies kept out, from the cache's end")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--randomised-only", action="store_true", help="train on the randomised studies alone")
    ap.add_argument("--first-frame", type=int, default=0,
                    help="use the input's frames from this one on (the LGE segments end the montage)")
    ap.add_argument("--train-fraction", type=float, default=1.0,
                    help="train on this share of the training studies (a random subset): does more data help?")
    only.add_argument("--only-classic", action="store_true", help="train on the classic studies alone (a check)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", default="bench/results/lge_cnn.md")
    a = ap.parse_args()

    import torch
    from sklearn.metrics import roc_auc_score

    from cmrdx.train.data import PhantomSource, StudyCache

    folder = Path(a.cache)
    if not (folder / "meta.json").is_file():
        raise SystemExit(f"{folder}: not a study cache (no meta.json); give WORK/caches/NAME of a cmrdx train run")
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    cache = StudyCache(folder)
    if not 0 <= a.first_frame < cache.recipe.frames:
        raise SystemExit(f"--first-frame {a.first_frame}: the cache's input has frames 0-{cache.recipe.frames - 1}")
    src = cache.meta["source"]
    if src.get("kind") != "phantom":
        raise SystemExit(f"{folder}: a cache of {src.get('kind')} studies; this benchmark needs phantom studies")
    n = int(cache.meta["shape"][0])
    y = np.array([int(lab.get("lge", "none") != "none") for lab in cache.meta["labels"]], dtype=np.float32)
    # the source the cache recorded, rebuilt (which studies are classic, and each study's families), and proved the
    # same by describing itself as the cache records it (the generator's version aside)
    phantoms = PhantomSource(n, int(src["seed"]), prevalence=float(src["prevalence"]), vendors=src["vendors"],
                             report_styles=src["report_styles"], matrix=src["matrix"], variety=bool(src.get("variety")),
                             only_families=list(src.get("only_families") or []),
                             exclude_families=list(src.get("exclude_families") or []),
                             classic_fraction=float(src.get("classic_fraction") or 0.0))
    if {k: v for k, v in phantoms.describe().items() if k != "generator"} != {k: v for k, v in src.items()
                                                                             if k != "generator"}:
        raise SystemExit(f"{folder}: its recorded source is not one this cmrdx rebuilds (another generator or wording "
                         "version); rebuild the cache with this version's cmrdx train")
    rand = np.array([not phantoms.is_classic(i) for i in range(n)])
    ok = cache.done & (cache.n_real > 0)
    val_r = np.flatnonzero(rand & ok)[-a.val:]
    val_c = np.flatnonzero(~rand & ok)[-a.val_classic:] if (~rand).any() else np.array([], dtype=int)
    pool = rand & ok if a.randomised_only else (~rand & ok if a.only_classic else ok)
    train = np.setdiff1d(np.flatnonzero(pool), np.concatenate([val_r, val_c]))
    if not 0 < a.train_fraction <= 1:
        raise SystemExit(f"--train-fraction {a.train_fraction}: give a share in (0, 1]")
    if a.train_fraction < 1:
        train = np.sort(np.random.default_rng([a.seed, 7]).choice(train, round(a.train_fraction * len(train)), replace=False))
    model = build(a.width)
    steps = a.epochs * (len(train) // a.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps, pct_start=0.1)
    pos = float(y[train].mean())
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((1 - pos) / max(pos, 1e-6)))
    rng = np.random.default_rng(a.seed)

    def batch(idx: np.ndarray, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        j = np.sort(idx)
        x = torch.from_numpy(np.asarray(cache.videos[j][:, a.first_frame:])).float() / 255.0
        real = (torch.arange(a.first_frame, a.first_frame + x.shape[1]).view(1, -1)
                < torch.from_numpy(cache.n_real[j].astype(np.int64)).view(-1, 1))
        if augment:  # a flip and a shift of up to 6 pixels per study (the adaptations' augment_shift)
            flip = torch.from_numpy(rng.random(len(j)) < 0.5)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            pad = torch.nn.functional.pad(x, (6, 6, 6, 6))
            s = x.shape[-1]
            d = rng.integers(0, 13, size=(2, len(j)))
            x = torch.stack([pad[i, :, d[0, i]:d[0, i] + s, d[1, i]:d[1, i] + s] for i in range(len(j))])
        return x, real

    def predict(idx: np.ndarray) -> np.ndarray:
        model.eval()
        out = []
        with torch.no_grad():
            for k in range(0, len(idx), 32):
                out.append(model(*batch(np.sort(idx[k:k + 32]), False)).numpy())
        return np.concatenate(out)

    def score(idx: np.ndarray) -> float | None:
        if len(idx) == 0 or len(set(y[idx])) < 2:
            return None
        return float(roc_auc_score(y[idx], predict(idx)))

    t0 = time.perf_counter()
    losses: list[float] = []
    curve = []
    step = 0
    for epoch in range(a.epochs):
        order = rng.permutation(train)
        model.train()
        for k in range(0, len(order) - a.batch + 1, a.batch):
            j = order[k:k + a.batch]
            x, real = batch(j, True)
            yy = torch.from_numpy(y[np.sort(j)])
            loss = loss_fn(model(x, real), yy)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
            if step % 20 == 0:
                print(f"epoch {epoch + 1} step {step}/{steps} loss {np.mean(losses[-20:]):.3f} "
                      f"{(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        ar, ac = score(np.sort(val_r)), score(np.sort(val_c))
        curve.append((ar, ac))
        print(f"epoch {epoch + 1}: kept-out randomised {ar}, classic {ac}", flush=True)
    minutes = (time.perf_counter() - t0) / 60
    by_family = family_aucs([phantoms.params_at(int(i)).variety.families() for i in np.sort(val_r)],
                            y[np.sort(val_r)], predict(np.sort(val_r)))
    print("kept-out randomised by family:", by_family, flush=True)
    recipe = cache.recipe
    res = Path(a.results)
    if not res.is_file():
        res.write_text(
            "# Is randomised LGE in the input? A small CNN trained from scratch on the labels\n\n"
            "**Phantoms, not patients.** A small 2D CNN (five strided convolutions, widths w-2w-2w-4w-8w, shared by "
            "every frame; per-frame features pooled over the frames by max and mean; a linear head), trained from "
            "random weights with the LGE labels (any LGE; class-weighted BCE, AdamW, one-cycle schedule, flips and "
            "shifts of up to 6 pixels) on a `cmrdx train` study cache: the uint8 frames the model itself sees. "
            "Scored on randomised and classic studies of the cache kept out of the training (the last of each). "
            "Per epoch: kept-out AUC, randomised / classic.\n\n"
            f"Machine: {cpu_name()}, torch on the CPU, {a.threads} threads.\n\n"
            "Command:\n\n```\nPYTHONPATH=. .venv/bin/python bench/bench_lge_cnn.py --cache WORK/caches/NAME "
            "--epochs E --label NAME\n```\n\n"
            "| cache | input | trained on | kept-out randomised (LGE) / classic (LGE) | AUC per epoch, randomised / "
            "classic | final randomised | final classic | final randomised by family (positives) | steps x batch | "
            "w | minutes |\n"
            "|---|---|---|---|---|---:|---:|---|---:|---:|---:|\n")
    crop = f"cut to {recipe.heart_crop_mm:g} mm around the heart" if recipe.heart_crop_mm else "whole field of view"
    fmt = ", ".join(f"{r:.3f} / {c:.3f}" if c is not None else f"{r:.3f}" for r, c in curve)
    fin_r, fin_c = curve[-1]
    row = (f"| {a.label} | {recipe.frames} x {recipe.image_size} px, {crop} | "
           f"{'randomised' if a.randomised_only else 'classic' if a.only_classic else 'randomised + classic'} "
           f"({len(train)}), frames {a.first_frame}-{recipe.frames - 1} | "
           f"{len(val_r)} ({int(y[val_r].sum())}) / {len(val_c)} ({int(y[val_c].sum()) if len(val_c) else 0}) | "
           f"{fmt} | {fin_r:.3f} | {'-' if fin_c is None else f'{fin_c:.3f}'} | "
           f"{'; '.join(f'{k} {v:.2f} ({m})' for k, (v, m) in by_family.items())} | {step} x {a.batch} | {a.width} | "
           f"{minutes:.1f} |\n")
    with res.open("a") as fh:
        fh.write(row)
    print(row, end="")


def family_aucs(families: list[list[str]], y: np.ndarray, s: np.ndarray, least: int = 5) -> dict[str, tuple[float, int]]:
    """AUC of the positives of each scar pattern against every negative, and of each LGE contrast within that
    contrast's own studies; family -> (AUC, positives), for families with at least ``least`` positives."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, tuple[float, int]] = {}
    names = sorted({f for fs in families for f in fs if f.startswith(("scar:", "lge:"))})
    for name in names:
        has = np.array([name in fs for fs in families])
        keep = (has | (y == 0)) if name.startswith("scar:") else has
        npos = int((has & (y == 1)).sum())
        if npos >= least and int(((y == 0) & keep).sum()) >= least:
            out[name] = (float(roc_auc_score(y[keep], s[keep])), npos)
    return out


if __name__ == "__main__":
    main()
