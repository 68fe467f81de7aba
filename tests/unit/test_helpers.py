"""The pure helpers, alone, on known answers: key rules, config cleaning, atomic folders, pairs checks."""

from __future__ import annotations

import hashlib
import os

import pytest

from hub_reflow.checkpoint import CheckpointRef, clean_config_dict
from hub_reflow.errors import UserError
from hub_reflow.files import atomic_dir, sha256_file
from hub_reflow.checks.inspection import is_local_path
from hub_reflow.checks.keys import group_counts, group_of, is_teacher_key, split_prefixed, teacher_prefix
from hub_reflow.pairs import Pairs, check_pairs

REF = {"model.action_in_proj.weight", "model.vlm_with_expert.vlm.x.weight", "model.vlm_with_expert.lm_expert.y.bias"}


# ---- keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, prefix", [
    ("teacher.model.action_in_proj.weight", "teacher."),
    ("teacher_model.model.x", "teacher_model."),
    ("model._teacher_model.action_in_proj.bias", "model._teacher_model."),
    ("model.teacher.model.vlm_with_expert.vlm.x.weight", "model.teacher."),
    ("student.model._TeacherPolicy.x.weight", "student.model._TeacherPolicy."),
])
def test_teacher_keys_at_any_depth(key, prefix):
    assert is_teacher_key(key) and teacher_prefix(key) == prefix


@pytest.mark.parametrize("key", [*sorted(REF), "student.model.action_in_proj.weight", "model.teacher_scale", "teacher"])
def test_student_keys_name_no_teacher(key):
    # Only path components count: a tensor's own name ("teacher_scale") is not a teacher module.
    assert not is_teacher_key(key)


def test_split_prefixed_takes_the_shortest_prefix():
    keys = ["model.action_in_proj.weight", "policy.model.vlm_with_expert.vlm.x.weight", "a.b.model.vlm_with_expert.lm_expert.y.bias",
            "model.unknown.weight", "teacher.model.action_in_proj.weight"]
    mapping, by_prefix = split_prefixed(keys, REF)
    assert mapping == {"policy.model.vlm_with_expert.vlm.x.weight": "model.vlm_with_expert.vlm.x.weight",
                       "a.b.model.vlm_with_expert.lm_expert.y.bias": "model.vlm_with_expert.lm_expert.y.bias",
                       "teacher.model.action_in_proj.weight": "model.action_in_proj.weight"}
    assert by_prefix == {"policy.": ["policy.model.vlm_with_expert.vlm.x.weight"],
                         "a.b.": ["a.b.model.vlm_with_expert.lm_expert.y.bias"],
                         "teacher.": ["teacher.model.action_in_proj.weight"]}


def test_module_groups_follow_the_module_path():
    assert [group_of(k) for k in sorted(REF)] == ["projections", "action expert", "VLM"]
    # The expert's path contains "vlm" too: groups go by module path, not by substring.
    assert group_of("model.vlm_with_expert.lm_expert.vlm_like.weight") == "action expert"
    assert group_counts([*REF, "other.x"]) == {"VLM": 1, "action expert": 1, "projections": 1, "other": 1}


@pytest.mark.parametrize("name, local", [
    ("HuggingFaceTB/SmolVLM2-500M-Video-Instruct", False), ("hub-reflow-testing/tiny-smolvlm", False),
    ("/home/me/backbone", True), ("./backbone", True), ("../backbone", True), ("~/backbone", True),
])
def test_local_backbone_paths(name, local):
    assert is_local_path(name) is local


# ---- config ----------------------------------------------------------------------------------------


def test_clean_config_drops_only_unknown_fields():
    raw = {"type": "smolvla", "num_steps": 1, "load_vlm_weights": True, "use_reflow": True, "teacher_model_path": "x"}
    cleaned, unknown = clean_config_dict(raw)
    assert unknown == ["teacher_model_path", "use_reflow"]
    assert cleaned == {"type": "smolvla", "num_steps": 1, "load_vlm_weights": True}


# ---- files -----------------------------------------------------------------------------------------


def test_sha256_file_reads_in_chunks(tmp_path):
    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=4096) == hashlib.sha256(data).hexdigest()


