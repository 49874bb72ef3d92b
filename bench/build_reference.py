"""The reference of cmrdx-phantom-small (studies drawn like its training studies), and how it tells phantoms from
studies built out of real MR pixels.

``build`` renders phantoms exactly as training did (``cmrdx.train.data.PhantomSource``: Siemens and GE styles,
matrices drawn 160-256, each finding present with probability 0.3, straight to arrays through the recipe's
uint8 frames, the model input training used), with source seed 23 (study seeds 2300000-2300399: disjoint from
training's 21 and 22, the selection phantoms' 11 and 12, the benchmark archive's 9 and the calibration
archive's 4242), embeds them with the float32 encoder on the CPU and writes the reference into the model folder
(``cmrdx.model.reference``: k = 10, 99th percentile of the leave-one-out scores):

    .venv/bin/python bench/build_reference.py build                      # 8 min on 2 shared cores
    .venv/bin/python bench/build_reference.py build --n 400 --seed 23 --k 10 --quantile 0.99 \\
        --model models/cmrdx-phantom-small                               # the same, spelled out

It replaces the model's reference (the model's identity, and so its calibrations, stay as they are). A rebuild
gives embeddings equal to about 1e-7 (onnxruntime's threaded sums are not bit-exact), so the same threshold to that
precision, but not necessarily the same file sha256.

``measure`` writes bench/results/typicality.md: the share of a fresh held-out phantom archive called atypical
(DICOM, read as a user's studies are), the example study, studies built from real MR pixels (pydicom's
MR_small.dcm through tests/helpers/cine_factory.py, and the same construction with the pixels of other real MR
files the tests use), and the arrays-versus-DICOM check (the same phantom draws written as DICOM and read back
through assembly, against their array rendering):

    cmrdx synth archive HELDOUT19 --n 100 --seed 19 --prevalence 0.3 --vendors philips \\
        --report-style telegraphic --matrix 160 --phases 20 --workers 2
    .venv/bin/python bench/build_reference.py measure --heldout HELDOUT19 --check-dicom 12
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from machine import cpu_name, load_average  # noqa: E402

MODEL = ROOT / "models" / "cmrdx-phantom-small"
OUT_MD = HERE / "results" / "typicality.md"
PREVALENCE = 0.3  # training's (cmrdx/train/configs/phantom-small-*.yaml)


# ---------------------------------------------------------------- phantoms drawn like training's

def _source(n: int, seed: int, exclude: tuple[str, ...] | None = None, classic_fraction: float = 0.0) -> Any:
    """Training's vendors, report styles and matrices; ``exclude`` (families, possibly empty): the randomised
    generator without those families, as a model trained on it saw it, with ``classic_fraction`` of the studies
    from the classic generator (as a mixed training drew them); None: the classic generator."""
    from cmrdx.train.data import PhantomSource

    if exclude is None:
        return PhantomSource(n, seed, prevalence=PREVALENCE)
    return PhantomSource(n, seed, prevalence=PREVALENCE, variety=True, exclude_families=exclude,
                         classic_fraction=classic_fraction)


def _render(job: tuple[int, int, int, dict[str, Any], tuple[str, ...] | None, float]) -> tuple[np.ndarray, int]:
    """Study ``i`` of the source as the recipe's uint8 frames (what the training cache held)."""
    from cmrdx.recipe import RecipeParams

    n, seed, i, recipe, exclude, classic = job
    return _source(n, seed, exclude, classic).item_at(i).fast_u8(RecipeParams.from_dict(recipe))


