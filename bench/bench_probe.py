"""Where a zero-shot failure lives: in the study embedding, or between it and the text?

For each model and each archive of ``bench/bench_families.py`` (classic, randomised, one per held-out family), a
linear probe (L2 logistic regression, 5-fold stratified cross-validation repeated over 5 shuffles) says whether a
finding can be read from the study embeddings at all, with the labels: a probe near chance means the video side
never encoded it, and no prompt or text training can bring it back; a probe well above the zero-shot AUC means the
embedding holds it and the text side does not find it. Two transfer probes fit on one archive and score another
(classic -> randomised; randomised -> each family archive).

What the model's input holds of each study's LGE (the recipe's record of each study: montage frames per segment
and the frames it sampled) is tabulated beside it: of the short-axis LGE slices a study has, how many reach the
32 frames.

    PYTHONPATH=. .venv/bin/python bench/bench_probe.py --model models/cmrdx-phantom-small --model OTHER

Reads the archives and the study embedding cache that bench_families.py left under bench/out/families (run it
first, with ``--keep`` to reuse archives); writes bench/results/probe.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmrdx.evaluation.benchmarks import load_eval_set  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name, load_average  # noqa: E402

SEVEN = ("lv_dysfunction", "rv_dysfunction", "lv_dilation", "rv_dilation", "lv_hypertrophy", "lge", "aortic_dilation")
LABELS = {"lv_dysfunction": "LV systolic dysfunction", "rv_dysfunction": "RV systolic dysfunction",
          "lv_dilation": "LV dilation", "rv_dilation": "RV dilation", "lv_hypertrophy": "LV hypertrophy",
          "lge": "Late gadolinium enhancement", "aortic_dilation": "Aortic dilation"}
ARCHIVES = ("classic", "variety", "scar-midwall", "lge-psir", "anatomy-trabeculated", "cine-gre")
MIN_CLASS = 5  # fewer positives or negatives: no probe


def _usable(y: np.ndarray) -> bool:
    return int(y.sum()) >= MIN_CLASS and int(len(y) - y.sum()) >= MIN_CLASS


def cv_probe_auc(x: np.ndarray, y: np.ndarray, *, reps: int = 5, c: float = 1.0) -> float | None:
    """Mean over ``reps`` shuffles of the out-of-fold AUC of an L2 logistic regression (5 stratified folds, or
    fewer when a class is small); None with fewer than MIN_CLASS of either class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    if not _usable(y):
        return None
    folds = min(5, int(y.sum()), int(len(y) - y.sum()))
    aucs = []
    for rep in range(reps):
        s = np.zeros(len(y))
        for tr, te in StratifiedKFold(folds, shuffle=True, random_state=rep).split(x, y):
            s[te] = LogisticRegression(C=c, max_iter=5000).fit(x[tr], y[tr]).decision_function(x[te])
        aucs.append(roc_auc_score(y, s))
    return float(np.mean(aucs))


