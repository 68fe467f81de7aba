"""On-policy inputs for a K-step student (docs/reflow.md#on-policy-inputs): the rows trained at a
grid time t < 1 sit at the states LeRobot's own K-step ``sample_actions`` visits for the same
noise, with the target that lands on the teacher's answer from there."""

from __future__ import annotations

import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_pre_post_processors

from hub_reflow import flow
from hub_reflow.checks.fidelity import observation_batch
from hub_reflow.checkpoint import load_smolvla
from hub_reflow.config import ReflowConfig
from hub_reflow.policy import ReflowPolicy
from hub_reflow.smolvla import noise_shape, on_policy_noise, policy_inputs, sample_chunk, student_losses


@pytest.fixture(scope="module")
def setup(world):
    policy = load_smolvla(world.teacher)
    policy.eval()
    pre, _ = make_pre_post_processors(policy.config, pretrained_path=str(world.teacher))
    ds = LeRobotDataset(world.repo_id, root=world.dataset_root)
    raw = observation_batch(ds, (0, 37, 101, 150))
    return policy, policy_inputs(policy, pre(raw))


def _visited(policy, inputs, z, steps):
    """The (x_t, t) LeRobot's own sample_actions hands to denoise_step, in order."""
    seen, step = [], policy.model.denoise_step

    def record(*, x_t, timestep, **kw):
        seen.append((x_t.clone(), float(timestep[0])))
        return step(x_t=x_t, timestep=timestep, **kw)

    policy.model.denoise_step = record
    try:
        sample_chunk(policy, inputs, z, steps)
    finally:
        del policy.model.denoise_step
    return seen


@pytest.mark.parametrize("steps", [2, 3])
def test_on_policy_inputs_are_lerobots_own_euler_states(setup, steps):
    policy, inputs = setup
    b = inputs.batch_size
    z = torch.randn(noise_shape(policy, b), generator=torch.Generator().manual_seed(steps))
    a = torch.randn(noise_shape(policy, b), generator=torch.Generator().manual_seed(10 + steps))
    seen = _visited(policy, inputs, z, steps)
    grid = torch.tensor(flow.euler_times(steps), dtype=torch.float32).tolist()  # the times as float32
    assert [t for _, t in seen] == grid
    # Rows at every grid time (t = 1 twice, so one row per time and a repeat).
    times = torch.tensor((flow.euler_times(steps) * b)[:b], dtype=torch.float32)
    z_on = on_policy_noise(policy, inputs, z, a, times, steps)
    for i in range(b):
        k = grid.index(float(times[i]))
        x_t = flow.interpolate(z_on[i:i + 1], a[i:i + 1], times[i:i + 1])
        if k == 0:  # t = 1: the input is z itself, untouched
            assert torch.equal(z_on[i], z[i])
        else:
            torch.testing.assert_close(x_t[0], seen[k][0][i], rtol=0, atol=1e-5)
        # The target velocity lands on a from that state in the time left.
        torch.testing.assert_close(x_t[0] - times[i] * (z_on[i] - a[i]), a[i], rtol=0, atol=1e-5)


def test_forward_trains_on_policy_rows_only_for_k_above_one(world, setup):
    policy, inputs = setup
    b = inputs.batch_size
    z = torch.randn(noise_shape(policy, b), generator=torch.Generator().manual_seed(0))
    a = torch.randn(noise_shape(policy, b), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1.0, 0.5, 0.5, 1.0])
    losses = {}
    for k, mode in ((2, "on-policy"), (2, "straight"), (1, "on-policy")):
        rp = ReflowPolicy.from_teacher(world.teacher, ReflowConfig(student_steps=k, student_inputs=mode, noises_per_frame=1))
        with torch.no_grad():
            losses[k, mode] = rp(None, noise=z, time=t if k == 2 else torch.ones(b), target=a, inputs=inputs)[0]
    with torch.no_grad():
        straight = student_losses(policy, inputs, a, z, t).mean()
        on = student_losses(policy, inputs, a, on_policy_noise(policy, inputs, z, a, t, 2), t).mean()
    torch.testing.assert_close(losses[2, "straight"], straight, rtol=0, atol=0)
    torch.testing.assert_close(losses[2, "on-policy"], on, rtol=0, atol=0)
    assert not torch.equal(on, straight)
    assert ReflowConfig(student_steps=1).on_policy is False and ReflowConfig(student_steps=2).on_policy is True
    assert ReflowConfig.from_dict({"student_steps": 2}).student_inputs == "straight"  # runs recorded before it
