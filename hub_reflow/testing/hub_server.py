"""A local, Hugging Face Hub-compatible HTTP server for tests and the offline demo.

The real ``huggingface_hub`` client talks to it unchanged: point the client at :attr:`HubServer.url`
(``HfApi(endpoint=server.url)``, ``hf_hub_download(..., endpoint=server.url)``, or ``HF_ENDPOINT`` set
before ``huggingface_hub`` is imported) and set ``HF_HUB_DISABLE_XET=1``: with ``hf_xet`` installed the client
would otherwise upload through the Xet protocol, which this server does not speak.

What it implements, following what ``huggingface_hub`` 1.x sends and expects:

* repos (models and datasets): create (409 + url when it exists), delete, settings (private), info (with
  ``cardData`` parsed from the README front matter), recursive/paged tree, paths-info, refs, commits list;
* branches and tags: create/delete, revisions resolved by branch, tag or (full or abbreviated) commit sha;
* uploads: ``validate-yaml``, ``preupload`` (the server decides LFS vs regular from ``.gitattributes`` and
  size, like the Hub), the LFS batch API with basic single-part PUT + verify, and all-or-nothing ndjson commits;
* downloads: ``HEAD``/``GET`` on ``/resolve/`` with the headers the client needs (``X-Repo-Commit``,
  ``ETag``/``X-Linked-Etag``, ``X-Linked-Size``), byte ranges, and the Hub's error codes;
* auth: bearer tokens, each ``read`` or ``write``; private repos are invisible without a valid token.

For tests it counts LFS PUTs and commits, and can be told to fail part-way (``fail_next_commit``,
``fail_lfs_upload_at``) so that callers can check the repo is left untouched.

Storage layout under the root folder (everything is plain files, so a test can inspect it)::

    blobs/<sha256[:2]>/<sha256>            file contents, content-addressed (regular and LFS files alike)
    repos/<models|datasets>/<ns>/<name>/
        repo.json                          id, type, private, createdAt (its presence means "repo exists")
        refs.json                          {"heads": {branch: sha}, "tags": {tag: {"commit": sha, ...}}}
        commits/<sha>.json                 parents, title, message, date, files: {path: {oid, sha256, size, lfs}}
        lfs/<sha256>                       marker: this LFS object was uploaded to this repo
    tmp/                                   in-flight uploads and atomic writes

Run by hand: ``python -m hub_reflow.testing.hub_server --root DIR --port 8000 --token hf_abc:write``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

__all__ = ["HubServer", "HubStorage", "TokenAuth", "HubError", "RepoKey", "main"]

# The Hub's own limit: larger files must go through LFS, and a regular file above it is rejected in a commit.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

# URL segment after /api/ -> repo type, and repo type -> prefix of the non-API URLs (resolve, .git).
API_KINDS = {"models": "model", "datasets": "dataset"}
URL_PREFIXES = {"model": "", "dataset": "datasets/"}

# Written in the initial commit of every new repo, like the Hub's default .gitattributes (a subset of it plus
# the media types LeRobot datasets carry). Preupload reads the patterns back from the repo's current
# .gitattributes, so a repo that changes the file changes what goes to LFS, as on the Hub.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
        "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
        "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
        "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
        # images, audio and video (the Hub's dataset defaults; LeRobot datasets store episodes as mp4)
        "*.png", "*.jpg", "*.jpeg", "*.webp", "*.gif", "*.mp3", "*.wav", "*.flac", "*.ogg", "*.mp4",
        "*.webm",
    )
)

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_SHORT_COMMIT_RE = re.compile(r"^[0-9a-f]{5,40}$")
# Hub naming rule for namespaces and repo names: alphanumerics, '-', '_', '.'; no leading/trailing '-' or '.'.
_NAME_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?$")
# Same as huggingface_hub.repocard.REGEX_YAML_BLOCK, so server and client agree on what the front matter is.
_YAML_BLOCK_RE = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")


# ----------------------------------------------------------------------------------------------------------
# Errors: the client classifies failures from X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound),
# and shows X-Error-Message / the JSON "error" field to the user.
# ----------------------------------------------------------------------------------------------------------


class HubError(Exception):
    """An HTTP error answered the way the Hub answers it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})
        self.body = dict(body or {})

    def to_response(self) -> JSONResponse:
        headers = dict(self.headers)
        if self.code:
            headers["X-Error-Code"] = self.code
        # Header values must be latin-1 and single-line.
        headers["X-Error-Message"] = "".join(c if 32 <= ord(c) < 127 else " " for c in self.message)
        return JSONResponse({"error": self.message, **self.body}, status_code=self.status, headers=headers)


def repo_not_found() -> HubError:
    # Same answer for "missing" and "private without a token": the Hub does not reveal private repos.
    return HubError(404, "Repository not found", code="RepoNotFound")


def revision_not_found(revision: str) -> HubError:
    return HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


def entry_not_found(path: str, commit: str, message: str | None = None) -> HubError:
    # X-Repo-Commit lets hf_hub_download cache "this file does not exist at that commit".
    return HubError(404, message or f"Entry not found: {path}", code="EntryNotFound", headers={"X-Repo-Commit": commit})


def bad_request(message: str) -> HubError:
    return HubError(400, message)


# ----------------------------------------------------------------------------------------------------------
# Small helpers shared by storage and routes
# ----------------------------------------------------------------------------------------------------------


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob, which is what the client computes for regular files (``sha.git_hash``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that stands for an LFS file in git; its git oid is the file's tree oid."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now_iso() -> str:
    # The client parses '%Y-%m-%dT%H:%M:%S.%fZ'.
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _atomic_write_json(path: Path, data: Any, tmp_dir: Path) -> None:
    """Write a JSON file so that readers see either the old or the new content, never a partial one."""
    tmp = tmp_dir / f"{uuid.uuid4().hex}.json"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def check_repo_path(path: Any) -> str:
    """Reject paths that could escape the repo or that git would refuse (the client checks too, the server must)."""
    if not isinstance(path, str) or not path or len(path) > 1000:
        raise bad_request(f"Invalid path: {path!r}")
    parts = path.split("/")
    if path.startswith("/") or "\\" in path or "\0" in path or any(p in ("", ".", "..") for p in parts):
        raise bad_request(f"Invalid path: {path!r}")
    if any(p in (".git", ".cache") for p in parts):
        raise bad_request(f"Invalid path (reserved folder): {path!r}")
    return path


def check_ref_name(name: Any, what: str) -> str:
    """Branch and tag names: git's rules, simplified, and never a 40-hex string (it would shadow commit ids)."""
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 200
        or name.startswith(("/", "-", "refs/"))
        or name.endswith(("/", ".", ".lock"))
        or ".." in name
        or "//" in name
        or "@{" in name
        or any(c in name for c in " ~^:?*[\\")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or _COMMIT_RE.fullmatch(name)
    ):
        raise bad_request(f"Invalid {what} name: {name!r}")
    return name


