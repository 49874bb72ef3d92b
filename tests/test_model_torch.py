"""The torch model: token layout, attention groups and block order against a naive per-token reference,
SDPA vs the reference-style einsum path, and strict checkpoint key loading."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from cmrdx.train.model import (  # noqa: E402
    CMRClip,
    CMRClipConfig,
    TextConfig,
    VideoConfig,
    config_from_state_dict,
    load_state_dict_strict,
    similarity,
)

TINY = CMRClipConfig(
    video=VideoConfig(img_size=16, patch_size=8, width=16, depth=2, heads=2, num_frames=3),
    text=TextConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=32),
    projection_dim=8,
)


def tiny_model(seed: int = 0) -> CMRClip:
    torch.manual_seed(seed)
    m = CMRClip(TINY).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():  # non-trivial weights everywhere, incl. time attention and norms
            if name.startswith("video_model"):
                p.add_(torch.randn_like(p) * 0.3)
    return m


def naive_video(m: CMRClip, video: torch.Tensor) -> torch.Tensor:
    """Token by token, straight from the CMRCLIP.md description (no reshapes shared with the model)."""
    cfg = m.cfg.video
    vm = m.video_model
    b_, f_, _, _, _ = video.shape
    ps, g = cfg.patch_size, cfg.img_size // cfg.patch_size
    n = g * g
    w = vm.patch_embed.proj.weight.reshape(cfg.width, -1)
    hd = cfg.width // cfg.heads
    outs = []
    for b in range(b_):
        toks = [vm.cls_token[0, 0] + vm.pos_embed[0, 0]]
        for f in range(f_):  # frame-major
            for p in range(n):
                r, c = divmod(p, g)
                patch = video[b, f, :, r * ps:(r + 1) * ps, c * ps:(c + 1) * ps].reshape(-1)
                toks.append(w @ patch + vm.patch_embed.proj.bias + vm.pos_embed[0, 1 + p] + vm.temporal_embed[0, f])
        x = torch.stack(toks)  # (T, D)

        def attn(mod, y, mode):
            qkv = y @ mod.qkv.weight.T + mod.qkv.bias
            q, k, v = qkv.split(cfg.width, dim=1)
            out = torch.zeros_like(y)
            for i in range(y.shape[0]):
                if i == 0:
                    keys = list(range(y.shape[0]))
                else:
                    f, p = divmod(i - 1, n)
                    keys = [0] + ([1 + f * n + pp for pp in range(n)] if mode == "space" else [1 + ff * n + p for ff in range(f_)])
                for h in range(cfg.heads):
                    sl = slice(h * hd, (h + 1) * hd)
                    a = torch.softmax(torch.stack([q[i, sl] @ k[j, sl] for j in keys]) * hd**-0.5, 0)
                    out[i, sl] = sum(a[jj] * v[j, sl] for jj, j in enumerate(keys))
            return out @ mod.proj.weight.T + mod.proj.bias

        for blk in vm.blocks:
            t = x + attn(blk.timeattn, blk.norm3(x), "time")
            x = x + attn(blk.attn, blk.norm1(t), "space")  # residual on x, not t
            x = x + blk.mlp(blk.norm2(x))
        outs.append(vm.norm(x)[0])
    return torch.stack(outs)


def test_video_matches_naive_token_reference():
    m = tiny_model()
    video = torch.randn(2, 3, 3, 16, 16)
    with torch.no_grad():
        ref = naive_video(m, video)
        got = m.video_model(video)
    assert got.shape == (2, 16)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_sdpa_matches_reference_style_einsum_and_fewer_frames():
    m = tiny_model(1)
    video = torch.randn(3, 3, 3, 16, 16)
    with torch.no_grad():
        a = m.encode_video(video)
        b = m.set_attention_impl("einsum").encode_video(video)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        # fewer frames than the model's maximum: first temporal embeddings, both paths agree with naive
        two = video[:, :2]
        torch.testing.assert_close(m.video_model(two), naive_video(m, two), rtol=1e-4, atol=1e-5)
        m.set_attention_impl("sdpa")
        torch.testing.assert_close(m.video_model(two), naive_video(m, two), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        m.set_attention_impl("flash")


def test_time_attention_matters_only_through_space_attention():
    """Zeroing time attention's output projection must leave a block's output equal to a pure
    space block (its residual goes to x, which the next step ignores)."""
    m = tiny_model(2)
    blk = m.video_model.blocks[0]
    x = torch.randn(1, 1 + 3 * 4, 16)
    with torch.no_grad():
        blk.timeattn.proj.weight.zero_()
        blk.timeattn.proj.bias.zero_()
        out = blk(x, 3)
        expect = x + blk.attn(blk.norm1(x), "space", 3)
        expect = expect + blk.mlp(blk.norm2(expect))
    torch.testing.assert_close(out, expect)


def test_text_masked_mean_pooling_ignores_padding():
    m = tiny_model(3)
    ids = torch.tensor([[2, 7, 9, 3, 0, 0], [2, 7, 9, 3, 11, 3]])
    mask = (ids != 0).long()
    mask[1] = 1
    with torch.no_grad():
        padded = m.encode_text(ids, mask)
        alone = m.encode_text(ids[:1, :4], mask[:1, :4])
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-6)
    assert padded.shape == (2, 8)
    s = similarity(padded, padded)
    torch.testing.assert_close(torch.diagonal(s), torch.ones(2))


def test_projection_is_relu_then_linear():
    m = tiny_model()
    assert isinstance(m.vid_proj[0], torch.nn.ReLU) and isinstance(m.vid_proj[1], torch.nn.Linear)
    assert isinstance(m.txt_proj[0], torch.nn.ReLU) and isinstance(m.txt_proj[1], torch.nn.Linear)


def test_state_dict_keys_follow_released_layout():
    keys = set(tiny_model().state_dict())
    for k in ("video_model.cls_token", "video_model.pos_embed", "video_model.temporal_embed",
              "video_model.patch_embed.proj.weight", "video_model.norm.weight", "txt_proj.1.weight",
              "vid_proj.1.bias", "text_model.embeddings.word_embeddings.weight", "text_model.pooler.dense.weight"):
        assert k in keys
    for sub in ("norm1", "attn.qkv", "attn.proj", "timeattn.qkv", "timeattn.proj", "norm2", "mlp.fc1", "mlp.fc2", "norm3"):
        for p in ("weight", "bias"):
            assert f"video_model.blocks.1.{sub}.{p}" in keys
    # nothing else in the video tower
    assert not [k for k in keys if k.startswith("video_model.") and "blocks" not in k and k.split(".")[1] not in
                ("cls_token", "pos_embed", "temporal_embed", "patch_embed", "norm")]


def test_strict_loading_tolerates_only_position_ids():
    src = tiny_model(4)
    sd = dict(src.state_dict())
    sd["text_model.embeddings.position_ids"] = torch.arange(32)[None]  # older transformers wrote it
    dst = CMRClip(TINY)
    load_state_dict_strict(dst, {"state_dict": {"module." + k: v for k, v in sd.items()}})
    torch.testing.assert_close(dst.state_dict()["video_model.temporal_embed"], sd["video_model.temporal_embed"])

    missing = dict(sd)
    del missing["video_model.blocks.0.timeattn.qkv.bias"]
    with pytest.raises(ValueError, match="timeattn.qkv.bias"):
        load_state_dict_strict(CMRClip(TINY), missing)
    extra = dict(sd, **{"video_model.head.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="head.weight"):
        load_state_dict_strict(CMRClip(TINY), extra)
    wrong = dict(sd, **{"vid_proj.1.weight": torch.zeros(9, 16)})
    with pytest.raises(ValueError, match="vid_proj.1.weight"):
        load_state_dict_strict(CMRClip(TINY), wrong)


def test_config_inferred_from_checkpoint_shapes():
    sd = tiny_model().state_dict()
    cfg = config_from_state_dict(sd, heads=2, text_heads=2)
    assert cfg == TINY
    full = config_from_state_dict({k: torch.empty(v) for k, v in {
        "video_model.patch_embed.proj.weight": (768, 3, 16, 16), "video_model.pos_embed": (1, 197, 768),
        "video_model.temporal_embed": (1, 64, 768), "video_model.blocks.11.norm1.weight": (768,),
        "video_model.blocks.0.mlp.fc1.weight": (3072, 768), "text_model.embeddings.word_embeddings.weight": (28996, 768),
        "text_model.encoder.layer.11.output.dense.weight": (768, 3072),
        "text_model.encoder.layer.0.intermediate.dense.weight": (3072, 768),
        "text_model.embeddings.position_embeddings.weight": (512, 768),
        "text_model.embeddings.token_type_embeddings.weight": (2, 768), "vid_proj.1.weight": (512, 768)}.items()})
    assert full == CMRClipConfig()  # the released ViT-B/16 + BERT-base layout, 12 heads each


def test_last_block_cls_only_is_exact():
    m = tiny_model(5)
    video = torch.randn(2, 3, 3, 16, 16)
    with torch.no_grad():
        pruned = m.video_model(video)
        m.video_model.prune_last = False
        full = m.video_model(video)
    torch.testing.assert_close(pruned, full, rtol=1e-5, atol=1e-6)


def test_split_qkv_export_tower_is_exact():
    from cmrdx.train.model import VideoTower

    m = tiny_model(6)
    video = torch.randn(2, 3, 3, 16, 16)
    with torch.no_grad():
        ref = m.encode_video(video)
        tower = VideoTower(m, split=True)
        torch.testing.assert_close(tower(video), ref, rtol=1e-5, atol=1e-6)
    assert "video_model.blocks.0.attn.qkv.weight" in m.state_dict()  # the original is untouched
