"""The RTC rules (hub_reflow/rtc.py) against LeRobot's own guidance (``euler_integrate`` with its
``RTCProcessor``), and the simulated RTC schedule (rtc_driver.RTCDriver) against LeRobot's
``ActionQueue`` with a policy whose chunks are known."""

from __future__ import annotations

import pytest
import torch

from hub_reflow.errors import UserError
from hub_reflow.rtc import (
    LEROBOT_EXECUTION_HORIZON,
    LEROBOT_MAX_GUIDANCE_WEIGHT,
    LEROBOT_SCHEDULE,
    first_step_gain,
    recommended,
    rtc_flags,
    rtc_problems,
)


def test_lerobot_defaults_are_lerobots():
    from lerobot.policies.rtc.configuration_rtc import RTCConfig

    default = RTCConfig()
    assert (default.max_guidance_weight, default.execution_horizon, default.prefix_attention_schedule.value) == (
        LEROBOT_MAX_GUIDANCE_WEIGHT, LEROBOT_EXECUTION_HORIZON, LEROBOT_SCHEDULE)


def _guided(num_steps: int, max_weight: float, delay: int = 3, chunk: int = 10, dim: int = 2):
    """LeRobot's RTC-guided Euler integration of a constant velocity field (x_t = target + t (z - target),
    whose one-step prediction is ``target`` exactly) towards committed actions ``prev``."""
    from lerobot.configs import RTCAttentionSchedule
    from lerobot.policies.common.flow_matching import euler_integrate
    from lerobot.policies.rtc.configuration_rtc import RTCConfig
    from lerobot.policies.rtc.modeling_rtc import RTCProcessor

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, chunk, dim, generator=gen)
    target = torch.randn(1, chunk, dim, generator=gen)
    prev = torch.randn(chunk, dim, generator=gen)
    processor = RTCProcessor(RTCConfig(max_guidance_weight=max_weight, execution_horizon=chunk,
                                       prefix_attention_schedule=RTCAttentionSchedule.LINEAR))
    out = euler_integrate(lambda x, t: z - target, z, num_steps, rtc_processor=processor, rtc_enabled=True,
                          inference_delay=delay, prev_chunk_left_over=prev)
    return out[0], target[0], prev


def test_one_euler_step_at_lerobots_default_overshoots_the_committed_actions_by_nine_times_the_error():
    out, target, prev = _guided(num_steps=1, max_weight=LEROBOT_MAX_GUIDANCE_WEIGHT)
    torch.testing.assert_close(out[:3], prev[:3] + 9 * (prev[:3] - target[:3]))
    assert first_step_gain(LEROBOT_MAX_GUIDANCE_WEIGHT, 1) == 10.0


@pytest.mark.parametrize("steps", [1, 2])
def test_the_recommended_weight_lands_on_the_committed_actions(steps):
    settings = recommended(steps, 10)
    assert settings["max_guidance_weight"] == steps and first_step_gain(settings["max_guidance_weight"], steps) == 1.0
    out, target, prev = _guided(num_steps=steps, max_weight=settings["max_guidance_weight"])
    torch.testing.assert_close(out[:3], prev[:3])
    # beyond the committed actions LeRobot's linear schedule blends towards the prediction, and past the horizon
    # the prediction is the policy's own
    assert not torch.allclose(out[3:], prev[3:])


def test_ten_steps_keep_lerobots_defaults():
    assert recommended(10, 50) == {"max_guidance_weight": 10.0, "execution_horizon": 10, "prefix_attention_schedule": "LINEAR"}
    assert rtc_flags(recommended(10, 50)) == ["--inference.type=rtc"]
    assert rtc_problems(LEROBOT_MAX_GUIDANCE_WEIGHT, LEROBOT_EXECUTION_HORIZON, 10, 50) == []


def test_flags_and_problems_name_the_fix():
    assert rtc_flags(recommended(1, 8)) == ["--inference.type=rtc", "--inference.rtc.max_guidance_weight=1",
                                            "--inference.rtc.execution_horizon=8"]
    assert rtc_flags(recommended(2, 50)) == ["--inference.type=rtc", "--inference.rtc.max_guidance_weight=2"]
    problems = rtc_problems(10.0, 10, 1, 8)
    assert problems == ["max_guidance_weight 10 overshoots the committed actions at 1 Euler step (9x the error past them); "
                        "use 1", "execution_horizon 10 exceeds the chunk (8 actions), which LeRobot's RTC engine fails on; "
                        "use 8 or less"]


class _Chunks(torch.nn.Module):
    """A policy whose n-th chunk is n + (0, 1, ..., chunk - 1) / 100 in every dimension, recording each call."""

    def __init__(self, chunk: int = 8):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(chunk_size=chunk, rtc_config=None)
        self.calls = []

    def reset(self):
        pass

    def init_rtc_processor(self):
        pass

    def predict_action_chunk(self, batch, inference_delay=None, prev_chunk_left_over=None):
        n = len(self.calls)
        self.calls.append((batch["step"], inference_delay, None if prev_chunk_left_over is None else prev_chunk_left_over.clone()))
        steps = torch.arange(self.config.chunk_size, dtype=torch.float32) / 100
        return (n + steps)[None, :, None].repeat(1, 1, 2)


