"""Contrastive training of a small CMR-CLIP-style model on (study, report) pairs, then export.

``train(cfg, out=..., work=...)``:

1. fills (or resumes) the uint8 study cache of the data source under the model's recipe (``data.build_cache``);
2. trains a WordPiece vocabulary on the training reports (``tokenizer.train_vocab``);
3. optimises symmetric InfoNCE on cosine similarities / temperature (0.05 fixed, as the reference) with AdamW,
   linear warm-up then cosine decay, gradient clipping; a fixed validation split reports its loss per epoch;
4. checkpoints (model, optimiser, step, loss history) to ``work/checkpoint.pt`` every ``checkpoint_every``
   steps and at each epoch's end; a rerun with the same work folder resumes from it;
5. exports the ONNX model folder with provenance (``cmrdx.train.export.export_model_folder``).

Determinism: the epoch order is a permutation drawn from (seed, epoch) and the report sampling from
(seed, step), so a resumed run draws the same batches as an uninterrupted one, whatever the number of processes.

Data parallel (``cmrdx.train.distributed``): launched by torchrun, each process embeds its part of the global
batch (``batch_size`` is the global batch), the embeddings are gathered so that the loss sees every negative of
the global batch, and DDP averages the gradients; rank 0 alone builds the cache, writes checkpoints, logs and
exports. The WordPiece vocabulary is
trained once per work folder (``tokenizers`` breaks merge ties in hash order, so two fresh runs may differ).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrdx.fileio import atomic_write
from cmrdx.train.distributed import (
    SINGLE,
    DistInfo,
    broadcast_object,
    check_shared_folder,
    gather_rows,
    gather_with_grad,
    shard,
    wait_for_main,
)

if TYPE_CHECKING:
    from cmrdx.train.finetune import WarmStart
    from cmrdx.train.model import MotionStream

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint and the model's provenance).

    Data: ``phantoms`` studies rendered from source seed ``seed`` (or ``archive``, a folder of study
    folders); ``prevalence`` per finding; ``matrix`` square acquisition matrix of the renders (None: drawn as
    in DICOM archives); ``variety`` the randomised generator, with ``only_families`` / ``exclude_families``
    (family names, ``cmrdx.synth.variety``). Recipe: cmrclip-v1 with ``frames``, ``image_size``; ``resize`` / ``crop`` zoom in on
    the heart (crop of the central crop/resize of the field of view); ``heart_crop_mm`` first cuts each image to a
    square of that side around the heart, located from the study's plan (``cmrdx.recipe``). Model: ViT ``patch``/``width``/
    ``depth``/``heads``; BERT ``text_*``; ``projection_dim``. Optimisation: ``epochs`` of ``batch_size``,
    ``lr`` peak, ``warmup_steps``, ``temperature``; ``text_subset_p`` chance of training on 1 to
    ``text_max_sentences`` sentences of a report instead of all of it; ``text_augment`` chance that each training
    sentence is reworded (``cmrdx.train.textaug``).
    """

    name: str = "cmrdx-phantom-small"
    version: str = "0.1.0"
    phantoms: int = 800
    seed: int = 7
    prevalence: float = 0.3
    matrix: int | None = 128
    archive: str | None = None
    reports: str | None = None  # a RIS export (CSV / JSONL) of the archive's reports (``cmrdx.train.reports``)
    # phantoms of the randomised generator (``cmrdx.synth.variety``) instead of the classic one; the family filters
    # imply it. ``exclude_families`` is what a model is trained without (its leave-one-family-out benchmark)
    variety: bool = False
    only_families: list[str] | None = None
    exclude_families: list[str] | None = None
    # with variety: the share of studies drawn from the classic generator instead (adapting a model trained on
    # classic phantoms without it forgetting them)
    classic_fraction: float = 0.0
    val_fraction: float = 0.05
    frames: int = 16
    image_size: int = 96
    resize: int = 144
    crop: int = 96
    heart_crop_mm: float | None = None
    patch: int = 24
    width: int = 128
    depth: int = 2
    heads: int = 4
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 512
    max_length: int = 256
    vocab_size: int = 2000
    projection_dim: int = 128
    epochs: int = 16
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 30
    temperature: float = 0.05
    text_subset_p: float = 0.5
    text_max_sentences: int = 3  # a sampled subset holds 1..this many of the report's sentences
    text_augment: float = 0.0  # chance that a training sentence is reworded (clinical synonyms, word drop, swap)
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    augment_shift: int = 0  # random translation of each training video by up to this many pixels (0: none)
    # train the text tower (and its projection) against a frozen video tower ("locked-image tuning", LiT):
    # each study's video embedding is computed once, so a step costs only the text tower (cheap on a CPU)
    freeze_video: bool = False
    # train only the last N blocks of the video tower (with its final norm and projection) and the text tower:
    # the frozen blocks' output tokens are computed once per study, so a step skips them (None: all blocks)
    train_video_blocks: int | None = None
    # a motion stream beside the transformer (``MotionConfig`` fields, e.g. {groups: 8}; None: CMR-CLIP's
    # architecture exactly). Warm-started from a model without one, it starts at zero and trains with the text
    # tower; with freeze_video or train_video_blocks its input statistics are computed once per study
    motion: dict[str, Any] | None = None
    motion_lr: float | None = None  # peak learning rate of the motion stream (None: lr); it starts from scratch
    # with freeze_video, keep the motion stream at its warm start too (batch-norm statistics included): locked-image
    # tuning of the text tower alone against the whole video side
    freeze_motion: bool = False
    # a finding stream (``cmrdx.train.findstream``: finding, clauses, segments, frames, heart_crop_mm, ...): the
    # stage adds it to the finished model it starts from and trains it alone on the report clauses of its finding
    finding_stream: dict[str, Any] | None = None
    threads: int | None = None
    # a warm start (``cmrdx.train.finetune``): a checkpoint.pt / trained.pt (the run's shapes must match it), or
    # CMR-CLIP weights (released checkpoint or imported model folder: the run takes their shapes)
    init_from: str | None = None
    # run-time options: where and how fast, not what is trained (a resumed run may change them)
    device: str = "auto"  # "auto" (CUDA when torch sees a GPU), "cpu" or "cuda"
    workers: int | None = None  # processes that render phantom studies into the cache
    max_cache_seconds: float | None = None  # stop caching after this long and train on the studies done
    max_train_seconds: float | None = None  # shorten the schedule (cosine decay included) to fit this budget

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """JSON or YAML file of fields (unknown keys are an error)."""
        import yaml

        d = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict({**d, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        extra = set(d) - set(cls.__dataclass_fields__)
        if extra:
            raise ValueError(f"unknown training options {sorted(extra)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)

    def __post_init__(self) -> None:
        # family filters as a sorted list of valid names ("scar:midwall,lge:psir" in a file or on a command line
        # too): the same filters always make the same config, checkpoint identity and cache
        from cmrdx.synth.variety import parse_families

        for k in ("only_families", "exclude_families"):
            v = getattr(self, k)
            if v is not None:
                if not isinstance(v, (str, list, tuple)):
                    raise ValueError(f"{k}: a list of family names such as scar:midwall, not {v!r}")
                setattr(self, k, sorted(parse_families(v)) or None)

    RUNTIME_FIELDS = ("threads", "device", "workers", "max_cache_seconds", "max_train_seconds")
    # what the exported model is called, not what is trained: a candidate is released under another version
    # from the same checkpoints, without training again
    LABEL_FIELDS = ("name", "version")

    def identity(self, *, labels: bool = False) -> dict[str, Any]:
        """The fields that define what is trained (a checkpoint resumes only under the same identity).
        ``labels``: with ``name`` and ``version``, as identities were computed before they were left out."""
        skip = self.RUNTIME_FIELDS if labels else self.RUNTIME_FIELDS + self.LABEL_FIELDS
        d = {k: v for k, v in asdict(self).items() if k not in skip}
        if not d.get("classic_fraction"):  # added later: runs without it keep the identity they were started with
            d.pop("classic_fraction", None)
        if d.get("heart_crop_mm") is None:  # likewise
            d.pop("heart_crop_mm", None)
        if d.get("finding_stream") is None:  # likewise
            d.pop("finding_stream", None)
        return d

    def torch_device(self) -> str:
        import torch

        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda (got {self.device!r})")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA GPU")
        return "cuda" if self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available()) else "cpu"

    def recipe(self):
        """The model's input recipe; with a finding stream, its stream's recipe follows (``RecipeParams.streams``)."""
        from dataclasses import replace

        from cmrdx.recipe import get_recipe

        main = get_recipe("cmrclip-v1", frames=self.frames, image_size=self.image_size, resize=self.resize,
                          crop=self.crop, store_size=self.resize, window_scope="frame", heart_crop_mm=self.heart_crop_mm)
        if self.finding_stream is None:
            return main
        from cmrdx.train.streamspec import StreamSpec

        return replace(main, streams=(StreamSpec.from_dict(self.finding_stream).stream_recipe(main),))

    def source(self):
        from cmrdx.train.data import ArchiveSource, PhantomSource, views_for_recipe

        if self.reports and not self.archive:
            raise ValueError("reports (a RIS export) are matched to the studies of an archive: give archive too")
        if self.archive:
            if self.variety or self.only_families or self.exclude_families:
                raise ValueError("variety, only_families and exclude_families describe phantom studies: drop them "
                                 "to train on an archive, or drop archive to train on phantoms")
            return ArchiveSource(self.archive, reports=self.reports)
        return PhantomSource(self.phantoms, self.seed, prevalence=self.prevalence, matrix=self.matrix,
                             views=views_for_recipe(self.recipe().main), variety=self.variety,
                             only_families=self.only_families, exclude_families=self.exclude_families,
                             classic_fraction=self.classic_fraction)

    def model_config(self, vocab_size: int):
        from cmrdx.train.model import CMRClipConfig, MotionConfig, TextConfig, VideoConfig

        video = VideoConfig(img_size=self.image_size, patch_size=self.patch, width=self.width, depth=self.depth,
                            heads=self.heads, num_frames=self.frames)
        text = TextConfig(vocab_size=vocab_size, hidden_size=self.text_hidden, num_hidden_layers=self.text_layers,
                          num_attention_heads=self.text_heads, intermediate_size=self.text_intermediate,
                          max_position_embeddings=self.max_length)
        motion = MotionConfig(**self.motion) if self.motion else None
        stream = None
        if self.finding_stream is not None:
            from cmrdx.train.streamspec import StreamSpec

            stream = StreamSpec.from_dict(self.finding_stream).model_config(self.recipe().main)
        return CMRClipConfig(video=video, text=text, projection_dim=self.projection_dim, motion=motion,
                             finding_stream=stream)


@dataclass
class TrainResult:
    steps: int
    epochs_done: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # per step (training batches)
    val_losses: list[float] = field(default_factory=list)  # per epoch
    n_train: int = 0
    n_val: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)


