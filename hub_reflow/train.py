"""The reflow training loop: LeRobot's dataset, sampler, processors, optimizer and scheduler presets
and checkpoint layout; ``accelerate`` for devices and processes. Split as LeRobot's ``lerobot_train``
splits its loop: ``setup`` (everything a run needs), ``resume``, ``train_step`` (one optimizer step,
LeRobot's ``update_policy``), ``save`` (a checkpoint, and at the end the final measurement).

Layout written (LeRobot's): ``OUTPUT/checkpoints/<step>/pretrained_model/`` (canonical) beside
``training_state/``, and ``OUTPUT/checkpoints/last`` -> ``<step>``. Each checkpoint is written to a
temporary folder and renamed into place; ``last`` is switched by an atomic rename of a symlink.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import safeio
from .checkpoint import Lineage, ResolvedCheckpoint, read_policy_config, resolve_checkpoint, teacher_card_data
from .config import ReflowConfig
from .data import collate_for, load_dataset
from .devices import default_num_workers
from .errors import UserError
from .finite import FiniteGuard, require_finite_teacher
from .flow import sample_time
from .pairs import Pairs, PairsDataset, check_pairs, load_pairs
from .policy import ReflowPolicy
from .training.frame_sampling import frame_sampler
from .training.precision import FILE_NAME as MASTER_FILE
from .training.precision import MasterWeights
from .training.run_checks import backbone_repo_id, check_batch_size, check_resume, check_train_args
from .training.runlock import run_lock
from .training.teacher_batch import Prepared, next_group
from .training.train_utils import (
    Pace,
    PhaseTimer,
    check_space,
    cycle,
    divergence_hint,
    evaluate_student,
    extend_schedule,
    make_accelerator,
    make_optimizer,
    read_lineage,
    save_checkpoint,
)
from .validation import check_output_folder

logger = logging.getLogger(__name__)


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
class Run:
    """What the phases of one run share."""

    args: TrainArgs
    accelerator: Any
    resolved: ResolvedCheckpoint  # the teacher
    ds_info: dict
    dataset: Any  # LeRobotDataset, or PairsDataset over it
    pairs: Pairs | None
    saved: Lineage | None  # the lineage of the checkpoint resumed from
    policy: ReflowPolicy
    preprocessor: Any
    postprocessor: Any
    master: MasterWeights
    optimizer: Any
    scheduler: Any
    clip: float | None
    sampler: Any
    timer: PhaseTimer
    hint: str  # the likely cause named when the loss stops being finite
    step: int = 0
    sampler_state: dict | None = None
    spread: torch.Tensor | None = None  # the frames' spreads a SpreadSampler draws by (saved with each checkpoint)
    model: Any = None  # the policy as accelerate prepared it
    dataloader: Any = None
    guard: FiniteGuard = field(default_factory=FiniteGuard)  # the first non-finite loss / gradient norm
    saved_name: str | None = None  # the last checkpoint written (or resumed from)

    @property
    def rcfg(self) -> ReflowConfig:
        return self.args.reflow

    @property
    def last(self) -> Path:
        return Path(self.args.output_dir) / "checkpoints" / "last"


def setup(args: TrainArgs) -> Run:
    """Teacher, dataset (and cached pairs), student, processors, optimizer and sampler; every
    setting a resumed run must share is compared with the run's own first."""
    from lerobot.datasets import EpisodeAwareSampler
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.utils.random_utils import set_seed

    check_train_args(args)  # values, combinations, output folder (writable), dataset folder: before the heavy imports
    timer = PhaseTimer()
    timer.start("setup")
    rcfg, last = args.reflow, Path(args.output_dir) / "checkpoints" / "last"
    accelerator = make_accelerator(args.device)
    # Noise and times come from per-(process, step) generators in the loop; the sampler shuffles
    # with the plain seed on every process, which accelerate's sharding of its batches relies on.
    set_seed(rcfg.seed, accelerator=accelerator)
    device = accelerator.device.type
    say = logger.info if accelerator.is_main_process else (lambda *_: None)  # what setup is doing, once
    say("setup: loading the teacher %s", args.teacher)
    with accelerator.main_process_first():  # one download into the shared cache
        resolved = resolve_checkpoint(args.teacher, args.teacher_revision, what="teacher")
    teacher_cfg = read_policy_config(resolved.path)
    dataset, ds_info = load_dataset(teacher_cfg, args.dataset, args.dataset_root, args.dataset_revision, rcfg.holdout_episodes)
    pairs = None
    if args.pairs:
        with accelerator.main_process_first():
            pairs = load_pairs(args.pairs, args.pairs_revision)
        check_pairs(pairs, resolved.ref, ds_info, rcfg.teacher_steps)
        dataset = PairsDataset(dataset, pairs)  # frames by index, the teacher's targets from the cache
    check_batch_size(rcfg.batch_size, len(dataset), "pairs rows" if pairs is not None else "training frames")
    saved = None
    if args.resume:  # every setting that changes what is trained must be the run's own
        saved = read_lineage(last.resolve())
        check_resume(saved, Lineage(teacher=resolved.ref, reflow=rcfg.to_dict(), dataset={
            **ds_info, **({"pairs": pairs.lineage_record()} if pairs is not None else {})}))

    say("setup: dataset ready (%d frames); building the student (a copy of the teacher) on %s", len(dataset), device)
    policy = ReflowPolicy.from_teacher(resolved, rcfg, device=device)  # keeps the Hub ref (repo id + sha)
    policy.vlm_repo_id = backbone_repo_id(teacher_cfg.vlm_model_name, args.vlm_repo_id)
    require_finite_teacher(policy.teacher)
    policy.lineage = Lineage(teacher=resolved.ref, reflow=rcfg.to_dict(), dataset=ds_info,
                             teacher_num_steps=teacher_cfg.num_steps, teacher_card=teacher_card_data(resolved.path))
    if pairs is not None:
        policy.lineage.reflow["targets"] = "cached pairs"
        policy.lineage.dataset["pairs"] = pairs.lineage_record()
    preprocessor, postprocessor = make_pre_post_processors(
        teacher_cfg, pretrained_path=str(resolved.path),
        preprocessor_overrides={"device_processor": {"device": device}},
    )
    master = MasterWeights(policy.trainable_parameters(), enabled=rcfg.update == "fp32-masters")
    optimizer, scheduler, clip, opt_used = make_optimizer(master.params, teacher_cfg, rcfg)
    policy.lineage.training["optimizer"] = {**opt_used, "fp32_master_weights": master.active}
    say("setup: peak learning rate %g (%s), warm-up over the first %d of %d steps", opt_used["lr"], opt_used["lr_from"],
        opt_used["warmup_steps"], rcfg.steps)
    spread = None
    if pairs is not None:  # one "episode" spanning every pairs row: a seeded shuffle per epoch, resumable
        sampler = EpisodeAwareSampler([0], [len(dataset)], shuffle=True, seed=rcfg.seed)
    else:  # LeRobot's shuffled epochs, or frames drawn by the teacher's spread (a pre-pass, its own phase)
        timer.stop("setup")
        with timer("frame_spread"):
            sampler, spread, prepass = frame_sampler(policy, preprocessor, dataset, rcfg, accelerator, collate_for(dataset),
                                                     last.resolve() if args.resume else None)
        timer.start("setup")
        if prepass is not None:
            policy.lineage.training["frame_spread"] = prepass
    hint = divergence_hint(opt_used["lr"], opt_used["warmup_steps"], pairs)
    return Run(args, accelerator, resolved, ds_info, dataset, pairs, saved, policy, preprocessor, postprocessor, master,
               optimizer, scheduler, clip, sampler, timer, hint, spread=spread)


