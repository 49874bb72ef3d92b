"""Model manifest: what a model folder holds and how its input is made. No torch, no onnxruntime.

A model folder holds ONNX files, a tokenizer and ``manifest.json``::

    {"format": 1, "name": "cmrclip", "version": "1.0", "embedding_dim": 512,
     "files": {"video.onnx": {"sha256": "...", "bytes": 123}, ...},
     "video": {"float32": "video.onnx", "float16": "video.fp16.onnx", "int8": "video.int8.onnx",
               "input": "video", "output": "embedding", "frames": 64, "image_size": 224},
     "text": {"file": "text.onnx", "inputs": ["input_ids", "attention_mask"], "output": "embedding"},
     "tokenizer": {"file": "tokenizer.json", "lowercase": true, "max_length": 512},
     "recipe": {"name": "cmrclip-v1", "params": {...}},
     "reference": {"file": "reference.npz", "method": "knn-mean-cosine-distance", "k": 10, ...},
     "validation": {"int8": {"status": "validated", "for": ["cpu"], "file": "video.int8.onnx", "sha256": "...", ...}},
     "provenance": {...}, "licence": "..."}

Every file listed is checked against its sha256 on load; a changed file is refused by name.

A model's identity (``Manifest.sha256``) is the sha256 of a canonical JSON of what determines its embeddings
and nothing else: name, version, embedding_dim, the ``video``, ``text``, ``tokenizer`` and ``recipe`` sections,
and the sha256 of every file those sections name (``identity_document`` is the JSON hashed). The reference of
training-study embeddings (``cmrdx.model.reference``), the validation of its reduced-precision copies
(``validation``: ``cmrdx.model.validate``), benchmark metrics, provenance, licence and a model card
are about the model, not part of it: adding or changing them leaves the identity, and so every calibration,
cache, prototype set and search store keyed by it, valid. A changed ONNX file, tokenizer or recipe changes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmrdx.errors import ModelError
from cmrdx.fileio import atomic_write

if TYPE_CHECKING:
    from cmrdx.recipe import RecipeParams

MANIFEST_NAME = "manifest.json"
FORMAT = 1
IDENTITY_SCHEMA = "cmrdx-model-identity/1"
# The sections that say how a study or a text becomes an embedding; the files they name are hashed with them.
IDENTITY_SECTIONS = ("video", "text", "tokenizer", "recipe")
# Video precisions a model folder may hold a file for (``video`` section keys).
PRECISIONS = ("float32", "float16", "int8")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# A file's sha256 is remembered (under $CMRDX_HOME/cache/verified/) with the file's identity on disk: size,
# modification and status-change times (ns), inode and device. Any write to the file changes its ctime, which no
# user-level call can set back, so a file whose identity is unchanged holds the bytes that were hashed, and is not
# read again: a full-size model is about 1.2 GB to hash, about half of its load time. As git does for its index,
# a hash is remembered only when the file was last changed more than RACY_NS before hashing began (a change within
# the timestamp granularity of the file system could otherwise go unseen). `cmrdx models verify` never uses it.
RACY_NS = 2_000_000_000
_now_ns = time.time_ns  # the clock (tests inject their own)


def _file_identity(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _verified_entry(path: Path) -> Path:
    from cmrdx import config

    key = hashlib.sha256(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return config.home() / "cache" / "verified" / f"{key}.json"


def known_sha256(path: Path) -> str:
    """``sha256_file(path)``, read from the verified-hash cache when the file is unchanged since it was hashed
    (see ``RACY_NS``); the cache is written when it can be, and ignored when it cannot be read."""
    path = Path(path)
    st = os.stat(path)
    ident = _file_identity(st)
    entry = _verified_entry(path)
    try:
        rec = json.loads(entry.read_text())
        if rec.get("identity") == ident and isinstance(rec.get("sha256"), str):
            return str(rec["sha256"])
    except (OSError, ValueError, AttributeError):
        pass
    began = _now_ns()
    digest = sha256_file(path)
    if began - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS and _file_identity(os.stat(path)) == ident:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(entry, json.dumps({"path": str(path), "identity": ident, "sha256": digest}) + "\n")
        except OSError:
            pass  # a read-only cache: hashed again next time
    return digest


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
    reference: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def identity_document(self) -> dict[str, Any]:
        """What the identity hashes: name, version, embedding_dim, the sections of ``IDENTITY_SECTIONS`` and the
        sha256 of each listed file those sections name (any string value equal to a file name)."""
        sections = {k: getattr(self, k) for k in IDENTITY_SECTIONS}
        named = sorted({v for sec in sections.values() for v in _strings(sec) if v in self.files})
        return {
            "schema": IDENTITY_SCHEMA,
            "name": self.name,
            "version": self.version,
            "embedding_dim": self.embedding_dim,
            **sections,
            "files": {rel: self.files[rel].get("sha256") for rel in named},
        }

    @property
    def sha256(self) -> str:
        """The model's identity: the sha256 of ``identity_document()`` as canonical JSON (sorted keys, no
        whitespace, UTF-8). Caches, calibrations, prototypes, search stores and batch journals are keyed by it;
        it does not change when a reference, metrics, provenance or a licence is added to the manifest."""
        doc = json.dumps(self.identity_document(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(doc.encode("utf-8")).hexdigest()

    # ------------------------------------------------------------------ paths
    def path(self, rel: str) -> Path:
        if rel not in self.files:
            raise ModelError(f"{rel} is not listed in {self.root / MANIFEST_NAME}")
        return self.root / rel

    def video_file(self, precision: str) -> Path | None:
        """The video ONNX file for "float32", "float16" or "int8", or None when the model has none."""
        rel = self.video.get(precision)
        return self.path(rel) if rel else None

    def precisions(self) -> list[str]:
        """The video precisions this model has a file for, in ``PRECISIONS`` order."""
        return [p for p in PRECISIONS if self.video.get(p)]

    def validated(self, precision: str, device: str) -> dict[str, Any] | None:
        """The validation record of the ``precision`` video copy when it says the copy was validated for
        ``device`` ("cpu", "cuda") *and* still describes the files this folder holds (the copy and the float32
        file it was compared with, by sha256); else None (never validated, failed, or about other files)."""
        rec = self.validation.get(precision)
        if not isinstance(rec, dict) or rec.get("status") != "validated" or device not in (rec.get("for") or ()):
            return None
        mine = self.video.get(precision)
        ref = self.video.get("float32")
        if rec.get("file") != mine or mine not in self.files or ref not in self.files:
            return None
        if rec.get("sha256") != self.files[mine].get("sha256"):
            return None
        against = rec.get("against") or {}
        if against.get("file") != ref or against.get("sha256") != self.files[ref].get("sha256"):
            return None
        return rec

    @property
    def text_file(self) -> Path:
        return self.path(self.text["file"])

    @property
    def tokenizer_file(self) -> Path:
        return self.path(self.tokenizer["file"])

    # ------------------------------------------------------------------ checks
    def problems(self, *, cached: bool = True) -> list[str]:
        """Every file that is missing or whose sha256 differs from the manifest (empty when intact). ``cached``:
        a file unchanged on disk since it was last hashed is not hashed again (``known_sha256``); False hashes
        every byte (`cmrdx models verify`)."""
        out = []
        for rel, info in self.files.items():
            p = self.root / rel
            if not p.is_file():
                out.append(f"{p}: missing")
                continue
            digest = known_sha256(p) if cached else sha256_file(p)
            if digest != info.get("sha256"):
                out.append(f"{p}: sha256 {digest[:12]}... differs from the manifest's {str(info.get('sha256'))[:12]}...")
        return out

    def verify(self, *, cached: bool = True) -> None:
        """Raise ModelError naming every missing or altered file (``cached``: see ``problems``)."""
        bad = self.problems(cached=cached)
        if bad:
            raise ModelError(
                f"model {self.name!r} in {self.root} failed its integrity check: " + "; ".join(bad),
                hint="re-import or re-install the model; do not edit files in a model folder",
            )

    def to_dict(self) -> dict[str, Any]:
        d = {
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
        if self.reference:
            d["reference"] = self.reference
        if self.validation:
            d["validation"] = self.validation
        return d

    def recipe_params(self) -> RecipeParams:
        """The manifest's input recipe as ``cmrdx.recipe.RecipeParams``."""
        from cmrdx.recipe import RecipeParams

        try:
            return RecipeParams.from_dict(self.recipe.get("params", {}))
        except (ValueError, TypeError) as exc:  # a bad record is the folder's fault, not a bug of cmrdx
            raise ModelError(f"{self.root / MANIFEST_NAME}: its recipe cannot be read: {exc}",
                             hint="the model folder is inconsistent: export the model again (`cmrdx models "
                                  "export`), or put the recipe's parameters back as the export wrote them") from None


