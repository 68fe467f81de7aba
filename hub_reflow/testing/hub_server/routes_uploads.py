"""Endpoints for uploads (preupload, the LFS batch API, ndjson commits) and downloads (``/resolve/``)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any
from urllib.parse import unquote

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, Response

from .protocol import (
    SHA256_RE,
    SHORT_COMMIT_RE,
    AddFile,
    AddLfsFile,
    CommitOp,
    DeleteFile,
    DeleteFolder,
    HubError,
    RepoKey,
    bad_request,
    check_repo_path,
    entry_not_found,
    matches_lfs,
)
from .routes import RoutesBase, json_body, raw_segments, truthy


class UploadRoutes(RoutesBase):
    # -- uploads -------------------------------------------------------------------------------------------

    async def preupload(self, request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
        key = self._repo(request, kind, namespace, name, write="upload files")
        if truthy(request.query_params.get("create_pr")):
            raise bad_request("Pull requests are not supported by this local Hub server")
        segments = raw_segments(request)
        sha = self.storage.resolve(key, unquote("/".join(segments[6:])))
        files = self.storage.files(key, sha)
        patterns = self.storage.gitattributes_lfs_patterns(key, sha)
        body = await json_body(request)
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
        body = await json_body(request)
        if body.get("operation") != "upload":
            raise bad_request("Only the LFS 'upload' operation is supported (downloads go through /resolve/)")
        base = self._base_url(request)
        objects = []
        for obj in body.get("objects") or []:
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not SHA256_RE.fullmatch(oid) or not isinstance(size, int) or size < 0:
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
        body = await json_body(request)
        if body.get("oid") != upload.oid or not self.storage.has_lfs_object(upload.key, upload.oid):
            raise HubError(404, f"LFS object {body.get('oid')} was not uploaded")
        if body.get("size") != self.storage.blob_path(upload.oid).stat().st_size:
            raise HubError(422, f"LFS object {upload.oid} has a different size")
        with self._tickets_lock:
            self._tickets.pop(ticket, None)
        return JSONResponse({"message": "Object verified"})

    async def commit(self, request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
        key = self._repo(request, kind, namespace, name, write="commit")
        if truthy(request.query_params.get("create_pr")):
            raise bad_request("Pull requests are not supported by this local Hub server")
        segments = raw_segments(request)
        branch = unquote("/".join(segments[6:]))
        header, ops = parse_commit_payload(await request.body())
        if self.server._take_commit_fault():
            # By now the client has uploaded its LFS objects; nothing of the commit has been written.
            raise HubError(500, "Injected failure: commit rejected (HubServer.fail_next_commit)")
        sha = self.storage.make_commit(
            key, branch, ops,
            title=str(header.get("summary") or ""), message=str(header.get("description") or ""),
            author=self._user(request), parent_commit=header.get("parentCommit"),
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
        segments = raw_segments(request)[offset:]  # ["", ns, name, "resolve", rev, *path]
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
            if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str) or not SHA256_RE.fullmatch(oid):
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
    if parent is not None and (not isinstance(parent, str) or not SHORT_COMMIT_RE.fullmatch(parent.lower())):
        raise bad_request(f"Invalid parentCommit: {parent!r}")
    return header, ops
