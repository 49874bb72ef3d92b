"""A DIMSE node (C-ECHO, C-FIND, C-GET or C-MOVE, C-STORE) behind the ``PacsClient`` protocol, with pynetdicom.

What this module decides, and why:

* **Headers by C-FIND at IMAGE level.** One query per study asks, for every instance, the non-sequence elements
  the series and role logic reads (``cmrdx.dicom.series.HEADER_KEYWORDS``) plus the patient and study elements an
  SR cites. A PACS answers a requested element the instance lacks with an *empty* value (Orthanc does), so every
  empty element is dropped, as are the query/retrieve-only ones: the data set then looks like a header read from
  the file. Sequences cannot be carried by C-FIND, so Enhanced / Legacy Enhanced MR objects (their geometry lives in
  functional-group sequences) are retrieved whole instead and returned as files.
* **Retrieve by C-GET** (default) on one association: the storage SOP classes are offered in the SCP role with the
  compressed lossless transfer syntaxes as well as the uncompressed ones, each in its own presentation context, so
  the PACS sends every file in the syntax it stored it in rather than decompressing it. Each series is one request
  naming its SOP Instance UIDs as a list (UID list matching, PS3.4 C.2.2.2.2; Orthanc supports it); whatever a
  list request did not bring is asked again one instance per request (for a PACS that does not match lists), and
  what still did not arrive is named in a PacsError.
* **Retrieve by C-MOVE** where a PACS allows only that: a storage SCP with the node's ``calling_aet`` listens on
  ``move_port`` for the time of the request, and the move destination is ``calling_aet`` (the PACS must know it).
* Received data sets are written as sent (file meta + the data set's bytes, never decoded) via ``atomic_write``.
* Every association has the node's timeout for connecting, association negotiation, each DIMSE answer, and each
  network read (the socket's own timeout: pynetdicom's reads of a PDU have none once connected), and is released,
  or aborted, whatever happens.
* ``TCP_QUICKACK`` on every read (Linux): a PACS that sends with Nagle's algorithm (Orthanc, through DCMTK) waits
  for our ACK of a data set's last segment, which Linux delays by 40 ms; with it a C-GET of small MR instances
  moves ~3 ms per instance instead of ~44 ms.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmrdx.errors import (
    AssociationRejectedError,
    OutputError,
    PacsError,
    SendError,
    StoreFailedError,
    UsageError,
)
from cmrdx.fileio import atomic_write
from cmrdx.pacs.config import PacsNode, check_ae_title
from cmrdx.pacs.types import Destination, StoreResult, StudyHit, TransferStats

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
VERIFICATION = "1.2.840.10008.1.1"

# Offered for every storage SOP class of a retrieve, one presentation context each (an acceptor picks one syntax per
# context): the lossless compressed syntaxes first, so a PACS sends a compressed file as stored, then the
# uncompressed ones for anything else.
RETRIEVE_SYNTAXES = (
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless, first-order prediction (process 14 SV1)
    "1.2.840.10008.1.2.4.57",  # JPEG lossless (process 14)
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.5",     # RLE lossless
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.1",     # explicit VR little endian
    "1.2.840.10008.1.2",       # implicit VR little endian
)
# Storage classes offered when the instances' own are not known (no study_headers call on this client first).
DEFAULT_STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.4",    # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.7",    # Secondary Capture Image
)
# A presentation context per (class, syntax), plus the retrieve model's: an association holds at most 128.
_CLASSES_PER_ASSOCIATION = 127 // len(RETRIEVE_SYNTAXES)
UIDS_PER_REQUEST = 200  # a UI element's value is at most 64 KiB in explicit VR: ~1000 UIDs; stay well below
# Besides HEADER_KEYWORDS: the patient and study elements an SR copies from the images it cites, and a few image
# elements readers expect; a C-FIND answer carries only what was asked.
EXTRA_KEYWORDS = (
    "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID", "StudyDescription",
    "ReferringPhysicianName", "SeriesDate", "ContentDate", "ContentTime", "BodyPartExamined", "PatientPosition",
    "SliceLocation", "SpacingBetweenSlices", "BitsStored", "HighBit", "PixelRepresentation", "MagneticFieldStrength",
    "RepetitionTime", "FlipAngle", "ImagesInAcquisition", "WindowCenter", "WindowWidth",
)
# Answer elements that belong to the query, not to the instance.
_QR_ONLY = frozenset({
    "QueryRetrieveLevel", "RetrieveAETitle", "InstanceAvailability", "RetrieveURL", "RetrieveURI",
    "StorageMediaFileSetID", "StorageMediaFileSetUID",
})
_STATUS_WORDS = {
    0xA700: "out of resources", 0xA701: "out of resources (cannot count matches)",
    0xA702: "out of resources (cannot perform sub-operations)", 0xA801: "move destination unknown",
    0xA900: "identifier does not match the SOP class", 0xAA00: "none of the frames requested were found",
    0xB000: "sub-operations completed with failures or warnings", 0xC000: "unable to process",
    0xFE00: "cancelled", 0x0122: "SOP class not supported", 0x0124: "not authorized",
}


def _status_words(code: int) -> str:
    words = _STATUS_WORDS.get(code) or ("unable to process" if code >> 12 == 0xC else "")
    return f"0x{code:04X}" + (f" ({words})" if words else "")


def _query_keywords() -> list[str]:
    """The non-sequence header keywords a C-FIND can ask for, each once."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    from cmrdx.dicom.series import HEADER_KEYWORDS

    out: list[str] = []
    for kw in (*HEADER_KEYWORDS, *EXTRA_KEYWORDS):
        tag = tag_for_keyword(kw)
        if tag is not None and dictionary_VR(tag) != "SQ" and kw not in out:
            out.append(kw)
    return out


