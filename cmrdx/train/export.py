"""Export a CMRClip torch model to a cmrdx model folder (ONNX + tokenizer + manifest) and prove the export.

Folder contents: ``video.onnx`` (float32, dynamic batch), ``video.fp16.onnx`` (float16 weights and compute,
float32 inputs/outputs, for the CUDA provider), optionally ``video.int8.onnx`` (dynamic int8 quantisation
of the MatMul weights, for the CPU provider), ``text.onnx`` (dynamic batch and length), ``tokenizer.json``,
``manifest.json``. The export is checked against torch on fresh random inputs; past tolerance it raises
ExportError and the manifest is not written.

The video tower is exported with the dynamo exporter at opset 23, where ``scaled_dot_product_attention``
becomes the fused ONNX ``Attention`` op (faster on onnxruntime's CPU provider than the einsum form).

Memory: the towers are exported one at a time (``ModelParts``: the import builds each from the memory-mapped
checkpoint when it is needed and drops it after), the torch reference outputs of the checks are computed while a
tower is alive and kept as arrays, and the ONNX files are checked one session at a time; so the peak is about one
tower and one of its ONNX copies, not the whole model several times over.

After the manifest, the int8 copy is validated on real-looking studies (``cmrdx.model.validate``; the record goes
into the manifest, outside the model's identity), which also saves onnxruntime's optimised graphs of the CPU
files (``cmrdx.model.optcache``), so the model's first use starts as fast as the later ones.
"""

from __future__ import annotations

import datetime as _dt
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmrdx.config import cpu_count
from cmrdx.model.manifest import sha256_file, write_manifest
from cmrdx.model.validate import release_memory
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
    validate_int8: bool = True  # measure the int8 copy on real-looking studies and record it (cmrdx.model.validate)
    validate_phantoms: int = 3  # phantom studies for that (plus the example study in a checkout)
    save_graphs: bool = True  # save onnxruntime's optimised graphs of the CPU files (cmrdx.model.optcache)


# progress(message): a stage of the export starts
Stage = Callable[[str], None]


class ModelParts:
    """How an export gets its towers: ``video()`` and ``text()`` each return a CMRClip whose video (resp. text)
    tower holds the weights; ``done(part)`` is told when the export no longer needs it. This one hands out a
    model that is already built (and keeps it: it is the caller's); the checkpoint import hands out each tower
    built from the memory-mapped checkpoint and drops it when done."""

    split_in_place = False  # export_video may split the video tower's attention in place (no copy)
    # run each tower's torch work (export + reference outputs) in a process of its own: the ONNX exporter's
    # optimiser keeps the last graph it rewrote, weights included, for the life of the process
    isolated = False

    def __init__(self, model: CMRClip | None = None):
        self.model = model

    @property
    def cfg(self) -> Any:
        assert self.model is not None
        return self.model.cfg

    def video(self) -> CMRClip:
        assert self.model is not None
        return self.model

    def text(self) -> CMRClip:
        assert self.model is not None
        return self.model

    def done(self, part: str) -> None:
        pass


