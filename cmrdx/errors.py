"""Errors that say what was found and what to do about it.

Every cmrdx error carries an exit code so the CLI can map failures to documented codes
without parsing messages. Messages name the file (or folder) and the fix.
"""

from __future__ import annotations


class CmrdxError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  fix: {hint}")


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


EXIT_CODES = {
    cls.__name__: cls.exit_code
    for cls in (
        CmrdxError,
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
    )
}
