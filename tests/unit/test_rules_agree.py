"""verify, push and canonicalize judge a checkpoint by the same structural checks over the same facts:
on every broken checkpoint of tests/breaks.py and every teacher layout, verify fails exactly the
expected checks, push refuses on exactly those, and canonicalize either repairs the checkpoint into
one all three accept, with the student's own tensors, or refuses and writes nothing."""

from __future__ import annotations

import re

import hashlib
import json

import pytest
from breaks import BREAKS, NESTED_TEACHERS, embedded_teacher
from safetensors.torch import load_file
from synthetic import make_student, make_teacher

from hub_reflow.canonicalize import NotRepairable, canonicalize
from hub_reflow.checkpoint import resolve_checkpoint
from hub_reflow.hub.push_pull import structural_problems
from hub_reflow.verify import FAIL, structure_checks

CASES = {name: (make, {check}, repairable) for name, (make, check, repairable) in BREAKS.items()}
CASES.update({name: (make, checks, True) for name, (make, checks) in NESTED_TEACHERS.items()})


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    teacher = make_teacher(root / "teacher")
    return make_student(teacher, root / "student"), teacher


def _check_name(problem: str) -> str:
    """The check a push problem names: "weights check (weights.teacher): ..." -> weights.teacher."""
    group, name = re.match(r"^(\w+) check(?: \(([\w.]+)\))?: ", problem).groups()
    return name or group


def _verdicts(folder, teacher) -> tuple[set[str], set[str]]:
    """(the checks verify fails, the checks push names when it refuses)."""
    t = resolve_checkpoint(str(teacher))
    failed = {c.name for c in structure_checks(folder, t.path, t.ref) if c.status == FAIL}
    refused = {_check_name(p) for p in structural_problems(folder, t.path, t.ref)}
    return failed, refused


def _digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_student_passes_all_three(pair, tmp_path):
    student, teacher = pair
    assert _verdicts(student, teacher) == (set(), set())
    assert canonicalize(str(student), tmp_path / "dst", str(teacher)) == ["nothing to change: the source was already canonical"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_verify_push_and_canonicalize_agree(name, pair, tmp_path):
    student, teacher = pair
    make, checks, repairable = CASES[name]
    broken = make(student, teacher, tmp_path / "src")
    assert _verdicts(broken, teacher) == (checks, checks)
    before = _digest(broken)
    if not repairable:
        with pytest.raises(NotRepairable, match="not repairable, nothing written"):
            canonicalize(str(broken), tmp_path / "dst", str(teacher))
        assert not (tmp_path / "dst").exists()
        return
    changes = canonicalize(str(broken), tmp_path / "dst", str(teacher))
    assert changes and not changes[0].startswith("nothing")
    assert _digest(broken) == before  # SRC untouched
    assert _verdicts(tmp_path / "dst", teacher) == (set(), set())
    repaired, own = load_file(str(tmp_path / "dst" / "model.safetensors")), load_file(str(student / "model.safetensors"))
    assert repaired.keys() == own.keys() and all(repaired[k].dtype == own[k].dtype and repaired[k].equal(own[k]) for k in own)


@pytest.mark.parametrize("name", sorted(NESTED_TEACHERS))
def test_teacher_tensors_are_found_at_any_depth(name, pair, tmp_path):
    student, teacher = pair
    broken = NESTED_TEACHERS[name][0](student, teacher, tmp_path / "src")
    changes = canonicalize(str(broken), tmp_path / "dst", str(teacher))
    n = len(load_file(str(teacher / "model.safetensors")))
    prefix = {"teacher_top_level": "teacher.", "teacher_under_model": "model._teacher_model.",
              "teacher_under_model_inner_model": "model.teacher."}
    layout = name.removesuffix("_student_prefixed")
    nest = "student." if name.endswith("_student_prefixed") and layout != "teacher_top_level" else ""
    assert changes[0] == f"weights: removed {n} teacher tensors under prefix '{nest}{prefix[layout]}'"
    if name.endswith("_student_prefixed"):
        assert changes[1] == f"weights: stripped prefix 'student.' from {n} student keys"
    assert len(changes) == (2 if name.endswith("_student_prefixed") else 1)


def test_the_forks_checkpoint_is_repaired(pair, tmp_path):
    """The issue's report: teacher under model._teacher_model., fp32 weights, load_vlm_weights false and
    the fork's extra config fields. canonicalize refused it before ("124 keys this SmolVLA config does
    not have")."""
    from breaks import fp32_layout, teacher_in_layout

    student, teacher = pair
    src = teacher_in_layout("under_model", False)(student, teacher, tmp_path / "a")
    src = fp32_layout(src, teacher, tmp_path / "fork")
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(load_vlm_weights=False, use_reflow=True, teacher_model_path="lerobot/teacher")
    (src / "config.json").write_text(json.dumps(cfg))
    expected = {"config", "config.diff", "weights.teacher", "weights.dtypes"}
    assert _verdicts(src, teacher) == (expected, expected)
    changes = canonicalize(str(src), tmp_path / "fixed", str(teacher))
    assert changes == [
        "config: dropped fields LeRobot does not know: teacher_model_path, use_reflow",
        "config: load_vlm_weights false -> true (the teacher's)",
        "weights: removed 10 teacher tensors under prefix 'model._teacher_model.'",
        "weights: cast action expert float32 -> bfloat16 x3; VLM float32 -> bfloat16 x3 (the layout LeRobot builds and casts to at load time)",
    ]
    assert _verdicts(tmp_path / "fixed", teacher) == (set(), set())


def test_canonicalize_refuses_plain_keys_beside_prefixed_copies(pair, tmp_path):
    student, teacher = pair
    src = embedded_teacher(student, teacher, tmp_path / "src")
    weights = load_file(str(src / "model.safetensors"))
    from safetensors.torch import save_file

    save_file({**weights, **{f"ema.{k}": v.clone() for k, v in weights.items() if k.startswith("model.")}}, str(src / "model.safetensors"))
    with pytest.raises(NotRepairable, match=r"both plain keys and keys under prefix \['ema.'\] exist"):
        canonicalize(str(src), tmp_path / "dst", str(teacher))


def test_counts_and_sameness_read_as_english(pair, tmp_path):
    """One extra key is "1 key"; a config identical to the teacher's says so (not "differs ... only
    in nothing")."""
    from safetensors.torch import save_file

    from hub_reflow.checks.report import counted

    assert (counted(1, "key"), counted(2, "key"), counted(0, "tensor")) == ("1 key", "2 keys", "0 tensors")
    student, teacher = pair
    src = tmp_path / "src"
    import shutil

    shutil.copytree(student, src)
    weights = load_file(str(src / "model.safetensors"))
    save_file({**weights, "model.extra_head.weight": weights["model.state_proj.weight"].clone()}, str(src / "model.safetensors"))
    with pytest.raises(NotRepairable) as err:
        canonicalize(str(src), tmp_path / "dst", str(teacher))
    assert "weights: 1 key this SmolVLA config does not have (e.g. model.extra_head.weight)" in str(err.value)
    t = resolve_checkpoint(str(teacher))
    diff = next(c for c in structure_checks(teacher, t.path, t.ref) if c.name == "config.diff")
    assert diff.summary == "identical to the teacher's"
    keys = next(c for c in structure_checks(src, t.path, t.ref) if c.name == "weights.keys")
    assert keys.summary.startswith("11 keys vs 10 in the teacher's: 1 unexpected")
