"""The default training length, 2000 steps for every student (docs/fidelity.md section 4: the 1-step
student's closed-loop success keeps climbing past 1000 steps; one length so students of 1 and 2
steps compare at equal length), recorded with the run, so a run started under the old 1000-step
default resumes at its own length."""

import json

from hub_reflow.config import ReflowConfig


def test_default_length():
    assert ReflowConfig().steps == 2000 and ReflowConfig().to_dict()["steps"] == 2000
    assert ReflowConfig(student_steps=2).steps == 2000
    assert ReflowConfig(steps=600).steps == 600
    # A recorded length is kept (every lineage records it).
    assert ReflowConfig.from_dict({**ReflowConfig().to_dict(), "steps": 1000}).steps == 1000


def test_the_schedule_spans_the_default_length():
    """LeRobot's cosine preset as make_optimizer builds it: warm-up over 5% of the run, decay over all
    of it (the rate reaches its floor at step 2000, and is still well above it at 1000)."""
    import torch
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    from hub_reflow.training.optimizer import make_optimizer

    rcfg = ReflowConfig()
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer, scheduler, _, used = make_optimizer([param], SmolVLAConfig(), rcfg)
    assert used["warmup_steps"] == 100
    rates = []
    for _ in range(rcfg.steps):
        param.grad = torch.ones(2)
        optimizer.step()
        scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    assert max(rates) == rates[99] and rates[999] > 10 * rates[-1]
    assert rates[-1] == used["decay_lr"]


def test_train_records_the_length_and_resume_keeps_it(tmp_path):
    from hub_reflow.cli import build_parser
    from hub_reflow.training.run_folder import RUN_RECORD
    from hub_reflow.training.command import train_settings

    parser = build_parser()
    base = ["train", "--teacher", "t", "--dataset", "d/d", "--output-dir", str(tmp_path / "n")]
    for extra in ([], ["--student-steps", "2"]):
        new = train_settings(parser.parse_args([*base, *extra]))
        assert new.steps == 2000 and new.record["steps"] == 2000
    given = train_settings(parser.parse_args([*base, "--steps", "600"]))
    assert given.steps == 600 and given.record["steps"] == 600

    run = tmp_path / "old"  # a run started when the default was 1000 steps
    state = run / "checkpoints" / "000010" / "training_state"
    (state.parent / "pretrained_model").mkdir(parents=True)
    state.mkdir()
    (run / "checkpoints" / "last").symlink_to("000010")
    (state / RUN_RECORD).write_text(json.dumps({**new.record, "steps": 1000}))
    assert train_settings(parser.parse_args(["train", "--output-dir", str(run), "--resume"])).steps == 1000
