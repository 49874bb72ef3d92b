"""The Encoder: onnxruntime sessions for a model's video and text towers. The only onnxruntime user.

Build once per process (``Encoder(name_or_path)``), then call ``encode_studies`` / ``encode_texts`` as often as
needed. Device choice:

* ``"cpu"``: float32 video model on the CPU provider (``intra_op_num_threads`` = cores available).
* ``"cuda"``: float16 video model (float32 if the model has no float16 file) on the CUDA provider, with CPU
  fallback disabled: if CUDA cannot run the model, ModelError, never a silent CPU run.
* ``"auto"``: CUDA when it really loads (``onnxruntime.preload_dlls()``, then ``session.get_providers()``
  must list CUDA first), else CPU. ``Encoder.device`` says which one is used and ``device_note`` why.

Precision (``resolve_precision``): "float32", "float16" or "int8" ask for that video file (ModelError naming the
model and the fix when the folder has none); "auto" is float16 on CUDA (float32 without a float16 file), and on
the CPU float32, or int8 when the model's manifest marks its int8 copy as validated for the CPU
(``Manifest.validated``, written by ``cmrdx.model.validate``). int8 is a CPU copy: asked for with device "auto" it
runs on the CPU, with "cuda" it is refused. ``Encoder.precision`` says which one runs and ``precision_note`` why.

CPU sessions load onnxruntime's saved optimised graph of their file when there is one (``cmrdx.model.optcache``),
with graph optimisation off, and save it when there is none, so that only the first session of a model on a
machine pays for optimising its graph. ``CMRDX_SAVED_GRAPHS=0`` turns this off.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cmrdx import config
from cmrdx.errors import ModelError
from cmrdx.model import optcache
from cmrdx.model.manifest import Manifest, known_sha256
from cmrdx.model.registry import get_manifest

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "float32", "float16", "int8")

# progress(done, total): studies encoded so far, of how many
Progress = Callable[[int, int], None]


def _ort() -> Any:
    import onnxruntime as ort

    return ort


def _session_options(threads: int, no_fallback: bool, *, optimise: bool = True, arena: bool = True) -> Any:
    ort = _ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = arena
    level = ort.GraphOptimizationLevel
    so.graph_optimization_level = level.ORT_ENABLE_ALL if optimise else level.ORT_DISABLE_ALL
    if no_fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return so


def saved_graphs_enabled() -> bool:
    """Whether CPU sessions use and save optimised graphs (``CMRDX_SAVED_GRAPHS=0`` turns them off)."""
    return os.environ.get("CMRDX_SAVED_GRAPHS", "1").strip().lower() not in ("0", "false", "no", "off")


def _fix_precision(manifest: Manifest, asked: str) -> str:
    has = ", ".join(manifest.precisions()) or "none"
    if asked == "int8":
        make = ("an int8 copy is written by `cmrdx models import-cmrclip` and `cmrdx models export` unless --no-int8 "
                "is given: export the model again to get one")
    else:
        make = ("a float16 copy is written by `cmrdx models import-cmrclip` and `cmrdx models export` unless "
                "--no-float16 is given: export the model again to get one")
    return f"use --precision auto (it has: {has}); {make}"


def resolve_precision(manifest: Manifest, device: str, asked: str | None = "auto") -> tuple[str, str]:
    """(precision, why) for the video tower of ``manifest`` on ``device`` ("cpu" or "cuda"); see the module
    docstring. ``asked`` None is the device's plain default, whatever the manifest says of the int8 copy (float16
    on CUDA when the model has it, else float32). ModelError when ``asked`` is not a precision or the model has no
    file for it."""
    if asked is None:
        if device == "cuda" and manifest.video.get("float16"):
            return "float16", "float16 on CUDA (the default)"
        return "float32", f"float32 on {'the CPU' if device == 'cpu' else 'CUDA'} (the default)"
    if asked not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, not {asked!r}",
                         hint="use --precision auto, float32, float16 or int8")
    if asked != "auto":
        if not manifest.video.get(asked):
            raise ModelError(f"model {manifest.name!r} ({manifest.root}) has no {asked} video file",
                             hint=_fix_precision(manifest, asked))
        if asked == "int8" and device == "cuda":
            raise ModelError(f"model {manifest.name!r}: the int8 video file runs on the CPU, not on CUDA",
                             hint="use --device cpu (or auto) with --precision int8, or --precision float16 on CUDA")
        return asked, f"asked for {asked}"
    if device == "cuda":
        if manifest.video.get("float16"):
            return "float16", "auto: float16 on CUDA"
        return "float32", "auto: float32 on CUDA (the model has no float16 file)"
    rec = manifest.validated("int8", "cpu")
    if rec is not None:
        return "int8", f"auto: the int8 copy is validated for the CPU ({describe_validation(rec)})"
    if manifest.video.get("int8"):
        why = "its validation failed" if manifest.validation.get("int8") else "it is not validated"
        stale = isinstance(manifest.validation.get("int8"), dict) and manifest.validation["int8"].get("status") == "validated"
        if stale:
            why = "its validation is of other files"
        return "float32", f"auto: float32 on the CPU (the model has an int8 copy, but {why}: `cmrdx models validate-int8`)"
    return "float32", "auto: float32 on the CPU"


def describe_validation(rec: dict[str, Any]) -> str:
    """One line from an int8 validation record: the embedding agreement and, when measured, the AUC change."""
    parts = []
    if isinstance(rec.get("min_cosine"), (int, float)):
        parts.append(f"embedding cosine >= {rec['min_cosine']:.4f} vs float32 on {rec.get('studies', '?')} studies")
    zs = rec.get("zeroshot")
    if isinstance(zs, dict) and isinstance(zs.get("max_auc_drop"), (int, float)):
        parts.append(f"zero-shot AUC within {zs['max_auc_drop']:.3f} on {zs.get('n', '?')} studies")
    return "; ".join(parts) or "validated"


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
        precision: "auto", "float32", "float16" or "int8" (``resolve_precision``); None (the default here) is
            the device's plain default: float16 on CUDA, float32 on the CPU. The commands and ``get_encoder``
            default to "auto", which also takes a validated int8 copy on the CPU.
        threads: CPU intra-op threads; default ``cmrdx.config.cpu_count()``.
        manifest: an already-loaded (and verified) Manifest, instead of ``model``.
        saved_graphs: use and save optimised graphs (``cmrdx.model.optcache``); default
            ``saved_graphs_enabled()``.
        memory_arena: onnxruntime's CPU memory arena (the default: fastest). Off, memory taken for one run is
            given back after it, so a process that runs a full-size model on study after study, as the int8
            validation does, stays near one run's memory instead of growing.

    After construction: ``device``, ``precision`` (what runs), ``device_note`` / ``precision_note`` (why),
    ``graphs`` (per loaded file: "saved" when its saved optimised graph was loaded, "optimised+saved",
    "optimised") and ``load_seconds``.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "auto",
        precision: str | None = None,
        threads: int | None = None,
        manifest: Manifest | None = None,
        saved_graphs: bool | None = None,
        memory_arena: bool = True,
    ):
        t0 = time.perf_counter()
        if device not in DEVICES:
            raise ModelError(f"device must be one of {DEVICES}, not {device!r}", hint="use --device auto, cuda or cpu")
        if precision is not None and precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}",
                             hint="use --precision auto, float32, float16 or int8")
        if manifest is None:
            if model is None:
                raise ModelError("Encoder needs a model name, a model folder or a manifest")
            manifest = get_manifest(model, verify=True)
        self.manifest = manifest
        self.threads = threads or config.cpu_count()
        self.saved_graphs = saved_graphs_enabled() if saved_graphs is None else saved_graphs
        self.memory_arena = memory_arena
        self.graphs: dict[str, str] = {}
        self.asked_precision = precision
        self._video: Any = None  # onnxruntime.InferenceSession once loaded
        self.precision = ""
        self.precision_note = ""
        if precision == "int8" and device == "auto":
            device, self._int8_note = "cpu", "int8 runs on the CPU"
        else:
            self._int8_note = ""
        self.device, self.device_note = self._choose_device(device, precision)
        if self._int8_note:
            self.device_note = self._int8_note
        if self._video is None:  # CPU (the CUDA path already built its session while proving CUDA works)
            self.precision, self.precision_note = resolve_precision(manifest, "cpu", precision)
            self._video = self._session(self._video_rel(self.precision))
        self._text: Any = None  # text tower loaded on first use: a classify with cached prompts never needs it
        self._tokenizer: Any = None
        self.video_input = manifest.video.get("input", "video")
        self._check_outputs()
        self.load_seconds = time.perf_counter() - t0
        log.info("encoder %s on %s (%s): %s; %s", manifest.name, self.device, self.precision, self.device_note,
                 self.precision_note)

    def _check_outputs(self) -> None:
        """A manifest naming a second output (``main_output``) must name outputs the loaded video file has: found
        at load, with the file and the fix, not as an onnxruntime error at the first study."""
        if not self.main_output:
            return
        have = [o.name for o in self._video.get_outputs()]
        want = [str(self.manifest.video.get("output", "embedding")), self.main_output]
        missing = [n for n in want if n not in have]
        if missing:
            raise ModelError(f"{self.manifest.root / 'manifest.json'}: the video section names output(s) "
                             f"{', '.join(missing)}, which {self._video_rel(self.precision)} does not have "
                             f"(it has {', '.join(have)})",
                             hint="export the model again (`cmrdx models export` or `cmrdx train`), or restore "
                                  "the manifest it was exported with")

    def _video_rel(self, precision: str) -> str:
        rel = self.manifest.video.get(precision)
        if not rel:  # resolve_precision only returns a precision the model has, float32 aside
            raise ModelError(f"model {self.manifest.name!r} ({self.manifest.root}) lists no {precision} video file",
                             hint="re-import or re-export the model")
        return str(rel)

    def _video_file(self, precision: str | None) -> tuple[str, Path]:
        """(precision, file) for the CUDA session: ``resolve_precision`` on CUDA."""
        self.precision, self.precision_note = resolve_precision(self.manifest, "cuda", precision)
        return self.precision, self.manifest.path(self._video_rel(self.precision))

    @property
    def description(self) -> str:
        """What runs, as run manifests record it: "cpu (int8)", "cuda (float16)"."""
        return f"{self.device} ({self.precision})"

    # ------------------------------------------------------------------ device
    def _choose_device(self, device: str, precision: str | None) -> tuple[str, str]:
        if device == "cpu":
            return "cpu", "asked for cpu"
        if precision == "int8":  # with --device cuda: refused by name (the int8 file is a CPU copy)
            resolve_precision(self.manifest, "cuda", precision)
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

    def _session(self, rel: str) -> Any:
        """A CPU session for the model file ``rel`` (the CUDA video session is built, and proven, in
        ``_choose_device``): from its saved optimised graph when there is one, else optimised now (and saved)."""
        ort = _ort()
        path = self.manifest.path(rel)
        key = optcache.GraphKey(str(self.manifest.files[rel].get("sha256")), ort.__version__, "cpu")
        if self.saved_graphs:
            saved = optcache.find(self.manifest, rel, key)
            if saved is not None and self._trusted(saved):
                try:
                    s = ort.InferenceSession(str(saved), _session_options(self.threads, False, optimise=False,
                                                                          arena=self.memory_arena),
                                             providers=["CPUExecutionProvider"])
                    self.graphs[rel] = "saved"
                    return s
                except Exception as exc:  # noqa: BLE001 - a damaged cache file: made again below
                    log.warning("the saved optimised graph %s did not load (%s); optimising %s again", saved,
                                str(exc).splitlines()[0][:200], rel)
                    optcache.discard(saved)
        so = _session_options(self.threads, no_fallback=False, arena=self.memory_arena)
        target = optcache.target(self.manifest, rel, key) if self.saved_graphs else None
        tmp = optcache.temporary(target) if target is not None else None
        if tmp is not None:
            so.optimized_model_filepath = str(tmp)
            # onnxruntime warns that the saved graph may hold CPU-specific layouts: its key names the CPU
            so.log_severity_level = 3
        try:
            try:
                s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 - saving the graph may be what failed (a full disk): once more without
                if tmp is None:
                    raise
                tmp.unlink(missing_ok=True)
                log.debug("session with a saved optimised graph failed (%s); loading %s without saving", exc, rel)
                target = tmp = None
                s = ort.InferenceSession(str(path), _session_options(self.threads, no_fallback=False,
                                                                     arena=self.memory_arena),
                                         providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"onnxruntime could not load {path}: {exc}",
                             hint="re-import or re-export the model (`cmrdx models verify` checks its files)") from exc
        self.graphs[rel] = "optimised"
        if target is not None and tmp is not None and optcache.publish(tmp, target):
            self.graphs[rel] = "optimised+saved"
        return s

    @staticmethod
    def _trusted(saved: Path) -> bool:
        """A saved graph is used only when its bytes are those written (its sha256 beside it)."""
        want = optcache.recorded_sha256(saved)
        try:
            ok = want is not None and known_sha256(saved) == want
        except OSError:
            ok = False
        if not ok:
            log.warning("the saved optimised graph %s is not the file that was saved; optimising again", saved)
            optcache.discard(saved)
        return ok

    # ------------------------------------------------------------------ video
    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        """(frames, 3, H, W) of one study's input."""
        v = self.manifest.video
        return (int(v["frames"]), 3, int(v["image_size"]), int(v["image_size"]))

    @property
    def main_output(self) -> str | None:
        """The name of the video file's second output, the main paths' embedding (before a finding stream turned
        it), or None for a model whose embedding is its main paths' (every model without a finding stream)."""
        name = self.manifest.video.get("main_output")
        return str(name) if name else None

    def encode_studies(self, batch: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """(B, frames, 3, H, W) float32 recipe output -> (B, D) float32, L2-normalised: the embedding that zero-shot
        scores, explanations and text -> study search compare with prompts.

        ``progress(done, total)`` is called before the first study (0, B) and after each study is encoded; with it
        the studies are run one at a time (the same embeddings), so that a caller can show how far it got."""
        return self._encode(batch, progress)[0]

    def encode_studies_main(self, batch: np.ndarray, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(embedding, main): ``encode_studies``' embedding and the main paths' embedding, both (B, D) float32,
        L2-normalised, from one run. Distances between studies use ``main`` (typicality against the model's
        reference, few-shot prototypes, study -> study search): a finding stream turns the embedding towards its
        one finding, and studies that differ only in what it sees would otherwise look far apart. ``main`` is
        ``embedding`` itself (the same array) for a model without a second output."""
        return self._encode(batch, progress)

    def _encode(self, batch: np.ndarray, progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim == 4:
            x = x[None]
        if tuple(x.shape[1:]) != self.video_shape:
            raise ModelError(
                f"study batch has shape {x.shape}; model {self.manifest.name!r} takes (B, {', '.join(map(str, self.video_shape))})",
                hint=f"make inputs with the model's recipe {self.manifest.recipe.get('name')!r}",
            )
        # a model without a second output: its first output, whatever its name (as every model before them)
        names = [str(self.manifest.video.get("output", "embedding")), self.main_output] if self.main_output else None

        def run(xs: np.ndarray) -> list[np.ndarray]:
            outs = self._video.run(names, {self.video_input: np.ascontiguousarray(xs)})
            return list(outs) if names else [outs[0]]

        # The int8 copy quantises its activations per run, over the whole batch: run it one study at a time, so
        # that a study's embedding never depends on the studies that share its batch (a resumed batch run equals
        # an uninterrupted one; classify equals batch).
        if progress is None and (self.precision != "int8" or len(x) <= 1):
            outs = run(x)
        else:
            n = len(x)
            tell = progress or (lambda _done, _total: None)
            tell(0, n)
            parts = []
            for i in range(n):
                parts.append(run(x[i : i + 1]))
                tell(i + 1, n)
            empty = np.zeros((0, self.manifest.embedding_dim), np.float32)
            outs = [np.concatenate([p[j] for p in parts]) if parts else empty for j in range(2 if names else 1)]
        emb = l2_normalise(outs[0])
        return emb, (l2_normalise(outs[1]) if len(outs) > 1 else emb)

    # ------------------------------------------------------------------ text
    def _load_text(self) -> None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self.manifest.tokenizer_file))
        tok.enable_truncation(int(self.manifest.tokenizer.get("max_length", 512)))
        tok.enable_padding(pad_id=int(self.manifest.tokenizer.get("pad_id", 0)), pad_token="[PAD]")
        self._tokenizer = tok
        # The text tower always runs on the CPU: a few prompts per model, cached by the caller.
        self._text = self._session(str(self.manifest.text["file"]))

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
