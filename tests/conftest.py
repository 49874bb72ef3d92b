"""Shared fixtures: where the real DICOM test files live (installed packages, see shared DICOM.md), and
helpers for tests that need an external checker tool."""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # cine_factory


def _pkg_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent if spec.origin else None


def real_data_dirs() -> dict[str, Path]:
    """Folders of real DICOM test files shipped by packages in the dev extra (none is copied into the repo)."""
    out = {}
    for key, pkg, sub in [
        ("pydicom", "pydicom", "data/test_files"),
        ("pydicom-data", "data_store", "data"),
        ("nibabel", "nibabel", "nicom/tests/data"),
        ("pynetdicom", "pynetdicom", "tests/dicom_files"),
        ("heudiconv", "heudiconv", "tests/data"),
    ]:
        d = _pkg_dir(pkg)
        if d is not None and (d / sub).is_dir():
            out[key] = d / sub
    return out


@pytest.fixture(scope="session")
def real_dirs() -> dict[str, Path]:
    dirs = real_data_dirs()
    missing = {"pydicom", "pydicom-data", "nibabel", "pynetdicom", "heudiconv"} - set(dirs)
    if missing:
        pytest.fail(f"real DICOM test data missing: {sorted(missing)}; run `make test` (installs the dev extra)")
    return dirs


@pytest.fixture(scope="session")
def philips_mprage(real_dirs, tmp_path_factory) -> Path:
    """nibabel's Philips Enhanced MR (headers with full functional groups; pixels zeroed), un-gzipped."""
    out = tmp_path_factory.mktemp("nib") / "philips_mprage.dcm"
    out.write_bytes(gzip.open(real_dirs["nibabel"] / "philips_mprage.dcm.gz").read())
    return out


def require_tool(name: str) -> str:
    """Path of an external checker. Missing: skip with a reason locally, fail under CI (CI installs it)."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} not installed (Debian package; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(msg + " -- CI must run this check")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random-weight CMR-CLIP-layout model exported to an ONNX model folder (small recipe: 8 frames of
    32x32), for tests of everything downstream of the encoder. Built once per session (~15 s)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from cmrdx.recipe import get_recipe
    from cmrdx.train.export import ExportOptions, export_model_folder
    from cmrdx.train.model import CMRClip, CMRClipConfig, TextConfig, VideoConfig

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({
        w for w in "left right ventricle is dilated enlarged in size with systolic dysfunction there septal "
        "hypertrophy lv thickened delayed enhancement imaging reveals transmural patchy a large area of lad scar "
        "aortic root ectatic ascending descending aorta pericardial effusion fluid present no normal and".split()
    }) + ["-", ".", ","]
    cfg = CMRClipConfig(
        video=VideoConfig(img_size=32, patch_size=8, width=32, depth=2, heads=4, num_frames=8),
        text=TextConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CMRClip(cfg).eval()
    d = tmp_path_factory.mktemp("tiny_model")
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    recipe = get_recipe("cmrclip-v1", frames=8, image_size=32, resize=36, crop=36, store_size=36, cine_phases=None)
    out = d / "tiny-test-model"
    export_model_folder(
        model, out, vocab_path=d / "vocab.txt", name="tiny-test-model", version="0.0.1",
        recipe={"name": "cmrclip-v1", "params": recipe.to_dict()}, max_length=64,
        provenance={"purpose": "tests only: random weights"}, licence="MIT",
        options=ExportOptions(float16=False, int8=False),
    )
    return out


@pytest.fixture(scope="session")
def phantom_archive(tmp_path_factory) -> Path:
    """A small labelled phantom archive written by `cmrdx synth archive` (12 studies, 64x64, 8 phases)."""
    from cmrdx.synth.archive import write_archive

    out = tmp_path_factory.mktemp("phantoms") / "archive"
    write_archive(out, n=12, seed=3, prevalence=0.5, n_phases=8, matrix=64)
    return out


def findings_bank_without_thresholds() -> str:
    """The shipped cmr-findings bank's text with its per-model thresholds removed (comments kept), for tests that
    write their own thresholds for a test model."""
    import io

    from ruamel.yaml import YAML

    from cmrdx.zeroshot.bank import load_bank

    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    doc = yaml.load(Path(load_bank("cmr-findings").path).read_text())
    for f in doc["findings"]:
        f.pop("thresholds", None)
    buf = io.StringIO()
    yaml.dump(doc, buf)
    return buf.getvalue()
