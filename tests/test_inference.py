"""``hub_reflow.fast_inference``: on the CPU the fast path runs the whole chunk eagerly on static
buffers and is bit-identical to LeRobot's ``predict_action_chunk`` and ``select_action`` at 1 and 2
steps, given noise or drawing it with the policy's own RNG; its vision encoder does none of the
host synchronisations SmolVLM's does (what a CUDA graph cannot hold); the policy is never changed."""

from __future__ import annotations

import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_pre_post_processors
from torch.utils._python_dispatch import TorchDispatchMode

from hub_reflow import fast_inference
from hub_reflow.checks.fidelity import observation_batch
from hub_reflow.config import ReflowConfig
from hub_reflow.policy import ReflowPolicy

CPU_MODE = "eager (static-shape path, no CUDA graph)"


@pytest.fixture(scope="module")
def student(world):
    """A student as it starts (an exact copy of the teacher), in a ReflowPolicy."""
    return ReflowPolicy.from_teacher(world.teacher, ReflowConfig(student_steps=1))


@pytest.fixture(scope="module")
def batches(world, student):
    """Preprocessed observations: 3 frames, then 1 frame (a robot's batch)."""
    pre, _ = make_pre_post_processors(student.student.config, pretrained_path=str(world.teacher))
    ds = LeRobotDataset(world.repo_id, root=world.dataset_root)
    raw = observation_batch(ds, (0, 101, 222))
    one = {k: v[:1] for k, v in raw.items()}
    return pre(raw), pre(one)


def _state(policy) -> dict:
    return {k: v.clone() for k, v in policy.state_dict().items()}


def test_chunks_are_lerobots_bit_for_bit_at_1_and_2_steps(student, batches):
    policy = student.student
    before = _state(policy)
    fast = fast_inference(student)  # a ReflowPolicy: its student is served
    assert fast.policy is policy
    big, one = batches
    for steps in (1, 2):
        policy.config.num_steps = steps
        for i, batch in enumerate((big, one, big)):  # a new shape, another, the first again
            z = torch.randn(batch["observation.state"].shape[0], 8, 8, generator=torch.Generator().manual_seed(i))
            ours = fast.predict_action_chunk(dict(batch), noise=z)
            assert torch.equal(ours, policy.predict_action_chunk(dict(batch), noise=z)), (steps, i)
            assert ours.shape == (z.shape[0], 8, 2) and ours.dtype == torch.float32
            # No noise given: drawn as sample_actions draws it, from the global RNG.
            torch.manual_seed(10 + i)
            ours = fast.predict_action_chunk(dict(batch))
            after_ours = torch.rand(3)
            torch.manual_seed(10 + i)
            theirs = policy.predict_action_chunk(dict(batch))
            assert torch.equal(ours, theirs) and torch.equal(after_ours, torch.rand(3)), (steps, i)
    assert len(fast._entries) == 4  # (steps, shape): 2 x 2; repeated shapes reuse their buffers
    assert fast.stats["calls"] == 12 and fast.stats["captures"] == 0 and fast.stats["capture_failures"] == 0
    assert fast.mode == CPU_MODE
    assert sorted(k[0][0] for k in fast.vision.known) == [1, 3]  # one set of vision constants per image shape
    assert not fast.vision.failed
    policy.config.num_steps = 1
    after = _state(policy)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_select_action_is_lerobots(student, batches):
    policy = student.student
    _, one = batches
    fast = fast_inference(policy)
    for steps in (1, 2):
        policy.config.num_steps = steps
        n = policy.config.n_action_steps
        runs = []
        for select in (policy.select_action, fast.select_action):
            policy.reset()
            torch.manual_seed(7)
            runs.append([select(dict(one)) for _ in range(n + 2)])  # a second chunk after the queue empties
        assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True)), steps
        assert len(policy._queues["action"]) == n - 2
    assert fast.stats["calls"] == 4  # one chunk per n actions
    policy.config.num_steps = 1


class _HostSyncs(TorchDispatchMode):
    """Operators that read device values on the host (a synchronisation on CUDA, which a graph
    cannot hold): scalar reads, nonzero, and boolean-mask indexing."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        bool_index = name.startswith(("aten::index.", "aten::index_put")) and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in (args[1] if len(args) > 1 else ()) or ())
        if name in ("aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::masked_select") or bool_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_the_whole_chunk_reads_nothing_back_to_the_host(student, batches):
    """LeRobot's chunk reads device values three times in SmolVLM's vision model (``mask.all()`` and
    the position ids scattered through a boolean mask); the fast path's chunk, once its vision
    constants are taken, not once."""
    policy = student.student
    _, one = batches
    z = torch.randn(1, 8, 8)
    fast = fast_inference(policy)
    fast.predict_action_chunk(dict(one), noise=z)  # the first call of a shape reads the constants
    with torch.no_grad(), _HostSyncs() as lerobots:
        policy.predict_action_chunk(dict(one), noise=z)
    with torch.no_grad(), _HostSyncs() as ours:
        fast.predict_action_chunk(dict(one), noise=z)
    assert "aten::_local_scalar_dense" in lerobots.seen and any(s.startswith("aten::index") for s in lerobots.seen)
    assert ours.seen == []
