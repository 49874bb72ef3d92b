"""Zero-shot scores from study and prompt embeddings: the reference mean cosine, negative-prompt softmax,
calibrated probabilities and present / absent / uncertain calls. numpy only.

Prompt embeddings are computed once per (model, text) and cached on disk (``TextEmbeddingCache``), encoded
``TEXT_BATCH`` prompts at a time. A prompt longer than the model reads is refused (``check_prompt_lengths``), as
``cmrdx prompts lint`` calls it an error: the model would score only its first tokens, a text the author did not
write.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrdx import config
from cmrdx.errors import PromptBankError
from cmrdx.fileio import atomic_write
from cmrdx.vocab import Call
from cmrdx.zeroshot.bank import Calibration, Finding, PromptBank

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.model.manifest import Manifest

log = logging.getLogger(__name__)

# Prompts per call of the text encoder. A call pads every prompt to the longest of the call and the encoder's
# activations grow with prompts x length, so one call for a whole bank grows without bound (10,000 prompts took
# 8 GB); 64 keeps a call to tens of MB and the per-call overhead negligible.
TEXT_BATCH = 64


def normalise_text(text: str) -> str:
    """The cache key's text: whitespace collapsed (case kept: a cased model tells 'LV' from 'lv')."""
    return " ".join(text.split())


class TextEmbeddingCache:
    """Prompt embeddings on disk, one .npz per model, keyed by sha256(model sha256 + normalised text).

    Writes are atomic (a temporary file renamed over the old one), so a crash never leaves a torn cache.
    """

    def __init__(self, model_sha256: str, folder: Path | None = None):
        self.model_sha256 = model_sha256
        self.folder = Path(folder) if folder else config.home() / "cache" / "text"
        self.path = self.folder / f"{model_sha256[:32]}.npz"
        self._mem: dict[str, np.ndarray] = {}
        if self.path.is_file():
            try:
                with np.load(self.path) as z:
                    self._mem = {k: z[k] for k in z.files}
            except (OSError, ValueError) as exc:  # a damaged cache is rebuilt, never fatal
                log.warning("%s: unreadable text-embedding cache (%s); rebuilding", self.path, exc)

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.model_sha256}\0{normalise_text(text)}".encode()).hexdigest()

    def get(self, texts: Sequence[str], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """(N, D) embeddings of ``texts``; only texts never seen with this model are encoded."""
        keys = [self.key(t) for t in texts]
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in self._mem))
        if missing:
            emb = encode_batched([normalise_text(t) for t in missing], encode)
            for t, e in zip(missing, emb):
                self._mem[self.key(t)] = e
            self._save()
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._mem[k] for k in keys])

    def _save(self) -> None:
        try:
            atomic_write(self.path, lambda f: np.savez(f, **self._mem))  # type: ignore[arg-type]  # numpy's stub reads **kwds as allow_pickle
        except OSError as exc:  # a read-only home must not stop a classification
            log.warning("text-embedding cache not written to %s: %s", self.folder, exc)


@dataclass
class FindingScore:
    """One finding's result for one study.

    ``score`` is the mean cosine similarity with the prompts (reference protocol), or, when the finding has
    negative prompts, the softmax probability of positive over negative at the bank's temperature (0-1).
    ``probability`` is the calibrated probability when the bank holds a Platt or isotonic map for the model.
    ``call``: present / absent / uncertain (|margin| < the bank's uncertain_margin) / "no threshold" /
    "not assessable" (the study lacks images the finding ``requires``: the score is kept for the record, but no
    call, probability or severity is made). ``reason`` says why a call is not assessable or was made
    uncertain; ``notes`` list the recipe's departures that concern the finding's views.
    """

    id: str
    label: str
    score: float
    kind: str  # "mean-cosine" or "softmax"
    threshold: float | None
    margin: float | None
    call: str
    probability: float | None = None
    severity: str | None = None  # best-matching severity level, when the finding has severity prompts
    severity_scores: dict[str, float] = field(default_factory=dict)
    prompt_similarities: dict[str, float] = field(default_factory=dict)
    code: dict[str, str] | None = None
    bank: str = ""
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def assessable(self) -> bool:
        return self.call != Call.NOT_ASSESSABLE

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["call"] = str(self.call)
        return d


def _probability(cal: Calibration, score: float) -> float | None:
    if cal.platt is not None:
        a, b = cal.platt
        return float(1.0 / (1.0 + np.exp(-(a * score + b))))
    if cal.isotonic is not None:
        xs, ys = cal.isotonic
        return float(np.interp(score, xs, ys))
    return None


def score_finding(
    study_emb: np.ndarray,
    finding: Finding,
    text_emb: dict[str, np.ndarray],
    bank: PromptBank,
    model_name: str,
    model_sha256: str | None,
    views: Collection[str] | None = None,
) -> FindingScore:
    """Score one finding for one L2-normalised study embedding (D,). ``views``: the study's view keys; when given,
    a finding whose ``requires`` they do not meet is "not assessable" (None: not checked, e.g. benchmarks on
    complete phantom studies)."""
    sims = {t: float(np.dot(study_emb, text_emb[t])) for t in finding.all_texts}
    pos = float(np.mean([sims[t] for t in finding.prompts]))
    if finding.negative_prompts:
        neg = float(np.mean([sims[t] for t in finding.negative_prompts]))
        z = np.array([pos, neg]) / bank.temperature
        z -= z.max()
        score, kind = float(np.exp(z[0]) / np.exp(z).sum()), "softmax"
    else:
        score, kind = pos, "mean-cosine"
    sev_scores = {lvl: float(np.mean([sims[t] for t in ps])) for lvl, ps in finding.severity.items()}
    cal = finding.calibration_for(model_name, model_sha256)
    missing = finding.missing(views) if views is not None else []
    reason = None
    call: str
    if cal is None:
        threshold = margin = None
        call = Call.NO_THRESHOLD
    else:
        threshold = cal.threshold
        margin = score - threshold
        call = Call.UNCERTAIN if abs(margin) < bank.uncertain_margin else (Call.PRESENT if margin > 0 else Call.ABSENT)
    if missing:
        call, margin, threshold = Call.NOT_ASSESSABLE, None, None
        reason = "needs " + "; and ".join(r.describe() for r in missing) + ": not in this study"
        cal = None
    return FindingScore(
        id=finding.id,
        label=finding.label,
        score=score,
        kind=kind,
        threshold=threshold,
        margin=margin,
        call=call,
        probability=_probability(cal, score) if cal is not None else None,
        severity=max(sev_scores, key=lambda k: sev_scores[k]) if sev_scores and call in (Call.PRESENT, Call.UNCERTAIN) else None,
        severity_scores=sev_scores,
        prompt_similarities=sims,
        code=finding.code,
        bank=bank.name,
        reason=reason,
    )


