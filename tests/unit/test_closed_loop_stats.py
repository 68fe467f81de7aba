"""The closed-loop statistics on known numbers, and how `eval` takes LeRobot's --env.* options apart."""

from __future__ import annotations

import pytest

from hub_reflow.closed_loop_stats import mcnemar_exact, paired_comparison, summarize, wilson_interval
from hub_reflow.eval_cli import split_env_args


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == 1.0
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(0, 20)[1] == pytest.approx(0.1611, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(9, 1) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact(3, 3) == 1.0  # the two-sided tail is capped at 1


def test_paired_comparison_counts():
    a = [True, True, False, False, True]
    b = [True, False, True, False, False]
    c = paired_comparison(a, b)
    assert (c["only_first_succeeds"], c["only_second_succeeds"], c["both_succeed"], c["both_fail"]) == (2, 1, 1, 1)
    assert c["difference"] == pytest.approx(0.2) and c["mcnemar_p"] == 1.0
    s = summarize(a, [1.0, 1.0, 0.0, 0.0, 1.0], [3, 4, 5, 6, 7], [10.0, 30.0, 20.0])
    assert (s["successes"], s["success_rate"], s["mean_length"], s["chunk_latency_ms"]["median"]) == (3, 0.6, 5.0, 20.0)


def test_split_env_args():
    argv = ["eval", "ckpt", "--env.type", "pusht", "--env.episode_length=50", "--episodes", "3", "--env.task", "PushT-v0"]
    rest, env = split_env_args(argv)
    assert rest == ["eval", "ckpt", "--episodes", "3"]
    assert env == ["--env.type=pusht", "--env.episode_length=50", "--env.task=PushT-v0"]
    assert split_env_args(["eval", "--env-id", "gym_x/Y-v0"]) == (["eval", "--env-id", "gym_x/Y-v0"], [])
