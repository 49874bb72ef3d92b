"""Attribution (``cmrdx explain``, ``classify --explain``), and checks that can fail (of the method on 0.5.0, the
bundled model's main paths without its LGE stream, and on the bundled model with its stream; the command on the
bundled model):

* the input it perturbs is the model's input: the montage rebuilt from frames decoded once equals ``apply_recipe``;
* on phantom studies whose only abnormality is LGE, the LGE finding's attribution falls on the LGE segments and
  its region map on the scar (the phantom's own scar, sampled on the LGE planes), for the bundled model too, whose
  LGE score comes mostly from its stream: a patch is taken away in the stream's frames of the same images as well
  (the patch carried through the stream's own cut around the heart, checked on an image with one bright square);
* a view replaced by noise: that view's attribution for a finding that needs it collapses;
* the model-randomisation check (Adebayo et al., 2018): the bundled model with its video tower's weights drawn anew
  gives attributions unrelated to the trained model's;
* the command, its JSON and report; the cost is bounded in encoder inputs (never timed);
* similar prior cases from a store (``classify --db``): the study is not its own prior, impressions come from the
  archive's reports, the nearest-neighbour vote counts the archive's labels.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from cmrdx.model.loader import get_encoder, model_sha256
from cmrdx.pipeline.explain import ExplainOptions, Montage, explain
from cmrdx.recipe import apply_recipe, get_recipe, resize_crop
from cmrdx.synth.arrays import phantom_study
from cmrdx.synth.params import sample_params
from cmrdx.zeroshot.bank import get_bank
from cmrdx.zeroshot.scoring import TextEmbeddingCache, bank_text_embeddings, score_finding

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "phantom-study"
SEEDS = (11, 12, 13)  # fixed phantoms (128 x 128, 16 phases): the checks are deterministic, not sampled

pytestmark = pytest.mark.usefixtures("module_home")


BASE = Path(__file__).resolve().parents[1] / "models" / "bases" / "cmrdx-phantom-small-0.5.0"


def _scorer(model):
    enc = get_encoder(model, "cpu")
    bank = get_bank("cmr-findings")
    sha = model_sha256(enc.manifest)
    temb = bank_text_embeddings(bank, enc.encode_texts, TextEmbeddingCache(sha, None))

    def score(e, f, b):
        return score_finding(e, f, temb, b, enc.manifest.name, sha).score

    return enc.manifest.recipe_params(), enc.encode_studies, score, bank


@pytest.fixture(scope="module")
def scorer():
    """(recipe, encode, score(embedding, finding, bank), bank) of 0.5.0 on the CPU: the bundled model's main paths
    without its LGE stream, a model whose every input frame is a main recipe's."""
    return _scorer(BASE)


@pytest.fixture(scope="module", params=["0.5.0", "bundled"])
def any_scorer(request, scorer):
    """``scorer`` of 0.5.0, then of the bundled model (0.6.0: 0.5.0 and an LGE stream, 16 more frames)."""
    return scorer if request.param == "0.5.0" else _scorer(None)


def phantom(seed: int, findings: dict[str, str]):
    p = sample_params(seed, findings, n_phases=16, matrix=128)
    return p, phantom_study(p)[0]


def scar_patches(params, m: Montage, segment: str, grid: int) -> np.ndarray:
    """The phantom's scar in each patch of a region map: its occupancy (scar fraction of the myocardium) sampled on
    the planes of the segment's images at the LGE trigger time, taken through the recipe's resize to the stored
    frames, averaged over the segment's images and over each patch of the visible field."""
    from cmrdx.synth.phantom import Phantom, volume_curve
    from cmrdx.synth.render import Renderer

    ph = Phantom(params)
    e = m.entries[segment]
    planes = Renderer(params, ph).view_planes(e.role, e.view)
    f = float(volume_curve(np.array([params.acq.lge_trigger_ms]), params.acq.rr_ms)[0])
    masks = []
    for s, _ in e.images:
        pl = planes[s]
        fl = ph.fields(ph.to_heart(pl.points(0.0)), f, pl.spacing, scar=True)
        masks.append((fl["scar"] * fl["lv_epi"] * (1 - fl["lv_cav"])).reshape(pl.shape))
    size = m.p.store_size
    mean = resize_crop(np.stack(masks).astype(np.float32), size, size).mean(axis=0)
    lo, hi = m.visible()
    mean = mean[lo:hi, lo:hi]
    edges = np.round(np.linspace(0, hi - lo, grid + 1)).astype(int)
    return np.array([[mean[edges[i]:edges[i + 1], edges[j]:edges[j + 1]].mean() for j in range(grid)]
                     for i in range(grid)])


