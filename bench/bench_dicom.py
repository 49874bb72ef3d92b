"""Study reading benchmark: header scan files/s, and cmrdx's assembly of what a recipe needs
against a naive baseline that reads every file fully with pydicom.dcmread, as a ratio in the same run.

    .venv/bin/python bench/bench_dicom.py [--repeat 5]

The study: ~415 files, 256x256 16-bit (Siemens-style: 12 single-slice SAX cine series x 25 phases, 4 long-axis
cines, LGE SAX stack + 3 LGE long-axis images), built from pydicom's MR_small.dcm by tests/helpers/cine_factory.py.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from machine import cpu_name  # noqa: E402

from cmrdx.dicom import scan  # noqa: E402
from cmrdx.study.assemble import assemble_study  # noqa: E402
from helpers.cine_factory import build_cine_study  # noqa: E402

SYNTAXES = [
    ("uncompressed", None),
    ("RLE lossless", "1.2.840.10008.1.2.5"),
    ("JPEG 2000 lossless", "1.2.840.10008.1.2.4.90"),
]




def naive(root: Path) -> int:
    """Baseline: every file read fully (headers and pixels), as a script without a header pass would."""
    n = 0
    for p in sorted(root.rglob("*.dcm")):
        ds = pydicom.dcmread(p)  # the baseline reads everything on purpose
        _ = ds.pixel_array
        n += 1
    return n


def cmrdx_assembly(root: Path) -> int:
    """cmrdx: header-only scan, classify, assemble, then decode only what the cmrclip-v1 montage uses:
    the middle SAX cine slice, one long-axis cine, the LGE SAX stack and the LGE long-axis images."""
    study = assemble_study(root)
    n = 0
    sax = study.get("cine", "SAX")
    n += sax.pixels(slices=[sax.n_slices // 2]).shape[1]
    lax = study.first("cine", ["4CH", "LAX", "3CH", "2CH", "LVOT"])
    n += lax.pixels(slices=[lax.n_slices // 2]).shape[1]
    for key in ("lge:SAX", "lge:4CH", "lge:2CH", "lge:3CH"):
        v = study.views.get(key)
        if v is not None:
            n += v.pixels().shape[0]
    return n


def median_time(fn, repeat: int) -> tuple[float, object]:
    out = fn()  # warm-up (page cache, imports)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "dicom.md"))
    args = ap.parse_args()
    rows = []
    ratios = {}
    scan_rates = []
    for label, ts in SYNTAXES:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "study"
            b = build_cine_study(root, vendor="siemens", n_slices=12, n_phases=25, matrix=256, seed=1, compress=ts)
            n_files = len(b.files)
            t_scan, res = median_time(lambda root=root: scan(root), args.repeat)
            t_naive, _ = median_time(lambda root=root: naive(root), args.repeat)
            t_asm, n_decoded = median_time(lambda root=root: cmrdx_assembly(root), args.repeat)
        scan_rates.append(n_files / t_scan)
        ratios[label] = t_naive / t_asm
        rows += [
            (label, "header scan (cmrdx.dicom.scan)", f"{t_scan * 1000:.0f} ms", f"{n_files / t_scan:,.0f} files/s", "-"),
            (label, "naive: dcmread + pixel_array of every file", f"{t_naive * 1000:.0f} ms", f"{n_files} frames", "1.00x"),
            (label, "cmrdx: scan + assemble + decode recipe frames", f"{t_asm * 1000:.0f} ms", f"{n_decoded} frames", f"**{t_naive / t_asm:.2f}x**"),
        ]
    text = [
        "## Study reading",
        "",
        f"Command: `.venv/bin/python bench/bench_dicom.py --repeat {args.repeat}` · {cpu_name()}, 1 process (one core), "
        f"Python {platform.python_version()}, pydicom {pydicom.__version__} · median of {args.repeat} after a warm-up.",
        f"Study: {n_files} files, 256x256 16-bit (12 SAX cine slices x 25 phases as 12 series, 4 long-axis "
        "cines, LGE SAX + 3 LGE long-axis), built by tests/helpers/cine_factory.py.",
        "",
        "| transfer syntax | step | time | throughput / decoded | speed-up vs naive |",
        "|---|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows],
        "",
        f"Targets: header scan >= 1,000 files/s per core (measured {min(scan_rates):,.0f}-{max(scan_rates):,.0f}); "
        "assembly >= 3x the naive read: " + ", ".join(f"{k} {'met' if v >= 3 else 'NOT met'} ({v:.1f}x)" for k, v in ratios.items()) + ".",
        "",
        "Reading: the header pass (pydicom parsing every element before the pixel data) costs about as much as a full",
        "read when pixel data is uncompressed or RLE, because decoding those is nearly free; reading headers first then",
        "pays only where decoding is dear (JPEG 2000, JPEG-LS, JPEG lossless: the usual PACS exports), where decoding",
        "65 of 415 frames wins several times over. Beating the naive read 3x on uncompressed files would need a header",
        "parser 3x faster than pydicom's, which cmrdx does not hand-roll.",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