def encode_batched(texts: Sequence[str], encode: Callable[[list[str]], np.ndarray],
                   batch: int = TEXT_BATCH) -> np.ndarray:
    """(N, D) float32 embeddings of ``texts``, ``encode`` called on at most ``batch`` texts at a time."""
    parts = [np.asarray(encode(list(texts[i:i + batch])), dtype=np.float32) for i in range(0, len(texts), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


@lru_cache(maxsize=4)
def _counting_tokenizer(path: str) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    tok.no_padding()
    tok.no_truncation()  # the encoder truncates; counting must see the whole prompt
    return tok


def check_prompt_lengths(bank: PromptBank, manifest: Manifest) -> None:
    """Refuse (PromptBankError naming the file, line, finding and prompt) a prompt longer than the model's
    tokenizer reads (``max_length`` tokens, special tokens included): the encoder would truncate it silently."""
    limit = int(manifest.tokenizer.get("max_length", 512))
    tok = _counting_tokenizer(str(manifest.tokenizer_file))
    for f in bank.findings:
        texts = f.all_texts
        for text, enc in zip(texts, tok.encode_batch(texts)):
            n = len(enc.ids)
            if n > limit:
                short = text if len(text) <= 60 else text[:57] + "..."
                raise PromptBankError(
                    f"{bank.path or bank.name}:{f.line or 1}: findings[{f.id}]: prompt {short!r} is {n} tokens, over "
                    f"the {limit} that model {manifest.name!r} reads",
                    hint=f"shorten it (`cmrdx prompts lint {bank.path or bank.name}` lists every over-long prompt)",
                )


def bank_text_embeddings(bank: PromptBank, encode_texts: Callable[[list[str]], np.ndarray],
                         cache: TextEmbeddingCache | None, *, manifest: Manifest | None = None) -> dict[str, np.ndarray]:
    """text -> (D,) embedding for every prompt of the bank, through the cache when given, encoded ``TEXT_BATCH``
    prompts at a time.

    ``manifest``: the model's, for the prompt-length check (``check_prompt_lengths``); by default it is taken from
    ``encode_texts`` when that is a model encoder's bound method (``Encoder.encode_texts``), which is how every
    caller passes it, so no caller can skip the check by accident.
    """
    if manifest is None:
        manifest = getattr(getattr(encode_texts, "__self__", None), "manifest", None)
    if manifest is not None:
        check_prompt_lengths(bank, manifest)
    texts = bank.texts
    emb = cache.get(texts, encode_texts) if cache is not None else encode_batched(texts, encode_texts)
    return {t: e for t, e in zip(texts, emb)}


def score_bank(study_emb: np.ndarray, bank: PromptBank, text_emb: dict[str, np.ndarray],
               model_name: str, model_sha256: str | None, views: Collection[str] | None = None) -> list[FindingScore]:
    """Every finding of ``bank`` for one study, in bank order (``views``: see ``score_finding``)."""
    return [score_finding(study_emb, f, text_emb, bank, model_name, model_sha256, views) for f in bank.findings]


def note_departures(scores: Sequence[FindingScore], bank: PromptBank, departures: Sequence[tuple[str, str]]) -> None:
    """Attach to each finding of ``bank`` the montage departures (``(wanted view key, message)`` pairs, e.g. from
    ``RecipeResult.departures``) that concern the views it requires or concerns (in place)."""
    by_id = {f.id: f for f in bank.findings}
    for s in scores:
        f = by_id.get(s.id)
        if f is None or s.bank != bank.name:
            continue
        wants = {v for r in f.requires for v in r.any_of} | set(f.views)
        for wanted, message in departures:
            role = wanted.partition(":")[0]
            if wanted in wants or f"{role}:*" in wants:
                s.notes.append(message)
        s.notes = list(dict.fromkeys(s.notes))


def make_uncertain(s: FindingScore, reason: str) -> None:
    """Turn a present / absent call into "uncertain" with ``reason`` (in place; the score and threshold stay); a call
    already uncertain gets the reason too."""
    if s.call in (Call.PRESENT, Call.ABSENT, Call.UNCERTAIN):
        s.call = Call.UNCERTAIN
        s.reason = reason if not s.reason else f"{reason}; {s.reason}"
        s.probability = None


def rank(scores: Sequence[FindingScore]) -> list[FindingScore]:
    """Findings ranked for display: by calibrated probability, else by margin over the threshold, else score;
    findings that cannot be assessed come last."""
    def key(s: FindingScore) -> tuple:
        if not s.assessable:
            return (-1, s.score)
        if s.probability is not None:
            return (2, s.probability)
        if s.margin is not None:
            return (1, s.margin)
        return (0, s.score)

    return sorted(scores, key=key, reverse=True)
