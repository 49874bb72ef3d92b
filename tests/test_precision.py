"""Choosing the video precision (`--precision auto|float32|float16|int8`), validating the int8 copy into the manifest
(outside the model's identity), saved optimised graphs, remembered file hashes, and progress shown only on a
terminal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cmrdx.cli import app
from cmrdx.errors import EXIT_CODES, ModelError
from cmrdx.model import manifest as manifest_mod
from cmrdx.model.manifest import load_manifest, update_manifest, write_manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("CMRDX_HOME", str(tmp_path / "home"))
    from cmrdx.model.loader import clear_cache

    clear_cache()
    yield
    clear_cache()


@pytest.fixture(scope="module")
def int8_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny test model with an int8 copy of its video file (a model of its own: a new identity)."""
    from cmrdx.train.export import to_int8

    d = tmp_path_factory.mktemp("int8") / "tiny-int8"
    shutil.copytree(tiny_model, d, ignore=shutil.ignore_patterns(".optimized"))
    to_int8(d / "video.onnx", d / "video.int8.onnx")
    raw = json.loads((d / "manifest.json").read_text())
    raw["name"] = "tiny-int8"
    raw["video"]["int8"] = "video.int8.onnx"
    files = [*raw["files"], "video.int8.onnx"]
    del raw["files"]
    write_manifest(d, raw, files)
    return d


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".optimized"))
    return dst


def _record(m, status: str = "validated", **over):
    rec = {"status": status, "for": ["cpu"], "file": m.video["int8"], "sha256": m.files[m.video["int8"]]["sha256"],
           "against": {"file": m.video["float32"], "sha256": m.files[m.video["float32"]]["sha256"]},
           "min_cosine": 0.9995, "studies": 4, "reasons": [] if status == "validated" else ["min cosine 0.9 < 0.99"]}
    rec.update(over)
    return rec


# ---------------------------------------------------------------- choosing a precision


def test_auto_is_float32_on_the_cpu_until_the_int8_copy_is_validated(int8_model, tmp_path):
    from cmrdx.model.encoder import Encoder, resolve_precision

    d = _copy(int8_model, tmp_path / "m")
    m = load_manifest(d)
    assert resolve_precision(m, "cpu", "auto")[0] == "float32"
    assert "not validated" in resolve_precision(m, "cpu", "auto")[1]
    assert resolve_precision(m, "cuda", "auto")[0] == "float32"  # no float16 file: float32 on CUDA
    ident = m.sha256
    update_manifest(d, {"validation": {"int8": _record(m)}})
    m2 = load_manifest(d)
    assert m2.sha256 == ident  # the record is about the model, not part of it
    prec, why = resolve_precision(m2, "cpu", "auto")
    assert prec == "int8" and "validated" in why and "0.9995" in why
    assert resolve_precision(m2, "cpu", None)[0] == "float32"  # the Encoder's plain default is unchanged
    enc = Encoder(d, device="cpu", precision="auto")
    assert (enc.precision, enc.description) == ("int8", "cpu (int8)")
    assert Encoder(d, device="cpu").precision == "float32"
    # int8 is a CPU copy: with device auto it runs on the CPU whatever the machine has
    assert Encoder(d, device="auto", precision="int8").description == "cpu (int8)"


@pytest.mark.parametrize("change", ["failed", "other int8 file", "other float32 file", "for cuda only"])
def test_auto_ignores_a_failed_or_stale_validation(int8_model, tmp_path, change):
    from cmrdx.model.encoder import resolve_precision

    d = _copy(int8_model, tmp_path / "m")
    m = load_manifest(d)
    rec = {"failed": _record(m, "failed"),
           "other int8 file": _record(m, sha256="0" * 64),
           "other float32 file": _record(m, against={"file": "video.onnx", "sha256": "1" * 64}),
           "for cuda only": _record(m, **{"for": ["cuda"]})}[change]
    update_manifest(d, {"validation": {"int8": rec}})
    prec, why = resolve_precision(load_manifest(d), "cpu", "auto")
    assert prec == "float32", why
    assert "validate-int8" in why


