"""The real CMR-CLIP on a laptop: import memory and time, model load time with and without saved optimised graphs,
and `cmrdx classify` end to end at each precision, on this machine's CPU.

The released weights are not shipped, so a full-size checkpoint in the released layout (ViT-B/16 video tower at 64
frames + BERT-base text tower, 28,996-token vocabulary; random weights) is written first. Every measurement runs
in a fresh process, as a user runs the commands; a baseline tree (the code before this work, e.g. a `git archive`
of an earlier commit, run with PYTHONPATH) can be measured in the same run, interleaved, for same-run ratios.

    python bench/bench_laptop.py checkpoint DIR              # write DIR/{pytorch_model.bin,config.json,vocab.txt}
    python bench/bench_laptop.py import DIR --out MODEL [--tree BASE]   # one import, peak RSS and time (JSON)
    python bench/bench_laptop.py run --source DIR --model MODEL [--base-model BASEMODEL --base-tree BASE]
        [--import-json F ...] [--repeat 3] [--out bench/results/laptop.md]

``run`` measures model load time (saved optimised graphs against none) and classify end to end (float32, int8;
the baseline tree's float32 when given), and writes the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLE = ROOT / "examples" / "phantom-study"
sys.path.insert(0, str(HERE))

# The BERT-base-cased special token ids (Bio_ClinicalBERT's vocabulary is bert-base-cased's).
SPECIALS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}


# ---------------------------------------------------------------- a full-size checkpoint


def vocab_words(n: int = 28996) -> list[str]:
    """A WordPiece vocabulary of ``n`` tokens with BERT's special ids, characters, word pieces and the words of
    the shipped prompt banks (so prompts tokenise to words, as with the real vocabulary)."""
    import re

    words: list[str] = []
    for p in sorted((ROOT / "prompts").glob("*.yaml")):
        words += re.findall(r"[A-Za-z]+", p.read_text())
    chars = [chr(c) for c in range(33, 127)]
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    seen: set[str] = set(SPECIALS.values())
    pool = []
    for w in chars + pieces + sorted({w.lower() for w in words} | set(words)):
        if w not in seen:
            seen.add(w)
            pool.append(w)
    out: list[str] = []
    it = iter(pool)
    for i in range(n):
        if i in SPECIALS:
            out.append(SPECIALS[i])
        else:
            out.append(next(it, f"[unused{i}]"))
    return out


def write_checkpoint(out: Path, seed: int = 0) -> None:
    """``out``/pytorch_model.bin (the full-size CMR-CLIP state dict, random weights, float32, with BERT's
    position_ids buffer as the hub file has it), config.json and vocab.txt."""
    import torch

    from cmrdx.train.model import CMRClip, CMRClipConfig

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CMRClip(CMRClipConfig())
    with torch.no_grad():  # the default init leaves zeros where a trained model has values (cls, pos embeddings)
        for name, p in model.named_parameters():
            if name.startswith("video_model") and p.dim() > 1 and float(p.abs().max()) == 0.0:
                p.normal_(0.0, 0.02)
    sd = model.state_dict()
    sd["text_model.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save(sd, out / "pytorch_model.bin")
    (out / "config.json").write_text(json.dumps({
        "video_params": {"model": "SpaceTimeTransformer", "arch_config": "base_patch16_224", "num_frames": 64,
                         "pretrained": True, "time_init": "zeros"},
        "text_params": {"model": "emilyalsentzer/Bio_ClinicalBERT", "pretrained": True, "input": "text"},
        "projection": "minimal", "projection_dim": 512, "load_checkpoint": None,
    }, indent=1))
    (out / "vocab.txt").write_text("\n".join(vocab_words(model.cfg.text.vocab_size)) + "\n")
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {n / 1e6:.0f} M parameters, {(out / 'pytorch_model.bin').stat().st_size / 1e9:.2f} GB")


# ---------------------------------------------------------------- measuring a command in a fresh process


def tree_env(tree: Path | None, home: Path | None = None) -> dict[str, str]:
    """The environment of a measured process: cmrdx from ``tree`` (PYTHONPATH) when given, ``home`` as CMRDX_HOME."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    if home is not None:
        env["CMRDX_HOME"] = str(home)
    return env