def _rtc(delay: int, threshold: int | None = None, horizon: int = 8):
    from lerobot.policies.rtc.configuration_rtc import RTCConfig
    from lerobot.rollout.inference import RTCInferenceConfig

    return RTCInferenceConfig(rtc=RTCConfig(execution_horizon=horizon), queue_threshold=delay if threshold is None else threshold)


def test_the_driver_runs_lerobots_queue_with_a_latency_of_exactly_the_delay():
    from hub_reflow.closed_loop.rtc_driver import RTCDriver

    policy = _Chunks(chunk=8)
    driver = RTCDriver(policy, _rtc(delay=3), delay=3)
    with driver.installed():
        policy.reset()
        executed = [float(policy.select_action({"step": t})[0, 0]) for t in range(18)]
    # chunk 0 runs whole; chunk 1 is asked for with 3 actions left (step 5) and takes over at step 8 from its
    # 4th action; chunk 2 is asked for at step 10 and takes over at 13: every chunk after the first runs 5 actions
    assert [c[0] for c in policy.calls] == [0, 5, 10, 15]
    assert [c[1] for c in policy.calls] == [0, 3, 3, 3]
    assert driver.boundaries == [0, 8, 13]
    assert executed == pytest.approx([0.00, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07,
                                      1.03, 1.04, 1.05, 1.06, 1.07, 2.03, 2.04, 2.05, 2.06, 2.07])
    # the left-over LeRobot's engine passes: the 3 unexecuted actions, padded with zeros to the execution horizon
    torch.testing.assert_close(policy.calls[1][2][:, 0], torch.tensor([0.05, 0.06, 0.07, 0, 0, 0, 0, 0]))
    # the committed actions the new chunk should keep: what ran while it was computed
    assert [c.prefix_error for c in driver.chunks] == [None, pytest.approx(0.95), pytest.approx(0.95)]
    assert "select_action" not in vars(policy) and "reset" not in vars(policy)  # put back


def test_the_driver_refuses_what_lerobots_engine_cannot_run():
    from hub_reflow.closed_loop.rtc_driver import RTCDriver

    with pytest.raises(UserError, match="execution_horizon 10 exceeds the policy's chunk"):
        RTCDriver(_Chunks(chunk=8), _rtc(delay=3, horizon=10), delay=3)
    with pytest.raises(UserError, match="--inference-delay 8: the policy's chunks hold 8 actions; pass 0 to 7"):
        RTCDriver(_Chunks(chunk=8), _rtc(delay=8, threshold=8), delay=8)
    with pytest.raises(UserError, match="queue_threshold 2 is below the inference delay 3"):
        RTCDriver(_Chunks(chunk=8), _rtc(delay=3, threshold=2), delay=3)


def _with_rtc(folder, rtc: dict | None):
    import json

    cfg = json.loads((folder / "config.json").read_text())
    cfg["rtc_config"] = rtc
    (folder / "config.json").write_text(json.dumps(cfg, indent=4))


@pytest.mark.parametrize("saved, status", [(None, "info"), ({"max_guidance_weight": 1.0, "execution_horizon": 8}, "info"),
                                           ({"max_guidance_weight": 10.0, "execution_horizon": 10}, "warn")])
def test_verify_names_the_rtc_flags_and_warns_on_settings_that_overshoot(tmp_path, saved, status):
    import shutil

    from synthetic import make_student, make_teacher

    from hub_reflow.checkpoint import resolve_checkpoint
    from hub_reflow.verify import structure_checks

    teacher = make_teacher(tmp_path / "teacher")
    if saved is not None:  # a teacher saved with RTC settings passes them on to its student
        from lerobot.policies.rtc.configuration_rtc import RTCConfig

        full = {**{k: getattr(RTCConfig(), k) for k in ("enabled", "max_guidance_weight", "execution_horizon", "debug",
                                                        "debug_maxlen")}, "prefix_attention_schedule": "LINEAR", **saved}
        _with_rtc(teacher, full)
    student = make_student(teacher, tmp_path / "student")
    t = resolve_checkpoint(str(teacher))
    checks = {c.name: c for c in structure_checks(student, t.path, t.ref)}
    flags = "--inference.type=rtc --inference.rtc.max_guidance_weight=1 --inference.rtc.execution_horizon=8"
    assert checks["rtc"].status == status and checks["rtc"].details["flags"] == flags
    assert checks["config.diff"].status == "pass"  # the teacher's own RTC settings are no difference
    if status == "warn":
        assert checks["rtc"].summary.startswith("the config's rtc_config: max_guidance_weight 10 overshoots the committed "
                                                "actions at 1 Euler step (9x the error past them); use 1;")
    shutil.rmtree(tmp_path)
