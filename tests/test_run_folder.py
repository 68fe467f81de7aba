"""One run per output folder, and ``--resume`` with the run's own settings: a second train on a
folder in use is refused in one line (the first run's checkpoints intact and finite), a lock file
left by a killed run is taken over, and ``train --output-dir RUN --resume`` alone continues the
recorded run bit-exactly; every run ends with its fidelity verdict line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hub_reflow.training.run_folder import LOCK_NAME

from conftest import run_cli, run_main

STEPS, SAVE = 6, 2


def _args(world, out: Path) -> list[str]:
    return ["train", "--teacher", str(world.teacher_fp32), "--dataset", world.repo_id, "--dataset-root",
            str(world.dataset_root), "--output-dir", str(out), "--steps", str(STEPS), "--save-freq", str(SAVE),
            "--batch-size", "4", "--lr", "1e-3", "--device", "cpu", "--no-progress"]


def _finite(folder: Path) -> bool:
    return all(torch.isfinite(t.float()).all() for t in load_file(str(folder / "model.safetensors")).values())


def test_second_train_on_a_folder_in_use_is_refused_and_resume_alone_continues(world, tmp_path):
    out = tmp_path / "run"
    exe = Path(sys.executable).with_name("hub-reflow")
    first = subprocess.Popen([str(exe), *_args(world, out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / LOCK_NAME
    deadline = time.time() + 300
    while not (lock.is_file() and lock.read_text()) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert lock.is_file(), "the first run holds no lock on its folder"
    second = run_main(*_args(world, out), "--seed", "7")  # in this process: refused while the first still runs
    stdout, stderr = first.communicate(timeout=600)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith("hub-reflow: error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"hub-reflow: error: --output-dir {out}: another hub-reflow train is running on this folder (pid {first.pid} on ")
    assert errors[0].endswith("wait for it to end or pass another --output-dir (nothing was changed)")
    # The first run: untouched by the second, every checkpoint complete and finite, its verdict said.
    assert first.returncode == 0, stderr[-3000:]
    assert "setup: peak learning rate 0.001 (--lr), warm-up over the first 1 of 6 steps" in stderr  # what the optimizer got
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps == ["000002", "000004", "000006", "last"]
    umask = os.umask(0o022)
    os.umask(umask)
    for folder in (out, out / "checkpoints", *(out / "checkpoints" / step for step in steps[:-1])):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask, folder  # as lerobot-train makes them
    for step in steps[:-1]:
        lineage = json.loads((out / "checkpoints" / step / "pretrained_model" / "reflow_lineage.json").read_text())
        assert lineage["reflow"]["seed"] == 1000 and lineage["training"]["step"] == int(step)
        assert _finite(out / "checkpoints" / step / "pretrained_model")
    verdicts = [line for line in stdout.splitlines() if line.startswith("fidelity verdict: ")]
    assert len(verdicts) == 1 and verdicts[0].startswith(("fidelity verdict: PASS, ", "fidelity verdict: FAIL, "))
    if "FAIL" in verdicts[0]:
        assert f"; this run used {STEPS} steps, --time-sampling grid, --noises-per-frame 2, --frame-sampling spread; train " \
            f"again with --steps {2 * STEPS}, --noises-per-frame 4 (--resume --steps {2 * STEPS} extends this run), or measure on " \
            f"more frames: hub-reflow verify {out / 'checkpoints' / 'last' / 'pretrained_model'} --teacher " \
            f"{world.teacher_fp32} --dataset {world.repo_id} --dataset-root {world.dataset_root} --frames 64" in verdicts[0]
    assert not lock.exists()

    # Stopped at step 4 by a kill: its lock file stays, held by no one; `--resume` alone continues it.
    part = tmp_path / "part"
    shutil.copytree(out, part, symlinks=True)
    shutil.rmtree(part / "checkpoints" / "000006")
    (part / "checkpoints" / "last").unlink()
    (part / "checkpoints" / "last").symlink_to("000004")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (part / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "h", "launch": "x", "started": "then"}))
    resumed = run_cli("train", "--output-dir", str(part), "--resume")
    assert f"a lock file left by an earlier run (pid {dead.pid} on h, since then) that is no longer running was taken over" \
        in resumed.stderr
    a = load_file(str(out / "checkpoints" / "last" / "pretrained_model" / "model.safetensors"))
    b = load_file(str(part / "checkpoints" / "last" / "pretrained_model" / "model.safetensors"))
    assert (part / "checkpoints" / "last").resolve().name == "000006"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # An option given and different from the run's is still refused; --steps may grow, never shrink.
    refused = run_main("train", "--output-dir", str(part), "--resume", "--seed", "7")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == ("hub-reflow: error: --resume: --seed differs from the run's: it was "
                                                       "1000, now 7; resume with the run's own settings, or start a new --output-dir")
    shorter = run_main("train", "--output-dir", str(part), "--resume", "--steps", "4")
    assert shorter.returncode == 2 and shorter.stderr.strip().splitlines()[-1] == (
        "hub-reflow: error: --resume: --steps 4 is fewer than the run's 6: a run is extended (a larger --steps), never "
        "shortened; resume with --steps 6 or more, or start a new --output-dir")
    assert (part / "checkpoints" / "last").resolve().name == "000006"

    # A finished run extended with --resume --steps 8, as lerobot-train extends one: its cosine schedule
    # refitted to 8 steps (LeRobot's own scheduler gives the rate from step 6 on), recorded in the lineage.
    extended = run_cli("train", "--output-dir", str(part), "--resume", "--steps", "8")
    last = part / "checkpoints" / "last"
    assert last.resolve().name == "000008"
    lineage = json.loads((last / "pretrained_model" / "reflow_lineage.json").read_text())
    assert lineage["reflow"]["steps"] == 8 and lineage["training"]["step"] == 8
    [ext] = lineage["training"]["extensions"]
    from lerobot.optim.optimizers import AdamWConfig

    from hub_reflow.checkpoint import read_policy_config

    sched = read_policy_config(world.teacher_fp32).get_scheduler_preset()
    sched.peak_lr, sched.decay_lr, sched.num_decay_steps, sched.num_warmup_steps = 1e-3, min(sched.decay_lr, 1e-3), 8, 1
    scheduler = sched.build(AdamWConfig(lr=1e-3).build([torch.nn.Parameter(torch.zeros(1))]), 8)
    for _ in range(6):
        scheduler.step()
    assert (ext["from_step"], ext["steps_before"], ext["steps"]) == (6, 6, 8)
    assert ext["lr_after"] == pytest.approx(scheduler.get_last_lr()[0], rel=1e-12) and ext["lr_before"] < ext["lr_after"]
    assert ext["schedule"].startswith("LeRobot's cosine schedule with warm-up refitted to 8 steps (warm-up 1), as "
                                      "lerobot-train --resume --steps refits it: from step 6 the learning rate follows it")
    assert "extending the run from 6 to 8 steps: LeRobot's cosine schedule" in extended.stderr
    assert json.loads((last / "training_state" / "hub_reflow_run.json").read_text())["steps"] == 8  # a later --resume: 8


def test_resume_on_a_folder_another_run_holds_names_the_lock(tmp_path):
    """The lock is checked first: ``--resume`` on a folder whose lock another process holds says so
    (not "no checkpoint ...; start without --resume", which would then hit the lock)."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from hub_reflow.training.run_folder import run_lock\nwith run_lock(Path(sys.argv[1])):\n"
                               "    print('held', flush=True)\n    time.sleep(600)\n", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in (["--resume"], ["--resume", "--steps", "4"], []):
            r = run_main("train", "--output-dir", str(out), "--teacher", "t/t", "--dataset", "d/d", *extra)
            assert r.returncode == 2 and "Traceback" not in r.stderr
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(
                f"hub-reflow: error: --output-dir {out}: another hub-reflow train is running on this folder (pid {holder.pid} on "), lines
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # the holder's; nothing else was made
