"""One way to write a file: ``atomic_write``.

Every file cmrdx writes (results, reports, caches, journals' side files, model folders, checkpoints) goes
through it, so every write has the same guarantee:

* a regular file (or a new path) is written to a temporary file in the same folder, flushed and fsynced, then
  renamed over the target; a crash or an error at any moment leaves either the old file or the new one, never
  a torn one, and the temporary file is removed on error. Temporary names are unique per call (``mkstemp``),
  so concurrent writers never collide;
* a symbolic link is followed: its target is written, the link stays a link;
* a target that exists and is not a regular file (``/dev/stdout``, ``/dev/null``, a named pipe) is written
  directly: renaming over it would replace the device with a regular file;
* the new file gets the permissions of a file created by ``open`` under the user's umask (``mkstemp``'s
  0600 is not kept), or the permissions of the file it replaces.

Imports nothing heavy.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Writer = Callable[[BinaryIO], object]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _emit(f: BinaryIO, data: bytes | str | Writer) -> None:
    if isinstance(data, str):
        f.write(data.encode("utf-8"))
    elif isinstance(data, (bytes, bytearray, memoryview)):
        f.write(data)
    else:
        data(f)


def atomic_write(path: str | os.PathLike[str], data: bytes | str | Writer, *, mkdir: bool = True) -> Path:
    """Write ``data`` (bytes, UTF-8 text, or a callable writing to a binary file object) to ``path``.

    Returns the path written (the target of a symbolic link). Raises ``OSError`` as the system reports it;
    callers turn it into their own error with a hint.
    """
    path = Path(path)
    try:
        st = path.stat()  # through any link: what will actually be written
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        # A device or a pipe: written in place, never replaced. Opened by the name given: /dev/stdout on a pipe
        # resolves to /proc/PID/fd/pipe:[N], which cannot be opened by its resolved name.
        with open(path, "wb") as f:
            _emit(f, data)
        return path
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _emit(f, data)
            f.flush()
            os.fsync(f.fileno())
        mode = stat.S_IMODE(st.st_mode) if st is not None else (0o666 & ~_umask())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
