"""Prompt authoring for cardiologists: lint a bank, try it on one study, evaluate it on a labelled archive,
and write calibrated thresholds back into the YAML (comments and order preserved, with ruamel.yaml).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrdx.errors import CmrdxError, PromptBankError
from cmrdx.fileio import atomic_write
from cmrdx.zeroshot.bank import PromptBank, parse_bank, read_bank_text
from cmrdx.zeroshot.calibration import AUC, Fit, auc_ci, fit, sens_spec
from cmrdx.zeroshot.scoring import normalise_text, score_finding

if TYPE_CHECKING:
    from cmrdx.evaluation.archive import EmbeddedSet
    from cmrdx.model.encoder import Encoder

NEAR_DUPLICATE_COS = 0.98
SHATTERED_PIECES = 4  # a word split into this many word pieces or more is probably unknown to the model


@dataclass
class LintIssue:
    level: str  # "error" or "warning"
    where: str  # file:line finding
    message: str


def lint_bank(path: Path, encoder: Encoder | None = None, model_sha: str | None = None) -> tuple[PromptBank | None, list[LintIssue]]:
    """Schema errors (file:line), then, with a model: exact / near duplicates, over-long prompts, words the
    tokenizer shatters, and findings without a threshold for the model."""
    issues: list[LintIssue] = []
    try:  # a file that cannot be read (missing, a folder, not UTF-8) is an error of this bank, like its schema
        bank = parse_bank(read_bank_text(Path(path)), Path(path))
    except PromptBankError as exc:
        return None, [LintIssue("error", str(path), exc.message + (f" (fix: {exc.hint})" if exc.hint else ""))]
    loc = {f.id: f"{path}:{f.line} {f.id}" for f in bank.findings}
    seen: dict[str, str] = {}
    for f in bank.findings:
        within: set[str] = set()
        for t in f.prompts + f.negative_prompts:
            k = normalise_text(t).lower()
            if k in within:
                issues.append(LintIssue("error", loc[f.id], f"duplicate prompt {t!r} in this finding"))
            elif k in seen and seen[k] != f.id:
                issues.append(LintIssue("warning", loc[f.id], f"prompt {t!r} also used by finding {seen[k]!r}"))
            within.add(k)
            seen.setdefault(k, f.id)
    if encoder is None:
        return bank, issues
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(encoder.manifest.tokenizer_file))
    tok.no_padding()
    tok.no_truncation()
    max_len = int(encoder.manifest.tokenizer.get("max_length", 512))
    for f in bank.findings:
        for t in f.all_texts:
            n = len(tok.encode(t).ids)
            if n > max_len:
                issues.append(LintIssue("error", loc[f.id], f"prompt is {n} tokens, over the model's {max_len}: {t[:60]!r}..."))
            for word in t.split():
                w = word.strip(".,;:()'\"")
                if not w:
                    continue
                pieces = [p for p in tok.encode(w, add_special_tokens=False).tokens]
                if "[UNK]" in pieces or len(pieces) >= SHATTERED_PIECES:
                    issues.append(LintIssue("warning", loc[f.id], f"word {w!r} becomes {pieces}: likely unknown to the model"))
        if f.calibration_for(encoder.manifest.name, model_sha) is None:
            issues.append(LintIssue("warning", loc[f.id], f"no threshold for model {encoder.manifest.name!r}: "
                                                           "run `cmrdx prompts calibrate`"))
    texts = bank.texts
    emb = encoder.encode_texts(texts)
    owner = {t: f.id for f in bank.findings for t in f.all_texts}
    sim = emb @ emb.T
    # "Near" is relative to the model: a small text tower puts every prompt at cosine 0.95+, so a pair is flagged
    # only when it also stands 3 standard deviations above the bank's typical pair.
    off = sim[np.triu_indices(len(texts), 1)]
    cut = max(NEAR_DUPLICATE_COS, float(off.mean() + 3 * off.std())) if off.size > 2 else NEAR_DUPLICATE_COS
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if sim[i, j] >= cut and normalise_text(texts[i]).lower() != normalise_text(texts[j]).lower():
                issues.append(LintIssue("warning", loc[owner[texts[j]]],
                                        f"{texts[j]!r} is a near-duplicate of {texts[i]!r} (cosine {sim[i, j]:.3f})"))
    return bank, issues


# ----------------------------------------------------------------------------------------- evaluation


@dataclass
class FindingEvaluation:
    id: str
    label: str
    auc: AUC
    threshold: float | None
    sensitivity: float | None
    specificity: float | None
    per_prompt: dict[str, AUC] = field(default_factory=dict)
    leave_one_out: dict[str, float] = field(default_factory=dict)  # prompt -> AUC without it

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "label": self.label, "auc": self.auc.to_dict(), "threshold": self.threshold,
            "sensitivity": self.sensitivity, "specificity": self.specificity,
            "per_prompt": {k: v.to_dict() for k, v in self.per_prompt.items()},
            "leave_one_out_auc": self.leave_one_out,
        }


def finding_scores(es: EmbeddedSet, bank: PromptBank, text_emb: dict[str, np.ndarray], model_name: str,
                   model_sha: str | None) -> dict[str, np.ndarray]:
    """finding id -> (N,) score of every embedded study."""
    return {f.id: np.array([score_finding(e, f, text_emb, bank, model_name, model_sha).score for e in es.embeddings])
            for f in bank.findings}


def evaluate_bank(es: EmbeddedSet, bank: PromptBank, text_emb: dict[str, np.ndarray], model_name: str,
                  model_sha: str | None, *, n_boot: int = 1000) -> list[FindingEvaluation]:
    out = []
    scores = finding_scores(es, bank, text_emb, model_name, model_sha)
    for f in bank.findings:
        idx, y = es.labels(f.id)
        if len(idx) == 0:
            continue
        s = scores[f.id][idx]
        cal = f.calibration_for(model_name, model_sha)
        sens = spec = None
        if cal is not None:
            sens, spec = sens_spec(y, s, cal.threshold)
        per = {t: auc_ci(y, es.embeddings[idx] @ text_emb[t], n_boot=n_boot) for t in f.prompts}
        loo = {}
        if len(f.prompts) > 1:
            for t in f.prompts:
                rest = [p for p in f.prompts if p != t]
                loo[t] = auc_ci(y, np.mean(np.stack([es.embeddings[idx] @ text_emb[p] for p in rest]), axis=0), n_boot=0).auc
        out.append(FindingEvaluation(f.id, f.label, auc_ci(y, s, n_boot=n_boot), cal.threshold if cal else None, sens, spec, per, loo))
    return out


# ----------------------------------------------------------------------------------------- calibration


def labels_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def calibrate_bank(es: EmbeddedSet, bank: PromptBank, text_emb: dict[str, np.ndarray], model_name: str,
                   model_sha: str, method: str, *, min_positives: int = 5) -> dict[str, Fit]:
    """Fit every finding that has labels. Refuses (CmrdxError) when any labelled finding has too few."""
    scores = finding_scores(es, bank, text_emb, model_name, model_sha)
    fits = {}
    for f in bank.findings:
        idx, y = es.labels(f.id)
        if len(idx) == 0:
            continue
        fits[f.id] = fit(y, scores[f.id][idx], method, min_positives=min_positives, min_negatives=min_positives,
                         what=f"{bank.path}:{f.line} {f.id}")
    if not fits:
        raise CmrdxError("no finding of the bank has labels in the labels file",
                         hint="label columns must be named by finding id (e.g. lv_dilation)")
    return fits


def write_thresholds(bank_path: Path, model_name: str, model_sha: str, fits: dict[str, Fit],
                     provenance: dict[str, Any]) -> None:
    """Write each fit into its finding's ``thresholds`` (replacing this model's entry), keeping the file's
    comments, key order and formatting; the result is re-validated before it replaces the file atomically."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 120
    yaml.indent(mapping=2, sequence=4, offset=2)
    text = Path(bank_path).read_text(encoding="utf-8")
    doc = yaml.load(text)
    for item in doc["findings"]:
        fid = item.get("id")
        if fid not in fits:
            continue
        ft = fits[fid]
        entry = CommentedMap()
        entry["model"] = model_name
        entry["sha256"] = model_sha
        entry["threshold"] = round(float(ft.threshold), 6)
        entry["method"] = ft.method
        if ft.platt is not None:
            entry["platt"] = CommentedMap([("a", round(ft.platt[0], 6)), ("b", round(ft.platt[1], 6))])
        if ft.isotonic is not None:
            xs = CommentedSeq([round(x, 6) for x in ft.isotonic[0]])
            ys = CommentedSeq([round(y, 6) for y in ft.isotonic[1]])
            xs.fa.set_flow_style()
            ys.fa.set_flow_style()
            entry["isotonic"] = CommentedMap([("x", xs), ("y", ys)])
        prov = CommentedMap(provenance.get(fid, {}))
        prov["sensitivity"] = round(ft.sensitivity, 4)
        prov["specificity"] = round(ft.specificity, 4)
        entry["provenance"] = prov
        if "thresholds" not in item or item["thresholds"] is None:
            item["thresholds"] = CommentedSeq()
        th = item["thresholds"]
        for k in range(len(th) - 1, -1, -1):
            if th[k].get("model") == model_name:
                del th[k]
        th.append(entry)
    buf = io.StringIO()
    yaml.dump(doc, buf)
    new = buf.getvalue()
    parse_bank(new, Path(bank_path))  # never write a bank that would not load
    atomic_write(bank_path, new)


def provenance_for(es: EmbeddedSet, fid: str, labels_path: Path, method: str) -> dict[str, Any]:
    _, y = es.labels(fid)
    return {"n_positive": int(y.sum()), "n_negative": int(len(y) - y.sum()), "method": method,
            "date": _dt.date.today().isoformat(), "labels_sha256": labels_digest(labels_path)}
