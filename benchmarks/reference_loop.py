"""The reference reflow loop: the smallest loop that does what ``hub-reflow train`` does, about 40
lines around LeRobot's ``VLAFlowMatching.sample_actions`` and ``forward`` (the issue's "bare loop").

Used by ``train_overhead.py`` (its wall time is the reference for ``hub-reflow train``'s) and by
``fidelity.py`` (its student is the reference for ``hub-reflow train``'s student: same world, steps,
batch, learning rate and time sampling).

What it does: the teacher and a deep copy as the student (trainable as LeRobot loads it: the action
expert and projections, the VLM frozen), LeRobot's dataset, shuffled loader and preprocessor, the
teacher's 10-step chunk for fresh noise, times from hub-reflow's sampler, LeRobot's AdamW and cosine
presets with gradient clipping, the loss on the real action dims. What it leaves out: checkpoints,
evaluation, logging, fp32 master weights (a bf16 expert is stepped in bf16, as a plain loop would).
"""

from __future__ import annotations

from pathlib import Path


def bare_loop(teacher_dir: str, repo_id: str, root: str, steps: int, batch_size: int, time_sampling: str,
              holdout: int, lr: float | None, seed: int, grid_steps: int = 1, save_to: str | None = None,
              save_every: int = 0) -> float:
    """Train a student; return its final loss. ``save_to``: save it there as a plain LeRobot
    checkpoint (``save_pretrained`` plus the teacher's processor files), ``num_steps`` = ``grid_steps``,
    with ``reference_loop.done`` (JSON: steps, wall seconds since the call began, final loss).
    ``save_every``: also a snapshot every that many steps, in ``save_to/step{N:06d}`` (the time spent
    saving snapshots is left out of the wall seconds: a bare loop would not save them)."""
    import copy
    import json
    import time

    t0, paused = time.perf_counter(), 0.0

    def save(folder: str, step: int, loss) -> None:
        wall = time.perf_counter() - t0 - paused
        student.config.num_steps = grid_steps
        student.eval().save_pretrained(folder)
        pre.save_pretrained(folder)
        post.save_pretrained(folder)
        Path(folder, "reference_loop.done").write_text(json.dumps({"steps": step, "wall_s": wall, "final_loss": float(loss)}))
        student.train()
        student.model.vlm_with_expert.vlm.eval()

    import torch
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from hub_reflow.flow import sample_time

    torch.manual_seed(seed)
    teacher = SmolVLAPolicy.from_pretrained(teacher_dir).eval()
    student = copy.deepcopy(teacher)
    teacher.requires_grad_(False)
    student.model.vlm_with_expert.vlm.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    cfg = teacher.config
    opt_cfg, sched_cfg = cfg.get_optimizer_preset(), cfg.get_scheduler_preset()
    opt_cfg.lr = sched_cfg.peak_lr = lr if lr is not None else opt_cfg.lr  # None: the teacher config's, as train
    sched_cfg.decay_lr = min(sched_cfg.decay_lr, opt_cfg.lr)
    sched_cfg.num_decay_steps, sched_cfg.num_warmup_steps = steps, max(1, steps // 20)
    optimizer = opt_cfg.build(params)
    scheduler = sched_cfg.build(optimizer, steps)
    pre, post = make_pre_post_processors(cfg, pretrained_path=teacher_dir)
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    episodes = list(range(meta.total_episodes - holdout))
    ds = LeRobotDataset(repo_id, root=root, episodes=episodes, delta_timestamps=resolve_delta_timestamps(cfg, meta))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True)
    adim = cfg.action_feature.shape[0]
    student.train()
    student.model.vlm_with_expert.vlm.eval()
    batches, step = iter(loader), 0
    while step < steps:
        try:
            batch = pre(next(batches))
        except StopIteration:
            batches = iter(loader)
            continue
        images, img_masks = student.prepare_images(batch)
        state = student.prepare_state(batch)
        lang, lang_mask = batch["observation.language.tokens"], batch["observation.language.attention_mask"]
        noise = torch.randn(state.shape[0], cfg.chunk_size, cfg.max_action_dim)
        with torch.no_grad():
            target = teacher.model.sample_actions(images, img_masks, lang, lang_mask, state, noise=noise)
        target[..., adim:] = 0
        t = sample_time(time_sampling, state.shape[0], grid_steps=grid_steps)
        loss = student.model.forward(images, img_masks, lang, lang_mask, state, target, noise, t)[..., :adim].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, opt_cfg.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if save_to is not None and save_every and step % save_every == 0 and step < steps:
            t1 = time.perf_counter()
            save(f"{save_to}/step{step:06d}", step, loss)
            paused += time.perf_counter() - t1
    if save_to is not None:
        save(save_to, steps, loss)
    return float(loss)
