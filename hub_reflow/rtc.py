"""The guidance a K-step policy needs under LeRobot's real-time chunking (RTC), as plain rules
(docs/deploy.md); ``rtc_driver`` runs RTC itself.

LeRobot's RTC (``RTCProcessor.denoise_step`` inside ``euler_integrate``) moves each Euler step's
prediction of the chunk towards the committed actions by ``weight * |dt|`` of the error, with
``weight = min(max_guidance_weight, w(tau))``; at the first step ``w`` is infinite, so the first
correction is ``max_guidance_weight / num_steps`` of the error. LeRobot's default (10) is exact for
SmolVLA's 10 steps and overshoots the committed actions by ``max_guidance_weight / num_steps - 1``
times the error at fewer steps: ``recommended`` sets ``max_guidance_weight = num_steps``, and an
``execution_horizon`` of at most the chunk (LeRobot's engine fails on a longer one).
"""

from __future__ import annotations

# LeRobot's RTCConfig defaults (lerobot.policies.rtc.configuration_rtc; tests/unit/test_rtc.py checks them).
LEROBOT_MAX_GUIDANCE_WEIGHT = 10.0
LEROBOT_EXECUTION_HORIZON = 10
LEROBOT_SCHEDULE = "LINEAR"


def first_step_gain(max_guidance_weight: float, num_steps: int) -> float:
    """How far the first Euler step moves the committed actions towards their target, as a fraction of
    the error (1: onto it; 10: nine times the error past it)."""
    return float(max_guidance_weight) / num_steps


def rtc_problems(max_guidance_weight: float, execution_horizon: int, num_steps: int, chunk_size: int) -> list[str]:
    """What is wrong with these RTC settings for a policy of ``num_steps`` Euler steps and ``chunk_size``
    actions a chunk (empty: nothing)."""
    out = []
    gain = first_step_gain(max_guidance_weight, num_steps)
    if gain > 1 + 1e-9:
        out.append(f"max_guidance_weight {max_guidance_weight:g} overshoots the committed actions at {num_steps} Euler "
                   f"step{'s' * (num_steps != 1)} ({gain - 1:.3g}x the error past them); use {num_steps:g}")
    if execution_horizon > chunk_size:
        out.append(f"execution_horizon {execution_horizon} exceeds the chunk ({chunk_size} actions), which LeRobot's RTC "
                   f"engine fails on; use {chunk_size} or less")
    return out


def recommended(num_steps: int, chunk_size: int) -> dict:
    """The RTC settings for a policy of ``num_steps`` Euler steps and ``chunk_size`` actions a chunk:
    LeRobot's, with ``max_guidance_weight = num_steps`` and ``execution_horizon`` at most the chunk."""
    return {"max_guidance_weight": float(num_steps), "execution_horizon": min(LEROBOT_EXECUTION_HORIZON, chunk_size),
            "prefix_attention_schedule": LEROBOT_SCHEDULE}


def rtc_flags(settings: dict) -> list[str]:
    """The ``lerobot-rollout`` flags that give ``settings`` (those that differ from LeRobot's defaults)."""
    defaults = {"max_guidance_weight": LEROBOT_MAX_GUIDANCE_WEIGHT, "execution_horizon": LEROBOT_EXECUTION_HORIZON,
                "prefix_attention_schedule": LEROBOT_SCHEDULE}
    out = ["--inference.type=rtc"]
    for name, default in defaults.items():
        value = settings.get(name, default)
        if value != default:
            out.append(f"--inference.rtc.{name}={value:g}" if isinstance(value, float) else f"--inference.rtc.{name}={value}")
    return out