def video_stage(parts: ModelParts, path: Path, opt: ExportOptions, batch: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The torch side of the video tower: export it to ``path`` and run it on ``batch`` check inputs; returns
    (inputs, torch outputs) for ``check_video_outputs``."""
    vm = parts.video().eval().set_attention_impl("sdpa")
    export_video(vm, path, opset=opt.opset, dynamo=opt.dynamo, split_in_place=parts.split_in_place)
    return video_reference(vm, batch=batch, seed=opt.seed)


def text_stage(parts: ModelParts, path: Path, opt: ExportOptions) -> dict[str, Any]:
    """The torch side of the text tower: export it to ``path`` and check the file against torch."""
    tm = parts.text().eval()
    export_text(tm, path, opset=opt.opset, dynamo=opt.dynamo)
    return check_text(tm, path, seed=opt.seed)


def _caught(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """``fn(*args)`` in a child process: its result, or the error as plain data (cmrdx errors keep their type)."""
    try:
        return "ok", fn(*args)
    except ExportError as exc:
        return "export", str(exc)
    except Exception as exc:  # noqa: BLE001 - handed back to the parent, which raises it
        from cmrdx.errors import CmrdxError

        if isinstance(exc, CmrdxError):
            return "cmrdx", (type(exc).__module__, type(exc).__name__, exc.message, exc.hint)
        return "other", f"{type(exc).__name__}: {exc}"


def run_stage(parts: ModelParts, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(parts, *args)``, in a spawned process when ``parts.isolated`` (everything the libraries keep goes when
    it exits), else here."""
    if not parts.isolated:
        return fn(parts, *args)
    import importlib
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
        kind, value = ex.submit(_caught, fn, parts, *args).result()
    if kind == "ok":
        return value
    if kind == "export":
        raise ExportError(value)
    if kind == "cmrdx":
        mod, name, message, hint = value
        raise getattr(importlib.import_module(mod), name)(message, hint=hint)
    raise RuntimeError(f"the export process failed: {value}")


@dataclass
class ExportReport:
    files: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- ONNX export


MAIN_OUTPUT = "main_embedding"


def video_outputs(model: CMRClip) -> list[str]:
    """The video file's outputs: ``embedding``, and for a model with a finding stream ``main_embedding`` (the
    main paths' embedding before the stream turned it: what distances between studies use)."""
    return ["embedding"] + ([MAIN_OUTPUT] if model.finding_stream is not None else [])


def export_video(model: CMRClip, path: Path, *, frames: int | None = None, opset: int = 23, dynamo: bool = True,
                 split_in_place: bool = False) -> Path:
    """Write the video tower: input ``video`` (B, F, 3, S, S) float32 -> ``embedding`` (B, D) float32
    (projected, not normalised), and with a finding stream ``main_embedding`` (B, D) too (``video_outputs``).
    Batch is dynamic; frames and size are fixed. ``split_in_place``: split the
    attention projections of ``model`` itself rather than of a copy (``model``'s state dict then no longer has
    the checkpoint layout: for a model that is dropped after the export)."""
    cfg = model.cfg.video
    f = frames or model.input_frames
    outputs = video_outputs(model)
    if dynamo and split_in_place:
        from cmrdx.train.model import DividedAttention

        for m in model.video_model.modules():
            if isinstance(m, DividedAttention) and hasattr(m, "qkv"):
                m.split_qkv()
        tower = VideoTower(model, split=False).eval()
    else:
        tower = VideoTower(model, split=dynamo).eval()
    dummy = torch.randn(2, f, cfg.in_chans, cfg.img_size, cfg.img_size)
    path = Path(path)
    with torch.no_grad():
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            prog = torch.onnx.export(
                tower, (dummy,), dynamo=True, opset_version=opset, input_names=["video"],
                output_names=outputs, dynamic_shapes={"video": {0: batch}}, verbose=False,
            )
            if prog is None:  # torch returns None only for dynamo=False
                raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNXProgram")
            prog.optimize()
            prog.save(str(path), external_data=False)
        else:
            torch.onnx.export(
                tower, (dummy,), str(path), dynamo=False, opset_version=min(opset, 17), input_names=["video"],
                output_names=outputs, dynamic_axes={"video": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
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
    keep = stream_nodes(m)
    with tempfile.TemporaryDirectory(dir=Path(dst).parent) as tmp:  # beside dst: a big file stays on its disk
        bare = Path(tmp) / "bare.onnx"
        onnx.save(m, str(bare))
        del m  # the quantizer reads the file: one copy of the float model in memory, not two
        release_memory()
        quantize_dynamic(str(bare), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         per_channel=False, nodes_to_exclude=keep)
    return dst


def stream_nodes(m: Any) -> list[str]:
    """The MatMul / Gemm nodes of a finding stream (their weights are ``finding_stream.*``), which int8 leaves in
    float32: the projection onto the held findings' prompts must stay exact for their scores to be the main
    paths' (rounded, it moved them by up to 0.004), and the stream's last layer is one small matrix."""
    names = [n.name for n in m.graph.node
             if n.op_type in ("MatMul", "Gemm") and any(i.startswith("finding_stream.") for i in n.input)]
    # the quantiser splits a Gemm into MatMul + Add before it reads the exclusions: name its MatMul too
    return names + [f"{n}_MatMul" for n in names]


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
    so.enable_cpu_mem_arena = False  # one run each: memory given back after it, not held for the next
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-12))


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def video_reference(model: CMRClip, *, batch: int = 2, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """(inputs, torch outputs in ``video_outputs`` order) for ``check_video_outputs``: ``batch`` fresh N(0, 1)
    studies through the video tower of ``model``."""
    cfg = model.cfg.video
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.input_frames, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)
    with torch.no_grad():
        model.eval()
        refs = [model.encode_video(x).numpy()]
        if model.finding_stream is not None:
            refs.append(model.encode_main(x).numpy())
    return x.numpy(), refs


def check_video(model: CMRClip, files: dict[str, Path], *, batch: int = 2, seed: int = 0) -> dict[str, Any]:
    """Compare each video file with torch on fresh N(0, 1) inputs. Returns the measured errors; raises
    ExportError past tolerance (float32 rel error <= 1e-4; float16 cosine >= 0.999; int8 cosine >= 0.99)."""
    x, ref = video_reference(model, batch=batch, seed=seed)
    return check_video_outputs(files, x, ref)


def check_video_outputs(files: dict[str, Path], xn: np.ndarray, ref: np.ndarray | list[np.ndarray]) -> dict[str, Any]:
    """``check_video`` against torch outputs computed beforehand (``video_reference``: one array per output, in
    ``video_outputs`` order; a bare array is the first), one onnxruntime session at a time. Every output is
    checked; the second's records are named ``video_*_main_*``."""
    refs = [ref] if isinstance(ref, np.ndarray) else list(ref)
    batch = len(xn)
    out: dict[str, Any] = {}
    for prec, path in files.items():
        n = batch if prec == "float32" else 1  # reduced precision is slow on CPU; one study suffices
        ys = _session(path).run(None, {"video": xn[:n]})
        release_memory()  # the session is gone: its weights too
        if len(ys) < len(refs):
            names = ", ".join(["embedding", MAIN_OUTPUT][: len(refs)])
            raise ExportError(f"{path.name}: {len(ys)} output(s), the model has {len(refs)} ({names})")
        for j, r in enumerate(refs):
            y, tag, what = ys[j], ("", "_main")[j], ("", " (main_embedding)")[j]
            if prec == "float32":
                err = rel_error(y, r[:n])
                out[f"video_float32{tag}_rel_error"] = err
                if not err <= FP32_RTOL:
                    raise ExportError(f"{path.name}{what}: float32 relative error {err:.2e} > {FP32_RTOL:.0e} against torch")
            else:
                cos = float(row_cosines(y, r[:n]).min())
                out[f"video_{prec}{tag}_min_cosine"] = cos
                need = FP16_MIN_COS if prec == "float16" else INT8_MIN_COS
                if not cos >= need:
                    raise ExportError(f"{path.name}{what}: {prec} cosine {cos:.5f} < {need} against torch float32")
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
    model: CMRClip | ModelParts,
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
    progress: Stage | None = None,
) -> ExportReport:
    """Export, prove, and write the manifest last (a folder without a manifest is an unfinished export); then
    validate the int8 copy and save the optimised graphs (``ExportOptions``). ``model``: a CMRClip, or the
    ModelParts that build its towers one at a time. ``progress(message)`` is told when each stage starts.

    Raises ExportError when a check fails; the failing file is left in ``out`` for inspection, without a
    manifest, so no registry lists it."""
    opt = options or ExportOptions()
    parts = model if isinstance(model, ModelParts) else ModelParts(model)
    stage: Stage = progress or (lambda _msg: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    rep = ExportReport()
    cfg = parts.cfg

    stage("exporting the video tower to ONNX and running it in torch (the reference for the checks)")
    video = out / "video.onnx"
    x, ref = run_stage(parts, video_stage, video, opt, check_batch(cfg, opt))
    parts.done("video")
    release_memory()
    vfiles: dict[str, Path] = {"float32": video}
    if opt.float16:
        stage("writing the float16 copy")
        vfiles["float16"] = to_float16(video, out / "video.fp16.onnx")
        release_memory()
    if opt.int8:
        stage("writing the int8 copy")
        vfiles["int8"] = to_int8(video, out / "video.int8.onnx")
        release_memory()
    stage("checking the video files against torch")
    rep.checks["video_attention_ops"] = count_ops(video).get("Attention", 0)
    release_memory()
    try:
        rep.checks.update(check_video_outputs(vfiles, x, ref))
    except ExportError as exc:
        if "int8" in vfiles and str(exc).startswith("video.int8.onnx"):
            # int8 is an optional speed variant: drop it rather than fail the import, and say so.
            rep.notes.append(f"int8 variant dropped: {exc}")
            vfiles.pop("int8").unlink()
            rep.checks.update(check_video_outputs(vfiles, x, ref))
        else:
            raise
    del x, ref

    stage("exporting the text tower to ONNX and checking it against torch")
    text = out / "text.onnx"
    rep.checks.update(run_stage(parts, text_stage, text, opt))
    parts.done("text")
    release_memory()

    tk, pad_id = build_tokenizer(vocab_path, lowercase=lowercase, max_length=max_length)
    tk.save(str(out / "tokenizer.json"))

    files = [p.name for p in vfiles.values()] + [text.name, "tokenizer.json"]
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
            **({"main_output": MAIN_OUTPUT} if cfg.finding_stream is not None else {}),
            "frames": cfg.input_frames,
            "image_size": cfg.video.img_size,
        },
        "text": {"file": text.name, "inputs": ["input_ids", "attention_mask"], "output": "embedding"},
        "tokenizer": {"file": "tokenizer.json", "kind": "bert-wordpiece", "lowercase": lowercase,
                      "max_length": max_length, "pad_id": pad_id, "vocab_sha256": sha256_file(vocab_path)},
        "recipe": recipe,
        "provenance": prov,
        "licence": licence,
    }
    m = write_manifest(out, manifest, files)
    rep.files = files + ["manifest.json"]
    _after_manifest(m, vfiles, opt, rep, stage)
    return rep


