"""``train(args)`` resolves each input once and does not wander (docs/layers.md#the-training-entry):
a real tiny run, then ``--resume``, traced by ``scripts/trace_train.py``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from hub_reflow.train import train

ROOT = Path(__file__).resolve().parents[1]


def _tracer():
    spec = importlib.util.spec_from_file_location("trace_train", ROOT / "scripts" / "trace_train.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # registered: its dataclasses need it
    spec.loader.exec_module(module)
    return module


def test_train_resolves_each_input_once(world, tmp_path):
    t = _tracer()
    out = tmp_path / "run"
    runs = {}
    for name, steps, resume in (("fresh", 1, False), ("resume", 2, True)):
        args = t.train_args(world.teacher, world.repo_id, world.dataset_root, out, steps, resume=resume)
        _, every, carried = t.trace(train, args, inputs=t.inputs_of(args))
        runs[name] = (every, carried)
    for name, (every, carried) in runs.items():
        resolved = every.calls
        once = {what: resolved[what] for what in ("the output folder checked", "--dataset-root checked", "the teacher found",
                                                  "a config parsed", "the dataset opened")}
        assert once == dict.fromkeys(once, 1), name
        # The run's lineage, built once (on --resume the run's own is read as well); `last` moved once per checkpoint.
        assert resolved["a lineage built"] == (2 if name == "resume" else 1), name
        assert resolved["checkpoints/last moved"] == 1, name
        # Following args: a dozen modules at most, no climb back into a module that called.
        assert len(carried.entries) <= 12 and carried.climbs == [], (name, carried.summary())
        # Every call: no callback from the training code into a module that called it.
        assert not [e for e in every.climbs if e.startswith(("train", "training"))], (name, every.climbs)
        assert "train" in every.entries and len(every.entries) <= 20, (name, every.entries)
