"""The tiny offline world: a tiny SmolVLM backbone, a tiny multimodal LeRobotDataset, and teachers
trained on them by the real ``lerobot-train``.

Nothing here touches the network. The demo, our tests and users' own tests share it.

The closed-loop world (``CLOSED_LOOP_WORLD``, ``post_world.py``; the demo's): one 32x32
camera ``observation.images.cam``, 2-d state, 2-d action; its dataset is the scripted expert rolled
out in the gymnasium env ``hub-reflow eval --env-id tiny-go-around`` drives, so the offline data and
the closed loop agree. At the start the expert's first action dimension is +1 or -1 (the side it
goes round the post, drawn per episode, in pairs of episodes from the same start): bimodal; the
mean drives into the post. Once the robot has moved, the side shows.

The offline worlds (``TINY_WORLD``, the test suite's default, and ``WORLDS`` for
``benchmarks/fidelity.py``) keep the side unobservable for the whole episode:
- the robot starts at a random point ``p`` in [-1, 1]^2; the camera shows it as a bright dot;
- every episode picks a side ``d`` in {-1, +1} and keeps it: ``action = (d, -p_y)``, and
  ``p_y <- p_y - 0.1 p_y`` (x stays put, so no observation reveals the side): the conditional
  action distribution is bimodal in every frame; a sampler that averages the modes outputs about 0.
- the second dimension is a deterministic function of the state, so it can be learned exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The backbone lives in its own module; its names are re-exported here for the tests and benchmarks.
from .post_world import ENV_ID, HIDDEN_ENV_ID, record_expert_dataset
from .tiny_backbone import (  # noqa: F401
    EXTRA_SPECIAL_TOKENS,
    IMAGE_SIZE,
    SPECIAL_TOKENS,
    TINY_BACKBONE_ID,
    make_tiny_backbone,
    publish_backbone,
    smolvlm_processor,
)

TINY_REPO_ID = "hub-reflow-testing/tiny-go-around"
TINY_TASK = "go around the post"
CAMERA_KEY = "observation.images.cam"

# Policy settings shared by every tiny teacher: small chunk, small images, the tiny backbone's depth.
TINY_POLICY_ARGS = (
    "--policy.chunk_size=8",
    "--policy.n_action_steps=8",
    "--policy.max_state_dim=8",
    "--policy.max_action_dim=8",
    f"--policy.resize_imgs_with_padding=[{IMAGE_SIZE},{IMAGE_SIZE}]",
    "--policy.num_vlm_layers=2",
    "--policy.tokenizer_max_length=16",
    "--policy.scheduler_warmup_steps=20",
    "--policy.optimizer_lr=1e-3",
)


def offline_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"})
    env.update(extra or {})
    return env


def lerobot_train_command() -> list[str]:
    """The real ``lerobot-train`` of this interpreter's environment."""
    exe = Path(sys.executable).with_name("lerobot-train")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lerobot.scripts.lerobot_train"]


