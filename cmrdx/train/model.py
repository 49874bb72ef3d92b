"""CMR-CLIP-compatible model in torch: divided space-time ViT video encoder + BERT text encoder.

Parameter names follow the released checkpoint (``video_model.*``, ``text_model.*``, ``vid_proj.1.*``,
``txt_proj.1.*``) so ``pytorch_model.bin`` loads with ``strict=True``. The video encoder is the "Frozen in
Time" SpaceTimeTransformer: see docs/cmrclip.md for the token layout and block order copied here.

Two attention implementations share the same parameters:

* ``"sdpa"`` (default): ``scaled_dot_product_attention`` on 4-D (groups, heads, tokens, head_dim) tensors
  built with plain reshapes/permutes, so the dynamo exporter emits fused ONNX ``Attention`` ops.
* ``"einsum"``: written the way the reference code writes it ((batch*heads), tokens, head_dim layout,
  pre-scaled queries, einsum + softmax). Used as the benchmark baseline and a numerical cross-check only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_IMPLS = ("sdpa", "einsum")


@dataclass
class VideoConfig:
    """Video encoder hyper-parameters (defaults: the released CMR-CLIP ViT-B/16, 64 frames at 224x224)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    num_frames: int = 64
    ln_eps: float = 1e-6

    @property
    def patches_per_frame(self) -> int:
        return (self.img_size // self.patch_size) ** 2


@dataclass
class TextConfig:
    """BERT hyper-parameters (defaults: Bio_ClinicalBERT, BERT-base with a 28,996-token cased vocabulary)."""

    vocab_size: int = 28996
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12


@dataclass
class MotionConfig:
    """Motion stream hyper-parameters (not in CMR-CLIP: cmrdx's small models only, see ``MotionStream``)."""

    groups: int = 8  # the frames split into this many equal runs; mean and std per pixel over each run
    channels: tuple[int, ...] = ()  # stride-2 3x3 convolutions on the statistics (none: pooled statistics)
    pool: int = 8  # then an average pool to pool x pool cells
    hidden: int = 256

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)


@dataclass
class FindingStreamConfig:
    """A finding stream's shape (not in CMR-CLIP: cmrdx's small models only, see ``FindingStream``)."""

    finding: str  # the bank finding it was trained for (what its embedding turns towards)
    frames: int  # its input frames, which follow the video's in the model's input (a recipe stream's frames)
    width: int = 16  # channels of the first convolution (the last has 8x)
    hold: bool = True  # the other findings' prompts held: the stream turns the embedding only outside their span
    mean: float = 0.485  # channel 0's normalisation, undone to read the grey frames
    std: float = 0.229

    def __post_init__(self) -> None:
        if self.frames < 1 or self.width < 1:
            raise ValueError(f"finding stream: frames and width must be at least 1 (got {self.frames}, {self.width})")


