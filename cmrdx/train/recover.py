"""The torch weights of a model folder that cmrdx trained and exported, recovered from its float32 ONNX files.

Why: a model folder is what cmrdx ships (the bundled model holds ONNX files, a tokenizer and a manifest, not the
torch checkpoint it was exported from), and a new model warm-started from a shipped one must start from exactly
the weights users ran. The manifest's ``provenance.architecture`` gives the shapes; the ONNX exporter keeps each
weight as an initializer, under the state-dict name or as a transposed, split (the fused ``qkv`` projections) or
reshaped copy under a generated name.

How, without guessing at the exporter's naming: build a model of the same architecture with distinct random
values, export it with the same exporter (``export.export_video`` / ``export_text``), and find each of its
initializers among the random state dict (as is, transposed, one third of a ``qkv`` tensor, or reshaped). The
exporter is deterministic, so the folder's graph has the same initializer names: each of its values goes back to
the tensor it came from. Then the proof: the recovered model's embeddings of random videos and token ids equal
the folder's ONNX outputs (relative error below ``TOLERANCE``), or nothing is returned. Tensors the exported
towers do not use (BERT's pooler) keep a seeded initialisation and are listed.

torch is imported by this module: training code only.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

TOLERANCE = 1e-4  # relative error of the recovered towers' outputs against the folder's ONNX files
UNUSED_PREFIXES = ("text_model.pooler.",)  # not on the path of an exported tower


class RecoveryError(ValueError):
    """The folder's weights cannot be recovered (message names the folder and the reason)."""


@dataclass
class Recovered:
    state: dict[str, torch.Tensor]
    arch: dict[str, Any]  # CMRClipConfig.to_dict() of the folder's model
    checks: dict[str, float] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)


