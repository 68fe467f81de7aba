"""``benchmarks/gpu.sh --smoke``: the one-shot GPU script runs end to end on the CPU at tiny sizes
(train_cost with profile, checked as tests/test_train_cost.py checks a train_cost run, per-op host
cost, capture effect and the update options' rows; teacher sampling; latency eager + fast_inference
+ LeRobot's compiled student@1 within the budget), writes its JSON and prints the tables; bad
options are refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_cost import check_smoke_run

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"
TEACHER_SAMPLING_START = "# Teacher sampling @"  # where teacher_sampling.py's output starts, after train_cost.py's


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable})


def test_gpu_script_smoke(world, tmp_path):
    out = tmp_path / "results"
    r = _run("--smoke", "--out", str(out), "--workdir", str(tmp_path / "work"), "--budget", "60",
             "--teacher", str(world.teacher_fp32), "--dataset", world.repo_id, "--dataset-root", str(world.dataset_root))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_info_smoke.txt", "latency_smoke.json", "teacher_sampling_smoke.json",
                                                     "train_cost_smoke.json"]
    tc = json.loads((out / "train_cost_smoke.json").read_text())
    # train_cost.py's own checks (tests/test_train_cost.py), on its output here: it runs first.
    check_smoke_run(tc, r.stdout[:r.stdout.index(TEACHER_SAMPLING_START)],
                    ["normal", "reflow_online", "reflow_cached", "reflow_cached_sr"])
    assert [row["update"] for row in tc["rows"]] == [None, "fp32-masters", "fp32-masters", "bf16-sr"]
    assert all(row["profile"]["steps"] == 1 for row in tc["rows"]) and tc["smoke"] is True and tc["partial"] is False
    # The per-op host cost against the normal step (1 for the normal step itself), and its target.
    assert tc["rows"][0]["host_cost_vs_normal"]["ratio"] == pytest.approx(1.0, rel=1e-12)  # within float rounding
    assert tc["rows"][2]["host_cost_vs_normal"]["ops"] > 50 and "cached_host_cost" in tc["targets"]
    assert tc["targets"]["memory"]["detail"].count("reflow_cached_sr ") == 1
    # --capture-effect: the normal step timed in four states; no graph is captured on the CPU.
    inter = tc["interleaved"]  # both steps in one process, alternating rounds
    assert inter["rounds"] == 2 and inter["host_cost_vs_normal"]["ops"] > 50
    assert "(one process, alternating rounds)" in tc["targets"]["cached_host_cost"]["detail"]
    ce = tc["rows"][0]["capture_effect"]
    assert ce["captured"] is False and all(len(ce[k]) == 2 for k in ("before", "after_warm_up", "after_capture", "after_free"))
    ts = json.loads((out / "teacher_sampling_smoke.json").read_text())
    assert [row["batch_size"] for row in ts["rows"]] == [4, 2]
    assert all(row["bit_identical"] and row["max_abs_diff"] == 0 for row in ts["rows"])  # no CUDA graph on the CPU
    assert ts["sampler_stats"]["captures"] == 0 and ts["mode"] == "eager (static-shape path, no CUDA graph)"
    lat = json.loads((out / "latency_smoke.json").read_text())
    assert [row["name"] for row in lat["rows"]] == [f"lerobot 1cam @{k}" for k in (1, 2, 4, 10)]
    # hub_reflow.fast_inference at 1 and 2 steps: eager on the CPU, bit-identical to LeRobot's chunk.
    assert [(r["steps"], r["mode"], r["max_abs_diff_vs_eager"]) for r in lat["fast_rows"]] == [
        (1, "eager (static-shape path, no CUDA graph)", 0.0), (2, "eager (static-shape path, no CUDA graph)", 0.0)]
    assert all(r["replay_equal_first"] and r["stats"]["captures"] == 0 for r in lat["fast_rows"])
    (row,) = lat["compiled_rows"]
    assert row["name"] == "lerobot 1cam @1 compiled" and row["compile_mode"] == "reduce-overhead"
    assert row["eager_ms"] == lat["rows"][0]["total_ms"]
    # Inductor needs a minute here: within the smoke budget the compile finishes only from a warm cache.
    assert row["status"] in ("ok", "timeout"), row["status"]
    assert (row["steady_ms"] is None) == (row["status"] == "timeout") and row["timeout_s"] <= 60
    # The tables, once more at the end, after the one-line summary of the run.
    text = r.stdout[r.stdout.index("# hub-reflow GPU measurements"):]
    for heading in ("## Training step", "## Teacher sampling: eager vs fast path", "## Chunk latency, batch 1",
                    "hub_reflow.fast_inference (the whole chunk", "LeRobot's compiled path (compile_model, mode reduce-overhead)",
                    "| step | batch | per-op host cost vs normal |"):
        assert heading in text, heading
    assert "| step | batch | aten ops / step |" in text and "| lerobot | 1 | 1 |" in text
    assert text.rstrip().splitlines()[-1].startswith("| lerobot | 1 | 1 |")
    assert "available False" in (out / "gpu_info_smoke.txt").read_text()


def test_gpu_script_bad_options(tmp_path):
    for args, needle in ((["--budget", "soon"], "--budget"), (["--frobnicate"], "unknown option --frobnicate"),
                         (["--out"], "--out")):
        r = _run(*args, timeout=60)
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
        assert r.stderr.startswith("gpu.sh: error:") and needle in r.stderr