def info_nce(text_emb, video_emb, temperature: float):
    """Symmetric InfoNCE on cosine similarities: (B, D) text and video embeddings (pair i = row i) -> scalar.

    Mean of the text->video and video->text cross-entropies of ``cos / temperature``."""
    import torch
    import torch.nn.functional as F

    t = F.normalize(text_emb, dim=1)
    v = F.normalize(video_emb, dim=1)
    logits = t @ v.T / temperature
    target = torch.arange(len(t), device=t.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to 1% of it at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))


def video_input(u8, n_real, recipe):
    """torch twin of ``data.u8_to_input``: (B, F, S, S) uint8 + real-frame counts -> (B, F, 3, S, S) float32
    on the same device (grey / 255 normalised by each channel's mean and std; padded frames zero)."""
    import torch

    g = u8.float() / 255.0
    mean = torch.tensor(recipe.mean, dtype=g.dtype, device=g.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(recipe.std, dtype=g.dtype, device=g.device).view(1, 1, 3, 1, 1)
    x = (g.unsqueeze(2) - mean) / std
    real = torch.arange(u8.shape[1], device=g.device).view(1, -1) < n_real.view(-1, 1)
    return x * real.view(*real.shape, 1, 1, 1)


def shift_batch(x, m: int, rng: np.random.Generator | np.ndarray):
    """Translate each item of (B, ..., S, S) by its own random whole-pixel shift of up to ``m`` (one draw per
    item, the same for all its frames or channels), zero-filling the edges. ``rng`` is the generator to draw the
    shifts from, or the (2, B) offsets in 0..2m already drawn (as a data-parallel batch draws them for all
    processes at once)."""
    import torch

    s = x.shape[-1]
    pad = torch.nn.functional.pad(x, (m, m, m, m))
    dy, dx = rng if isinstance(rng, np.ndarray) else rng.integers(0, 2 * m + 1, size=(2, len(x)))
    return torch.stack([pad[i, ..., y:y + s, xx:xx + s] for i, (y, xx) in enumerate(zip(dy, dx))])


PROBE_STEPS = 30  # steps between refits of a time-budgeted schedule (and before the first timed step)
BUDGET_MARGIN = 1.05  # the fitted schedule assumes steps 5% slower than measured so far


def _fit_schedule(step: int, elapsed: float, budget: float, probe_from: int, since_probe: float | None,
                  planned: int) -> int | None:
    """The schedule's length (total steps) that fits ``budget`` seconds, refitted every ``PROBE_STEPS`` steps
    after the probe (``probe_from``), on the mean time per step since the probe began (``since_probe``
    seconds): validation passes and checkpoints are included, which one step's time would miss. None when
    this step is no refit. At least one more step, at most the planned schedule."""
    if since_probe is None or step <= probe_from or (step - probe_from) % PROBE_STEPS:
        return None
    per_step = since_probe / (step - probe_from)
    fit = step + int((budget - elapsed) / (per_step * BUDGET_MARGIN))
    return min(planned, max(step + 1, fit))


def split_indices(valid: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) row indices: a fixed seeded fraction of the valid rows held out for validation loss."""
    rng = np.random.default_rng([seed, 0x5A1])
    perm = rng.permutation(valid)
    n_val = int(round(len(valid) * fraction)) if len(valid) > 20 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class Trainer:
    """Holds the cache, tokenizer, model and optimiser of one run (``work`` folder = cache + checkpoint)."""

    def __init__(self, cfg: TrainConfig, work: str | Path, *, progress: bool = True,
                 on_step: Callable[[int, float], None] | None = None, clock: Callable[[], float] = time.perf_counter,
                 dist: DistInfo | None = None, cache_root: str | Path | None = None,
                 resume_ignore: tuple[str, ...] = ()):
        """``dist``: this process's place in a data-parallel run (its process group already joined, see
        ``distributed.init``; ``train`` does both); one process alone when None.

        ``cache_root``: keep the study cache in a subfolder of this folder named by the data and the input recipe
        (``data.cache_key``), shared by every run that reads the same studies the same way (the stages of a
        recipe, ``cmrdx.train.stages``); None: ``work/cache``. ``resume_ignore``: config fields a checkpoint may
        differ in and still be resumed (a stage's ``init_from``, which names the previous stage's file wherever the
        work folder lies now)."""
        import torch

        from cmrdx.train.data import StudyCache, build_cache
        from cmrdx.train.model import CMRClip
        from cmrdx.train.tokenizer import load_tokenizer, train_vocab

        if cfg.finding_stream is not None:
            raise ValueError("finding_stream is trained by a stage of its own (cmrdx.train.findstream), from a finished "
                             "model: put it in the last stage of a recipe")
        self.dist = dist or SINGLE
        self.resume_ignore = tuple(resume_ignore)
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        # a warm start is read first: CMR-CLIP weights set the model's shapes (and so the recipe and the cache)
        self.warm: WarmStart | None = None
        if cfg.init_from:
            from cmrdx.train.finetune import adopt_architecture, load_warm_start

            self.warm = load_warm_start(cfg.init_from)  # before hours of rendering, not after
            if self.warm.arch is not None:
                cfg, self.warm.adopted = adopt_architecture(cfg, self.warm.arch)
                if self.warm.adopted and self.dist.is_main:
                    log.info("shapes of %s adopted: %s", cfg.init_from,
                             ", ".join(f"{k} {a} -> {b}" for k, (a, b) in self.warm.adopted.items()))
        self.cfg = cfg
        if cfg.batch_size % self.dist.world:
            raise ValueError(f"batch_size {cfg.batch_size} (the global batch) does not split over {self.dist.world} "
                             f"processes: use a multiple of {self.dist.world}")
        self.progress = progress and self.dist.is_main
        self.on_step = on_step
        # seconds, monotonic: times the cache build, the steps and the max_train_seconds budget (tests pass a fake)
        self.clock = clock
        torch.manual_seed(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.ckpt = self.work / "checkpoint.pt"
        if cfg.train_video_blocks is not None:
            if not 1 <= cfg.train_video_blocks <= cfg.depth:
                raise ValueError(f"train_video_blocks must be 1..depth ({cfg.depth}), not {cfg.train_video_blocks}; "
                                 "freeze_video freezes the whole video tower")
            if cfg.freeze_video:
                raise ValueError("freeze_video and train_video_blocks both set: choose one")
            if cfg.train_video_blocks < cfg.depth and cfg.augment_shift and not cfg.motion:
                raise ValueError("train_video_blocks computes the frozen blocks once per unshifted video: set "
                                 "augment_shift to 0 (with a motion stream it shifts the motion stream's input only)")
            if cfg.train_video_blocks < cfg.depth and not cfg.init_from and not self.ckpt.is_file():
                raise ValueError("train_video_blocks tunes the last blocks of a trained video tower: give init_from "
                                 "(a checkpoint.pt or trained.pt)")
        if cfg.freeze_video and cfg.augment_shift and not cfg.motion:
            raise ValueError("freeze_video computes each video embedding once, unshifted: set augment_shift to 0 "
                             "(with a motion stream it shifts the motion stream's input only)")
        if cfg.motion:
            from cmrdx.train.model import MotionConfig, MotionStream

            try:
                mc = MotionConfig(**cfg.motion)
            except TypeError as exc:
                raise ValueError(f"motion: {exc}; known: {sorted(MotionConfig.__dataclass_fields__)}") from None
            MotionStream(mc, cfg.model_config(2).video, 1)  # groups or a pool that do not fit, before rendering
        if cfg.freeze_motion and not (cfg.freeze_video and cfg.motion):
            raise ValueError("freeze_motion keeps a warm-started motion stream fixed under freeze_video: set "
                             "freeze_video and motion, or drop freeze_motion")
        if cfg.text_max_sentences < 1:
            raise ValueError(f"text_max_sentences must be at least 1, not {cfg.text_max_sentences}")
        if cfg.freeze_video and not cfg.init_from and not self.ckpt.is_file():
            raise ValueError("freeze_video trains the text tower against a trained video tower: give init_from "
                             "(a checkpoint.pt or trained.pt)")
        check_shared_folder(self.work, self.dist)
        self.recipe = cfg.recipe()
        self.source = cfg.source()
        if cache_root is None:
            self.cache_dir = self.work / "cache"
        else:
            from cmrdx.train.data import cache_key

            self.cache_dir = Path(cache_root) / cache_key(self.source.describe(), self.recipe)
        self.report_match = None
        if self.dist.is_main:  # rank 0 builds the cache; the others wait, then open it
            match = getattr(self.source, "report_match", lambda: None)()
            if match is not None:
                match.log_summary(log)
                match.write(self.work / "reports-match.json")
                self.report_match = match.counts()
            t0 = self.clock()
            self.cache = build_cache(self.source, self.recipe, self.cache_dir, progress=self.progress,
                                     workers=cfg.workers, max_seconds=cfg.max_cache_seconds)
            self.cache_seconds = self.clock() - t0
        wait_for_main(self.dist)
        if not self.dist.is_main:
            self.cache = StudyCache(self.cache_dir)
            self.cache_seconds = 0.0
        self.device = cfg.torch_device()  # after the cache: its worker processes fork before CUDA starts
        if self.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.train_idx, self.val_idx = split_indices(self.cache.valid, cfg.val_fraction, cfg.seed)
        if len(self.train_idx) < 2:
            raise ValueError(f"only {len(self.train_idx)} usable (study, report) pairs; skipped: {self.cache.skipped}")
        self.vocab = self.work / "vocab.txt"
        if self.dist.is_main:
            if self.warm is not None and not self.vocab.is_file():
                # a warm start keeps the token ids its weights were trained with
                atomic_write(self.vocab, self.warm.vocab)
            if not self.vocab.is_file():
                train_vocab(self.cache.reports(self.train_idx), self.vocab, vocab_size=cfg.vocab_size)
        wait_for_main(self.dist)  # a vocabulary is trained once per run (WordPiece ties break per process)
        self.tokenizer, self.pad_id = load_tokenizer(self.vocab, max_length=cfg.max_length)
        with open(self.vocab, encoding="utf-8") as fh:
            n_vocab = sum(1 for _ in fh)
        self.model = CMRClip(cfg.model_config(n_vocab)).to(self.device)
        self._gpu_videos = None
        if self.device == "cuda":
            # the whole uint8 cache on the GPU (a few GB at most): batches are cut, shifted and normalised there
            self._gpu_videos = torch.from_numpy(np.ascontiguousarray(self.cache.videos)).to(self.device)
            self._gpu_n_real = torch.from_numpy(self.cache.n_real.astype(np.int64)).to(self.device)
        self.frozen_blocks = 0  # video blocks whose output tokens are cached (the patch embedding frozen with them)
        if cfg.freeze_video:
            for p in (*self.model.video_model.parameters(), *self.model.vid_proj.parameters()):
                p.requires_grad_(False)
            if cfg.freeze_motion:
                for p in self._motion_stream().parameters():
                    p.requires_grad_(False)
        elif cfg.train_video_blocks is not None and cfg.train_video_blocks < cfg.depth:
            self.frozen_blocks = cfg.depth - cfg.train_video_blocks
            vm = self.model.video_model
            for p in (*vm.patch_embed.parameters(), vm.cls_token, vm.pos_embed, vm.temporal_embed,
                      *(q for blk in vm.blocks[:self.frozen_blocks] for q in blk.parameters())):
                p.requires_grad_(False)
        # (N, D) video embeddings of every cache row, when the video tower is frozen
        self._video_emb: torch.Tensor | None = None
        # (N, T, D) float16 outputs of the frozen blocks, when only the last ones train
        self._video_tokens: torch.Tensor | None = None
        # (N, 2G, S, S) float16 motion-stream inputs, when the transformer is cached
        self._motion_stats: torch.Tensor | None = None
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = []
        for peak, mine in ((cfg.lr, lambda n: not n.startswith("motion.")),
                           (cfg.motion_lr or cfg.lr, lambda n: n.startswith("motion."))):
            ps = [(n, p) for n, p in trainable if mine(n)]
            decay = [p for n, p in ps if p.ndim >= 2 and "embed" not in n]
            no_decay = [p for n, p in ps if not (p.ndim >= 2 and "embed" not in n)]
            groups += [{"params": decay, "weight_decay": cfg.weight_decay, "peak_lr": peak},
                       {"params": no_decay, "weight_decay": 0.0, "peak_lr": peak}]
        self.opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.98))
        self.steps_per_epoch = max(1, len(self.train_idx) // cfg.batch_size)
        self.planned_steps = self.total_steps = self.steps_per_epoch * cfg.epochs
        self.step = 0
        self.losses: list[float] = []
        self.grad_norms: list[float] = []  # per step, before clipping (the same on every process)
        self.val_losses: list[float] = []
        self.train_seconds = 0.0
        self.init_steps = 0
        self.init_info: dict[str, Any] | None = None
        if self.ckpt.is_file():
            self._load()
        elif self.warm is not None and cfg.init_from is not None:
            _load_warm_start(self.model, self.warm.state, cfg.init_from)
            self.init_steps = int(self.warm.info.get("steps", 0))
            self.init_info = {**self.warm.info, **({"adopted": self.warm.adopted} if self.warm.adopted else {})}
            if self.dist.is_main:
                log.info("weights from %s (step %d); optimiser and schedule start afresh", cfg.init_from,
                         self.init_steps)
        self.warm = None  # its weights are in the model now (or the checkpoint's are): not held twice
        # what the training step calls: the model's two towers, wrapped by DDP across processes
        self.towers = _towers(self.model, self.frozen_blocks, self.device)
        self.step_towers = self.towers
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            if self.model.motion is not None and not cfg.freeze_motion:
                if self.device == "cuda":  # batch statistics of the global batch, as one process computes them
                    torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # in place: same weights and buffers
                elif self.dist.is_main:
                    log.warning("the motion stream's batch norm uses each process's part of the batch (torch "
                                "synchronises batch norms on GPUs only): the run differs slightly from one process's")

            # find_unused_parameters: the BERT pooler (kept for the checkpoint layout) never gets a gradient
            self.step_towers = DistributedDataParallel(
                self.towers, device_ids=[self.dist.local_rank] if self.device == "cuda" else None,
                find_unused_parameters=True)

    def device_name(self) -> str:
        import torch

        return torch.cuda.get_device_name() if self.device == "cuda" else "cpu"

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        return {"config": asdict(self.cfg), "model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "step": self.step, "total_steps": self.total_steps, "losses": self.losses,
                "grad_norms": self.grad_norms, "val_losses": self.val_losses, "train_seconds": self.train_seconds,
                "init_info": self.init_info}

    def save(self) -> None:
        """Write the checkpoint (rank 0 only: every process holds the same weights)."""
        import torch

        if not self.dist.is_main:
            return
        state = self._state()
        atomic_write(self.ckpt, lambda f: torch.save(state, f))

    def _load(self) -> None:
        import torch

        st = torch.load(self.ckpt, map_location="cpu", weights_only=False)
        mine = {k: v for k, v in self.cfg.identity().items() if k not in self.resume_ignore}
        theirs = {k: v for k, v in TrainConfig.from_dict(st["config"]).identity().items()  # fields added since
                  if k not in self.resume_ignore}  # take their defaults
        if theirs != mine:
            diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
            raise ValueError(f"{self.ckpt} was written with other options ({diff}); use another work folder")
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        self.step, self.losses, self.val_losses = st["step"], st["losses"], st["val_losses"]
        self.grad_norms = list(st.get("grad_norms", []))
        self.total_steps = int(st.get("total_steps", self.total_steps))
        self.train_seconds = st.get("train_seconds", 0.0)
        self.init_info = st.get("init_info")
        log.info("resumed from %s at step %d", self.ckpt, self.step)

    # ------------------------------------------------------------------ batches
    def tokenize(self, texts: list[str]):
        import torch

        enc = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        return ids, mask

    def batch_rows(self, step: int) -> np.ndarray:
        """Cache rows of global ``step``'s batch (all processes'), sorted."""
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.cfg.seed, 0xE90C, epoch]).permutation(self.train_idx)
        return np.sort(perm[k * self.cfg.batch_size:(k + 1) * self.cfg.batch_size])

    def batch(self, step: int):
        """(model input (see ``model_input``), input_ids, attention_mask) of global ``step``: this process's
        contiguous part of the global batch. Texts and shifts are drawn for the whole global batch, in one order,
        by every process (then each keeps its part), so the batch does not depend on the number of processes."""
        from cmrdx.train.data import sample_text

        rows = self.batch_rows(step)
        rng = np.random.default_rng([self.cfg.seed, 0x7E27, step])
        texts = [sample_text(r, rng, self.cfg.text_subset_p, self.cfg.text_max_sentences,
                             self.cfg.text_augment)
                 for r in self.cache.reports(rows)]
        m = self.cfg.augment_shift
        shifts = rng.integers(0, 2 * m + 1, size=(2, len(rows))) if m else None  # what shift_batch would draw
        lo, hi = shard(len(rows), self.dist)
        return (self.model_input(rows[lo:hi], None if shifts is None else shifts[:, lo:hi]),
                *self.tokenize(texts[lo:hi]))

    def _train_mode(self) -> None:
        """Training mode, except a frozen motion stream: its batch norm keeps the warm start's statistics."""
        self.model.train()
        if self.cfg.freeze_motion:
            self._motion_stream().eval()

    def _motion_stream(self) -> MotionStream:
        """The model's motion stream; an error for a model without one (callers run only where the config has
        one: ``motion`` is required with ``freeze_motion`` and by the motion-stream inputs)."""
        if self.model.motion is None:
            raise RuntimeError("the model has no motion stream (TrainConfig.motion is not set)")
        return self.model.motion

    def model_input(self, rows: np.ndarray, shift_rng: np.random.Generator | np.ndarray | None = None):
        """What ``loss`` takes for ``rows``: the video; or, where the transformer is frozen, its cached
        embeddings (B, D) or frozen-block tokens (B, T, D), paired with the motion stream's input when the model
        has one (``(cached, stats)``; the shift then moves the motion stream's input only)."""
        import torch

        if not (self.cfg.freeze_video or self.frozen_blocks):
            return self.videos(rows, shift_rng=shift_rng)
        cached = (self.video_embeddings()[torch.from_numpy(np.asarray(rows, np.int64)).to(self.device)]
                  if self.cfg.freeze_video else self.frozen_tokens(rows))
        return cached if self.model.motion is None else (cached, self.motion_stats(rows, shift_rng))

    def _over_cache(self, fn, dtype):
        """``fn(model input of 16 rows)`` for every cache row in order, in eval mode without gradients, stacked
        into one (N, ...) tensor of ``dtype`` on the training device (what a frozen part of the model computes
        once per study)."""
        import torch

        n = len(self.cache.done)
        was = self.model.training
        self.model.eval()
        out = None
        try:
            with torch.no_grad():
                for i in range(0, n, 16):
                    y = fn(self.videos(np.arange(i, min(n, i + 16))))
                    if out is None:
                        out = torch.empty((n, *y.shape[1:]), dtype=dtype, device=self.device)
                    out[i:i + len(y)] = y.to(dtype)
        finally:
            if was:
                self._train_mode()
        return out

    def video_embeddings(self):
        """(N, D) frozen-video-tower embeddings of every cache row (computed once, unaugmented; the transformer
        and its projection only, without a motion stream)."""
        import torch

        if self._video_emb is None:
            m = self.model
            # kept in the work folder under a digest of the frozen weights: a resumed run skips the pass (minutes
            # for thousands of studies on a CPU)
            h = hashlib.sha256()
            for k, v in sorted({**m.video_model.state_dict(), **m.vid_proj.state_dict()}.items()):
                h.update(k.encode())
                h.update(v.detach().cpu().float().numpy().tobytes())
            path = self.work / f"video_embeddings-{h.hexdigest()[:16]}.npy"
            if path.is_file():
                self._video_emb = torch.from_numpy(np.load(path)).to(self.device)
            else:
                self._video_emb = self._over_cache(lambda v: m.vid_proj(m.video_model(v)), torch.float32)
                emb = self._video_emb.cpu().numpy()
                if self.dist.is_main:  # every process computed the same; one writes
                    atomic_write(path, lambda f: np.save(f, emb))
        return self._video_emb

    def motion_stats(self, rows: np.ndarray, shift_rng: np.random.Generator | np.ndarray | None = None):
        """(B, 2G, S, S) float32 motion-stream input of ``rows`` (all rows computed once, kept as float16: 0.3 MB
        a study at 8 groups of 96 x 96). A shift moves the statistics as it would move the video: the per-pixel
        statistics of a shifted video are the shifted statistics, with the mean of a zero-filled pixel and a
        standard deviation of zero at the edges."""
        import torch

        if self._motion_stats is None:
            self._motion_stats = self._over_cache(self._motion_stream().stats, torch.float16)
        x = self._motion_stats[torch.from_numpy(np.asarray(rows, np.int64)).to(self.device)].float()
        if shift_rng is None:
            return x
        g = self._motion_stream().groups
        fill = torch.zeros((1, 2 * g, 1, 1), device=x.device)
        fill[:, :g] = -self.recipe.mean[0] / self.recipe.std[0]  # a zero-filled pixel of a real frame
        return shift_batch(x - fill, self.cfg.augment_shift, shift_rng) + fill

    def frozen_tokens(self, rows: np.ndarray):
        """(B, T, D) float32 tokens after the frozen video blocks for ``rows`` (all rows computed once, kept as
        float16: 0.8 MB a study at 32 frames x 64 patches x 192)."""
        import torch

        if self._video_tokens is None:
            vm = self.model.video_model
            self._video_tokens = self._over_cache(lambda v: vm.tokens(v, self.frozen_blocks), torch.float16)
        return self._video_tokens[torch.from_numpy(np.asarray(rows, np.int64)).to(self.device)].float()

    def videos(self, rows: np.ndarray, shift_rng: np.random.Generator | np.ndarray | None = None, cache=None):
        """(B, F, 3, S, S) float32 model input of ``rows`` of the training cache (or of ``cache``, another cache
        of the same recipe) on the training device, each video translated by a random whole-pixel shift (the same
        for all its frames; edges zero-filled) when ``shift_rng`` is given."""
        import torch

        if self._gpu_videos is None or cache is not None:
            c = cache if cache is not None else self.cache
            u8 = torch.from_numpy(np.ascontiguousarray(c.videos[rows])).to(self.device)
            n_real = torch.from_numpy(c.n_real[rows].astype(np.int64)).to(self.device)
        else:
            idx = torch.from_numpy(np.asarray(rows, np.int64)).to(self.device)
            u8, n_real = self._gpu_videos[idx], self._gpu_n_real[idx]
        if shift_rng is not None:
            u8 = shift_batch(u8, self.cfg.augment_shift, shift_rng)
        return video_input(u8, n_real, self.recipe)

    def loss(self, video, ids, mask, towers=None):
        """InfoNCE of a batch; ``video`` is the model input, (B, T, D) tokens of the frozen video blocks, or
        (B, D) embeddings when the whole video tower is frozen. Across processes, each passes its part of the
        global batch and gets the loss of the whole (embeddings gathered with their gradient); ``towers`` is
        the module that embeds (the DDP-wrapped one in a training step)."""
        t, v = (towers or self.towers)(video, ids.to(self.device), mask.to(self.device))
        if self.dist.active:
            t, v = gather_with_grad(t, self.dist), gather_with_grad(v, self.dist)
        return info_nce(t, v, self.cfg.temperature)

    def val_loss(self) -> float | None:
        """Mean InfoNCE over validation batches of whole reports (no sentence sampling); across processes, each
        embeds its part of every batch and all compute the same loss."""
        import torch

        if len(self.val_idx) < 2:
            return None
        self.model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(self.val_idx), self.cfg.batch_size):
                rows = self.val_idx[i:i + self.cfg.batch_size]
                if len(rows) < 2:
                    continue
                lo, hi = shard(len(rows), self.dist)
                mine = rows[lo:hi]
                if len(mine):
                    ids, mask = self.tokenize(self.cache.reports(mine))
                    t, v = self.towers(self.model_input(mine), ids.to(self.device), mask.to(self.device))
                else:  # fewer rows than processes
                    t = v = torch.zeros((0, self.cfg.projection_dim), device=self.device)
                t, v = gather_rows(t, self.dist), gather_rows(v, self.dist)
                out.append(float(info_nce(t, v, self.cfg.temperature)))
        self._train_mode()
        return float(np.mean(out))

    # ------------------------------------------------------------------ loop
    def run(self, max_steps: int | None = None) -> TrainResult:
        """Train until ``total_steps`` (or ``max_steps`` more steps). Resumable at any step."""
        import torch

        limit = None if max_steps is None else self.step + max_steps  # where this call stops at the latest
        end = self.total_steps if limit is None else min(self.total_steps, limit)
        budget = self.cfg.max_train_seconds
        probe_from, probe = self.step + PROBE_STEPS, None  # the steps after warm-up time the budget's schedule
        run_t0 = self.clock()
        self._train_mode()
        prog = None
        if self.progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            prog = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                            TimeRemainingColumn())
            prog.start()
            task = prog.add_task("train", total=self.total_steps, completed=self.step, info="")
        try:
            while self.step < end:
                # the clock is read twice a step, here and after the optimiser step (``now``), and nowhere else
                t0 = self.clock()
                for g in self.opt.param_groups:
                    g["lr"] = lr_at(self.step, self.total_steps, g.get("peak_lr", self.cfg.lr), self.cfg.warmup_steps)
                video, ids, mask = self.batch(self.step)
                loss = self.loss(video, ids, mask, towers=self.step_towers)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()  # across processes: DDP has averaged the gradients when it returns
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                self.opt.step()
                self.step += 1
                self.losses.append(float(loss.detach()))
                self.grad_norms.append(float(norm))
                now = self.clock()
                self.train_seconds += now - t0
                if budget is not None:
                    if now - run_t0 > budget and self.step < self.total_steps:
                        if self.dist.is_main:
                            log.warning("time budget %.0f s spent: stopped at step %d of %d", budget, self.step,
                                        self.total_steps)
                        self.total_steps = end = self.step
                    if self.step == probe_from:
                        probe = now
                    if probe is not None:  # refitted on the time per step since the probe began
                        fit = _fit_schedule(self.step, now - run_t0, budget, probe_from, now - probe,
                                            self.planned_steps)
                        if fit is not None and fit != self.total_steps and self.step < self.total_steps:
                            if self.dist.is_main:
                                log.info("time budget %.0f s at %.3f s/step: schedule of %d steps now %d", budget,
                                         (now - probe) / (self.step - probe_from), self.total_steps, fit)
                            self.total_steps = fit
                            end = fit if limit is None else min(limit, fit)
                            if prog is not None:
                                prog.update(task, total=self.total_steps)
                    # every process follows rank 0's clock: a schedule that differed by one step would hang them
                    self.total_steps, end = broadcast_object((self.total_steps, end), self.dist)
                if self.on_step:
                    self.on_step(self.step, self.losses[-1])
                epoch_end = self.step % self.steps_per_epoch == 0
                if epoch_end:
                    v = self.val_loss()
                    if v is not None:
                        self.val_losses.append(v)
                if prog is not None:
                    recent = float(np.mean(self.losses[-20:]))
                    info = f"loss {recent:.3f}" + (f" val {self.val_losses[-1]:.3f}" if self.val_losses else "")
                    prog.update(task, completed=self.step, info=info)
                elif self.dist.is_main and (self.step % 10 == 0 or epoch_end):
                    log.info("step %d/%d loss %.4f%s", self.step, self.total_steps, np.mean(self.losses[-10:]),
                             f" val {self.val_losses[-1]:.4f}" if epoch_end and self.val_losses else "")
                if epoch_end or self.step % self.cfg.checkpoint_every == 0:
                    self.save()
        finally:
            if prog is not None:
                prog.stop()
        self.save()
        return self.result()

    def result(self) -> TrainResult:
        return TrainResult(steps=self.step, epochs_done=self.step // self.steps_per_epoch, seconds=self.train_seconds,
                           losses=list(self.losses), val_losses=list(self.val_losses), n_train=len(self.train_idx),
                           n_val=len(self.val_idx), skipped=self.cache.skipped)

    # ------------------------------------------------------------------ export
    def provenance(self) -> dict[str, Any]:
        import cmrdx

        res = self.result()
        tail = res.losses[-self.steps_per_epoch:] if res.losses else []
        return {
            "trained_by": f"cmrdx train ({cmrdx.__version__})",
            "trained": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "data": {**self.cache.meta["source"], "studies_cached": int(self.cache.done.sum()),
                     "pairs_train": res.n_train, "pairs_val": res.n_val,
                     "skipped": res.skipped, "cache_seconds": round(float(self.cache.meta.get("seconds", 0.0)), 1),
                     # counts only: the lists of unmatched UIDs / accessions stay in the work folder
                     **({"reports_matched": self.report_match} if self.report_match else {})},
            "training": {"config": asdict(self.cfg), "steps": res.steps, "epochs": res.epochs_done,
                         "seconds": round(res.seconds, 1), "final_train_loss": round(float(np.mean(tail)), 4) if tail else None,
                         "first_train_loss": round(float(np.mean(res.losses[:20])), 4) if res.losses else None,
                         "val_loss_per_epoch": [round(v, 4) for v in res.val_losses],
                         "planned_steps": self.planned_steps, "device": self.device_name(),
                         "loss": "symmetric InfoNCE on cosine similarities", "temperature": self.cfg.temperature,
                         "threads": self.cfg.threads or "torch default", "processes": self.dist.world},
            **({"initialised_from": self.init_info} if self.init_info else {}),
        }

    def export(self, out: str | Path, *, int8: bool = True, float16: bool = True) -> dict[str, Any]:
        """Export the current weights to the model folder ``out`` (ONNX + tokenizer + manifest, proven)."""
        return _export(self.cfg, self._cpu_state(), self.vocab.read_text(encoding="utf-8"), self.provenance(),
                       Path(out), int8=int8, float16=float16)

    def _cpu_state(self) -> dict[str, Any]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def save_trained(self, path: str | Path) -> Path:
        """Everything an export needs, in one file (weights, vocabulary, config, provenance; no optimiser
        state): how a model trained on a machine without the ONNX exporter travels to one that has it
        (``export_trained``)."""
        import torch

        path = Path(path)
        state = {"format": "cmrdx-trained/1", "config": asdict(self.cfg), "model": self._cpu_state(),
                 "vocab": self.vocab.read_text(encoding="utf-8"), "provenance": self.provenance()}
        atomic_write(path, lambda f: torch.save(state, f))
        return path