def architecture(folder: Path, provenance: dict[str, Any]) -> dict[str, Any]:
    """The folder's ``provenance.architecture`` as ``CMRClipConfig`` fields (RecoveryError if it has none)."""
    arch = provenance.get("architecture")
    if not isinstance(arch, dict) or "video" not in arch or "text" not in arch:
        raise RecoveryError(f"{folder}: its manifest records no provenance.architecture (a model exported by cmrdx "
                            "training records one)")
    if arch.get("finding_stream"):
        raise RecoveryError(f"{folder}: the model has a finding stream ({arch['finding_stream'].get('finding')}), "
                            "which is not recovered from ONNX files: start from the trained.pt of the run that made "
                            "it, or from the model it was added to")
    out = {"video": dict(arch["video"]), "text": dict(arch["text"]), "projection_dim": int(arch["projection_dim"]),
           "motion": None}
    if arch.get("motion"):
        out["motion"] = {k: (tuple(v) if k == "channels" else v) for k, v in arch["motion"].items()}
    return out


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The exporter's warnings and log lines concern the probe model, not the user's folder: kept off the
    terminal while it runs."""
    lg = logging.getLogger("torch.onnx")
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        lg.setLevel(level)


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _candidates(state: dict[str, torch.Tensor]) -> list[tuple[str, int | None, np.ndarray]]:
    out: list[tuple[str, int | None, np.ndarray]] = []
    for k, t in state.items():
        a = t.numpy()
        out.append((k, None, a))
        if k.endswith(("qkv.weight", "qkv.bias")):
            d = a.shape[0] // 3
            out.extend((k, i, a[i * d:(i + 1) * d]) for i in range(3))
    return out


def _match(arr: np.ndarray, cands: list[tuple[str, int | None, np.ndarray]]) -> tuple[str, int | None, bool] | None:
    for k, i, a in cands:
        if a.size != arr.size or a.size < 2:
            continue
        if np.array_equal(a.reshape(arr.shape), arr):
            return k, i, False
        if a.ndim == 2 and a.T.shape == arr.shape and np.array_equal(a.T, arr):
            return k, i, True
    return None


def recover(folder: str | Path, files: dict[str, str], provenance: dict[str, Any], *, seed: int = 0) -> Recovered:
    """Recover the torch state dict of the model in ``folder`` from its float32 files (``files``: ``video`` and
    ``text`` file names). RecoveryError when the architecture is unknown, a weight cannot be placed, or the
    recovered towers do not reproduce the folder's outputs."""
    import onnxruntime as ort

    from cmrdx.train.export import export_text, export_video
    from cmrdx.train.model import CMRClip, CMRClipConfig

    folder = Path(folder)
    arch = architecture(folder, provenance)
    try:
        cfg = CMRClipConfig.from_dict(arch)
    except (TypeError, ValueError) as exc:
        raise RecoveryError(f"{folder}: provenance.architecture is not one cmrdx builds ({exc})") from None
    gen = torch.Generator().manual_seed(seed)
    probe = CMRClip(cfg).eval()
    with torch.no_grad():  # distinct values everywhere, so that every initializer points at one tensor only
        for t in [*probe.parameters(), *(b for b in probe.buffers() if b.dtype.is_floating_point)]:
            t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
    base = {k: v.detach().clone() for k, v in probe.state_dict().items()}
    pieces: dict[tuple[str, int | None], np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="cmrdx-recover-") as tmp:
        with _quiet_export():
            mine = {"video": export_video(probe, Path(tmp) / "video.onnx"),
                    "text": export_text(probe, Path(tmp) / "text.onnx")}
        cands = _candidates(base)
        for tower, path in mine.items():
            theirs_path = folder / files[tower]
            try:
                theirs = _initializers(theirs_path)
            except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
                raise RecoveryError(f"{theirs_path}: not a readable ONNX file ({type(exc).__name__})") from None
            ours = _initializers(path)
            if set(ours) != set(theirs):
                raise RecoveryError(f"{theirs_path}: its graph is not the one this cmrdx exports for the recorded "
                                    f"architecture ({len(set(ours) ^ set(theirs))} initializers differ); recover it "
                                    "with the cmrdx version that exported it")
            for name, arr in ours.items():
                hit = _match(arr, cands)
                if hit is None:
                    continue  # constants the exporter made (shapes, scales)
                key, part, transposed = hit
                val = theirs[name]
                if val.shape != arr.shape:
                    raise RecoveryError(f"{theirs_path}: {name} has shape {val.shape}, the architecture gives {arr.shape}")
                pieces.setdefault((key, part), np.ascontiguousarray(val.T if transposed else val))
    state: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for k, t in base.items():
        if (k, None) in pieces:
            state[k] = torch.from_numpy(pieces[(k, None)].reshape(t.shape).copy()).to(t.dtype)
        elif all((k, i) in pieces for i in range(3)):
            state[k] = torch.from_numpy(np.concatenate([pieces[(k, i)] for i in range(3)]).reshape(t.shape)).to(t.dtype)
        elif k.startswith(UNUSED_PREFIXES) or not t.dtype.is_floating_point:
            unused.append(k)
        else:
            raise RecoveryError(f"{folder}: no weight of the ONNX files is {k}: the folder was not exported from the "
                                "architecture its manifest records")
    fresh = CMRClip(cfg)  # seeded by the caller's torch seed: the unused tensors' initialisation
    for k in unused:
        state[k] = fresh.state_dict()[k].detach().clone()
    model = CMRClip(cfg).eval()
    model.load_state_dict(state)
    checks = _prove(model, folder, files, seed, ort)
    return Recovered(state=state, arch=arch, checks=checks, unused=[k for k in unused if k.endswith(("weight", "bias"))])


def _prove(model: Any, folder: Path, files: dict[str, str], seed: int, ort: Any) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed + 1)
    v = model.cfg.video
    video = torch.randn(2, v.num_frames, v.in_chans, v.img_size, v.img_size, generator=gen)
    ids = torch.randint(5, model.cfg.text.vocab_size, (3, 24), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    with torch.no_grad():
        ev = model.encode_video(video).numpy()
        et = model.encode_text(ids, mask).numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    rv = ort.InferenceSession(str(folder / files["video"]), opts, providers=["CPUExecutionProvider"]).run(
        None, {"video": video.numpy()})[0]
    rt = ort.InferenceSession(str(folder / files["text"]), opts, providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    checks = {"video_rel_error": float(np.abs(ev - rv).max() / max(np.abs(rv).max(), 1e-12)),
              "text_rel_error": float(np.abs(et - rt).max() / max(np.abs(rt).max(), 1e-12))}
    for k, e in checks.items():
        if not e < TOLERANCE:
            raise RecoveryError(f"{folder}: the recovered weights do not reproduce its ONNX outputs ({k} {e:.2e}, "
                                f"needs < {TOLERANCE})")
    return checks

