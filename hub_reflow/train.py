"""The reflow training loop: LeRobot's dataset, sampler, processors, optimizer and scheduler presets
and checkpoint layout; ``accelerate`` for devices and processes.

Layout written (LeRobot's): ``OUTPUT/checkpoints/<step>/pretrained_model/`` (canonical) beside
``training_state/``, and ``OUTPUT/checkpoints/last`` -> ``<step>``. Each checkpoint is written to a
temporary folder and renamed into place; ``last`` is switched by an atomic rename of a symlink.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import LINEAGE_NAME, Lineage, atomic_dir, teacher_card_data, write_canonical
from .config import ReflowConfig
from .errors import UserError
from .precision import FILE_NAME as MASTER_FILE
from .precision import MasterWeights

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
    num_workers: int = 0
    resume: bool = False
    progress: bool = True
    pairs: str | None = None  # cached teacher pairs (pairs.py): folder or Hub dataset repo id
    pairs_revision: str | None = None


def _accelerator(device: str):
    from accelerate import Accelerator

    if device not in ("cpu", "cuda", "auto"):
        raise UserError(f"--device must be cpu, cuda or auto, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is visible; use --device cpu or auto")
    # step_scheduler_with_optimizer=False: accelerate would otherwise step the scheduler once per
    # process at every optimizer step (it assumes the step count shrinks with more processes); our
    # schedule is written in optimizer steps, as LeRobot's (lerobot_train does the same).
    return Accelerator(cpu=device == "cpu", step_scheduler_with_optimizer=False)


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


def load_dataset(teacher_cfg, repo_id: str, root: Path | None, revision: str | None, holdout: int):
    """LeRobot's dataset with the teacher's delta timestamps; the last ``holdout`` episodes left out."""
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    from .validation import check_dataset_root

    if root is not None:  # a folder that is not a LeRobotDataset: never fall back to the Hub
        check_dataset_root(Path(root), repo_id)
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
        delta_timestamps=resolve_delta_timestamps(teacher_cfg, meta),
    )
    info = {
        "repo_id": repo_id,
        "commit": _dataset_commit(repo_id, root, revision),
        "num_episodes": n,
        "train_episodes": [0, n - holdout],  # half-open range
        "holdout_episodes": [n - holdout, n],
    }
    return dataset, info


def _dataset_commit(repo_id: str, root: Path | None, revision: str | None) -> str | None:
    """The Hub commit of the dataset when it came from the Hub; None for a local folder."""
    if root is not None:
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo_id, revision=revision).sha
    except Exception:  # offline: the commit is unknown, not an error
        return None


def _make_optimizer(params, teacher_cfg, rcfg: ReflowConfig):
    """LeRobot's AdamW + cosine-with-warmup presets from the teacher config, our overrides on top,
    over ``params``. Returns the optimizer, the scheduler, the clip norm and the settings used."""
    opt_cfg = teacher_cfg.get_optimizer_preset()
    if rcfg.lr is not None:
        opt_cfg.lr = rcfg.lr
    if rcfg.weight_decay is not None:
        opt_cfg.weight_decay = rcfg.weight_decay
    if rcfg.grad_clip_norm is not None:
        opt_cfg.grad_clip_norm = rcfg.grad_clip_norm
    sched_cfg = teacher_cfg.get_scheduler_preset()
    sched_cfg.peak_lr = opt_cfg.lr
    sched_cfg.decay_lr = min(sched_cfg.decay_lr, opt_cfg.lr)
    sched_cfg.num_decay_steps = rcfg.steps
    sched_cfg.num_warmup_steps = rcfg.warmup_steps if rcfg.warmup_steps is not None else max(1, rcfg.steps // 20)
    optimizer = opt_cfg.build(params)
    used = {"lr": opt_cfg.lr, "lr_from": "--lr" if rcfg.lr is not None else "teacher config (LeRobot preset)",
            "betas": list(opt_cfg.betas), "weight_decay": opt_cfg.weight_decay, "grad_clip_norm": opt_cfg.grad_clip_norm,
            "warmup_steps": sched_cfg.num_warmup_steps, "decay_lr": sched_cfg.decay_lr}
    return optimizer, sched_cfg.build(optimizer, rcfg.steps), opt_cfg.grad_clip_norm, used


def _update_last(checkpoints: Path, step_dir: Path) -> None:
    tmp = checkpoints / ".last.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(step_dir.name)
    os.replace(tmp, checkpoints / "last")


def save_checkpoint(output_dir: Path, step: int, policy, optimizer, scheduler, num_processes: int, batch_size: int,
                    master: MasterWeights | None = None) -> Path:
    from lerobot.common.train_utils import get_step_checkpoint_dir, save_training_state
    from lerobot.utils.constants import TRAINING_STATE_DIR
    from safetensors.torch import save_file

    from .validation import disk_full

    final = get_step_checkpoint_dir(output_dir, policy.reflow_config.steps, step)
    policy.lineage.training["step"] = step
    if policy.teacher_sampling:  # online pairs: eager or CUDA graphs (fastpath.py)
        policy.lineage.training["teacher_sampling"] = policy.teacher_sampling
    try:
        with atomic_dir(final) as tmp:
            pretrained = tmp / "pretrained_model"
            pretrained.mkdir()
            write_canonical(pretrained, policy.student, policy.base, policy.reflow_config.student_steps, policy.lineage)
            save_training_state(tmp, step, optimizer, scheduler, num_processes=num_processes, batch_size=batch_size)
            if master is not None and master.active:
                save_file(master.state_dict(), str(tmp / TRAINING_STATE_DIR / MASTER_FILE))
    except OSError as e:  # disk full, quota, permissions changed during the run: `last` is untouched
        reason = "the disk is full" if disk_full(e) else (e.strerror or type(e).__name__)
        last = final.parent / "last"
        kept = (f"checkpoints/last ({last.resolve().name}) is unchanged: free space, then continue with --resume"
                if last.exists() else "no checkpoint was saved before: free space and run again")
        raise UserError(f"train: checkpoint {final.name} could not be written in {final.parent} ({reason}); {kept}") from None
    _update_last(final.parent, final)
    return final


EVAL_FRAMES = 16


def _evaluate(policy, args: TrainArgs, ds_info: dict, preprocessor, postprocessor) -> dict:
    """The final student against its teacher on held-out frames (training frames when none are
    held out), through the teacher's processors, with shared noise."""
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from .evaluate import action_scale, measure, observation_batch

    lo, hi = ds_info["holdout_episodes"]
    held_out = hi > lo
    episodes = list(range(lo, hi)) if held_out else [0]
    ds = LeRobotDataset(args.dataset, root=args.dataset_root, revision=args.dataset_revision, episodes=episodes)
    idx = sorted({int(i) for i in np.linspace(0, len(ds) - 1, min(EVAL_FRAMES, len(ds)))})
    return measure(policy.teacher, policy.student, preprocessor, postprocessor, observation_batch(ds, idx),
                   teacher_steps=policy.reflow_config.teacher_steps, student_steps=policy.reflow_config.student_steps,
                   frames_from="held-out episodes" if held_out else "training episode 0 (no episode was held out)",
                   scale=action_scale(ds.meta.stats))


