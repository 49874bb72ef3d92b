"""Benchmarks of a model on a labelled archive: zero-shot AUC, retrieval, few-shot prototypes, and the speed of
one study's embedding. numpy only.

Data flow: archive folder (``study_*/DICOM`` + ``report.txt``, labels from ``labels.csv`` or each study's
``truth.json``: ``archive.read_archive``) -> each study read like a user's (``assemble_study`` + the model's
recipe) -> study embeddings (onnxruntime Encoder) through the study embedding cache shared with prompt authoring
and few-shot fitting (``archive.StudyEmbeddingCache``: model sha256 + precision + StudyInstanceUID), so the
benchmarks encode each study once.

Metrics (all on L2-normalised embeddings, cosine similarity):

* zero-shot: a finding's score per study from the prompt bank (``cmrdx.zeroshot.scoring``: mean cosine with its
  prompts, or the positive-vs-negative softmax where the bank has negative prompts); one-vs-rest AUC with a
  percentile bootstrap 95% CI over studies; AUC of each severity level against the studies without the
  finding, and the mean score per level (scores should rise with severity).
* retrieval: report text <-> study; recall@1/5/10 and median rank (1 = best) both ways.
* few-shot: SimpleShot prototypes (centre on the support mean, L2-normalise, class means) with k positive
  and k negative support studies per finding, AUC on the remaining studies, mean +- sd over episodes.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmrdx.errors import CmrdxError
from cmrdx.evaluation.archive import (
    LABELS_CSV,
    REPORT_TXT,
    LabelledStudy,
    StudyEmbeddingCache,
    embed_labelled,
    read_archive,
)
from cmrdx.fileio import atomic_write
from cmrdx.model.manifest import sha256_file
from cmrdx.vocab import SEVERITY_LEVELS, Severity

log = logging.getLogger(__name__)

# Published CMR-CLIP zero-shot AUCs (internal test n~201 / external test n=129) and 32-shot few-shot AUCs,
# from docs/cmrclip.md. Patients, not phantoms: shown side by side, never as a like-for-like score.
CMRCLIP_PUBLISHED = {
    "lv_dysfunction": (0.735, 0.768, 0.92),
    "rv_dysfunction": (0.783, 0.792, 0.72),
    "lv_dilation": (0.831, 0.835, 0.88),
    "rv_dilation": (0.838, 0.728, 0.74),
    "lv_hypertrophy": (0.881, 0.879, 0.91),
    "lge": (0.705, 0.621, 0.68),
    "aortic_dilation": (0.625, 0.486, 0.64),
}


# ---------------------------------------------------------------- metrics


def auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """ROC AUC (ties counted half; scikit-learn's, via cmrdx.zeroshot.calibration). NaN when a class is empty."""
    from cmrdx.zeroshot.calibration import auc_ci

    return auc_ci(np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64), n_boot=0).auc


