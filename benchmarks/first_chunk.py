"""Where closed-loop failures on the closed-loop tiny world come from: the first action chunk from
the start position, over many noise draws, for the teacher at 10 steps and any number of students.

In ``hub_reflow/testing/post_world.py`` an episode is decided by its first chunk: a chunk that
does not move the robot sideways far enough drives into the post (the collisions happen at the end
of the first chunk). For each policy this prints, over ``--noises`` draws (the same draws for
every policy): the mean sideways displacement ``|dx|`` of the first chunk, the share of draws
with ``|dx| < --ambiguous`` (an undecided chunk: the failure), the share going right (against the
teacher's: a student that always picks one side succeeds in closed loop but has lost a mode), the
share going to the same side as teacher@10 for the same noise, and the mean squared action error
against teacher@10 for the same noise (the offline fidelity measure); with ``--episodes N``, also the closed-loop
success over N paired episodes (``hub-reflow eval``'s ``evaluate_closed_loop``, env and torch seed
i for episode i). JSON under benchmarks/results/first_chunk/.

    python benchmarks/first_chunk.py TEACHER STUDENT@1 [STUDENT2@1 ...]   # checkpoint folders, @ Euler steps
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, OptionError, hub_env, markdown, write_json  # noqa: E402

PROG = "first_chunk.py"


def parse(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("teacher", type=Path, help="the teacher checkpoint folder (run at 10 steps: the reference)")
    p.add_argument("policies", nargs="+", help="FOLDER@STEPS: checkpoints and the Euler steps to run them at")
    p.add_argument("--noises", type=int, default=256, help="noise draws from the start position")
    p.add_argument("--env-seed", type=int, default=0, help="env seed of the start position")
    p.add_argument("--ambiguous", type=float, default=0.2, help="|dx| below this: an undecided first chunk")
    p.add_argument("--episodes", type=int, default=0, help="also run N paired closed-loop episodes per policy")
    p.add_argument("--out", type=Path, default=RESULTS / "first_chunk" / "first_chunk.json")
    a = p.parse_args(argv)
    if a.noises < 2 or a.episodes < 0:
        raise OptionError(PROG, "--noises must be at least 2 and --episodes at least 0")
    specs = []
    for spec in a.policies:
        path, _, steps = spec.rpartition("@")
        if not path or not steps.isdigit() or int(steps) < 1:
            raise OptionError(PROG, f"expected FOLDER@STEPS (e.g. out/checkpoints/last/pretrained_model@1), got {spec!r}")
        specs.append((Path(path), int(steps)))
    a.specs = [(a.teacher, 10), *specs]
    return a


def main(argv=None) -> int:
    hub_env(argv, Path("."), private_cache=False)  # the caller's HF cache (it holds the backbone)
    a = parse(argv)
    from hub_reflow.logs import configured

    with configured(False):
        return bench(a)


def first_chunks(path: Path, steps: int, raw: dict):
    """The policy's chunks for ``raw`` at ``steps`` Euler steps, from noise seeded 0 (the same draws for
    every policy of the same chunk shape)."""
    import torch
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from hub_reflow.checks.fidelity import chunk

    policy = SmolVLAPolicy.from_pretrained(str(path)).eval()
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(path))
    cfg = policy.config
    noise = torch.randn(len(raw["task"]), cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(0))
    return chunk(policy, pre, post, raw, noise, steps).clamp(-1, 1)  # the env clips actions to [-1, 1]


def closed_loop(path: Path, steps: int, episodes: int) -> dict:
    from hub_reflow.closed_loop import EvalArgs, evaluate_closed_loop
    from hub_reflow.closed_loop.envs import TINY_ENV, EnvChoice

    r = evaluate_closed_loop(EvalArgs(student=None, teacher=str(path), teacher_steps=(steps,), env=EnvChoice(env_id=TINY_ENV),
                                      episodes=episodes, device="cpu"))
    p = next(iter(r.policies.values()))
    return {k: p[k] for k in ("successes", "episodes", "success_rate", "success_ci95")}


def run_name(path: Path) -> str:
    """``RUN/CHECKPOINT`` for ``RUN/checkpoints/CHECKPOINT/pretrained_model``, else the folder's name."""
    if path.name == "pretrained_model" and len(path.parents) > 2 and path.parents[1].name == "checkpoints":
        return f"{path.parents[2].name}/{path.parent.name}"
    return path.name


def bench(a) -> int:
    import numpy as np
    import torch
    from lerobot.envs.utils import preprocess_observation

    from hub_reflow.testing.post_world import SPEED, TASK, GoAroundEnv

    obs, _ = GoAroundEnv().reset(seed=a.env_seed)
    n = a.noises
    raw = preprocess_observation({"pixels": {"cam": np.stack([obs["pixels"]["cam"]] * n)},
                                  "agent_pos": np.stack([obs["agent_pos"]] * n)})
    raw["task"] = [TASK] * n
    rows, results, reference = [], {}, None
    for path, steps in a.specs:
        actions = first_chunks(path, steps, raw)
        dx = SPEED * actions[:, :, 0].sum(1)
        if reference is None:
            reference = (actions, dx)
        same_side = (torch.sign(dx) == torch.sign(reference[1])).float().mean().item()
        label = "teacher@10" if reference[0] is actions else f"{run_name(path)}@{steps}"
        r = {"steps": steps, "mean_abs_dx": dx.abs().mean().item(), "right_share": (dx > 0).float().mean().item(),
             "undecided": (dx.abs() < a.ambiguous).float().mean().item(), "same_side_as_teacher10": same_side,
             "mse_vs_teacher10": ((actions - reference[0]) ** 2).mean().item()}
        if a.episodes:
            r["closed_loop"] = closed_loop(path, steps, a.episodes)
        results[label] = r
        rows.append([label, f"{r['mean_abs_dx']:.3f}", f"{100 * r['undecided']:.1f}%", f"{100 * r['right_share']:.1f}%",
                     f"{100 * same_side:.1f}%",
                     f"{r['mse_vs_teacher10']:.4f}",
                     *([f"{r['closed_loop']['successes']}/{a.episodes}"] if a.episodes else [])])
    write_json(a.out, {"benchmark": "first_chunk", "settings": {"noises": n, "env_seed": a.env_seed, "ambiguous": a.ambiguous,
                                                                "episodes": a.episodes}, "policies": results})
    print(markdown(["policy", "mean |dx|", f"undecided (|dx| < {a.ambiguous})", "right side", "same side as teacher@10",
                    "MSE vs teacher@10", *(["closed-loop success"] if a.episodes else [])], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
