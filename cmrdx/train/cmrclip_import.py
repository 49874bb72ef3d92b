"""Import the released CMR-CLIP checkpoint (``pytorch_model.bin`` + ``config.json`` + ``vocab.txt``) into a
cmrdx model folder.

The reference ``config.json`` holds ``video_params`` (``num_frames``, ...), ``text_params`` (``model``: the
BERT it started from) and ``projection_dim``. Every shape is read from the checkpoint tensors and
cross-checked with the config; head counts cannot be seen in shapes and default to width / 64 (12 for
ViT-B and BERT-base). ``video_params.num_heads`` and ``text_params.num_attention_heads`` override them
(cmrdx extensions, used by tests with tiny models).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from cmrdx.errors import ModelError
from cmrdx.model.manifest import sha256_file
from cmrdx.recipe import get_recipe
from cmrdx.train.export import ExportOptions, ExportReport, export_model_folder
from cmrdx.train.model import CMRClip, config_from_state_dict, load_state_dict_strict

log = logging.getLogger(__name__)

DEFAULT_LICENCE = (
    "CMR-CLIP code: MIT (Makiya11/CMRCLIP). Weights: see the hub repository makiyeah/CMRCLIP for their terms. "
    "Research and demonstration use only; not a medical device."
)


def load_cmrclip(checkpoint: Path, config_path: Path) -> tuple[CMRClip, dict[str, Any]]:
    """Build the torch model from a checkpoint + reference config.json; strict key loading.

    Returns (model in eval mode, the parsed config)."""
    try:
        cfg_json = json.loads(Path(config_path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {config_path}: {exc}") from exc
    try:
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read the checkpoint {checkpoint}: {exc}") from exc
    vp, tp = cfg_json.get("video_params", {}), cfg_json.get("text_params", {})
    try:
        cfg = config_from_state_dict(state, heads=vp.get("num_heads"), text_heads=tp.get("num_attention_heads"))
    except KeyError as exc:
        raise ModelError(f"{checkpoint} lacks the CMR-CLIP tensor {exc}", hint="is this a CMR-CLIP pytorch_model.bin?") from exc
    if "num_frames" in vp and int(vp["num_frames"]) != cfg.video.num_frames:
        raise ModelError(
            f"{config_path} says num_frames={vp['num_frames']} but {checkpoint}'s temporal_embed has {cfg.video.num_frames}"
        )
    if "projection_dim" in cfg_json and int(cfg_json["projection_dim"]) != cfg.projection_dim:
        raise ModelError(f"{config_path} says projection_dim={cfg_json['projection_dim']}, the checkpoint has {cfg.projection_dim}")
    model = CMRClip(cfg)
    try:
        load_state_dict_strict(model, state)
    except ValueError as exc:
        raise ModelError(f"{checkpoint}: {exc}") from exc
    return model.eval(), cfg_json


def import_cmrclip(
    checkpoint: Path,
    config_path: Path,
    vocab: Path,
    out: Path,
    *,
    name: str = "cmrclip",
    version: str = "1.0",
    lowercase: bool = True,
    max_length: int = 512,
    licence: str = DEFAULT_LICENCE,
    options: ExportOptions | None = None,
) -> ExportReport:
    """Checkpoint -> model folder ``out`` (see ``cmrdx.train.export``). The reference tokenises lower-cased
    text (Bio_ClinicalBERT ships no tokenizer config, so BertTokenizer's ``do_lower_case=True`` applies)."""
    checkpoint, config_path, vocab, out = map(Path, (checkpoint, config_path, vocab, out))
    model, cfg_json = load_cmrclip(checkpoint, config_path)
    with open(vocab, encoding="utf-8") as fh:
        n_vocab = sum(1 for _ in fh)
    if n_vocab != model.cfg.text.vocab_size:
        raise ModelError(f"{vocab} has {n_vocab} tokens but the checkpoint's word embeddings have {model.cfg.text.vocab_size}")
    v = model.cfg.video
    recipe = get_recipe("cmrclip-v1", frames=v.num_frames, image_size=v.img_size)
    provenance = {
        "source": "CMR-CLIP (Makiya11/CMRCLIP, weights makiyeah/CMRCLIP)",
        "checkpoint": {"file": checkpoint.name, "sha256": sha256_file(checkpoint)},
        "config": {"file": config_path.name, "sha256": sha256_file(config_path), "content": cfg_json},
        "text_model": cfg_json.get("text_params", {}).get("model"),
    }
    return export_model_folder(
        model, out, vocab_path=vocab, name=name, version=version,
        recipe={"name": "cmrclip-v1", "params": recipe.to_dict()},
        lowercase=lowercase, max_length=max_length, provenance=provenance, licence=licence, options=options,
    )