def clean_find_answer(ds: Dataset, asked: set[str]) -> Dataset:
    """A C-FIND answer as the instance's header: only the elements asked (and Specific Character Set), none empty,
    no query/retrieve-only element."""
    from pydicom.dataset import Dataset

    out = Dataset()
    for elem in ds:
        kw = elem.keyword
        if kw in _QR_ONLY or (kw not in asked and kw != "SpecificCharacterSet"):
            continue
        if elem.VR == "SQ" or elem.is_empty:
            continue
        value = elem.value
        if isinstance(value, str) and not value.strip("\0 "):
            continue
        out.add(elem)
    return out


def _tune_socket(timeout: float) -> Callable[[Any], None]:
    """EVT_CONN_OPEN handler: the node's timeout on every read and write of the socket (pynetdicom clears it once
    connected), no Nagle delay on what we send, and an immediate ACK of what we receive (see the module's doc)."""

    def handler(event: Any) -> None:
        asock = event.assoc.dul.socket
        raw = getattr(asock, "socket", None)
        if raw is None:
            return
        try:
            raw.settimeout(timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            return
        quick_acks(event)

    return handler


def quick_acks(event: Any) -> None:
    """Acknowledge every read at once on an accepted connection (Linux ``TCP_QUICKACK``, re-armed after each
    read since the kernel drops it again).

    Many senders leave Nagle's algorithm on (Debian's DCMTK, and so Orthanc, does unless ``TCP_NODELAY=1`` is in
    its environment; pynetdicom does too). A C-STORE is written as two PDUs, so the sender holds the tail of the
    second until the first is acknowledged, and a receiver that delays its ACKs (40 ms on Linux) makes every
    instance wait: 317 instances routed from Orthanc took 14.3 s instead of 0.9 s. Best effort: where the option
    or pynetdicom's socket wrapper is not there, the connection works as before."""
    opt = getattr(socket, "TCP_QUICKACK", None)
    wrapper: Any = getattr(getattr(event.assoc, "dul", None), "socket", None)
    sock = getattr(wrapper, "socket", None)
    read = getattr(wrapper, "recv", None)
    if opt is None or sock is None or read is None:
        return

    def recv(nr_bytes: int) -> Any:
        data = read(nr_bytes)
        with suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, opt, 1)
        return data

    try:
        sock.setsockopt(socket.IPPROTO_TCP, opt, 1)
    except OSError:
        return
    wrapper.recv = recv


