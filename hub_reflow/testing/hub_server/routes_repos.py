"""Endpoints for the account, repos, trees, refs, commits listings, branches and tags."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import parse_qs, unquote

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .protocol import URL_PREFIXES, HubError, RepoKey, bad_request, check_ref_name, lfs_pointer, parse_front_matter
from .routes import RoutesBase, json_body, raw_segments, truthy


class RepoRoutes(RoutesBase):
    # -- account & validation ------------------------------------------------------------------------------

    async def whoami(self, request: Request) -> JSONResponse:
        role = self.auth.role(request)
        if role is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        name = self._user(request)
        return JSONResponse({
            "type": "user", "id": hashlib.sha1(name.encode()).hexdigest()[:24], "name": name, "fullname": name,
            "orgs": [{"name": org, "type": "org"} for org in self.auth.orgs(request)],
            "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": role.partition(":")[0]}},
        })

    async def validate_yaml(self, request: Request) -> JSONResponse:
        body = await json_body(request)
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
        body = await json_body(request)
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise bad_request(f"Repo type {repo_type!r} is not supported by this server (model and dataset are)")
        key = RepoKey(repo_type, body.get("organization") or self._user(request), str(body.get("name") or ""))
        if not key.is_valid():
            raise bad_request(f"Invalid repo id: {key.repo_id!r}")
        self.auth.require_create(request, repo_type, key.namespace)
        private = body.get("visibility") == "private" or bool(body.get("private"))
        url = f"{self._base_url(request)}/{key.url_path}"
        if not self.storage.create_repo(key, private=private, author=self._user(request)):
            # create_repo(exist_ok=True) reads the url from this 409 body.
            raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
        return JSONResponse({"url": url, "name": key.repo_id, "id": key.repo_id})

    async def delete_repo(self, request: Request) -> Response:
        self.auth.require_write(request, "delete a repo")
        body = await json_body(request)
        namespace = body.get("organization") or self._user(request)
        key = RepoKey(body.get("type") or "model", namespace, str(body.get("name")))
        self.auth.require_owner(request, namespace, self.storage.meta(key), "delete a repo")
        self.storage.delete_repo(key)
        return Response(status_code=200)

    async def update_settings(self, request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
        key = self._repo(request, kind, namespace, name, write="change repo settings")
        body = await json_body(request)
        if "private" in body or "visibility" in body:
            self.storage.set_private(key, body.get("visibility") == "private" or bool(body.get("private")))
        return JSONResponse({})

    async def repo_info(self, request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
        key = self._repo(request, kind, namespace, name)
        segments = raw_segments(request)
        revision = unquote("/".join(segments[6:])) if len(segments) > 6 else "main"
        sha = self.storage.resolve(key, revision)
        meta = self.storage.meta(key)
        commit = self.storage.commit(key, sha)
        files = commit["files"]
        with_blobs = truthy(request.query_params.get("blobs"))
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
        segments = raw_segments(request)  # ["", "api", kind, ns, name, "tree", rev, *path]
        revision = unquote(segments[6]) if len(segments) > 6 else "main"
        path = unquote("/".join(segments[7:])).strip("/")
        sha = self.storage.resolve(key, revision)
        entries = self._listing(
            key, sha, path,
            recursive=truthy(request.query_params.get("recursive")),
            expand=truthy(request.query_params.get("expand")),
        )
        return self._page(request, entries)

    async def paths_info(self, request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
        key = self._repo(request, kind, namespace, name)
        segments = raw_segments(request)
        sha = self.storage.resolve(key, unquote("/".join(segments[6:])) or "main")
        body = (await request.body()).decode()
        # The client posts a form (paths=a&paths=b&expand=False); accept JSON too.
        if request.headers.get("content-type", "").startswith("application/json"):
            data = json.loads(body or "{}")
            paths, expand = data.get("paths") or [], bool(data.get("expand"))
        else:
            form = parse_qs(body)
            paths, expand = form.get("paths", []), truthy((form.get("expand") or ["false"])[0])
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
        if truthy(request.query_params.get("include_prs")):
            answer["pullRequests"] = []
        return JSONResponse(answer)

    async def list_commits(self, request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
        key = self._repo(request, kind, namespace, name)
        segments = raw_segments(request)
        sha = self.storage.resolve(key, unquote("/".join(segments[6:])) or "main")
        items = [
            {"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
             "authors": [{"user": a} for a in c["authors"]]}
            for c in self.storage.history(key, sha)
        ]
        return self._page(request, items)

    async def tag(self, request: Request, kind: str, namespace: str, name: str) -> Response:
        segments = raw_segments(request)
        target = unquote("/".join(segments[6:]))
        if request.method == "DELETE":
            key = self._repo(request, kind, namespace, name, write="delete a tag")
            self.storage.delete_tag(key, target)
            return Response(status_code=200)
        key = self._repo(request, kind, namespace, name, write="create a tag")
        body = await json_body(request)
        tag = check_ref_name(body.get("tag"), "tag")
        self.storage.create_tag(key, tag, target, body.get("message"))
        return JSONResponse({})

    async def branch(self, request: Request, kind: str, namespace: str, name: str) -> Response:
        segments = raw_segments(request)
        branch = unquote("/".join(segments[6:]))
        if request.method == "DELETE":
            key = self._repo(request, kind, namespace, name, write="delete a branch")
            self.storage.delete_branch(key, branch)
            return Response(status_code=200)
        key = self._repo(request, kind, namespace, name, write="create a branch")
        starting_point = (await json_body(request)).get("startingPoint")
        self.storage.create_branch(key, check_ref_name(branch, "branch"), starting_point)
        return JSONResponse({})

    async def xet_token(self, request: Request) -> Response:
        raise HubError(
            501,
            "This local Hub server does not support Xet storage: set HF_HUB_DISABLE_XET=1 before importing "
            "huggingface_hub (or set huggingface_hub.constants.HF_HUB_DISABLE_XET = True)",
        )
