"""Shared fixtures: real DICOM test data, a tiny exported model, a small phantom archive; and the `torch`
marker on every test that trains or exports a model (`make test-fast` leaves those out)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from helpers.data import real_data_dirs

EXAMPLE_STUDY = Path(__file__).resolve().parents[1] / "examples" / "phantom-study"


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
    with gzip.open(real_dirs["nibabel"] / "philips_mprage.dcm.gz") as f:
        out.write_bytes(f.read())
    return out


@pytest.fixture(scope="module")
def module_home(tmp_path_factory):
    """CMRDX_HOME (caches of prompt and study embeddings) in a folder of the test module's own, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CMRDX_HOME", str(tmp_path_factory.mktemp("home")))
        yield


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
        w for w in ["left", "right", "ventricle", "is", "dilated", "enlarged", "in", "size", "with", "systolic", "dysfunction", "there", "septal", "hypertrophy", "lv", "thickened", "delayed", "enhancement", "imaging", "reveals", "transmural", "patchy", "a", "large", "area", "of", "lad", "scar", "aortic", "root", "ectatic", "ascending", "descending", "aorta", "pericardial", "effusion", "fluid", "present", "no", "normal", "and"]
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


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory, phantom_archive):
    """A real Orthanc (tests/helpers/orthanc.py) holding the example study and the phantom archive's studies; one
    per session. Skips with the reason where Orthanc is not installed (fails under CI)."""
    from helpers.orthanc import Orthanc, free_port

    pacs = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    try:
        # a real PACS answers queries only from the AE titles it knows: cmrdx's is registered (C-MOVE tests
        # register it again with their own port)
        pacs.add_modality("cmrdx", "CMRDX", "127.0.0.1", free_port())
        pacs.upload_tree(EXAMPLE_STUDY / "DICOM")
        pacs.upload_tree(phantom_archive)
        yield pacs
    finally:
        pacs.stop()


@pytest.fixture
def pacs_config(orthanc, tmp_path) -> Path:
    """A pacs.yaml naming the session's Orthanc twice: ``web`` (DICOMweb) and ``dimse`` (C-FIND / C-GET)."""
    from helpers.orthanc import write_pacs_config

    return write_pacs_config(orthanc, tmp_path / "pacs.yaml")


# Fixtures that export or train a model with torch: a test using any of them is marked `torch`.
TORCH_FIXTURES = frozenset({"tiny_model", "trained"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if TORCH_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.torch)
