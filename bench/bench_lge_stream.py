"""Can a convolutional stream, trained from the reports alone, give zero-shot randomised LGE?

bench_lge_cnn.py shows that a small per-frame CNN learns randomised LGE from the model's own input when it is given
the labels and many passes, where the space-time transformer does not at the budgets it gets. This asks the
question a CMR-CLIP model must answer: without labels, from the report sentences alone. A finished model (the
final stage of a ``cmrdx train`` run: ``trained.pt``) is frozen whole; the same small CNN is added as a stream
whose output joins its study embedding (``e = e0 + stream(frames)``, the stream's last layer starting at zero, so
training starts from the model exactly, as the motion stream does) and is trained with the contrastive loss
against the frozen text tower's embeddings of each study's own report. Nothing else learns and no label is read
in training. Then every finding of the shipped prompt bank is scored zero-shot on studies of the cache kept out,
before (the model as it is) and after (with the stream).

Topic steps (``--topic-batches``) sharpen what the reports say without reading a label: each report is cut into
clauses, each clause goes to the bank finding whose prompts the frozen text tower puts nearest, and a step
contrasts a batch of studies with one clause each about one finding (``--topics``: which findings), the targets
spread over the batch's clauses either by their text similarity or, with ``--negation-targets``, over the clauses of
the same polarity as negation words read it (a rule labeler of the text). ``--topic-share`` mixes them with the
plain steps. ``--file-by keywords`` files the clauses by a rule filer's keyword patterns (``KEYWORDS``) instead of
the nearest prompt. ``--hold-others F`` holds every other finding's zero-shot score exactly: the stream may only
turn the unit embedding outside the span of the other findings' prompts. ``--eval-families`` also scores an
archive of the families the run held out (leave-one-family-out), rendered under the stage's recipe.

    PYTHONPATH=. .venv/bin/python bench/bench_lge_stream.py --stage WORK/2-text --epochs 12 --label NAME
    PYTHONPATH=. .venv/bin/python bench/bench_lge_stream.py --stage WORK/2-text --epochs 12 --topic-batches \
        --topics lge --negation-targets --label NAME
    PYTHONPATH=. .venv/bin/python bench/bench_lge_stream.py --stage WORK/2-text --epochs 12 --topic-batches \
        --topics lge --negation-targets --file-by keywords --hold-others lge \
        --eval-families anatomy:trabeculated,lge:psir,scar:midwall --label NAME

WORK: a ``cmrdx train`` work folder whose stages froze the video tower after the first (its cached video embeddings
``video_embeddings-*.npy`` are reused when they match; the study cache under ``WORK/caches``).
Appends rows to ``--results`` (a Markdown table).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lge_ceiling import load_stage  # noqa: E402
from bench_lge_cnn import build  # noqa: E402
from machine import cpu_name  # noqa: E402

FINDINGS = ("lv_dysfunction", "rv_dysfunction", "lv_dilation", "rv_dilation", "lv_hypertrophy", "lge", "aortic_dilation")


NEGATION = re.compile(r"\b(no|not|none|absent|without|negative|normal|unremarkable|preserved)\b", re.IGNORECASE)


# A rule filer of report clauses, as a site could write for its own reports: the first finding whose pattern a
# clause matches (none: not filed). Technique sentences ("cine SSFP and late gadolinium enhancement imaging")
# name a sequence, not a finding, and are not filed.
KEYWORDS = {
    "lge": r"enhanc|\bLGE\b|scar|fibros|gadolinium|infarct",
    "aortic_dilation": r"\baort",
    "lv_hypertrophy": r"hypertroph|\bLVH\b|wall thickness|thicken",
    "lv_dysfunction": r"(?=.*\b(LV|left ventric\w*)\b)(?=.*\b(systolic|ejection|EF|function|contract\w*)\b)",
    "rv_dysfunction": r"(?=.*\b(RV|right ventric\w*)\b)(?=.*\b(systolic|ejection|EF|function|contract\w*)\b)",
    "lv_dilation": r"(?=.*\b(LV|left ventric\w*)\b)(?=.*\b(dilat\w*|enlarg\w*|size|volume)\b)",
    "rv_dilation": r"(?=.*\b(RV|right ventric\w*)\b)(?=.*\b(dilat\w*|enlarg\w*|size|volume)\b)",
}
TECHNIQUE = re.compile(r"\b(cine|SSFP|protocol|sequences?)\b", re.IGNORECASE)


def keyword_topic(clause: str) -> str | None:
    """The finding a clause speaks of by the rule filer's patterns (KEYWORDS), or None."""
    if TECHNIQUE.search(clause):
        return None
    for name, pattern in KEYWORDS.items():
        if re.search(pattern, clause, re.IGNORECASE):
            return name
    return None


