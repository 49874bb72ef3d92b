"""Many phantom studies at once, plus ``labels.csv`` (one row per study, one 0/1 and severity column per finding)."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmrdx.fileio import atomic_write
from cmrdx.synth.params import FINDINGS, VENDORS, sample_params
from cmrdx.synth.report import TRAIN_STYLES, VARIETY_TRAIN_STYLES
from cmrdx.synth.variety import FamilyFilter, parse_families
from cmrdx.synth.writer import write_study

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchiveJob:
    folder: str
    seed: int
    vendor: str
    report_style: str
    prevalence: Mapping[str, float] | float
    enhanced: bool
    compress: str | None
    n_phases: int | None
    matrix: int | None
    variety: bool = False
    only_families: tuple[str, ...] = ()
    exclude_families: tuple[str, ...] = ()
    distractors: bool = True


def study_seed(archive_seed: int, i: int) -> int:
    """Seed of the i-th study of an archive (disjoint from other archive seeds for i < 100000)."""
    return int(archive_seed) * 100_000 + int(i)


def _run(job: ArchiveJob) -> dict[str, object]:
    p = sample_params(job.seed, vendor=job.vendor, prevalence=job.prevalence, report_style=job.report_style,
                      n_phases=job.n_phases, matrix=job.matrix, variety=job.variety, only_families=job.only_families,
                      exclude_families=job.exclude_families)
    w = write_study(job.folder, p, enhanced=job.enhanced, compress=job.compress, distractors=job.distractors)
    row: dict[str, object] = {"study": Path(job.folder).name, "study_instance_uid": w.study_uid, "seed": job.seed,
                              "vendor": job.vendor, "report_style": job.report_style, "files": w.n_files,
                              "bytes": w.n_bytes}
    for f in FINDINGS:
        row[f] = int(p.findings[f] != "none")
    for f in FINDINGS:
        row[f"{f}_severity"] = p.findings[f]
    if p.variety is not None:
        row["families"] = ";".join(p.families)
    return row


def write_archive(
    out: str | Path,
    n: int,
    seed: int,
    *,
    prevalence: Mapping[str, float] | float = 0.3,
    vendors: Iterable[str] = VENDORS,
    report_styles: Iterable[str] | None = None,
    enhanced: bool = False,
    compress: str | None = None,
    workers: int = 1,
    n_phases: int | None = None,
    matrix: int | None = None,
    on_done: Callable[[dict[str, object]], None] | None = None,
    variety: bool = False,
    only_families: Iterable[str] | str | None = None,
    exclude_families: Iterable[str] | str | None = None,
    distractors: bool = True,
) -> list[dict[str, object]]:
    """Write ``n`` studies to ``out/study_0001`` ... and ``out/labels.csv``; returns the label rows.

    Vendors and report styles are drawn per study from the given lists (seeded by ``seed``; report styles default
    to the generator's training styles, never a held-out one); each finding is present with its prevalence (a
    float for all, or a {finding: p} mapping).

    ``variety`` writes studies of the randomised generator (``cmrdx.synth.variety``); ``only_families`` /
    ``exclude_families`` (family names such as ``"scar:midwall"``, ``"lge:psir"``; they imply ``variety``)
    constrain what it draws, so that an archive can leave a family out (training) or hold only it (testing).
    labels.csv then has a ``families`` column (``;``-separated). ``distractors`` False leaves out the localizer,
    T1 map, flow and TI scout series.
    """
    out = Path(out)
    only = tuple(parse_families(only_families))
    exclude = tuple(parse_families(exclude_families))
    variety = bool(variety or only or exclude)
    FamilyFilter.make(only, exclude)  # refuse an impossible filter before writing anything
    out.mkdir(parents=True, exist_ok=True)
    if report_styles is None:
        report_styles = VARIETY_TRAIN_STYLES if variety else TRAIN_STYLES
    vendors, styles = list(vendors), list(report_styles)
    rng = np.random.default_rng([int(seed), 0xA2C])
    jobs = [
        ArchiveJob(str(out / f"study_{i + 1:04d}"), study_seed(seed, i), str(rng.choice(vendors)),
                   str(rng.choice(styles)), prevalence, enhanced, compress, n_phases, matrix, variety, only, exclude,
                   distractors)
        for i in range(n)
    ]
    rows: list[dict[str, object]] = []
    log.info("writing %d studies to %s with %d worker(s)", n, out, workers)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            for row in ex.map(_run, jobs):
                rows.append(row)
                if on_done:
                    on_done(row)
    else:
        for job in jobs:
            row = _run(job)
            rows.append(row)
            if on_done:
                on_done(row)
    cols = ["study", "study_instance_uid", "seed", "vendor", "report_style"] + list(FINDINGS) + [
        f"{f}_severity" for f in FINDINGS] + (["families"] if variety else [])
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write(out / "labels.csv", buf.getvalue())
    return rows
