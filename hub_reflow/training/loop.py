"""The reflow training loop, from a ``RunPlan``: ``build`` (the student, a copy of the teacher, with
its processors, optimizer and frame sampler; on ``--resume`` its state from the run folder), then
``run_loop``: one optimizer step at a time (``train_step``, LeRobot's ``update_policy``), the loss
logged, a checkpoint saved (``save``: at the end, after the final measurement against the teacher).
LeRobot's dataset, sampler, processors, optimizer and scheduler presets; ``accelerate`` for devices
and processes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from itertools import chain, repeat
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checks.fidelity import action_scale, measure, observation_batch
from ..data import collate_for
from ..devices import default_num_workers
from ..finite import FiniteGuard, require_finite_teacher
from ..flow import sample_time
from ..policy import ReflowPolicy
from .frame_sampling import frame_sampler
from .optimizer import MasterWeights, divergence_hint, extend_schedule, make_optimizer
from .plan import PhaseTimer, RunPlan
from .teacher_batch import Prepared, next_group

if TYPE_CHECKING:
    from lerobot.processor import PolicyProcessorPipeline
    from torch.optim.lr_scheduler import LRScheduler

logger = logging.getLogger("hub_reflow.train")  # the train command's lines, under its name
EVAL_FRAMES = 16  # held-out frames of the final measurement


@dataclass
class Run:
    """What the loop works on: the plan, what was built from it, and where the loop is."""

    plan: RunPlan
    policy: ReflowPolicy  # the student and its frozen teacher
    preprocessor: PolicyProcessorPipeline  # the teacher's processors
    postprocessor: PolicyProcessorPipeline
    master: MasterWeights  # fp32 masters of the bf16 trainable weights (inactive: none)
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    clip: float | None  # the gradient norm clipped to
    sampler: torch.utils.data.Sampler  # which rows each batch draws
    spread: torch.Tensor | None  # the frames' spreads a SpreadSampler draws by (saved with each checkpoint)
    hint: str  # the likely cause named when the loss stops being finite
    step: int = 0
    sampler_state: dict | None = None  # where a resumed run's sampler starts
    model: torch.nn.Module | None = None  # the policy as accelerate prepared it
    dataloader: torch.utils.data.DataLoader | None = None
    guard: FiniteGuard = field(default_factory=FiniteGuard)  # the first non-finite loss / gradient norm
    saved_name: str | None = None  # the last checkpoint written (or resumed from)


def build(plan: RunPlan) -> Run:
    """The student (a copy of the teacher), its processors, optimizer and sampler; on ``--resume``,
    everything where the run stopped."""
    from lerobot.datasets import EpisodeAwareSampler
    from lerobot.policies.factory import make_pre_post_processors

    acc, rcfg, timer = plan.accelerator, plan.args.reflow, plan.timer
    device, main = acc.device.type, acc.is_main_process
    if main:
        logger.info("setup: dataset ready (%d frames); building the student (a copy of the teacher) on %s",
                    len(plan.dataset), device)
    policy = ReflowPolicy.from_teacher(plan.teacher, rcfg, device=device, teacher_config=plan.teacher_config,
                                       lineage=plan.lineage)  # keeps the Hub ref (repo id + sha)
    policy.vlm_repo_id = plan.vlm_repo_id
    require_finite_teacher(policy.teacher)
    preprocessor, postprocessor = make_pre_post_processors(
        plan.teacher_config, pretrained_path=str(plan.teacher.path),
        preprocessor_overrides={"device_processor": {"device": device}},
    )
    master = MasterWeights(policy.trainable_parameters(), enabled=rcfg.update == "fp32-masters")
    optimizer, scheduler, clip, opt_used = make_optimizer(master.params, plan.teacher_config, rcfg)
    plan.lineage.training["optimizer"] = {**opt_used, "fp32_master_weights": master.active}
    if main:
        logger.info("setup: peak learning rate %g (%s), warm-up over the first %d of %d steps", opt_used["lr"],
                    opt_used["lr_from"], opt_used["warmup_steps"], rcfg.steps)
    spread = None
    if plan.pairs is not None:  # one "episode" spanning every pairs row: a seeded shuffle per epoch, resumable
        sampler = EpisodeAwareSampler([0], [len(plan.dataset)], shuffle=True, seed=rcfg.seed)
    else:  # LeRobot's shuffled epochs, or frames drawn by the teacher's spread (a pre-pass, its own phase)
        timer.stop("setup")
        with timer("frame_spread"):
            saved = plan.folder.load_spread(plan.resume_from) if plan.resume_from and rcfg.frame_sampling == "spread" else None
            sampler, spread, prepass = frame_sampler(policy, preprocessor, plan.dataset, rcfg, acc, collate_for(plan.dataset),
                                                     saved)
        timer.start("setup")
        if prepass is not None:
            plan.lineage.training["frame_spread"] = prepass
    hint = divergence_hint(opt_used["lr"], opt_used["warmup_steps"], plan.pairs is not None)
    run = Run(plan, policy, preprocessor, postprocessor, master, optimizer, scheduler, clip, sampler, spread, hint)
    if plan.resume_from is not None:
        resume(run)
    return run


def resume(run: Run) -> None:
    """Continue from the checkpoint ``last`` points to: weights, fp32 masters, optimizer, scheduler,
    step, and the sampler where it stopped (LeRobot's sample-exact resume)."""
    plan, rcfg, acc = run.plan, run.plan.args.reflow, run.plan.accelerator
    ckpt, saved = plan.resume_from, plan.saved
    run.step, run.optimizer, run.scheduler = plan.folder.load_state(ckpt, run.policy.student, run.optimizer, run.scheduler,
                                                                    run.master, acc.device.type)
    run.plan.timer.carry(saved.training.get("time_s"))  # time_s: every process of the run, up to its checkpoints
    if saved.reflow.get("steps", rcfg.steps) < rcfg.steps:  # --resume --steps N: an extension (plan.check_resume)
        ext = extend_schedule(run.optimizer, run.scheduler, run.step, saved.reflow["steps"], rcfg)
        plan.lineage.training["extensions"] = [*saved.training.get("extensions", []), ext]
        if acc.is_main_process:
            logger.info("extending the run from %d to %d steps: %s", ext["steps_before"], ext["steps"], ext["schedule"])
    run.sampler_state = plan.folder.sampler_state(ckpt, run.step, len(run.sampler), rcfg.batch_size, acc.num_processes)
    run.sampler.load_state_dict(run.sampler_state)
    run.saved_name = ckpt.name
    if acc.is_main_process:
        logger.info("resumed from %s at step %d", ckpt.name, run.step)


def run_loop(run: Run) -> Path:
    """Train to ``--steps``; return the final ``pretrained_model`` folder."""
    from tqdm.auto import tqdm

    plan = run.plan
    args, rcfg, acc, main = plan.args, plan.args.reflow, plan.accelerator, plan.accelerator.is_main_process
    if run.step >= rcfg.steps:
        if main:
            logger.info("nothing to do: the run is already at step %d of %d", run.step, rcfg.steps)
        return plan.folder.last / "pretrained_model"
    plan.folder.check_space(acc, run.step, rcfg.steps, args.save_freq, plan.teacher.path / "model.safetensors",
                            sum(p.numel() for p in run.policy.trainable_parameters()))
    prepare(run)
    pace = Pace(run.step, rcfg.steps)
    # The loader's batches, pass after pass: each pass re-enters the sampler, which advances its epoch.
    batches, queue = chain.from_iterable(repeat(run.dataloader)), []
    bar = tqdm(total=rcfg.steps, initial=run.step, desc="reflow", disable=None if (main and args.progress) else True,
               dynamic_ncols=True)  # None: off when not a TTY
    # The loss is summed on the device and read once per log interval: an ``.item()`` every step
    # would wait for the device each step (a sync point).
    loss_sum, loss_n = torch.zeros((), device=acc.device), 0
    while run.step < rcfg.steps:
        queue = queue or next_group(run, batches)  # the teacher answers a group of steps at once
        loss_sum += train_step(run, queue.pop(0))
        loss_n += 1
        run.step += 1
        bar.update(1)
        if run.step % args.log_freq == 0 or run.step == rcfg.steps:
            with run.plan.timer("logging"):
                check_finite(run)
                # The mean over steps and processes (one all-reduce, at log steps only).
                avg = acc.reduce(loss_sum, reduction="mean").item() / loss_n
                if main:
                    bar.set_postfix(loss=f"{avg:.4f}")
                    tqdm.write(f"step {run.step}/{rcfg.steps} loss {avg:.5f} lr {run.scheduler.get_last_lr()[0]:.2e} "
                               f"{pace.at(run.step)}")
                    run.policy.lineage.training.setdefault("loss_curve", []).append([run.step, avg])
                loss_sum.zero_()
                loss_n = 0
        if (args.save_freq > 0 and run.step % args.save_freq == 0) or run.step == rcfg.steps:
            save(run)
    bar.close()
    return plan.folder.last / "pretrained_model"


def prepare(run: Run) -> None:
    """The data loader, and everything handed to accelerate."""
    acc, dataset = run.plan.accelerator, run.plan.dataset
    workers = run.plan.args.num_workers
    if workers is None:
        workers = default_num_workers(acc.device.type, acc.num_processes)
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=run.plan.args.reflow.batch_size, sampler=run.sampler, num_workers=workers,
        persistent_workers=workers > 0,  # not re-forked (and the dataset re-opened) every epoch
        drop_last=False, pin_memory=acc.device.type == "cuda",
        collate_fn=collate_for(dataset.frames if run.plan.pairs is not None else dataset),
    )
    run.model, run.optimizer, run.dataloader, run.scheduler = acc.prepare(run.policy, run.optimizer, dataloader, run.scheduler)
    run.plan.timer.stop("setup")
    if run.sampler_state is not None and hasattr(run.dataloader, "set_epoch"):
        # accelerate's loader sets the sampler's epoch to its own pass count (0 after a restart)
        # each time it is iterated: start that count at the resumed epoch.
        run.dataloader.set_epoch(run.sampler_state["epoch"])
    run.model.train()


