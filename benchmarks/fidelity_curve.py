"""Student fidelity as a curve against wall time and training steps: ``hub-reflow train`` at its
defaults against the reference loop (``reference_loop.py``), several training seeds, on the tiny
worlds (docs/fidelity.md).

Per world and seed, both loops train a 1-step student for ``--steps`` (600) at ``--batch-size`` (8)
and snapshot it every ``--every`` (100) steps, in this process, one after the other (nothing else
should run: the wall times are compared). Wall time of a snapshot: for ``hub-reflow train`` the sum
of the phases it times (``training.time_s`` in each checkpoint's lineage: setup, data, preprocess,
teacher, student, logging; snapshot writes and the final measurement against the teacher left out);
for the reference loop the seconds since the call began, snapshot writes left out. Step 0 is the
untrained copy (the teacher at 1 step: ratio 1).

Each snapshot, on the held-out episodes with shared noise (``--noises`` draws per frame, the same for
every policy): the MSE ratio MSE(student@1, teacher@10) / MSE(teacher@1, teacher@10); on the offline
worlds the mode-hit rate (``fidelity.py``'s: nearest true mode within ``HIT``); on the closed-loop world
the closed-loop success over ``--episodes`` paired episodes (``hub-reflow eval``'s
``evaluate_closed_loop``; episode i: env and torch seed i), against teacher@10's and teacher@1's.

The issue-19 targets, per world, on the means over seeds: (a) ours reaches the reference's final MSE
ratio in at most half the reference's final wall time, or (b) ours, at the reference's final wall
time (its last snapshot within it), has at most half the reference's final ratio.

    python benchmarks/fidelity_curve.py                         # tiny, two-camera, closed-loop; 3 seeds
    python benchmarks/fidelity_curve.py --ours-steps 900            # ours' curve goes on past the reference's 600 steps
    python benchmarks/fidelity_curve.py --worlds tiny --seeds 1000
    python benchmarks/fidelity_curve.py --smoke                 # plumbing: 20-step teachers, 4 steps

Prints one table per world and the targets; writes JSON (``--out``) and one PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from closed_loop import _ints  # noqa: E402
from common import (  # noqa: E402
    RESULTS, OptionError, hardware, hardware_line, hub_env, markdown, quiet_imports, reused_run, write_json)

PROG = "fidelity_curve.py"
DEFAULT_WORKDIR = Path("outputs/bench/fidelity_curve")
CURVE_WORLDS = ("tiny", "two-camera", "closed-loop")
LOOPS = ("hub-reflow", "reference")


def parse(argv):
    from hub_reflow.validation import float_in  # after hub_env (hub_reflow's Hub helpers import huggingface_hub)

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--worlds", default=",".join(CURVE_WORLDS), help=f"comma-separated, of {', '.join(CURVE_WORLDS)}")
    p.add_argument("--seeds", type=_ints, default=[1000, 1001, 1002], help="training seeds")
    p.add_argument("--steps", type=int, default=600, help="training steps of both loops")
    p.add_argument("--ours-steps", type=int, default=None,
                   help="training steps of hub-reflow train's runs (default: --steps): its curve may go on past the reference's")
    p.add_argument("--every", type=int, default=100, help="a snapshot every this many steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--noises", type=int, default=4, help="shared noise draws per held-out frame")
    p.add_argument("--episodes", type=int, default=100, help="closed-loop episodes per snapshot (closed-loop world)")
    p.add_argument("--teacher-train-steps", type=int, default=1000, help="lerobot-train steps of each world's teacher")
    p.add_argument("--teacher", type=Path, default=None, help="an existing teacher's pretrained_model/ (one world, with --dataset-root)")
    p.add_argument("--dataset-root", type=Path, default=None, help="the dataset of --teacher")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="worlds and runs are built here (and reused)")
    p.add_argument("--seed", type=int, default=12345, help="the shared evaluation noise")
    p.add_argument("--noises-per-frame", type=int, default=None, help="hub-reflow train's --noises-per-frame (default: its own)")
    p.add_argument("--frame-sampling", default=None, help="ours' --frame-sampling (default: hub-reflow train's)")
    p.add_argument("--lr", type=float_in(0), default=None,
                   help="base learning rate of hub-reflow train's students (default: train's own); the reference keeps the teacher's")
    p.add_argument("--lr-scale", type=float_in(0), default=None, help="ours' peak rate over the base (default: train's own, 3)")
    p.add_argument("--smoke", action="store_true", help="20-step teachers, 4 steps every 2, 1 seed, 2 episodes")
    p.add_argument("--out", type=Path, default=RESULTS / "fidelity_curve" / "fidelity_curve.json")
    a = p.parse_args(argv)
    a.worlds = a.worlds.split(",")
    if a.smoke:
        a.teacher_train_steps, a.steps, a.every, a.seeds, a.episodes, a.noises = 20, 4, 2, a.seeds[:1], 2, 1
    for w in a.worlds:
        if w not in CURVE_WORLDS:
            raise OptionError(PROG, f"--worlds: {w!r} is not one of {', '.join(CURVE_WORLDS)}")
    if min(a.steps, a.every, a.batch_size, a.noises, a.episodes, a.teacher_train_steps) < 1 or not a.seeds:
        raise OptionError(PROG, "--steps, --every, --batch-size, --noises, --episodes and --teacher-train-steps must be >= 1, "
                          "and --seeds not empty")
    a.ours_steps = a.ours_steps or a.steps
    if a.ours_steps < a.steps:
        raise OptionError(PROG, f"--ours-steps {a.ours_steps} is below --steps {a.steps}")
    if a.steps % a.every or a.ours_steps % a.every:
        raise OptionError(PROG, f"--steps {a.steps} and --ours-steps {a.ours_steps} must be multiples of --every {a.every}")
    if (a.teacher is None) != (a.dataset_root is None) or (a.teacher is not None and len(a.worlds) != 1):
        raise OptionError(PROG, "--teacher and --dataset-root go together, with one --worlds entry (the teacher's world)")
    if a.teacher is not None and not (a.teacher / "config.json").is_file():
        raise OptionError(PROG, f"--teacher {a.teacher} is not a pretrained_model/ folder (no config.json)")
    return a


def world_spec(name: str):
    from hub_reflow.testing.tiny_world import CLOSED_LOOP_WORLD, WORLDS

    return CLOSED_LOOP_WORLD if name == "closed-loop" else WORLDS[name]


def train_ours(a, teacher: Path, dataset_root: Path, spec, out: Path, seed: int) -> dict[int, tuple[Path, float]]:
    """``hub-reflow train`` at its defaults (batch, steps, seed, hold-out aside): step -> (snapshot, wall s)."""
    from hub_reflow.config import ReflowConfig
    from hub_reflow.train import TrainArgs, train

    from fidelity_metrics import HOLDOUT

    rcfg = ReflowConfig(steps=a.ours_steps, batch_size=a.batch_size, seed=seed, holdout_episodes=HOLDOUT, lr=a.lr,
                        lr_scale=a.lr_scale, noises_per_frame=a.noises_per_frame, frame_sampling=a.frame_sampling)
    if not reused_run(PROG, out, rcfg):
        train(TrainArgs(teacher=str(teacher), dataset=spec.repo_id, dataset_root=dataset_root, output_dir=out, device="cpu",
                        log_freq=a.every, progress=False, save_freq=a.every, reflow=rcfg))
    snaps = {}
    for step in range(a.every, a.ours_steps + 1, a.every):
        folder = out / "checkpoints" / f"{step:06d}" / "pretrained_model"
        phases = json.loads((folder / "reflow_lineage.json").read_text())["training"]["time_s"]
        # The snapshot writes before this one are left out, as the reference loop leaves out its own.
        snaps[step] = (folder, sum(v for k, v in phases.items() if k not in ("final_measurement", "checkpoint")))
    return snaps


def train_reference(a, teacher: Path, dataset_root: Path, spec, out: Path, seed: int) -> dict[int, tuple[Path, float]]:
    """The reference loop with the same steps, batch, time sampling and seed, at the teacher's learning rate."""
    from hub_reflow.config import ReflowConfig

    from fidelity_metrics import HOLDOUT
    from reference_loop import bare_loop

    if not (out / "reference_loop.done").exists():
        bare_loop(str(teacher), spec.repo_id, str(dataset_root), a.steps, a.batch_size, ReflowConfig().time_sampling, HOLDOUT,
                  None, seed, grid_steps=1, save_to=str(out), save_every=a.every)
    folders = {step: out / f"step{step:06d}" for step in range(a.every, a.steps, a.every)} | {a.steps: out}
    return {step: (f, json.loads((f / "reference_loop.done").read_text())["wall_s"]) for step, f in folders.items()}


