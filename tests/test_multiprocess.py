"""``hub-reflow train`` with two processes (gloo, CPU), started the way accelerate's own multi-process
launcher starts them (``torch.distributed.run``, i.e. ``torchrun``): one canonical checkpoint,
written once by the main process, with the learning-rate schedule of a single-process run."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import HOLDOUT
from test_train import assert_canonical, assert_plain_lerobot_loads

STEPS = 4


def test_two_processes_write_one_canonical_checkpoint(world, tmp_path):
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "hub_reflow.cli", "train",
           "--teacher", str(world.teacher_fp32), "--dataset", world.repo_id, "--dataset-root", str(world.dataset_root),
           "--output-dir", str(out), "--steps", str(STEPS), "--batch-size", "4", "--lr", "1e-3",
           "--holdout-episodes", str(HOLDOUT), "--device", "cpu", "--log-freq", "1", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    log = r.stdout + r.stderr

    # Written once, by the main process: one step folder and the `last` link, no temporary folder.
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"{STEPS:06d}", "last"]
    assert (checkpoints / "last").is_symlink() and (checkpoints / "last").resolve().name == f"{STEPS:06d}"
    assert log.count(f"checkpoint {STEPS:06d} written") == 1
    state = json.loads((checkpoints / "last" / "training_state" / "training_step.json").read_text())
    assert state == {"step": STEPS, "num_processes": 2, "batch_size": 4}

    student = checkpoints / "last" / "pretrained_model"
    lineage = json.loads((student / "reflow_lineage.json").read_text())
    assert lineage["training"]["num_processes"] == 2 and lineage["training"]["step"] == STEPS
    assert [s for s, _ in lineage["training"]["loss_curve"]] == list(range(1, STEPS + 1))

    # One optimizer step is one scheduler step whatever the process count (accelerate would
    # otherwise step it once per process: the rate would reach its floor halfway).
    # Each step line also shows the rate and time left (a log file has no progress bar).
    lrs = [float(x) for x in re.findall(r"^step \d+/\d+ loss \S+ lr (\S+) \(\d+\.\d\d steps/s, ETA \d+:\d\d:\d\d\)$", log,
                                        flags=re.M)]
    assert len(lrs) == STEPS and all(a > b for a, b in zip(lrs, lrs[1:], strict=False)), lrs

    assert_canonical(student, world.teacher_fp32)
    assert_plain_lerobot_loads(student, world)