def train_teacher(
    output_dir: str | Path,
    *,
    backbone: str | Path = TINY_BACKBONE_ID,
    dataset_root: str | Path,
    repo_id: str = TINY_REPO_ID,
    steps: int = 300,
    batch_size: int = 32,
    load_vlm_weights: bool = True,
    seed: int = 1000,
    extra_args: tuple[str, ...] = (),
    spec: WorldSpec | None = None,
) -> Path:
    """Train a SmolVLA teacher with the real ``lerobot-train``; return its ``pretrained_model`` folder."""
    output_dir = Path(output_dir)
    cmd = [
        *lerobot_train_command(),
        "--policy.type=smolvla",
        f"--policy.vlm_model_name={backbone}",
        f"--policy.load_vlm_weights={str(load_vlm_weights).lower()}",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        f"--policy.scheduler_decay_steps={steps}",
        *(spec.policy_args() if spec else TINY_POLICY_ARGS),
        f"--dataset.repo_id={spec.repo_id if spec else repo_id}",
        f"--dataset.root={dataset_root}",
        f"--output_dir={output_dir}",
        f"--steps={steps}",
        f"--batch_size={batch_size}",
        f"--save_freq={steps}",
        f"--log_freq={max(steps // 5, 1)}",
        f"--seed={seed}",
        "--num_workers=0",
        "--wandb.enable=false",
        *extra_args,
    ]
    result = subprocess.run(cmd, env=offline_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"lerobot-train failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return output_dir / "checkpoints" / "last" / "pretrained_model"


@dataclass(frozen=True)
class WorldSpec:
    """The shape of a tiny world: cameras, state and action dimensions, the teacher's chunk size.

    Every world keeps the bimodal "go around the post" structure in its first two action dims
    (``(d, -p_y)``, the side ``d`` unobservable); further state dims are static random values
    ``q_i`` and further action dims are fixed functions of the state (``0.5 * q_i``, or
    ``0.5 * sin(3 p_x)`` when there are more action than state dims), so they can be learned exactly.
    """

    name: str
    repo_id: str
    cameras: tuple[str, ...] = (CAMERA_KEY,)
    state_dim: int = 2
    action_dim: int = 2
    chunk_size: int = 8
    max_dim: int = 8  # max_state_dim = max_action_dim of the policy
    closed_loop: bool = False  # the dataset is the scripted expert of post_world's env (its shapes only)
    env_id: str = ENV_ID  # which of post_world's envs a closed-loop world records

    def features(self) -> dict:
        feats = {cam: {"dtype": "image", "shape": (IMAGE_SIZE, IMAGE_SIZE, 3), "names": ["height", "width", "channels"]}
                 for cam in self.cameras}
        feats["observation.state"] = {"dtype": "float32", "shape": (self.state_dim,), "names": _names("x y", "q", self.state_dim)}
        feats["action"] = {"dtype": "float32", "shape": (self.action_dim,), "names": _names("vx vy", "u", self.action_dim)}
        return feats

    def policy_args(self) -> tuple[str, ...]:
        return (
            f"--policy.chunk_size={self.chunk_size}",
            f"--policy.n_action_steps={self.chunk_size}",
            f"--policy.max_state_dim={self.max_dim}",
            f"--policy.max_action_dim={self.max_dim}",
            *TINY_POLICY_ARGS[4:],
        )

    def action(self, side: float, state: np.ndarray) -> np.ndarray:
        extra = [0.5 * state[2 + i] if 2 + i < self.state_dim else 0.5 * np.sin(3 * state[0])
                 for i in range(self.action_dim - 2)]
        return np.array([side, -state[1], *extra], dtype=np.float32)


def _names(base: str, prefix: str, n: int) -> list[str]:
    names = base.split()
    return names + [f"{prefix}{i}" for i in range(n - len(names))]


# The default world (most tests) is the offline one; the closed-loop world (post_world.py: the same
# shapes, a dataset recorded in its gymnasium env) serves the closed-loop tests, the demo and
# benchmarks/closed_loop.py; a second offline one has other cameras and dimensions (benchmarks).
CLOSED_LOOP_WORLD = WorldSpec("closed-loop", TINY_REPO_ID, closed_loop=True)
# The committed-side world (post_world.HIDDEN_ENV_ID, benchmarks/rtc.py): no observation shows the side, so
# only the actions a policy has committed to keep it; 10-action chunks (LeRobot's RTC defaults apply).
HIDDEN_SIDE_WORLD = WorldSpec("hidden-side", TINY_REPO_ID, closed_loop=True, chunk_size=10, env_id=HIDDEN_ENV_ID)
TINY_WORLD = WorldSpec("tiny", TINY_REPO_ID)
TWO_CAMERA_WORLD = WorldSpec("two-camera", "hub-reflow-testing/tiny-go-around-2cam",
                             cameras=("observation.images.top", "observation.images.side"),
                             state_dim=3, action_dim=4, chunk_size=12, max_dim=6)
WORLDS = {w.name: w for w in (TINY_WORLD, TWO_CAMERA_WORLD)}  # the offline worlds of benchmarks/fidelity.py


def _render(position: np.ndarray, view: int = 0) -> np.ndarray:
    """A 32x32 RGB uint8 frame: grey background, a bright dot at the robot, a dark post at 0.
    View 0 looks from the top (x, y); view 1 from the side (y against the static q, when there is one)."""
    img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 64 if view == 0 else 96, dtype=np.uint8)
    c = IMAGE_SIZE // 2
    img[c - 1 : c + 1, c - 1 : c + 1] = 0
    u, v = (position[0], position[1]) if view == 0 else (position[1], position[2] if len(position) > 2 else 0.0)
    col = int(np.clip(round((u + 2) / 4 * (IMAGE_SIZE - 1)), 0, IMAGE_SIZE - 1))
    row = int(np.clip(round((v + 2) / 4 * (IMAGE_SIZE - 1)), 0, IMAGE_SIZE - 1))
    img[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2] = 255 if view == 0 else (255, 200, 0)
    return img


def tiny_features(camera_key: str = CAMERA_KEY) -> dict:
    return WorldSpec("tiny", TINY_REPO_ID, cameras=(camera_key,)).features()


