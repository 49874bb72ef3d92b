"""A model's reference of typical studies (cmrdx.model.reference) and its identity (Manifest.sha256).

The reference: leave-one-out scores and threshold computed as documented, saved and read back unchanged,
outliers of clustered embeddings flagged and inliers not; the bundled model's shipped reference calls a study
built from real MR pixels atypical and the example phantom study typical; `cmrdx models reference` builds a
verifiable reference from an archive. The identity: what makes the embeddings only."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cmrdx.cli import app
from cmrdx.errors import EXIT_CODES, CmrdxError, ModelError
from cmrdx.model.manifest import load_manifest, sha256_file, update_manifest
from cmrdx.model.reference import Reference, Typicality, build_reference, install_reference, load_reference

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "cmrdx-phantom-small"


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("CMRDX_HOME", str(tmp_path / "home"))


def clusters(rng: np.random.Generator, n: int, centres: np.ndarray, spread: float = 0.25) -> np.ndarray:
    """``n`` unit vectors scattered around the rows of ``centres`` (drawn in turn)."""
    x = centres[np.arange(n) % len(centres)] + spread * rng.standard_normal((n, centres.shape[1])) / np.sqrt(centres.shape[1])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------- the method


def test_leave_one_out_scores_and_threshold_are_as_documented():
    rng = np.random.default_rng(0)
    e = unit(rng, 30, 8)
    ref = build_reference(e * 3.0, source="test", k=4, quantile=0.9)  # rows are normalised first
    d = 1.0 - e @ e.T
    np.fill_diagonal(d, np.inf)
    loo = np.sort(np.sort(d, axis=1)[:, :4].mean(axis=1))
    np.testing.assert_allclose(ref.loo_scores, loo, atol=1e-6)
    assert ref.threshold == pytest.approx(np.quantile(loo, 0.9), abs=1e-6)
    # a study's score: mean distance to its 4 nearest reference studies (all of them, itself included)
    q = unit(rng, 1, 8)[0]
    assert ref.scores(q[None])[0] == pytest.approx(np.sort(1.0 - e @ q)[:4].mean(), abs=1e-6)
    t = ref.assess(q)
    assert t.percentile == pytest.approx(100.0 * np.mean(loo < t.score))
    assert t.status == ("atypical" if t.score > ref.threshold else "typical")


def test_build_save_load_assess_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    ref = build_reference(unit(rng, 40, 16), source="40 random studies", k=5, model_sha256="ab" * 32,
                          precision="float32", extra={"seed": 1})
    p = ref.save(tmp_path / "reference.npz")
    back = Reference.load(p)
    np.testing.assert_array_equal(back.embeddings, ref.embeddings)
    np.testing.assert_array_equal(back.loo_scores, ref.loo_scores)
    assert (back.k, back.quantile, back.threshold, back.source, back.model_sha256, back.precision, back.extra) == (
        5, 0.99, ref.threshold, "40 random studies", "ab" * 32, "float32", {"seed": 1})
    q = unit(rng, 3, 16)
    assert [t.to_dict() for t in back.assess_many(q)] == [t.to_dict() for t in ref.assess_many(q)]
    # the file's bytes depend on the reference only: saved again, the same sha256
    first = sha256_file(p)
    ref.save(tmp_path / "again.npz")
    assert sha256_file(tmp_path / "again.npz") == first
    # a damaged file is refused by name, with the fix
    (tmp_path / "bad.npz").write_bytes(p.read_bytes()[:100])
    with pytest.raises(ModelError, match="bad.npz") as ei:
        Reference.load(tmp_path / "bad.npz")
    assert "cmrdx models reference" in (ei.value.hint or "")


def test_clustered_reference_flags_outliers_and_not_inliers():
    rng = np.random.default_rng(2)
    d = 32
    centres = unit(rng, 6, d)
    ref = build_reference(clusters(rng, 600, centres), source="six clusters", k=10, quantile=0.99)
    inliers = ref.assess_many(clusters(rng, 400, centres))
    flagged = sum(t.status == "atypical" for t in inliers)
    assert flagged <= 12, flagged  # about 1% expected at the 0.99 quantile; 12 of 400 is far in the tail
    # studies from elsewhere: random directions, and a seventh cluster the reference never saw
    far = unit(rng, 50, d)
    new_cluster = clusters(rng, 50, unit(rng, 1, d))
    for t in ref.assess_many(np.vstack([far, new_cluster])):
        assert t.status == "atypical" and t.percentile == 100.0, t
        assert "not to be trusted" in t.reason
    # a reference study itself is typical
    assert ref.assess(ref.embeddings[0]).status == "typical"


def test_bad_inputs_are_refused():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="at least 11"):
        build_reference(unit(rng, 10, 8), source="x", k=10)
    with pytest.raises(ValueError, match="quantile"):
        build_reference(unit(rng, 20, 8), source="x", quantile=1.5)
    ref = build_reference(unit(rng, 20, 8), source="x", k=3)
    with pytest.raises(ModelError, match="embedding of 7 values"):
        ref.assess(np.ones(7))
    with pytest.raises(ValueError, match="NaN"):
        ref.assess(np.full(8, np.nan))


def test_a_model_without_reference_is_unknown(tiny_model):
    m = load_manifest(tiny_model)
    assert load_reference(m) is None
    t = Typicality.unknown(m.name)
    assert t.status == "unknown" and t.score is None and t.threshold is None and t.percentile is None
    assert f"cmrdx models reference {m.name} --data" in t.reason
    assert set(t.to_dict()) == {"status", "score", "threshold", "percentile", "reason"}


# ---------------------------------------------------------------- the bundled model's reference


def test_bundled_manifest_lists_its_reference_and_verifies():
    m = load_manifest(BUNDLED)
    sec = m.reference
    assert sec["file"] == "reference.npz" and sec["method"] == "knn-mean-cosine-distance"
    assert m.files["reference.npz"]["sha256"] == sha256_file(BUNDLED / "reference.npz")
    assert m.files["reference.npz"]["bytes"] == (BUNDLED / "reference.npz").stat().st_size
    ref = load_reference(m)
    assert ref is not None and ref.dim == m.embedding_dim and ref.n == sec["n"] >= 200
    assert (ref.k, ref.quantile) == (sec["k"], sec["quantile"]) and ref.threshold == pytest.approx(sec["threshold"], abs=1e-6)
    assert ref.model_sha256 == m.sha256
    # drawn like training, on seeds of their own: not the benchmark's (9) nor the calibration archive's (4242)
    seeds = sec["details"]["study_seeds"]
    assert not any(lo <= seeds[0] // 100_000 <= hi for lo, hi in ((9, 9), (4242, 4242), (21, 22), (11, 12)))
    r = CliRunner().invoke(app, ["models", "verify", str(BUNDLED)])
    assert r.exit_code == 0, r.output
    assert "6 files intact" in r.output and f"reference: {ref.n} studies" in r.output


def test_bundled_reference_flags_real_pixels_and_not_the_example(tmp_path):
    from cmrdx.evaluation.archive import embed_study_folder
    from cmrdx.model.loader import get_encoder
    from helpers.cine_factory import build_cine_study

    enc = get_encoder(BUNDLED, "cpu")
    ref = load_reference(enc.manifest)
    assert ref is not None
    # typicality is a distance between studies: the main paths' embedding (0.5.0's for the bundled 0.6.0)
    example = ref.assess(embed_study_folder(ROOT / "examples" / "phantom-study", enc, main=True)[0])
    assert example.status == "typical", example.reason
    built = build_cine_study(tmp_path / "real", vendor="siemens", n_slices=8, n_phases=20)
    real = ref.assess(embed_study_folder(built.root, enc, main=True)[0])
    assert real.status == "atypical", real.reason
    assert real.score > example.score and real.percentile == 100.0


# ---------------------------------------------------------------- `cmrdx models reference`


def test_models_reference_builds_a_verifiable_reference(tiny_model, phantom_archive, tmp_path):
    model = tmp_path / "tiny"
    shutil.copytree(tiny_model, model)
    before = load_manifest(model)
    # twelve studies: refused under the default minimum, with the fix
    r = CliRunner().invoke(app, ["models", "reference", str(model), "--data", str(phantom_archive)])
    assert r.exit_code != 0 and type(r.exception) is CmrdxError, r.output
    assert "12 distinct readable studies" in r.exception.message and "at least 20" in r.exception.message
    assert r.exception.hint
    assert not (model / "reference.npz").exists()
    # allowed with a lower minimum: written, listed with its sha256, verifiable
    r = CliRunner().invoke(app, ["models", "reference", str(model), "--data", str(phantom_archive),
                                 "--min-studies", "10", "--k", "5"])
    assert r.exit_code == 0, r.output
    assert "12 studies" in r.output
    m = load_manifest(model)  # verifies every file, the reference included
    assert m.files["reference.npz"]["sha256"] == sha256_file(model / "reference.npz")
    assert m.reference["n"] == 12 and m.reference["k"] == 5 and m.reference["data"].startswith("12 studies of the archive")
    assert m.sha256 == before.sha256  # the identity: calibrations and caches stay valid
    r = CliRunner().invoke(app, ["models", "verify", str(model)])
    assert r.exit_code == 0 and "reference: 12 studies" in r.output, r.output
    ref = load_reference(m)
    assert ref is not None and ref.n == 12 and ref.model_sha256 == m.sha256
    # a second build must ask to replace the first
    r = CliRunner().invoke(app, ["models", "reference", str(model), "--data", str(phantom_archive),
                                 "--min-studies", "10", "--k", "5"])
    assert getattr(r.exception, "exit_code", None) == EXIT_CODES["ModelError"], r.output
    assert "--replace" in (r.exception.hint or "")
    # an altered reference file fails the model's integrity check by name
    (model / "reference.npz").write_bytes((model / "reference.npz").read_bytes()[::-1])
    r = CliRunner().invoke(app, ["models", "verify", str(model)])
    assert getattr(r.exception, "exit_code", None) == EXIT_CODES["ModelError"], r.output
    assert "reference.npz" in r.exception.message


def test_a_reference_of_another_model_is_refused(tmp_path):
    model = tmp_path / "m"
    shutil.copytree(BUNDLED, model, ignore=shutil.ignore_patterns("*.onnx"))
    m = load_manifest(model, verify=False)
    ref = Reference.load(model / "reference.npz")
    ref.model_sha256 = "0" * 64
    with pytest.raises(ModelError, match="built with model 000000000000"):
        install_reference(m, ref, replace=True)
    ref.model_sha256 = None
    ref.embeddings = ref.embeddings[:, :64]
    with pytest.raises(ModelError, match="64-value embeddings"):
        install_reference(m, ref, replace=True)


# ---------------------------------------------------------------- the model's identity


def _copy_manifest(tmp_path: Path) -> Path:
    """The bundled manifest alone (the identity reads the sha256 values it lists, not the files)."""
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(BUNDLED / "manifest.json", d / "manifest.json")
    return d


def _edit(d: Path, change) -> str:
    data = json.loads((d / "manifest.json").read_text())
    change(data)
    (d / "manifest.json").write_text(json.dumps(data, indent=2))
    return load_manifest(d, verify=False).sha256


def test_identity_is_what_makes_the_embeddings(tmp_path):
    d = _copy_manifest(tmp_path)
    m = load_manifest(d, verify=False)
    ident = m.sha256
    doc = m.identity_document()
    assert hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest() == ident
    assert sorted(doc["files"]) == ["text.onnx", "tokenizer.json", "video.fp16.onnx", "video.int8.onnx", "video.onnx"]
    # unchanged by what describes the model
    unchanged = [
        lambda x: x.pop("reference"),
        lambda x: x["reference"].update(threshold=0.5, n=7),
        lambda x: x["files"].update({"reference.npz": {"sha256": "1" * 64, "bytes": 1}}),
        lambda x: x["provenance"].update(metrics={"zeroshot_auc": {}}),
        lambda x: x.update(provenance={"anything": "else"}),
        lambda x: x.update(licence="CC0"),
        lambda x: x["files"].update({"MODEL_CARD.md": {"sha256": "2" * 64, "bytes": 5}}),
    ]
    for change in unchanged:
        shutil.copy(BUNDLED / "manifest.json", d / "manifest.json")
        assert _edit(d, change) == ident
    # changed by what makes the embeddings
    changed = [
        lambda x: x["files"]["video.onnx"].update(sha256="3" * 64),
        lambda x: x["files"]["video.int8.onnx"].update(sha256="3" * 64),
        lambda x: x["files"]["text.onnx"].update(sha256="3" * 64),
        lambda x: x["files"]["tokenizer.json"].update(sha256="3" * 64),
        lambda x: x["recipe"]["params"].update(window=[0.5, 99.5]),
        lambda x: x["recipe"].update(name="cmrclip-v2"),
        lambda x: x["tokenizer"].update(max_length=128),
        lambda x: x.update(version="0.5.1"),
    ]
    seen = {ident}
    for change in changed:
        shutil.copy(BUNDLED / "manifest.json", d / "manifest.json")
        new = _edit(d, change)
        assert new not in seen
        seen.add(new)


def test_update_manifest_keeps_the_identity_and_refuses_what_would_change_it(tmp_path):
    d = _copy_manifest(tmp_path)
    ident = load_manifest(d, verify=False).sha256
    (d / "notes.txt").write_text("hello\n")
    m = update_manifest(d, {"reference": {"file": "notes.txt"}}, ["notes.txt"])
    assert m.sha256 == ident and json.loads((d / "manifest.json").read_text())["files"]["notes.txt"]["bytes"] == 6
    with pytest.raises(ModelError, match="recipe"):
        update_manifest(d, {"recipe": {"name": "other"}})
    (d / "video.onnx").write_bytes(b"other weights")
    with pytest.raises(ModelError, match="identity"):
        update_manifest(d, {}, ["video.onnx"])


def test_shipped_thresholds_carry_the_bundled_models_identity():
    """The banks' calibrations for cmrdx-phantom-small are found for the model as shipped."""
    from cmrdx.zeroshot.bank import load_bank

    m = load_manifest(BUNDLED, verify=False)
    bank = load_bank("cmr-findings")
    found = [f.calibration_for(m.name, m.sha256) for f in bank.findings]
    assert all(c is not None and c.sha256 == m.sha256 for c in found), [f.id for f, c in zip(bank.findings, found) if c is None]
