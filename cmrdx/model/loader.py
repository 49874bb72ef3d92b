"""The one place a model is loaded: resolves a name or folder to a model (``registry``), builds its Encoder once
per (folder, device, precision) per process, and says what the model *is* (``model_sha256``: the identity every cache,
calibration, prototype set, search store and batch journal is keyed by)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cmrdx.errors import ModelError
from cmrdx.vocab import DEFAULT_MODEL

if TYPE_CHECKING:
    from cmrdx.model.encoder import Encoder
    from cmrdx.model.manifest import Manifest

_ENCODERS: dict[tuple[str, str, str], Encoder] = {}


def model_sha256(manifest: Manifest) -> str:
    """A model's identity (``Manifest.sha256``): the hash of what determines its embeddings (its ONNX files, tokenizer,
    recipe and sizes), unchanged by metrics, a reference or a model card added to its folder."""
    return manifest.sha256


def get_encoder(model: str | Path | None = None, device: str = "auto", precision: str | None = "auto") -> Encoder:
    """The Encoder for ``model`` (the default model when None) on ``device`` at ``precision`` ("auto", "float32",
    "float16", "int8": ``cmrdx.model.encoder.resolve_precision``), built once per process and integrity-checked
    on first load. ``Encoder.description`` ("cpu (int8)") is what a run records."""
    from cmrdx.model.encoder import Encoder
    from cmrdx.model.registry import resolve

    name = str(model or DEFAULT_MODEL)
    try:
        root = resolve(name)
    except ModelError as exc:
        if model is None:
            raise ModelError(
                f"the default model {DEFAULT_MODEL!r} is not installed",
                hint="pass --model NAME_OR_FOLDER (see `cmrdx models list`), or reinstall cmrdx",
            ) from exc
        raise
    key = (str(Path(root).resolve()), device, precision or "auto")
    if key not in _ENCODERS:
        _ENCODERS[key] = Encoder(root, device=device, precision=precision or "auto")
    return _ENCODERS[key]


def clear_cache() -> None:
    """Forget every loaded Encoder (tests; a long-lived process that replaced a model folder)."""
    _ENCODERS.clear()