# --------------------------------------------------------------------------------------------------------------
# The perturbed input is the model's input


@pytest.mark.parametrize("recipe", ["bundled", "tiny", "no-store", "heart"])
def test_the_montage_rebuilt_from_decoded_frames_is_the_recipes_input(recipe):
    """The bundled recipe on the example study (real DICOM), two other recipes on a small phantom."""
    from cmrdx.study.assemble import assemble_study

    p = get_encoder(None, "cpu").manifest.recipe_params()
    p = {"bundled": p, "no-store": dataclasses.replace(p, store_size=None),
         "tiny": get_recipe("cmrclip-v1", frames=8, image_size=32, resize=36, crop=36, store_size=36,
                            cine_phases=None),
         "heart": get_recipe("cmrclip-v1", frames=8, image_size=32, resize=36, crop=36, store_size=36,
                             cine_phases=None, heart_crop_mm=150.0)}[recipe]
    study = assemble_study(EXAMPLE) if recipe == "bundled" else phantom_study(
        sample_params(2, {}, n_phases=8, matrix=64))[0]
    m = Montage(study, p)
    # the montage is the main recipe's (the bundled model's LGE stream follows it: explain appends its frames)
    assert np.array_equal(m.input(), apply_recipe(study, p.main).array)
    assert (m.heart is not None) == (recipe == "heart")  # the phantom's plan locates its heart
    # a segment left out is the study without its views, as the recipe plans it
    lacking = dataclasses.replace(study, views={k: v for k, v in study.views.items() if not k.startswith("lge:")
                                                or k in ("lge:2CH",)})
    gone = m.keys_of("lge_sa") | m.keys_of("lge_lax") | m.keys_of("lge_3ch")
    assert np.array_equal(m.input(m.plan_without(gone)), apply_recipe(lacking, p.main).array)


# --------------------------------------------------------------------------------------------------------------
# Sanity checks that can fail


@pytest.mark.parametrize("seed", SEEDS)
def test_lge_attribution_falls_on_the_lge_segments_and_the_overlay_on_the_scar(any_scorer, seed):
    p, encode, score, bank = any_scorer
    params, study = phantom(seed, {"lge": "severe"})
    m = Montage(study, p)
    ex = explain(study, p, encode, [(bank.finding("lge"), bank)], score, montage=m,
                 options=ExplainOptions(phase_windows=0))
    fe = ex.findings[0]
    lge = np.mean([v for s, v in fe.views.items() if s.startswith("lge")])
    cine = np.mean([v for s, v in fe.views.items() if s.startswith("cine")])
    assert lge > cine and fe.top_segment.startswith("lge_"), fe.views
    # the map is made on the most important segment, an LGE one: the scar's patches carry the attribution
    assert fe.region is not None and fe.region.segment == fe.top_segment and fe.region.alone
    att = np.array(fe.region.grid)
    scar = scar_patches(params, m, fe.region.segment, len(att))
    assert scar.max() > 0, "the phantom's scar is not in the view"
    on_scar = float((att * scar).sum() / scar.sum())
    assert on_scar > att.mean(), (att.round(4), scar.round(3))
    i, j = np.unravel_index(att.argmax(), att.shape)
    assert scar[i, j] > 0.25 * scar.max(), (att.round(4), scar.round(3))
    # the map is the mean of deletion and insertion, both kept
    np.testing.assert_allclose(att, (np.array(fe.region.deletion) + np.array(fe.region.insertion)) / 2, atol=2e-6)
    assert (ex.streams is not None) == bool(p.streams)
    if p.streams:  # the stream's frames of the mapped segment had their patches taken away too
        assert "took the same part of the heart away in the stream's frames" in ex.streams
        assert fe.region.segment in ex.streams


