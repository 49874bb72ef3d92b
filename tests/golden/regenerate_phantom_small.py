"""Regenerate tests/golden/cmrdx-phantom-small.json: the shipped default model's embeddings of the example
study (examples/phantom-study, read through assemble_study + the model's recipe) and of the shipped bank's
prompts. Run after retraining or re-exporting models/cmrdx-phantom-small:

    .venv/bin/python tests/golden/regenerate_phantom_small.py

The test compares within tolerance (onnxruntime on another CPU may differ in the last bits), and checks the
sha256 of the model's float32 video file (``video_sha256``) first, so a changed model asks for this script
rather than failing on numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "cmrdx-phantom-small"
EXAMPLE = ROOT / "examples" / "phantom-study"
BANK = ROOT / "prompts" / "cmr-findings.yaml"
OUT = Path(__file__).with_name("cmrdx-phantom-small.json")


def compute() -> dict:
    from cmrdx.model.encoder import Encoder
    from cmrdx.recipe import apply_recipe
    from cmrdx.study.assemble import assemble_study
    from cmrdx.zeroshot.bank import load_bank

    enc = Encoder(MODEL, device="cpu")
    x = apply_recipe(assemble_study(str(EXAMPLE)), enc.manifest.recipe_params()).array
    study = enc.encode_studies(x[None])[0]
    texts = load_bank(BANK).texts
    return {
        "video_sha256": enc.manifest.files[enc.manifest.video["float32"]]["sha256"],
        "text_sha256": enc.manifest.files[enc.manifest.text["file"]]["sha256"],
        "study": [round(float(v), 7) for v in study],
        "texts": texts,
        "text_embeddings": [[round(float(v), 7) for v in e] for e in enc.encode_texts(texts)],
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(compute(), indent=1) + "\n")
    print(f"wrote {OUT}")
