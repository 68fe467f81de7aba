"""The teacher answers several steps' batches in one call (docs/reflow.md#teacher-batches): its
answers equal LeRobot's ``sample_actions`` on each batch alone, and a run trains the same student
as one that calls the teacher step by step."""

from __future__ import annotations

import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_pre_post_processors
from safetensors.torch import load_file

from conftest import HOLDOUT
from hub_reflow.checkpoint import load_smolvla
from hub_reflow.config import ReflowConfig
from hub_reflow.checks.fidelity import observation_batch
from hub_reflow.policy import ReflowPolicy
from hub_reflow.smolvla import noise_shape, policy_inputs, sample_chunk
from hub_reflow.training.teacher_batch import cat_inputs
from hub_reflow.train import TrainArgs, train


def _batches(world, teacher, tasks: list[str]):
    pre, _ = make_pre_post_processors(teacher.config, pretrained_path=str(world.teacher))
    ds = LeRobotDataset(world.repo_id, root=world.dataset_root)
    out = []
    for i, task in enumerate(tasks):
        raw = observation_batch(ds, [5 * i + j for j in range(3)])
        raw["task"] = [task] * 3
        out.append(policy_inputs(teacher, pre(raw)))
    return out


@pytest.mark.parametrize("tasks", [["go around the post"] * 3,
                                   ["go around the post", "go round the post on the left side, then up to the goal", "up"]])
@pytest.mark.parametrize("which", ["teacher", "teacher_fp32"])
def test_a_group_is_answered_as_lerobot_answers_each_batch(world, tasks, which):
    """Three batches in one call: the same chunks as LeRobot's sample_actions on each batch alone;
    to rounding (padded, masked tokens where the batches' token lengths differ: the same maths)."""
    teacher = load_smolvla(getattr(world, which)).eval()
    parts = _batches(world, teacher, tasks)
    lengths = {p.lang_tokens.shape[1] for p in parts}
    assert (len(lengths) == 1) == (len(set(tasks)) == 1)  # the second case does pad
    noise = torch.randn(noise_shape(teacher, 9), generator=torch.Generator().manual_seed(3))
    alone = torch.cat([sample_chunk(teacher, p, z, 10) for p, z in zip(parts, noise.split(3), strict=True)])
    group = cat_inputs(parts)
    assert group.batch_size == 9 and group.lang_tokens.shape[1] == max(lengths)
    together = sample_chunk(teacher, group, noise, 10)
    # Rounding: a batch of 9 may take other CPU kernels than one of 3, and padded tokens change the
    # order of the sums; fp32's for the fp32 teacher, bf16's where the teacher's VLM is bf16.
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5 if which == "teacher_fp32" else 1e-3)
    if len(lengths) > 1:
        assert not torch.equal(together[:3], together[3:6])  # different tasks, different chunks


def _train(world, out, teacher_batch: int, calls: list[int], monkeypatch) -> dict:
    make_pairs = ReflowPolicy.make_pairs

    def counted(self, inputs, noise=None):
        calls.append(inputs.batch_size)
        return make_pairs(self, inputs, noise)

    monkeypatch.setattr(ReflowPolicy, "make_pairs", counted)
    final = train(TrainArgs(teacher=str(world.teacher_fp32), dataset=world.repo_id, dataset_root=world.dataset_root,
                            output_dir=out, device="cpu", save_freq=6, log_freq=5, progress=False,
                            reflow=ReflowConfig(steps=10, batch_size=8, noises_per_frame=1, holdout_episodes=HOLDOUT,
                                                teacher_batch=teacher_batch, frame_sampling="uniform")))  # no pre-pass calls
    monkeypatch.undo()
    return load_file(final / "model.safetensors")


def test_training_with_teacher_groups_is_training_step_by_step(world, tmp_path, monkeypatch):
    """10 steps at batch 8, a checkpoint at step 6: with 32 rows a call the teacher answers steps
    0-3, 4-5 (a group stops at a checkpoint) and 6-9 in three calls; the student is the one whose
    teacher answered each step alone (fp32 teacher: to fp32 rounding, where the CPU's kernels for a
    batch of 32 round otherwise than those for 8)."""
    grouped, alone = [], []
    a = _train(world, tmp_path / "grouped", 32, grouped, monkeypatch)
    b = _train(world, tmp_path / "alone", 0, alone, monkeypatch)
    assert grouped == [32, 16, 32] and alone == [8] * 10
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    teacher = load_file(world.teacher_fp32 / "model.safetensors")
    assert max(float((a[k] - teacher[k]).abs().max()) for k in a if ".lm_expert." in k) > 1e-4  # it did train
