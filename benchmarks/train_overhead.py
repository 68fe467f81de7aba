"""What ``hub-reflow train`` costs over a bare reflow loop running the same steps on the same model
and batch, and where its time goes.

    python benchmarks/train_overhead.py [--world tiny|two-camera] [--steps 600] [--batch-size 8]
    python benchmarks/train_overhead.py --smoke        # a few steps (CI)

Both run in fresh processes, one after the other, timed from process start to exit (imports, model
loading, training, and for ``hub-reflow train`` its checkpoint, final measurement and plots):

- ``bare``: the reference, the smallest loop that does the same work (``bare_loop`` below, about 40
  lines around LeRobot's ``VLAFlowMatching.sample_actions`` and ``forward``): the teacher and a deep
  copy as the student, the VLM frozen, LeRobot's dataset, shuffled loader and preprocessor, the
  teacher's 10-step chunk for fresh noise, times from the same sampler, LeRobot's AdamW and cosine
  presets, gradient clipping; no checkpoint, no evaluation, no logging.
- ``hub-reflow train``: the real command with its defaults (and ``--steps``/``--batch-size``).

The table gives both wall times, their ratio (target: at most 1.2), and ``hub-reflow train``'s own
breakdown (``training.time_s`` in the lineage file: setup, data, preprocess, teacher, student,
logging, final measurement, checkpoint). JSON goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, OptionError, fmt, hardware, hardware_line, markdown, write_json  # noqa: E402

PROG = "train_overhead.py"
TARGET = 1.2


def bare_loop(teacher_dir: str, repo_id: str, root: str, steps: int, batch_size: int, time_sampling: str,
              holdout: int, lr: float | None, seed: int) -> float:
    """The reference loop; returns its final loss."""
    import copy

    import torch
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from hub_reflow.flow import sample_time

    torch.manual_seed(seed)
    teacher = SmolVLAPolicy.from_pretrained(teacher_dir).eval()
    student = copy.deepcopy(teacher)  # trainable as LeRobot loads it: the expert and projections
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
    pre, _ = make_pre_post_processors(cfg, pretrained_path=teacher_dir)
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
        t = sample_time(time_sampling, state.shape[0], grid_steps=1)
        loss = student.model.forward(images, img_masks, lang, lang_mask, state, target, noise, t)[..., :adim].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, opt_cfg.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
    return float(loss)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few steps (CI)")
    p.add_argument("--world", default="tiny", help="tiny or two-camera (hub_reflow.testing.tiny_world.WORLDS)")
    p.add_argument("--workdir", type=Path, default=Path("outputs/bench/overhead"), help="worlds are built (and reused) here")
    p.add_argument("--teacher-train-steps", type=int, default=None, help="lerobot-train steps of the teacher (default 1000; smoke 20)")
    p.add_argument("--steps", type=int, default=None, help="reflow steps (default 600; smoke 5)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/train_overhead[_smoke].json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # JSON arguments of the bare loop
    a = p.parse_args(argv)
    if a.child:
        return a
    from hub_reflow.testing.tiny_world import WORLDS

    if a.world not in WORLDS:
        raise OptionError(PROG, f"--world must be one of {', '.join(WORLDS)}, got {a.world!r}")
    a.teacher_train_steps = a.teacher_train_steps or (20 if a.smoke else 1000)
    a.steps = a.steps or (5 if a.smoke else 600)
    if a.steps < 1 or a.batch_size < 1 or a.teacher_train_steps < 1:
        raise OptionError(PROG, "--steps, --batch-size and --teacher-train-steps must be >= 1")
    a.out = a.out or RESULTS / f"train_overhead{'_smoke' if a.smoke else ''}.json"
    return a


def _timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"{PROG}: {' '.join(cmd[:3])} ... failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return wall


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.child:
        spec = json.loads(a.child)
        bare_loop(**spec)
        return 0
    a.workdir = a.workdir.resolve()
    os.environ["HF_HOME"] = str(a.workdir / "hf_home")  # the tiny backbone's private cache
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
    import torch

    from hub_reflow.config import ReflowConfig
    from hub_reflow.testing.tiny_world import WORLDS, build_tiny_world

    spec = WORLDS[a.world]
    print(f"world {a.world} + teacher ({a.teacher_train_steps} lerobot-train steps) in {a.workdir}", file=sys.stderr, flush=True)
    world = build_tiny_world(a.workdir / "world", teacher_steps=a.teacher_train_steps, spec=spec)
    defaults = ReflowConfig()
    holdout = 4
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    bare_spec = {"teacher_dir": str(world.teacher), "repo_id": world.repo_id, "root": str(world.dataset_root),
                 "steps": a.steps, "batch_size": a.batch_size, "time_sampling": defaults.time_sampling,
                 "holdout": holdout, "lr": defaults.lr, "seed": defaults.seed}
    run_dir = a.workdir / "runs" / f"{a.world}-{time.strftime('%Y%m%d-%H%M%S')}"
    cli = str(Path(sys.executable).with_name("hub-reflow"))
    print(f"bare loop: {a.steps} steps at batch {a.batch_size}", file=sys.stderr, flush=True)
    bare = _timed([sys.executable, __file__, "--child", json.dumps(bare_spec)], env)
    print(f"hub-reflow train: {a.steps} steps at batch {a.batch_size}", file=sys.stderr, flush=True)
    ours = _timed([cli, "train", "--teacher", str(world.teacher), "--dataset", world.repo_id, "--dataset-root",
                   str(world.dataset_root), "--output-dir", str(run_dir), "--steps", str(a.steps), "--batch-size",
                   str(a.batch_size), "--holdout-episodes", str(holdout), "--device", "cpu", "--no-progress"], env)
    lineage = json.loads((run_dir / "checkpoints" / "last" / "pretrained_model" / "reflow_lineage.json").read_text())
    phases = lineage["training"].get("time_s", {})
    accounted = sum(phases.values())
    rows = [["bare loop (reference)", fmt(bare, 1), "1.00", ""],
            ["hub-reflow train", fmt(ours, 1), fmt(ours / bare, 2), f"target <= {TARGET}"]]
    rows += [[f"  of which {k}", fmt(v, 1), "", ""] for k, v in sorted(phases.items(), key=lambda kv: -kv[1])]
    rows.append(["  of which imports, loading before setup, exit", fmt(ours - accounted, 1), "", ""])
    table = markdown(["process", "wall s", "vs bare", ""], rows, align="lrrl")
    hw = hardware(torch.device("cpu"))
    out = write_json(a.out, {"benchmark": "train_overhead", "hardware": hw, "world": a.world,
                             "settings": {"steps": a.steps, "batch_size": a.batch_size, "smoke": a.smoke, **bare_spec},
                             "bare_wall_s": bare, "train_wall_s": ours, "ratio": ours / bare, "target": TARGET,
                             "met": ours / bare <= TARGET, "train_phases_s": phases, "table": table})
    print(f"# hub-reflow train vs a bare reflow loop ({a.world} world, {a.steps} steps, batch {a.batch_size})")
    print(f"hardware: {hardware_line(hw)}; json: {out}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
