"""PACS nodes: ``$CMRDX_HOME/pacs.yaml`` (or a file given with ``--pacs-config`` / ``$CMRDX_PACS_CONFIG``).

The file's shape (other tools may write it)::

    nodes:
      - name: orthanc-web
        dicomweb: http://127.0.0.1:8042/dicom-web
        auth: {kind: basic, user_env: PACS_USER, password_env: PACS_PASSWORD}   # optional
        # or auth: {kind: bearer, token_env: PACS_TOKEN}
        # verify: /path/to/ca.pem   (TLS: a CA bundle, or false to accept any certificate; default: system CAs)
      - name: orthanc-dimse
        aet: ORTHANC
        host: 127.0.0.1
        port: 4242
        calling_aet: CMRDX
        retrieve: get            # get (C-GET, default) or move (C-MOVE to cmrdx's own storage SCP)
        move_port: 11113         # the port cmrdx listens on during a C-MOVE (the PACS must know calling_aet there)
        timeout: 30              # seconds, for connecting and for each answer (both kinds of node)

Secrets never live in the file: ``auth`` names the environment variables that hold them, and they are read only
when a connection is made. Nothing here prints them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmrdx import config as _config
from cmrdx.errors import UsageError

CONFIG_ENV = "CMRDX_PACS_CONFIG"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_TIMEOUT = 30.0


def default_config_path() -> Path:
    env = os.environ.get(CONFIG_ENV)
    return Path(env).expanduser() if env else _config.home() / "pacs.yaml"


def check_ae_title(title: str, what: str, where: str) -> str:
    """DICOM's AE value representation: 1-16 printable ASCII characters, no backslash, not only spaces."""
    if not isinstance(title, str) or not 1 <= len(title.strip()) <= 16 or "\\" in title \
            or not (title.isascii() and title.isprintable()):
        raise UsageError(f"{where}: {what} {title!r} is not an AE title (1 to 16 printable ASCII characters, "
                         "no backslash)", hint="use the AE title configured on the PACS")
    return title.strip()


@dataclass(frozen=True)
class Auth:
    """HTTP authentication for a DICOMweb node: the *names* of the environment variables holding the secrets."""

    kind: str  # "basic" or "bearer"
    user_env: str | None = None
    password_env: str | None = None
    token_env: str | None = None

    def secrets(self, node: str) -> dict[str, str]:
        """The secrets, read from the environment now; a missing variable is an error naming it (not its value)."""
        names = {"basic": ("user_env", "password_env"), "bearer": ("token_env",)}[self.kind]
        out: dict[str, str] = {}
        for attr in names:
            var = getattr(self, attr)
            val = os.environ.get(var) if var else None
            if not val:
                raise UsageError(f"PACS node {node!r}: environment variable {var} is not set",
                                 hint=f"export {var}=... (the node's {attr[:-4]}) before running cmrdx")
            out[attr[:-4]] = val
        return out

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("kind", self.kind), ("user_env", self.user_env),
                                  ("password_env", self.password_env), ("token_env", self.token_env)) if v}


@dataclass(frozen=True)
class PacsNode:
    """One configured node: a DICOMweb service (``dicomweb`` set) or a DIMSE peer (``aet``, ``host``, ``port``)."""

    name: str
    dicomweb: str | None = None
    auth: Auth | None = None
    verify: str | bool = True
    aet: str | None = None
    host: str | None = None
    port: int | None = None
    calling_aet: str = "CMRDX"
    retrieve: str = "get"
    move_port: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def kind(self) -> str:
        return "dicomweb" if self.dicomweb else "dimse"

    def describe(self) -> str:
        """Where the node is, for messages and ``cmrdx pacs list`` (never a secret)."""
        if self.dicomweb:
            auth = f", {self.auth.kind} auth from ${' and $'.join(v for v in (self.auth.user_env, self.auth.password_env, self.auth.token_env) if v)}" if self.auth else ""
            return f"DICOMweb {self.dicomweb}{auth}"
        return f"DIMSE {self.aet}@{self.host}:{self.port} (calling {self.calling_aet}, retrieve by C-{self.retrieve.upper()})"

    def to_dict(self) -> dict[str, Any]:
        if self.dicomweb:
            d: dict[str, Any] = {"name": self.name, "kind": "dicomweb", "dicomweb": self.dicomweb}
            if self.auth:
                d["auth"] = self.auth.to_dict()
            return d
        return {"name": self.name, "kind": "dimse", "aet": self.aet, "host": self.host, "port": self.port,
                "calling_aet": self.calling_aet, "retrieve": self.retrieve, "move_port": self.move_port}