def parse_front_matter(content: str) -> dict[str, Any] | None:
    """YAML metadata of a README (``None`` when there is none). Raises ValueError when it is not valid YAML."""
    match = _YAML_BLOCK_RE.search(content)
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as err:
        raise ValueError(f"Invalid YAML in README.md metadata: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("README.md metadata must be a YAML mapping (key: value pairs)")
    # YAML dates and other non-JSON scalars become strings so the metadata can travel as JSON.
    return json.loads(json.dumps(data, default=str))


def lfs_patterns(gitattributes: str) -> list[str]:
    """The path patterns that a .gitattributes sends to LFS (lines carrying ``filter=lfs``)."""
    patterns = []
    for line in gitattributes.splitlines():
        fields = line.strip().split()
        if len(fields) >= 2 and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def matches_lfs(path: str, patterns: list[str]) -> bool:
    # gitattributes semantics, approximately: a pattern without '/' matches the file name at any depth,
    # one with '/' matches the whole path from the repo root (fnmatch's '*' also crosses '/', covering '**').
    name = path.rsplit("/", 1)[-1]
    for pattern in patterns:
        if "/" in pattern.strip("/"):
            if fnmatch.fnmatchcase(path, pattern.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pattern.strip("/")):
            return True
    return False


# ----------------------------------------------------------------------------------------------------------
# Storage
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepoKey:
    """Which repo: ``repo_type`` is "model" or "dataset", the id is ``namespace/name``."""

    repo_type: str
    namespace: str
    name: str

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def url_path(self) -> str:
        """The repo's path in non-API URLs: ``ns/name`` for models, ``datasets/ns/name`` for datasets."""
        return URL_PREFIXES[self.repo_type] + self.repo_id

    @classmethod
    def parse(cls, repo_type: str, repo_id: str) -> RepoKey:
        """From a client-side ``repo_id``; raises ValueError if it is not ``namespace/name``."""
        parts = repo_id.split("/")
        if len(parts) != 2:
            raise ValueError(f"Repo id must be 'namespace/name', got {repo_id!r}")
        key = cls(repo_type, parts[0], parts[1])
        if not key.is_valid():
            raise ValueError(f"Invalid repo id {repo_id!r}")
        return key

    def is_valid(self) -> bool:
        return (
            self.repo_type in URL_PREFIXES
            and all(_NAME_RE.fullmatch(p) and "--" not in p and ".." not in p for p in (self.namespace, self.name))
        )


@dataclass(frozen=True)
class AddFile:
    path: str
    content: bytes


@dataclass(frozen=True)
class AddLfsFile:
    path: str
    oid: str
    size: int | None  # absent for server-side copies


@dataclass(frozen=True)
class DeleteFile:
    path: str


@dataclass(frozen=True)
class DeleteFolder:
    path: str


CommitOp = AddFile | AddLfsFile | DeleteFile | DeleteFolder


class HubStorage:
    """Repos on disk (see the module docstring for the layout).

    Every mutation runs under one lock and ends with an atomic ``os.replace`` of the file that makes it visible
    (``refs.json`` for commits/branches/tags, ``repo.json`` for a new repo), so a failure part-way leaves the
    repo exactly as it was: blobs and commit files written before the failure are simply unreferenced.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.lock = threading.RLock()
        self.tmp_dir = self.root / "tmp"
        for sub in ("blobs", "repos", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._commit_cache: dict[tuple[RepoKey, str], dict[str, Any]] = {}

    # -- blobs ---------------------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def put_blob(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha256):
            tmp = self.new_tmp_path()
            tmp.write_bytes(data)
            self.adopt_blob(tmp, sha256)
        return sha256

    def adopt_blob(self, tmp: Path, sha256: str) -> None:
        """Move a fully written temp file into the blob store (the caller has checked its sha256)."""
        dest = self.blob_path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)

    def new_tmp_path(self) -> Path:
        return self.tmp_dir / uuid.uuid4().hex

    # -- repos ---------------------------------------------------------------------------------------------

    def repo_dir(self, key: RepoKey) -> Path:
        return self.root / "repos" / f"{key.repo_type}s" / key.namespace / key.name

    def exists(self, key: RepoKey) -> bool:
        return key.is_valid() and (self.repo_dir(key) / "repo.json").is_file()

    def meta(self, key: RepoKey) -> dict[str, Any]:
        if not self.exists(key):
            raise repo_not_found()
        return json.loads((self.repo_dir(key) / "repo.json").read_text())

    def create_repo(self, key: RepoKey, *, private: bool, author: str) -> bool:
        """Create a repo with an initial commit on ``main``; False if it already exists."""
        with self.lock:
            if self.exists(key):
                return False
            repo_dir = self.repo_dir(key)
            if repo_dir.exists():  # leftovers of an interrupted creation (no repo.json): start over
                shutil.rmtree(repo_dir)
            (repo_dir / "commits").mkdir(parents=True)
            (repo_dir / "lfs").mkdir()
            created = _now_iso()
            content = DEFAULT_GITATTRIBUTES.encode()
            files = {".gitattributes": self._file_entry(content, self.put_blob(content))}
            sha = self._write_commit(key, parents=[], title="initial commit", message="", author=author, files=files)
            _atomic_write_json(repo_dir / "refs.json", {"heads": {"main": sha}, "tags": {}}, self.tmp_dir)
            meta = {"id": key.repo_id, "type": key.repo_type, "private": bool(private), "createdAt": created}
            _atomic_write_json(repo_dir / "repo.json", meta, self.tmp_dir)  # last: the repo now exists
            return True

    def delete_repo(self, key: RepoKey) -> None:
        with self.lock:
            if not self.exists(key):
                raise repo_not_found()
            # Rename first so the repo disappears atomically, then remove the files.
            trash = self.tmp_dir / f"deleted-{uuid.uuid4().hex}"
            os.replace(self.repo_dir(key), trash)
            self._commit_cache = {k: v for k, v in self._commit_cache.items() if k[0] != key}
        shutil.rmtree(trash, ignore_errors=True)

    def set_private(self, key: RepoKey, private: bool) -> None:
        with self.lock:
            meta = self.meta(key)
            meta["private"] = bool(private)
            _atomic_write_json(self.repo_dir(key) / "repo.json", meta, self.tmp_dir)

    # -- refs ----------------------------------------------------------------------------------------------

    def refs(self, key: RepoKey) -> dict[str, Any]:
        self.meta(key)  # raises RepoNotFound
        return json.loads((self.repo_dir(key) / "refs.json").read_text())

    def _write_refs(self, key: RepoKey, refs: dict[str, Any]) -> None:
        _atomic_write_json(self.repo_dir(key) / "refs.json", refs, self.tmp_dir)

    def resolve(self, key: RepoKey, revision: str) -> str:
        """Branch, tag (also as ``refs/heads/x``, ``refs/tags/x``), or full/abbreviated commit sha -> commit sha."""
        refs = self.refs(key)
        name = revision
        if name.startswith("refs/heads/") and name[len("refs/heads/") :] in refs["heads"]:
            return refs["heads"][name[len("refs/heads/") :]]
        if name.startswith("refs/tags/") and name[len("refs/tags/") :] in refs["tags"]:
            return refs["tags"][name[len("refs/tags/") :]]["commit"]
        if name in refs["heads"]:
            return refs["heads"][name]
        if name in refs["tags"]:
            return refs["tags"][name]["commit"]
        if _SHORT_COMMIT_RE.fullmatch(name):
            if len(name) == 40:
                if (self.repo_dir(key) / "commits" / f"{name}.json").is_file():
                    return name
            else:
                found = [p.stem for p in (self.repo_dir(key) / "commits").glob(f"{name}*.json")]
                if len(found) == 1:
                    return found[0]
        raise revision_not_found(revision)

    def create_branch(self, key: RepoKey, branch: str, starting_point: str | None) -> str:
        with self.lock:
            refs = self.refs(key)
            if branch in refs["heads"]:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            sha = self.resolve(key, starting_point or "main")
            refs["heads"][branch] = sha
            self._write_refs(key, refs)
            return sha

    def delete_branch(self, key: RepoKey, branch: str) -> None:
        with self.lock:
            refs = self.refs(key)
            if branch == "main":
                raise bad_request("Cannot delete the default branch 'main'")
            if branch not in refs["heads"]:
                raise revision_not_found(branch)
            del refs["heads"][branch]
            self._write_refs(key, refs)

    def create_tag(self, key: RepoKey, tag: str, revision: str, message: str | None) -> str:
        with self.lock:
            refs = self.refs(key)
            sha = self.resolve(key, revision)
            if tag in refs["tags"]:
                raise HubError(409, f"Tag reference refs/tags/{tag} already exists")
            refs["tags"][tag] = {"commit": sha, "message": message or "", "date": _now_iso()}
            self._write_refs(key, refs)
            return sha

    def delete_tag(self, key: RepoKey, tag: str) -> None:
        with self.lock:
            refs = self.refs(key)
            if tag not in refs["tags"]:
                raise revision_not_found(tag)
            del refs["tags"][tag]
            self._write_refs(key, refs)

    # -- commits -------------------------------------------------------------------------------------------

    def commit(self, key: RepoKey, sha: str) -> dict[str, Any]:
        cached = self._commit_cache.get((key, sha))
        if cached is None:  # commits are immutable, so caching them is safe
            cached = json.loads((self.repo_dir(key) / "commits" / f"{sha}.json").read_text())
            self._commit_cache[(key, sha)] = cached
        return cached

    def files(self, key: RepoKey, sha: str) -> dict[str, dict[str, Any]]:
        """``path -> {oid (git oid of content or LFS pointer), sha256, size, lfs}`` at a commit."""
        return self.commit(key, sha)["files"]

    def history(self, key: RepoKey, sha: str) -> Iterator[dict[str, Any]]:
        """Commits from ``sha`` back to the initial one (first parents)."""
        current: str | None = sha
        while current:
            commit = self.commit(key, current)
            yield commit
            current = commit["parents"][0] if commit["parents"] else None

    def read_file(self, key: RepoKey, sha: str, path: str) -> bytes:
        entry = self.files(key, sha).get(path)
        if entry is None:
            raise entry_not_found(path, sha)
        return self.blob_path(entry["sha256"]).read_bytes()

    @staticmethod
    def _file_entry(content: bytes, sha256: str) -> dict[str, Any]:
        return {"oid": git_blob_oid(content), "sha256": sha256, "size": len(content), "lfs": False}

    def _write_commit(
        self, key: RepoKey, *, parents: list[str], title: str, message: str, author: str, files: dict[str, Any]
    ) -> str:
        commit = {"parents": parents, "title": title, "message": message, "authors": [author], "date": _now_iso(),
                  "files": files, "nonce": secrets.token_hex(8)}
        # 40 hex chars like a git sha; the nonce keeps two identical commits made in the same millisecond apart.
        sha = hashlib.sha1(json.dumps(commit, sort_keys=True).encode()).hexdigest()
        commit["id"] = sha
        _atomic_write_json(self.repo_dir(key) / "commits" / f"{sha}.json", commit, self.tmp_dir)
        return sha

    def make_commit(
        self,
        key: RepoKey,
        branch: str,
        ops: list[CommitOp],
        *,
        title: str,
        message: str,
        author: str,
        parent_commit: str | None = None,
        max_regular_size: int = LFS_SIZE_THRESHOLD,
    ) -> str:
        """Apply ``ops`` on top of ``branch`` and move the branch, all or nothing.

        Everything is checked first (branch, parent commit, LFS objects, paths, README metadata); only then are
        blobs and the commit file written, and the last step, replacing ``refs.json``, is what publishes it.
        """
        with self.lock:
            refs = self.refs(key)
            if branch not in refs["heads"]:
                try:
                    self.resolve(key, branch)
                except HubError:
                    raise revision_not_found(branch) from None
                raise bad_request(f"Cannot commit to {branch!r}: commits go to a branch, not a tag or commit")
            head = refs["heads"][branch]
            if parent_commit is not None and not head.startswith(parent_commit.lower()):
                # The Hub answers 412 when the branch moved since the parent the client built on.
                raise HubError(412, "A commit has happened since. Please refresh and try again.")

            files = dict(self.files(key, head))
            new_blobs: dict[str, bytes] = {}
            for op in ops:
                if isinstance(op, AddFile):
                    sha256 = hashlib.sha256(op.content).hexdigest()
                    if len(op.content) > max_regular_size:
                        raise bad_request(
                            f"Your push was rejected because it contains files larger than 10 MiB ({op.path}). "
                            "Large files must be uploaded with LFS."
                        )
                    new_blobs[sha256] = op.content
                    files[op.path] = self._file_entry(op.content, sha256)
                elif isinstance(op, AddLfsFile):
                    if not (self.has_lfs_object(key, op.oid)):
                        raise bad_request(f"LFS object {op.oid} for '{op.path}' was not uploaded to this repo")
                    size = self.blob_path(op.oid).stat().st_size
                    if op.size is not None and op.size != size:
                        raise bad_request(f"LFS object {op.oid} for '{op.path}' has size {size}, not {op.size}")
                    pointer = lfs_pointer(op.oid, size)
                    files[op.path] = {"oid": git_blob_oid(pointer), "sha256": op.oid, "size": size, "lfs": True}
                elif isinstance(op, DeleteFile):
                    if op.path not in files:
                        raise entry_not_found(op.path, head, f"A file with this name doesn't exist: {op.path}")
                    del files[op.path]
                elif isinstance(op, DeleteFolder):
                    prefix = op.path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise entry_not_found(op.path, head, f"A folder with this name doesn't exist: {op.path}")
                    for p in doomed:
                        del files[p]

            # A path cannot be both a file and a folder (git could not represent it).
            folders = {p.rsplit("/", 1)[0] for p in files if "/" in p}
            folders |= {f.rsplit("/", i)[0] for f in folders for i in range(1, f.count("/") + 1)}
            clash = sorted(folders & files.keys())
            if clash:
                raise bad_request(f"Path is both a file and a folder: {clash[0]}")
            readme = next((op for op in ops if isinstance(op, AddFile) and op.path == "README.md"), None)
            if readme is not None:
                try:
                    parse_front_matter(readme.content.decode("utf-8", errors="replace"))
                except ValueError as err:
                    raise bad_request(str(err)) from None

            # --- validated: from here on only writes, the ref move last ---
            for sha256, data in new_blobs.items():
                self.put_blob(data)
            sha = self._write_commit(key, parents=[head], title=title, message=message, author=author, files=files)
            refs["heads"][branch] = sha
            self._write_refs(key, refs)
            return sha

    # -- LFS objects ---------------------------------------------------------------------------------------

    def has_lfs_object(self, key: RepoKey, oid: str) -> bool:
        """Was this LFS object uploaded to this repo? (Blobs are shared on disk, LFS access is per repo.)"""
        return (self.repo_dir(key) / "lfs" / oid).is_file() and self.has_blob(oid)

    def add_lfs_object(self, key: RepoKey, tmp: Path, oid: str) -> None:
        with self.lock:
            self.adopt_blob(tmp, oid)
            (self.repo_dir(key) / "lfs" / oid).touch()

    # -- card ----------------------------------------------------------------------------------------------

    def card_data(self, key: RepoKey, sha: str) -> dict[str, Any] | None:
        entry = self.files(key, sha).get("README.md")
        if entry is None:
            return None
        try:
            return parse_front_matter(self.blob_path(entry["sha256"]).read_text(encoding="utf-8", errors="replace"))
        except ValueError:
            return None

    def gitattributes_lfs_patterns(self, key: RepoKey, sha: str) -> list[str]:
        entry = self.files(key, sha).get(".gitattributes")
        if entry is None:
            return []
        return lfs_patterns(self.blob_path(entry["sha256"]).read_text(encoding="utf-8", errors="replace"))


# ----------------------------------------------------------------------------------------------------------
# Auth
# ----------------------------------------------------------------------------------------------------------


class TokenAuth:
    """Bearer tokens, each ``"read"`` or ``"write"``; every valid token sees every private repo (one user).

    A token the server does not know is treated as no token at all rather than rejected, so a real Hub token
    picked up from the environment or ``~/.cache/huggingface`` does not break reads of public repos.
    """

    ROLES = ("read", "write")

    def __init__(self, tokens: dict[str, str] | None = None) -> None:
        self.tokens = dict(tokens or {})
        for token, role in self.tokens.items():
            if role not in self.ROLES:
                raise ValueError(f"Token role must be 'read' or 'write', got {role!r} for token {token[:6]}...")

    def role(self, request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.tokens.get(token.strip())

    def require_write(self, request: Request, action: str) -> None:
        role = self.role(request)
        if role == "write":
            return
        if role == "read":
            # What the Hub answers to a read-only token (the client then says "check your token's permissions").
            raise HubError(403, f"You must use a write token to {action}: the token you sent is read-only")
        raise HubError(401, f"Authentication required to {action}: send a write token ('Authorization: Bearer ...')")

    def check_read(self, request: Request, meta: dict[str, Any]) -> None:
        if meta.get("private") and self.role(request) is None:
            raise repo_not_found()


# ----------------------------------------------------------------------------------------------------------
# Routes
# ----------------------------------------------------------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; a 400 (not a 500, which the client would retry) when it is not one."""
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise bad_request("Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    return body


def _raw_segments(request: Request) -> list[str]:
    """The request path split on '/' *before* percent-decoding.

    The client quotes revisions with ``safe=""`` (a branch ``a/b`` travels as ``a%2Fb``) while file paths keep
    their slashes, so ``tree/<rev>/<path>`` and ``resolve/<rev>/<path>`` can only be split on the raw path.
    """
    raw = request.scope.get("raw_path") or request.url.path.encode()
    return raw.decode("latin-1").split("/")


@dataclass
class _UploadTicket:
    key: RepoKey
    oid: str
    size: int


class HubRoutes:
    """The FastAPI app: one method per endpoint, sharing the server's storage, auth, counters and faults."""

    def __init__(self, server: HubServer) -> None:
        self.server = server
        self.storage = server.storage
        self.auth = server.auth
        # LFS upload URLs carry a one-time ticket instead of credentials, like the Hub's pre-signed S3 URLs
        # (the client PUTs to them without an Authorization header).
        self._tickets: dict[str, _UploadTicket] = {}
        self._tickets_lock = threading.Lock()

    # -- helpers -------------------------------------------------------------------------------------------

    def _repo(
        self, request: Request, kind_or_type: str, namespace: str, name: str, *, write: str | None = None
    ) -> RepoKey:
        """Find the repo and check access: ``write`` names the action when a write token is required."""
        repo_type = API_KINDS.get(kind_or_type, kind_or_type)
        if repo_type not in URL_PREFIXES:
            raise HubError(404, f"Unknown repo type: {kind_or_type}")
        if write is not None:  # like the Hub: no/insufficient token is reported before "not found"
            self.auth.require_write(request, write)
        key = RepoKey(repo_type, namespace, name)
        meta = self.storage.meta(key)
        if write is None:
            self.auth.check_read(request, meta)
        return key

    @staticmethod
    def _base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def _page(self, request: Request, items: list[Any]) -> JSONResponse:
        """One page of ``items`` with a GitHub-style ``Link: <...>; rel="next"`` header (the client follows it)."""
        page_size = max(1, int(self.server.page_size))
        try:
            cursor = max(0, int(request.query_params.get("cursor", "0")))
        except ValueError:
            raise bad_request("Invalid cursor") from None
        page = items[cursor : cursor + page_size]
        headers = {}
        if cursor + page_size < len(items):
            params = dict(request.query_params)
            params["cursor"] = str(cursor + page_size)
            raw_path = "/".join(_raw_segments(request))
            headers["Link"] = f'<{self._base_url(request)}{raw_path}?{urlencode(params)}>; rel="next"'
        return JSONResponse(page, headers=headers)

    @staticmethod
    def _tree_entry(path: str, entry: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
        if entry["lfs"]:
            pointer_size = len(lfs_pointer(entry["sha256"], entry["size"]))
            out["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": pointer_size}
        return out

    @staticmethod
    def _folder_oid(files: dict[str, Any], folder: str) -> str:
        listing = "".join(f"{p} {e['oid']}\n" for p, e in sorted(files.items()) if p.startswith(folder + "/"))
        return hashlib.sha1(listing.encode()).hexdigest()

    def _last_commit(self, key: RepoKey, sha: str, path: str, is_folder: bool) -> dict[str, Any]:
        """The most recent commit that changed ``path`` (walks back while the entry stays the same)."""

        def state(commit: dict[str, Any]) -> Any:
            if not is_folder:
                return commit["files"].get(path)
            return sorted((p, e["oid"]) for p, e in commit["files"].items() if p.startswith(path + "/"))

        history = self.storage.history(key, sha)
        last = next(history)
        current = state(last)
        for commit in history:
            if state(commit) != current:
                break
            last = commit
        return {"id": last["id"], "title": last["title"], "date": last["date"]}

    def _listing(self, key: RepoKey, sha: str, path: str, *, recursive: bool, expand: bool) -> list[dict[str, Any]]:
        files = self.storage.files(key, sha)
        prefix = f"{path}/" if path else ""
        if path and path in files:
            raise entry_not_found(path, sha, f"{path} is a file, not a folder")
        below = {p: e for p, e in files.items() if p.startswith(prefix)}
        if path and not below:
            raise entry_not_found(path, sha)
        folders: set[str] = set()
        entries: list[dict[str, Any]] = []
        for p, e in below.items():
            rel_parts = p[len(prefix) :].split("/")
            # every folder between `path` and the file (only the first one when not recursive)
            depth = len(rel_parts) - 1 if recursive else min(1, len(rel_parts) - 1)
            for i in range(1, depth + 1):
                folders.add(prefix + "/".join(rel_parts[:i]))
            if recursive or len(rel_parts) == 1:
                entries.append(self._tree_entry(p, e))
        entries += [{"type": "directory", "oid": self._folder_oid(files, f), "size": 0, "path": f} for f in folders]
        entries.sort(key=lambda e: (e["type"] != "directory", e["path"]))
        if expand:
            for e in entries:
                e["lastCommit"] = self._last_commit(key, sha, e["path"], e["type"] == "directory")
        return entries

    def _new_ticket(self, key: RepoKey, oid: str, size: int) -> str:
        ticket = secrets.token_urlsafe(24)
        with self._tickets_lock:
            self._tickets[ticket] = _UploadTicket(key, oid, size)
        return ticket

    def _ticket(self, ticket: str) -> _UploadTicket:
        with self._tickets_lock:
            found = self._tickets.get(ticket)
        if found is None:
            raise HubError(404, "Unknown or expired LFS upload URL")
        return found

    # -- app -----------------------------------------------------------------------------------------------

    def build(self) -> FastAPI:
        app = FastAPI(title="hub-reflow local Hub", docs_url=None, redoc_url=None, openapi_url=None)

        @app.exception_handler(HubError)
        async def _hub_error(request: Request, exc: HubError) -> JSONResponse:
            return exc.to_response()

        api = "/api/{kind}/{namespace}/{name}"
        routes: list[tuple[str, Any, list[str]]] = [
            ("/api/whoami-v2", self.whoami, ["GET"]),
            ("/api/validate-yaml", self.validate_yaml, ["POST"]),
            ("/api/repos/create", self.create_repo, ["POST"]),
            ("/api/repos/delete", self.delete_repo, ["DELETE"]),
            (api, self.repo_info, ["GET"]),
            (api + "/revision/{rest:path}", self.repo_info, ["GET"]),
            (api + "/settings", self.update_settings, ["PUT"]),
            (api + "/tree/{rest:path}", self.tree, ["GET"]),
            (api + "/paths-info/{rest:path}", self.paths_info, ["POST"]),
            (api + "/refs", self.refs, ["GET"]),
            (api + "/commits/{rest:path}", self.list_commits, ["GET"]),
            (api + "/tag/{rest:path}", self.tag, ["POST", "DELETE"]),
            (api + "/branch/{rest:path}", self.branch, ["POST", "DELETE"]),
            (api + "/preupload/{rest:path}", self.preupload, ["POST"]),
            (api + "/commit/{rest:path}", self.commit, ["POST"]),
            (api + "/xet-write-token/{rest:path}", self.xet_token, ["GET"]),
            (api + "/xet-read-token/{rest:path}", self.xet_token, ["GET"]),
            ("/_lfs/upload/{ticket}", self.lfs_upload, ["PUT"]),
            ("/_lfs/verify/{ticket}", self.lfs_verify, ["POST"]),
            ("/datasets/{namespace}/{name}.git/info/lfs/objects/batch", self.lfs_batch_dataset, ["POST"]),
            ("/{namespace}/{name}.git/info/lfs/objects/batch", self.lfs_batch_model, ["POST"]),
            ("/datasets/{namespace}/{name}/resolve/{rest:path}", self.resolve_dataset, ["GET", "HEAD"]),
            ("/{namespace}/{name}/resolve/{rest:path}", self.resolve_model, ["GET", "HEAD"]),
        ]
        for path, endpoint, methods in routes:
            app.add_api_route(path, endpoint, methods=methods)
        return app

    # -- account & validation ------------------------------------------------------------------------------

    async def whoami(self, request: Request) -> JSONResponse:
        role = self.auth.role(request)
        if role is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        name = self.server.username
        return JSONResponse({
            "type": "user", "id": hashlib.sha1(name.encode()).hexdigest()[:24], "name": name, "fullname": name,
            "orgs": [], "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": role}},
        })

    async def validate_yaml(self, request: Request) -> JSONResponse:
        body = await _json_body(request)
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            raise bad_request("Expected a JSON body with a 'content' string")
        try:
            parse_front_matter(content)
        except ValueError as err:
            # The client reads errors[].message from the 400 body and raises ValueError with them.
            return JSONResponse({"errors": [{"message": str(err)}], "warnings": []}, status_code=400)
        return JSONResponse({"errors": [], "warnings": []})

    # -- repos ---------------------------------------------------------------------------------------------

    async def create_repo(self, request: Request) -> JSONResponse:
        self.auth.require_write(request, "create a repo")
        body = await _json_body(request)
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise bad_request(f"Repo type {repo_type!r} is not supported by this server (model and dataset are)")
        key = RepoKey(repo_type, body.get("organization") or self.server.username, str(body.get("name") or ""))
        if not key.is_valid():
            raise bad_request(f"Invalid repo id: {key.repo_id!r}")
        private = body.get("visibility") == "private" or bool(body.get("private"))
        url = f"{self._base_url(request)}/{key.url_path}"
        if not self.storage.create_repo(key, private=private, author=self.server.username):
            # create_repo(exist_ok=True) reads the url from this 409 body.
            raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
        return JSONResponse({"url": url, "name": key.repo_id, "id": key.repo_id})

    async def delete_repo(self, request: Request) -> Response:
        self.auth.require_write(request, "delete a repo")
        body = await _json_body(request)
        namespace = body.get("organization") or self.server.username
        key = RepoKey(body.get("type") or "model", namespace, str(body.get("name")))
        self.storage.delete_repo(key)
        return Response(status_code=200)

    async def update_settings(self, request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
        key = self._repo(request, kind, namespace, name, write="change repo settings")
        body = await _json_body(request)
        if "private" in body or "visibility" in body:
            self.storage.set_private(key, body.get("visibility") == "private" or bool(body.get("private")))
        return JSONResponse({})

    async def repo_info(self, request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
        key = self._repo(request, kind, namespace, name)
        segments = _raw_segments(request)
        revision = unquote("/".join(segments[6:])) if len(segments) > 6 else "main"
        sha = self.storage.resolve(key, revision)
        meta = self.storage.meta(key)
        commit = self.storage.commit(key, sha)
        files = commit["files"]
        with_blobs = _truthy(request.query_params.get("blobs"))
        siblings = []
        for path in sorted(files):
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                e = files[path]
                sibling.update(size=e["size"], blobId=e["oid"])
                if e["lfs"]:
                    pointer_size = len(lfs_pointer(e["sha256"], e["size"]))
                    sibling["lfs"] = {"size": e["size"], "sha256": e["sha256"], "pointerSize": pointer_size}
            siblings.append(sibling)
        card = self.storage.card_data(key, sha)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{key.repo_type}/{key.repo_id}".encode()).hexdigest()[:24],
            "id": key.repo_id, "author": key.namespace, "sha": sha, "private": meta["private"],
            "gated": False, "disabled": False, "downloads": 0, "likes": 0,
            "createdAt": meta["createdAt"], "lastModified": commit["date"],
            "tags": [t for t in (card or {}).get("tags") or [] if isinstance(t, str)],
            "siblings": siblings, "usedStorage": sum(e["size"] for e in files.values()),
        }
        if card is not None:
            info["cardData"] = card
            if key.repo_type == "model":
                for field in ("library_name", "pipeline_tag"):
                    if isinstance(card.get(field), str):
                        info[field] = card[field]
        return JSONResponse(info)

    async def tree(self, request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
        key = self._repo(request, kind, namespace, name)
        segments = _raw_segments(request)  # ["", "api", kind, ns, name, "tree", rev, *path]
        revision = unquote(segments[6]) if len(segments) > 6 else "main"
        path = unquote("/".join(segments[7:])).strip("/")
        sha = self.storage.resolve(key, revision)
        entries = self._listing(
            key, sha, path,
            recursive=_truthy(request.query_params.get("recursive")),
            expand=_truthy(request.query_params.get("expand")),
        )
        return self._page(request, entries)

    async def paths_info(self, request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
        key = self._repo(request, kind, namespace, name)
        segments = _raw_segments(request)
        sha = self.storage.resolve(key, unquote("/".join(segments[6:])) or "main")
        body = (await request.body()).decode()
        # The client posts a form (paths=a&paths=b&expand=False); accept JSON too.
        if request.headers.get("content-type", "").startswith("application/json"):
            data = json.loads(body or "{}")
            paths, expand = data.get("paths") or [], bool(data.get("expand"))
        else:
            form = parse_qs(body)
            paths, expand = form.get("paths", []), _truthy((form.get("expand") or ["false"])[0])
        files = self.storage.files(key, sha)
        out = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                entry = self._tree_entry(path, files[path])
            elif any(p.startswith(path + "/") for p in files):
                entry = {"type": "directory", "oid": self._folder_oid(files, path), "size": 0, "path": path}
            else:
                continue  # the Hub silently skips missing paths
            if expand:
                entry["lastCommit"] = self._last_commit(key, sha, path, entry["type"] == "directory")
            out.append(entry)
        return JSONResponse(out)

    async def refs(self, request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
        key = self._repo(request, kind, namespace, name)
        refs = self.storage.refs(key)
        heads = sorted(refs["heads"].items())
        tags = sorted((tag, value["commit"]) for tag, value in refs["tags"].items())
        answer: dict[str, Any] = {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha} for b, sha in heads],
            "converts": [],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": sha} for t, sha in tags],
        }
        if _truthy(request.query_params.get("include_prs")):
            answer["pullRequests"] = []
        return JSONResponse(answer)

    async def list_commits(self, request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
        key = self._repo(request, kind, namespace, name)
        segments = _raw_segments(request)
        sha = self.storage.resolve(key, unquote("/".join(segments[6:])) or "main")
        items = [
            {"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
             "authors": [{"user": a} for a in c["authors"]]}
            for c in self.storage.history(key, sha)
        ]
        return self._page(request, items)

    async def tag(self, request: Request, kind: str, namespace: str, name: str) -> Response:
        segments = _raw_segments(request)
        target = unquote("/".join(segments[6:]))
        if request.method == "DELETE":
            key = self._repo(request, kind, namespace, name, write="delete a tag")
            self.storage.delete_tag(key, target)
            return Response(status_code=200)
        key = self._repo(request, kind, namespace, name, write="create a tag")
        body = await _json_body(request)
        tag = check_ref_name(body.get("tag"), "tag")
        self.storage.create_tag(key, tag, target, body.get("message"))
        return JSONResponse({})

    async def branch(self, request: Request, kind: str, namespace: str, name: str) -> Response:
        segments = _raw_segments(request)
        branch = unquote("/".join(segments[6:]))
        if request.method == "DELETE":
            key = self._repo(request, kind, namespace, name, write="delete a branch")
            self.storage.delete_branch(key, branch)
            return Response(status_code=200)
        key = self._repo(request, kind, namespace, name, write="create a branch")
        starting_point = (await _json_body(request)).get("startingPoint")
        self.storage.create_branch(key, check_ref_name(branch, "branch"), starting_point)
        return JSONResponse({})

    async def xet_token(self, request: Request) -> Response:
        raise HubError(
            501,
            "This local Hub server does not support Xet storage: set HF_HUB_DISABLE_XET=1 before importing "
            "huggingface_hub (or set huggingface_hub.constants.HF_HUB_DISABLE_XET = True)",
        )

    # -- uploads -------------------------------------------------------------------------------------------

    async def preupload(self, request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
        key = self._repo(request, kind, namespace, name, write="upload files")
        if _truthy(request.query_params.get("create_pr")):
            raise bad_request("Pull requests are not supported by this local Hub server")
        segments = _raw_segments(request)
        sha = self.storage.resolve(key, unquote("/".join(segments[6:])))
        files = self.storage.files(key, sha)
        patterns = self.storage.gitattributes_lfs_patterns(key, sha)
        body = await _json_body(request)
        answers = []
        for item in body.get("files") or []:
            path = check_repo_path(item.get("path"))
            size = int(item.get("size") or 0)
            # The server decides, like the Hub: LFS when .gitattributes says so or the file is over 10 MiB.
            mode = "lfs" if size > self.server.lfs_size_threshold or matches_lfs(path, patterns) else "regular"
            answer: dict[str, Any] = {"path": path, "uploadMode": mode, "shouldIgnore": False}
            existing = files.get(path)
            if existing is not None:
                # The client skips a file whose remote oid equals its local one: sha256 for LFS, git oid otherwise.
                answer["oid"] = existing["sha256"] if existing["lfs"] else existing["oid"]
            answers.append(answer)
        return JSONResponse({"files": answers, "commitOid": sha})

    async def lfs_batch_model(self, request: Request, namespace: str, name: str) -> JSONResponse:
        return await self._lfs_batch(request, RepoKey("model", namespace, name))

    async def lfs_batch_dataset(self, request: Request, namespace: str, name: str) -> JSONResponse:
        return await self._lfs_batch(request, RepoKey("dataset", namespace, name))

    async def _lfs_batch(self, request: Request, key: RepoKey) -> JSONResponse:
        key = self._repo(request, key.repo_type, key.namespace, key.name, write="upload LFS files")
        body = await _json_body(request)
        if body.get("operation") != "upload":
            raise bad_request("Only the LFS 'upload' operation is supported (downloads go through /resolve/)")
        base = self._base_url(request)
        objects = []
        for obj in body.get("objects") or []:
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not _SHA256_RE.fullmatch(oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid oid or size"}})
                continue
            if self.storage.has_lfs_object(key, oid) and self.storage.blob_path(oid).stat().st_size == size:
                objects.append({"oid": oid, "size": size})  # no "actions": the client skips the upload
                continue
            ticket = self._new_ticket(key, oid, size)
            objects.append({
                "oid": oid, "size": size, "authenticated": True,
                "actions": {
                    "upload": {"href": f"{base}/_lfs/upload/{ticket}", "expires_in": 3600},
                    "verify": {"href": f"{base}/_lfs/verify/{ticket}", "expires_in": 3600},
                },
            })
        return JSONResponse(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            media_type="application/vnd.git-lfs+json",
        )

    async def lfs_upload(self, request: Request, ticket: str) -> Response:
        upload = self._ticket(ticket)
        fail = self.server._record_lfs_put()
        tmp = self.storage.new_tmp_path()
        digest, size = hashlib.sha256(), 0
        try:
            # Stream to disk while hashing: LFS files can be large.
            with tmp.open("wb") as out:
                async for chunk in request.stream():
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            self.server._record_lfs_bytes(size)
            if fail:
                # 507 is not in the client's retry list, so the push fails at once instead of backing off.
                raise HubError(507, "Injected failure: LFS upload rejected (HubServer.fail_lfs_upload_at)")
            if digest.hexdigest() != upload.oid or size != upload.size:
                raise bad_request(f"Uploaded content does not match LFS object {upload.oid} ({upload.size} bytes)")
            self.storage.add_lfs_object(upload.key, tmp, upload.oid)
        finally:
            tmp.unlink(missing_ok=True)
        return Response(status_code=200, headers={"ETag": f'"{upload.oid}"'})

    async def lfs_verify(self, request: Request, ticket: str) -> JSONResponse:
        upload = self._ticket(ticket)
        self._repo(request, upload.key.repo_type, upload.key.namespace, upload.key.name, write="verify LFS uploads")
        body = await _json_body(request)
        if body.get("oid") != upload.oid or not self.storage.has_lfs_object(upload.key, upload.oid):
            raise HubError(404, f"LFS object {body.get('oid')} was not uploaded")
        if body.get("size") != self.storage.blob_path(upload.oid).stat().st_size:
            raise HubError(422, f"LFS object {upload.oid} has a different size")
        with self._tickets_lock:
            self._tickets.pop(ticket, None)
        return JSONResponse({"message": "Object verified"})

    async def commit(self, request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
        key = self._repo(request, kind, namespace, name, write="commit")
        if _truthy(request.query_params.get("create_pr")):
            raise bad_request("Pull requests are not supported by this local Hub server")
        segments = _raw_segments(request)
        branch = unquote("/".join(segments[6:]))
        header, ops = parse_commit_payload(await request.body())
        if self.server._take_commit_fault():
            # By now the client has uploaded its LFS objects; nothing of the commit has been written.
            raise HubError(500, "Injected failure: commit rejected (HubServer.fail_next_commit)")
        sha = self.storage.make_commit(
            key, branch, ops,
            title=str(header.get("summary") or ""), message=str(header.get("description") or ""),
            author=self.server.username, parent_commit=header.get("parentCommit"),
            max_regular_size=self.server.lfs_size_threshold,
        )
        self.server._record_commit(key)
        return JSONResponse({
            "success": True, "commitOid": sha, "commitUrl": f"{self._base_url(request)}/{key.url_path}/commit/{sha}",
            "hookOutput": "", "pullRequestUrl": None,
        })

    # -- downloads -----------------------------------------------------------------------------------------

    async def resolve_model(self, request: Request, namespace: str, name: str) -> Response:
        return self._resolve(request, RepoKey("model", namespace, name), offset=0)

    async def resolve_dataset(self, request: Request, namespace: str, name: str) -> Response:
        return self._resolve(request, RepoKey("dataset", namespace, name), offset=1)

    def _resolve(self, request: Request, key: RepoKey, offset: int) -> Response:
        key = self._repo(request, key.repo_type, key.namespace, key.name)
        segments = _raw_segments(request)[offset:]  # ["", ns, name, "resolve", rev, *path]
        if len(segments) < 6:
            raise bad_request("Expected /resolve/<revision>/<path>")
        sha = self.storage.resolve(key, unquote(segments[4]))
        path = unquote("/".join(segments[5:]))
        entry = self.storage.files(key, sha).get(path)
        if entry is None:
            raise entry_not_found(path, sha)
        # The client keys its cache on the ETag: git oid for regular files, sha256 for LFS (X-Linked-Etag wins).
        headers = {"X-Repo-Commit": sha, "ETag": f'"{entry["sha256"] if entry["lfs"] else entry["oid"]}"'}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(entry["size"])})
        # FileResponse answers HEAD without a body and serves Range requests (used to resume downloads).
        blob = self.storage.blob_path(entry["sha256"])
        return FileResponse(blob, headers=headers, media_type="application/octet-stream")


def parse_commit_payload(body: bytes) -> tuple[dict[str, Any], list[CommitOp]]:
    """Parse the client's ndjson commit: a header line, then one line per operation. Raises HubError(400)."""
    header: dict[str, Any] | None = None
    ops: list[CommitOp] = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if not isinstance(value, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise bad_request(f"Malformed commit payload (line {number})") from None
        if key == "header":
            header = value
            continue
        if header is None:
            raise bad_request("Malformed commit payload: the first line must be the header")
        raw_path = value.get("path")
        if key == "deletedFolder" and isinstance(raw_path, str):
            raw_path = raw_path.rstrip("/")  # the client sends folders as "folder/"
        path = check_repo_path(raw_path)
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise bad_request(f"Unsupported encoding for {path}: {value.get('encoding')}")
            try:
                content = base64.b64decode(value.get("content") or "", validate=True)
            except (binascii.Error, ValueError):
                raise bad_request(f"Invalid base64 content for {path}") from None
            ops.append(AddFile(path, content))
        elif key == "lfsFile":
            oid, size = value.get("oid"), value.get("size")
            if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str) or not _SHA256_RE.fullmatch(oid):
                raise bad_request(f"Invalid LFS oid for {path}")
            if size is not None and (not isinstance(size, int) or size < 0):
                raise bad_request(f"Invalid LFS size for {path}")
            ops.append(AddLfsFile(path, oid, size))
        elif key == "deletedFile":
            ops.append(DeleteFile(path))
        elif key == "deletedFolder":
            ops.append(DeleteFolder(path))
        else:
            raise bad_request(f"Unsupported commit operation: {key!r}")
    if header is None:
        raise bad_request("Malformed commit payload: missing header")
    if not str(header.get("summary") or "").strip():
        raise bad_request("Commit summary cannot be empty")
    parent = header.get("parentCommit")
    if parent is not None and (not isinstance(parent, str) or not _SHORT_COMMIT_RE.fullmatch(parent.lower())):
        raise bad_request(f"Invalid parentCommit: {parent!r}")
    return header, ops


# ----------------------------------------------------------------------------------------------------------
# Server: uvicorn in a background thread, plus the knobs and counters tests use
# ----------------------------------------------------------------------------------------------------------


def _http_protocol() -> Any:
    """uvicorn's h11 protocol with TCP_NODELAY on every connection.

    uvicorn writes response headers and body as two segments; with Nagle's algorithm on, the body waits for the
    client's delayed ACK of the headers, about 40 ms on every keep-alive request, which dominates test time.
    """
    try:
        from uvicorn.protocols.http.h11_impl import H11Protocol
    except ImportError:  # another uvicorn layout: keep its default, only slower
        return "auto"

    class NoDelayH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            super().connection_made(transport)

    return NoDelayH11Protocol


class HubServer:
    """A local Hub on ``127.0.0.1``, backed by files under ``root``.

    Args:
        root: folder holding the repos (created if missing; reusing it keeps the repos).
        tokens: ``{token: "read" | "write"}``. Writes need a write token (no/unknown token -> 401, read token
            -> 403, as on the Hub); private repos need any valid token, otherwise they answer 404 RepoNotFound.
        host, port: where to listen; port 0 (default) picks a free port.
        username: the single user that owns every token; namespace for ``create_repo("name")`` and commit author.
        lfs_size_threshold: files larger than this go to LFS whatever their name (the Hub uses 10 MiB).
        page_size: entries per page of tree / commit listings (the client follows the ``Link`` header).

    Counters (read them, or call :meth:`reset_counters`): ``lfs_put_count`` (LFS PUT uploads received, failed
    ones included), ``lfs_bytes_received``, :meth:`commit_count` (commits created through the commit endpoint).

    Fault injection: ``fail_next_commit = True`` makes the next commit request answer 500 after its LFS objects
    were uploaded, writing nothing; ``fail_lfs_upload_at = n`` makes the n-th LFS PUT from now answer 507 (a
    status the client does not retry) without storing it. Both reset themselves once they fire.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        tokens: dict[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "user",
        lfs_size_threshold: int = LFS_SIZE_THRESHOLD,
        page_size: int = 1000,
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.port = port
        self.username = username
        self.lfs_size_threshold = lfs_size_threshold
        self.page_size = page_size
        self.storage = HubStorage(self.root)
        self.auth = TokenAuth(tokens)
        self.fail_next_commit = False
        self.fail_lfs_upload_at: int | None = None
        self.lfs_put_count = 0
        self.lfs_bytes_received = 0
        self._commit_counts: dict[tuple[str, str], int] = {}
        self._counters_lock = threading.Lock()
        self.app = HubRoutes(self).build()
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, the endpoint to give the client."""
        if self._url is None:
            raise RuntimeError("HubServer is not started")
        return self._url

    def _make_server(self) -> tuple[uvicorn.Server, socket.socket]:
        # Bind the socket ourselves so that port 0 works and the real port is known before serving starts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        config = uvicorn.Config(
            self.app, http=_http_protocol(), log_level="warning", access_log=False, log_config=None,
            lifespan="off", timeout_graceful_shutdown=5,
        )
        host, port = sock.getsockname()[:2]
        self._url = f"http://{host}:{port}"
        return uvicorn.Server(config), sock

    def start(self) -> HubServer:
        """Serve in a background thread; returns once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("HubServer is already started")
        server, sock = self._make_server()
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="hub-server", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise RuntimeError("HubServer failed to start")
            time.sleep(0.01)
        self._uvicorn, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Shut down and wait for the serving thread."""
        if self._uvicorn is None or self._thread is None:
            return
        self._uvicorn.should_exit = True
        self._thread.join(timeout=15)
        if self._thread.is_alive():  # a client kept a request open: stop waiting for it
            self._uvicorn.force_exit = True
            self._thread.join(timeout=5)
        self._uvicorn = self._thread = None
        self._url = None

    def serve_forever(self, announce: Callable[[str], None] | None = None) -> None:
        """Serve in the calling thread until Ctrl-C (used by ``python -m``); ``announce`` gets the URL first."""
        server, sock = self._make_server()
        if announce is not None:
            announce(self.url)
        server.run(sockets=[sock])

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- counters and faults -------------------------------------------------------------------------------

    def commit_count(self, repo_id: str, repo_type: str = "model") -> int:
        """Commits created through the commit endpoint for this repo (the initial commit is not counted)."""
        with self._counters_lock:
            return self._commit_counts.get((repo_type, repo_id), 0)

    def reset_counters(self) -> None:
        with self._counters_lock:
            self.lfs_put_count = 0
            self.lfs_bytes_received = 0
            self._commit_counts.clear()

    def _record_lfs_put(self) -> bool:
        """Count an LFS PUT; True if this one must fail (fault injection)."""
        with self._counters_lock:
            self.lfs_put_count += 1
            if self.fail_lfs_upload_at is None:
                return False
            self.fail_lfs_upload_at -= 1
            if self.fail_lfs_upload_at > 0:
                return False
            self.fail_lfs_upload_at = None
            return True

    def _record_lfs_bytes(self, size: int) -> None:
        with self._counters_lock:
            self.lfs_bytes_received += size

    def _take_commit_fault(self) -> bool:
        with self._counters_lock:
            fail, self.fail_next_commit = self.fail_next_commit, False
            return fail

    def _record_commit(self, key: RepoKey) -> None:
        with self._counters_lock:
            slot = (key.repo_type, key.repo_id)
            self._commit_counts[slot] = self._commit_counts.get(slot, 0) + 1

    # -- direct inspection (no HTTP, no auth) --------------------------------------------------------------

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        """The commit sha a revision points to."""
        return self.storage.resolve(RepoKey.parse(repo_type, repo_id), revision)

    def repo_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, str]:
        """``path -> sha256 of the content`` at a revision: compare two of these to show a repo did not change."""
        key = RepoKey.parse(repo_type, repo_id)
        return {p: e["sha256"] for p, e in self.storage.files(key, self.storage.resolve(key, revision)).items()}

    def read_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        key = RepoKey.parse(repo_type, repo_id)
        return self.storage.read_file(key, self.storage.resolve(key, revision), path)


# ----------------------------------------------------------------------------------------------------------
# python -m hub_reflow.testing.hub_server
# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hub_reflow.testing.hub_server",
        description="Run a local Hugging Face Hub-compatible server (models and datasets) backed by a folder.",
    )
    parser.add_argument("--root", required=True, help="folder holding the repos (created if missing)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--token", action="append", default=[], metavar="TOKEN:ROLE",
                        help="accepted token and its role, read or write (repeatable)")
    parser.add_argument("--username", default="user", help="owner of the tokens and default namespace")
    args = parser.parse_args(argv)
    tokens = {}
    for spec in args.token:
        token, sep, role = spec.rpartition(":")
        if not sep or not token or role not in TokenAuth.ROLES:
            parser.error(f"--token must be TOKEN:read or TOKEN:write, got {spec!r}")
        tokens[token] = role
    server = HubServer(args.root, tokens, host=args.host, port=args.port, username=args.username)

    def announce(url: str) -> None:
        print(f"Local Hub serving {Path(args.root).resolve()} at {url} (Ctrl-C to stop)", flush=True)
        if not any(role == "write" for role in tokens.values()):
            print("No write token given (--token TOKEN:write): the server is read-only.", flush=True)
        print(f"Point the client at it: HF_ENDPOINT={url} HF_HUB_DISABLE_XET=1 HF_TOKEN=<token>", flush=True)

    try:
        server.serve_forever(announce=announce)
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass


if __name__ == "__main__":
    main()
