"""A DICOMweb node (QIDO-RS, WADO-RS, STOW-RS) behind the ``PacsClient`` protocol, with dicomweb-client.

dicomweb-client does the protocol; this module decides what is asked and turns every failure into a cmrdx error
that names the node and its fix:

* one ``requests.Session`` per client carries the authentication (HTTP basic or a bearer token, read from the
  environment variables the node names, only when the first request is made), the TLS verification setting, and the
  node's timeout on *every* request (dicomweb-client passes its own default of 20 s otherwise);
* headers come from WADO-RS study metadata, one request for the whole study, never with bulk data: elements the
  node offers only by ``BulkDataURI`` (pixel data, large binary values) are left out, so a header never costs more
  than its JSON;
* instances are retrieved in the transfer syntax the node stored them in (``*``), and the file written is what the
  node sent (pydicom writes back the raw elements it read, byte for byte), never transcoded. A series whose every
  instance is asked (known from this client's ``study_headers``) is one streamed request; otherwise one request
  per instance, so that only the asked instances move and a missing one is named;
* STOW-RS answers are read per instance (Referenced vs Failed SOP Sequence), so one refused file does not hide the
  others' success.

Secrets never appear in a message: errors name the node, its URL (without any user information) and the
*names* of the environment variables.
"""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmrdx.errors import AssociationRejectedError, CmrdxError, OutputError, PacsError, SendError, UsageError
from cmrdx.fileio import atomic_write
from cmrdx.pacs.config import PacsNode
from cmrdx.pacs.types import Destination, StoreResult, StudyHit, TransferStats

if TYPE_CHECKING:  # pragma: no cover
    import requests
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

# QIDO-RS paging. A node may answer fewer studies than asked (a configured cap), so paging goes on until a page
# brings nothing new. Each request asks ``limit = offset + PAGE``: Orthanc 1.10's DICOMweb plugin, when a filter
# needs its post-filtering (ModalitiesInStudy), answers matches[offset:limit] instead of
# matches[offset:offset + limit], which plain paging would end early; a node that follows PS3.18 answers larger
# pages instead, and the offset moves on by what came.
PAGE = 100
# STOW-RS: files per request (one multipart body each), so a large store neither builds a huge body in memory
# nor loses every result to one failed request.
STOW_BATCH = 32

