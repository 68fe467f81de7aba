"""A teacher whose ``vlm_model_name`` is a local folder: trained and verified here (a WARN, not a
FAIL), refused by push with a way out, and ``--vlm-repo-id ORG/NAME`` (checked against the folder's
files) on train and canonicalize writes the repo id into the student's config and processors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hub_reflow.checkpoint import renamed_in
from hub_reflow.errors import UserError
from hub_reflow.hub.push_pull import push_checkpoint, structural_problems
from hub_reflow.testing.tiny_backbone import TINY_BACKBONE_ID

from conftest import run_cli_many, run_main

PRE = "policy_preprocessor.json"


@pytest.fixture(scope="module")
def local_teacher(world, tmp_path_factory) -> Path:
    """The fp32 teacher naming its backbone by the folder (config and tokenizer)."""
    teacher = shutil.copytree(world.teacher_fp32, tmp_path_factory.mktemp("local") / "teacher")
    swap = (TINY_BACKBONE_ID, str(world.backbone))
    for name in ("config.json", PRE):
        (teacher / name).write_text(json.dumps(renamed_in(json.loads((teacher / name).read_text()), swap), indent=2))
    return teacher


def _train_args(world, teacher: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--teacher", str(teacher), "--dataset", world.repo_id, "--dataset-root", str(world.dataset_root),
            "--output-dir", str(out), "--steps", "2", "--batch-size", "4", "--lr", "1e-3", "--device", "cpu",
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def trained(world, local_teacher, tmp_path_factory) -> dict:
    """Both tests' runs from the local teacher, in one fresh process (one start of torch and
    LeRobot): without and with ``--vlm-repo-id``; name -> (run folder, its CompletedProcess)."""
    root = tmp_path_factory.mktemp("runs")
    runs = {"local": (), "repo_id": ("--vlm-repo-id", TINY_BACKBONE_ID)}
    results = run_cli_many(*(_train_args(world, local_teacher, root / name, *extra) for name, extra in runs.items()))
    return {name: (root / name, r) for name, r in zip(runs, results)}


def _names(folder: Path) -> tuple[str, str]:
    config = json.loads((folder / "config.json").read_text())
    tokenizer = next(s["config"]["tokenizer_name"] for s in json.loads((folder / PRE).read_text())["steps"]
                     if s["registry_name"] == "tokenizer_processor")
    return config["vlm_model_name"], tokenizer


def test_local_backbone_trains_verifies_with_a_warn_and_is_refused_by_push(world, local_teacher, trained, tmp_path):
    run, r = trained["local"]
    assert r.returncode == 0, r.stderr[-3000:]
    student = run / "checkpoints" / "last" / "pretrained_model"
    assert _names(student) == (str(world.backbone), str(world.backbone))
    v = run_main("verify", str(student), "--teacher", str(local_teacher), "--no-speed")
    assert v.returncode == 0, v.stdout
    warn = [line for line in v.stdout.splitlines() if line.startswith("WARN")]
    assert len(warn) == 1 and warn[0].split()[1] == "config"
    assert f"vlm_model_name is a local path ({world.backbone}): fine on this machine, refused by push" in warn[0]
    assert v.stdout.rstrip().splitlines()[-1].startswith("verdict: PASS (structure only; fidelity and speed not measured: pass --dataset)")
    with pytest.raises(UserError, match=r"config check: vlm_model_name is a local path .*--vlm-repo-id ORG/NAME"):
        push_checkpoint(student, "user/local", token="x", endpoint="http://127.0.0.1:9")
    # canonicalize names the backbone by its repo id (offline: the repo is checked in the cache).
    dst = tmp_path / "canonical"
    c = run_main("canonicalize", str(student), str(dst), "--teacher", str(local_teacher), "--no-speed",
                 "--vlm-repo-id", TINY_BACKBONE_ID)
    assert c.returncode == 0, c.stderr[-3000:]
    assert f"changed: config and processors: vlm_model_name {world.backbone} -> {TINY_BACKBONE_ID} (the same files)" in c.stdout
    assert c.stdout.rstrip().splitlines()[-1].startswith("verdict: PASS (structure only; fidelity and speed not measured: pass --dataset)") and "WARN" not in c.stdout
    assert _names(dst) == (TINY_BACKBONE_ID, TINY_BACKBONE_ID)
    assert structural_problems(dst) == []
    refused = run_main("canonicalize", str(student), str(tmp_path / "refused"), "--teacher", str(local_teacher))
    assert refused.returncode == 2 and "pass --vlm-repo-id ORG/NAME" in refused.stderr
    assert not (tmp_path / "refused").exists()


def test_train_vlm_repo_id_is_checked_and_written(world, local_teacher, trained, tmp_path):
    wrong = run_main(*_train_args(world, local_teacher, tmp_path / "wrong", "--vlm-repo-id", "someone/not-this-backbone"))
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip().splitlines()[-1] == (
        "hub-reflow: error: train --vlm-repo-id: someone/not-this-backbone is not in the Hugging Face cache and "
        "HF_HUB_OFFLINE is set; download it once with the network on, or unset HF_HUB_OFFLINE")
    assert not (tmp_path / "wrong").exists()
    run, r = trained["repo_id"]
    assert r.returncode == 0, r.stderr[-3000:]
    student = run / "checkpoints" / "last" / "pretrained_model"
    assert _names(student) == (TINY_BACKBONE_ID, TINY_BACKBONE_ID)
    assert structural_problems(student) == []
    assert structural_problems(student, local_teacher) == []
    v = run_main("verify", str(student), "--teacher", str(local_teacher), "--no-speed")
    assert v.returncode == 0 and "WARN" not in v.stdout and v.stdout.rstrip().splitlines()[-1].startswith("verdict: PASS (structure only; fidelity and speed not measured: pass --dataset)")
