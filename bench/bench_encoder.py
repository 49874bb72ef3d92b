"""CPU benchmark of the video encoder: cmrdx's onnxruntime export against a reference-style torch forward.

Full-size CMR-CLIP video encoder (width 768, depth 12, heads 12, patch 16, 224x224) with random weights,
at 16 frames (default), one study per call. In the same process, round-robin (so machine noise hits every
variant alike), median over repeats after warm-up:

* torch eager float32, attention written like the reference (einsum): the baseline;
* torch eager float32 with SDPA (cmrdx's torch model), for information;
* onnxruntime float32, dynamo export at opset 23 (fused Attention ops): cmrdx's CPU model;
* onnxruntime float32, legacy TorchScript export (opset 17), for information;
* onnxruntime int8 (dynamic quantisation of the dynamo export), with its embedding cosine against float32.

Usage: PYTHONPATH=. .venv/bin/python bench/bench_encoder.py [--frames 16] [--repeats 5] [--out bench/results/encoder.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name as cpu_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-legacy", action="store_true", help="skip the legacy-exporter variant")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from cmrdx.config import cpu_count
    from cmrdx.train.export import count_ops, export_video, rel_error, row_cosines, to_int8
    from cmrdx.train.model import CMRClip, CMRClipConfig, TextConfig, VideoConfig

    cores = cpu_count()
    torch.set_num_threads(cores)
    torch.manual_seed(0)
    cfg = CMRClipConfig(
        video=VideoConfig(num_frames=args.frames),
        # the text tower is not benchmarked here: keep it tiny
        text=TextConfig(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=1, intermediate_size=64),
    )
    model = CMRClip(cfg).eval()
    x = torch.randn(1, args.frames, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    xn = x.numpy()

    tmp = Path(tempfile.mkdtemp(prefix="cmrdx-bench-"))
    t0 = time.perf_counter()
    dyn = export_video(model, tmp / "video.onnx", dynamo=True, opset=23)
    t_export = time.perf_counter() - t0
    int8 = to_int8(dyn, tmp / "video.int8.onnx")
    legacy = None if args.no_legacy else export_video(model, tmp / "video.legacy.onnx", dynamo=False)
    n_attn = count_ops(dyn).get("Attention", 0)

    def session(p: Path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = cores
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])

    s_dyn, s_int8 = session(dyn), session(int8)
    s_leg = session(legacy) if legacy else None

    def torch_einsum():
        model.set_attention_impl("einsum")
        with torch.no_grad():
            return model.encode_video(x).numpy()

    def torch_sdpa():
        model.set_attention_impl("sdpa")
        with torch.no_grad():
            return model.encode_video(x).numpy()

    variants = {
        "torch eager float32, einsum attention (reference-style)": torch_einsum,
        "torch eager float32, SDPA": torch_sdpa,
        "onnxruntime float32, dynamo opset 23 (cmrdx)": lambda: s_dyn.run(None, {"video": xn})[0],
        "onnxruntime int8 dynamic quantisation (cmrdx)": lambda: s_int8.run(None, {"video": xn})[0],
    }
    if s_leg is not None:
        variants["onnxruntime float32, legacy export opset 17"] = lambda: s_leg.run(None, {"video": xn})[0]

    load_before = os.getloadavg()[0]
    outs = {k: f() for k, f in variants.items()}  # also the first warm-up
    for _ in range(args.warmup - 1):
        for f in variants.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.repeats):
        for k, f in variants.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{v[-1]:.2f}s" for v in times.values()), file=sys.stderr)

    base_key = "torch eager float32, einsum attention (reference-style)"
    ref = outs[base_key]
    fp32 = outs["onnxruntime float32, dynamo opset 23 (cmrdx)"]
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for k in variants:
        if k == base_key:
            acc = "baseline"
        elif "int8" in k:
            acc = f"cosine vs ORT float32 {float(row_cosines(outs[k], fp32).min()):.4f}"
        else:
            acc = f"rel. error vs baseline {rel_error(outs[k], ref):.1e}"
        rows.append((k, med[k], med[base_key] / med[k], acc))

    cmd = "PYTHONPATH=. .venv/bin/python bench/bench_encoder.py " + " ".join(sys.argv[1:])
    lines = [
        "# Video encoder, CPU",
        "",
        f"Machine: {cpu_model()}, {cores} cores available; torch {torch.__version__}, onnxruntime {ort.__version__}.",
        f"Model: CMR-CLIP video encoder, full size (ViT-B/16 divided space-time, 224x224), random weights, "
        f"{args.frames} frames, batch 1; dynamo export has {n_attn} fused Attention ops (export took {t_export:.0f} s).",
        f"Median of {args.repeats} repeats after {args.warmup} warm-up, variants interleaved in one process; "
        f"1-min load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after the timed runs.",
        "",
        "| variant | s / study | speed-up vs reference-style torch | accuracy |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {k} | {m:.2f} | {r:.2f}x | {a} |" for k, m, r, a in rows]
    lines += ["", f"Command: `{cmd.strip()}`", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
