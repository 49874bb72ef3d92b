"""Warm starts of a training run (``TrainConfig.init_from``): cmrdx's own checkpoints, and CMR-CLIP.

Why CMR-CLIP is a warm start of its own: a site fine-tunes the released model on its archive rather than
training from scratch. Its shapes (ViT-B/16 over 64 frames at 224 x 224, BERT-base) are not cmrdx's small
defaults, and nobody should have to copy them into a config: ``adopt_architecture`` takes every shape the
weights fix (and the input size they were trained at, the whole field of view: ``resize = crop = image_size``)
from the checkpoint, and records what it changed. A cmrdx checkpoint, in contrast, must match the run's config
(a mismatch is an error naming the tensors), as before.

``load_warm_start(path)`` accepts:

* a ``checkpoint.pt`` (its ``vocab.txt`` beside it) or a ``trained.pt`` written by cmrdx training;
* the released CMR-CLIP checkpoint, as a file (``pytorch_model.bin``, with ``config.json`` and ``vocab.txt``
  beside it: the released layout) or as the folder that holds those three;
* a model folder imported by ``cmrdx models import-cmrclip``, when the import kept the torch weights: the
  released checkpoint copied byte for byte into the folder under the name its manifest's
  ``provenance.checkpoint.file`` gives, its sha256 equal to ``provenance.checkpoint.sha256``. The vocabulary is
  the folder's ``tokenizer.json`` (checked against the manifest), the head counts its recorded ``config.json``.
  An import without the weights is refused with the way out (the ONNX files cannot be trained).
* a model folder exported by cmrdx training (``provenance.architecture`` in its manifest, the bundled model's
  case): its torch weights are recovered from its float32 ONNX files and proved against them
  (``cmrdx.train.recover``); the run's config must give the same shapes. Only the files recovery reads need be
  there (the float32 ONNX files and the tokenizer, each checked against the manifest's sha256).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmrdx.model.manifest import sha256_file

if TYPE_CHECKING:
    from cmrdx.train.model import CMRClipConfig

log = logging.getLogger(__name__)

RELEASED_WEIGHTS = "pytorch_model.bin"


@dataclass
class WarmStart:
    """Weights, vocabulary (vocab.txt text) and provenance of a warm start. ``arch`` is set for CMR-CLIP weights
    (the run adopts their shapes), None for a cmrdx checkpoint (the run's config must match it)."""

    state: dict[str, Any]
    vocab: str
    info: dict[str, Any]
    arch: CMRClipConfig | None = None
    adopted: dict[str, list[Any]] = field(default_factory=dict)  # TrainConfig field -> [before, after]


def _load(path: Path) -> Any:
    """torch.load: tensors and plain containers only (``weights_only``), which covers released checkpoints and
    cmrdx's own; then a full unpickle for older cmrdx files that need it (written by this user's training)."""
    import torch

    # memory-mapped where the file allows it (torch's zip format): the weights are read from the file as they are
    # copied into the model, not held twice (CMR-CLIP's are 0.9 GB, and every process of a run loads them)
    for mmap in (True, False):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception:  # noqa: BLE001 - unpickling errors have many types; the full load below names the file
            pass
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: not a torch file (a checkpoint.pt, trained.pt or CMR-CLIP {RELEASED_WEIGHTS}) "
                         f"({type(exc).__name__})") from None


def _is_state_dict(obj: Any) -> bool:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return isinstance(obj, dict) and any(str(k).endswith("video_model.patch_embed.proj.weight") for k in obj)


def load_warm_start(path: str | Path) -> WarmStart:
    """The warm start at ``path`` (see the module's docstring); ValueError naming the file and what is wrong."""
    p = Path(path)
    if p.is_dir():
        if (p / "manifest.json").is_file():
            return _from_model_folder(p)
        if (p / RELEASED_WEIGHTS).is_file():
            return _from_released(p / RELEASED_WEIGHTS)
        raise ValueError(f"init_from {p}: a folder without manifest.json (an imported model) or {RELEASED_WEIGHTS} "
                         "(the released CMR-CLIP checkpoint)")
    if not p.is_file():
        raise ValueError(f"init_from {p}: no such file")
    st = _load(p)
    if isinstance(st, dict) and "model" in st:
        return _from_cmrdx(p, st)
    if _is_state_dict(st):
        return _from_released(p, st)
    raise ValueError(f"init_from {p}: neither a cmrdx checkpoint.pt / trained.pt nor a CMR-CLIP state dict")


