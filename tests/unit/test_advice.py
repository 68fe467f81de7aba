"""The words a run ends with: the FAIL advice names what this run used and what to change, with
its own teacher and dataset, and the verdict shows the student's own numbers."""

from __future__ import annotations

from argparse import Namespace

from hub_reflow.checkpoint import CheckpointRef, Lineage
from hub_reflow.config import ReflowConfig
from hub_reflow.checks.fidelity import fidelity_verdict
from hub_reflow.training.command import final_verdict

# Numbers of a student further from its teacher than the teacher's own spread.
FAILING = {"student_rmse": 0.3, "teacher_rmse_at_student_steps": 0.4, "teacher_spread_rmse": 0.1, "action_scale": 1.0}


def _run(tmp_path, teacher: CheckpointRef, **reflow) -> Lineage:
    lineage = Lineage(teacher=teacher, reflow=ReflowConfig(**reflow).to_dict(), evaluation=dict(FAILING))
    (tmp_path / "reflow_lineage.json").write_text(lineage.to_json())
    return lineage


def test_the_verdict_shows_the_students_own_number():
    v = fidelity_verdict(0.3, 0.4, 0.1, 1.0)
    assert not v.passed and v.reason == ("further from the teacher than the teacher's own spread (student RMSE 0.3000, "
                                         "teacher at the student's step count 0.4000, teacher's own spread 0.1000)")
    v = fidelity_verdict(0.3, 0.4, 0.9, 1.0)
    assert v.reason == ("x0.75 of the teacher's own error at the student's step count (> 0.5; student RMSE 0.3000, teacher "
                        "at the student's step count 0.4000, teacher's own spread 0.9000): not clearly better than running "
                        "the teacher with as few steps")


def test_fail_advice_names_this_runs_settings_teacher_and_dataset(tmp_path):
    hub_teacher = CheckpointRef("user/teacher", "a" * 40, "main", "0" * 64)
    _run(tmp_path, hub_teacher, steps=600, time_sampling="grid", noises_per_frame=2, frame_sampling="spread")
    reason = fidelity_verdict(*(FAILING[k] for k in ("student_rmse", "teacher_rmse_at_student_steps", "teacher_spread_rmse",
                                                     "action_scale"))).reason
    line = final_verdict(tmp_path, Namespace(teacher="user/teacher", dataset="user/data", dataset_root=None))
    assert line == (f"fidelity verdict: FAIL, {reason}; this run used 600 steps, --time-sampling grid, --noises-per-frame 2, "
                    "--frame-sampling spread; train again with --steps 1200, --noises-per-frame 4 (--resume --steps 1200 "
                    f"extends this run), or measure on more frames: hub-reflow verify {tmp_path} --teacher user/teacher "
                    f"--teacher-revision {'a' * 40} --dataset user/data --frames 64")
    assert "TEACHER" not in line and "DATASET" not in line
    # A run that did not use grid times, nor frames by spread: those are named as what to change.
    _run(tmp_path, CheckpointRef(None, None, None, "0" * 64), steps=300, time_sampling="uniform", noises_per_frame=4,
         frame_sampling="uniform")
    line = final_verdict(tmp_path, Namespace(teacher="/data/teacher", dataset="me/local", dataset_root="/data/ds"))
    assert ("this run used 300 steps, --time-sampling uniform, --noises-per-frame 4, --frame-sampling uniform; train again "
            "with --steps 600, --time-sampling grid, --frame-sampling spread (--resume --steps 600 extends this run)") in line
    assert line.endswith(f"hub-reflow verify {tmp_path} --teacher /data/teacher --dataset me/local --dataset-root /data/ds "
                         "--frames 64")


def test_a_verdict_names_what_it_did_not_measure():
    from hub_reflow.checks.report import FAIL, INFO, PASS, SKIP, Check, Report

    structure = [Check("config", PASS, "ok"), Check("lineage", INFO, "trained from a local teacher folder")]
    assert Report("c", None, [*structure, Check("fidelity", PASS, "x0.2"), Check("speed.same_cost", PASS, "x1.0"),
                              Check("speed.speedup", PASS, "x0.3")]).verdict() == "PASS"
    no_speed = Report("c", "t", [*structure, Check("fidelity", PASS, "x0.2")])
    assert no_speed.verdict() == "PASS (structure and fidelity; speed not measured: --no-speed given)"
    assert no_speed.measured() == ["structure", "fidelity"]
    unloadable = Report("c", "t", [*structure, Check("fidelity", SKIP, "the student cannot be loaded with its processors: x"),
                                   Check("speed.same_cost", SKIP, "the student cannot be loaded with its processors: x")])
    assert unloadable.verdict() == ("PASS (structure only; fidelity and speed not measured: the student cannot be loaded "
                                    "with its processors: x)")
    failed = Report("c", None, [*structure, Check("weights.finite", FAIL, "NaN"), Check("fidelity", SKIP, "no --dataset")])
    assert failed.verdict() == "FAIL (weights.finite)" and failed.to_dict()["verdict"] == "FAIL (weights.finite)"
