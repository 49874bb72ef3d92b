"""A draft impression from a study's calls: the findings called present, in clinical order, in the banks' own
impression phrases; then the findings near their threshold and those that could not be assessed. numpy-free.

The text is a draft for a cardiologist to review and rewrite, marked so wherever it is shown: it repeats the calls
in words and adds nothing the calls do not say. Phrases come from the banks (``impression`` of a finding: a
"present" phrase and one per severity level, and an ``order``; prompts/README.md); a finding without phrases is
named by its label. Order: the findings' ``order`` (lower first), then bank and finding order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cmrdx.vocab import Call
from cmrdx.zeroshot.bank import Finding, PromptBank
from cmrdx.zeroshot.scoring import FindingScore

DRAFT_MARK = "DRAFT - not for clinical use"
DRAFT_NOTICE = (f"{DRAFT_MARK}: composed by software from zero-shot scores; a cardiologist must review and rewrite "
                "it before any use.")
UNORDERED = 1000.0  # findings without an ``order`` come after every ordered one, in bank order


@dataclass
class Impression:
    """A draft impression. ``sentences``: the statements in order, without the marking; ``text``: the whole draft
    as shown (marked DRAFT at its start and end); ``present`` / ``uncertain`` / ``not_assessable``: the finding
    ids behind the statements (``bank/id`` when the banks share an id)."""

    sentences: list[str]
    present: list[str] = field(default_factory=list)
    uncertain: list[str] = field(default_factory=list)
    not_assessable: list[str] = field(default_factory=list)
    draft: bool = True

    @property
    def text(self) -> str:
        return f"{DRAFT_MARK}. " + " ".join(self.sentences) + f" [{DRAFT_NOTICE}]"

    def to_dict(self) -> dict[str, Any]:
        return {"draft": self.draft, "notice": DRAFT_NOTICE, "text": self.text, "sentences": list(self.sentences),
                "present": list(self.present), "uncertain": list(self.uncertain),
                "not_assessable": list(self.not_assessable)}


def _lower_first(text: str) -> str:
    """'Aortic dilation' -> 'aortic dilation' inside a sentence; an abbreviation ('LV dilation') is kept."""
    return text[0].lower() + text[1:] if len(text) > 1 and text[1].islower() else text


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _need(reason: str | None) -> str:
    """'needs X (views): not in this study' -> 'needs X (views)'."""
    return (reason or "").removesuffix(": not in this study").strip()


def compose_impression(scores: Sequence[FindingScore], banks: Sequence[PromptBank], *,
                       typicality: str | None = None) -> Impression:
    """The draft impression of one study's ``scores`` (any order) against ``banks`` (the banks they came from).

    ``typicality``: the study's typicality status; an atypical study is said to be so (its calls are uncertain)."""
    defs: dict[tuple[str, str], tuple[Finding, float]] = {}
    for bi, b in enumerate(banks):
        for fi, f in enumerate(b.findings):
            rank = f.impression_order if f.impression_order is not None else UNORDERED + bi * 100 + fi / 1000
            defs[(b.name, f.id)] = (f, rank + (bi * 1e-6 + fi * 1e-9))  # ties keep bank and finding order
    ids = [s.id for s in scores]

    def name(s: FindingScore) -> str:
        return s.id if ids.count(s.id) == 1 else f"{s.bank}/{s.id}"

    def rank_of(s: FindingScore) -> float:
        d = defs.get((s.bank, s.id))
        return d[1] if d is not None else UNORDERED * 10

    ordered = sorted(scores, key=rank_of)
    present = [s for s in ordered if s.call == Call.PRESENT]
    uncertain = [s for s in ordered if s.call == Call.UNCERTAIN]
    missing = [s for s in ordered if s.call == Call.NOT_ASSESSABLE]
    called = [s for s in ordered if s.call in (Call.PRESENT, Call.ABSENT, Call.UNCERTAIN)]
    sentences: list[str] = []
    for s in present:
        d = defs.get((s.bank, s.id))
        phrase = d[0].impression_phrase(s.severity) if d is not None else None
        sentences.append(_sentence(phrase or (s.label + (f" ({s.severity})" if s.severity else ""))))
    sentences = list(dict.fromkeys(sentences))  # two banks may say the same thing
    if not present:
        if called:
            n = len(called)
            sentences.append(f"No finding called present among the {n} assessed.")
        else:
            sentences.append("No finding called: the prompt banks hold no thresholds for this model.")
    if typicality == "atypical":
        sentences.append("The study is unlike the model's training studies: no call is confident.")
    if uncertain:
        sentences.append("Near the threshold (not called either way): "
                         + ", ".join(_lower_first(s.label) for s in uncertain) + ".")
    if missing:
        sentences.append("Not assessable: " + "; ".join(
            f"{_lower_first(s.label)} ({_need(s.reason)})" if s.reason else _lower_first(s.label) for s in missing)
            + ".")
    return Impression(sentences=sentences, present=[name(s) for s in present],
                      uncertain=[name(s) for s in uncertain], not_assessable=[name(s) for s in missing])