@dataclass
class CMRClipConfig:
    video: VideoConfig = field(default_factory=VideoConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projection_dim: int = 512
    motion: MotionConfig | None = None  # None: the CMR-CLIP architecture exactly
    finding_stream: FindingStreamConfig | None = None  # None: no finding stream

    @property
    def input_frames(self) -> int:
        """Frames of the video input: the transformer's, then the finding stream's (if any)."""
        fs = self.finding_stream
        return self.video.num_frames + (fs.frames if fs is not None else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CMRClipConfig:
        return cls(
            video=VideoConfig(**d.get("video", {})),
            text=TextConfig(**d.get("text", {})),
            projection_dim=int(d.get("projection_dim", 512)),
            motion=MotionConfig(**d["motion"]) if d.get("motion") else None,
            finding_stream=FindingStreamConfig(**d["finding_stream"]) if d.get("finding_stream") else None,
        )


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """(B, F, C, H, W) -> (B*F, D, H/p, W/p) by a strided convolution (key ``patch_embed.proj``)."""

    def __init__(self, cfg: VideoConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, c, h, w = x.shape
        return self.proj(x.reshape(b * f, c, h, w))


class DividedAttention(nn.Module):
    """Multi-head attention of one space-time block, over tokens ``[CLS, frame0 patches, frame1 patches, ...]``.

    The CLS query attends to every token. A patch query attends to the CLS key/value plus either the
    patches of its own frame (``mode="space"``) or the patches at its position in every frame
    (``mode="time"``). Keys ``qkv`` (D -> 3D, bias) and ``proj`` (D -> D) as in the checkpoint.
    """

    # set by ``split_qkv`` only (``hasattr(self, "q_lin")`` tells a split module)
    q_lin: nn.Linear
    k_lin: nn.Linear
    v_lin: nn.Linear

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.impl = "sdpa"

    def split_qkv(self) -> None:
        """Replace the fused ``qkv`` by three Linear layers with the same weights (export only: ONNX then
        needs no Split of the fused output, and each weight stays an initializer that int8 quantisation
        can quantise). The state dict of a split module no longer matches the checkpoint layout."""
        d = self.qkv.in_features
        for i, name in enumerate(("q_lin", "k_lin", "v_lin")):
            lin = nn.Linear(d, d)
            with torch.no_grad():
                lin.weight.copy_(self.qkv.weight[i * d:(i + 1) * d])
                lin.bias.copy_(self.qkv.bias[i * d:(i + 1) * d])
            setattr(self, name, lin)
        del self.qkv

    def _qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) -> q, k, v each (B, H, T, hd)."""
        b, t, _ = x.shape
        h, hd = self.heads, self.head_dim
        if hasattr(self, "q_lin"):
            return tuple(lin(x).reshape(b, t, h, hd).transpose(1, 2) for lin in (self.q_lin, self.k_lin, self.v_lin))
        return self.qkv(x).reshape(b, t, 3, h, hd).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: torch.Tensor, mode: str, frames: int) -> torch.Tensor:
        """x: (B, 1 + frames*N, D) float -> (B, 1 + frames*N, D)."""
        if self.impl == "einsum":
            return self._forward_einsum(x, mode, frames)
        b, t, d = x.shape
        h, hd = self.heads, self.head_dim
        n = (t - 1) // frames
        # One head-major layout (3, B, H, T, hd) serves every group: the CLS query uses it as is, and the
        # space groups are a free reshape of it (frames are contiguous), which keeps copies to a minimum.
        q, k, v = self._qkv_heads(x)
        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # (B, H, 1, hd)
        cls_k, cls_v = k[:, :, :1], v[:, :, :1]
        q, k, v = q[:, :, 1:], k[:, :, 1:], v[:, :, 1:]  # (B, H, F*N, hd)
        if mode == "space":  # groups (H, F) per study, sequence N patches
            g, s = frames, n
            q, k, v = (z.reshape(b, h * g, s, hd) for z in (q, k, v))
        elif mode == "time":  # groups (H, N) per study, sequence F frames
            g, s = n, frames
            q, k, v = (z.reshape(b, h, frames, n, hd).transpose(2, 3).reshape(b, h * g, s, hd) for z in (q, k, v))
        else:
            raise ValueError(f"mode must be 'space' or 'time', not {mode!r}")
        ck = cls_k.unsqueeze(2).expand(b, h, g, 1, hd).reshape(b, h * g, 1, hd)
        cv = cls_v.unsqueeze(2).expand(b, h, g, 1, hd).reshape(b, h * g, 1, hd)
        out = F.scaled_dot_product_attention(q, torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2))
        if mode == "space":
            out = out.reshape(b, h, frames * n, hd)
        else:
            out = out.reshape(b, h, n, frames, hd).transpose(2, 3).reshape(b, h, frames * n, hd)
        out = torch.cat([cls_out, out], dim=2).transpose(1, 2).reshape(b, t, d)
        return self.proj(out)

    def _forward_einsum(self, x: torch.Tensor, mode: str, frames: int) -> torch.Tensor:
        """The reference formulation: (B*H, T, hd) tensors, q pre-scaled, einsum similarity + softmax."""
        b, t, d = x.shape
        h, hd = self.heads, self.head_dim
        n = (t - 1) // frames

        def attn(q, k, v):
            sim = torch.einsum("bid,bjd->bij", q, k)
            return torch.einsum("bij,bjd->bid", sim.softmax(dim=-1), v)

        q, k, v = self.qkv(x).chunk(3, dim=-1)
        # 'b n (h d) -> (b h) n d'
        q, k, v = (z.reshape(b, t, h, hd).permute(0, 2, 1, 3).reshape(b * h, t, hd) for z in (q, k, v))
        q = q * self.scale
        cls_q, q_ = q[:, :1], q[:, 1:]
        cls_k, k_ = k[:, :1], k[:, 1:]
        cls_v, v_ = v[:, :1], v[:, 1:]
        cls_out = attn(cls_q, k, v)
        bh = b * h
        if mode == "space":  # 'b (f n) d -> (b f) n d'
            fwd = lambda z: z.reshape(bh * frames, n, hd)  # noqa: E731
            back = lambda z: z.reshape(bh, frames * n, hd)  # noqa: E731
            r = frames
        else:  # 'b (f n) d -> (b n) f d'
            fwd = lambda z: z.reshape(bh, frames, n, hd).permute(0, 2, 1, 3).reshape(bh * n, frames, hd)  # noqa: E731
            back = lambda z: z.reshape(bh, n, frames, hd).permute(0, 2, 1, 3).reshape(bh, frames * n, hd)  # noqa: E731
            r = n
        q_, k_, v_ = fwd(q_), fwd(k_), fwd(v_)
        cls_k = cls_k.repeat_interleave(r, dim=0)  # 'b () d -> (b r) () d'
        cls_v = cls_v.repeat_interleave(r, dim=0)
        out = attn(q_, torch.cat([cls_k, k_], dim=1), torch.cat([cls_v, v_], dim=1))
        out = torch.cat([cls_out, back(out)], dim=1)
        out = out.reshape(b, h, t, hd).permute(0, 2, 1, 3).reshape(b, t, d)  # '(b h) n d -> b n (h d)'
        return self.proj(out)


class SpaceTimeBlock(nn.Module):
    """Keys: norm1, attn (space), timeattn, norm2, mlp, norm3.

    Order copied from the reference, including its quirk: the space residual is added to the block input
    ``x``, not to the time-attended ``t``; time attention reaches the output only through space attention.
    """

    def __init__(self, cfg: VideoConfig):
        super().__init__()
        d = cfg.width
        self.norm1 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.attn = DividedAttention(d, cfg.heads)
        self.timeattn = DividedAttention(d, cfg.heads)
        self.norm2 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))
        self.norm3 = nn.LayerNorm(d, eps=cfg.ln_eps)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        t = x + self.timeattn(self.norm3(x), "time", frames)
        x = x + self.attn(self.norm1(t), "space", frames)
        return x + self.mlp(self.norm2(x))

    def forward_cls(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """Only the CLS row of ``forward`` (B, 1, D): what the last block must produce, since the encoder
        outputs ``norm(x)[:, 0]``. Exact; skips the patch rows' space queries, space projection and MLP
        (about 60% of the last block)."""
        t = x + self.timeattn(self.norm3(x), "time", frames)
        y = self.norm1(t)
        a = self.attn
        b, _, d = y.shape
        if hasattr(a, "q_lin"):
            q = a.q_lin(y[:, :1]).reshape(b, 1, a.heads, a.head_dim).transpose(1, 2)
            _, k, v = (None, *(lin(y).reshape(b, -1, a.heads, a.head_dim).transpose(1, 2) for lin in (a.k_lin, a.v_lin)))
        else:
            q, k, v = a._qkv_heads(y)
            q = q[:, :, :1]
        if a.impl == "einsum":
            att = (torch.einsum("bhid,bhjd->bhij", q * a.scale, k)).softmax(-1)
            o = torch.einsum("bhij,bhjd->bhid", att, v)
        else:
            o = F.scaled_dot_product_attention(q, k, v)
        c = x[:, :1] + a.proj(o.transpose(1, 2).reshape(b, 1, d))
        return c + self.mlp(self.norm2(c))


class SpaceTimeTransformer(nn.Module):
    """Divided space-time ViT: (B, F, 3, H, W) float32 normalised video -> (B, width) CLS feature.

    F may be smaller than ``cfg.num_frames`` (the first F temporal embeddings are used, as in the reference).
    """

    def __init__(self, cfg: VideoConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.width
        n = cfg.patches_per_frame
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, cfg.width))
        self.temporal_embed = nn.Parameter(torch.zeros(1, cfg.num_frames, cfg.width))
        self.blocks = nn.ModuleList([SpaceTimeBlock(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.prune_last = True  # compute only the CLS row of the last block (exact; see forward_cls)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.temporal_embed, std=0.02)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(video))

    def tokens(self, video: torch.Tensor, blocks: int = 0) -> torch.Tensor:
        """(B, 1 + F * patches, width) tokens after patch embedding and the first ``blocks`` blocks (a frozen
        prefix whose output can be computed once per study; ``head`` runs the rest)."""
        b, f = video.shape[0], video.shape[1]
        if f > self.cfg.num_frames:
            raise ValueError(f"{f} frames given, the model takes at most {self.cfg.num_frames}")
        d, n = self.cfg.width, self.cfg.patches_per_frame
        x = self.patch_embed(video).flatten(2).transpose(1, 2).reshape(b, f * n, d)  # frame-major patches
        # pos_embed[1:] tiled over frames, temporal_embed repeated within each frame; CLS gets pos_embed[0].
        pos = self.pos_embed[:, 1:].repeat(1, f, 1) + self.temporal_embed[:, :f].repeat_interleave(n, dim=1)
        x = torch.cat([self.cls_token.expand(b, -1, -1) + self.pos_embed[:, :1], x + pos], dim=1)
        for blk in self.blocks[:blocks]:
            x = blk(x, f)
        return x

    def head(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Blocks ``start``.. and the final norm on tokens from ``tokens(video, start)`` -> (B, width) CLS."""
        f = (x.shape[1] - 1) // self.cfg.patches_per_frame
        last = len(self.blocks) - 1
        for blk in self.blocks[start:last]:
            x = blk(x, f)
        if start <= last:
            last_blk = cast(SpaceTimeBlock, self.blocks[-1])  # blocks holds SpaceTimeBlocks only
            if self.prune_last and last_blk.attn.impl == "sdpa":
                x = last_blk.forward_cls(x, f)
            else:  # the reference computes every row of the last block
                x = last_blk(x, f)
        return self.norm(x)[:, 0]


class MotionStream(nn.Module):
    """A second, small video path added to the projected CLS embedding: per-pixel mean and standard deviation
    over ``groups`` equal runs of frames (of the first input channel: the three are one grey image), optionally
    stride-2 convolutions, an average pool to ``pool`` x ``pool`` cells, a batch norm and a two-layer head to
    ``projection_dim``.

    Why: the small space-time transformer trained here keeps what a study looks like but loses how its walls
    move (RV function) and small structures (the aortic root), although both are in its input (BENCHMARKS.md,
    "where findings are lost"); a per-pixel temporal standard deviation is the motion statistic a linear probe
    reads them from. The last layer starts at zero, so a stream added to a trained model starts from that
    model's embeddings exactly. Split like the transformer: ``stats`` (no parameters, computed once per study
    when training on a cache) and ``head``.
    """

    def __init__(self, cfg: MotionConfig, video: VideoConfig, out_dim: int):
        super().__init__()
        if cfg.groups < 1 or video.num_frames % cfg.groups:
            raise ValueError(f"motion groups {cfg.groups} must divide the {video.num_frames} frames into equal runs")
        self.groups = cfg.groups
        layers: list[nn.Module] = []
        c_in = 2 * cfg.groups
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, kernel_size=3, stride=2, padding=1), nn.GELU()]
            c_in = c
        self.cnn = nn.Sequential(*layers)
        side = video.img_size
        for _ in cfg.channels:
            side = (side + 1) // 2
        if cfg.pool < 1 or side % cfg.pool:
            raise ValueError(f"motion pool {cfg.pool} does not divide the {side} px maps into equal cells")
        self.pool = nn.AvgPool2d(side // cfg.pool)
        # standardised per feature over the studies (batch statistics in training, running ones after): the
        # cells share a large common pattern (every heart looks alike) which, left in, saturates a layer norm +
        # GELU head and leaves its units dead early in training
        self.norm = nn.BatchNorm1d(c_in * cfg.pool * cfg.pool)
        self.fc1 = nn.Linear(c_in * cfg.pool * cfg.pool, cfg.hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.hidden, out_dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def stats(self, video: torch.Tensor) -> torch.Tensor:
        """(B, F, C, S, S) -> (B, 2 * groups, S, S): per run of F / groups frames, the mean then the std."""
        b, f, _, h, w = video.shape
        if f % self.groups:
            raise ValueError(f"{f} frames do not split into {self.groups} equal runs")
        x = video[:, :, 0].reshape(b, self.groups, f // self.groups, h, w)
        mean = x.mean(2)
        std = (x - mean.unsqueeze(2)).square().mean(2).add(1e-6).sqrt()  # eps: a finite gradient at std 0
        return torch.cat([mean, std], dim=1)

    def head(self, stats: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(self.pool(self.cnn(stats)).flatten(1)))))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.stats(video))


