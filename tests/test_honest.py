"""Nothing false gets shared: the card says "reflow student" only for a student hub-reflow trained;
push refuses an untrained copy, a teacher loaded through ReflowPolicy and a checkpoint without
lineage (``--force`` writes a card that says so); verify FAILs the teacher as its own student; push
warns on a recorded FAIL verdict; a canonicalize output is pushable with a card that says what is
known. Against the local Hub server."""

from __future__ import annotations

import json
import shutil

import pytest
from huggingface_hub import constants

from hub_reflow.checkpoint import LINEAGE_NAME
from hub_reflow.errors import UserError
from hub_reflow.hub.push_pull import push_checkpoint
from hub_reflow.testing.hub_server import HubServer

from conftest import run_cli, run_main

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

WRITE = "hf_write_honest_token_77aa"
REFLOW_CLAIM = "A **reflow student** of"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with HubServer(tmp_path_factory.mktemp("hub"), {WRITE: "write"}) as hub:
        yield hub


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def card(server, repo: str) -> str:
    return server.read_file(repo, "README.md").decode()


def env(server, hf_home) -> dict:
    return {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(hf_home),
            "HF_TOKEN": WRITE}


def test_untrained_copy_and_teacher_are_refused_then_forced_with_an_honest_card(server, world, monkeypatch, tmp_path):
    from hub_reflow.policy import ReflowPolicy

    copy = ReflowPolicy.from_teacher(world.teacher_fp32)
    # A plain lerobot-train checkpoint is no reflow student: from_pretrained refuses it (as pull does),
    # and makes up no lineage (teacher = itself).
    with pytest.raises(UserError) as err:
        ReflowPolicy.from_pretrained(world.teacher_fp32)
    assert str(err.value) == (f"checkpoint: {world.teacher_fp32} is a plain SmolVLA checkpoint, not a reflow student (no "
                              "reflow_lineage.json); load it with SmolVLAPolicy.from_pretrained, or train a student from it "
                              "with hub-reflow train --teacher (ReflowPolicy.from_teacher in Python)")
    # The teacher saved through from_teacher (an untrained copy with its lineage) loads, and is refused by push.
    saved = tmp_path / "copy"
    copy.save_pretrained(saved)
    teacher = ReflowPolicy.from_pretrained(saved)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for policy, repo in ((copy, "user/untrained-copy"), (teacher, "user/teacher-as-student")):
        with pytest.raises(UserError) as err:
            policy.push_to_hub(repo, token=WRITE, endpoint=server.url)
        assert str(err.value) == ("push: not a reflow student: it has no hub-reflow training record (an untrained copy of "
                                  "its teacher, or the teacher itself); train it with hub-reflow train, or pass --force to "
                                  "push it with a card that says untrained copy")
        assert server.commit_count(repo) == 0
    copy.push_to_hub("user/untrained-copy", token=WRITE, endpoint=server.url, force=True)
    text = card(server, "user/untrained-copy")
    assert "**Not a reflow student**" in text and REFLOW_CLAIM not in text


def test_verify_fails_the_teacher_as_its_own_student(world):
    r = run_main("verify", str(world.teacher_fp32), "--teacher", str(world.teacher_fp32))
    assert r.returncode == 1
    assert "FAIL  weights.expert" in r.stdout
    assert "the teacher itself or an untrained copy of it, not a reflow student" in r.stdout
    assert r.stdout.rstrip().endswith("verdict: FAIL (weights.expert)")


def test_no_lineage_is_refused_and_forced_says_lineage_unknown(server, student_fp32, tmp_path, online):
    bare = shutil.copytree(student_fp32, tmp_path / "bare")
    (bare / LINEAGE_NAME).unlink()
    with pytest.raises(UserError, match="lineage check"):
        push_checkpoint(bare, "user/bare", token=WRITE, endpoint=server.url)
    warned = []
    push_checkpoint(bare, "user/bare", token=WRITE, endpoint=server.url, force=True, warn=warned.append)
    text = card(server, "user/bare")
    assert "whose **lineage is unknown**" in text and REFLOW_CLAIM not in text
    assert "| teacher | unknown |" in text
    r = run_main("card", str(bare), "--repo-id", "user/bare")  # the card push --force wrote, as the README says
    assert r.returncode == 0 and r.stderr == "" and r.stdout.strip() == text.strip()


def test_push_force_of_a_plain_lerobot_train_checkpoint_says_what_it_means(server, world, online, tmp_path):
    """A plain lerobot-train checkpoint fails only the lineage check: the warning says what that means for
    whoever loads it (its card says its lineage is unknown), not that plain LeRobot may not load it."""
    warned = []
    push_checkpoint(world.teacher_fp32, "user/plain", token=WRITE, endpoint=server.url, force=True, warn=warned.append)
    assert warned == ["push --force: pushing a checkpoint that fails the lineage check: reflow_lineage.json is missing "
                      "(the model card is drawn from it); its card says its lineage is unknown"]
    assert "whose **lineage is unknown**" in card(server, "user/plain")
    nan = shutil.copytree(world.teacher_fp32, tmp_path / "nan-teacher")
    from test_errors import _with_nan_expert_weight

    warned.clear()
    push_checkpoint(_with_nan_expert_weight(nan), "user/plain-nan", token=WRITE, endpoint=server.url, force=True,
                    warn=warned.append)
    assert len(warned) == 1 and warned[0].startswith("push --force: pushing a checkpoint that fails the weights check")
    assert warned[0].endswith("; its weights may not load or act as trained; its card says its lineage is unknown")


