"""Import a tiny random-weight checkpoint in the released layout, then check the ONNX model folder:
parity with torch, dynamic batch, text with varied lengths, tokenizer, tamper refusal, registry, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from typer.testing import CliRunner  # noqa: E402

from cmrdx.cli import app  # noqa: E402
from cmrdx.errors import ModelError  # noqa: E402
from cmrdx.model.manifest import load_manifest  # noqa: E402
from cmrdx.train.model import CMRClip, CMRClipConfig, TextConfig, VideoConfig  # noqa: E402

CFG = CMRClipConfig(
    video=VideoConfig(img_size=32, patch_size=8, width=32, depth=2, heads=4, num_frames=4),
    text=TextConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=64),
    projection_dim=16,
)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "left", "ventricle", "is", "dilated", "the", "there",
         "##s", "with", "sys", "##tol", "##ic", "dys", "##function", "a", ".", "LV", "Left", "scar", "enhancement"]
WORDS += [f"w{i}" for i in range(40 - len(WORDS))]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, CMRClip]:
    """checkpoint + config.json + vocab.txt as the hub ships them (plus head counts, a cmrdx extension)."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    m = CMRClip(CFG).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.startswith("video_model"):
                p.add_(torch.randn_like(p) * 0.2)
    sd = m.state_dict()
    sd["text_model.embeddings.position_ids"] = torch.arange(64)[None]
    torch.save(sd, d / "pytorch_model.bin")
    (d / "config.json").write_text(json.dumps({
        "video_params": {"model": "SpaceTimeTransformer", "arch_config": "base_patch16_224", "num_frames": 4,
                         "pretrained": True, "time_init": "zeros", "num_heads": 4},
        "text_params": {"model": "tiny-bert", "pretrained": True, "input": "text", "num_attention_heads": 2},
        "projection_dim": 16, "load_checkpoint": None, "projection": "minimal"}))
    (d / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return d, m


@pytest.fixture(scope="module")
def folder(source, tmp_path_factory) -> Path:
    src, _ = source
    out = tmp_path_factory.mktemp("models") / "tiny"
    res = CliRunner().invoke(app, ["models", "import-cmrclip", "--checkpoint", str(src / "pytorch_model.bin"),
                                   "--config", str(src / "config.json"), "--vocab", str(src / "vocab.txt"),
                                   "--out", str(out), "--name", "tiny"])
    assert res.exit_code == 0, res.output
    assert "video_float32_rel_error" in res.output
    return out


def test_folder_contents_and_manifest(folder):
    m = load_manifest(folder)  # verifies every sha256
    assert m.name == "tiny" and m.embedding_dim == 16
    assert set(m.files) == {"video.onnx", "video.fp16.onnx", "video.int8.onnx", "text.onnx", "tokenizer.json"}
    assert m.video["frames"] == 4 and m.video["image_size"] == 32
    assert m.tokenizer["lowercase"] is True and m.tokenizer["max_length"] == 512
    assert m.recipe["name"] == "cmrclip-v1"
    p = m.recipe_params()
    assert (p.frames, p.image_size) == (4, 32)
    checks = m.provenance["checks"]
    assert checks["video_float32_rel_error"] <= 1e-4 and checks["text_float32_rel_error"] <= 1e-4
    assert checks["video_float16_min_cosine"] >= 0.999
    # fused: depth x (space, time) x (CLS, patch groups), less the last block's patch space attention
    assert checks["video_attention_ops"] == 2 * 2 * 2 - 1
    assert m.provenance["checkpoint"]["sha256"]
    assert "MIT" in m.licence


def test_encoder_matches_torch_with_dynamic_batch(folder, source):
    from cmrdx.model.encoder import Encoder

    _, model = source
    enc = Encoder(folder, device="cpu")
    assert enc.device == "cpu" and enc.precision == "float32"
    for b in (1, 3):
        x = np.random.default_rng(b).standard_normal((b, 4, 3, 32, 32)).astype(np.float32)
        got = enc.encode_studies(x)
        with torch.no_grad():
            ref = torch.nn.functional.normalize(model.encode_video(torch.from_numpy(x)), dim=1).numpy()
        assert got.shape == (b, 16) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=2e-5)
    with pytest.raises(ModelError, match="shape"):
        enc.encode_studies(np.zeros((1, 5, 3, 32, 32), np.float32))


def test_int8_variant_close_to_float32(folder):
    from cmrdx.model.encoder import Encoder

    x = np.random.default_rng(7).standard_normal((2, 4, 3, 32, 32)).astype(np.float32)
    a = Encoder(folder, device="cpu").encode_studies(x)
    b = Encoder(folder, device="cpu", precision="int8").encode_studies(x)
    assert (a * b).sum(1).min() >= 0.99


