"""A finding stream: a small convolutional path for one finding, trained beside a finished model from the report
clauses that speak of that finding.

Why: the small space-time transformer leaves late gadolinium enhancement (LGE) on randomised phantoms at chance,
even trained on the labels, where a small per-frame CNN learns it from the same frames (bench/results/lge_cnn.md);
and the contrastive loss on whole reports does not teach that CNN, because LGE is one clause of a report's many.
What does (bench/results/lge_stream.md): each step contrasts a batch of studies with one clause each about the
finding, the clauses filed under it by patterns the recipe names (a site's reports have their own wording), the
targets spread over the clauses of the same polarity as negation words read it, and the other findings' scores
held exactly (``FindingStream``). No label is read.

A stage of a ``cmrdx train`` recipe with a ``finding_stream`` mapping trains one (``FindingStreamTrainer``): it
starts from a finished model (``init_from``, or the previous stage), freezes all of it, and adds the stream, whose
input is a stream of the recipe (``RecipeParams.streams``: by default the LGE images cut 210 mm around the heart).
The exported model's input is the main recipe's frames followed by the stream's. Keys of ``finding_stream``:

    finding: lge                      # the bank finding (its prompts are not held; the others' are)
    clauses: "enhanc|\\bLGE\\b|scar"   # a report clause is filed under the finding when it matches (case ignored)
    technique: "\\b(cine|SSFP)\\b"     # ... and does not match this (sentences that name a sequence)
    negation: "\\b(no|not|absent)\\b"  # a filed clause denies the finding when it matches this
    segments: [lge_sa, lge_lax, lge_2ch, lge_3ch]   # the stream recipe: montage segments,
    frames: 16                                      # frames, and
    heart_crop_mm: 210                              # the cut around the heart (null: the whole field)
    width: 16                         # the CNN's first channels
    lge_repeats: 1                    # each long-axis LGE image once (null: as often as the stack has slices)
    hold: true                        # the other findings' zero-shot scores stay the base model's exactly
    bank: cmr-findings                # the prompt bank whose other findings are held
    weight_decay: 0.0001

The stage's ``epochs``, ``batch_size``, ``lr`` (peak of a one-cycle schedule), ``augment_shift``, ``temperature``,
``seed``, ``checkpoint_every`` and ``threads`` apply as in any stage.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrdx.fileio import atomic_write
from cmrdx.train.streamspec import DEFAULT_NEGATION, DEFAULT_TECHNIQUE, LGE_SEGMENTS, StreamSpec

__all__ = ["DEFAULT_NEGATION", "DEFAULT_TECHNIQUE", "LGE_SEGMENTS", "FiledClauses", "FindingStreamTrainer",
           "StreamSpec", "file_clauses", "held_projection", "negation_loss", "report_clauses"]

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.train.distributed import DistInfo
    from cmrdx.train.trainer import TrainConfig, TrainResult

log = logging.getLogger(__name__)


def report_clauses(report: str) -> list[str]:
    """A report's clauses: its sentences, split again at semicolons; bare headings and one-word pieces dropped."""
    from cmrdx.train.data import split_sentences

    out = []
    for sent in split_sentences(report):
        for c in sent.split(";"):
            c = c.strip(" -*\t")
            if len(c.split()) > 1 and not c.endswith(":"):
                out.append(c)
    return out


@dataclass
class FiledClauses:
    """The clauses of the training reports filed under the finding: ``texts`` (distinct), ``denies`` (per text),
    and per study (cache row) the indices of its filed clauses."""

    texts: list[str]
    denies: np.ndarray
    rows: np.ndarray
    per_row: list[np.ndarray]

    def summary(self) -> dict[str, Any]:
        n = sum(len(c) for c in self.per_row)
        return {"studies": int(len(self.rows)), "clauses": int(n), "distinct_clauses": len(self.texts),
                "denying_share": round(float(self.denies.mean()), 4) if len(self.texts) else None}


