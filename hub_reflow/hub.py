"""Push a canonical reflow checkpoint to the Hub (one commit, with its model card) and pull one back,
refusing checkpoints that LeRobot could not load as a plain SmolVLA policy."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .checkpoint import CONFIG_NAME, LINEAGE_NAME, CheckpointRef, Lineage, read_policy_config, resolve_checkpoint
from .errors import UserError
from .inspection import inspect_checkpoint
from .structure import publish_problems

README_NAME = "README.md"
_WRITE_REFUSED = "the Hub refused the write: set HF_TOKEN to a token with write access"


def _pretrained_dir(folder: str | Path) -> Path:
    """A ``pretrained_model/`` folder, or its parent (a ``checkpoints/<step>/`` folder)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{folder} is not a checkpoint folder; pass a pretrained_model/ folder or its checkpoints/<step>/ parent")
    if (folder / CONFIG_NAME).is_file():
        return folder
    if (folder / "pretrained_model" / CONFIG_NAME).is_file():
        return folder / "pretrained_model"
    raise UserError(f"no {CONFIG_NAME} in {folder} nor in its pretrained_model/; pass a reflow checkpoint folder")


def structural_problems(folder: Path, teacher: Path | None = None, teacher_ref: CheckpointRef | None = None,
                        action: str = "push") -> list[str]:
    """What makes ``folder`` unfit to publish (empty list: fit): every structural check verify
    fails on it (docs/verify.md) and a missing lineage file (the model card is drawn from it).

    With ``teacher`` every check runs against it. Without one, the checks that need a reference
    (key set, dtypes, VLM, config difference, statistics) are skipped: push needs no backbone and no
    network beyond the upload."""
    return publish_problems(inspect_checkpoint(Path(folder), teacher, teacher_ref, architecture=False, action=action))


def check_checkpoint(folder: Path, *, force: bool = False, what: str = "checkpoint", warn=None, teacher: str | None = None,
                     teacher_revision: str | None = None) -> None:
    t = resolve_checkpoint(teacher, teacher_revision, what="teacher") if teacher else None
    problems = structural_problems(folder, t.path if t else None, t.ref if t else None, action=what)
    if problems and not force:
        hint = " (pass --force to push anyway)" if what == "push" else ""
        raise UserError(f"{what}: the checkpoint fails the {'; '.join(problems)}{hint}")
    if problems:
        message = (f"{what} --force: pushing a checkpoint that fails the {'; '.join(problems)}; plain LeRobot may not "
                   "load it")
        (warn or logging.getLogger(__name__).warning)(message)


def _redact(msg: str, token: str | None) -> str:
    for secret in (token, os.environ.get("HF_TOKEN")):
        if secret:
            msg = msg.replace(secret, "***")
    return msg


def _hub_error(e: Exception, repo_id: str, action: str, token: str | None) -> UserError:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, RevisionNotFoundError):
        msg = f"{action}: revision not found in {repo_id}; pass a branch, tag or commit sha that exists"
    elif status in (401, 403) and action == "push":
        msg = _WRITE_REFUSED
    elif isinstance(e, GatedRepoError):
        msg = f"{action}: {repo_id} is gated; accept its conditions on the Hub and set HF_TOKEN"
    elif isinstance(e, RepositoryNotFoundError) or status == 404:
        msg = f"{action}: Hub repo {repo_id} not found (or private: set HF_TOKEN); check the repo id"
    elif status in (401, 403):
        msg = f"{action}: the Hub refused access to {repo_id}: set HF_TOKEN to a valid token"
    elif isinstance(e, HfHubHTTPError):
        # The server's own words (the exception's first line may be an empty "Bad request:").
        said = (getattr(e, "server_message", None) or "").strip() or " ".join(
            line.strip() for line in str(e).splitlines() if line.strip() and not line.strip().startswith(("http", "Request ID")))
        said = " ".join(said.split())[:300] or type(e).__name__
        msg = f"{action}: the Hub refused the request for {repo_id} (HTTP {status}): {said}"
    else:
        msg = f"{action}: could not reach the Hub for {repo_id} ({type(e).__name__}); check HF_ENDPOINT / network"
    return UserError(_redact(msg, token))


