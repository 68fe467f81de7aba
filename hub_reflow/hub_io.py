"""Hub I/O, each rule once: what a repo id is, downloads pinned to a commit (models and datasets),
the offline rule (``HF_HUB_OFFLINE`` or ``local_files_only``: the Hugging Face cache, as
huggingface_hub and LeRobot load), the mapping of every Hub failure to a one-line user error, and
the one-commit upload."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import validate_repo_id

from .errors import UserError

# What a Hub call can raise besides our own errors: HTTP answers, transport failures, offline mode.
HUB_ERRORS = (HfHubHTTPError, httpx.HTTPError, OSError)
WRITE_REFUSED = "the Hub refused the write: set HF_TOKEN to a token with write access"
# How the Hub words a write refused for the namespace rather than the token's role: "You don't have the rights
# to create a model under the namespace ..." (create) and "pass `create_pr=1` ..." (commit in another's repo).
FOREIGN_NAMESPACE_WORDS = ("under the namespace", "create_pr=1")


def repo_id_problem(text: str, need_namespace: bool = True) -> str | None:
    """The one repo-id rule: why ``text`` is not a Hub repo id (None: it is one). As huggingface_hub
    validates it (word characters, '-', '_' and '.', no leading punctuation, no '--' or '..', at most
    96 characters, at most one '/'), with a namespace (``namespace/name``) unless told otherwise."""
    try:
        validate_repo_id(text)
    except HFValidationError as e:
        return str(e).splitlines()[0].rstrip(".")[:160]
    if need_namespace and "/" not in text:
        return "no namespace"
    return None


def is_repo_id(text: str, need_namespace: bool = True) -> bool:
    return repo_id_problem(text, need_namespace) is None


def check_repo_id(repo_id: str, action: str, need_namespace: bool = True) -> None:
    """Refuse an invalid repo id, in one line, before any request is made."""
    problem = repo_id_problem(repo_id, need_namespace)
    if problem == "no namespace":
        raise UserError(f"{action}: repo id {repo_id!r} has no namespace; use namespace/name (your user or organisation "
                        f"name, e.g. you/{repo_id})")
    if problem is not None:
        raise UserError(f"{action}: {repo_id!r} is not a valid Hub repo id ({problem}); use namespace/name")


def redact(msg: str, token: str | None) -> str:
    for secret in (token, os.environ.get("HF_TOKEN")):
        if secret:
            msg = msg.replace(secret, "***")
    return msg


def hub_error(e: Exception, repo_id: str, action: str, token: str | None = None, revision: str | None = None) -> UserError:
    """The one mapping of a Hub failure to a one-line user error (never a token in it)."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, RevisionNotFoundError):
        which = f": {revision!r}" if revision else ""
        msg = f"{action}: revision not found in {repo_id}{which}; pass a branch, tag or commit sha that exists"
    elif status == 403 and action == "push" and any(w in _server_words(e) for w in FOREIGN_NAMESPACE_WORDS):
        msg = (f"push: no write access to namespace {repo_id.split('/')[0]!r} with this token; use a write token of "
               f"that user or organisation, or push under your own namespace (--repo-id YOU/{repo_id.split('/')[-1]})")
    elif status in (401, 403) and action == "push":
        msg = WRITE_REFUSED
    elif isinstance(e, GatedRepoError):
        msg = f"{action}: {repo_id} is gated; accept its conditions on the Hub and set HF_TOKEN"
    elif isinstance(e, RepositoryNotFoundError) or status == 404:
        msg = f"{action}: Hub repo {repo_id} not found (or private: set HF_TOKEN); check the repo id"
    elif status in (401, 403):
        msg = f"{action}: the Hub refused access to {repo_id}: set HF_TOKEN to a valid token"
    elif isinstance(e, HfHubHTTPError) and not isinstance(e, LocalEntryNotFoundError):
        said = _server_words(e)[:300] or type(e).__name__
        msg = f"{action}: the Hub refused the request for {repo_id} (HTTP {status}): {said}"
    else:  # offline mode, nothing in the cache, connection refused
        msg = f"{action}: could not reach the Hub for {repo_id} ({type(e).__name__}); check HF_ENDPOINT / network"
    return UserError(redact(msg, token))