def bootstrap_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of the AUC (studies resampled; one-class resamples skipped). (low, high)."""
    from cmrdx.zeroshot.calibration import auc_ci

    if level != 0.95:
        raise ValueError("only the 95% interval is computed")
    a = auc_ci(np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64), n_boot=n_boot, seed=seed)
    return a.low, a.high


def retrieval_metrics(sim: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
    """``sim`` (N queries, N items) with the match of query i at item i -> recall@k (fraction) and the
    median rank (1 = the match ranked first); ties count against the query."""
    sim = np.asarray(sim, dtype=np.float64)
    diag = np.diag(sim)
    rank = (sim > diag[:, None]).sum(1) + (sim == diag[:, None]).sum(1)  # 1-based, pessimistic on ties
    out: dict[str, Any] = {f"R@{k}": float((rank <= k).mean()) for k in ks}
    out["median_rank"] = float(np.median(rank))
    out["n"] = int(len(rank))
    return out


def simpleshot_scores(support: np.ndarray, support_y: np.ndarray, query: np.ndarray) -> np.ndarray:
    """SimpleShot binary score per query (``cmrdx.zeroshot.fewshot``): cos(query, positive prototype) - cos(query, negative
    prototype) after centring on the support mean and L2-normalising. (Q,) float64."""
    from cmrdx.zeroshot.fewshot import fit_prototypes

    protos = fit_prototypes(np.asarray(support, np.float64), {"f": np.asarray(support_y)}, "", "")
    return protos.score_many(np.asarray(query, np.float64))[0].astype(np.float64)


def fewshot_auc(emb: np.ndarray, y: np.ndarray, shots: int, *, episodes: int = 100, seed: int = 0) -> tuple[float, float, int]:
    """Mean and sd of the query AUC over ``episodes`` draws of ``shots`` positive + ``shots`` negative
    support studies; the rest are queries. Returns (mean, sd, episodes run) (NaN when too few studies)."""
    y = np.asarray(y).astype(int)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) <= shots or len(neg) <= shots:
        return float("nan"), float("nan"), 0
    rng = np.random.default_rng([seed, shots])
    vals = []
    for _ in range(episodes):
        sp = rng.choice(pos, shots, replace=False)
        sn = rng.choice(neg, shots, replace=False)
        sup = np.concatenate([sp, sn])
        qmask = np.ones(len(y), bool)
        qmask[sup] = False
        sc = simpleshot_scores(emb[sup], y[sup], emb[qmask])
        vals.append(auc(sc, y[qmask]))
    return float(np.mean(vals)), float(np.std(vals)), len(vals)


# ---------------------------------------------------------------- the evaluation set


@dataclass
class EvalSet:
    """Embeddings, reports and labels of an archive's studies under one model.

    Attributes:
        ids: study folder names (N,).
        study_emb: (N, D) float32 L2-normalised study embeddings.
        reports: (N,) report texts.
        severity: finding -> (N,) array of "none"/"mild"/"moderate"/"severe"; "present" for a positive label
            without a severity, "unknown" for a study whose label is blank.
        skipped: reason -> count of study folders left out.
        seconds: wall time of reading + encoding.
        cached: studies whose embedding came from the cache.
        encode_ms, read_ms: median per-study encoder and reading + recipe times in ms over the studies encoded
            in this call; None when every embedding came from the cache.
        study_main: (N, D) the main paths' embeddings of a model with a finding stream (``EmbeddedSet.main``),
            which few-shot's distances use; None when they are ``study_emb``.
    """

    ids: list[str]
    study_emb: np.ndarray
    reports: list[str]
    severity: dict[str, np.ndarray]
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    encode_ms: float | None = None
    read_ms: float | None = None
    cached: int = 0
    study_main: np.ndarray | None = None

    @property
    def distance_emb(self) -> np.ndarray:
        """What distances between studies use: ``study_main`` when the model has a finding stream, else
        ``study_emb``."""
        return self.study_main if self.study_main is not None else self.study_emb

    def labels(self, finding: str) -> np.ndarray:
        return (self.severity[finding] != Severity.NONE).astype(int)

    def known(self, finding: str) -> np.ndarray:
        """(N,) bool: studies with a label for ``finding``."""
        return self.severity[finding] != UNKNOWN


UNKNOWN = "unknown"
PRESENT = "present"


def _severity(r: LabelledStudy, f: str) -> str:
    sev = r.severities.get(f) or ""
    if sev:
        return sev
    label = r.labels.get(f)
    return UNKNOWN if label is None else PRESENT if label else Severity.NONE


def load_eval_set(archive: str | Path, encoder, *, cache_dir: Path | None = None,
                  progress: Callable[[int, int], None] | None = None, refresh: bool = False) -> EvalSet:
    """Every labelled study of ``archive`` (``read_archive``) that has a ``report.txt``, read, preprocessed and
    encoded with ``encoder`` (``cmrdx.model.encoder.Encoder``) through the study embedding cache
    (``StudyEmbeddingCache`` in ``cache_dir``, default ``$CMRDX_HOME/cache/studies``; ``refresh`` recomputes
    it). Folders without a report or labels, or that do not assemble, are skipped and counted."""
    t0 = time.perf_counter()
    root = Path(archive)
    rows = read_archive(root)
    skipped: dict[str, int] = {}

    def skip(reason: str, n: int = 1) -> None:
        skipped[reason] = skipped.get(reason, 0) + n

    listed = {r.path.resolve() for r in rows if r.path is not None}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.resolve() not in listed):
        skip("no report.txt" if not (d / REPORT_TXT).is_file() else "no labels")
    usable, reports = [], {}
    for r in rows:
        rep = r.report()
        if r.path is None or not r.path.is_dir():
            skip("no study folder")
        elif rep is None:
            skip("no report.txt")
        else:
            usable.append(r)
            reports[id(r)] = rep
    es = embed_labelled(usable, encoder, StudyEmbeddingCache.for_encoder(encoder, cache_dir), progress, refresh=refresh)
    for kind, n in es.failure_kinds.items():
        skip(kind, n)
    if not es.rows:
        raise CmrdxError(f"{root}: no usable study (skipped: {skipped})",
                         hint="an archive holds study folders with DICOM and report.txt, and labels.csv or truth.json")
    findings = sorted({f for r in es.rows for f in r.labels})
    severity = {f: np.array([_severity(r, f) for r in es.rows]) for f in findings}

    def median_ms(xs: list[float]) -> float | None:
        return float(np.median(xs)) * 1000 if xs else None

    return EvalSet(ids=[r.path.name if r.path is not None else r.key for r in es.rows], study_emb=es.embeddings, reports=[reports[id(r)] for r in es.rows],
                   severity=severity, skipped=skipped, seconds=time.perf_counter() - t0,
                   encode_ms=median_ms(es.encode_seconds), read_ms=median_ms(es.read_seconds), cached=es.cached,
                   study_main=es.main)


# ---------------------------------------------------------------- benchmarks


def zeroshot(es: EvalSet, bank, encoder, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per finding of ``bank`` present in the labels: AUC, bootstrap 95% CI, positives, and per severity
    level its AUC against the negatives, its count and mean score (plus the negatives' mean score)."""
    from cmrdx.zeroshot.scoring import bank_text_embeddings, score_bank

    text_emb = bank_text_embeddings(bank, encoder.encode_texts, None)
    name = encoder.manifest.name
    per_study = [score_bank(e, bank, text_emb, name, None) for e in es.study_emb]
    out: dict[str, Any] = {"n": len(es.ids), "bank": bank.name, "findings": {}}
    for j, f in enumerate(bank.findings):
        if f.id not in es.severity:
            continue
        known = es.known(f.id)  # studies whose label for this finding is blank take no part
        s = np.array([fs[j].score for fs in per_study])[known]
        y = es.labels(f.id)[known]
        lo, hi = bootstrap_auc(s, y, n_boot=n_boot, seed=seed)
        sev = es.severity[f.id][known]
        neg = sev == Severity.NONE
        by: dict[str, dict[str, Any]] = {
            str(Severity.NONE): {"n": int(neg.sum()), "mean_score": float(s[neg].mean()) if neg.any() else None}}
        for lvl in SEVERITY_LEVELS:
            m = sev == lvl
            by[str(lvl)] = {"n": int(m.sum()), "mean_score": float(s[m].mean()) if m.any() else None,
                            "auc_vs_none": auc(np.concatenate([s[m], s[neg]]), np.r_[np.ones(m.sum()), np.zeros(neg.sum())])
                            if m.any() and neg.any() else None}
        out["findings"][f.id] = {"label": f.label, "kind": per_study[0][j].kind, "auc": auc(s, y), "ci95": [lo, hi],
                                 "positives": int(y.sum()), "n": int(known.sum()), "by_severity": by}
    return out


