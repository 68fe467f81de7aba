"""verify, push and canonicalize agree on the real tiny student (trained by ``hub-reflow train`` from a
``lerobot-train`` teacher) with teacher tensors saved in every layout of tests/breaks.py, against the
teacher and, without one, against the architecture LeRobot builds from the config. (The same on
every break, synthetic: tests/unit/test_rules_agree.py.)"""

from __future__ import annotations

import re

import pytest
import torch
from breaks import NESTED_TEACHERS
from safetensors import safe_open

from hub_reflow.canonicalize import canonicalize
from hub_reflow.checkpoint import resolve_checkpoint
from hub_reflow.hub.push_pull import structural_problems
from hub_reflow.verify import FAIL, structure_checks, verify
from test_train import assert_canonical


def _check_name(problem: str) -> str:
    """The check a push problem names: "weights check (weights.teacher): ..." -> weights.teacher."""
    group, name = re.match(r"^(\w+) check(?: \(([\w.]+)\))?: ", problem).groups()
    return name or group


def _verdicts(folder, teacher=None) -> tuple[set[str], set[str]]:
    t = resolve_checkpoint(str(teacher)) if teacher else None
    failed = {c.name for c in structure_checks(folder, t.path if t else None, t.ref if t else None) if c.status == FAIL}
    refused = {_check_name(p) for p in structural_problems(folder, t.path if t else None, t.ref if t else None)}
    return failed, refused


@pytest.mark.parametrize("with_teacher", [True, False], ids=["teacher", "architecture"])
@pytest.mark.parametrize("name", sorted(NESTED_TEACHERS))
def test_teacher_tensors_in_any_layout(name, with_teacher, world, student_bf16, tmp_path):
    make, checks = NESTED_TEACHERS[name]
    teacher = world.teacher if with_teacher else None
    broken = make(student_bf16, world.teacher, tmp_path / "src")
    # Without a teacher, verify compares keys with the architecture; push builds none and judges
    # the rules that need no reference, the teacher rule among them.
    assert _verdicts(broken, teacher) == (checks, checks if with_teacher else {"weights.teacher"})
    changes = canonicalize(str(broken), tmp_path / "dst", str(teacher) if teacher else None)
    assert changes[0].startswith("weights: removed 72 teacher tensors under prefix ")
    assert _verdicts(tmp_path / "dst", teacher) == (set(), set())
    assert verify(str(tmp_path / "dst"), str(world.teacher)).passed
    assert_canonical(tmp_path / "dst", world.teacher)
    with safe_open(str(tmp_path / "dst" / "model.safetensors"), "pt") as f, \
            safe_open(str(student_bf16 / "model.safetensors"), "pt") as g:
        assert set(f.keys()) == set(g.keys()) and all(torch.equal(f.get_tensor(k), g.get_tensor(k)) for k in f.keys())
