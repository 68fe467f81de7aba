"""What the local Hub shares between storage and routes: constants, the Hub's error answers, path and
ref-name rules, README front matter and ``.gitattributes`` parsing, repo keys and commit operations."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from fastapi.responses import JSONResponse

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

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
SHORT_COMMIT_RE = re.compile(r"^[0-9a-f]{5,40}$")
# Hub naming rule for namespaces and repo names: alphanumerics, '-', '_', '.'; no leading/trailing '-' or '.'.
NAME_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?$")
# Same as huggingface_hub.repocard.REGEX_YAML_BLOCK, so server and client agree on what the front matter is.
YAML_BLOCK_RE = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")


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


def now_iso() -> str:
    # The client parses '%Y-%m-%dT%H:%M:%S.%fZ'.
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def atomic_write_json(path: Path, data: Any, tmp_dir: Path) -> None:
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
        or COMMIT_RE.fullmatch(name)
    ):
        raise bad_request(f"Invalid {what} name: {name!r}")
    return name


def parse_front_matter(content: str) -> dict[str, Any] | None:
    """YAML metadata of a README (``None`` when there is none). Raises ValueError when it is not valid YAML."""
    match = YAML_BLOCK_RE.search(content)
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
            and all(NAME_RE.fullmatch(p) and "--" not in p and ".." not in p for p in (self.namespace, self.name))
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
