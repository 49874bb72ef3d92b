"""Where DICOM bytes come from: files in a folder tree, members of a .zip, files listed by a DICOMDIR.

A ``FileRef`` names one object so that it can be re-opened later (header scan first, pixels on demand).

Only regular files are read: a named pipe, a device (``/dev/zero``, ``/dev/urandom``) or a socket in a study folder,
directly or through a symbolic link, would block a reader or never end. Such entries are skipped and counted with
their reason, never opened for reading (``FileRef.open`` checks again on the open descriptor, so a file swapped for
a pipe after the folder was listed is refused too).

Zip members are streamed, never inflated whole into memory, and an archive is read within named limits (below): a
member over a limit is skipped with its reason, as are a zip inside a zip, duplicate member names, encrypted
members and members whose data overlap (the construction of non-recursive zip bombs). A corrupt archive is
reported as such, not as "not DICOM".
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cmrdx.errors import InputNotFoundError

# Files that are certainly not DICOM objects worth opening (saves time on big archives).
_SKIP_SUFFIXES = {
    ".txt", ".json", ".csv", ".md", ".py", ".html", ".htm", ".xml", ".png", ".jpg", ".jpeg", ".gif",
    ".nii", ".gz", ".npy", ".npz", ".yaml", ".yml", ".pdf", ".log", ".parquet", ".tsv", ".sh",
}

# Limits on zip archives. The largest objects of a cardiac MR examination are Enhanced MR multi-frame stacks: a
# cine stack of 15 slices x 30 phases of 256x256 16-bit pixels is 59 MB, a 4D-flow object a few hundred MB. A
# member declaring more than 1 GiB is not one of them.
ZIP_MAX_MEMBER_BYTES = 1 << 30
# DICOM images deflate 2-10:1 (noise in MR images limits it; a mostly black background raises it); deflate itself
# cannot exceed about 1032:1, which is what a bomb made of zeros reaches. A member over 1 MiB inflating more than
# 200:1 holds no image a scanner wrote. Small members (a header-only object) may compress better: not checked.
ZIP_MAX_RATIO = 200
ZIP_RATIO_MIN_BYTES = 1 << 20
# All members of one archive together, inflated: a whole CMR examination is 0.2-2 GB uncompressed, an archive of a
# few hundred studies well under this. Beyond it, unpack the archive and point cmrdx at the folder.
ZIP_MAX_TOTAL_BYTES = 64 << 30

# Reasons a candidate is skipped without being read (the keys of a scan's ``files_skipped``).
SKIP_PIPE = "not a regular file (named pipe)"
SKIP_CHAR_DEVICE = "not a regular file (character device)"
SKIP_BLOCK_DEVICE = "not a regular file (block device)"
SKIP_SOCKET = "not a regular file (socket)"
SKIP_OTHER_TYPE = "not a regular file"
SKIP_BROKEN_LINK = "broken symbolic link"
SKIP_UNSTATABLE = "cannot be opened (permission or I/O error)"
SKIP_CORRUPT_ZIP = "corrupt zip archive"
SKIP_NESTED_ZIP = "zip inside a zip (not opened: unpack it first)"
SKIP_DUPLICATE_MEMBER = "duplicate zip member name (the last copy is read)"
SKIP_MEMBER_SIZE = f"zip member over the size limit ({ZIP_MAX_MEMBER_BYTES >> 20} MiB)"
SKIP_MEMBER_RATIO = f"zip member over the compression ratio limit ({ZIP_MAX_RATIO}:1)"
SKIP_TOTAL_SIZE = f"zip archive over the total size limit ({ZIP_MAX_TOTAL_BYTES >> 30} GiB inflated)"
SKIP_OVERLAP = "zip member overlapping another (zip bomb construction)"
SKIP_ENCRYPTED = "encrypted zip member"
SKIP_ZIP_METHOD = "zip member with an unsupported compression method"

# on_skip(where, reason): a candidate that was not read, for the caller to count.
OnSkip = Callable[[str, str], None]


class UnreadableFileError(OSError):
    """A candidate that is not read, with the reason a scan records (one of the ``SKIP_*`` texts)."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def file_kind_problem(mode: int) -> str | None:
    """Why a file of this ``st_mode`` is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return SKIP_PIPE
    if stat.S_ISCHR(mode):
        return SKIP_CHAR_DEVICE
    if stat.S_ISBLK(mode):
        return SKIP_BLOCK_DEVICE
    if stat.S_ISSOCK(mode):
        return SKIP_SOCKET
    return SKIP_OTHER_TYPE


def path_problem(path: str) -> str | None:
    """Why the entry at ``path`` is not read (it is followed if it is a link), or None for a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return SKIP_BROKEN_LINK if os.path.islink(path) else SKIP_UNSTATABLE
    except OSError:
        return SKIP_BROKEN_LINK if os.path.islink(path) else SKIP_UNSTATABLE
    return file_kind_problem(st.st_mode)