def train_step(run: Run, step: Prepared) -> torch.Tensor:
    """One optimizer step on a prepared batch (``teacher_batch.next_group``: preprocessed, with its
    noise and the teacher's target); the loss, detached (not read: no sync point)."""
    acc, rcfg, timer = run.plan.accelerator, run.plan.args.reflow, run.plan.timer
    batch, inputs, noise, target, gen = step.batch, step.inputs, step.noise, step.target, step.generator
    times = sample_time(rcfg.time_sampling, len(noise), acc.device, generator=gen, grid_steps=rcfg.student_steps)
    with timer("student"):
        loss, _ = run.model(batch, noise=noise, time=times, target=target, inputs=inputs)
        acc.backward(loss)
        run.master.grads_to_masters()
        # The total norm (clip_grad_norm_ returns it; an infinite bound clips nothing) for the guard.
        grad_norm = acc.clip_grad_norm_(run.master.params, run.clip or float("inf"))
        run.guard.observe(run.step + 1, loss, grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.master.masters_to_params()
        run.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def check_finite(run: Run) -> None:
    """Stop (exit 1, ``checkpoints/last`` untouched) at the first non-finite loss or gradient."""
    acc = run.plan.accelerator
    run.guard.check(run.hint, acc.gather if acc.num_processes > 1 else None, run.saved_name)


def save(run: Run) -> Path | None:
    """A checkpoint at the current step (main process); at the last step, first the final
    measurement against the teacher. Every process waits for it."""
    from tqdm.auto import tqdm

    plan, policy = run.plan, run.policy
    acc, rcfg = plan.accelerator, plan.args.reflow
    check_finite(run)
    acc.wait_for_everyone()
    path = None
    if acc.is_main_process:
        if run.step == rcfg.steps:
            tqdm.write("measuring fidelity and latency against the teacher")
            with run.plan.timer("final_measurement"):
                policy.lineage.evaluation = final_measurement(run)
            run.model.train()
        policy.lineage.training.update({
            "device": acc.device.type, "num_processes": acc.num_processes, "batch_size_per_process": rcfg.batch_size,
            "final_loss": policy.lineage.training.get("loss_curve", [[0, None]])[-1][1], "time_s": run.plan.timer.totals(),
        })
        with run.plan.timer("checkpoint"):
            path = plan.folder.save(run.step, policy, run.optimizer, run.scheduler, acc.num_processes, rcfg.batch_size,
                                    run.master, plan.args.record, run.spread, plan.teacher_config)
        run.saved_name = path.name
        tqdm.write(f"checkpoint {path.name} written")
    acc.wait_for_everyone()
    return path


def final_measurement(run: Run) -> dict:
    """The final student against its teacher on held-out frames (training frames when none are
    held out), through the teacher's processors, with shared noise."""
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    args, policy = run.plan.args, run.policy
    lo, hi = run.plan.lineage.dataset["holdout_episodes"]
    held_out = hi > lo
    episodes = list(range(lo, hi)) if held_out else [0]
    ds = LeRobotDataset(args.dataset, root=args.dataset_root, revision=args.dataset_revision, episodes=episodes)
    idx = sorted({int(i) for i in np.linspace(0, len(ds) - 1, min(EVAL_FRAMES, len(ds)))})
    return measure(policy.teacher, policy.student, run.preprocessor, run.postprocessor, observation_batch(ds, idx),
                   teacher_steps=policy.reflow_config.teacher_steps, student_steps=policy.reflow_config.student_steps,
                   frames_from="held-out episodes" if held_out else "training episode 0 (no episode was held out)",
                   scale=action_scale(ds.meta.stats), action_names=(ds.meta.features.get("action") or {}).get("names"))


class Pace:
    """Rate and time left for the step log lines (a log file has no progress bar)."""

    def __init__(self, start_step: int, steps: int):
        self.start, self.steps, self.t0 = start_step, steps, time.monotonic()

    def at(self, step: int) -> str:
        elapsed = time.monotonic() - self.t0
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        left = (self.steps - step) / rate if rate > 0 else 0.0
        return f"({rate:.2f} steps/s, ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d})"
