"""Where models live, found without loading any of them. No torch, no onnxruntime.

Search order for a name: user models (``cmrdx.config.home() / "models"``, so a user import can shadow a
bundled model of the same name), then bundled models (``cmrdx.config.DATA_DIR / "models"``). A path to a
folder holding ``manifest.json`` is accepted anywhere a name is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cmrdx import config
from cmrdx.errors import ModelError
from cmrdx.model.manifest import MANIFEST_NAME, Manifest, load_manifest


@dataclass
class ModelEntry:
    """A model folder found by the registry (manifest read, files not hashed)."""

    name: str
    version: str
    source: str  # "user", "bundled" or "path"
    root: Path
    embedding_dim: int
    recipe: str


def search_dirs() -> list[tuple[str, Path]]:
    """(source, folder) pairs searched for model folders, in priority order."""
    return [("user", config.home() / "models"), ("bundled", config.DATA_DIR / "models")]


def _entry(root: Path, source: str) -> ModelEntry | None:
    try:
        d = json.loads((root / MANIFEST_NAME).read_text())
        return ModelEntry(
            name=d["name"], version=str(d["version"]), source=source, root=root,
            embedding_dim=int(d["embedding_dim"]), recipe=d.get("recipe", {}).get("name", "?"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not a model folder (or a broken one): `cmrdx models verify` reports it by path


def list_models() -> list[ModelEntry]:
    """Every model folder in the search folders; a user model shadows a bundled one of the same name."""
    seen: set[str] = set()
    out: list[ModelEntry] = []
    for source, base in search_dirs():
        if not base.is_dir():
            continue
        for sub in sorted(p for p in base.iterdir() if (p / MANIFEST_NAME).is_file()):
            e = _entry(sub, source)
            if e is not None and e.name not in seen:
                seen.add(e.name)
                out.append(e)
    return out


def resolve(name_or_path: str | Path) -> Path:
    """A model name or folder path -> the model folder. ModelError lists the known names when not found."""
    try:
        p = Path(name_or_path).expanduser()
    except RuntimeError:  # "~someone" for a user that does not exist: not a folder, so a name
        p = Path(name_or_path)
    if (p / MANIFEST_NAME).is_file():
        return p
    for e in list_models():
        if e.name == str(name_or_path):
            return e.root
    known = [e.name for e in list_models()]
    raise ModelError(
        f"no model named {str(name_or_path)!r} (known: {known or 'none'}; searched "
        + ", ".join(str(d) for _, d in search_dirs()) + ")",
        hint="import one with `cmrdx models import-cmrclip ... --out DIR` or pass a model folder",
    )


def get_manifest(name_or_path: str | Path, *, verify: bool = True) -> Manifest:
    """Resolve and load a model's manifest (checking every file's sha256 unless ``verify=False``)."""
    return load_manifest(resolve(name_or_path), verify=verify)
