"""hub-reflow: reflow students for LeRobot SmolVLA policies."""

__version__ = "0.1.0"
