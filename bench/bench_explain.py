"""Attribution cost and the draft impression's agreement with reference reports.

    .venv/bin/python bench/bench_explain.py [--repeat 3] [--n 200] [--workers 2]

1. Cost of `classify --explain` with the bundled model on the CPU, on the example study: the attribution of every
   finding (in this process, after a warm-up; median of ``--repeat``), of one finding (`cmrdx explain --finding
   lge`), and the whole `cmrdx classify --explain` command against `cmrdx classify` in fresh processes. The cost is
   a number of encoder inputs fixed by the options (perturbed inputs do not depend on the findings); time per
   finding is the study's time over the findings explained.
2. The draft impression on the held-out phantom archive of the zero-shot benchmark (``--n`` studies, seeds
   900000-900199, Philips naming, telegraphic reports: `cmrdx synth archive HELDOUT --n 200 --seed 9 --prevalence
   0.3 --vendors philips --report-style telegraphic`), rendered to arrays from the same seeds (``--data HELDOUT``
   reads the DICOM archive instead): the findings the impression states present against the findings the
   reference report states (parsed from its text, checked against the archive's labels): the fraction of reference
   findings mentioned (recall) and of mentioned findings in the reference (precision), overall and per finding.
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name, load_average  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HELDOUT_SEED = 9  # the zero-shot benchmark's held-out archive (bench/results/zeroshot.md)


# ------------------------------------------------------------------------------------------------ reference reports


def reference_findings(report: str) -> set[str]:
    """Finding ids a telegraphic reference report (cmrdx synth's held-out style) states present."""
    out: set[str] = set()
    for line in report.splitlines():
        head, _, rest = line.partition(":")
        head = head.strip()
        if head in ("LV", "RV"):
            side = head.lower()
            size, _, func = rest.partition(";")
            if "(enlarged" in size:
                out.add(f"{side}_dilation")
            if "decreased" in func:
                out.add(f"{side}_dysfunction")
        elif head == "Wall" and "thick" in rest:
            out.add("lv_hypertrophy")
        elif head == "Delayed enh" and "POS" in rest:
            out.add("lge")
        elif head == "Ao root" and not rest.rstrip().endswith("nl"):
            out.add("aortic_dilation")
        elif head == "Pericard." and "fluid" in rest:
            out.add("pericardial_effusion")
    return out


# ------------------------------------------------------------------------------------------------ 1. cost


def cost(repeat: int) -> list[str]:
    from cmrdx.pipeline.classify import classify
    from cmrdx.pipeline.explain import ExplainOptions
    from cmrdx.study.assemble import assemble_study

    study = assemble_study(ROOT / "examples" / "phantom-study")
    classify(study, device="cpu", explain=True)  # warm-up: model, prompts, code paths
    rows: dict[str, list[dict[str, Any]]] = {"all": [], "one": [], "two": []}
    runs: dict[str, tuple[Any, list[str] | None]] = {"all": (True, None), "one": (True, ["lge"]),
                                                      "two": (ExplainOptions(region_views=2), None)}
    for _ in range(repeat):
        for key, (opts, only) in runs.items():
            r = classify(study, device="cpu", explain=opts, explain_findings=only)
            ex = r.explanation
            assert ex is not None
            rows[key].append({"s": ex.timings_ms["total_ms"] / 1000, "encode": ex.timings_ms["encode_ms"] / 1000,
                              "n": ex.n_inputs, "f": len(ex.findings), "classify": sum(
                                  v for k, v in r.timings_ms.items() if k != "explain_ms") / 1000})
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "CMRDX_HOME": home}
        base = [sys.executable, "-m", "cmrdx", "classify", str(ROOT / "examples" / "phantom-study"), "--json",
                "--device", "cpu"]
        subprocess.run(base, capture_output=True, env=env, check=True)  # prompt cache
        walls: dict[str, list[float]] = {"plain": [], "explain": []}
        for _ in range(repeat):
            for key, cmd in (("plain", base), ("explain", [*base, "--explain"])):
                t = time.perf_counter()
                subprocess.run(cmd, capture_output=True, env=env, check=True)
                walls[key].append(time.perf_counter() - t)

    def med(key: str, field: str) -> float:
        return statistics.median(x[field] for x in rows[key])

    lines = [
        "| what | findings explained | encoder inputs | attribution s / study | s / finding | of which encoding s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, what in (("all", "`classify --explain` (every assessable finding; 1 region map)"),
                      ("one", "`cmrdx explain --finding lge`"),
                      ("two", "`cmrdx explain --regions 2` (every finding; 2 region maps)")):
        n_f = rows[key][0]["f"]
        lines.append(f"| {what} | {n_f} | {rows[key][0]['n']} | {med(key, 's'):.2f} | {med(key, 's') / n_f:.2f} | "
                     f"{med(key, 'encode'):.2f} |")
    lines += ["", f"Whole command, fresh process: `cmrdx classify examples/phantom-study --json` "
                  f"**{statistics.median(walls['plain']):.2f} s**, with `--explain` "
                  f"**{statistics.median(walls['explain']):.2f} s** (median of {repeat}); classify without the "
                  f"attribution in process: {med('all', 'classify'):.2f} s."]
    return lines


# ------------------------------------------------------------------------------------------------ 2. impressions


