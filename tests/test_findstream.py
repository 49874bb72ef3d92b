"""A finding stream (cmrdx.train.findstream): the stage that adds a small CNN for one finding to a finished model,
trained on the report clauses its patterns file under that finding, with the other findings' scores held.

The pieces on their own (the spec's checks, the clause filer, the held projection and the join), then a tiny
recipe whose last stage adds a stream: it trains only the stream, resumes where a kill stopped it with the weights
an uninterrupted run gets, and exports a model folder whose input is the main recipe's frames and then the
stream's, whose other findings score exactly as the model it started from, and which `cmrdx classify` reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from cmrdx.train.findstream import StreamSpec, file_clauses, held_projection, report_clauses

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "cmrdx" / "train" / "configs"
LGE = r"enhanc|\bLGE\b|scar|fibros|gadolinium|infarct"


def test_the_spec_names_what_is_wrong():
    ok = StreamSpec.from_dict({"finding": "lge", "clauses": LGE})
    assert ok.segments == ("lge_sa", "lge_lax", "lge_2ch", "lge_3ch") and ok.frames == 16 and ok.hold
    with pytest.raises(ValueError, match="unknown keys \\['clause'\\]"):
        StreamSpec.from_dict({"finding": "lge", "clause": LGE})
    with pytest.raises(ValueError, match="give clauses"):
        StreamSpec.from_dict({"finding": "lge"})
    with pytest.raises(ValueError, match="finding_stream.negation: not a regular expression"):
        StreamSpec.from_dict({"finding": "lge", "clauses": LGE, "negation": "(no"})
    with pytest.raises(ValueError, match="segments \\['lge_sax'\\]"):
        StreamSpec.from_dict({"finding": "lge", "clauses": LGE, "segments": ["lge_sax"]})
    with pytest.raises(ValueError, match="must be a mapping"):
        StreamSpec.from_dict("lge")
    # the bank and the finding are checked when the recipe is read, before any warm start or rendering
    with pytest.raises(ValueError, match="finding_stream.bank 'no-such-bank': .*no such prompt bank"):
        StreamSpec.from_dict({"finding": "lge", "clauses": LGE, "bank": "no-such-bank"})
    with pytest.raises(ValueError, match="finding_stream.finding 'scar': not a finding of the bank cmr-findings"):
        StreamSpec.from_dict({"finding": "scar", "clauses": LGE})
    assert ok.lge_repeats is None  # the default: as the reference repeats the long-axis images
    for bad in (0, 65, 1.5, "1", True):
        with pytest.raises(ValueError, match="finding_stream.lge_repeats: a whole number from 1 to 64"):
            StreamSpec.from_dict({"finding": "lge", "clauses": LGE, "lge_repeats": bad})


def test_intensity_jitter_is_checked_and_draws_a_window_and_gamma_per_study():
    import torch

    from cmrdx.train.streamspec import jitter_grey

    assert StreamSpec.from_dict({"finding": "lge", "clauses": LGE}).intensity_jitter == 0.0  # off unless asked
    assert StreamSpec.from_dict({"finding": "lge", "clauses": LGE, "intensity_jitter": 0.3}).intensity_jitter == 0.3
    for bad in (-0.1, 0.6, "0.3", True):
        with pytest.raises(ValueError, match="finding_stream.intensity_jitter: a number from 0 to 0.5"):
            StreamSpec.from_dict({"finding": "lge", "clauses": LGE, "intensity_jitter": bad})
    g = torch.linspace(0, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4).repeat(64, 1, 1, 1)
    out = jitter_grey(g, 0.3, np.random.default_rng(0))
    assert out.shape == g.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    # one window per study, the same for all its frames: a study's frames stay in the order of their grey levels
    for b in range(len(g)):
        flat_in, flat_out = g[b].flatten(), out[b].flatten()
        assert bool((torch.diff(flat_out[torch.argsort(flat_in)]) >= -1e-6).all())
    # studies get different windows, and some lift the black level (zero maps above zero)
    zero = jitter_grey(torch.zeros(256, 1, 2, 2), 0.3, np.random.default_rng(1))[:, 0, 0, 0]
    assert 0.2 < float((zero > 0).float().mean()) < 0.9 and len(torch.unique(out[:, 0, 0, 1])) > 32
    assert torch.equal(jitter_grey(g, 0.3, np.random.default_rng(5)), jitter_grey(g, 0.3, np.random.default_rng(5)))


def test_the_stream_recipe_is_the_main_one_with_its_segments_frames_and_cut():
    from cmrdx.recipe import get_recipe

    main = get_recipe("cmrclip-v1", frames=32, image_size=96, resize=144, crop=96, store_size=144)
    st = StreamSpec.from_dict({"finding": "lge", "clauses": LGE, "heart_crop_mm": 210}).stream_recipe(main)
    assert st.segments == ("lge_sa", "lge_lax", "lge_2ch", "lge_3ch") and st.frames == 16
    assert st.heart_crop_mm == 210.0 and (st.image_size, st.resize, st.store_size) == (96, 144, 144)
    assert st.streams == () and st.lge_repeats is None
    once = StreamSpec.from_dict({"finding": "lge", "clauses": LGE, "lge_repeats": 1}).stream_recipe(main)
    assert once.lge_repeats == 1 and once.to_dict()["lge_repeats"] == 1


def test_clauses_are_filed_by_the_patterns_and_read_for_negation():
    spec = StreamSpec.from_dict({"finding": "lge", "clauses": LGE})
    reports = [
        "Impression: Normal LV size. No late gadolinium enhancement; normal RV.",
        "Conclusion: Subendocardial scar in the LAD territory. Cine SSFP and late gadolinium enhancement imaging.",
        "LVEF 60%. RV normal.",
        None,
    ]
    assert report_clauses(reports[0]) == ["Impression: Normal LV size.", "No late gadolinium enhancement",
                                          "normal RV."]
    f = file_clauses(spec, reports, np.arange(4))
    # the technique sentence names a sequence, not a finding: not filed; reports without a filed clause drop out
    assert f.texts == ["No late gadolinium enhancement", "Conclusion: Subendocardial scar in the LAD territory."]
    assert f.denies.tolist() == [True, False] and f.rows.tolist() == [0, 1]
    assert [c.tolist() for c in f.per_row] == [[0], [1]]
    assert f.summary() == {"studies": 2, "clauses": 2, "distinct_clauses": 2, "denying_share": 0.5}


def test_the_join_holds_every_cosine_with_the_held_prompts_and_turns_the_rest():
    torch = pytest.importorskip("torch")
    from cmrdx.train.model import FindingStream, FindingStreamConfig

    rng = np.random.default_rng(0)
    held_vecs = rng.normal(size=(6, 16)).astype(np.float32)
    free_vec = rng.normal(size=16).astype(np.float32)
    proj = held_projection(np.concatenate([held_vecs, held_vecs[:2] + held_vecs[2:4]]))  # dependent rows too
    assert np.isclose(np.trace(proj), 6, atol=1e-4)  # the span's rank, not the rows'
    fs = FindingStream(FindingStreamConfig("lge", frames=3, width=2), 16)
    fs.held.copy_(torch.from_numpy(proj))
    e0 = torch.from_numpy(rng.normal(size=(5, 16)).astype(np.float32)) * 3.0
    out = torch.from_numpy(rng.normal(size=(5, 16)).astype(np.float32)) * 2.0
    e = fs.join(e0, out)
    u0 = torch.nn.functional.normalize(e0, dim=1)
    held = torch.from_numpy(held_vecs / np.linalg.norm(held_vecs, axis=1, keepdims=True))
    assert torch.allclose(e.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(e @ held.T, u0 @ held.T, atol=1e-5)  # every held cosine is the base model's
    free = torch.from_numpy(free_vec / np.linalg.norm(free_vec))
    assert (e @ free - u0 @ free).abs().max() > 1e-2  # the rest turns
    # no output, no turn: the base model's direction
    assert torch.allclose(fs.join(e0, torch.zeros_like(out)), u0, atol=1e-6)


def test_a_stream_input_of_padding_only_leaves_the_embedding_where_the_model_put_it():
    torch = pytest.importorskip("torch")
    from cmrdx.train.model import FindingStream, FindingStreamConfig

    torch.manual_seed(0)
    fs = FindingStream(FindingStreamConfig("lge", frames=4, width=2, hold=False), 8).eval()
    torch.nn.init.normal_(fs.proj.weight)  # a trained stream: its output is not zero
    x = torch.randn(3, 4, 3, 24, 24)
    x[1] = 0.0  # a study with no image of the stream's views: all padding
    x[2, 2:] = 0.0  # two real frames, two padded
    with torch.no_grad():
        out = fs.output(x)
        e0 = torch.randn(3, 8)
        e = fs(e0, x)
    assert torch.equal(out[1], torch.zeros(8)) and torch.equal(e[1], e0[1])
    assert out[0].abs().sum() > 0 and out[2].abs().sum() > 0
    g, real = fs.grey(x)
    assert real.tolist() == [[True] * 4, [False] * 4, [True, True, False, False]]
    assert torch.allclose(g[0], x[0, :, 0] * 0.229 + 0.485)


def test_the_0_6_0_recipe_adds_an_lge_stream_to_0_5_0_on_the_adaptations_studies():
    from cmrdx.train.data import cache_key
    from cmrdx.train.stages import _stage_config, load_recipe

    r = load_recipe(CONFIGS / "cmrdx-phantom-small-0.6.0.yaml")
    assert (r.name, r.version) == ("cmrdx-phantom-small", "0.6.0") and [s.name for s in r.stages] == ["lge-stream"]
    cfg = _stage_config(r.stages[0], None, {})
    assert Path(cfg.init_from).resolve() == (ROOT / "models" / "bases" / "cmrdx-phantom-small-0.5.0").resolve()
    spec = StreamSpec.from_dict(cfg.finding_stream)
    assert spec.finding == "lge" and spec.hold and spec.heart_crop_mm == 210
    full = cfg.recipe()
    base = json.loads((ROOT / "models" / "bases" / "cmrdx-phantom-small-0.5.0" / "manifest.json").read_text())
    assert full.main.to_dict() == base["recipe"]["params"]  # 0.5.0 reads its own input, unchanged
    assert full.input_frames == 48 and full.streams[0].heart_crop_mm == 210.0
    # the studies of the mixed adaptation: the same cache serves both
    mixed = _stage_config(load_recipe(CONFIGS / "cmrdx-phantom-small-adapt-mixed.yaml").stages[0], None, {})
    assert cache_key(cfg.source().describe(), full.main) == cache_key(mixed.source().describe(), mixed.recipe())
    # the patterns file the phantom reports' LGE sentences, not their technique lines
    assert spec.files("Patchy mid-wall late enhancement of the septum.")
    assert spec.files("No evidence of myocardial scar or fibrosis.") and spec.denies("No evidence of myocardial scar")
    assert not spec.files("Cine SSFP and late gadolinium enhancement imaging were performed.")


def test_the_from_scratch_recipe_trains_0_5_0s_stages_then_0_6_0s_stream():
    """One command from scratch: its six stages train what 0.5.0's five and 0.6.0's stream stage train (equal
    settings digests, which leave out where a stage's starting weights lie); only the stream's starting point
    differs (this run's stage 5, not the released 0.5.0); the vocabulary is 0.5.0's."""
    from cmrdx.train.stages import _stage_config, load_recipe

    chain = load_recipe(CONFIGS / "cmrdx-phantom-small-0.6.0-from-scratch.yaml")
    v5 = load_recipe(CONFIGS / "cmrdx-phantom-small-0.5.0.yaml")
    v6 = load_recipe(CONFIGS / "cmrdx-phantom-small-0.6.0.yaml")
    assert (chain.name, chain.version) == ("cmrdx-phantom-small", "0.6.0")
    assert [s.name for s in chain.stages] == [s.name for s in v5.stages + v6.stages]
    assert [s.identity() for s in chain.stages] == [s.identity() for s in v5.stages + v6.stages]
    assert chain.vocab is not None and chain.vocab.read_bytes() == v5.vocab.read_bytes()
    assert chain.stages[0].config.init_from is None  # from scratch
    last = _stage_config(chain.stages[-1], Path("WORK/5-text/trained.pt"), {})
    assert last.init_from == str(Path("WORK/5-text/trained.pt")) and last.finding_stream == v6.stages[0].config.finding_stream


def test_a_finding_stream_is_the_last_stage_and_not_a_trainer_option(tmp_path):
    from cmrdx.train.stages import load_recipe
    from cmrdx.train.trainer import TrainConfig, Trainer

    stream = {"finding": "lge", "clauses": LGE}
    d = {"phantoms": 4, "stages": [{"stage": "a", "finding_stream": stream}, {"stage": "b"}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError, match=r"stage 1 \(a\) has a finding_stream: .* the last stage"):
        load_recipe(tmp_path / "r.yaml")
    d["stages"][0]["finding_stream"] = dict(stream, clauses="(")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError, match=r"stage 1 \(a\): finding_stream.clauses: not a regular expression"):
        load_recipe(tmp_path / "r.yaml")
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="trained by a stage of its own"):
        Trainer(TrainConfig(phantoms=4, finding_stream=stream), tmp_path / "w")


# ---------------------------------------------------------------- a tiny recipe with a stream, end to end

TINY = dict(name="tiny-stream", version="0.0.1", phantoms=16, seed=3, prevalence=0.5, matrix=64, frames=8,
            image_size=32, resize=48, crop=32, patch=8, width=32, depth=1, heads=2, text_hidden=32, text_layers=1,
            text_heads=2, text_intermediate=64, projection_dim=32, vocab_size=200, max_length=128, batch_size=4,
            lr=3e-3, warmup_steps=2, val_fraction=0.0, checkpoint_every=1, threads=2, workers=1,
            stages=[{"stage": "scratch", "note": "both towers from scratch", "epochs": 2},
                    {"stage": "lge", "note": "an LGE stream", "epochs": 2, "lr": 0.01, "augment_shift": 2,
                     "finding_stream": {"finding": "lge", "clauses": LGE, "frames": 4, "width": 4,
                                        "heart_crop_mm": 210, "lge_repeats": 1}}])


class Killed(Exception):
    """A kill between two steps, with no chance to save."""


@pytest.fixture()
def deterministic_vocab(monkeypatch):
    from helpers.ddp_train import fixed_vocab

    monkeypatch.setattr("cmrdx.train.tokenizer.train_vocab",
                        lambda texts, out, **_: fixed_vocab(list(texts), Path(out)))


@pytest.mark.torch
@pytest.mark.slow
def test_a_stream_stage_trains_the_stream_alone_resumes_and_exports_a_model_that_holds_the_others(
        tmp_path, deterministic_vocab, monkeypatch, caplog):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from cmrdx.model.manifest import load_manifest
    from cmrdx.train.stages import load_recipe, run_recipe
    from cmrdx.train.trainer import export_trained

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY, sort_keys=False))
    steps: list[tuple[str, int]] = []

    def kill(stage: str, step: int, loss: float) -> None:
        steps.append((stage, step))
        assert np.isfinite(loss)
        if (stage, step) == ("lge", 3):
            raise Killed

    with pytest.raises(Killed):
        run_recipe(load_recipe(cfg), work=tmp_path / "a", out=tmp_path / "model", progress=False, on_step=kill)
    steps.clear()
    caplog.clear()
    with caplog.at_level("INFO", logger="cmrdx"):
        res = run_recipe(load_recipe(cfg), work=tmp_path / "a", out=tmp_path / "model", progress=False,
                         on_step=lambda s, n, loss: steps.append((s, n)))
    # without bars (--no-progress) the stage says how far it got in log lines
    said = [r.getMessage() for r in caplog.records if r.name == "cmrdx.train.findstream"]
    assert any("frozen model's embeddings" in m for m in said), said
    assert any(m.startswith("finding stream step 8/8") for m in said), said
    assert res.finished and [r.skipped for r in res.stages] == [True, False]
    assert steps == [("lge", 3), ("lge", 4), ("lge", 5), ("lge", 6), ("lge", 7), ("lge", 8)]
    # the stream's studies: a cache of their own next to the main one (the same studies under the stream's recipe)
    assert len(list((tmp_path / "a" / "caches").iterdir())) == 2
    # an uninterrupted run: the same weights
    run_recipe(load_recipe(cfg), work=tmp_path / "b", out=None, progress=False)
    s1 = torch.load(tmp_path / "a" / "1-scratch" / "trained.pt", weights_only=False)["model"]
    s2 = torch.load(tmp_path / "a" / "2-lge" / "trained.pt", weights_only=False)["model"]
    sb = torch.load(tmp_path / "b" / "2-lge" / "trained.pt", weights_only=False)["model"]
    assert all(torch.equal(s2[k], sb[k]) for k in s2)
    # the stream alone trained: every other weight is stage 1's, bit for bit; the stream's last layer moved
    assert set(s2) - set(s1) == {k for k in s2 if k.startswith("finding_stream.")}
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert s2["finding_stream.proj.weight"].abs().sum() > 0

    # the model folder: 8 + 4 input frames, the stream's recipe after the main one, what trained said
    m = load_manifest(tmp_path / "model", verify=True)
    assert m.raw["video"]["frames"] == 12
    # a second output, the main paths' embedding (what distances between studies use)
    assert m.raw["video"]["main_output"] == "main_embedding"
    # the int8 copy keeps the stream's matrices (the held projection above all) in float32, and is validated at
    # export like any model's, on both outputs
    import onnx

    i8 = onnx.load(str(tmp_path / "model" / "video.int8.onnx"))
    users = {n.op_type for n in i8.graph.node if any(i.startswith("finding_stream.") for i in n.input)}
    assert "MatMul" in users and not users & {"MatMulInteger", "DynamicQuantizeLinear"}
    assert any(n.op_type == "MatMulInteger" for n in i8.graph.node)  # the main paths are quantised
    rec = m.validation["int8"]
    assert rec["status"] in ("validated", "failed") and rec["main_embedding"]["studies"] == rec["studies"]
    params = m.raw["recipe"]["params"]
    assert params["frames"] == 8 and [s["frames"] for s in params["streams"]] == [4]
    assert params["streams"][0]["segments"] == ["lge_sa", "lge_lax", "lge_2ch", "lge_3ch"]
    card = (tmp_path / "model" / "MODEL_CARD.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| 2 lge |"))
    assert len(re.findall(r"(?<!\\)\|", row)) == 8  # the patterns' pipes are escaped: the row keeps its 7 cells
    assert r'"enhanc\|\\bLGE' in row
    assert "finished 20" in card
    fs = m.provenance["finding_stream"]
    assert fs["finding"] == "lge" and 0 < fs["held_dimensions"] < 32 and fs["filed"]["studies"] >= 2
    assert params["streams"][0]["lge_repeats"] == 1

    # its stream is not recovered from the ONNX files (a warm start names what to start from instead)
    from cmrdx.train.finetune import load_warm_start

    with pytest.raises(ValueError, match="has a finding stream \\(lge\\), which is not recovered"):
        load_warm_start(tmp_path / "model")

    # every finding but LGE scores as the model the stage started from; LGE does not
    export_trained(tmp_path / "a" / "1-scratch" / "trained.pt", tmp_path / "base", int8=False, float16=False)
    from cmrdx.pipeline.classify import classify

    study = ROOT / "examples" / "phantom-study"
    monkeypatch.setenv("CMRDX_HOME", str(tmp_path / "home"))
    # the findings bank, whose other findings' prompts the stage held (a diagnosis bank's prompts are not held)
    # in float32: the hold is exact there (an int8 copy moves every score by its own rounding)
    import cmrdx.pipeline.classify as cl

    typical_of: list[np.ndarray] = []
    assess = cl.assess_typicality
    monkeypatch.setattr(cl, "assess_typicality", lambda man, e: (typical_of.append(e), assess(man, e))[1])
    r_got = classify(study, model=tmp_path / "model", banks=["cmr-findings"], device="cpu", precision="float32")
    r_base = classify(study, model=tmp_path / "base", banks=["cmr-findings"], device="cpu", precision="float32")
    got = {f.id: f.score for f in r_got.findings}
    base = {f.id: f.score for f in r_base.findings}
    assert got.keys() == base.keys() and len(got) > 5 and "lge" in got
    for k in got:
        if k != "lge":
            assert got[k] == pytest.approx(base[k], abs=1e-5), k
    assert got["lge"] != pytest.approx(base["lge"], abs=1e-6)
    # distances use the main paths' embedding: the base model's own, where the stream turned the embedding
    assert r_base.main_embedding is None and r_got.main_embedding is not None
    np.testing.assert_allclose(r_got.main_embedding, r_base.embedding, atol=1e-5)
    assert float(r_got.embedding @ r_base.embedding) < 1 - 1e-4
    np.testing.assert_array_equal(typical_of[0], r_got.main_embedding)
    np.testing.assert_array_equal(typical_of[1], r_base.embedding)
    assert "main_embedding" in r_got.to_dict(include_embedding=True)
    assert "main_embedding" not in r_base.to_dict(include_embedding=True)