def _read_lineage(ckpt: Path) -> Lineage:
    try:
        return Lineage.from_file(ckpt / "pretrained_model" / LINEAGE_NAME)
    except Exception as e:  # missing, not JSON, fields missing
        raise UserError(f"--resume: {ckpt / 'pretrained_model' / LINEAGE_NAME} cannot be read ({type(e).__name__}); "
                        "the run's record is needed to resume it: start a new --output-dir") from None


def _divergence_hint(lr: float, warmup: int, pairs) -> str:
    hint = (f"a learning rate too high for this model (lr {lr:g} with {warmup} warm-up steps): "
            "lower --lr or raise --warmup-steps")
    return hint + (", or NaN targets in the cached --pairs" if pairs is not None else "") + " (the teacher's weights are finite)"


class PhaseTimer:
    """Wall seconds per phase of a run (host time: on CUDA a phase that only launches kernels
    looks cheap and the wait shows up at the next sync). Recorded in the lineage as
    ``training.time_s`` so users and ``benchmarks/train_overhead.py`` can see where the time goes."""

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


def _step_seed(seed: int, process: int, step: int) -> int:
    return (seed * 1_000_003 + process * 7_919 + step) % (2**63)


def _cycle(dataloader):
    while True:  # each pass re-enters the sampler, which advances its epoch
        yield from dataloader


