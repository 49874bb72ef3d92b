"""Benchmark ``cmrdx synth``: time and disk per phantom study, and for a whole archive.

    PYTHONPATH=. .venv/bin/python bench/bench_synth.py --single 5 --archive 200 --workers 2

Writes the table to bench/results/synth.md (studies under bench/out/synth, which is not committed).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmrdx.synth import render_study, sample_params, write_archive, write_study  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--single", type=int, default=5, help="studies per single-study measurement")
    ap.add_argument("--archive", type=int, default=200, help="studies in the archive run (0 to skip)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="bench/out/synth")
    ap.add_argument("--results", default="bench/results/synth.md")
    a = ap.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rows = []

    def single(label: str, fn) -> None:
        times, cpus, sizes, files = [], [], [], []
        for i in range(a.single):
            p = sample_params(1000 + i, prevalence=0.3)
            t0, c0 = time.perf_counter(), time.process_time()
            res = fn(p, out / label / f"s{i}")
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            if res is not None:
                sizes.append(res.n_bytes)
                files.append(res.n_files)
        rows.append((label, a.single, statistics.median(times), statistics.median(cpus), max(times),
                     statistics.median(sizes) / 1e6 if sizes else None, statistics.median(files) if files else None))
        print(rows[-1], flush=True)

    load0 = os.getloadavg()
    single("arrays only (render_study, 9 views)", lambda p, d: render_study(p) and None)
    single("DICOM classic, uncompressed", lambda p, d: write_study(d, p))
    single("DICOM classic, JPEG-LS", lambda p, d: write_study(d, p, compress="jpegls"))
    single("DICOM Enhanced MR, RLE", lambda p, d: write_study(d, p, enhanced=True, compress="rle"))
    arch = None
    if a.archive:
        t0 = time.perf_counter()
        ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        res = write_archive(out / "archive", a.archive, seed=1, workers=a.workers)
        wall = time.perf_counter() - t0
        ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
        arch = (a.archive, wall, _du(out / "archive"), sum(int(r["files"]) for r in res), cpu)
        print(arch, flush=True)
    load1 = os.getloadavg()

    lines = [
        "# cmrdx synth: time and disk per phantom study",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_name()}), Python {platform.python_version()}, no GPU. "
        f"Load average before/after: {load0[0]:.1f} / {load1[0]:.1f} (other jobs shared the CPUs).",
        "Studies drawn with `sample_params(seed, prevalence=0.3)`: vendor, matrix 160-256, 20/25/30 cine phases, "
        "6-18 SAX slices, 10-15 LGE SAX slices, all 9 views; DICOM studies include the 4 distractor series.",
        "",
        "Wall time is what a user waits on this shared machine; CPU time (this process, all threads) is what the "
        "work costs and is less sensitive to other jobs on the same cores.",
        "",
        "| what | studies | median wall s/study | median CPU s/study | max wall s/study | median MB/study | "
        "median files/study |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, n, med, cpu, mx, mb, nf in rows:
        lines.append(f"| {label} | {n} | {med:.2f} | {cpu:.2f} | {mx:.2f} | {'-' if mb is None else f'{mb:.1f}'} | "
                     f"{'-' if nf is None else int(nf)} |")
    if arch:
        n, wall, size, nfiles, cpu = arch
        lines += [
            "",
            f"Archive (`write_archive`, classic uncompressed, {a.workers} worker processes): {n} studies in "
            f"{wall / 60:.1f} min ({wall / n:.2f} s/study wall, {cpu / n:.2f} CPU s/study), {size / 1e9:.2f} GB, "
            f"{nfiles} files ({size / n / 1e6:.1f} MB/study).",
        ]
    lines += ["", "Reproduce:", "", "```",
              f"PYTHONPATH=. .venv/bin/python bench/bench_synth.py --single {a.single} --archive {a.archive} "
              f"--workers {a.workers}", "```", ""]
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
