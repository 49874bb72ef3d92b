"""Zero-shot AUC of a training checkpoint on the selection phantoms: how cmrdx-phantom-small's stages were chosen.

The selection phantoms are rendered straight to arrays (no DICOM), with the held-out benchmark's vendor (Philips)
and report style (telegraphic) but other seeds (11: 240 studies, 12: 400), so that choices between training
variants never look at the DICOM archive that `cmrdx eval` reports. For each finding of a bank: the zero-shot AUC
of the mean cosine over its prompts (the reference protocol), with --per-prompt each prompt's own AUC, and with
--probe a 5-fold logistic-regression probe on the embeddings (what the video side carries, whatever the text).

Usage (the `train` extra; the caches are built once, about 0.5 s a study on 2 cores):
    .venv/bin/python bench/select_zeroshot.py WORK/checkpoint.pt [--per-prompt] [--probe] [--cache bench/out/select]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SETS = ((11, 240), (12, 400))  # (source seed, studies)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a training checkpoint.pt (vocab.txt beside it) or a trained.pt")
    ap.add_argument("--bank", default=str(ROOT / "prompts" / "cmr-findings.yaml"))
    ap.add_argument("--cache", default=str(ROOT / "bench" / "out" / "select"), help="where the selection caches live")
    ap.add_argument("--per-prompt", action="store_true")
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()

    import tempfile

    import torch
    from sklearn.metrics import roc_auc_score

    from cmrdx.train.data import PhantomSource, build_cache
    from cmrdx.train.model import CMRClip
    from cmrdx.train.tokenizer import load_tokenizer
    from cmrdx.train.trainer import TrainConfig, _load_init
    from cmrdx.zeroshot.bank import load_bank

    init = _load_init(a.checkpoint)
    cfg = TrainConfig.from_dict(init["info"]["config"])
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text(init["vocab"], encoding="utf-8")
        tok, _ = load_tokenizer(vocab, max_length=cfg.max_length)
        with open(vocab, encoding="utf-8") as fh:
            n_vocab = sum(1 for _ in fh)
    model = CMRClip(cfg.model_config(n_vocab))
    model.load_state_dict(init["model"])
    model.eval()
    bank = load_bank(a.bank)

    emb, labels = [], []
    with torch.no_grad():
        for seed, n in SETS:
            src = PhantomSource(n, seed, prevalence=0.3, vendors=("philips",), report_styles=("telegraphic",))
            cache = build_cache(src, cfg.recipe(), Path(a.cache) / f"seed{seed}-{cfg.frames}x{cfg.image_size}",
                                progress=False, workers=a.workers)
            rows = cache.valid
            for i in range(0, len(rows), 16):
                emb.append(model.encode_video(torch.from_numpy(cache.inputs(rows[i:i + 16]))))
            labels += [cache.meta["labels"][int(r)] for r in rows]
        v = torch.nn.functional.normalize(torch.cat(emb), dim=1).numpy()

        def text(prompts: list[str]) -> np.ndarray:
            enc = tok.encode_batch(prompts)
            ids = torch.tensor([e.ids for e in enc])
            mask = torch.tensor([e.attention_mask for e in enc])
            return torch.nn.functional.normalize(model.encode_text(ids, mask), dim=1).numpy()

        print(f"{Path(a.checkpoint).name}: {cfg.name} {cfg.version}, step {init['info']['steps']}; "
              f"{len(v)} selection phantoms (seeds {', '.join(str(s) for s, _ in SETS)})")
        aucs = []
        for f in bank.findings:
            y = np.array([lab[f.id] != "none" for lab in labels])
            t = text(list(f.prompts))
            auc = roc_auc_score(y, (v @ t.T).mean(1))
            aucs.append(auc)
            line = f"  {f.id:22s} zero-shot {auc:.3f}"
            if a.probe:
                from sklearn.linear_model import LogisticRegression
                from sklearn.model_selection import cross_val_predict

                p = cross_val_predict(LogisticRegression(max_iter=3000), v, y, cv=5, method="predict_proba")[:, 1]
                line += f"   probe {roc_auc_score(y, p):.3f}"
            print(line)
            if a.per_prompt:
                for prompt, e in zip(f.prompts, t):
                    print(f"      {roc_auc_score(y, v @ e):.3f}  {prompt}")
        print(f"  mean of the first seven (the CMR-CLIP findings): {np.mean(aucs[:7]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
