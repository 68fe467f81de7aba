"""Closed-loop evaluation (``hub-reflow eval``): policies driving the same episodes through LeRobot's
``eval_policy`` (``rollouts``), in envs built as LeRobot builds them (``envs``), with real-time
chunking run as LeRobot runs it (``rtc_driver``); the results (``results``), their statistics
(``stats``) and pictures (``plots``); the command's options (``command``).

    from hub_reflow.closed_loop import EvalArgs, evaluate_closed_loop
"""

from __future__ import annotations

from .rollouts import EvalArgs, evaluate_closed_loop

__all__ = ["EvalArgs", "evaluate_closed_loop"]
