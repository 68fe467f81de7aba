"""Cached teacher pairs (``hub-reflow pairs``, ``train --pairs``): the pairs are the teacher's own
``sample_actions`` output for the stored noise, training on them gives a canonical student as good
as online training, wrong pairs are refused, and pairs travel through the Hub as a dataset repo."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from huggingface_hub import DatasetCard, HfApi, constants
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from safetensors.torch import load_file

from conftest import HOLDOUT, run_cli_many, train_args, train_student
from hub_reflow.pairs import DATA_FILE, PAIRS_META_NAME
from hub_reflow.training.run_folder import RUN_RECORD
from hub_reflow.testing.hub_server import HubServer
from test_train import _bad, assert_canonical, assert_plain_lerobot_loads

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

SEED, PER_FRAME, BATCH = 7, 2, 16
STEPS = 60  # reflow steps of both the online and the pairs-trained student compared for fidelity


def pairs_args(world, teacher, out: Path, *extra: str) -> list[str]:
    return ["pairs", "--teacher", str(teacher), "--dataset", world.repo_id, "--dataset-root", str(world.dataset_root),
            "--output", str(out), "--per-frame", str(PER_FRAME), "--seed", str(SEED), "--batch-size", str(BATCH),
            "--holdout-episodes", str(HOLDOUT), "--device", "cpu", "--no-progress", *extra]


@pytest.fixture(scope="module")
def made(world, tmp_path_factory) -> dict[str, Path]:
    """The pairs of the fp32 teacher, then two students of it, same settings (one noise per frame),
    STEPS steps: online pairs vs those cached pairs (checkpointed at STEPS - 2 so resume can be checked against it);
    one command after the other in one fresh process (one start of torch and LeRobot for all)."""
    root = tmp_path_factory.mktemp("made")
    pairs = root / "pairs"
    for r in run_cli_many(pairs_args(world, world.teacher_fp32, pairs),
                          train_args(world, world.teacher_fp32, root / "online", STEPS, "--noises-per-frame", "1",
                                     "--frame-sampling", "uniform"),
                          train_args(world, world.teacher_fp32, root / "cached", STEPS, "--pairs", str(pairs),
                                     "--save-freq", str(STEPS - 2))):
        assert r.returncode == 0, r.stderr[-3000:]
    return {"pairs": pairs, **{name: root / name / "checkpoints" / "last" / "pretrained_model" for name in ("online", "cached")}}


@pytest.fixture(scope="module")
def pairs_dir(made):
    return made["pairs"]


@pytest.fixture(scope="module")
def trained(made):
    """(online student, cached-pairs student)."""
    return made["online"], made["cached"]


def test_pairs_are_lerobots_own_sample_actions(world, pairs_dir):
    """Rows of the first batch recomputed with LeRobot's SmolVLAPolicy.predict_action_chunk on the
    stored noise (same batch as the pairs command: bit-identical), and the noise is the seed's."""
    meta = json.loads((pairs_dir / PAIRS_META_NAME).read_text())
    assert meta["per_frame"] == PER_FRAME and meta["seed"] == SEED and meta["teacher_steps"] == 10
    assert meta["dataset"]["train_episodes"] == [0, 24 - HOLDOUT]
    assert meta["cuda_graphs"] is True and meta["teacher_sampling"] == "eager (static-shape path, no CUDA graph)"
    table = datasets.load_dataset(str(pairs_dir), split="train").with_format("torch")
    ds = LeRobotDataset(world.repo_id, root=world.dataset_root)
    n_train = int(ds.meta.episodes["dataset_from_index"][24 - HOLDOUT])
    assert len(table) == n_train * PER_FRAME == meta["num_rows"]
    assert table[:]["frame_index"][::PER_FRAME].tolist() == list(range(n_train))  # rows by (frame, draw)

    # Noise: one CPU generator seeded with SEED, drawn per batch, one draw after the other.
    g = torch.Generator().manual_seed(SEED)
    first = table[: BATCH * PER_FRAME]
    for draw in range(PER_FRAME):
        z = torch.randn(BATCH, 8, 8, generator=g)
        assert torch.equal(first["noise"][draw::PER_FRAME], z)

    policy = SmolVLAPolicy.from_pretrained(str(world.teacher_fp32))
    pre, _ = make_pre_post_processors(policy.config, pretrained_path=str(world.teacher_fp32))
    assert policy.config.num_steps == 10
    frames = [ds[i] for i in range(BATCH)]
    raw = {k: torch.stack([f[k] for f in frames]) for k in frames[0] if k.startswith("observation.")}
    raw["task"] = [f["task"] for f in frames]
    for draw in range(PER_FRAME):
        rows = first["target"][draw::PER_FRAME]
        theirs = policy.predict_action_chunk(pre(dict(raw)), noise=first["noise"][draw::PER_FRAME].clone())
        assert theirs.shape == (BATCH, 8, 2)
        assert torch.equal(rows[..., :2], theirs)
        assert torch.equal(rows[..., 2:], torch.zeros_like(rows[..., 2:]))  # padded like LeRobot's data
    # A later row on its own (batch of one): the same up to float32 rounding of a different batch shape.
    r = len(table) - 1
    row = table[r]
    frame = ds[int(row["frame_index"])]
    one = {k: v[None] for k, v in frame.items() if k.startswith("observation.")}
    one["task"] = [frame["task"]]
    theirs = policy.predict_action_chunk(pre(one), noise=row["noise"][None].clone())
    torch.testing.assert_close(row["target"][None, :, :2], theirs, rtol=1e-5, atol=1e-5)


