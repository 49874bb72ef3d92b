"""Fetch the released CMR-CLIP files from the Hugging Face Hub (``cmrdx models import-cmrclip --from-hub``).

Three files: ``config.json`` and ``pytorch_model.bin`` from the weights repository (``makiyeah/CMRCLIP`` by
default), and ``vocab.txt`` from the repository of the BERT that the config's ``text_params.model`` names (the text
tower started from it: ``emilyalsentzer/Bio_ClinicalBERT`` for the released weights; the weights repository ships
no vocabulary).

They are downloaded with huggingface_hub into its cache, so a second import reads them from there, and the usual
settings apply: ``HF_ENDPOINT`` (a mirror), ``HF_HOME`` / ``HF_HUB_CACHE`` (the cache), ``HF_TOKEN`` (or the saved
login; a private or gated repository) and ``HF_HUB_OFFLINE`` (the cache only). They are read when a fetch starts,
not when huggingface_hub was imported.

How a fetch goes:

* the weights revision (``main`` unless given) is resolved to a commit with config.json, and pytorch_model.bin is
  fetched at that commit, so both always come from the same one;
* each file's size and hash are asked of the hub first (a HEAD request, which fails at once when the hub cannot be
  reached) and checked on the file on disk after the download: the sha256 for a file stored with git LFS (its
  ETag), the git blob sha1 for a plain git file. A file already in the cache is checked the same way;
* the hub cannot be reached, or answers 5xx: the files are taken from the cache when it holds them for that
  revision, else a ModelError names the endpoint and the ways out;
* a repository, revision or file that does not exist (or a private repository the token does not open) is a
  ModelError naming it.

The record of where the files came from (``HubFiles.provenance``: the endpoint, each repository with the revision
asked and the commit the hub resolved, each file's ETag and size) holds no token. Imports huggingface_hub only when
a fetch starts; never torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cmrdx.errors import ModelError

DEFAULT_REPO = "makiyeah/CMRCLIP"
WEIGHT_FILES = ("config.json", "pytorch_model.bin")
VOCAB_FILE = "vocab.txt"
DEFAULT_ENDPOINT = "https://huggingface.co"
HEAD_TIMEOUT_S = 10.0

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")

BY_HAND = ("or download config.json and pytorch_model.bin of the weights repository and the vocab.txt of the BERT its "
           "config names, and pass them with --checkpoint, --config and --vocab")


@dataclass
class HubSettings:
    """huggingface_hub's environment, read now: where to ask, where to cache, whether to ask at all."""

    endpoint: str
    cache_dir: Path
    offline: bool

    @property
    def shown_endpoint(self) -> str:
        """The endpoint without any user:password part (it goes into messages and the manifest)."""
        return public_url(self.endpoint)

    @classmethod
    def from_env(cls) -> HubSettings:
        from huggingface_hub import constants

        env = os.environ
        endpoint = (env.get("HF_ENDPOINT") or constants.ENDPOINT or DEFAULT_ENDPOINT).rstrip("/")
        if env.get("HF_HUB_CACHE"):
            cache = env["HF_HUB_CACHE"]
        elif env.get("HF_HOME"):
            cache = os.path.join(env["HF_HOME"], "hub")
        else:
            cache = constants.HF_HUB_CACHE
        named = [env[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if k in env]
        offline = any(_truthy(v) for v in named) if named else bool(constants.HF_HUB_OFFLINE)
        return cls(endpoint, Path(os.path.expandvars(os.path.expanduser(cache))), offline)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def public_url(url: str) -> str:
    """``url`` without user information, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass
class HubFile:
    """One fetched file: where it is in the cache, and what the hub said about it."""

    repo: str
    filename: str
    revision: str  # what was asked
    commit: str  # what the hub resolved it to
    path: Path
    etag: str | None
    size: int | None
    verified: str  # "sha256", "git-sha1" or "size" (what the file was checked against)
    cached: bool  # taken from the cache because the hub could not be asked (offline, unreachable)

    def record(self) -> dict[str, Any]:
        return {"etag": self.etag, "bytes": self.size, "verified": self.verified}


@dataclass
class HubFiles:
    """The three released files, fetched and verified, and the record of where they came from."""

    checkpoint: Path
    config: Path
    vocab: Path
    files: list[HubFile] = field(default_factory=list)
    endpoint: str = DEFAULT_ENDPOINT
    notes: list[str] = field(default_factory=list)

    @property
    def provenance(self) -> dict[str, Any]:
        """For the manifest's ``provenance.hub``: endpoint, and per repository the revision asked, the commit it
        resolved to and each file's ETag and size. No token."""
        repos: dict[str, dict[str, Any]] = {}
        for f in self.files:
            r = repos.setdefault(f.repo, {"repo": f.repo, "revision": f.revision, "commit": f.commit, "files": {}})
            r["files"][f.filename] = f.record()
        weights, text = self.files[0].repo, self.files[-1].repo
        return {"endpoint": self.endpoint, "weights": repos[weights], "text_model": repos[text]}


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file's bytes (the hub's ETag of a file stored in git, not LFS)."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, etag: str | None, size: int | None, where: str) -> str:
    """Check ``path`` against the size and ETag the hub gave (sha256 for LFS, git sha1 for git files); returns what
    it was checked against. ModelError naming the file and the cached copy to delete when it differs."""
    hint = f"delete the cached copy ({path}, and the blob it points to) and run the import again"
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise ModelError(f"{where}: {actual} bytes in the cache, the hub says {size}", hint=hint)
    tag = (etag or "").lower()
    if _SHA256.fullmatch(tag):
        got = sha256_of(path)
        if got != tag:
            raise ModelError(f"{where}: sha256 {got[:12]}... is not the {tag[:12]}... the hub gives for it", hint=hint)
        return "sha256"
    if _SHA1.fullmatch(tag):
        got = git_blob_sha1(path)
        if got != tag:
            raise ModelError(f"{where}: git sha1 {got[:12]}... is not the {tag[:12]}... the hub gives for it", hint=hint)
        return "git-sha1"
    return "size"