def _torch_load(path: str | Path) -> dict[str, Any]:
    """A torch-saved dict, or ValueError naming the file (missing, not written by torch, not a dict)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        st = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types; all mean "not our file"
        raise ValueError(f"{path}: not a torch file written by cmrdx train ({type(exc).__name__})") from None
    if not isinstance(st, dict) or "model" not in st:
        raise ValueError(f"{path}: not a cmrdx checkpoint.pt or trained.pt (no model weights)")
    return st


def _load_warm_start(model, state: dict[str, Any], path: str | Path) -> None:
    """Load a warm start's weights; a motion stream the warm start lacks keeps its initialisation (its last
    layer is zero, so the model starts from the warm start's embeddings). Any other difference (keys or shapes)
    is an error naming the file."""
    from cmrdx.train.model import load_state_dict_strict

    try:
        load_state_dict_strict(model, state, may_lack=("motion.",))
    except ValueError as exc:
        raise ValueError(f"init_from {path}: {exc}; give a checkpoint trained with the same model shape") from None


def _load_init(path: str | Path) -> dict[str, Any]:
    """Weights, vocabulary and provenance of a warm start (``finetune.load_warm_start``) as a dict (``model``,
    ``vocab``, ``info``): what bench scripts read."""
    from cmrdx.train.finetune import load_warm_start

    w = load_warm_start(path)
    return {"model": w.state, "vocab": w.vocab, "info": w.info}


def _towers(model, frozen_blocks: int, device: str):
    """The module a training step calls: (model input, ids, mask) -> (text, video) float32 embeddings, not
    normalised. A module of its own (holding the model) so that DDP can wrap the step's forward: DDP reduces the
    gradients of what its forward computed, and the loss's gather sits between that forward and the backward."""
    import torch

    class Towers(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, video, ids, mask):
            m = self.model
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
                t = m.encode_text(ids, mask)
                stats = None
                if isinstance(video, tuple):
                    video, stats = video
                if video.ndim == 2:
                    v = video
                elif video.ndim == 3:
                    v = m.vid_proj(m.video_model.head(video, frozen_blocks))
                else:
                    v = m.encode_video(video)
                if stats is not None:
                    v = v + m.motion.head(stats)
            return t.float(), v.float()

    return Towers()


