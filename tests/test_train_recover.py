"""Warm starts from a cmrdx model folder: the torch weights recovered from its ONNX files (cmrdx.train.recover)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

pytestmark = [pytest.mark.torch, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
# 0.5.0 as released, the warm start of the bundled 0.6.0's recipe (a model with a finding stream is not recovered:
# test_findstream.py checks that it is refused)
BUNDLED = ROOT / "models" / "bases" / "cmrdx-phantom-small-0.5.0"


@pytest.fixture(scope="module")
def recovered():
    from cmrdx.train.finetune import load_warm_start

    return load_warm_start(BUNDLED)


def test_the_bundled_models_weights_come_back_from_its_onnx_files(recovered):
    """Every tensor on the exported towers' path is recovered, and the towers reproduce the shipped files."""
    from cmrdx.model.manifest import load_manifest

    m = load_manifest(BUNDLED)
    info = recovered.info
    assert info["model"] == {"name": m.name, "version": m.version, "sha256": m.sha256}
    assert info["recovery"]["video_rel_error"] < 1e-5 and info["recovery"]["text_rel_error"] < 1e-5
    assert info["recovery"]["not_in_onnx"] == ["text_model.pooler.dense.weight", "text_model.pooler.dense.bias"]
    arch = m.provenance["architecture"]
    state = recovered.state
    assert state["video_model.blocks.0.attn.qkv.weight"].shape == (3 * arch["video"]["width"], arch["video"]["width"])
    assert state["video_model.temporal_embed"].shape == (1, arch["video"]["num_frames"], arch["video"]["width"])
    assert any(k.startswith("motion.") for k in state)  # the motion stream, batch-norm statistics included
    assert "motion.norm.running_var" in state and float(state["motion.norm.running_var"].min()) > 0
    # the vocabulary: line i is the tokenizer's token i
    tok = json.loads((BUNDLED / "tokenizer.json").read_text())["model"]["vocab"]
    lines = recovered.vocab.splitlines()
    assert len(lines) == arch["text"]["vocab_size"] and all(lines[i] == t for t, i in tok.items())


def test_recovered_weights_equal_the_onnx_outputs_on_a_real_study(recovered):
    """Not only random inputs: the example study's model input through the recovered torch tower gives the
    embedding the shipped video.onnx gives."""
    import onnxruntime as ort
    import torch

    from cmrdx.model.manifest import load_manifest
    from cmrdx.recipe import apply_recipe
    from cmrdx.study.assemble import assemble_study
    from cmrdx.train.model import CMRClip, CMRClipConfig
    from cmrdx.train.recover import architecture

    m = load_manifest(BUNDLED)
    model = CMRClip(CMRClipConfig.from_dict(architecture(BUNDLED, m.provenance))).eval()
    model.load_state_dict(recovered.state)
    x = apply_recipe(assemble_study(ROOT / "examples" / "phantom-study"), m.recipe_params()).array[None]
    with torch.no_grad():
        mine = model.encode_video(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(BUNDLED / m.video["float32"]), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"video": x})[0]
    cos = float((mine * ref).sum() / np.linalg.norm(mine) / np.linalg.norm(ref))
    assert cos > 0.99999 and np.abs(mine - ref).max() < 1e-4 * np.abs(ref).max()


def test_an_altered_or_unknown_folder_is_refused_with_the_reason(tmp_path):
    from cmrdx.train.finetune import load_warm_start

    # a weight file changed after export: the manifest's sha256 catches it before any recovery
    bad = tmp_path / "altered"
    shutil.copytree(BUNDLED, bad)
    with open(bad / "text.onnx", "r+b") as f:
        f.seek(-64, 2)
        f.write(b"\0" * 64)
    with pytest.raises(ValueError, match=r"init_from .*text\.onnx"):
        load_warm_start(bad)
    # a folder whose manifest records no architecture (not exported by cmrdx training) is named as such
    noarch = tmp_path / "noarch"
    shutil.copytree(BUNDLED, noarch)
    man = json.loads((noarch / "manifest.json").read_text())
    man["provenance"].pop("architecture")
    (noarch / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ValueError, match="no provenance.architecture"):
        load_warm_start(noarch)
