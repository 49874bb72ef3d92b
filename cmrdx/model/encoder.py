"""The Encoder: onnxruntime sessions for a model's video and text towers. The only onnxruntime user.

Build once per process (``Encoder(name_or_path)``), then call ``encode_studies`` / ``encode_texts`` as often as
needed. Device choice:

* ``"cpu"``: float32 video model on the CPU provider (``intra_op_num_threads`` = cores available).
* ``"cuda"``: float16 video model (float32 if the model has no float16 file) on the CUDA provider, with CPU
  fallback disabled: if CUDA cannot run the model, ModelError, never a silent CPU run.
* ``"auto"``: CUDA when it really loads (``onnxruntime.preload_dlls()``, then ``session.get_providers()``
  must list CUDA first), else CPU. ``Encoder.device`` says which one is used and ``device_note`` why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cmrdx import config
from cmrdx.errors import ModelError
from cmrdx.model.manifest import Manifest
from cmrdx.model.registry import get_manifest

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")


def _ort() -> Any:
    import onnxruntime as ort

    return ort


def _session_options(threads: int, no_fallback: bool) -> Any:
    ort = _ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if no_fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return so


def _has_nvidia_driver() -> bool:
    """True when the NVIDIA driver library loads (no driver: no CUDA, and no need to probe noisily)."""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def _cuda_loads(ort: Any) -> bool:
    """Whether the CUDA provider itself loads: a one-node float model must run on CUDA with CPU fallback
    disabled."""
    import base64

    try:
        so = _session_options(1, no_fallback=True)
        s = ort.InferenceSession(base64.b64decode(_RELU_PROBE), so, providers=["CUDAExecutionProvider"])
        return s.get_providers()[:1] == ["CUDAExecutionProvider"]
    except Exception:  # noqa: BLE001 - any failure means "cannot prove CUDA"
        return False


# A one-node ONNX model (y = Relu(x), x: float[1], opset 13), serialised, so the probe needs no onnx package.
_RELU_PROBE = "CAgSBWNtcmR4OjcKDAoBeBIBeSIEUmVsdRIFcHJvYmVaDwoBeBIKCggIARIECgIIAWIPCgF5EgoKCAgBEgQKAggBQgQKABAN"


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


class Encoder:
    """onnxruntime sessions for one model.

    Args:
        model: a registry name or a model folder.
        device: "auto", "cuda" or "cpu".
        precision: video precision override ("float32", "float16", "int8"); default float16 on CUDA and
            float32 on CPU.
        threads: CPU intra-op threads; default ``cmrdx.config.cpu_count()``.
        manifest: an already-loaded (and verified) Manifest, instead of ``model``.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "auto",
        precision: str | None = None,
        threads: int | None = None,
        manifest: Manifest | None = None,
    ):
        if device not in DEVICES:
            raise ModelError(f"device must be one of {DEVICES}, not {device!r}")
        if manifest is None:
            if model is None:
                raise ModelError("Encoder needs a model name, a model folder or a manifest")
            manifest = get_manifest(model, verify=True)
        self.manifest = manifest
        self.threads = threads or config.cpu_count()
        self._video: Any = None  # onnxruntime.InferenceSession once loaded
        self.device, self.device_note = self._choose_device(device, precision)
        if self._video is None:  # CPU (the CUDA path already built its session while proving CUDA works)
            self.precision, vfile = self._video_file(precision)
            self._video = self._session(vfile)
        self._text: Any = None  # text tower loaded on first use: a classify with cached prompts never needs it
        self._tokenizer: Any = None
        self.video_input = manifest.video.get("input", "video")
        log.info("encoder %s on %s (%s): %s", manifest.name, self.device, self.precision, self.device_note)

    def _video_file(self, precision: str | None) -> tuple[str, Path]:
        """(precision, file): the asked precision, else float16 on CUDA / float32 on CPU."""
        want = precision or ("float16" if self.device == "cuda" else "float32")
        f = self.manifest.video_file(want)
        if f is None:
            if precision is not None:
                raise ModelError(f"model {self.manifest.name!r} has no {precision} video file")
            want, f = "float32", self.manifest.video_file("float32")
        if f is None:
            raise ModelError(f"model {self.manifest.name!r} lists no float32 video file")
        return want, f

    # ------------------------------------------------------------------ device
    def _choose_device(self, device: str, precision: str | None) -> tuple[str, str]:
        if device == "cpu":
            return "cpu", "asked for cpu"
        ort = _ort()
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            msg = "this onnxruntime build has no CUDA provider"
            if device == "cuda":
                raise ModelError(f"--device cuda: {msg}", hint="install onnxruntime-gpu, or use --device cpu")
            return "cpu", msg
        if not _has_nvidia_driver():
            if device == "cuda":
                raise ModelError("--device cuda: no NVIDIA driver (libcuda.so.1) on this machine", hint="use --device cpu")
            return "cpu", "no NVIDIA driver found"
        if device == "auto":
            ort.set_default_logger_severity(4)  # a failed CUDA probe is an expected outcome here, not an error
        try:
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, when present
        except Exception as exc:  # noqa: BLE001 - any failure here only means "no usable CUDA"
            log.debug("preload_dlls failed: %s", exc)
        # The wheel lists CUDA even where its libraries are missing: prove it by building the real session
        # and checking that CUDA is its first provider. Asked explicitly, CPU fallback is disabled too, so a
        # node CUDA cannot run is an error rather than a silent CPU run.
        self.device = "cuda"
        self.precision, vfile = self._video_file(precision)
        strict = device == "cuda"
        providers = ["CUDAExecutionProvider"] if strict else ["CUDAExecutionProvider", "CPUExecutionProvider"]
        try:
            so = _session_options(self.threads, no_fallback=strict)
            s = ort.InferenceSession(str(vfile), so, providers=providers)
        except Exception as exc:  # noqa: BLE001
            s, why = None, f"CUDA session failed: {str(exc).splitlines()[0][:200]}"
            if strict and "assigned to the default CPU EP" in str(exc) and _cuda_loads(ort):
                # CUDA works, but the provider itself prefers the CPU for a few shape computations: allow
                # those (CUDA stays the first provider, checked below) and say so.
                log.warning("%s: some nodes (shape computations) run on the CPU under the CUDA provider", vfile.name)
                so = _session_options(self.threads, no_fallback=False)
                s = ort.InferenceSession(str(vfile), so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        else:
            why = "CUDA provider did not load (CUDA/cuDNN libraries missing?)"
        if device == "auto":
            ort.set_default_logger_severity(2)
        if s is not None and s.get_providers()[:1] == ["CUDAExecutionProvider"]:
            self._video = s
            return "cuda", "CUDA provider loaded"
        self.device = "cpu"
        if device == "cuda":
            raise ModelError(f"--device cuda: {why}", hint="check the CUDA + cuDNN 9 libraries, or use --device cpu")
        return "cpu", why

    def _session(self, path: Path) -> Any:
        """A CPU session (the CUDA video session is built, and proven, in ``_choose_device``)."""
        ort = _ort()
        so = _session_options(self.threads, no_fallback=False)
        try:
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"onnxruntime could not load {path}: {exc}") from exc

    # ------------------------------------------------------------------ video
    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        """(frames, 3, H, W) of one study's input."""
        v = self.manifest.video
        return (int(v["frames"]), 3, int(v["image_size"]), int(v["image_size"]))

    def encode_studies(self, batch: np.ndarray) -> np.ndarray:
        """(B, frames, 3, H, W) float32 recipe output -> (B, D) float32, L2-normalised."""
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim == 4:
            x = x[None]
        if tuple(x.shape[1:]) != self.video_shape:
            raise ModelError(
                f"study batch has shape {x.shape}; model {self.manifest.name!r} takes (B, {', '.join(map(str, self.video_shape))})",
                hint=f"make inputs with the model's recipe {self.manifest.recipe.get('name')!r}",
            )
        out = self._video.run(None, {self.video_input: np.ascontiguousarray(x)})[0]
        return l2_normalise(out)

    # ------------------------------------------------------------------ text
    def _load_text(self) -> None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self.manifest.tokenizer_file))
        tok.enable_truncation(int(self.manifest.tokenizer.get("max_length", 512)))
        tok.enable_padding(pad_id=int(self.manifest.tokenizer.get("pad_id", 0)), pad_token="[PAD]")
        self._tokenizer = tok
        # The text tower always runs on the CPU: a few prompts per model, cached by the caller.
        self._text = self._session(self.manifest.text_file)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts -> (input_ids, attention_mask), both (N, L) int64, padded to the longest, truncated to the
        manifest's max length. Lower-casing is part of tokenizer.json's normaliser when the model wants it."""
        if self._tokenizer is None:
            self._load_text()
        assert self._tokenizer is not None
        enc = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        return ids, mask

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N strings -> (N, D) float32, L2-normalised."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return np.zeros((0, self.manifest.embedding_dim), dtype=np.float32)
        ids, mask = self.tokenize(texts)
        out = self._text.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return l2_normalise(out)
