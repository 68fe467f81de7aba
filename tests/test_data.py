"""What reflow reads from the dataset: observations and task, not the action chunks the teacher's
config asks LeRobot for (the targets come from the teacher)."""

from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
from lerobot.policies.factory import make_pre_post_processors
import torch

from hub_reflow.checkpoint import load_smolvla, read_policy_config
from hub_reflow.checks.fidelity import observation_batch
from hub_reflow.smolvla import policy_inputs
from hub_reflow.data import load_dataset


def test_training_samples_read_no_action_chunk(world):
    cfg = read_policy_config(world.teacher)
    meta = LeRobotDatasetMetadata(world.repo_id, root=world.dataset_root)
    # LeRobot's own resolution for this teacher reads a chunk of chunk_size actions per sample ...
    assert len(resolve_delta_timestamps(cfg, meta)["action"]) == cfg.chunk_size > 1
    dataset, info = load_dataset(cfg, world.repo_id, world.dataset_root, None, holdout=2)
    # ... the training dataset reads the current frame only: no chunk, no padding mask.
    assert dataset.delta_timestamps is None
    item = dataset[0]
    assert tuple(item["action"].shape) == tuple(meta.features["action"]["shape"])
    assert "action_is_pad" not in item
    assert {"observation.state", "observation.images.cam", "task"} <= set(item)
    assert info["holdout_episodes"] == [meta.total_episodes - 2, meta.total_episodes]


def test_plain_reads_give_the_teachers_inputs_bit_for_bit(world):
    # The current frame read plainly goes through the teacher's preprocessor and SmolVLA's input
    # preparation to exactly what LeRobot's delta-timestamp read (lerobot-train's) gives.
    policy = load_smolvla(world.teacher)
    pre, _ = make_pre_post_processors(policy.config, pretrained_path=str(world.teacher))
    meta = LeRobotDatasetMetadata(world.repo_id, root=world.dataset_root)
    ours, _ = load_dataset(policy.config, world.repo_id, world.dataset_root, None, holdout=0)
    lerobots = LeRobotDataset(world.repo_id, root=world.dataset_root,
                              delta_timestamps=resolve_delta_timestamps(policy.config, meta))
    rows = [0, 57, 203]
    batches = []
    for ds in (ours, lerobots):
        raw = observation_batch(ds, rows)
        batches.append(policy_inputs(policy, pre(raw)))
    a, b = batches
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images))
    assert all(torch.equal(x, y) for x, y in zip(a.img_masks, b.img_masks))
    assert torch.equal(a.state, b.state) and torch.equal(a.lang_tokens, b.lang_tokens)

