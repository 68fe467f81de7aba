"""``hub-reflow eval``: closed-loop, paired episodes through LeRobot's own eval_policy.

- the closed-loop tiny world does what it is for (teacher@10 mostly succeeds, teacher@1 averages the
  sides into the post) and the trained student@1 keeps the teacher's success, measured, not assumed;
- ``--env-id`` on envs defined here (tests/gym_hubtest), not in the package: the rates are the ones
  the env says; LeRobot's ``--env.type pusht`` runs a tiny SmolVLA shaped for PushT;
- the same command twice gives the same episodes; bad input is one line, exit 2, nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from hub_reflow.closed_loop import EvalArgs, evaluate_closed_loop
from hub_reflow.closed_loop.envs import TINY_ENV, EnvChoice

TESTS = Path(__file__).resolve().parent
# tests/ on the path of the eval subprocess: it imports the env package gym_hubtest from there.
ENV = {"PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)}
EPISODES = 30  # paired episodes on the tiny world


def _eval(*args: str, check: bool = True):
    return run_cli("eval", *args, check=check, env=ENV)


def _in_process(capsys, *args: str) -> tuple[int, str, str]:
    """`hub-reflow eval ...` through cli.main in this process (no interpreter start per case;
    tests/ is on this process's path, so gym_hubtest imports)."""
    from hub_reflow.cli import main

    try:
        code = main(["eval", *args])
    except SystemExit as e:  # argparse
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def closed_loop(closed_loop_world, closed_loop_student, tmp_path_factory):
    """One eval of the trained student against its teacher on the tiny world, recorded into a copy
    of the student folder: (results JSON, student copy, stdout)."""
    student = tmp_path_factory.mktemp("closed-loop") / "student"
    shutil.copytree(closed_loop_student, student)
    out = student.parent / "eval.json"
    r = _eval(str(student), "--teacher", str(closed_loop_world.teacher), "--env-id", TINY_ENV, "--episodes", str(EPISODES),
              "--json", str(out), "--record", "--device", "cpu")
    return json.loads(out.read_text()), student, r.stdout


def test_the_world_needs_reflow_and_the_student_keeps_the_teachers_success(closed_loop):
    data, _, stdout = closed_loop
    rates = data["success_rates"]
    print(stdout)
    assert list(rates) == ["student@1", "teacher@10", "teacher@1"]
    assert data["student"] == "student@1" and data["teacher"] == "teacher@10"
    assert data["student_success_rate"] == rates["student@1"] and data["teacher_success_rate"] == rates["teacher@10"]
    # The world does what it is for: the 10-step teacher gets round the post in most episodes; at one
    # step it averages the two sides and drives into the post far more often.
    assert rates["teacher@10"] >= 0.7, rates
    assert rates["teacher@1"] <= rates["teacher@10"] - 0.3, rates
    # Reflow: the 1-step student within 10 points of the 10-step teacher on the same episodes; the
    # untrained copy at 1 step (the teacher's own weights at the student's step count: the
    # teacher@1 row) is not.
    wins = {label: p["successes"] for label, p in data["policies"].items()}  # counts: no float edge at 10 points
    assert wins["student@1"] >= wins["teacher@10"] - EPISODES // 10, rates
    assert wins["teacher@1"] < wins["teacher@10"] - EPISODES // 10, rates
    # Paired: every row ran the same episodes; the comparison counts are the outcomes' own.
    policies = data["policies"]
    assert data["seeds"] == list(range(EPISODES))
    for p in policies.values():
        assert len(p["outcomes"]) == EPISODES and p["successes"] == sum(p["outcomes"])
        lo, hi = p["success_ci95"]
        assert lo <= p["success_rate"] <= hi
    s, t = policies["student@1"]["outcomes"], policies["teacher@10"]["outcomes"]
    cmp = next(c for c in data["comparisons"] if (c["first"], c["second"]) == ("student@1", "teacher@10"))
    assert cmp["only_first_succeeds"] == sum(a and not b for a, b in zip(s, t))
    assert cmp["only_second_succeeds"] == sum(b and not a for a, b in zip(s, t))
    assert [e["success"]["student@1"] for e in data["episodes"]] == s
    assert data["env"]["id"] == "hub_reflow/GoAround-v0" and data["env"]["max_steps"] == 30
    assert set(data["trajectories"]) == set(rates)  # planar states: the card's picture
    for key in ("versions", "hardware", "settings"):
        assert data[key]
    assert "student@1" in stdout and "McNemar" in stdout


def test_record_puts_the_evaluation_on_the_card(closed_loop):
    data, student, _ = closed_loop
    recorded = json.loads((student / "reflow_eval.json").read_text())  # strict JSON
    assert recorded["success_rates"] == data["success_rates"]
    assert "STUDENT_FOLDER" in recorded["settings"]["command"] and str(student) not in (student / "reflow_eval.json").read_text()
    card = run_cli("card", str(student)).stdout
    assert "## Closed-loop evaluation" in card
    assert "hub_reflow/GoAround-v0" in card and f"{EPISODES} paired episodes" in card
    p = data["policies"]["student@1"]
    assert f"| student@1 | 1 | {p['successes']}/{EPISODES} ({100 * p['success_rate']:.1f}%)" in card
    assert "hub-reflow eval STUDENT_FOLDER --teacher TEACHER_FOLDER --env-id tiny-go-around" in card
    assert "closed_loop_success.png" in card and "closed_loop_trajectories.png" in card


def test_the_same_command_gives_the_same_episodes(closed_loop_world):
    """Twice in-process through the API: the same outcomes, lengths and paths, to the bit."""
    args = EvalArgs(teacher=str(closed_loop_world.teacher), env=EnvChoice(env_id=TINY_ENV), episodes=4, seed=7,
                    teacher_steps=(1, 10), device="cpu")
    first, second = evaluate_closed_loop(args), evaluate_closed_loop(args)
    assert first.seeds == [7, 8, 9, 10]
    for label in ("teacher@1", "teacher@10"):
        for key in ("outcomes", "lengths", "rewards"):
            assert first.policies[label][key] == second.policies[label][key], (label, key)
    assert first.trajectories == second.trajectories and first.trajectories["teacher@10"]


def _parity_eval(capsys, world, tmp_path, *extra: str) -> tuple[dict, str]:
    """``hub-reflow eval`` of the fp32 teacher (student@10, teacher@1) on gym_hubtest/SeedParity-v0,
    5 episodes; its JSON and stdout."""
    out = tmp_path / "parity.json"
    code, stdout, _ = _in_process(capsys, str(world.teacher_fp32), "--teacher", str(world.teacher_fp32), "--env-id",
                                  "gym_hubtest/SeedParity-v0", "--episodes", "5", "--teacher-steps", "1", *extra,
                                  "--json", str(out), "--device", "cpu")
    assert code == 0
    return json.loads(out.read_text()), stdout


def test_env_id_from_a_test_module(world, tmp_path, capsys):
    """gym_hubtest/SeedParity-v0 (tests/gym_hubtest): an episode succeeds iff its env seed is even;
    its camera is one array (LeRobot's observation.image), mapped to the policy's only camera."""
    data, stdout = _parity_eval(capsys, world, tmp_path, "--seed", "10")
    assert data["success_rates"] == {"student@10": 0.6, "teacher@1": 0.6}
    for p in data["policies"].values():
        assert p["outcomes"] == [True, False, True, False, True]
        assert p["lengths"] == [3] * 5 and p["rewards"] == [1.0, 0.0, 1.0, 0.0, 1.0]
        assert p["chunk_latency_ms"]["chunks"] == 5  # n_action_steps 8 (the checkpoint's): one chunk per 3-step episode
    assert data["seeds"] == [10, 11, 12, 13, 14] and data["settings"]["n_action_steps"] is None
    assert data["settings"]["rename_map"] == {"observation.image": "observation.images.cam"}
    assert data["env"] == {"id": "gym_hubtest/SeedParity-v0", "kind": "env-id", "options": [], "max_steps": 10, "scene": None}
    assert "60.0%" in stdout


def test_n_action_steps_makes_every_row_replan(world, tmp_path, capsys):
    """--n-action-steps 2 (lerobot-eval's --policy.n_action_steps): a 3-step episode takes two
    chunks for every row, and the command on the card says so."""
    data, _ = _parity_eval(capsys, world, tmp_path, "--n-action-steps", "2")
    assert {k: p["chunk_latency_ms"]["chunks"] for k, p in data["policies"].items()} == {"student@10": 10, "teacher@1": 10}
    assert data["settings"]["n_action_steps"] == 2 and "--n-action-steps 2" in data["settings"]["command"]


def _tiny_pusht_policy(folder: Path) -> Path:
    """An untrained tiny SmolVLA with PushT's features (one 96x96 camera, 2-d state and action)."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from hub_reflow.testing.tiny_world import IMAGE_SIZE, TINY_BACKBONE_ID

    cfg = SmolVLAConfig(
        vlm_model_name=TINY_BACKBONE_ID, device="cpu", chunk_size=8, n_action_steps=8, max_state_dim=8, max_action_dim=8,
        resize_imgs_with_padding=(IMAGE_SIZE, IMAGE_SIZE), num_vlm_layers=2, tokenizer_max_length=16,
        input_features={"observation.image": PolicyFeature(FeatureType.VISUAL, (3, 96, 96)),
                        "observation.state": PolicyFeature(FeatureType.STATE, (2,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))})
    torch.manual_seed(0)
    policy = SmolVLAPolicy(cfg)
    stats = {k: {"mean": torch.full((2,), 256.0), "std": torch.full((2,), 100.0)} for k in ("observation.state", "action")}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    for thing in (policy, pre, post):
        thing.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pusht_policy(world, tmp_path_factory):
    return _tiny_pusht_policy(tmp_path_factory.mktemp("pusht") / "policy")


def test_lerobot_env_type_pusht(pusht_policy, tmp_path, capsys):
    """LeRobot's PushT through its own EnvConfig (gym-pusht, scripts/env.sh): plumbing only, an
    untrained policy does not push the T."""
    out = tmp_path / "pusht.json"
    code, stdout, _ = _in_process(capsys, str(pusht_policy), "--env.type", "pusht", "--env.episode_length=4", "--episodes", "2",
                                  "--json", str(out), "--device", "cpu")
    assert code == 0
    data = json.loads(out.read_text())
    assert data["env"]["id"] == "pusht/PushT-v0" and data["env"]["kind"] == "env-type" and data["env"]["max_steps"] == 4
    assert data["env"]["options"] == ["--env.type=pusht", "--env.episode_length=4"]
    assert list(data["success_rates"]) == ["student@10"]
    p = data["policies"]["student@10"]
    assert len(p["outcomes"]) == 2 and p["lengths"] == [4, 4] and p["success_rate"] == sum(p["outcomes"]) / 2
    assert [e["seed"] for e in data["episodes"]] == [0, 1] and data["teacher"] is None
    assert data["settings"]["rename_map"] == {}  # observation.image and observation.state by name
    assert "pusht/PushT-v0" in stdout


PUSHT_NEEDS = "the student needs observation.image [3, 96, 96] and observation.state [2]"
PUSHT_FIX = """pass --env-kwargs '{"obs_type": "pixels_agent_pos"}' (its obs_type is 'state')"""


def test_pusht_state_observations_are_one_line_naming_the_obs_type(pusht_policy, tmp_path, capsys):
    """gym-pusht's registered default (obs_type "state") gives one array, not LeRobot's dict: one line
    (exit 2) naming what it gives, what the policy needs and the option that fixes it, from the CLI, from
    LeRobot's --env.type and from the Python API; with that option the same command runs."""
    out = tmp_path / "out.json"
    code, _, err = _in_process(capsys, str(pusht_policy), "--env-id", "gym_pusht/PushT-v0", "--episodes", "2",
                               "--json", str(out), "--device", "cpu")
    assert code == 2 and "Traceback" not in err and not out.exists()
    assert err.strip().splitlines() == [
        "hub-reflow: error: gym_pusht/PushT-v0 gives its observation as one array of shape [5], not LeRobot's dict of "
        f"'pixels' (camera images) and 'agent_pos' (state); {PUSHT_NEEDS}: {PUSHT_FIX}"]
    code, _, err = _in_process(capsys, str(pusht_policy), "--env.type", "pusht", "--env.obs_type=state", "--episodes", "1",
                               "--device", "cpu")
    assert code == 2 and err.strip().splitlines() == [
        "hub-reflow: error: pusht/PushT-v0 gives its observation as one array of shape [5], not LeRobot's dict of "
        f"'pixels' (camera images) and 'agent_pos' (state); {PUSHT_NEEDS}: pass --env.obs_type=pixels_agent_pos "
        "(its obs_type is 'state')"]
    from hub_reflow.errors import UserError

    with pytest.raises(UserError, match="gives its observation as one array of shape"):
        evaluate_closed_loop(student=str(pusht_policy), env=EnvChoice(env_id="gym_pusht/PushT-v0"), episodes=1, device="cpu")
    code, stdout, err = _in_process(capsys, str(pusht_policy), "--env-id", "gym_pusht/PushT-v0", "--env-kwargs",
                                    '{"obs_type": "pixels_agent_pos"}', "--max-steps", "2", "--episodes", "1",
                                    "--json", str(out), "--device", "cpu")
    assert code == 0, err
    assert json.loads(out.read_text())["policies"]["student@10"]["lengths"] == [2]


def test_without_a_recorded_hub_teacher_eval_says_how_to_add_the_teacher_rows(world, student_fp32, tmp_path, capsys, caplog):
    """A student whose teacher was a local folder: eval without --teacher runs the student row and says
    why there are no teacher rows and how to add them (a warning, the table and the JSON)."""
    out = tmp_path / "out.json"
    code, stdout, err = _in_process(capsys, str(student_fp32), "--env-id", "gym_hubtest/SeedParity-v0", "--episodes", "1",
                                    "--json", str(out), "--device", "cpu")
    assert code == 0, err
    note = ("only the student row: the student's teacher was a local folder (its path is not recorded); pass --teacher "
            "TEACHER (its folder or Hub repo id) to add the teacher rows")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("hub_reflow")] == [
        ("hub_reflow.closed_loop", "WARNING", f"eval: {note}")]
    assert f"\nnote: {note}\n" in stdout and stdout.endswith(f"\nwrote {out}\n")
    data = json.loads(out.read_text())
    assert list(data["success_rates"]) == ["student@1"] and data["settings"]["no_teacher"] == note


