"""ReflowPolicy as users know Hub models and LeRobot policies: ``from_pretrained`` with the mixin's
arguments (a private repo with ``token=``, ``cache_dir``, ``force_download``), offline loading from
a warm cache (``HF_HUB_OFFLINE=1``) for the API and every command that reads the Hub,
``save_pretrained(push_to_hub=True)``, and inference on the ReflowPolicy itself; all against the
local Hub server and the real huggingface_hub / LeRobot code, each in a fresh process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants

from hub_reflow.hub.push_pull import push_checkpoint
from hub_reflow.testing.hub_server import HubServer

from conftest import run_cli_many

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

WRITE = "hf_write_python_api_token_52c1"
READ = "hf_read_python_api_token_0d9e"
PRIVATE = "user/private-student"
PUBLIC = "user/public-student"
TEACHER = "user/api-teacher"
EVALUATED = "user/evaluated-student"  # a student with a recorded closed-loop evaluation (reflow_eval.json)


def _evaluated(student: Path, folder: Path) -> Path:
    """A copy of ``student`` with a closed-loop evaluation recorded beside its lineage (planar states:
    the card gets both closed-loop pictures)."""
    import shutil

    from hub_reflow.closed_loop.results import EVAL_NAME, ClosedLoopResults
    from hub_reflow.closed_loop.stats import summarize

    def row(role, steps, outcomes):
        return {"role": role, "checkpoint": "a local checkpoint folder", "weights_sha256": "0" * 64, "num_steps": steps,
                **summarize(outcomes, [float(o) for o in outcomes], [5] * len(outcomes), [2.0]),
                "outcomes": outcomes, "rewards": [float(o) for o in outcomes], "lengths": [5] * len(outcomes)}

    shutil.copytree(student, folder)
    ClosedLoopResults(env={"id": "hub_reflow/GoAround-v0", "kind": "env-id", "options": [], "max_steps": 30,
                           "scene": {"circles": [[0.0, -0.4, 0.3]], "goal_y": 0.3}},
                      settings={"episodes": 2, "seed": 0, "command": "hub-reflow eval STUDENT_FOLDER --env-id tiny-go-around"},
                      seeds=[0, 1], policies={"student@1": row("student", 1, [True, False]), "teacher@10": row("teacher", 10, [True, True])},
                      hardware={"device": "cpu"}, trajectories={"student@1": [[0.0, -1.0], [0.1, -0.9]],
                                                                "teacher@10": [[0.0, -1.0], [-0.1, -0.9]]}).write(folder / EVAL_NAME)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, world, student_fp32):
    from hub_reflow.testing.tiny_world import publish_backbone

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        with HubServer(tmp_path_factory.mktemp("hub"), {WRITE: "write", READ: "read"}) as hub:
            publish_backbone(world.backbone, endpoint=hub.url, token=WRITE)
            push_checkpoint(student_fp32, PRIVATE, private=True, token=WRITE, endpoint=hub.url)
            push_checkpoint(student_fp32, PUBLIC, token=WRITE, endpoint=hub.url)
            push_checkpoint(_evaluated(student_fp32, tmp_path_factory.mktemp("evaluated") / "student"), EVALUATED,
                            token=WRITE, endpoint=hub.url)
            api = HfApi(endpoint=hub.url, token=WRITE)
            api.create_repo(TEACHER, exist_ok=True)
            api.upload_folder(folder_path=str(world.teacher_fp32), repo_id=TEACHER)
            yield hub


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    return tmp_path_factory.mktemp("hf_home")


def env_for(server, hf_home, offline: bool = False, token: str = "") -> dict:
    return {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "1" if offline else "0", "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(hf_home), "HF_TOKEN": token}


def run_python(script: str, env: dict) -> dict:
    """Run ``script`` in a fresh process (huggingface_hub reads HF_* when imported); its RESULT line."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, **env})
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.split("RESULT ", 1)[1])


OBSERVATION = """
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    frame = LeRobotDataset({repo!r}, root={root!r})[0]
    observation = {{k: v.unsqueeze(0) for k, v in frame.items() if k.startswith("observation.")}}
    observation["task"] = [frame["task"]]
"""