def test_push_warns_loudly_on_a_recorded_fail_verdict(server, student_fp32, tmp_path, tmp_path_factory):
    failing = shutil.copytree(student_fp32, tmp_path / "failing")
    lineage = json.loads((failing / LINEAGE_NAME).read_text())
    lineage["evaluation"]["student_rmse"] = 10 * lineage["evaluation"]["teacher_spread_rmse"] + 1.0
    (failing / LINEAGE_NAME).write_text(json.dumps(lineage))
    r = run_cli("push", str(failing), "--repo-id", "user/failing", env=env(server, tmp_path_factory.mktemp("hf")))
    assert "WARNING hub_reflow.hub: push: this student's recorded fidelity verdict is FAIL (" in r.stderr
    assert "Fidelity verdict (the rule of `hub-reflow verify`, docs/fidelity.md): **FAIL**" in card(server, "user/failing")
    assert REFLOW_CLAIM in card(server, "user/failing")
    # The tiny teacher has no card, so no license: none is asserted for the student either.
    front = card(server, "user/failing").split("---")[1]
    assert "license:" not in front and "library_name: lerobot" in front
    # The card shows how to act with the processors.
    assert "action = postprocessor(policy.select_action(preprocessor(observation)))" in card(server, "user/failing")


def test_verify_json_errors_are_json(tmp_path):
    r = run_cli("verify", str(tmp_path / "missing"), "--json", check=False)
    assert r.returncode == 2
    assert json.loads(r.stdout) == {"error": f"checkpoint: {tmp_path / 'missing'} does not exist as a folder and is not a "
                                             "Hub repo id (namespace/name); check the path", "exit_code": 2}


def test_canonicalize_output_is_pushable_with_an_honest_card(server, world, student_fp32, tmp_path, tmp_path_factory):
    src = shutil.copytree(student_fp32, tmp_path / "src")
    (src / LINEAGE_NAME).unlink()  # a student made elsewhere: no record of its training
    dst = tmp_path / "dst"
    r = run_main("canonicalize", str(src), str(dst), "--teacher", str(world.teacher_fp32), "--no-speed")
    assert r.returncode == 0 and r.stdout.rstrip().splitlines()[-1].startswith("verdict: PASS (structure only; fidelity and speed not measured: pass --dataset)")
    lineage = json.loads((dst / LINEAGE_NAME).read_text())
    assert lineage["training"] == {"record": "unknown", "written_by": "hub-reflow canonicalize"}
    assert lineage["teacher"]["weights_sha256"] == json.loads((student_fp32 / LINEAGE_NAME).read_text())["teacher"]["weights_sha256"]
    printed = run_main("card", str(dst)).stdout
    assert "**Its training record is\nunknown**" in printed and REFLOW_CLAIM not in printed
    run_cli("push", str(dst), "--repo-id", "user/canonicalized", env=env(server, tmp_path_factory.mktemp("hf")))
    assert server.commit_count("user/canonicalized") == 1
    assert "**Its training record is\nunknown**" in card(server, "user/canonicalized")


def test_verify_without_a_dataset_says_what_it_did_not_measure(student_fp32, tmp_path):
    """A verify that measured no fidelity does not end in a bare PASS: it names what it measured and
    what not (and how to), and shows the verdict the student's own training run recorded."""
    from hub_reflow.hub.card import recorded_verdict

    failing = shutil.copytree(student_fp32, tmp_path / "failing")
    lineage = json.loads((failing / LINEAGE_NAME).read_text())
    lineage["evaluation"]["student_rmse"] = 10 * lineage["evaluation"]["teacher_spread_rmse"] + 1.0
    (failing / LINEAGE_NAME).write_text(json.dumps(lineage))
    reason = recorded_verdict(lineage["evaluation"]).reason
    r = run_main("verify", str(failing))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.rstrip().splitlines()
    assert lines[-1] == ("verdict: PASS (structure only; fidelity and speed not measured: pass --dataset); the training "
                         f"run's own measurement: fidelity FAIL ({reason})")
    assert any(line.startswith("INFO  fidelity.recorded") and "recorded by the training run, not measured here: FAIL" in line
               for line in lines)
    report = json.loads(run_main("verify", str(failing), "--json").stdout)
    assert report["passed"] is True and report["measured"] == ["structure"] and report["verdict"] == lines[-1][len("verdict: "):]