def _from_cmrdx(path: Path, st: dict[str, Any]) -> WarmStart:
    if st.get("format") == "cmrdx-trained/1":
        tr = st["provenance"].get("training", {})
        info = {"file": path.name, "steps": int(tr.get("steps", 0)), "seconds": tr.get("seconds"),
                "config": st["config"], "device": tr.get("device"), "data": st["provenance"].get("data"),
                "val_loss_per_epoch": tr.get("val_loss_per_epoch", []),
                "initialised_from": st["provenance"].get("initialised_from")}
        return WarmStart(st["model"], st["vocab"], info)
    vocab = path.parent / "vocab.txt"
    if not vocab.is_file():
        raise ValueError(f"init_from {path}: no vocab.txt beside the checkpoint (training writes one to its work "
                         "folder; its token ids are the ones the weights know)")
    info = {"checkpoint": str(path), "steps": int(st["step"]), "seconds": round(float(st.get("train_seconds", 0.0)), 1),
            "config": st["config"], "val_loss_per_epoch": [round(v, 4) for v in st.get("val_losses", [])],
            "initialised_from": st.get("init_info")}  # earlier stages, nested
    return WarmStart(st["model"], vocab.read_text(encoding="utf-8"), info)


def _arch(state: dict[str, Any], config: dict[str, Any], where: Path) -> CMRClipConfig:
    from cmrdx.train.model import config_from_state_dict

    vp, tp = config.get("video_params", {}) or {}, config.get("text_params", {}) or {}
    try:
        arch = config_from_state_dict(state, heads=vp.get("num_heads"), text_heads=tp.get("num_attention_heads"))
    except (KeyError, ValueError, IndexError) as exc:
        raise ValueError(f"init_from {where}: not the CMR-CLIP layout ({type(exc).__name__}: {exc})") from None
    if "num_frames" in vp and int(vp["num_frames"]) != arch.video.num_frames:
        raise ValueError(f"init_from {where}: config.json says num_frames={vp['num_frames']}, the weights have "
                         f"{arch.video.num_frames}")
    return arch


def _check_vocab(vocab: str, arch: CMRClipConfig, where: Path) -> None:
    n = vocab.count("\n") + (0 if vocab.endswith("\n") else 1)
    if n != arch.text.vocab_size:
        raise ValueError(f"init_from {where}: the vocabulary has {n} tokens, the weights' word embeddings "
                         f"{arch.text.vocab_size}: give the vocab.txt of the BERT the text tower started from")


def _from_released(path: Path, state: Any = None) -> WarmStart:
    """``pytorch_model.bin`` (+ ``config.json`` + ``vocab.txt`` beside it)."""
    state = _load(path) if state is None else state
    if not _is_state_dict(state):
        raise ValueError(f"init_from {path}: not a CMR-CLIP state dict")
    cfg_path, vocab_path = path.parent / "config.json", path.parent / "vocab.txt"
    config: dict[str, Any] = {}
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"init_from {cfg_path}: not JSON ({exc})") from None
    if not vocab_path.is_file():
        raise ValueError(f"init_from {path}: no vocab.txt beside it: put the vocab.txt of the BERT its text tower "
                         f"started from ({(config.get('text_params') or {}).get('model', 'see config.json')}) there")
    arch = _arch(state, config, path)
    vocab = vocab_path.read_text(encoding="utf-8")
    _check_vocab(vocab, arch, vocab_path)
    info = {"source": "CMR-CLIP released checkpoint", "file": path.name, "sha256": sha256_file(path),
            "config": config or None, "vocab_sha256": hashlib.sha256(vocab.encode("utf-8")).hexdigest(), "steps": 0}
    return WarmStart(state, vocab, info, arch)


def _vocab_from_tokenizer(path: Path, size: int) -> str:
    """vocab.txt text (line i = token id i) from a WordPiece ``tokenizer.json``; ids no token has (a vocab.txt's
    repeated or empty lines) get unique placeholders, so that every id keeps its line."""
    tk = json.loads(path.read_text(encoding="utf-8"))
    vocab = (tk.get("model") or {}).get("vocab")
    if not isinstance(vocab, dict) or (tk.get("model") or {}).get("type") != "WordPiece":
        raise ValueError(f"init_from {path}: not a WordPiece tokenizer.json")
    lines = [f"[cmrdx-unused-{i}]" for i in range(size)]
    for tok, i in vocab.items():
        if not 0 <= int(i) < size:
            raise ValueError(f"init_from {path}: token id {i} beyond the {size} word embeddings of the weights")
        lines[int(i)] = tok
    return "".join(f"{t}\n" for t in lines)


