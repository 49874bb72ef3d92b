"""C-STORE of DICOM files (e.g. the SR ``cmrdx classify --sr`` wrote) to a PACS or any storage SCP, with pynetdicom.

One association for all files; each file is offered in its own transfer syntax (plus the uncompressed ones, so a
peer that declines the original can still take an uncompressed file). Failures are named: an unreachable peer, a rejected
association (wrong AE titles), a storage SOP class the peer does not accept, a failure status per file.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmrdx.errors import (  # noqa: F401 - re-exported for callers of this module
    AssociationRejectedError,
    CmrdxError,
    InputNotFoundError,
    NoDicomError,
    SendError,
    StoreFailedError,
    UsageError,
)


@dataclass
class StoreOutcome:
    """What the peer said about one file. ``status`` is the DIMSE status (0x0000 success, 0xB... warning)."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    status: int | None  # None: no answer (the association dropped or timed out)
    comment: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and (self.status == 0x0000 or (self.status >> 12) == 0xB)


class _Deadline:
    """Ends an exchange with the peer that takes longer than ``seconds`` by closing the association's socket.

    pynetdicom reads a PDU until every byte its header announced has arrived, with no time limit once connected:
    a peer that answers with bytes that are not DICOM (a 4 GB "length" in its first six bytes) or trickles them
    would hold the command, and grow its buffer, for ever. Closing the socket ends the read; the association then
    reports itself aborted and the caller names the cause (``expired``). ``assocs``: the associations to end
    (filled by the caller, e.g. from pynetdicom's connection-open event while ``associate`` is still running)."""

    def __init__(self, seconds: float, assocs: list[Any]):
        self.expired = False
        self._assocs = assocs
        self._timer = threading.Timer(max(seconds, 0.1), self._expire)
        self._timer.daemon = True

    def _expire(self) -> None:
        self.expired = True
        for assoc in self._assocs:
            sock = getattr(assoc.dul, "socket", None)
            if sock is not None:
                sock.close()

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _size_mb(path: Path) -> float:
    try:
        return path.stat().st_size / 1e6
    except OSError:
        return 0.0


