"""Closed-loop success of the 1-step reflow student against its training steps, on the closed-loop
tiny world (``hub_reflow/testing/post_world.py``): does the student drive like its 10-step teacher?

Per training seed (``--seeds``): one ``hub-reflow train`` run (its defaults: batch ``--batch-size``
8, 1 Euler step, a peak rate 3x the teacher's) to the largest of ``--steps``, checkpointed at every
other one (so the smaller step counts are snapshots of the same run, under its learning-rate
schedule, not runs of their own); step 0 is the untrained copy, which is the teacher's weights at 1
step. Every checkpoint drives ``--episodes`` paired episodes through ``hub-reflow eval``'s
``evaluate_closed_loop`` (LeRobot's ``eval_policy``; episode i: env and torch seed i), and so do
teacher@10 and the teacher at the students' step count (the lines). JSON and PNG under benchmarks/results/closed_loop/.
Options pass `--student-steps`, `--noises-per-frame`, `--frame-sampling`, `--lr`, `--lr-scale` and `--teacher-steps`
to the students' training; a --workdir run made with other settings is refused, not reused.

    OMP_NUM_THREADS=1 python benchmarks/closed_loop.py                  # 3 seeds x 0..2000 steps, 200 episodes
    python benchmarks/closed_loop.py --teacher T --dataset-root D      # reuse a tiny world's teacher and dataset
                                                                       # (HF_HOME: a cache with the tiny backbone)
    python benchmarks/closed_loop.py --smoke                           # minutes: plumbing only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, OptionError, hub_env, markdown, reused_run, write_json  # noqa: E402

PROG = "closed_loop.py"
DEFAULT_WORKDIR = Path("outputs/bench-closed-loop")


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def parse(argv):
    from hub_reflow.validation import float_in  # after hub_env (hub_reflow's Hub helpers import huggingface_hub)

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    p.add_argument("--steps", type=_ints, default=[0, 200, 400, 1000, 2000],
                   help="training steps to evaluate at (snapshots of one run as long as the largest; "
                   "default: up to hub-reflow train's default length)")
    p.add_argument("--seeds", type=_ints, default=[1000, 1001, 1002], help="training seeds")
    p.add_argument("--episodes", type=int, default=200, help="paired episodes per policy")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--student-steps", type=int, default=1, help="Euler steps of the students (hub-reflow train's)")
    p.add_argument("--noises-per-frame", type=int, default=None, help="hub-reflow train's --noises-per-frame (default: its own)")
    p.add_argument("--frame-sampling", default=None, help="hub-reflow train's --frame-sampling (default: its own)")
    p.add_argument("--lr", type=float_in(0), default=None, help="hub-reflow train's --lr (default: the teacher's)")
    p.add_argument("--lr-scale", type=float_in(0), default=None, help="hub-reflow train's --lr-scale (default: its own)")
    p.add_argument("--teacher-steps", type=int, default=None,
                   help="hub-reflow train's --teacher-steps, the teacher's Euler steps per target (default: its own, 10)")
    p.add_argument("--teacher-train-steps", type=int, default=1000)
    p.add_argument("--teacher", type=Path, default=None, help="a closed-loop tiny-world teacher (with --dataset-root)")
    p.add_argument("--dataset-root", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="2 seeds x 0,4 steps, 3 episodes, a 20-step teacher")
    p.add_argument("--out", type=Path, default=RESULTS / "closed_loop" / "closed_loop.json")
    a = p.parse_args(argv)
    if min(a.episodes, a.batch_size, a.student_steps, *(v for v in (a.noises_per_frame, a.teacher_steps) if v is not None)) < 1:
        raise OptionError(PROG, "--episodes, --batch-size, --student-steps, --noises-per-frame and --teacher-steps must be "
                          "at least 1")
    if (a.teacher is None) != (a.dataset_root is None):
        raise OptionError(PROG, "--teacher and --dataset-root go together")
    if a.smoke:
        a.steps, a.seeds, a.episodes, a.teacher_train_steps = [0, 4], [1000, 1001], 3, 20
    a.steps = sorted(set(a.steps))
    return a


def checkpoints(run: Path) -> dict[int, Path]:
    out = {}
    for d in (run / "checkpoints").iterdir():
        if d.name != "last" and d.name.isdigit():
            out[int(d.name)] = d / "pretrained_model"
    return out


def main(argv=None) -> int:
    given_teacher = any(x == "--teacher" or x.startswith("--teacher=") for x in (sys.argv[1:] if argv is None else argv))
    hub_env(argv, DEFAULT_WORKDIR, private_cache=not given_teacher)  # a given teacher: the caller's HF cache
    a = parse(argv)
    from hub_reflow.logs import configured

    with configured(False):  # other libraries' bars, warnings and loading prints off
        return bench(a)


def bench(a) -> int:
    from hub_reflow.closed_loop import EvalArgs, evaluate_closed_loop
    from hub_reflow.config import ReflowConfig
    from hub_reflow.closed_loop.envs import TINY_ENV, EnvChoice
    from hub_reflow.testing.tiny_world import CLOSED_LOOP_WORLD, TINY_REPO_ID, build_tiny_world
    from hub_reflow.train import TrainArgs, train

    a.noises_per_frame = a.noises_per_frame or ReflowConfig.noises_per_frame
    a.frame_sampling = a.frame_sampling or ReflowConfig.frame_sampling
    a.teacher_steps = a.teacher_steps if a.teacher_steps is not None else ReflowConfig.teacher_steps
    a.lr_scale = ReflowConfig(student_steps=a.student_steps, lr=a.lr, lr_scale=a.lr_scale).lr_scale

    t0 = time.time()
    if a.teacher is None:
        world = build_tiny_world(a.workdir / "world", teacher_steps=a.teacher_train_steps, spec=CLOSED_LOOP_WORLD)
        teacher, dataset_root = world.teacher, world.dataset_root
    else:
        teacher, dataset_root = a.teacher, a.dataset_root
    env = EnvChoice(env_id=TINY_ENV)

    def run(student=None, **kw) -> dict:
        r = evaluate_closed_loop(EvalArgs(student=str(student) if student else None, teacher=None if student else str(teacher),
                                          env=env, episodes=a.episodes, device="cpu", **kw))
        return next(iter(r.policies.values()))

    k = a.student_steps
    low = f"teacher@{k}"  # the teacher at the student's step count: what reflow must beat
    lines = {"teacher@10": run(teacher_steps=(10,)), low: run(teacher_steps=(k,))}
    print(f"teacher@10 {lines['teacher@10']['success_rate']:.2f}, {low} {lines[low]['success_rate']:.2f}")
    curves, minutes = {}, {}
    top = max(a.steps)
    for seed in a.seeds:
        curve = {0: lines[low]}  # the untrained copy: the teacher's weights at the student's step count
        if top > 0:
            out = a.workdir / f"student-seed{seed}"
            start = time.time()
            rcfg = ReflowConfig(steps=top, batch_size=a.batch_size, seed=seed, holdout_episodes=4, student_steps=k,
                                noises_per_frame=a.noises_per_frame, frame_sampling=a.frame_sampling, lr=a.lr,
                                lr_scale=a.lr_scale, teacher_steps=a.teacher_steps)
            if not reused_run(PROG, out, rcfg):
                save = min(s for s in a.steps if s > 0)
                train(TrainArgs(teacher=str(teacher), dataset=TINY_REPO_ID, dataset_root=dataset_root, output_dir=out,
                                device="cpu", log_freq=max(top // 5, 1), progress=False, save_freq=save, reflow=rcfg))
            minutes[seed] = (time.time() - start) / 60
            found = checkpoints(out)
            for s in a.steps:
                if s > 0:
                    if s not in found:
                        raise OptionError(PROG, f"no checkpoint at step {s} in {out} (steps must be multiples of the smallest)")
                    curve[s] = run(found[s])
        curves[seed] = curve
        print(f"seed {seed}: " + ", ".join(f"{s}: {c['success_rate']:.2f}" for s, c in curve.items()))

    keys = ("success_rate", "success_ci95", "successes", "episodes", "mean_length")
    payload = {
        "benchmark": "closed_loop",
        "settings": {"steps": a.steps, "seeds": a.seeds, "episodes": a.episodes, "batch_size": a.batch_size,
                     "student_steps": k, "noises_per_frame": a.noises_per_frame, "frame_sampling": a.frame_sampling, "lr": a.lr,
                     "lr_scale": a.lr_scale,
                     "teacher_steps": a.teacher_steps,
                     "teacher_train_steps": a.teacher_train_steps, "smoke": a.smoke, "env": TINY_ENV},
        "teacher": {k: {f: v[f] for f in keys} for k, v in lines.items()},
        "students": {str(seed): {str(s): {f: c[f] for f in keys} for s, c in curve.items()} for seed, curve in curves.items()},
        "train_minutes": {str(k): v for k, v in minutes.items()},
        "total_minutes": (time.time() - t0) / 60,
    }
    out = write_json(a.out, payload)
    plot(payload, out.with_suffix(".png"))
    header = ["training steps", *[f"student@{k}, seed {s}" for s in a.seeds], "mean", "teacher@10", low]
    rows = [[str(s), *[f"{100 * curves[seed][s]['success_rate']:.1f}%" for seed in a.seeds],
             f"{100 * sum(curves[seed][s]['success_rate'] for seed in a.seeds) / len(a.seeds):.1f}%",
             f"{100 * lines['teacher@10']['success_rate']:.1f}%", f"{100 * lines[low]['success_rate']:.1f}%"]
            for s in a.steps]
    print(markdown(header, rows))
    return 0


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for seed, curve in payload["students"].items():
        steps = [int(s) for s in curve]
        k = payload["settings"].get("student_steps", 1)
        ax.plot(steps, [100 * c["success_rate"] for c in curve.values()], marker="o", label=f"student@{k}, seed {seed}")
    for name, style in zip(payload["teacher"], ("-", ":")):
        t = payload["teacher"][name]
        ax.axhline(100 * t["success_rate"], ls=style, color="black", label=name)
        ax.axhspan(100 * t["success_ci95"][0], 100 * t["success_ci95"][1], color="grey", alpha=0.15)
    ax.set_xlabel("reflow training steps (batch %d)" % payload["settings"]["batch_size"])
    ax.set_ylabel("closed-loop success (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"closed-loop tiny world, {payload['settings']['episodes']} paired episodes", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
