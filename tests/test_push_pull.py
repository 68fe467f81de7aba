"""Push / pull of reflow students through the real huggingface_hub client and the local Hub server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError

from hub_reflow.checkpoint import LINEAGE_NAME, processor_files
from hub_reflow.errors import UserError
from hub_reflow.hub.push_pull import push_checkpoint, structural_problems
from hub_reflow.testing.hub_server import HubServer

from conftest import run_cli, run_cli_many, run_main

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

WRITE = "hf_write_push_pull_token_7f3a"
READ = "hf_read_push_pull_token_91bc"
REPO = "user/reflow-student"


@pytest.fixture(scope="module")
def server(tmp_path_factory, world):
    from hub_reflow.testing.tiny_world import publish_backbone

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        with HubServer(tmp_path_factory.mktemp("hub"), {WRITE: "write", READ: "read"}) as hub:
            # The backbone the students name in vlm_model_name lives on this Hub too, as
            # HuggingFaceTB/SmolVLM2-500M-Video-Instruct does on the real one.
            publish_backbone(world.backbone, endpoint=hub.url, token=WRITE)
            yield hub


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    return tmp_path_factory.mktemp("hf_home")


def hub_env(server, hf_home, token: str | None = WRITE) -> dict:
    env = {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(hf_home),
           "HF_TOKEN": token or ""}
    return env


def expected_files(folder: Path) -> set[str]:
    # The card's two images are drawn at push time from the lineage (loss curve, chunks).
    return {"config.json", "model.safetensors", LINEAGE_NAME, "README.md", *processor_files(folder),
            "loss_curve.png", "teacher_vs_student.png"}


@pytest.fixture(scope="module")
def pushed(server, hf_home, student_fp32):
    # The parent of pretrained_model/ (a checkpoints/<step>/ folder with training_state/) is accepted.
    result = run_cli("push", str(student_fp32.parent), "--repo-id", REPO, "--tag", "v1", "--message", "reflow student",
                     env=hub_env(server, hf_home))
    return result


def test_cli_push_makes_one_commit_with_the_canonical_files(server, pushed, student_fp32):
    assert server.commit_count(REPO) == 1
    files = set(server.repo_files(REPO)) - {".gitattributes"}
    assert files == expected_files(student_fp32)
    assert len(processor_files(student_fp32)) == 4
    assert not any(f.startswith("training_state") for f in files)
    sha = server.head(REPO)
    assert pushed.stdout.strip().endswith(sha)
    assert server.head(REPO, "v1") == sha


def test_download_is_byte_identical(server, pushed, student_fp32, tmp_path):
    folder = Path(snapshot_download(REPO, endpoint=server.url, cache_dir=tmp_path, token=WRITE))
    drawn_at_push = {"README.md", "loss_curve.png", "teacher_vs_student.png"}  # not in the checkpoint folder
    assert not any((student_fp32 / name).exists() for name in drawn_at_push)
    for name in expected_files(student_fp32) - drawn_at_push:
        assert (folder / name).read_bytes() == (student_fp32 / name).read_bytes(), name
    for name in drawn_at_push:
        assert (folder / name).read_bytes() == server.read_file(REPO, name), name
    assert structural_problems(folder) == []


def test_lerobot_and_reflow_load_from_the_hub(server, hf_home, pushed):
    sha = server.head(REPO)
    script = textwrap.dedent(f"""
        import json, logging
        logging.disable(logging.WARNING)
        from huggingface_hub import ModelCard
        from lerobot.policies.factory import make_pre_post_processors
        from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
        from hub_reflow.policy import ReflowPolicy
        policy = SmolVLAPolicy.from_pretrained({REPO!r})
        pre, post = make_pre_post_processors(policy.config, pretrained_path={REPO!r})
        data = ModelCard.load({REPO!r}).data.to_dict()
        reflow = ReflowPolicy.from_pretrained({REPO!r}, revision={sha!r})
        print("RESULT " + json.dumps({{"type": policy.config.type, "num_steps": policy.config.num_steps,
            "pre": len(pre.steps), "post": len(post.steps), "card": data,
            "reflow_commit": reflow.base.ref.commit, "reflow_steps": reflow.student.config.num_steps}}))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **hub_env(server, hf_home)})
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    assert out["type"] == "smolvla" and out["num_steps"] == 1 and out["reflow_steps"] == 1
    assert out["pre"] > 0 and out["post"] > 0
    assert out["reflow_commit"] == sha
    card = out["card"]
    assert card["library_name"] == "lerobot" and card["pipeline_tag"] == "robotics"
    assert card["tags"] == ["lerobot", "smolvla", "reflow", "rectified-flow", "robotics"]


