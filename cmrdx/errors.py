"""Errors that say what was found and what to do about it.

Every cmrdx error carries an exit code so the CLI can map failures to documented codes
without parsing messages. Messages name the file (or folder) and the fix.

``EXIT_CODES`` is the whole table the ``cmrdx`` command exits with (the README's "Exit codes" lists the same):
the error classes here, and the three outcomes that are not cmrdx errors: a command line that cannot be parsed
(``UsageError``, also what click reports), an unexpected exception (``InternalError``) and an interrupt.
"""

from __future__ import annotations

import errno
import os


class CmrdxError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  fix: {hint}")


class UsageError(CmrdxError):
    """The command line is wrong: an unknown command or option, a missing argument, a value of the wrong type or
    out of range. The parser's own usage errors (printed with the command's usage) exit with this code too; this
    class is for a value found wrong after parsing (e.g. an AE title with control characters)."""

    exit_code = 2


class InputNotFoundError(CmrdxError):
    """The path given does not exist."""

    exit_code = 2


class NoDicomError(CmrdxError):
    """The folder (or archive) holds no readable DICOM file at all."""

    exit_code = 3


class NoMRError(CmrdxError):
    """DICOM was found, but no MR image series."""

    exit_code = 4


class NoCineError(CmrdxError):
    """MR series were found, but no cine series that a model can use."""

    exit_code = 5


class MultipleStudiesError(CmrdxError):
    """Several studies are mixed in one folder and none was chosen."""

    exit_code = 6


class PixelDecodeError(CmrdxError):
    """A file's pixel data could not be decoded (missing plugin or corrupt data)."""

    exit_code = 7


class ModelError(CmrdxError):
    """A model is missing, incomplete, tampered with, or cannot run on the asked device."""

    exit_code = 8


class PromptBankError(CmrdxError):
    """A prompt bank does not follow the schema."""

    exit_code = 9


class SendError(CmrdxError):
    """A DICOM peer could not be reached (nothing listening, a firewall, a timeout)."""

    exit_code = 10


class AssociationRejectedError(CmrdxError):
    """The peer answered but rejected the association (usually the AE titles)."""

    exit_code = 11


class StoreFailedError(CmrdxError):
    """The association was accepted, but at least one file was not stored."""

    exit_code = 12


class PacsError(CmrdxError):
    """A PACS answered, but not with what was asked: a study it does not hold, a query or retrieve it refused,
    an HTTP error status from a DICOMweb service, a retrieve that brought back fewer instances than asked."""

    exit_code = 14


class OutputError(CmrdxError):
    """A file cannot be written (or read) where asked: a folder where a file is expected, a folder that is not
    writable, a read-only or full disk, standard output closed or full. Outputs are checked before any work."""

    exit_code = 13

    @classmethod
    def from_os_error(cls, exc: OSError, path: str | os.PathLike[str] | None = None, *,
                      doing: str = "cannot write here") -> OutputError:
        """The system's refusal as an OutputError naming ``path`` (else the error's own file name), with the fix
        that fits its cause."""
        where = path if path is not None else exc.filename
        what = f"{doing} ({exc.strerror or exc})"
        return cls(f"{os.fsdecode(where)}: {what}" if where is not None else what,
                   hint=_OS_HINTS.get(exc.errno or 0, "choose another path"))


_OS_HINTS = {
    errno.ENOSPC: "free some disk space, or write to another disk",
    errno.EDQUOT: "free some space within your disk quota, or write to another disk",
    errno.EROFS: "the disk is read-only: choose a folder on a writable disk",
    errno.EACCES: "check the permissions of the file and its folder, or choose a folder you can write to",
    errno.EPERM: "check the permissions of the file and its folder, or choose a folder you can write to",
    errno.EISDIR: "give a file name, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another output path",
    errno.ENAMETOOLONG: "choose a shorter file name",
    errno.ELOOP: "the path goes round a loop of symbolic links: choose another output path",
    errno.EPIPE: "the program reading the output stopped early",
}


class InternalError(CmrdxError):
    """An exception cmrdx did not expect: a bug. The CLI names it in one line; ``cmrdx -v`` shows the traceback."""

    exit_code = 70


INTERRUPTED = 130  # Ctrl-C (SIGINT): the shell's 128 + signal number

EXIT_CODES = {
    cls.__name__: cls.exit_code
    for cls in (
        CmrdxError,
        UsageError,
        InputNotFoundError,
        NoDicomError,
        NoMRError,
        NoCineError,
        MultipleStudiesError,
        PixelDecodeError,
        ModelError,
        PromptBankError,
        SendError,
        AssociationRejectedError,
        StoreFailedError,
        OutputError,
        PacsError,
        InternalError,
    )
} | {"Interrupted": INTERRUPTED}
