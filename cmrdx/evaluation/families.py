"""Leave-one-family-out (LOFO) benchmark: does a model recognise a finding in an appearance it never saw?

The randomised phantom generator (``cmrdx.synth.variety``) names every appearance choice of a study as a family
(``scar:midwall``, ``lge:psir``, ``anatomy:trabeculated``, ``cine:gre``, ...). A LOFO split holds one family out:

* training archive: ``cmrdx synth archive TRAIN --variety --exclude-families F`` (no study draws F);
* test archive: ``cmrdx synth archive TEST --only-families F`` (every study that can show F does), with the
  finding F bears on made more frequent;
* the score: zero-shot AUC, per finding, on the test archive (``family_zeroshot``), judged on the findings F
  bears on (``LofoSplit.findings``).

``family_zeroshot`` also scores any randomised archive family by family (the studies of each family, plus, for a
family that describes a finding -- a scar pattern, a hypertrophy pattern -- the studies without that finding as
negatives), so one archive of the full generator shows where a model trained on another generator fails.

numpy only; the studies are read and encoded by ``cmrdx.evaluation.benchmarks.load_eval_set`` and scored by its
``zeroshot``, so the figures are those of ``cmrdx eval zeroshot`` on the same studies.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmrdx.evaluation.archive import LABELS_CSV, TRUTH_JSON
from cmrdx.evaluation.benchmarks import EvalSet, zeroshot

log = logging.getLogger(__name__)

# Findings of the CMR-CLIP benchmark (pericardial effusion is scored by cmrdx as well).
ALL_FINDINGS = ("lv_dysfunction", "rv_dysfunction", "lv_dilation", "rv_dilation", "lv_hypertrophy", "lge",
                "aortic_dilation", "pericardial_effusion")
# Axes whose families describe a finding (present only in that finding's positives): their test set adds the
# studies without the finding as negatives.
CONDITIONAL_AXES = {"scar": "lge", "hypertrophy": "lv_hypertrophy"}


def axis_findings(family: str) -> tuple[str, ...]:
    """The findings whose appearance a family changes (every finding for anatomy, cine, breath-hold, views)."""
    from cmrdx.synth.variety import AXIS_FINDINGS

    axis = family.split(":", 1)[0]
    found = AXIS_FINDINGS.get(axis)
    return tuple(found) if found is not None else ALL_FINDINGS


@dataclass(frozen=True)
class LofoSplit:
    """One leave-one-family-out split: the family held out, the findings it is judged on, and how its training
    and test archives are written (``write_archive`` arguments and the equivalent command lines)."""

    family: str
    findings: tuple[str, ...]
    test_prevalence: Mapping[str, float] = field(default_factory=dict)

    def train_archive(self) -> dict[str, Any]:
        """``cmrdx.synth.write_archive`` keyword arguments of the training archive (without the family)."""
        return {"variety": True, "exclude_families": [self.family]}

    def test_archive(self, prevalence: float = 0.3) -> dict[str, Any]:
        """``write_archive`` keyword arguments of the test archive (only the family where its axis applies)."""
        prev: dict[str, float] = {f: prevalence for f in ALL_FINDINGS}
        prev.update(self.test_prevalence)
        return {"variety": True, "only_families": [self.family], "prevalence": prev}

    def commands(self, train: str, test: str, *, n_train: int, n_test: int, seed_train: int, seed_test: int,
                 model: str = "MODEL") -> list[str]:
        """The command lines of the split: both archives and the score."""
        prev = ",".join(f"{k}={v:g}" for k, v in self.test_archive()["prevalence"].items())
        return [f"cmrdx synth archive {train} --n {n_train} --seed {seed_train} --exclude-families {self.family}",
                f"cmrdx synth archive {test} --n {n_test} --seed {seed_test} --only-families {self.family} "
                f"--prevalence {prev}",
                f"cmrdx eval families --model {model} --data {test} --family {self.family}"]


# One scar pattern, one LGE contrast mode, one anatomy variant and one cine contrast (issue #20).
LOFO_SPLITS: dict[str, LofoSplit] = {
    "scar:midwall": LofoSplit("scar:midwall", ("lge",), {"lge": 0.5}),
    "scar:epicardial": LofoSplit("scar:epicardial", ("lge",), {"lge": 0.5}),
    "lge:psir": LofoSplit("lge:psir", ("lge",), {"lge": 0.5}),
    "lge:dark_blood": LofoSplit("lge:dark_blood", ("lge",), {"lge": 0.5}),
    "hypertrophy:apical": LofoSplit("hypertrophy:apical", ("lv_hypertrophy",), {"lv_hypertrophy": 0.5}),
    "anatomy:trabeculated": LofoSplit("anatomy:trabeculated", ("lv_dilation", "lv_dysfunction", "lv_hypertrophy", "lge")),
    "cine:gre": LofoSplit("cine:gre", ("lv_dysfunction", "rv_dysfunction", "lv_dilation", "rv_dilation",
                                       "lv_hypertrophy", "aortic_dilation", "pericardial_effusion")),
}
DEFAULT_HELD_OUT = ("scar:midwall", "lge:psir", "anatomy:trabeculated")


def lofo_split(family: str) -> LofoSplit:
    """The split of ``family``: a predefined one, else one judged on the findings the family's axis bears on."""
    from cmrdx.synth.variety import parse_families

    parse_families([family])  # ValueError naming the valid families
    if family in LOFO_SPLITS:
        return LOFO_SPLITS[family]
    axis = family.split(":", 1)[0]
    cond = CONDITIONAL_AXES.get(axis)
    return LofoSplit(family, axis_findings(family), {cond: 0.5} if cond else {})


