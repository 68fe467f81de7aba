"""Closed loop under LeRobot's real-time chunking (RTC): the default student and its 10-step teacher,
each chunk computed while the previous one runs (``hub-reflow eval --inference rtc``: LeRobot's own
``RTCProcessor`` guidance and ``ActionQueue``, an inference latency of exactly ``--delays`` control steps),
on a closed-loop tiny world; paired episodes (episode i: env and torch seed i) for every row.

Rows per delay: the teacher at 10 steps with LeRobot's RTC settings (``lerobot-rollout``'s defaults,
``queue_threshold`` 30 unless ``--queue-threshold``); each student at its step count
with LeRobot's settings and with the recommended ones (``max_guidance_weight`` = its step count,
hub_reflow/rtc.py); and every policy without RTC (sync: one chunk after the other). LeRobot's
``execution_horizon`` (10) is cut to the chunk on a world of shorter chunks (its RTC engine fails on a
longer one). Per row: success with its Wilson interval, the jump |a_t - a_{t-1}| where a new chunk
takes over and within chunks (mean, 95th percentile), and the new chunks' error on the committed
actions. Worlds (``--world``): ``closed-loop`` (post_world.ENV_ID, 8-action chunks: the side shows once
the robot has moved) and ``hidden-side`` (post_world.HIDDEN_ENV_ID, 10-action chunks: no observation
shows the side, so only committed actions carry it). JSON under benchmarks/results/rtc/.

    OMP_NUM_THREADS=1 python benchmarks/rtc.py                         # closed-loop world, delays 2,3,4, 200 episodes
    OMP_NUM_THREADS=1 python benchmarks/rtc.py --world hidden-side --student-steps 1,2
    python benchmarks/rtc.py --teacher T --dataset-root D              # a built world's teacher and dataset
    python benchmarks/rtc.py --smoke                                   # minutes: plumbing only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from closed_loop import _ints  # noqa: E402
from common import RESULTS, OptionError, hub_env, markdown, reused_run, write_json  # noqa: E402

PROG = "rtc.py"
DEFAULT_WORKDIR = Path("outputs/bench-rtc")
KEYS = ("success_rate", "success_ci95", "successes", "episodes", "mean_length", "boundary_jump", "within_jump",
        "prefix_error", "inference", "num_steps")


def parse(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    p.add_argument("--world", choices=("closed-loop", "hidden-side"), default="closed-loop")
    p.add_argument("--delays", type=_ints, default=[2, 3, 4], help="inference delays in control steps")
    p.add_argument("--episodes", type=int, default=200, help="paired episodes per row")
    p.add_argument("--queue-threshold", type=int, default=None,
                   help="LeRobot's --inference.queue_threshold: a chunk is asked for when the queue holds this many actions "
                   "or fewer (default: LeRobot's, 30: for chunks this short, as soon as the previous chunk took over)")
    p.add_argument("--student-steps", type=_ints, default=[1], help="Euler steps of the students (one default run each)")
    p.add_argument("--train-steps", type=int, default=None, help="hub-reflow train --steps (default: its own)")
    p.add_argument("--seed", type=int, default=1000, help="the students' training seed")
    p.add_argument("--teacher-train-steps", type=int, default=1000)
    p.add_argument("--teacher", type=Path, default=None, help="the world's teacher (with --dataset-root)")
    p.add_argument("--dataset-root", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="delay 3, 3 episodes, a 20-step teacher, 4-step students")
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/rtc/rtc_<world>.json")
    a = p.parse_args(argv)
    if min(a.episodes, *a.student_steps, a.queue_threshold if a.queue_threshold is not None else 1) < 1 or (a.train_steps is not None and a.train_steps < 1):
        raise OptionError(PROG, "--episodes, --student-steps and --train-steps must be at least 1")
    if (a.teacher is None) != (a.dataset_root is None):
        raise OptionError(PROG, "--teacher and --dataset-root go together")
    if a.smoke:
        a.delays, a.episodes, a.teacher_train_steps, a.train_steps = [3], 3, 20, 4
    threshold = "" if a.queue_threshold is None else f"_threshold{a.queue_threshold}"
    a.out = a.out or RESULTS / "rtc" / f"rtc_{a.world}{threshold}{'_smoke' if a.smoke else ''}.json"
    return a


def main(argv=None) -> int:
    given_teacher = any(x == "--teacher" or x.startswith("--teacher=") for x in (sys.argv[1:] if argv is None else argv))
    hub_env(argv, DEFAULT_WORKDIR, private_cache=not given_teacher)
    a = parse(argv)
    from hub_reflow.logs import configured

    with configured(False):
        return bench(a)


def bench(a) -> int:
    from hub_reflow.closed_loop import EvalArgs, evaluate_closed_loop
    from hub_reflow.closed_loop.stats import paired_comparison
    from hub_reflow.config import ReflowConfig
    from hub_reflow.closed_loop.envs import EnvChoice
    from hub_reflow.rtc import LEROBOT_EXECUTION_HORIZON
    from hub_reflow.testing.post_world import ENV_SPEC, HIDDEN_ENV_ID
    from hub_reflow.testing.tiny_world import CLOSED_LOOP_WORLD, HIDDEN_SIDE_WORLD, TINY_REPO_ID, build_tiny_world
    from hub_reflow.train import TrainArgs, train

    t0 = time.time()
    spec = {"closed-loop": CLOSED_LOOP_WORLD, "hidden-side": HIDDEN_SIDE_WORLD}[a.world]
    env = EnvChoice(env_id=ENV_SPEC if a.world == "closed-loop" else f"hub_reflow.testing.post_world:{HIDDEN_ENV_ID}")
    if a.teacher is None:
        world = build_tiny_world(a.workdir / "world", teacher_steps=a.teacher_train_steps, spec=spec)
        teacher, dataset_root = world.teacher, world.dataset_root
    else:
        teacher, dataset_root = a.teacher, a.dataset_root
    students = {}
    for k in a.student_steps:
        out = a.workdir / f"student-{a.world}-k{k}-seed{a.seed}"
        rcfg = ReflowConfig(student_steps=k, seed=a.seed, **({"steps": a.train_steps} if a.train_steps else {}))
        if not reused_run(PROG, out, rcfg):
            train(TrainArgs(teacher=str(teacher), dataset=TINY_REPO_ID, dataset_root=dataset_root, output_dir=out, device="cpu",
                            log_freq=max(rcfg.steps // 5, 1), progress=False, reflow=rcfg))
        students[k] = out / "checkpoints" / "last" / "pretrained_model"
    horizon = min(LEROBOT_EXECUTION_HORIZON, spec.chunk_size)
    lerobot = [f"--inference.rtc.execution_horizon={horizon}"] if horizon != LEROBOT_EXECUTION_HORIZON else []
    queue = [f"--inference.queue_threshold={a.queue_threshold}"] if a.queue_threshold is not None else []

    def run(student=None, **kw) -> dict:
        r = evaluate_closed_loop(EvalArgs(student=str(student) if student else None, teacher=None if student else str(teacher),
                                          teacher_steps=(10,), env=env, episodes=a.episodes, device="cpu", **kw))
        return {label: {f: p[f] for f in KEYS} | {"outcomes": p["outcomes"]} for label, p in r.policies.items()}

    rows = {"sync": run()}
    for k, path in students.items():
        rows["sync"] |= run(path)
    for d in a.delays:
        rtc = dict(inference="rtc", inference_delay=d, inference_args=tuple(lerobot + queue))
        rows[f"delay {d}"] = run(**rtc)
        for k, path in students.items():
            rows[f"delay {d}"] |= run(path, **rtc)
        print(f"delay {d}: " + ", ".join(f"{label} {r['success_rate']:.2f}" for label, r in rows[f"delay {d}"].items()))
    for group in rows.values():
        teacher_row = next(label for label in group if label.startswith("teacher@10"))
        for label, r in group.items():
            if label != teacher_row:
                r["vs_teacher"] = paired_comparison(r["outcomes"], group[teacher_row]["outcomes"])

    payload = {
        "benchmark": "rtc",
        "settings": {"world": a.world, "env": env.env_id, "chunk_size": spec.chunk_size, "delays": a.delays,
                     "episodes": a.episodes, "student_steps": a.student_steps, "train_steps": a.train_steps,
                     "seed": a.seed, "teacher_train_steps": a.teacher_train_steps, "smoke": a.smoke,
                     "lerobot_rtc_flags": lerobot, "queue_flags": queue},
        "rows": rows,
        "total_minutes": (time.time() - t0) / 60,
    }
    write_json(a.out, payload)
    header = ["policy", *rows]
    labels = list(dict.fromkeys(label.replace(" rtc", "") for group in rows.values() for label in group))
    table = []
    for label in labels:
        cells = []
        for group in rows.values():
            r = next((r for lab, r in group.items() if lab.replace(" rtc", "") == label), None)
            cells.append("" if r is None else f"{100 * r['success_rate']:.1f}% (jump {r['boundary_jump']['mean']:.3f})")
        table.append([label, *cells])
    print(f"wrote {a.out}")
    print(markdown(header, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
