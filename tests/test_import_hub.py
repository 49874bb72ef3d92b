"""`cmrdx models import-cmrclip --keep-weights` and `--from-hub`, offline.

--keep-weights: the checkpoint and its config.json are kept in the model folder, byte for byte, listed in the
manifest (``models verify`` checks them) and outside the model's identity; they are placed atomically (a partial
or changed file never stands under the final name), by a link where the file system allows, else a copy.

--from-hub: a Hugging Face Hub on 127.0.0.1 (tests/helpers/hubserver.py, the hub's URL layout, git and LFS files,
a CDN) serves a tiny random-weight checkpoint in the released layout and the vocab.txt of the BERT its config
names. The import fetches, verifies and imports them and records where they came from; a second import reads them
from the cache; a missing repository, file or revision, a private repository, a corrupted download and an
unreachable hub are errors that name what and the fix. No test reaches beyond the loopback interface
(``loopback_only``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
pytest.importorskip("huggingface_hub")

from cmrdx.errors import ModelError  # noqa: E402
from cmrdx.model.manifest import load_manifest  # noqa: E402
from helpers.cli import in_process as cli  # noqa: E402
from helpers.cmrclip import write_released  # noqa: E402
from helpers.hubserver import HubServer  # noqa: E402

WEIGHTS = "makiyeah/CMRCLIP"  # the default --repo
TEXT = "tiny-org/tiny-bert"  # the BERT the test checkpoint's config.json names
PRIVATE = "private-org/cmrclip"
TOKEN = "hf_cmrdxTestToken0123456789"
FAST = ["--no-int8", "--no-float16", "--no-validate"]
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """A connection or a name look-up beyond the loopback interface fails the test."""
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(self, address):
        if isinstance(address, tuple) and str(address[0]) not in LOOPBACK:
            raise AssertionError(f"a test tried to reach {address}")
        return connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and str(host) not in LOOPBACK:
            raise AssertionError(f"a test tried to look up {host}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """The released layout (tests/helpers/cmrclip.py), its config naming the BERT repository TEXT."""
    d = tmp_path_factory.mktemp("released")
    write_released(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_params"]["model"] = TEXT
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="module")
def hub(released):
    with HubServer() as server:
        server.add_folder(WEIGHTS, released, ["config.json", "pytorch_model.bin"])
        server.add_folder(TEXT, released, ["vocab.txt"])
        server.add_folder(PRIVATE, released, ["config.json", "pytorch_model.bin"], token=TOKEN)
        server.add_folder("other-org/no-weights", released, ["config.json"])
        corrupt = server.add_folder("other-org/corrupt", released, ["config.json", "pytorch_model.bin"])
        good = corrupt.files["pytorch_model.bin"]
        corrupt.served["pytorch_model.bin"] = good[:-1] + bytes([good[-1] ^ 0xFF])  # same size, other bytes
        cfg = json.loads((released / "config.json").read_text())
        cfg["text_params"]["model"] = "tiny-org/absent-bert"
        server.add_repo("other-org/no-bert", {"config.json": json.dumps(cfg).encode(),
                                              "pytorch_model.bin": good}, lfs={"pytorch_model.bin"})
        yield server


@pytest.fixture
def hub_env(hub, tmp_path, monkeypatch) -> Path:
    """huggingface_hub's environment pointed at the local hub, its cache (HF_HOME) in tmp_path; returns HF_HOME."""
    home = tmp_path / "hf-home"
    for k in ("HF_HUB_CACHE", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("CMRDX_HOME", str(tmp_path / "cmrdx-home"))
    monkeypatch.setenv("CMRDX_PROGRESS", "0")
    return home


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- --keep-weights


@pytest.mark.slow
def test_keep_weights_keeps_the_checkpoint_verified_and_outside_the_identity(released, hub_env, tmp_path):
    out = tmp_path / "models" / "tiny"
    code, stdout, stderr = cli("models", "import-cmrclip", "--checkpoint", str(released / "pytorch_model.bin"),
                               "--config", str(released / "config.json"), "--vocab", str(released / "vocab.txt"),
                               "--out", str(out), "--name", "tiny", "--keep-weights", *FAST)
    assert code == 0, stderr
    assert "kept pytorch_model.bin" in stdout and "kept config.json" in stdout
    for name in ("pytorch_model.bin", "config.json"):
        assert (out / name).read_bytes() == (released / name).read_bytes()
    assert no_temporaries(out)
    m = load_manifest(out)  # every file checked, the kept ones too
    prov = m.provenance
    assert m.files["pytorch_model.bin"]["sha256"] == prov["checkpoint"]["sha256"] == sha256(released / "pytorch_model.bin")
    assert m.files["config.json"]["sha256"] == prov["config"]["sha256"]
    # the identity is the ONNX model's: the same with the kept files taken out of the list
    bare = dataclasses.replace(m, files={k: v for k, v in m.files.items() if k not in ("pytorch_model.bin", "config.json")})
    assert m.sha256 == bare.sha256
    assert set(m.identity_document()["files"]) == {"video.onnx", "text.onnx", "tokenizer.json"}
    # what the import kept starts a fine-tuning run
    from cmrdx.train.finetune import load_warm_start

    ws = load_warm_start(out)
    assert ws.info["source"] == "CMR-CLIP model folder" and ws.info["sha256"] == prov["checkpoint"]["sha256"]
    # `models verify` covers the kept files: a changed byte is named, exit 8
    code, stdout, _ = cli("models", "verify", str(out))
    assert code == 0 and f"{len(m.files)} files intact" in stdout
    data = bytearray((out / "pytorch_model.bin").read_bytes())
    data[-1] ^= 0xFF
    (out / "pytorch_model.bin").unlink()  # (a hard link: the released file must stay as it is)
    (out / "pytorch_model.bin").write_bytes(bytes(data))
    code, _, stderr = cli("models", "verify", str(out))
    assert code == 8 and "pytorch_model.bin" in stderr and "Traceback" not in stderr
    assert sha256(released / "pytorch_model.bin") == prov["checkpoint"]["sha256"]


def test_keep_file_links_or_copies_verified_bytes_and_never_leaves_a_partial_file(tmp_path, monkeypatch):
    from cmrdx.train import cmrclip_import as ci

    src = tmp_path / "src" / "pytorch_model.bin"
    src.parent.mkdir()
    src.write_bytes(os.urandom(3 << 20))
    digest = sha256(src)
    folder = tmp_path / "model"
    folder.mkdir()
    dest = folder / "pytorch_model.bin"
    # the same file system: a reflink or a hard link
    how = ci.keep_file(src, dest, digest)
    assert how in ("reflink", "hard link") and dest.read_bytes() == src.read_bytes() and no_temporaries(folder)
    assert ci.keep_file(dest, dest, digest) == "in place"
    # no link possible (another file system): a copy, with the permissions of a new file, replacing the old one
    dest.unlink()
    dest.write_bytes(b"an older file")
    monkeypatch.setattr(ci, "_reflink", lambda _src, _fd: False)

    def no_link(*_a):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(ci.os, "link", no_link)
    assert ci.keep_file(src, dest, digest) == "copy"
    assert dest.read_bytes() == src.read_bytes() and dest.stat().st_ino != src.stat().st_ino
    assert dest.stat().st_mode & 0o777 != 0o600 and no_temporaries(folder)
    # bytes that are not what the import recorded: refused, and the file under the name stays as it was
    dest.write_bytes(b"the kept file of an earlier import")
    with pytest.raises(ModelError, match="is not the .* the import recorded"):
        ci.keep_file(src, dest, "0" * 64)
    assert dest.read_bytes() == b"the kept file of an earlier import" and no_temporaries(folder)
    # a copy that fails half-way (a full disk): nothing under the name, no temporary file left

    def half_copy(_src, dst):
        dst.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ci, "_copy_hashing", half_copy)
    dest.unlink()
    with pytest.raises(OSError):
        ci.keep_file(src, dest, digest)
    assert not dest.exists() and no_temporaries(folder)


