"""Hostile and broken inputs for the DICOM layer's tests: zip archives built the way bombs and damaged archives are,
byte-level edits of DICOM files, and ways to run code that may hang or take the process down without taking the
test run with it."""

from __future__ import annotations

import io
import os
import resource
import struct
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.data import get_testdata_file


def real_file(name: str) -> Path:
    """One of pydicom's own test files (docs/test-data.md)."""
    return Path(get_testdata_file(name))


def run_bounded(fn: Callable[[], Any], seconds: float) -> Any:
    """``fn()`` in a daemon thread; its result, or AssertionError if it has not returned within ``seconds`` (a hang
    fails the test instead of stopping the run; the thread is left blocked)."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise AssertionError(f"still running after {seconds:.0f} s (a hang)")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def run_python(code: str, *args: str, timeout: float = 120, memory_gib: float = 4.0) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (so that an abort or a runaway allocation ends that process, not the test
    run), under an address-space limit; returncode < 0 is the signal that killed it."""
    limit = int(memory_gib * (1 << 30))

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=cap, env=env)


def zip_bytes(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive of ``members`` (names may repeat: zipfile then warns and writes both)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buf.getvalue()


def _eocd(data: bytes) -> int:
    i = data.rfind(b"PK\x05\x06")
    assert i >= 0, "no end of central directory"
    return i


def zip_with_overlapping_member(data: bytes, name: str, alias: str) -> bytes:
    """``data`` (a zip holding ``name``) with a second central-directory entry ``alias`` that points at the same
    local header and compressed data as ``name``: the construction of non-recursive zip bombs (many entries, one
    compressed block)."""
    assert len(alias) == len(name)
    e = _eocd(data)
    _, _, _, n_this, n_total, cd_size, cd_off, _ = struct.unpack("<IHHHHIIH", data[e:e + 22])
    cd = data[cd_off:cd_off + cd_size]
    k = 0
    while k < len(cd):
        n_len, x_len, c_len = struct.unpack("<HHH", cd[k + 28:k + 34])
        entry = cd[k:k + 46 + n_len + x_len + c_len]
        if entry[46:46 + n_len].decode() == name:
            extra = entry[:46] + alias.encode() + entry[46 + n_len:]
            new_cd = cd + extra
            eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n_this + 1, n_total + 1, len(new_cd), cd_off, 0)
            return data[:cd_off] + new_cd + eocd
        k += len(entry)
    raise AssertionError(f"{name} not in the archive")


def zip_with_encrypted_flag(data: bytes) -> bytes:
    """``data`` (a zip) with every member flagged as encrypted (general purpose bit 0), as an archive made with a
    password shows to a reader without one."""
    b = bytearray(data)
    k = 0
    while (k := b.find(b"PK\x03\x04", k)) >= 0:
        b[k + 6] |= 0x01
        k += 4
    k = 0
    while (k := b.find(b"PK\x01\x02", k)) >= 0:
        b[k + 8] |= 0x01
        k += 4
    return bytes(b)


def pixel_data_offset(data: bytes) -> int:
    """Offset of the (7FE0,0010) Pixel Data element's tag in a little-endian file."""
    i = data.rfind(b"\xe0\x7f\x10\x00")
    assert i > 0, "no pixel data element"
    return i


class CountingReader(io.RawIOBase):
    """A file opened for reading that counts the bytes read through it (``counter[0]``)."""

    def __init__(self, inner: Any, counter: list[int]):
        super().__init__()
        self._inner = inner
        self._counter = counter

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._inner.read(len(b))
        b[: len(data)] = data
        self._counter[0] += len(data)
        return len(data)

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self._counter[0] += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def fileno(self) -> int:
        return self._inner.fileno()

    def close(self) -> None:
        self._inner.close()
        super().close()
