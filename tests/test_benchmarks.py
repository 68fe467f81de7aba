"""The benchmarks run end to end in ``--smoke`` mode and write well-formed JSON; bad options are
refused in one line."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH.parent), os.environ.get("PYTHONPATH")]))})
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _table_last(stdout: str, rows: int) -> list[str]:
    lines = stdout.rstrip().splitlines()
    table = lines[-(rows + 2):]
    assert all(ln.startswith("|") for ln in table) and set(table[1]) <= set("|-:"), stdout[-2000:]
    return table


def test_latency_smoke(tmp_path):
    out = tmp_path / "latency.json"
    # Two cameras, both layouts (test_gpu_script runs the 1-camera LeRobot layout with the fast and compiled rows).
    r = _run("latency.py", "--smoke", "--cameras", "2", "--repeats", "1", "--warmup", "0",
             "--workdir", str(tmp_path / "work"), "--out", str(out))
    data = json.loads(out.read_text())
    assert data["benchmark"] == "latency" and "latency.py" in data["command"]
    assert data["hardware"]["device"] in ("cpu", "cuda") and data["hardware"]["torch"]
    assert data["settings"]["smoke"] is True and data["settings"]["steps"] == [1, 2, 4, 10]
    names = [f"{lay} 2cam @{k}" for lay in ("lerobot", "fp32") for k in (1, 2, 4, 10)]
    assert [row["name"] for row in data["rows"]] == names
    for row in data["rows"]:
        for key in ("total_ms", "prefix_ms", "step_ms", "measured_ratio_vs_10", "structural_ratio_vs_10", "speedup_vs_10"):
            assert _finite(row[key]) and row[key] > 0, (row["name"], key, row[key])
        assert row["structural_ratio_vs_10"] <= 1 and row["prefix_tokens"] > row["lang_tokens"] > 0
        if row["steps"] == 10:
            assert row["measured_ratio_vs_10"] == 1.0
    # The layouts LeRobot builds: bf16 VLM under load_vlm_weights=true, all fp32 otherwise.
    params = data["layouts"]
    assert set(params["lerobot"]["parameters"]["vlm"]) == {"bfloat16"}
    assert set(params["fp32"]["parameters"]["vlm"]) == {"float32"}
    assert set(params["lerobot"]["parameters"]["projections"]) == {"float32"}
    _table_last(r.stdout, len(names))
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fidelity_smoke(world, tmp_path):
    out = tmp_path / "fidelity.json"
    r = _run("fidelity.py", "--smoke", "--teacher", str(world.teacher_fp32), "--dataset-root", str(world.dataset_root),
             "--student-train-steps", "2", "--workdir", str(tmp_path / "work"), "--out", str(out))
    data = json.loads(out.read_text())
    assert data["benchmark"] == "fidelity" and "fidelity.py" in data["command"] and data["hardware"]["torch"]
    names = ["teacher @10", "teacher @10 (other noise)", "teacher @2", "teacher @1", "student(1-step, grid) @1",
             "student(2-step, grid, on-policy) @2", "student(2-step, grid, straight) @2", "reference loop (1-step, grid) @1"]
    rows = data["worlds"]["tiny"]["rows"]
    assert [row["name"] for row in rows] == names
    for row in rows:
        for key in ("rmse_vs_teacher10", "mode_distance", "mode_hit_rate", "S_euler", "S_fine"):
            assert _finite(row[key]) and row[key] >= 0, (row["name"], key, row[key])
        assert 0 <= row["mode_hit_rate"] <= 1
        assert (row["mse_ratio"] is None) == (row["model"] == "teacher")
        assert (row["mse_ratio_training_frames"] is None) == (row["model"] == "teacher")
        if row["model"] != "teacher":
            assert _finite(row["mse_ratio"]) and _finite(row["mse_ratio_training_frames"]) and row["mse_ratio_training_frames"] > 0
    rows = {row["name"]: row for row in rows}
    assert rows["teacher @10"]["rmse_vs_teacher10"] == 0
    assert rows["teacher @1"]["S_euler"] == pytest.approx(0, abs=1e-6)  # one step: the only velocity is z - x_0
    assert rows["teacher @10"]["S_euler"] == pytest.approx(rows["teacher @10"]["S_fine"], rel=1e-4)  # the same grid
    assert data["settings"]["student_train_steps"] == 2 and data["settings"]["round2"] is False
    assert data["settings"]["default_time_sampling"] == "grid"
    _table_last(r.stdout, 4)  # the summary: one row per student
    # Each student was trained once, by hub-reflow's own loop, into the workdir, with its time sampling.
    runs = tmp_path / "work" / "runs-smoke" / "tiny" / "steps2-b8"
    # A peak rate other than the base (the 1-step default, 3x) names the folder: an older default's runs stay apart.
    for k, name, inputs in ((1, "k1-grid-lrx3", "on-policy"), (2, "k2-grid-on-policy", "on-policy"),
                            (2, "k2-grid-straight", "straight")):
        folder = runs / name / "checkpoints" / "last" / "pretrained_model"
        assert json.loads((folder / "config.json").read_text())["num_steps"] == k
        reflow = json.loads((folder / "reflow_lineage.json").read_text())["reflow"]
        assert reflow["time_sampling"] == "grid" and reflow["student_inputs"] == inputs and reflow["lr_scale"] == (3 if k == 1 else 1)
    assert data["settings"]["student_lr_scale"] == {"1-step": 3.0, "2-step": 1.0}
    # The reference loop's student: a plain LeRobot checkpoint (no lineage), trained 2 steps, 1 Euler step.
    ref = runs / "reference-k1-grid"
    assert json.loads((ref / "config.json").read_text())["num_steps"] == 1
    assert not (ref / "reflow_lineage.json").exists()
    done = json.loads((ref / "reference_loop.done").read_text())
    assert done["steps"] == 2 and done["wall_s"] > 0 and _finite(done["final_loss"])


def test_euler_floor(world, tmp_path):
    out = tmp_path / "floor.json"
    r = _run("euler_floor.py", "--teacher", str(world.teacher_fp32), "--dataset-root", str(world.dataset_root),
             "--steps", "1,2,10,20", "--exact", "40", "--stride", "8", "--noises", "2", "--out", str(out))
    data = json.loads(out.read_text())
    rows = {row["teacher_steps"]: row for row in data["rows"]}
    assert list(rows) == [1, 2, 10, 20] and data["settings"]["noises"] == 2 and data["settings"]["exact"] == 40
    # Shared frames and noise: teacher@10 against itself is exactly 0, the ratio's denominator is teacher@1's.
    assert rows[10]["mse_vs_teacher10"] == 0 and rows[10]["floor_ratio_vs_teacher10"] == 0
    assert rows[1]["floor_ratio_vs_teacher10"] == 1 and rows[1]["mse_vs_teacher10"] > 0
    for n in (2, 20):
        assert rows[n]["floor_ratio_vs_teacher10"] == pytest.approx(rows[n]["mse_vs_teacher10"] / rows[1]["mse_vs_teacher10"])
        assert 0 < rows[n]["mse_vs_teacher40"] < rows[1]["mse_vs_teacher40"]
    _table_last(r.stdout, 4)
    assert "--steps must include 1 and 10" in _one_line_error(
        "euler_floor.py", "--teacher", str(world.teacher_fp32), "--dataset-root", str(world.dataset_root), "--steps", "2,20")


def _one_line_error(script: str, *args: str) -> str:
    r = _run(script, *args, check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(f"{script}: error:")]
    assert len(lines) == 1, r.stderr[-2000:]
    return lines[0]


def test_bad_options(tmp_path):
    assert "--cameras" in _one_line_error("latency.py", "--smoke", "--cameras", "0")
    assert "--layouts" in _one_line_error("latency.py", "--smoke", "--layouts", "fp16")
    assert "--device" in _one_line_error("latency.py", "--smoke", "--device", "tpu")
    assert "--dataset-root" in _one_line_error("fidelity.py", "--smoke", "--teacher", str(tmp_path))
    assert "--modes" in _one_line_error("fidelity.py", "--smoke", "--modes", "grid,sometimes")
    assert "--teacher-steps must be" in _one_line_error("closed_loop.py", "--smoke", "--teacher-steps", "0")
    assert "not a pretrained_model" in _one_line_error("fidelity.py", "--teacher", str(tmp_path),
                                                      "--dataset-root", str(tmp_path))


def test_closed_loop_benchmarks_smoke(closed_loop_world, closed_loop_student, tmp_path):
    """benchmarks/closed_loop.py (success against training steps) and first_chunk.py (where the
    failures come from) on the closed-loop world's teacher, at plumbing size."""
    out = tmp_path / "closed_loop.json"
    r = _run("closed_loop.py", "--teacher", str(closed_loop_world.teacher), "--dataset-root", str(closed_loop_world.dataset_root),
             "--steps", "0,2", "--seeds", "7", "--episodes", "2", "--student-steps", "2", "--lr", "2e-3",
             "--lr-scale", "1.5", "--teacher-steps", "4", "--workdir", str(tmp_path / "work"), "--out", str(out))
    data = json.loads(out.read_text())
    assert data["settings"]["student_steps"] == 2 and data["settings"]["episodes"] == 2 and data["settings"]["lr"] == 2e-3
    assert data["settings"]["lr_scale"] == 1.5 and data["settings"]["teacher_steps"] == 4
    assert list(data["teacher"]) == ["teacher@10", "teacher@2"] and list(data["students"]["7"]) == ["0", "2"]
    assert data["students"]["7"]["0"] == data["teacher"]["teacher@2"]  # step 0 is the untrained copy
    trained = tmp_path / "work" / "student-seed7" / "checkpoints" / "000002" / "pretrained_model"
    assert json.loads((trained / "config.json").read_text())["num_steps"] == 2
    optimizer = json.loads((trained / "reflow_lineage.json").read_text())["training"]["optimizer"]
    assert optimizer["lr"] == 1.5 * 2e-3 and optimizer["lr_from"] == "1.5 x --lr (0.002)"  # the options reach the training
    assert json.loads((trained / "reflow_lineage.json").read_text())["reflow"]["teacher_steps"] == 4
    assert _table_last(r.stdout, 2)[0].startswith("| training steps | student@2, seed 7 | mean | teacher@10 | teacher@2 |")
    assert out.with_suffix(".png").stat().st_size > 0
    # The workdir's run is reused only with its own settings.
    assert "other settings" in _one_line_error(
        "closed_loop.py", "--teacher", str(closed_loop_world.teacher), "--dataset-root", str(closed_loop_world.dataset_root),
        "--steps", "0,2", "--seeds", "7", "--episodes", "2", "--student-steps", "2", "--lr", "2e-3",
        "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "again.json"))
    assert not (tmp_path / "again.json").exists()

    out = tmp_path / "first_chunk.json"
    r = _run("first_chunk.py", str(closed_loop_world.teacher), f"{closed_loop_world.teacher}@10", f"{closed_loop_student}@1",
             "--noises", "8", "--episodes", "2", "--out", str(out))
    rows = json.loads(out.read_text())["policies"]
    again = f"{closed_loop_world.teacher.parents[2].name}/last@10"  # the teacher once more, as RUN/CHECKPOINT@STEPS
    assert list(rows) == ["teacher@10", again, "closed-loop/last@1"]
    assert rows["teacher@10"]["mse_vs_teacher10"] == 0 == rows[again]["mse_vs_teacher10"]  # the same policy and noise
    assert rows[again]["same_side_as_teacher10"] == 1 and rows[again]["undecided"] == rows["teacher@10"]["undecided"]
    assert rows[again]["right_share"] == rows["teacher@10"]["right_share"] and 0 <= rows["closed-loop/last@1"]["right_share"] <= 1
    assert rows["closed-loop/last@1"]["mse_vs_teacher10"] > 0 and rows["closed-loop/last@1"]["closed_loop"]["episodes"] == 2
    assert "FOLDER@STEPS" in _one_line_error("first_chunk.py", str(closed_loop_world.teacher), "x@0")


def test_fidelity_curve_smoke(closed_loop_world, tmp_path):
    """benchmarks/fidelity_curve.py at plumbing size on the closed-loop world: both loops snapshot at
    the same steps (ours goes on past the reference's with --ours-steps), the wall times are what each
    loop recorded, step 0 is the teacher at 1 step."""
    out = tmp_path / "curve.json"
    r = _run("fidelity_curve.py", "--smoke", "--worlds", "closed-loop", "--teacher", str(closed_loop_world.teacher),
             "--dataset-root", str(closed_loop_world.dataset_root), "--seeds", "7", "--workdir", str(tmp_path / "work"),
             "--out", str(out), "--ours-steps", "6")
    data = json.loads(out.read_text())
    assert data["benchmark"] == "fidelity_curve" and out.with_suffix(".png").stat().st_size > 0
    assert data["settings"]["lr_scale"] == 3.0 and "the teacher's lr" in data["settings"]["reference"]
    res = data["worlds"]["closed-loop"]
    teacher = res["teacher"]
    assert teacher["closed_loop@10"]["episodes"] == 2 and teacher["mse_teacher1_vs_teacher10"] > 0
    runs = tmp_path / "work" / "runs" / "closed-loop"
    for loop in ("hub-reflow", "reference"):
        curve = res["runs"][loop]["7"]
        assert [p["step"] for p in curve] == ([0, 2, 4, 6] if loop == "hub-reflow" else [0, 2, 4])  # --ours-steps 6
        assert curve[0]["mse_ratio"] == 1.0 and curve[0]["closed_loop"] == teacher["closed_loop@1"]  # the untrained copy
        assert 0 < curve[1]["wall_s"] < curve[2]["wall_s"] and all(_finite(p["mse_ratio"]) for p in curve)
    ours = runs / "hub-reflow-steps6-every2-b8-lrx3-m2-spread-seed7" / "checkpoints"  # the default rate scale, noises, frames
    for p in res["runs"]["hub-reflow"]["7"][1:]:
        phases = json.loads((ours / f"{p['step']:06d}" / "pretrained_model" / "reflow_lineage.json").read_text())["training"]["time_s"]
        assert "checkpoint" in phases or p["step"] == 2  # the snapshot writes before it, left out like the reference's
        assert p["wall_s"] == pytest.approx(sum(v for k, v in phases.items() if k not in ("final_measurement", "checkpoint")))
    ref = runs / "reference-steps4-every2-b8-seed7"
    for folder, step in ((ref / "step000002", 2), (ref, 4)):
        assert json.loads((folder / "config.json").read_text())["num_steps"] == 1
        assert json.loads((folder / "reference_loop.done").read_text())["steps"] == step
    assert res["mean"]["reference"][-1]["wall_s"] == res["runs"]["reference"]["7"][-1]["wall_s"]  # one seed: its own curve
    assert "targets:" in r.stdout and "\n| 6 | " in r.stdout  # ours' last row, the reference's cells empty


def test_rtc_smoke(closed_loop_world, tmp_path):
    """benchmarks/rtc.py: sync and RTC rows of the teacher and a 2-step student, paired, at plumbing size."""
    out = tmp_path / "rtc.json"
    r = _run("rtc.py", "--smoke", "--teacher", str(closed_loop_world.teacher), "--dataset-root", str(closed_loop_world.dataset_root),
             "--student-steps", "2", "--queue-threshold", "3", "--workdir", str(tmp_path / "work"), "--out", str(out))
    data = json.loads(out.read_text())
    assert data["settings"]["lerobot_rtc_flags"] == ["--inference.rtc.execution_horizon=8"]  # the world's chunks hold 8
    assert data["settings"]["queue_flags"] == ["--inference.queue_threshold=3"]
    assert list(data["rows"]) == ["sync", "delay 3"]
    assert list(data["rows"]["sync"]) == ["teacher@10", "student@2"]
    assert list(data["rows"]["delay 3"]) == ["teacher@10 rtc w10 h8", "student@2 rtc w10 h8", "student@2 rtc w2 h8"]
    assert data["rows"]["delay 3"]["student@2 rtc w2 h8"]["inference"]["queue_threshold"] == 3
    for group in data["rows"].values():
        for label, row in group.items():
            assert row["episodes"] == 3 and len(row["outcomes"]) == 3
            assert ("vs_teacher" in row) == (not label.startswith("teacher"))
    assert data["rows"]["delay 3"]["student@2 rtc w2 h8"]["prefix_error"]["mean"] < 1e-5
    assert _table_last(r.stdout, 5)[0] == "| policy | sync | delay 3 |"