class _Receiver:
    """C-STORE sub-operations of a C-GET (or the C-STORE requests of a C-MOVE): the asked instances are written via
    ``dest`` as sent (file meta + the data set's encoded bytes); anything else is refused."""

    def __init__(self, dest: Destination):
        self.dest = dest
        self.wanted: set[str] = set()
        self.got: set[str] = set()
        self.bytes = 0
        self.error: OSError | None = None
        self.error_path: Path | None = None
        self.unexpected = 0
        self._lock = threading.Lock()

    def handle(self, event: Any) -> int:
        from pydicom.filewriter import write_file_meta_info

        sop = str(event.request.AffectedSOPInstanceUID or "")
        with self._lock:
            if sop not in self.wanted:
                self.unexpected += 1
                return 0xA900  # not asked (e.g. another C-MOVE to the same port): refuse, write nothing
        meta = event.file_meta
        raw = event.request.DataSet.getvalue()

        def writer(fp: Any) -> None:
            fp.write(b"\0" * 128 + b"DICM")
            write_file_meta_info(fp, meta, enforce_standard=True)
            fp.write(raw)

        path = self.dest(sop)
        try:
            atomic_write(path, writer)
            size = path.stat().st_size
        except OSError as exc:
            with self._lock:
                self.error, self.error_path = exc, path
            return 0xA700
        with self._lock:
            self.got.add(sop)
            self.wanted.discard(sop)
            self.bytes += size
        return 0x0000


