"""``hub-reflow demo``: the whole product on the tiny offline world, in a few minutes on 2 CPU cores.

tiny backbone + multimodal dataset -> teacher by the real ``lerobot-train`` -> reflow student ->
canonical checkpoint -> loaded by plain LeRobot -> a table on held-out frames -> verify -> closed
loop (student@1, teacher@10, teacher@1 drive the tiny world's env) -> a local Hub and back.

It runs as ``python -m hub_reflow.demo`` in a process of its own (``hub-reflow demo`` starts it):
``HF_HOME`` must point at the demo's private cache before huggingface_hub is imported, where the
tiny backbone is put under its repo id.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.utils import disable_progress_bars

from .checks.fidelity import compare, markdown_table, observation_batch
from .closed_loop.envs import TINY_ENV, EnvChoice
from .closed_loop.results import EVAL_NAME
from .closed_loop.rollouts import EvalArgs, evaluate_closed_loop
from .config import ReflowConfig
from .console import run_command
from .errors import UserError
from .hub.push_pull import push_checkpoint
from .logs import configured
from .safeio import dumps
from .testing.tiny_world import CLOSED_LOOP_WORLD, build_tiny_world, publish_backbone
from .train import TrainArgs, train
from .validation import int_in
from .verify import verify

HOLDOUT = 4  # episodes of the tiny dataset never seen by the student


def demo_env(workdir: Path) -> dict[str, str]:
    """The demo process's environment: a private HF cache under ``workdir`` and no network (unless
    the caller set them)."""
    env = dict(os.environ)
    env.setdefault("HF_HOME", str((Path(workdir) / "hf_home").resolve()))
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def require_hub_server() -> None:
    """The demo's last stage runs a local Hub (FastAPI + uvicorn: the ``hub-server`` extra). Say so
    before minutes of training, not after."""
    missing = [name for name in ("fastapi", "uvicorn") if find_spec(name) is None]
    if missing:
        raise UserError(f"the demo pushes to a local Hub, which needs {' and '.join(missing)}: "
                        "pip install 'hub-reflow[hub-server]' (scripts/demo.sh installs it)")


def start_demo(workdir: Path, *, teacher_train_steps: int = 1000, reflow_steps: int = 400, frames: int = 32,
               verbose: bool = False, episodes: int = 20) -> int:
    """``hub-reflow demo``: run the demo in its own process (``demo_env``); its exit code."""
    require_hub_server()
    argv = ["--workdir", str(workdir), "--teacher-train-steps", str(teacher_train_steps), "--reflow-steps",
            str(reflow_steps), "--frames", str(frames), "--episodes", str(episodes)] + (["-v"] if verbose else [])
    return subprocess.run([sys.executable, "-m", "hub_reflow.demo", *argv], env=demo_env(workdir)).returncode


def run_demo(workdir: Path, *, teacher_train_steps: int = 1000, reflow_steps: int = 400, frames: int = 32,
             episodes: int = 20) -> dict:
    """The demo in this process: ``HF_HOME`` (``demo_env``) must have been set before huggingface_hub
    was imported, as ``python -m hub_reflow.demo`` does."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    require_hub_server()
    workdir = Path(workdir)
    print(f"[1/7] tiny world in {workdir} (backbone, dataset, teacher by lerobot-train, {teacher_train_steps} steps)")
    world = build_tiny_world(workdir / "world", teacher_steps=teacher_train_steps, spec=CLOSED_LOOP_WORLD)

    print(f"[2/7] reflow student: {reflow_steps} steps, 1 Euler step, last {HOLDOUT} episodes held out")
    run_dir = workdir / "reflow"
    student_dir = train(TrainArgs(
        teacher=str(world.teacher), dataset=world.repo_id, dataset_root=world.dataset_root,
        output_dir=run_dir, resume=(run_dir / "checkpoints" / "last").exists(), device="cpu", log_freq=50,
        reflow=ReflowConfig(steps=reflow_steps, batch_size=32, student_steps=1, teacher_steps=10,
                            holdout_episodes=HOLDOUT),
    ))

    print("[3/7] loading both with plain LeRobot (SmolVLAPolicy.from_pretrained, make_pre_post_processors)")
    loaded = {}
    for name, path in (("teacher", world.teacher), ("student", student_dir)):
        policy = SmolVLAPolicy.from_pretrained(str(path))
        pre, post = make_pre_post_processors(policy.config, pretrained_path=str(path))
        loaded[name] = (policy, pre, post)

    print(f"[4/7] {frames} held-out frames, shared noise")
    dataset = LeRobotDataset(world.repo_id, root=world.dataset_root)
    n_eps = dataset.meta.total_episodes
    start = int(dataset.meta.episodes["dataset_from_index"][n_eps - HOLDOUT])
    idx = list(range(start, len(dataset)))[:frames]
    rows, _ = compare(*loaded["teacher"], *loaded["student"], observation_batch(dataset, idx),
                      teacher_steps=10, student_steps=loaded["student"][0].config.num_steps)
    table = markdown_table(rows)
    print()
    print(table)
    print("[5/7] hub-reflow verify: the student against its teacher (structure, fidelity, speed)")
    report = verify(str(student_dir), str(world.teacher), dataset=world.repo_id, dataset_root=world.dataset_root,
                    frames=frames)
    for line in report.lines():
        print("  " + line)
    print(f"  verdict: {report.verdict()}")
    print(f"[6/7] closed loop: student@1, teacher@10 and teacher@1 drive {episodes} paired episodes of the tiny world "
          f"(hub-reflow eval --env-id {TINY_ENV} --record)")
    closed = evaluate_closed_loop(EvalArgs(student=str(student_dir), teacher=str(world.teacher), env=EnvChoice(env_id=TINY_ENV),
                                           episodes=episodes, device="cpu",
                                           command=f"hub-reflow eval STUDENT_FOLDER --teacher TEACHER_FOLDER --env-id {TINY_ENV} "
                                                   f"--episodes {episodes} --record"))
    closed.write(Path(student_dir) / EVAL_NAME)  # the pushed card shows it
    for line in closed.table().splitlines():
        print("  " + line)
    print("[7/7] push to a local Hub, pull back with plain LeRobot in a fresh process")
    commit_url, pulled = push_and_pull(workdir, world, student_dir)
    print(f"pushed: {commit_url}")
    print(f"plain LeRobot in a fresh process, from the Hub: {pulled}")
    result = {"rows": [r.__dict__ for r in rows], "student": str(student_dir), "frames": len(idx),
              "verify": report.to_dict(), "closed_loop": closed.to_dict(),
              "commit_url": commit_url, "pulled": pulled}
    (workdir / "demo_result.json").write_text(dumps(result, indent=2))
    return result