def test_a_patch_is_carried_into_the_streams_frames_of_the_same_image():
    """An LGE stack whose images are dark but for one bright square: the square's box in the main recipe's stored
    frames, carried through the view's image into the bundled stream's frames (its own cut around the heart, other
    per slice, and its resize), is the box the square has there, to a pixel."""
    from cmrdx.pipeline.explain import _stream_rects

    p = get_encoder(None, "cpu").manifest.recipe_params()
    study = phantom(SEEDS[0], {"lge": "severe"})[1]
    v = study.views["lge:SAX"]
    real = v.pixels()

    def loader(slices, phases):
        out = real[np.ix_(list(slices), list(phases))] * 0.01
        out[:, :, 50:62, 70:80] = 1000.0
        return out

    study.views["lge:SAX"] = dataclasses.replace(v, _loader=loader)
    m, sm = Montage(study, p), Montage(study, p.streams[0])
    assert sm.crops and not m.crops  # the stream cuts around the heart, the main recipe does not

    def box(fr):
        ys, xs = np.nonzero(fr > 0.5 * fr.max())
        return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1

    r0, r1, c0, c1 = box(m.stored["lge_sa"][0])
    rects = _stream_rects(m, "lge_sa", sm, slice(r0, r1), slice(c0, c1))
    starts = {sm.crops["lge_sa"].starts[k] for k in range(len(rects))}
    assert len(rects) == v.n_slices and len(starts) > 1  # each slice has a cut of its own
    for k, rc in enumerate(rects):
        got = (rc[0].start, rc[0].stop, rc[1].start, rc[1].stop)
        want = box(sm.stored["lge_sa"][k])
        assert max(abs(a - b) for a, b in zip(got, want)) <= 1, (k, got, want)
    # a box outside the stream's cut maps to nothing
    assert _stream_rects(m, "lge_sa", sm, slice(0, 4), slice(0, 4)) == [None] * v.n_slices


def _noise(study, key: str):
    """``study`` with view ``key``'s pixels replaced by Rayleigh noise (the magnitude of complex Gaussian noise)."""
    v = study.views[key]

    def loader(slices, phases, _v=v):
        rng = np.random.default_rng([7, *slices, *phases])
        return rng.rayleigh(300.0, (len(slices), len(phases), *_v.shape)).astype(np.float32)

    study.views[key] = dataclasses.replace(v, _loader=loader)
    return study


@pytest.mark.parametrize("seed", SEEDS)
def test_a_view_replaced_by_noise_loses_its_attribution(scorer, seed):
    p, encode, score, bank = scorer
    f = bank.finding("lv_dilation")  # needs a cine of the left ventricle: the SAX cine is its main one
    got = {}
    for kind in ("clean", "noise"):
        _, study = phantom(seed, {"lv_dilation": "severe"})
        if kind == "noise":
            study = _noise(study, "cine:SAX")
        ex = explain(study, p, encode, [(f, bank)], score, options=ExplainOptions(phase_windows=0, grid=0))
        got[kind] = ex.findings[0].views["cine_sa"]
    assert got["clean"] > 0.02, got  # the clean SAX cine supports the score
    assert got["noise"] < min(0.01, 0.25 * got["clean"]), got  # noise does not