def read_for_send(files: list[str | os.PathLike[str]]):
    """Read every file fully (they are sent as they are); errors name the file before any connection is made."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for p in files:
        path = Path(p)
        if path.is_dir():
            raise InputNotFoundError(f"{path}: is a folder", hint=f"pass the files, e.g. {path}/*.dcm")
        if not path.is_file():
            raise InputNotFoundError(f"{path}: no such file", hint="check the path (it is case-sensitive)")
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError as exc:  # pydicom's own text suggests force=True, which would not help here
            raise NoDicomError(f"{path}: not a DICOM Part 10 file (no 'DICM' preamble)",
                                hint="pass DICOM files, e.g. the SR written by `cmrdx classify --sr FILE`") from exc
        except (OSError, ValueError) as exc:
            raise NoDicomError(f"{path}: not a readable DICOM file ({exc})",
                                hint="pass DICOM Part 10 files, e.g. the SR written by `cmrdx classify --sr FILE`") from exc
        missing = [k for k in ("SOPClassUID", "SOPInstanceUID") if k not in ds]
        if missing or "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            raise NoDicomError(f"{path}: lacks {', '.join(missing) or 'a file meta transfer syntax'}",
                                hint="only complete DICOM objects (with SOP Class/Instance UIDs) can be stored")
        out.append((path, ds))
    return out


def send(
    files: list[str | os.PathLike[str]],
    host: str,
    port: int,
    aet: str,
    *,
    calling_aet: str = "CMRDX",
    timeout: float = 10.0,
) -> list[StoreOutcome]:
    """Store ``files`` on the storage SCP ``aet`` at ``host:port``; returns one outcome per file, in order.

    Raises SendError (unreachable), AssociationRejectedError, StoreFailedError (some file not stored: the message
    lists them; ``.outcomes`` holds all), NoDicomError / InputNotFoundError (bad input, before connecting).
    """
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, evt

    for opt, title in (("--aet", aet), ("--calling-aet", calling_aet)):  # DICOM's AE value representation
        if not 1 <= len(title.strip()) <= 16 or "\\" in title or not (title.isascii() and title.isprintable()):
            raise UsageError(f"{opt} {title!r}: an AE title has 1 to 16 printable ASCII characters and no backslash",
                             hint="use the AE title configured on the PACS")
    items = read_for_send(files)
    where = f"{aet}@{host}:{port}"
    ae = AE(ae_title=calling_aet)
    ae.connection_timeout = ae.acse_timeout = ae.network_timeout = timeout
    ae.dimse_timeout = max(timeout, 30.0)
    # One presentation context per (SOP class, transfer syntax): a peer that lists Implicit VR first would otherwise
    # pick it for a context offering several, and the file would not be stored as it was written. The uncompressed
    # syntaxes are offered as fallbacks (pynetdicom converts between them; it cannot decompress).
    contexts: list[tuple[str, str]] = []
    for _, ds in items:
        for t in (ds.file_meta.TransferSyntaxUID, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if (ds.SOPClassUID, t) not in contexts:
                contexts.append((ds.SOPClassUID, t))
    if len(contexts) > 128:
        raise CmrdxError(f"{len(items)} files need {len(contexts)} presentation contexts; one association has at most 128",
                         hint="send the files in smaller groups")
    for sop_class, t in contexts:
        ae.add_requested_context(sop_class, t)
    try:
        opened: list[Any] = []  # the association, as soon as its connection is open
        with _Deadline(timeout, opened) as deadline:
            assoc = ae.associate(host, int(port), ae_title=aet,
                                 evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: opened.append(event.assoc))])
    except socket.gaierror as exc:
        raise SendError(f"{where}: the host name {host!r} does not resolve ({exc.strerror or exc})",
                        hint="check --host (a name this machine's DNS knows, or an IP address)") from exc
    except OSError as exc:  # no route, a refused or reset connection before pynetdicom's own handling
        raise SendError(f"{where}: cannot connect ({exc.strerror or exc})",
                        hint="check --host and --port, and that no firewall is in between") from exc
    if deadline.expired and not assoc.is_established:
        raise SendError(
            f"{where}: no valid DICOM answer within {timeout:g} s (the peer sent something that is not DICOM, "
            "or stalled part-way)",
            hint="check that --port is the PACS's DICOM port (not, e.g., its web or HL7 port)",
        )
    if assoc.is_rejected:
        prim = assoc.acceptor.primitive
        why = f"{prim.result_str}, {prim.source_str}: {prim.reason_str}" if prim is not None else "rejected"
        raise AssociationRejectedError(
            f"{where} rejected the association from {calling_aet} ({why})",
            hint=f"check the called AE title (--aet {aet}) and that the peer accepts the calling AE title "
                 f"(--calling-aet {calling_aet}) from this machine",
        )
    if not assoc.is_established:
        raise SendError(
            f"{where}: no DICOM association (nothing answered within {timeout:g} s, or the connection was refused)",
            hint="check --host and --port, that the storage service is running, and that no firewall is in between",
        )
    outcomes: list[StoreOutcome] = []
    try:
        for path, ds in items:
            try:
                with _Deadline(ae.dimse_timeout + timeout + _size_mb(path), [assoc]):  # at least 1 MB/s
                    status = assoc.send_c_store(ds)
            except ValueError as exc:  # pynetdicom: no accepted presentation context for this SOP class
                outcomes.append(StoreOutcome(path, ds.SOPClassUID, ds.SOPInstanceUID, None, f"not accepted by the peer: {exc}"))
                continue
            code = int(status.Status) if "Status" in status else None
            comment = str(status.get("ErrorComment", "")) if code else ""
            outcomes.append(StoreOutcome(path, ds.SOPClassUID, ds.SOPInstanceUID, code,
                                         comment or ("no answer: the association dropped" if code is None else "")))
    finally:
        if assoc.is_established:
            with _Deadline(timeout, [assoc]):
                assoc.release()
    failed = [o for o in outcomes if not o.ok]
    if failed:
        listing = "; ".join(f"{o.path}: " + (f"status 0x{o.status:04X}" if o.status is not None else "no status")
                            + (f" ({o.comment})" if o.comment else "") for o in failed)
        err = StoreFailedError(
            f"{where}: {len(failed)} of {len(outcomes)} file(s) not stored: {listing}",
            hint="check that the peer accepts these SOP classes (an SR needs Comprehensive 3D SR storage) "
                 "and has disk space; the peer's log names the cause",
        )
        err.outcomes = outcomes  # type: ignore[attr-defined]
        raise err
    return outcomes
