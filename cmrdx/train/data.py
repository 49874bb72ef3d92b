"""Training data: (study, report) pairs -> a cache of recipe-ready uint8 videos + report texts.

Two sources, one cache format:

* ``PhantomSource``: phantom studies rendered straight to arrays (no DICOM) by ``cmrdx.synth.arrays``: each
  view is a lazy ``StudyView`` that renders only the planes and phases the recipe asks for, so a recipe that
  uses the middle short-axis slice renders one slice, not the stack. Classic studies, or the randomised
  generator's (``variety``, with family filters: ``cmrdx.synth.variety``).
* ``ArchiveSource``: a folder of study folders (``DICOM/`` + ``report.txt``), read through the user's path
  (``assemble_study``); or the same folders with their reports in one RIS export (CSV / JSONL, matched by
  StudyInstanceUID or AccessionNumber: ``cmrdx.train.reports``). A folder without a report or whose DICOM
  cannot be assembled is skipped and counted, as is a report with no images for it.

The cache (``StudyCache``) holds ``videos.u8`` (N, F, S, S) uint8 memmap of the grey frames *before*
normalisation, ``meta.json`` (ids, reports, labels, counts) and ``done.npy`` (which rows are filled), so a
killed build resumes where it stopped and epochs after the first never re-render or re-decode. It is exact
only for recipes whose final resize is the identity (``store_size == resize`` and ``crop == image_size``):
then the recipe's output is ``(k / 255 - mean) / std`` for integer ``k``, and ``check_exact_recipe`` refuses
other recipes rather than silently training on an approximation.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cmrdx.fileio import atomic_write
from cmrdx.recipe import RecipeParams, apply_recipe, recipe_view_keys, u8_exact

if TYPE_CHECKING:
    from cmrdx.synth.params import StudyParams
    from cmrdx.train.reports import ReportMatch

log = logging.getLogger(__name__)

# Training defaults: the vendor and report style that the held-out benchmark uses are left out here.
TRAIN_VENDORS = ("siemens", "ge")
HELDOUT_VENDOR = "philips"


def check_exact_recipe(p: RecipeParams) -> None:
    """Raise ValueError unless the recipe output is exactly representable as uint8 grey frames."""
    if not u8_exact(p):
        raise ValueError(
            "the training cache stores uint8 frames and needs store_size == resize and crop == image_size "
            f"(got store_size={p.store_size}, resize={p.resize}, crop={p.crop}, image_size={p.image_size})"
        )


def views_for_recipe(p: RecipeParams) -> tuple[str, ...]:
    """Every view key any segment of the recipe may use (what a phantom source renders)."""
    return recipe_view_keys(p)


def recipe_to_u8(study, p: RecipeParams) -> tuple[np.ndarray, int, list[str]]:
    """Study -> ((F, S, S) uint8 grey frames, number of real frames, substitutions).

    Inverts the recipe's normalisation of channel 0; padded frames (after ``n_real``) are stored as 0 and
    restored as zeros by ``u8_to_input``."""
    rr = apply_recipe(study, p)
    x = rr.array[:, 0] * p.std[0] + p.mean[0]  # back to [0, 1]
    n_real = len(rr.sampled)
    u8 = np.zeros(x.shape, np.uint8)
    u8[:n_real] = np.clip(np.rint(x[:n_real] * 255.0), 0, 255).astype(np.uint8)
    return u8, n_real, rr.substitutions


def u8_to_input(u8: np.ndarray, n_real: np.ndarray | int, p: RecipeParams) -> np.ndarray:
    """(B, F, S, S) uint8 + real-frame counts -> (B, F, 3, S, S) float32, equal to ``apply_recipe``'s array.

    A recipe with streams: F = ``p.input_frames`` and ``n_real`` holds each part's count, (B, parts) or (parts,)
    for every study (``cmrdx.synth.arrays.phantom_u8`` gives them): each part is padded after its own real frames."""
    u8 = np.asarray(u8)
    if u8.ndim == 3:
        u8 = u8[None]
    parts = [p.main.frames, *(st.frames for st in p.streams)]
    if sum(parts) != u8.shape[1]:
        raise ValueError(f"{u8.shape[1]} frames for a recipe of {' + '.join(map(str, parts))}")
    n = np.broadcast_to(np.asarray(n_real), (u8.shape[0], len(parts)) if p.streams else (u8.shape[0],))
    n = n.reshape(u8.shape[0], len(parts))
    g = u8.astype(np.float32) / 255.0
    out = np.empty(u8.shape[:2] + (3,) + u8.shape[2:], np.float32)
    for c in range(3):
        out[:, :, c] = (g - p.mean[c]) / p.std[c]
    starts = np.cumsum([0, *parts])
    for i in range(u8.shape[0]):
        for j, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
            out[i, a + int(n[i, j]):b] = 0.0  # the recipe pads after normalisation
    return out


# ---------------------------------------------------------------- sources


@dataclass
class Item:
    """One training pair before caching. ``make_study()`` builds the Study (lazily rendered or read)."""

    id: str
    report: str | None
    make_study: Callable[[], Any] | None
    labels: dict[str, str] = field(default_factory=dict)  # finding -> severity, when known
    # optional shortcut (recipe -> (uint8 frames, n_real)) equal to recipe_to_u8(make_study(), recipe)
    fast_u8: Callable[[RecipeParams], tuple[np.ndarray, int]] | None = None


class PhantomSource:
    """``n`` phantom studies rendered to arrays; study ``i`` has seed ``seed * 100_000 + i`` (the archive
    writer's scheme, so a training seed never collides with a benchmark archive of another seed).

    Args:
        n: number of studies.
        seed: source seed (>= 0).
        prevalence: chance that each finding is present (severity uniform over mild/moderate/severe).
        vendors, report_styles: drawn per study; defaults leave out the held-out vendor and phrasing styles (the
            randomised generator's training styles, ``VARIETY_TRAIN_STYLES``, when ``variety``).
        matrix: force a square acquisition matrix (faster rendering), None draws 160-256 as the archive does.
        views: view keys to render (default: those the recipe can use).
        variety: studies of the randomised generator (``cmrdx.synth.variety``: shapes, scar patterns, LGE and cine
            contrasts, geometry, ...); False: the classic generator, as before.
        only_families, exclude_families: family filters of the randomised generator (``"scar:midwall"``, ...; they
            imply ``variety``): a model trained with ``exclude_families=[F]`` never sees F (leave-one-family-out).
        classic_fraction: with ``variety``, the share of studies drawn from the classic generator instead (each
            study's choice drawn from a stream of its own, so the other studies are unchanged): a model adapted
            to the randomised generator keeps seeing the studies it already reads.
    """

    def __init__(self, n: int, seed: int, *, prevalence: float = 0.3, vendors: Sequence[str] = TRAIN_VENDORS,
                 report_styles: Sequence[str] | None = None, matrix: int | None = None,
                 views: Sequence[str] | None = None, variety: bool = False,
                 only_families: Sequence[str] | str | None = None,
                 exclude_families: Sequence[str] | str | None = None, classic_fraction: float = 0.0):
        from cmrdx.synth.report import TRAIN_STYLES, VARIETY_TRAIN_STYLES
        from cmrdx.synth.variety import FamilyFilter, parse_families

        if seed < 0 or n < 0:
            raise ValueError("n and seed must be non-negative")
        if n > 100_000:
            raise ValueError("at most 100000 studies per source seed")
        self.n, self.seed, self.prevalence = n, seed, prevalence
        # sorted: the filters' order changes no study, so it must not change the cache's identity either
        self.only_families = tuple(sorted(parse_families(only_families)))
        self.exclude_families = tuple(sorted(parse_families(exclude_families)))
        self.variety = bool(variety or self.only_families or self.exclude_families)
        if self.variety:
            FamilyFilter.make(self.only_families, self.exclude_families)  # an axis left empty: an error now
        if not 0.0 <= classic_fraction < 1.0:
            raise ValueError(f"classic_fraction must be in [0, 1), not {classic_fraction}")
        if classic_fraction and not self.variety:
            raise ValueError("classic_fraction mixes classic studies into randomised ones: set variety too")
        self.classic_fraction = float(classic_fraction)
        self._classic: np.ndarray | None = None
        self.vendors = tuple(vendors)
        self.report_styles = tuple(report_styles or (VARIETY_TRAIN_STYLES if self.variety else TRAIN_STYLES))
        self.matrix = matrix
        self.views = tuple(views) if views else None
        self._drawn: list[tuple[str, str]] | None = None

    def describe(self) -> dict[str, Any]:
        """What the studies are (a cache is reused only for an equal description). A classic source describes
        itself as it always has, so caches written before the randomised generator stay valid."""
        import cmrdx
        from cmrdx.synth.report import WORDING

        d: dict[str, Any] = {
            "kind": "phantom", "n": self.n, "seed": self.seed,
            "study_seeds": [self.seed * 100_000, self.seed * 100_000 + self.n - 1], "prevalence": self.prevalence,
            "vendors": list(self.vendors), "report_styles": list(self.report_styles), "matrix": self.matrix,
            "generator": f"cmrdx.synth {cmrdx.__version__}", "wording": WORDING}
        if self.variety:
            from cmrdx.synth.variety import VARIETY_VERSION

            d.update({"variety": True, "variety_version": VARIETY_VERSION, "only_families": list(self.only_families),
                      "exclude_families": list(self.exclude_families)})
            if self.classic_fraction:
                d["classic_fraction"] = self.classic_fraction
        return d

    def is_classic(self, i: int) -> bool:
        """Whether study ``i`` comes from the classic generator (always, without ``variety``)."""
        if not self.variety:
            return True
        if not self.classic_fraction:
            return False
        if self._classic is None:
            self._classic = np.random.default_rng([self.seed, 0xC1A5]).random(self.n) < self.classic_fraction
        return bool(self._classic[i])

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Item]:
        for i in range(self.n):
            yield self.item_at(i)

    def _draws(self) -> list[tuple[str, str]]:
        """(vendor, report style) of every study, drawn in order from one stream (so item ``i`` does not
        depend on how many studies are asked for, nor on which process renders it)."""
        if self._drawn is None:
            rng = np.random.default_rng([self.seed, 0x7A1])
            self._drawn = [(str(rng.choice(self.vendors)), str(rng.choice(self.report_styles))) for _ in range(self.n)]
        return self._drawn

    def item_at(self, i: int) -> Item:
        """Item ``i`` on its own (index-addressable sources can be cached by several processes)."""
        vendor, style = self._draws()[i]
        return self.item(i, vendor, style)

    def params_at(self, i: int, vendor: str | None = None, style: str | None = None) -> StudyParams:
        """The drawn parameters of study ``i`` (findings, appearance families), without rendering it."""
        from cmrdx.synth.params import sample_params

        if vendor is None or style is None:
            vendor, style = self._draws()[i]
        variety = not self.is_classic(i)
        return sample_params(self.seed * 100_000 + i, vendor=vendor, prevalence=self.prevalence, report_style=style,
                             matrix=self.matrix, variety=variety,
                             only_families=(self.only_families or None) if variety else None,
                             exclude_families=(self.exclude_families or None) if variety else None)

    def item(self, i: int, vendor: str, style: str) -> Item:
        from cmrdx.synth.arrays import phantom_report, phantom_study, phantom_u8

        p = self.params_at(i, vendor, style)
        return Item(id=f"phantom-{p.seed}", report=phantom_report(p), make_study=lambda: phantom_study(p, self.views)[0],
                    labels=dict(p.findings), fast_u8=lambda r: phantom_u8(p, r))


class ArchiveSource:
    """Study folders under ``root`` (each with ``DICOM/`` or DICOM files), with their reports either in a
    ``report.txt`` beside the images or in one file exported by the RIS (``reports``: CSV or JSONL of
    StudyInstanceUID or AccessionNumber and report text; see ``cmrdx.train.reports``). With a reports file, each
    study takes the impression of the report whose UID, else accession, its DICOM headers carry; a study that no
    report matches falls back to its ``report.txt``.

    ``skipped`` counts, by reason, the folders (and report rows) that cannot make a training pair;
    ``report_match()`` says which reports went where and lists what stayed unmatched."""

    def __init__(self, root: str | Path, reports: str | Path | None = None):
        from cmrdx.train.reports import read_reports

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} is not a folder")
        self.folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        self.skipped: dict[str, int] = {}
        # read now: a file that is not a reports file is an error before any study is read
        self.reports = read_reports(reports) if reports is not None else None
        self._match: ReportMatch | None = None

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "archive", "root": str(self.root), "folders": len(self.folders)}
        if self.reports is not None:
            d["reports"] = self.reports.describe()
        return d

    def __len__(self) -> int:
        return len(self.folders)

    @staticmethod
    def _has_images(d: Path) -> bool:
        return any(f.is_file() and f.name != "report.txt" and f.suffix not in (".json", ".txt", ".csv")
                   for f in d.rglob("*"))

    def report_match(self) -> ReportMatch | None:
        """The reports file matched to the folders (one DICOM header read per folder, once); None without one."""
        from cmrdx.train.reports import match_reports, study_key

        if self.reports is None:
            return None
        if self._match is None:
            keys, txt = [], {}
            for d in self.folders:
                if not self._has_images(d):
                    continue
                keys.append(study_key(d))
                if (d / "report.txt").is_file():
                    txt[d.name] = (d / "report.txt").read_text(encoding="utf-8").strip()
            self._match = match_reports(self.reports, keys, report_txt=txt)
        return self._match

    def __iter__(self) -> Iterator[Item]:
        from cmrdx.study.assemble import assemble_study

        match = self.report_match()
        self.skipped = {}  # counted afresh on every pass over the folders
        if match is not None and match.unmatched_reports:
            self.skipped["report matching no study"] = len(match.unmatched_reports)
        for d in self.folders:
            rep = d / "report.txt"
            has_images = self._has_images(d)
            if match is None:
                report = rep.read_text(encoding="utf-8").strip() if rep.is_file() else None
            else:
                got = match.by_folder.get(d.name)
                report = got[0] if got else None
            reason = None if has_images and report else (
                "study without a report" if has_images else "report without a study" if rep.is_file() else "empty folder")
            if reason:
                self.skipped[reason] = self.skipped.get(reason, 0) + 1
                continue
            labels = _labels_from_truth(d)
            yield Item(id=d.name, report=report, make_study=partial(assemble_study, str(d)), labels=labels)


def _labels_from_truth(d: Path) -> dict[str, str]:
    t = d / "truth.json"
    if not t.is_file():
        return {}
    try:
        return dict(json.loads(t.read_text()).get("findings", {}))
    except (ValueError, AttributeError):
        return {}


# ---------------------------------------------------------------- cache


def cache_key(source_desc: dict[str, Any], recipe: RecipeParams) -> str:
    """The name of a cache folder that runs of the same studies under the same input recipe share (the stages
    of a recipe): the kind of source, its size and seed, and a digest of its whole description and the recipe."""
    import hashlib

    doc = json.dumps({"source": source_desc, "recipe": recipe.to_dict()}, sort_keys=True, default=str)
    digest = hashlib.sha256(doc.encode("utf-8")).hexdigest()[:12]
    kind = str(source_desc.get("kind", "data"))
    size = source_desc.get("n", source_desc.get("folders", ""))
    seed = f"-seed{source_desc['seed']}" if "seed" in source_desc else ""
    return f"{kind}-{size}{seed}-{digest}"


class StudyCache:
    """uint8 video cache of one source under one recipe.

    Files in ``folder``: ``videos.u8`` (N, F, S, S) uint8 memmap, ``n_real.npy`` (N,) int16,
    ``done.npy`` (N,) bool, ``meta.json`` (recipe, source, ids, reports, labels, skipped counts).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.recipe = RecipeParams.from_dict(self.meta["recipe"])
        n, f, s = self.meta["shape"]
        self.videos = np.memmap(self.folder / "videos.u8", dtype=np.uint8, mode="r", shape=(n, f, s, s))
        self.n_real = np.load(self.folder / "n_real.npy")
        self.done = np.load(self.folder / "done.npy")

    @property
    def skipped(self) -> dict[str, int]:
        """reason -> count of source items that made no training pair (rows and folders passed over)."""
        out = dict(self.meta.get("skipped", {}))
        for k, v in self.meta.get("source_skipped", {}).items():
            out[k] = out.get(k, 0) + v
        return out

    @property
    def valid(self) -> np.ndarray:
        """Indices of rows holding a study and a report."""
        return np.flatnonzero(self.done & np.array([r is not None for r in self.meta["reports"]]))

    def inputs(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        """(B, F, 3, S, S) float32 model input for rows ``idx``."""
        rows = np.asarray(idx)
        return u8_to_input(self.videos[rows], self.n_real[rows], self.recipe)

    def reports(self, idx: Sequence[int] | np.ndarray) -> list[str]:
        return [self.meta["reports"][int(i)] for i in idx]


def _make_row(item: Item, recipe: RecipeParams) -> tuple[np.ndarray | None, int, list[str], str | None]:
    """One item -> (uint8 frames, real frames, substitutions, reason it was skipped or None)."""
    if item.make_study is None:
        return None, 0, [], "report without a study"
    subs: list[str]
    try:
        if item.fast_u8 is not None and recipe.window_scope == "frame":
            (u8, k), subs = item.fast_u8(recipe), []
        else:
            u8, k, subs = recipe_to_u8(item.make_study(), recipe)
    except Exception as exc:  # noqa: BLE001 - an unreadable study is skipped and counted
        log.warning("%s: %s", item.id, exc)
        return None, 0, [], f"study unreadable ({type(exc).__name__})"
    if not item.report:
        return None, 0, [], "study without a report"
    return u8, k, subs, None


# The source and recipe of a parallel build, inherited by forked worker processes (never pickled).
_WORKER_JOB: tuple[Any, RecipeParams] | None = None


def _worker_init() -> None:
    # one BLAS thread per worker: numpy's small matrix products in the renderer otherwise oversubscribe the
    # cores (measured: two workers on two cores ran 3x slower than one process)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def _worker_row(i: int):
    if _WORKER_JOB is None:
        raise RuntimeError("_worker_row runs in the worker processes of _rows_parallel only")
    source, recipe = _WORKER_JOB
    item = source.item_at(i)
    return (i, item.id, item.labels, item.report, *_make_row(item, recipe))


def _rows_parallel(source, recipe: RecipeParams, todo: list[int], workers: int) -> Iterator[tuple]:
    """Rows of ``todo`` in order, rendered by ``workers`` forked processes (closed when the consumer stops)."""
    import multiprocessing as mp

    global _WORKER_JOB
    _WORKER_JOB = (source, recipe)
    pool = mp.get_context("fork").Pool(workers, initializer=_worker_init)
    try:
        yield from pool.imap(_worker_row, todo, chunksize=2)
    finally:
        pool.terminate()
        pool.join()
        _WORKER_JOB = None


def _rows_serial(source, recipe: RecipeParams, n: int, done: np.ndarray) -> Iterator[tuple]:
    for i, item in enumerate(source):
        if i >= n:
            break
        if not done[i]:
            yield (i, item.id, item.labels, item.report, *_make_row(item, recipe))


def _only_wording_differs(old: dict[str, Any], new: dict[str, Any]) -> bool:
    def rest(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k != "wording"}

    return old != new and rest(old) == rest(new)


def _reword(meta: dict[str, Any], source, mpath: Path) -> None:
    """Rewrite a cache's reports in ``source``'s wording (a report costs milliseconds; its video, rendered under
    the old wording, does not depend on it), then its description, atomically."""
    desc = source.describe()
    log.info("%s: reports of wording %s re-worded to %s (videos kept)", mpath.parent, meta["source"].get("wording", 1),
             desc.get("wording"))
    meta["reports"] = [source.item_at(i).report if r is not None else None for i, r in enumerate(meta["reports"])]
    meta["source"] = desc
    atomic_write(mpath, json.dumps(meta))


def build_cache(source, recipe: RecipeParams, folder: str | Path, *, progress: bool = True,
                max_items: int | None = None, workers: int | None = None,
                max_seconds: float | None = None) -> StudyCache:
    """Fill (or resume filling) the cache of ``source`` under ``recipe``. Returns the opened cache.

    ``workers`` > 1 renders index-addressable sources (``item_at``, e.g. phantoms) in that many forked
    processes; rows are still filled in index order, so a build stopped early holds a prefix of the source.
    ``max_seconds`` stops filling after that long (the rest stays to do: a rerun resumes; training uses the
    rows done). A source whose description or recipe differs from an existing cache's is an error (never
    mixed rows).
    """
    if recipe.streams:
        raise ValueError("a study cache holds one recipe's frames: build one for the main recipe (recipe.main) and "
                         "one for each of its streams")
    check_exact_recipe(recipe)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(source) if max_items is None else min(len(source), max_items)
    shape = [n, recipe.frames, recipe.image_size]
    desc = source.describe()
    mpath = folder / "meta.json"
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        if _only_wording_differs(old["source"], desc) and hasattr(source, "item_at"):
            _reword(old, source, mpath)
        if old["source"] != desc or old["recipe"] != recipe.to_dict() or old["shape"] != shape:
            raise ValueError(f"{folder} holds a cache of another source or recipe; use another folder")
        meta = old
        done = np.load(folder / "done.npy")
        n_real = np.load(folder / "n_real.npy")
    else:
        meta = {"source": desc, "recipe": recipe.to_dict(), "shape": shape, "ids": [None] * n,
                "reports": [None] * n, "labels": [None] * n, "skipped": {}, "substitutions": {}, "seconds": 0.0}
        done = np.zeros(n, bool)
        n_real = np.zeros(n, np.int16)
    mode: Literal["r+", "w+"] = "r+" if (folder / "videos.u8").is_file() else "w+"
    vids = np.memmap(folder / "videos.u8", dtype=np.uint8, mode=mode, shape=(n, recipe.frames, recipe.image_size, recipe.image_size))

    def save() -> None:
        vids.flush()
        atomic_write(folder / "done.npy", lambda f: np.save(f, done))
        atomic_write(folder / "n_real.npy", lambda f: np.save(f, n_real))
        atomic_write(mpath, json.dumps(meta))

    todo = [i for i in range(n) if not done[i]]
    prog = None
    if progress and todo:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        prog = Progress(TextColumn("caching studies"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        prog.start()
        task = prog.add_task("cache", total=n, completed=int(done.sum()))
    import multiprocessing as mp

    # workers inherit the source by fork (its items hold closures that do not pickle); without fork: one process
    n_workers = workers or 1
    parallel = (n_workers > 1 and hasattr(source, "item_at") and len(todo) > 1
                and "fork" in mp.get_all_start_methods())
    rows = _rows_parallel(source, recipe, todo, n_workers) if parallel else _rows_serial(source, recipe, n, done)
    t0 = last_save = start = time.perf_counter()
    try:
        for i, item_id, labels, report, u8, k, subs, reason in rows:
            meta["ids"][i] = item_id
            meta["labels"][i] = labels
            if reason is None:
                vids[i] = u8
                n_real[i] = k
                meta["reports"][i] = report
                if subs:
                    meta["substitutions"][item_id] = subs
            else:
                meta["skipped"][reason] = meta["skipped"].get(reason, 0) + 1
            done[i] = True
            if prog is not None:
                prog.advance(task)
            now = time.perf_counter()
            if now - last_save > 30:
                meta["seconds"] += now - t0
                t0 = last_save = now
                save()
            if max_seconds is not None and now - start > max_seconds:
                log.info("cache: time budget of %.0f s spent with %d of %d studies done", max_seconds, done.sum(), n)
                break
        else:
            # folders the source itself passed over (no row of their own): set, not added, so that a resumed
            # build that walks the folders again does not count them twice
            meta["source_skipped"] = dict(getattr(source, "skipped", {}))
    finally:
        if hasattr(rows, "close"):
            rows.close()  # stops the worker processes of a parallel build
        meta["seconds"] += time.perf_counter() - t0
        save()
        if prog is not None:
            prog.stop()
    return StudyCache(folder)


# ---------------------------------------------------------------- text


_SENT = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Report text -> sentences (on . ! ? followed by space, and on line breaks); headings kept as text."""
    return [s.strip() for s in _SENT.split(text) if s and s.strip()]


def sample_text(report: str, rng: np.random.Generator, p_subset: float = 0.5, max_sentences: int = 3,
                augment: float = 0.0) -> str:
    """The whole report, or with probability ``p_subset`` 1..max_sentences of its sentences in order; each sentence
    reworded (``textaug.paraphrase``) with probability ``augment``.

    Short sentence subsets teach the text tower what one finding's sentence means on its own, which is what
    a zero-shot prompt is; rewording teaches it that a cardiologist's wording differs from the templates'."""
    if rng.random() >= p_subset:
        sents = None
    else:
        sents = [s for s in split_sentences(report) if len(s.split()) > 1]
        if sents:
            k = int(rng.integers(1, min(max_sentences, len(sents)) + 1))
            pick = np.sort(rng.choice(len(sents), size=k, replace=False))
            sents = [sents[j] for j in pick]
    if augment <= 0:
        return " ".join(sents) if sents else report
    from cmrdx.train.textaug import paraphrase

    return " ".join(paraphrase(s, rng) if rng.random() < augment else s for s in (sents or split_sentences(report)))
