"""A Hugging Face Hub on 127.0.0.1, for tests of `cmrdx models import-cmrclip --from-hub` without a network.

It answers what huggingface_hub's ``hf_hub_download`` asks (huggingface_hub 2.x, ``file_download.py``):

* ``HEAD`` and ``GET {endpoint}/{repo_id}/resolve/{revision}/{filename}`` (revision: ``main`` or the repository's
  commit). A file stored in git: 200 with ``X-Repo-Commit``, ``ETag`` (its git blob sha1) and ``Content-Length``.
  A file stored with git LFS: 302 to a second server (a CDN: another origin, so the client neither follows the
  redirect of its HEAD nor sends it the token) with ``X-Repo-Commit``, ``X-Linked-Etag`` (the file's sha256) and
  ``X-Linked-Size``; the client then GETs the CDN's URL;
* errors as the hub gives them: an unknown repository (or a private one without its token) 401 with
  ``X-Error-Code: RepoNotFound``; an unknown revision 404 ``RevisionNotFound``; an unknown file 404
  ``EntryNotFound`` (with ``X-Repo-Commit``).

Every request is logged (``requests``: (server, method, path, authorization)), so a test can see what was asked
(for example, that a second import fetched nothing from the CDN).

    with HubServer() as hub:
        hub.add_repo("org/weights", {"config.json": b"{}", "pytorch_model.bin": data}, lfs={"pytorch_model.bin"})
        os.environ["HF_ENDPOINT"] = hub.endpoint
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes]
    lfs: set[str]
    commit: str
    token: str | None = None  # private: only "Authorization: Bearer <token>" opens it
    served: dict[str, bytes] = field(default_factory=dict)  # what the CDN sends instead (a corrupted download)


@dataclass
class Request:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    authorization: str | None


class HubServer:
    """The hub and its CDN, each a threading HTTP server on 127.0.0.1 (port chosen by the system)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._hub = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("hub"))
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("cdn"))
        for s in (self._hub, self._cdn):
            s.daemon_threads = True
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self._hub, self._cdn)]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, lfs: set[str] | frozenset[str] = frozenset(),
                 token: str | None = None, commit: str | None = None) -> Repo:
        commit = commit or hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values())),
                                        usedforsecurity=False).hexdigest()
        repo = Repo(dict(files), set(lfs), commit, token)
        self.repos[repo_id] = repo
        return repo

    def add_folder(self, repo_id: str, folder: Path, names: list[str], **kw: Any) -> Repo:
        """A repository holding ``names`` from ``folder`` (``*.bin`` stored with LFS, as on the hub)."""
        files = {n: (folder / n).read_bytes() for n in names}
        return self.add_repo(repo_id, files, lfs={n for n in names if n.endswith(".bin")}, **kw)

    def count(self, method: str, filename: str, server: str | None = None) -> int:
        """Requests with ``method`` for a path ending in ``filename`` (or a CDN path for its blob)."""
        blobs = {hashlib.sha256(r.files[filename]).hexdigest() for r in self.repos.values() if filename in r.files}
        with self._lock:
            return sum(1 for q in self.requests if q.method == method and (server is None or q.server == server)
                       and (q.path.endswith("/" + filename) or q.path.rsplit("/", 1)[-1] in blobs))

    def start(self) -> HubServer:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        for s in (self._hub, self._cdn):
            s.shutdown()
            s.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the handlers
    def _handler(self, server: str) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                with hub._lock:
                    hub.requests.append(Request(server, self.command, self.path, self.headers.get("Authorization")))
                if server == "cdn":
                    self._cdn(body)
                else:
                    self._resolve(body)

            def _send(self, status: int, headers: dict[str, str], data: bytes = b"", body: bool = True) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body and data:
                    self.wfile.write(data)

            def _error(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
                data = f'{{"error": "{message}"}}'.encode()
                self._send(status, {"X-Error-Code": code, "X-Error-Message": message,
                                    "Content-Type": "application/json", **(extra or {})}, data)

            def _resolve(self, body: bool) -> None:
                path = urlsplit(self.path).path
                if "/resolve/" not in path:
                    self._error(404, "EntryNotFound", "not a resolve URL")
                    return
                repo_id, rest = path.lstrip("/").split("/resolve/", 1)
                revision, _, filename = rest.partition("/")
                repo_id, revision, filename = unquote(repo_id), unquote(revision), unquote(filename)
                repo = hub.repos.get(repo_id)
                auth = self.headers.get("Authorization")
                if repo is None or (repo.token is not None and auth != f"Bearer {repo.token}"):
                    self._error(401, "RepoNotFound", "Repository not found")
                    return
                if revision not in ("main", repo.commit):
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                    return
                if filename not in repo.files:
                    self._error(404, "EntryNotFound", f"{filename} does not exist on \"{revision}\"",
                                {"X-Repo-Commit": repo.commit})
                    return
                data = repo.files[filename]
                if filename in repo.lfs:
                    sha = hashlib.sha256(data).hexdigest()
                    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n"
                    self._send(302, {"Location": f"{hub.cdn}/blobs/{repo_id}/{sha}", "X-Repo-Commit": repo.commit,
                                     "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                                     "ETag": f'"{git_blob_sha1(pointer.encode())}"'}, body=body)
                    return
                self._send(200, {"X-Repo-Commit": repo.commit, "ETag": f'"{git_blob_sha1(data)}"',
                                 "Content-Type": "application/octet-stream"}, data, body)

            def _cdn(self, body: bool) -> None:  # /blobs/{repo_id}/{sha256}
                path = unquote(urlsplit(self.path).path)
                repo_id, _, sha = path.removeprefix("/blobs/").rpartition("/")
                repo = hub.repos.get(repo_id)
                for name, data in (repo.files.items() if repo else ()):
                    if repo and name in repo.lfs and hashlib.sha256(data).hexdigest() == sha:
                        self._send(200, {"Content-Type": "application/octet-stream"}, repo.served.get(name, data), body)
                        return
                self._send(404, {}, b"no such blob", body)

        return Handler
