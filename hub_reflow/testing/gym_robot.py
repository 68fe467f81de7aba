"""A LeRobot ``Robot`` that is a gymnasium env: LeRobot's deployment code (``lerobot-rollout``, the
async ``robot_client``) drives a simulated robot through it, offline, with no hardware.

``--robot.type=hub_reflow_gym --robot.env_id=ID`` (a gymnasium id following LeRobot's env conventions:
``{"pixels": {camera: HxWx3}, "agent_pos": (n,)}`` observations, ``info["is_success"]``; ``module:id`` works
too). The robot's observation features are the env's cameras by name and its state as ``state_0.pos``..;
its action features ``action_0.pos``.. (``lerobot-rollout`` keeps ``.pos``/``.vel`` joints only); LeRobot turns them into ``observation.images.<camera>``,
``observation.state`` and ``action`` as for a real robot. An env episode that ends (goal, failure,
time limit) starts the next one with the next seed. ``log_path``: one JSON line per executed action
(episode, step, the action, whether the episode ended and succeeded).

Its config (``config_gym_robot``, LeRobot's plugin layout: LeRobot finds this class from it) is
registered on import; ``run_rollout`` and ``run_async_client`` run
LeRobot's own ``lerobot-rollout`` and ``robot_client`` entry points with it."""

from __future__ import annotations

import json
import sys
import threading
from functools import cached_property

import gymnasium as gym
import numpy as np
from lerobot.robots.robot import Robot

from .config_gym_robot import ROBOT_TYPE, GymRobotConfig


class GymRobot(Robot):
    config_class = GymRobotConfig
    name = ROBOT_TYPE

    def __init__(self, config: GymRobotConfig):
        super().__init__(config)
        self.config = config
        self.env = gym.make(config.env_id, disable_env_checker=True, **config.env_kwargs)
        self.obs, _ = self.env.reset(seed=config.seed)
        self.episode, self.step_in_episode, self.connected = 0, 0, False
        self.outcomes: list[bool] = []
        self.done = threading.Event()  # set when max_episodes have ended

    @cached_property
    def _cameras(self) -> dict[str, tuple]:
        pixels = self.obs["pixels"]
        return {k: v.shape for k, v in pixels.items()} if isinstance(pixels, dict) else {"pixels": pixels.shape}

    @property
    def observation_features(self) -> dict:
        state = {f"state_{i}.pos": float for i in range(len(self.obs["agent_pos"]))}
        return {**state, **self._cameras}

    @property
    def action_features(self) -> dict:
        return {f"action_{i}.pos": float for i in range(self.env.action_space.shape[0])}

    @property
    def is_connected(self) -> bool:
        return self.connected

    def connect(self, calibrate: bool = True) -> None:
        self.connected = True

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def get_observation(self) -> dict:
        out = {f"state_{i}.pos": float(x) for i, x in enumerate(self.obs["agent_pos"])}
        pixels = self.obs["pixels"]
        out.update(pixels if isinstance(pixels, dict) else {"pixels": pixels})
        return out

    def send_action(self, action: dict) -> dict:
        if self.done.is_set():
            return action
        vector = np.array([action[k] for k in self.action_features], dtype=np.float32)
        self.obs, _, terminated, truncated, info = self.env.step(vector)
        ended = bool(terminated or truncated)
        record = {"episode": self.episode, "step": self.step_in_episode, "action": vector.tolist(), "ended": ended,
                  "success": bool(info.get("is_success", False))}
        self.step_in_episode += 1
        if self.config.log_path:
            with open(self.config.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if ended:
            self.outcomes.append(record["success"])
            self.episode += 1
            self.step_in_episode = 0
            self.obs, _ = self.env.reset(seed=self.config.seed + self.episode)
            if self.config.max_episodes and self.episode >= self.config.max_episodes:
                self.done.set()
        return action

    def disconnect(self) -> None:
        self.connected = False


def run_rollout(argv: list[str], chunks_log: str | None = None) -> None:
    """``lerobot-rollout ARGV`` (LeRobot's entry point) with this robot registered. ``chunks_log``: one
    JSON line per chunk the policy makes (the ``inference_delay`` and ``prev_chunk_left_over`` LeRobot
    passed, the chunk it got back; normalised units), to see what RTC did with the committed actions."""
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.scripts.lerobot_rollout import main

    if chunks_log:
        predict = SmolVLAPolicy.predict_action_chunk

        def recorded(self, batch, noise=None, **kwargs):
            out = predict(self, batch, noise, **kwargs)
            prev = kwargs.get("prev_chunk_left_over")
            with open(chunks_log, "a") as f:
                f.write(json.dumps({"inference_delay": kwargs.get("inference_delay"),
                                    "prev": None if prev is None else prev.tolist(), "chunk": out[0].tolist()}) + "\n")
            return out

        SmolVLAPolicy.predict_action_chunk = recorded
    sys.argv = ["lerobot-rollout", *argv]
    try:
        main()
    finally:
        if chunks_log:
            SmolVLAPolicy.predict_action_chunk = predict


def run_async_client(argv: list[str], timeout_s: float = 120.0) -> None:
    """LeRobot's async ``robot_client`` (its ``RobotClient``, as its ``async_client`` entry runs it) with
    this robot, stopped when the robot's ``max_episodes`` have ended (or after ``timeout_s``)."""
    import draccus
    from lerobot.async_inference.configs import RobotClientConfig
    from lerobot.async_inference.robot_client import RobotClient

    cfg = draccus.parse(config_class=RobotClientConfig, args=argv)
    client = RobotClient(cfg)
    if not client.start():
        raise SystemExit("robot_client: could not reach the policy server")
    receiver = threading.Thread(target=client.receive_actions, daemon=True)
    receiver.start()
    control = threading.Thread(target=client.control_loop, kwargs={"task": cfg.task}, daemon=True)
    control.start()
    client.robot.done.wait(timeout_s)
    client.stop()
    receiver.join(timeout=5)
    control.join(timeout=5)
    if not client.robot.done.is_set():
        raise SystemExit(f"robot_client: {cfg.robot.max_episodes} episodes did not end within {timeout_s:g} s")