def _validate_repo_id(repo_id: str, action: str, need_namespace: bool = False) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"{action}: invalid repo id {repo_id!r} ({str(e).splitlines()[0][:200]}); use namespace/name") from None
    if need_namespace and "/" not in repo_id:
        # The Hub would put it under the token's user, or answer "not found": name the namespace.
        raise UserError(f"{action}: repo id {repo_id!r} has no namespace; use namespace/name (your user or "
                        f"organisation name, e.g. you/{repo_id})")


def _validate_refs(branch: str | None, tag: str | None, action: str) -> None:
    from .validation import ref_problem

    for what, name in (("--branch", branch), ("--tag", tag)):
        problem = ref_problem(name) if name is not None else None
        if problem:
            raise UserError(f"{action}: {what} {name!r} is not a valid name: {problem}")


def _hub_errors():
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    return (HfHubHTTPError, httpx.HTTPError, OSError)


def push_checkpoint(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    branch: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    tag: str | None = None,
    force: bool = False,
    endpoint: str | None = None,
    warn=None,
    teacher: str | None = None,
    teacher_revision: str | None = None,
) -> str:
    """Upload a canonical checkpoint (and its rendered model card) in one commit; return the commit URL.

    verify's structural checks run first, against ``teacher`` (folder or Hub repo id) when given
    (``structural_problems``); any failure refuses the push unless ``force``. ``warn``: called with
    one line when ``force`` pushes a checkpoint that fails the checks."""
    _validate_repo_id(repo_id, "push", need_namespace=True)
    _validate_refs(branch, tag, "push")
    src = _pretrained_dir(folder)
    check_checkpoint(src, force=force, what="push", warn=warn, teacher=teacher, teacher_revision=teacher_revision)

    from huggingface_hub import HfApi

    from .card import render_card
    from .plots import draw_card_images

    api = HfApi(token=token, endpoint=endpoint)
    with tempfile.TemporaryDirectory(prefix="hub-reflow-push-") as tmp:
        stage = Path(tmp) / "checkpoint"
        shutil.copytree(src, stage, ignore=shutil.ignore_patterns("training_state", ".cache", ".tmp-*", ".old-*"))
        try:
            lineage = Lineage.from_file(stage / LINEAGE_NAME)
            config = read_policy_config(stage, what="push")
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"push: cannot render the model card ({type(e).__name__}); pass --force only for a complete checkpoint") from None
        # The card's images are drawn here, from the lineage, not at every checkpoint of a run.
        draw_card_images(lineage, stage)
        image_names = tuple(p.name for p in stage.glob("*.png"))
        render_card(lineage, config, repo_id=repo_id, image_names=image_names).save(stage / README_NAME)
        return _upload(api, stage, repo_id, "model", private=private, branch=branch, tag=tag, token=token,
                       commit_message=commit_message or "Upload reflow student (hub-reflow)",
                       ignore_patterns=["training_state/**", ".cache/**"])


def _upload(api, folder: Path, repo_id: str, repo_type: str, *, private: bool, branch: str | None, tag: str | None,
            token: str | None, commit_message: str, ignore_patterns: list[str]) -> str:
    """Create the repo (and branch) if needed, upload ``folder`` in one commit, tag it; the commit URL.
    A tag that already exists is refused before anything is changed on the Hub."""
    try:
        if tag:
            _refuse_existing_tag(api, repo_id, repo_type, tag)
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if branch:
            api.create_branch(repo_id, repo_type=repo_type, branch=branch, exist_ok=True)
        info = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type=repo_type, revision=branch,
                                 commit_message=commit_message, ignore_patterns=ignore_patterns)
        if tag:
            api.create_tag(repo_id, repo_type=repo_type, tag=tag, revision=info.oid, exist_ok=False)
    except _hub_errors() as e:
        raise _hub_error(e, repo_id, "push", token) from None
    return str(info.commit_url)


def _refuse_existing_tag(api, repo_id: str, repo_type: str, tag: str) -> None:
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        refs = api.list_repo_refs(repo_id, repo_type=repo_type)
    except RepositoryNotFoundError:
        return  # a new repo has no tags
    existing = {t.name: t.target_commit for t in refs.tags}
    if tag in existing:
        raise UserError(f"push: tag {tag!r} already exists in {repo_id} (commit {existing[tag][:12]}); pass another --tag; "
                        "nothing was pushed")


