"""``hub-reflow train --update bf16-sr``: the bf16 student trains without fp32 master copies
(AdamW with stochastic rounding, ``training/optimizer.py``), the choice is recorded in the lineage, and a run
resumed from LeRobot's saved optimizer state ends bit-identical to the uninterrupted one."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file

from conftest import train_student


def test_bf16_stochastic_rounding_update_trains_records_and_resumes_bit_exact(world, tmp_path):
    args = ("--batch-size", "4", "--save-freq", "2", "--holdout-episodes", "0", "--update", "bf16-sr")
    full = train_student(world, world.teacher, tmp_path / "full", 4, *args)
    state = tmp_path / "full" / "checkpoints" / "000002" / "training_state"
    assert not (state / "fp32_master_weights.safetensors").exists()  # no copies
    lineage = json.loads((full / "reflow_lineage.json").read_text())
    assert lineage["reflow"]["update"] == "bf16-sr"
    assert lineage["training"]["optimizer"]["update"] == "bf16-sr"
    assert lineage["training"]["optimizer"]["fp32_master_weights"] is False
    trained, teacher = load_file(full / "model.safetensors"), load_file(world.teacher / "model.safetensors")
    expert = [k for k in trained if ".lm_expert." in k and trained[k].dtype == torch.bfloat16]
    assert expert and any(not torch.equal(trained[k], teacher[k]) for k in expert)  # the bf16 expert moved
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part, symlinks=True)
    shutil.rmtree(part / "checkpoints" / "000004")
    (part / "checkpoints" / "last").unlink()
    (part / "checkpoints" / "last").symlink_to("000002")
    resumed = train_student(world, world.teacher, part, 4, *args, "--resume")
    b = load_file(resumed / "model.safetensors")
    assert trained.keys() == b.keys() and all(torch.equal(trained[k], b[k]) for k in trained)
