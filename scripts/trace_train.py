"""How far ``train(args)`` wanders through the package (docs/layers.md#the-training-entry): a real
tiny run of ``hub_reflow.train.train`` under ``sys.setprofile``, every call between two of our
modules recorded (``hub_reflow.testing`` aside).

A call from module A into module B (A != B; calls through other libraries count as made by the
nearest of our frames below them) is one *edge*, named by the two functions; each edge is counted
once, when it first happens (so the number of steps does not change the counts), as one of:

- an *entry*: B is entered for the first time;
- a *climb back*: B is already on the call stack, below A (a lower module calling back up into a
  module that called it: a property of a run object, a callback);
- a *return*: B was entered before and left (a module the reader has to come back to).

The same between modules: each (A, B) pair once, a climb or a return by the same rules. Two traces
of each run: ``all`` (every call), and ``args`` (only the calls that carry the run's inputs: an
argument that is ``args``, a value it holds (the ReflowConfig, the paths and names it was given), or
an object holding one of those as an attribute or item: following ``args`` from ``train``).

It also counts every call of the functions that resolve an input (``WATCH``): where each is resolved,
and how often.

    python scripts/trace_train.py --world DIR [--json FILE]   # DIR: a tiny world (built there if absent)

A fresh 2-step run, then ``--resume`` to 3 steps, each traced. The numbers before and after the
training entry was rebuilt: docs/layers.md#the-training-entry.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

OURS = "hub_reflow."
SKIP = ("hub_reflow.testing",)
# The functions that resolve an input, by name (the same names before and after the training entry
# was rebuilt; a method by its own name): every call counted.
WATCH = {"check_output_folder": "the output folder checked", "check_dataset_root": "--dataset-root checked",
         "resolve_checkpoint": "the teacher found", "parse_policy_config": "a config parsed",
         "load_dataset": "the dataset opened", "Lineage.__init__": "a lineage built", "update_last": "checkpoints/last moved"}


@dataclass
class Trace:
    entries: list[str] = field(default_factory=list)  # modules in the order first entered
    climbs: list[str] = field(default_factory=list)  # "A.f -> B.g" edges
    returns: list[str] = field(default_factory=list)
    module_climbs: list[str] = field(default_factory=list)  # the same, between modules: "A -> B", each pair once
    module_returns: list[str] = field(default_factory=list)
    visits: Counter = field(default_factory=Counter)  # per module: distinct edges into it (+1 for the first entry)
    calls: Counter = field(default_factory=Counter)  # WATCH: calls, every one

    def summary(self) -> dict:
        return {"modules_entered": len(self.entries), "climbs_back": len(self.climbs), "returns": len(self.returns),
                "module_climbs": len(self.module_climbs), "module_returns": len(self.module_returns),
                "module_climb_edges": self.module_climbs, "module_return_edges": self.module_returns,
                "modules": self.entries, "visits": dict(self.visits.most_common()), "resolutions": dict(sorted(self.calls.items())),
                "climb_edges": self.climbs, "return_edges": self.returns}


def _module(frame) -> str | None:
    name = frame.f_globals.get("__name__", "")
    if not name.startswith(OURS) or name.startswith(SKIP):
        return None
    return name.removeprefix(OURS)


def _holds(value, ids: set[int]) -> bool:
    """``value`` is one of the run's inputs, or holds one as an attribute or an item (one level)."""
    if id(value) in ids:
        return True
    if isinstance(value, (tuple, list)):
        return any(id(v) in ids for v in value)
    if isinstance(value, dict):
        return any(id(v) in ids for v in value.values())
    attrs = getattr(value, "__dict__", None)
    return isinstance(attrs, dict) and any(id(v) in ids for v in attrs.values())


def _carries(frame, ids: set[int]) -> bool:
    code = frame.f_code
    n = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & 4) + bool(code.co_flags & 8)
    local = frame.f_locals
    return any(_holds(local.get(name), ids) for name in code.co_varnames[:n])


def inputs_of(args) -> list:
    """``args`` and the values it holds that name an input: objects and names (not flags and numbers)."""
    values = [getattr(args, f) for f in getattr(args, "__dataclass_fields__", {}) if f != "device"]
    return [args, *(v for v in values if v is not None and not isinstance(v, (bool, int, float)))]