@pytest.fixture(scope="module")
def online(server, hf_home, world, tmp_path_factory):
    """Online, with no HF_TOKEN: the private repo through ``token=``, into ``cache_dir``; the
    public one into the default cache (warming it for the offline tests); act; save and push."""
    cache_dir = tmp_path_factory.mktemp("cache_dir")
    saved = tmp_path_factory.mktemp("saved") / "student"
    saved_evaluated = tmp_path_factory.mktemp("saved") / "evaluated"
    script = OBSERVATION.format(repo=world.repo_id, root=str(world.dataset_root)) + f"""
    import json, logging, os
    logging.disable(logging.WARNING)
    from lerobot.policies.factory import make_pre_post_processors
    from hub_reflow.errors import UserError
    from hub_reflow.policy import ReflowPolicy
    out = {{}}
    try:
        ReflowPolicy.from_pretrained({PRIVATE!r})
    except UserError as e:
        out["no_token"] = str(e)
    p = ReflowPolicy.from_pretrained({PRIVATE!r}, token={READ!r}, cache_dir={str(cache_dir)!r})
    out["private_commit"] = p.base.ref.commit
    out["in_cache_dir"] = str(p.base.path).startswith({str(cache_dir)!r})
    blob = (p.base.path / "model.safetensors").resolve()
    before = blob.stat().st_mtime_ns
    again = ReflowPolicy.from_pretrained({PRIVATE!r}, token={READ!r}, cache_dir={str(cache_dir)!r})
    out["cached_reload_same_blob"] = blob.stat().st_mtime_ns == before
    ReflowPolicy.from_pretrained({PRIVATE!r}, token={READ!r}, cache_dir={str(cache_dir)!r}, force_download=True)
    out["force_download_rewrote"] = blob.stat().st_mtime_ns != before
    try:
        ReflowPolicy.from_pretrained({PUBLIC!r}, map_location="cpu")
    except TypeError as e:
        out["unknown_kwarg"] = str(e)
    try:
        ReflowPolicy.from_pretrained({TEACHER!r})
    except UserError as e:
        out["plain"] = str(e)

    policy = ReflowPolicy.from_pretrained({PUBLIC!r})
    pre, post = make_pre_post_processors(policy.config, pretrained_path={PUBLIC!r})
    batch = pre(observation)
    policy.reset()
    noise = torch.randn(1, policy.config.chunk_size, policy.config.max_action_dim, generator=torch.Generator().manual_seed(0))
    chunk = policy.predict_action_chunk(batch, noise=noise)
    action = post(policy.select_action(batch, noise=noise))
    policy.student.reset()
    direct = post(policy.student.select_action(batch, noise=noise))
    out.update(config_is_student=policy.config is policy.student.config, num_steps=policy.config.num_steps,
               chunk_shape=list(chunk.shape), action_shape=list(action.shape),
               action_equals_student=bool(torch.equal(action, direct)), finite=bool(torch.isfinite(chunk).all()),
               queue_after_reset=(policy.reset(), len(policy.student._queues["action"]))[1])
    url = policy.save_pretrained({str(saved)!r}, push_to_hub=True, repo_id="user/saved-and-pushed", token={WRITE!r})
    out["push_url"] = url
    out["saved_files"] = sorted(os.listdir({str(saved)!r}))
    out["saved_card"] = open(os.path.join({str(saved)!r}, "README.md")).read()
    evaluated = ReflowPolicy.from_pretrained({EVALUATED!r})
    evaluated.save_pretrained({str(saved_evaluated)!r}, push_to_hub=True, repo_id="user/evaluated-copy", token={WRITE!r})
    out["evaluated_files"] = sorted(os.listdir({str(saved_evaluated)!r}))
    out["evaluated_card"] = open(os.path.join({str(saved_evaluated)!r}, "README.md")).read()
    print("RESULT " + json.dumps(out))
    """
    return run_python(script, env_for(server, hf_home)), cache_dir, saved, saved_evaluated


def test_from_pretrained_takes_token_cache_dir_and_force_download(server, online):
    out, cache_dir, _, _ = online
    assert out["no_token"] == (f"checkpoint: Hub repo {PRIVATE} not found (or private: set HF_TOKEN); check the repo id")
    assert out["private_commit"] == server.head(PRIVATE)
    assert out["in_cache_dir"] and (cache_dir / f"models--{PRIVATE.replace('/', '--')}").is_dir()
    assert out["cached_reload_same_blob"] and out["force_download_rewrote"]
    assert out["unknown_kwarg"] == "ReflowPolicy.from_pretrained() got unexpected keyword arguments: map_location"


PLAIN = ("a plain SmolVLA checkpoint, not a reflow student (no reflow_lineage.json)", "load it with "
         "SmolVLAPolicy.from_pretrained, or train a student from it with hub-reflow train --teacher (ReflowPolicy.from_teacher in Python)")