def _node(raw: Any, where: str, k: int) -> PacsNode:
    def bad(what: str, fix: str) -> UsageError:
        return UsageError(f"{where}: node {k + 1}: {what}", hint=fix)

    if not isinstance(raw, dict):
        raise bad("is not a mapping", "each node is a mapping with a name and either dicomweb or aet/host/port")
    known = {"name", "dicomweb", "auth", "verify", "aet", "host", "port", "calling_aet", "retrieve", "move_port", "timeout"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise bad(f"unknown key(s) {', '.join(map(str, unknown))}", f"the keys are {', '.join(sorted(known))}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise bad(f"name {name!r} is not a node name", "use letters, digits, '.', '_' or '-' (up to 64)")
    timeout = raw.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
        raise bad(f"timeout {timeout!r}", "give seconds between 0 and 3600")
    if raw.get("dicomweb") is not None:
        url = raw["dicomweb"]
        if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
            raise bad(f"dicomweb {url!r} is not an http(s) URL", "give the service's base URL, e.g. http://host:8042/dicom-web")
        if any(raw.get(x) is not None for x in ("aet", "host", "port")):
            raise bad("has both dicomweb and aet/host/port", "a node is either DICOMweb or DIMSE: make two nodes")
        auth = None
        if raw.get("auth") is not None:
            a = raw["auth"]
            if not isinstance(a, dict) or a.get("kind") not in ("basic", "bearer"):
                raise bad("auth must be {kind: basic, user_env, password_env} or {kind: bearer, token_env}",
                          "name the environment variables that hold the secrets (never the secrets)")
            need = ("user_env", "password_env") if a["kind"] == "basic" else ("token_env",)
            extra = sorted(set(a) - {"kind", *need})
            if extra:
                raise bad(f"auth has unknown key(s) {', '.join(map(str, extra))}"
                          + (" (secrets are never written in this file)" if {"password", "token", "user"} & set(a) else ""),
                          f"auth {a['kind']} takes {', '.join(need)}: names of environment variables")
            for key in need:
                if not isinstance(a.get(key), str) or not _ENV.match(a[key]):
                    raise bad(f"auth {key} {a.get(key)!r} is not an environment variable name", "e.g. PACS_PASSWORD")
            auth = Auth(a["kind"], a.get("user_env"), a.get("password_env"), a.get("token_env"))
        verify = raw.get("verify", True)
        if not isinstance(verify, (bool, str)):
            raise bad(f"verify {verify!r}", "true, false or the path of a CA bundle")
        return PacsNode(name=name, dicomweb=url.rstrip("/"), auth=auth, verify=verify, timeout=float(timeout))
    missing = [x for x in ("aet", "host", "port") if raw.get(x) is None]
    if missing:
        raise bad(f"has neither dicomweb nor {', '.join(missing)}", "give dicomweb: URL, or aet, host and port")
    port = raw["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise bad(f"port {port!r}", "a TCP port between 1 and 65535")
    move_port = raw.get("move_port")
    if move_port is not None and (isinstance(move_port, bool) or not isinstance(move_port, int) or not 1 <= move_port <= 65535):
        raise bad(f"move_port {move_port!r}", "a TCP port between 1 and 65535")
    retrieve = raw.get("retrieve", "get")
    if retrieve not in ("get", "move"):
        raise bad(f"retrieve {retrieve!r}", "get (C-GET) or move (C-MOVE)")
    if retrieve == "move" and move_port is None:
        raise bad("retrieve: move needs move_port", "the port cmrdx listens on for the C-MOVE (known to the PACS)")
    if not isinstance(raw["host"], str) or not raw["host"].strip():
        raise bad(f"host {raw['host']!r}", "a host name or IP address")
    return PacsNode(name=name, aet=check_ae_title(raw["aet"], "aet", f"{where}: node {name}"), host=raw["host"].strip(),
                    port=port, calling_aet=check_ae_title(raw.get("calling_aet", "CMRDX"), "calling_aet", f"{where}: node {name}"),
                    retrieve=retrieve, move_port=move_port, timeout=float(timeout))


def load_nodes(path: str | os.PathLike[str] | None = None) -> dict[str, PacsNode]:
    """Every node of the configuration file (default ``default_config_path()``), by name.

    Raises UsageError naming the file (and node) with the fix: a missing file, YAML errors, a bad node."""
    import yaml

    p = Path(path).expanduser() if path is not None else default_config_path()
    if not p.is_file():
        raise UsageError(f"{p}: no PACS configuration file",
                         hint="write one (see `cmrdx pacs list --help` for its shape) or give --pacs-config FILE")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{p}{at}: not a readable YAML file ({exc.__class__.__name__})",
                         hint="fix the file; its shape is `nodes: [{name, dicomweb | aet/host/port, ...}]`") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise UsageError(f"{p}: no `nodes:` list", hint="the file is `nodes: [{name: ..., dicomweb: URL}, ...]`")
    nodes: dict[str, PacsNode] = {}
    for k, raw in enumerate(doc["nodes"]):
        n = _node(raw, str(p), k)
        if n.name in nodes:
            raise UsageError(f"{p}: node name {n.name!r} used twice", hint="give each node its own name")
        nodes[n.name] = n
    return nodes


def get_node(name: str, path: str | os.PathLike[str] | None = None) -> PacsNode:
    nodes = load_nodes(path)
    if name not in nodes:
        listing = ", ".join(nodes) or "none"
        raise UsageError(f"no PACS node {name!r} in {path or default_config_path()} (nodes: {listing})",
                         hint="use one of the names listed, or add the node to the file")
    return nodes[name]


ADDRESS_PREFIX = "pacs://"


@dataclass(frozen=True)
class PacsAddress:
    """``pacs://NODE/STUDY_UID``: a study on a configured node."""

    node: str
    study_uid: str

    def __str__(self) -> str:
        return f"{ADDRESS_PREFIX}{self.node}/{self.study_uid}"


_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_address(text: str | os.PathLike[str]) -> bool:
    return isinstance(text, str) and text.startswith(ADDRESS_PREFIX)


def parse_address(text: str) -> PacsAddress:
    rest = text[len(ADDRESS_PREFIX):] if text.startswith(ADDRESS_PREFIX) else text
    node, _, uid = rest.partition("/")
    uid = uid.strip("/")
    if not _NAME.match(node) or not uid:
        raise UsageError(f"{text!r} is not a PACS address", hint="write pacs://NODE/STUDY_INSTANCE_UID")
    if len(uid) > 64 or not _UID.match(uid):
        raise UsageError(f"{text!r}: {uid!r} is not a DICOM UID (digits and dots, up to 64 characters)",
                         hint="give the study's StudyInstanceUID")
    return PacsAddress(node, uid)


def parse_query(items: Sequence[str]) -> dict[str, str]:
    """``["StudyDate=20260101-20260131", "ModalitiesInStudy=MR"]`` -> {keyword: value}. A keyword that is not a
    DICOM keyword, or an item without ``=``, is a UsageError naming it."""
    from pydicom.datadict import tag_for_keyword

    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--query {item!r}: not KEYWORD=VALUE", hint="e.g. --query StudyDate=20260101-20260131")
        if tag_for_keyword(key) is None:
            raise UsageError(f"--query {item!r}: {key!r} is not a DICOM keyword",
                             hint="use DICOM keywords such as StudyDate, ModalitiesInStudy, AccessionNumber, StudyInstanceUID")
        if key in out:
            raise UsageError(f"--query {key} given twice", hint="give each keyword once (ranges: 20260101-20260131)")
        out[key] = value.strip()
    return out