def resume(run: Run) -> None:
    """Continue from ``checkpoints/last``: weights, fp32 masters, optimizer, scheduler, step, and
    the sampler where it stopped (LeRobot's sample-exact resume)."""
    from lerobot.common.train_utils import load_training_batch_size, load_training_num_processes, load_training_state
    from lerobot.datasets import compute_sampler_state
    from lerobot.utils.constants import TRAINING_STATE_DIR

    ckpt = run.last.resolve()
    safeio.load_model(run.policy.student, ckpt / "pretrained_model" / "model.safetensors", "--resume", strict=True,
                      device=run.accelerator.device.type)
    safeio.check_folder(ckpt / "training_state", "--resume")
    try:
        run.step, run.optimizer, run.scheduler = load_training_state(ckpt, run.optimizer, run.scheduler)
    except Exception as e:  # missing or malformed training_state files
        raise UserError(f"--resume: the training state in {ckpt / 'training_state'} cannot be read "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); start a new --output-dir") from None
    if run.master.active:  # the fp32 masters, not the rounded weights of pretrained_model/
        run.master.load_state_dict(safeio.load_file(ckpt / TRAINING_STATE_DIR / MASTER_FILE, "--resume"))
    run.policy.lineage.training = {**run.saved.training, "optimizer": run.policy.lineage.training["optimizer"],
                                   "resumes": run.saved.training.get("resumes", 0) + 1}
    run.timer.carry(run.saved.training.get("time_s"))  # time_s: every process of the run, up to its checkpoints
    if run.saved.reflow.get("steps", run.rcfg.steps) < run.rcfg.steps:  # --resume --steps N: an extension (run_checks)
        ext = extend_schedule(run.optimizer, run.scheduler, run.step, run.saved.reflow["steps"], run.rcfg)
        run.policy.lineage.training["extensions"] = [*run.saved.training.get("extensions", []), ext]
        if run.accelerator.is_main_process:
            logger.info("extending the run from %d to %d steps: %s", ext["steps_before"], ext["steps"], ext["schedule"])
    run.sampler_state = compute_sampler_state(
        run.step, len(run.sampler), load_training_batch_size(ckpt) or run.rcfg.batch_size,
        load_training_num_processes(ckpt) or run.accelerator.num_processes,
    )
    run.sampler.load_state_dict(run.sampler_state)
    run.saved_name = ckpt.name
    if run.accelerator.is_main_process:
        logger.info("resumed from %s at step %d", ckpt.name, run.step)


