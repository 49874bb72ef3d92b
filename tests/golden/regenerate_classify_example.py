"""Regenerate tests/golden/classify-example.json: `cmrdx classify examples/phantom-study --json` with the
shipped default model and bank. Run after the default model or the shipped bank changes, and review the diff:

    .venv/bin/python tests/golden/regenerate_classify_example.py
"""

from __future__ import annotations

import json
from pathlib import Path

from cmrdx.pipeline.classify import classify

ROOT = Path(__file__).resolve().parents[2]


def golden() -> dict:
    d = classify(ROOT / "examples" / "phantom-study", device="cpu").to_dict()
    keep = ("id", "score", "kind", "threshold", "call", "severity")
    return {
        "study_uid": d["study_uid"],
        "model_sha256": d["run"]["model"]["sha256"],
        "bank_sha256": [b["sha256"] for b in d["run"]["banks"]],
        "findings": [{k: f[k] for k in keep} for f in d["findings"]],
        "views_used": {k: v["view"] for k, v in d["views_used"].items()},
        "series_uids_used": d["run"]["series_uids_used"],
        "typicality": d["typicality"]["status"],
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("classify-example.json")
    out.write_text(json.dumps(golden(), indent=2) + "\n")
    print(f"wrote {out}")
