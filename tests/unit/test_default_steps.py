"""The default training length: 2000 steps for a 1-step student, 1000 for 2+ Euler steps
(docs/fidelity.md section 4: the 1-step student's closed-loop success keeps climbing past 1000
steps), resolved on creation and recorded, so a resumed run keeps the length it started with."""

import json

from hub_reflow.config import MULTI_STEP_STEPS, ONE_STEP_STEPS, ReflowConfig, default_steps


def test_default_length_by_student_steps():
    assert (ONE_STEP_STEPS, MULTI_STEP_STEPS) == (2000, 1000)
    assert [default_steps(k) for k in (1, 2, 3)] == [2000, 1000, 1000]
    assert ReflowConfig().steps == 2000 and ReflowConfig().to_dict()["steps"] == 2000
    assert ReflowConfig(student_steps=2).steps == 1000
    assert ReflowConfig(steps=600).steps == 600 and ReflowConfig(student_steps=2, steps=3000).steps == 3000
    # A recorded length is kept (every lineage records the resolved number).
    assert ReflowConfig.from_dict({**ReflowConfig().to_dict(), "steps": 1000}).steps == 1000


def test_the_schedule_spans_the_resolved_length():
    """LeRobot's cosine preset as make_optimizer builds it: warm-up 5% of the resolved length, decay
    over all of it (a 1-step run's rate reaches its floor at step 2000, not 1000)."""
    import torch
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    from hub_reflow.train_utils import make_optimizer

    rcfg = ReflowConfig()
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer, scheduler, _, used = make_optimizer([param], SmolVLAConfig(), rcfg)
    assert used["warmup_steps"] == 100
    rates = []
    for _ in range(rcfg.steps):
        optimizer.step()
        scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    assert max(rates) == rates[99] and rates[999] > 10 * rates[-1]
    assert rates[-1] == used["decay_lr"]


def test_train_records_the_resolved_length_and_resume_keeps_it(tmp_path):
    from hub_reflow.cli import build_parser
    from hub_reflow.run_checks import RUN_RECORD
    from hub_reflow.train_command import train_settings

    parser = build_parser()
    base = ["train", "--teacher", "t", "--dataset", "d/d", "--output-dir"]
    one = train_settings(parser.parse_args([*base, str(tmp_path / "n")]))
    assert one.steps == 2000 and one.record["steps"] == 2000
    two = train_settings(parser.parse_args([*base, str(tmp_path / "n"), "--student-steps", "2"]))
    assert two.steps == 1000 and two.record["steps"] == 1000
    given = train_settings(parser.parse_args([*base, str(tmp_path / "n"), "--steps", "600"]))
    assert given.steps == 600 and given.record["steps"] == 600

    run = tmp_path / "old"  # a run started when the default was 1000 steps
    state = run / "checkpoints" / "000010" / "training_state"
    (state.parent / "pretrained_model").mkdir(parents=True)
    state.mkdir()
    (run / "checkpoints" / "last").symlink_to("000010")
    (state / RUN_RECORD).write_text(json.dumps({**one.record, "steps": 1000}))
    resumed = train_settings(parser.parse_args(["train", "--output-dir", str(run), "--resume"]))
    assert resumed.steps == 1000