Stage = Callable[[str], None]


class _Fetcher:
    def __init__(self, settings: HubSettings, progress_bars: bool, stage: Stage):
        self.s = settings
        self.bars = progress_bars
        self.stage = stage
        self.notes: list[str] = []

    # ------------------------------------------------------------------ errors
    def _unreachable(self, repo: str, filename: str, why: str) -> ModelError:
        return ModelError(
            f"cannot reach the Hugging Face Hub at {self.s.shown_endpoint} for {repo}/{filename} ({why}), and the "
            f"cache {self.s.cache_dir} does not hold it",
            hint="check the network (or proxy), or set HF_ENDPOINT to a hub mirror you can reach; set HF_HUB_OFFLINE=1 "
                 f"to use files already in the cache (HF_HOME); {BY_HAND}")

    def _http_error(self, exc: Exception, repo: str, filename: str, revision: str, role: str) -> ModelError:
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        status = getattr(getattr(exc, "response", None), "status_code", None)
        at = f"{self.s.shown_endpoint}"
        if isinstance(exc, GatedRepoError):
            return ModelError(f"{at}: the repository {repo} is gated: access must be granted to your account "
                              f"(HTTP {status}) before {filename} can be fetched",
                              hint=f"ask for access on the repository's page, then set HF_TOKEN (or `hf auth login`); {BY_HAND}")
        if isinstance(exc, RepositoryNotFoundError):
            named = "check the name (--repo)" if role == "the weights" else "check text_params.model in config.json"
            return ModelError(f"{at}: no repository {repo} ({role}), or it is private and the token sent does not open "
                              f"it (HTTP {status})",
                              hint=f"{named}; for a private repository set HF_TOKEN (or `hf auth login`) to a token "
                                   f"with access; {BY_HAND}")
        if isinstance(exc, RevisionNotFoundError):
            return ModelError(f"{at}: the repository {repo} has no revision {revision!r} (HTTP {status})",
                              hint=f"give --revision a branch, tag or commit of {repo}")
        if isinstance(exc, RemoteEntryNotFoundError):
            what = ("is it a CMR-CLIP weights repository? it must hold config.json and pytorch_model.bin"
                    if role == "the weights" else f"{repo} is the BERT whose vocabulary the text tower uses")
            return ModelError(f"{at}: the repository {repo} (revision {revision}) has no file {filename} (HTTP {status})",
                              hint=f"{what}; {BY_HAND}")
        if isinstance(exc, HfHubHTTPError):
            return ModelError(f"{at}: HTTP {status} for {repo}/{filename} (revision {revision})",
                              hint="a 401 or 403: set HF_TOKEN (or `hf auth login`) to a token with access; otherwise "
                                   f"try again later; {BY_HAND}")
        return ModelError(f"{at}: {repo}/{filename}: {type(exc).__name__}: {exc}", hint=BY_HAND)

    # ------------------------------------------------------------------ one file
    def fetch(self, repo: str, filename: str, revision: str | None, role: str) -> HubFile:
        import httpx2
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import FileMetadataError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
        from huggingface_hub.utils import silent_tqdm

        rev = revision or "main"
        meta = None
        unreachable: str | None = None
        self.stage(f"asking {self.s.shown_endpoint} for {repo}/{filename} ({rev})")
        try:
            if not self.s.offline:
                try:  # one try, no retries: a hub that cannot be reached is known at once
                    meta = get_hf_file_metadata(hf_hub_url(repo, filename, revision=rev, endpoint=self.s.endpoint),
                                                timeout=HEAD_TIMEOUT_S, endpoint=self.s.endpoint)
                except httpx2.TransportError as exc:
                    unreachable = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                except HfHubHTTPError as exc:
                    status = getattr(exc.response, "status_code", None)
                    if not (isinstance(status, int) and (status >= 500 or status in (408, 429))):
                        raise
                    unreachable = f"HTTP {status}"
                if meta is not None and not meta.commit_hash:
                    raise ModelError(f"{self.s.shown_endpoint} answered for {repo}/{filename} without the commit a "
                                     "Hugging Face Hub names (no X-Repo-Commit header): it is not a hub",
                                     hint=f"point HF_ENDPOINT at the hub or a hub mirror; {BY_HAND}")
        except HFValidationError as exc:
            raise ModelError(f"{repo!r} ({role}) is not a hub repository name: {exc}", hint=BY_HAND) from None
        except (HfHubHTTPError, FileMetadataError) as exc:
            raise self._http_error(exc, repo, filename, rev, role) from None
        if meta is not None:
            self.stage(f"fetching {repo}/{filename} ({rev}: commit {meta.commit_hash})")
        try:
            local = hf_hub_download(  # at the revision asked, so that the cache records it (HF_HUB_OFFLINE)
                repo, filename, revision=rev, cache_dir=self.s.cache_dir,
                endpoint=self.s.endpoint, local_files_only=meta is None, etag_timeout=HEAD_TIMEOUT_S,
                tqdm_class=None if self.bars else silent_tqdm)
        except LocalEntryNotFoundError:
            if meta is not None or unreachable is not None:  # (asked, then the download's own request failed)
                raise self._unreachable(repo, filename, unreachable or "it stopped answering") from None
            raise ModelError(f"HF_HUB_OFFLINE is set and the cache {self.s.cache_dir} holds no {repo}/{filename} "
                             f"(revision {rev})",
                             hint=f"unset HF_HUB_OFFLINE to download it; {BY_HAND}") from None
        except httpx2.TransportError as exc:
            raise self._unreachable(repo, filename, f"{type(exc).__name__}: {exc}") from None
        except (HfHubHTTPError, FileMetadataError) as exc:
            raise self._http_error(exc, repo, filename, rev, role) from None
        except OSError as exc:  # a download cut short (size check), a full or read-only cache
            raise ModelError(f"fetching {repo}/{filename} into {self.s.cache_dir}: {exc}",
                             hint="check the free space and permissions of the cache (HF_HOME), then run again") from None
        path = Path(str(local))
        commit = path.parent.name  # the cache's snapshot folder: the commit the revision resolved to
        if meta is not None:
            if meta.commit_hash != commit:
                raise ModelError(f"{repo} changed while {filename} was fetched (revision {rev}: commit "
                                 f"{meta.commit_hash}, then {commit})", hint="run the import again")
            etag, size = meta.etag, meta.size
        else:  # from the cache: the blob's name is the ETag
            etag, size = Path(os.path.realpath(path)).name, None
            self.notes.append(f"{repo}/{filename}: from the cache (commit {commit}): "
                              + ("HF_HUB_OFFLINE is set" if self.s.offline else f"the hub could not be reached ({unreachable})"))
        verified = verify_file(path, etag, size, f"{repo}/{filename} (commit {commit})")
        return HubFile(repo, filename, rev, commit, path, etag, size, verified, cached=meta is None)


