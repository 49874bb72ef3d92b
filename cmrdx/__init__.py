"""cmrdx: zero-shot cardiac MRI diagnosis with CMR-CLIP-style encoders.

Research and demonstration software, not a medical device. The public API is imported lazily so that
``import cmrdx`` stays light (no torch, no onnxruntime).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cmrdx")  # the one version source is pyproject.toml
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__", "assemble_study", "classify", "index_archive", "inspect_study", "load_bank", "scan", "search",
    "similar",
]


def __getattr__(name: str):
    if name == "scan":
        from cmrdx.dicom import scan

        return scan
    if name in ("inspect_study", "assemble_study"):
        from cmrdx.study import assemble

        return getattr(assemble, name)
    if name == "classify":
        from cmrdx.pipeline.classify import classify

        return classify
    if name in ("search", "similar", "index_archive"):
        from cmrdx.pipeline import search

        return getattr(search, name)
    if name == "load_bank":
        from cmrdx.zeroshot.bank import load_bank

        return load_bank
    raise AttributeError(f"module 'cmrdx' has no attribute {name!r}")