def phantom_embeddings(encoder: Any, n: int, seed: int, workers: int,
                       indices: list[int] | None = None, exclude: tuple[str, ...] | None = None,
                       classic_fraction: float = 0.0) -> np.ndarray:
    """Embeddings of the studies of PhantomSource(n, seed) (all, or ``indices``), rendered by ``workers``
    processes while this one encodes: the main paths' embeddings (``Encoder.encode_studies_main``), which
    typicality compares."""
    from cmrdx.train.data import u8_to_input

    p = encoder.manifest.recipe_params()
    idx = list(range(n)) if indices is None else indices
    jobs = [(n, seed, i, p.to_dict(), exclude, classic_fraction) for i in idx]
    out = []
    t0 = time.perf_counter()

    def take(results: Iterator[tuple[np.ndarray, int]]) -> None:
        for j, (u8, n_real) in enumerate(results, 1):
            out.append(encoder.encode_studies_main(u8_to_input(u8, n_real, p))[1][0])  # typicality: main paths
            if j % 50 == 0 or j == len(jobs):
                print(f"  {j}/{len(jobs)} phantoms ({time.perf_counter() - t0:.0f} s)", flush=True)

    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            take(ex.map(_render, jobs, chunksize=4))
    else:
        take(map(_render, jobs))
    return np.stack(out).astype(np.float32)


def cmd_build(a: argparse.Namespace) -> int:
    import cmrdx
    from cmrdx.model.encoder import Encoder
    from cmrdx.model.reference import build_reference, install_reference

    enc = Encoder(a.model, device="cpu")
    t0 = time.perf_counter()
    exclude = None if not a.variety else tuple(f for f in a.exclude_families.split(",") if f)
    if a.classic_fraction and exclude is None:
        raise SystemExit("--classic-fraction mixes classic studies into randomised ones: give --variety too")
    if not 0.0 <= a.classic_fraction < 1.0:
        raise SystemExit(f"--classic-fraction {a.classic_fraction}: a share in [0, 1), such as the training "
                         "config's classic_fraction")
    emb = phantom_embeddings(enc, a.n, a.seed, a.workers, exclude=exclude, classic_fraction=a.classic_fraction)
    src = _source(a.n, a.seed, exclude, a.classic_fraction).describe()
    gen = "cmrdx.synth" if exclude is None else (
        "cmrdx.synth, randomised generator" + (f" without {', '.join(exclude)}" if exclude else "")
        + (f", {a.classic_fraction:.0%} of the studies from the classic one" if a.classic_fraction else ""))
    text = (f"{a.n} phantom studies drawn like the training studies ({gen}, source seed {a.seed}: study seeds "
            f"{src['study_seeds'][0]}-{src['study_seeds'][1]}; {', '.join(src['vendors'])} styles, matrices 160-256, "
            f"findings at prevalence {PREVALENCE}), rendered to arrays through recipe {enc.manifest.recipe['name']}")
    opts = "" if exclude is None else " --variety" + (f" --exclude-families {','.join(exclude)}" if exclude else "")
    opts += f" --classic-fraction {a.classic_fraction}" if a.classic_fraction else ""
    ref = build_reference(emb, source=text, k=a.k, quantile=a.quantile, model_sha256=enc.manifest.sha256,
                          precision=enc.precision,
                          extra={"kind": "phantom", "seed": a.seed, "study_seeds": src["study_seeds"],
                                 "vendors": src["vendors"], "prevalence": PREVALENCE, "matrix": src["matrix"],
                                 "generator": f"cmrdx.synth {cmrdx.__version__}",
                                 **({"variety": True, "exclude_families": list(exclude)} if exclude is not None else {}),
                                 **({"classic_fraction": a.classic_fraction} if a.classic_fraction else {}),
                                 "command": f"python bench/build_reference.py build --n {a.n} --seed {a.seed} "
                                            f"--k {a.k} --quantile {a.quantile}{opts}"})
    m = install_reference(enc.manifest, ref, replace=True)
    print(f"wrote {m.root / m.reference['file']}: {ref.n} studies, k={ref.k}, threshold {ref.threshold:.4f} "
          f"({time.perf_counter() - t0:.0f} s); model identity {m.sha256}")
    return 0


# ---------------------------------------------------------------- studies out of real MR pixels

def _square(px: np.ndarray, size: int) -> np.ndarray:
    """The centre square of a real image, sampled to ``size`` x ``size`` (nearest), as 16-bit values."""
    a = np.asarray(px, dtype=np.float64)
    h, w = a.shape
    s = min(h, w)
    a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    idx = (np.arange(size) * s / size).astype(int)
    return np.clip(a[np.ix_(idx, idx)], 0, 4000).astype(np.uint16)


