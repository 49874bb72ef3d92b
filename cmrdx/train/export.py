"""Export a CMRClip torch model to a cmrdx model folder (ONNX + tokenizer + manifest) and prove the export.

Folder contents: ``video.onnx`` (float32, dynamic batch), ``video.fp16.onnx`` (float16 weights and compute,
float32 inputs/outputs, for the CUDA provider), optionally ``video.int8.onnx`` (dynamic int8 quantisation
of the MatMul weights, for the CPU provider), ``text.onnx`` (dynamic batch and length), ``tokenizer.json``,
``manifest.json``. The export is checked against torch on fresh random inputs; past tolerance it raises
ExportError and the manifest is not written.

The video tower is exported with the dynamo exporter at opset 23, where ``scaled_dot_product_attention``
becomes the fused ONNX ``Attention`` op (faster on onnxruntime's CPU provider than the einsum form).
"""

from __future__ import annotations

import datetime as _dt
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmrdx.config import cpu_count
from cmrdx.model.manifest import sha256_file, write_manifest
from cmrdx.train.model import CMRClip, TextTower, VideoTower

log = logging.getLogger(__name__)

FP32_RTOL = 1e-4  # max |onnx - torch| / max |torch|
FP16_MIN_COS = 0.999
INT8_MIN_COS = 0.99


class ExportError(RuntimeError):
    """The exported model does not reproduce torch within tolerance."""


@dataclass
class ExportOptions:
    opset: int = 23
    dynamo: bool = True
    float16: bool = True
    int8: bool = True
    check_batch: int = 2  # random studies compared in float32 (>1 exercises the dynamic batch)
    seed: int = 1234


@dataclass
class ExportReport:
    files: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- ONNX export


def export_video(model: CMRClip, path: Path, *, frames: int | None = None, opset: int = 23, dynamo: bool = True) -> Path:
    """Write the video tower: input ``video`` (B, F, 3, S, S) float32 -> ``embedding`` (B, D) float32
    (projected, not normalised). Batch is dynamic; frames and size are fixed."""
    cfg = model.cfg.video
    f = frames or cfg.num_frames
    tower = VideoTower(model, split=dynamo).eval()
    dummy = torch.randn(2, f, cfg.in_chans, cfg.img_size, cfg.img_size)
    path = Path(path)
    with torch.no_grad():
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            prog = torch.onnx.export(
                tower, (dummy,), dynamo=True, opset_version=opset, input_names=["video"],
                output_names=["embedding"], dynamic_shapes={"video": {0: batch}}, verbose=False,
            )
            if prog is None:  # torch returns None only for dynamo=False
                raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNXProgram")
            prog.optimize()
            prog.save(str(path), external_data=False)
        else:
            torch.onnx.export(
                tower, (dummy,), str(path), dynamo=False, opset_version=min(opset, 17), input_names=["video"],
                output_names=["embedding"], dynamic_axes={"video": {0: "batch"}, "embedding": {0: "batch"}},
            )
    return path