def _tree(root: int) -> list[int]:
    """``root`` and every process below it (Linux /proc)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += [c for c, pp in parent.items() if pp == pid]
    return out


def _pss_kb(pid: int) -> int:
    """Proportional set size of ``pid`` (shared pages divided among their users), else its RSS."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measured(cmd: list[str], env: dict[str, str], every: float = 0.2) -> dict[str, object]:
    """Run ``cmd`` in a child process: wall time, the largest memory of all its processes together (PSS summed
    over the process tree, sampled every ``every`` s: what the machine must hold at once), the largest single
    process (ru_maxrss), exit code and output tail. Run from a process that starts no other child meanwhile."""
    import resource

    t = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak_tree = 0
        while p.poll() is None:
            peak_tree = max(peak_tree, sum(_pss_kb(pid) for pid in _tree(p.pid)))
            time.sleep(every)
        wall = time.perf_counter() - t
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"cmd": cmd, "rc": p.returncode, "wall_s": wall, "peak_tree_gb": peak_tree / 1e6,
            "peak_rss_gb": peak_kb / 1e6, "out": text[-3000:]}


def import_once(src: Path, out: Path, tree: Path | None, extra: tuple[str, ...] = ()) -> dict[str, object]:
    """One `cmrdx models import-cmrclip` of the checkpoint in ``src`` into ``out`` (``extra``: more options)."""
    cmd = [sys.executable, "-m", "cmrdx", "models", "import-cmrclip", "--checkpoint", str(src / "pytorch_model.bin"),
           "--config", str(src / "config.json"), "--vocab", str(src / "vocab.txt"), "--out", str(out), *extra]
    r = measured(cmd, tree_env(tree))
    r["tree"] = str(tree) if tree else "this checkout"
    r["load_average"] = os.getloadavg()[0]
    return r


def _status(field: str) -> int:
    """A VmXXX field of /proc/self/status, in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def import_stages(src: Path, out: Path) -> list[dict[str, object]]:
    """The import in this process, with the peak RSS and time of each stage (the kernel's peak is reset at each
    stage: /proc/self/clear_refs). A diagnosis of where memory goes, not the user's measurement (`import`)."""
    from cmrdx.train.cmrclip_import import import_cmrclip

    rows: list[dict[str, object]] = []
    t0 = time.perf_counter()
    state: dict[str, Any] = {"stage": "start", "t": t0}

    def close() -> None:
        rows.append({"stage": state["stage"], "s": round(time.perf_counter() - float(state["t"]), 1),
                     "peak_gb": round(_status("VmHWM") / 1e6, 2), "rss_after_gb": round(_status("VmRSS") / 1e6, 2)})
        print(rows[-1], file=sys.stderr, flush=True)
        Path("/proc/self/clear_refs").write_text("5")

    def stage(msg: str) -> None:
        close()
        state.update(stage=msg, t=time.perf_counter())

    Path("/proc/self/clear_refs").write_text("5")
    import_cmrclip(src / "pytorch_model.bin", src / "config.json", src / "vocab.txt", out, progress=stage)
    close()
    return rows


# ---------------------------------------------------------------- load time and classify, fresh processes

LOAD = """import json, sys, time
import onnxruntime  # imported before the clock starts: the same cost with or without this work
from cmrdx.model.encoder import Encoder
t = time.perf_counter()
e = Encoder(sys.argv[1], device="cpu", precision=sys.argv[2])
print(json.dumps({"load_s": time.perf_counter() - t, "precision": e.precision}))
"""

# `cmrdx classify` at a given precision before the command has --precision: the command as it is, with the
# loader's precision pinned (the pipeline asks get_encoder(model, device); it is imported after this runs).
PINNED = """import sys
import cmrdx.model.loader as L
_orig, _precision = L.get_encoder, sys.argv.pop(1)
L.get_encoder = lambda model=None, device="auto", precision="auto": _orig(model, device, _precision)
from cmrdx.cli import main
sys.argv[0] = "cmrdx"
main()
"""


def _cli_has_precision(env: dict[str, str]) -> bool:
    r = subprocess.run([sys.executable, "-m", "cmrdx", "classify", "--help"], capture_output=True, text=True, env=env)
    return "--precision" in r.stdout


def classify_cmd(model: Path, precision: str | None, env: dict[str, str], native: bool) -> list[str]:
    """The classify command line (``precision`` None: the tree's own default, for a baseline tree)."""
    args = ["classify", str(EXAMPLE), "--json", "--device", "cpu", "--model", str(model)]
    if precision is None:
        return [sys.executable, "-m", "cmrdx", *args]
    if native:
        return [sys.executable, "-m", "cmrdx", *args, "--precision", precision]
    return [sys.executable, "-c", PINNED, precision, *args]