def _strings(x: Any) -> list[str]:
    """Every string value inside a JSON-like value (dict values and list items, recursively)."""
    if isinstance(x, str):
        return [x]
    if isinstance(x, dict):
        return [s for v in x.values() for s in _strings(v)]
    if isinstance(x, (list, tuple)):
        return [s for v in x for s in _strings(v)]
    return []


def _file_entry(root: Path, rel: str) -> dict[str, Any]:
    return {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}


def write_manifest(root: Path, data: dict[str, Any], files: list[str]) -> Manifest:
    """Hash ``files`` (relative to ``root``), write ``root/manifest.json`` and return the Manifest."""
    root = Path(root)
    data = dict(data)
    data["format"] = FORMAT
    data["files"] = {rel: _file_entry(root, rel) for rel in files}
    atomic_write(root / MANIFEST_NAME, json.dumps(data, indent=2, sort_keys=False) + "\n")
    return load_manifest(root, verify=False)


def update_manifest(root: Path | str, sections: dict[str, Any], files: Sequence[str] = ()) -> Manifest:
    """Set top-level ``sections`` of ``root/manifest.json`` and (re)hash ``files`` into its file list, keeping
    everything else as it is; written atomically. Refuses (ModelError) a change of the model's identity: this
    is for what describes a model (a reference, metrics, provenance), not for what makes its embeddings."""
    root = Path(root)
    before = load_manifest(root, verify=False)
    data = dict(before.raw)
    bad = sorted(set(sections) & {"name", "version", "embedding_dim", "files", "format", *IDENTITY_SECTIONS})
    if bad:
        raise ModelError(f"{root / MANIFEST_NAME}: {bad} define the model itself and are not updated in place",
                         hint="export the model again (`cmrdx models export`)")
    for rel in files:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ModelError(f"{rel!r} must be a plain relative path inside the model folder {root}")
    data.update(sections)
    data["files"] = {**data["files"], **{rel: _file_entry(root, rel) for rel in files}}
    after = _from_dict(root, data)
    if after.sha256 != before.sha256:
        raise ModelError(f"{root / MANIFEST_NAME}: the update would change the model's identity",
                         hint="a file the video, text, tokenizer or recipe section names cannot be replaced in place")
    atomic_write(root / MANIFEST_NAME, json.dumps(data, indent=2, sort_keys=False) + "\n")
    return after


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
    m = _from_dict(root, d)
    check_input_frames(m)
    if verify:
        m.verify()
    return m