def backbone_error(e: BaseException, name: str, action: str) -> UserError | None:
    """A failure to load a checkpoint's backbone (``vlm_model_name``, which transformers loads while
    LeRobot builds SmolVLA) as one line naming that repo; None when ``e`` is not about it."""
    chain, cause = [], e
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if not any(name in str(x) or isinstance(x, (RepositoryNotFoundError, LocalEntryNotFoundError)) for x in chain):
        return None
    where = f"its backbone {name} (vlm_model_name in config.json)"
    if constants.is_offline_mode():
        return UserError(f"{action}: {where} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; download it once "
                         "with the network on, or unset HF_HUB_OFFLINE")
    if any(isinstance(x, (RepositoryNotFoundError, GatedRepoError)) or "not a valid model identifier" in str(x) for x in chain):
        return UserError(f"{action}: {where} is not on {constants.ENDPOINT}: publish the backbone to that Hub too (the tiny "
                         "world's: hub_reflow.testing.tiny_backbone.publish_backbone), or point HF_ENDPOINT at a Hub "
                         "that holds it")
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return UserError(redact(f"{action}: {where} cannot be loaded ({type(e).__name__}: {first})", None))


def _server_words(e: Exception) -> str:
    """What the server said, on one line (the exception's first line may be an empty "Bad request:")."""
    said = (getattr(e, "server_message", None) or "").strip() or " ".join(
        line.strip() for line in str(e).splitlines() if line.strip() and not line.strip().startswith(("http", "Request ID")))
    return " ".join(said.split())


def resolve_commit(repo_id: str, revision: str | None = None, *, action: str, repo_type: str = "model",
                   token: str | bool | None = None, endpoint: str | None = None, need_namespace: bool = True) -> str:
    """The commit sha ``revision`` (a branch, tag or sha; default: main) of a Hub repo points to now."""
    check_repo_id(repo_id, action, need_namespace=need_namespace)
    api = HfApi(token=token, endpoint=endpoint)
    try:
        return (api.model_info if repo_type == "model" else api.dataset_info)(repo_id, revision=revision).sha
    except HUB_ERRORS as e:
        raise hub_error(e, repo_id, action, _secret(token), revision) from None


def is_offline(local_files_only: bool = False) -> bool:
    """The offline rule: ``local_files_only`` or ``HF_HUB_OFFLINE`` (read as huggingface_hub reads it)."""
    return bool(local_files_only) or constants.is_offline_mode()


def download(repo_id: str, commit: str, *, action: str, repo_type: str = "model", token: str | bool | None = None,
             endpoint: str | None = None, local_dir: str | Path | None = None, cache_dir: str | Path | None = None,
             force_download: bool = False) -> Path:
    """The files of ``repo_id`` at ``commit``, through the Hugging Face cache (or into ``local_dir``)."""
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=commit, local_dir=local_dir, token=token,
                                      endpoint=endpoint, cache_dir=cache_dir, force_download=force_download))
    except HUB_ERRORS as e:
        raise hub_error(e, repo_id, action, _secret(token), commit) from None


def cached_snapshot(repo_id: str, revision: str | None = None, *, action: str, repo_type: str = "model",
                    cache_dir: str | Path | None = None) -> tuple[Path, str]:
    """Offline: the cached snapshot ``revision`` (a branch, tag or sha; default main) points to in
    the Hugging Face cache, and its commit sha (the snapshot folder's name), with no request."""
    try:
        folder = Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, cache_dir=cache_dir,
                                        local_files_only=True))
    except (*HUB_ERRORS, ValueError):
        at = f" at {revision!r}" if revision else ""
        why = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "local_files_only is set"
        raise UserError(f"{action}: {repo_id}{at} is not in the Hugging Face cache and {why}; download it once with "
                        "the network on, or unset HF_HUB_OFFLINE") from None
    return folder, folder.name