def _randomised(src: Path, out: Path) -> Path:
    """A copy of model folder ``src`` whose video tower's weights are drawn anew (each tensor from a normal with its
    own mean and spread; batch-norm running statistics kept); the text tower is the trained one."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from cmrdx.model.manifest import sha256_file

    shutil.copytree(src, out, ignore=shutil.ignore_patterns("video.fp16.onnx", "video.int8.onnx"))
    m = onnx.load(str(out / "video.onnx"))
    rng = np.random.default_rng(0)
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype.kind == "f" and a.size > 1 and "running_" not in init.name:
            new = (rng.standard_normal(a.shape) * (a.std() or 0.02) + a.mean()).astype(a.dtype)
            init.CopyFrom(numpy_helper.from_array(new, init.name))
    onnx.save(m, str(out / "video.onnx"))
    man = json.loads((out / "manifest.json").read_text())
    man["name"] += "-randomised"
    man["video"] = {k: v for k, v in man["video"].items() if k not in ("float16", "int8")}
    man["files"] = {k: v for k, v in man["files"].items() if (out / k).is_file()}
    man["files"]["video.onnx"] = {"sha256": sha256_file(out / "video.onnx"), "bytes": (out / "video.onnx").stat().st_size}
    (out / "manifest.json").write_text(json.dumps(man, indent=2))
    return out


def test_a_randomised_model_gives_unrelated_attributions(tmp_path):
    from scipy.stats import spearmanr

    from cmrdx.model.registry import resolve

    bank = get_bank("cmr-findings")
    _, study = phantom(SEEDS[0], {"lge": "severe"})
    got = {}
    for name in ("trained", "random"):
        model = resolve("cmrdx-phantom-small") if name == "trained" else _randomised(
            Path(resolve("cmrdx-phantom-small")), tmp_path / "random")
        enc = get_encoder(model, "cpu")
        sha = model_sha256(enc.manifest)
        temb = bank_text_embeddings(bank, enc.encode_texts, TextEmbeddingCache(sha, tmp_path / "text"))

        def score(e, f, b, enc=enc, sha=sha, temb=temb):
            return score_finding(e, f, temb, b, enc.manifest.name, sha).score

        got[name] = explain(study, enc.manifest.recipe_params(), enc.encode_studies,
                            [(f, bank) for f in bank.findings], score,
                            options=ExplainOptions(phase_windows=4, region_segments=("lge_sa",)))
    a, b = got["trained"], got["random"]
    assert np.isfinite([f.score for f in b.findings]).all()
    for what, vec in (("views", lambda e: [v for f in e.findings for v in f.views.values()]),
                      ("phase", lambda e: [v for f in e.findings for v in f.phase]),
                      ("region", lambda e: [v for f in e.findings for v in np.ravel(f.region.grid)])):
        x, y = np.array(vec(a)), np.array(vec(b))
        assert np.abs(x).max() > 0 and np.abs(y).max() > 0, what
        rho = spearmanr(x, y)[0]
        assert abs(rho) < 0.3, f"{what}: rank correlation {rho:.2f} between the trained and the randomised model"


# --------------------------------------------------------------------------------------------------------------
# The command, its outputs and its cost


def _app() -> typer.Typer:
    """`cmrdx explain` and `cmrdx classify` on an app of this test's own (registration is cmrdx.cli's)."""
    from cmrdx.cli.classify import classify_cmd
    from cmrdx.cli.explain import explain_cmd

    app = typer.Typer()
    app.command("explain")(explain_cmd)
    app.command("classify")(classify_cmd)
    return app


def test_explain_command_json_report_and_bounded_cost(tmp_path):
    report = tmp_path / "report.html"
    r = CliRunner().invoke(_app(), ["explain", str(EXAMPLE), "--finding", "lge", "--finding", "lv_dilation",
                                    "--json", "--device", "cpu", "--report", str(report)])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    ex = d["explain"]
    assert [f["id"] for f in ex["findings"]] == ["lv_dilation", "lge"]  # ranked order
    segs = [s["segment"] for s in ex["segments"]]
    assert segs == ["cine_lax", "cine_sa", "lge_sa", "lge_lax", "lge_2ch", "lge_3ch"]
    for f in ex["findings"]:
        assert set(f["views"]) == set(segs) and len(f["phase"]) == 8 and f["roles"].keys() == {"cine", "lge"}
        for s in segs:  # the view value is the mean of leaving the segment out and of it alone among its role
            assert f["views"][s] == pytest.approx((f["leave_out"][s] + f["alone"][s]) / 2, abs=2e-6)
    mapped = [f for f in ex["findings"] if f["region"]]
    assert len(mapped) >= 1 and all(len(f["region"]["grid"]) == 4 for f in mapped)
    for f in mapped:  # a patch's value is the mean of deletion and insertion
        grid, dele, ins = (np.array(f["region"][k]) for k in ("grid", "deletion", "insertion"))
        assert grid.shape == dele.shape == ins.shape == (4, 4)
        np.testing.assert_allclose(grid, (dele + ins) / 2, atol=2e-6)
    # the cost is bounded by the options, whatever the machine: plans (full, 6 left out, 4 alone, 2 roles)
    # + 8 phase windows + per region map its context, the whole field taken away and 16 patches twice
    assert ex["n_inputs"] <= 13 + 8 + len({f["region"]["segment"] for f in mapped}) * 34
    assert d["impression"]["draft"] and d["impression"]["text"].startswith("DRAFT - not for clinical use")
    assert "PHANTOM" not in r.output  # the example's synthetic patient name stays out
    html = report.read_text()
    assert 'id="why-lge"' in html and 'id="why-lv_dilation"' in html and 'class="view-bars"' in html
    assert html.count('class="phase-curve"') == 2 and 'id="impression" data-draft="true"' in html
    import re

    from PIL import Image

    uris = re.findall(r'class="overlay-img"[^>]*src="data:image/png;base64,([^"]+)"', html)
    assert uris
    im = Image.open(io.BytesIO(base64.b64decode(uris[0])))
    assert im.mode == "RGB" and im.size == (160, 160)


def test_explain_table_and_an_unknown_finding():
    r = CliRunner().invoke(_app(), ["explain", str(EXAMPLE), "--finding", "lge", "--device", "cpu", "--grid", "0",
                                    "--phases", "0"], env={"COLUMNS": "160"})
    assert r.exit_code == 0, r.output
    assert "Late gadolinium enhancement" in r.output and "DRAFT impression" in r.output and "lge_sa" in r.output
    r = CliRunner().invoke(_app(), ["explain", str(EXAMPLE), "--finding", "nope", "--device", "cpu"])
    from cmrdx.errors import UsageError

    assert isinstance(r.exception, UsageError) and "nope" in r.exception.message and "lge" in (r.exception.hint or "")


# --------------------------------------------------------------------------------------------------------------
# Similar prior cases


@pytest.fixture(scope="module")
def store(phantom_archive, tmp_path_factory):
    """A store of eight of the phantom archive's studies, embedded with the bundled model (as `cmrdx index` would)."""
    from cmrdx.evaluation.archive import embed_study_folder, read_archive
    from cmrdx.pipeline.search import build_store

    enc = get_encoder(None, "cpu")
    rows = read_archive(phantom_archive)[:8]
    embs, uids, sources = [], [], []
    for r in rows:
        e, uid, _, _ = embed_study_folder(r.path, enc)
        embs.append(e)
        uids.append(uid)
        sources.append(f"{r.path.name}/DICOM")
    db = tmp_path_factory.mktemp("priors") / "db"
    build_store(db, uids, sources, np.stack(embs), enc.manifest.name, model_sha256(enc.manifest),
                archive=str(phantom_archive))
    return db, rows


