"""Kill a batch run at points of its progress, not of the clock: a test that slept a fraction of an earlier run's
wall time found the run finished on a faster (or less loaded) machine and proved nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from cmrdx.pipeline.batch import Journal, state_dir


def journaled(out: Path) -> int:
    journal = state_dir(out) / "journal.jsonl"
    return len(Journal(journal).records) if journal.exists() else 0


def kill_at_progress(cmd: Sequence[str | os.PathLike[str]], out: Path, env: dict[str, str], total: int,
                     attempts: int = 3, hang_guard: float = 600.0) -> list[int]:
    """Run ``cmd`` (a batch writing ``out``) and SIGKILL it, with its reader processes, ``attempts`` times: first as
    soon as its discovery is saved (before any study is committed), then each time as soon as it has committed
    studies beyond those of the run before it, while some remain. Returns the committed counts seen at each kill.
    ``hang_guard`` only stops a run that hangs; no timing decides where a kill falls."""
    seen: list[int] = []
    for k in range(attempts):
        before = journaled(out)
        p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                             start_new_session=True)
        deadline = time.monotonic() + hang_guard
        try:
            while p.poll() is None and time.monotonic() < deadline:
                now = journaled(out)
                if (k == 0 and (state_dir(out) / "studies.json").exists()) or (k > 0 and before < now < total):
                    break
                time.sleep(0.01)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # the run and its reader processes, mid-flight
                p.wait()
                seen.append(journaled(out))
            else:
                p.wait()
        if journaled(out) >= total:
            break
    return seen
