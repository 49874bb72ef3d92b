"""`cmrdx classify` on the example study with the default model: whole-command wall time and the
time per stage, on this machine.

    .venv/bin/python bench/bench_classify.py [--repeat 5]

The command is run as a user runs it (a fresh process each time: imports, model load, prompt embeddings from
the on-disk cache after the first run); the stages come from the result's own timings (``run.timings_ms``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--study", default=str(ROOT / "examples" / "phantom-study"))
    ap.add_argument("--out", default=str(HERE / "results" / "classify.md"))
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from machine import cpu_name

    cpu = cpu_name()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "CMRDX_HOME": home}
        cmd = [sys.executable, "-m", "cmrdx", "classify", args.study, "--json", "--device", "cpu"]
        subprocess.run(cmd, capture_output=True, env=env, check=True)  # first run fills the prompt cache
        walls, stages = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            walls.append(time.perf_counter() - t)
            stages.append(json.loads(r.stdout)["run"]["timings_ms"])
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import cmrdx.cli"], env=env, check=True)
        import_s = time.perf_counter() - t
    med = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    labels = {"load_ms": "load model + banks (ONNX sessions)", "read_ms": "scan + assemble (headers only)",
              "recipe_ms": "decode used frames + recipe", "encode_ms": "encode study", "score_ms": "prompt embeddings (cached) + scores"}
    text = [
        "## `cmrdx classify` on the example study",
        "",
        f"Command: `.venv/bin/python bench/bench_classify.py --repeat {args.repeat}` · {cpu}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()} · default model, CPU, median of {args.repeat} fresh processes.",
        "",
        f"Whole command (`cmrdx classify examples/phantom-study --json`): **{statistics.median(walls):.2f} s** "
        f"(target < 3 s; Python start + `import cmrdx.cli` alone: {import_s:.2f} s).",
        "",
        "| stage | ms |",
        "|---|---|",
        *[f"| {labels.get(k, k)} | {v:.0f} |" for k, v in med.items()],
        "",
    ]
    Path(args.out).write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
