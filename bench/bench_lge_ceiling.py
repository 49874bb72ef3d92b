"""Can the video tower learn randomised LGE when it is given the labels, in the compute an adaptation gets?

The contrastive adaptations leave LGE on randomised phantoms at chance and their embedding's linear probe near it
(bench/results/probe.md). This asks whether the cause is the supervision (report sentences, one finding among
eight, in a contrastive loss) or the input and the tower: a finished training stage's video tower (``trained.pt``),
with a linear head on its study embedding, is fine-tuned on the LGE labels of its own study cache (binary: any
LGE), every video weight trained, for a fixed number of steps; the AUC on randomised studies of the same cache kept
out of the fine-tuning (the last ``--val`` of them) is compared with a linear probe of the frozen embedding on the
same split. Direct labels that also fail within the budget point at the input (or the budget); direct labels that
succeed point at the contrastive supervision.

    PYTHONPATH=. .venv/bin/python bench/bench_lge_ceiling.py --stage WORK/1-adapt --steps 60 --label "dev2"

WORK: a ``cmrdx train`` work folder (the stage's ``trained.pt``; the study cache under ``WORK/caches``).
Appends a row to ``--results`` (a Markdown table).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_probe import cv_probe_auc  # noqa: E402
from machine import cpu_name  # noqa: E402


def load_stage(stage: Path, what: str):
    """(TrainConfig, CMRClip with the stage's weights, its run's StudyCache) of a finished ``cmrdx train`` stage
    folder of a run on phantoms; a message naming the folder and ``what`` to give instead when it is not one."""
    import torch

    from cmrdx.train.data import StudyCache
    from cmrdx.train.model import CMRClip
    from cmrdx.train.trainer import TrainConfig

    if not (stage / "trained.pt").is_file():
        raise SystemExit(f"{stage}: no trained.pt; give {what}")
    ck = torch.load(stage / "trained.pt", map_location="cpu", weights_only=False)
    cfg = TrainConfig(**{k: v for k, v in ck["config"].items() if k in TrainConfig.__dataclass_fields__})
    model = CMRClip(cfg.model_config(int(ck["model"]["text_model.embeddings.word_embeddings.weight"].shape[0])))
    model.load_state_dict(ck["model"])
    caches = sorted((stage.parent / "caches").iterdir()) if (stage.parent / "caches").is_dir() else []
    if len(caches) != 1:
        raise SystemExit(f"{stage.parent / 'caches'}: expected one study cache, found {len(caches)}")
    cache = StudyCache(caches[0])
    if cache.meta["source"].get("kind") != "phantom":  # the benchmarks split classic from randomised phantoms
        raise SystemExit(f"{caches[0]}: a cache of {cache.meta['source'].get('kind')} studies; give a stage of a run "
                         "trained on phantoms")
    return cfg, model, cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", required=True, help="a finished training stage folder (holding trained.pt)")
    ap.add_argument("--label", required=True, help="the row's name in the results table")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--val", type=int, default=400, help="randomised studies kept out, from the cache's end")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", default="bench/results/lge_ceiling.md")
    a = ap.parse_args()

    import torch

    from cmrdx.train.trainer import video_input

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    cfg, model, cache = load_stage(Path(a.stage), "a finished stage folder (WORK/1-adapt)")
    src = cfg.source()
    n = int(cache.meta["shape"][0])
    y = np.array([int(lab.get("lge", "none") != "none") for lab in cache.meta["labels"]], dtype=np.float32)
    rand = np.array([not src.is_classic(i) for i in range(n)])
    val = np.flatnonzero(rand)[-a.val:]
    train = np.setdiff1d(np.arange(n), val)
    recipe = cache.recipe

    def embed(idx: np.ndarray) -> np.ndarray:
        model.eval()
        out = []
        with torch.no_grad():
            for k in range(0, len(idx), 32):
                j = idx[k:k + 32]
                x = video_input(torch.from_numpy(np.asarray(cache.videos[j])), torch.from_numpy(cache.n_real[j].astype(np.int64)), recipe)
                out.append(model.encode_video(x).numpy())
        return np.concatenate(out)

    t0 = time.perf_counter()
    # the frozen embedding's probe: fitted on randomised training studies, scored on the kept-out ones
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    fit = np.flatnonzero(rand[train])[:800]
    fit = train[fit]
    e_fit, e_val = embed(fit), embed(val)
    frozen = float(roc_auc_score(y[val], LogisticRegression(max_iter=5000).fit(e_fit, y[fit]).decision_function(e_val)))
    cv = cv_probe_auc(e_val, y[val].astype(int))
    head = torch.nn.Linear(e_val.shape[1], 1)
    params = [p for name, p in model.named_parameters() if not name.startswith(("text_model", "txt_proj"))]
    opt = torch.optim.AdamW([{"params": params, "lr": a.lr}, {"params": head.parameters(), "lr": 10 * a.lr}],
                            weight_decay=0.05)
    pos = float(y[train].mean())
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((1 - pos) / max(pos, 1e-6)))
    rng = np.random.default_rng(a.seed)
    losses = []
    for step in range(a.steps):
        model.train()
        j = np.sort(rng.choice(train, a.batch, replace=False))
        x = video_input(torch.from_numpy(np.asarray(cache.videos[j])), torch.from_numpy(cache.n_real[j].astype(np.int64)), recipe)
        logit = head(model.encode_video(x)).squeeze(1)
        loss = loss_fn(logit, torch.from_numpy(y[j]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 10 == 0:
            print(f"step {step + 1}/{a.steps} loss {np.mean(losses[-10:]):.3f}", flush=True)
    model.eval()
    with torch.no_grad():
        s_val = head(torch.from_numpy(embed(val))).squeeze(1).numpy()
    tuned = float(roc_auc_score(y[val], s_val))
    minutes = (time.perf_counter() - t0) / 60
    res = Path(a.results)
    if not res.is_file():
        res.write_text(
            "# Randomised LGE with the labels: a ceiling for the video tower\n\n"
            "**Phantoms, not patients.** A finished stage's video tower with a linear head, fine-tuned on the LGE "
            "labels of its own study cache (every video weight; AdamW, head at 10x the rate; class-weighted BCE), "
            "then scored on randomised studies of the cache kept out of it. 'frozen probe': logistic regression on "
            "the stage's own embedding (fitted on 800 randomised training studies); 'probe, CV on the kept-out': "
            "the cross-validated probe of bench_probe.py on the kept-out studies alone. Input: the stage's recipe, "
            "as its cache holds it.\n\n"
            f"Machine: {cpu_name()}, torch on the CPU, {a.threads} threads.\n\n"
            "Command:\n\n```\nPYTHONPATH=. .venv/bin/python bench/bench_lge_ceiling.py --stage WORK/1-adapt "
            f"--steps {a.steps} --batch {a.batch} --label NAME\n```\n\n"
            "| stage | input | kept-out randomised (LGE) | frozen probe | probe, CV on the kept-out | fine-tuned "
            "on the labels | steps x batch | loss, first 10 -> last 10 | minutes |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    crop = f"cut to {recipe.heart_crop_mm:g} mm around the heart" if recipe.heart_crop_mm else "whole field of view"
    row = (f"| {a.label} | {recipe.frames} x {recipe.image_size} px, {crop} | {len(val)} ({int(y[val].sum())}) | "
           f"{frozen:.3f} | {cv if cv is None else round(cv, 3)} | {tuned:.3f} | {a.steps} x {a.batch} | "
           f"{np.mean(losses[:10]):.3f} -> {np.mean(losses[-10:]):.3f} | {minutes:.1f} |\n")
    with res.open("a") as fh:
        fh.write(row)
    print(row, end="")


if __name__ == "__main__":
    main()
