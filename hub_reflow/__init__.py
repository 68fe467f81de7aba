"""hub-reflow: reflow students for LeRobot SmolVLA policies.

The public API::

    from hub_reflow import ReflowConfig, ReflowPolicy, TrainArgs, train, verify, canonicalize, push_checkpoint
"""

from __future__ import annotations

__version__ = "0.1.0"

from .canonicalize import NotRepairable, canonicalize
from .card import render_card
from .checkpoint import Lineage, resolve_checkpoint
from .config import ReflowConfig
from .errors import UserError
from .hub import pull_checkpoint, push_checkpoint, push_pairs, structural_problems
from .inspection import inspect_checkpoint
from .pairs import PairsArgs, load_pairs, make_pairs
from .policy import ReflowPolicy
from .report import Check, Report
from .structure import structure_checks
from .train import TrainArgs, train
from .verify import verify

__all__ = [
    "__version__", "UserError", "ReflowConfig", "ReflowPolicy", "TrainArgs", "train", "PairsArgs", "make_pairs",
    "load_pairs", "verify", "Report", "Check", "canonicalize", "NotRepairable", "inspect_checkpoint",
    "structure_checks", "push_checkpoint", "push_pairs", "pull_checkpoint", "structural_problems",
    "resolve_checkpoint", "Lineage", "render_card",
]
