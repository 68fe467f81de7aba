"""The pieces of the reflow loop that are not the loop (LeRobot keeps the same in
``common/train_utils.py``): the accelerator, LeRobot's optimizer and scheduler presets, the disk
space check, checkpoint writing with an atomic ``last``, the final measurement, resume helpers,
per-step seeds, phase timing."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from ..checkpoint import LINEAGE_NAME, Lineage, write_canonical
from ..checks.fidelity import action_scale, measure, observation_batch
from ..config import ReflowConfig
from ..devices import check_device
from ..errors import UserError
from ..files import atomic_dir
from ..validation import disk_full
from .run_checks import RUN_RECORD, check_free_space, checkpoint_bytes, checkpoints_to_write

EVAL_FRAMES = 16  # held-out frames of the final measurement
from .precision import FILE_NAME as MASTER_FILE
from .precision import MasterWeights
from .sr_adamw import StochasticRoundingAdamW

SPREAD_FILE = "hub_reflow_frame_spread.safetensors"  # training_state/: the spreads a SpreadSampler draws by (frame_sampling.py)


def make_accelerator(device: str):
    from accelerate import Accelerator

    check_device(device)
    # step_scheduler_with_optimizer=False: accelerate would otherwise step the scheduler once per
    # process at every optimizer step (it assumes the step count shrinks with more processes); our
    # schedule is written in optimizer steps, as LeRobot's (lerobot_train does the same).
    return Accelerator(cpu=device == "cpu", step_scheduler_with_optimizer=False)


def make_optimizer(params, teacher_cfg, rcfg: ReflowConfig):
    """LeRobot's AdamW + cosine-with-warmup presets from the teacher config, our overrides on top,
    over ``params``. Returns the optimizer, the scheduler, the clip norm and the settings used."""
    opt_cfg = teacher_cfg.get_optimizer_preset()
    base_lr = rcfg.lr if rcfg.lr is not None else opt_cfg.lr
    opt_cfg.lr = base_lr * rcfg.lr_scale
    if rcfg.weight_decay is not None:
        opt_cfg.weight_decay = rcfg.weight_decay
    if rcfg.grad_clip_norm is not None:
        opt_cfg.grad_clip_norm = rcfg.grad_clip_norm
    sched_cfg = teacher_cfg.get_scheduler_preset()
    sched_cfg.peak_lr = opt_cfg.lr
    sched_cfg.decay_lr = min(sched_cfg.decay_lr, opt_cfg.lr)
    sched_cfg.num_decay_steps = rcfg.steps
    sched_cfg.num_warmup_steps = rcfg.warmup_steps if rcfg.warmup_steps is not None else max(1, rcfg.steps // 20)
    if rcfg.update == "bf16-sr":  # LeRobot's AdamW settings, bf16 weights written by stochastic rounding
        optimizer = StochasticRoundingAdamW(params, lr=opt_cfg.lr, betas=opt_cfg.betas, eps=opt_cfg.eps,
                                            weight_decay=opt_cfg.weight_decay, seed=rcfg.seed)
    else:
        optimizer = opt_cfg.build(params)
    lr_from = "--lr" if rcfg.lr is not None else "teacher config (LeRobot preset)"
    if rcfg.lr_scale != 1:
        lr_from = f"{rcfg.lr_scale:g} x {lr_from} ({base_lr:g})"
    used = {"update": rcfg.update, "lr": opt_cfg.lr, "lr_from": lr_from,
            "betas": list(opt_cfg.betas), "weight_decay": opt_cfg.weight_decay, "grad_clip_norm": opt_cfg.grad_clip_norm,
            "warmup_steps": sched_cfg.num_warmup_steps, "decay_lr": sched_cfg.decay_lr}
    return optimizer, sched_cfg.build(optimizer, rcfg.steps), opt_cfg.grad_clip_norm, used


def update_last(checkpoints: Path, step_dir: Path) -> None:
    tmp = checkpoints / ".last.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(step_dir.name)
    os.replace(tmp, checkpoints / "last")


class Pace:
    """Rate and time left for the step log lines (a log file has no progress bar)."""

    def __init__(self, start_step: int, steps: int):
        self.start, self.steps, self.t0 = start_step, steps, time.monotonic()

    def at(self, step: int) -> str:
        elapsed = time.monotonic() - self.t0
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        left = (self.steps - step) / rate if rate > 0 else 0.0
        return f"({rate:.2f} steps/s, ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d})"


def save_checkpoint(output_dir: Path, step: int, policy, optimizer, scheduler, num_processes: int, batch_size: int,
                    master: MasterWeights | None = None, record: dict | None = None, spread=None) -> Path:
    """``record``: the run's settings (``run_checks.RUN_RECORD``), beside LeRobot's training state;
    ``spread``: the frames' spreads its sampler draws by (``SPREAD_FILE``)."""
    from lerobot.common.train_utils import get_step_checkpoint_dir, save_training_state
    from lerobot.utils.constants import TRAINING_STATE_DIR
    from safetensors.torch import save_file

    final = get_step_checkpoint_dir(output_dir, policy.reflow_config.steps, step)
    policy.lineage.training["step"] = step
    if policy.teacher_sampling:  # online pairs: eager or CUDA graphs (fastpath.py)
        policy.lineage.training["teacher_sampling"] = policy.teacher_sampling
    try:
        with atomic_dir(final) as tmp:
            pretrained = tmp / "pretrained_model"
            pretrained.mkdir()
            write_canonical(pretrained, policy.student, policy.base, policy.reflow_config.student_steps, policy.lineage,
                            vlm_repo_id=policy.vlm_repo_id)
            save_training_state(tmp, step, optimizer, scheduler, num_processes=num_processes, batch_size=batch_size)
            if master is not None and master.active:
                save_file(master.state_dict(), str(tmp / TRAINING_STATE_DIR / MASTER_FILE))
            if spread is not None:
                save_file({"spread": spread.contiguous()}, str(tmp / TRAINING_STATE_DIR / SPREAD_FILE))
            if record:
                (tmp / TRAINING_STATE_DIR / RUN_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))
    except OSError as e:  # disk full, quota, permissions changed during the run: `last` is untouched
        reason = "the disk is full" if disk_full(e) else (e.strerror or type(e).__name__)
        last = final.parent / "last"
        kept = (f"checkpoints/last ({last.resolve().name}) is unchanged: free space, then continue with --resume"
                if last.exists() else "no checkpoint was saved before: free space and run again")
        raise UserError(f"train: checkpoint {final.name} could not be written in {final.parent} ({reason}); {kept}") from None
    update_last(final.parent, final)
    return final


