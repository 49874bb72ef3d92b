"""Evaluate and calibrate zero-shot scores against labels: AUC with a bootstrap 95% CI, sensitivity and
specificity at a threshold, and thresholds / probability maps by four methods. ROC, logistic (Platt) and
isotonic fits come from scikit-learn; the bootstrap is ours (a few lines, seeded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrdx.errors import CmrdxError

METHODS = ("sens-eq-spec", "youden", "platt", "isotonic")


@dataclass
class AUC:
    auc: float
    low: float
    high: float
    n_pos: int
    n_neg: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        return f"{self.auc:.3f} [{self.low:.3f}, {self.high:.3f}]"


def auc_ci(y: np.ndarray, s: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> AUC:
    """ROC AUC with a percentile bootstrap 95% CI (resampling studies; resamples with one class are skipped).
    NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y, s = np.asarray(y, int), np.asarray(s, float)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        return AUC(float("nan"), float("nan"), float("nan"), n_pos, n_neg)
    auc = float(roc_auc_score(y, s))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            boots.append(roc_auc_score(y[i], s[i]))
    lo, hi = (np.percentile(boots, [2.5, 97.5]) if boots else (np.nan, np.nan))
    return AUC(auc, float(lo), float(hi), n_pos, n_neg)


def sens_spec(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of the call score > threshold."""
    y, s = np.asarray(y, int), np.asarray(s, float)
    pred = s > threshold
    sens = float(pred[y == 1].mean()) if (y == 1).any() else float("nan")
    spec = float((~pred[y == 0]).mean()) if (y == 0).any() else float("nan")
    return sens, spec


@dataclass
class Fit:
    method: str
    threshold: float
    platt: tuple[float, float] | None = None
    isotonic: tuple[list[float], list[float]] | None = None
    sensitivity: float = float("nan")
    specificity: float = float("nan")


def _roc_threshold(y: np.ndarray, s: np.ndarray, method: str) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, s)
    spec = 1 - fpr
    k = int(np.argmin(np.abs(tpr - spec))) if method == "sens-eq-spec" else int(np.argmax(tpr - fpr))
    # roc_curve's threshold means "score >= thr"; take the midpoint to the next lower score for "score > t"
    lower = s[s < thr[k]]
    t = float(thr[k]) if not np.isfinite(thr[k]) or lower.size == 0 else float((thr[k] + lower.max()) / 2)
    return t if np.isfinite(t) else float(s.max())


def fit(y: np.ndarray, s: np.ndarray, method: str, *, min_positives: int = 5, min_negatives: int = 5, what: str = "") -> Fit:
    """Fit a threshold (and a probability map for platt / isotonic). Refuses with too few examples."""
    if method not in METHODS:
        raise CmrdxError(f"unknown calibration method {method!r}", hint=f"use one of {', '.join(METHODS)}")
    y, s = np.asarray(y, int), np.asarray(s, float)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos < min_positives or n_neg < min_negatives:
        raise CmrdxError(
            f"{what or 'finding'}: {n_pos} positives and {n_neg} negatives; at least {min_positives} and {min_negatives} needed",
            hint="label more studies for this finding (or lower --min-positives, knowing the threshold will be unstable)",
        )
    if method in ("sens-eq-spec", "youden"):
        t = _roc_threshold(y, s, method)
        out = Fit(method, t)
    elif method == "platt":
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1e4).fit(s[:, None], y)
        a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        out = Fit(method, -b / a if a != 0 else float(np.median(s)), platt=(a, b))
    else:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(s, y)
        xs, ys = [float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_]
        above = [x for x, p in zip(xs, ys) if p >= 0.5]
        out = Fit(method, above[0] if above else xs[-1], isotonic=(xs, ys))
    out.sensitivity, out.specificity = sens_spec(y, s, out.threshold)
    return out
