"""The peak learning rate: the teacher's (or ``--lr``) times ``lr_scale``, 3 by default for a 1-step
student at the teacher's rate (docs/fidelity.md#1b-the-learning-rate), resolved on creation and
recorded, so runs recorded before the scale existed resume at 1."""

import json

import pytest
import torch

from hub_reflow.config import ONE_STEP_LR_SCALE, ReflowConfig


def test_default_scale_by_student_steps_and_explicit_rate():
    assert ONE_STEP_LR_SCALE == 3.0
    assert ReflowConfig().lr_scale == 3.0 and ReflowConfig().to_dict()["lr_scale"] == 3.0
    assert ReflowConfig(student_steps=2).lr_scale == 1.0  # on-policy K >= 2 students: the teacher's rate
    assert ReflowConfig(lr=2e-3).lr_scale == 1.0  # an explicit rate is the peak rate
    assert ReflowConfig(lr=2e-3, lr_scale=2.0).lr_scale == 2.0
    assert ReflowConfig(student_steps=2, lr_scale=3.0).lr_scale == 3.0
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="lr_scale must be"):
            ReflowConfig(lr_scale=bad)


def test_a_lineage_without_the_field_was_trained_at_scale_1():
    old = {k: v for k, v in ReflowConfig().to_dict().items() if k != "lr_scale"}
    assert ReflowConfig.from_dict(old).lr_scale == 1.0
    assert ReflowConfig.from_dict(ReflowConfig().to_dict()).lr_scale == 3.0


def _peak_lr(rcfg: ReflowConfig, teacher_lr: float) -> tuple[float, dict]:
    """The peak of LeRobot's scheduler for a SmolVLA config (its base rate, which the warm-up
    approaches and the cosine decays from), checked against the rates the steps used."""
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    from hub_reflow.training.optimizer import make_optimizer

    cfg = SmolVLAConfig(optimizer_lr=teacher_lr)
    param = torch.nn.Parameter(torch.zeros(3))
    opt, sched, _, used = make_optimizer([param], cfg, rcfg)
    seen = []
    for _ in range(rcfg.steps):
        param.grad = torch.ones(3)
        opt.step()
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    peak = opt.param_groups[0]["initial_lr"]
    assert 0.99 * peak < max(seen) <= peak
    return peak, used


def test_peak_rate_reaches_lerobots_scheduler():
    peak, used = _peak_lr(ReflowConfig(steps=40), 1e-4)
    assert peak == used["lr"] and used["lr"] == pytest.approx(3e-4, rel=1e-12)
    assert used["lr_from"] == "3 x teacher config (LeRobot preset) (0.0001)"
    peak, used = _peak_lr(ReflowConfig(steps=40, student_steps=2), 1e-4)
    assert peak == used["lr"] == 1e-4 and used["lr_from"] == "teacher config (LeRobot preset)"
    peak, used = _peak_lr(ReflowConfig(steps=40, lr=5e-4), 1e-4)
    assert peak == used["lr"] == 5e-4 and used["lr_from"] == "--lr"


def test_train_resolves_the_scale_before_recording_and_resumes_old_runs_at_1(tmp_path):
    """``train_settings``: a new run records the resolved scale; a run whose record predates the
    option resumes at 1 (what it was trained with), not at today's default."""
    from hub_reflow.cli import build_parser
    from hub_reflow.training.run_folder import RUN_RECORD
    from hub_reflow.training.command import train_settings

    parser = build_parser()
    new = train_settings(parser.parse_args(["train", "--teacher", "t", "--dataset", "d/d", "--output-dir", str(tmp_path / "n")]))
    assert new.lr_scale == 3.0 and new.record["lr_scale"] == 3.0
    two = train_settings(parser.parse_args(["train", "--teacher", "t", "--dataset", "d/d", "--student-steps", "2",
                                            "--output-dir", str(tmp_path / "n")]))
    assert two.lr_scale == 1.0

    run = tmp_path / "old"
    state = run / "checkpoints" / "000010" / "training_state"
    (state.parent / "pretrained_model").mkdir(parents=True)
    state.mkdir()
    (run / "checkpoints" / "last").symlink_to("000010")
    record = {k: v for k, v in new.record.items() if k not in ("lr_scale", "noises_per_frame", "frame_sampling")}
    (state / RUN_RECORD).write_text(json.dumps(record))
    old = train_settings(parser.parse_args(["train", "--output-dir", str(run), "--resume"]))
    assert (old.lr_scale, old.noises_per_frame, old.frame_sampling) == (1.0, 1, "uniform")