def train(args: TrainArgs) -> Path:
    """Run reflow training; return the final ``pretrained_model`` folder."""
    from .validation import check_batch_size, check_free_space, check_resume, check_train_args, checkpoint_bytes, checkpoints_to_write

    check_train_args(args)  # values, combinations, output folder (writable), dataset folder: before the heavy imports

    from lerobot.common.train_utils import load_training_batch_size, load_training_num_processes, load_training_state
    from lerobot.datasets import EpisodeAwareSampler, compute_sampler_state
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.utils.random_utils import set_seed
    from tqdm.auto import tqdm

    from . import safeio
    from .checkpoint import read_policy_config, resolve_checkpoint
    from .finite import FiniteGuard, require_finite_teacher
    from .flow import sample_time
    from .pairs import NOISE_KEY, TARGET_KEY
    from .policy import ReflowPolicy
    from .smolvla import noise_shape, policy_inputs

    timer = PhaseTimer()
    timer.start("setup")

    rcfg = args.reflow
    output_dir = Path(args.output_dir)
    last = output_dir / "checkpoints" / "last"

    accelerator = _accelerator(args.device)
    # Noise and times come from per-(process, step) generators in the loop; the sampler shuffles
    # with the plain seed on every process, which accelerate's sharding of its batches relies on.
    set_seed(rcfg.seed, accelerator=accelerator)
    device = accelerator.device.type
    main = accelerator.is_main_process

    with accelerator.main_process_first():  # one download into the shared cache
        resolved = resolve_checkpoint(args.teacher, args.teacher_revision, what="teacher")
    teacher_cfg = read_policy_config(resolved.path)
    dataset, ds_info = load_dataset(teacher_cfg, args.dataset, args.dataset_root, args.dataset_revision, rcfg.holdout_episodes)
    pairs = None
    if args.pairs:
        from .pairs import PairsDataset, check_pairs, load_pairs

        with accelerator.main_process_first():
            pairs = load_pairs(args.pairs, args.pairs_revision)
        check_pairs(pairs, resolved.ref, ds_info, rcfg.teacher_steps)
        dataset = PairsDataset(dataset, pairs)  # frames by index, the teacher's targets from the cache
    check_batch_size(rcfg.batch_size, len(dataset), "pairs rows" if pairs is not None else "training frames")
    if args.resume:  # every setting that changes what is trained must be the run's own
        saved = _read_lineage(last.resolve())
        check_resume(saved, Lineage(teacher=resolved.ref, reflow=rcfg.to_dict(), dataset={
            **ds_info, **({"pairs": pairs.lineage_record()} if pairs is not None else {})}))

    policy = ReflowPolicy.from_teacher(resolved, rcfg, device=device)  # keeps the Hub ref (repo id + sha)
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
    master = MasterWeights(policy.trainable_parameters())
    optimizer, scheduler, clip, opt_used = _make_optimizer(master.params, teacher_cfg, rcfg)
    policy.lineage.training["optimizer"] = {**opt_used, "fp32_master_weights": master.active}

    step, sampler_state = 0, None
    if pairs is not None:  # one "episode" spanning every pairs row: a seeded shuffle per epoch, resumable
        sampler = EpisodeAwareSampler([0], [len(dataset)], shuffle=True, seed=rcfg.seed)
    else:
        sampler = EpisodeAwareSampler(
            dataset.meta.episodes["dataset_from_index"], dataset.meta.episodes["dataset_to_index"],
            episode_indices_to_use=dataset.episodes, shuffle=True, seed=rcfg.seed,
            absolute_to_relative_idx=dataset.absolute_to_relative_idx,
        )
    if args.resume:
        ckpt = last.resolve()
        safeio.load_model(policy.student, ckpt / "pretrained_model" / "model.safetensors", "--resume", strict=True, device=device)
        safeio.check_folder(ckpt / "training_state", "--resume")
        try:
            step, optimizer, scheduler = load_training_state(ckpt, optimizer, scheduler)
        except Exception as e:  # missing or malformed training_state files
            raise UserError(f"--resume: the training state in {ckpt / 'training_state'} cannot be read "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); start a new --output-dir") from None
        if master.active:  # the fp32 masters, not the rounded weights of pretrained_model/
            from lerobot.utils.constants import TRAINING_STATE_DIR

            master.load_state_dict(safeio.load_file(ckpt / TRAINING_STATE_DIR / MASTER_FILE, "--resume"))
        policy.lineage.training = {**saved.training, "optimizer": policy.lineage.training["optimizer"]}
        # LeRobot's sample-exact resume: the data order continues where the run stopped.
        sampler_state = compute_sampler_state(
            step, len(sampler), load_training_batch_size(ckpt) or rcfg.batch_size,
            load_training_num_processes(ckpt) or accelerator.num_processes,
        )
        sampler.load_state_dict(sampler_state)
        if main:
            logger.info("resumed from %s at step %d", ckpt.name, step)
    if step >= rcfg.steps:
        if main:
            logger.info("nothing to do: the run is already at step %d of %d", step, rcfg.steps)
        return last / "pretrained_model"
    # Before training, not at the first save: room for every checkpoint this run will write (where
    # the main process writes them; every process stops on its verdict).
    problem = [None]
    if main:
        count = checkpoints_to_write(step, rcfg.steps, args.save_freq)
        one = checkpoint_bytes((resolved.path / "model.safetensors").stat().st_size,
                               sum(p.numel() for p in policy.trainable_parameters()))
        try:
            check_free_space(output_dir, count * one, "--output-dir", f"the {count} checkpoint{'s' if count > 1 else ''} of this run")
        except UserError as e:
            problem = [str(e)]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(problem)
    if problem[0]:
        raise UserError(problem[0])

    from lerobot.utils.collate import lerobot_collate_fn

    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=rcfg.batch_size, sampler=sampler, num_workers=args.num_workers,
        drop_last=False, pin_memory=device == "cuda",
        collate_fn=lerobot_collate_fn if (dataset.frames if pairs else dataset).meta.has_language_columns else None,
    )
    model, optimizer, dataloader, scheduler = accelerator.prepare(policy, optimizer, dataloader, scheduler)
    timer.stop("setup")
    if sampler_state is not None and hasattr(dataloader, "set_epoch"):
        # accelerate's loader sets the sampler's epoch to its own pass count (0 after a restart)
        # each time it is iterated: start that count at the resumed epoch.
        dataloader.set_epoch(sampler_state["epoch"])
    model.train()
    batches = _cycle(dataloader)
    bar = tqdm(total=rcfg.steps, initial=step, desc="reflow", disable=None if (main and args.progress) else True, dynamic_ncols=True)  # None: off when not a TTY
    # The loss is summed on the device and read once per log interval: an ``.item()`` every step
    # would wait for the device each step (a sync point).
    loss_sum, loss_n = torch.zeros((), device=accelerator.device), 0
    guard = FiniteGuard()  # the first non-finite loss / gradient norm, recorded on the device
    hint = _divergence_hint(opt_used["lr"], opt_used["warmup_steps"], pairs)
    saved_name = last.resolve().name if args.resume else None
    while step < rcfg.steps:
        with timer("data"):
            batch = next(batches)
        # Noise and times from a generator seeded by (seed, process, step): a resumed run draws
        # exactly what the uninterrupted one would have (the global RNG is also used by the loader).
        gen = torch.Generator().manual_seed(_step_seed(rcfg.seed, accelerator.process_index, step))
        target = None
        if pairs is not None:
            noise, target = batch.pop(NOISE_KEY).to(accelerator.device), batch.pop(TARGET_KEY).to(accelerator.device)
        with timer("preprocess"):
            batch = preprocessor(batch)
            inputs = policy_inputs(policy.student, batch)  # images prepared once, for teacher and student
        bsz = inputs.batch_size
        if target is None:
            noise = torch.randn(noise_shape(policy.student, bsz), dtype=torch.float32, generator=gen).to(accelerator.device, non_blocking=True)
            with timer("teacher"):
                noise, target = policy.make_pairs(inputs, noise)
        times = sample_time(rcfg.time_sampling, bsz, accelerator.device, generator=gen, grid_steps=rcfg.student_steps)
        with timer("student"):
            loss, _ = model(batch, noise=noise, time=times, target=target, inputs=inputs)
            accelerator.backward(loss)
            master.grads_to_masters()
            # The total norm (clip_grad_norm_ returns it; an infinite bound clips nothing) for the guard.
            grad_norm = accelerator.clip_grad_norm_(master.params, clip or float("inf"))
            guard.observe(step + 1, loss, grad_norm)
            optimizer.step()
            scheduler.step()
            master.masters_to_params()
            optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        loss_sum += loss.detach()
        loss_n += 1
        if step % args.log_freq == 0 or step == rcfg.steps:
            with timer("logging"):
                guard.check(hint, accelerator.gather if accelerator.num_processes > 1 else None, saved_name)
                # The mean over steps and processes (one all-reduce, at log steps only).
                avg = accelerator.reduce(loss_sum, reduction="mean").item() / loss_n
                if main:
                    bar.set_postfix(loss=f"{avg:.4f}")
                    tqdm.write(f"step {step}/{rcfg.steps} loss {avg:.5f} lr {scheduler.get_last_lr()[0]:.2e}")
                    policy.lineage.training.setdefault("loss_curve", []).append([step, avg])
                loss_sum.zero_()
                loss_n = 0
        if (args.save_freq > 0 and step % args.save_freq == 0) or step == rcfg.steps:
            guard.check(hint, accelerator.gather if accelerator.num_processes > 1 else None, saved_name)
            accelerator.wait_for_everyone()
            if main and step == rcfg.steps:
                tqdm.write("measuring fidelity and latency against the teacher")
                with timer("final_measurement"):
                    policy.lineage.evaluation = _evaluate(policy, args, ds_info, preprocessor, postprocessor)
                model.train()
            if main:
                policy.lineage.training.update({
                    "device": device, "num_processes": accelerator.num_processes,
                    "batch_size_per_process": rcfg.batch_size, "final_loss": policy.lineage.training.get("loss_curve", [[0, None]])[-1][1],
                    "time_s": timer.totals(),
                })
                with timer("checkpoint"):
                    path = save_checkpoint(output_dir, step, policy, optimizer, scheduler, accelerator.num_processes,
                                           rcfg.batch_size, master)
                saved_name = path.name
                tqdm.write(f"checkpoint {path.name} written")
            accelerator.wait_for_everyone()
    bar.close()
    return last / "pretrained_model"