def check_space(accelerator, output_dir: Path, step: int, steps: int, save_freq: int, teacher_weights: Path,
                trainable_params: int) -> None:
    """Before training, not at the first save: room for every checkpoint this run will write (where
    the main process writes them; every process stops on its verdict)."""
    problem = [None]
    if accelerator.is_main_process:
        count = checkpoints_to_write(step, steps, save_freq)
        one = checkpoint_bytes(teacher_weights.stat().st_size, trainable_params)
        try:
            check_free_space(output_dir, count * one, "--output-dir", f"the {count} checkpoint{'s' if count > 1 else ''} of this run")
        except UserError as e:
            problem = [str(e)]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(problem)
    if problem[0]:
        raise UserError(problem[0])


def evaluate_student(policy, args, ds_info: dict, preprocessor, postprocessor) -> dict:
    """The final student against its teacher on held-out frames (training frames when none are
    held out), through the teacher's processors, with shared noise."""
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    lo, hi = ds_info["holdout_episodes"]
    held_out = hi > lo
    episodes = list(range(lo, hi)) if held_out else [0]
    ds = LeRobotDataset(args.dataset, root=args.dataset_root, revision=args.dataset_revision, episodes=episodes)
    idx = sorted({int(i) for i in np.linspace(0, len(ds) - 1, min(EVAL_FRAMES, len(ds)))})
    return measure(policy.teacher, policy.student, preprocessor, postprocessor, observation_batch(ds, idx),
                   teacher_steps=policy.reflow_config.teacher_steps, student_steps=policy.reflow_config.student_steps,
                   frames_from="held-out episodes" if held_out else "training episode 0 (no episode was held out)",
                   scale=action_scale(ds.meta.stats), action_names=(ds.meta.features.get("action") or {}).get("names"))


def extend_schedule(optimizer, scheduler, step: int, steps_before: int, rcfg: ReflowConfig) -> dict:
    """A run resumed with a larger ``--steps``: the scheduler is LeRobot's cosine with warm-up built for
    the new length (``make_optimizer``), as ``lerobot-train --resume --steps N`` builds it; from
    ``step`` on the learning rate follows it (set here for the next step, not left at the value the
    old schedule had reached). Returns the lineage's record of the extension."""
    before = optimizer.param_groups[0]["lr"]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    after = optimizer.param_groups[0]["lr"]
    warmup = rcfg.warmup_steps if rcfg.warmup_steps is not None else max(1, rcfg.steps // 20)
    return {"from_step": step, "steps_before": steps_before, "steps": rcfg.steps, "lr_before": before, "lr_after": after,
            "schedule": f"LeRobot's cosine schedule with warm-up refitted to {rcfg.steps} steps (warm-up {warmup}), as "
                        f"lerobot-train --resume --steps refits it: from step {step} the learning rate follows it "
                        f"({after:.3g}; the {steps_before}-step schedule had reached {before:.3g})"}


def read_lineage(ckpt: Path) -> Lineage:
    """The lineage of a checkpoint to resume from (``checkpoints/<step>/``)."""
    try:
        return Lineage.from_file(ckpt / "pretrained_model" / LINEAGE_NAME)
    except Exception as e:  # missing, not JSON, fields missing
        raise UserError(f"--resume: {ckpt / 'pretrained_model' / LINEAGE_NAME} cannot be read ({type(e).__name__}); "
                        "the run's record is needed to resume it: start a new --output-dir") from None


def divergence_hint(lr: float, warmup: int, pairs) -> str:
    hint = (f"a learning rate too high for this model (lr {lr:g} with {warmup} warm-up steps): "
            "lower --lr-scale (or --lr) or raise --warmup-steps")
    return hint + (", or NaN targets in the cached --pairs" if pairs is not None else "") + " (the teacher's weights are finite)"


class PhaseTimer:
    """Wall seconds per phase of a run (host time: on CUDA a phase that only launches kernels
    looks cheap and the wait shows up at the next sync). Recorded in the lineage as
    ``training.time_s`` so users and ``benchmarks/train_overhead.py`` can see where the time goes; a
    resumed run adds its own to the recorded phases (``carry``)."""

    def __init__(self):
        self._totals: dict[str, float] = {}
        self._started: dict[str, float] = {}

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


def step_seed(seed: int, process: int, step: int) -> int:
    return (seed * 1_000_003 + process * 7_919 + step) % (2**63)


def cycle(dataloader):
    while True:  # each pass re-enters the sampler, which advances its epoch
        yield from dataloader
