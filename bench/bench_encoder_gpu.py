"""GPU benchmark of the video encoder (for a session that has a GPU; not run on the CPU-only machine).

Full-size CMR-CLIP video encoder (ViT-B/16 divided space-time, 224x224) at 64 frames with random weights.
In one process and one run, on the same GPU:

* torch eager float32, reference-style einsum attention (the baseline; TF32 off, as the reference ran);
* onnxruntime CUDA provider, float32 (cmrdx export, dynamo opset 23, fused Attention);
* onnxruntime CUDA provider, float16 (``video.fp16.onnx``, float32 I/O).

Reports ms/study and studies/s per variant at the given batch size, the ratio to the baseline, the GPU name,
the providers each session really uses (CPU fallback is disabled: a node CUDA cannot run is an error), and
the float16 embedding cosine against float32.

Usage (repository root, CUDA torch + onnxruntime-gpu installed):
    PYTHONPATH=. python bench/bench_encoder_gpu.py --batch 8 --repeats 10 [--onnx-dir DIR] [--out bench/results/encoder_gpu.md]
``--onnx-dir`` reuses video.onnx / video.fp16.onnx exported elsewhere (same --seed gives the same weights).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--onnx-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from cmrdx.train.export import count_ops, export_video, row_cosines, to_float16
    from cmrdx.train.model import CMRClip, CMRClipConfig, TextConfig, VideoConfig

    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch")
    gpu = torch.cuda.get_device_name(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(args.seed)
    cfg = CMRClipConfig(
        video=VideoConfig(num_frames=args.frames),
        text=TextConfig(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=1, intermediate_size=64),
    )
    model = CMRClip(cfg).eval()

    d = args.onnx_dir or Path(tempfile.mkdtemp(prefix="cmrdx-gpu-bench-"))
    f32, f16 = d / "video.onnx", d / "video.fp16.onnx"
    if not f32.exists():
        export_video(model, f32)
    if not f16.exists():
        to_float16(f32, f16)
    n_attn = count_ops(f32).get("Attention", 0)

    try:
        ort.preload_dlls()
    except Exception as exc:  # noqa: BLE001
        print(f"preload_dlls: {exc}", file=sys.stderr)

    def session(p: Path):
        so = ort.SessionOptions()
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        s = ort.InferenceSession(str(p), so, providers=["CUDAExecutionProvider"])
        assert s.get_providers()[0] == "CUDAExecutionProvider", s.get_providers()
        return s

    s32, s16 = session(f32), session(f16)
    x = torch.randn(args.batch, args.frames, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    xn = x.numpy()
    xg = x.cuda()
    model_gpu = model.cuda().set_attention_impl("einsum")

    def bind_runner(s):
        # IOBinding with the input already on the GPU: no host copies per run
        io = s.io_binding()
        xo = ort.OrtValue.ortvalue_from_numpy(xn, "cuda", 0)
        io.bind_ortvalue_input("video", xo)
        io.bind_output("embedding", "cuda", 0)

        def run():
            s.run_with_iobinding(io)
            return io.get_outputs()[0].numpy()

        return run

    def torch_run():
        with torch.no_grad():
            y = model_gpu.encode_video(xg)
        torch.cuda.synchronize()
        return y.cpu().numpy()

    variants = {
        "torch eager float32, einsum attention (reference-style)": torch_run,
        "onnxruntime CUDA float32 (cmrdx)": bind_runner(s32),
        "onnxruntime CUDA float16 (cmrdx)": bind_runner(s16),
    }
    outs = {}
    for k, f in variants.items():
        for _ in range(args.warmup):
            outs[k] = f()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, f in variants.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    base = "torch eager float32, einsum attention (reference-style)"
    ref = outs[base]
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        "# Video encoder, GPU",
        "",
        f"GPU: {gpu}; torch {torch.__version__}, onnxruntime {ort.__version__}; {args.frames} frames, batch "
        f"{args.batch}, random weights; {n_attn} fused Attention ops; median of {args.repeats} after {args.warmup} warm-up.",
        "",
        "| variant | ms / study | studies / s | speed-up vs torch eager fp32 | cosine vs torch fp32 |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in variants:
        ms = 1000 * med[k] / args.batch
        cos = float(row_cosines(outs[k].astype(np.float32), ref).min())
        lines.append(f"| {k} | {ms:.1f} | {1000 / ms:.1f} | {med[base] / med[k]:.2f}x | {cos:.5f} |")
    lines += ["", "Command: `PYTHONPATH=. python bench/bench_encoder_gpu.py " + " ".join(sys.argv[1:]) + "`", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