def make_tiny_dataset(
    root: str | Path,
    *,
    repo_id: str = TINY_REPO_ID,
    num_episodes: int = 24,
    episode_length: int = 20,
    seed: int = 0,
    fps: int = 10,
    camera_key: str = CAMERA_KEY,
    spec: WorldSpec | None = None,
):
    """Write the multimodal "go around the post" LeRobotDataset (no videos) to ``root``.

    Episode ``e`` goes right when ``e`` is even and left when odd, so every prefix of episodes is
    balanced; start positions are random. ``spec`` gives the cameras and dimensions (default: one
    camera ``camera_key``, 2-d state and action). Returns the ``LeRobotDataset``.
    """
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    spec = spec or WorldSpec("tiny", repo_id, cameras=(camera_key,))
    if spec.closed_loop:
        return record_expert_dataset(root, repo_id=spec.repo_id, features=spec.features(), camera_key=spec.cameras[0],
                                     num_pairs=num_episodes // 2, fps=fps, env_id=spec.env_id)
    datasets.disable_progress_bars()  # one bar per episode otherwise
    rng = np.random.default_rng(seed)
    dataset = LeRobotDataset.create(
        repo_id=repo_id, fps=fps, features=spec.features(), root=root, robot_type="tiny_point", use_videos=False
    )
    for episode in range(num_episodes):
        side = 1.0 if episode % 2 == 0 else -1.0
        pos = rng.uniform(-1.0, 1.0, size=spec.state_dim).astype(np.float32)
        for _ in range(episode_length):
            action = spec.action(side, pos)
            frame = {cam: _render(pos, view=i % 2) for i, cam in enumerate(spec.cameras)}
            dataset.add_frame({**frame, "observation.state": pos.copy(), "action": action, "task": TINY_TASK})
            # Only y moves: the cameras and the state never reveal which side the episode takes.
            step = np.zeros_like(pos)
            step[1] = action[1]
            pos = (pos + 0.1 * step).astype(np.float32)
        dataset.save_episode()
    dataset.finalize()
    return dataset


@dataclass
class TinyWorld:
    """Paths of one built tiny world."""

    root: Path
    backbone: Path  # the folder; teachers name it by TINY_BACKBONE_ID (in the HF cache)
    dataset_root: Path
    repo_id: str
    teacher: Path  # pretrained_model/ of a teacher trained with load_vlm_weights=true (bf16 VLM)


def build_tiny_world(
    root: str | Path, *, teacher_steps: int = 300, load_vlm_weights: bool = True, seed: int = 0,
    spec: WorldSpec = TINY_WORLD, teacher_lr: float | None = None,
) -> TinyWorld:
    """Backbone + dataset + one teacher under ``root`` (reused when already built there); ``spec``
    picks the world (default: the one-camera offline world; ``CLOSED_LOOP_WORLD`` for post_world.py's); ``teacher_lr`` replaces the teacher's
    ``optimizer_lr`` (default 1e-3, ``TINY_POLICY_ARGS``).

    The backbone is also put in this process's HF cache under ``TINY_BACKBONE_ID`` (set
    ``HF_HOME`` before importing huggingface_hub to choose where)."""
    root = Path(root)
    backbone = root / "tiny-smolvlm"
    suffix = "" if spec == TINY_WORLD else f"-{spec.name}"
    dataset_root = root / f"dataset{suffix}"
    if not (backbone / "config.json").exists():
        make_tiny_backbone(backbone, seed=seed)
    publish_backbone(backbone)
    if not (dataset_root / "meta" / "info.json").exists():
        make_tiny_dataset(dataset_root, seed=seed, repo_id=spec.repo_id, spec=spec, num_episodes=32 if spec.closed_loop else 24)
    name = f"teacher{suffix}-vlm{'bf16' if load_vlm_weights else 'fp32'}-{teacher_steps}"
    name += f"-lr{teacher_lr:g}" if teacher_lr is not None else ""
    teacher = root / name / "checkpoints" / "last" / "pretrained_model"
    if not (teacher / "model.safetensors").exists():
        teacher = train_teacher(
            root / name,
            backbone=TINY_BACKBONE_ID,
            dataset_root=dataset_root,
            steps=teacher_steps,
            load_vlm_weights=load_vlm_weights,
            spec=spec,
            extra_args=() if teacher_lr is None else (f"--policy.optimizer_lr={teacher_lr:g}",),
        )
    return TinyWorld(root=root, backbone=backbone, dataset_root=dataset_root, repo_id=spec.repo_id, teacher=teacher)