def file_clauses(spec: StreamSpec, reports: Sequence[str | None], rows: np.ndarray) -> FiledClauses:
    """The clauses of ``reports[rows]`` that ``spec`` files under its finding."""
    texts: list[str] = []
    index: dict[str, int] = {}
    have: list[int] = []
    per_row: list[np.ndarray] = []
    for i in rows:
        ids = []
        for c in report_clauses(reports[int(i)] or ""):
            if not spec.files(c):
                continue
            if c not in index:
                index[c] = len(texts)
                texts.append(c)
            ids.append(index[c])
        if ids:
            have.append(int(i))
            per_row.append(np.array(ids))
    return FiledClauses(texts, np.array([spec.denies(t) for t in texts], dtype=bool), np.array(have, dtype=np.int64),
                        per_row)


def held_projection(vectors: np.ndarray, tol: float = 1e-5) -> np.ndarray:
    """(n, D) prompt embeddings -> (D, D) orthogonal projection onto their span (its rank by the singular values
    above ``tol`` times the largest)."""
    if len(vectors) == 0:
        return np.zeros((vectors.shape[1], vectors.shape[1]), np.float32)
    u, s, _ = np.linalg.svd(np.asarray(vectors, np.float64).T, full_matrices=False)
    q = u[:, s > tol * s.max()]
    return (q @ q.T).astype(np.float32)