def retrieval(es: EvalSet, encoder) -> dict[str, Any]:
    """Report text <-> study retrieval over the whole archive, scored as search scores a text query
    (``cmrdx.pipeline.search``): the cosine with the study's embedding, or for a model with a finding stream the
    mean of the cosines with its embedding and its main paths' embedding."""
    t = encoder.encode_texts(es.reports)
    sim = t @ es.study_emb.T  # (texts, studies)
    if es.study_main is not None:
        sim = (sim + t @ es.study_main.T) / 2
    return {"text_to_study": retrieval_metrics(sim), "study_to_text": retrieval_metrics(sim.T),
            "chance_R@1": 1.0 / len(es.ids)}


def fewshot(es: EvalSet, findings: Sequence[str], *, shots: Sequence[int] = (1, 2, 4, 8, 16), episodes: int = 100,
            seed: int = 0) -> dict[str, Any]:
    """finding -> shots -> {mean, sd, episodes} of SimpleShot AUC."""
    out: dict[str, Any] = {"episodes": episodes, "findings": {}}
    for f in findings:
        if f not in es.severity:
            continue
        known = es.known(f)
        y = es.labels(f)[known]
        out["findings"][f] = {}
        for k in shots:
            m, sd, n = fewshot_auc(es.distance_emb[known], y, k, episodes=episodes, seed=seed)
            out["findings"][f][str(k)] = {"mean": m, "sd": sd, "episodes": n}
    return out


