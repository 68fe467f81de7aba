"""What ``hub-reflow train`` costs over a bare reflow loop running the same steps on the same model
and batch, and where its time goes.

    python benchmarks/train_overhead.py [--world tiny|two-camera] [--steps 600] [--batch-size 8]
    python benchmarks/train_overhead.py --smoke        # a few steps (CI)

Both run in fresh processes, one after the other, timed from process start to exit (imports, model
loading, training, and for ``hub-reflow train`` its checkpoint, final measurement and plots):

- ``bare``: the reference, the smallest loop that does the same work (``reference_loop.bare_loop``,
  about 40 lines around LeRobot's ``VLAFlowMatching.sample_actions`` and ``forward``): the teacher
  and a deep copy as the student, the VLM frozen, LeRobot's dataset, shuffled loader and
  preprocessor, the teacher's 10-step chunk for fresh noise, times from the same sampler, LeRobot's
  AdamW and cosine presets, gradient clipping; no checkpoint, no evaluation, no logging.
- ``hub-reflow train``: the real command with its defaults (and ``--steps``/``--batch-size``).

``--num-workers 0,1`` runs ``hub-reflow train`` once per data loader worker count (the bare loop
loads in the training process). The table gives the wall times, their ratio (target: at most 1.2),
and ``hub-reflow train``'s own breakdown (``training.time_s`` in the lineage file: setup, data, preprocess, teacher, student,
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

from common import RESULTS, OptionError, fmt, hardware, hardware_line, hub_env, markdown, write_json  # noqa: E402
from reference_loop import bare_loop  # noqa: E402

PROG = "train_overhead.py"
DEFAULT_WORKDIR = Path("outputs/bench/overhead")
TARGET = 1.2


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few steps (CI)")
    p.add_argument("--world", default="tiny", help="tiny or two-camera (hub_reflow.testing.tiny_world.WORLDS)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="worlds are built (and reused) here")
    p.add_argument("--teacher-train-steps", type=int, default=None, help="lerobot-train steps of the teacher (default 1000; smoke 20)")
    p.add_argument("--steps", type=int, default=None, help="reflow steps (default 600; smoke 5)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", default="0",
                   help="comma-separated --num-workers values, one hub-reflow train run each (default 0)")
    p.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/train_overhead/train_overhead[_WORLD][_smoke].json)")
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
    try:
        a.num_workers = [int(n) for n in a.num_workers.split(",")]
    except ValueError:
        raise OptionError(PROG, f"--num-workers must be comma-separated integers, got {a.num_workers!r}") from None
    if min(a.num_workers) < 0:
        raise OptionError(PROG, "--num-workers values must be >= 0")
    world = "" if a.world == "tiny" else f"_{a.world}"
    a.out = a.out or RESULTS / "train_overhead" / f"train_overhead{world}{'_smoke' if a.smoke else ''}.json"
    return a


def _timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"{PROG}: {' '.join(cmd[:3])} ... failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return wall


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    hub_env(args, DEFAULT_WORKDIR, private_cache="--child" not in args)  # a child inherits its parent's
    a = parse_args(argv)
    if a.child:
        spec = json.loads(a.child)
        bare_loop(**spec)
        return 0
    a.workdir = a.workdir.resolve()
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
    rows = [["bare loop (reference)", fmt(bare, 1), "1.00", ""]]
    runs = []
    for workers in a.num_workers:
        print(f"hub-reflow train: {a.steps} steps at batch {a.batch_size}, {workers} workers", file=sys.stderr, flush=True)
        out_dir = run_dir.with_name(f"{run_dir.name}-w{workers}")
        ours = _timed([cli, "train", "--teacher", str(world.teacher), "--dataset", world.repo_id, "--dataset-root",
                       str(world.dataset_root), "--output-dir", str(out_dir), "--steps", str(a.steps), "--batch-size",
                       str(a.batch_size), "--holdout-episodes", str(holdout), "--device", "cpu", "--no-progress",
                       "--num-workers", str(workers)], env)
        lineage = json.loads((out_dir / "checkpoints" / "last" / "pretrained_model" / "reflow_lineage.json").read_text())
        phases = lineage["training"].get("time_s", {})
        recorded = {k: lineage["reflow"].get(k) for k in ("noises_per_frame", "frame_sampling", "teacher_batch", "student_steps")}
        runs.append({"num_workers": workers, "wall_s": ours, "ratio": ours / bare, "phases_s": phases, "reflow": recorded})
        rows.append([f"hub-reflow train, {workers} workers", fmt(ours, 1), fmt(ours / bare, 2), f"target <= {TARGET}"])
        rows += [[f"  of which {k}", fmt(v, 1), "", ""] for k, v in sorted(phases.items(), key=lambda kv: -kv[1])]
        rows.append(["  of which imports, loading before setup, exit", fmt(ours - sum(phases.values()), 1), "", ""])
    table = markdown(["process", "wall s", "vs bare", ""], rows, align="lrrl")
    hw = hardware(torch.device("cpu"))
    first = runs[0]
    out = write_json(a.out, {"benchmark": "train_overhead", "hardware": hw, "world": a.world,
                             "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                             "settings": {"steps": a.steps, "batch_size": a.batch_size, "smoke": a.smoke, **bare_spec},
                             "bare_wall_s": bare, "train_wall_s": first["wall_s"], "ratio": first["ratio"], "target": TARGET,
                             "met": first["ratio"] <= TARGET, "train_phases_s": first["phases_s"], "train_runs": runs,
                             "table": table})
    print(f"# hub-reflow train vs a bare reflow loop ({a.world} world, {a.steps} steps, batch {a.batch_size})")
    print(f"hardware: {hardware_line(hw)}; json: {out}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
