"""A tiny random-weight CMR-CLIP checkpoint in the released layout (``pytorch_model.bin`` + ``config.json`` +
``vocab.txt``), as the hub ships the real one: for import and fine-tuning tests. The same shapes and words as
the import tests' fixture (tests/test_model_export.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "left", "ventricle", "is", "dilated", "the", "there",
         "##s", "with", "sys", "##tol", "##ic", "dys", "##function", "a", ".", "LV", "Left", "scar", "enhancement"]
WORDS += [f"w{i}" for i in range(40 - len(WORDS))]


def tiny_config() -> Any:
    from cmrdx.train.model import CMRClipConfig, TextConfig, VideoConfig

    return CMRClipConfig(
        video=VideoConfig(img_size=32, patch_size=8, width=32, depth=2, heads=4, num_frames=4),
        text=TextConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64),
        projection_dim=16,
    )


def write_released(folder: Path, seed: int = 0) -> dict[str, Any]:
    """Write the three released files into ``folder``; returns the state dict written (random weights, the video
    tower's spread widened so that its embeddings differ between studies)."""
    import torch

    from cmrdx.train.model import CMRClip

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    m = CMRClip(tiny_config()).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.startswith("video_model"):
                p.add_(torch.randn_like(p) * 0.2)
    sd = m.state_dict()
    sd["text_model.embeddings.position_ids"] = torch.arange(64)[None]  # as transformers 4.x checkpoints hold
    torch.save(sd, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({
        "video_params": {"model": "SpaceTimeTransformer", "arch_config": "base_patch16_224", "num_frames": 4,
                         "pretrained": True, "time_init": "zeros", "num_heads": 4},
        "text_params": {"model": "tiny-bert", "pretrained": True, "input": "text", "num_attention_heads": 2},
        "projection_dim": 16, "load_checkpoint": None, "projection": "minimal"}))
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return sd
