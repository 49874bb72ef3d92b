"""Train a model on a lent GPU machine in one call, then check it zero-shot on held-out phantoms.

The GPU machine has torch but neither the ONNX exporter's versions nor pydicom, and it keeps nothing after the
call: this script renders the phantom studies there (``workers`` processes), trains within a wall-clock budget,
writes ``trained.pt`` (weights, vocabulary, config, provenance: ``Trainer.save_trained``) and a quick zero-shot
check on held-out phantoms rendered to arrays (another seed, the held-out vendor and report style). The ONNX
export and the benchmark through real DICOM files run afterwards on any machine:

    python bench/train_gpu.py --config cmrdx/train/configs/phantom-small-v2.yaml --work /tmp/w --out OUT --deadline 440
    cmrdx train --export-trained OUT/trained.pt --out models/cmrdx-phantom-small
    cmrdx eval all --model cmrdx-phantom-small --bank cmr-findings --data HELDOUT_ARCHIVE

Only numpy, torch, tokenizers, pyyaml, rich and scikit-learn are needed (what the GPU image has).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("train_gpu")


def auc(scores, labels) -> float:
    """ROC AUC (scikit-learn), NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, bool)
    return float(roc_auc_score(y, scores)) if 0 < y.sum() < len(y) else float("nan")


def zero_shot(tr, cache, bank_path: Path) -> dict:
    """Zero-shot AUC per finding (mean cosine with the bank's prompts) and by severity on a cache of studies."""
    import torch
    import yaml

    from cmrdx.vocab import SEVERITY_LEVELS, Severity

    rows = cache.valid
    tr.model.eval()
    with torch.no_grad():
        v = torch.cat([tr.model.encode_video(tr.videos(rows[i:i + 64], cache=cache)).float()
                       for i in range(0, len(rows), 64)])
        v = torch.nn.functional.normalize(v, dim=1).cpu().numpy()
        bank = yaml.safe_load(bank_path.read_text())
        out = {}
        for f in bank["findings"]:
            ids, mask = tr.tokenize(list(f["prompts"]))
            t = tr.model.encode_text(ids.to(tr.device), mask.to(tr.device)).float()
            t = torch.nn.functional.normalize(t, dim=1).cpu().numpy()
            score = (v @ t.T).mean(1)
            sev = np.array([cache.meta["labels"][int(r)].get(f["id"], Severity.NONE) for r in rows])
            pos = sev != Severity.NONE
            out[f["id"]] = {"auc": round(auc(score, pos), 3), "positives": int(pos.sum()),
                            "by_severity": {str(s): round(auc(score[(sev == s) | ~pos], sev[(sev == s) | ~pos] == s), 3)
                                            for s in SEVERITY_LEVELS}}
        # study-to-report retrieval on the held-out phrasing: rank of each study's own report
        ids, mask = tr.tokenize(cache.reports(rows))
        t = torch.cat([tr.model.encode_text(ids[i:i + 64].to(tr.device), mask[i:i + 64].to(tr.device)).float()
                       for i in range(0, len(rows), 64)])
        t = torch.nn.functional.normalize(t, dim=1).cpu().numpy()
        sim = v @ t.T
        rank = (sim > np.diag(sim)[:, None]).sum(1) + 1
        out["_retrieval"] = {"n": int(len(rows)), "r@1": float((rank <= 1).mean()), "r@10": float((rank <= 10).mean()),
                             "median_rank": float(np.median(rank))}
    tr.model.train()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--work", required=True, help="cache + checkpoint folder")
    ap.add_argument("--out", required=True, help="folder for trained.pt and zeroshot.json")
    ap.add_argument("--deadline", type=float, default=470, help="seconds from start by which everything is written")
    ap.add_argument("--heldout", type=int, default=300, help="held-out phantom studies for the zero-shot check")
    ap.add_argument("--heldout-seed", type=int, default=11)
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value (YAML values)")
    a = ap.parse_args()
    t_start = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    import torch
    import yaml

    from cmrdx.train.data import PhantomSource, build_cache
    from cmrdx.train.trainer import TrainConfig, Trainer

    over = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.set)}
    cfg = TrainConfig.from_file(a.config, **over)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log.info("torch %s, %d CPUs; config %s", torch.__version__, os.cpu_count(), json.dumps(cfg.identity()))

    # the held-out check set first (small), so that the training budget is what is left
    r = cfg.recipe()
    held = PhantomSource(a.heldout, a.heldout_seed, prevalence=cfg.prevalence, vendors=("philips",),
                         report_styles=("telegraphic",))
    hcache = build_cache(held, r, Path(a.work) / "heldout", progress=False, workers=cfg.workers)
    log.info("held-out check set: %d studies in %.0f s", len(hcache.valid), time.perf_counter() - t_start)

    tr = Trainer(cfg, a.work, progress=False)  # caches first, then starts CUDA (workers fork before it)
    gpu = tr.device_name()
    log.info("training on %s", gpu)
    log.info("training set: %d pairs (+%d validation) cached in %.0f s; skipped %s", len(tr.train_idx),
             len(tr.val_idx), tr.cache_seconds, tr.cache.skipped)
    left = a.deadline - (time.perf_counter() - t_start) - 40  # 40 s for saving and the check
    tr.cfg.max_train_seconds = min(cfg.max_train_seconds or left, left)
    try:
        res = tr.run()
    finally:  # whatever happens, the weights reached so far come back
        tr.save_trained(out / "trained.pt")
    log.info("trained %d of %d planned steps in %.0f s (%.3f s/step); loss %.3f -> %.3f; val %s", res.steps,
             tr.planned_steps, res.seconds, res.seconds / max(1, res.steps), np.mean(res.losses[:20]),
             np.mean(res.losses[-20:]), [round(v, 3) for v in res.val_losses])
    if torch.cuda.is_available():
        log.info("peak GPU memory %.1f GB", torch.cuda.max_memory_allocated() / 1e9)
    zs = zero_shot(tr, hcache, Path(__file__).resolve().parents[1] / "prompts" / "cmr-findings.yaml")
    zs["_run"] = {"gpu": gpu, "steps": res.steps, "planned_steps": tr.planned_steps, "train_seconds": round(res.seconds, 1),
                  "pairs": len(tr.train_idx), "cache_seconds": round(tr.cache_seconds, 1),
                  "total_seconds": round(time.perf_counter() - t_start, 1)}
    (out / "zeroshot.json").write_text(json.dumps(zs, indent=1))
    for k, v in zs.items():
        log.info("%s %s", k, v)


if __name__ == "__main__":
    main()
