"""The config of ``gym_robot.GymRobot`` (``--robot.type=hub_reflow_gym``), in LeRobot's plugin layout:
LeRobot's ``make_robot_from_config`` finds the robot class in ``gym_robot`` beside this module."""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.robots.config import RobotConfig

ROBOT_TYPE = "hub_reflow_gym"


@RobotConfig.register_subclass(ROBOT_TYPE)
@dataclass(kw_only=True)
class GymRobotConfig(RobotConfig):
    env_id: str = "hub_reflow.testing.post_world:hub_reflow/GoAround-v0"
    seed: int = 0  # episode e is reset with seed + e
    log_path: str | None = None
    max_episodes: int = 0  # after this many ended episodes the robot holds still (0: never)
    env_kwargs: dict = field(default_factory=dict)
