"""Data-parallel training on the CPU: steps per second of one process against N processes (torchrun, gloo) with
the same global batch, and how closely their losses agree.

One cache of phantom studies and one vocabulary are made first and copied into every run's work folder, so the
runs differ only in how many processes share each step. One process runs with ``--threads`` torch threads; each
of N processes with ``--threads / N`` (torchrun's default of one thread per process on a small machine), so the
cores are the same in both; and one process with one thread. The time of a step is measured from one ``on_step``
call to the next (rank 0), the first two steps left out (warm-up); the runs are repeated ``--repeat`` times in
turn (the machine is shared: its load drifts) and the median over all their steps is reported.

    PYTHONPATH=. .venv/bin/python bench/bench_train_ddp.py --steps 20 --procs 2 --threads 2

writes bench/results/train_ddp.md (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the shipped small model's shapes (TrainConfig defaults) at a batch of 16; 48 phantoms at a 128 matrix
CONFIG = dict(phantoms=48, seed=11, batch_size=16, epochs=100, val_fraction=0.0, checkpoint_every=100000)


def run(cfg_path: Path, work: Path, steps: int, result: Path) -> None:
    """One process of a run (alone, or under torchrun): ``steps`` steps, step times to ``result`` (rank 0)."""
    from cmrdx.train.distributed import env_info
    from cmrdx.train.trainer import TrainConfig, train

    info = env_info()
    times: list[float] = []
    cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
    res = train(cfg, out=None, work=work, progress=False, max_steps=steps,
                on_step=lambda step, loss: times.append(time.perf_counter()))
    if info.is_main:
        result.write_text(json.dumps({"times": times, "losses": res.losses, "world": info.world}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in all (split over the processes)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each setting, taken in turn")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_ddp.md")
    ap.add_argument("--worker", nargs=3, metavar=("CONFIG", "WORK", "RESULT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        run(Path(a.worker[0]), Path(a.worker[1]), a.steps, Path(a.worker[2]))
        return

    from bench.machine import cpu_name, load_average
    from cmrdx.train.trainer import TrainConfig, Trainer

    load_before = load_average()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        seed_cfg = TrainConfig.from_dict({**CONFIG, "threads": a.threads, "workers": 2})
        t0 = time.perf_counter()
        Trainer(seed_cfg, t / "seed", progress=False)  # renders the cache, trains the vocabulary once
        cache_s = time.perf_counter() - t0
        settings = [(1, a.threads), (a.procs, max(1, a.threads // a.procs)), (1, 1)]
        settings = list(dict.fromkeys(settings))
        results: dict[tuple[int, int], list[dict]] = {k: [] for k in settings}
        for rep in range(a.repeat):
            for procs, threads in settings:
                work = t / f"w{procs}-{threads}-{rep}"
                work.mkdir()
                shutil.copytree(t / "seed" / "cache", work / "cache")
                shutil.copy(t / "seed" / "vocab.txt", work / "vocab.txt")
                cfg_path = t / f"cfg{procs}-{threads}.json"
                cfg_path.write_text(json.dumps({**CONFIG, "threads": threads}))
                res = t / f"r{procs}-{threads}-{rep}.json"
                me = [str(Path(__file__).resolve()), "--steps", str(a.steps), "--worker", str(cfg_path), str(work),
                      str(res)]
                env = {**os.environ, "OMP_NUM_THREADS": str(threads),
                       "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
                cmd = ([sys.executable, *me] if procs == 1 else
                       [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
                        *me])
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                results[(procs, threads)].append(json.loads(res.read_text()))
        ref = np.array(results[settings[0]][0]["losses"])
        for (procs, threads), runs in results.items():
            dt = np.concatenate([np.diff(r["times"])[1:] for r in runs])  # from step 2 to 3 on
            rel = max(float(np.max(np.abs(np.array(r["losses"]) - ref) / np.abs(ref))) for r in runs)
            rows.append((procs, threads, float(np.median(dt)), 1 / float(np.median(dt)), rel))
    c = CONFIG
    d = TrainConfig()
    lines = [
        "# Data-parallel training on the CPU: 1 process against N (torchrun, gloo)", "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_name()}), no GPU; shared with other jobs (load average {load_before} "
        f"before, {load_average()} after). torch threads in all: {a.threads}, split over the processes.",
        f"Model: the shipped small model's shapes (video ViT {d.width} wide, {d.depth} blocks, {d.frames} frames of "
        f"{d.image_size} px; BERT {d.text_hidden} x {d.text_layers}); global batch {c['batch_size']}; "
        f"{c['phantoms']} phantom studies (cache built in {cache_s:.0f} s, once).",
        f"Median time per step over steps 3-{a.steps} of {a.repeat} runs of each setting, taken in turn (rank 0); "
        "losses compared step by step with the first run of one process.", "",
        "| processes | torch threads each | s/step | steps/s | max relative loss difference vs 1 process |",
        "|---:|---:|---:|---:|---:|",
        *(f"| {p} | {th} | {s:.3f} | {sp:.2f} | {rel:.1e} |" for p, th, s, sp, rel in rows), "",
        "The loss column is the check: N processes take the same steps as one. Speed on one shared machine says "
        "little about speed across GPUs and nodes (each process its own GPU); here it shows what the processes, "
        "the gather and the gradient all-reduce cost next to torch's own threads on the same cores.", "",
        "Command:", "", "```",
        f"PYTHONPATH=. .venv/bin/python bench/bench_train_ddp.py --steps {a.steps} --procs {a.procs} "
        f"--threads {a.threads} --repeat {a.repeat}", "```", ""]
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
