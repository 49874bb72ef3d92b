"""Is a model's int8 video copy good enough to run in its float32 file's place on the CPU? Measured, and written
into the model's manifest (``validation.int8``), where ``precision auto`` reads it (``Manifest.validated``).

The int8 copy (dynamic quantisation of the MatMul weights, ``cmrdx.train.export.to_int8``) runs about 3x faster on
a CPU. Whether it may stand in for float32 is a property of the weights, so it is measured on the model itself,
on inputs that look like studies rather than on noise:

* **embeddings**: studies read through the model's recipe (the example study of a cmrdx checkout and study
  folders given with ``studies``, plus ``phantoms`` synthetic phantom studies rendered by ``cmrdx.synth``), each
  embedded by the float32 and the int8 file; per study the cosine between the two. The int8 shift (1 - cosine)
  is also compared with how far apart the studies themselves are (the median 1 - cosine between two different
  studies' float32 embeddings): ``relative_shift`` = the largest int8 shift / that median distance. A copy that
  moves an embedding by a sizeable part of the distance between two studies would change rankings and calls,
  however close to 1 its cosine looks (a random-weight model's studies are all within 1e-3 of each other).
* **scores**: the shift of every finding's score of the prompt bank ``bank`` (largest absolute change).
* **zero-shot AUC** (with ``data``, a labelled archive of ``cmrdx synth archive``; the bundled model's held-out
  phantoms): AUC per finding of ``bank`` with each file (``cmrdx.evaluation.benchmarks``); ``max_auc_drop`` is the
  largest fall from float32 to int8.

The copy is **validated** for the CPU when every measured figure meets ``CRITERIA``; else the record says
"failed" and why, and ``auto`` keeps float32. The record names the int8 file and the float32 file it was
compared with, by sha256, so it never vouches for other files. The manifest section is outside the model's
identity (``Manifest.sha256``): writing it changes no cache, calibration or search store.

Encoding goes through the Encoder (``cmrdx.model.encoder``), so the optimised graphs of both files are saved on
the way (``cmrdx.model.optcache``). No torch.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmrdx import config
from cmrdx.errors import CmrdxError, ModelError
from cmrdx.model.manifest import Manifest, update_manifest

log = logging.getLogger(__name__)

CRITERIA: dict[str, float] = {"min_cosine": 0.99, "max_relative_shift": 0.1, "max_auc_drop": 0.01}
PHANTOM_SEED = 4_300_000  # study seeds of the validation phantoms: disjoint from training's and the benchmarks'
DEFAULT_PHANTOMS = 3
DEFAULT_BANK = "cmr-findings"

# progress(message): a stage starts
Stage = Callable[[str], None]


def release_memory() -> None:
    """Give freed memory back to the system now: a garbage collection, then glibc's ``malloc_trim`` (Linux).
    Rendering studies leaves the heap fragmented; a full-size model's session needs what it held."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def example_study() -> Path | None:
    """The example study of a cmrdx checkout (``examples/phantom-study``), when there is one."""
    p = config.PACKAGE_DIR.parent / "examples" / "phantom-study"
    return p if (p / "DICOM").is_dir() else None


@dataclass
class Inputs:
    """Model inputs (N, frames, 3, S, S) and what each one is."""

    arrays: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def describe(self) -> str:
        n_ph = sum(name.startswith("phantom") for name in self.names)
        others = [n for n in self.names if not n.startswith("phantom")]
        parts = others + ([f"{n_ph} phantom studies (cmrdx.synth, study seeds {PHANTOM_SEED}-{PHANTOM_SEED + n_ph - 1})"]
                          if n_ph else [])
        return "; ".join(parts)


