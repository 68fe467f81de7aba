"""Repos on disk: content-addressed blobs, refs, immutable commit files, LFS markers (layout: see the
package docstring). Every mutation is all or nothing."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .protocol import (
    DEFAULT_GITATTRIBUTES,
    LFS_SIZE_THRESHOLD,
    SHORT_COMMIT_RE,
    AddFile,
    AddLfsFile,
    CommitOp,
    DeleteFile,
    DeleteFolder,
    HubError,
    RepoKey,
    atomic_write_json,
    bad_request,
    entry_not_found,
    git_blob_oid,
    lfs_patterns,
    lfs_pointer,
    now_iso,
    parse_front_matter,
    repo_not_found,
    revision_not_found,
)


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
            created = now_iso()
            content = DEFAULT_GITATTRIBUTES.encode()
            files = {".gitattributes": self._file_entry(content, self.put_blob(content))}
            sha = self._write_commit(key, parents=[], title="initial commit", message="", author=author, files=files)
            atomic_write_json(repo_dir / "refs.json", {"heads": {"main": sha}, "tags": {}}, self.tmp_dir)
            meta = {"id": key.repo_id, "type": key.repo_type, "private": bool(private), "createdAt": created}
            atomic_write_json(repo_dir / "repo.json", meta, self.tmp_dir)  # last: the repo now exists
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
            atomic_write_json(self.repo_dir(key) / "repo.json", meta, self.tmp_dir)

    # -- refs ----------------------------------------------------------------------------------------------

    def refs(self, key: RepoKey) -> dict[str, Any]:
        self.meta(key)  # raises RepoNotFound
        return json.loads((self.repo_dir(key) / "refs.json").read_text())

    def _write_refs(self, key: RepoKey, refs: dict[str, Any]) -> None:
        atomic_write_json(self.repo_dir(key) / "refs.json", refs, self.tmp_dir)

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
        if SHORT_COMMIT_RE.fullmatch(name):
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
            refs["tags"][tag] = {"commit": sha, "message": message or "", "date": now_iso()}
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
        commit = {"parents": parents, "title": title, "message": message, "authors": [author], "date": now_iso(),
                  "files": files, "nonce": secrets.token_hex(8)}
        # 40 hex chars like a git sha; the nonce keeps two identical commits made in the same millisecond apart.
        sha = hashlib.sha1(json.dumps(commit, sort_keys=True).encode()).hexdigest()
        commit["id"] = sha
        atomic_write_json(self.repo_dir(key) / "commits" / f"{sha}.json", commit, self.tmp_dir)
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