_STUDY_FIELDS = ("StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
# Pixel data and its float / double-float variants: never part of a header, whatever the node inlines.
_PIXEL_TAGS = frozenset({"7FE00010", "7FE00008", "7FE00009", "7FE00001", "7FE00002"})


def _safe_url(url: str) -> str:
    """``url`` without user information (``https://user:pass@host`` -> ``https://host``): for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _strip_bulk(obj: Any) -> Any:
    """A DICOM JSON data set (or list of them) without pixel data and without elements given by ``BulkDataURI``
    (their value would be another request), items of sequences included."""
    if isinstance(obj, list):
        return [_strip_bulk(x) for x in obj]
    out: dict[str, Any] = {}
    for tag, elem in obj.items():
        if tag.upper() in _PIXEL_TAGS or not isinstance(elem, dict) or "BulkDataURI" in elem:
            continue
        if elem.get("vr") == "SQ" and isinstance(elem.get("Value"), list):
            elem = {**elem, "Value": [_strip_bulk(item) for item in elem["Value"] if isinstance(item, dict)]}
        out[tag] = elem
    return out


def _no_bulk(*_args: Any) -> bytes:
    """Bulk-data handler for ``Dataset.from_json``: never fetch (every BulkDataURI was stripped anyway)."""
    return b""


def _json_value(d: Mapping[str, Any], tag: str) -> list[Any]:
    elem = d.get(tag)
    if not isinstance(elem, dict):
        return []
    value = elem.get("Value")
    return list(value) if isinstance(value, list) else []


def _int_or_none(values: list[Any]) -> int | None:
    try:
        return int(values[0]) if values else None
    except (TypeError, ValueError):
        return None


def parse_stow_answer(answer: Dataset, items: Sequence[tuple[Path, str]]) -> list[StoreResult]:
    """One StoreResult per ``(path, SOPInstanceUID)`` from a STOW-RS answer: listed in ReferencedSOPSequence ->
    stored (with a WarningReason, if any, in ``detail``); in FailedSOPSequence -> not stored, with its
    FailureReason; in neither -> not stored ("not in the node's answer")."""
    done: dict[str, str] = {}
    failed: dict[str, str] = {}
    for item in answer.get("ReferencedSOPSequence", None) or []:
        warn = item.get("WarningReason", None)
        done[str(item.get("ReferencedSOPInstanceUID", ""))] = f"warning 0x{int(warn):04X}" if warn is not None else ""
    for item in answer.get("FailedSOPSequence", None) or []:
        why = item.get("FailureReason", None)
        failed[str(item.get("ReferencedSOPInstanceUID", ""))] = f"0x{int(why):04X}" if why is not None else "failed"
    out: list[StoreResult] = []
    for path, sop in items:
        if sop in failed:
            out.append(StoreResult(path, sop, False, f"failed {failed[sop]}", _failure_words(failed[sop])))
        elif sop in done:
            out.append(StoreResult(path, sop, True, "stored", done[sop]))
        else:
            out.append(StoreResult(path, sop, False, "not stored", "not in the node's STOW-RS answer"))
    return out


def _failure_words(code: str) -> str:
    """PS3.18's STOW-RS failure reasons, in words."""
    words = {"0xA700": "out of resources", "0xA900": "data set does not match SOP class",
             "0xC000": "cannot understand", "0xC122": "referenced transfer syntax not supported",
             "0x0110": "processing failure", "0x0122": "SOP class not supported",
             "0x0124": "not authorized", "0xA770": "out of resources"}
    return words.get(code, "")


class DicomwebClient:
    """A DICOMweb node. Nothing connects (and no secret is read) until the first request."""

    def __init__(self, node: PacsNode):
        if not node.dicomweb:
            raise UsageError(f"PACS node {node.name!r} is not a DICOMweb node ({node.describe()})",
                             hint="give the node a dicomweb: URL, or use the DIMSE client for it")
        self.node = node
        self.url = node.dicomweb.rstrip("/")
        self.where = f"PACS node {node.name!r} ({_safe_url(self.url)})"
        self._api: Any = None
        self._session: requests.Session | None = None
        # study -> series -> its instances, from study_headers: lets retrieve ask for a whole series in one request
        self._members: dict[str, dict[str, set[str]]] = {}

    # -- plumbing ------------------------------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._api is None:
            import requests
            from dicomweb_client.api import DICOMwebClient

            timeout = self.node.timeout

            class _Session(requests.Session):
                """Every request gets the node's timeout (connect and each read), whatever the caller passed."""

                def request(self, *args: Any, **kwargs: Any) -> Any:
                    kwargs["timeout"] = timeout
                    return super().request(*args, **kwargs)

            session = _Session()
            session.verify = self.node.verify
            auth = self.node.auth
            if auth is not None:
                secrets = auth.secrets(self.node.name)  # UsageError naming a missing variable, never a value
                if auth.kind == "basic":
                    session.auth = (secrets["user"], secrets["password"])
                else:
                    session.headers["Authorization"] = f"Bearer {secrets['token']}"
            api = DICOMwebClient(self.url, session=session, timeout=timeout)
            # No retries: dicomweb-client's retry also repeats on *any* exception (a refused connection, a stalled
            # node: three timeouts instead of one) and ends a run of 503s with its own RetryError. A failed request
            # is reported at once; the batch and the cache make a second run cheap.
            api.set_http_retry_params(retry=False)
            self._session, self._api = session, api
        return self._api

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Map what requests / dicomweb-client raise while ``doing`` to cmrdx errors naming the node."""
        import requests

        t = self.node.timeout
        try:
            yield
        except CmrdxError:
            raise
        except requests.exceptions.SSLError as exc:
            raise SendError(
                f"{self.where}: TLS failed while {doing} ({_reason(exc)})",
                hint="check the URL's scheme (https needs a TLS server; a plain-HTTP service needs http://) and the "
                     "node's verify: setting (a CA bundle path for a private CA)",
            ) from None
        except requests.exceptions.Timeout as exc:
            stage = "connecting" if isinstance(exc, requests.exceptions.ConnectTimeout) else "waiting for an answer"
            raise SendError(f"{self.where}: no answer within {t:g} s while {doing} ({stage})",
                            hint="check the URL and port, that the service runs, and no firewall is in between; "
                                 "raise the node's timeout: for a slow node") from None
        except requests.exceptions.ConnectionError as exc:
            text = _reason(exc)
            if re.search(r"Name or service not known|NameResolution|nodename nor servname|getaddrinfo|"
                         r"Temporary failure in name resolution", text):
                what, fix = "the host name does not resolve", "check the host name in the node's dicomweb: URL"
            elif "refused" in text.lower():
                what, fix = "connection refused (nothing listens there)", \
                    "check the URL's host and port, and that the DICOMweb service runs"
            else:
                what, fix = f"cannot connect ({text})", "check the URL, and that no firewall or proxy is in between"
            raise SendError(f"{self.where}: {what} while {doing}", hint=fix) from None
        except requests.exceptions.HTTPError as exc:
            raise self._http_error(exc.response, doing) from None
        except requests.exceptions.InvalidURL as exc:
            raise UsageError(f"{self.where}: not a usable URL ({exc})", hint="fix the node's dicomweb: URL") from None
        except requests.exceptions.RequestException as exc:  # a connection broken mid-answer, too many redirects
            raise SendError(f"{self.where}: the exchange failed while {doing} ({exc.__class__.__name__})",
                            hint="check the URL and the network; the node's log names the cause") from None
        except (ValueError, KeyError) as exc:  # not JSON, not multipart, not DICOM: not a DICOMweb answer
            raise PacsError(f"{self.where}: the answer while {doing} is not DICOMweb ({exc.__class__.__name__}: "
                            f"{str(exc)[:200]})",
                            hint="check that the URL is the DICOMweb base URL (e.g. http://host:8042/dicom-web)") from None

    def _http_error(self, response: requests.Response | None, doing: str) -> CmrdxError:
        code = response.status_code if response is not None else 0
        reason = (response.reason or "") if response is not None else ""
        if code in (401, 403):
            auth = self.node.auth
            if auth is None:
                fix = "the node asks for authentication: add auth: {kind: basic, user_env, password_env} (or bearer)"
            elif auth.kind == "basic":
                fix = f"check the user and password in ${auth.user_env} and ${auth.password_env}"
            else:
                fix = f"check the token in ${auth.token_env} (it may have expired)"
            return AssociationRejectedError(f"{self.where} refused the request while {doing}: HTTP {code} {reason}",
                                            hint=fix + ("; the user may lack the right to this study" if code == 403 else ""))
        return PacsError(f"{self.where} answered HTTP {code} {reason} while {doing}",
                         hint="check the URL (the DICOMweb base URL, e.g. http://host:8042/dicom-web); "
                              "the node's log names the cause")

    # -- the protocol --------------------------------------------------------------------------------------------
    def echo(self) -> str:
        """One QIDO-RS request (``limit=1``): the service answers with DICOM JSON."""
        with self._errors("searching studies (echo)"):
            self._client().search_for_studies(limit=1)
        return f"DICOMweb service at {_safe_url(self.url)} answered QIDO-RS"

    def find_studies(self, query: Mapping[str, str]) -> list[StudyHit]:
        """QIDO-RS study search, paged (``offset``/``limit``, see ``PAGE``) until the node has nothing more."""
        filters = {str(k): str(v) for k, v in query.items()}
        hits: list[StudyHit] = []
        seen: set[str] = set()
        offset = 0
        with self._errors("searching studies"):
            api = self._client()
            while True:
                page = api.search_for_studies(limit=offset + PAGE, offset=offset, fields=list(_STUDY_FIELDS),
                                              search_filters=dict(filters))
                new = 0
                for d in page:
                    uid = str((_json_value(d, "0020000D") or [""])[0])
                    if not uid or uid in seen:
                        continue
                    seen.add(uid)
                    new += 1
                    hits.append(StudyHit(
                        study_uid=uid, study_date=str((_json_value(d, "00080020") or [""])[0]),
                        modalities=tuple(str(m) for m in _json_value(d, "00080061")),
                        n_series=_int_or_none(_json_value(d, "00201206")),
                        n_instances=_int_or_none(_json_value(d, "00201208"))))
                if not page or not new:  # the end; or a node that ignores offset (same page again)
                    break
                offset += len(page)
        return hits

    def study_headers(self, study_uid: str, dest: Destination) -> tuple[list[Dataset], list[Path]]:
        """WADO-RS study metadata: one data set per instance, never bulk data (every instance's header fits a
        JSON answer, Enhanced multi-frame objects included, so nothing is retrieved whole)."""
        import requests
        from pydicom.dataset import Dataset

        with self._errors(f"reading the metadata of study {study_uid}"):
            try:
                meta = self._client().retrieve_study_metadata(study_uid)
            except requests.exceptions.HTTPError as exc:
                if exc.response is None or exc.response.status_code != 404:
                    raise
                meta = []
        if not meta:
            raise PacsError(f"{self.where} does not hold study {study_uid} (no metadata for it)",
                            hint="check the StudyInstanceUID (e.g. `cmrdx pacs find`), or the node")
        out: list[Dataset] = []
        members: dict[str, set[str]] = {}
        for k, d in enumerate(meta):
            try:
                ds = Dataset.from_json(_strip_bulk(d), bulk_data_uri_handler=_no_bulk)
                out.append(ds)
                members.setdefault(str(ds.get("SeriesInstanceUID", "")), set()).add(str(ds.get("SOPInstanceUID", "")))
            except Exception as exc:  # a value pydicom cannot read: name the instance, not a traceback
                sop = (_json_value(d, "00080018") or [f"#{k + 1}"])[0] if isinstance(d, dict) else f"#{k + 1}"
                raise PacsError(f"{self.where}: the metadata of instance {sop} of study {study_uid} is not valid "
                                f"DICOM JSON ({exc.__class__.__name__}: {str(exc)[:200]})",
                                hint="the node's metadata for this instance is broken; report it to its admins") from None
        self._members[study_uid] = members
        return out, []

    def retrieve(self, study_uid: str, instances: Sequence[tuple[str, str]], dest: Destination) -> TransferStats:
        """WADO-RS in the stored transfer syntax, each file written atomically: one request for a series whose every
        instance is asked (known from this client's ``study_headers``), else one request per instance."""
        stats = TransferStats()
        t0 = time.perf_counter()
        by_series: dict[str, list[str]] = {}
        for series_uid, sop_uid in instances:
            if sop_uid not in by_series.setdefault(series_uid, []):
                by_series[series_uid].append(sop_uid)
        known = self._members.get(study_uid, {})
        missing: list[str] = []
        for series_uid, sops in by_series.items():
            if len(sops) > 1 and set(sops) == known.get(series_uid):
                missing += self._retrieve_series(study_uid, series_uid, sops, dest, stats)
            else:
                missing += [sop for sop in sops if not self._retrieve_one(study_uid, series_uid, sop, dest, stats)]
        stats.seconds = time.perf_counter() - t0
        log.debug("%s: %d instance(s) of study %s, %d bytes in %d request(s), %.3f s", self.where, stats.instances,
                  study_uid, stats.bytes, stats.requests, stats.seconds)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise PacsError(f"{self.where} does not hold {len(missing)} of the {len(instances)} instance(s) asked of "
                            f"study {study_uid}: {shown}",
                            hint="the study changed on the node since its headers were read: run again")
        return stats

    def _retrieve_one(self, study_uid: str, series_uid: str, sop_uid: str, dest: Destination,
                      stats: TransferStats) -> bool:
        """One instance; False when the node does not hold it (HTTP 404)."""
        import requests

        with self._errors(f"retrieving instance {sop_uid} of study {study_uid}"):
            stats.requests += 1
            try:
                ds = self._client().retrieve_instance(study_uid, series_uid, sop_uid,
                                                      media_types=(("application/dicom", "*"),))
            except requests.exceptions.HTTPError as exc:
                if exc.response is not None and exc.response.status_code == 404:
                    return False
                raise
        got = str(ds.get("SOPInstanceUID", ""))
        if got != sop_uid:
            raise PacsError(f"{self.where} answered instance {got or '(no SOPInstanceUID)'} when asked for "
                            f"{sop_uid} of study {study_uid}",
                            hint="the node's index is inconsistent; report it to its admins")
        stats.bytes += _write_dataset(ds, dest(sop_uid))
        stats.instances += 1
        return True

    def _retrieve_series(self, study_uid: str, series_uid: str, sops: list[str], dest: Destination,
                         stats: TransferStats) -> list[str]:
        """A whole series in one request, streamed (one instance in memory at a time); returns the asked
        instances the answer lacked. Instances added to the series since its headers were read are not written."""
        import requests

        wanted = set(sops)
        doing = f"retrieving series {series_uid} of study {study_uid}"
        stats.requests += 1
        with self._errors(doing):
            stream = iter(self._client().iter_series(study_uid, series_uid, media_types=(("application/dicom", "*"),)))
        while True:
            with self._errors(doing):  # the answer is read as it is written: errors of the exchange only
                try:
                    ds = next(stream, None)
                except requests.exceptions.HTTPError as exc:
                    if exc.response is None or exc.response.status_code != 404:
                        raise
                    ds = None
            if ds is None:
                break
            sop = str(ds.get("SOPInstanceUID", ""))
            if sop in wanted:
                wanted.discard(sop)
                stats.bytes += _write_dataset(ds, dest(sop))
                stats.instances += 1
        return [sop for sop in sops if sop in wanted]

    def store(self, paths: Sequence[Path]) -> list[StoreResult]:
        """STOW-RS, ``STOW_BATCH`` files per request; one result per file from the node's answer."""
        import requests
        from pydicom.dataset import Dataset

        from cmrdx.outputs.send import read_for_send

        items = read_for_send(list(paths))  # NoDicomError / InputNotFoundError naming a bad file, before any request
        results: list[StoreResult] = []
        for start in range(0, len(items), STOW_BATCH):
            batch = items[start:start + STOW_BATCH]
            keys = [(path, str(ds.SOPInstanceUID)) for path, ds in batch]
            with self._errors("storing instances (STOW-RS)"):
                try:
                    answer = self._client().store_instances([ds for _, ds in batch])
                except requests.exceptions.HTTPError as exc:
                    # 409 (every instance failed) and 400 carry the same per-instance answer as a success.
                    resp = exc.response
                    ctype = resp.headers.get("Content-Type", "") if resp is not None else ""
                    if resp is None or resp.status_code not in (400, 409) or "json" not in ctype or not resp.content:
                        raise
                    answer = Dataset.from_json(resp.json())
            results.extend(parse_stow_answer(answer, keys))
        return results

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = self._api = None


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error (urllib3's ``reason``, the wrapped exception), in one short line."""
    inner = exc
    for _ in range(8):
        nxt = getattr(inner, "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = inner.args[0] if inner.args and isinstance(inner.args[0], BaseException) else None
        if nxt is None or nxt is inner:
            break
        inner = nxt
    text = str(inner) or inner.__class__.__name__
    text = re.sub(r"HTTPS?ConnectionPool\([^)]*\):\s*", "", text)
    text = re.sub(r"<urllib3[^>]*>:\s*", "", text)
    return text[:300]


def _write_dataset(ds: Dataset, path: Path) -> int:
    """Write a data set read from a Part 10 file back as that file (file meta, transfer syntax and raw values as
    read); returns the bytes written. A write failure is an OutputError naming the path."""
    from pydicom.filewriter import dcmwrite

    def writer(fp: Any) -> None:
        dcmwrite(fp, ds, enforce_file_format=False)

    try:
        atomic_write(path, writer)
        return path.stat().st_size
    except OSError as exc:
        raise OutputError.from_os_error(exc, path, doing="cannot write a retrieved instance") from None