def negation_loss(v, t, denies, temperature: float):
    """Symmetric cross-entropy of (B, D) unit study embeddings against (B, D) unit clause embeddings, the targets
    spread over the clauses of the same polarity (``denies``: (B,) bool)."""
    import torch

    logits = v @ t.T / temperature
    same = (denies[:, None] == denies[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                  + torch.sum(-target * logits.T.log_softmax(1), 1).mean())


class FindingStreamTrainer:
    """One ``finding_stream`` stage: the base model frozen, the stream trained (the interface ``stages.run_recipe``
    uses of ``Trainer``: ``run``, ``step``, ``total_steps``, ``save_trained``, ``result``, ``provenance``)."""

    def __init__(self, cfg: TrainConfig, work: str | Path, *, progress: bool = True,
                 on_step: Callable[[int, float], None] | None = None, clock: Callable[[], float] = time.perf_counter,
                 dist: DistInfo | None = None, cache_root: str | Path | None = None,
                 resume_ignore: tuple[str, ...] = ()):
        import torch

        from cmrdx.train.data import build_cache, cache_key
        from cmrdx.train.finetune import adopt_architecture, load_warm_start
        from cmrdx.train.model import CMRClip, load_state_dict_strict
        from cmrdx.train.tokenizer import load_tokenizer

        if dist is not None and dist.world > 1:
            raise ValueError("a finding_stream stage trains in one process (it is small): start it without torchrun")
        self.spec = StreamSpec.from_dict(cfg.finding_stream)
        if not cfg.init_from:
            raise ValueError("a finding_stream stage adds a stream to a finished model: give init_from (a model "
                             "folder or trained.pt), or put the stage after the stages that train the model")
        self.resume_ignore = tuple(resume_ignore)
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.on_step = on_step
        self.clock = clock
        warm = load_warm_start(cfg.init_from)
        adopted: dict[str, Any] = {}
        if warm.arch is not None:
            cfg, adopted = adopt_architecture(cfg, warm.arch)
        if any(k.startswith("finding_stream.") for k in warm.state):
            raise ValueError(f"init_from {cfg.init_from}: the model has a finding stream already (one per model)")
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = "cpu"  # the stream is small; the frozen model's embeddings are computed once
        full = cfg.recipe()
        self.main_recipe, self.stream_recipe = full.main, full.streams[0]
        self.source = cfg.source()
        root = Path(cache_root) if cache_root is not None else self.work
        desc = self.source.describe()
        self.cache_dir = root / cache_key(desc, self.main_recipe)
        self.stream_dir = root / cache_key(desc, self.stream_recipe)
        t0 = clock()
        self.cache = build_cache(self.source, self.main_recipe, self.cache_dir, progress=progress,
                                 workers=cfg.workers, max_seconds=cfg.max_cache_seconds)
        self.scache = build_cache(self.source, self.stream_recipe, self.stream_dir, progress=progress,
                                  workers=cfg.workers, max_seconds=cfg.max_cache_seconds)
        self.cache_seconds = clock() - t0
        from cmrdx.train.trainer import split_indices

        valid = self.cache.valid  # rows with a study and a report, which the stream's cache holds too
        valid = valid[self.scache.done[valid]]
        self.train_idx, self.val_idx = split_indices(valid, cfg.val_fraction, cfg.seed)
        self.vocab = self.work / "vocab.txt"
        if not self.vocab.is_file():
            atomic_write(self.vocab, warm.vocab)
        self.tokenizer, _ = load_tokenizer(self.vocab, max_length=cfg.max_length)
        with open(self.vocab, encoding="utf-8") as fh:
            n_vocab = sum(1 for _ in fh)
        self.model = CMRClip(cfg.model_config(n_vocab))
        try:
            load_state_dict_strict(self.model, warm.state, may_lack=("finding_stream.",))
        except ValueError as exc:
            raise ValueError(f"init_from {cfg.init_from}: {exc}") from None
        self.init_info = {**warm.info, **({"adopted": adopted} if adopted else {})}
        self.init_steps = int(warm.info.get("steps", 0))
        del warm
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        stream = self.model.finding_stream
        assert stream is not None
        self.stream = stream
        for p in stream.parameters():
            p.requires_grad_(True)

        # the frozen text tower: clause and prompt embeddings, computed once
        reports = self.cache.meta["reports"]
        self.filed = file_clauses(self.spec, reports, self.train_idx)
        if len(self.filed.rows) < 2 or self.filed.denies.all() or not self.filed.denies.any():
            raise ValueError(f"finding_stream: the patterns file {len(self.filed.rows)} training reports' clauses "
                             f"under {self.spec.finding} ({self.filed.summary()}); the stage needs clauses that "
                             "report it and clauses that deny it: check clauses / negation against the reports")
        self.clause_emb = torch.from_numpy(self.encode_texts(self.filed.texts))
        self.held_dims = 0
        if self.spec.hold:
            from cmrdx.zeroshot.bank import load_bank

            bank = load_bank(self.spec.bank)
            ids = [f.id for f in bank.findings]
            if self.spec.finding not in ids:
                raise ValueError(f"finding_stream.finding {self.spec.finding!r}: not a finding of the bank "
                                 f"{self.spec.bank} ({', '.join(ids)})")
            texts = list(dict.fromkeys(t for f in bank.findings if f.id != self.spec.finding for t in f.all_texts))
            proj = held_projection(self.encode_texts(texts))
            self.held_dims = int(round(float(np.trace(proj))))
            if self.held_dims >= proj.shape[0]:
                raise ValueError(f"finding_stream.hold: the other findings' {len(texts)} prompts span the whole "
                                 f"{proj.shape[0]}-dimensional embedding; nothing is left for the stream to turn")
            stream.held.copy_(torch.from_numpy(proj))
        self.e0 = self.base_embeddings()

        self.steps_per_epoch = max(1, len(self.train_idx) // cfg.batch_size)
        self.planned_steps = self.total_steps = self.steps_per_epoch * cfg.epochs
        params = [p for p in stream.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=self.spec.weight_decay)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=cfg.lr, total_steps=max(1, self.total_steps),
                                                         pct_start=0.1)
        self.rng = np.random.default_rng(cfg.seed)
        self.step = 0
        self.losses: list[float] = []
        self.train_seconds = 0.0
        self.ckpt = self.work / "checkpoint.pt"
        if self.ckpt.is_file():
            self._load()

    # ------------------------------------------------------------------ inputs
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit text embeddings of the frozen text tower."""
        import torch

        out = []
        with torch.no_grad():
            for k in range(0, len(texts), 64):
                enc = self.tokenizer.encode_batch(list(texts[k:k + 64]))
                ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
                mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
                out.append(self.model.encode_text(ids, mask).numpy())
        e = np.concatenate(out) if out else np.zeros((0, self.cfg.projection_dim), np.float32)
        return (e / np.linalg.norm(e, axis=1, keepdims=True).clip(min=1e-12)).astype(np.float32)

    def main_input(self, rows: np.ndarray):
        import torch

        from cmrdx.train.trainer import video_input

        return video_input(torch.from_numpy(np.asarray(self.cache.videos[rows])),
                           torch.from_numpy(self.cache.n_real[rows].astype(np.int64)), self.main_recipe)

    def stream_input(self, rows: np.ndarray):
        import torch

        from cmrdx.train.trainer import video_input

        return video_input(torch.from_numpy(np.asarray(self.scache.videos[rows])),
                           torch.from_numpy(self.scache.n_real[rows].astype(np.int64)), self.stream_recipe)

    def base_embeddings(self) -> np.ndarray:
        """(N, D) the frozen model's embedding of every cache row (zeros where the cache has none). Minutes for a
        few thousand studies on a CPU, so it shows how far it got: a bar as caching shows one or, with
        ``--no-progress`` (``progress`` False), a log line every 512 studies."""
        import torch

        rows = np.flatnonzero(self.cache.done & (self.cache.n_real > 0))
        e0 = np.zeros((len(self.cache.n_real), self.cfg.projection_dim), np.float32)
        bar = None
        if self.progress and len(rows):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            bar = Progress(TextColumn("frozen model's embeddings"), BarColumn(), MofNCompleteColumn(),
                           TimeRemainingColumn())
            bar.start()
            task = bar.add_task("embed", total=len(rows))
        try:
            with torch.no_grad():
                for k in range(0, len(rows), 32):
                    r = rows[k:k + 32]
                    e0[r] = self.model.encode_main(self.main_input(r)).numpy()
                    done = k + len(r)
                    if bar is not None:
                        bar.update(task, completed=done)
                    elif done % 512 == 0 or done == len(rows):
                        log.info("finding stream: the frozen model's embeddings, %d/%d studies", done, len(rows))
        finally:
            if bar is not None:
                bar.stop()
        return e0

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        return {"config": asdict(self.cfg), "stream": self.stream.state_dict(), "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(), "rng": self.rng.bit_generator.state, "step": self.step,
                "total_steps": self.total_steps, "losses": self.losses, "train_seconds": self.train_seconds}

    def save(self) -> None:
        import torch

        state = self._state()
        atomic_write(self.ckpt, lambda f: torch.save(state, f))

    def _load(self) -> None:
        import torch

        from cmrdx.train.trainer import TrainConfig

        st = torch.load(self.ckpt, map_location="cpu", weights_only=False)
        mine = {k: v for k, v in self.cfg.identity().items() if k not in self.resume_ignore}
        theirs = {k: v for k, v in TrainConfig.from_dict(st["config"]).identity().items() if k not in self.resume_ignore}
        if theirs != mine:
            diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
            raise ValueError(f"{self.ckpt} was written with other options ({diff}); use another work folder")
        self.stream.load_state_dict(st["stream"])
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])
        self.rng.bit_generator.state = st["rng"]
        self.step, self.losses = int(st["step"]), list(st["losses"])
        self.train_seconds = float(st.get("train_seconds", 0.0))
        log.info("resumed from %s at step %d", self.ckpt, self.step)

    # ------------------------------------------------------------------ training
    def shift(self, g):
        """Each study's grey frames shifted by its own whole-pixel offset of up to ``augment_shift`` (zero-filled)."""
        from cmrdx.train.trainer import shift_batch

        m = int(self.cfg.augment_shift)
        g = shift_batch(g, m, self.rng) if m > 0 else g
        if self.spec.intensity_jitter > 0:
            from cmrdx.train.streamspec import jitter_grey

            g = jitter_grey(g, float(self.spec.intensity_jitter), self.rng)
        return g

    def train_step(self) -> float:
        import torch

        f = self.filed
        pick = self.rng.choice(len(f.rows), size=min(self.cfg.batch_size, len(f.rows)), replace=False)
        rows = f.rows[pick]
        cids = np.array([self.rng.choice(f.per_row[j]) for j in pick])
        order = np.argsort(rows)
        rows, cids = rows[order], cids[order]
        self.stream.train()
        out = self.stream.output(self.stream_input(rows), augment=self.shift)
        v = torch.nn.functional.normalize(self.stream.join(torch.from_numpy(self.e0[rows]), out), dim=1)
        loss = negation_loss(v, self.clause_emb[cids], torch.from_numpy(f.denies[cids]), float(self.cfg.temperature))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        return float(loss.detach())

    def run(self, max_steps: int | None = None) -> TrainResult:
        stop = self.total_steps if max_steps is None else min(self.total_steps, self.step + max_steps)
        t0 = self.clock()
        bar = None
        if self.progress:  # a bar, as the trainer shows; log lines with --no-progress
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            bar = Progress(TextColumn("finding stream"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            bar.start()
            task = bar.add_task("train", total=self.total_steps, completed=self.step, info="")
        try:
            while self.step < stop:
                loss = self.train_step()
                self.step += 1
                self.losses.append(loss)
                if self.on_step is not None:
                    self.on_step(self.step, loss)
                recent = float(np.mean(self.losses[-20:]))
                if bar is not None:
                    bar.update(task, completed=self.step, info=f"loss {recent:.3f}")
                elif self.step % 10 == 0 or self.step % self.steps_per_epoch == 0 or self.step == stop:
                    log.info("finding stream step %d/%d: loss %.3f", self.step, self.total_steps, recent)
                if self.step % max(1, self.cfg.checkpoint_every) == 0 or self.step == stop:
                    self.train_seconds += self.clock() - t0
                    t0 = self.clock()
                    self.save()
        finally:
            if bar is not None:
                bar.stop()
        self.train_seconds += self.clock() - t0
        self.stream.eval()
        return self.result()

    def result(self) -> TrainResult:
        from cmrdx.train.trainer import TrainResult

        return TrainResult(steps=self.step, epochs_done=self.step // self.steps_per_epoch, seconds=self.train_seconds,
                           losses=list(self.losses), val_losses=[], n_train=len(self.train_idx),
                           n_val=len(self.val_idx), skipped=self.cache.skipped)

    def device_name(self) -> str:
        return self.device

    def provenance(self) -> dict[str, Any]:
        import cmrdx

        res = self.result()
        tail = res.losses[-self.steps_per_epoch:]
        return {
            "trained_by": f"cmrdx train ({cmrdx.__version__})",
            "trained": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "data": {**self.cache.meta["source"], "studies_cached": int(self.cache.done.sum()),
                     "pairs_train": res.n_train, "pairs_val": res.n_val, "skipped": res.skipped,
                     "cache_seconds": round(float(self.cache.meta.get("seconds", 0.0))
                                            + float(self.scache.meta.get("seconds", 0.0)), 1)},
            "training": {"config": asdict(self.cfg), "steps": res.steps, "epochs": res.epochs_done,
                         "seconds": round(res.seconds, 1),
                         "final_train_loss": round(float(np.mean(tail)), 4) if tail else None,
                         "first_train_loss": round(float(np.mean(res.losses[:20])), 4) if res.losses else None,
                         "val_loss_per_epoch": [], "planned_steps": self.planned_steps, "device": self.device,
                         "loss": ("symmetric cross-entropy of study embeddings against one filed report clause "
                                  "each, targets over the clauses of the same polarity (negation words)"),
                         "temperature": self.cfg.temperature, "threads": self.cfg.threads or "torch default",
                         "processes": 1},
            "finding_stream": {"finding": self.spec.finding, "filed": self.filed.summary(),
                               "held_dimensions": self.held_dims, "embedding_dimensions": self.cfg.projection_dim,
                               "stream_recipe": self.stream_recipe.to_dict(), "trains": "the stream alone; the "
                               "transformer, motion stream and text tower are the base model's"},
            "initialised_from": self.init_info,
        }

    def save_trained(self, path: str | Path) -> Path:
        """The whole model (base and stream) as ``Trainer.save_trained`` writes it."""
        import torch

        path = Path(path)
        state = {"format": "cmrdx-trained/1", "config": asdict(self.cfg),
                 "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                 "vocab": self.vocab.read_text(encoding="utf-8"), "provenance": self.provenance()}
        atomic_write(path, lambda f: torch.save(state, f))
        return path