def test_atomic_dir_replaces_the_folder_in_one_rename(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "old.txt").write_text("old")
    (tmp_path / ".tmp-ckpt-stale").mkdir()  # left by a crash: removed by the next save
    with atomic_dir(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-ckpt-")
        (tmp / "new.txt").write_text("new")
        assert (final / "old.txt").read_text() == "old"  # untouched until the rename
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_atomic_dir_leaves_the_old_folder_on_failure(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_dir(final) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("crash")
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# ---- pairs -----------------------------------------------------------------------------------------


def _pairs(**changes) -> Pairs:
    meta = {"teacher": {"weights_sha256": "a" * 64}, "teacher_steps": 10, "data_sha256": "d" * 64, "num_rows": 8,
            "per_frame": 1, "seed": 1000,
            "dataset": {"repo_id": "user/data", "commit": "c1", "train_episodes": [0, 20], "holdout_episodes": [20, 24]}}
    for key, value in changes.items():
        target = meta["dataset"] if key in meta["dataset"] else meta
        target[key] = value
    return Pairs(table=None, meta=meta, source={"repo_id": None, "commit": None})


TEACHER = CheckpointRef(None, None, None, "a" * 64)
DATA = {"repo_id": "user/data", "commit": "c1", "train_episodes": [0, 20], "holdout_episodes": [20, 24]}


def test_check_pairs_accepts_the_pairs_online_training_would_make():
    check_pairs(_pairs(), TEACHER, DATA, 10)
    check_pairs(_pairs(commit=None), TEACHER, DATA, 10)  # a local dataset has no commit to compare


@pytest.mark.parametrize("pairs, message", [
    (_pairs(teacher={"weights_sha256": "b" * 64}), "--pairs were made by a different teacher (weights sha256 bbbbbbbbbbbb..."),
    (_pairs(repo_id="user/other"), "--pairs were made for dataset user/other, not user/data"),
    (_pairs(commit="c0"), "--pairs were made for dataset commit c0, this dataset is at c1"),
    (_pairs(teacher_steps=5), "--pairs were made with --teacher-steps 5, not 10"),
    (_pairs(train_episodes=[0, 24], holdout_episodes=[24, 24]), "--pairs were made with --holdout-episodes 0 (training episodes [0, 24])"),
])
def test_check_pairs_refuses_other_pairs(pairs, message):
    with pytest.raises(UserError) as err:
        check_pairs(pairs, TEACHER, DATA, 10)
    assert str(err.value).startswith(message)


# ---- Hub I/O -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, ok", [
    ("user/model", True), ("HuggingFaceTB/SmolVLM2-500M-Video-Instruct", True), ("a.b/c_d-e.f", True),
    ("model", False), ("a/b/c", False), ("/abs/path", False), ("./rel/x", False), ("~/x", False), ("../x/y", False),
    ("user/bad id!", False), ("user/a--b", False), ("user/a..b", False), ("user/" + "x" * 100, False),
])
def test_one_repo_id_rule(text, ok):
    from hub_reflow.hub_io import is_repo_id

    assert is_repo_id(text) is ok


def test_invalid_repo_ids_are_refused_in_one_line(tmp_path):
    from hub_reflow.checkpoint import resolve_checkpoint
    from hub_reflow.hub_io import check_repo_id

    with pytest.raises(UserError) as err:
        check_repo_id("user/bad id!", "push")
    assert str(err.value) == ("push: 'user/bad id!' is not a valid Hub repo id (Repo id must use alphanumeric chars, "
                              "'-', '_' or '.'. The name cannot start or end with '-' or '.' and the maximum length is "
                              "96: 'user/bad id!'); use namespace/name")
    with pytest.raises(UserError) as err:
        check_repo_id("name", "push")
    assert str(err.value) == ("push: repo id 'name' has no namespace; use namespace/name (your user or organisation "
                              "name, e.g. you/name)")
    check_repo_id("gpt2", "pull", need_namespace=False)  # pull takes the Hub's namespace-less ids too
    with pytest.raises(UserError) as err:
        resolve_checkpoint(str(tmp_path / "missing"), what="teacher")
    assert str(err.value) == (f"teacher: {tmp_path / 'missing'} does not exist as a folder and is not a Hub repo id "
                              "(namespace/name); check the path")


def _http_error(cls, status: int, message: str = "boom", server_message: str | None = None):
    import httpx

    response = httpx.Response(status, request=httpx.Request("GET", "http://hub.invalid/api/models/user/x"))
    return cls(message, response=response, server_message=server_message)