def evaluate_world(a, name: str) -> dict:
    import torch
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from fidelity_metrics import held_out, mode_metrics

    from hub_reflow.closed_loop import EvalArgs, evaluate_closed_loop
    from hub_reflow.closed_loop.envs import TINY_ENV, EnvChoice
    from hub_reflow.checks.fidelity import chunk
    from hub_reflow.testing.tiny_world import build_tiny_world

    spec = world_spec(name)
    if a.teacher is None:
        print(f"[{name}] world + teacher ({a.teacher_train_steps} lerobot-train steps) in {a.workdir}", file=sys.stderr, flush=True)
        world = build_tiny_world(a.workdir / "world", teacher_steps=a.teacher_train_steps, spec=spec)
        teacher, dataset_root = world.teacher, world.dataset_root
    else:
        teacher, dataset_root = a.teacher.resolve(), a.dataset_root.resolve()
    cfg = SmolVLAPolicy.from_pretrained(str(teacher)).config
    _, _, idx, raw, modes, valid = held_out(spec, dataset_root, cfg.chunk_size)
    g = torch.Generator().manual_seed(a.seed)
    draws = [torch.randn(len(idx), cfg.chunk_size, cfg.max_action_dim, generator=g) for _ in range(a.noises)]

    def outputs(path: Path, steps: int) -> list:
        pol = SmolVLAPolicy.from_pretrained(str(path)).eval()
        pre, post = make_pre_post_processors(pol.config, pretrained_path=str(path))
        return [chunk(pol, pre, post, raw, z, steps) for z in draws]

    def success(path: Path, steps: int) -> dict:
        r = evaluate_closed_loop(EvalArgs(student=None, teacher=str(path), teacher_steps=(steps,), env=EnvChoice(env_id=TINY_ENV),
                                          episodes=a.episodes, device="cpu"))
        p = next(iter(r.policies.values()))
        return {k: p[k] for k in ("success_rate", "success_ci95", "successes", "episodes")}

    ref10, ref1 = outputs(teacher, 10), outputs(teacher, 1)
    mse = lambda xs: sum(float(((x - y) ** 2).mean()) for x, y in zip(xs, ref10, strict=True)) / len(xs)  # noqa: E731
    base = mse(ref1)

    def hits(chunks: list) -> float:
        return mode_metrics(torch.cat(chunks), modes.repeat(1, a.noises, 1, 1), valid.repeat(a.noises, 1))["mode_hit_rate"]

    def point(step: int, wall: float, chunks: list, path: Path, closed: dict | None = None) -> dict:
        p = {"step": step, "wall_s": wall, "mse_ratio": mse(chunks) / base}
        if modes is not None:
            p["mode_hit_rate"] = hits(chunks)
        if spec.closed_loop:
            p["closed_loop"] = closed or success(path, 1)
        return p

    teacher_row = {"mse_teacher1_vs_teacher10": base}
    if modes is not None:
        teacher_row["mode_hit_rate@10"] = hits(ref10)
    if spec.closed_loop:
        teacher_row["closed_loop@10"], teacher_row["closed_loop@1"] = success(teacher, 10), success(teacher, 1)
    start = point(0, 0.0, ref1, teacher, teacher_row.get("closed_loop@1"))  # the untrained copy: the teacher at 1 step
    runs = {loop: {} for loop in LOOPS}
    for seed in a.seeds:
        for loop, fn in zip(LOOPS, (train_ours, train_reference), strict=True):
            ours = loop == "hub-reflow"  # the options that change only ours name its folders
            tag = ((f"-lr{a.lr:g}" if a.lr is not None else "") + (f"-lrx{a.lr_scale:g}" if a.lr_scale != 1 else "")
                   + f"-m{a.noises_per_frame}-{a.frame_sampling}") if ours else ""
            steps = a.ours_steps if ours else a.steps
            out = a.workdir / "runs" / name / f"{loop}-steps{steps}-every{a.every}-b{a.batch_size}{tag}-seed{seed}"
            print(f"[{name}] {loop}, seed {seed}: {steps} steps at batch {a.batch_size}", file=sys.stderr, flush=True)
            snaps = fn(a, teacher, dataset_root, spec, out, seed)
            runs[loop][str(seed)] = [start] + [point(s, w, outputs(f, 1), f) for s, (f, w) in sorted(snaps.items())]
    return {"settings": {"world": name, "frames": len(idx), "chunk_size": cfg.chunk_size, "teacher_lr": float(cfg.optimizer_lr)},
            "teacher": teacher_row, "runs": runs, "mean": {loop: mean_curve(runs[loop]) for loop in LOOPS}}


