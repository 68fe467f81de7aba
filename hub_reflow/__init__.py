"""hub-reflow: reflow students for LeRobot SmolVLA policies.

The public API::

    from hub_reflow import ReflowConfig, ReflowPolicy, TrainArgs, push_checkpoint, pull_checkpoint
    from hub_reflow import fast_inference        # a loaded student's chunks as CUDA graphs
    from hub_reflow.train import train          # the functions named like their modules are
    from hub_reflow.verify import verify        # taken from the modules: a package attribute
    from hub_reflow.canonicalize import canonicalize  # must stay the submodule
"""

from __future__ import annotations

__version__ = "0.1.0"

from .canonicalize import NotRepairable
from .checkpoint import Lineage, resolve_checkpoint
from .checks.inspection import inspect_checkpoint
from .checks.report import Check, Report
from .checks.structure import structure_checks
from .closed_loop import EvalArgs, evaluate_closed_loop
from .closed_loop.envs import EnvChoice
from .closed_loop.results import ClosedLoopResults
from .config import ReflowConfig
from .errors import UserError
from .hub.card import render_card
from .hub.push_pull import pull_checkpoint, push_checkpoint, push_pairs, structural_problems
from .inference import FastInference, fast_inference
from .pairs import PairsArgs, load_pairs, make_pairs
from .policy import ReflowPolicy
from .train import TrainArgs

__all__ = [
    "__version__", "UserError", "ReflowConfig", "ReflowPolicy", "TrainArgs", "PairsArgs", "make_pairs",
    "load_pairs", "Report", "Check", "NotRepairable", "inspect_checkpoint",
    "structure_checks", "push_checkpoint", "push_pairs", "pull_checkpoint", "structural_problems",
    "resolve_checkpoint", "Lineage", "render_card", "fast_inference", "FastInference",
    "evaluate_closed_loop", "EvalArgs", "EnvChoice", "ClosedLoopResults",
]