# ---------------------------------------------------------------- families of an archive's studies


def study_families(archive: str | Path, ids: Sequence[str]) -> list[set[str]]:
    """The families of each study folder ``ids`` of ``archive``: its ``truth.json`` (``families``), else the
    ``families`` column of labels.csv; an empty set for a classic study."""
    import csv

    root = Path(archive)
    from_csv: dict[str, str] = {}
    if (root / LABELS_CSV).is_file():
        with open(root / LABELS_CSV, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                if r.get("study") and r.get("families"):
                    from_csv[r["study"].strip()] = r["families"]
    out: list[set[str]] = []
    for i in ids:
        fams: set[str] = set()
        t = root / i / TRUTH_JSON
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no truth.json: labels.csv may tell
            fams = set(json.loads(t.read_text(encoding="utf-8")).get("families") or [])
        if not fams and i in from_csv:
            fams = {f for f in from_csv[i].split(";") if f}
        out.append(fams)
    return out


def family_mask(es: EvalSet, fams: Sequence[set[str]], family: str) -> np.ndarray:
    """(N,) bool: the studies that test ``family``: those drawn with it and, when its axis describes a finding
    (scar, hypertrophy patterns), those without that finding (its negatives)."""
    has = np.array([family in f for f in fams], bool)
    cond = CONDITIONAL_AXES.get(family.split(":", 1)[0])
    if cond is None or cond not in es.severity:
        return has
    negative = es.known(cond) & (es.labels(cond) == 0)
    return has | negative


def subset(es: EvalSet, mask: np.ndarray) -> EvalSet:
    """The studies of ``es`` where ``mask`` holds, as an EvalSet of their own."""
    idx = np.flatnonzero(mask)
    return EvalSet(ids=[es.ids[i] for i in idx], study_emb=es.study_emb[idx], reports=[es.reports[i] for i in idx],
                   severity={k: v[idx] for k, v in es.severity.items()}, skipped=dict(es.skipped), seconds=es.seconds,
                   encode_ms=es.encode_ms, read_ms=es.read_ms, cached=es.cached,
                   study_main=es.study_main[idx] if es.study_main is not None else None)


def _cell(r: Mapping[str, Any], min_positives: int) -> dict[str, Any]:
    pos, n = int(r["positives"]), int(r["n"])
    ok = min_positives <= pos <= n - min_positives
    return {"auc": r["auc"] if ok else None, "ci95": r["ci95"] if ok else None, "positives": pos, "n": n}


def family_zeroshot(es: EvalSet, archive: str | Path, bank: Any, encoder: Any, *,
                    families: Iterable[str] | None = None, n_boot: int = 1000, min_positives: int = 5,
                    seed: int = 0) -> dict[str, Any]:
    """Zero-shot AUC per finding on the whole evaluation set and on the studies of each family.

    Args:
        es: ``load_eval_set(archive, encoder)``.
        archive: the archive folder (its studies' truth.json name their families).
        bank, encoder: as for ``benchmarks.zeroshot``.
        families: families to score (default: every family some study of the archive has).
        min_positives: a finding's AUC on a family is reported only with at least this many positives and
            negatives (else None, with the counts).
    Returns:
        {"n", "bank", "overall": {finding: cell}, "families": {family: {"n", "bears_on", "findings": {finding:
        cell}}}} with cell = {"auc", "ci95", "positives", "n"}.
    """
    fams = study_families(archive, es.ids)
    wanted = list(families) if families is not None else sorted({f for s in fams for f in s})
    overall = zeroshot(es, bank, encoder, n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {"n": len(es.ids), "bank": overall["bank"], "archive": str(archive),
                           "overall": {k: _cell(v, min_positives) for k, v in overall["findings"].items()},
                           "labels": {k: v["label"] for k, v in overall["findings"].items()}, "families": {}}
    for fam in wanted:
        m = family_mask(es, fams, fam)
        entry: dict[str, Any] = {"n": int(m.sum()), "with_family": int(sum(fam in f for f in fams)),
                                 "bears_on": list(axis_findings(fam)), "findings": {}}
        if m.sum() >= 2 * min_positives:
            zs = zeroshot(subset(es, m), bank, encoder, n_boot=n_boot, seed=seed)
            entry["findings"] = {k: _cell(v, min_positives) for k, v in zs["findings"].items()}
        out["families"][fam] = entry
    return out


def lofo_verdict(results: Mapping[str, Any], family: str, threshold: float = 0.85) -> dict[str, Any]:
    """Whether the findings ``family`` is judged on reach ``threshold`` AUC on its test archive (the issue's
    target: 0.85), from ``family_zeroshot`` results of that archive."""
    split = lofo_split(family)
    fam = results["families"].get(family) or {"findings": {}}
    cells = {f: fam["findings"].get(f) or results["overall"].get(f) for f in split.findings}
    aucs = {f: (c or {}).get("auc") for f, c in cells.items()}
    return {"family": family, "threshold": threshold, "auc": aucs,
            "passed": all(a is not None and a >= threshold for a in aucs.values())}


# ---------------------------------------------------------------- tables


def _fmt(c: Mapping[str, Any] | None) -> str:
    if not c:
        return "-"
    if c.get("auc") is None or (isinstance(c["auc"], float) and np.isnan(c["auc"])):
        return f"- ({c.get('positives', 0)}/{c.get('n', 0)})"
    return f"{c['auc']:.3f} ({c['positives']}/{c['n']})"


def markdown_families(results: Mapping[str, Any], *, title: str | None = None) -> str:
    """Zero-shot AUC per finding, overall and per family, as a Markdown table. Cells: AUC (positives/studies);
    a finding a family bears on is in bold; '-' when too few positives or negatives."""
    findings = list(results["overall"])
    labels = results.get("labels", {})
    lines = [f"### {title or 'Zero-shot AUC by appearance family'} (n = {results['n']}, bank `{results['bank']}`)", "",
             "| studies | n | " + " | ".join(labels.get(f, f) for f in findings) + " |",
             "|---|---:|" + "---:|" * len(findings),
             "| all | " + str(results["n"]) + " | " + " | ".join(_fmt(results["overall"][f]) for f in findings) + " |"]
    for fam, e in results["families"].items():
        cells = []
        for f in findings:
            t = _fmt(e["findings"].get(f))
            cells.append(f"**{t}**" if f in e["bears_on"] and t != "-" and len(e["bears_on"]) < len(ALL_FINDINGS) else t)
        lines.append(f"| `{fam}` | {e['n']} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)