def open_regular(path: str) -> BinaryIO:
    """``path`` opened for binary reading, refused (``UnreadableFileError``) unless it is a regular file.

    The open is non-blocking so that a named pipe without a writer cannot hang it, and the check is made on the
    open descriptor, so a file replaced after it was listed is refused too."""
    nonblock = getattr(os, "O_NONBLOCK", 0)  # (POSIX; elsewhere pipes are not files in folders)
    fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:
        problem = file_kind_problem(os.fstat(fd).st_mode)
        if problem is not None:
            raise UnreadableFileError(path, problem)
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class MemberStream(io.BufferedIOBase):
    """A zip member read as a stream (inflated as it is read, seekable), knowing its size."""

    def __init__(self, raw: Any, size: int, owner: Any = None):
        super().__init__()
        self._raw = raw
        self._owner = owner  # the archive's file, closed with the member
        self.size = size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        return bytes(self._raw.read(-1 if n is None else n))

    def read1(self, n: int = -1) -> bytes:
        return bytes(self._raw.read1(n))

    def readinto(self, b: Any) -> int:
        data = self._raw.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._raw.seek(offset, whence))

    def tell(self) -> int:
        return int(self._raw.tell())

    def close(self) -> None:
        if not self.closed:
            try:
                self._raw.close()
            finally:
                if self._owner is not None:
                    self._owner.close()
        super().close()