def transfer_auc(x_fit: np.ndarray, y_fit: np.ndarray, x: np.ndarray, y: np.ndarray, *, c: float = 1.0) -> float | None:
    """AUC on (x, y) of a probe fitted on (x_fit, y_fit); None when either side is too small."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    if not (_usable(y_fit) and _usable(y)):
        return None
    return float(roc_auc_score(y, LogisticRegression(C=c, max_iter=5000).fit(x_fit, y_fit).decision_function(x)))


HIST_BINS = 24


def lge_in_input(folder: Path, params: Any) -> tuple[int, int, int, np.ndarray]:
    """(short-axis LGE slices in the study, of them in the sampled frames, LGE frames of the input, intensity
    features of those frames) for one study folder read as a user's study is. The features: the mean over the
    input's LGE frames of each frame's histogram (HIST_BINS bins of its windowed 0-1 intensities), of the whole
    frame and of its central half: a location-free summary of how bright what the model sees is."""
    from cmrdx.recipe import apply_recipe
    from cmrdx.study.assemble import assemble_study

    r = apply_recipe(assemble_study(str(folder)), params)
    start, sa_total, sa_in = 0, 0, 0
    sampled = np.asarray(r.sampled)
    lge_idx: list[int] = []
    for seg in params.segments:
        u = r.used.get(seg)
        if not u:
            continue
        n = int(u["montage_frames"])
        hit = sampled[(sampled >= start) & (sampled < start + n)]
        if seg.startswith("lge"):
            lge_idx += [j for j, i in enumerate(sampled) if start <= i < start + n]
        if seg == "lge_sa":
            sa_total = len(u["slices"])
            sa_in = len({int((i - start) // max(1, n // max(1, sa_total))) for i in hit})
        start += n
    unit = r.array[:, 0] * params.std[0] + params.mean[0]  # the first channel back to the window's 0-1
    size = unit.shape[-1]
    q = size // 4
    feats = np.zeros(2 * HIST_BINS)
    if lge_idx:
        for part, sl in enumerate((np.s_[:, :], np.s_[q:size - q, q:size - q])):
            h = [np.histogram(unit[j][sl], bins=HIST_BINS, range=(0.0, 1.0))[0] / unit[j][sl].size for j in lge_idx]
            feats[part * HIST_BINS:(part + 1) * HIST_BINS] = np.mean(h, axis=0)
    return sa_total, sa_in, len(lge_idx), feats


SCAR_SEED = 9_100_000  # the scar-signal phantoms' seeds: a stream no archive of the benchmarks draws
SCAR_GROUPS = ("classic", "randomised", "scar:subendocardial", "scar:transmural", "scar:midwall", "scar:epicardial",
               "scar:rv_insertion", "scar:patchy", "lge:magnitude", "lge:psir", "lge:dark_blood")
VISIBLE = 8  # grey levels (of 255): a change the eye sees in a windowed image


def scar_signal(n: int, recipes: dict[str, Any]) -> dict[str, dict[str, list[int]]]:
    """How much of a phantom's scar reaches the model's input, by counterfactual: each of ``n`` classic and ``n``
    randomised phantoms with LGE (severity drawn from the three grades) is rendered through each recipe twice, as
    drawn and with its scar taken away (``lge_pattern="none"``, every other draw, noise included, the same); the
    count of input pixels the scar changes by at least VISIBLE grey levels. Returns group -> recipe label ->
    counts (the randomised phantoms also under each of their scar pattern and LGE contrast families)."""
    import dataclasses

    from cmrdx.synth.arrays import phantom_u8
    from cmrdx.synth.params import SEVERITY_LEVELS, sample_params

    out: dict[str, dict[str, list[int]]] = {g: {k: [] for k in recipes} for g in SCAR_GROUPS}
    for variety in (False, True):
        for i in range(n):
            seed = SCAR_SEED + 2 * i + int(variety)
            sev = SEVERITY_LEVELS[i % len(SEVERITY_LEVELS)]
            p = sample_params(seed, {"lge": sev}, variety=variety)
            q = dataclasses.replace(p, lge_pattern="none")
            groups = ["randomised", *p.variety.families()] if variety and p.variety is not None else ["classic"]
            for label, r in recipes.items():
                a, _ = phantom_u8(p, r)
                b, _ = phantom_u8(q, r)
                k = int((np.abs(a.astype(np.int16) - b.astype(np.int16)) >= VISIBLE).sum())
                for g in groups:
                    if g in out:
                        out[g][label].append(k)
    return out


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="a model folder or name (repeat for several)")
    ap.add_argument("--data", default="bench/out/families", help="bench_families.py's archives and cache")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--results", default="bench/results/probe.md")
    ap.add_argument("--scar-studies", type=int, default=40,
                    help="classic and randomised phantoms each for the scar-signal table (0: no table)")
    a = ap.parse_args()

    from cmrdx.evaluation.benchmarks import zeroshot
    from cmrdx.model.encoder import Encoder
    from cmrdx.zeroshot.bank import load_bank

    bank = load_bank("cmr-findings")
    root = Path(a.data)
    archives = [n for n in ARCHIVES if (root / n / "labels.csv").is_file()]
    if "classic" not in archives or "variety" not in archives:
        raise SystemExit(f"{root}: no classic and randomised archives; run bench/bench_families.py first")
    t0, load0 = time.perf_counter(), load_average()
    lines = ["# Where a zero-shot failure lives: linear probes of the study embeddings", "",
             "**Phantoms, not patients.** Zero-shot AUC asks the text side; a linear probe asks the study embedding "
             "alone, with the labels: an L2 logistic regression, out-of-fold AUC of 5 stratified folds, mean of "
             f"{a.reps} shuffles. A probe near chance means the video side never encoded the finding for those "
             "studies, and no prompt or text training brings it back. Transfer: fitted on one archive, scored on "
             "another. The archives, seeds and sizes are those of the families section; '-': fewer than 5 "
             "positives or negatives.", "",
             f"Machine: {cpu_name()}, onnxruntime float32 on the CPU (embeddings from the families run's cache); "
             f"load average {load0}.", "", "Command:", "", "```",
             "PYTHONPATH=. .venv/bin/python bench/bench_families.py --model MODEL --keep ...   # archives, embeddings",
             "PYTHONPATH=. .venv/bin/python bench/bench_probe.py " + " ".join(f"--model {m}" for m in a.model),
             "```", ""]
    params = None
    recipes: dict[str, Any] = {}
    from cmrdx.errors import ModelError

    for m in a.model:
        try:
            enc = Encoder(m, device="cpu")
        except ModelError as e:
            raise SystemExit(f"--model {m}: {e}") from None
        params = params or enc.manifest.recipe_params()
        rp = enc.manifest.recipe_params()
        if rp not in recipes.values():
            crop = f", cut to {rp.heart_crop_mm:g} mm around the heart" if rp.heart_crop_mm else ", whole field of view"
            recipes[f"{rp.frames} x {rp.image_size} px{crop} ({enc.manifest.version})"] = rp
        es = {n: load_eval_set(root / n, enc, cache_dir=root / "cache") for n in archives}
        fams = [n for n in archives if n not in ("classic", "variety")]
        lines += [f"## `{enc.manifest.name}` {enc.manifest.version}", "",
                  "| finding | zero-shot classic | probe classic | zero-shot randomised | probe randomised | "
                  "classic -> randomised | " + " | ".join(f"randomised -> {f}" for f in fams) + " |",
                  "|---|" + "---:|" * (5 + len(fams))]
        zs = {n: zeroshot(es[n], bank, enc, n_boot=0)["findings"] for n in ("classic", "variety")}
        for f in SEVEN:
            xc, yc = es["classic"].study_emb, es["classic"].labels(f)
            xv, yv = es["variety"].study_emb, es["variety"].labels(f)
            cells = [_f(zs["classic"][f]["auc"]), _f(cv_probe_auc(xc, yc, reps=a.reps)),
                     _f(zs["variety"][f]["auc"]), _f(cv_probe_auc(xv, yv, reps=a.reps)), _f(transfer_auc(xc, yc, xv, yv))]
            cells += [_f(transfer_auc(xv, yv, es[n].study_emb, es[n].labels(f))) for n in fams]
            lines.append(f"| {LABELS[f]} | " + " | ".join(cells) + " |")
        lines.append("")
        print(f"{m}: probed", flush=True)

    assert params is not None
    lines += ["## What the input holds of the LGE", "",
              f"Per archive, read as a user's studies are through the first model's recipe ({params.frames} frames "
              "sampled evenly from the montage of cine and LGE views, the whole field of view): "
              "short-axis LGE slices per study, how many of them reach the sampled frames, and the LGE frames "
              "(short and long axis) of the input. Last column: the same probe as above, not on an embedding but "
              "on a crude, location-free summary of the input's LGE frames (each frame's histogram of windowed "
              f"intensities in {HIST_BINS} bins, whole frame and central half, averaged over the LGE frames): "
              "how much of the LGE label the pixels the model sees carry, even before any model.", "",
              "| archive | studies | LGE SAX slices: median (range) | of them in the input: median (range) | "
              "LGE frames of the input: median | LGE probe on input intensity histograms |",
              "|---|---:|---|---|---:|---:|"]
    from cmrdx.evaluation.archive import read_archive

    for n in archives:
        labelled = [r for r in read_archive(root / n) if r.path is not None and r.labels.get("lge") is not None]
        rows = [lge_in_input(r.path, params) for r in labelled]
        tot, inn, fr = (np.array([r[i] for r in rows]) for i in range(3))
        x = np.stack([r[3] for r in rows])
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        y = np.array([int(r.labels["lge"]) for r in labelled])
        lines.append(f"| {n} | {len(rows)} | {np.median(tot):.0f} ({tot.min()}-{tot.max()}) | "
                     f"{np.median(inn):.0f} ({inn.min()}-{inn.max()}) | {np.median(fr):.0f} of {params.frames} | "
                     f"{_f(cv_probe_auc(x, y, reps=a.reps))} |")
    if a.scar_studies > 0 and all(r.window_scope == "frame" for r in recipes.values()):
        sig = scar_signal(a.scar_studies, recipes)
        size = next(iter(recipes.values()))
        lines += ["", "## How much of the scar reaches the input", "",
                  f"By counterfactual: {a.scar_studies} classic and {a.scar_studies} randomised phantoms with LGE "
                  "(mild, moderate and severe in turn; seeds of their own), each put through the recipe as drawn "
                  "and again with its scar taken away, every other draw (noise included) the same. Cell: median "
                  f"number of input pixels (of {size.frames} x {size.image_size} x {size.image_size}) that the scar "
                  f"changes by at least {VISIBLE} grey levels of 255, and in brackets the studies where it changes "
                  "none. Each frame is windowed on its own percentiles, so a scar that moves a frame's window (a "
                  "bright, large one: classic scars, above all in a frame cut around the heart) changes the whole "
                  "frame and counts every pixel of it; a faint one changes only its own pixels. Randomised rows "
                  "below the first: the randomised phantoms of one scar pattern or LGE contrast (fewer studies).",
                  "",
                  "| phantoms | studies | " + " | ".join(recipes) + " |", "|---|---:|" + "---:|" * len(recipes)]
        for g in SCAR_GROUPS:
            cols = sig[g]
            n_g = len(next(iter(cols.values())))
            if not n_g:
                continue
            cells = [f"{np.median(v):.0f} ({sum(1 for x in v if x == 0)})" for v in cols.values()]
            lines.append(f"| {g} | {n_g} | " + " | ".join(cells) + " |")
    lines += ["", f"Total {(time.perf_counter() - t0) / 60:.1f} min.", ""]
    Path(a.results).write_text("\n".join(lines))
    print(f"wrote {a.results}")


if __name__ == "__main__":
    main()
