"""``benchmarks/train_cost.py --smoke`` runs its three variants in fresh processes and writes
well-formed JSON (exact row names, finite measurements) with the markdown table printed last."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_cost.py"
ROWS = ["normal", "reflow_online", "reflow_cached"]
NUMBERS = ["median_step_ms", "median_cpu_ms", "min_step_ms", "max_step_ms", "peak_rss_mb", "peak_rss_above_imports_mb",
           "rss_after_imports_mb", "rss_before_steps_mb", "trained_model_weights_mb", "teacher_weights_mb", "final_loss"]


def test_train_cost_smoke(world, tmp_path):
    out = tmp_path / "train_cost.json"
    r = subprocess.run([sys.executable, str(BENCH), "--smoke", "--teacher", str(world.teacher_fp32), "--dataset",
                        world.repo_id, "--dataset-root", str(world.dataset_root), "--device", "cpu", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [row["name"] for row in data["rows"]] == ROWS
    for row in data["rows"]:
        for key in NUMBERS:
            assert isinstance(row[key], float) and math.isfinite(row[key]), (row["name"], key, row[key])
        assert row["median_step_ms"] > 0 and row["peak_rss_mb"] > 0 and row["repeats"] == 3
        assert row["cuda_peak_allocated_mb"] is None
    by = {row["name"]: row for row in data["rows"]}
    assert by["normal"]["teacher_weights_mb"] == 0.0
    # Same teacher: the reflow variants hold a teacher exactly the size of the trained model.
    assert by["reflow_online"]["teacher_weights_mb"] == by["reflow_online"]["trained_model_weights_mb"] > 0
    assert data["device"] == "cpu" and data["torch"] and data["hardware"]["cpu_count"] >= 1
    assert "--smoke" in data["command"] and data["batch_size"] == 4 and data["smoke"] is True
    assert set(data["targets"]) == {"memory", "cached_time"}
    assert all(isinstance(t["met"], bool) for t in data["targets"].values())
    # The markdown table is printed last, after one line per target.
    lines = r.stdout.strip().splitlines()
    table = lines[-(2 + len(ROWS)):]
    assert all(ln.startswith("|") for ln in table) and [ln.split("|")[1].strip() for ln in table[2:]] == ROWS
    assert sum(ln.startswith("- ") for ln in lines) == 2
