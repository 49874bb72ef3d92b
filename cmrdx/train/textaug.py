"""Training-time paraphrase of report sentences, so that the text tower reads a cardiologist's own wording.

A text tower trained from scratch on a few report templates learns their word order: it scored the training
sentence "Impaired RV systolic function." 0.90 AUC for RV dysfunction but the published prompt "Right ventricle with
systolic dysfunction" 0.84, although every word of the prompt is in its vocabulary. Easy data augmentation (Wei & Zou,
EMNLP 2019: synonym replacement, random deletion, random swap) with a table of clinical synonyms teaches it that
wording varies while the finding does not. Negations are never deleted or moved: dropping "not" from "The left
ventricle is not dilated" would turn a normal sentence into a finding.
"""

from __future__ import annotations

import re

import numpy as np

# Interchangeable clinical phrasings (each group one meaning). Only standard synonyms and abbreviations: none of them
# is the wording of a prompt bank or of the held-out report style.
SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("left ventricle", "left ventricular", "LV"),
    ("right ventricle", "right ventricular", "RV"),
    ("late gadolinium enhancement", "LGE", "delayed enhancement", "late enhancement", "delayed gadolinium enhancement"),
    ("dilated", "enlarged"),
    ("dilatation", "dilation", "enlargement"),
    ("impaired", "reduced"),
    ("dysfunction", "impairment"),
    ("ejection fraction", "EF"),
    ("thickened", "hypertrophied"),
    ("infarct", "infarction"),
    ("pericardial effusion", "pericardial fluid"),
)
# words whose loss or move changes what a sentence asserts
PROTECTED = frozenset({"no", "not", "normal", "without", "preserved", "none", "absent", "within", "limits", "good",
                       "nor", "neither", "unremarkable", "negative"})

_PHRASE_TO_GROUP = {p.lower(): g for g in SYNONYMS for p in g}
# longest phrases first, so "left ventricular" is matched before a shorter member could be
_PHRASES = re.compile(r"\b(" + "|".join(re.escape(p) for p in sorted(_PHRASE_TO_GROUP, key=len, reverse=True)) + r")\b",
                      re.IGNORECASE)


def _core(word: str) -> str:
    return word.strip(".,;:()!?").lower()


def paraphrase(sentence: str, rng: np.random.Generator, *, p_synonym: float = 0.5, p_drop: float = 0.1,
               p_swap: float = 0.2) -> str:
    """One random rewording of ``sentence``: each synonym phrase replaced by a member of its group with
    probability ``p_synonym``, each unprotected word dropped with probability ``p_drop`` (one word always
    stays), and with probability ``p_swap`` two neighbouring unprotected words swapped."""
    def swap_phrase(m: re.Match) -> str:
        if rng.random() >= p_synonym:
            return m.group(0)
        group = _PHRASE_TO_GROUP[m.group(0).lower()]
        return group[int(rng.integers(len(group)))]

    words = _PHRASES.sub(swap_phrase, sentence).split()
    keep = [w for w in words if _core(w) in PROTECTED or rng.random() >= p_drop]
    words = keep or words[:1]
    if len(words) > 1 and rng.random() < p_swap:
        i = int(rng.integers(len(words) - 1))
        if _core(words[i]) not in PROTECTED and _core(words[i + 1]) not in PROTECTED:
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)