def push_pairs(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    branch: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    tag: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload a teacher pairs folder (``hub-reflow pairs``) as a Hub dataset repo in one commit,
    after checking its data files against its metadata; return the commit URL."""
    from huggingface_hub import HfApi

    from .pairs import read_pairs_meta

    _validate_repo_id(repo_id, "push", need_namespace=True)
    _validate_refs(branch, tag, "push")
    folder = Path(folder).expanduser()
    read_pairs_meta(folder, str(folder), action="push")  # metadata readable, data sha256 as recorded
    return _upload(HfApi(token=token, endpoint=endpoint), folder, repo_id, "dataset", private=private, branch=branch,
                   tag=tag, token=token, commit_message=commit_message or "Upload reflow teacher pairs (hub-reflow)",
                   ignore_patterns=[".cache/**", ".tmp-*", ".old-*"])


def push_policy(policy, repo_id: str, **kwargs) -> str:
    """``ReflowPolicy.push_to_hub``: save the canonical checkpoint into a temp dir, then ``push_checkpoint``."""
    _validate_repo_id(repo_id, "push", need_namespace=True)
    with tempfile.TemporaryDirectory(prefix="hub-reflow-save-") as tmp:
        policy.save_pretrained(tmp)
        return push_checkpoint(tmp, repo_id, **kwargs)


PULL_RECORD = Path(".cache") / "hub-reflow" / "pull.json"  # in --local-dir: which repo was pulled there


def _check_local_dir(local_dir: Path, repo_id: str) -> None:
    """New, empty, or an earlier pull of the same repo: never a folder holding something else."""
    from .validation import check_output_folder

    if local_dir.is_dir() and any(local_dir.iterdir()):
        record = local_dir / PULL_RECORD
        try:
            pulled = json.loads(record.read_text()).get("repo_id") if record.is_file() else None
        except (OSError, ValueError, AttributeError):
            pulled = None
        if pulled != repo_id:
            was = f"a pull of {pulled}" if pulled else "files that are not a pull of it"
            raise UserError(f"pull: --local-dir {local_dir} already holds {was}; pass a new or empty folder "
                            "(nothing was downloaded)")
    check_output_folder(local_dir, "--local-dir", may_hold_files=True)


def pull_checkpoint(
    repo_id: str,
    *,
    revision: str | None = None,
    local_dir: str | Path | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download ``repo_id`` at ``revision`` (pinned to its commit sha) and check it; return the folder.

    With ``local_dir``, the files are downloaded into a temporary sibling and moved into place only
    when the checkpoint passes the checks: a refused checkpoint leaves ``local_dir`` as it was."""
    from huggingface_hub import HfApi, snapshot_download

    from .checkpoint import atomic_dir

    _validate_repo_id(repo_id, "pull")
    if local_dir is not None:
        local_dir = Path(local_dir).expanduser()
        _check_local_dir(local_dir, repo_id)
    try:
        sha = HfApi(token=token, endpoint=endpoint).model_info(repo_id, revision=revision).sha
    except _hub_errors() as e:
        raise _hub_error(e, repo_id, "pull", token) from None
    if local_dir is None:
        try:
            path = Path(snapshot_download(repo_id, revision=sha, token=token, endpoint=endpoint))
        except _hub_errors() as e:
            raise _hub_error(e, repo_id, "pull", token) from None
        _check_pulled(path, f"the download is left in the Hugging Face cache at {path}")
        return path
    with atomic_dir(local_dir) as stage:
        try:
            snapshot_download(repo_id, revision=sha, local_dir=stage, token=token, endpoint=endpoint)
        except _hub_errors() as e:
            raise _hub_error(e, repo_id, "pull", token) from None
        _check_pulled(stage, f"nothing was written to {local_dir}")
        (stage / PULL_RECORD).parent.mkdir(parents=True, exist_ok=True)
        (stage / PULL_RECORD).write_text(json.dumps({"repo_id": repo_id, "commit": sha}))
        stage.chmod(0o755)  # atomic_dir's temporary folder is private; a downloaded checkpoint is not
    return local_dir


def _check_pulled(folder: Path, left: str) -> None:
    try:
        check_checkpoint(folder, what="pull")
    except UserError as e:
        raise UserError(f"{e}; {left}") from None