def export_text(model: CMRClip, path: Path, *, opset: int = 23, dynamo: bool = True) -> Path:
    """Write the text tower: ``input_ids``, ``attention_mask`` (N, L) int64 -> ``embedding`` (N, D) float32
    (masked mean pooling + projection, not normalised). Batch and length are dynamic."""
    tower = TextTower(model).eval()
    ids = torch.randint(5, model.cfg.text.vocab_size, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    path = Path(path)
    with torch.no_grad():
        if dynamo:
            n = torch.export.Dim("batch", min=1, max=4096)
            length = torch.export.Dim("length", min=2, max=model.cfg.text.max_position_embeddings)
            prog = torch.onnx.export(
                tower, (ids, mask), dynamo=True, opset_version=opset, input_names=["input_ids", "attention_mask"],
                output_names=["embedding"], dynamic_shapes={"input_ids": {0: n, 1: length}, "attention_mask": {0: n, 1: length}},
                verbose=False,
            )
            if prog is None:  # torch returns None only for dynamo=False
                raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNXProgram")
            prog.optimize()
            prog.save(str(path), external_data=False)
        else:
            torch.onnx.export(
                tower, (ids, mask), str(path), dynamo=False, opset_version=min(opset, 17),
                input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                dynamic_axes={"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
                              "embedding": {0: "batch"}},
            )
    return path


def to_float16(src: Path, dst: Path) -> Path:
    """float16 weights and compute, float32 graph inputs/outputs (``keep_io_types``)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = onnx.load(str(src))
    m16 = convert_float_to_float16(m, keep_io_types=True, disable_shape_infer=False)
    onnx.save(m16, str(dst))
    return dst


def to_int8(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantisation of MatMul/Gemm weights (activations quantised at run time). The patch
    convolution stays float32: ConvInteger is slower than float Conv on onnxruntime's CPU provider."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer re-runs ONNX shape inference, which disagrees with some shapes the dynamo exporter
    # recorded around fused Attention; dropping the recorded intermediate shapes lets it infer its own.
    m = onnx.load(str(src))
    del m.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / "bare.onnx"
        onnx.save(m, str(bare))
        quantize_dynamic(str(bare), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         per_channel=False)
    return dst


def count_ops(path: Path) -> dict[str, int]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    out: dict[str, int] = {}
    for n in m.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


# ---------------------------------------------------------------- proving the export


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or cpu_count()
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-12))


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def check_video(model: CMRClip, files: dict[str, Path], *, batch: int = 2, seed: int = 0) -> dict[str, Any]:
    """Compare each video file with torch on fresh N(0, 1) inputs. Returns the measured errors; raises
    ExportError past tolerance (float32 rel error <= 1e-4; float16 cosine >= 0.999; int8 cosine >= 0.99)."""
    cfg = model.cfg.video
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.num_frames, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)
    with torch.no_grad():
        ref = model.eval().encode_video(x).numpy()
    out: dict[str, Any] = {}
    xn = x.numpy()
    for prec, path in files.items():
        n = batch if prec == "float32" else 1  # reduced precision is slow on CPU; one study suffices
        y = _session(path).run(None, {"video": xn[:n]})[0]
        if prec == "float32":
            err = rel_error(y, ref[:n])
            out["video_float32_rel_error"] = err
            if not err <= FP32_RTOL:
                raise ExportError(f"{path.name}: float32 relative error {err:.2e} > {FP32_RTOL:.0e} against torch")
        else:
            cos = float(row_cosines(y, ref[:n]).min())
            out[f"video_{prec}_min_cosine"] = cos
            need = FP16_MIN_COS if prec == "float16" else INT8_MIN_COS
            if not cos >= need:
                raise ExportError(f"{path.name}: {prec} cosine {cos:.5f} < {need} against torch float32")
    return out


def check_text(model: CMRClip, path: Path, *, seed: int = 0) -> dict[str, Any]:
    """Varied batch sizes and lengths with padding; float32 rel error <= 1e-4 or ExportError."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    sess = _session(path)
    for n, length in ((1, 4), (3, 17), (5, 40)):
        ids = torch.randint(5, model.cfg.text.vocab_size, (n, length), generator=g)
        mask = torch.ones_like(ids)
        for i in range(1, n):  # ragged: later rows padded
            mask[i, length - (i * length) // (n + 1):] = 0
            ids[i, length - (i * length) // (n + 1):] = 0
        with torch.no_grad():
            ref = model.eval().encode_text(ids, mask).numpy()
        y = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        worst = max(worst, rel_error(y, ref))
    if not worst <= FP32_RTOL:
        raise ExportError(f"{path.name}: text relative error {worst:.2e} > {FP32_RTOL:.0e} against torch")
    return {"text_float32_rel_error": worst}


# ---------------------------------------------------------------- tokenizer


def build_tokenizer(vocab_path: Path, *, lowercase: bool, max_length: int):
    """A BERT WordPiece ``tokenizers.Tokenizer`` from vocab.txt, equal to transformers' BertTokenizer with
    ``do_lower_case=lowercase`` (which also strips accents when lower-casing)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab: dict[str, int] = {}
    with open(vocab_path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            tok = line.rstrip("\n")
            if tok and tok not in vocab:
                vocab[tok] = i
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
        if special not in vocab:
            raise ValueError(f"{vocab_path} lacks the special token {special}")
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tk.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tk.decoder = decoders.WordPiece(prefix="##")
    tk.enable_truncation(max_length)
    tk.enable_padding(pad_id=vocab["[PAD]"], pad_token="[PAD]")
    return tk, vocab["[PAD]"]


# ---------------------------------------------------------------- the whole folder


def export_model_folder(
    model: CMRClip,
    out: Path,
    *,
    vocab_path: Path,
    name: str,
    version: str,
    recipe: dict[str, Any],
    lowercase: bool = True,
    max_length: int = 512,
    provenance: dict[str, Any] | None = None,
    licence: str = "",
    options: ExportOptions | None = None,
) -> ExportReport:
    """Export, prove, and write the manifest last (a folder without a manifest is an unfinished export).

    Raises ExportError when a check fails; the failing file is left in ``out`` for inspection, without a
    manifest, so no registry lists it."""
    opt = options or ExportOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    model = model.eval().set_attention_impl("sdpa")
    rep = ExportReport()

    video = export_video(model, out / "video.onnx", opset=opt.opset, dynamo=opt.dynamo)
    text = export_text(model, out / "text.onnx", opset=opt.opset, dynamo=opt.dynamo)
    vfiles: dict[str, Path] = {"float32": video}
    if opt.float16:
        vfiles["float16"] = to_float16(video, out / "video.fp16.onnx")
    if opt.int8:
        vfiles["int8"] = to_int8(video, out / "video.int8.onnx")
    ops = count_ops(video)
    rep.checks["video_attention_ops"] = ops.get("Attention", 0)
    rep.checks.update(check_text(model, text, seed=opt.seed))
    try:
        rep.checks.update(check_video(model, vfiles, batch=opt.check_batch, seed=opt.seed))
    except ExportError as exc:
        if "int8" in vfiles and str(exc).startswith("video.int8.onnx"):
            # int8 is an optional speed variant: drop it rather than fail the import, and say so.
            rep.notes.append(f"int8 variant dropped: {exc}")
            vfiles.pop("int8").unlink()
            rep.checks.update(check_video(model, vfiles, batch=opt.check_batch, seed=opt.seed))
        else:
            raise

    tk, pad_id = build_tokenizer(vocab_path, lowercase=lowercase, max_length=max_length)
    tk.save(str(out / "tokenizer.json"))

    files = [p.name for p in vfiles.values()] + [text.name, "tokenizer.json"]
    cfg = model.cfg
    prov = dict(provenance or {})
    prov.update(
        exported=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        exporter=f"torch {torch.__version__} ({'dynamo' if opt.dynamo else 'legacy'}, opset {opt.opset if opt.dynamo else min(opt.opset, 17)})",
        architecture=cfg.to_dict(),
        checks=rep.checks,
        notes=rep.notes,
    )
    manifest = {
        "name": name,
        "version": version,
        "embedding_dim": cfg.projection_dim,
        "video": {
            **{prec: p.name for prec, p in vfiles.items()},
            "input": "video",
            "output": "embedding",
            "frames": cfg.video.num_frames,
            "image_size": cfg.video.img_size,
        },
        "text": {"file": text.name, "inputs": ["input_ids", "attention_mask"], "output": "embedding"},
        "tokenizer": {"file": "tokenizer.json", "kind": "bert-wordpiece", "lowercase": lowercase,
                      "max_length": max_length, "pad_id": pad_id, "vocab_sha256": sha256_file(vocab_path)},
        "recipe": recipe,
        "provenance": prov,
        "licence": licence,
    }
    write_manifest(out, manifest, files)
    rep.files = files + ["manifest.json"]
    return rep
