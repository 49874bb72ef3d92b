"""cmrdx.fileio.atomic_write: the one way cmrdx writes a file, and its one guarantee."""

from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pytest

from cmrdx.fileio import atomic_write


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_writes_text_bytes_and_callables_and_makes_folders(tmp_path):
    atomic_write(tmp_path / "a" / "b.txt", "héllo\n")
    atomic_write(tmp_path / "c.bin", b"\x00\x01")
    atomic_write(tmp_path / "d.npy", lambda f: np.save(f, np.arange(3)))
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    assert np.load(tmp_path / "d.npy").tolist() == [0, 1, 2]
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "a") == []


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def boom(f):
        f.write(b"half of the new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_new_files_get_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "new.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640  # not mkstemp's 0600
    kept = tmp_path / "kept.sh"
    kept.write_text("old")
    kept.chmod(0o751)
    atomic_write(kept, "new")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o751 and kept.read_text() == "new"


def test_a_symlink_is_followed_and_stays_a_link(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    assert atomic_write(link, "new") == real
    assert link.is_symlink() and real.read_text() == "new"


def test_a_device_is_written_in_place_never_replaced(tmp_path):
    atomic_write("/dev/null", "discarded")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_named_pipe_is_written_in_place(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    atomic_write(fifo, "through the pipe")
    reader.join(timeout=10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, "x")


def test_concurrent_writers_never_share_a_temp_file(tmp_path):
    target = tmp_path / "shared.txt"
    payloads = [f"writer {i} " * 2000 for i in range(8)]
    threads = [threading.Thread(target=atomic_write, args=(target, p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_text() in payloads  # one whole payload, never a mix
    assert _leftovers(tmp_path) == []


def test_dev_stdout_on_a_pipe_is_written_through_the_link():
    """/dev/stdout links to /proc/PID/fd/pipe:[N] when stdout is a pipe; that resolved name cannot be opened."""
    import subprocess
    import sys

    code = "from cmrdx.fileio import atomic_write; atomic_write('/dev/stdout', 'through the pipe\\n')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "through the pipe\n"
