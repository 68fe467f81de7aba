"""``hub-reflow verify`` and ``canonicalize`` on a real reflow student of a real lerobot-train teacher,
and on copies of it broken one way each (tests/breaks.py)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from safetensors import safe_open

from breaks import BREAKS, embedded_teacher, fp32_layout, reinitialised_expert
from conftest import run_cli, run_main
from hub_reflow.canonicalize import NotRepairable, canonicalize
from hub_reflow.verify import FAIL, INFO, PASS, SKIP, verify
from test_train import assert_canonical, assert_plain_lerobot_loads

STRUCTURE = {"config", "config.diff", "weights.teacher", "weights.keys", "weights.dtypes", "weights.finite",
             "weights.vlm", "processors.files", "processors.stats", "lineage"}


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _json_report(result) -> dict:
    return json.loads(result.stdout)


def test_verify_passes_the_real_student(world, student_bf16):
    result = run_main("verify", str(student_bf16), "--teacher", str(world.teacher), "--dataset", world.repo_id,
                      "--dataset-root", str(world.dataset_root), "--no-speed", "--json")
    report = _json_report(result)
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert report["passed"] is True and result.returncode == 0
    assert {n for n, s in status.items() if s == PASS} == STRUCTURE | {"fidelity", "actions.finite", "actions.range"}
    assert {n for n, s in status.items() if s == INFO} == {"weights.size", "weights.expert", "rtc"}
    # The deployment advice for this 1-step student: LeRobot's RTC flags with the guidance weight at its step count.
    rtc = next(c for c in report["checks"] if c["name"] == "rtc")["details"]
    chunk = json.loads((student_bf16 / "config.json").read_text())["chunk_size"]
    horizon = f" --inference.rtc.execution_horizon={chunk}" if chunk < 10 else ""
    assert rtc["flags"] == f"--inference.type=rtc --inference.rtc.max_guidance_weight=1{horizon}"
    # Key counts per group, against the module tree of the policy LeRobot loads (not key substrings).
    policy = SmolVLAPolicy.from_pretrained(str(world.teacher), strict=True)
    by_module = {
        "VLM": len(policy.model.vlm_with_expert.vlm.state_dict()),
        "action expert": len(policy.model.vlm_with_expert.lm_expert.state_dict()),
    }
    by_module["projections"] = len(policy.state_dict()) - sum(by_module.values())
    keys = next(c for c in report["checks"] if c["name"] == "weights.keys")["details"]
    assert keys["groups"] == by_module
    assert keys["keys"] == len(policy.state_dict())
    # Fidelity is measured, not read from the lineage: on held-out frames, the student beats the
    # 1-step teacher and stays within the teacher's own spread.
    fid = next(c for c in report["checks"] if c["name"] == "fidelity")["details"]
    assert fid["frames_from"] == "held-out episodes 20-23" and fid["frames"] == 32
    assert fid["student_rmse"] < fid["teacher_rmse_at_student_steps"] and fid["student_rmse"] < fid["teacher_spread_rmse"]
    size = next(c for c in report["checks"] if c["name"] == "weights.size")["details"]
    assert size["bytes"] == size["teacher_bytes"] == (world.teacher / "model.safetensors").stat().st_size


def test_verify_without_teacher_checks_against_the_architecture(student_bf16):
    report = verify(str(student_bf16))
    status = {c.name: c.status for c in report.checks}
    assert report.passed
    assert status["weights.keys"] == status["weights.dtypes"] == PASS
    assert status["weights.vlm"] == SKIP and status["config.diff"] == SKIP and status["fidelity"] == SKIP
    # ... which does catch a broken layout on its own.


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_each_break_fails_exactly_its_check(name, world, student_bf16, tmp_path):
    make, check, _ = BREAKS[name]
    broken = make(student_bf16, world.teacher, tmp_path / name)
    report = verify(str(broken), str(world.teacher))
    assert report.failed_names() == {check}, [(c.name, c.summary) for c in report.checks if c.failed]
    assert not report.passed
    assert all(c.status in (PASS, INFO, SKIP) for c in report.checks if c.name != check)


def test_layout_breaks_fail_without_a_teacher_too(world, student_bf16, tmp_path):
    for make, check in ((fp32_layout, "weights.dtypes"), (embedded_teacher, "weights.teacher")):
        broken = make(student_bf16, world.teacher, tmp_path / make.__name__)
        assert verify(str(broken)).failed_names() == {check}


@pytest.mark.parametrize("name", sorted(n for n, (_, _, ok) in BREAKS.items() if ok))
def test_canonicalize_repairs(name, world, student_bf16, tmp_path):
    make, _, _ = BREAKS[name]
    broken = make(student_bf16, world.teacher, tmp_path / "src")
    before = _tree_digest(broken)
    changes = canonicalize(str(broken), tmp_path / "dst", str(world.teacher))
    assert changes and not changes[0].startswith("nothing")
    assert _tree_digest(broken) == before  # SRC untouched
    assert verify(str(tmp_path / "dst"), str(world.teacher)).passed
    assert_canonical(tmp_path / "dst", world.teacher)
    assert_plain_lerobot_loads(tmp_path / "dst", world)
    # The repaired weights are the student's own, bit for bit.
    with safe_open(str(tmp_path / "dst" / "model.safetensors"), "pt") as f, safe_open(str(student_bf16 / "model.safetensors"), "pt") as g:
        assert set(f.keys()) == set(g.keys()) and all(torch.equal(f.get_tensor(k), g.get_tensor(k)) for k in f.keys())


@pytest.mark.parametrize("name", sorted(n for n, (_, _, ok) in BREAKS.items() if not ok))
def test_canonicalize_refuses_what_it_cannot_repair(name, world, student_bf16, tmp_path):
    make, _, _ = BREAKS[name]
    broken = make(student_bf16, world.teacher, tmp_path / "src")
    with pytest.raises(NotRepairable, match="not repairable, nothing written"):
        canonicalize(str(broken), tmp_path / "dst", str(world.teacher))
    assert not (tmp_path / "dst").exists()


def test_canonicalize_cli_refusal_is_one_line(world, student_bf16, tmp_path):
    broken = BREAKS["nan_in_expert"][0](student_bf16, world.teacher, tmp_path / "src")
    result = run_cli("canonicalize", str(broken), str(tmp_path / "dst"), "--teacher", str(world.teacher), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    err = [line for line in result.stderr.splitlines() if line.startswith("hub-reflow: error:")]
    assert len(err) == 1 and "NaN/Inf" in err[0] and "lm_expert" in err[0]
    assert not (tmp_path / "dst").exists()


def test_the_forks_checkpoint_is_repaired_without_a_teacher(world, student_bf16, tmp_path):
    """The seed document's student: unknown config fields, the teacher inside the file, built with
    load_vlm_weights false and saved in fp32. Without a teacher, the load_vlm_weights: true layout."""
    src = embedded_teacher(student_bf16, world.teacher, tmp_path / "a")
    src = fp32_layout(src, world.teacher, tmp_path / "fork")
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(load_vlm_weights=False, use_reflow=True, teacher_model_path="lerobot/teacher")
    (src / "config.json").write_text(json.dumps(cfg))
    assert verify(str(src), str(world.teacher)).failed_names() == {"config", "config.diff", "weights.teacher", "weights.dtypes"}

    result = run_main("canonicalize", str(src), str(tmp_path / "fixed"))
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dropped fields LeRobot does not know: teacher_model_path, use_reflow" in out
    assert "load_vlm_weights false -> true" in out and "removed 72 teacher tensors under prefix 'teacher.'" in out
    assert "VLM float32 -> bfloat16 x43" in out and "verdict: PASS" in out
    assert verify(str(tmp_path / "fixed"), str(world.teacher)).passed
    assert_canonical(tmp_path / "fixed", world.teacher)


def test_reinitialised_expert_fails_fidelity(world, student_bf16, tmp_path):
    broken = reinitialised_expert(student_bf16, world.teacher, tmp_path / "reinit")
    args = ("--teacher", str(world.teacher), "--dataset", world.repo_id, "--dataset-root", str(world.dataset_root), "--no-speed")
    result = run_main("verify", str(broken), *args, "--json")
    report = _json_report(result)
    assert result.returncode == 1 and report["passed"] is False
    failed = {c["name"] for c in report["checks"] if c["status"] == FAIL}
    assert "fidelity" in failed and failed <= {"fidelity", "actions.range"}  # structure is fine
    fid = next(c for c in report["checks"] if c["name"] == "fidelity")["details"]
    assert fid["student_rmse"] > fid["threshold"] >= 0.5 * fid["teacher_rmse_at_student_steps"]
    # canonicalize writes it (nothing to repair in the files) and its verify refuses it.
    result = run_main("canonicalize", str(broken), str(tmp_path / "dst"), *args)
    assert result.returncode == 1 and "FAIL  fidelity" in result.stdout and "verdict: FAIL (fidelity" in result.stdout


def test_speed_checks_report_prefix_and_step_times(world, student_bf16):
    from hub_reflow.verify import fidelity_checks

    checks = {c.name: c for c in fidelity_checks(student_bf16, world.teacher, world.repo_id, world.dataset_root,
                                                 frames=4, repeats=5)}
    d = checks["speed.speedup"].details
    t = checks["speed.same_cost"].details["teacher_s"]
    assert d["structural_ratio"] == pytest.approx((t["prefix"] + 1 * t["step"]) / (t["prefix"] + 10 * t["step"]))
    assert 0 < d["structural_ratio"] < 1 and 0 < d["measured_ratio"] < 1  # one step is cheaper than ten
    assert all(v > 0 for v in t.values())


def test_a_student_that_costs_more_fails_speed_after_its_confirmation_rounds(world, student_bf16):
    """A student whose every expert step costs 5 ms more (a real sleep in LeRobot's ``denoise_step``)
    is re-measured ``SPEED_CONFIRM`` times over and still fails; its unslowed self passes in the first rounds."""
    import time

    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import make_pre_post_processors

    from hub_reflow.checkpoint import load_smolvla
    from hub_reflow.checks.fidelity import observation_batch
    from hub_reflow.verify import SPEED_CONFIRM, speed_checks

    def loaded(folder):
        policy = load_smolvla(folder, what="test")
        return (policy, *make_pre_post_processors(policy.config, pretrained_path=str(folder)))

    raw = observation_batch(LeRobotDataset(world.repo_id, root=world.dataset_root), [0])
    student, teacher = loaded(student_bf16), loaded(world.teacher)
    fair = {c.name: c for c in speed_checks(student, teacher, raw, repeats=3)}
    assert fair["speed.same_cost"].status == PASS and fair["speed.same_cost"].details["rounds"] in (3, 6, 9)
    step = student[0].model.denoise_step

    def slow_step(*args, **kwargs):
        time.sleep(0.005)
        return step(*args, **kwargs)

    student[0].model.denoise_step = slow_step
    slow = {c.name: c for c in speed_checks(student, teacher, raw, repeats=3)}
    assert slow["speed.same_cost"].status == FAIL and slow["speed.same_cost"].details["rounds"] == 3 * SPEED_CONFIRM
    assert slow["speed.same_cost"].details["same_cost_ratio"] > 1.3  # SPEED_SAME_COST
    assert "check dtypes and load_vlm_weights" in slow["speed.same_cost"].summary


def test_verify_bad_input_is_one_line(world, tmp_path):
    result = run_cli("verify", str(tmp_path / "nope"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "does not exist as a folder and is not a Hub repo id" in result.stderr
    result = run_main("verify", str(world.teacher), "--dataset", world.repo_id)
    assert result.returncode == 2 and "pass --teacher too" in result.stderr


def test_teacher_with_unknown_config_fields_is_accepted(world, tmp_path, caplog):
    import shutil

    from hub_reflow.config import ReflowConfig
    from hub_reflow.policy import ReflowPolicy

    teacher = shutil.copytree(world.teacher_fp32, tmp_path / "teacher")
    cfg = json.loads((teacher / "config.json").read_text())
    cfg.update(use_reflow=False, teacher_model_path=None)
    (teacher / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level(logging.WARNING, logger="hub_reflow.checkpoint"):
        policy = ReflowPolicy.from_teacher(teacher, ReflowConfig(student_steps=2))
    assert "fields LeRobot does not know, ignored: teacher_model_path, use_reflow" in caplog.text
    policy.save_pretrained(tmp_path / "student")
    report = verify(str(tmp_path / "student"), str(teacher))
    assert report.get("config.diff").status == PASS and report.get("config.diff").details["diff"] == {"num_steps": [2, 10]}
    # An untrained copy is accepted as a checkpoint but is no student of its teacher.
    assert report.failed_names() == {"weights.expert"}
    # And the CLI trains from it.
    out = tmp_path / "run"
    result = run_cli("train", "--teacher", str(teacher), "--dataset", world.repo_id, "--dataset-root", str(world.dataset_root),
                     "--output-dir", str(out), "--steps", "2", "--batch-size", "4", "--device", "cpu", "--no-progress")
    assert "teacher_model_path, use_reflow" in result.stderr
    assert verify(str(out / "checkpoints" / "last" / "pretrained_model"), str(teacher)).passed
