"""CPU embedding time of one model against another, in one process, interleaved: the ratio a new model's
"no slower than the last" claim rests on.

    PYTHONPATH=. .venv/bin/python bench/bench_model_speed.py --baseline models/bases/cmrdx-phantom-small-0.5.0 \\
        --model models/cmrdx-phantom-small --repeat 15

Each repeat encodes the example study's model input (read and assembled once) with every model in turn (the order
alternates per repeat), onnxruntime float32 on the CPU; a warm-up run of each first. The baseline may be a training
base (float32 files only). Writes bench/results/model_speed.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name, load_average  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="models/bases/cmrdx-phantom-small-0.5.0")
    ap.add_argument("--model", default="models/cmrdx-phantom-small")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--results", default="bench/results/model_speed.md")
    a = ap.parse_args()

    import onnxruntime as ort

    from cmrdx.model.manifest import load_manifest
    from cmrdx.recipe import apply_recipe
    from cmrdx.study.assemble import assemble_study

    models = {"baseline": Path(a.baseline), "model": Path(a.model)}
    mans = {k: load_manifest(p, verify=False) for k, p in models.items()}
    if mans["baseline"].recipe_params() != mans["model"].recipe_params():
        raise SystemExit("the two models read different inputs: compare models of one recipe")
    x = apply_recipe(assemble_study(ROOT / "examples" / "phantom-study"), mans["model"].recipe_params()).array[None]
    sessions = {}
    for k, p in models.items():
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sessions[k] = ort.InferenceSession(str(p / mans[k].video["float32"]), opts, providers=["CPUExecutionProvider"])
        sessions[k].run(None, {"video": x})  # warm-up
    times: dict[str, list[float]] = {k: [] for k in models}
    load0 = load_average()
    for r in range(a.repeat):
        for k in (list(models) if r % 2 == 0 else list(models)[::-1]):
            t0 = time.perf_counter()
            sessions[k].run(None, {"video": x})
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["model"] / med["baseline"]
    lines = ["# CPU embedding time: the bundled model against the one before it", "",
             f"Machine: {cpu_name()}, onnxruntime {ort.__version__} float32 on the CPU, one study (the example study's "
             f"model input), {a.repeat} repeats interleaved in one process after a warm-up; load average {load0} "
             f"before, {load_average()} after.", "", "Command:", "", "```",
             f"PYTHONPATH=. .venv/bin/python bench/bench_model_speed.py --baseline {a.baseline} --model {a.model} "
             f"--repeat {a.repeat}", "```", "",
             "| model | version | median s / study | ratio to the baseline |", "|---|---|---:|---:|",
             f"| {a.baseline} | {mans['baseline'].version} | {med['baseline']:.4f} | 1.00 |",
             f"| {a.model} | {mans['model'].version} | {med['model']:.4f} | {ratio:.2f} |", ""]
    Path(a.results).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
