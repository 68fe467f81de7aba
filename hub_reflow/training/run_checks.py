"""The checks of a whole run, before anything is loaded: combinations of ``train`` values
(``--student-steps`` at most ``--teacher-steps``, warm-up within the run), the run folder, the
batch size against the data, the disk space its checkpoints need, and ``--resume``: every setting
that changes what is trained must equal the checkpoint's record.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, fields
from pathlib import Path

from ..checkpoint import check_backbone_repo, is_local_path
from ..config import RECORDED_BEFORE, ReflowConfig
from ..data import check_dataset_root
from ..errors import UserError
from ..validation import MAX_SEED, MAX_TEACHER_STEPS, check_free_space, check_output_folder
from .runlock import LOCK_NAME

__all__ = ["backbone_repo_id", "RUN_RECORD", "read_run_record", "check_train_args", "check_train_output", "check_batch_size", "checkpoint_bytes", "checkpoints_to_write",
           "check_free_space", "check_resume", "RESUME_MAY_CHANGE"]


def check_train_args(args) -> None:
    """Combinations of ``train`` values (each value's own range is argparse's and ReflowConfig's),
    and the output folder; nothing is loaded yet."""
    r = args.reflow
    if r.student_steps > r.teacher_steps:
        raise UserError(f"--student-steps {r.student_steps} is more than --teacher-steps {r.teacher_steps}: the student "
                        "learns the teacher's --teacher-steps solution, so more student steps gain nothing; pass "
                        f"--student-steps <= {r.teacher_steps}")
    if r.teacher_steps > MAX_TEACHER_STEPS:
        raise UserError(f"--teacher-steps must be <= {MAX_TEACHER_STEPS}, got {r.teacher_steps} (the targets are no "
                        "better beyond that, each training step only slower)")
    if r.noises_per_frame > 1 and args.pairs:
        raise UserError(f"--noises-per-frame {r.noises_per_frame} needs online pairs: cached pairs (--pairs) hold one "
                        "noise per frame; leave out --pairs or --noises-per-frame")
    if r.frame_sampling == "spread" and args.pairs:
        raise UserError("--frame-sampling spread needs online pairs: cached pairs (--pairs) are drawn uniformly; "
                        "leave out --pairs or --frame-sampling")
    if r.warmup_steps is not None and r.warmup_steps > r.steps:
        raise UserError(f"--warmup-steps {r.warmup_steps} is more than --steps {r.steps}: the learning rate would never "
                        "reach --lr; pass fewer warm-up steps")
    if args.log_freq < 1:
        raise UserError(f"--log-freq must be >= 1, got {args.log_freq}")
    if args.save_freq < 0:
        raise UserError(f"--save-freq must be >= 0 (0: only at the end), got {args.save_freq}")
    if args.num_workers is not None and args.num_workers < 0:
        raise UserError(f"--num-workers must be >= 0, got {args.num_workers}")
    if not 0 <= r.seed <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED}, got {r.seed}")
    if not math.isfinite(r.lr if r.lr is not None else 1.0):
        raise UserError(f"--lr must be a finite number, got {r.lr}")
    check_train_output(Path(args.output_dir), args.resume)
    if args.dataset_root is not None:
        check_dataset_root(Path(args.dataset_root), args.dataset)


def check_train_output(output_dir: Path, resume: bool) -> None:
    """The run folder: new (or empty) without ``--resume``; with it, a run whose ``last`` exists."""
    output_dir = Path(output_dir).expanduser()
    last = output_dir / "checkpoints" / "last"
    if last.is_symlink() and not last.exists():
        target = os.readlink(last)
        steps = sorted(p.name for p in (output_dir / "checkpoints").iterdir()
                       if p.is_dir() and not p.is_symlink() and (p / "pretrained_model").is_dir())
        fix = (f"point it at an existing checkpoint (ln -sfn {steps[-1]} {last}) to resume from it" if steps else
               "no checkpoint folder is left: remove the run folder or pass a new --output-dir")
        raise UserError(f"--output-dir {output_dir}: {last} points to {target}, which does not exist; {fix}")
    if resume:
        if output_dir.exists() and not output_dir.is_dir():
            raise UserError(f"--output-dir {output_dir} is a file, not a run folder; pass the run folder to resume")
        if not last.exists():
            raise UserError(f"--resume: no checkpoint at {last}; start without --resume")
        check_output_folder(output_dir, "--output-dir", may_hold_files=True)
        return
    check_output_folder(output_dir, "--output-dir", may_hold_files=True)
    if output_dir.is_dir() and any(p.name != LOCK_NAME for p in output_dir.iterdir()):  # the run's own lock aside
        raise UserError(f"--output-dir {output_dir} already holds files; pass --resume to continue that run, or a new folder")


def check_batch_size(batch_size: int, frames: int, what: str = "training frames") -> None:
    if batch_size > frames:
        raise UserError(f"--batch-size {batch_size} is more than the {frames} {what}; pass --batch-size {frames} or less")


def checkpoint_bytes(weights_bytes: int, trainable_params: int, extra_bytes: int = 1 << 20) -> int:
    """One checkpoint: the student's weights (the teacher's size), AdamW's two fp32 moments per
    trainable parameter, processor files, lineage and card images."""
    return weights_bytes + 8 * trainable_params + extra_bytes


def checkpoints_to_write(start: int, steps: int, save_freq: int) -> int:
    marks = {steps}
    if save_freq > 0:
        marks |= set(range(save_freq, steps + 1, save_freq))
    return len([m for m in marks if m > start])


# ---- resume ------------------------------------------------------------------------------------

# ReflowConfig fields a resumed run may change: cuda_graphs and teacher_batch (how the teacher is
# run, same numbers); every other one changes what is trained. --steps may grow (the run is extended,
# its cosine schedule refitted to the new length as lerobot-train refits it, and the lineage records
# the extension); it never shrinks. Settings outside ReflowConfig (--log-freq,
# --save-freq, --num-workers, --device, --no-progress) may always change.
RESUME_MAY_CHANGE: frozenset[str] = frozenset({"cuda_graphs", "teacher_batch"})  # how the teacher is run, not what it computes


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(value) -> str:
    return "the default" if value is None else repr(value) if isinstance(value, str) else str(value)


def check_resume(saved, now) -> None:
    """Refuse to continue a run with another teacher, dataset, targets or any ReflowConfig field
    (compared field by field, so new fields are covered). ``saved``/``now``: ``Lineage``."""
    fix = "resume with the run's own settings, or start a new --output-dir"
    t_old, t_new = saved.teacher.weights_sha256, now.teacher.weights_sha256
    if t_old and t_old != t_new:
        was = saved.teacher.repo_id or "a local folder"
        raise UserError(f"--resume: --teacher differs from the run's: it was trained from {was} (weights sha256 "
                        f"{t_old[:12]}...), the given teacher's weights are {t_new[:12]}...; {fix}")
    d_old, d_new = saved.dataset or {}, now.dataset or {}
    p_old, p_new = d_old.get("pairs"), d_new.get("pairs")
    if (p_old or {}).get("data_sha256") != (p_new or {}).get("data_sha256"):
        was = (f"cached pairs {p_old.get('repo_id') or 'from a local folder'} (sha256 {p_old['data_sha256'][:12]}...)"
               if p_old else "online pairs")
        raise UserError(f"--resume: this run was trained with {was}; resume it with the same --pairs (or none)")
    old_cfg, new_cfg = saved.reflow or {}, now.reflow or {}
    for f in fields(ReflowConfig):
        if f.name in RESUME_MAY_CHANGE:
            continue
        default = None if f.default is MISSING else f.default
        # A field added since the run was written: it ran with what runs did then.
        a = old_cfg.get(f.name, RECORDED_BEFORE.get(f.name, default))
        b = new_cfg.get(f.name, default)
        if f.name == "steps" and isinstance(a, int) and b != a:
            if b > a:
                continue  # an extension, as lerobot-train --resume --steps N: train.resume records it
            raise UserError(f"--resume: --steps {b} is fewer than the run's {a}: a run is extended (a larger --steps), "
                            f"never shortened; resume with --steps {a} or more, or start a new --output-dir")
        if a != b:
            raise UserError(f"--resume: {_flag(f.name)} differs from the run's: it was {_show(a)}, now {_show(b)}; {fix}")
    named = [d.get("repo_id") or d.get("local_name") for d in (d_old, d_new)]  # a repo id, or a local folder's name
    if all(named) and named[0] != named[1]:
        raise UserError(f"--resume: --dataset differs from the run's: it was {_show(named[0])}, now {_show(named[1])}; {fix}")
    for key, what in (("commit", "the dataset's commit (--dataset-revision)"),
                      ("train_episodes", "the dataset's training episodes (--dataset-root, another dataset?)")):
        a, b = d_old.get(key), d_new.get(key)
        if a is not None and b is not None and a != b:
            raise UserError(f"--resume: {what} differs from the run's: it was {_show(a)}, now {_show(b)}; {fix}")


# The settings a run was started with (the command line's option names), in each checkpoint's
# training_state/ (never pushed): ``train --resume`` with no other option continues that run.
RUN_RECORD = "hub_reflow_run.json"


def read_run_record(output_dir: Path | str) -> dict | None:
    """The recorded settings of the run in ``output_dir`` (None: none recorded, an older run)."""
    path = Path(output_dir).expanduser() / "checkpoints" / "last" / "training_state" / RUN_RECORD
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def backbone_repo_id(vlm_model_name: str, repo_id: str | None) -> str | None:
    """``train --vlm-repo-id``: for a teacher whose backbone is a local folder, its Hub repo id
    (checked against the folder's files); a teacher that names a repo needs none."""
    if repo_id is None:
        return None
    if not is_local_path(vlm_model_name):
        raise UserError(f"--vlm-repo-id: the teacher already names its backbone by Hub repo id ({vlm_model_name}); "
                        "leave --vlm-repo-id out")
    check_backbone_repo(vlm_model_name, repo_id, "train")
    return repo_id
