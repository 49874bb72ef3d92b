"""Wording shared by the report styles (``report``, ``report_variety``): severity words, coronary territory
names, the seeded picker, and a randomised study's phrasing options. numpy only."""

from __future__ import annotations

import numpy as np

_SEV_ADJ = {"mild": ["mild", "mild", "slight"], "moderate": ["moderate"], "severe": ["severe", "marked", "significant"]}
_SEV_ADV = {"mild": ["mildly", "mildly", "slightly"], "moderate": ["moderately"], "severe": ["severely", "markedly"]}
_WALL_NAMES = {
    "LAD": ["anterior wall and septum", "anteroseptal wall", "LAD territory"],
    "RCA": ["inferior wall", "inferoseptal and inferior walls", "RCA territory"],
    "LCx": ["lateral wall", "inferolateral and anterolateral walls", "circumflex territory"],
}


def report_options(seed: int) -> dict[str, object]:
    """Phrasing options of a randomised study's report, drawn from its seed: spelling (British or American),
    whether measurements are quoted, and the register of negations."""
    rng = np.random.default_rng([int(seed), 0xD0A1, 0x0B7])
    return {"spelling": str(rng.choice(["british", "american"])), "measurements": bool(rng.random() < 0.65),
            "negation": str(rng.choice(["plain", "evidence", "absent"]))}


class _Pick:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def __call__(self, options: list[str] | tuple[str, ...]) -> str:
        return str(options[int(self.rng.integers(len(options)))])
