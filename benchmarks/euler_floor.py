"""How far the teacher's N-step answer lies from its 10-step one (the reference ``verify`` and the
fidelity ratio use), relative to its 1-step answer: the floor of a student trained on N-step targets
(``hub-reflow train --teacher-steps N``), measured against teacher@10.

A student that reproduced its N-step targets exactly would have the MSE ratio
MSE(teacher@N, teacher@10) / MSE(teacher@1, teacher@10) against teacher@10 (docs/fidelity.md#4-offline-fidelity-is-not-closed-loop-success):
0 for N = 10, and above 0 for every other N however well it trains. The same frames (every
``--stride``-th of the dataset's last ``--holdout`` episodes) and the same noise draws serve every N;
chunks in real units through LeRobot's own ``predict_action_chunk``. Also MSE(teacher@N,
teacher@``--exact``): how close N steps come to the ODE's solution (``--exact`` steps standing in
for it).

    python benchmarks/euler_floor.py --teacher T --dataset-root D [--steps 1,2,5,10,15,20,40] [--exact 100]

Prints a markdown table; writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from closed_loop import _ints  # noqa: E402
from common import RESULTS, OptionError, fmt, hardware, hardware_line, markdown, quiet_imports, write_json  # noqa: E402

PROG = "euler_floor.py"


def parse(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", type=Path, required=True, help="a SmolVLA checkpoint folder (pretrained_model/)")
    p.add_argument("--dataset-root", type=Path, required=True, help="its LeRobotDataset folder")
    p.add_argument("--steps", type=_ints, default=[1, 2, 5, 10, 15, 20, 40], help="teacher Euler step counts")
    p.add_argument("--exact", type=int, default=100, help="the step count standing in for the exact ODE solution")
    p.add_argument("--holdout", type=int, default=4, help="frames from the dataset's last this many episodes")
    p.add_argument("--stride", type=int, default=1, help="every this many-th frame of them")
    p.add_argument("--noises", type=int, default=4, help="noise draws per frame (the same for every step count)")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--out", type=Path, default=RESULTS / "euler_floor" / "euler_floor.json")
    a = p.parse_args(argv)
    if min(a.exact, a.holdout, a.stride, a.noises, *a.steps) < 1:
        raise OptionError(PROG, "--steps, --exact, --holdout, --stride and --noises must be >= 1")
    if 1 not in a.steps or 10 not in a.steps:
        raise OptionError(PROG, f"--steps must include 1 and 10 (the ratio's terms), got {a.steps}")
    for name in ("teacher", "dataset_root"):
        if not getattr(a, name).is_dir():
            raise OptionError(PROG, f"--{name.replace('_', '-')} {getattr(a, name)} is not a folder")
    return a


def main(argv=None) -> int:
    a = parse(argv)  # a bad option: OptionError, one line and exit 2
    quiet_imports()
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from hub_reflow.data import dataset_root_repo_id
    from hub_reflow.checks.fidelity import chunk, observation_batch

    policy = SmolVLAPolicy.from_pretrained(str(a.teacher)).eval()
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(a.teacher))
    ds = LeRobotDataset(dataset_root_repo_id(a.dataset_root) or "local/dataset", root=a.dataset_root)
    meta = ds.meta.episodes
    start = int(meta["dataset_from_index"][max(ds.meta.total_episodes - a.holdout, 0)])
    idx = list(range(start, len(ds)))[:: a.stride]
    raw = observation_batch(ds, idx)
    g = torch.Generator().manual_seed(a.seed)
    cfg = policy.config
    draws = [torch.randn(len(idx), cfg.chunk_size, cfg.max_action_dim, generator=g) for _ in range(a.noises)]
    counts = sorted({*a.steps, a.exact})
    outs = {n: [chunk(policy, pre, post, raw, z, n) for z in draws] for n in counts}

    def mse(n: int, m: int) -> float:
        return sum(float(((x - y) ** 2).mean()) for x, y in zip(outs[n], outs[m], strict=True)) / a.noises

    one = mse(1, 10)
    rows = [{"teacher_steps": n, "mse_vs_teacher10": mse(n, 10), "floor_ratio_vs_teacher10": mse(n, 10) / one,
             f"mse_vs_teacher{a.exact}": mse(n, a.exact)} for n in a.steps]
    table = markdown(["teacher steps N", "MSE(teacher@N, teacher@10)", "floor ratio vs teacher@10",
                      f"MSE(teacher@N, teacher@{a.exact})"],
                     [[str(r["teacher_steps"]), f"{r['mse_vs_teacher10']:.3g}", fmt(r["floor_ratio_vs_teacher10"], 4),
                       f"{r[f'mse_vs_teacher{a.exact}']:.3g}"] for r in rows])
    hw = hardware(torch.device("cpu"))
    print(f"{len(idx)} frames x {a.noises} noise draws; {hardware_line(hw)}")
    print(table)
    write_json(a.out, {"benchmark": "euler_floor", "hardware": hw,
                       "settings": {"frames": len(idx), "noises": a.noises, "seed": a.seed, "exact": a.exact,
                                    "holdout": a.holdout, "stride": a.stride, "teacher_lr": float(cfg.optimizer_lr),
                                    "teacher_num_steps": cfg.num_steps},
                       "rows": rows, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
