"""Archive throughput and search latency.

    .venv/bin/python bench/bench_batch.py [--n 200] [--model cmrdx-phantom-small]

1. A phantom archive (``--n`` studies, written once to bench/out/, reused) scored by `cmrdx batch` (reader
   processes overlapped with batched encoding) against a naive loop calling ``cmrdx.pipeline.classify`` per study
   (model loaded once, the fair baseline), both in this process tree on this machine; studies/s, the split
   between reading and encoding, and peak memory (max RSS of this process and its children).
2. Text-query latency over stores of 10k and 1M embeddings (synthetic: the archive's real embeddings plus
   noise, so they keep the clustering of real ones), exact and FAISS IVF, one core, with recall@10 of IVF.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # search latency is quoted per core

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent




def maxrss_mb() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return me, kids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--model", default="cmrdx-phantom-small")
    ap.add_argument("--naive-n", type=int, default=40, help="studies the naive loop classifies (it is slow)")
    ap.add_argument("--out", default=str(HERE / "results" / "batch.md"))
    ap.add_argument("--archive", default=None, help="an existing phantom archive to use instead of writing one")
    ap.add_argument("--cli-n", type=int, default=8, help="studies the per-study `cmrdx classify` command loop runs")
    args = ap.parse_args()

    from cmrdx.model.loader import get_encoder, model_sha256
    from cmrdx.pipeline.batch import BatchOptions, read_results, run_batch
    from cmrdx.pipeline.classify import classify
    from cmrdx.pipeline.search import Store, build_store
    from cmrdx.synth.archive import write_archive

    arch = Path(args.archive) if args.archive else ROOT / "bench" / "out" / f"archive{args.n}"
    if not (arch / "labels.csv").is_file():
        shutil.rmtree(arch, ignore_errors=True)
        t = time.perf_counter()
        write_archive(arch, n=args.n, seed=2026, prevalence=0.3, workers=2)
        print(f"archive written in {time.perf_counter() - t:.0f} s")
    studies = sorted(p for p in arch.iterdir() if p.is_dir())
    enc = get_encoder(args.model, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        # naive: one classify call per study, sequential (model and prompt embeddings cached in-process)
        classify(studies[0], model=args.model, device="cpu")  # warm-up: load, prompt cache
        t0 = time.perf_counter()
        for s in studies[: args.naive_n]:
            classify(s, model=args.model, device="cpu")
        naive_rate = args.naive_n / (time.perf_counter() - t0)
        # the most naive: the `cmrdx classify` command per study (a process, model load and imports each time)
        import subprocess

        t0 = time.perf_counter()
        for s in studies[: args.cli_n]:
            subprocess.run([sys.executable, "-m", "cmrdx", "classify", str(s), "--model", args.model, "--device", "cpu",
                            "--json"], capture_output=True, check=True)
        cli_rate = args.cli_n / (time.perf_counter() - t0)
        out = Path(tmp) / "results.parquet"
        s = run_batch(arch, out, BatchOptions(model=args.model, device="cpu"))
        batch_rate = s.ok / s.seconds
        rows = read_results(out)
        me, kids = maxrss_mb()
        with np.load(out.with_name("results.embeddings.npz")) as z:
            real = z["embedding"]
        # search latency
        rng = np.random.default_rng(0)
        lat_rows = []
        sha = model_sha256(enc.manifest)
        q = enc.encode_texts(["Moderately dilated left ventricle with reduced systolic function"])[0]
        for n in (10_000, 1_000_000):
            base = real[rng.integers(0, len(real), n)]
            emb = base + 0.05 * rng.standard_normal(base.shape).astype(np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            for kind in ("exact", "ivf"):
                db = Path(tmp) / f"db{n}{kind}"
                t = time.perf_counter()
                build_store(db, [str(i) for i in range(n)], ["-"] * n, emb, enc.manifest.name, sha, ann=kind)
                build_s = time.perf_counter() - t
                store = Store(db)
                store.search_vector(q, 10)
                times = []
                for _ in range(7):
                    t = time.perf_counter()
                    store.search_vector(q, 10)
                    times.append(time.perf_counter() - t)
                recall = ""
                if kind == "ivf":
                    rec = []
                    for _i in range(20):
                        qq = emb[rng.integers(0, n)]
                        ex = {h.study_uid for h in store.search_vector(qq, 10, exact=True)}
                        ap_ = {h.study_uid for h in store.search_vector(qq, 10)}
                        rec.append(len(ex & ap_) / 10)
                    recall = f"{np.mean(rec):.3f}"
                lat_rows.append((n, kind, statistics.median(times) * 1000, build_s, recall))
                shutil.rmtree(db)
    ok = sum(r["status"] == "ok" for r in rows)
    text = [
        "## Archive throughput and search",
        "",
        f"Command: `.venv/bin/python bench/bench_batch.py --n {args.n} --model {args.model}` · {cpu_name()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}.",
        "",
        f"Archive: {len(studies)} phantom studies ({arch.name}), model {args.model}, CPU.",
        "",
        "| run | studies/s | notes |",
        "|---|---|---|",
        f"| `cmrdx classify` command per study ({args.cli_n} studies: a process each) | {cli_rate:.2f} | {cli_rate / naive_rate:.2f}x |",
        f"| naive loop: `cmrdx.pipeline.classify` per study in one process ({args.naive_n} studies, model cached) | {naive_rate:.2f} | 1.00x |",
        f"| `cmrdx batch` (local engine, {os.cpu_count()} reader processes + the encoder) | {batch_rate:.2f} | "
        f"**{batch_rate / naive_rate:.2f}x**; {ok}/{len(rows)} ok; reading {s.prepare_seconds:.0f} s (summed over workers), "
        f"encoding {s.encode_seconds:.0f} s, wall {s.seconds:.0f} s incl. discovery |",
        "",
        f"Peak memory (max RSS): this process {me:.0f} MB, largest child {kids:.0f} MB.",
        "",
        "| store | search | median latency per text query (1 core) | build s | recall@10 vs exact |",
        "|---|---|---|---|---|",
        *[f"| {n:,} | {kind} | {ms:.1f} ms | {b:.1f} | {rc or '1 (exact)'} |" for n, kind, ms, b, rc in lat_rows],
        "",
        "Synthetic stores: the archive's real embeddings resampled with noise (sd 0.05) and re-normalised.",
        "",
    ]
    Path(args.out).write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    sys.exit(main())