class DimseClient:
    """A DIMSE node. Nothing connects until a method is called; each call is one association (released at its
    end), so a client can be kept for a whole batch."""

    def __init__(self, node: PacsNode):
        where = f"PACS node {node.name!r}"
        if not (node.aet and node.host and node.port):
            raise UsageError(f"{where} is not a DIMSE node ({node.describe()})",
                             hint="give the node aet, host and port, or use the DICOMweb client for it")
        self.node = node
        self.aet = check_ae_title(node.aet, "aet", where)
        self.calling_aet = check_ae_title(node.calling_aet, "calling_aet", where)
        self.host, self.port, self.timeout = node.host, int(node.port), float(node.timeout)
        self.where = f"PACS node {node.name!r} ({self.aet}@{self.host}:{self.port})"
        # SOP class of each instance seen in study_headers: a retrieve then offers exactly the classes it needs
        self._classes: dict[str, str] = {}

    # -- associations --------------------------------------------------------------------------------------------
    def _ae(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_aet)
        ae.connection_timeout = ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = self.timeout
        return ae

    @contextmanager
    def _association(self, contexts: Sequence[tuple[str, str]], *, roles: Sequence[str] = (),
                     handlers: Sequence[tuple[Any, Callable[..., Any]]] = ()) -> Iterator[Any]:
        """An established association offering ``contexts`` ((abstract syntax, transfer syntax) pairs) and the SCP
        role for ``roles`` (C-GET); released at the end, aborted if it cannot be released."""
        from pynetdicom import build_role, evt

        from cmrdx.outputs.send import _Deadline

        try:
            socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise SendError(f"{self.where}: the host name {self.host!r} does not resolve ({exc.strerror or exc})",
                            hint="check host: in pacs.yaml (a name this machine's DNS knows, or an IP address)") from None
        ae = self._ae()
        for abstract, syntax in contexts:
            ae.add_requested_context(abstract, syntax)
        opened: list[Any] = []
        tune = _tune_socket(self.timeout)

        def on_open(event: Any) -> None:
            opened.append(event.assoc)
            tune(event)

        try:
            with _Deadline(self.timeout * 2, opened) as deadline:  # connect + negotiation, against a stalled peer
                assoc = ae.associate(self.host, self.port, ae_title=self.aet,
                                     ext_neg=[build_role(c, scp_role=True) for c in roles] or None,
                                     evt_handlers=[(evt.EVT_CONN_OPEN, on_open), *handlers])
        except OSError as exc:
            raise SendError(f"{self.where}: cannot connect ({exc.strerror or exc})",
                            hint="check host and port in pacs.yaml, and that no firewall is in between") from None
        if assoc.is_rejected:
            prim = assoc.acceptor.primitive
            why = f"{prim.result_str}, {prim.source_str}: {prim.reason_str}" if prim is not None else "rejected"
            raise AssociationRejectedError(
                f"{self.where} rejected the association from {self.calling_aet} ({why})",
                hint="check aet/calling_aet in pacs.yaml; the PACS must know calling_aet "
                     f"({self.calling_aet} on this machine) and be called by its own AE title ({self.aet})")
        if not assoc.is_established:
            if deadline.expired:
                what = f"no valid DICOM answer within {self.timeout:g} s (not a DICOM port, or a stalled peer)"
            elif assoc.is_aborted:
                what = "the peer aborted the association during negotiation"
            else:
                what = f"no DICOM association: nothing listens there, or no answer within {self.timeout:g} s"
            raise SendError(f"{self.where}: {what}",
                            hint="check host and port in pacs.yaml (the PACS's DICOM port), that the PACS runs, "
                                 "and that no firewall is in between; raise timeout: for a slow PACS")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                with _Deadline(self.timeout, [assoc]):
                    assoc.release()
            if not assoc.is_released and not assoc.is_aborted:
                assoc.abort()

    def _accepted(self, assoc: Any, abstract: str, what: str) -> None:
        if not any(c.abstract_syntax == abstract for c in assoc.accepted_contexts):
            raise PacsError(f"{self.where} does not offer {what} to {self.calling_aet}",
                            hint="use a node (or a retrieve: setting) this PACS supports; its admins can enable it")

    def _answers(self, assoc: Any, stream: Iterator[tuple[Any, Any]], doing: str) -> Iterator[tuple[int, Any, Any]]:
        """(status, status data set, identifier) of each answer. An association that ends without a final status
        is the PACS refusing the request when it ended sooner than the timeout (pynetdicom itself aborts only when
        a timeout expires): a PacsError naming the usual cause; else a SendError (no answer in time)."""
        start = time.monotonic()
        for status, identifier in stream:
            if status is None or "Status" not in status:
                if time.monotonic() - start < self.timeout:
                    raise PacsError(f"{self.where} ended the association while {doing} (it refused the request)",
                                    hint=f"a PACS may refuse queries and retrieves from a calling AE title it does "
                                         f"not know: register {self.calling_aet} (calling_aet in pacs.yaml) on the "
                                         "PACS; its log names the cause")
                raise SendError(f"{self.where}: no answer within {self.timeout:g} s while {doing}",
                                hint="raise the node's timeout: for a slow PACS; the PACS's log names the cause")
            yield int(status.Status), status, identifier
            start = time.monotonic()

    # -- the protocol --------------------------------------------------------------------------------------------
    def echo(self) -> str:
        """C-ECHO."""
        with self._association([(VERIFICATION, "1.2.840.10008.1.2")]) as assoc:
            status = assoc.send_c_echo()
        if status is None or "Status" not in status:
            raise SendError(f"{self.where}: no answer to C-ECHO within {self.timeout:g} s",
                            hint="check that the PACS runs; raise the node's timeout: for a slow PACS")
        if int(status.Status) != 0:
            raise PacsError(f"{self.where} answered C-ECHO with status {_status_words(int(status.Status))}",
                            hint="the PACS's log names the cause")
        return f"{self.aet}@{self.host}:{self.port} answered C-ECHO (calling AE title {self.calling_aet})"

    def _find(self, query: Dataset, doing: str) -> list[Dataset]:
        """Every C-FIND match of ``query`` (Study Root)."""
        out: list[Dataset] = []
        with self._association([(STUDY_ROOT_FIND, "1.2.840.10008.1.2.1"), (STUDY_ROOT_FIND, "1.2.840.10008.1.2")]) as assoc:
            self._accepted(assoc, STUDY_ROOT_FIND, "C-FIND (Study Root)")
            for code, status, identifier in self._answers(assoc, assoc.send_c_find(query, STUDY_ROOT_FIND), doing):
                if code in (0xFF00, 0xFF01):
                    if identifier is not None:
                        out.append(identifier)
                elif code == 0x0000:
                    break
                else:
                    comment = str(status.get("ErrorComment", "") or "")
                    raise PacsError(f"{self.where} answered C-FIND with status {_status_words(code)} while {doing}"
                                    + (f": {comment}" if comment else ""),
                                    hint="the PACS's log names the cause (a PACS may refuse queries from an AE "
                                         "title it does not know: register calling_aet there)")
        return out

    def find_studies(self, query: Mapping[str, str]) -> list[StudyHit]:
        """C-FIND at STUDY level; values pass as DICOM matching (``20260101-20260131`` is a range)."""
        from pydicom.datadict import dictionary_VR, tag_for_keyword
        from pydicom.dataset import Dataset

        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        for kw in ("StudyInstanceUID", "StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                   "NumberOfStudyRelatedInstances"):
            setattr(q, kw, None)
        for kw, value in query.items():
            tag = tag_for_keyword(str(kw))
            if tag is None or dictionary_VR(tag) == "SQ":
                raise UsageError(f"{self.where}: {kw!r} is not a DICOM keyword a query can match",
                                 hint="use keywords such as StudyDate, ModalitiesInStudy, StudyInstanceUID, PatientID")
            setattr(q, str(kw), str(value))
        hits: list[StudyHit] = []
        seen: set[str] = set()
        for ds in self._find(q, "searching studies"):
            uid = str(ds.get("StudyInstanceUID", "") or "")
            if not uid or uid in seen:
                continue
            seen.add(uid)
            mods = ds.get("ModalitiesInStudy", None)
            modalities = () if not mods else (str(mods),) if isinstance(mods, str) else tuple(str(m) for m in mods)
            hits.append(StudyHit(study_uid=uid, study_date=str(ds.get("StudyDate", "") or ""), modalities=modalities,
                                 n_series=_int(ds.get("NumberOfStudyRelatedSeries", None)),
                                 n_instances=_int(ds.get("NumberOfStudyRelatedInstances", None))))
        return hits

    def study_headers(self, study_uid: str, dest: Destination) -> tuple[list[Dataset], list[Path]]:
        """C-FIND at IMAGE level for the whole study; Enhanced MR objects retrieved whole instead (see the module)."""
        from pydicom.dataset import Dataset

        from cmrdx.dicom.series import ENHANCED_SOP_CLASSES

        keywords = _query_keywords()
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        for kw in keywords:
            setattr(q, kw, None)
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = ""
        answers = self._find(q, f"reading the headers of study {study_uid}")
        if not answers:
            raise PacsError(f"{self.where} does not hold study {study_uid} (C-FIND found no instance)",
                            hint="check the StudyInstanceUID (e.g. `cmrdx pacs find`), or the node")
        asked = set(keywords)
        headers: list[Dataset] = []
        whole: list[tuple[str, str]] = []
        for ds in answers:
            clean = clean_find_answer(ds, asked)
            sop, cls = str(clean.get("SOPInstanceUID", "") or ""), str(clean.get("SOPClassUID", "") or "")
            if sop and cls:
                self._classes[sop] = cls
            if cls in ENHANCED_SOP_CLASSES and sop:
                whole.append((str(clean.get("SeriesInstanceUID", "") or ""), sop))
            else:
                headers.append(clean)
        paths = [dest(sop) for _, sop in whole]
        todo = [(series, sop) for (series, sop), p in zip(whole, paths) if not p.is_file()]  # a SOP UID never changes
        if todo:
            self.retrieve(study_uid, todo, dest)
        return headers, paths

    def retrieve(self, study_uid: str, instances: Sequence[tuple[str, str]], dest: Destination) -> TransferStats:
        """C-GET or C-MOVE (the node's ``retrieve``) of ``instances``, each series one request with a UID list."""
        t0 = time.perf_counter()
        by_series: dict[str, list[str]] = {}
        for series_uid, sop_uid in instances:
            if sop_uid not in by_series.setdefault(series_uid, []):
                by_series[series_uid].append(sop_uid)
        receiver = _Receiver(dest)
        stats = TransferStats()
        if self.node.retrieve == "move":
            self._move(study_uid, by_series, receiver, stats)
        else:
            for chunk in self._class_chunks(by_series):
                self._get(study_uid, chunk, receiver, stats)
        stats.instances, stats.bytes = len(receiver.got), receiver.bytes
        stats.seconds = time.perf_counter() - t0
        log.debug("%s: %d instance(s) of study %s, %d bytes in %d request(s), %.3f s%s", self.where, stats.instances,
                  study_uid, stats.bytes, stats.requests, stats.seconds,
                  f"; {receiver.unexpected} not asked, refused" if receiver.unexpected else "")
        if receiver.error is not None:
            raise OutputError.from_os_error(receiver.error, receiver.error_path, doing="cannot write a retrieved instance")
        asked = [sop for sops in by_series.values() for sop in sops]
        missing = [sop for sop in asked if sop not in receiver.got]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise PacsError(f"{self.where}: {len(missing)} of the {len(asked)} instance(s) asked of study {study_uid} "
                            f"did not arrive by C-{self.node.retrieve.upper()}: {shown}",
                            hint="the study changed on the PACS since its headers were read (run again), or the "
                                 "PACS refused to send them (its log names the cause)")
        return stats

    def _class_chunks(self, by_series: dict[str, list[str]]) -> list[tuple[list[str], dict[str, list[str]]]]:
        """(storage classes to offer, the series' instances to ask) per association: the instances' own classes
        where study_headers saw them, else the usual MR classes; at most 15 classes per association."""
        classes: dict[str, str | None] = {sop: self._classes.get(sop) for sops in by_series.values() for sop in sops}
        needed = sorted({c for c in classes.values() if c})
        if any(c is None for c in classes.values()):
            needed = [*DEFAULT_STORAGE_CLASSES, *(c for c in needed if c not in DEFAULT_STORAGE_CLASSES)]
        chunks: list[tuple[list[str], dict[str, list[str]]]] = []
        for k in range(0, len(needed), _CLASSES_PER_ASSOCIATION):
            group = needed[k:k + _CLASSES_PER_ASSOCIATION]
            take = set(group)
            part: dict[str, list[str]] = {}
            for series, sops in by_series.items():
                mine = [s for s in sops if classes[s] in take or (classes[s] is None and k == 0)]
                if mine:
                    part[series] = mine
            if part:
                chunks.append((group, part))
        return chunks

    def _identifier(self, study_uid: str, series_uid: str, sops: list[str]) -> Dataset:
        from pydicom.dataset import Dataset

        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = series_uid
        q.SOPInstanceUID = sops if len(sops) > 1 else sops[0]
        return q

    def _retrieve_status(self, code: int, status: Any, doing: str) -> None:
        """A final C-GET / C-MOVE status: success and warnings pass (what arrived is checked afterwards); a failure
        that names its cause is raised when it is not about some instances only."""
        if code in (0x0000, 0xB000, 0xFF00, 0xFF01):
            return
        comment = str(status.get("ErrorComment", "") or "")
        if code == 0xA801:
            raise PacsError(f"{self.where} does not know the move destination {self.calling_aet} while {doing}",
                            hint=f"register {self.calling_aet} on the PACS with this machine's address and "
                                 f"move_port {self.node.move_port}, or use retrieve: get")
        log.info("%s: %s while %s%s", self.where, _status_words(code), doing, f": {comment}" if comment else "")

    def _get(self, study_uid: str, chunk: tuple[list[str], dict[str, list[str]]], receiver: _Receiver,
             stats: TransferStats) -> None:
        from pynetdicom import evt

        classes, by_series = chunk
        contexts = [(STUDY_ROOT_GET, "1.2.840.10008.1.2.1"), (STUDY_ROOT_GET, "1.2.840.10008.1.2")]
        contexts += [(c, t) for c in classes for t in RETRIEVE_SYNTAXES]
        contexts = contexts[:128]
        with self._association(contexts, roles=classes, handlers=[(evt.EVT_C_STORE, receiver.handle)]) as assoc:
            self._accepted(assoc, STUDY_ROOT_GET, "C-GET (Study Root)")

            def ask(series_uid: str, sops: list[str]) -> None:
                with receiver._lock:
                    receiver.wanted.update(s for s in sops if s not in receiver.got)
                doing = f"retrieving {len(sops)} instance(s) of series {series_uid} by C-GET"
                stats.requests += 1
                q = self._identifier(study_uid, series_uid, sops)
                for code, status, _ in self._answers(assoc, assoc.send_c_get(q, STUDY_ROOT_GET), doing):
                    self._retrieve_status(code, status, doing)

            self._each_request(by_series, receiver, ask)

    def _each_request(self, by_series: dict[str, list[str]], receiver: _Receiver,
                      ask: Callable[[str, list[str]], None]) -> None:
        """A UID-list request per series (in chunks), then one request per instance a list did not bring."""
        for series_uid, sops in by_series.items():
            for k in range(0, len(sops), UIDS_PER_REQUEST):
                part = sops[k:k + UIDS_PER_REQUEST]
                ask(series_uid, part)
                if len(part) > 1:
                    for sop in [s for s in part if s not in receiver.got]:  # a PACS without UID-list matching
                        ask(series_uid, [sop])

    def _move(self, study_uid: str, by_series: dict[str, list[str]], receiver: _Receiver,
              stats: TransferStats) -> None:
        from pynetdicom import AllStoragePresentationContexts, evt

        port = self.node.move_port
        if port is None:
            raise UsageError(f"{self.where}: retrieve: move needs move_port",
                             hint="give move_port: (the port the PACS sends to; it must know calling_aet there)")
        scp = self._ae()
        for cx in AllStoragePresentationContexts:
            scp.add_supported_context(cx.abstract_syntax, list(RETRIEVE_SYNTAXES))
        try:
            server = scp.start_server(("", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, receiver.handle),
                                                    (evt.EVT_CONN_OPEN, _tune_socket(self.timeout))])
        except OSError as exc:
            raise UsageError(f"{self.where}: cannot listen on move_port {port} for the C-MOVE ({exc.strerror or exc})",
                             hint="choose a free move_port in pacs.yaml (and register it on the PACS with "
                                  f"{self.calling_aet})") from None
        try:
            with self._association([(STUDY_ROOT_MOVE, "1.2.840.10008.1.2.1"),
                                    (STUDY_ROOT_MOVE, "1.2.840.10008.1.2")]) as assoc:
                self._accepted(assoc, STUDY_ROOT_MOVE, "C-MOVE (Study Root)")

                def ask(series_uid: str, sops: list[str]) -> None:
                    with receiver._lock:
                        receiver.wanted.update(s for s in sops if s not in receiver.got)
                    doing = f"retrieving {len(sops)} instance(s) of series {series_uid} by C-MOVE"
                    stats.requests += 1
                    q = self._identifier(study_uid, series_uid, sops)
                    stream = assoc.send_c_move(q, self.calling_aet, STUDY_ROOT_MOVE)
                    for code, status, _ in self._answers(assoc, stream, doing):
                        self._retrieve_status(code, status, doing)

                self._each_request(by_series, receiver, ask)
        finally:
            server.shutdown()

    def store(self, paths: Sequence[Path]) -> list[StoreResult]:
        """C-STORE with ``cmrdx.outputs.send.send`` (one association); its errors re-named for this node."""
        from cmrdx.outputs.send import StoreOutcome, send

        try:
            outcomes: list[StoreOutcome] = send(list(paths), self.host, self.port, self.aet,
                                                calling_aet=self.calling_aet, timeout=self.timeout)
        except StoreFailedError as exc:
            outcomes = list(getattr(exc, "outcomes", []))
            if not outcomes:
                raise
        except AssociationRejectedError as exc:
            raise AssociationRejectedError(f"PACS node {self.node.name!r}: {exc.message}",
                                           hint="check aet/calling_aet in pacs.yaml; the PACS must know calling_aet "
                                                f"({self.calling_aet})") from None
        except SendError as exc:
            raise SendError(f"PACS node {self.node.name!r}: {exc.message}",
                            hint="check host and port in pacs.yaml, that the PACS runs, and that no firewall is in "
                                 "between") from None
        return [StoreResult(o.path, o.sop_instance_uid, o.ok,
                            "no answer" if o.status is None else f"0x{o.status:04X}", o.comment)
                for o in outcomes]

    def close(self) -> None:
        """Nothing is held between calls."""


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