def test_pairs_folder_is_a_dataset_with_a_card(world, pairs_dir):
    assert {p.relative_to(pairs_dir).as_posix() for p in pairs_dir.rglob("*") if p.is_file()} == {
        "README.md", PAIRS_META_NAME, DATA_FILE}
    table = datasets.load_dataset(str(pairs_dir), split="train")
    assert table.features["noise"] == datasets.Array2D(shape=(8, 8), dtype="float32")
    assert table.features["target"] == datasets.Array2D(shape=(8, 8), dtype="float32")
    assert table.column_names == ["frame_index", "episode_index", "draw", "noise", "target"]
    meta = json.loads((pairs_dir / PAIRS_META_NAME).read_text())
    card = DatasetCard.load(pairs_dir / "README.md")
    assert card.data.configs[0]["data_files"][0]["path"] == "data/*.parquet"
    for fact in (meta["teacher"]["weights_sha256"], world.repo_id, "teacher_steps | 10", f"per_frame | {PER_FRAME}",
                 f"seed | {SEED}", meta["data_sha256"]):
        assert fact in card.text, fact
    assert str(Path.home()) not in (pairs_dir / PAIRS_META_NAME).read_text() + card.content


def test_train_on_pairs_is_canonical_and_as_faithful_as_online(world, pairs_dir, trained):
    online, cached = trained
    assert_canonical(cached, world.teacher_fp32)
    assert_plain_lerobot_loads(cached, world)
    lin = json.loads((cached / "reflow_lineage.json").read_text())
    meta = json.loads((pairs_dir / PAIRS_META_NAME).read_text())
    assert lin["reflow"]["targets"] == "cached pairs"
    assert lin["reflow"]["noises_per_frame"] == 1  # not given: cached pairs hold one noise per frame (online: 2)
    assert lin["reflow"]["frame_sampling"] == "uniform"  # not given: cached pairs are drawn uniformly (online: spread)
    assert lin["dataset"]["pairs"] == {"repo_id": None, "commit": None, "data_sha256": meta["data_sha256"],
                                       "rows": meta["num_rows"], "per_frame": PER_FRAME, "seed": SEED, "teacher_steps": 10}
    ev_on = json.loads((online / "reflow_lineage.json").read_text())["evaluation"]
    ev_ca = lin["evaluation"]
    print({"online student_rmse": ev_on["student_rmse"], "cached student_rmse": ev_ca["student_rmse"],
           "teacher@1 rmse": ev_ca["teacher_rmse_at_student_steps"]})
    # Same held-out frames, same evaluation noise: the teacher rows are identical in both runs.
    assert ev_on["teacher_rmse_at_student_steps"] == ev_ca["teacher_rmse_at_student_steps"]
    # Both learned (beat the 1-step teacher they started as), and agree within 15%.
    for ev in (ev_on, ev_ca):
        assert ev["student_rmse"] < ev["teacher_rmse_at_student_steps"], ev
    assert abs(ev_ca["student_rmse"] - ev_on["student_rmse"]) <= 0.15 * ev_on["student_rmse"]