def prepare(run: Run) -> None:
    """The data loader, and everything handed to accelerate."""
    workers = run.args.num_workers
    if workers is None:
        workers = default_num_workers(run.accelerator.device.type, run.accelerator.num_processes)
    dataloader = torch.utils.data.DataLoader(
        run.dataset, batch_size=run.rcfg.batch_size, sampler=run.sampler, num_workers=workers,
        persistent_workers=workers > 0,  # not re-forked (and the dataset re-opened) every epoch
        drop_last=False, pin_memory=run.accelerator.device.type == "cuda",
        collate_fn=collate_for(run.dataset.frames if run.pairs is not None else run.dataset),
    )
    run.model, run.optimizer, run.dataloader, run.scheduler = run.accelerator.prepare(
        run.policy, run.optimizer, dataloader, run.scheduler)
    run.timer.stop("setup")
    if run.sampler_state is not None and hasattr(run.dataloader, "set_epoch"):
        # accelerate's loader sets the sampler's epoch to its own pass count (0 after a restart)
        # each time it is iterated: start that count at the resumed epoch.
        run.dataloader.set_epoch(run.sampler_state["epoch"])
    run.model.train()


def train_step(run: Run, step: Prepared) -> torch.Tensor:
    """One optimizer step on a prepared batch (``teacher_batch.next_group``: preprocessed, with its
    noise and the teacher's target); the loss, detached (not read: no sync point)."""
    acc, timer = run.accelerator, run.timer
    batch, inputs, noise, target, gen = step.batch, step.inputs, step.noise, step.target, step.generator
    bsz = len(noise)
    times = sample_time(run.rcfg.time_sampling, bsz, acc.device, generator=gen, grid_steps=run.rcfg.student_steps)
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
    acc = run.accelerator
    run.guard.check(run.hint, acc.gather if acc.num_processes > 1 else None, run.saved_name)


def save(run: Run) -> Path | None:
    """A checkpoint at the current step (main process); at the last step, first the final
    measurement against the teacher. Every process waits for it."""
    from tqdm.auto import tqdm

    acc, policy, rcfg = run.accelerator, run.policy, run.rcfg
    check_finite(run)
    acc.wait_for_everyone()
    path = None
    if acc.is_main_process:
        if run.step == rcfg.steps:
            tqdm.write("measuring fidelity and latency against the teacher")
            with run.timer("final_measurement"):
                policy.lineage.evaluation = evaluate_student(policy, run.args, run.ds_info, run.preprocessor,
                                                             run.postprocessor)
            run.model.train()
        policy.lineage.training.update({
            "device": acc.device.type, "num_processes": acc.num_processes, "batch_size_per_process": rcfg.batch_size,
            "final_loss": policy.lineage.training.get("loss_curve", [[0, None]])[-1][1], "time_s": run.timer.totals(),
        })
        with run.timer("checkpoint"):
            path = save_checkpoint(Path(run.args.output_dir), run.step, policy, run.optimizer, run.scheduler,
                                   acc.num_processes, rcfg.batch_size, run.master, run.args.record, run.spread)
        run.saved_name = path.name
        tqdm.write(f"checkpoint {path.name} written")
    acc.wait_for_everyone()
    return path


def train(args: TrainArgs) -> Path:
    """Run reflow training; return the final ``pretrained_model`` folder. One run per output folder:
    the folder's lock is held for the whole run (``runlock``), taken before anything is written."""
    check_output_folder(Path(args.output_dir), "--output-dir", may_hold_files=True)  # a path a folder can be made at
    with run_lock(Path(args.output_dir)):
        return _train(args)


def _train(args: TrainArgs) -> Path:
    from tqdm.auto import tqdm

    run = setup(args)
    if args.resume:
        resume(run)
    rcfg, acc, main = run.rcfg, run.accelerator, run.accelerator.is_main_process
    if run.step >= rcfg.steps:
        if main:
            logger.info("nothing to do: the run is already at step %d of %d", run.step, rcfg.steps)
        return run.last / "pretrained_model"
    check_space(acc, Path(args.output_dir), run.step, rcfg.steps, args.save_freq, run.resolved.path / "model.safetensors",
                sum(p.numel() for p in run.policy.trainable_parameters()))
    prepare(run)
    pace = Pace(run.step, rcfg.steps)
    batches, queue = cycle(run.dataloader), []
    bar = tqdm(total=rcfg.steps, initial=run.step, desc="reflow", disable=None if (main and args.progress) else True,
               dynamic_ncols=True)  # None: off when not a TTY
    # The loss is summed on the device and read once per log interval: an ``.item()`` every step
    # would wait for the device each step (a sync point).
    loss_sum, loss_n = torch.zeros((), device=acc.device), 0
    while run.step < rcfg.steps:
        queue = queue or next_group(run, batches, args.save_freq)  # the teacher answers a group of steps at once
        loss_sum += train_step(run, queue.pop(0))
        loss_n += 1
        run.step += 1
        bar.update(1)
        if run.step % args.log_freq == 0 or run.step == rcfg.steps:
            with run.timer("logging"):
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
    return run.last / "pretrained_model"