def realistic_inputs(manifest: Manifest, *, studies: Sequence[str | Path] = (), phantoms: int = DEFAULT_PHANTOMS,
                     example: bool = True, progress: Stage | None = None) -> Inputs:
    """Study folders (``studies``; the example study too when ``example`` and in a checkout) and ``phantoms``
    synthetic phantom studies, each through the model's recipe. A study folder that cannot be read is an error
    (CmrdxError naming it): the user asked for it."""
    from cmrdx.recipe import apply_recipe
    from cmrdx.study.assemble import assemble_study

    params = manifest.recipe_params()
    out = Inputs()
    folders = [Path(s) for s in studies]
    ex = example_study() if example else None
    if ex is not None and all(f.resolve() != ex.resolve() for f in folders):
        folders.insert(0, ex)
    for f in folders:
        if progress:
            progress(f"reading {f.name}")
        out.arrays.append(apply_recipe(assemble_study(str(f)), params).array)
        out.names.append("the example study (examples/phantom-study)" if f == ex else f"study folder {f.name}")
    if phantoms:
        from cmrdx.synth.arrays import phantom_study
        from cmrdx.synth.params import sample_params

        for i in range(phantoms):
            if progress:
                progress(f"rendering phantom {i + 1}/{phantoms}")
            study, _ = phantom_study(sample_params(PHANTOM_SEED + i, prevalence=0.5))
            out.arrays.append(apply_recipe(study, params).array)
            out.names.append(f"phantom {PHANTOM_SEED + i}")
    if not out.arrays:
        raise CmrdxError("no study to validate the int8 copy on", hint="give --study DIR or --phantoms N (N >= 1)")
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def embedding_agreement(f32: np.ndarray, i8: np.ndarray) -> dict[str, Any]:
    """Per-study cosine between float32 and int8 embeddings (rows), and the int8 shift against the median
    distance between different studies."""
    cos = _cos(f32, i8)
    out: dict[str, Any] = {"studies": len(cos), "min_cosine": float(cos.min()), "median_cosine": float(np.median(cos))}
    if len(f32) >= 2:
        g = f32 / np.linalg.norm(f32, axis=1, keepdims=True)
        sim = g @ g.T
        iu = np.triu_indices(len(g), 1)
        spread = float(np.median(1.0 - sim[iu]))
        out["between_studies_median_distance"] = spread
        out["relative_shift"] = float((1.0 - cos).max() / spread) if spread > 0 else float("inf")
    return out


def _scores(emb: np.ndarray, bank: Any, text_emb: Any, model: str) -> np.ndarray:
    from cmrdx.zeroshot.scoring import score_bank

    return np.array([[s.score for s in score_bank(e, bank, text_emb, model, None)] for e in emb])


def _zeroshot(manifest: Manifest, data: Path, bank: Any, encoders: dict[str, Any],
              progress: Stage | None) -> dict[str, Any]:
    from cmrdx.evaluation.benchmarks import load_eval_set, zeroshot

    aucs: dict[str, dict[str, float]] = {}
    n = 0
    for prec, enc in encoders.items():
        if progress:
            progress(f"zero-shot on {data.name}: reading and encoding studies ({prec})")
        es = load_eval_set(data, enc)
        r = zeroshot(es, bank, enc, n_boot=0)
        n = int(r["n"])
        aucs[prec] = {f: round(float(v["auc"]), 4) for f, v in r["findings"].items()}
    drops = {f: aucs["float32"][f] - aucs["int8"][f] for f in aucs["float32"] if f in aucs["int8"]}
    return {"data": str(data), "n": n, "bank": bank.name, "auc_float32": aucs["float32"], "auc_int8": aucs["int8"],
            "max_auc_drop": round(max(drops.values()), 4) if drops else None}