PHANTOM_LICENCE = "MIT (weights trained by cmrdx on synthetic phantom studies; demonstration only, not for clinical use)"


def licence_for(provenance: dict[str, Any]) -> str:
    """The licence line of an exported model: weights that descend from CMR-CLIP's (at any earlier stage) carry
    its terms, whatever data they were tuned on; weights trained on a site's archive are the site's."""
    stage: Any = provenance.get("initialised_from")
    while isinstance(stage, dict):
        if str(stage.get("source", "")).startswith("CMR-CLIP"):
            return ("Fine-tuned by cmrdx from the CMR-CLIP weights (Makiya11/CMRCLIP, weights makiyeah/CMRCLIP): see "
                    "the hub repository for their terms. Research and demonstration use only; not a medical device.")
        stage = stage.get("initialised_from")
    if (provenance.get("data") or {}).get("kind") == "archive":
        return ("Trained by cmrdx on the training site's own studies: their terms are the site's. Not a medical "
                "device.")
    return PHANTOM_LICENCE


def _export(cfg: TrainConfig, state: dict[str, Any], vocab: str, provenance: dict[str, Any], out: Path, *,
            int8: bool, float16: bool) -> dict[str, Any]:
    from cmrdx.train.export import ExportOptions, export_model_folder
    from cmrdx.train.model import CMRClip

    n_vocab = vocab.count("\n") + (0 if vocab.endswith("\n") else 1)  # lines, as Trainer counts them
    model = CMRClip(cfg.model_config(n_vocab))
    model.load_state_dict(state)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_path = Path(tmp) / "vocab.txt"
        vocab_path.write_text(vocab, encoding="utf-8")
        rep = export_model_folder(
            model.eval(), Path(out), vocab_path=vocab_path, name=cfg.name, version=cfg.version,
            recipe={"name": "cmrclip-v1", "params": cfg.recipe().to_dict()}, lowercase=True,
            max_length=cfg.max_length, provenance=provenance,
            licence=licence_for(provenance),
            options=ExportOptions(float16=float16, int8=int8),
        )
    return {"files": rep.files, "checks": rep.checks, "notes": rep.notes}


