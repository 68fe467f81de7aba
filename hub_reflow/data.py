"""The dataset a teacher was trained on, through LeRobot's own loader: its features checked against
the teacher's inputs, the last episodes held out, the Hub commit recorded."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .errors import UserError
from .hub_io import dataset_commit

logger = logging.getLogger(__name__)


def check_dataset_features(teacher_cfg, ds_meta, dataset_id: str) -> None:
    """The dataset must provide every input the teacher reads, with the same shapes, and its action."""
    from lerobot.utils.feature_utils import dataset_to_policy_features

    available = dataset_to_policy_features(ds_meta.features)
    wanted = dict(teacher_cfg.input_features)
    wanted.update(teacher_cfg.output_features)
    for key, feat in wanted.items():
        if key.startswith("observation.images.empty_camera_"):
            continue  # SmolVLA fills these itself
        if key not in available:
            raise UserError(
                f"dataset {dataset_id} has no feature {key!r}, which the teacher reads "
                f"(dataset has: {', '.join(sorted(available))}); pass the dataset the teacher was trained on"
            )
        if tuple(available[key].shape) != tuple(feat.shape):
            raise UserError(
                f"dataset {dataset_id} feature {key!r} has shape {tuple(available[key].shape)} but the teacher "
                f"expects {tuple(feat.shape)}; pass the dataset the teacher was trained on"
            )


def observation_delta_timestamps(teacher_cfg, meta) -> dict[str, list] | None:
    """The teacher's delta timestamps for what reflow reads: observation history only.

    The student's targets come from the teacher, never from the dataset's actions, so the action
    chunk (``chunk_size`` frames per sample for SmolVLA) and rewards are not read; each sample then
    holds the current frame's action only. An observation delta of ``[0]`` (SmolVLA's: the current
    frame only) is dropped too: LeRobot's delta query returns the same frame with a leading axis of
    1 (which SmolVLA's ``prepare_images`` / ``prepare_state`` take off again) at several times the
    cost of a plain read. Any other observation history is kept as the teacher was trained with it."""
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.utils.constants import OBS_PREFIX

    deltas = resolve_delta_timestamps(teacher_cfg, meta) or {}
    kept = {k: v for k, v in deltas.items() if k.startswith(OBS_PREFIX) and list(v) != [0.0]}
    return kept or None


def collate_for(dataset):
    """How a batch of ``dataset``'s frames is stacked: LeRobot's collate where it has language
    columns (as ``lerobot-train`` does), else torch's default."""
    from lerobot.utils.collate import lerobot_collate_fn
    from torch.utils.data import default_collate

    return lerobot_collate_fn if dataset.meta.has_language_columns else default_collate


def load_dataset(teacher_cfg, repo_id: str, root: Path | None, revision: str | None, holdout: int,
                 verified: bool | None = None):
    """LeRobot's dataset with the teacher's observation delta timestamps (no action chunks: see
    ``observation_delta_timestamps``); the last ``holdout`` episodes left out. The record names the
    dataset by ``repo_id`` only where that is checked: downloaded from the Hub, or a folder that
    names itself so (``dataset_root_repo_id``); any other folder is recorded as a local folder
    (``local_name``: ``--dataset`` as given, not verified), which no card links. ``verified``: whether
    ``root`` names itself ``repo_id``, where ``check_dataset_root`` already said (None: checked here)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    if root is None:
        verified = True
    elif verified is None:  # a folder that is not a LeRobotDataset: never fall back to the Hub
        verified = check_dataset_root(Path(root), repo_id) is not None
    if not verified and os.environ.get("RANK", "0") == "0":  # once per run, not per process
        logger.warning("--dataset-root %s does not say which Hub dataset it is (no dataset card naming it, not a "
                       "Hugging Face or LeRobot cache folder): recorded as %s; the model card links no dataset",
                       root, dataset_label({"local_name": repo_id}))
    try:
        meta = LeRobotDatasetMetadata(repo_id, root=root, revision=revision)
    except Exception as e:  # missing files, not a LeRobotDataset, no network
        raise UserError(f"dataset {repo_id} cannot be opened ({type(e).__name__}: {str(e).splitlines()[0][:200]}); check --dataset / --dataset-root") from None
    check_dataset_features(teacher_cfg, meta, repo_id)
    n = meta.total_episodes
    if holdout >= n:
        raise UserError(f"--holdout-episodes {holdout} leaves no training episode (the dataset has {n})")
    train_eps = list(range(n - holdout))
    dataset = LeRobotDataset(
        repo_id, root=root, revision=revision, episodes=train_eps if holdout else None,
        delta_timestamps=observation_delta_timestamps(teacher_cfg, meta),
    )
    info = {
        "repo_id": repo_id if verified else None,
        "commit": None if root is not None else dataset_commit(repo_id, revision),  # None: a local folder
        "num_episodes": n,
        "train_episodes": [0, n - holdout],  # half-open range
        "holdout_episodes": [n - holdout, n],
        **({} if verified else {"local_name": repo_id}),
    }
    return dataset, info


def dataset_label(record: dict) -> str:
    """How a lineage or pairs record's dataset is shown: its repo id where checked, else the local
    folder's name as given, said to be unverified."""
    if record.get("repo_id"):
        return record["repo_id"]
    if record.get("local_name"):
        return f"a local dataset folder (named {record['local_name']}, not verified)"
    return "n/a"


def check_dataset_root(root: Path, dataset: str) -> str | None:
    """A LeRobotDataset folder whose own repo id, where it records one, is ``dataset``; that id (None:
    the folder does not say)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"--dataset-root {root} does not exist; pass the folder of the LeRobotDataset")
    if not root.is_dir():
        raise UserError(f"--dataset-root {root} is a file; pass the folder of the LeRobotDataset")
    if not (root / "meta" / "info.json").is_file():
        what = "is empty" if not any(root.iterdir()) else "has no meta/info.json"
        raise UserError(f"--dataset-root {root} {what}: it is not a LeRobotDataset folder; pass the dataset's own folder "
                        "(the one holding meta/ and data/), or leave --dataset-root out to download --dataset from the Hub")
    own = dataset_root_repo_id(root)
    if own is not None and own != dataset:
        raise UserError(f"--dataset {dataset} does not match --dataset-root {root}, which holds {own} ({_own_source(root)}); "
                        f"pass --dataset {own}, or the folder of {dataset}")
    return own


_CARD_ID_RE = re.compile(r"visualize_dataset\?path=([A-Za-z0-9][\w.\-]*/[\w.\-]+)")
_CACHE_DIR_RE = re.compile(r"^datasets--([^-][\w.\-]*?)--([\w.\-]+)$")


def _lerobot_home() -> Path:
    home = os.environ.get("HF_LEROBOT_HOME")
    if home:
        return Path(home).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(hf_home).expanduser() / "lerobot"


def _own_ids(root: Path) -> list[tuple[str, str]]:
    """(repo id, where it was read) from what a dataset folder says about itself."""
    found = []
    card = root / "README.md"
    if card.is_file():
        try:
            m = _CARD_ID_RE.search(card.read_text(errors="replace"))
        except OSError:
            m = None
        if m:
            found.append((m.group(1), "its dataset card"))
    resolved = root.resolve()
    for part in resolved.parts:  # the Hugging Face cache: .../datasets--ns--name/snapshots/<sha>
        m = _CACHE_DIR_RE.match(part)
        if m and resolved.parent.name == "snapshots":
            found.append((f"{m.group(1)}/{m.group(2)}", "its Hugging Face cache folder"))
    try:
        rel = resolved.relative_to(_lerobot_home().resolve())
        if len(rel.parts) == 2:
            found.append(("/".join(rel.parts), "its place in the LeRobot cache"))
    except ValueError:
        pass
    return found


def dataset_root_repo_id(root: Path) -> str | None:
    """The repo id a dataset folder records for itself (LeRobot's dataset card, the Hugging Face
    cache layout, or LeRobot's own cache layout ``HF_LEROBOT_HOME/ns/name``), or None."""
    ids = _own_ids(Path(root))
    return ids[0][0] if ids else None


def _own_source(root: Path) -> str:
    ids = _own_ids(Path(root))
    return f"from {ids[0][1]}" if ids else ""