_PULL_SCRIPT = """
import json, logging, sys, torch
logging.disable(logging.WARNING)
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
repo = sys.argv[1]
policy = SmolVLAPolicy.from_pretrained(repo)
pre, post = make_pre_post_processors(policy.config, pretrained_path=repo)
obs = {"observation.images.cam": torch.rand(1, 3, 32, 32), "observation.state": torch.zeros(1, 2), "task": ["go around the post"]}
chunk = post(policy.predict_action_chunk(pre(obs)))
print(json.dumps({"num_steps": policy.config.num_steps, "chunk_shape": list(chunk.shape), "finite": bool(torch.isfinite(chunk).all())}))
"""


def push_and_pull(workdir: Path, world, student_dir: Path) -> tuple[str, dict]:
    """The student's life on a Hub: a local Hub-compatible server stands in for huggingface.co."""
    from .testing.hub_server import HubServer  # the hub-server extra (FastAPI, uvicorn)

    disable_progress_bars()  # one bar per uploaded file otherwise
    token = "hf_demo_write_token"
    repo_id = "demo-user/smolvla-tiny-reflow"
    with HubServer(workdir / "local-hub", {token: "write"}) as hub:
        publish_backbone(world.backbone, endpoint=hub.url, token=token)  # what vlm_model_name names
        saved = constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET
        constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET = False, True
        try:
            commit_url = push_checkpoint(student_dir, repo_id, token=token, endpoint=hub.url)
        finally:
            constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET = saved
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": token, "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_XET": "1", "HF_HOME": str((workdir / "elsewhere-hf-home").resolve())}
        r = subprocess.run([sys.executable, "-c", _PULL_SCRIPT, repo_id], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"plain LeRobot could not load the pushed student:\n{r.stderr[-3000:]}")
    return commit_url, json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub_reflow.demo", description=__doc__.split("\n\n")[0])
    add_demo_args(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="show other libraries' warnings and progress bars")
    a = parser.parse_args(argv)

    def demo() -> int:
        run_demo(a.workdir, teacher_train_steps=a.teacher_train_steps, reflow_steps=a.reflow_steps, frames=a.frames,
                 episodes=a.episodes)
        return 0

    with configured(a.verbose):
        return run_command(demo, lambda: "interrupted; the demo's outputs so far are in --workdir, run it again to go on")


def add_demo_args(p: argparse.ArgumentParser) -> None:
    positive = int_in(1)
    p.add_argument("--workdir", type=Path, default=Path("outputs/demo"), help="folder for everything the demo makes")
    p.add_argument("--teacher-train-steps", type=positive, default=1000, help="lerobot-train steps of the teacher")
    p.add_argument("--reflow-steps", type=positive, default=400, help="reflow training steps of the student")
    p.add_argument("--frames", type=positive, default=32, help="held-out frames in the table")
    p.add_argument("--episodes", type=positive, default=20, help="paired closed-loop episodes per policy")


if __name__ == "__main__":
    sys.exit(main())
