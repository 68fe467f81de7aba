"""Push a canonical reflow checkpoint to the Hub (one commit, with its model card) and pull one back,
refusing checkpoints that fail verify's structural checks (docs/verify.md). Hub I/O itself (the
repo-id rule, pinned downloads, the error mapping, the upload) is ``hub_io``."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from ..checkpoint import (
    CONFIG_NAME,
    LINEAGE_NAME,
    PLAIN,
    PLAIN_FIX,
    WEIGHTS_NAME,
    CheckpointRef,
    Lineage,
    is_plain_smolvla,
    read_policy_config,
    resolve_checkpoint,
)
from ..checks.fidelity import recorded_verdict
from ..checks.inspection import inspect_checkpoint
from ..checks.structure import publish_problems
from ..errors import UserError
from ..files import atomic_dir, sha256_file
from ..hub_io import check_repo_id, dataset_exists, snapshot, upload_folder
from ..pairs import read_pairs_meta
from ..validation import check_output_folder, ref_problem
from .card import NO_LINEAGE, UNTRAINED, lineage_claim, render_card
from .card_closed_loop import closed_loop_context, draw_closed_loop_images, read_closed_loop
from .card_plots import draw_card_images

README_NAME = "README.md"


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
        message = f"{what} --force: pushing a checkpoint that fails the {'; '.join(problems)}; {_consequences(problems)}"
        (warn or logging.getLogger(__package__).warning)(message)


# What a failed check of each group means for whoever loads the pushed checkpoint.
CONSEQUENCES = {"config": "plain LeRobot may refuse its config", "weights": "its weights may not load or act as trained",
                "processors": "its processors may not fit its weights", "lineage": "its card says its lineage is unknown"}


def _consequences(problems: list[str]) -> str:
    groups = dict.fromkeys(p.split(" ", 1)[0] for p in problems)  # "weights check (...): ..." -> "weights"
    return "; ".join(CONSEQUENCES.get(g, f"the {g} check failed") for g in groups)


def _validate_refs(branch: str | None, tag: str | None, action: str) -> None:
    for what, name in (("--branch", branch), ("--tag", tag)):
        problem = ref_problem(name) if name is not None else None
        if problem:
            raise UserError(f"{action}: {what} {name!r} is not a valid name: {problem}")


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
    license: str | None = None,
) -> str:
    """Upload a canonical checkpoint (and its rendered model card) in one commit; return the commit URL.

    verify's structural checks run first, against ``teacher`` (folder or Hub repo id) when given
    (``structural_problems``); any failure refuses the push unless ``force``. ``warn``: called with
    one line when ``force`` pushes a checkpoint that fails the checks."""
    check_repo_id(repo_id, "push")
    _validate_refs(branch, tag, "push")
    src = _pretrained_dir(folder)
    check_checkpoint(src, force=force, what="push", warn=warn, teacher=teacher, teacher_revision=teacher_revision)
    lineage = _publishable_claim(src, force)
    with tempfile.TemporaryDirectory(prefix="hub-reflow-push-") as tmp:
        stage = Path(tmp) / "checkpoint"
        shutil.copytree(src, stage, ignore=shutil.ignore_patterns("training_state", ".cache", ".tmp-*", ".old-*"))
        # The card's images are drawn here, from the lineage, not at every checkpoint of a run.
        draw_card_images(lineage, stage)
        closed_loop = read_closed_loop(stage)  # hub-reflow eval --record
        if closed_loop is not None:
            draw_closed_loop_images(closed_loop, stage)
        image_names = tuple(p.name for p in stage.glob("*.png"))
        checkpoint_card(stage, repo_id=repo_id, license=license, image_names=image_names, action="push").save(stage / README_NAME)
        return upload_folder(stage, repo_id, "model", private=private, branch=branch, tag=tag, token=token, endpoint=endpoint,
                             commit_message=commit_message or "Upload reflow student (hub-reflow)",
                             ignore_patterns=["training_state/**", ".cache/**"])


def card_lineage(src: Path, action: str = "push") -> tuple[Lineage | None, str]:
    """The lineage a checkpoint's card is drawn from (None: it has none) and what the card may claim
    (``card.lineage_claim``)."""
    try:
        lineage = Lineage.from_file(src / LINEAGE_NAME) if (src / LINEAGE_NAME).is_file() else None
    except Exception as e:  # not JSON, fields missing
        raise UserError(f"{action}: {LINEAGE_NAME} cannot be read ({type(e).__name__}); pass --force only for a complete checkpoint") from None
    weights = src / WEIGHTS_NAME
    return lineage, lineage_claim(lineage, sha256_file(weights) if weights.is_file() else None)


def checkpoint_card(folder: str | Path, *, repo_id: str | None = None, license: str | None = None,
                    image_names: tuple[str, ...] | None = None, action: str = "card"):
    """The model card of a checkpoint folder, as push writes it: "lineage unknown" without a lineage
    file; the closed-loop section when ``reflow_eval.json`` is there. ``image_names``: the pictures
    beside the card (None: those push would draw)."""
    src = _pretrained_dir(folder)
    lineage, claim = card_lineage(src, action)
    lineage = lineage or Lineage(teacher=CheckpointRef(None, None, None, ""), reflow={}, versions={})
    try:
        config = read_policy_config(src, what=action)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{action}: cannot render the model card ({type(e).__name__}); pass --force only for a complete checkpoint") from None
    return render_card(lineage, config, repo_id=repo_id, license=license, image_names=image_names, claim=claim,
                       closed_loop=closed_loop_context(read_closed_loop(src), image_names))


def _publishable_claim(src: Path, force: bool) -> Lineage:
    """The lineage the card is drawn from (an empty one without a lineage file).
    An untrained copy or a checkpoint without lineage is refused unless ``force`` (its card then says
    so); a recorded FAIL verdict is pushed with a warning (a log line: it goes with every push of it)."""
    lineage, claim = card_lineage(src)
    if claim in (UNTRAINED, NO_LINEAGE) and not force:
        what = ("it has no hub-reflow training record (an untrained copy of its teacher, or the teacher itself)"
                if claim == UNTRAINED else f"it has no {LINEAGE_NAME}")
        raise UserError(f"push: not a reflow student: {what}; train it with hub-reflow train, or pass --force to push it "
                        f"with a card that says {claim}")
    if lineage is None:
        lineage = Lineage(teacher=CheckpointRef(None, None, None, ""), reflow={}, versions={})
    verdict = recorded_verdict(lineage.evaluation)
    if verdict is not None and not verdict.passed:
        logging.getLogger(__package__).warning(
            "push: this student's recorded fidelity verdict is FAIL (%s); the card says so. Consider training longer "
            "(--steps) or checking it with hub-reflow verify --dataset before sharing it", verdict.reason)
    return lineage


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
    check_repo_id(repo_id, "push")
    _validate_refs(branch, tag, "push")
    folder = Path(folder).expanduser()
    read_pairs_meta(folder, str(folder), action="push")  # metadata readable, data sha256 as recorded
    return upload_folder(folder, repo_id, "dataset", private=private, branch=branch, tag=tag, token=token, endpoint=endpoint,
                         commit_message=commit_message or "Upload reflow teacher pairs (hub-reflow)",
                         ignore_patterns=[".cache/**", ".tmp-*", ".old-*"])


def push_policy(policy, repo_id: str, **kwargs) -> str:
    """``ReflowPolicy.push_to_hub``: save the canonical checkpoint into a temp dir, then ``push_checkpoint``."""
    check_repo_id(repo_id, "push")
    with tempfile.TemporaryDirectory(prefix="hub-reflow-save-") as tmp:
        policy.save_pretrained(tmp)
        return push_checkpoint(tmp, repo_id, **kwargs)


PULL_RECORD = Path(".cache") / "hub-reflow" / "pull.json"  # in --local-dir: which repo was pulled there


def _check_local_dir(local_dir: Path, repo_id: str) -> None:
    """New, empty, or an earlier pull of the same repo: never a folder holding something else."""
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
    """Download ``repo_id`` at ``revision`` (pinned to its commit sha; offline: from the Hugging Face
    cache) and check it; return the folder.

    With ``local_dir``, the files are downloaded into a temporary sibling and moved into place only
    when the checkpoint passes the checks: a refused checkpoint leaves ``local_dir`` as it was."""
    check_repo_id(repo_id, "pull", need_namespace=False)
    if local_dir is not None:
        local_dir = Path(local_dir).expanduser()
        _check_local_dir(local_dir, repo_id)
    if local_dir is None:
        path, _ = _pull_snapshot(repo_id, revision, token=token, endpoint=endpoint)
        _check_pulled(path, f"the download is left in the Hugging Face cache at {path}")
        return path
    with atomic_dir(local_dir) as stage:
        _, sha = _pull_snapshot(repo_id, revision, token=token, endpoint=endpoint, local_dir=stage)
        _check_pulled(stage, f"nothing was written to {local_dir}")
        (stage / PULL_RECORD).parent.mkdir(parents=True, exist_ok=True)
        (stage / PULL_RECORD).write_text(json.dumps({"repo_id": repo_id, "commit": sha}))
    return local_dir


def _pull_snapshot(repo_id: str, revision: str | None, **kwargs) -> tuple[Path, str]:
    """``hub_io.snapshot`` of a model repo; a dataset repo of that name (teacher pairs) is named as such."""
    try:
        return snapshot(repo_id, revision, action="pull", need_namespace=False, **kwargs)
    except UserError as e:
        if " not found " not in str(e) or not dataset_exists(repo_id, kwargs.get("token"), kwargs.get("endpoint")):
            raise
        raise UserError(f"pull: {repo_id} is a dataset repo, not a model: teacher pairs (hub-reflow pairs) are used "
                        f"where they are, with train --pairs {repo_id}; pull downloads reflow students") from None


def _check_pulled(folder: Path, left: str) -> None:
    if is_plain_smolvla(folder):  # the rule ReflowPolicy.from_pretrained follows too
        raise UserError(f"pull: {PLAIN}; {left}; {PLAIN_FIX}")
    try:
        check_checkpoint(folder, what="pull")
    except UserError as e:
        raise UserError(f"{e}; {left}") from None
