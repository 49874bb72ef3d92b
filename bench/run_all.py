"""`make bench`: run every benchmark, then assemble BENCHMARKS.md from their result tables.

Each bench script writes its own table (with the command that reproduces it and the machine it ran on) to
bench/results/NAME.md; this script runs them one after another (never two at once: they measure the same cores)
and concatenates. The zero-shot table (bench/results/zeroshot.md) comes from `cmrdx eval` and training, and the
typicality table (bench/results/typicality.md) from bench/build_reference.py, long commands of their own named in
those files; they are included as they stand.

    python bench/run_all.py                 run every benchmark, then assemble BENCHMARKS.md
    python bench/run_all.py dicom batch     run only these, then assemble
    python bench/run_all.py --assemble      run nothing: assemble BENCHMARKS.md from bench/results/ as they are
    python bench/run_all.py --help          this text
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Page order: model quality first, then what a user waits for, then the building blocks.
ORDER = ["zeroshot", "families", "release-0.6.0", "families-adapt", "probe", "lge_ceiling", "lge_cnn", "lge_stream", "typicality", "classify", "laptop", "explain", "batch", "pacs", "dicom", "synth", "encoder",
         "train_ddp", "recipe_window"]
SCRIPTS = {  # result name -> the script (and arguments) that regenerate it under `make bench`
    "dicom": ["bench_dicom.py"],
    "synth": ["bench_synth.py"],
    "encoder": ["bench_encoder.py", "--out", "bench/results/encoder.md"],
    "recipe_window": ["recipe_window.py", "--out", "bench/results/recipe_window.md"],
    "classify": ["bench_classify.py"],
    "explain": ["bench_explain.py"],
    "batch": ["bench_batch.py"],
    "pacs": ["bench_pacs.py"],
}
HEADER = [
    "# Benchmarks",
    "",
    "Current figures only. Each section names the command that reproduces it and the machine it ran on. Speed-ups",
    "are ratios against a baseline run in the same process on the same machine: these machines are shared and noisy,",
    "so absolute times drift between runs, and the ratios are what to compare. The bundled model is a demonstration",
    "trained on synthetic phantoms: its figures say nothing about clinical use.",
    "",
    "This page is assembled by `python bench/run_all.py --assemble` (and by `make bench`, which first reruns the speed",
    "benchmarks) from the tables in bench/results/.",
    "",
]


def _section(text: str) -> tuple[str, str]:
    """A results file -> (its title, its text as a section of this page: every heading one level down when the file
    starts at level 1; lines inside ``` code blocks are left alone)."""
    lines = text.rstrip().splitlines()
    heads = [ln for ln in lines if ln.startswith("#")]
    demote = bool(heads) and heads[0].startswith("# ")
    out, fenced = [], False
    for ln in lines:
        if ln.startswith("```"):
            fenced = not fenced
        elif demote and not fenced and re.match(r"#+ ", ln):
            ln = "#" + ln
        out.append(ln)
    title = next((ln.lstrip("#").strip() for ln in out if re.match(r"#+ ", ln)), "")
    return title, "\n".join(out)


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def assemble() -> int:
    results = HERE / "results"
    names = sorted((p.stem for p in results.glob("*.md")), key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))
    sections = [_section((results / f"{n}.md").read_text()) for n in names]
    parts = HEADER + [f"- [{t}](#{_anchor(t)})" for t, _ in sections] + [""]
    for _, text in sections:
        parts += [text, ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    return len(names)


def main() -> int:
    args = sys.argv[1:]
    if {"-h", "--help"} & set(args):
        print(__doc__.strip())
        print("\nbenchmarks:", " ".join(SCRIPTS))
        return 0
    only = set(args)
    if "--assemble" in only:
        only = {"--assemble"}
    elif only - set(SCRIPTS):
        unknown = " ".join(sorted(only - set(SCRIPTS)))
        print(f"unknown benchmark(s): {unknown}; known: {' '.join(SCRIPTS)}", file=sys.stderr)
        return 2
    failed = []
    for name, (script, *sargs) in SCRIPTS.items():
        if only and name not in only:
            continue
        print(f"== {script} {' '.join(sargs)}", flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        r = subprocess.run([sys.executable, str(HERE / script), *sargs], cwd=ROOT, env=env)
        if r.returncode != 0:
            failed.append(script)
    n = assemble()
    print(f"wrote BENCHMARKS.md from {n} tables" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
