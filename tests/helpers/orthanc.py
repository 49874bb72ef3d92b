"""A real PACS for tests: Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``; ``.ci/run`` installs
them) started on free ports with a temporary storage folder, stopped by its PID.

Missing locally, the tests that need it skip with the reason; under CI (``CI`` set) they fail. Orthanc runs with
``--verbose`` so that what it served can be counted on its side: each instance file it reads for a WADO-RS or a
C-GET / C-MOVE shows in its log (``instance_reads``)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import pytest

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
AET = "TESTPACS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_orthanc() -> str:
    exe = shutil.which("Orthanc") or (os.path.exists("/usr/sbin/Orthanc") and "/usr/sbin/Orthanc") or None
    problem = None if exe else "Orthanc not installed (Debian package orthanc; .ci/run installs it)"
    if problem is None and not os.path.exists(DICOMWEB_PLUGIN):
        problem = "Orthanc's DICOMweb plugin not installed (Debian package orthanc-dicomweb; .ci/run installs it)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem + " -- CI must run the PACS tests")
        pytest.skip(problem)
    return str(exe)


class Orthanc:
    """One running Orthanc: ``url`` (REST), ``dicomweb`` (DICOMweb base URL), ``port`` (DICOM), ``aet``."""

    def __init__(self, workdir: Path, modalities: dict[str, tuple[str, str, int]] | None = None,
                 extra: dict | None = None):
        self.exe = require_orthanc()
        self.workdir = workdir
        self.http_port, self.port = free_port(), free_port()
        self.aet = AET
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.log_path = workdir / "orthanc.log"
        cfg = {
            "Name": AET, "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
            "HttpPort": self.http_port, "DicomPort": self.port, "DicomAet": AET,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True,
            "DicomCheckCalledAet": True,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
            "StableAge": 1,
        }
        cfg.update(extra or {})
        # With AuthenticationEnabled, the REST helpers below log in as the first registered user.
        users = cfg.get("RegisteredUsers") or {}
        self.credentials: tuple[str, str] | None = next(iter(users.items())) if cfg["AuthenticationEnabled"] and users else None
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(cfg, indent=1))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> Orthanc:
        with open(self.log_path, "ab") as log:
            # TCP_NODELAY=1: DCMTK (Orthanc's DICOM layer) then sends without Nagle's algorithm, as a PACS tuned
            # for throughput does; without it each instance Orthanc sends waits on a delayed ACK
            self.proc = subprocess.Popen([self.exe, "--verbose", str(self.config_path)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "TCP_NODELAY": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}): {self.log_path.read_text()[-2000:]}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # by PID, never by name
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(20)
        self.proc = None

    # REST helpers
    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"):
        headers = {"Content-Type": content_type}
        if self.credentials is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=60) as r:
            data = r.read()
        return json.loads(data) if data[:1] in (b"{", b"[") else data

    def get(self, path: str):
        return self.request("GET", path)

    def upload(self, files: Iterable[Path]) -> int:
        n = 0
        for f in files:
            self.request("POST", "/instances", Path(f).read_bytes(), "application/dicom")
            n += 1
        return n

    def upload_tree(self, folder: Path) -> int:
        return self.upload(sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in ("", ".dcm")))

    def find(self, level: str, query: dict) -> list[str]:
        """Orthanc ids of the resources at ``level`` ("Study", "Series", "Instance") matching ``query``."""
        return list(self.request("POST", "/tools/find", json.dumps({"Level": level, "Query": query}).encode()))

    def instance_file(self, orthanc_id: str) -> bytes:
        return bytes(self.request("GET", f"/instances/{orthanc_id}/file"))

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        self.request("PUT", f"/modalities/{name}", json.dumps({"AET": aet, "Host": host, "Port": port}).encode())

    def delete_study(self, study_uid: str) -> None:
        for oid in self.find("Study", {"StudyInstanceUID": study_uid}):
            self.request("DELETE", f"/studies/{oid}")

    # What Orthanc served, counted from its own log
    def log_mark(self) -> int:
        return self.log_path.stat().st_size

    def instance_reads(self, since: int = 0) -> int:
        """Instance files Orthanc sent by WADO-RS, C-GET or C-MOVE since the log offset ``since``: its verbose log
        names each (``/instances/ID/file`` for DICOMweb, metadata requests left out; a C-STORE sub-operation per
        instance for C-GET; "Sending resource" per instance for C-MOVE)."""
        with open(self.log_path, "rb") as fp:
            fp.seek(since)
            text = fp.read().decode("utf-8", "replace")
        # WADO-RS: the DICOMweb plugin reads each file it sends; it also reads every file of a study to build
        # full metadata (StudiesMetadata "Full"), which sends no file: reads made while serving a .../metadata
        # request are not counted (requests are sequential in the tests, so the last request line says which).
        web, for_metadata = 0, False
        for line in text.splitlines():
            request = re.search(r"\(http\) (?:GET|POST|PUT|DELETE) (\S+)", line)
            if request:
                for_metadata = request.group(1).split("?")[0].endswith("/metadata")
            elif not for_metadata and re.search(r"REST GET call on URI /instances/[0-9a-f-]+/file", line):
                web += 1
        get = len(re.findall(r"Store SCU RQ", text))  # C-GET: each C-STORE sub-operation on the association
        # C-MOVE: Orthanc names each instance it sends to the move destination (over its own association)
        move = len(re.findall(r"OrthancMoveRequestHandler\.cpp:\d+\] \(dicom\) Sending resource [0-9a-f-]+ to modality", text))
        return web + get + move


def write_pacs_config(pacs: Orthanc, path: Path, extra_nodes: list[dict] | None = None) -> Path:
    """A cmrdx pacs.yaml with nodes ``web`` (DICOMweb) and ``dimse`` (C-FIND / C-GET) on ``pacs``."""
    import yaml

    nodes = [{"name": "web", "dicomweb": pacs.dicomweb, "timeout": 30},
             {"name": "dimse", "aet": pacs.aet, "host": "127.0.0.1", "port": pacs.port, "calling_aet": "CMRDX",
              "timeout": 30}]
    path.write_text(yaml.safe_dump({"nodes": nodes + list(extra_nodes or [])}, sort_keys=False))
    return path
