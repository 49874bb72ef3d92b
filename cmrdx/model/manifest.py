"""Model manifest: what a model folder holds and how its input is made. No torch, no onnxruntime.

A model folder holds ONNX files, a tokenizer and ``manifest.json``::

    {"format": 1, "name": "cmrclip", "version": "1.0", "embedding_dim": 512,
     "files": {"video.onnx": {"sha256": "...", "bytes": 123}, ...},
     "video": {"float32": "video.onnx", "float16": "video.fp16.onnx", "int8": "video.int8.onnx",
               "input": "video", "output": "embedding", "frames": 64, "image_size": 224},
     "text": {"file": "text.onnx", "inputs": ["input_ids", "attention_mask"], "output": "embedding"},
     "tokenizer": {"file": "tokenizer.json", "lowercase": true, "max_length": 512},
     "recipe": {"name": "cmrclip-v1", "params": {...}},
     "provenance": {...}, "licence": "..."}

Every file listed is checked against its sha256 on load; a changed file is refused by name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmrdx.errors import ModelError

if TYPE_CHECKING:
    from cmrdx.recipe import RecipeParams

MANIFEST_NAME = "manifest.json"
FORMAT = 1


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Manifest:
    """A parsed manifest plus the folder it lives in (file names in it are relative to ``root``)."""

    root: Path
    name: str
    version: str
    embedding_dim: int
    files: dict[str, dict[str, Any]]
    video: dict[str, Any]
    text: dict[str, Any]
    tokenizer: dict[str, Any]
    recipe: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    licence: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def sha256(self) -> str:
        """The model's identity: the sha256 of its ``manifest.json``, which holds every file's sha256. Caches,
        calibrations, prototypes, search stores and batch journals are keyed by it."""
        return hashlib.sha256((Path(self.root) / MANIFEST_NAME).read_bytes()).hexdigest()

    # ------------------------------------------------------------------ paths
    def path(self, rel: str) -> Path:
        if rel not in self.files:
            raise ModelError(f"{rel} is not listed in {self.root / MANIFEST_NAME}")
        return self.root / rel

    def video_file(self, precision: str) -> Path | None:
        """The video ONNX file for "float32", "float16" or "int8", or None when the model has none."""
        rel = self.video.get(precision)
        return self.path(rel) if rel else None

    @property
    def text_file(self) -> Path:
        return self.path(self.text["file"])

    @property
    def tokenizer_file(self) -> Path:
        return self.path(self.tokenizer["file"])

    # ------------------------------------------------------------------ checks
    def problems(self) -> list[str]:
        """Every file that is missing or whose sha256 differs from the manifest (empty when intact)."""
        out = []
        for rel, info in self.files.items():
            p = self.root / rel
            if not p.is_file():
                out.append(f"{p}: missing")
                continue
            digest = sha256_file(p)
            if digest != info.get("sha256"):
                out.append(f"{p}: sha256 {digest[:12]}... differs from the manifest's {str(info.get('sha256'))[:12]}...")
        return out

    def verify(self) -> None:
        """Raise ModelError naming every missing or altered file."""
        bad = self.problems()
        if bad:
            raise ModelError(
                f"model {self.name!r} in {self.root} failed its integrity check: " + "; ".join(bad),
                hint="re-import or re-install the model; do not edit files in a model folder",
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "embedding_dim": self.embedding_dim,
            "files": self.files,
            "video": self.video,
            "text": self.text,
            "tokenizer": self.tokenizer,
            "recipe": self.recipe,
            "provenance": self.provenance,
            "licence": self.licence,
        }

    def recipe_params(self) -> RecipeParams:
        """The manifest's input recipe as ``cmrdx.recipe.RecipeParams``."""
        from cmrdx.recipe import RecipeParams

        return RecipeParams.from_dict(self.recipe.get("params", {}))


def write_manifest(root: Path, data: dict[str, Any], files: list[str]) -> Manifest:
    """Hash ``files`` (relative to ``root``), write ``root/manifest.json`` and return the Manifest."""
    root = Path(root)
    data = dict(data)
    data["format"] = FORMAT
    data["files"] = {rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size} for rel in files}
    (root / MANIFEST_NAME).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return load_manifest(root, verify=False)


def load_manifest(root: Path | str, *, verify: bool = True) -> Manifest:
    """Read ``root/manifest.json``; with ``verify`` check every file's sha256 (ModelError names the file)."""
    root = Path(root)
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        raise ModelError(f"{root} holds no {MANIFEST_NAME}", hint="pass a model folder made by `cmrdx models import-cmrclip`")
    try:
        d = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{mpath} is not valid JSON: {exc}") from exc
    if d.get("format") != FORMAT:
        raise ModelError(f"{mpath}: manifest format {d.get('format')!r} is not supported (expected {FORMAT})")
    missing = [k for k in ("name", "version", "embedding_dim", "files", "video", "text", "tokenizer", "recipe") if k not in d]
    if missing:
        raise ModelError(f"{mpath} lacks the fields {missing}")
    for rel in d["files"]:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ModelError(f"{mpath}: file {rel!r} must be a plain relative path inside the model folder")
    m = Manifest(
        root=root,
        name=d["name"],
        version=str(d["version"]),
        embedding_dim=int(d["embedding_dim"]),
        files=d["files"],
        video=d["video"],
        text=d["text"],
        tokenizer=d["tokenizer"],
        recipe=d["recipe"],
        provenance=d.get("provenance", {}),
        licence=d.get("licence", ""),
        raw=d,
    )
    if verify:
        m.verify()
    return m
