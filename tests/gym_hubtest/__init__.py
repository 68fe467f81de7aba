"""Gymnasium envs defined in the test suite, not in the package, for ``hub-reflow eval --env-id``.

They follow LeRobot's env conventions (``pixels`` / ``agent_pos`` observations, ``info["is_success"]``,
``task_description``, a time limit) and say themselves which episodes succeed:

- ``gym_hubtest/SeedParity-v0``: an episode succeeds iff its env seed is even, whatever the policy
  does (its camera is a single array: LeRobot names it ``observation.image``);
- ``gym_hubtest/Right-v0``: an episode succeeds iff the first action's x is positive;
- ``gym_hubtest/NoSuccess-v0``: never reports ``is_success``;
- ``gym_hubtest/WideState-v0``: a 3-d ``agent_pos``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

TASK = "go around the post"


class _Base(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    state_dim = 2
    report_success = True

    def __init__(self, render_mode: str | None = "rgb_array"):
        self.render_mode = render_mode
        self.task_description = self.task = TASK
        self.observation_space = spaces.Dict({
            "pixels": spaces.Box(0, 255, (24, 24, 3), dtype=np.uint8),
            "agent_pos": spaces.Box(-1, 1, (self.state_dim,), dtype=np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
        self.seed_used, self.t, self.first_action = None, 0, None

    def _obs(self):
        img = np.full((24, 24, 3), 40 + 10 * self.t, dtype=np.uint8)
        return {"pixels": img, "agent_pos": np.full(self.state_dim, 0.1 * self.t, dtype=np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_used, self.t, self.first_action = seed, 0, None
        return self._obs(), {}

    def outcome(self) -> bool:
        raise NotImplementedError

    def step(self, action):
        self.t += 1
        if self.first_action is None:
            self.first_action = np.asarray(action, dtype=np.float32).copy()
        done = self.t >= 3
        success = done and self.outcome()
        info = {"is_success": success} if self.report_success else {}
        return self._obs(), float(success), done, False, info

    def render(self):
        return self._obs()["pixels"]


class SeedParity(_Base):
    def outcome(self) -> bool:
        return self.seed_used is not None and self.seed_used % 2 == 0


class Right(_Base):
    def outcome(self) -> bool:
        return bool(self.first_action[0] > 0)


class NoSuccess(SeedParity):
    report_success = False


class WideState(SeedParity):
    state_dim = 3


for _name, _cls in (("SeedParity", SeedParity), ("Right", Right), ("NoSuccess", NoSuccess), ("WideState", WideState)):
    if f"gym_hubtest/{_name}-v0" not in gym.registry:
        gym.register(id=f"gym_hubtest/{_name}-v0", entry_point=_cls, max_episode_steps=10)