def test_classify_db_shows_priors_their_impressions_and_a_labelled_vote(store):
    from cmrdx.pipeline.priors import report_impression

    db, rows = store
    query = rows[0]
    r = CliRunner().invoke(_app(), ["classify", str(query.path), "--db", str(db), "-k", "4", "--json",
                                    "--device", "cpu"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    sim = d["similar"]
    uids = [c["study_uid"] for c in sim["cases"]]
    assert len(uids) == 4 and query.study_uid not in uids  # the study is not its own prior
    assert [c["rank"] for c in sim["cases"]] == [1, 2, 3, 4]
    assert [c["similarity"] for c in sim["cases"]] == sorted((c["similarity"] for c in sim["cases"]), reverse=True)
    by_uid = {x.study_uid: x for x in rows}
    for c in sim["cases"]:
        assert c["impression"] == report_impression(by_uid[c["study_uid"]].report())
        assert c["labels"] == by_uid[c["study_uid"]].labels
    for fid, v in sim["votes"].items():  # the vote counts the priors' labels, nothing else
        known = [by_uid[u].labels[fid] for u in uids if by_uid[u].labels.get(fid) is not None]
        assert (v["present"], v["labelled"]) == (sum(known), len(known))
    assert sim["votes"] and "not the zero-shot score" in sim["vote_method"]
    table = CliRunner().invoke(_app(), ["classify", str(query.path), "--db", str(db), "-k", "4", "--device", "cpu"],
                               env={"COLUMNS": "220"})
    assert table.exit_code == 0, table.output
    assert "k-NN vote of similar labelled studies" in table.output and "Similar prior cases" in table.output


def test_db_that_is_not_a_store_is_refused_before_work(tmp_path):
    from cmrdx.errors import UsageError

    r = CliRunner().invoke(_app(), ["classify", str(EXAMPLE), "--db", str(tmp_path), "--device", "cpu"])
    assert isinstance(r.exception, UsageError) and "index.json" in r.exception.message


@pytest.mark.parametrize("style", ["narrative", "structured", "terse", "telegraphic"])
def test_a_reports_impression_is_its_conclusion(style):
    from cmrdx.pipeline.priors import report_impression
    from cmrdx.synth.arrays import phantom_report

    p = sample_params(5, {"lv_dilation": "moderate", "pericardial_effusion": "mild"}, report_style=style)
    text = phantom_report(p)
    imp = report_impression(text)
    assert imp and len(imp) <= 400
    if style == "telegraphic":
        assert imp.startswith("LV: EDV") and "Pericard.: fluid" in imp
    else:
        assert "pericardial" in imp.lower() and ("left ventricle" in imp.lower() or "lv " in imp.lower())
        assert "Cardiac MRI with" not in imp and "CMR performed" not in imp  # not the report's introduction
