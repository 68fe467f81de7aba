"""Fidelity of reflow students on the multimodal tiny task: does a 1-2 step student land where the
10-step teacher lands, and on a true mode of the data?

The task (``hub_reflow/testing/tiny_world.py``): action = (d, -p_y) with d = +1 in even episodes and
-1 in odd ones, not observable; p_y <- 0.9 p_y each frame. So for a frame with state (p_x, p_y) at
frame i of an episode, the two true action chunks are ``m_d[j] = (d, -0.9^j p_y)``, j = 0..chunk-1,
d = +-1, in real action units (positions past the episode's end are left out: LeRobot pads them and
trains nothing there).

Samplers, all with the same noise z per frame, on the held-out episodes:
teacher at 10, 2 and 1 Euler steps (and at 10 with other noise: its own spread), reflow students
trained with ``hub_reflow.train.train`` for 1 and 2 steps, and (``--round2``) a second reflow
round: the 1-step student, integrated with 10 steps, as the teacher of a new 1-step student.

Metrics (real action units unless said):
- RMSE vs the 10-step teacher under the same noise (all chunk positions, both action dims);
- distance to the nearest true mode: RMS over valid chunk positions and both dims of
  ``chunk - m_d``, minimised over d; mode-hit rate: share of frames with that distance < ``HIT``;
- straightness ``S = E_t E ||(z - x_0) - v(x_t, t)||^2`` (Rectified Flow's definition in SmolVLA's
  convention, x_0 the sampled output, z the noise), in the model's normalised action space over the
  real action dims (sum over chunk and dims, mean over frames). ``S_euler``: t on the sampler's own
  Euler grid (identically 0 for one step: the only velocity *is* z - x_0). ``S_fine``: t on the
  10-point grid 1, 0.9, ..., 0.1 along the sampled path (the Euler states joined by straight
  segments), so 1-, 2- and 10-step paths are measured alike.

    python benchmarks/fidelity.py             # teacher 1000 lerobot-train steps, students 500 steps
    python benchmarks/fidelity.py --smoke     # a few steps of everything (CI)

Prints a markdown table last; writes JSON (``--out``) and a PNG of the x-action distributions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    RESULTS,
    OptionError,
    fmt,
    hardware,
    hardware_line,
    markdown,
    quiet_imports,
    setup_device,
    write_json,
)

PROG = "fidelity.py"
HOLDOUT = 4
HIT = 0.25  # real action units; the two modes are 2 apart in x
FINE_TIMES = [1.0 - i / 10 for i in range(10)]
DECAY = 0.9  # p_y <- p_y - 0.1 p_y (tiny_world.make_tiny_dataset)


def true_modes(states: torch.Tensor, frame_index: torch.Tensor, episode_length: torch.Tensor, chunk: int):
    """The two true chunks (2, B, chunk, 2) and the valid-position mask (B, chunk)."""
    import torch

    j = torch.arange(chunk, dtype=torch.float32)
    y = -states[:, 1:2] * DECAY**j  # (B, chunk)
    modes = torch.stack([torch.stack([torch.full_like(y, d), y], dim=-1) for d in (1.0, -1.0)])
    valid = (frame_index[:, None] + j[None].long()) < episode_length[:, None]
    return modes, valid


def mode_metrics(chunks: torch.Tensor, modes: torch.Tensor, valid: torch.Tensor) -> dict:
    """Distance to the nearest true mode per frame, its mean, and the hit rate."""
    err = ((chunks[None].float() - modes) ** 2).sum(-1)  # (2, B, chunk)
    v = valid[None].float()
    dist = ((err * v).sum(-1) / (2 * v.sum(-1))).sqrt()  # RMS over valid positions and 2 dims
    nearest, which = dist.min(0)
    return {"mode_distance": float(nearest.mean()), "mode_hit_rate": float((nearest < HIT).float().mean()),
            "side_plus_share": float((which == 0).float().mean())}


def path_at(states: list[torch.Tensor], t: float) -> torch.Tensor:
    """The sampled path (Euler states at t = 1, 1 - 1/K, ..., 0 joined by segments) at time t."""
    k = len(states) - 1
    pos = (1.0 - t) * k  # 0 at t = 1
    i = min(int(pos), k - 1)
    w = pos - i
    return (1 - w) * states[i] + w * states[i + 1]


def straightness(policy, inputs, noise: torch.Tensor, steps: int, action_dim: int) -> dict:
    import torch

    from hub_reflow import flow
    from hub_reflow.smolvla import velocity_field

    v = velocity_field(policy, inputs)
    path = flow.euler_path(v, noise, steps)
    s_euler = flow.straightness(path, action_dim)
    straight = flow.target_velocity(path.states[0], path.result)[..., :action_dim]
    terms = []
    for t in FINE_TIMES:
        t_vec = torch.full((noise.shape[0],), t, dtype=torch.float32, device=noise.device)
        vel = v(path_at(path.states, t), t_vec)[..., :action_dim]
        terms.append(((straight - vel) ** 2).flatten(1).sum(-1))
    return {"S_euler": float(s_euler.mean()), "S_fine": float(torch.stack(terms).mean(0).mean())}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few steps of everything (CI)")
    p.add_argument("--workdir", type=Path, default=Path("outputs/bench/fidelity"),
                   help="tiny world and students are built here (and reused when already there)")
    p.add_argument("--teacher", type=Path, default=None,
                   help="an existing tiny-world teacher's pretrained_model/ (else one is trained by lerobot-train)")
    p.add_argument("--dataset-root", type=Path, default=None, help="the tiny dataset of --teacher")
    p.add_argument("--teacher-train-steps", type=int, default=None, help="lerobot-train steps (default 1000; smoke 20)")
    p.add_argument("--student-train-steps", type=int, default=None, help="reflow steps per student (default 500; smoke 3)")
    p.add_argument("--round2", action=argparse.BooleanOptionalAction, default=None,
                   help="also a second reflow round (default: on, off in --smoke)")
    p.add_argument("--seed", type=int, default=12345, help="the shared evaluation noise")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu: the tiny model is overhead-bound)")
    p.add_argument("--out", type=Path, default=RESULTS / "fidelity.json")
    p.add_argument("--no-png", action="store_true")
    a = p.parse_args(argv)
    a.teacher_train_steps = a.teacher_train_steps or (20 if a.smoke else 1000)
    a.student_train_steps = a.student_train_steps or (3 if a.smoke else 500)
    a.teacher_given = a.teacher is not None
    if a.round2 is None:
        a.round2 = not a.smoke
    if a.teacher_train_steps < 1 or a.student_train_steps < 1:
        raise OptionError(PROG, "--teacher-train-steps and --student-train-steps must be >= 1")
    if (a.teacher is None) != (a.dataset_root is None):
        raise OptionError(PROG, "--teacher and --dataset-root go together (the teacher's tiny dataset)")
    if a.teacher is not None and not (a.teacher / "config.json").is_file():
        raise OptionError(PROG, f"--teacher {a.teacher} is not a pretrained_model/ folder (no config.json)")
    if a.dataset_root is not None and not (a.dataset_root / "meta" / "info.json").is_file():
        raise OptionError(PROG, f"--dataset-root {a.dataset_root} is not a LeRobotDataset folder")
    return a


def train_student(teacher: Path, dataset_root: Path, repo_id: str, out: Path, *, steps: int, student_steps: int,
                  device: str) -> Path:
    from hub_reflow.config import ReflowConfig
    from hub_reflow.train import TrainArgs, train

    last = out / "checkpoints" / "last" / "pretrained_model"
    if (last / "model.safetensors").exists():
        return last  # already trained in this workdir
    return train(TrainArgs(
        teacher=str(teacher), dataset=repo_id, dataset_root=dataset_root, output_dir=out, device=device,
        log_freq=max(steps // 5, 1), progress=False,
        reflow=ReflowConfig(steps=steps, batch_size=32, lr=1e-3, student_steps=student_steps, teacher_steps=10,
                            holdout_episodes=HOLDOUT),
    ))


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    a.workdir = a.workdir.resolve()
    if a.teacher is None:  # before huggingface_hub is imported: the tiny backbone's private cache
        os.environ["HF_HOME"] = str(a.workdir / "hf_home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
    device = setup_device(a.device, PROG)
    quiet_imports()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from hub_reflow.evaluate import chunk, observation_batch, rmse
    from hub_reflow.smolvla import policy_inputs
    from hub_reflow.testing.tiny_world import TINY_REPO_ID, build_tiny_world

    t_start = time.perf_counter()
    timings = {}
    if a.teacher is None:
        print(f"tiny world + teacher ({a.teacher_train_steps} lerobot-train steps) in {a.workdir}", file=sys.stderr, flush=True)
        world = build_tiny_world(a.workdir / "world", teacher_steps=a.teacher_train_steps)
        teacher, dataset_root = world.teacher, world.dataset_root
    else:
        teacher, dataset_root = a.teacher.resolve(), a.dataset_root.resolve()
    timings["world_and_teacher_s"] = time.perf_counter() - t_start

    runs = a.workdir / ("runs-smoke" if a.smoke else "runs") / f"steps{a.student_train_steps}"
    students = {}
    for k in (1, 2):
        t0 = time.perf_counter()
        print(f"reflow student for {k} step(s): {a.student_train_steps} steps", file=sys.stderr, flush=True)
        students[k] = train_student(teacher, dataset_root, TINY_REPO_ID, runs / f"student{k}",
                                    steps=a.student_train_steps, student_steps=k, device=device.type)
        timings[f"student{k}_train_s"] = time.perf_counter() - t0
    if a.round2:
        t0 = time.perf_counter()
        print("reflow round 2: student 1 (at 10 steps) teaches a new 1-step student", file=sys.stderr, flush=True)
        students["r2"] = train_student(students[1], dataset_root, TINY_REPO_ID, runs / "round2-student1",
                                       steps=a.student_train_steps, student_steps=1, device=device.type)
        timings["round2_train_s"] = time.perf_counter() - t0

    def load(path):
        pol = SmolVLAPolicy.from_pretrained(str(path)).to(device).eval()
        pre, post = make_pre_post_processors(pol.config, pretrained_path=str(path),
                                             preprocessor_overrides={"device_processor": {"device": device.type}})
        return pol, pre, post

    models = {"teacher": load(teacher), "student1": load(students[1]), "student2": load(students[2])}
    if a.round2:
        models["round2"] = load(students["r2"])
    samplers = [  # (row name, model, Euler steps, noise)
        ("teacher @10", "teacher", 10, "z"), ("teacher @10 (other noise)", "teacher", 10, "z_other"),
        ("teacher @2", "teacher", 2, "z"), ("teacher @1", "teacher", 1, "z"),
        ("student(2-step) @2", "student2", 2, "z"), ("student(1-step) @1", "student1", 1, "z"),
    ]
    if a.round2:
        samplers += [("student(1-step) @10", "student1", 10, "z"), ("round-2 student(1-step) @1", "round2", 1, "z")]

    ds = LeRobotDataset(TINY_REPO_ID, root=dataset_root)
    n_eps = ds.meta.total_episodes
    start = int(ds.meta.episodes["dataset_from_index"][n_eps - HOLDOUT])
    idx = list(range(start, len(ds)))
    if a.smoke:
        idx = idx[::5]  # 16 of the 80 held-out frames, from all 4 episodes
    raw = observation_batch(ds, idx)
    frames = [ds[i] for i in idx]
    ep_len = {int(e): int(t - f) for e, f, t in zip(ds.meta.episodes["episode_index"], ds.meta.episodes["dataset_from_index"],
                                                     ds.meta.episodes["dataset_to_index"], strict=True)}
    cfg = models["teacher"][0].config
    adim = cfg.action_feature.shape[0]
    modes, valid = true_modes(raw["observation.state"].float(), torch.tensor([int(f["frame_index"]) for f in frames]),
                              torch.tensor([ep_len[int(f["episode_index"])] for f in frames]), cfg.chunk_size)
    g = torch.Generator().manual_seed(a.seed)
    noises = {"z": torch.randn(len(idx), cfg.chunk_size, cfg.max_action_dim, generator=g)}
    noises["z_other"] = torch.randn(len(idx), cfg.chunk_size, cfg.max_action_dim, generator=g)

    chunks, rows = {}, []
    for name, model, k, nz in samplers:
        pol, pre, post = models[model]
        z = noises[nz].to(device)
        out = chunk(pol, pre, post, raw, z, k).cpu()
        chunks[name] = out
        inputs = policy_inputs(pol, pre(dict(raw)))
        row = {"name": name, "model": model, "steps": k, "noise": nz,
               "rmse_vs_teacher10": rmse(out, chunks["teacher @10"]) if name != "teacher @10" else 0.0,
               **mode_metrics(out, modes, valid)}
        with torch.no_grad():
            row.update(straightness(pol, inputs, z, k, adim))
        rows.append(row)
        print(f"  {name}: rmse {row['rmse_vs_teacher10']:.4f} mode-dist {row['mode_distance']:.4f} "
              f"hit {row['mode_hit_rate']:.2f} S_fine {row['S_fine']:.3f}", file=sys.stderr, flush=True)

    hw = hardware(device)
    settings = {"smoke": a.smoke, "teacher": "given" if a.teacher_given else "trained here",
                "teacher_train_steps": None if a.teacher_given else a.teacher_train_steps,
                "student_train_steps": a.student_train_steps, "student_batch_size": 32, "student_lr": 1e-3,
                "teacher_steps_for_pairs": 10, "round2": a.round2, "holdout_episodes": HOLDOUT,
                "frames": len(idx), "seed": a.seed, "hit_threshold": HIT, "fine_times": FINE_TIMES,
                "chunk_size": cfg.chunk_size, "action_dim": adim,
                "teacher_dtype": str(next(models["teacher"][0].model.vlm_with_expert.vlm.parameters()).dtype)}
    table = markdown(
        ["sampler", "Euler steps", "RMSE vs teacher@10", "nearest-mode dist", "mode-hit rate",
         "S (Euler grid)", "S (10-pt grid)"],
        [[r["name"], str(r["steps"]), fmt(r["rmse_vs_teacher10"], 4), fmt(r["mode_distance"], 4),
          fmt(r["mode_hit_rate"], 2), fmt(r["S_euler"], 3), fmt(r["S_fine"], 3)] for r in rows],
    )
    timings["total_s"] = time.perf_counter() - t_start
    out = write_json(a.out, {"benchmark": "fidelity", "hardware": hw, "settings": settings, "rows": rows,
                             "timings": timings, "table": table})
    if not a.no_png:
        _plot(chunks, modes, valid, out.with_suffix(".png"), hardware_line(hw))
    print(f"# Reflow fidelity on the multimodal tiny task ({'smoke' if a.smoke else 'full run'})")
    print(f"hardware: {hardware_line(hw)}; {len(idx)} held-out frames ({HOLDOUT} episodes), shared noise (seed {a.seed}); "
          f"teacher {settings['teacher']}, students {a.student_train_steps} reflow steps; mode hit: distance < {HIT}; "
          f"S in normalised action units; json: {out}")
    print()
    print(table)
    return 0


def _plot(chunks: dict, modes, valid, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, c in chunks.items():
        if "other noise" in name:
            continue
        x = c[..., 0][valid].flatten().numpy()
        ax.hist(x, bins=60, range=(-2, 2), histtype="step", label=name)
    for d in (1, -1):
        ax.axvline(d, color="k", lw=0.8, ls=":")
    ax.set_xlabel("x action (real units); true modes at +-1")
    ax.set_ylabel("count (valid chunk positions)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
