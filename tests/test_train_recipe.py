"""One command trains a whole recipe: `cmrdx train --config RECIPE` runs the stages of one file in order, each
from the previous one's weights, on one shared study cache, resumes inside the stage a kill stopped (skipping the
finished ones), gives the same weights for the same seed, and exports a model folder that `cmrdx classify` reads.
Also: phantom sources of the randomised generator with family filters, and the shipped recipe files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cmrdx.train.data import PhantomSource, cache_key
from cmrdx.train.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "cmrdx" / "train" / "configs"

# Two stages of a tiny model on 8 randomised phantoms (two families held out): seconds per stage on 2 cores.
TINY = dict(name="tiny-recipe", version="0.0.1", phantoms=8, seed=3, matrix=64, frames=8, image_size=32, resize=48,
            crop=32, patch=8, width=32, depth=1, heads=2, text_hidden=32, text_layers=1, text_heads=2,
            text_intermediate=64, projection_dim=16, vocab_size=200, max_length=128, batch_size=4, lr=3e-3,
            warmup_steps=2, val_fraction=0.0, checkpoint_every=1, threads=2, workers=1, variety=True,
            exclude_families=["scar:midwall", "lge:psir"],
            stages=[{"stage": "scratch", "note": "both towers from scratch", "epochs": 2},
                    {"stage": "lit", "note": "the text tower on single sentences", "freeze_video": True,
                     "text_subset_p": 1.0, "text_max_sentences": 1, "epochs": 3}])


def _write(path: Path, d: dict) -> Path:
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


# ---------------------------------------------------------------- data of the randomised generator


def test_phantom_source_draws_with_the_family_filters_and_says_so(monkeypatch):
    from cmrdx.synth.arrays import phantom_report
    from cmrdx.synth.params import sample_params
    from cmrdx.synth.report import TRAIN_STYLES, VARIETY_TRAIN_STYLES
    from cmrdx.synth.variety import VARIETY_VERSION

    classic = PhantomSource(4, 5, matrix=64)
    # a classic source describes itself as before: caches written before the randomised generator stay valid
    assert set(classic.describe()) == {"kind", "n", "seed", "study_seeds", "prevalence", "vendors", "report_styles",
                                       "matrix", "generator", "wording"}
    assert classic.describe()["report_styles"] == list(TRAIN_STYLES)
    src = PhantomSource(4, 5, matrix=64, exclude_families=["scar:midwall", "lge:psir"])  # the filters imply variety
    d = src.describe()
    assert d["variety"] is True and d["variety_version"] == VARIETY_VERSION
    assert d["exclude_families"] == ["lge:psir", "scar:midwall"] and d["only_families"] == []
    assert d["report_styles"] == list(VARIETY_TRAIN_STYLES) and d["vendors"] == ["siemens", "ge"]
    # the filters' order and spelling change nothing; other settings make another cache
    assert PhantomSource(4, 5, matrix=64, exclude_families="scar:midwall,lge:psir").describe() == d
    r = TrainConfig(frames=8, image_size=32, resize=48, crop=32).recipe()
    keys = {cache_key(s.describe(), r) for s in (classic, src, PhantomSource(4, 5, matrix=64, variety=True),
                                                  PhantomSource(4, 5, matrix=64, only_families=["lge:psir"]))}
    assert len(keys) == 4 and all(k.startswith("phantom-4-seed5-") for k in keys)

    import cmrdx.synth.params as params

    calls = []
    monkeypatch.setattr(params, "sample_params", lambda *a, **k: calls.append(k) or sample_params(*a, **k))
    item = src.item_at(2)
    assert calls[0]["variety"] is True and list(calls[0]["exclude_families"]) == ["lge:psir", "scar:midwall"]
    vendor, style = src._draws()[2]
    p = sample_params(500_002, vendor=vendor, prevalence=0.3, report_style=style, matrix=64, variety=True,
                      exclude_families=["scar:midwall", "lge:psir"])
    assert item.report == phantom_report(p) and item.labels == dict(p.findings)
    assert not set(p.variety.families()) & {"scar:midwall", "lge:psir"}


def test_a_classic_fraction_mixes_classic_studies_into_randomised_ones_leaving_the_others_unchanged():
    from cmrdx.synth.arrays import phantom_report
    from cmrdx.synth.params import sample_params

    plain = PhantomSource(60, 5, matrix=64, exclude_families=["lge:psir"])
    mixed = PhantomSource(60, 5, matrix=64, exclude_families=["lge:psir"], classic_fraction=0.3)
    classic = [i for i in range(60) if mixed.is_classic(i)]
    assert 8 <= len(classic) <= 28 and not any(plain.is_classic(i) for i in range(60))
    assert classic == [i for i in range(60) if PhantomSource(60, 5, matrix=64, exclude_families=["lge:psir"],
                                                            classic_fraction=0.3).is_classic(i)]  # drawn, fixed
    for i in range(12):
        vendor, style = mixed._draws()[i]
        assert (vendor, style) == plain._draws()[i]  # vendor and report style as the unmixed source draws them
        if i in classic:  # the classic generator's study for this seed, in the randomised source's report style
            p = sample_params(500_000 + i, vendor=vendor, prevalence=0.3, report_style=style, matrix=64)
            assert mixed.item_at(i).report == phantom_report(p) and p.variety is None
        else:
            assert mixed.item_at(i).report == plain.item_at(i).report
        # the drawn parameters without rendering: the item's labels and appearance (benchmarks read families)
        q, item = mixed.params_at(i), mixed.item_at(i)
        assert item.id == f"phantom-{q.seed}" and item.labels == q.findings and item.report == phantom_report(q)
        assert (q.variety is None) == (i in classic) and mixed.params_at(i, vendor, style).to_dict() == q.to_dict()
    d = mixed.describe()
    assert d["classic_fraction"] == 0.3 and "classic_fraction" not in plain.describe()
    r = TrainConfig(frames=8, image_size=32, resize=48, crop=32).recipe()
    assert cache_key(d, r) != cache_key(plain.describe(), r)
    # the model card's data line says the mix
    from cmrdx.train.stages import _describe_data
    assert _describe_data(d).startswith("60 phantoms, 70% randomised (variety v1) and 30% classic, without lge:psir")
    assert _describe_data(plain.describe()).startswith("60 randomised phantoms (variety v1), without lge:psir")
    # a config carries it to its source; without it a config keeps the identity it always had
    cfg = TrainConfig(variety=True, classic_fraction=0.3)
    assert cfg.source().classic_fraction == 0.3 and "classic_fraction" in cfg.identity()
    assert "classic_fraction" not in TrainConfig(variety=True).identity()
    with pytest.raises(ValueError, match="set variety too"):
        PhantomSource(4, 5, classic_fraction=0.3)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        PhantomSource(4, 5, variety=True, classic_fraction=1.0)


def test_train_config_takes_the_family_filters_and_refuses_them_on_an_archive(tmp_path):
    cfg = TrainConfig(exclude_families="scar:midwall, lge:psir")  # type: ignore[arg-type]  # as a file may say it
    assert cfg.exclude_families == ["lge:psir", "scar:midwall"]
    src = cfg.source()
    assert src.variety and src.describe()["exclude_families"] == ["lge:psir", "scar:midwall"]
    assert TrainConfig().source().describe().get("variety") is None  # the default stays classic
    with pytest.raises(ValueError, match="unknown family 'scar:nowhere'"):
        TrainConfig(exclude_families=["scar:nowhere"])
    with pytest.raises(ValueError, match="describe phantom studies"):
        TrainConfig(archive=str(tmp_path), variety=True).source()


# ---------------------------------------------------------------- the shipped recipe files


def test_the_adapt_recipe_starts_from_the_shipped_0_5_0_on_randomised_phantoms_without_the_held_out_families():
    """The CPU-fitted experiment: a warm start from the 0.5.0 release kept in the repository (the bytes its
    manifest names), two stages on one cache of randomised phantoms that never draw the held-out families."""
    from cmrdx.evaluation.families import DEFAULT_HELD_OUT
    from cmrdx.model.manifest import sha256_file
    from cmrdx.train.stages import load_recipe

    r = load_recipe(CONFIGS / "cmrdx-phantom-small-adapt-randomised.yaml")
    assert (r.name, r.version) == ("cmrdx-phantom-small", "0.6.0.dev1")  # not the shipped model's version
    base = Path(r.stages[0].config.init_from)
    assert base == (ROOT / "models" / "bases" / "cmrdx-phantom-small-0.5.0").resolve()
    man = json.loads((base / "manifest.json").read_text())
    assert man["version"] == "0.5.0" and man["provenance"]["architecture"]["motion"]
    for f in ("video.onnx", "text.onnx", "tokenizer.json"):
        assert sha256_file(base / f) == man["files"][f]["sha256"], f
    assert [s.folder for s in r.stages] == ["1-adapt", "2-text"] and r.vocab is None
    for s in r.stages:
        c = s.config
        assert c.variety and c.exclude_families == sorted(DEFAULT_HELD_OUT), s.name
        assert c.max_train_seconds is None and c.max_cache_seconds is None  # deterministic: no time budgets
        assert (c.phantoms, c.seed) == (3000, 61)
        # 0.5.0's shapes, so that its weights load and the embedding time stays 0.5.0's
        arch = man["provenance"]["architecture"]
        assert (c.width, c.depth, c.frames, c.image_size, c.patch) == (
            arch["video"]["width"], arch["video"]["depth"], arch["video"]["num_frames"], arch["video"]["img_size"],
            arch["video"]["patch_size"])
        assert c.motion == {"groups": 8, "pool": 8}
    assert len({cache_key(s.config.source().describe(), s.config.recipe()) for s in r.stages}) == 1
    assert [s.config.freeze_video for s in r.stages] == [False, True] and r.stages[1].config.freeze_motion


def test_the_mixed_recipe_is_the_adaptation_with_a_third_of_its_studies_classic(tmp_path):
    """The experiment 0.6.0.dev2: the adaptation above, stage for stage, with 35% classic studies (what keeps the
    classic LGE cue); nothing else differs, so the two measure the mix alone."""
    from cmrdx.train.stages import load_recipe

    r = load_recipe(CONFIGS / "cmrdx-phantom-small-adapt-mixed.yaml")
    plain = load_recipe(CONFIGS / "cmrdx-phantom-small-adapt-randomised.yaml")
    assert (r.name, r.version) == ("cmrdx-phantom-small", "0.6.0.dev2")
    for a, b in zip(r.stages, plain.stages, strict=True):
        ca, cb = a.config.__dict__, b.config.__dict__
        assert {k: (ca[k], cb[k]) for k in ca if ca[k] != cb[k]} == {"version": ("0.6.0.dev2", "0.6.0.dev1"),
                                                                    "classic_fraction": (0.35, 0.0)}, a.name
        assert a.overrides == b.overrides
    assert r.sha256() != plain.sha256()  # the mix changes what is trained
    # released under another version, it is the same training (its finished stages would be skipped)
    doc = yaml.safe_load((CONFIGS / "cmrdx-phantom-small-adapt-mixed.yaml").read_text())
    relabelled = load_recipe(_write(tmp_path / "release.yaml", dict(doc, version="0.6.0")))
    assert relabelled.version == "0.6.0" and relabelled.sha256() == r.sha256()
    assert [s.identity() for s in relabelled.stages] == [s.identity() for s in r.stages]


def test_the_from_scratch_randomised_recipe_trains_without_the_held_out_families():
    from cmrdx.evaluation.families import DEFAULT_HELD_OUT
    from cmrdx.train.stages import load_recipe

    r = load_recipe(CONFIGS / "cmrdx-phantom-small-randomised-scratch.yaml")
    assert r.name == "cmrdx-phantom-small"
    assert [s.folder for s in r.stages] == ["1-scratch", "2-lit", "3-tune", "4-motion", "5-text"]
    for s in r.stages:
        c = s.config
        assert c.variety and c.exclude_families == sorted(DEFAULT_HELD_OUT), s.name
        assert c.max_train_seconds is None and c.max_cache_seconds is None  # deterministic: no time budgets
        assert (c.phantoms, c.seed) == (6000, 61) and c.init_from is None
    # one data set for all five stages: one cache
    assert len({cache_key(s.config.source().describe(), s.config.recipe()) for s in r.stages}) == 1
    assert [s.config.freeze_video for s in r.stages] == [False, True, False, True, True]
    assert r.stages[2].config.train_video_blocks == 1 and r.stages[4].config.freeze_motion
    # what the CPU budget in its header counts: 540 steps of both towers
    train_pairs = 6000 - round(6000 * r.stages[0].config.val_fraction)
    assert train_pairs // 128 * r.stages[0].config.epochs == 540
    assert r.vocab is not None and r.vocab.is_file()


def test_the_0_5_0_recipe_is_its_five_stage_files_with_the_documented_differences():
    """Stage by stage, the recipe's settings are those of the per-stage files the shipped model was made with,
    but for what its header says it changed (time budgets -> fixed sizes) and what does not train (version,
    rendering processes)."""
    from cmrdx.train.stages import load_recipe
    from cmrdx.train.tokenizer import load_tokenizer

    r = load_recipe(CONFIGS / "cmrdx-phantom-small-0.5.0.yaml")
    files = ["phantom-small-v2", "phantom-small-v2-lit", "phantom-small-v2-tune", "phantom-small-v3-motion",
             "phantom-small-v4-text"]
    expected = {0: {"phantoms": (8000, 4162), "epochs": (100, 71), "max_cache_seconds": (210, None)},
                2: {"epochs": (20, 10), "max_train_seconds": (3000, None)},
                3: {"max_train_seconds": (1500, None)}, 4: {"max_train_seconds": (1800, None)}}
    ignore = {"version", "workers", "device", "threads"}
    for i, (s, f) in enumerate(zip(r.stages, files)):
        old = TrainConfig.from_file(CONFIGS / f"{f}.yaml").__dict__
        new = s.config.__dict__
        diff = {k: (old[k], new[k]) for k in old if k not in ignore and old[k] != new[k]}
        assert diff == expected.get(i, {}), (f, diff)
    # its fixed vocabulary rebuilds the shipped tokenizer exactly
    tk, _ = load_tokenizer(r.vocab, max_length=256)
    shipped = json.loads((ROOT / "models" / "bases" / "cmrdx-phantom-small-0.5.0" / "tokenizer.json").read_text())
    assert json.loads(tk.to_str())["model"]["vocab"] == shipped["model"]["vocab"]


def test_recipe_files_are_checked_before_anything_trains(tmp_path):
    from cmrdx.train.stages import is_recipe, load_recipe

    assert not is_recipe(CONFIGS / "phantom-small-v2.yaml")  # single-stage files keep their meaning
    assert is_recipe(CONFIGS / "cmrdx-phantom-small-adapt-randomised.yaml")
    assert is_recipe(CONFIGS / "cmrdx-phantom-small-randomised-scratch.yaml")
    bad = [({"stages": []}, "non-empty list 'stages'"),
           ({"stages": [{"stage": "a"}, {"stage": "b", "init_from": "x.pt"}]}, r"stage 2 \(b\) sets init_from"),
           ({"stages": [{"stage": "a"}, {"stage": "a"}]}, "two stages named 'a'"),
           ({"stages": [{"stage": "A b"}]}, "stage name 'A b'"),
           ({"stages": [{"stage": "a", "epoch": 3}]}, r"stage 1 \(a\): unknown training options \['epoch'\]"),
           ({"stages": ["lit"]}, "stage 1 is not a mapping"),
           ({"vocab": "v.txt", "init_from": "w.pt", "stages": [{"stage": "a"}]}, "vocab and init_from both set")]
    for d, msg in bad:
        with pytest.raises(ValueError, match=msg):
            load_recipe(_write(tmp_path / "r.yaml", d))
    # the command line's settings apply to every stage and win over the file
    r = load_recipe(_write(tmp_path / "r.yaml", {"seed": 4, "stages": [{"stage": "a", "seed": 5}, {"stage": "b"}]}),
                    seed=9, device="cpu", epochs=None)
    assert [s.config.seed for s in r.stages] == [9, 9] and r.stages[1].config.device == "cpu"


def test_the_generated_card_section_replaces_its_earlier_self_and_keeps_the_rest(tmp_path):
    from cmrdx.train.stages import CARD_BEGIN, CARD_END, write_card

    card = tmp_path / "MODEL_CARD.md"
    write_card(tmp_path, "## Training recipe\n\nfirst\n", title="m 1")
    assert card.read_text().startswith("# Model card: m 1\n") and "first" in card.read_text()
    card.write_text("# Hand-written\n\nIntro.\n\n" + card.read_text().split("\n\n", 2)[2] + "\n## Limitations\n\nMany.\n")
    write_card(tmp_path, "## Training recipe\n\nsecond\n", title="m 2")
    text = card.read_text()
    assert text.count(CARD_BEGIN) == 1 == text.count(CARD_END) and "second" in text and "first" not in text
    assert text.startswith("# Hand-written\n\nIntro.\n") and text.rstrip().endswith("## Limitations\n\nMany.")
    card.write_text("# A card without markers\n")
    write_card(tmp_path, "## Training recipe\n\nthird\n", title="m 3")
    assert card.read_text().startswith("# A card without markers\n\n" + CARD_BEGIN)


# ---------------------------------------------------------------- a tiny recipe, trained


@pytest.fixture()
def deterministic_vocab(monkeypatch):
    """WordPiece training in `tokenizers` breaks ties in hash order (per process): a vocabulary fixed by its words,
    as tests/test_train.py does, so that two fresh runs can be compared weight for weight."""
    from helpers.ddp_train import fixed_vocab

    monkeypatch.setattr("cmrdx.train.tokenizer.train_vocab",
                        lambda texts, out, **_: fixed_vocab(list(texts), Path(out)))


class Killed(Exception):
    """What a kill looks like to the run: it stops between two steps, with no chance to save."""


@pytest.mark.torch
@pytest.mark.slow
def test_a_recipe_chains_its_stages_resumes_inside_a_stage_and_repeats_for_its_seed(tmp_path, deterministic_vocab,
                                                                                   monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from cmrdx.cli import app
    from cmrdx.model.manifest import load_manifest, sha256_file
    from cmrdx.train.stages import CARD_BEGIN, load_recipe, run_recipe

    cfg = _write(tmp_path / "tiny.yaml", TINY)
    recipe = load_recipe(cfg)
    work_a, work_b = tmp_path / "a", tmp_path / "b"
    steps: list[tuple[str, int]] = []

    def kill_in_stage_2(stage: str, step: int, loss: float) -> None:
        steps.append((stage, step))
        if (stage, step) == ("lit", 4):
            raise Killed

    with pytest.raises(Killed):
        run_recipe(recipe, work=work_a, out=tmp_path / "model-a", progress=False, on_step=kill_in_stage_2)
    assert steps == [("scratch", 1), ("scratch", 2), ("scratch", 3), ("scratch", 4),
                     ("lit", 1), ("lit", 2), ("lit", 3), ("lit", 4)]
    assert (work_a / "1-scratch" / "stage.json").is_file() and not (work_a / "2-lit" / "stage.json").exists()
    assert torch.load(work_a / "2-lit" / "checkpoint.pt", weights_only=False)["step"] == 3  # saved before the kill
    stage1 = (work_a / "1-scratch" / "trained.pt").stat().st_mtime_ns
    assert not (tmp_path / "model-a").exists()

    # the rerun skips stage 1 and resumes stage 2 from its step 3, then exports
    steps.clear()
    said: list[str] = []
    res = run_recipe(load_recipe(cfg), work=work_a, out=tmp_path / "model-a", progress=False, int8=False,
                     float16=False, on_step=lambda s, n, loss: steps.append((s, n)), say=said.append)
    assert res.finished and [(r.stage, r.skipped) for r in res.stages] == [("scratch", True), ("lit", False)]
    assert steps == [("lit", 4), ("lit", 5), ("lit", 6)]
    assert any("stage 1/2 (scratch): finished earlier, 4 steps; skipped" in line for line in said)
    assert (work_a / "1-scratch" / "trained.pt").stat().st_mtime_ns == stage1
    # one cache for both stages (same studies, same input recipe), rendered once
    assert [p.name for p in (work_a / "caches").iterdir()] == [res.stages[0].record["cache"]]
    assert res.stages[1].record["cache"] == res.stages[0].record["cache"]
    assert not (work_a / "1-scratch" / "cache").exists() and not (work_a / "2-lit" / "cache").exists()

    # the same recipe from scratch, through the command line, in another folder: the same weights
    monkeypatch.setenv("CMRDX_HOME", str(tmp_path / "home"))
    out = CliRunner().invoke(app, ["train", "--config", str(cfg), "--work", str(work_b), "--out",
                                   str(tmp_path / "model-b"), "--no-progress"])
    assert out.exit_code == 0, out.output
    said_cli = " ".join(out.output.split())
    assert "stage 2/2 (lit): the text tower on single sentences" in said_cli and "exported to" in said_cli
    for stage in ("1-scratch", "2-lit"):
        a = torch.load(work_a / stage / "trained.pt", weights_only=False)["model"]
        b = torch.load(work_b / stage / "trained.pt", weights_only=False)["model"]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (stage, k)
    # stage 2 started from stage 1's weights: its video tower is stage 1's, bit for bit (frozen); the text moved
    s1 = torch.load(work_a / "1-scratch" / "trained.pt", weights_only=False)["model"]
    s2 = torch.load(work_a / "2-lit" / "trained.pt", weights_only=False)["model"]
    assert all(torch.equal(s1[k], s2[k]) for k in s1 if k.startswith(("video_model.", "vid_proj.")))
    assert any(not torch.equal(s1[k], s2[k]) for k in s1 if k.startswith("text_model."))

    # the model folder: manifest with the recipe and both stages, the card's generated section
    m = load_manifest(tmp_path / "model-a", verify=True)
    rec = m.provenance["recipe"]
    assert rec["file"] == "tiny.yaml" and rec["sha256"] == recipe.sha256()
    # the work folder is WORK in the provenance, not this machine's path
    assert m.provenance["training"]["config"]["init_from"] == "WORK/1-scratch/trained.pt"
    assert str(tmp_path) not in json.dumps(m.provenance)
    assert [s["stage"] for s in rec["stages"]] == ["scratch", "lit"] and [s["steps"] for s in rec["stages"]] == [4, 6]
    assert rec["held_out"]["families"] == ["lge:psir", "scar:midwall"] and rec["held_out"]["vendors"] == ["philips"]
    assert rec["data"][0]["variety"] is True
    assert m.provenance["initialised_from"]["steps"] == 4  # stage 1, nested
    assert m.provenance["training"]["config"]["freeze_video"] is True
    card = (tmp_path / "model-a" / "MODEL_CARD.md").read_text()
    assert CARD_BEGIN in card and "| 2 lit | the text tower on single sentences |" in card
    assert "held out of training | families `lge:psir`, `scar:midwall`" in card
    assert f"`{recipe.sha256()[:16]}`" in card
    assert (tmp_path / "model-b" / "video.int8.onnx").is_file()  # the command line exports every variant

    # `cmrdx classify` reads the exported model
    r = CliRunner().invoke(app, ["classify", str(ROOT / "examples" / "phantom-study"), "--model",
                                 str(tmp_path / "model-a"), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output[r.output.index("{"):])
    assert got["run"]["model"]["name"] == "tiny-recipe" and len(got["findings"]) == 8
    assert all(np.isfinite(f["score"]) for f in got["findings"])

    # a candidate released under another version: the same trainings, skipped, exported under the new label
    onnx_a = {f: sha256_file(tmp_path / "model-a" / f) for f in ("video.onnx", "text.onnx")}
    said.clear()
    res = run_recipe(load_recipe(_write(tmp_path / "release.yaml", dict(TINY, version="1.0.0"))), work=work_a,
                     out=tmp_path / "model-rel", progress=False, int8=False, float16=False, say=said.append)
    assert res.finished and [r.skipped for r in res.stages] == [True, True]
    assert sum("finished earlier" in line for line in said) == 2
    rel = load_manifest(tmp_path / "model-rel", verify=True)
    assert (rel.name, rel.version) == ("tiny-recipe", "1.0.0")
    assert {f: sha256_file(tmp_path / "model-rel" / f) for f in onnx_a} == onnx_a  # the same weights
    assert (tmp_path / "model-rel" / "MODEL_CARD.md").read_text().startswith("# Model card: tiny-recipe 1.0.0")

    # a stage finished when the name and version were part of its digest (as recorded before) is still the same
    # training
    for stage in recipe.stages:
        folder = work_a / stage.folder
        record = json.loads((folder / "stage.json").read_text())
        # fields added since (classic_fraction, heart_crop_mm, finding_stream) were not in records written then
        ident = {k: v for k, v in dataclasses.asdict(stage.config).items()
                 if k not in TrainConfig.RUNTIME_FIELDS + ("init_from", "classic_fraction", "heart_crop_mm",
                                                                "finding_stream")}
        assert ident["version"] == "0.0.1"
        record["identity_sha256"] = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
        (folder / "stage.json").write_text(json.dumps(record))
    res = run_recipe(load_recipe(_write(tmp_path / "release.yaml", dict(TINY, version="1.0.0"))), work=work_a,
                     out=None, progress=False)
    assert [r.skipped for r in res.stages] == [True, True]

    # a finished stage (here with such a record) whose settings changed since is refused, naming it; nothing is
    # trained
    changed = dict(TINY, stages=[dict(TINY["stages"][0], lr=1e-3), TINY["stages"][1]])
    with pytest.raises(ValueError, match=r"stage 1 \(scratch\) in .* was trained with other settings"):
        run_recipe(load_recipe(_write(tmp_path / "changed.yaml", changed)), work=work_a, out=None, progress=False)


def test_the_command_line_sets_no_per_stage_sizes_on_a_recipe(tmp_path):
    pytest.importorskip("torch")
    from cmrdx.cli import app

    cfg = _write(tmp_path / "tiny.yaml", TINY)
    for opt in ("--epochs", "--batch-size"):
        r = CliRunner().invoke(app, ["train", "--config", str(cfg), opt, "3", "--out", str(tmp_path / "m")])
        said = " ".join(r.output.replace("\u2502", " ").split())  # without the error box's borders
        assert r.exit_code == 2 and f"is a recipe of stages: set {opt[2:].replace('-', '_')} in its stages" in said
    r = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "nope.yaml:nosuchfile" in "".join(r.output.replace("\u2502", " ").split())
    assert not (tmp_path / "m").exists()
