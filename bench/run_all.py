"""`make bench`: run every benchmark, then assemble BENCHMARKS.md from their result tables.

Each bench script writes its own table (with the command that reproduces it) to bench/results/NAME.md; this
script runs them one after another (never two at once: they measure the same cores) and concatenates.
Training (`cmrdx train`) and the zero-shot evaluation are long commands of their own; their tables are kept in
bench/results/ when they are re-run and are included here as they stand.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ORDER = ["dicom", "synth", "encoder", "recipe_window", "classify", "zeroshot", "batch"]
SCRIPTS = {  # result name -> the script (and arguments) that regenerate it under `make bench`
    "dicom": ["bench_dicom.py"],
    "synth": ["bench_synth.py"],
    "encoder": ["bench_encoder.py", "--out", "bench/results/encoder.md"],
    "recipe_window": ["recipe_window.py", "--out", "bench/results/recipe_window.md"],
    "classify": ["bench_classify.py"],
    "batch": ["bench_batch.py"],
}


def main() -> int:
    """`run_all.py` runs everything; `run_all.py dicom batch` only those; `run_all.py --assemble` runs nothing."""
    only = set(sys.argv[1:])
    if "--assemble" in only:
        only = {"--assemble"}
    failed = []
    for name, (script, *args) in SCRIPTS.items():
        if only and name not in only:
            continue
        print(f"== {script} {' '.join(args)}", flush=True)
        r = subprocess.run([sys.executable, str(HERE / script), *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if r.returncode != 0:
            failed.append(script)
    results = HERE / "results"
    names = sorted((p.stem for p in results.glob("*.md")), key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))
    parts = [
        "# Benchmarks",
        "",
        "Made by `make bench` (bench/run_all.py) from the tables in bench/results/; each table names the command that",
        "reproduces it and the machine it ran on. Ratios are against a baseline run in the same process: these",
        "machines are shared and noisy, absolute times drift.",
        "",
    ]
    for n in names:
        text = (results / f"{n}.md").read_text().rstrip()
        # every table is a section of this page: demote its top-level headings
        text = "\n".join("#" + line if line.startswith("# ") else line for line in text.splitlines())
        parts += [text, ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote BENCHMARKS.md from {len(names)} tables" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