def stream_size(fp: Any) -> int | None:
    """Size in bytes of an opened object (a regular file, a zip member, an in-memory buffer), or None."""
    if isinstance(fp, MemberStream):
        return fp.size
    if isinstance(fp, io.BytesIO):
        return fp.getbuffer().nbytes
    try:
        return os.fstat(fp.fileno()).st_size
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member is not read (its declared sizes against the limits, encryption), or None."""
    if info.flag_bits & 0x1:
        return SKIP_ENCRYPTED
    if info.file_size > ZIP_MAX_MEMBER_BYTES:
        return SKIP_MEMBER_SIZE
    if info.file_size > ZIP_RATIO_MIN_BYTES and info.file_size > ZIP_MAX_RATIO * max(info.compress_size, 1):
        return SKIP_MEMBER_RATIO
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        return SKIP_ZIP_METHOD
    return None


@dataclass(frozen=True, order=True)
class FileRef:
    """One DICOM object: a file path, or a member of a zip archive (``container`` = the zip's path)."""

    path: str
    member: str | None = None

    def open(self) -> BinaryIO:
        """The object for binary reading: a regular file, or a zip member streamed (never inflated whole).

        Raises ``UnreadableFileError`` (an OSError) with the reason for anything that is not read: not a regular
        file, a member over the limits, a corrupt archive."""
        if self.member is None:
            return open_regular(self.path)
        fp = open_regular(self.path)
        try:
            try:
                zf = zipfile.ZipFile(fp)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise UnreadableFileError(str(self), SKIP_CORRUPT_ZIP) from exc
            try:
                info = zf.getinfo(self.member)
            except KeyError as exc:
                raise UnreadableFileError(str(self), "zip member not found") from exc
            problem = member_problem(info)
            if problem is not None:
                raise UnreadableFileError(str(self), problem)
            try:
                raw = zf.open(info)
            except NotImplementedError as exc:
                raise UnreadableFileError(str(self), SKIP_ZIP_METHOD) from exc
            except (zipfile.BadZipFile, RuntimeError, ValueError, OSError) as exc:
                raise UnreadableFileError(str(self), SKIP_CORRUPT_ZIP) from exc
        except BaseException:
            fp.close()
            raise
        # The member reads through the archive's file, which it closes when it is closed.
        return MemberStream(raw, info.file_size, owner=fp)  # type: ignore[return-value]

    def __str__(self) -> str:
        return self.path if self.member is None else f"{self.path}!{self.member}"

    @property
    def name(self) -> str:
        return os.path.basename(self.member or self.path)


def iter_refs(root: str | os.PathLike[str], on_skip: OnSkip | None = None) -> Iterator[FileRef]:
    """Every candidate object under ``root`` (a folder walked recursively, a .zip, or one file), in a stable
    (sorted) order. Whether a candidate is DICOM is decided by the reader, not here, except for suffixes
    that are never DICOM. Entries that are not read (not a regular file, a zip member over the limits, a corrupt
    archive, ...) go to ``on_skip(where, reason)``, never to the reader."""
    skip: OnSkip = on_skip if on_skip is not None else (lambda where, why: None)
    p = Path(root)
    if not p.exists() and not p.is_symlink():
        raise InputNotFoundError(f"{p}: no such file or folder", hint="check the path (it is case-sensitive)")
    if not p.is_dir():
        problem = path_problem(str(p))
        if problem is not None:
            skip(str(p), problem)
        elif p.suffix.lower() == ".zip" or zipfile.is_zipfile(p):
            yield from _iter_zip(p, skip)
        else:
            yield FileRef(str(p))
        return
    for dirpath, dirnames, filenames in os.walk(p):
        dirnames.sort()
        # Skip hidden folders (e.g. .git) and caches: they never hold a study.
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            full = os.path.join(dirpath, fn)
            suffix = os.path.splitext(fn)[1].lower()
            if suffix in _SKIP_SUFFIXES:
                continue
            problem = path_problem(full)
            if problem is not None:
                skip(full, problem)
            elif suffix == ".zip":
                yield from _iter_zip(Path(full), skip)
            else:
                yield FileRef(full)


def _iter_zip(path: Path, skip: OnSkip) -> Iterator[FileRef]:
    try:
        with open_regular(str(path)) as fp, zipfile.ZipFile(fp) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        skip(str(path), SKIP_CORRUPT_ZIP)
        return
    overlapping = _overlapping(infos)
    last = {i.filename: k for k, i in enumerate(infos)}  # zipfile reads a repeated name's last entry
    total = 0
    for k, info in sorted(enumerate(infos), key=lambda ki: ki[1].filename):
        n = info.filename
        if n.endswith("/"):
            continue
        where = f"{path}!{n}"
        base = os.path.basename(n)
        suffix = os.path.splitext(base)[1].lower()
        if base.startswith(".") or suffix in _SKIP_SUFFIXES:
            continue
        if last[n] != k:
            skip(where, SKIP_DUPLICATE_MEMBER)
            continue
        if k in overlapping:
            skip(where, SKIP_OVERLAP)
            continue
        if suffix == ".zip":
            skip(where, SKIP_NESTED_ZIP)
            continue
        problem = member_problem(info)
        if problem is None and total + info.file_size > ZIP_MAX_TOTAL_BYTES:
            problem = SKIP_TOTAL_SIZE
        if problem is not None:
            skip(where, problem)
            continue
        total += info.file_size
        yield FileRef(str(path), n)


def _overlapping(infos: list[zipfile.ZipInfo]) -> set[int]:
    """Indexes of members whose data overlap another member's (a local header is at least 30 bytes plus the
    name): an archive that reuses one compressed block for many members inflates far beyond its size."""
    order = sorted(range(len(infos)), key=lambda k: infos[k].header_offset)
    bad: set[int] = set()
    for a, b in zip(order, order[1:]):
        ia, ib = infos[a], infos[b]
        name_len = len(ia.orig_filename.encode("utf-8" if ia.flag_bits & 0x800 else "cp437", "replace"))
        end_a = ia.header_offset + 30 + name_len + ia.compress_size
        if ib.header_offset < end_a:
            bad.update((a, b))
    return bad
