"""The teacher-sampling fast path (``hub_reflow/fastpath.py``): on the CPU the same split and static
buffers run eagerly and are bit-identical to LeRobot's ``sample_actions``, per batch shape (a last
smaller batch included); the host constants a CUDA graph cannot record are made once and answered
from the store; ``--no-cuda-graphs`` reaches the sampler. On a CUDA device the graphs are captured
and agree with the eager path within bf16 tolerance."""

from __future__ import annotations

import copy

import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_pre_post_processors

from hub_reflow.checkpoint import load_smolvla
from hub_reflow.config import ReflowConfig
from hub_reflow.fastpath import NotCapturable, TeacherSampler, _Entry, HostConstants
from hub_reflow.policy import ReflowPolicy, teacher_pairs
from hub_reflow.smolvla import noise_shape, policy_inputs, sample_chunk

CPU_MODE = "eager (static-shape path, no CUDA graph)"


@pytest.fixture(scope="module")
def teacher(world):
    policy = load_smolvla(world.teacher)
    policy.eval()
    return policy


@pytest.fixture(scope="module")
def frames(world, teacher):
    """Preprocessed observations of 5 frames, and of the first 2 (a last smaller batch)."""
    pre, _ = make_pre_post_processors(teacher.config, pretrained_path=str(world.teacher))
    ds = LeRobotDataset(world.repo_id, root=world.dataset_root)
    picked = [ds[i] for i in (0, 37, 101, 150, 222)]
    raw = {k: torch.stack([f[k] for f in picked]) for k in picked[0] if k.startswith("observation.")}
    raw["task"] = [f["task"] for f in picked]
    small = {k: v[:2] for k, v in raw.items()}
    return policy_inputs(teacher, pre(raw)), policy_inputs(teacher, pre(small))


def _noise(policy, b: int, seed: int) -> torch.Tensor:
    return torch.randn(noise_shape(policy, b), generator=torch.Generator().manual_seed(seed))


def test_cpu_fast_path_is_lerobots_sample_actions_bit_for_bit(teacher, frames):
    big, small = frames
    for steps in (10, 1):
        sampler = TeacherSampler(teacher, steps)
        for i, inputs in enumerate((big, small, big)):  # a new shape, a last smaller batch, the first again
            z = _noise(teacher, inputs.batch_size, seed=i)
            ours = sampler(inputs, z)
            assert torch.equal(ours, sample_chunk(teacher, inputs, z, steps)), (steps, i)
            assert ours.shape == (inputs.batch_size, 8, 8) and ours.dtype == torch.float32
        assert len(sampler._entries) == 2  # one per shape; the third call reused the first
        assert sampler.stats == {"calls": 3, "graph_replays": 0, "captures": 0, "capture_failures": 0}
        assert sampler.mode == CPU_MODE
    assert teacher.config.num_steps == 10  # the step count is set only while sampling


def test_results_do_not_alias_the_static_buffers(teacher, frames):
    big, _ = frames
    sampler = TeacherSampler(teacher, 2)
    z1, z2 = _noise(teacher, 5, 1), _noise(teacher, 5, 2)
    first = sampler(big, z1)
    kept = first.clone()
    sampler(big, z2)
    assert torch.equal(first, kept)
    entry = next(iter(sampler._entries.values()))
    assert torch.equal(entry.noise, z2) and entry.noise.data_ptr() != z2.data_ptr()


def test_least_recently_used_shapes_are_dropped(teacher, frames):
    big, small = frames
    sampler = TeacherSampler(teacher, 1, max_shapes=1)
    sampler(big, _noise(teacher, 5, 0))
    sampler(small, _noise(teacher, 2, 0))
    (key,) = sampler._entries
    assert key[0] == 1 and key[1][0][0] == 2  # steps, then the prefix embeddings' shape (batch 2)


def test_no_cuda_graphs_is_lerobots_own_call(teacher, frames):
    big, _ = frames
    sampler = TeacherSampler(teacher, 10, cuda_graphs=False)
    z = _noise(teacher, 5, 3)
    assert torch.equal(sampler(big, z), sample_chunk(teacher, big, z, 10))
    assert not sampler._entries and sampler.mode == "eager (LeRobot sample_actions)"