# ---------------------------------------------------------------- --from-hub


@pytest.mark.slow
def test_from_hub_imports_the_released_files_then_reads_them_from_the_cache(released, hub, hub_env, tmp_path):
    from cmrdx.train.cmrclip_import import import_cmrclip_from_hub
    from cmrdx.train.export import ExportOptions

    out = tmp_path / "models" / "cmrclip"
    cdn_gets = hub.count("GET", "pytorch_model.bin", server="cdn")
    code, stdout, stderr = cli("models", "import-cmrclip", "--from-hub", "--keep-weights", "--out", str(out),
                               "--name", "tiny", *FAST)
    assert code == 0, stderr
    assert hub.count("GET", "pytorch_model.bin", server="cdn") == cdn_gets + 1
    assert f"fetched {WEIGHTS}/pytorch_model.bin" in stderr and f"fetched {TEXT}/vocab.txt" in stderr
    # the files the hub serves, in the cache under HF_HOME, and the weights kept in the model folder
    snap = hub_env / "hub" / "models--makiyeah--CMRCLIP" / "snapshots" / hub.repos[WEIGHTS].commit
    for name in ("pytorch_model.bin", "config.json"):
        assert (snap / name).read_bytes() == (released / name).read_bytes() == (out / name).read_bytes()
    m = load_manifest(out)
    assert "pytorch_model.bin" in m.files and m.tokenizer["vocab_sha256"] == sha256(released / "vocab.txt")
    h = m.provenance["hub"]
    assert h["endpoint"] == hub.endpoint
    assert h["weights"]["repo"] == WEIGHTS and h["weights"]["revision"] == "main"
    assert h["weights"]["commit"] == hub.repos[WEIGHTS].commit
    assert h["weights"]["files"]["pytorch_model.bin"] == {
        "etag": sha256(released / "pytorch_model.bin"), "bytes": (released / "pytorch_model.bin").stat().st_size,
        "verified": "sha256"}
    assert h["weights"]["files"]["config.json"]["verified"] == "git-sha1"
    assert h["text_model"]["repo"] == TEXT and h["text_model"]["commit"] == hub.repos[TEXT].commit
    assert h["text_model"]["files"]["vocab.txt"]["verified"] == "git-sha1"
    assert m.provenance["checkpoint"]["sha256"] == sha256(released / "pytorch_model.bin")
    assert TOKEN not in (out / "manifest.json").read_text()
    # the token went to the hub, not to the CDN
    assert {q.authorization for q in hub.requests if q.server == "cdn"} == {None}
    assert f"Bearer {TOKEN}" in {q.authorization for q in hub.requests if q.server == "hub"}
    # a second import (the Python API, no weights kept) asks the hub again but downloads nothing
    rep = import_cmrclip_from_hub(tmp_path / "models" / "again", name="tiny",
                                  options=ExportOptions(float16=False, int8=False, validate_int8=False))
    assert hub.count("GET", "pytorch_model.bin", server="cdn") == cdn_gets + 1
    again = load_manifest(tmp_path / "models" / "again")
    assert again.provenance["hub"]["weights"]["commit"] == h["weights"]["commit"]
    assert "pytorch_model.bin" not in again.files and not (tmp_path / "models" / "again" / "pytorch_model.bin").exists()
    assert "manifest.json" in rep.files


