"""Batch runs on hostile and broken input: studies that share series UIDs, an archive that changed between runs,
a corrupt journal or state file, two runs on one output, a run killed with its reader workers alive, options
that would never finish. Each test is named after the defect it keeps fixed."""

from __future__ import annotations

import os
import select
import subprocess
from pathlib import Path

import pytest

from cmrdx.errors import CmrdxError
from cmrdx.pipeline.batch import (
    BatchOptions,
    Journal,
    journal_path,
    read_results,
    run_batch,
    state_dir,
)


@pytest.fixture(scope="module", autouse=True)
def _home(tmp_path_factory):
    """Caches (prompt embeddings) in a folder of the tests' own, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CMRDX_HOME", str(tmp_path_factory.mktemp("home")))
        yield


def _opts(model: Path, **kw) -> BatchOptions:
    return BatchOptions(model=str(model), device="cpu", workers=kw.pop("workers", 1), **kw)


def _records(out: Path) -> dict[str, dict]:
    j = Journal(journal_path(out))
    j.close()
    return j.records


def _by_source(out: Path) -> dict[str, dict]:
    return {r["source"]: r for r in read_results(out)}


def _same_rows(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        ra, rb = a[key], b[key]
        assert set(ra) == set(rb), key
        for k in ra:
            if k.endswith("_score") or k == "typicality_score":
                assert ra[k] == pytest.approx(rb[k], abs=1e-5), (key, k)
            else:
                assert ra[k] == rb[k], (key, k)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}, "CMRDX_HOME": str(tmp_path / "home"),
            "OMP_NUM_THREADS": "1"}


def _read_line(p: subprocess.Popen, timeout: float) -> str:
    """The child's next stdout line; fails (with its stderr) if none comes within ``timeout`` seconds."""
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    if not ready:
        p.kill()
        pytest.fail(f"no line from the child in {timeout} s: {p.stderr.read() if p.stderr else ''}")
    line = p.stdout.readline()
    if not line:
        p.wait()
        pytest.fail(f"the child exited ({p.returncode}) early: {p.stderr.read() if p.stderr else ''}")
    return line.strip()


# --- options that would never finish -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"batch_size": -2}, {"workers": 0}, {"workers": -1},
                                 {"max_in_flight": 0}, {"limit": -1}, {"batch_size": 2.5}, {"batch_size": True}])
def test_batch_size_0_is_an_error(bad):
    name = next(iter(bad))
    with pytest.raises(CmrdxError, match=name) as ei:
        BatchOptions(**bad)
    assert ei.value.hint


class _Never:
    name = "never"
    prepare_seconds = encode_seconds = 0.0

    def run(self, todo, job):
        raise AssertionError("an engine was started with batch_size 0")


def test_batch_size_0_never_reaches_an_engine(phantom_archive, tiny_model, tmp_path):
    opts = _opts(tiny_model, engine=_Never())
    opts.batch_size = 0  # set after construction: run_batch checks again
    with pytest.raises(CmrdxError, match="batch_size"):
        run_batch(phantom_archive, tmp_path / "r.jsonl", opts)
    assert not state_dir(tmp_path / "r.jsonl").exists()