BAD = [
    ("unknown env", ["--env-id", "gym_hubtest/Nope-v0"], "unknown gymnasium env 'gym_hubtest/Nope-v0'"),
    ("missing env package", ["--env-id", "gym_not_installed/Reach-v0"], "pip install gym-not-installed"),
    ("env without is_success", ["--env-id", "gym_hubtest/NoSuccess-v0"], "does not report info['is_success']"),
    ("feature mismatch", ["--env-id", "gym_hubtest/WideState-v0"], "observation.state has shape [2], gym_hubtest/WideState-v0 gives [3]"),
    ("no episodes", ["--env-id", "gym_hubtest/SeedParity-v0", "--episodes", "0"], "--episodes: must be between 1"),
    ("unknown env type", ["--env.type", "nope"], "invalid choice: 'nope'"),
    ("both env kinds", ["--env-id", "gym_hubtest/SeedParity-v0", "--env.type", "pusht"], "not both"),
    ("n-action-steps above the chunk", ["--env-id", "gym_hubtest/SeedParity-v0", "--n-action-steps", "9"],
     "--n-action-steps 9: the student's chunks hold 8 actions (chunk_size); pass 1 to 8"),
    ("rtc option without rtc", ["--env-id", "gym_hubtest/SeedParity-v0", "--inference.rtc.max_guidance_weight=1"],
     "--inference.rtc.max_guidance_weight applies to --inference rtc only"),
    ("bad rtc option", ["--env-id", "gym_hubtest/SeedParity-v0", "--inference", "rtc", "--inference.rtc.max_guidance_weight=-1"],
     "--inference options: max_guidance_weight must be positive"),
    ("rtc horizon above the chunk", ["--env-id", "gym_hubtest/SeedParity-v0", "--inference", "rtc"],
     "--inference.rtc.execution_horizon 10 exceeds the student's chunk (8 actions), which LeRobot's RTC engine fails on; pass 8 or less"),
    ("rtc delay not below the chunk", ["--env-id", "gym_hubtest/SeedParity-v0", "--inference", "rtc", "--inference-delay", "8",
                                       "--inference.rtc.execution_horizon=8"], "--inference-delay 8: the policy's chunks hold 8 actions"),
]




