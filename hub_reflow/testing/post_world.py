"""The closed-loop tiny world: a gymnasium env with LeRobot's env conventions where averaging the
modes of the action distribution drives into an obstacle.

A point robot starts below a post and must reach the goal line above it. The scripted expert goes
round the post on a side ``d`` in {-1, +1} drawn per episode: at the start (x = 0) its action is
``(d, 0.3)``, bimodal in the first dimension, and their mean ``(0, 0.3)`` drives straight into the
post (a collision ends the episode: failure; with 8-step chunks the mean reaches it in the second
chunk, so a sampler that commits to a side late still gets round). Once the robot has moved,
``sign(x)`` shows the side.

Conventions (as LeRobot's gym_pusht / gym_aloha): observation ``{"pixels": {"cam": HxWx3 uint8},
"agent_pos": (2,) float32}`` (LeRobot maps them to ``observation.images.cam`` and
``observation.state``), ``info["is_success"]``, a ``task_description`` attribute, a ``TimeLimit``
from the registration. Importing this module registers ``ENV_ID``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .tiny_backbone import IMAGE_SIZE

ENV_ID = "hub_reflow/GoAround-v0"
# gymnasium's "module:id" form: gym.make (and `hub-reflow eval --env-id`) import the module first.
ENV_SPEC = f"{__name__}:{ENV_ID}"
TASK = "go around the post"
MAX_STEPS = 30
POST = np.array([0.0, -0.4], dtype=np.float32)  # centre of the post
POST_RADIUS = 0.3  # as drawn
COLLISION_RADIUS = 0.2  # the post's solid core: closer than this to its centre ends the episode
GOAL_Y = 0.3  # success when the robot is at or above this line
SPEED = 0.1  # position change per unit action and step
SIDE_X = 0.6  # how far to the side the expert goes round the post
CLIMB = 0.3  # the expert's upward action while it moves out to the side


def expert_action(side: float, pos: np.ndarray, lateral: float = 1.0) -> np.ndarray:
    """The scripted expert: out to ``x = side * SIDE_X`` (at most ``lateral`` sideways) while climbing
    slowly, then straight up."""
    vx = float(np.clip(4.0 * (side * SIDE_X - pos[0]), -lateral, lateral))
    vy = CLIMB if abs(pos[0]) < 0.5 and pos[1] < POST[1] else 1.0
    return np.array([vx, vy], dtype=np.float32)


def render(pos: np.ndarray) -> np.ndarray:
    """A 32x32 RGB frame: grey floor, the goal line in green, the post as a dark disc, the robot as
    a bright dot."""
    n = IMAGE_SIZE
    img = np.full((n, n, 3), 64, dtype=np.uint8)
    coords = (np.arange(n) + 0.5) / n * 4 - 2  # pixel centres in [-2, 2]
    xs, ys = np.meshgrid(coords, -coords)  # row 0 is the top (large y)
    img[(ys >= GOAL_Y) & (ys < GOAL_Y + 4 / n)] = (0, 160, 0)
    img[(xs - POST[0]) ** 2 + (ys - POST[1]) ** 2 <= POST_RADIUS**2] = 0
    img[(np.abs(xs - pos[0]) <= 2 / n * 1.5) & (np.abs(ys - pos[1]) <= 2 / n * 1.5)] = 255
    return img


class GoAroundEnv(gym.Env):
    """The closed-loop tiny world (module docstring). Reward 1 on the step that reaches the goal."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = "rgb_array", obs_type: str = "pixels_agent_pos", hidden_side: bool = False,
                 lateral: float = 1.0):
        self.render_mode = render_mode
        self.obs_type = obs_type
        # hidden_side: the camera and the state show |x| (the world mirrored onto the right), so no observation
        # tells which side the robot is on: only the actions it has committed to carry the side.
        self.hidden_side = hidden_side
        self.lateral = lateral  # the scripted expert's sideways speed limit (expert_episode)
        self.task_description = TASK
        self.task = TASK
        self.plot_scene = {"circles": [[float(POST[0]), float(POST[1]), POST_RADIUS]], "goal_y": GOAL_Y}  # hub-reflow eval's picture
        self.observation_space = spaces.Dict({
            "pixels": spaces.Dict({"cam": spaces.Box(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)}),
            "agent_pos": spaces.Box(-2.0, 2.0, (2,), dtype=np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
        self.pos = np.zeros(2, dtype=np.float32)

    def _obs(self) -> dict:
        seen = np.array([abs(self.pos[0]), self.pos[1]], dtype=np.float32) if self.hidden_side else self.pos.copy()
        return {"pixels": {"cam": render(seen)}, "agent_pos": seen}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = np.array([0.0, self.np_random.uniform(-1.05, -0.95)], dtype=np.float32)
        return self._obs(), {"is_success": False}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(-1)[:2], -1.0, 1.0)
        self.pos = np.clip(self.pos + SPEED * a, -1.5, 1.5).astype(np.float32)
        collided = bool(np.linalg.norm(self.pos - POST) < COLLISION_RADIUS)
        success = bool(self.pos[1] >= GOAL_Y) and not collided
        info = {"is_success": success, "collided": collided}
        return self._obs(), 1.0 if success else 0.0, success or collided, False, info

    def render(self):
        return render(self.pos)  # (the true position: videos show the side)


def expert_episode(env: GoAroundEnv, side: float, seed: int) -> tuple[list[dict], bool]:
    """Roll the scripted expert out in ``env``: the frames (observation and action) and success."""
    obs, _ = env.reset(seed=seed)
    frames = []
    for _ in range(env.spec.max_episode_steps if env.spec else MAX_STEPS):
        action = expert_action(side, env.pos, env.lateral)
        frames.append({"image": obs["pixels"]["cam"], "state": obs["agent_pos"], "action": action})
        obs, _, terminated, _, info = env.step(action)
        if terminated:
            return frames, bool(info["is_success"])
    return frames, False


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=GoAroundEnv, max_episode_steps=MAX_STEPS, disable_env_checker=True)
# The committed-side world: the side never shows and the expert moves sideways slowly, so the side is
# still open after several chunks; a policy that re-draws it at a chunk boundary turns into the post.
HIDDEN_ENV_ID = "hub_reflow/GoAroundHidden-v0"
HIDDEN_MAX_STEPS = 60
if HIDDEN_ENV_ID not in gym.registry:
    gym.register(id=HIDDEN_ENV_ID, entry_point=GoAroundEnv, max_episode_steps=HIDDEN_MAX_STEPS, disable_env_checker=True,
                 kwargs={"hidden_side": True, "lateral": 0.25})


def record_expert_dataset(root, *, repo_id: str, features: dict, camera_key: str, num_pairs: int = 16, fps: int = 10,
                          env_id: str = ENV_ID):
    """Roll the scripted expert out in the env into a LeRobotDataset (no videos) at ``root``.

    Episodes come in pairs from the same start (env seed ``pair``): ``2 pair`` goes right, ``2 pair + 1``
    left, so no start position tells the side and every prefix of pairs is balanced."""
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    datasets.disable_progress_bars()
    dataset = LeRobotDataset.create(repo_id=repo_id, fps=fps, features=features, root=root, robot_type="tiny_point",
                                    use_videos=False)
    env = gym.make(env_id, disable_env_checker=True).unwrapped
    env.spec = gym.spec(env_id)
    for pair in range(num_pairs):
        for side in (1.0, -1.0):
            frames, success = expert_episode(env, side, seed=pair)
            if not success:
                raise RuntimeError(f"the scripted expert failed from seed {pair} (side {side:+.0f})")
            for f in frames:
                dataset.add_frame({camera_key: f["image"], "observation.state": f["state"], "action": f["action"],
                                   "task": TASK})
            dataset.save_episode()
    dataset.finalize()
    return dataset