def fetch_released(repo: str = DEFAULT_REPO, revision: str | None = None, *, text_revision: str | None = None,
                   progress_bars: bool = False, progress: Stage | None = None) -> HubFiles:
    """Fetch (or find in the cache) and verify config.json and pytorch_model.bin of ``repo`` at ``revision`` and the
    vocab.txt of the BERT its config names (at ``text_revision``). ModelError names what failed and the fix.
    ``progress_bars``: huggingface_hub's download bars (on a terminal)."""
    try:
        settings = HubSettings.from_env()
    except ImportError as exc:
        raise ModelError(f"--from-hub needs huggingface_hub: {exc}", hint="pip install 'cmrdx[train]'") from None
    f = _Fetcher(settings, progress_bars, progress or (lambda _msg: None))
    cfg = f.fetch(repo, WEIGHT_FILES[0], revision, "the weights")
    weights = f.fetch(repo, WEIGHT_FILES[1], cfg.commit, "the weights")  # the same commit as its config
    weights.revision = cfg.revision
    try:
        config = json.loads(cfg.path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{repo}/config.json (commit {cfg.commit}) is not JSON: {exc}", hint=BY_HAND) from None
    text = (config.get("text_params") or {}).get("model") if isinstance(config, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise ModelError(f"{repo}/config.json (commit {cfg.commit}) names no text model (text_params.model), whose "
                         "vocab.txt the text tower needs", hint=BY_HAND)
    vocab = f.fetch(text.strip(), VOCAB_FILE, text_revision, f"the text model {repo}'s config.json names")
    return HubFiles(checkpoint=weights.path, config=cfg.path, vocab=vocab.path, files=[cfg, weights, vocab],
                    endpoint=settings.shown_endpoint, notes=f.notes)