def check_input_frames(m: Manifest) -> None:
    """Raise ModelError unless the video section's ``frames`` are the frames the recipe makes: its
    ``input_frames`` (its own frames, then every stream's; a model with a second video path takes them all in its
    one input). A manifest without ``frames`` or recipe parameters, or whose recipe cannot be read (that error is
    raised where the recipe is used), is not checked."""
    frames = m.video.get("frames") if isinstance(m.video, dict) else None
    params = m.recipe.get("params") if isinstance(m.recipe, dict) else None
    if frames is None or not isinstance(params, dict):
        return
    try:
        rp = m.recipe_params()
        n = int(frames)
    except (ValueError, TypeError, ModelError):
        return
    if n != rp.input_frames:
        parts = f"{rp.frames} of its own" + "".join(f" + {st.frames} of stream {k}" for k, st in
                                                       enumerate(rp.streams, 1))
        raise ModelError(f"{m.root / MANIFEST_NAME}: the video section takes {n} frames but the recipe makes "
                         f"{rp.input_frames} ({parts})",
                         hint="the model folder is inconsistent: export the model again (`cmrdx models export`)")


def _from_dict(root: Path, d: dict[str, Any]) -> Manifest:
    return Manifest(
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
        reference=d.get("reference") or {},
        validation=d["validation"] if isinstance(d.get("validation"), dict) else {},
        raw=d,
    )
