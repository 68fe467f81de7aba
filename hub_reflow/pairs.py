"""Cached teacher pairs: run the teacher once over the training frames, store ``(noise, target)``
per frame and noise draw as a Hugging Face ``datasets`` dataset, and read them back for training.

A pairs folder (pushable as a Hub *dataset* repo, loadable with ``datasets.load_dataset``)::

    README.md                          dataset card: teacher (repo id, commit, weights sha256),
                                       dataset and commit, teacher_steps, per_frame, seed
    reflow_pairs.json                  the same, machine-readable, plus the data files' sha256
    data/train-00000-of-00001.parquet  one row per (frame, draw)

Columns: ``frame_index`` (the LeRobotDataset's absolute ``index``), ``episode_index``, ``draw``
(0..per_frame-1), ``noise`` (float32, (chunk_size, max_action_dim): the exact ``z`` the teacher
integrated) and ``target`` (float32, (chunk_size, max_action_dim): the teacher's ``teacher_steps``
Euler output for ``z`` in normalised action space, padded like ``smolvla.pad_to_data``: real action
dims kept, padded dims 0). That is exactly the ``(z, a)`` pair ``ReflowPolicy.make_pairs`` makes
online, so training consumes a row without any transformation.

Noise comes from one CPU ``torch.Generator`` seeded with ``seed``, drawn batch by batch in frame
order, so a pairs run is reproducible on any device; the noise itself is stored, so training never
depends on how it was drawn.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_smolvla, read_policy_config, resolve_checkpoint
from .data import dataset_label, load_dataset
from .devices import resolve_device
from .errors import UserError
from .fastpath import TeacherSampler
from .files import atomic_dir, package_versions
from .finite import require_finite_teacher
from .hub_io import is_repo_id, snapshot
from .safeio import dumps
from .smolvla import noise_shape, policy_inputs, teacher_pairs
from .validation import MAX_TEACHER_STEPS, check_output_folder

logger = logging.getLogger(__name__)

PAIRS_META_NAME = "reflow_pairs.json"
DATA_FILE = "data/train-00000-of-00001.parquet"
NOISE_KEY = "reflow.noise"  # keys of a pair in a training batch (popped before the preprocessor)
TARGET_KEY = "reflow.target"
FORMAT_VERSION = 1


@dataclass
class PairsArgs:
    teacher: str
    dataset: str
    output: Path
    teacher_revision: str | None = None
    dataset_root: Path | None = None
    dataset_revision: str | None = None
    per_frame: int = 1
    teacher_steps: int = 10
    holdout_episodes: int = 0
    seed: int = 1000
    batch_size: int = 32
    device: str = "auto"
    progress: bool = True
    cuda_graphs: bool = True  # teacher sampling through CUDA graphs on CUDA (fastpath.py)


def data_sha256(folder: Path) -> str:
    """sha256 over the data files (sorted by path, each path and its bytes): the pairs' fingerprint."""
    h = hashlib.sha256()
    for f in sorted((folder / "data").glob("*.parquet")):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def make_pairs(args: PairsArgs) -> Path:
    """Run the teacher over the training frames; write the pairs folder; return it."""
    for flag, value in (("--per-frame", args.per_frame), ("--teacher-steps", args.teacher_steps),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.holdout_episodes < 0:
        raise UserError(f"--holdout-episodes must be >= 0, got {args.holdout_episodes}")
    if args.teacher_steps > MAX_TEACHER_STEPS:
        raise UserError(f"--teacher-steps must be <= {MAX_TEACHER_STEPS}, got {args.teacher_steps}")
    out = check_output_folder(Path(args.output), "--output")  # not a file, empty, writable
    device = resolve_device(args.device)

    resolved = resolve_checkpoint(args.teacher, args.teacher_revision, what="teacher")
    cfg = read_policy_config(resolved.path)
    dataset, ds_info = load_dataset(cfg, args.dataset, args.dataset_root, args.dataset_revision, args.holdout_episodes)
    teacher = load_smolvla(resolved.path, device=device, what="teacher")
    require_finite_teacher(teacher)
    teacher.requires_grad_(False)
    teacher.eval()
    sampler = TeacherSampler(teacher, args.teacher_steps, cuda_graphs=args.cuda_graphs)
    table = _teacher_rows(args, cfg, teacher, sampler, resolved, dataset, device)
    with atomic_dir(out) as tmp:
        (tmp / "data").mkdir()
        table.to_parquet(str(tmp / DATA_FILE))
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "hub-reflow teacher pairs",
            "teacher": {"repo_id": resolved.ref.repo_id, "commit": resolved.ref.commit,
                        "revision": resolved.ref.revision, "weights_sha256": resolved.ref.weights_sha256},
            "dataset": ds_info,
            "teacher_steps": args.teacher_steps,
            "per_frame": args.per_frame,
            "seed": args.seed,
            "noise": "float32 N(0, I), one CPU torch.Generator seeded with `seed`, drawn per batch in frame order",
            "target": "teacher's Euler output in normalised action space, real dims kept, padded dims 0 (pad_to_data)",
            "num_rows": len(table),
            "num_frames": len(dataset),
            "chunk_size": cfg.chunk_size,
            "max_action_dim": cfg.max_action_dim,
            "action_dim": cfg.action_feature.shape[0],
            "batch_size": args.batch_size,
            "device": device,
            "cuda_graphs": args.cuda_graphs,
            "teacher_sampling": sampler.mode,
            "data_sha256": data_sha256(tmp),
            "versions": package_versions(),
        }
        (tmp / PAIRS_META_NAME).write_text(dumps(meta, indent=2, sort_keys=True))
        pairs_card(meta).save(tmp / "README.md")
    return out