def _template_with(pixels: np.ndarray) -> Any:
    """pydicom's MR_small.dcm (the cine factory's template) carrying another real MR image's pixels."""
    import pydicom
    from pydicom.data import get_testdata_file

    t = pydicom.dcmread(str(get_testdata_file("MR_small.dcm")))
    t.BitsAllocated, t.BitsStored, t.HighBit, t.PixelRepresentation = 16, 16, 15, 0
    t.Rows, t.Columns = pixels.shape
    t.PixelData = pixels.tobytes()
    return t


def real_pixel_studies() -> list[tuple[str, str, Callable[[Path], Any]]]:
    """(name, what it is, builder writing the study into a folder): cine studies of real MR pixels."""
    import pydicom

    from helpers import cine_factory
    from helpers.data import real_data_dirs

    d = real_data_dirs()
    out: list[tuple[str, str, Callable[[Path], Any]]] = []
    for vendor in ("siemens", "ge", "philips", "kaggle"):
        for matrix in (None, 192):
            def plain(root: Path, v: str = vendor, mx: int | None = matrix) -> Any:
                return cine_factory.build_cine_study(root, vendor=v, matrix=mx)
            out.append((f"MR_small {vendor}" + (f" {matrix}" if matrix else " 64"),
                        "cine_factory: pydicom MR_small.dcm (Toshiba, 64x64)", plain))
    out.append(("MR_small siemens enhanced", "cine_factory: pydicom MR_small.dcm, Enhanced MR cine",
                lambda root: cine_factory.build_cine_study(root, vendor="siemens", enhanced_sax=True)))
    others = [  # (name, package folder, file, frame, what it is)
        ("emri_small", "pydicom-data", "emri_small.dcm", 0, "pydicom-data Enhanced MR, 64x64"),
        ("MR2_UNCR", "pydicom-data", "MR2_UNCR.dcm", None, "pydicom-data Philips MR, 1024x1024"),
        ("examples_overlay", "pydicom", "examples_overlay.dcm", None, "pydicom Siemens MR MPR, 300x484"),
        ("axasc35", "heudiconv", "axasc35.dcm", None, "heudiconv Siemens axial mosaic, 384x384"),
        ("dwi mosaic", "nibabel", "0.dcm", None, "nibabel Siemens diffusion mosaic, 256x256"),
    ]
    for name, pkg, rel, frame, what in others:
        px = pydicom.dcmread(d[pkg] / rel).pixel_array
        img = px[frame or 0] if px.ndim == 3 else px
        size = min(img.shape[0], img.shape[1], 192)
        tmpl = _template_with(_square(img, size))
        for vendor in ("siemens", "philips"):
            def build(root: Path, t: Any = tmpl, v: str = vendor) -> Any:
                with mock.patch.object(cine_factory, "_template", lambda: t):
                    return cine_factory.build_cine_study(root, vendor=v)
            out.append((f"{name} {vendor} {size}", f"cine_factory construction with the pixels of {what}", build))
    return out


# ---------------------------------------------------------------- measure

def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, c - h), min(1.0, c + h)