def snapshot(repo_id: str, revision: str | None = None, *, action: str, repo_type: str = "model",
             token: str | bool | None = None, endpoint: str | None = None, local_dir: str | Path | None = None,
             need_namespace: bool = True, cache_dir: str | Path | None = None, force_download: bool = False,
             local_files_only: bool = False) -> tuple[Path, str]:
    """Download ``repo_id`` at ``revision`` pinned to the commit it resolves to first (a branch
    that moves during the download cannot mix two commits); return (folder, commit sha). Offline
    (``is_offline``): the cached snapshot, copied into ``local_dir`` when one is given."""
    check_repo_id(repo_id, action, need_namespace=need_namespace)
    if is_offline(local_files_only):
        folder, commit = cached_snapshot(repo_id, revision, action=action, repo_type=repo_type, cache_dir=cache_dir)
        if local_dir is None:
            return folder, commit
        shutil.copytree(folder, local_dir, dirs_exist_ok=True)  # the cache's links are followed: real files
        return Path(local_dir), commit
    commit = resolve_commit(repo_id, revision, action=action, repo_type=repo_type, token=token, endpoint=endpoint,
                            need_namespace=need_namespace)
    folder = download(repo_id, commit, action=action, repo_type=repo_type, token=token, endpoint=endpoint,
                      local_dir=local_dir, cache_dir=cache_dir, force_download=force_download)
    if local_dir is None:
        remember_ref(repo_id, repo_type, revision or "main", commit, cache_dir)
    return folder, commit


def remember_ref(repo_id: str, repo_type: str, revision: str, commit: str, cache_dir: str | Path | None = None) -> None:
    """Record in the cache which commit ``revision`` resolved to (``refs/<revision>``, the cache
    layout huggingface_hub reads offline): a download pinned to the sha writes no ref itself."""
    if revision == commit:
        return
    repo = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    ref = repo / "refs" / revision
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text() != commit:
            ref.write_text(commit)
    except OSError:  # a read-only cache: offline use then needs the sha
        pass


def _secret(token: str | bool | None) -> str | None:
    return token if isinstance(token, str) else None


def dataset_commit(repo_id: str, revision: str | None = None) -> str | None:
    """The Hub commit a dataset revision resolves to; None when the Hub cannot tell (offline)."""
    try:
        return HfApi().dataset_info(repo_id, revision=revision).sha
    except (*HUB_ERRORS, ValueError):  # offline, or not a Hub id: the commit is unknown, not an error
        return None


def dataset_exists(repo_id: str, token: str | None = None, endpoint: str | None = None) -> bool:
    """Whether a dataset repo of that id is visible (False when the Hub cannot tell)."""
    try:
        return HfApi(token=token, endpoint=endpoint).repo_exists(repo_id, repo_type="dataset")
    except (*HUB_ERRORS, ValueError):
        return False


def upload_folder(folder: Path, repo_id: str, repo_type: str, *, commit_message: str, ignore_patterns: list[str],
                  private: bool = False, branch: str | None = None, tag: str | None = None, token: str | None = None,
                  endpoint: str | None = None) -> str:
    """Create the repo (and branch) if needed, upload ``folder`` in one commit, tag it; the commit URL.
    A tag that already exists is refused before anything is changed on the Hub."""
    check_repo_id(repo_id, "push")
    api = HfApi(token=token, endpoint=endpoint)
    try:
        if tag:
            refuse_existing_tag(api, repo_id, repo_type, tag)
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if branch:
            api.create_branch(repo_id, repo_type=repo_type, branch=branch, exist_ok=True)
        info = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type=repo_type, revision=branch,
                                 commit_message=commit_message, ignore_patterns=ignore_patterns)
        if tag:
            api.create_tag(repo_id, repo_type=repo_type, tag=tag, revision=info.oid, exist_ok=False)
    except HUB_ERRORS as e:
        raise hub_error(e, repo_id, "push", token) from None
    return str(info.commit_url)


def refuse_existing_tag(api: HfApi, repo_id: str, repo_type: str, tag: str) -> None:
    try:
        refs = api.list_repo_refs(repo_id, repo_type=repo_type)
    except RepositoryNotFoundError:
        return  # a new repo has no tags
    existing = {t.name: t.target_commit for t in refs.tags}
    if tag in existing:
        raise UserError(f"push: tag {tag!r} already exists in {repo_id} (commit {existing[tag][:12]}); pass another --tag; "
                        "nothing was pushed")