def test_text_encoding_varied_lengths_matches_torch(folder, source):
    from cmrdx.model.encoder import Encoder

    _, model = source
    enc = Encoder(folder, device="cpu")
    texts = ["Left ventricle is dilated", "There is scar", "LV systolic dysfunction with a dilated left ventricle ."]
    got = enc.encode_texts(texts)
    assert got.shape == (3, 16)
    for i, t in enumerate(texts):  # each alone (no padding) equals its row in the padded batch
        ids, mask = enc.tokenize([t])
        with torch.no_grad():
            ref = torch.nn.functional.normalize(model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask)), dim=1)
        np.testing.assert_allclose(got[i], ref[0].numpy(), atol=2e-5)
    # lower-cased like the reference: case does not change the embedding
    np.testing.assert_allclose(enc.encode_texts(["LEFT VENTRICLE IS DILATED"]), got[:1], atol=1e-6)
    assert enc.encode_texts([]).shape == (0, 16)


def test_tokenizer_equals_transformers_bert_tokenizer(folder, source):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    src, _ = source
    ours = Tokenizer.from_file(str(folder / "tokenizer.json"))
    # transformers 5 keeps the classic vocab-file BertTokenizer as BertTokenizerLegacy
    cls = getattr(transformers, "BertTokenizerLegacy", None) or transformers.BertTokenizer
    ref = cls(vocab_file=str(src / "vocab.txt"), do_lower_case=True)
    for t in ["Left ventricle is dilated.", "There is systolic dysfunction", "LV scar; unknownword é", "  a  "]:
        assert ours.encode(t).ids == ref(t)["input_ids"]


def test_tampered_onnx_refused_by_name(folder, tmp_path):
    bad = tmp_path / "tiny"
    shutil.copytree(folder, bad)
    with open(bad / "video.onnx", "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelError, match="video.onnx"):
        load_manifest(bad)
    from cmrdx.model.encoder import Encoder

    with pytest.raises(ModelError, match="video.onnx"):
        Encoder(bad, device="cpu")
    res = CliRunner().invoke(app, ["models", "verify", str(bad)])
    assert res.exit_code != 0 and "video.onnx" in str(res.exception)
    (bad / "text.onnx").unlink()
    with pytest.raises(ModelError, match="text.onnx: missing"):
        load_manifest(bad)


def test_explicit_cuda_unavailable_is_an_error(folder):
    import onnxruntime as ort

    from cmrdx.model.encoder import Encoder

    try:
        enc = Encoder(folder, device="cuda")
    except ModelError as exc:
        assert "cuda" in str(exc).lower()
    else:  # a machine with a working GPU: then CUDA must really be the provider
        assert enc.device == "cuda" and enc._video.get_providers()[0] == "CUDAExecutionProvider"
    auto = Encoder(folder, device="auto")
    assert auto.device in ("cpu", "cuda") and auto.device_note
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert auto.device == "cpu"


def test_registry_and_cli_without_loading_a_model(folder, tmp_path, monkeypatch):
    import sys

    monkeypatch.setenv("CMRDX_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    shutil.copytree(folder, tmp_path / "models" / "tiny")
    (tmp_path / "models" / "junk").mkdir()  # a folder without a manifest is ignored
    from cmrdx.model.registry import list_models, resolve

    names = [(e.name, e.source) for e in list_models()]
    assert ("tiny", "user") in names
    assert resolve("tiny") == tmp_path / "models" / "tiny"
    assert resolve(str(folder)) == folder
    with pytest.raises(ModelError, match="no model named"):
        resolve("nope")
    r = CliRunner()
    out = r.invoke(app, ["models", "list", "--json"])
    assert out.exit_code == 0 and '"tiny"' in out.output
    out = r.invoke(app, ["models", "info", "tiny"])
    assert out.exit_code == 0 and json.loads(out.output)["recipe"]["name"] == "cmrclip-v1"
    out = r.invoke(app, ["models", "verify", "tiny"])
    assert out.exit_code == 0 and "intact" in out.output
    del sys  # list/info/verify never build a session: checked in a clean process in test_model_imports


def test_import_refuses_mismatched_config(source, tmp_path):
    from cmrdx.train.cmrclip_import import import_cmrclip

    src, _ = source
    cfg = json.loads((src / "config.json").read_text())
    cfg["video_params"]["num_frames"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="num_frames"):
        import_cmrclip(src / "pytorch_model.bin", tmp_path / "config.json", src / "vocab.txt", tmp_path / "out")
    (tmp_path / "vocab.txt").write_text("\n".join(WORDS[:30]) + "\n")
    with pytest.raises(ModelError, match="tokens"):
        import_cmrclip(src / "pytorch_model.bin", src / "config.json", tmp_path / "vocab.txt", tmp_path / "out")
