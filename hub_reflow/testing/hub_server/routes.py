"""The helpers the HTTP endpoints share: request parsing, access checks, paging, tree listings and
one-time LFS upload tickets."""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import JSONResponse

from .protocol import API_KINDS, URL_PREFIXES, HubError, RepoKey, bad_request, entry_not_found, lfs_pointer


def truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; a 400 (not a 500, which the client would retry) when it is not one."""
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise bad_request("Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    return body


def raw_segments(request: Request) -> list[str]:
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


class RoutesBase:
    """What every endpoint shares: the server's storage, auth, counters and faults; access checks, paging,
    tree entries and LFS upload tickets. The endpoints are in ``routes_repos`` and ``routes_uploads``."""

    def __init__(self, server: Any) -> None:  # app.HubServer
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
            self.auth.check_read(request, meta, namespace)
        else:
            self.auth.require_owner(request, namespace, meta, write)
        return key

    def _user(self, request: Request) -> str:
        """The user a request's token belongs to: the default namespace and the commit author."""
        return self.auth.user(request) or self.server.username

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
            raw_path = "/".join(raw_segments(request))
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