def test_a_plain_checkpoint_is_refused_by_from_pretrained_as_by_pull(online):
    """One rule for a plain SmolVLA checkpoint (no lineage): ReflowPolicy.from_pretrained refuses it as
    pull does (test_offline_commands_read_the_warm_cache), with the same words, and makes up no lineage."""
    out, _, _, _ = online
    assert out["plain"] == f"checkpoint: {TEACHER} is {PLAIN[0]}; {PLAIN[1]}"


def test_reflow_policy_acts_as_a_lerobot_policy(online, world):
    out, _, _, _ = online
    assert out["config_is_student"] and out["num_steps"] == 1
    assert out["chunk_shape"] == [1, 8, 2] and out["action_shape"] == [1, 2] and out["finite"]
    assert out["action_equals_student"]
    assert out["queue_after_reset"] == 0


def test_save_pretrained_with_push_to_hub(server, online, student_fp32):
    out, _, saved, _ = online
    repo = "user/saved-and-pushed"
    assert out["push_url"].endswith(server.head(repo)) and server.commit_count(repo) == 1
    assert server.read_file(repo, "model.safetensors") == (student_fp32 / "model.safetensors").read_bytes()
    assert {"config.json", "model.safetensors", "reflow_lineage.json", "README.md"} <= set(out["saved_files"])
    assert {"README.md", "loss_curve.png"} <= set(server.repo_files(repo))
    # The saved folder's card links only pictures that are in the folder.
    linked = set(re.findall(r"\]\(([\w.]+\.png)\)", out["saved_card"]))
    assert linked == {"loss_curve.png", "teacher_vs_student.png"} and linked <= set(out["saved_files"])


def test_a_saved_or_pushed_copy_carries_everything_the_original_had(server, online):
    """from_pretrained of a repo with a recorded closed-loop evaluation, then save_pretrained(push_to_hub=True):
    the copy (folder and repo) has reflow_eval.json, the card's closed-loop section and every picture it links."""
    out, _, _, saved = online
    original = set(server.repo_files(EVALUATED))
    assert set(server.repo_files("user/evaluated-copy")) == original
    assert {"reflow_eval.json", "closed_loop_success.png", "closed_loop_trajectories.png"} <= original
    assert json.loads(server.read_file("user/evaluated-copy", "reflow_eval.json")) == \
        json.loads(server.read_file(EVALUATED, "reflow_eval.json")) == json.loads((saved / "reflow_eval.json").read_text())
    for card in (out["evaluated_card"], server.read_file("user/evaluated-copy", "README.md").decode()):
        assert "## Closed-loop evaluation" in card and "| student@1 | 1 | 1/2 (50.0%)" in card
        linked = set(re.findall(r"\]\(([\w.]+\.png)\)", card))
        assert linked == {"loss_curve.png", "teacher_vs_student.png", "closed_loop_success.png", "closed_loop_trajectories.png"}
        assert linked <= set(out["evaluated_files"]) and linked <= original


def test_offline_api_loads_from_the_warm_cache(server, hf_home, online):
    script = f"""
    import json, logging
    logging.disable(logging.WARNING)
    from hub_reflow.errors import UserError
    from hub_reflow.policy import ReflowPolicy
    out = {{}}
    p = ReflowPolicy.from_pretrained({PUBLIC!r})
    out["commit"] = p.base.ref.commit
    out["by_branch"] = ReflowPolicy.from_pretrained({PUBLIC!r}, revision="main").base.ref.commit
    try:
        ReflowPolicy.from_pretrained("user/never-downloaded")
    except UserError as e:
        out["missing"] = str(e)
    print("RESULT " + json.dumps(out))
    """
    out = run_python(script, env_for(server, hf_home, offline=True))
    assert out["commit"] == out["by_branch"] == server.head(PUBLIC)
    assert out["missing"] == ("checkpoint: user/never-downloaded is not in the Hugging Face cache and HF_HUB_OFFLINE is "
                              "set; download it once with the network on, or unset HF_HUB_OFFLINE")
    # local_files_only=True is the same rule online.
    local = run_python(f"""
    import json
    from hub_reflow.policy import ReflowPolicy
    print("RESULT " + json.dumps(ReflowPolicy.from_pretrained({PUBLIC!r}, local_files_only=True).base.ref.commit))
    """, env_for(server, hf_home))
    assert local == server.head(PUBLIC)