def _study_job(job: tuple[int, str | None]) -> dict[str, Any]:
    """One held-out study: its reference findings and the draft impression's statements, as `cmrdx classify`
    composes them (``cmrdx.pipeline.classify.classify``: the bundled model, its banks, typicality)."""
    i, data = job
    from cmrdx.pipeline.classify import classify
    from cmrdx.synth.archive import study_seed
    from cmrdx.synth.arrays import phantom_report, phantom_study
    from cmrdx.synth.params import sample_params

    if data:
        from cmrdx.study.assemble import assemble_study

        folder = Path(data) / f"study_{i + 1:04d}"
        study = assemble_study(folder / "DICOM" if (folder / "DICOM").is_dir() else folder)
        report = (folder / "report.txt").read_text()
        truth = json.loads((folder / "truth.json").read_text())
        labels = {k for k, v in truth["findings"].items() if v != "none"}
    else:
        p = sample_params(study_seed(HELDOUT_SEED, i), vendor="philips", prevalence=0.3, report_style="telegraphic")
        study, report = phantom_study(p)[0], phantom_report(p)
        labels = set(p.present)
    imp = classify(study, device="cpu").impression
    assert imp is not None
    return {"i": i, "reference": sorted(reference_findings(report)), "labels": sorted(labels),
            "mentioned": imp.present, "uncertain": imp.uncertain, "text": imp.text}


def impressions(n: int, workers: int, data: str | None) -> tuple[list[str], dict[str, Any]]:
    jobs = [(i, data) for i in range(n)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            res = list(ex.map(_study_job, jobs))
    else:
        res = [_study_job(j) for j in jobs]
    disagree = sum(r["reference"] != r["labels"] for r in res)
    ids = ("lv_dilation", "lv_hypertrophy", "lv_dysfunction", "rv_dilation", "rv_dysfunction", "lge",
           "aortic_dilation", "pericardial_effusion")
    tp = sum(len(set(r["reference"]) & set(r["mentioned"])) for r in res)
    n_ref = sum(len(r["reference"]) for r in res)
    n_men = sum(len(r["mentioned"]) for r in res)
    exact = sum(set(r["reference"]) == set(r["mentioned"]) for r in res)
    normal = [r for r in res if not r["reference"]]
    lines = [
        f"Studies: {n}; reference reports stating at least one finding: {n - len(normal)}; reference findings "
        f"{n_ref}, findings the impressions state present {n_men}.",
        "",
        "| | value |",
        "|---|---:|",
        f"| reference findings mentioned (recall) | **{tp / max(n_ref, 1):.3f}** ({tp}/{n_ref}) |",
        f"| mentioned findings in the reference (precision) | **{tp / max(n_men, 1):.3f}** ({tp}/{n_men}) |",
        f"| impressions stating exactly the reference's findings | {exact / n:.3f} ({exact}/{n}) |",
        f"| normal references with no finding stated present | "
        f"{sum(not r['mentioned'] for r in normal) / max(len(normal), 1):.3f} "
        f"({sum(not r['mentioned'] for r in normal)}/{len(normal)}) |",
        f"| findings near the threshold, named as such | {sum(len(r['uncertain']) for r in res)} |",
        "",
        "| finding | in reference | mentioned | both | recall | precision |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for fid in ids:
        ref = sum(fid in r["reference"] for r in res)
        men = sum(fid in r["mentioned"] for r in res)
        both = sum(fid in r["reference"] and fid in r["mentioned"] for r in res)
        lines.append(f"| {fid} | {ref} | {men} | {both} | {both / max(ref, 1):.3f} | {both / max(men, 1):.3f} |")
    lines += ["", f"Reference findings parsed from the report text agree with the archive's labels for "
                  f"{n - disagree}/{n} studies."]
    example = next((r for r in res if r["mentioned"]), res[0])
    return lines, {"example": example, "disagree": disagree}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n", type=int, default=200, help="held-out studies for the impression evaluation")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", default=None, help="the held-out DICOM archive (default: the same seeds as arrays)")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "explain.md"))
    args = ap.parse_args()
    load0 = load_average()
    t0 = time.perf_counter()
    cost_lines = cost(args.repeat) if not args.skip_cost else ["(not rerun)"]
    load1 = load_average()
    imp_lines, extra = impressions(args.n, args.workers, args.data)
    ex = extra["example"]
    from cmrdx.model.loader import get_encoder

    enc = get_encoder(None, "cpu")
    text = [
        "## Attribution and the draft impression",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, CPU, onnxruntime "
        f"{enc.precision} (the default); 1-min load average {load0} before and {load1} after the timed runs (a shared "
        "machine: times drift with it, the encoder inputs do not). Model: the bundled `cmrdx-phantom-small` "
        f"{enc.manifest.version}, bank `cmr-findings`.",
        "",
        "### Cost of `--explain` on the example study",
        "",
        "Every attribution is a score change on perturbed copies of the model's input, encoded 16 at a time: each "
        "montage segment left out and alone among its role (the recipe's own handling of a missing view), each role "
        "left out, 8 windows of the cycle, and per region map one context, the whole field hidden and each of 4 x 4 "
        "patches twice (hidden; alone). The perturbed inputs serve every finding at once, so a study costs the same "
        "whether one finding or all are explained.",
        "",
        *cost_lines,
        "",
        "### The draft impression against the held-out reference reports",
        "",
        "The impression states the findings called present (bank phrases, clinical order); findings near the "
        "threshold are named as such and not counted as mentioned.",
        "",
        *imp_lines,
        "",
        f"An impression (held-out study {ex['i'] + 1}; reference findings: {', '.join(ex['reference']) or 'none'}):",
        "",
        f"> {ex['text']}",
        "",
        "Commands:",
        "",
        "```",
        f".venv/bin/python bench/bench_explain.py --repeat {args.repeat} --n {args.n} --workers {args.workers}"
        + (f" --data {args.data}" if args.data else ""),
        "```",
        "",
        f"(The whole benchmark took {(time.perf_counter() - t0) / 60:.1f} min.)",
        "",
    ]
    Path(args.out).write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