class FindingStream(nn.Module):
    """A third video path for one finding that the space-time transformer misses: a small 2D CNN shared by every
    frame of its own input (``FindingStreamConfig.frames`` frames after the video's, made by a recipe stream, e.g.
    the LGE images cut around the heart), features pooled over the frames by max and mean, and a linear layer
    into the embedding that starts at zero.

    Why: on randomised phantoms the transformer leaves late gadolinium enhancement at chance even when trained
    on the labels, where this CNN learns it from the same input (bench/results/lge_cnn.md), and from the report
    sentences alone when trained on the clauses that speak of the finding (bench/results/lge_stream.md).

    With ``hold`` (the default) the other findings' zero-shot scores are the base model's exactly: ``held`` is
    the orthogonal projection onto the span of their prompts' text embeddings; the unit embedding's part in that
    span stays, and its part outside keeps its length and turns with the stream, so every cosine with a held
    prompt is unchanged. Without it the stream's output is added to the embedding. A study whose stream frames
    are all padding (no image of the stream's views) keeps the main paths' embedding (its direction).
    """

    def __init__(self, cfg: FindingStreamConfig, out_dim: int):
        super().__init__()
        self.cfg = cfg
        w = cfg.width

        def block(i: int, o: int, k: int = 3, s: int = 2) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.body = nn.Sequential(block(1, w, 5, 2), block(w, 2 * w, 3, 1), block(2 * w, 2 * w), block(2 * w, 4 * w),
                                  block(4 * w, 8 * w))
        self.proj = nn.Linear(32 * w, out_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.held: torch.Tensor
        self.register_buffer("held", torch.zeros(out_dim, out_dim) if cfg.hold else torch.zeros(0))

    def grey(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F, C, S, S) normalised input -> (B, F, S, S) grey in [0, 1] and (B, F) real-frame mask (padded
        frames are exactly zero in every channel)."""
        g = x[:, :, 0]
        real = g.flatten(2).abs().amax(2) > 0
        return g * self.cfg.std + self.cfg.mean, real

    def features(self, g: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """(B, F, S, S) grey, (B, F) bool -> (B, 32 w): per-frame max and mean, then their max and mean over the
        real frames (zero for a study with none)."""
        b, f, s, _ = g.shape
        z = self.body(g.reshape(b * f, 1, s, s))
        z = torch.cat([z.amax(dim=(2, 3)), z.mean(dim=(2, 3))], dim=1).reshape(b, f, -1)
        mask = real.view(b, f, 1)
        some = real.any(dim=1, keepdim=True).to(z.dtype)
        zmax = z.masked_fill(~mask, -1e4).amax(dim=1) * some
        zmean = (z * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return torch.cat([zmax, zmean], dim=1)

    def output(self, x: torch.Tensor, augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """(B, F, C, S, S) normalised stream input -> (B, D): the stream's raw output (zero without real frames).
        ``augment``: applied to the grey frames first (training shifts)."""
        g, real = self.grey(x)
        if augment is not None:
            g = augment(g)
        return self.proj(self.features(g, real)) * real.any(dim=1, keepdim=True).to(g.dtype)

    def join(self, e0: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The main paths' embedding ``e0`` (B, D) with the stream's output ``out`` (B, D)."""
        if not self.cfg.hold:
            return e0 + out
        u0 = F.normalize(e0, dim=1)
        inside = u0 @ self.held
        rest = u0 - inside
        turned = F.normalize(rest + out - out @ self.held, dim=1)
        return inside + rest.norm(dim=1, keepdim=True) * turned

    def forward(self, e0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.join(e0, self.output(x))


def build_bert(cfg: TextConfig) -> nn.Module:
    """A randomly initialised ``transformers.BertModel`` (no download), pooler included (its keys are in the
    checkpoint, although the CMR-CLIP forward does not use it)."""
    from transformers import BertConfig, BertModel

    bc = BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    bc._attn_implementation = "sdpa"
    return BertModel(bc, add_pooling_layer=True)


class CMRClip(nn.Module):
    """Video + text towers with ReLU-then-Linear projections (keys ``vid_proj.1``, ``txt_proj.1``)."""

    def __init__(self, cfg: CMRClipConfig | None = None):
        super().__init__()
        self.cfg = cfg or CMRClipConfig()
        self.video_model = SpaceTimeTransformer(self.cfg.video)
        self.text_model = build_bert(self.cfg.text)
        self.txt_proj = nn.Sequential(nn.ReLU(), nn.Linear(self.cfg.text.hidden_size, self.cfg.projection_dim))
        self.vid_proj = nn.Sequential(nn.ReLU(), nn.Linear(self.cfg.video.width, self.cfg.projection_dim))
        self.motion: MotionStream | None
        if self.cfg.motion is not None:  # registered last: a CMR-CLIP state dict has no such keys
            self.motion = MotionStream(self.cfg.motion, self.cfg.video, self.cfg.projection_dim)
        else:
            self.motion = None
        self.finding_stream: FindingStream | None = None
        if self.cfg.finding_stream is not None:  # registered after the motion stream, for the same reason
            self.finding_stream = FindingStream(self.cfg.finding_stream, self.cfg.projection_dim)

    @property
    def input_frames(self) -> int:
        """Frames of the video input: the transformer's, then the finding stream's (if any)."""
        return self.cfg.input_frames

    def encode_main(self, video: torch.Tensor) -> torch.Tensor:
        """The transformer's and motion stream's embedding of the video's first ``num_frames`` frames."""
        video = video[:, : self.cfg.video.num_frames] if self.finding_stream is not None else video
        e = self.vid_proj(self.video_model(video))
        return e if self.motion is None else e + self.motion(video)

    def set_attention_impl(self, impl: str) -> CMRClip:
        """Switch every video attention between "sdpa" and the reference-style "einsum" (same weights)."""
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, not {impl!r}")
        for m in self.video_model.modules():
            if isinstance(m, DividedAttention):
                m.impl = impl
        return self

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) float32 -> (B, projection_dim), not normalised (F: ``input_frames``)."""
        e = self.encode_main(video)
        if self.finding_stream is None:
            return e
        return self.finding_stream(e, video[:, self.cfg.video.num_frames:])

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) int64 ids and 0/1 mask -> (N, projection_dim): attention-masked mean of the last hidden
        state (no pooler), then the projection; not normalised."""
        hidden = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.txt_proj(pooled)

    def forward(self, video: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Cosine-similarity matrix (N_text, B_video)."""
        return similarity(self.encode_text(input_ids, attention_mask), self.encode_video(video))


def similarity(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity matrix of (N, D) and (M, D) -> (N, M)."""
    a = a / a.norm(dim=1, keepdim=True).clamp(min=eps)
    b = b / b.norm(dim=1, keepdim=True).clamp(min=eps)
    return a @ b.T


class VideoTower(nn.Module):
    """Export wrapper: video -> projected embedding. With ``split=True`` it works on a copy of the video
    encoder whose attention projections are split into q/k/v (see ``DividedAttention.split_qkv``)."""

    def __init__(self, model: CMRClip, split: bool = False):
        super().__init__()
        vm = model.video_model
        if split:
            import copy

            vm = copy.deepcopy(vm)
            for m in vm.modules():
                if isinstance(m, DividedAttention) and hasattr(m, "qkv"):
                    m.split_qkv()
        self.video_model = vm
        self.vid_proj = model.vid_proj
        self.motion = model.motion
        self.finding_stream = model.finding_stream
        self.frames = model.cfg.video.num_frames

    def forward(self, video: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The embedding; with a finding stream, (the embedding, the main paths' embedding): the second output
        ``main_embedding`` of the exported file, which distances between studies use (``Encoder.encode_studies_main``)."""
        main = video[:, : self.frames] if self.finding_stream is not None else video
        e = self.vid_proj(self.video_model(main))
        e = e if self.motion is None else e + self.motion(main)
        return e if self.finding_stream is None else (self.finding_stream(e, video[:, self.frames:]), e)


class TextTower(nn.Module):
    """Export wrapper: (input_ids, attention_mask) -> projected embedding."""

    def __init__(self, model: CMRClip):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask)


# Present in checkpoints written by older transformers; current BertModel keeps it as a non-persistent buffer.
OPTIONAL_KEYS = ("text_model.embeddings.position_ids",)


def load_state_dict_strict(model: CMRClip, state: dict[str, torch.Tensor], may_lack: tuple[str, ...] = ()) -> None:
    """Load a CMR-CLIP state dict with strict key checking (only ``OPTIONAL_KEYS`` may be extra or missing, and
    keys starting with a ``may_lack`` prefix may be missing: they keep their initialisation).

    Accepts a ``{"state_dict": ...}`` wrapper and the ``module.`` prefix of DataParallel checkpoints.
    Raises ValueError listing missing/unexpected keys or mismatched shapes.
    """
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not (k in OPTIONAL_KEYS and k not in own)}
    missing = sorted(k for k in set(own) - set(state) - set(OPTIONAL_KEYS) if not k.startswith(may_lack))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or bad_shape:
        raise ValueError(
            "checkpoint does not match the CMR-CLIP layout: "
            f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}; "
            f"unexpected {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}; "
            f"shape mismatches {bad_shape[:10]}"
        )
    model.load_state_dict(state, strict=False)


def config_from_state_dict(state: dict[str, torch.Tensor], heads: int | None = None,
                           text_heads: int | None = None) -> CMRClipConfig:
    """Infer every shape hyper-parameter from checkpoint tensors. Head counts cannot be inferred from shapes:
    they default to width / 64 (ViT-B and BERT-base both use 64-wide heads)."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    s = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    w = s["video_model.patch_embed.proj.weight"]
    width, in_chans, patch = w.shape[0], w.shape[1], w.shape[2]
    n = s["video_model.pos_embed"].shape[1] - 1
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"pos_embed has {n} patch positions, not a square grid")
    depth = 1 + max(int(k.split(".")[2]) for k in s if k.startswith("video_model.blocks."))
    fc1 = s["video_model.blocks.0.mlp.fc1.weight"]
    video = VideoConfig(
        img_size=side * patch, patch_size=patch, in_chans=in_chans, width=width, depth=depth,
        heads=heads or max(1, width // 64), mlp_ratio=fc1.shape[0] / width,
        num_frames=s["video_model.temporal_embed"].shape[1],
    )
    hidden = s["text_model.embeddings.word_embeddings.weight"].shape[1]
    text = TextConfig(
        vocab_size=s["text_model.embeddings.word_embeddings.weight"].shape[0],
        hidden_size=hidden,
        num_hidden_layers=1 + max(int(k.split(".")[3]) for k in s if k.startswith("text_model.encoder.layer.")),
        num_attention_heads=text_heads or max(1, hidden // 64),
        intermediate_size=s["text_model.encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=s["text_model.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=s["text_model.embeddings.token_type_embeddings.weight"].shape[0],
    )
    return CMRClipConfig(video=video, text=text, projection_dim=s["vid_proj.1.weight"].shape[0])
