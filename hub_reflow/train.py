"""``train``: a reflow student from a SmolVLA teacher and its dataset, in three stages, as LeRobot's
``lerobot_train`` runs (``cfg.validate()``, then build, then the loop):

1. ``plan_run`` (training/plan.py): every input resolved and checked once, nothing heavy built yet;
2. ``build`` (training/loop.py): the student, its processors, optimizer and frame sampler (on
   ``--resume``, their state from the run folder);
3. ``run_loop`` (training/loop.py): the steps, the log lines, a checkpoint at each ``--save-freq`` and
   at the end, after the final measurement against the teacher.

The run folder (training/run_folder.py) is locked for the whole run, before anything is written:
``OUTPUT/checkpoints/<step>/pretrained_model/`` (canonical) beside ``training_state/``, and
``OUTPUT/checkpoints/last`` -> ``<step>``.

    from hub_reflow.train import TrainArgs, train
"""

from __future__ import annotations

from pathlib import Path

from .training.loop import build, run_loop
from .training.plan import TrainArgs, plan_run
from .training.run_folder import RunFolder

__all__ = ["TrainArgs", "train"]


def train(args: TrainArgs) -> Path:
    """Run reflow training; return the final ``pretrained_model`` folder. One run per output folder:
    the folder's lock is held for the whole run, taken before anything is written."""
    folder = RunFolder(args.output_dir)
    with folder.locked():
        plan = plan_run(args, folder)  # every input resolved and checked; nothing heavy built yet
        run = build(plan)  # the student, its processors, optimizer and sampler (resumed: their state)
        return run_loop(run)
