"""The student where users deploy it (docs/deploy.md), on the closed-loop tiny world, loopback only:

- ``hub-reflow eval --inference rtc``: LeRobot's real-time chunking in simulated time; LeRobot's default
  guidance overshoots the committed actions of a 1-step student, the recommended weight keeps them;
- ``lerobot-rollout`` itself (LeRobot's entry point, sync and RTC with the flags the model card gives),
  driving a LeRobot robot that is the gym env (``hub_reflow.testing.gym_robot``), the student loaded by
  ``--policy.path``;
- LeRobot's async ``policy_server`` on 127.0.0.1 and its ``robot_client`` with the same robot.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli, run_main
from hub_reflow.closed_loop.envs import TINY_ENV
from hub_reflow.testing.post_world import TASK

ROBOT = ["--robot.type=hub_reflow_gym", "--robot.max_episodes=1"]


def test_eval_under_rtc_shows_the_overshoot_and_the_recommended_weight_keeps_the_committed_actions(
        closed_loop_world, closed_loop_student, tmp_path):
    out = tmp_path / "rtc.json"
    r = run_cli("eval", str(closed_loop_student), "--teacher", str(closed_loop_world.teacher), "--env-id", TINY_ENV,
                "--episodes", "3", "--device", "cpu", "--teacher-steps", "10", "--inference", "rtc", "--inference-delay", "3",
                "--inference.rtc.execution_horizon=8", "--json", str(out))
    data = json.loads(out.read_text())
    default, ours, teacher = "student@1 rtc w10 h8", "student@1 rtc w1 h8", "teacher@10 rtc w10 h8"
    assert list(data["policies"]) == [default, ours, teacher]  # the recommended row where it differs, none for 10 steps
    assert data["settings"]["inference"] == "rtc" and data["settings"]["inference_delay"] == 3
    assert data["policies"][ours]["inference"] == {"type": "rtc", "inference_delay": 3, "queue_threshold": 30,
                                                   "max_guidance_weight": 1.0, "execution_horizon": 8,
                                                   "prefix_attention_schedule": "LINEAR"}
    rows = data["policies"]
    for label in rows:
        assert rows[label]["prefix_error"]["n"] > 0 and rows[label]["boundary_jump"]["n"] > 0
        assert rows[label]["within_jump"]["n"] > 0
    # one Euler step at max_guidance_weight 1 lands on the committed actions; LeRobot's 10 throws them 9x the error past
    assert rows[ours]["prefix_error"]["mean"] < 1e-5
    assert rows[default]["prefix_error"]["mean"] > 0.05
    assert rows[default]["boundary_jump"]["mean"] > rows[ours]["boundary_jump"]["mean"]
    assert rows[teacher]["prefix_error"]["mean"] < rows[default]["prefix_error"]["mean"]
    assert "jump at handover" in r.stdout and ours in r.stdout
    # the JSON names the inference settings in the command the card shows
    assert "--inference rtc --inference-delay 3 --inference.rtc.execution_horizon=8" in data["settings"]["command"]


def _card_rollout_flags(checkpoint: Path) -> list[str]:
    """The ``--inference*`` flags of the ``lerobot-rollout`` line of the model card push would write."""
    card = run_main("card", str(checkpoint), "--repo-id", "you/student")
    assert card.returncode == 0, card.stderr
    line = next(ln for ln in card.stdout.splitlines() if ln.startswith("lerobot-rollout "))
    return [f for f in line.split() if f.startswith("--inference")]


def _python(code: str, *args: str, timeout: int, cwd: Path) -> subprocess.CompletedProcess:
    """(in ``cwd``: LeRobot's async client and server write their logs into ./logs)"""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _executed(log: Path) -> list[dict]:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records, "the robot executed no action"
    assert all(math.isfinite(x) for r in records for x in r["action"])
    ended = [r for r in records if r["ended"]]
    assert len(ended) == 1 and ended[0] is records[-1] and ended[0]["episode"] == 0  # the episode ran to its end
    return records


@pytest.mark.parametrize("inference", ["sync", "rtc"])
def test_lerobot_rollout_drives_the_student_with_the_cards_flags(closed_loop_student, tmp_path, inference):
    flags = _card_rollout_flags(closed_loop_student)
    assert flags == ["--inference.type=rtc", "--inference.rtc.max_guidance_weight=1", "--inference.rtc.execution_horizon=8"]
    log, chunks = tmp_path / "robot.jsonl", tmp_path / "chunks.jsonl"
    argv = [*ROBOT, f"--robot.log_path={log}", f"--policy.path={closed_loop_student}", "--fps=10", "--duration=10",
            f"--task={TASK}", "--play_sounds=false", "--return_to_initial_position=false", "--device=cpu",
            *(flags if inference == "rtc" else ["--inference.type=sync"])]
    r = _python("import sys; from hub_reflow.testing.gym_robot import run_rollout; "
                "run_rollout(sys.argv[2:], chunks_log=sys.argv[1])", str(chunks), *argv, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "RTC inference error" not in r.stderr and "Fatal error" not in r.stderr, r.stderr[-3000:]
    _executed(log)
    if inference == "sync":  # (LeRobot's sync engine acts through select_action)
        return
    made = [json.loads(line) for line in chunks.read_text().splitlines()]
    # every chunk after the first kept the actions executed while it was computed (its inference delay)
    guided = [c for c in made if c["prev"] is not None and c["inference_delay"]]
    assert guided, "no chunk was computed while another one ran"
    for c in guided:
        real = [row for row in c["prev"][: c["inference_delay"]] if any(row)]  # LeRobot pads the left-over with zeros
        for new, old in zip(c["chunk"], real):
            assert max(abs(a - b) for a, b in zip(new, old)) < 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_async_policy_server_serves_the_student(closed_loop_student, tmp_path):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "lerobot.async_inference.policy_server", "--host=127.0.0.1",
                               f"--port={port}", "--fps=10"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None, server.stderr.read()[-3000:]
            time.sleep(0.5)
        log = tmp_path / "robot.jsonl"
        r = _python("import sys; from hub_reflow.testing.gym_robot import run_async_client; run_async_client(sys.argv[1:])",
                    *ROBOT, f"--robot.log_path={log}", f"--server_address=127.0.0.1:{port}", "--policy_type=smolvla",
                    f"--pretrained_name_or_path={closed_loop_student}", "--actions_per_chunk=8", "--policy_device=cpu",
                    "--fps=10", f"--task={TASK}", timeout=300, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        records = _executed(log)
        assert len(records) >= 2
    finally:
        server.terminate()
        server.wait(timeout=30)
