"""The ``finding_stream`` mapping of a training config, checked (``StreamSpec``): what ``TrainConfig`` needs of a
finding stream to describe the model's input and shape, without the trainer (``cmrdx.train.findstream``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.recipe import RecipeParams
    from cmrdx.train.model import FindingStreamConfig

DEFAULT_NEGATION = r"\b(no|not|none|absent|without|negative|normal|unremarkable|preserved)\b"
DEFAULT_TECHNIQUE = r"\b(cine|SSFP|protocol|sequences?)\b"
LGE_SEGMENTS = ("lge_sa", "lge_lax", "lge_2ch", "lge_3ch")


@dataclass(frozen=True)
class StreamSpec:
    """A ``finding_stream`` mapping of a training config, checked (see the module's docstring)."""

    finding: str
    clauses: str
    technique: str = DEFAULT_TECHNIQUE
    negation: str = DEFAULT_NEGATION
    segments: tuple[str, ...] = LGE_SEGMENTS
    frames: int = 16
    heart_crop_mm: float | None = 210.0
    lge_repeats: int | None = None
    width: int = 16
    hold: bool = True
    bank: str = "cmr-findings"
    weight_decay: float = 1e-4
    # training only: each study's grey frames through a random window and gamma (0: none; see ``jitter_grey``)
    intensity_jitter: float = 0.0

    @classmethod
    def from_dict(cls, d: Any) -> StreamSpec:
        """ValueError naming what is wrong: not a mapping, unknown or missing keys, a pattern that does not
        compile, segments the recipe does not know."""
        if not isinstance(d, dict):
            raise ValueError(f"finding_stream must be a mapping of {sorted(f.name for f in fields(cls))}, not {d!r}")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"finding_stream: unknown keys {extra}; known: {sorted(known)}")
        missing = [k for k in ("finding", "clauses") if not d.get(k)]
        if missing:
            raise ValueError(f"finding_stream: give {' and '.join(missing)} (the bank finding, and the pattern that "
                             "files a report clause under it)")
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        spec = cls(**kw)
        for k in ("clauses", "technique", "negation"):
            try:
                re.compile(getattr(spec, k))
            except (re.error, TypeError) as exc:
                raise ValueError(f"finding_stream.{k}: not a regular expression ({exc})") from None
        from cmrdx.recipe import SEGMENTS

        bad = [s for s in spec.segments if s not in SEGMENTS]
        if bad or not spec.segments:
            raise ValueError(f"finding_stream.segments {list(spec.segments)}: give some of {list(SEGMENTS)}")
        if isinstance(spec.intensity_jitter, bool) or not isinstance(spec.intensity_jitter, (int, float)) or not (
                0.0 <= spec.intensity_jitter <= 0.5):
            raise ValueError(f"finding_stream.intensity_jitter: a number from 0 to 0.5, not {spec.intensity_jitter!r}")
        if spec.frames < 1 or spec.width < 1:
            raise ValueError(f"finding_stream: frames and width must be at least 1 (got {spec.frames}, {spec.width})")
        if spec.lge_repeats is not None and not (isinstance(spec.lge_repeats, int) and not isinstance(spec.lge_repeats, bool)
                                                 and 1 <= spec.lge_repeats <= 64):
            raise ValueError(f"finding_stream.lge_repeats: a whole number from 1 to 64 (or null), not "
                             f"{spec.lge_repeats!r}")
        # the bank and the finding, now: not after a warm start has loaded and the study caches have rendered
        from cmrdx.errors import PromptBankError
        from cmrdx.zeroshot.bank import get_bank

        try:
            ids = [f.id for f in get_bank(spec.bank).findings]
        except PromptBankError as exc:
            raise ValueError(f"finding_stream.bank {spec.bank!r}: {exc}") from None
        if spec.finding not in ids:
            raise ValueError(f"finding_stream.finding {spec.finding!r}: not a finding of the bank {spec.bank} "
                             f"({', '.join(ids)})")
        return spec

    def stream_recipe(self, main: RecipeParams) -> RecipeParams:
        """The recipe of the stream's input: the main recipe's settings with the stream's segments, frames and cut."""
        return replace(main, segments=tuple(self.segments), frames=int(self.frames),
                       heart_crop_mm=None if self.heart_crop_mm is None else float(self.heart_crop_mm),
                       lge_repeats=self.lge_repeats, streams=())

    def model_config(self, main: RecipeParams) -> FindingStreamConfig:
        from cmrdx.train.model import FindingStreamConfig

        return FindingStreamConfig(finding=self.finding, frames=int(self.frames), width=int(self.width),
                                   hold=bool(self.hold), mean=float(main.mean[0]), std=float(main.std[0]))

    def files(self, clause: str) -> bool:
        """Whether the clause speaks of the finding (by the recipe's patterns)."""
        return (re.search(self.clauses, clause, re.IGNORECASE) is not None
                and re.search(self.technique, clause, re.IGNORECASE) is None)

    def denies(self, clause: str) -> bool:
        """Whether a filed clause denies the finding (negation and normality words)."""
        return re.search(self.negation, clause, re.IGNORECASE) is not None


def jitter_grey(g: Any, m: float, rng: Any) -> Any:
    """Each study's grey frames (B, F, S, S) in [0, 1] through its own random window and gamma: black level
    a ~ U(-m, m/2) (below 0 lifts the background, as a signed image's window does), white level 1 + U(-m/2, m/2),
    gamma exp(U(-m, m)); the result clipped to [0, 1]. A training augmentation of the stream's contrast: no study
    of another contrast is needed to draw it. ``rng``: a numpy Generator."""
    import torch

    b = g.shape[0]
    lo = torch.as_tensor(rng.uniform(-m, m / 2, b), dtype=g.dtype).view(b, 1, 1, 1)
    hi = torch.as_tensor(1.0 + rng.uniform(-m / 2, m / 2, b), dtype=g.dtype).view(b, 1, 1, 1)
    gamma = torch.as_tensor(rng.uniform(-m, m, b), dtype=g.dtype).exp().view(b, 1, 1, 1)
    return ((g - lo) / (hi - lo)).clamp(0.0, 1.0) ** gamma