def test_fetch_checks_every_file_against_the_hub_and_uses_the_cache_offline(released, hub, hub_env, monkeypatch):
    from cmrdx.train.hub import fetch_released

    files = fetch_released()
    assert [f.verified for f in files.files] == ["git-sha1", "sha256", "git-sha1"]
    assert files.checkpoint.read_bytes() == (released / "pytorch_model.bin").read_bytes()
    assert files.vocab.read_bytes() == (released / "vocab.txt").read_bytes()
    # HF_HUB_OFFLINE: the cache only, not one request
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(hub.requests)
    cached = fetch_released()
    assert len(hub.requests) == n and all(f.cached for f in cached.files)
    assert cached.provenance["weights"]["commit"] == hub.repos[WEIGHTS].commit
    assert [f.verified for f in cached.files] == ["git-sha1", "sha256", "git-sha1"]  # by the blobs' names
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set .* holds no other-org/no-bert/config.json"):
        fetch_released("other-org/no-bert")
    # the hub unreachable: what the cache holds is used, and said
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", closed_endpoint())
    cached = fetch_released()
    assert all(f.cached for f in cached.files) and "could not be reached" in cached.notes[0]


def test_a_corrupted_download_is_refused_by_its_sha256(hub_env):
    from cmrdx.train.hub import fetch_released

    with pytest.raises(ModelError, match=r"other-org/corrupt/pytorch_model.bin .*: sha256 .* is not the .* hub gives") as e:
        fetch_released("other-org/corrupt")
    assert "delete the cached copy" in str(e.value.hint)