def test_resume_on_pairs_is_sample_exact(world, pairs_dir, trained, tmp_path):
    """Stop the cached run at its STEPS - 2 checkpoint and resume: the same final weights."""
    _, cached = trained
    run = cached.parents[2]
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    mid = f"{STEPS - 2:06d}"
    shutil.rmtree(copy / "checkpoints" / f"{STEPS:06d}")
    (copy / "checkpoints" / "last").unlink()
    (copy / "checkpoints" / "last").symlink_to(mid)
    train_student(world, world.teacher_fp32, copy, STEPS, "--pairs", str(pairs_dir), "--save-freq", str(STEPS - 2),
                  "--resume")
    resumed = copy / "checkpoints" / "last" / "pretrained_model"
    assert (copy / "checkpoints" / "last").resolve().name == f"{STEPS:06d}"
    a, b = load_file(cached / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Resuming that run without its pairs is refused (a run without its settings record, as older
    # hub-reflow wrote them: with one, an option left out takes the run's own value).
    (copy / "checkpoints" / "last" / "training_state" / RUN_RECORD).unlink(missing_ok=True)
    msg = _bad("train", "--teacher", str(world.teacher_fp32), "--dataset", world.repo_id, "--dataset-root",
               str(world.dataset_root), "--output-dir", str(copy), "--steps", str(STEPS + 2), "--batch-size", "32",
               "--holdout-episodes", str(HOLDOUT), "--device", "cpu", "--resume")
    assert "cached pairs" in msg and "--pairs" in msg


def test_wrong_pairs_are_refused(world, pairs_dir, tmp_path):
    """Each refusal in this process (cli.main; test_train shows one as the installed command)."""
    common = ["--dataset", world.repo_id, "--dataset-root", str(world.dataset_root), "--steps", "1", "--device", "cpu",
              "--holdout-episodes", str(HOLDOUT)]
    msg = _bad("train", "--teacher", str(world.teacher), "--output-dir", str(tmp_path / "o1"), *common,
               "--pairs", str(pairs_dir))
    assert "different teacher" in msg and "sha256" in msg
    msg = _bad("train", "--teacher", str(world.teacher_fp32), "--output-dir", str(tmp_path / "o2"), *common,
               "--pairs", str(pairs_dir), "--teacher-steps", "5")
    assert "--teacher-steps 10" in msg
    msg = _bad("train", "--teacher", str(world.teacher_fp32), "--output-dir", str(tmp_path / "o3"),
               "--dataset", world.repo_id, "--dataset-root", str(world.dataset_root), "--steps", "1", "--device", "cpu",
               "--pairs", str(pairs_dir))
    assert f"--holdout-episodes {HOLDOUT}" in msg
    msg = _bad("train", "--teacher", str(world.teacher_fp32), "--output-dir", str(tmp_path / "o4"), *common,
               "--pairs", str(world.dataset_root))
    assert PAIRS_META_NAME in msg
    tampered = tmp_path / "tampered"
    shutil.copytree(pairs_dir, tampered)
    meta = json.loads((tampered / PAIRS_META_NAME).read_text())
    meta["data_sha256"] = "0" * 64
    (tampered / PAIRS_META_NAME).write_text(json.dumps(meta))
    msg = _bad("train", "--teacher", str(world.teacher_fp32), "--output-dir", str(tmp_path / "o5"), *common,
               "--pairs", str(tampered))
    assert "sha256" in msg
    msg = _bad("pairs", "--teacher", str(world.teacher_fp32), "--dataset", world.repo_id, "--dataset-root",
               str(world.dataset_root), "--output", str(pairs_dir))
    assert "already holds files" in msg


# ---- through the Hub ------------------------------------------------------------------------------

WRITE = "hf_write_pairs_token_5c1d"


@pytest.fixture(scope="module")
def hub(world, tmp_path_factory):
    from hub_reflow.testing.tiny_world import publish_backbone

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        with HubServer(tmp_path_factory.mktemp("hub"), {WRITE: "write"}) as server:
            publish_backbone(world.backbone, endpoint=server.url, token=WRITE)
            api = HfApi(endpoint=server.url, token=WRITE)
            api.create_repo("user/teacher")
            api.upload_folder(folder_path=str(world.teacher_fp32), repo_id="user/teacher")
            yield server


def test_pairs_through_the_hub(world, hub, tmp_path):
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": WRITE,
           "HF_HOME": str(tmp_path / "hf_home")}
    teacher_sha = hub.head("user/teacher")
    folder, run = tmp_path / "pairs", tmp_path / "run"
    # pairs from the Hub teacher, push them, train on them from the Hub: one after the other, in one process.
    made, out, trained = run_cli_many(
        pairs_args(world, "user/teacher", folder),
        ["push", str(folder), "--repo-id", "user/pairs"],
        ["train", "--teacher", "user/teacher", "--dataset", world.repo_id, "--dataset-root", str(world.dataset_root),
         "--output-dir", str(run), "--steps", "2", "--batch-size", "8", "--holdout-episodes", str(HOLDOUT),
         "--device", "cpu", "--pairs", "user/pairs"], env=env)
    assert made.returncode == 0, made.stderr[-3000:]
    meta = json.loads((folder / PAIRS_META_NAME).read_text())
    assert meta["teacher"]["repo_id"] == "user/teacher" and meta["teacher"]["commit"] == teacher_sha
    assert teacher_sha in DatasetCard.load(folder / "README.md").text

    assert out.returncode == 0, out.stderr[-3000:]
    assert hub.commit_count("user/pairs", repo_type="dataset") == 1
    pairs_sha = hub.head("user/pairs", repo_type="dataset")
    assert out.stdout.strip().endswith(pairs_sha)
    assert set(hub.repo_files("user/pairs", repo_type="dataset")) - {".gitattributes"} == {
        "README.md", PAIRS_META_NAME, DATA_FILE}

    assert trained.returncode == 0, trained.stderr[-3000:]
    student = run / "checkpoints" / "last" / "pretrained_model"
    lin = json.loads((student / "reflow_lineage.json").read_text())
    assert lin["dataset"]["pairs"]["repo_id"] == "user/pairs" and lin["dataset"]["pairs"]["commit"] == pairs_sha
    assert lin["dataset"]["pairs"]["data_sha256"] == meta["data_sha256"]
    assert lin["teacher"]["commit"] == teacher_sha