@pytest.mark.parametrize("name,args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line(name, args, message, world, tmp_path, capsys):
    out = tmp_path / "out.json"
    code, _, err = _in_process(capsys, str(world.teacher_fp32), *args, "--json", str(out), "--device", "cpu")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert not out.exists()


def test_student_and_teacher_with_other_features(world, pusht_policy, tmp_path, capsys):
    out = tmp_path / "out.json"
    code, _, err = _in_process(capsys, str(world.teacher_fp32), "--teacher", str(pusht_policy), "--env-id",
                            "gym_hubtest/SeedParity-v0", "--json", str(out))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "the student and the teacher have different features" in err and not out.exists()


def test_videos_are_enlarged_and_labelled(closed_loop_world, tmp_path, capsys):
    """--videos from the tiny world's 32x32 camera: each row's episode as VIDEOS_DIR/<row>/episode_<i>.mp4,
    enlarged by nearest neighbour to 256 pixels a side under a banner naming the row, episode and outcome."""
    import av
    import numpy as np

    out, videos = tmp_path / "out.json", tmp_path / "videos"
    code, _, err = _in_process(capsys, "--teacher", str(closed_loop_world.teacher), "--env-id", TINY_ENV, "--episodes", "2",
                               "--teacher-steps", "10", "--videos", "1", "--videos-dir", str(videos), "--json", str(out),
                               "--device", "cpu")
    assert code == 0, err
    data = json.loads(out.read_text())
    assert sorted(str(p.relative_to(videos)) for p in videos.rglob("*")) == ["teacher@10", "teacher@10/episode_0.mp4"]
    with av.open(str(videos / "teacher@10" / "episode_0.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == data["policies"]["teacher@10"]["lengths"][0]  # LeRobot's frames, one a step
    banner = frames[0].shape[0] - 256
    assert frames[0].shape[1] == 256 and 0 < banner <= 64
    assert frames[0][:banner].max() > 200 and np.median(frames[0][:banner]) < 30  # white words on black
    picture = frames[0][banner:].astype(int).reshape(32, 8, 32, 8, 3)
    within = np.abs(picture - picture[:, :1, :, :1]).mean()  # nearest: 8x8 blocks of one colour (video coding aside)
    assert within < 0.2 * np.abs(np.diff(picture[:, 0, :, 0], axis=1)).mean() + 2, within
