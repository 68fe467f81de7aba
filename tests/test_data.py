"""What reflow reads from the dataset: observations and task, not the action chunks the teacher's
config asks LeRobot for (the targets come from the teacher)."""

from lerobot.configs.policies import PreTrainedConfig
from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

from hub_reflow.data import load_dataset


def test_training_samples_read_no_action_chunk(world):
    cfg = PreTrainedConfig.from_pretrained(world.teacher)
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