# ---------------------------------------------------------------- tables


def _f(x: float | None, nd: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def markdown_tables(zs: dict[str, Any] | None, rt: dict[str, Any] | None, fs: dict[str, Any] | None) -> str:
    """The benchmark tables as Markdown, zero-shot next to the published CMR-CLIP figures."""
    lines: list[str] = []
    if zs:
        lines += [f"### Zero-shot AUC (n = {zs['n']} held-out studies, bank `{zs['bank']}`)", "",
                  "| finding | positives | AUC | 95% CI (bootstrap) | CMR-CLIP internal* | CMR-CLIP external* |",
                  "|---|---:|---:|---|---:|---:|"]
        for fid, r in zs["findings"].items():
            pub = CMRCLIP_PUBLISHED.get(fid)
            lines.append(f"| {r['label']} | {r['positives']} | {_f(r['auc'])} | {_f(r['ci95'][0])}-{_f(r['ci95'][1])} | "
                         f"{_f(pub[0]) if pub else 'n/a'} | {_f(pub[1]) if pub else 'n/a'} |")
        lines += ["", "### Zero-shot AUC by severity (each level against the studies without the finding) and mean score", "",
                  "| finding | score | none: mean (n) | mild: AUC / mean (n) | moderate: AUC / mean (n) | severe: AUC / mean (n) |",
                  "|---|---|---|---|---|---|"]
        for r in zs["findings"].values():
            b = r["by_severity"]
            cells = [f"{_f(b['none']['mean_score'])} ({b['none']['n']})"]
            for lvl in SEVERITY_LEVELS:
                c = b[lvl]
                cells.append(f"{_f(c['auc_vs_none'])} / {_f(c['mean_score'])} ({c['n']})")
            lines.append(f"| {r['label']} | {r['kind']} | " + " | ".join(cells) + " |")
        lines.append("")
    if rt:
        lines += [f"### Retrieval (n = {rt['text_to_study']['n']}; chance R@1 = {rt['chance_R@1']:.3f})", "",
                  "| direction | R@1 | R@5 | R@10 | median rank |", "|---|---:|---:|---:|---:|"]
        for k, lab in (("text_to_study", "report -> study"), ("study_to_text", "study -> report")):
            r = rt[k]
            lines.append(f"| {lab} | {_f(r['R@1'])} | {_f(r['R@5'])} | {_f(r['R@10'])} | {r['median_rank']:g} |")
        lines.append("")
    if fs:
        shots = list(next(iter(fs["findings"].values())).keys()) if fs["findings"] else []
        lines += [f"### Few-shot SimpleShot AUC (mean +- sd over {fs['episodes']} episodes; k positive + k negative support)", "",
                  "| finding | " + " | ".join(f"k={k}" for k in shots) + " | CMR-CLIP 32-shot* |",
                  "|---|" + "---:|" * (len(shots) + 1)]
        for fid, r in fs["findings"].items():
            pub = CMRCLIP_PUBLISHED.get(fid)
            cell = lambda c: "-" if np.isnan(c["mean"]) else f"{_f(c['mean'])} +- {_f(c['sd'], 2)}"  # noqa: E731
            lines.append(f"| {fid} | " + " | ".join(cell(r[k]) for k in shots)
                         + f" | {_f(pub[2]) if pub else 'n/a'} |")
        lines.append("")
    return "\n".join(lines)


@dataclass
class EvalReport:
    """The three benchmarks of one archive under one model (``cmrdx eval all``); ``to_dict`` is its JSON."""

    model: str
    data: str
    n: int
    skipped: dict[str, int]
    study_read_ms_median: float | None
    study_encode_ms_median: float | None
    zeroshot: dict[str, Any]
    retrieval: dict[str, Any]
    fewshot: dict[str, Any]
    device: str = ""  # what encoded the studies: "cpu (float32)", "cpu (int8)", ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        return markdown_tables(self.zeroshot, self.retrieval, self.fewshot)


def evaluate_all(es: EvalSet, bank, encoder, *, data: str | Path, n_boot: int = 1000, episodes: int = 100,
                 seed: int = 0) -> EvalReport:
    """Zero-shot, retrieval and few-shot (the bank's findings) on one evaluation set."""
    return EvalReport(model=encoder.manifest.name, data=str(data), n=len(es.ids), skipped=dict(es.skipped),
                      study_read_ms_median=es.read_ms, study_encode_ms_median=es.encode_ms,
                      zeroshot=zeroshot(es, bank, encoder, n_boot=n_boot, seed=seed), retrieval=retrieval(es, encoder),
                      fewshot=fewshot(es, [f.id for f in bank.findings], episodes=episodes, seed=seed),
                      device=encoder_description(encoder))


def encoder_description(encoder: Any) -> str:
    """"cpu (int8)": the device and video precision an encoder runs at (what a result records)."""
    return f"{getattr(encoder, 'device', '?')} ({getattr(encoder, 'precision', '?')})"


def record_metrics(model_root: str | Path, results: EvalReport | dict[str, Any]) -> None:
    """Add the headline benchmark figures to ``provenance.metrics`` of a model's manifest.

    The model still verifies afterwards and keeps its identity (``Manifest.sha256`` covers what determines the
    embeddings, not metrics), so caches and calibrations keyed by it stay valid. The encoder time is recorded only
    when this run measured it (an all-cached run did not)."""
    if isinstance(results, EvalReport):
        results = results.to_dict()
    mpath = Path(model_root) / "manifest.json"
    d = json.loads(mpath.read_text())
    zs, rt, fs = results["zeroshot"], results["retrieval"], results["fewshot"]
    # the archive by its folder name and its labels' digest: a manifest travels, this machine's paths do not
    data = Path(str(results["data"]))
    labels = data / LABELS_CSV
    metrics: dict[str, Any] = {
        "benchmark": {"data": data.name, "n": results["n"], "bank": zs["bank"],
                      **({"labels_sha256": sha256_file(labels)} if labels.is_file() else {}),
                      **({"device": results["device"]} if results.get("device") else {})},
        "zeroshot_auc": {k: {"auc": round(v["auc"], 4), "ci95": [round(x, 4) for x in v["ci95"]]}
                         for k, v in zs["findings"].items()},
        "retrieval": {k: {m: round(x, 4) for m, x in rt[k].items()} for k in ("text_to_study", "study_to_text")},
        "fewshot_auc_mean": {k: {s: round(v["mean"], 4) for s, v in r.items()} for k, r in fs["findings"].items()},
    }
    if results.get("study_encode_ms_median") is not None:
        metrics["study_encode_ms_median_cpu"] = round(results["study_encode_ms_median"], 1)
    d.setdefault("provenance", {})["metrics"] = metrics
    atomic_write(mpath, json.dumps(d, indent=2) + "\n")


# ---------------------------------------------------------------- speed


@dataclass
class SpeedResult:
    """One study's embedding timed (``speed``); ``to_dict`` is the JSON ``cmrdx eval speed`` prints."""

    model: str
    device: str
    precision: str
    threads: int
    cpu: str
    load_average_1min: float
    read_and_recipe_ms: float
    encode_ms_median: float
    encode_ms_min: float
    repeats: int
    input_shape: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for ln in fh:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def speed(study: str | Path, encoder, *, repeats: int = 20, clock: Callable[[], float] = time.perf_counter) -> SpeedResult:
    """Time one study's embedding: reading + the model's recipe once, then ``repeats`` encoder runs after one
    warm-up (median and minimum)."""
    from cmrdx.recipe import apply_recipe
    from cmrdx.study.assemble import assemble_study

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    t0 = clock()
    x = apply_recipe(assemble_study(str(study)), encoder.manifest.recipe_params()).array[None]
    read_ms = (clock() - t0) * 1000
    encoder.encode_studies(x)  # warm-up
    ts = []
    for _ in range(repeats):
        t = clock()
        encoder.encode_studies(x)
        ts.append((clock() - t) * 1000)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return SpeedResult(model=encoder.manifest.name, device=encoder.device, precision=encoder.precision,
                       threads=encoder.threads, cpu=cpu_name(), load_average_1min=load,
                       read_and_recipe_ms=round(read_ms, 1), encode_ms_median=round(float(np.median(ts)), 2),
                       encode_ms_min=round(float(np.min(ts)), 2), repeats=repeats, input_shape=list(x.shape))
