"""The CMR-CLIP import with bounded memory: the checkpoint is memory-mapped, each tower is built from the mapped
file when the export needs it (the other tower stays on the ``meta`` device: no memory), and the import reports
its stages. The peak memory of the full-size import is measured in bench/bench_laptop.py (BENCHMARKS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from cmrdx.errors import ModelError  # noqa: E402
from cmrdx.train.model import CMRClip, CMRClipConfig, TextConfig, VideoConfig  # noqa: E402

CFG = CMRClipConfig(
    video=VideoConfig(img_size=32, patch_size=8, width=32, depth=2, heads=4, num_frames=4),
    text=TextConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=64),
    projection_dim=16,
)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "left", "ventricle", "is", "dilated"]
WORDS += [f"w{i}" for i in range(40 - len(WORDS))]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("CMRDX_HOME", str(tmp_path / "home"))


def _checkpoint(d: Path, *, legacy: bool = False) -> tuple[Path, CMRClip]:
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    m = CMRClip(CFG).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.startswith("video_model"):
                p.add_(torch.randn_like(p) * 0.2)
    sd = m.state_dict()
    sd["text_model.embeddings.position_ids"] = torch.arange(64)[None]
    torch.save(sd, d / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    (d / "config.json").write_text(json.dumps({
        "video_params": {"num_frames": 4, "num_heads": 4},
        "text_params": {"model": "tiny-bert", "num_attention_heads": 2}, "projection_dim": 16}))
    (d / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return d, m


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process mapped from ``path`` (Linux /proc/self/maps)."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("no /proc/self/maps on this system")
    out = []
    for line in maps.read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] == str(path.resolve()):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi))
    return out


def test_each_tower_is_built_alone_from_the_mapped_checkpoint(tmp_path):
    from cmrdx.train.cmrclip_import import CheckpointParts, _read_state, check_layout

    src, ref = _checkpoint(tmp_path / "ckpt")
    ckpt = src / "pytorch_model.bin"
    state = _read_state(ckpt)
    check_layout(state, CFG, ckpt)  # keys and shapes, strictly, against a model with no memory behind it
    del state
    parts = CheckpointParts(ckpt, CFG)
    v = parts.video()
    assert all(not p.is_meta for p in v.video_model.parameters()) and all(not p.is_meta for p in v.vid_proj.parameters())
    assert all(p.is_meta for p in v.text_model.parameters())  # the other tower takes no memory
    ranges = _mapped_ranges(ckpt)
    ptr = v.video_model.blocks[0].attn.qkv.weight.data_ptr()
    assert any(lo <= ptr < hi for lo, hi in ranges), "the video weights are copies, not the mapped file"
    x = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(v.encode_video(x).numpy(), ref.encode_video(x).numpy(), atol=1e-6)
    del v
    t = parts.text()
    assert all(p.is_meta for p in t.video_model.parameters())
    assert all(not b.is_meta for b in t.text_model.buffers())  # BERT's position ids and token types, made
    ids = torch.tensor([[2, 5, 6, 7, 8, 3, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        np.testing.assert_allclose(t.encode_text(ids, mask).numpy(), ref.encode_text(ids, mask).numpy(), atol=1e-6)


def test_a_checkpoint_that_does_not_fit_is_refused_before_any_export(tmp_path):
    from cmrdx.train.cmrclip_import import import_cmrclip

    src, ref = _checkpoint(tmp_path / "ckpt")
    sd = ref.state_dict()
    del sd["video_model.blocks.1.mlp.fc2.weight"]
    torch.save(sd, src / "bad.bin")
    with pytest.raises(ModelError, match="missing"):
        import_cmrclip(src / "bad.bin", src / "config.json", src / "vocab.txt", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checked before a single file was written


def test_the_import_reports_its_stages_and_reads_an_old_style_checkpoint(tmp_path):
    from cmrdx.model.manifest import load_manifest
    from cmrdx.train.cmrclip_import import import_cmrclip
    from cmrdx.train.export import ExportOptions

    src, _ = _checkpoint(tmp_path / "ckpt", legacy=True)  # not a zip: cannot be mapped, read whole instead
    seen: list[str] = []
    rep = import_cmrclip(src / "pytorch_model.bin", src / "config.json", src / "vocab.txt", tmp_path / "out",
                         name="tiny", options=ExportOptions(float16=False, validate_phantoms=0), progress=seen.append)
    m = load_manifest(tmp_path / "out")
    assert set(m.precisions()) == {"float32", "int8"}
    first = [s for s in seen if not s.startswith("validating int8:")]
    assert first[:3] == ["reading the checkpoint (memory-mapped) and checking its layout",
                         "hashing the checkpoint for the provenance",
                         "exporting the video tower to ONNX and running it in torch (the reference for the checks)"]
    assert "exporting the text tower to ONNX and checking it against torch" in seen
    assert "validating the int8 copy on real-looking studies" in seen
    # validated on the example study alone (no phantoms asked): recorded, outside the identity
    rec = m.validation["int8"]
    assert rec["studies"] == 1 and rec["file"] == "video.int8.onnx"
    assert rep.checks["int8_validation"] == rec["status"]
    # the optimised graphs of the CPU files were saved on the way: the first use loads them
    assert sorted(p.name.split(".cpu.")[0] for p in (tmp_path / "out" / ".optimized").glob("*.onnx")) == [
        "text", "video", "video.int8"]