def validate_int8(model: str | Path | Manifest, *, studies: Sequence[str | Path] = (), phantoms: int = DEFAULT_PHANTOMS,
                  example: bool = True, data: str | Path | None = None, bank: str = DEFAULT_BANK,
                  write: bool = True, progress: Stage | None = None, threads: int | None = None) -> dict[str, Any]:
    """Measure the model's int8 video copy against its float32 file (see the module docstring) and, with
    ``write``, record the result in its manifest (``validation.int8``). Returns the record. ModelError when the
    model has no int8 copy."""
    from cmrdx.model.encoder import Encoder
    from cmrdx.zeroshot.bank import get_bank
    from cmrdx.zeroshot.scoring import bank_text_embeddings

    if isinstance(model, Manifest):
        manifest = model
        manifest.verify()
    else:
        from cmrdx.model.registry import get_manifest

        manifest = get_manifest(model, verify=True)
    if not manifest.video.get("int8"):
        raise ModelError(f"model {manifest.name!r} ({manifest.root}) has no int8 video file to validate",
                         hint="export the model again without --no-int8 to write one")
    b = get_bank(bank)
    inputs = realistic_inputs(manifest, studies=studies, phantoms=phantoms, example=example, progress=progress)
    x = np.stack(inputs.arrays)
    del inputs.arrays[:]
    release_memory()
    emb: dict[str, np.ndarray] = {}
    main: dict[str, np.ndarray] = {}  # a model with a finding stream: its main paths' embeddings too
    text_emb = None
    encoders: dict[str, Any] = {}
    for prec in ("float32", "int8"):
        # no memory arena: a full-size float32 session would otherwise grow with every study
        enc = Encoder(manifest=manifest, device="cpu", precision=prec, threads=threads, memory_arena=False)

        def each(done: int, total: int, prec: str = prec) -> None:
            if progress and done < total:
                progress(f"embedding study {done + 1}/{total} with the {prec} file")

        # one study at a time: a full-size model's memory stays low
        emb[prec], main[prec] = enc.encode_studies_main(x, progress=each)
        if prec == "int8":  # the text tower (float32, the same for both) beside the small int8 session
            text_emb = bank_text_embeddings(b, enc.encode_texts, None)
        if data is not None:
            encoders[prec] = enc
        else:
            del enc  # one video session at a time
            release_memory()
    rec: dict[str, Any] = embedding_agreement(emb["float32"], emb["int8"])
    if main["float32"] is not emb["float32"]:  # distances between studies use these: held to the same criteria
        rec["main_embedding"] = embedding_agreement(main["float32"], main["int8"])
    s32, s8 = _scores(emb["float32"], b, text_emb, manifest.name), _scores(emb["int8"], b, text_emb, manifest.name)
    rec["bank"] = b.name
    rec["max_score_shift"] = float(np.abs(s32 - s8).max()) if s32.size else None
    rec["inputs"] = inputs.describe()
    if data is not None:
        rec["zeroshot"] = _zeroshot(manifest, Path(data), b, encoders, progress)
    encoders.clear()
    failed = []
    if rec["min_cosine"] < CRITERIA["min_cosine"]:
        failed.append(f"min cosine {rec['min_cosine']:.4f} < {CRITERIA['min_cosine']}")
    if "relative_shift" in rec and not rec["relative_shift"] <= CRITERIA["max_relative_shift"]:
        failed.append(f"the int8 shift is {rec['relative_shift']:.2f} of the median distance between studies "
                      f"(> {CRITERIA['max_relative_shift']})")
    mrec = rec.get("main_embedding") or {}
    if mrec and mrec["min_cosine"] < CRITERIA["min_cosine"]:
        failed.append(f"main embedding: min cosine {mrec['min_cosine']:.4f} < {CRITERIA['min_cosine']}")
    if "relative_shift" in mrec and not mrec["relative_shift"] <= CRITERIA["max_relative_shift"]:
        failed.append(f"main embedding: the int8 shift is {mrec['relative_shift']:.2f} of the median distance "
                      f"between studies (> {CRITERIA['max_relative_shift']})")
    zs = rec.get("zeroshot") or {}
    if zs.get("max_auc_drop") is not None and zs["max_auc_drop"] > CRITERIA["max_auc_drop"]:
        failed.append(f"zero-shot AUC falls by {zs['max_auc_drop']:.3f} (> {CRITERIA['max_auc_drop']})")
    int8_rel, f32_rel = str(manifest.video["int8"]), str(manifest.video["float32"])
    from cmrdx import __version__

    record = {
        "status": "failed" if failed else "validated",
        "for": ["cpu"],
        "file": int8_rel,
        "sha256": manifest.files[int8_rel]["sha256"],
        "against": {"file": f32_rel, "sha256": manifest.files[f32_rel]["sha256"]},
        **_rounded(rec),
        "criteria": dict(CRITERIA),
        "reasons": failed,
        "measured": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "software": f"cmrdx {__version__}, onnxruntime {_ort_version()}",
    }
    if write:
        validation = dict(manifest.validation)
        validation["int8"] = record
        update_manifest(manifest.root, {"validation": validation})
    return record


def _ort_version() -> str:
    import importlib.metadata as md

    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return "?"


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, float):
            out[k] = round(v, 6)
        elif isinstance(v, dict):
            out[k] = _rounded(v)
        else:
            out[k] = v
    return out
