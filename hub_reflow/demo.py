"""``hub-reflow demo``: the whole product on the tiny offline world, in a few minutes on 2 CPU cores.

tiny backbone + multimodal dataset -> teacher by the real ``lerobot-train`` -> reflow student ->
canonical checkpoint -> loaded by plain LeRobot -> a table on held-out frames.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

HOLDOUT = 4  # episodes of the tiny dataset never seen by the student


def require_hub_server() -> None:
    """The demo's last stage runs a local Hub (FastAPI + uvicorn: the ``hub-server`` extra). Say so
    before minutes of training, not after."""
    from importlib.util import find_spec

    from .errors import UserError

    missing = [name for name in ("fastapi", "uvicorn") if find_spec(name) is None]
    if missing:
        raise UserError(f"the demo pushes to a local Hub, which needs {' and '.join(missing)}: "
                        "pip install 'hub-reflow[hub-server]' (scripts/demo.sh installs it)")


def run_demo(workdir: Path, *, teacher_train_steps: int = 1000, reflow_steps: int = 400, frames: int = 32) -> dict:
    require_hub_server()
    workdir = Path(workdir)
    # Before huggingface_hub is imported: the tiny backbone goes into this cache under a repo id.
    os.environ.setdefault("HF_HOME", str((workdir / "hf_home").resolve()))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from .config import ReflowConfig
    from .evaluate import compare, markdown_table, observation_batch
    from .testing.tiny_world import build_tiny_world
    from .train import TrainArgs, train

    workdir = Path(workdir)
    print(f"[1/6] tiny world in {workdir} (backbone, dataset, teacher by lerobot-train, {teacher_train_steps} steps)")
    world = build_tiny_world(workdir / "world", teacher_steps=teacher_train_steps)

    print(f"[2/6] reflow student: {reflow_steps} steps, 1 Euler step, last {HOLDOUT} episodes held out")
    run_dir = workdir / "reflow"
    student_dir = train(TrainArgs(
        teacher=str(world.teacher), dataset=world.repo_id, dataset_root=world.dataset_root,
        output_dir=run_dir, resume=(run_dir / "checkpoints" / "last").exists(), device="cpu", log_freq=50,
        reflow=ReflowConfig(steps=reflow_steps, batch_size=32, lr=1e-3, student_steps=1, teacher_steps=10,
                            holdout_episodes=HOLDOUT),
    ))

    print("[3/6] loading both with plain LeRobot (SmolVLAPolicy.from_pretrained, make_pre_post_processors)")
    loaded = {}
    for name, path in (("teacher", world.teacher), ("student", student_dir)):
        policy = SmolVLAPolicy.from_pretrained(str(path))
        pre, post = make_pre_post_processors(policy.config, pretrained_path=str(path))
        loaded[name] = (policy, pre, post)

    print(f"[4/6] {frames} held-out frames, shared noise")
    dataset = LeRobotDataset(world.repo_id, root=world.dataset_root)
    n_eps = dataset.meta.total_episodes
    start = int(dataset.meta.episodes["dataset_from_index"][n_eps - HOLDOUT])
    idx = list(range(start, len(dataset)))[:frames]
    rows, _ = compare(*loaded["teacher"], *loaded["student"], observation_batch(dataset, idx),
                      teacher_steps=10, student_steps=loaded["student"][0].config.num_steps)
    table = markdown_table(rows)
    print()
    print(table)
    print("[5/6] hub-reflow verify: the student against its teacher (structure, fidelity, speed)")
    from .verify import verify

    report = verify(str(student_dir), str(world.teacher), dataset=world.repo_id, dataset_root=world.dataset_root,
                    frames=frames)
    for line in report.lines():
        print("  " + line)
    print("  verdict: " + ("PASS" if report.passed else f"FAIL ({', '.join(sorted(report.failed_names()))})"))
    print("[6/6] push to a local Hub, pull back with plain LeRobot in a fresh process")
    commit_url, pulled = push_and_pull(workdir, world, student_dir)
    print(f"pushed: {commit_url}")
    print(f"plain LeRobot in a fresh process, from the Hub: {pulled}")
    result = {"rows": [r.__dict__ for r in rows], "student": str(student_dir), "frames": len(idx),
              "verify": report.to_dict(),
              "commit_url": commit_url, "pulled": pulled}
    from .safeio import dumps

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
    import subprocess
    import sys

    from .hub import push_checkpoint
    from .testing.hub_server import HubServer
    from .testing.tiny_world import publish_backbone

    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # one bar per uploaded file otherwise
    token = "hf_demo_write_token"
    repo_id = "demo-user/smolvla-tiny-reflow"
    with HubServer(workdir / "local-hub", {token: "write"}) as hub:
        publish_backbone(world.backbone, endpoint=hub.url, token=token)  # what vlm_model_name names
        from huggingface_hub import constants

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
