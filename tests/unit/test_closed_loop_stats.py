"""The closed-loop statistics on known numbers, and how `eval` takes LeRobot's --env.* options apart."""

from __future__ import annotations

import pytest

from hub_reflow.closed_loop.stats import mcnemar_exact, paired_comparison, summarize, wilson_interval
from hub_reflow.closed_loop.command import split_env_args


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


def _results():
    from hub_reflow.closed_loop.results import ClosedLoopResults

    def row(role, steps, outcomes):
        return {"role": role, "checkpoint": "a local checkpoint folder", "weights_sha256": "0" * 64, "num_steps": steps,
                **summarize(outcomes, [float(o) for o in outcomes], [5] * len(outcomes), [2.0, 4.0]),
                "outcomes": outcomes, "rewards": [float(o) for o in outcomes], "lengths": [5] * len(outcomes)}

    return ClosedLoopResults(
        env={"id": "gym_x/Reach-v0", "kind": "env-id", "options": [], "max_steps": 30,
             "scene": {"circles": [[0.0, -0.4, 0.3]], "goal_y": 0.3}},
        settings={"episodes": 4, "seed": 3, "command": "hub-reflow eval STUDENT_FOLDER --env-id gym_x/Reach-v0"},
        seeds=[3, 4, 5, 6],
        policies={"student@1": row("student", 1, [True, True, False, True]),
                  "teacher@10": row("teacher", 10, [True, True, True, True]),
                  "teacher@1": row("teacher", 1, [False, False, False, True])},
        hardware={"device": "cpu"}, trajectories={"student@1": [[0.0, -1.0], [0.1, -0.9]]})


def test_the_card_section_from_a_recorded_evaluation(tmp_path):
    import json

    from synthetic import make_teacher

    from hub_reflow.hub.card import render_card
    from hub_reflow.hub.card_closed_loop import closed_loop_context, draw_closed_loop_images, read_closed_loop
    from hub_reflow.checkpoint import CheckpointRef, Lineage, read_policy_config
    from hub_reflow.closed_loop.results import EVAL_NAME
    from hub_reflow.config import ReflowConfig

    results = _results()
    results.write(tmp_path / EVAL_NAME)
    data = json.loads((tmp_path / EVAL_NAME).read_text())
    assert data["success_rates"] == {"student@1": 0.75, "teacher@10": 1.0, "teacher@1": 0.25}
    assert (data["student_success_rate"], data["teacher_success_rate"]) == (0.75, 1.0)
    assert data["comparisons"][0] == {"first": "student@1", "second": "teacher@10", "only_first_succeeds": 0,
                                      "only_second_succeeds": 1, "both_succeed": 3, "both_fail": 0, "mcnemar_p": 1.0,
                                      "difference": -0.25}
    loaded = read_closed_loop(tmp_path)
    assert loaded.policies == results.policies
    names = draw_closed_loop_images(loaded, tmp_path)
    assert names == ["closed_loop_success.png", "closed_loop_trajectories.png"]
    assert all((tmp_path / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    lineage = Lineage(teacher=CheckpointRef(None, None, None, "0" * 64), reflow=ReflowConfig().to_dict())
    cfg = read_policy_config(make_teacher(tmp_path / "teacher"))
    card = str(render_card(lineage, cfg, repo_id="you/student", closed_loop=closed_loop_context(loaded)))
    assert "## Closed-loop evaluation" in card and "**gym_x/Reach-v0**: 4 paired episodes" in card and "seeds 3 to 6" in card
    assert "| student@1 | 1 | 3/4 (75.0%) |" in card and "| teacher@10 | 10 | 4/4 (100.0%) | 51.0% to 100.0% |" in card
    assert "only teacher@10 in 1 (exact McNemar p = 1)" in card
    assert "Command: `hub-reflow eval STUDENT_FOLDER --env-id gym_x/Reach-v0`" in card
    assert "![closed-loop paths of each policy from the same start](closed_loop_trajectories.png)" in card
    assert "Closed-loop evaluation" not in str(render_card(lineage, cfg, repo_id="you/student"))


def test_results_read_as_users_print_them():
    """``table()`` is the text to print (one string, a line per row and comparison); the student's
    and the teacher's rates are attributes, as in the JSON."""
    results = _results()
    table = results.table()
    assert isinstance(table, str)
    lines = table.splitlines()
    assert lines[0] == "env: gym_x/Reach-v0  episodes: 4 (paired: env and torch seeds 3..6)"
    assert [ln.split()[0] for ln in lines[2:5]] == ["student@1", "teacher@10", "teacher@1"]
    assert lines[5].startswith("paired student@1 vs teacher@10: only student@1 succeeds 0, only teacher@10 1")
    assert len(lines) == 7
    assert (results.student_success_rate, results.teacher_success_rate) == (0.75, 1.0)
    data = results.to_dict()
    assert (data["student_success_rate"], data["teacher_success_rate"]) == (0.75, 1.0)
    no_student = type(results)(env=results.env, settings=results.settings, seeds=results.seeds,
                               policies={k: v for k, v in results.policies.items() if v["role"] == "teacher"})
    assert no_student.student_success_rate is None and no_student.teacher_success_rate == 1.0


def test_each_policy_row_has_one_colour_in_every_picture(tmp_path):
    """The bar chart and the paths give each row the same colour (students green, teachers not, none
    the goal line's), the student's path is drawn above the teachers'; a picture that lacks a row keeps
    the others' colours."""
    from hub_reflow.closed_loop.plots import success_plot, trajectory_plot

    results = _results()
    labels = list(results.policies)
    paths = {label: [[0.0, -1.0], [0.1 * i, -0.9]] for i, label in enumerate(labels)}
    bars = success_plot(results.policies, "gym_x/Reach-v0", tmp_path / "success.png")
    drawn = trajectory_plot(paths, results.env["scene"], tmp_path / "paths.png", labels=labels)
    assert list(bars) == labels and len(set(bars.values())) == 3
    assert {k: color for k, (color, _) in drawn["rows"].items()} == bars
    assert bars["student@1"] == "#2ca02c" and drawn["goal"] not in bars.values()
    assert drawn["rows"]["student@1"][1] > max(z for k, (_, z) in drawn["rows"].items() if k.startswith("teacher"))
    teachers_only = trajectory_plot({k: v for k, v in paths.items() if k != "student@1"}, results.env["scene"],
                                    tmp_path / "teachers.png", labels=labels)
    assert {k: color for k, (color, _) in teachers_only["rows"].items()} == {k: bars[k] for k in ("teacher@10", "teacher@1")}


def test_video_frames_are_enlarged_by_nearest_and_labelled():
    import numpy as np

    from hub_reflow.closed_loop.plots import labelled_frames

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    out = labelled_frames(frames, ["student@1", "episode 0 (seed 0): success"])
    banner = out[0].shape[0] - 256
    assert len(out) == 3 and out[0].shape == (banner + 256, 256, 3) and banner > 0 and banner % 2 == 0
    for big, small in zip(out, frames):
        assert np.array_equal(big[banner:], small.repeat(8, axis=0).repeat(8, axis=1))  # nearest, exactly
    top = out[0][:banner]
    assert top.max() == 255 and (top == 0).mean() > 0.5  # white text on black
    assert not np.array_equal(top, labelled_frames(frames[:1], ["teacher@10", "episode 0 (seed 0): failure"])[0][:banner])