def test_second_push_uploads_no_lfs_content(server, pushed, student_fp32):
    before = server.lfs_put_count
    push_checkpoint(student_fp32, REPO, token=WRITE, endpoint=server.url)
    assert server.lfs_put_count == before


@pytest.fixture(scope="module")
def refused_pushes(server, hf_home, student_fp32) -> dict:
    """``push`` with no token and with a read token: both in one fresh process, HF_TOKEN set per command."""
    tokens = [None, READ]
    results = run_cli_many(*(["push", str(student_fp32), "--repo-id", "user/refused"] for _ in tokens),
                           env=hub_env(server, hf_home), each_env=[{"HF_TOKEN": token or ""} for token in tokens])
    return dict(zip(tokens, results))


@pytest.mark.parametrize("token", [None, READ])
def test_push_without_write_token_fails_in_one_line(server, refused_pushes, token):
    repo = "user/refused"
    r = refused_pushes[token]
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("hub-reflow: error:")]
    assert errors == ["hub-reflow: error: the Hub refused the write: set HF_TOKEN to a token with write access"]
    assert READ not in r.stderr and WRITE not in r.stderr
    assert server.commit_count(repo) == 0


def test_failed_commit_leaves_the_repo_untouched(server, pushed, student_fp32, tmp_path):
    changed = shutil.copytree(student_fp32, tmp_path / "changed")
    lineage = json.loads((changed / LINEAGE_NAME).read_text())
    lineage["training"]["note"] = "changed"
    (changed / LINEAGE_NAME).write_text(json.dumps(lineage))
    before, commits = server.repo_files(REPO), server.commit_count(REPO)
    server.fail_next_commit = True
    try:
        with pytest.raises(UserError) as err:
            push_checkpoint(changed, REPO, token=WRITE, endpoint=server.url)
    finally:
        server.fail_next_commit = False
    assert "\n" not in str(err.value) and WRITE not in str(err.value)
    assert server.repo_files(REPO) == before
    assert server.commit_count(REPO) == commits


def test_invalid_repo_id_fails_before_any_request(student_fp32):
    # A dead endpoint: any request would fail with a connection error, not with this message.
    with pytest.raises(UserError, match="is not a valid Hub repo id"):
        push_checkpoint(student_fp32, "user/bad id!", token=WRITE, endpoint="http://127.0.0.1:9")


def test_refuses_a_broken_checkpoint_unless_forced(server, student_fp32, tmp_path):
    broken = shutil.copytree(student_fp32, tmp_path / "broken")
    (broken / LINEAGE_NAME).unlink()
    with pytest.raises(UserError, match="lineage check"):
        push_checkpoint(broken, "user/broken", token=WRITE, endpoint=server.url)
    assert server.commit_count("user/broken") == 0


def test_refuses_a_checkpoint_naming_a_local_backbone(server, student_fp32, tmp_path):
    local = shutil.copytree(student_fp32, tmp_path / "local")
    cfg = json.loads((local / "config.json").read_text())
    cfg["vlm_model_name"] = str(tmp_path / "my-backbone")
    (local / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="vlm_model_name is a local path"):
        push_checkpoint(local, "user/local-backbone", token=WRITE, endpoint=server.url)
    assert server.commit_count("user/local-backbone") == 0


