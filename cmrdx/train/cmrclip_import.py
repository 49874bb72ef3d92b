"""Import the released CMR-CLIP checkpoint (``pytorch_model.bin`` + ``config.json`` + ``vocab.txt``) into a
cmrdx model folder.

The reference ``config.json`` holds ``video_params`` (``num_frames``, ...), ``text_params`` (``model``: the
BERT it started from) and ``projection_dim``. Every shape is read from the checkpoint tensors and
cross-checked with the config; head counts cannot be seen in shapes and default to width / 64 (12 for
ViT-B and BERT-base). ``video_params.num_heads`` and ``text_params.num_attention_heads`` override them
(cmrdx extensions, used by tests with tiny models).

Bounded memory: the checkpoint is memory-mapped (``torch.load(mmap=True, weights_only=True)``), so its tensors are
read from the file when used instead of being copied into memory; its keys and shapes are checked against a model
built on the ``meta`` device (no memory); then each tower is built from the mapped tensors when the export needs it
(``load_state_dict(assign=True)``: the parameters *are* the mapped tensors) and dropped, with the mapping, when the
export is done with it. Each tower's torch work runs in a process of its own (``ModelParts.isolated``), which
gives back everything the ONNX exporter keeps when it exits. The full-size model (223 M parameters) imports in
less than the 4 GB a laptop can spare (BENCHMARKS.md).

``keep_weights``: the checkpoint and its config.json are also kept in the model folder, under the names the
manifest's ``provenance.checkpoint.file`` and ``provenance.config.file`` give, so that ``cmrdx train --init-from
FOLDER`` can fine-tune from it (``cmrdx.train.finetune``). Each is placed under a hidden temporary name (a reflink
where the file system can share the blocks, else a hard link on the same file system, else a copy), checked
against the sha256 the import recorded, and only then renamed to its name: a partial or changed file never stands
under the final name. The manifest then lists them among its files (``cmrdx models verify`` checks them) outside
the model's identity: the ONNX files, and the calibrations and caches keyed by the identity, are the same as
without them.

``import_cmrclip_from_hub``: the same, from the files fetched with huggingface_hub (``cmrdx.train.hub``); the
manifest's ``provenance.hub`` says where they came from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, cast

import torch

from cmrdx.errors import ModelError
from cmrdx.fileio import fsync_dir
from cmrdx.model.manifest import MANIFEST_NAME, load_manifest, sha256_file, update_manifest
from cmrdx.recipe import get_recipe
from cmrdx.train.export import ExportOptions, ExportReport, ModelParts, Stage, export_model_folder, release_memory
from cmrdx.train.model import CMRClip, CMRClipConfig, config_from_state_dict, load_state_dict_strict

log = logging.getLogger(__name__)

DEFAULT_LICENCE = (
    "CMR-CLIP code: MIT (Makiya11/CMRCLIP). Weights: see the hub repository makiyeah/CMRCLIP for their terms. "
    "Research and demonstration use only; not a medical device."
)


def _read_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict, memory-mapped (tensors read from the file as they are used)."""
    try:
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:  # an old (non-zip) torch file cannot be mapped: read it whole
        if "mmap" not in str(exc):
            raise ModelError(f"cannot read the checkpoint {checkpoint}: {exc}") from exc
        try:
            state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
        except Exception as exc2:
            raise ModelError(f"cannot read the checkpoint {checkpoint}: {exc2}") from exc2
    except Exception as exc:
        raise ModelError(f"cannot read the checkpoint {checkpoint}: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelError(f"{checkpoint} holds no state dict", hint="is this a CMR-CLIP pytorch_model.bin?")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _config(state: dict[str, torch.Tensor], cfg_json: dict[str, Any], checkpoint: Path, config_path: Path) -> CMRClipConfig:
    vp, tp = cfg_json.get("video_params", {}), cfg_json.get("text_params", {})
    try:
        cfg = config_from_state_dict(state, heads=vp.get("num_heads"), text_heads=tp.get("num_attention_heads"))
    except KeyError as exc:
        raise ModelError(f"{checkpoint} lacks the CMR-CLIP tensor {exc}", hint="is this a CMR-CLIP pytorch_model.bin?") from exc
    if "num_frames" in vp and int(vp["num_frames"]) != cfg.video.num_frames:
        raise ModelError(
            f"{config_path} says num_frames={vp['num_frames']} but {checkpoint}'s temporal_embed has {cfg.video.num_frames}"
        )
    if "projection_dim" in cfg_json and int(cfg_json["projection_dim"]) != cfg.projection_dim:
        raise ModelError(f"{config_path} says projection_dim={cfg_json['projection_dim']}, the checkpoint has {cfg.projection_dim}")
    return cfg


def _read_config(config_path: Path) -> dict[str, Any]:
    try:
        cfg_json = json.loads(Path(config_path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {config_path}: {exc}") from exc
    if not isinstance(cfg_json, dict):
        raise ModelError(f"{config_path} is not a JSON object", hint="pass the checkpoint's config.json")
    return cfg_json


def _meta_model(cfg: CMRClipConfig) -> CMRClip:
    """The model's structure with no memory behind it (parameters on the ``meta`` device)."""
    with torch.device("meta"):
        return CMRClip(cfg)


def check_layout(state: dict[str, torch.Tensor], cfg: CMRClipConfig, checkpoint: Path) -> None:
    """Every key and shape of the checkpoint against the model (strict), without building it in memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # copying into meta tensors is a no-op: only keys/shapes count
        try:
            load_state_dict_strict(_meta_model(cfg), state)
        except ValueError as exc:
            raise ModelError(f"{checkpoint}: {exc}") from exc


class CheckpointParts(ModelParts):
    """The towers of a CMR-CLIP checkpoint, each built from the memory-mapped file when the export asks for it
    and dropped (with the mapping) when it is done: one tower's weights in memory at a time."""

    split_in_place = True
    isolated = True  # each tower's export in a process of its own (ModelParts.isolated)

    def __init__(self, checkpoint: Path, cfg: CMRClipConfig):
        super().__init__(None)
        self.checkpoint = checkpoint
        self._cfg = cfg

    @property
    def cfg(self) -> CMRClipConfig:
        return self._cfg

    def _part(self, prefixes: tuple[str, ...]) -> CMRClip:
        state = _read_state(self.checkpoint)
        sub = {k: v for k, v in state.items() if k.startswith(prefixes)}
        del state
        m = _meta_model(self._cfg)
        m.load_state_dict(sub, strict=False, assign=True)  # the parameters become the mapped tensors: no copy
        del sub
        mods = [getattr(m, p.rstrip(".")) for p in prefixes]
        left = [n for mod in mods for n, t in [*mod.named_parameters(), *mod.named_buffers()] if t.is_meta]
        if left:
            raise ModelError(f"{self.checkpoint}: no tensor for {left[:5]}", hint="is this a CMR-CLIP pytorch_model.bin?")
        return m

    def video(self) -> CMRClip:
        return self._part(("video_model.", "vid_proj."))

    def text(self) -> CMRClip:
        state = _read_state(self.checkpoint)
        sub = {k: v for k, v in state.items() if k.startswith(("text_model.", "txt_proj."))}
        del state
        m = _meta_model(self._cfg)
        emb = cast(torch.nn.Module, m.text_model.embeddings)
        # BERT's non-persistent buffers hold no weights: made here (a checkpoint's position_ids, when it has them,
        # are loaded over these)
        n = self._cfg.text.max_position_embeddings
        emb.register_buffer("position_ids", torch.arange(n).expand((1, -1)), persistent=False)
        emb.register_buffer("token_type_ids", torch.zeros((1, n), dtype=torch.long), persistent=False)
        m.load_state_dict(sub, strict=False, assign=True)
        del sub
        left = [n for mod in (m.text_model, m.txt_proj)
                for n, t in [*mod.named_parameters(), *mod.named_buffers()] if t.is_meta]
        if left:
            raise ModelError(f"{self.checkpoint}: no tensor for {left[:5]}", hint="is this a CMR-CLIP pytorch_model.bin?")
        return m

    def done(self, part: str) -> None:
        release_memory()


def load_cmrclip(checkpoint: Path, config_path: Path) -> tuple[CMRClip, dict[str, Any]]:
    """Build the whole torch model from a checkpoint + reference config.json; strict key loading. (The import
    does not use this: it builds one tower at a time, ``CheckpointParts``.)

    Returns (model in eval mode, the parsed config)."""
    cfg_json = _read_config(config_path)
    state = _read_state(Path(checkpoint))
    cfg = _config(state, cfg_json, Path(checkpoint), Path(config_path))
    model = CMRClip(cfg)
    try:
        load_state_dict_strict(model, state)
    except ValueError as exc:
        raise ModelError(f"{checkpoint}: {exc}") from exc
    return model.eval(), cfg_json


def import_cmrclip(
    checkpoint: Path,
    config_path: Path,
    vocab: Path,
    out: Path,
    *,
    name: str = "cmrclip",
    version: str = "1.0",
    lowercase: bool = True,
    max_length: int = 512,
    licence: str = DEFAULT_LICENCE,
    options: ExportOptions | None = None,
    keep_weights: bool = False,
    hub: dict[str, Any] | None = None,
    progress: Stage | None = None,
) -> ExportReport:
    """Checkpoint -> model folder ``out`` (see ``cmrdx.train.export``), one tower in memory at a time (see the
    module docstring). The reference tokenises lower-cased text (Bio_ClinicalBERT ships no tokenizer config, so
    BertTokenizer's ``do_lower_case=True`` applies). ``keep_weights``: keep the checkpoint and its config.json in
    the folder too, for fine-tuning (module docstring). ``hub``: where the files were fetched from
    (``cmrdx.train.hub.HubFiles.provenance``), recorded as ``provenance.hub``. ``progress(message)`` is told when
    each stage starts."""
    checkpoint, config_path, vocab, out = map(Path, (checkpoint, config_path, vocab, out))
    stage: Stage = progress or (lambda _msg: None)
    if keep_weights:
        _check_kept_names(checkpoint, config_path, out)
    stage("reading the checkpoint (memory-mapped) and checking its layout")
    cfg_json = _read_config(config_path)
    state = _read_state(checkpoint)
    cfg = _config(state, cfg_json, checkpoint, config_path)
    check_layout(state, cfg, checkpoint)
    del state
    try:
        with open(vocab, encoding="utf-8") as fh:
            n_vocab = sum(1 for _ in fh)
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read {vocab}: {exc}", hint="pass the BERT vocab.txt (UTF-8, one token a line)") from exc
    if n_vocab != cfg.text.vocab_size:
        raise ModelError(f"{vocab} has {n_vocab} tokens but the checkpoint's word embeddings have {cfg.text.vocab_size}")
    v = cfg.video
    recipe = get_recipe("cmrclip-v1", frames=v.num_frames, image_size=v.img_size)
    stage("hashing the checkpoint for the provenance")
    provenance = {
        "source": "CMR-CLIP (Makiya11/CMRCLIP, weights makiyeah/CMRCLIP)",
        "checkpoint": {"file": checkpoint.name, "sha256": sha256_file(checkpoint)},
        "config": {"file": config_path.name, "sha256": sha256_file(config_path), "content": cfg_json},
        "text_model": cfg_json.get("text_params", {}).get("model"),
    }
    if hub:
        provenance["hub"] = hub
    rep = export_model_folder(
        CheckpointParts(checkpoint, cfg), out, vocab_path=vocab, name=name, version=version,
        recipe={"name": "cmrclip-v1", "params": recipe.to_dict()},
        lowercase=lowercase, max_length=max_length, provenance=provenance, licence=licence, options=options,
        progress=stage,
    )
    if keep_weights:
        stage(f"keeping {checkpoint.name} and {config_path.name} in the model folder for fine-tuning")
        kept = keep_files(out, [(checkpoint, provenance["checkpoint"]["sha256"]),
                                (config_path, provenance["config"]["sha256"])])
        rep.files += list(kept)
        rep.notes += [f"kept {rel} for `cmrdx train --init-from {out}` ({how})" for rel, how in kept.items()]
    return rep


def import_cmrclip_from_hub(
    out: Path,
    *,
    repo: str | None = None,
    revision: str | None = None,
    text_revision: str | None = None,
    keep_weights: bool = False,
    progress_bars: bool = False,
    progress: Stage | None = None,
    **kwargs: Any,
) -> ExportReport:
    """Fetch the released files with huggingface_hub (``cmrdx.train.hub.fetch_released``: ``repo``, by default
    makiyeah/CMRCLIP, at ``revision``, and the vocab.txt of the BERT its config names), verify them, and import them
    into ``out`` as ``import_cmrclip`` does (``kwargs``: its options). The manifest's ``provenance.hub`` records the
    endpoint, repositories, resolved commits and files (no token)."""
    from cmrdx.train.hub import DEFAULT_REPO, fetch_released

    files = fetch_released(repo or DEFAULT_REPO, revision, text_revision=text_revision, progress_bars=progress_bars,
                           progress=progress)
    rep = import_cmrclip(files.checkpoint, files.config, files.vocab, out, keep_weights=keep_weights,
                         hub=files.provenance, progress=progress, **kwargs)
    rep.notes = files.notes + rep.notes
    return rep


# ---------------------------------------------------------------- keeping the torch weights

# Names an export writes into a model folder: a kept file must not take one of them.
_EXPORT_NAMES = {MANIFEST_NAME, "tokenizer.json", "reference.npz"}


def _check_kept_names(checkpoint: Path, config_path: Path, out: Path) -> None:
    """Before any work: the kept files' names must be two, and none a name the model folder uses."""
    names = [checkpoint.name, config_path.name]
    if names[0] == names[1]:
        raise ModelError(f"{checkpoint} and {config_path} have the same name: both cannot be kept in {out}",
                         hint="rename one (the checkpoint is pytorch_model.bin, its config config.json)")
    for n in names:
        if n in _EXPORT_NAMES or n.endswith(".onnx") or n.startswith("."):
            raise ModelError(f"{n} cannot be kept in the model folder {out}: the model itself uses that name",
                             hint="rename the file (the released names are pytorch_model.bin and config.json)")


FICLONE = 0x40049409  # Linux ioctl: share the source's blocks (btrfs, XFS, ...; copy-on-write)


def _reflink(src: Path, fd: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import fcntl

    try:
        with open(src, "rb") as f:
            fcntl.ioctl(fd, FICLONE, f.fileno())
    except OSError:
        return False
    return True


def _copy_hashing(src: Path, dst: Path) -> str:
    """Copy ``src`` to the (new, empty) file ``dst``, fsynced; returns the sha256 of the bytes written."""
    h = hashlib.sha256()
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while block := fi.read(1 << 22):
            h.update(block)
            fo.write(block)
        fo.flush()
        os.fsync(fo.fileno())
    return h.hexdigest()


def keep_file(src: Path, dest: Path, sha256: str) -> str:
    """Put the bytes of ``src`` at ``dest``, checked against ``sha256``, atomically: placed under a hidden unique
    name beside ``dest`` (a reflink, else a hard link when on the same file system, else a copy), hashed, and only
    then renamed over ``dest``; on any failure the temporary file is removed and ``dest`` is as it was. Returns how:
    "reflink", "hard link", "copy", or "in place" (``src`` is ``dest``). ModelError when the bytes differ."""
    src, dest = Path(src), Path(dest)
    real = Path(os.path.realpath(src))  # a link (huggingface_hub's cache) is followed to its bytes
    if dest.exists() and os.path.samefile(real, dest):
        how, digest = "in place", sha256_file(dest)
        if digest != sha256:
            raise ModelError(f"{dest}: sha256 {digest[:12]}... is not the {sha256[:12]}... the import recorded (the file "
                             "changed during the import)", hint="import again, leaving the file as it is")
        return how
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        if _reflink(real, fd):
            os.close(fd)
            how, digest = "reflink", sha256_file(tmp)
        else:
            os.close(fd)
            tmp.unlink()
            try:
                os.link(real, tmp)
                how, digest = "hard link", sha256_file(tmp)
            except OSError:  # another file system, links not allowed: a copy
                how, digest = "copy", _copy_hashing(real, tmp)
        if how != "hard link":  # mkstemp's 0600 -> what open() would give under the umask
            mask = os.umask(0o022)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)
        if digest != sha256:
            raise ModelError(f"{src}: sha256 {digest[:12]}... is not the {sha256[:12]}... the import recorded (the file "
                             "changed during the import)", hint="import again, leaving the file as it is")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    return how


def keep_files(out: Path, files: list[tuple[Path, str]]) -> dict[str, str]:
    """Keep each (file, sha256) in the model folder ``out`` under its own name (``keep_file``) and list them in the
    manifest's files, outside the model's identity. Returns name -> how it was placed."""
    m = load_manifest(out, verify=False)
    clash = [p.name for p, _ in files if p.name in m.files]
    if clash:
        raise ModelError(f"{out}: {clash} are already files of the model itself and cannot be kept beside them",
                         hint="rename the checkpoint or its config")
    kept: dict[str, str] = {}
    for path, digest in files:
        try:
            kept[path.name] = keep_file(path, Path(out) / path.name, digest)
        except OSError as exc:
            from cmrdx.errors import OutputError

            raise OutputError.from_os_error(exc, Path(out) / path.name, doing="cannot keep the weights here") from exc
    update_manifest(out, {}, files=list(kept))  # refuses any change of the identity
    return kept