@pytest.mark.parametrize("args, expect", [
    (["--repo", "nobody/nothing"], "no repository nobody/nothing (the weights)"),
    (["--repo", "other-org/no-weights"], "has no file pytorch_model.bin"),
    (["--revision", "v9"], f"the repository {WEIGHTS} has no revision 'v9'"),
    (["--repo", "other-org/no-bert"], "no repository tiny-org/absent-bert (the text model other-org/no-bert's config.json names)"),
    (["--repo", "not a repo!"], "'not a repo!' (the weights) is not a hub repository name"),
])
def test_what_the_hub_does_not_have_is_a_clear_error(args, expect, hub_env, tmp_path):
    code, _, stderr = cli("models", "import-cmrclip", "--from-hub", *args, "--out", str(tmp_path / "m"), *FAST)
    assert code == ModelError.exit_code, stderr
    assert expect in stderr and "fix:" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "m").exists()


def test_a_private_repository_opens_with_its_token_only(hub_env, monkeypatch, tmp_path):
    from cmrdx.train.hub import fetch_released

    assert fetch_released(PRIVATE).provenance["weights"]["repo"] == PRIVATE  # HF_TOKEN: the test's token
    monkeypatch.setenv("HF_TOKEN", "hf_someoneElsesToken")
    code, _, stderr = cli("models", "import-cmrclip", "--from-hub", "--repo", PRIVATE, "--out", str(tmp_path / "m"))
    assert code == 8 and f"no repository {PRIVATE}" in stderr and "private" in stderr and "HF_TOKEN" in stderr
    assert "hf_someoneElsesToken" not in stderr and "Traceback" not in stderr


def closed_endpoint() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_an_unreachable_hub_is_a_clear_error_naming_the_endpoint_and_the_ways_out(hub_env, monkeypatch, tmp_path):
    endpoint = closed_endpoint()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    code, _, stderr = cli("models", "import-cmrclip", "--from-hub", "--out", str(tmp_path / "m"))
    assert code == 8 and "Traceback" not in stderr
    assert f"cannot reach the Hugging Face Hub at {endpoint}" in stderr
    for way_out in ("HF_ENDPOINT", "HF_HUB_OFFLINE=1", "--checkpoint, --config and --vocab"):
        assert way_out in stderr


@pytest.mark.parametrize("args, named", [
    (["--from-hub", "--checkpoint", "{bin}"], ["--from-hub", "--checkpoint"]),
    (["--from-hub", "--config", "{cfg}", "--vocab", "{vocab}"], ["--from-hub", "--config", "--vocab"]),
    (["--repo", "a/b"], ["--repo", "--from-hub"]),
    (["--checkpoint", "{bin}"], ["--config", "--vocab", "--from-hub"]),
])
def test_files_and_from_hub_are_one_or_the_other(args, named, released, hub, hub_env, tmp_path):
    files = {"bin": released / "pytorch_model.bin", "cfg": released / "config.json", "vocab": released / "vocab.txt"}
    asked = len(hub.requests)
    code, _, stderr = cli("models", "import-cmrclip", *[a.format(**files) for a in args], "--out", str(tmp_path / "m"))
    assert code == 2 and "Traceback" not in stderr
    line = stderr.splitlines()[0]
    assert line.startswith("error:") and all(opt in line for opt in named), stderr
    assert len(hub.requests) == asked and not (tmp_path / "m").exists()  # refused before any work