def test_pushed_files_hold_no_token_nor_local_path(server, pushed, student_fp32):
    secrets = [WRITE.encode(), READ.encode(), str(student_fp32).encode(), str(student_fp32.parents[3]).encode(),
               os.path.expanduser("~").encode() + b"/", b"/tmp/"]
    for name in server.repo_files(REPO):
        data = server.read_file(REPO, name)
        for s in secrets:
            assert s not in data, (name, s)


def test_private_repo_is_invisible_without_a_token(server, student_fp32, tmp_path):
    push_checkpoint(student_fp32, "user/secret", private=True, token=WRITE, endpoint=server.url)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=server.url, token=False).model_info("user/secret")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/secret", "config.json", endpoint=server.url, token=False, cache_dir=tmp_path / "c")
    assert HfApi(endpoint=server.url, token=READ).model_info("user/secret").private


def test_cli_pull_returns_a_checked_folder(server, hf_home, pushed, tmp_path):
    r = run_cli("pull", REPO, "--revision", "v1", "--local-dir", str(tmp_path / "pulled"), env=hub_env(server, hf_home))
    folder = Path(r.stdout.strip().splitlines()[-1])
    assert folder == tmp_path / "pulled"
    assert structural_problems(folder) == []
    assert (folder / "README.md").read_bytes() == server.read_file(REPO, "README.md")


def test_reflow_policy_push_to_hub_uses_the_same_path(server, student_fp32, monkeypatch):
    from hub_reflow.policy import ReflowPolicy

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the backbone comes from the session's cache
    policy = ReflowPolicy.from_pretrained(student_fp32)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    url = policy.push_to_hub("user/from-policy", token=WRITE, endpoint=server.url)
    assert url.endswith(server.head("user/from-policy"))
    assert server.commit_count("user/from-policy") == 1
    assert set(server.repo_files("user/from-policy")) - {".gitattributes"} == expected_files(student_fp32)
    assert server.read_file("user/from-policy", "model.safetensors") == (student_fp32 / "model.safetensors").read_bytes()


def test_teacher_from_the_hub_is_recorded_at_its_commit(server, hf_home, world, tmp_path):
    """A student trained from a teacher served by the Hub records the repo id and the exact commit
    the revision resolved to, and its card shows them."""
    teacher_repo = "user/tiny-teacher"
    api = HfApi(endpoint=server.url, token=WRITE)
    api.create_repo(teacher_repo, exist_ok=True)
    api.upload_folder(folder_path=str(world.teacher_fp32), repo_id=teacher_repo)
    sha = server.head(teacher_repo)
    out = tmp_path / "run"
    student = out / "checkpoints" / "last" / "pretrained_model"
    # The dataset folder as the Hub holds it: LeRobot's dataset card names its repo id (checked against --dataset).
    from lerobot.datasets.utils import create_lerobot_dataset_card

    dataset_root = Path(shutil.copytree(world.dataset_root, tmp_path / "dataset"))
    create_lerobot_dataset_card(repo_id=world.repo_id).save(dataset_root / "README.md")
    # train (a read token), push (a write token), verify (a read token): one after the other in one process.
    trained, pushed, result = run_cli_many(
        ["train", "--teacher", teacher_repo, "--teacher-revision", "main", "--dataset", world.repo_id,
         "--dataset-root", str(dataset_root), "--output-dir", str(out), "--steps", "2", "--batch-size", "4",
         "--device", "cpu"],
        ["push", str(student), "--repo-id", "user/hub-teacher-student"],
        ["verify", "user/hub-teacher-student", "--revision", "main"],
        env=hub_env(server, hf_home, READ), each_env=[{}, {"HF_TOKEN": WRITE}, {}])
    assert trained.returncode == 0, trained.stderr[-3000:]
    lineage = json.loads((student / LINEAGE_NAME).read_text())
    assert lineage["teacher"]["repo_id"] == teacher_repo
    assert lineage["teacher"]["commit"] == sha and lineage["teacher"]["revision"] == "main"
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    card = server.read_file("user/hub-teacher-student", "README.md").decode()
    assert sha in card and teacher_repo in card
    # The card's metadata as huggingface_hub parses it from the Hub.
    readme = hf_hub_download("user/hub-teacher-student", "README.md", endpoint=server.url, token=READ,
                             cache_dir=tmp_path / "cache")
    data = ModelCard.load(readme).data
    assert data.base_model == teacher_repo and data.base_model_relation == "finetune"
    assert data.datasets == [world.repo_id] and lineage["dataset"]["repo_id"] == world.repo_id
    assert f"[{world.repo_id}](https://huggingface.co/datasets/{world.repo_id})" in card
    assert data.library_name == "lerobot" and data.pipeline_tag == "robotics"
    assert data.tags == ["lerobot", "smolvla", "reflow", "rectified-flow", "robotics"]
    # verify by repo id: the teacher is found from the lineage (its Hub repo at the recorded commit).
    pushed_sha = server.head("user/hub-teacher-student")
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"checkpoint: user/hub-teacher-student@{pushed_sha}" in result.stdout
    assert f"teacher taken from the lineage: {teacher_repo}@{sha}" in result.stdout
    assert "PASS  weights.vlm" in result.stdout and "PASS  lineage" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("verdict: PASS (structure only; fidelity and speed not measured: pass --dataset)")