def _once(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-2000:]}")
    out = json.loads(r.stdout)
    if "run" in out:  # classify: its own stage times
        return {"wall_s": wall, **{k: v / 1000 for k, v in out["run"]["timings_ms"].items()}, "device": out["run"]["device"]}
    return {"wall_s": wall, **out}


def run(args: argparse.Namespace) -> str:
    """Load time and classify, interleaved round-robin over ``args.repeat`` rounds; returns the Markdown table."""
    import shutil

    from machine import cpu_name, load_average

    work = Path(tempfile.mkdtemp(prefix="cmrdx-laptop-"))
    homes = {k: work / k for k in ("base", "new", "fresh")}
    base_env = tree_env(args.base_tree, homes["base"]) if args.base_tree else None
    new_env = tree_env(None, homes["new"])
    native = _cli_has_precision(new_env)
    model = args.model
    # what is measured: name -> (command, environment, setup before each run)
    fresh = homes["fresh"]

    def fresh_home() -> None:
        shutil.rmtree(fresh, ignore_errors=True)

    def no_graphs(env: dict[str, str]) -> dict[str, str]:
        return {**env, "CMRDX_SAVED_GRAPHS": "0"}

    loads: dict[str, tuple[list[str], dict[str, str], object]] = {}
    for prec in ("float32", "int8"):
        cmd = [sys.executable, "-c", LOAD, str(model), prec]
        if base_env:
            loads[f"{prec}: before (all files hashed, graph optimised)"] = (cmd, base_env, None)
        loads[f"{prec}: after, nothing saved or remembered (files hashed, graph optimised)"] = (
            cmd, no_graphs(tree_env(None, fresh)), fresh_home)
        loads[f"{prec}: after, remembered file hashes, graph optimised"] = (cmd, no_graphs(new_env), None)
        loads[f"{prec}: after, remembered file hashes + saved optimised graph"] = (cmd, new_env, None)
    runs: dict[str, tuple[list[str], dict[str, str], object]] = {}
    if base_env:
        runs["float32, before"] = (classify_cmd(model, None, base_env, native), base_env, None)
    runs["float32, after"] = (classify_cmd(model, "float32", new_env, native), new_env, None)
    runs["int8, after"] = (classify_cmd(model, "int8", new_env, native), new_env, None)
    # warm-up: prompt embeddings cached, remembered hashes and saved graphs in place, the files in the page cache
    for cmd, env, _ in [*runs.values(), *[v for k, v in loads.items() if "remembered" in k]]:
        _once(cmd, env)
    la_before = load_average()
    results: dict[str, list[dict[str, float]]] = {k: [] for k in [*loads, *runs]}
    for r in range(args.repeat):
        for name, (cmd, env, setup) in [*loads.items(), *runs.items()]:
            if callable(setup):
                setup()
            results[name].append(_once(cmd, env))
            print(f"round {r + 1}: {name}: {results[name][-1]['wall_s']:.2f} s", file=sys.stderr, flush=True)
    la_after = load_average()
    shutil.rmtree(work, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return statistics.median(float(x[key]) for x in results[name])

    lines = [
        "## The full-size CMR-CLIP on a laptop CPU: import, start, classify",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, shared with other jobs (1-min load average {la_before} "
        f"before the timed runs, {la_after} after). Model: a full-size CMR-CLIP checkpoint in the released layout "
        "(ViT-B/16 video tower at 64 frames 224x224 + BERT-base text tower, 223 M parameters, random weights: "
        "`bench/bench_laptop.py checkpoint`), imported by `cmrdx models import-cmrclip`. Study: the example study. "
        f"Each figure is the median of {args.repeat} fresh processes, the variants interleaved round-robin; "
        "\"before\" is the code before this work (commit "
        f"{args.base_commit or '?'}) run on the same model folder in the same rounds. Files are in the page cache "
        "(a first start after a reboot reads them from disk too).",
        "",
    ]
    if args.import_json:
        lines += ["### Import (`cmrdx models import-cmrclip`, one run each)", "",
                  "| import | wall time | peak memory, all its processes (PSS) | largest process (max RSS) | "
                  "load average |", "|---|---:|---:|---:|---:|"]
        for f in args.import_json:
            d = json.loads(Path(f).read_text())
            tree = f"{d['peak_tree_gb']:.2f} GB" if "peak_tree_gb" in d else "-"
            lines.append(f"| {d.get('label') or d['tree']} | {d['wall_s'] / 60:.1f} min | {tree} | "
                         f"{d['peak_rss_gb']:.2f} GB | {d['load_average']:.1f} |")
        lines += ["", "Target: peak <= 4 GB. Memory sampled every 0.2 s over the command's processes (the import "
                  "exports each tower in a child process).", ""]
    lines += ["### Model load (`Encoder(model, device=\"cpu\", precision=...)`: files checked, video session ready; "
              "onnxruntime already imported)", "",
              "| precision: what is loaded | load s | vs before |", "|---|---:|---:|"]
    for prec in ("float32", "int8"):
        base = f"{prec}: before (all files hashed, graph optimised)"
        for name in [k for k in loads if k.startswith(prec)]:
            ratio = f"{med(base, 'load_s') / med(name, 'load_s'):.2f}x" if base in results else "-"
            lines.append(f"| {name} | {med(name, 'load_s'):.2f} | {ratio} |")
    lines += ["", "Target: load time halved or better with saved optimised graphs. After `import-cmrclip` both are in "
              "place (the import saves the graphs, and its validation remembers the hashes in the same $CMRDX_HOME), "
              "so the first `classify` is in the last row.", "",
              "### `cmrdx classify examples/phantom-study --json --device cpu` end to end", "",
              "| run | device | whole command s | load | read | recipe | encode | score | vs float32 before |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    base_wall = med("float32, before", "wall_s") if "float32, before" in results else None
    for name in runs:
        row = [f"{med(name, k):.2f}" for k in ("wall_s", "load_ms", "read_ms", "recipe_ms", "encode_ms", "score_ms")]
        ratio = f"{base_wall / med(name, 'wall_s'):.2f}x" if base_wall else "-"
        lines.append(f"| {name} | {results[name][0]['device']} | " + " | ".join(row) + f" | {ratio} |")
    how = ("`--precision`" if native else "the precision pinned in the loader (`bench_laptop.py`: the command had no "
           "`--precision` yet)")
    lines += ["", f"Precision chosen with {how}. Targets: int8 <= 6 s; float32 no slower than before.", "",
              "Commands:", "", "```",
              "python bench/bench_laptop.py checkpoint CKPT",
              "git archive BASE_COMMIT | tar -x -C BASE   # the code before, for the same-run baseline",
              "python bench/bench_laptop.py import CKPT --out MODEL_BASE --tree BASE --json import-before.json",
              "python bench/bench_laptop.py import CKPT --out MODEL --json import-after.json",
              "python bench/bench_laptop.py import CKPT --out MODEL_NV --no-validate --json import-after-nv.json",
              f"python bench/bench_laptop.py run --model MODEL --base-tree BASE --base-commit BASE_COMMIT "
              f"--repeat {args.repeat} --import-json import-before.json import-after.json import-after-nv.json "
              "--out bench/results/laptop.md",
              "```", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("checkpoint")
    c.add_argument("dir", type=Path)
    i = sub.add_parser("import")
    i.add_argument("dir", type=Path, help="the folder `checkpoint` wrote")
    i.add_argument("--out", type=Path, required=True, help="the model folder to write")
    i.add_argument("--tree", type=Path, default=None, help="run cmrdx from this source tree (a baseline)")
    i.add_argument("--json", type=Path, default=None, help="also write the measurement here")
    i.add_argument("--label", default=None, help="how the results table names this run")
    i.add_argument("--no-validate", action="store_true", help="pass --no-validate (no int8 validation)")
    rp = sub.add_parser("run")
    rp.add_argument("--model", type=Path, required=True, help="the model folder the import wrote")
    rp.add_argument("--base-tree", type=Path, default=None, help="the code before, for same-run ratios")
    rp.add_argument("--base-commit", default=None, help="the commit the base tree is")
    rp.add_argument("--import-json", nargs="*", default=[], help="measurements written by `import --json`")
    rp.add_argument("--repeat", type=int, default=3)
    rp.add_argument("--out", type=Path, default=None)
    g = sub.add_parser("import-stages")
    g.add_argument("dir", type=Path)
    g.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "run":
        text = run(args)
        print(text)
        if args.out:
            args.out.write_text(text)
    elif args.cmd == "import-stages":
        print(json.dumps(import_stages(args.dir, args.out), indent=1))
    elif args.cmd == "checkpoint":
        write_checkpoint(args.dir)
    elif args.cmd == "import":
        r = import_once(args.dir, args.out, args.tree, ("--no-validate",) if args.no_validate else ())
        r["label"] = args.label
        text = json.dumps(r, indent=1)
        print(text)
        if args.json:
            args.json.write_text(text + "\n")
        if r["rc"] != 0:
            sys.exit(1)


if __name__ == "__main__":
    main()
