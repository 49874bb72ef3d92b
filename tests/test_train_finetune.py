"""Fine-tuning from CMR-CLIP (`cmrdx train --init-from`): a tiny random-weight checkpoint in the released layout
starts a run as a file, as its folder and as a model folder imported from it (when the import kept the weights);
the run takes the checkpoint's shapes, starts from its weights and vocabulary exactly, trains, resumes, and
records where it came from; what cannot start a run is refused with the way out."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

from cmrdx.train.trainer import TrainConfig, Trainer, licence_for  # noqa: E402
from helpers.cmrclip import WORDS, write_released  # noqa: E402

# phantoms at the checkpoint's input (4 frames of 32 x 32): the cache is built once and copied into each run
BASE = TrainConfig(phantoms=8, seed=5, matrix=64, batch_size=4, epochs=1, lr=1e-3, warmup_steps=1, val_fraction=0.0,
                   checkpoint_every=1000, threads=2)


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("cmrclip")
    return d, write_released(d)


@pytest.fixture(scope="module")
def first(released, tmp_path_factory) -> Trainer:
    """A run started from the released pytorch_model.bin (config.json and vocab.txt beside it)."""
    d, _ = released
    return Trainer(dataclasses.replace(BASE, init_from=str(d / "pytorch_model.bin")),
                   tmp_path_factory.mktemp("run") / "w", progress=False)


def _same_weights(model, released_state: dict) -> None:
    own = model.state_dict()
    for k, v in released_state.items():
        if k in own:
            assert torch.equal(own[k], v), k


def _work(first: Trainer, dest: Path) -> Path:
    shutil.copytree(first.work / "cache", dest / "cache")  # same source and recipe: no re-rendering
    return dest


def test_a_run_takes_the_released_shapes_weights_and_vocabulary(first, released):
    d, state = released
    tr = first
    c = tr.cfg
    assert (c.frames, c.image_size, c.resize, c.crop, c.patch, c.width, c.depth, c.heads) == (4, 32, 32, 32, 8, 32, 2, 4)
    assert (c.text_hidden, c.text_layers, c.text_heads, c.text_intermediate, c.max_length, c.projection_dim) == \
        (32, 2, 2, 64, 64, 16)
    assert tr.recipe.frames == 4 and tr.cache.videos.shape[1:] == (4, 32, 32)
    _same_weights(tr.model, state)
    assert (tr.work / "vocab.txt").read_text() == (d / "vocab.txt").read_text()
    info = tr.init_info
    assert info["source"] == "CMR-CLIP released checkpoint" and info["file"] == "pytorch_model.bin"
    assert info["adopted"]["width"] == [BASE.width, 32] and info["adopted"]["frames"] == [BASE.frames, 4]
    assert info["config"]["text_params"]["model"] == "tiny-bert"
    # it trains from there, and the export would carry CMR-CLIP's terms
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.run()
    assert tr.step == 2 and all(torch.isfinite(torch.tensor(tr.losses)))
    after = tr.model.state_dict()
    for part in ("video_model.blocks.1.", "text_model.encoder.", "vid_proj.", "txt_proj."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(part)), part
    prov = tr.provenance()
    assert prov["initialised_from"]["sha256"] == info["sha256"]
    assert "CMR-CLIP" in licence_for(prov) and "phantom" not in licence_for(prov)


def test_a_fine_tuning_run_resumes_under_the_same_adopted_shapes(first, released, tmp_path):
    d, _ = released
    cfg = dataclasses.replace(BASE, init_from=str(d), epochs=2)  # the released folder this time
    a = Trainer(cfg, _work(first, tmp_path / "a"), progress=False)
    a.run(max_steps=1)
    b = Trainer(cfg, tmp_path / "a", progress=False)  # the same command again: resumes
    assert b.step == 1 and b.cfg.identity() == a.cfg.identity()
    b.run()
    assert b.step == 4


@pytest.mark.slow
def test_an_imported_model_folder_starts_a_run_when_it_keeps_the_weights(first, released, tmp_path):
    from typer.testing import CliRunner

    from cmrdx.cli import app
    from cmrdx.train.cmrclip_import import import_cmrclip
    from cmrdx.train.export import ExportOptions

    d, state = released
    folder = tmp_path / "models" / "cmrclip"
    import_cmrclip(d / "pytorch_model.bin", d / "config.json", d / "vocab.txt", folder, name="tiny",
                   options=ExportOptions(float16=False, int8=False))
    cfg = dataclasses.replace(BASE, init_from=str(folder))
    # the ONNX files cannot be trained: refused before any study is rendered, with the way out
    with pytest.raises(ValueError, match="holds the ONNX model only") as e:
        Trainer(cfg, tmp_path / "w0", progress=False)
    assert "pytorch_model.bin (with config.json and vocab.txt beside it)" in str(e.value)
    assert not (tmp_path / "w0" / "cache").exists()
    r = CliRunner().invoke(app, ["train", "--init-from", str(folder), "--out", str(tmp_path / "m"),
                                 "--work", str(tmp_path / "w1")])
    assert r.exit_code == 1 and "holds the ONNX model only" in r.exception.message and r.exception.hint
    # another file under the checkpoint's name is refused by its sha256
    (folder / "pytorch_model.bin").write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="not the checkpoint the model was imported from"):
        Trainer(cfg, tmp_path / "w0", progress=False)
    # imported again keeping the weights (the file above replaced): the run starts from the checkpoint kept in the
    # folder, with the vocabulary of the folder's tokenizer.json and the head counts of its recorded config.json
    rep = import_cmrclip(d / "pytorch_model.bin", d / "config.json", d / "vocab.txt", folder, name="tiny",
                         options=ExportOptions(float16=False, int8=False), keep_weights=True)
    assert "pytorch_model.bin" in rep.files
    assert (folder / "pytorch_model.bin").read_bytes() == (d / "pytorch_model.bin").read_bytes()
    tr = Trainer(cfg, _work(first, tmp_path / "w2"), progress=False)
    _same_weights(tr.model, state)
    assert (tr.work / "vocab.txt").read_text().splitlines() == WORDS
    assert (tr.cfg.heads, tr.cfg.text_heads) == (4, 2)
    assert tr.init_info["source"] == "CMR-CLIP model folder" and tr.init_info["model"]["name"] == "tiny"
    tr.run(max_steps=1)
    assert tr.step == 1