def mean_curve(per_seed: dict) -> list[dict]:
    """The seeds' curves averaged point by point (same steps)."""
    curves = list(per_seed.values())
    keys = [k for k in ("wall_s", "mse_ratio", "mode_hit_rate") if k in curves[0][0]]
    out = []
    for i, p in enumerate(curves[0]):
        m = {"step": p["step"], **{k: sum(c[i][k] for c in curves) / len(curves) for k in keys}}
        if "closed_loop" in p:
            m["success_rate"] = sum(c[i]["closed_loop"]["success_rate"] for c in curves) / len(curves)
        out.append(m)
    return out


def targets(res: dict) -> dict:
    """Issue 19's two ways to win, on the mean curves (module docstring)."""
    ours, ref = res["mean"]["hub-reflow"], res["mean"]["reference"]
    r_ref, w_ref = ref[-1]["mse_ratio"], ref[-1]["wall_s"]
    reach = next((p for p in ours[1:] if p["mse_ratio"] <= r_ref), None)
    within = [p for p in ours[1:] if p["wall_s"] <= w_ref]
    at_wall = within[-1] if within else None
    return {
        "reference_final_ratio": r_ref, "reference_final_wall_s": w_ref,
        "ours_wall_to_reach_reference_ratio_s": reach["wall_s"] if reach else None,
        "a_half_the_time": bool(reach and reach["wall_s"] <= 0.5 * w_ref),
        "ours_ratio_within_reference_wall": at_wall["mse_ratio"] if at_wall else None,
        "ours_step_within_reference_wall": at_wall["step"] if at_wall else None,
        "b_half_the_ratio": bool(at_wall and at_wall["mse_ratio"] <= 0.5 * r_ref),
    }


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    given = any(x == "--teacher" or x.startswith("--teacher=") for x in args)
    hub_env(args, DEFAULT_WORKDIR, private_cache=not given)  # a given teacher: the caller's HF cache
    a = parse(argv)
    import torch

    from hub_reflow.config import ReflowConfig

    a.noises_per_frame = a.noises_per_frame or ReflowConfig.noises_per_frame  # in ours' folder names: a default may change
    a.frame_sampling = a.frame_sampling or ReflowConfig.frame_sampling
    a.lr_scale = ReflowConfig(lr=a.lr, lr_scale=a.lr_scale).lr_scale  # ours are 1-step students
    a.workdir = a.workdir.resolve()
    quiet_imports()
    t0 = time.perf_counter()
    results = {name: evaluate_world(a, name) for name in a.worlds}
    for res in results.values():
        res["targets"] = targets(res)
    hw = hardware(torch.device("cpu"))
    settings = {"steps": a.steps, "ours_steps": a.ours_steps, "every": a.every, "batch_size": a.batch_size, "seeds": a.seeds, "noises": a.noises,
                "episodes": a.episodes, "teacher_train_steps": a.teacher_train_steps, "seed": a.seed, "smoke": a.smoke,
                "ours": "hub-reflow train defaults (1 Euler step, its time sampling, lr and update)"
                        + (f", base lr {a.lr:g}" if a.lr is not None else "") + f", peak rate x{a.lr_scale:g}"
                        + f", {a.noises_per_frame} noises per frame, frames drawn {a.frame_sampling}",
                "lr": a.lr, "lr_scale": a.lr_scale, "noises_per_frame": a.noises_per_frame, "frame_sampling": a.frame_sampling,
                "reference": "benchmarks/reference_loop.py (same steps, batch, time sampling, seed; the teacher's lr)"}
    out = write_json(a.out, {"benchmark": "fidelity_curve", "hardware": hw, "settings": settings, "worlds": results,
                             "total_s": time.perf_counter() - t0})
    plot(results, out.with_suffix(".png"), hardware_line(hw))
    print(f"# Fidelity against wall time ({'smoke' if a.smoke else 'full run'}); hardware: {hardware_line(hw)}; json: {out}")
    for name, res in results.items():
        print(f"\n## {name}: mean over seeds {', '.join(map(str, a.seeds))}\n")
        ours, ref = res["mean"]["hub-reflow"], res["mean"]["reference"]
        extra = "mode_hit_rate" if "mode_hit_rate" in ours[0] else "success_rate" if "success_rate" in ours[0] else None
        header = ["step", "ours wall s", "ours MSE ratio", "reference wall s", "reference MSE ratio"]
        if extra:
            header += [f"ours {extra}", f"reference {extra}"]
        blank = {"wall_s": None, "mse_ratio": None, **({extra: None} if extra else {})}
        refs = ref + [blank] * (len(ours) - len(ref))  # --ours-steps past the reference's
        cell = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        rows = [[str(o["step"]), f"{o['wall_s']:.1f}", f"{o['mse_ratio']:.4f}", cell(r["wall_s"], ".1f"), cell(r["mse_ratio"], ".4f"),
                 *([f"{o[extra]:.3f}", cell(r[extra], ".3f")] if extra else [])] for o, r in zip(ours, refs, strict=True)]
        print(markdown(header, rows))
        t = res["targets"]
        print(f"\ntargets: (a) reach the reference's ratio {t['reference_final_ratio']:.4f} within half its "
              f"{t['reference_final_wall_s']:.1f} s: {'MET' if t['a_half_the_time'] else 'not met'} "
              f"(ours: {t['ours_wall_to_reach_reference_ratio_s'] if t['ours_wall_to_reach_reference_ratio_s'] is None else round(t['ours_wall_to_reach_reference_ratio_s'], 1)} s); "
              f"(b) half its ratio within its wall time: {'MET' if t['b_half_the_ratio'] else 'not met'} "
              f"(ours at step {t['ours_step_within_reference_wall']}: {t['ours_ratio_within_reference_wall']})")
        if "closed_loop@10" in res["teacher"]:
            print(f"closed loop: teacher@10 {res['teacher']['closed_loop@10']['success_rate']:.3f}, "
                  f"teacher@1 {res['teacher']['closed_loop@1']['success_rate']:.3f} ({a.episodes} episodes)")
    return 0


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4.2 * len(results), 6.4), squeeze=False)
    for col, (name, res) in enumerate(results.items()):
        for loop, color in zip(LOOPS, ("tab:blue", "tab:orange"), strict=True):
            for seed, curve in res["runs"][loop].items():
                axes[0, col].plot([p["wall_s"] for p in curve], [p["mse_ratio"] for p in curve], color=color, alpha=0.3, lw=0.8)
            m = res["mean"][loop]
            axes[0, col].plot([p["wall_s"] for p in m], [p["mse_ratio"] for p in m], "o-", color=color, label=f"{loop} (mean)")
            key = "success_rate" if "success_rate" in m[0] else "mode_hit_rate" if "mode_hit_rate" in m[0] else None
            if key:
                axes[1, col].plot([p["wall_s"] for p in m], [p[key] for p in m], "o-", color=color, label=loop)
                axes[1, col].set_ylabel("closed-loop success" if key == "success_rate" else "mode-hit rate")
        if "closed_loop@10" in res["teacher"]:
            for k, ls in (("closed_loop@10", "--"), ("closed_loop@1", ":")):
                axes[1, col].axhline(res["teacher"][k]["success_rate"], color="k", ls=ls, lw=0.8, label=k.replace("closed_loop", "teacher"))
        elif "mode_hit_rate@10" in res["teacher"]:
            axes[1, col].axhline(res["teacher"]["mode_hit_rate@10"], color="k", ls="--", lw=0.8, label="teacher@10")
        axes[0, col].set_yscale("log")
        axes[0, col].set_title(name)
        axes[0, col].set_ylabel("MSE ratio vs teacher@10 (held out)")
        axes[1, col].set_xlabel("wall time (s)")
        axes[0, col].legend(fontsize=7)
        axes[1, col].legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
