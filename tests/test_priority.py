"""Training frames drawn by the teacher's spread (hub_reflow/training/frame_sampling.py, docs/reflow.md#frames-by-spread):
the frames are LeRobot's, the pre-pass's spreads are the variance of LeRobot's own sampler's answers,
the sampler draws by them and resumes where LeRobot's ``compute_sampler_state`` says."""

from __future__ import annotations

import pytest
import torch
from lerobot.datasets import EpisodeAwareSampler, compute_sampler_state
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

from hub_reflow.config import ReflowConfig
from hub_reflow.data import collate_for
from hub_reflow.policy import ReflowPolicy
from hub_reflow.training.frame_sampling import (
    PREPASS_SHARE,
    SPREAD_DRAWS,
    SPREAD_SHARE,
    SpreadSampler,
    episode_frames,
    frame_spreads,
    prepass_stride,
    probabilities,
)
from hub_reflow.smolvla import noise_shape


def _bounds(ds):
    return ds.meta.episodes["dataset_from_index"], ds.meta.episodes["dataset_to_index"]


def test_the_frames_are_those_lerobots_sampler_draws_from(world):
    ds = LeRobotDataset(world.repo_id, root=world.dataset_root, episodes=[1, 3, 4])
    frames = episode_frames(*_bounds(ds), ds.episodes, ds.absolute_to_relative_idx)
    lerobot = EpisodeAwareSampler(*_bounds(ds), episode_indices_to_use=ds.episodes,
                                  absolute_to_relative_idx=ds.absolute_to_relative_idx).indices
    assert [i for f in frames for i in f] == lerobot and len(frames) == 3
    assert sorted(lerobot) == list(range(len(ds)))  # relative indices into the subset


def test_probabilities_and_draws():
    spread = torch.tensor([0.0] * 6 + [1.0, 3.0], dtype=torch.float64)
    p = probabilities(spread)
    assert torch.allclose(p, SPREAD_SHARE * spread / 4 + (1 - SPREAD_SHARE) / 8) and float(p.sum()) == pytest.approx(1)
    assert torch.equal(probabilities(torch.zeros(5)), torch.full((5,), 0.2, dtype=torch.float64))  # one mode everywhere
    frames = list(range(100, 108))
    sampler = SpreadSampler(frames, spread, seed=5)
    draws = torch.tensor([i for _ in range(2000) for i in sampler]) - 100  # 2000 epochs of 8 draws
    freq = torch.bincount(draws, minlength=8).double() / len(draws)
    assert torch.allclose(freq, p, atol=0.01)  # 16000 seeded draws: within 4 standard errors
    assert sampler.state_dict() == {"epoch": 2000, "start_index": 0}
    with pytest.raises(ValueError, match="8 frames but 3 spreads"):
        SpreadSampler(frames, spread[:3], seed=5)


def test_draws_are_a_function_of_seed_and_epoch_and_resume_where_lerobot_says():
    spread = torch.rand(11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = SpreadSampler(list(range(11)), spread, seed=7)
    order = [i for _ in range(4) for i in full]
    again = SpreadSampler(list(range(11)), spread, seed=7)
    assert order == [i for _ in range(4) for i in again]
    assert order[:11] != [i for i in SpreadSampler(list(range(11)), spread, seed=8)]
    assert order[:11] != order[11:22]  # another epoch, other draws
    # Batch 3: 4 batches an epoch (the last one short); after 6 steps LeRobot resumes at epoch 1, batch 2.
    state = compute_sampler_state(6, 11, 3, 1)
    assert state == {"epoch": 1, "start_index": 6}
    resumed = SpreadSampler(list(range(11)), spread, seed=7)
    resumed.load_state_dict(state)
    assert list(resumed) + list(resumed) == order[11 + 6:33]


def test_prepass_stride_keeps_the_prepass_within_its_share_of_the_run():
    assert prepass_stride(480, 1000, 16) == 1  # 1920 rows <= 4000
    assert prepass_stride(480, 600, 16) == 1
    assert prepass_stride(50_000, 1000, 16) == 50  # 200000 rows: every 50th frame, 4000 rows
    for frames, steps, rows in ((480, 20, 16), (10_000, 3000, 64), (7, 1, 1)):
        stride = prepass_stride(frames, steps, rows)
        scored = -(-frames // stride)
        assert scored * SPREAD_DRAWS <= max(PREPASS_SHARE * steps * rows, SPREAD_DRAWS) or stride == 1


def test_spreads_are_the_variance_of_lerobots_answers(world):
    """The pre-pass (the teacher's shared-prefix sampler, 4 noises per frame in one call) against
    LeRobot's ``predict_action_chunk`` run on each frame with the same 4 noises (fp32 teacher)."""
    teacher_dir = world.teacher_fp32
    rp = ReflowPolicy.from_teacher(teacher_dir, ReflowConfig())
    pre, _ = make_pre_post_processors(rp.student.config, pretrained_path=str(teacher_dir))
    ds = LeRobotDataset(world.repo_id, root=world.dataset_root, episodes=[0, 2])
    episodes = episode_frames(*_bounds(ds), ds.episodes, ds.absolute_to_relative_idx)
    spread, record = frame_spreads(rp, pre, ds, episodes, stride=1, batch_size=8, seed=3, collate=collate_for(ds))
    n = sum(len(f) for f in episodes)
    assert record["frames"] == record["frames_scored"] == n == len(spread) and record["draws"] == SPREAD_DRAWS
    lerobot = SmolVLAPolicy.from_pretrained(str(teacher_dir)).eval()
    g = torch.Generator().manual_seed(3)
    flat = [i for f in episodes for i in f]
    expected = []
    for lo in range(0, n, 8):
        part = flat[lo:lo + 8]
        noise = torch.randn(noise_shape(lerobot, len(part) * SPREAD_DRAWS), dtype=torch.float32, generator=g)
        for j, idx in enumerate(part):
            obs = pre(collate_for(ds)([ds[idx]] * SPREAD_DRAWS))
            with torch.no_grad():
                answers = lerobot.predict_action_chunk(obs, noise=noise[j * SPREAD_DRAWS:(j + 1) * SPREAD_DRAWS])
            expected.append(float(answers.float().var(dim=0, unbiased=False).mean()))
    torch.testing.assert_close(spread, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-7)
    assert float(spread.min()) >= 0 and float(spread.max()) > 0
    # Every 3rd frame scored: the others take their episode's previous scored frame's value.
    strided, rec3 = frame_spreads(rp, pre, ds, episodes, stride=3, batch_size=8, seed=3, collate=collate_for(ds))
    assert rec3["frames_scored"] == sum(-(-len(f) // 3) for f in episodes)
    k = 0
    for f in episodes:
        assert all(float(strided[k + i]) == float(strided[k + i // 3 * 3]) for i in range(len(f)))
        k += len(f)