def negated(clause: str) -> bool:
    """A rule labeler's reading of a clause: does it deny its finding? (negation and normality words)"""
    return NEGATION.search(clause) is not None


def clauses(report: str) -> list[str]:
    """A report's clauses (``cmrdx.train.findstream.report_clauses``: what the trainer's finding stream reads)."""
    from cmrdx.train.findstream import report_clauses

    return report_clauses(report)


def report_topics(reports: list[str], rows: np.ndarray, bank, encode_texts, labels,
                  by_keywords: bool = False) -> tuple[dict, np.ndarray, list[bool]]:
    """Each training study's clauses grouped by the finding they speak of, as the frozen text tower reads them or,
    with ``by_keywords``, as the rule filer's patterns do (``keyword_topic``).

    A clause's finding is the bank finding with the prompt (positive or negative) nearest to it (every clause gets
    one), or the rule filer's (a clause it files nowhere is left out). Returns {finding: [(row, clause indices)]}, the clause embeddings and each clause's negation reading. The
    labels are read only to print how well each finding's first clauses separate (a diagnostic)."""
    texts: list[str] = []
    index: dict[str, int] = {}
    per_row = {}
    for i in rows:
        ids = []
        for c in clauses(reports[i]):
            if c not in index:
                index[c] = len(texts)
                texts.append(c)
            ids.append(index[c])
        per_row[int(i)] = ids
    emb = encode_texts(texts)
    names = [f.id for f in bank.findings if f.id in FINDINGS]
    anchors = [encode_texts(list(f.prompts) + list(f.negative_prompts)) for f in bank.findings if f.id in FINDINGS]
    near = np.stack([(emb @ an.T).max(1) for an in anchors], 1)  # (clauses, findings)
    topic: list[str | None] = ([keyword_topic(t) for t in texts] if by_keywords
                               else [names[k] for k in near.argmax(1)])
    topics: dict[str, list[tuple[int, np.ndarray]]] = {}
    for i, ids in per_row.items():
        by: dict[str, list[int]] = {}
        for c in ids:
            if topic[c] is not None:
                by.setdefault(topic[c], []).append(c)
        for name, cs in by.items():
            topics.setdefault(name, []).append((i, np.array(cs)))
    for name in names:
        pool = topics.get(name, [])
        y = np.array([labels[i].get(name, "none") != "none" for i, _ in pool])
        first = np.array([emb[cs[0]] for _, cs in pool]) if pool else np.zeros((0, emb.shape[1]))
        if len(pool) > 1 and 0 < y.sum() < len(y):
            sim = first @ first.T
            same, cross = sim[y[:, None] == y[None, :]].mean(), sim[y[:, None] != y[None, :]].mean()
            sep = f"text cosine same label {same:.3f}, other label {cross:.3f}"
        else:
            sep = "one label only"
        neg = np.array([negated(texts[cs[0]]) for _, cs in pool], dtype=bool)
        agree = float(np.mean(neg != y)) if len(pool) else float("nan")
        print(f"topic {name}: {len(pool)} studies, {int(y.sum())} with the finding; {sep}; "
              f"negation words agree with the label in {agree:.1%}", flush=True)
    return topics, emb, [negated(t) for t in texts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", required=True, help="the last finished stage of a training run (holding trained.pt)")
    ap.add_argument("--label", required=True, help="the rows' name in the results table")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--first-frame", type=int, default=16, help="the stream reads the input's frames from this one on")
    ap.add_argument("--val", type=int, default=400, help="randomised studies kept out, from the cache's end")
    ap.add_argument("--val-classic", type=int, default=150, help="classic studies kept out, from the cache's end")
    ap.add_argument("--text-subset", type=float, default=0.0,
                    help="chance that a study's text in a step is 1..--max-sentences of its report's sentences "
                         "(the trainer's text_subset_p), embedded by the frozen text tower; else the whole report")
    ap.add_argument("--max-sentences", type=int, default=1)
    ap.add_argument("--topic-batches", action="store_true",
                    help="each step takes one finding (in turn) and contrasts every study of the batch with one of "
                         "its report's clauses about that finding; a clause's finding is the bank finding whose "
                         "prompts the frozen text tower puts nearest; targets spread over the batch's clauses by "
                         "their text similarity (--target-temperature); no label is read")
    ap.add_argument("--topics", default="",
                    help="with --topic-batches: only these findings' clauses (comma-separated ids; default: all)")
    ap.add_argument("--topic-share", type=float, default=1.0,
                    help="with --topic-batches: the share of steps that are topic steps; the others are the "
                         "plain steps (whole reports, or sentences with --text-subset)")
    ap.add_argument("--confine", default="",
                    help="a bank finding id: the stream's output is projected onto the span of that finding's prompt "
                         "embeddings, so it moves the embedding only along what the finding is scored on")
    ap.add_argument("--file-by", choices=("prompts", "keywords"), default="prompts",
                    help="how a clause is filed under a finding: the nearest bank prompt in the frozen text tower, "
                         "or a rule filer's keyword patterns")
    ap.add_argument("--hold-others", default="",
                    help="hold the zero-shot scores of the bank's findings other than this one exactly: the stream "
                         "only turns the unit embedding within the complement of their prompts' span")
    ap.add_argument("--negation-targets", action="store_true",
                    help="with --topic-batches: targets spread over the batch's clauses of the same polarity, read "
                         "from negation words (no, not, absent, without, normal, ...): a rule labeler of the report "
                         "text, not the studies' labels")
    ap.add_argument("--target-temperature", type=float, default=0.02,
                    help="with --topic-batches: the soft targets' temperature over the clauses' text cosines")
    ap.add_argument("--stream-cache", default="",
                    help="the stream reads its frames from this study cache: the stage's studies under another "
                         "recipe (e.g. cut around the heart), while the frozen model reads its own")
    ap.add_argument("--eval-families", default="",
                    help="also score an archive of randomised studies drawn only from these families (comma-"
                         "separated, e.g. the run's held-out anatomy:trabeculated,lge:psir,scar:midwall), rendered "
                         "under the stage's recipe into WORK/eval-caches (reused when there)")
    ap.add_argument("--eval-n", type=int, default=400, help="studies of the --eval-families archive")
    ap.add_argument("--eval-seed", type=int, default=71, help="the --eval-families archive's source seed")
    ap.add_argument("--bank", default="prompts/cmr-findings.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", default="bench/results/lge_stream.md")
    a = ap.parse_args()

    if not a.topic_batches and (a.topics or a.negation_targets or a.topic_share != 1.0 or a.file_by != "prompts"):
        raise SystemExit("--topics, --negation-targets, --topic-share and --file-by go with --topic-batches")
    if not 0 < a.topic_share <= 1:
        raise SystemExit(f"--topic-share {a.topic_share}: give a share in (0, 1]")
    if a.eval_families and a.eval_n < 2:
        raise SystemExit(f"--eval-n {a.eval_n}: give at least 2 studies for the --eval-families archive")
    if a.hold_others and a.confine:
        raise SystemExit("--hold-others and --confine: give one of them")
    unknown = {t for t in a.topics.split(",") if t} - set(FINDINGS)
    if unknown:
        raise SystemExit(f"--topics {a.topics}: {', '.join(sorted(unknown))} not among {', '.join(FINDINGS)}")
    import torch
    from sklearn.metrics import roc_auc_score

    from cmrdx.train.data import PhantomSource, sample_text
    from cmrdx.train.tokenizer import load_tokenizer
    from cmrdx.train.trainer import video_input
    from cmrdx.zeroshot.bank import load_bank
    from cmrdx.zeroshot.scoring import score_finding

    stage = Path(a.stage)
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    cfg, model, cache = load_stage(stage, "the last finished stage folder of a run (WORK/2-text)")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    recipe = cache.recipe
    scache = cache  # the stream's frames
    if a.stream_cache:
        from cmrdx.train.data import StudyCache

        if not (Path(a.stream_cache) / "meta.json").is_file():
            raise SystemExit(f"--stream-cache {a.stream_cache}: not a study cache (no meta.json)")
        scache = StudyCache(a.stream_cache)
        if scache.meta["source"] != cache.meta["source"] or scache.meta["ids"] != cache.meta["ids"]:
            raise SystemExit(f"--stream-cache {a.stream_cache}: not the studies of {stage}'s cache (another source)")
        if scache.recipe.frames != recipe.frames:
            raise SystemExit(f"--stream-cache {a.stream_cache}: {scache.recipe.frames} frames a study, the stage's "
                             f"cache {recipe.frames}")
    if not 0 <= a.first_frame < recipe.frames:
        raise SystemExit(f"--first-frame {a.first_frame}: the cache's input has frames 0-{recipe.frames - 1}")
    src: PhantomSource = cfg.source()
    n = int(cache.meta["shape"][0])
    labels = cache.meta["labels"]
    rand = np.array([not src.is_classic(i) for i in range(n)])
    ok = cache.done & (cache.n_real > 0) & np.array([r is not None for r in cache.meta["reports"]])
    val_r = np.flatnonzero(rand & ok)[-a.val:]
    val_c = np.flatnonzero(~rand & ok)[-a.val_classic:]
    train = np.setdiff1d(np.flatnonzero(ok), np.concatenate([val_r, val_c]))

    def model_input(rows: np.ndarray, c=cache) -> torch.Tensor:
        return video_input(torch.from_numpy(np.asarray(c.videos[rows])), torch.from_numpy(c.n_real[rows].astype(np.int64)), recipe)

    t0 = time.perf_counter()
    # e0: the frozen model's study embedding of every row (the transformer's part from the run's own file when one
    # matches, checked on a few rows against the full forward; the motion stream's part computed here)
    e0 = np.zeros((n, cfg.projection_dim), np.float32)
    cached = sorted(stage.glob("video_embeddings-*.npy"))
    vt = np.load(cached[0]) if cached else None
    with torch.no_grad():
        for k in range(0, n, 32):
            rows = np.arange(k, min(n, k + 32))
            x = model_input(rows)
            if vt is None:
                e0[rows] = model.encode_video(x).numpy()
            else:
                e0[rows] = vt[rows] + (model.motion(x).numpy() if model.motion is not None else 0.0)
        check = np.sort(np.random.default_rng(a.seed).choice(np.flatnonzero(ok), 4, replace=False))
        full = model.encode_video(model_input(check)).numpy()
    cos = (full * e0[check]).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(e0[check], axis=1)
    if cos.min() < 0.9999:
        raise SystemExit(f"{cached[0] if cached else stage}: the cached video embeddings are not this model's "
                         f"(cosine {cos.min():.4f}); remove the file to compute them here")
    tok, _ = load_tokenizer(stage / "vocab.txt", max_length=cfg.max_length)

    def encode_texts(texts: list[str]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for k in range(0, len(texts), 64):
                enc = tok.encode_batch(texts[k:k + 64])
                ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
                mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
                out.append(model.encode_text(ids, mask).numpy())
        e = np.concatenate(out)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    reports = [r or "" for r in cache.meta["reports"]]
    t_rep = torch.from_numpy(encode_texts(reports))
    bank = load_bank(a.bank)
    text_emb = dict(zip(bank.texts, encode_texts(list(bank.texts))))
    topics: dict[str, list[tuple[int, np.ndarray]]] = {}
    if a.topic_batches:
        topics, clause_emb, clause_neg = report_topics(reports, train, bank, encode_texts, labels,
                                                       by_keywords=a.file_by == "keywords")
        keep = [t for t in a.topics.split(",") if t]
        if set(keep) - set(topics):
            raise SystemExit(f"--topics {a.topics}: the reports' topics are {', '.join(sorted(topics))}")
        topics = {t: v for t, v in topics.items() if not keep or t in keep}
    held_out = None  # (cache, rows, frozen embeddings) of the --eval-families archive
    if a.eval_families:
        from cmrdx.synth.variety import parse_families
        from cmrdx.train.data import StudyCache, build_cache

        try:
            fams = parse_families(a.eval_families)
        except ValueError as exc:
            raise SystemExit(f"--eval-families: {exc}") from None
        esrc = PhantomSource(a.eval_n, a.eval_seed, variety=True, only_families=fams)
        name = f"phantom-{a.eval_n}-seed{a.eval_seed}-{'+'.join(fams).replace(':', '-')}"

        def eval_cache(r) -> StudyCache:
            tag = hashlib.sha256(json.dumps(r.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
            return build_cache(esrc, r, stage.parent / "eval-caches" / f"{name}-{tag}", progress=False,
                               workers=a.threads)

        hc = eval_cache(recipe)
        hsc = eval_cache(scache.recipe) if scache is not cache else hc
        hrows = np.flatnonzero(hc.done & (hc.n_real > 0) & hsc.done & (hsc.n_real > 0))
        he0 = np.zeros((len(hc.n_real), cfg.projection_dim), np.float32)
        with torch.no_grad():
            for k in range(0, len(hrows), 32):
                rows = hrows[k:k + 32]
                he0[rows] = model.encode_video(model_input(rows, hc)).numpy()
        held_out = (hc, hsc, hrows, he0)
        print(f"--eval-families: {len(hrows)} studies of {', '.join(fams)} ({name})", flush=True)
    setup = (time.perf_counter() - t0) / 60

    # the stream: the CNN's pooled features -> a zero-initialised linear layer into the embedding
    cnn = build(a.width)
    proj = torch.nn.Linear(32 * a.width, cfg.projection_dim)
    torch.nn.init.zeros_(proj.weight)
    torch.nn.init.zeros_(proj.bias)
    params = list(cnn.body.parameters()) + list(proj.parameters())
    steps = a.epochs * (len(train) // a.batch)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps, pct_start=0.1)
    temperature = float(cfg.temperature)
    rng = np.random.default_rng(a.seed)

    def frames(rows: np.ndarray, augment: bool, c=scache) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.asarray(c.videos[rows][:, a.first_frame:])).float() / 255.0
        real = (torch.arange(a.first_frame, a.first_frame + x.shape[1]).view(1, -1)
                < torch.from_numpy(c.n_real[rows].astype(np.int64)).view(-1, 1))
        if augment:  # a shift of up to 6 pixels per study (the adaptations' augment_shift); no flip: reports
            pad = torch.nn.functional.pad(x, (6, 6, 6, 6))  # name walls, and a flip would move them
            s = x.shape[-1]
            d = rng.integers(0, 13, size=(2, len(rows)))
            x = torch.stack([pad[i, :, d[0, i]:d[0, i] + s, d[1, i]:d[1, i] + s] for i in range(len(rows))])
        return x, real

    span: torch.Tensor | None = None  # (D, k) orthonormal basis of the confining finding's prompt embeddings
    if a.confine:
        found = [f for f in bank.findings if f.id == a.confine]
        if not found:
            raise SystemExit(f"--confine {a.confine}: not a finding of {a.bank}")
        vecs = np.stack([text_emb[t] for t in [*found[0].prompts, *found[0].negative_prompts]]).T.astype(np.float32)
        span = torch.from_numpy(np.linalg.qr(vecs)[0])

    held: torch.Tensor | None = None  # (D, k) orthonormal basis of the other findings' prompt embeddings
    if a.hold_others:
        if a.hold_others not in {f.id for f in bank.findings}:
            raise SystemExit(f"--hold-others {a.hold_others}: not a finding of {a.bank}")
        texts = [t for f in bank.findings if f.id != a.hold_others for t in f.all_texts]
        q = np.linalg.qr(np.stack([text_emb[t] for t in texts]).T.astype(np.float32))[0]
        held = torch.from_numpy(q)
        free = [f for f in bank.findings if f.id == a.hold_others][0]
        m = np.mean([text_emb[t] for t in free.prompts], axis=0)
        print(f"--hold-others: {len(texts)} prompts of the other findings span {q.shape[1]} of {q.shape[0]} "
              f"dimensions; {np.linalg.norm(m - q @ (q.T @ m)) / np.linalg.norm(m):.3f} of the {a.hold_others} "
              "prompts' mean lies outside", flush=True)

    def embed(rows: np.ndarray, augment: bool = False, c=scache, base: np.ndarray = e0) -> torch.Tensor:
        out = proj(cnn.features(*frames(rows, augment, c)))
        if span is not None:
            out = (out @ span) @ span.T
        if held is None:
            return torch.from_numpy(base[rows]) + out
        # the unit embedding's part inside the held span stays; its part outside keeps its length and turns with
        # the stream: every cosine with a held prompt, so every held finding's score, is the frozen model's
        u0 = torch.nn.functional.normalize(torch.from_numpy(base[rows]), dim=1)
        inside = (u0 @ held) @ held.T
        rest = u0 - inside
        turned = torch.nn.functional.normalize(rest + out - (out @ held) @ held.T, dim=1)
        return inside + rest.norm(dim=1, keepdim=True) * turned

    def topic_step(step: int) -> torch.Tensor:
        """One finding's batch: each study against one of its own clauses about that finding; soft targets."""
        names = sorted(topics)
        pool = topics[names[step % len(names)]]
        pick = rng.choice(len(pool), size=min(a.batch, len(pool)), replace=False)
        rows = np.array([pool[j][0] for j in pick])
        cids = np.array([rng.choice(pool[j][1]) for j in pick])
        order = np.argsort(rows)
        rows, cids = rows[order], cids[order]
        t = torch.from_numpy(clause_emb[cids])
        v = torch.nn.functional.normalize(embed(rows, True), dim=1)
        logits = v @ t.T / temperature
        if a.negation_targets:
            neg = torch.tensor([clause_neg[c] for c in cids])
            same = (neg[:, None] == neg[None, :]).float()
            target = same / same.sum(1, keepdim=True)
        else:
            target = torch.softmax(t @ t.T / a.target_temperature, dim=1)  # symmetric similarities: one target
        return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                      + torch.sum(-target * logits.T.log_softmax(1), 1).mean())

    def plain_step(rows: np.ndarray) -> torch.Tensor:
        """Each study of the batch against its own report (or sampled sentences of it)."""
        v = torch.nn.functional.normalize(embed(rows, True), dim=1)
        if a.text_subset > 0:
            texts = [sample_text(reports[i], rng, a.text_subset, a.max_sentences) for i in rows]
            t = torch.from_numpy(encode_texts(texts))
        else:
            texts = [reports[i] for i in rows]
            t = t_rep[rows]
        logits = v @ t.T / temperature
        # identical texts are not negatives of one another: the target spreads over them
        same = torch.tensor([[ti == tj for tj in texts] for ti in texts], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)
        return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                      + torch.sum(-target * logits.T.log_softmax(1), 1).mean())

    losses: list[float] = []
    step = 0
    for epoch in range(a.epochs):
        order = rng.permutation(train)
        cnn.train()
        for k in range(0, len(order) - a.batch + 1, a.batch):
            rows = np.sort(order[k:k + a.batch])
            if a.topic_batches and rng.random() < a.topic_share:
                loss = topic_step(step)
                step += 1
            else:
                loss = plain_step(rows)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        print(f"epoch {epoch + 1}/{a.epochs}: loss {np.mean(losses[-20:]):.3f} "
              f"{(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    minutes = (time.perf_counter() - t0) / 60 - setup
    cnn.eval()

    def zero_shot(rows: np.ndarray, with_stream: bool, c=cache, sc=scache,
                  base: np.ndarray = e0) -> dict[str, float | None]:
        with torch.no_grad():
            e = (np.concatenate([embed(rows[k:k + 64], False, sc, base).numpy() for k in range(0, len(rows), 64)])
                 if with_stream else base[rows])
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        out: dict[str, float | None] = {}
        for f in bank.findings:
            if f.id not in FINDINGS:
                continue
            y = np.array([c.meta["labels"][i].get(f.id, "none") != "none" for i in rows])
            s = np.array([score_finding(x, f, text_emb, bank, "", None).score for x in e])
            out[f.id] = float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None
        return out

    table = {(arch, when): zero_shot(np.sort(rows), when == "with the stream")
             for arch, rows in (("randomised", val_r), ("classic", val_c)) for when in ("model", "with the stream")}
    if held_out is not None:
        hc, hsc, hrows, he0 = held_out
        for when in ("model", "with the stream"):
            table[(f"held-out families {a.eval_families}", when)] = zero_shot(hrows, when == "with the stream", hc,
                                                                               hsc, he0)
    res = Path(a.results)
    if not res.is_file():
        res.write_text(
            "# Randomised LGE from the reports alone: a convolutional stream beside a frozen model\n\n"
            "**Phantoms, not patients.** A finished model is frozen whole (video and text towers); bench_lge_cnn.py's "
            "small per-frame CNN (on the input's frames from `--first-frame` on, where the LGE segments fall) is "
            "added as a stream whose output joins the study embedding through a zero-initialised linear layer, and "
            "trained with the contrastive loss (the run's temperature; identical reports not counted as negatives; "
            "AdamW, one-cycle schedule, shifts of up to 6 pixels) against the frozen text tower's embedding of each "
            "study's own report (or, with `--text-subset`, of some of its sentences, as the trainer samples them). "
            "No label is read in training. Zero-shot AUC of the shipped prompt bank on studies "
            "of the cache kept out (the last of each kind), the model as it is and with the stream.\n\n"
            f"Machine: {cpu_name()}, torch on the CPU, {a.threads} threads.\n\n"
            "Command:\n\n```\nPYTHONPATH=. .venv/bin/python bench/bench_lge_stream.py --stage WORK/2-text "
            f"--epochs {a.epochs} --label NAME\n```\n\n"
            "| model | kept-out studies | embedding | " + " | ".join(FINDINGS) + " | mean | training |\n"
            "|---|---|---|" + "---:|" * (len(FINDINGS) + 1) + "---|\n")
    rows_md = []
    for (arch, when), aucs in table.items():
        vals = [aucs.get(f) for f in FINDINGS]
        known = [v for v in vals if v is not None]
        nval = len(val_r) if arch == "randomised" else len(val_c) if arch == "classic" else len(held_out[2])
        text = plain = (f"report sentences (1-{a.max_sentences}) with chance {a.text_subset:g}, else the whole "
                        "report" if a.text_subset > 0 else "whole reports")
        if a.topic_batches:
            how = ("targets over same-polarity clauses (negation words)" if a.negation_targets
                   else f"soft targets (temperature {a.target_temperature:g})")
            text = (f"{a.topics} clauses only; " if a.topics else "") + f"one finding's clauses a step, {how}"
            if a.file_by == "keywords":
                text = f"{text}; clauses filed by keyword patterns"
            if a.topic_share < 1:
                text = f"{text}, in {a.topic_share:.0%} of the steps; the others: {plain}"
        if a.confine:
            text = f"{text}; the stream confined to the span of the {a.confine} prompts"
        if a.stream_cache:
            text = (f"{text}; the stream reads the studies under another recipe (heart cut "
                    f"{scache.recipe.heart_crop_mm} mm)")
        if a.hold_others:
            text = f"{text}; the other findings' scores held (the stream turns only outside their prompts' span)"
        train_note = (f"{text}; {a.epochs} epochs x {len(train)} studies, batch {a.batch}, {minutes:.1f} min; loss "
                      f"{np.mean(losses[:20]):.2f} -> {np.mean(losses[-20:]):.2f}") if when == "with the stream" else ""
        rows_md.append(f"| {a.label} | {arch} ({nval}) | {when} | "
                       + " | ".join("-" if v is None else f"{v:.3f}" for v in vals)
                       + f" | {np.mean(known):.3f} | {train_note} |\n")
    with res.open("a") as fh:
        fh.writelines(rows_md)
    print("".join(rows_md), end="")


if __name__ == "__main__":
    main()
