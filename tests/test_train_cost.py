"""``benchmarks/train_cost.py --smoke --profile`` runs its variants in fresh processes and writes
well-formed JSON (exact row names, finite measurements, operator counts per phase, a profile
summary) with the markdown tables printed last: ``check_smoke_run``, applied to the train_cost run
that tests/test_gpu_script.py's gpu.sh --smoke makes (one run of it in the suite, not two); bad
options are refused in one line."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_cost.py"
NUMBERS = ["median_step_ms", "median_cpu_ms", "min_step_ms", "max_step_ms", "peak_rss_mb", "peak_rss_above_imports_mb",
           "rss_after_imports_mb", "rss_before_steps_mb", "trained_model_weights_mb", "teacher_weights_mb", "final_loss"]
PHASES = ["preprocess", "forward", "backward", "optimizer"]


def check_smoke_run(data: dict, stdout: str, rows: list[str]) -> None:
    """What ``train_cost.py --smoke --profile --profile-steps 1`` must write (its JSON) and print
    (``stdout``: its own, or gpu.sh's, which starts with it) for the variants ``rows``, on the CPU.
    Called by tests/test_gpu_script.py, whose run of gpu.sh --smoke is such a run."""
    assert [row["name"] for row in data["rows"]] == rows  # no eager-online row on the CPU
    for row in data["rows"]:
        for key in NUMBERS:
            assert isinstance(row[key], float) and math.isfinite(row[key]), (row["name"], key, row[key])
        assert row["median_step_ms"] > 0 and row["peak_rss_mb"] > 0 and row["repeats"] == 3 and row["batch_size"] == 4
        assert row["cuda_peak_allocated_mb"] is None and row["cuda_syncs_per_step"] is None
        assert row["cuda_mallocs_per_step"] is None and row["cuda_alloc_retries_per_step"] is None
        # Operator counts: per phase, summing to the total; by name, summing to it too.
        assert list(row["aten_ops_by_phase"]) == PHASES
        assert sum(row["aten_ops_by_phase"].values()) == row["aten_ops_per_step"] == sum(row["aten_ops_by_name"].values())
        assert row["aten_ops_by_phase"]["backward"] > 0 and row["aten_ops_by_phase"]["optimizer"] > 0
        assert row["item_calls_per_step"] == row["aten_ops_by_name"].get("aten::_local_scalar_dense", 0)
        prof = row["profile"]
        assert prof["steps"] == 1 and list(prof["phase_ms"]) == PHASES and all(v > 0 for v in prof["phase_ms"].values())
        assert len(prof["top_cpu"]) > 5 and all(e["op"] and e["self_cpu_ms_per_step"] >= 0 for e in prof["top_cpu"])
        assert "kernel_launches_per_step" not in prof  # CUDA only
    by = {row["name"]: row for row in data["rows"]}
    assert by["normal"]["teacher_weights_mb"] == 0.0
    # Same teacher: the reflow variants hold a teacher exactly the size of the trained model.
    assert by["reflow_online"]["teacher_weights_mb"] == by["reflow_online"]["trained_model_weights_mb"] > 0
    # The same backward and optimizer work (the same trainable parameters); the cached forward
    # dispatches no more operators than LeRobot's own; the online forward adds the teacher's
    # prefix and 10 Euler steps, through the fast path's static buffers (no CUDA graph on the CPU).
    n, ca, on = by["normal"], by["reflow_cached"], by["reflow_online"]
    assert ca["aten_ops_by_phase"]["optimizer"] == n["aten_ops_by_phase"]["optimizer"]
    assert ca["aten_ops_per_step"] <= 1.02 * n["aten_ops_per_step"]
    assert on["aten_ops_by_phase"]["forward"] > 3 * ca["aten_ops_by_phase"]["forward"]
    assert on["teacher_sampling"] == "eager (static-shape path, no CUDA graph)"
    # 1 warm-up + 3 timed steps + the counted step, each sampling once (stats taken before the profile)
    assert on["teacher_sampler_stats"] == {"calls": 5, "graph_replays": 0, "captures": 0, "capture_failures": 0}
    assert data["errors"] == [] and data["device"] == "cpu" and data["torch"] and data["hardware"]["cpu_count"] >= 1
    assert "--smoke" in data["command"] and data["batch_size"] == 4 and data["smoke"] is True and data["profile"] is True
    assert set(data["targets"]) == {"memory", "cached_time", "cached_host_cost", "cached_ops", "online_time"}
    # The per-op host cost against the normal step: the normal step's own operators at each row's
    # prices (1 for the normal step itself), over the aten operators both dispatch.
    # (count * ms / count need not give ms back to the last bit: 1 within float rounding)
    assert n["host_cost_vs_normal"]["ratio"] == pytest.approx(1.0, rel=1e-12)
    assert all(v == pytest.approx(1.0, rel=1e-12) for v in n["host_cost_vs_normal"]["by_op"].values())
    for row in (ca, on):
        h = row["host_cost_vs_normal"]
        assert h["ops"] > 50 and h["ratio"] > 0 and "aten::mm" in row["profile"]["host_ops"] and len(h["by_op"]) == 6
    assert "per-op host cost" in data["targets"]["cached_host_cost"]["target"]
    assert all(isinstance(t["met"], bool) for t in data["targets"].values())
    assert data["targets"]["cached_ops"]["met"] is True
    # Printed: a profile section per row, one line per target, then the tables (operator counts,
    # then time and memory), each with one line per row.
    lines = stdout.splitlines()
    assert sum(ln.startswith("#### ") for ln in lines) == len(rows)
    ops = next(i for i, ln in enumerate(lines) if ln.startswith("| step | batch | aten ops / step"))
    assert [ln.split("|")[1].strip() for ln in lines[ops + 2:ops + 2 + len(rows)]] == rows
    assert lines[ops + 2 + len(rows)] == ""
    table = lines[ops + 3 + len(rows):ops + 5 + 2 * len(rows)]
    assert table[0].startswith("| step | batch | median wall ms") and [ln.split("|")[1].strip() for ln in table[2:]] == rows
    targets = [ln for ln in lines[:ops] if ln.startswith("- ")]
    assert len(targets) == 5 and all(": met" in ln or ": NOT met" in ln for ln in targets), targets


def test_train_cost_bad_options():
    for args, flag in ((["--batch-size", "8,x"], "--batch-size"), (["--variants", "reflow_cached"], "--variants"),
                       (["--real-size", "--teacher", "t"], "--real-size"), (["--device", "tpu"], "--device")):
        r = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("train_cost.py: error:")]
        assert len(errors) == 1 and flag in errors[0], r.stderr