def cmd_measure(a: argparse.Namespace) -> int:
    from cmrdx.evaluation.archive import embed_labelled, embed_study_folder, read_archive
    from cmrdx.model.encoder import Encoder
    from cmrdx.model.reference import load_reference
    from cmrdx.synth.params import sample_params
    from cmrdx.synth.writer import write_study

    enc = Encoder(a.model, device="cpu")
    ref = load_reference(enc.manifest)
    if ref is None:
        print(f"{a.model} has no reference: run `bench/build_reference.py build` first", file=sys.stderr)
        return 1
    lines: list[str] = []

    # held-out phantoms, read as a user's studies are
    rows = read_archive(a.heldout)
    es = embed_labelled(rows, enc, None)
    ho = ref.assess_many(es.distance_embeddings)
    k_flag = sum(t.status == "atypical" for t in ho)
    lo, hi = _wilson(k_flag, len(ho))
    ho_scores = np.array([t.score for t in ho])
    print(f"held-out: {k_flag}/{len(ho)} atypical", flush=True)

    # the example study
    ex = ref.assess(embed_study_folder(ROOT / "examples" / "phantom-study", enc, main=True)[0])

    # real MR pixels
    real = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, what, build) in enumerate(real_pixel_studies()):
            folder = Path(tmp) / f"real{i:02d}"
            build(folder)
            real.append((name, what, ref.assess(embed_study_folder(folder, enc, main=True)[0])))
            print(f"  {name}: {real[-1][2].status} {real[-1][2].score:.3f}", flush=True)

        # arrays (the reference's rendering) against DICOM (the user's path) for the same draws
        pairs = []
        if a.check_dicom:
            seed, n = int(ref.extra.get("seed", 23)), ref.n
            src = _source(n, seed)
            idx = list(range(a.check_dicom))
            arr = phantom_embeddings(enc, n, seed, 1, idx)
            for j, i in enumerate(idx):
                vendor, style = src._draws()[i]  # the (vendor, report style) PhantomSource drew for study i
                p = sample_params(seed * 100_000 + i, vendor=vendor, prevalence=PREVALENCE, report_style=style)
                folder = Path(tmp) / f"dicom{i:03d}"
                write_study(folder, p)
                e = embed_study_folder(folder, enc, main=True)[0]
                pairs.append((float(1.0 - arr[j] @ e / np.linalg.norm(e)), ref.assess(e)))
                print(f"  DICOM check {i}: distance {pairs[-1][0]:.4f}, {pairs[-1][1].status}", flush=True)

    n_real_flag = sum(t.status == "atypical" for _, _, t in real)
    real_scores = np.array([t.score for _, _, t in real])
    lines += [
        "# Typicality: is a study like the ones the model was trained on?",
        "",
        f"Reference of `{enc.manifest.name}` {enc.manifest.version}: {ref.source}. Score: mean cosine distance from a",
        f"study's embedding to its k = {ref.k} nearest reference embeddings; a study is **atypical** above the",
        f"threshold **{ref.threshold:.4f}**, the {ref.quantile:.0%} quantile of the reference's own leave-one-out "
        "scores (so about 1% of",
        "studies drawn like the reference are called atypical). Method and reasons: `cmrdx/model/reference.py`; the",
        "reference lives in the model folder (`reference.npz`, listed in its manifest).",
        "",
        f"Machine: {cpu_name()}, onnxruntime float32 on the CPU (load average {load_average()}); the figures do not "
        "depend on the machine.",
        "",
        "Commands:",
        "",
        "```",
        ".venv/bin/python bench/build_reference.py build",
        "cmrdx synth archive HELDOUT19 --n 100 --seed 19 --prevalence 0.3 --vendors philips "
        "--report-style telegraphic --matrix 160 --phases 20 --workers 2",
        f".venv/bin/python bench/build_reference.py measure --heldout HELDOUT19 --check-dicom {a.check_dicom}",
        "```",
        "",
        "| studies | n | called atypical | score: median (max) | score / threshold: max |",
        "|---|---:|---:|---|---:|",
        f"| held-out phantoms (DICOM, read as a user's studies; Philips style, telegraphic reports, study seeds "
        f"1900000-{1900000 + len(ho) - 1}) | {len(ho)} | **{k_flag / len(ho):.0%}** ({k_flag}; 95% CI "
        f"{lo:.1%}-{hi:.1%}) | {np.median(ho_scores):.3f} ({ho_scores.max():.3f}) | "
        f"{ho_scores.max() / ref.threshold:.2f} |",
        f"| the example study (`examples/phantom-study`) | 1 | {ex.status} | {ex.score:.3f} | "
        f"{(ex.score or 0) / ref.threshold:.2f} |",
        f"| cine studies built from real MR pixels (below) | {len(real)} | **{n_real_flag / len(real):.0%}** "
        f"({n_real_flag}) | {np.median(real_scores):.3f} ({real_scores.max():.3f}) | "
        f"min {real_scores.min() / ref.threshold:.2f} |",
    ]
    if pairs:
        dist = np.array([d for d, _ in pairs])
        n_pair_flag = sum(t.status == "atypical" for _, t in pairs)
        lines.append(f"| reference draws written as DICOM and read back | {len(pairs)} | {n_pair_flag} | "
                     f"{np.median([t.score for _, t in pairs]):.3f} ({max(t.score or 0 for _, t in pairs):.3f}) | "
                     f"{max(t.score or 0 for _, t in pairs) / ref.threshold:.2f} |")
    lines += ["", "Real-pixel studies, each a cine study of the cine factory's layout (short-axis stack, long-axis cines,",
              "LGE) whose frames are one real MR image shifted and scaled per slice and phase:", "",
              "| study | pixels | status | score | percentile in the reference |", "|---|---|---|---:|---:|"]
    for name, what, t in real:
        lines.append(f"| {name} | {what} | {t.status} | {t.score:.3f} | {t.percentile:.1f} |")
    if pairs:
        dist = np.array([d for d, _ in pairs])
        lines += ["", "Arrays versus DICOM: the reference is rendered straight to arrays, as training was; a user's study "
                  "is DICOM",
                  "read through header scan and assembly. The two differ only in the noise stream (the array path keys "
                  "each frame's",
                  f"noise on its view, slice and phase). For the first {len(pairs)} reference draws written as DICOM "
                  "(with distractor series)",
                  f"and read back, the cosine distance between the two embeddings of the same draw is median "
                  f"{np.median(dist):.4f}, max {dist.max():.4f},",
                  f"against a threshold of {ref.threshold:.4f} and a median held-out score of "
                  f"{np.median(ho_scores):.3f}."]
    distinct = len({round(float(t.score or 0), 6) for _, _, t in real})
    lines += ["", "Reading", "",
              "- Held-out phantoms, drawn like the training studies but in a vendor style and at a matrix training "
              "never drew, and read",
              f"  from DICOM: {k_flag} of {len(ho)} called atypical (target < 5%); the reference's own draws read "
              f"from DICOM: {sum(t.status == 'atypical' for _, t in pairs)} of {len(pairs)}.",
              f"- Studies built from real MR pixels: {n_real_flag} of {len(real)} called atypical, the closest at "
              f"{real_scores.min() / ref.threshold:.2f} times the threshold",
              f"  ({distinct} distinct scores: a vendor's naming changes the headers, not the pixels). On such studies "
              "the model's findings mean nothing.",
              "- None of these real-pixel studies is cardiac: no real CMR study ships with the tests. A real cine is "
              "closer to a phantom",
              "  than a brain mosaic is, so how far a real CMR study falls from the phantoms is not measured here."]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    from cmrdx.fileio import atomic_write

    atomic_write(a.out, "\n".join(lines) + "\n")
    print(f"wrote {a.out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the reference and write it into the model folder")
    b.add_argument("--model", default=str(MODEL))
    b.add_argument("--n", type=int, default=400)
    b.add_argument("--seed", type=int, default=23)
    b.add_argument("--k", type=int, default=10)
    b.add_argument("--quantile", type=float, default=0.99)
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--variety", action="store_true", help="draw from the randomised generator (a model trained on it)")
    b.add_argument("--exclude-families", default="", help="with --variety: families its training left out")
    b.add_argument("--classic-fraction", type=float, default=0.0,
                   help="with --variety: the share of classic studies its training mixed in")
    m = sub.add_parser("measure", help="write bench/results/typicality.md")
    m.add_argument("--model", default=str(MODEL))
    m.add_argument("--heldout", type=Path, required=True, help="the held-out phantom archive (see the docstring)")
    m.add_argument("--check-dicom", type=int, default=12, help="reference draws to write as DICOM and compare")
    m.add_argument("--out", type=Path, default=OUT_MD)
    a = ap.parse_args()
    return cmd_build(a) if a.cmd == "build" else cmd_measure(a)


if __name__ == "__main__":
    raise SystemExit(main())