def export_trained(path: str | Path, out: str | Path, *, int8: bool = True, float16: bool = True) -> dict[str, Any]:
    """Export a file written by ``Trainer.save_trained`` to the model folder ``out``."""
    st = _torch_load(path)
    if st.get("format") != "cmrdx-trained/1":
        raise ValueError(f"{path} is not a file written by Trainer.save_trained (format cmrdx-trained/1)")
    prov = dict(st["provenance"])
    prov["exported_from"] = Path(path).name
    return _export(TrainConfig.from_dict(st["config"]), st["model"], st["vocab"], prov, Path(out),
                   int8=int8, float16=float16)


def train(cfg: TrainConfig, *, out: str | Path | None, work: str | Path, progress: bool = True,
          max_steps: int | None = None, int8: bool = True, float16: bool = True,
          on_step: Callable[[int, float], None] | None = None, dist: DistInfo | None = None) -> TrainResult:
    """Cache, train (resuming from ``work``), and export to ``out`` when training is complete.

    Launched by torchrun (``WORLD_SIZE`` > 1 in the environment, or ``dist`` given), the processes train data
    parallel (``cmrdx.train.distributed``); rank 0 alone logs, writes and exports (the others return the same
    result without ``export``)."""
    from cmrdx.train import distributed

    info = dist or distributed.env_info()
    distributed.init(info, cfg.torch_device() if info.active else "cpu")
    distributed.quiet_other_ranks(info)
    try:
        tr = Trainer(cfg, work, progress=progress, on_step=on_step, dist=info)
        res = tr.run(max_steps=max_steps)
        if info.is_main and out is not None and tr.step >= tr.total_steps:
            res.export = tr.export(out, int8=int8, float16=float16)
            atomic_write(Path(work) / "result.json", json.dumps(asdict(res), indent=1, default=float))
    finally:
        distributed.shutdown(info)
    return res