def _from_model_folder(folder: Path) -> WarmStart:
    """A model folder imported from CMR-CLIP, with the released checkpoint kept in it."""
    from cmrdx.model.manifest import load_manifest

    try:
        m = load_manifest(folder, verify=False)
    except Exception as exc:  # noqa: BLE001 - ModelError and friends: named below
        raise ValueError(f"init_from {folder}: unreadable manifest ({exc})") from None
    ck = (m.provenance or {}).get("checkpoint") or {}
    if not ck.get("file") or not ck.get("sha256"):
        if (m.provenance or {}).get("architecture"):
            return _from_cmrdx_folder(folder, m)
        raise ValueError(f"init_from {folder}: model {m.name} {m.version} was not imported from a CMR-CLIP checkpoint "
                         "(its manifest names no provenance.checkpoint) nor exported by cmrdx training (no "
                         "provenance.architecture): give the checkpoint.pt or trained.pt it was trained as")
    weights = folder / Path(ck["file"]).name
    if not weights.is_file():
        raise ValueError(f"init_from {folder}: the folder holds the ONNX model only, not the torch weights "
                         f"({ck['file']}) that training starts from: give --init-from the released "
                         f"{ck['file']} (with config.json and vocab.txt beside it), or import the model again keeping "
                         "the weights")
    if sha256_file(weights) != ck["sha256"]:
        raise ValueError(f"init_from {weights}: not the checkpoint the model was imported from (sha256 differs "
                         "from the manifest's provenance.checkpoint)")
    state = _load(weights)
    if not _is_state_dict(state):
        raise ValueError(f"init_from {weights}: not a CMR-CLIP state dict")
    config = ((m.provenance or {}).get("config") or {}).get("content") or {}
    arch = _arch(state, config, weights)
    tok = m.tokenizer or {}
    if tok.get("lowercase", True) is not True:
        raise ValueError(f"init_from {folder}: its tokenizer keeps case; cmrdx training tokenises lower-cased text")
    rel = tok.get("file", "tokenizer.json")
    tpath = folder / rel
    want = (m.files.get(rel) or {}).get("sha256")
    if not tpath.is_file() or (want and sha256_file(tpath) != want):
        raise ValueError(f"init_from {folder}: {rel} is missing or altered (check it: cmrdx models verify {folder})")
    vocab = _vocab_from_tokenizer(tpath, arch.text.vocab_size)
    info = {"source": "CMR-CLIP model folder", "model": {"name": m.name, "version": m.version, "sha256": m.sha256},
            "file": weights.name, "sha256": ck["sha256"], "config": config or None, "steps": 0}
    return WarmStart(state, vocab, info, arch)


def _from_cmrdx_folder(folder: Path, m: Any) -> WarmStart:
    """A model folder exported by cmrdx training (the bundled model, say): its torch weights recovered from its
    float32 ONNX files (``recover.recover``, proved against the folder's own outputs), its vocabulary from its
    tokenizer.json. The run's config must give the same shapes, as for a cmrdx checkpoint."""
    from cmrdx.train.recover import RecoveryError, recover

    tok = m.tokenizer or {}
    files = {"video": m.video["float32"], "text": m.text["file"]}
    # the files recovery reads, by the manifest's sha256: the weights a run starts from are the ones users ran (a
    # training base may leave out what only inference reads: the float16 and int8 copies, the reference)
    for rel in (*files.values(), tok.get("file", "tokenizer.json")):
        want = (m.files.get(rel) or {}).get("sha256")
        if not (folder / rel).is_file():
            raise ValueError(f"init_from {folder}: {rel} is missing")
        if not want or sha256_file(folder / rel) != want:
            raise ValueError(f"init_from {folder / rel}: altered since export (its sha256 is not the manifest's)")
    try:
        rec = recover(folder, files, m.provenance or {})
    except RecoveryError as exc:
        raise ValueError(f"init_from {exc}") from None
    vocab = _vocab_from_tokenizer(folder / tok.get("file", "tokenizer.json"), int(rec.arch["text"]["vocab_size"]))
    tr = (m.provenance or {}).get("training") or {}
    info = {"source": "cmrdx model folder (weights recovered from its ONNX files)",
            "model": {"name": m.name, "version": m.version, "sha256": m.sha256},
            "steps": int(tr.get("steps", 0)), "seconds": tr.get("seconds"), "config": tr.get("config"),
            "recovery": {**{k: float(f"{v:.3g}") for k, v in rec.checks.items()}, "not_in_onnx": rec.unused},
            "initialised_from": (m.provenance or {}).get("initialised_from")}
    return WarmStart(rec.state, vocab, info)


def adopt_architecture(cfg: Any, arch: CMRClipConfig) -> tuple[Any, dict[str, list[Any]]]:
    """``cfg`` (a TrainConfig) with every shape that CMR-CLIP weights fix taken from ``arch``, and the input at
    the size they were trained at over the whole field of view (``resize = crop = image_size``; the reference
    resizes its stored frames, with no zoom on the heart). Returns (new config, field -> [before, after])."""
    v, t = arch.video, arch.text
    if v.in_chans != 3 or abs(v.mlp_ratio - 4.0) > 1e-9 or t.type_vocab_size != 2:
        raise ValueError(f"init_from: in_chans {v.in_chans}, mlp_ratio {v.mlp_ratio}, type_vocab_size "
                         f"{t.type_vocab_size}: cmrdx trains CMR-CLIP's 3 channels, mlp ratio 4 and 2 token types only")
    want = {"patch": v.patch_size, "width": v.width, "depth": v.depth, "heads": v.heads, "frames": v.num_frames,
            "image_size": v.img_size, "crop": v.img_size, "resize": v.img_size, "text_hidden": t.hidden_size,
            "text_layers": t.num_hidden_layers, "text_heads": t.num_attention_heads,
            "text_intermediate": t.intermediate_size, "max_length": t.max_position_embeddings,
            "vocab_size": t.vocab_size, "projection_dim": arch.projection_dim}
    changed = {k: [getattr(cfg, k), x] for k, x in want.items() if getattr(cfg, k) != x}
    return dataclasses.replace(cfg, **want), changed