def test_the_one_hub_error_mapping(monkeypatch):
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    from hub_reflow.hub_io import WRITE_REFUSED, hub_error

    monkeypatch.setenv("HF_TOKEN", "hf_secret_env")
    cases = [
        (hub_error(_http_error(RepositoryNotFoundError, 404), "user/x", "pull"),
         "pull: Hub repo user/x not found (or private: set HF_TOKEN); check the repo id"),
        (hub_error(_http_error(RevisionNotFoundError, 404), "user/x", "teacher", revision="v9"),
         "teacher: revision not found in user/x: 'v9'; pass a branch, tag or commit sha that exists"),
        (hub_error(_http_error(HfHubHTTPError, 403), "user/x", "push"), WRITE_REFUSED),
        # The Hub's words for a namespace the token may not write to: creating there, committing there.
        *[(hub_error(_http_error(HfHubHTTPError, 403, server_message=said), "acme/x", "push"),
           "push: no write access to namespace 'acme' with this token; use a write token of that user or "
           "organisation, or push under your own namespace (--repo-id YOU/x)")
          for said in ('You don\'t have the rights to create a model under the namespace "acme"',
                       "Forbidden: pass `create_pr=1` as a query parameter to create a Pull Request.")],
        (hub_error(_http_error(HfHubHTTPError, 401), "user/x", "pull"),
         "pull: the Hub refused access to user/x: set HF_TOKEN to a valid token"),
        (hub_error(_http_error(HfHubHTTPError, 500, "server error, token hf_secret_env and hf_given"), "user/x", "pull",
                   token="hf_given"),
         "pull: the Hub refused the request for user/x (HTTP 500): server error, token *** and ***"),
        (hub_error(httpx.ConnectError("refused"), "user/x", "--pairs"),
         "--pairs: could not reach the Hub for user/x (ConnectError); check HF_ENDPOINT / network"),
    ]
    for err, message in cases:
        assert isinstance(err, UserError) and str(err) == message


# ---- devices -----------------------------------------------------------------------------------------


def test_one_device_rule(monkeypatch):
    import torch

    from hub_reflow.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == "cpu" and resolve_device("auto") == "cpu"
    with pytest.raises(UserError, match=r"^--device cuda was asked for but no CUDA device is visible; use --device cpu or auto$"):
        resolve_device("cuda")
    with pytest.raises(UserError, match=r"^--device must be cpu, cuda or auto, got 'tpu'$"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda") == "cuda"


@pytest.mark.parametrize("cores, expected", [(1, 0), (2, 1), (4, 3), (5, 4), (64, 4)])
def test_default_num_workers(monkeypatch, cores, expected):
    import os

    from hub_reflow.devices import default_num_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert default_num_workers("cuda") == expected  # lerobot-train's 4, at most the spare cores
    assert default_num_workers("cuda", num_processes=2) == max(0, min(4, cores // 2 - 1))  # cores shared by processes
    assert default_num_workers("cpu") == 0  # workers would take cores from the training threads


def test_help_states_each_default_once():
    """Every option of every command shows its default at most once, and no empty default (an
    option whose help says its default in words keeps those words alone)."""
    import re

    from hub_reflow.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "eval" in a.choices)
    for name, command in sub.choices.items():
        text = command.format_help()
        for block in re.split(r"\n  (?=-)", text):
            assert block.count("(default") <= 1, (name, block)
        assert "(default: ())" not in text and "(default: {})" not in text, name
    eval_help = " ".join(sub.choices["eval"].format_help().split())
    assert "Euler step counts of the student (default: its own)" in eval_help
    assert "--env-kwargs ENV_KWARGS JSON object of extra gym.make arguments (--env-id) --max-steps" in eval_help


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_dir_makes_the_folder_as_mkdir_would(tmp_path, umask):
    """A checkpoint step folder (and a pull, pairs or canonicalize output) follows the umask, as the
    folders lerobot-train makes do (0o755 under the usual 0o022), not mkdtemp's private 0o700."""
    import os

    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "step") as tmp:
            (tmp / "inner").mkdir()
        (tmp_path / "by-mkdir").mkdir()
    finally:
        os.umask(old)
    mode = (tmp_path / "step").stat().st_mode & 0o777
    assert mode == 0o777 & ~umask == (tmp_path / "by-mkdir").stat().st_mode & 0o777
    assert (tmp_path / "step" / "inner").stat().st_mode & 0o777 == mode