def test_offline_commands_read_the_warm_cache(server, hf_home, online, world, tmp_path):
    # The commands of each environment in one fresh process (run_cli_many), online then offline.
    # Online once: a plain SmolVLA is refused by pull, with an accurate line, but is now in the cache.
    HfApi(endpoint=server.url, token=WRITE).create_repo("user/some-pairs", repo_type="dataset", exist_ok=True)
    teacher, pairs_repo = run_cli_many(["pull", TEACHER], ["pull", "user/some-pairs"], env=env_for(server, hf_home))
    assert teacher.returncode == 2 and teacher.stderr.strip().splitlines()[-1].startswith(
        f"hub-reflow: error: pull: {PLAIN[0]}; the download is left in the Hugging Face cache at ")
    assert teacher.stderr.strip().endswith(f"; {PLAIN[1]}")
    assert pairs_repo.returncode == 2 and pairs_repo.stderr.strip().splitlines()[-1] == (
        "hub-reflow: error: pull: user/some-pairs is a dataset repo, not a model: teacher pairs (hub-reflow pairs) are "
        "used where they are, with train --pairs user/some-pairs; pull downloads reflow students")
    out = tmp_path / "run"
    pulled, verified, trained, pairs, refused = run_cli_many(
        ["pull", PUBLIC, "--local-dir", str(tmp_path / "pulled")],
        ["verify", PUBLIC, "--no-speed"],
        ["train", "--teacher", TEACHER, "--dataset", world.repo_id, "--dataset-root", str(world.dataset_root),
         "--output-dir", str(out), "--steps", "2", "--batch-size", "4", "--device", "cpu"],
        ["pairs", "--teacher", TEACHER, "--dataset", world.repo_id, "--dataset-root", str(world.dataset_root),
         "--output", str(tmp_path / "pairs"), "--device", "cpu", "--batch-size", "64"],
        ["pull", "user/never-downloaded"],
        env=env_for(server, hf_home, offline=True))
    assert pulled.returncode == 0 and Path(pulled.stdout.strip().splitlines()[-1]) == tmp_path / "pulled"
    assert json.loads((tmp_path / "pulled" / ".cache" / "hub-reflow" / "pull.json").read_text())["commit"] == server.head(PUBLIC)
    assert verified.returncode == 0 and f"checkpoint: {PUBLIC}@{server.head(PUBLIC)}" in verified.stdout
    assert verified.stdout.rstrip().splitlines()[-1].startswith("verdict: PASS (structure only; fidelity and speed not measured: pass --dataset)")
    assert trained.returncode == 0, trained.stderr[-3000:]
    lineage = json.loads((out / "checkpoints" / "last" / "pretrained_model" / "reflow_lineage.json").read_text())
    assert lineage["teacher"]["repo_id"] == TEACHER and lineage["teacher"]["commit"] == server.head(TEACHER)
    assert pairs.returncode == 0, pairs.stderr[-3000:]
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        "hub-reflow: error: pull: user/never-downloaded is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
        "download it once with the network on, or unset HF_HUB_OFFLINE")


def test_a_backbone_missing_from_the_hub_is_one_line(student_fp32, tmp_path, world):
    """The student names its backbone (vlm_model_name) by repo id; on a Hub that does not hold it, loading
    fails in one line naming that repo (not transformers' traceback), for the API and the commands."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        with HubServer(tmp_path / "hub", {WRITE: "write"}) as hub:
            push_checkpoint(student_fp32, "user/no-backbone", token=WRITE, endpoint=hub.url)
            env = env_for(hub, tmp_path / "empty-hf-home", token=WRITE)
            out, verified = run_python("""
            import contextlib, io, json
            from hub_reflow.cli import main
            from hub_reflow.errors import UserError
            from hub_reflow.policy import ReflowPolicy
            try:
                ReflowPolicy.from_pretrained("user/no-backbone")
                loaded = "loaded"
            except UserError as e:
                loaded = str(e)
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(["verify", "user/no-backbone", "--no-speed"])
            print("RESULT " + json.dumps([loaded, [code, err.getvalue()]]))
            """, env)
            url = hub.url
    backbone = json.loads((student_fp32 / "config.json").read_text())["vlm_model_name"]
    assert out == (f"checkpoint: its backbone {backbone} (vlm_model_name in config.json) is not on {url}: publish the "
                   "backbone to that Hub too (the tiny world's: hub_reflow.testing.tiny_backbone.publish_backbone), or "
                   "point HF_ENDPOINT at a Hub that holds it")
    code, stderr = verified
    assert code == 2 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"hub-reflow: error: {out.replace('checkpoint: ', 'verify: ', 1)}"