def test_demo_push_and_pull_with_plain_lerobot_elsewhere(world, student_fp32, tmp_path):
    """The demo's last stage: a fresh local Hub, push, then plain LeRobot in a fresh process with an
    empty cache loads the student (and its backbone) from that Hub and acts."""
    from hub_reflow.demo import push_and_pull

    commit_url, pulled = push_and_pull(tmp_path, world, student_fp32)
    assert "/demo-user/smolvla-tiny-reflow/commit/" in commit_url
    assert pulled == {"num_steps": 1, "chunk_shape": [1, 8, 2], "finite": True}


def test_push_to_a_branch_leaves_main_alone(server, student_fp32):
    repo = "user/branched"
    url = push_checkpoint(student_fp32, repo, branch="dev", token=WRITE, endpoint=server.url)
    assert url.endswith(server.head(repo, "dev"))
    assert server.head(repo, "main") != server.head(repo, "dev")
    assert set(server.repo_files(repo, "main")) == {".gitattributes"}
    assert "model.safetensors" in server.repo_files(repo, "dev")


def test_push_refuses_teacher_tensors_under_any_prefix(world, student_fp32, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = shutil.copytree(student_fp32, tmp_path / "with-teacher")
    weights = load_file(str(broken / "model.safetensors"))
    teacher = load_file(str(world.teacher_fp32 / "model.safetensors"))
    save_file({**weights, **{f"_teacher_policy.{k}": v for k, v in teacher.items()}}, str(broken / "model.safetensors"))
    problems = structural_problems(broken)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"weights check (weights.teacher): {len(teacher)} tensors (")
    assert problems[0].endswith(" are a teacher copy under prefix '_teacher_policy.'; the file must hold the student only")
    assert structural_problems(student_fp32) == []


def test_push_with_a_teacher_refuses_what_only_the_teacher_shows(server, world, student_fp32, tmp_path):
    """Swapped normalisation statistics are finite and well-formed: only a comparison with the teacher
    shows them, as in verify. push --teacher runs the same checks and refuses."""
    from breaks import swapped_norm_stats

    broken = swapped_norm_stats(student_fp32, world.teacher_fp32, tmp_path / "swapped")
    assert structural_problems(broken) == []
    problems = structural_problems(broken, world.teacher_fp32)
    assert len(problems) == 1 and problems[0].startswith("processors check (processors.stats): ")
    # In this process (refused before any request to the Hub).
    r = run_main("push", str(broken), "--repo-id", "user/swapped", "--teacher", str(world.teacher_fp32))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("hub-reflow: error:")]
    assert len(errors) == 1 and errors[0].startswith("hub-reflow: error: push: the checkpoint fails the processors check (processors.stats): "
                                                     "normalisation statistics differ from the teacher's: action.mean, action.std")
    assert server.commit_count("user/swapped") == 0