def test_an_asked_precision_the_model_lacks_names_the_model_and_the_fix(tiny_model, int8_model):
    from cmrdx.model.encoder import Encoder

    with pytest.raises(ModelError) as e:
        Encoder(tiny_model, device="cpu", precision="int8")
    assert "tiny-test-model" in e.value.message and "no int8 video file" in e.value.message
    assert "--precision auto" in e.value.hint and "--no-int8" in e.value.hint
    with pytest.raises(ModelError, match="no float16"):
        Encoder(tiny_model, device="cpu", precision="float16")
    with pytest.raises(ModelError, match="runs on the CPU"):
        Encoder(int8_model, device="cuda", precision="int8")
    with pytest.raises(ModelError, match="precision must be one of"):
        Encoder(int8_model, device="cpu", precision="int4")


def test_get_encoder_keys_its_cache_by_precision(int8_model):
    from cmrdx.model.loader import get_encoder

    a = get_encoder(int8_model, "cpu", "float32")
    b = get_encoder(int8_model, "cpu", "int8")
    assert a is not b and (a.precision, b.precision) == ("float32", "int8")
    assert get_encoder(int8_model, "cpu", "int8") is b


def test_precision_on_the_command_line(int8_model, tiny_model, tmp_path):
    archive = tmp_path / "archive"
    shutil.copytree(ROOT / "examples" / "phantom-study" / "DICOM", archive / "study-1")
    r = CliRunner().invoke(app, ["batch", str(archive), "--out", str(tmp_path / "r.jsonl"), "--model",
                                 str(int8_model), "--device", "cpu", "--precision", "int8", "--workers", "1"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "cpu (int8)" in r.output and "asked for int8" in r.output
    # piped (the CliRunner is not a terminal): the table, never a progress bar
    assert "studies/s" in r.output and "━" not in r.output
    bad = CliRunner().invoke(app, ["batch", str(archive), "--out", str(tmp_path / "s.jsonl"), "--precision", "int4"])
    assert bad.exit_code == 2 and "int4" in bad.output
    missing = CliRunner().invoke(app, ["eval", "speed", "--model", str(tiny_model), "--study",
                                       str(ROOT / "examples" / "phantom-study"), "--precision", "int8"])
    assert getattr(missing.exception, "exit_code", None) == EXIT_CODES["ModelError"]
    assert "no int8 video file" in missing.exception.message
    ok = CliRunner().invoke(app, ["eval", "speed", "--model", str(int8_model), "--study",
                                  str(ROOT / "examples" / "phantom-study"), "--precision", "int8", "--repeats", "1"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["precision"] == "int8"


# ---------------------------------------------------------------- validating the int8 copy


def test_validate_int8_records_outside_the_identity_and_auto_follows_it(int8_model, tmp_path):
    d = _copy(int8_model, tmp_path / "m")
    before = load_manifest(d)
    r = CliRunner().invoke(app, ["models", "validate-int8", str(d), "--phantoms", "1", "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output)  # --json: the record and nothing else on stdout
    assert rec["studies"] == 2 and "example study" in rec["inputs"] and "4300000" in rec["inputs"]
    assert rec["file"] == "video.int8.onnx" and rec["sha256"] == before.files["video.int8.onnx"]["sha256"]
    assert rec["against"]["sha256"] == before.files["video.onnx"]["sha256"]
    assert 0.9 < rec["min_cosine"] <= 1.0 and rec["max_score_shift"] is not None
    assert rec["status"] == ("validated" if not rec["reasons"] else "failed")
    after = load_manifest(d)  # still verifies
    assert after.sha256 == before.sha256 and after.validation["int8"] == rec
    from cmrdx.model.encoder import resolve_precision

    assert resolve_precision(after, "cpu", "auto")[0] == ("int8" if rec["status"] == "validated" else "float32")
    info = CliRunner().invoke(app, ["models", "verify", str(d)])
    assert info.exit_code == 0 and "video precisions: float32, int8" in info.output
    # a dry run measures and leaves the manifest alone
    raw = (d / "manifest.json").read_bytes()
    dry = CliRunner().invoke(app, ["models", "validate-int8", str(d), "--phantoms", "1", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "cosine" in dry.output and (d / "manifest.json").read_bytes() == raw


def test_validate_int8_refuses_a_model_without_one(tiny_model):
    r = CliRunner().invoke(app, ["models", "validate-int8", str(tiny_model), "--phantoms", "1"])
    assert getattr(r.exception, "exit_code", None) == EXIT_CODES["ModelError"]
    assert "no int8 video file" in r.exception.message


def test_the_agreement_figures():
    from cmrdx.model.validate import embedding_agreement

    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((5, 16))
    close = embedding_agreement(f32, f32 + 1e-4 * rng.standard_normal((5, 16)))
    assert close["min_cosine"] > 0.9999 and close["relative_shift"] < 1e-3
    # studies that barely differ (a random-weight model): a tiny int8 shift is large next to them
    same = np.ones((5, 16)) + 1e-3 * rng.standard_normal((5, 16))
    near = embedding_agreement(same, same + 1e-3 * rng.standard_normal((5, 16)))
    assert near["min_cosine"] > 0.99 and near["relative_shift"] > 0.1


def test_the_bundled_model_keeps_its_identity_whatever_its_validation_says():
    bundled = load_manifest(ROOT / "models" / "cmrdx-phantom-small")
    doc = bundled.identity_document()
    assert "validation" not in doc and "validation" not in doc["video"]


# ---------------------------------------------------------------- saved optimised graphs


def test_saved_graphs_load_the_same_model_and_a_changed_one_is_made_again(int8_model, tmp_path):
    from cmrdx.model.encoder import Encoder

    d = _copy(int8_model, tmp_path / "m")
    x = np.random.default_rng(3).standard_normal((2, 8, 3, 32, 32)).astype(np.float32)
    first = Encoder(d, device="cpu", precision="float32")
    assert first.graphs == {"video.onnx": "optimised+saved"}
    saved = list((d / ".optimized").glob("video.cpu.*.onnx"))
    assert len(saved) == 1 and (saved[0].parent / (saved[0].name + ".sha256")).is_file()
    second = Encoder(d, device="cpu", precision="float32")
    assert second.graphs == {"video.onnx": "saved"}
    np.testing.assert_allclose(second.encode_studies(x), first.encode_studies(x), atol=1e-6)
    # a saved graph whose bytes changed is not used: optimised (and saved) again, same embeddings
    with open(saved[0], "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\0\0\0\0")
    third = Encoder(d, device="cpu", precision="float32")
    assert third.graphs == {"video.onnx": "optimised+saved"}
    np.testing.assert_allclose(third.encode_studies(x), first.encode_studies(x), atol=1e-6)
    # the text tower too, when it loads
    third.encode_texts(["left ventricle is dilated"])
    assert third.graphs["text.onnx"] == "optimised+saved"


def test_saved_graphs_go_to_the_cache_for_a_read_only_or_bundled_model(int8_model, tmp_path, monkeypatch):
    from cmrdx.model import optcache
    from cmrdx.model.encoder import Encoder

    d = _copy(int8_model, tmp_path / "ro")
    writable = optcache._writable
    # a model folder that cannot be written (as a non-root user sees a read-only folder)
    monkeypatch.setattr(optcache, "_writable", lambda p: not Path(p).is_relative_to(d) and writable(p))
    enc = Encoder(d, device="cpu", precision="int8")
    assert enc.graphs == {"video.int8.onnx": "optimised+saved"} and not (d / ".optimized").exists()
    home = Path(os.environ["CMRDX_HOME"]) / "cache" / "optimized"
    assert list(home.rglob("video.int8.cpu.*.onnx"))
    assert Encoder(d, device="cpu", precision="int8").graphs == {"video.int8.onnx": "saved"}
    bundled = load_manifest(ROOT / "models" / "cmrdx-phantom-small", verify=False)
    assert optcache.folders(bundled) == [home / bundled.sha256[:32]]
    monkeypatch.setenv("CMRDX_SAVED_GRAPHS", "0")
    e2 = _copy(int8_model, tmp_path / "off")
    assert Encoder(e2, device="cpu", precision="int8").graphs == {"video.int8.onnx": "optimised"}
    assert not (e2 / ".optimized").exists()


def test_a_graph_key_changes_with_the_source_the_runtime_and_the_provider():
    from cmrdx.model.optcache import GraphKey

    k = GraphKey("a" * 64, "1.31.1", "cpu")
    assert len({k.digest, GraphKey("b" * 64, "1.31.1", "cpu").digest, GraphKey("a" * 64, "1.32.0", "cpu").digest,
                GraphKey("a" * 64, "1.31.1", "cuda").digest}) == 4
    assert k.file_name("video.int8.onnx").startswith("video.int8.cpu.")


# ---------------------------------------------------------------- remembered file hashes


def test_a_remembered_hash_is_used_only_for_the_same_file(int8_model, tmp_path, monkeypatch):
    d = _copy(int8_model, tmp_path / "m")
    f = d / "tokenizer.json"
    st = f.stat()
    changed = max(st.st_mtime_ns, st.st_ctime_ns)
    # a file changed within the last RACY_NS is hashed every time (its change could hide in the timestamps)
    monkeypatch.setattr(manifest_mod, "_now_ns", lambda: changed + manifest_mod.RACY_NS)
    manifest_mod.known_sha256(f)
    assert not list((Path(os.environ["CMRDX_HOME"]) / "cache" / "verified").glob("*.json"))
    monkeypatch.setattr(manifest_mod, "_now_ns", lambda: changed + manifest_mod.RACY_NS + 1)
    want = manifest_mod.sha256_file(f)
    assert manifest_mod.known_sha256(f) == want
    entries = list((Path(os.environ["CMRDX_HOME"]) / "cache" / "verified").glob("*.json"))
    assert len(entries) == 1
    calls = []
    monkeypatch.setattr(manifest_mod, "sha256_file", lambda p, *a, **k: calls.append(p) or "x")
    assert manifest_mod.known_sha256(f) == want and calls == []  # remembered: not read again
    monkeypatch.undo()
    monkeypatch.setenv("CMRDX_HOME", str(tmp_path / "home"))
    f.write_text(f.read_text() + " ")  # changed: its size, mtime and ctime move
    with pytest.raises(ModelError, match="tokenizer.json: sha256"):
        load_manifest(d)  # the load check sees it, remembered hash or not
    r = CliRunner().invoke(app, ["models", "verify", str(d)])
    assert getattr(r.exception, "exit_code", None) == EXIT_CODES["ModelError"]
    assert "tokenizer.json" in r.exception.message


# ---------------------------------------------------------------- progress only on a terminal


SHOW = ("from cmrdx.cli.progress import counter, stages\n"
        "with stages('importing the thing') as s:\n    s('stage one')\n"
        "with counter('encoding studies') as p:\n    p(1, 2)\n"
        "print('done')\n")


def test_progress_is_drawn_on_a_terminal_and_nothing_is_when_piped(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="xterm", CMRDX_HOME=str(tmp_path))
    piped = subprocess.run([sys.executable, "-c", SHOW], capture_output=True, text=True, env=env, timeout=120)
    assert piped.returncode == 0 and piped.stdout == "done\n" and piped.stderr == ""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([sys.executable, "-c", SHOW], stdout=subprocess.PIPE, stderr=slave, env=env)
        os.close(slave)
        chunks = []
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not b:
                break
            chunks.append(b)
        out, _ = p.communicate(timeout=120)
    finally:
        os.close(master)
    drawn = b"".join(chunks).decode("utf-8", "replace")
    assert out == b"done\n"
    assert "importing the thing" in drawn and "encoding studies" in drawn


def test_an_int8_embedding_does_not_depend_on_the_studies_beside_it_in_a_batch():
    """The int8 copy quantises activations over the whole run: the encoder runs it one study at a time, so a
    study's embedding is the same alone and in any batch (a resumed batch run equals an uninterrupted one)."""
    import onnxruntime as ort

    from cmrdx.model.encoder import Encoder
    from cmrdx.recipe import apply_recipe
    from cmrdx.study.assemble import assemble_study

    enc = Encoder("cmrdx-phantom-small", device="cpu", precision="int8")
    a = apply_recipe(assemble_study(ROOT / "examples" / "phantom-study"), enc.manifest.recipe_params()).array
    b = np.clip(a * 3.0, -3.0, 3.0).astype(np.float32)  # a brighter study beside it: another activation range
    alone = enc.encode_studies(a[None])[0]
    for batch, at in ((np.stack([a, b]), 0), (np.stack([b, a, b]), 1)):
        np.testing.assert_array_equal(enc.encode_studies(batch)[at], alone)
    # why: the int8 file itself, given the batch in one run, moves the study's embedding
    s = ort.InferenceSession(str(enc.manifest.path(enc.manifest.video["int8"])), providers=["CPUExecutionProvider"])
    one = s.run(None, {"video": a[None]})[0][0]
    two = s.run(None, {"video": np.stack([a, b])})[0][0]
    assert not np.array_equal(one, two)
