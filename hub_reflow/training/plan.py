"""A training run's inputs, each resolved and checked once, before anything heavy is built
(LeRobot's ``TrainPipelineConfig.validate()``): ``plan_run`` turns ``TrainArgs`` into a ``RunPlan``.

In order: the settings' combinations (each value's own range is argparse's and ``ReflowConfig``'s);
the run folder (new, or a run to resume); ``--dataset-root``; the devices (``--device``, the
processes of a launch) and the seed; the teacher, found and its config parsed; the dataset through
LeRobot's loader, checked against the teacher; ``--pairs``, checked against both; the batch size
against the rows; the lineage; on ``--resume`` the run's own lineage, whose every setting that
changes what is trained must be this run's; ``--vlm-repo-id`` against the teacher's backbone folder.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoint import (
    Lineage,
    ResolvedCheckpoint,
    check_backbone_repo,
    is_local_path,
    read_policy_config,
    resolve_checkpoint,
    teacher_card_data,
)
from ..config import RECORDED_BEFORE, ReflowConfig
from ..data import check_dataset_root, load_dataset
from ..devices import check_device
from ..errors import UserError
from ..pairs import Pairs, PairsDataset, check_pairs, load_pairs
from ..validation import MAX_SEED, MAX_TEACHER_STEPS
from .run_folder import RunFolder

if TYPE_CHECKING:
    from accelerate import Accelerator
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

logger = logging.getLogger("hub_reflow.train")  # the train command's lines, under its name


@dataclass
class TrainArgs:
    teacher: str
    dataset: str  # LeRobotDataset repo id
    output_dir: Path
    reflow: ReflowConfig = field(default_factory=ReflowConfig)
    teacher_revision: str | None = None
    dataset_root: Path | None = None
    dataset_revision: str | None = None
    device: str = "auto"  # cpu | cuda | auto
    save_freq: int = 0  # 0: only the final checkpoint
    log_freq: int = 50
    num_workers: int | None = None  # None: devices.default_num_workers
    resume: bool = False
    progress: bool = True
    pairs: str | None = None  # cached teacher pairs (pairs.py): folder or Hub dataset repo id
    pairs_revision: str | None = None
    record: dict | None = None  # the command line's settings, kept with each checkpoint for --resume
    vlm_repo_id: str | None = None  # the Hub repo id of the teacher's local backbone folder, written into the student


@dataclass
class RunPlan:
    """Every input of a run, resolved once (``plan_run``)."""

    args: TrainArgs  # the settings (``args.reflow``: what is trained)
    folder: RunFolder  # --output-dir: checkpoints/last, the run's record, each checkpoint written
    accelerator: Accelerator  # --device, and the processes of the launch
    teacher: ResolvedCheckpoint  # --teacher at --teacher-revision: its folder and its reference
    teacher_config: SmolVLAConfig  # its config.json, parsed once (never changed: copied where a change is made)
    dataset: LeRobotDataset | PairsDataset  # the training rows: frames, or the cached pairs over them
    pairs: Pairs | None  # --pairs
    lineage: Lineage  # the run's record: teacher, settings, dataset (and pairs), the run resumed
    vlm_repo_id: str | None  # --vlm-repo-id, checked against the teacher's backbone folder
    timer: PhaseTimer  # the run's wall time per phase (the lineage's training.time_s), from "setup" on
    resume_from: Path | None = None  # --resume: the checkpoint (checkpoints/<step>/) last points to
    saved: Lineage | None = None  # its lineage


def plan_run(args: TrainArgs, folder: RunFolder) -> RunPlan:
    """``args`` resolved and checked (``folder``: the run folder, locked by the caller)."""
    from lerobot.utils.random_utils import set_seed

    rcfg, timer = args.reflow, PhaseTimer(start="setup")
    check_settings(args)
    folder.check(args.resume)
    verified = check_dataset_root(Path(args.dataset_root), args.dataset) is not None if args.dataset_root is not None else None
    accelerator = make_accelerator(args.device)
    # Noise and times come from per-(process, step) generators in the loop; the sampler shuffles
    # with the plain seed on every process, which accelerate's sharding of its batches relies on.
    set_seed(rcfg.seed, accelerator=accelerator)
    if accelerator.is_main_process:  # what setup is doing, once
        logger.info("setup: loading the teacher %s", args.teacher)
    with accelerator.main_process_first():  # one download into the shared cache
        teacher = resolve_checkpoint(args.teacher, args.teacher_revision, what="teacher")
    teacher_config = read_policy_config(teacher.path)
    dataset, ds_info = load_dataset(teacher_config, args.dataset, args.dataset_root, args.dataset_revision,
                                    rcfg.holdout_episodes, verified=verified)
    pairs = None
    if args.pairs:
        with accelerator.main_process_first():
            pairs = load_pairs(args.pairs, args.pairs_revision)
        check_pairs(pairs, teacher.ref, ds_info, rcfg.teacher_steps)
        dataset = PairsDataset(dataset, pairs)  # frames by index, the teacher's targets from the cache
        ds_info = {**ds_info, "pairs": pairs.lineage_record()}
    check_batch_size(rcfg.batch_size, len(dataset), "pairs rows" if pairs is not None else "training frames")
    lineage = Lineage(teacher=teacher.ref, reflow={**rcfg.to_dict(), **({"targets": "cached pairs"} if pairs else {})},
                      dataset=ds_info, teacher_num_steps=teacher_config.num_steps, teacher_card=teacher_card_data(teacher.path))
    plan = RunPlan(args, folder, accelerator, teacher, teacher_config, dataset, pairs, lineage, None, timer)
    if args.resume:  # every setting that changes what is trained must be the run's own
        plan.resume_from, plan.saved = folder.resume_source()
        check_resume(plan.saved, lineage)
        lineage.training = {**plan.saved.training, "resumes": plan.saved.training.get("resumes", 0) + 1}
    plan.vlm_repo_id = backbone_repo_id(teacher_config.vlm_model_name, args.vlm_repo_id)
    return plan


def make_accelerator(device: str):
    from accelerate import Accelerator

    check_device(device)
    # step_scheduler_with_optimizer=False: accelerate would otherwise step the scheduler once per
    # process at every optimizer step (it assumes the step count shrinks with more processes); our
    # schedule is written in optimizer steps, as LeRobot's (lerobot_train does the same).
    return Accelerator(cpu=device == "cpu", step_scheduler_with_optimizer=False)


def check_settings(args: TrainArgs) -> None:
    """Combinations of ``train`` values (each value's own range is argparse's and ReflowConfig's)."""
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


def check_batch_size(batch_size: int, frames: int, what: str = "training frames") -> None:
    if batch_size > frames:
        raise UserError(f"--batch-size {batch_size} is more than the {frames} {what}; pass --batch-size {frames} or less")


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


def check_resume(saved: Lineage, now: Lineage) -> None:
    """Refuse to continue a run with another teacher, dataset, targets or any ReflowConfig field
    (compared field by field, so new fields are covered)."""
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
                continue  # an extension, as lerobot-train --resume --steps N: loop.resume records it
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


class PhaseTimer:
    """Wall seconds per phase of a run (host time: on CUDA a phase that only launches kernels
    looks cheap and the wait shows up at the next sync). Recorded in the lineage as
    ``training.time_s`` so users and ``benchmarks/train_overhead.py`` can see where the time goes; a
    resumed run adds its own to the recorded phases (``carry``)."""

    def __init__(self, start: str | None = None):
        """``start``: the phase that starts now."""
        self._totals: dict[str, float] = {}
        self._started: dict[str, float] = {}
        if start:
            self.start(start)

    def start(self, name: str) -> None:
        self._started[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        self._totals[name] = self._totals.get(name, 0.0) + time.perf_counter() - self._started.pop(name)

    @contextmanager
    def __call__(self, name: str):
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def totals(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self._totals.items()}

    def carry(self, earlier: dict | None) -> None:
        """Add the phases of the run's earlier processes (a resumed run's ``training.time_s``, up to
        the checkpoint it resumed from): a run's time is that of all its processes."""
        for name, seconds in (earlier or {}).items():
            if isinstance(seconds, (int, float)):
                self._totals[name] = self._totals.get(name, 0.0) + seconds