BIG_STUDY_TOKENS = 4096


def check_batch(cfg: Any, opt: ExportOptions) -> int:
    """Studies in the float32 check against torch: ``opt.check_batch`` (two exercise the dynamic batch), but one
    for a model whose study is more than BIG_STUDY_TOKENS patches (a full-size CMR-CLIP: 64 x 196): the dynamic
    batch comes from the same export code, proven on every smaller model, and a second study would double the
    check's time and memory."""
    tokens = cfg.video.num_frames * cfg.video.patches_per_frame
    return 1 if tokens > BIG_STUDY_TOKENS else opt.check_batch


def _after_manifest(m: Any, vfiles: dict[str, Path], opt: ExportOptions, rep: ExportReport, stage: Stage) -> None:
    """The int8 validation (recorded in the manifest) and the saved optimised graphs. Neither is part of the
    model: a failure here is a note, never a failed export."""
    from cmrdx.errors import CmrdxError
    from cmrdx.model.encoder import Encoder

    if "int8" in vfiles and opt.validate_int8:
        from cmrdx.model.validate import validate_int8

        stage("validating the int8 copy on real-looking studies")
        try:
            rec = validate_int8(m, phantoms=opt.validate_phantoms, progress=lambda s: stage(f"validating int8: {s}"))
        except CmrdxError as exc:
            rep.notes.append(f"int8 copy not validated: {exc}")
        else:
            rep.checks["int8_validation"] = rec["status"]
            rep.checks["int8_min_cosine"] = rec["min_cosine"]
            if "relative_shift" in rec:
                rep.checks["int8_relative_shift"] = rec["relative_shift"]
            if rec["reasons"]:
                rep.notes.append("int8 copy not validated for the CPU (`precision auto` keeps float32): "
                                 + "; ".join(rec["reasons"]))
        release_memory()
    if opt.save_graphs:  # validation loaded (and so saved) float32 and int8; whatever is left, now
        for prec in ("float32", "int8"):
            if prec in vfiles and vfiles[prec].name not in _saved(m):
                stage(f"saving the optimised graph of the {prec} file")
                Encoder(manifest=m, device="cpu", precision=prec, saved_graphs=True)
                release_memory()


def _saved(m: Any) -> set[str]:
    """The model files that have a saved optimised graph for this onnxruntime and CPU."""
    import onnxruntime as ort

    from cmrdx.model import optcache

    return {rel for rel, info in m.files.items()
            if optcache.find(m, rel, optcache.GraphKey(str(info.get("sha256")), ort.__version__, "cpu")) is not None}
