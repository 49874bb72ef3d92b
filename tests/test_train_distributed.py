"""Data-parallel training (torchrun, gloo on the CPU): two processes train the model one process trains with the
same global batch, and a run killed with SIGKILL resumes to the same end as a run never stopped.

The runs share one cache of 28 phantom studies and one fixed vocabulary (copied into each work folder), a tiny
model, a global batch of 4 (2 per process) with report sentence sampling and shift augmentation on (both drawn
for the whole global batch, then split), and 7 validation studies (validation batches of 4 and 3: the second
splits 2 + 1 over the processes).
Tolerances: the two process counts sum the same numbers in another order (the towers see batches of 2 instead
of 4; gradients are summed across processes), so they agree to float32 rounding carried through 10 AdamW steps:
losses and validation losses within rtol 1e-5, gradient norms within rtol 1e-4, weights within atol 1e-4 (but
attention key biases, see ``_without_key_biases``), embeddings of the same studies and reports within atol 1e-5.
A resumed run repeats the uninterrupted one's arithmetic exactly (the same processes, the same order): its
losses and weights are compared bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.slow]
torch = pytest.importorskip("torch")

from cmrdx.train.trainer import TrainConfig, Trainer  # noqa: E402
from helpers.ddp_train import fixed_vocab  # noqa: E402

HELPER = Path(__file__).parent / "helpers" / "ddp_train.py"
CFG = dict(phantoms=28, seed=3, matrix=64, frames=8, image_size=32, resize=48, crop=32, patch=8, width=32, depth=1,
           heads=2, text_hidden=32, text_layers=1, text_heads=2, text_intermediate=64, projection_dim=16,
           vocab_size=200, max_length=128, batch_size=4, epochs=2, lr=3e-3, warmup_steps=2, val_fraction=0.25,
           text_subset_p=0.5, augment_shift=2, checkpoint_every=2, threads=1)
STEPS = 10  # 21 training studies: 5 steps of 4 an epoch, 2 epochs


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> tuple[Path, Path]:
    """(cache folder, config file): the studies rendered once, the vocabulary fixed."""
    from cmrdx.train.data import build_cache

    root = tmp_path_factory.mktemp("ddp")
    cfg = TrainConfig(**CFG)
    cache = build_cache(cfg.source(), cfg.recipe(), root / "seed" / "cache", progress=False)
    fixed_vocab([r for r in cache.meta["reports"] if r], root / "seed" / "vocab.txt")
    (root / "config.json").write_text(json.dumps(CFG))
    return root / "seed", root / "config.json"


def _work(seeded: tuple[Path, Path], dest: Path) -> Path:
    shutil.copytree(seeded[0], dest)
    return dest


def _torchrun(config: Path, work: Path, result: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(HELPER),
           str(config), str(work), str(result), *extra]
    # the timeout only guards against a hang (a collective waiting for a dead process)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _checkpoint(work: Path) -> dict:
    return torch.load(work / "checkpoint.pt", map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def two(seeded, tmp_path_factory) -> tuple[dict, dict]:
    """An uninterrupted run of two processes: (result.json, final checkpoint)."""
    work = _work(seeded, tmp_path_factory.mktemp("two") / "w")
    res = work.parent / "result.json"
    p = _torchrun(seeded[1], work, res, "--checks")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(res.read_text()), _checkpoint(work)


def test_collectives_gather_in_rank_order_and_sum_gradients(two):
    c = two[0]["checks"]
    assert c["world"] == 2
    assert c["uneven"] == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]] and c["empty_rows"] == 2
    assert c["gathered"] == [[1.0] * 3] * 2 + [[2.0] * 3] * 2
    # rank 0's rows are rows 0-1 of the gathered tensor; both ranks computed the same loss, so the gradient that
    # reaches them is twice the weights of those rows (DDP's average then halves it)
    assert c["grad"] == (2 * np.array(c["weights"])[:2]).tolist()
    assert c["shards"] == [[0, 4], [4, 7]]


def _without_key_biases(state: dict) -> dict:
    """The weights that the loss's gradient reaches: attention key biases drop out of every softmax (a bias added
    to all keys shifts all of a query's scores alike), so their gradient is zero up to rounding, and Adam turns
    that rounding into steps of the learning rate's size, different for every summation order."""
    out = {}
    for k, v in state.items():
        if k.endswith("qkv.bias"):
            w = v.shape[0] // 3
            out[k] = torch.cat([v[:w], v[2 * w:]])  # q and v parts
        elif not k.endswith("attention.self.key.bias"):
            out[k] = v
    return out


def test_two_processes_train_what_one_process_trains(seeded, two, tmp_path):
    result, ckpt = two
    one = Trainer(TrainConfig(**CFG), _work(seeded, tmp_path / "one"), progress=False)
    assert len(one.train_idx) == 21 and len(one.val_idx) == 7
    one.run()
    assert one.step == result["steps"] == STEPS and len(result["losses"]) == STEPS
    # measured on this machine: losses within 3e-7, gradient norms 6e-6, validation losses 2e-7 (relative);
    # weights 2e-5 and embeddings 2e-6 (absolute)
    np.testing.assert_allclose(result["losses"], one.losses, rtol=1e-5)
    np.testing.assert_allclose(ckpt["grad_norms"], one.grad_norms, rtol=1e-4)
    assert len(result["val_losses"]) == 2
    np.testing.assert_allclose(result["val_losses"], one.val_losses, rtol=1e-5)
    mine = _without_key_biases(one.model.state_dict())
    for k, v in _without_key_biases(ckpt["model"]).items():
        np.testing.assert_allclose(v.numpy(), mine[k].numpy(), atol=1e-4, err_msg=k)
    # and the two models embed alike (key biases included: they change no embedding)
    other = type(one.model)(one.model.cfg)
    other.load_state_dict(ckpt["model"])
    other.eval(), one.model.eval()
    rows = one.val_idx
    x = torch.from_numpy(one.cache.inputs(rows))
    ids, mask = one.tokenize(one.cache.reports(rows))
    with torch.no_grad():
        np.testing.assert_allclose(other.encode_video(x).numpy(), one.model.encode_video(x).numpy(), atol=1e-5)
        np.testing.assert_allclose(other.encode_text(ids, mask).numpy(), one.model.encode_text(ids, mask).numpy(),
                                   atol=1e-5)
    assert one.losses[-1] < one.losses[0]  # it learns (the comparison is not of two idle runs)
    assert ckpt["config"]["batch_size"] == 4  # the global batch, whatever the number of processes


def test_a_killed_run_resumes_to_the_end_of_an_uninterrupted_one(seeded, two, tmp_path):
    result, ckpt = two
    work = _work(seeded, tmp_path / "w")
    res = tmp_path / "result.json"
    killed = _torchrun(seeded[1], work, res, "--kill-at", "5")
    assert killed.returncode != 0 and not res.exists()
    assert _checkpoint(work)["step"] == 4  # the last checkpoint before the kill (every 2 steps)
    again = _torchrun(seeded[1], work, res)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    resumed = json.loads(res.read_text())
    assert resumed["steps"] == STEPS
    assert resumed["losses"] == result["losses"] and resumed["val_losses"] == result["val_losses"]
    end = _checkpoint(work)
    for k, v in ckpt["model"].items():
        assert torch.equal(end["model"][k], v), k
