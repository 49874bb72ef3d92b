"""The generalisation gap of a model trained on one phantom generator: zero-shot AUC per finding on cmrdx's
classic held-out phantoms, on phantoms of the randomised generator (``--variety``), and on archives that hold
only one appearance family each (the test side of a leave-one-family-out split).

    PYTHONPATH=. .venv/bin/python bench/bench_families.py --model models/cmrdx-phantom-small \\
        --n-classic 60 --n-variety 100 --n-family 40 --workers 2

Every archive is written in the Philips vendor style (held out from the bundled model's training) without
distractor series, its reports in a held-out style, and read as a user's studies (assembly, the model's recipe,
the onnxruntime encoder). Writes bench/results/families.md and families.json; archives and the study embedding
cache under bench/out/families (not committed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmrdx.evaluation.benchmarks import load_eval_set  # noqa: E402
from cmrdx.evaluation.families import family_zeroshot, lofo_split, markdown_families  # noqa: E402
from cmrdx.synth import write_archive  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name, load_average  # noqa: E402

FINDINGS = ("lv_dysfunction", "rv_dysfunction", "lv_dilation", "rv_dilation", "lv_hypertrophy", "lge", "aortic_dilation",
            "pericardial_effusion")
CMRCLIP_SEVEN = FINDINGS[:7]


def _cell(c: dict[str, Any] | None, bold: bool = False) -> str:
    if not c or c.get("auc") is None:
        return "-" if not c else f"- ({c['positives']}/{c['n']})"
    t = f"{c['auc']:.3f}"
    return f"**{t}**" if bold else t


def _mean7(cells: dict[str, Any]) -> str:
    vals = [cells[f]["auc"] for f in CMRCLIP_SEVEN if cells.get(f) and cells[f].get("auc") is not None]
    return f"{sum(vals) / len(vals):.3f}" if len(vals) == len(CMRCLIP_SEVEN) else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/cmrdx-phantom-small")
    ap.add_argument("--bank", default="cmr-findings")
    ap.add_argument("--n-classic", type=int, default=60)
    ap.add_argument("--n-variety", type=int, default=100)
    ap.add_argument("--n-family", type=int, default=40)
    ap.add_argument("--families", default="scar:midwall,lge:psir,anatomy:trabeculated,cine:gre",
                    help="held-out families, one test archive each")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--out", default="bench/out/families")
    ap.add_argument("--results", default="bench/results/families.md")
    ap.add_argument("--keep", action="store_true", help="reuse archives already written under --out")
    ap.add_argument("--write-only", action="store_true", help="write the archives (reusing those under --out) and stop: "
                    "to prepare them while the machine does something else")
    a = ap.parse_args()

    from cmrdx.model.encoder import Encoder
    from cmrdx.zeroshot.bank import load_bank

    out = Path(a.out)
    if a.write_only:
        a.keep = True
    if not a.keep:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    load0 = load_average()
    t_start = time.perf_counter()
    families = [f.strip() for f in a.families.split(",") if f.strip()]
    # (name, archive seed, n, write_archive keyword arguments)
    plan: list[tuple[str, int, int, dict[str, Any]]] = [
        ("classic", 31, a.n_classic, {"report_styles": ["telegraphic"], "prevalence": 0.3}),
        ("variety", 32, a.n_variety, {"variety": True, "report_styles": ["dictated"], "prevalence": 0.3}),
    ]
    for i, fam in enumerate(families):
        plan.append((fam, 33 + i, a.n_family, dict(lofo_split(fam).test_archive(), report_styles=["dictated"])))
    timing: dict[str, dict[str, float]] = {}
    for name, seed, n, kw in plan:
        folder = out / name.replace(":", "-")
        if a.keep and (folder / "labels.csv").is_file():
            continue
        t0 = time.perf_counter()
        write_archive(folder, n, seed, vendors=["philips"], workers=a.workers, distractors=False, **kw)
        timing[name] = {"write_s": time.perf_counter() - t0}
        print(f"{name}: {n} studies written in {timing[name]['write_s']:.0f} s", flush=True)

    if a.write_only:
        return
    enc = Encoder(a.model)
    bank = load_bank(a.bank)
    results: dict[str, Any] = {}
    for name, _, _n, _ in plan:
        folder = out / name.replace(":", "-")
        t0 = time.perf_counter()
        es = load_eval_set(folder, enc, cache_dir=out / "cache")
        timing.setdefault(name, {})["encode_s"] = time.perf_counter() - t0
        fams = None if name in ("classic", "variety") else [name]
        results[name] = family_zeroshot(es, folder, bank, enc, families=fams, n_boot=a.bootstrap)
        print(f"{name}: {len(es.ids)} studies read and encoded in {timing[name]['encode_s']:.0f} s", flush=True)
    total = time.perf_counter() - t_start

    labels = results["classic"]["labels"]
    held = set(((enc.manifest.provenance or {}).get("recipe") or {}).get("held_out", {}).get("families") or [])
    lofo_cols = sorted(held & {f for f, _, _, _ in plan})
    if lofo_cols:
        lofo = (f"this model was trained without {', '.join(f'`{f}`' for f in lofo_cols)} (its manifest's "
                "provenance): those columns are leave-one-family-out results, any other family column one it saw. ")
    else:
        lofo = ("the test side of a leave-one-family-out split (this model's manifest names none of them as held "
                "out of its training). ")
    lines = [f"# Zero-shot AUC of `{enc.manifest.name}` {enc.manifest.version} beyond its own generator", "",
             "**Phantoms, not patients.** The same model, scored on held-out studies of the generator it was trained on "
             "(classic) and of cmrdx's randomised generator (`cmrdx synth archive --variety`): other shapes, scar "
             "patterns, LGE and cine contrasts, noise, shading, geometry, misregistration and views "
             "([cmrdx/synth/variety.py](../../cmrdx/synth/variety.py)). A family column is an archive whose every "
             "study that can show the family does (`--only-families F`, the finding it bears on at prevalence 0.5): "
             + lofo +
             "Cells: AUC; bold: the findings the family bears on; '-': fewer than 5 positives or negatives.", "",
             f"Machine: {cpu_name()}, onnxruntime {enc.precision} on the {enc.device}; shared, load average {load0} at "
             f"the start, {load_average()} at the end. Total {total / 60:.1f} min.", "",
             "Command:", "", "```",
             f"PYTHONPATH=. .venv/bin/python bench/bench_families.py --model {a.model} --n-classic {a.n_classic} "
             f"--n-variety {a.n_variety} --n-family {a.n_family} --families {a.families} --workers {a.workers} "
             f"--bootstrap {a.bootstrap}", "```", "",
             "Each archive, as a command (Philips style, no distractor series, held-out report styles):", "", "```"]
    for name, seed, n, kw in plan:
        folder = f"bench/out/families/{name.replace(':', '-')}"
        opts = []
        if kw.get("variety"):
            opts.append("--variety")
        if kw.get("only_families"):
            opts.append("--only-families " + ",".join(kw["only_families"]))
        prev = kw["prevalence"]
        prev_s = f"{prev:g}" if isinstance(prev, float) else ",".join(f"{k}={v:g}" for k, v in prev.items())
        lines.append(f"cmrdx synth archive {folder} --n {n} --seed {seed} --vendors philips --report-style "
                     f"{kw['report_styles'][0]} --prevalence {prev_s} {' '.join(opts)} --no-distractors".replace("  ", " "))
    lines += ["```", "", "## Zero-shot AUC per finding", "",
              f"| finding | classic (n={results['classic']['n']}) | randomised (n={results['variety']['n']}) | "
              + " | ".join(f"only `{f}` (n={results[f]['n']})" for f in families) + " |",
              "|---|---:|---:|" + "---:|" * len(families)]
    for f in FINDINGS:
        row = [_cell(results["classic"]["overall"].get(f)), _cell(results["variety"]["overall"].get(f))]
        for fam in families:
            row.append(_cell(results[fam]["overall"].get(f), bold=f in lofo_split(fam).findings))
        lines.append(f"| {labels.get(f, f)} | " + " | ".join(row) + " |")
    lines.append("| mean of the seven CMR-CLIP findings | " + " | ".join(
        _mean7(results[k]["overall"]) for k in ["classic", "variety", *families]) + " |")
    lines += ["", "Positives per archive (finding: positives/studies): " + "; ".join(
        f"{k}: " + ", ".join(f"{f} {results[k]['overall'][f]['positives']}/{results[k]['overall'][f]['n']}"
                             for f in FINDINGS if f in results[k]["overall"]) for k in ["classic", "variety", *families]),
              "", "## The randomised archive, family by family", "",
              "Each row: the studies of the randomised archive drawn with that family (for a scar or hypertrophy "
              "pattern, its positives and every study without the finding). Cells: AUC (positives/studies).", "",
              markdown_families(results["variety"], title="Randomised archive by family"),
              "## Time", "", "| archive | studies | write s/study | read + encode s/study |", "|---|---:|---:|---:|"]
    for name, _, n, _ in plan:
        tm = timing.get(name, {})
        w = f"{tm['write_s'] / n:.2f}" if "write_s" in tm else "reused"
        lines.append(f"| {name} | {n} | {w} | {tm.get('encode_s', 0) / n:.2f} |")
    lines.append("")
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text("\n".join(lines))
    Path(a.results).with_suffix(".json").write_text(json.dumps({"results": results, "timing": timing}, indent=1,
                                                               default=float) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
