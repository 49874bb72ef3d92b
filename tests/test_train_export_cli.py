"""Training and export are two commands: `cmrdx train` trains, `cmrdx models export TRAINED --out DIR` exports a
trained.pt; the earlier `cmrdx train --export-trained` command line still works and names the new command."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cmrdx.cli import app

torch = pytest.importorskip("torch")


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_export_refuses_what_training_did_not_write_and_writes_nothing(tmp_path):
    junk = tmp_path / "trained.pt"
    junk.write_text("not a model")
    for argv in (["models", "export", str(junk), "--out", str(tmp_path / "m")],
                 ["train", "--export-trained", str(junk), "--out", str(tmp_path / "m")]):
        r = _run(*argv)
        assert r.exit_code != 0 and "trained.pt: not a torch file" in r.exception.message, argv
        assert "trained.pt written by training" in r.exception.hint
    r = _run("models", "export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m"))
    assert r.exit_code != 0 and "nope.pt: no such file" in r.exception.message
    assert not (tmp_path / "m").exists()


def test_the_old_command_line_names_the_new_command(tmp_path):
    r = CliRunner().invoke(app, ["train", "--export-trained", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m")])
    assert "`cmrdx models export TRAINED --out DIR`" in " ".join(r.output.split())
    assert "nope.pt: no such file" in r.exception.message
    assert "--export-trained" not in _run("train", "--help").output  # hidden: one command, one job
    assert "export" in _run("models", "--help").output


@pytest.mark.slow
def test_models_export_writes_a_verified_model_folder(tmp_path):
    from cmrdx.model.manifest import load_manifest
    from cmrdx.train.trainer import TrainConfig, Trainer

    cfg = TrainConfig(phantoms=8, seed=3, matrix=64, frames=8, image_size=32, resize=48, crop=32, patch=8, width=32,
                      depth=1, heads=2, text_hidden=32, text_layers=1, text_heads=2, text_intermediate=64,
                      projection_dim=16, vocab_size=200, max_length=128, batch_size=8, epochs=1, val_fraction=0.0,
                      checkpoint_every=1000, threads=2)
    tr = Trainer(cfg, tmp_path / "work", progress=False)
    tr.run(max_steps=1)
    trained = tr.save_trained(tmp_path / "trained.pt")
    out = tmp_path / "model"
    r = _run("models", "export", str(trained), "--out", str(out), "--no-int8", "--no-float16")
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert f"exported {trained} to {out}:" in said and "video.onnx" in said
    m = load_manifest(out, verify=True)
    assert m.name == cfg.name and not (out / "video.int8.onnx").exists()