class _Walk:
    """The edges of one trace (all calls, or only those that carry the inputs)."""

    def __init__(self):
        self.t, self.edges, self.pairs, self.entered = Trace(), set(), set(), set()

    def call(self, caller, stack: list[str], callee: str, qual: str) -> None:
        t = self.t
        if caller is None or not self.entered:  # the entry: train itself
            if callee not in self.entered:
                self.entered.add(callee)
                t.entries.append(callee)
                t.visits[callee] += 1
            return
        if caller[0] == callee or (caller, callee, qual) in self.edges:
            return
        self.edges.add((caller, callee, qual))
        if (caller[0], callee) not in self.pairs:
            self.pairs.add((caller[0], callee))
            if callee in stack:
                t.module_climbs.append(f"{caller[0]} -> {callee}")
            elif callee in self.entered:
                t.module_returns.append(f"{caller[0]} -> {callee}")
        name = f"{caller[0]}.{caller[1]} -> {callee}.{qual}"
        t.visits[callee] += 1
        if callee in stack:
            t.climbs.append(name)
        elif callee in self.entered:
            t.returns.append(name)
        else:
            self.entered.add(callee)
            t.entries.append(callee)


def trace(fn, *args, inputs: list | None = None, **kwargs):
    """Run ``fn(*args, **kwargs)`` under the profiler; return (its result, the ``Trace`` of every call
    between our modules, the ``Trace`` of the calls that carry ``inputs``: those objects, or an object
    holding one of them: a run, a plan, a policy holding the ReflowConfig)."""
    every, carried = _Walk(), _Walk()
    ids = {id(v) for v in inputs or ()}

    def profile(frame, event, arg):
        if event != "call":
            return
        callee = _module(frame)
        if callee is None:
            return
        code = frame.f_code
        qual = code.co_qualname
        if "<locals>" in qual and code.co_name == "__init__" and "self" in frame.f_locals:  # a dataclass's own __init__
            qual = f"{type(frame.f_locals['self']).__name__}.__init__"
        name = qual if qual.endswith("Lineage.__init__") else code.co_name
        if name in WATCH:
            every.t.calls[WATCH[name]] += 1
        caller, stack, back = None, [], frame.f_back
        while back is not None:  # our modules below this call, nearest first
            m = _module(back)
            if m is not None:
                if caller is None:
                    caller = (m, back.f_code.co_qualname)
                stack.append(m)
            back = back.f_back
        every.call(caller, stack, callee, qual)
        if ids and _carries(frame, ids):
            carried.call(caller, stack, callee, qual)

    sys.setprofile(profile)
    try:
        result = fn(*args, **kwargs)
    finally:
        sys.setprofile(None)
    return result, every.t, carried.t


def train_args(teacher: Path, dataset: str, dataset_root: Path, out: Path, steps: int, resume: bool = False):
    """A tiny run on the CPU along the default path (online pairs, frames by spread), a checkpoint every step."""
    from hub_reflow.config import ReflowConfig
    from hub_reflow.train import TrainArgs

    rcfg = ReflowConfig(steps=steps, batch_size=4, lr=1e-3, holdout_episodes=2)
    return TrainArgs(teacher=str(teacher), dataset=dataset, dataset_root=dataset_root, output_dir=out, reflow=rcfg,
                     device="cpu", save_freq=1, log_freq=1, num_workers=0, progress=False, resume=resume)


def trace_run(teacher: Path, dataset: str, dataset_root: Path, out: Path) -> dict:
    """A 2-step run, then ``--resume`` extending it to 3 steps: each traced."""
    from hub_reflow.train import train

    out_ = {}
    for name, a in (("fresh", train_args(teacher, dataset, dataset_root, out, 2)),
                    ("resume", train_args(teacher, dataset, dataset_root, out, 3, resume=True))):
        _, every, carried = trace(train, a, inputs=inputs_of(a))
        out_[name] = {"args": carried.summary(), "all": every.summary()}
    return out_


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", type=Path, required=True, help="a tiny world's folder (built there if absent)")
    p.add_argument("--out", type=Path, default=None, help="the run folder (default: WORLD/trace-run, replaced)")
    p.add_argument("--teacher-steps", type=int, default=20, help="lerobot-train steps of the world's teacher, when built")
    p.add_argument("--json", type=Path, default=None, help="write every edge there, as JSON")
    a = p.parse_args(argv)
    # Offline, in the world's own Hugging Face cache (its tiny backbone is published there): before the Hub is imported.
    os.environ.setdefault("HF_HOME", str(a.world.resolve() / "hf_home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import shutil

    from hub_reflow.testing.tiny_world import build_tiny_world

    world = build_tiny_world(a.world, teacher_steps=a.teacher_steps)
    out = a.out or a.world / "trace-run"
    shutil.rmtree(out, ignore_errors=True)
    result = trace_run(world.teacher, world.repo_id, world.dataset_root, out)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    for name, both in result.items():
        for what, s in both.items():
            print(f"{name}, {what}: {s['modules_entered']} modules entered, {s['climbs_back']} climbs back, {s['returns']} "
                  f"returns to a module already left (between modules: {s['module_climbs']} climbs, {s['module_returns']} "
                  "returns)")
            print(f"  modules: {', '.join(s['modules'])}")
            print(f"  visits: {s['visits']}")
        print(f"  resolutions: {both['all']['resolutions']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