def _teacher_rows(args: PairsArgs, cfg, teacher, sampler, resolved, dataset, device: str):
    """One row per (frame, draw), in frame order, as a ``datasets.Dataset``: the teacher run over
    every training frame through its own preprocessor (the code path online training takes)."""
    import datasets
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.utils.collate import lerobot_collate_fn
    from tqdm.auto import tqdm

    preprocessor, _ = make_pre_post_processors(
        cfg, pretrained_path=str(resolved.path), preprocessor_overrides={"device_processor": {"device": device}})
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=False, drop_last=False,
        collate_fn=lerobot_collate_fn if dataset.meta.has_language_columns else None)
    gen = torch.Generator().manual_seed(args.seed)
    real_dim = cfg.action_feature.shape[0]
    cols: dict[str, list] = {"frame_index": [], "episode_index": [], "draw": [], "noise": [], "target": []}
    bar = tqdm(total=len(dataset) * args.per_frame, desc="teacher pairs", disable=None if args.progress else True)
    for raw in loader:
        frame_index, episode_index = raw["index"].tolist(), raw["episode_index"].tolist()
        inputs = policy_inputs(teacher, preprocessor(raw))
        per_draw = []
        for _ in range(args.per_frame):
            z = torch.randn(noise_shape(teacher, inputs.batch_size), generator=gen, dtype=torch.float32)
            noise, target = teacher_pairs(teacher, inputs, z.to(device), args.teacher_steps, real_dim, sampler=sampler)
            per_draw.append((noise.cpu(), target.cpu()))
            bar.update(inputs.batch_size)
        for i in range(inputs.batch_size):  # rows ordered by (frame, draw)
            for d, (noise, target) in enumerate(per_draw):
                cols["frame_index"].append(frame_index[i])
                cols["episode_index"].append(episode_index[i])
                cols["draw"].append(d)
                cols["noise"].append(noise[i].numpy())
                cols["target"].append(target[i].numpy())
    bar.close()
    shape = (cfg.chunk_size, cfg.max_action_dim)
    features = datasets.Features({
        "frame_index": datasets.Value("int64"),
        "episode_index": datasets.Value("int64"),
        "draw": datasets.Value("int32"),
        "noise": datasets.Array2D(shape=shape, dtype="float32"),
        "target": datasets.Array2D(shape=shape, dtype="float32"),
    })
    return datasets.Dataset.from_dict(cols, features=features)