def test_host_constants_are_made_once_then_answered_from_the_store(teacher, frames):
    """What a capture relies on, on the meta device (a stand-in for CUDA): every
    ``torch.tensor(..., device=...)`` LeRobot's loop makes is recorded by the warm-up, and a second
    run with ``capturing=True`` is answered entirely from the store; a value the warm-up did not
    make (other Euler times) fails instead of copying from the host."""
    big, _ = frames
    meta = copy.deepcopy(teacher).to("meta")
    prefix = teacher.model.embed_prefix(*big.args())
    on_meta = [torch.empty_like(t, device="meta") for t in (*prefix, big.state, _noise(teacher, 5, 0))]
    entry = _Entry.like(on_meta[:3], on_meta[3], on_meta[4])
    store: dict = {}
    with HostConstants(store, capturing=False):
        out = TeacherSampler(meta, 10)._body(entry)
    assert out.shape == (5, 8, 8) and out.device.type == "meta"
    values = {k[4] for k in store}
    # The empty KV cache, the action tokens' attention pattern (chunk 8) and the 10 Euler times.
    assert () in values and (1.0,) * 8 in values
    times = sorted(k[4][0] for k in store if k[1] == ())  # the 0-d constants
    assert times == pytest.approx([1 - k / 10 for k in range(10)][::-1])
    assert len(store) == 12
    with HostConstants(store, capturing=True):
        TeacherSampler(meta, 10)._body(entry)
    assert len(store) == 12
    with pytest.raises(NotCapturable, match="warm-up did not make"), HostConstants(store, capturing=True):
        TeacherSampler(meta, 4)._body(entry)
    # Host (CPU) tensors are left alone.
    with HostConstants(store, capturing=True):
        assert torch.equal(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0], device="cpu"))


def test_reflow_policy_and_teacher_pairs_use_the_sampler(world, frames):
    rp = ReflowPolicy.from_teacher(world.teacher, ReflowConfig(student_steps=1))
    big, _ = frames
    assert rp.teacher_sampling is None
    z = _noise(rp.teacher, 5, 4)
    noise, target = rp.make_pairs(big, z)
    assert rp.teacher_sampling == CPU_MODE and rp.teacher_sampler.stats["calls"] == 1
    eager = teacher_pairs(rp.teacher, big, z, 10, 2)
    assert torch.equal(target, eager[1]) and torch.equal(noise, z)
    assert torch.equal(target[..., 2:], torch.zeros_like(target[..., 2:]))
    with pytest.raises(ValueError, match="another teacher or step count"):
        teacher_pairs(rp.teacher, big, z, 4, 2, sampler=rp.teacher_sampler)
    rp.reflow_config.cuda_graphs = False  # the setting is read again: a plain eager sampler
    assert rp.teacher_sampler.cuda_graphs is False


def test_no_cuda_graphs_flags_reach_train_and_pairs(monkeypatch, tmp_path):
    import hub_reflow.pairs
    import hub_reflow.train
    from hub_reflow.cli import main

    got = {}
    monkeypatch.setattr(hub_reflow.train, "train", lambda args: got.setdefault("train", []).append(args) or tmp_path)
    monkeypatch.setattr(hub_reflow.pairs, "make_pairs", lambda args: got.setdefault("pairs", []).append(args) or tmp_path)
    common = ["--teacher", "t", "--dataset", "d"]
    for extra in ([], ["--no-cuda-graphs"]):
        assert main(["train", *common, "--output-dir", str(tmp_path), *extra]) == 0
        assert main(["pairs", *common, "--output", str(tmp_path), *extra]) == 0
    assert [a.reflow.cuda_graphs for a in got["train"]] == [True, False]
    assert [a.cuda_graphs for a in got["pairs"]] == [True, False]
    assert ReflowConfig().to_dict()["cuda_graphs"] is True  # recorded in the lineage's reflow settings


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_match_eager_within_bf16_tolerance(world, frames):
    policy = load_smolvla(world.teacher, device="cuda")
    policy.eval()
    pre, _ = make_pre_post_processors(policy.config, pretrained_path=str(world.teacher),
                                      preprocessor_overrides={"device_processor": {"device": "cuda"}})
    ds = LeRobotDataset(world.repo_id, root=world.dataset_root)
    sampler = TeacherSampler(policy, 10)
    for b in (5, 2, 5):
        picked = [ds[i] for i in range(b)]
        raw = {k: torch.stack([f[k] for f in picked]) for k in picked[0] if k.startswith("observation.")}
        raw["task"] = [f["task"] for f in picked]
        inputs = policy_inputs(policy, pre(raw))
        z = _noise(policy, b, b).cuda()
        torch.testing.assert_close(sampler(inputs, z), sample_chunk(policy, inputs, z, 10), rtol=2e-2, atol=2e-2)
    assert sampler.stats["captures"] == 2 and sampler.stats["graph_replays"] == 3, sampler.stats
    assert sampler.mode == "cuda graphs"