def pairs_card(meta: dict):
    """The dataset card: what made these pairs, and how to load them."""
    from huggingface_hub import DatasetCard, DatasetCardData

    t, d = meta["teacher"], meta["dataset"]
    data = DatasetCardData(
        tags=["lerobot", "smolvla", "reflow", "rectified-flow", "robotics"],
        task_categories=["robotics"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
    )
    teacher_name = t["repo_id"] or "a local checkpoint folder"
    lines = [
        "---", data.to_yaml(), "---", "",
        "# Reflow teacher pairs", "",
        f"Noise / target pairs made by hub-reflow (`hub-reflow pairs`) for reflow training of a SmolVLA student: "
        f"for each training frame of the dataset and each of `per_frame` noise draws `z`, the teacher's "
        f"{meta['teacher_steps']}-step Euler output for `z`.", "",
        "| | |", "|---|---|",
        f"| teacher | {teacher_name} |",
        f"| teacher commit | {t['commit'] or 'n/a (local folder)'} |",
        f"| teacher weights sha256 | `{t['weights_sha256']}` |",
        f"| dataset | {dataset_label(d)} |",
        f"| dataset commit | {d.get('commit') or 'n/a (local folder)'} |",
        f"| training episodes | {d['train_episodes'][0]}..{d['train_episodes'][1] - 1} (held out: {d['holdout_episodes'][1] - d['holdout_episodes'][0]}) |",
        f"| teacher_steps | {meta['teacher_steps']} |",
        f"| per_frame | {meta['per_frame']} |",
        f"| seed | {meta['seed']} |",
        f"| rows | {meta['num_rows']} ({meta['num_frames']} frames) |",
        f"| data sha256 | `{meta['data_sha256']}` |", "",
        "## Columns", "",
        "- `frame_index`: the LeRobotDataset's absolute frame `index`; `episode_index`; `draw` (0..per_frame-1);",
        f"- `noise`: float32 ({meta['chunk_size']}, {meta['max_action_dim']}), the exact `z` the teacher integrated;",
        f"- `target`: float32 ({meta['chunk_size']}, {meta['max_action_dim']}), {meta['target']}.", "",
        "Train from them with `hub-reflow train --pairs <this repo or folder> ...` (same teacher and dataset; "
        "hub-reflow refuses others). `reflow_pairs.json` holds the same facts, machine-readable.", "",
    ]
    return DatasetCard("\n".join(lines))


# ---- reading ------------------------------------------------------------------------------------


@dataclass
class Pairs:
    table: object  # datasets.Dataset, torch-formatted
    meta: dict
    source: dict  # {"repo_id", "commit"} for a Hub repo, {"repo_id": None} for a local folder

    def lineage_record(self) -> dict:
        return {**self.source, "data_sha256": self.meta["data_sha256"], "rows": self.meta["num_rows"],
                "per_frame": self.meta["per_frame"], "seed": self.meta["seed"],
                "teacher_steps": self.meta["teacher_steps"]}


def read_pairs_meta(folder: Path, what: str, action: str = "--pairs") -> dict:
    """The metadata of a pairs folder, its data files checked against the sha256 it records."""
    meta_file = folder / PAIRS_META_NAME
    if not meta_file.is_file():
        raise UserError(f"{action}: {what} has no {PAIRS_META_NAME}; pass a folder made by `hub-reflow pairs` (or its Hub dataset repo)")
    try:
        meta = json.loads(meta_file.read_text())
        meta["teacher"]["weights_sha256"], meta["data_sha256"], meta["dataset"]["repo_id"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{action}: {PAIRS_META_NAME} in {what} cannot be read ({type(e).__name__}); make the pairs again") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{action}: {what} has pairs format {meta.get('format_version')}, this hub-reflow reads {FORMAT_VERSION}")
    actual = data_sha256(folder)
    if actual != meta["data_sha256"]:
        raise UserError(f"{action}: the data files in {what} do not match the sha256 in {PAIRS_META_NAME} (changed or incomplete); make or download them again")
    return meta


def load_pairs(src: str, revision: str | None = None) -> Pairs:
    """Pairs from a local folder or a Hub dataset repo id (at ``revision``, pinned to its commit)."""
    import datasets

    local = Path(src).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UserError(f"--pairs: {src} is a file; pass the folder made by `hub-reflow pairs` or a Hub dataset repo id")
        folder, source = local, {"repo_id": None, "commit": None}
    else:
        if not is_repo_id(src):
            raise UserError(f"--pairs: {src} does not exist as a folder and is not a Hub dataset repo id (namespace/name)")
        folder, commit = snapshot(src, revision, action="--pairs", repo_type="dataset")
        source = {"repo_id": src, "commit": commit}
    meta = read_pairs_meta(folder, src)
    # The dataset card's `configs` point load_dataset at data/*.parquet.
    table = datasets.load_dataset(str(folder), split="train")
    if len(table) != meta["num_rows"]:
        raise UserError(f"--pairs: {src} has {len(table)} rows, its {PAIRS_META_NAME} says {meta['num_rows']}; make the pairs again")
    return Pairs(table.with_format("torch", columns=["frame_index", "noise", "target"]), meta, source)


def check_pairs(pairs: Pairs, teacher_ref, ds_info: dict, teacher_steps: int) -> None:
    """Refuse pairs that online training with these settings would not have made."""
    m = pairs.meta
    if m["teacher"]["weights_sha256"] != teacher_ref.weights_sha256:
        raise UserError(
            f"--pairs were made by a different teacher (weights sha256 {m['teacher']['weights_sha256'][:12]}..., "
            f"this teacher's is {teacher_ref.weights_sha256[:12]}...); make pairs with this teacher (hub-reflow pairs)")
    d = m["dataset"]
    if (d["repo_id"] or d.get("local_name")) != (ds_info["repo_id"] or ds_info.get("local_name")):  # the dataset's name
        raise UserError(f"--pairs were made for dataset {dataset_label(d)}, not {dataset_label(ds_info)}; pass that dataset "
                        "or make new pairs")
    if d.get("commit") and ds_info.get("commit") and d["commit"] != ds_info["commit"]:
        raise UserError(f"--pairs were made for dataset commit {d['commit']}, this dataset is at {ds_info['commit']}; "
                        "pass --dataset-revision to match or make new pairs")
    if m["teacher_steps"] != teacher_steps:
        raise UserError(f"--pairs were made with --teacher-steps {m['teacher_steps']}, not {teacher_steps}; "
                        "pass the same --teacher-steps or make new pairs")
    if d["train_episodes"] != ds_info["train_episodes"]:
        h = d["holdout_episodes"][1] - d["holdout_episodes"][0]
        raise UserError(f"--pairs were made with --holdout-episodes {h} (training episodes {d['train_episodes']}), "
                        f"this run trains on {ds_info['train_episodes']}; pass --holdout-episodes {h} or make new pairs")


class PairsDataset(torch.utils.data.Dataset):
    """One item per pairs row: the LeRobotDataset frame it names (observations as online training
    reads them) plus the row's noise and target under ``NOISE_KEY`` / ``TARGET_KEY``."""

    def __init__(self, frames, pairs: Pairs):
        self.frames = frames
        self.table = pairs.table
        self.to_relative = frames.absolute_to_relative_idx  # None when the whole dataset is loaded
        missing = set(self.table.data.column("frame_index").to_pylist()) - set(self._valid_indices())
        if missing:
            raise UserError(f"--pairs name {len(missing)} frames this dataset does not have (e.g. index {min(missing)}); "
                            "pass the dataset the pairs were made for")

    def _valid_indices(self):
        if self.to_relative is not None:
            return self.to_relative.keys()
        return range(len(self.frames))

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, r: int) -> dict:
        row = self.table[int(r)]
        i = int(row["frame_index"])
        item = self.frames[self.to_relative[i] if self.to_relative is not None else i]
        item[NOISE_KEY] = row["noise"]
        item[TARGET_KEY] = row["target"]
        return item
