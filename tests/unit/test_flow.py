"""The flow maths against LeRobot's own sampler, on velocity fields with known solutions."""

import math

import pytest
import torch
from lerobot.policies.common.flow_matching import euler_integrate

from hub_reflow import flow


def test_constant_velocity_is_exact_in_one_step():
    # dx/dt = z - a integrates from x(1) = z to x(0) = a exactly, whatever the step count.
    z, a = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    field = lambda x, t: flow.target_velocity(z, a)  # noqa: E731
    for k in (1, 2, 10):
        torch.testing.assert_close(flow.euler_sample(field, z, k), a, rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 3, 10])
def test_euler_matches_lerobot_bit_for_bit(steps):
    # A field depending on x and t: results must be identical to LeRobot's euler_integrate.
    z = torch.randn(4, 6, 3)
    field = lambda x, t: torch.sin(x) * t[:, None, None] + x**2 * 0.1  # noqa: E731
    ours = flow.euler_sample(field, z, steps)
    theirs = euler_integrate(field, z, steps)
    assert torch.equal(ours, theirs)


def test_euler_times_follow_smolvla_convention():
    seen = []
    z = torch.zeros(2, 1, 1)
    euler_integrate(lambda x, t: seen.append(t.clone()) or torch.zeros_like(x), z, 4)
    assert [float(t[0]) for t in seen] == flow.euler_times(4) == [1.0, 0.75, 0.5, 0.25]


def test_linear_ode_converges_to_known_solution():
    # dx/dt = x, integrated backwards from t=1 to 0: x(0) = x(1) * e^-1. Euler error is O(1/K).
    z = torch.ones(1, 1, 1, dtype=torch.float64)
    field = lambda x, t: x  # noqa: E731
    errs = [abs(float(flow.euler_sample(field, z, k)) - math.exp(-1)) for k in (10, 100, 1000)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3
    assert float(flow.euler_sample(field, z, 1)) == 0.0  # one step: 1 + (-1) * 1


def test_interpolation_and_target():
    z, a = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    t = torch.tensor([0.0, 1.0])
    x = flow.interpolate(z, a, t)
    assert torch.equal(x[0], a[0]) and torch.equal(x[1], z[1])
    assert torch.equal(flow.target_velocity(z, a), z - a)


def test_straightness_zero_for_straight_flow_and_positive_otherwise():
    z, a = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    straight = flow.euler_path(lambda x, t: z - a, z, 5)
    assert torch.allclose(flow.straightness(straight), torch.zeros(3), atol=1e-10)
    curved = flow.euler_path(lambda x, t: (z - a) * (2 * t[:, None, None]), z, 5)
    assert (flow.straightness(curved) > 0.01).all()


def test_reflow_loss_counts_real_dims_only():
    z, a = torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)
    v = torch.zeros(1, 2, 4)
    v[..., 2:] = 100.0  # error in the padded dims only
    assert flow.reflow_loss(v, z, a, action_dim=2) == 0
    assert flow.reflow_loss(v, z, a) > 0


def test_time_samplers():
    torch.manual_seed(0)
    u = flow.sample_time("uniform", 10000)
    b = flow.sample_time("beta", 10000)
    assert u.dtype == b.dtype == torch.float32
    assert 0 <= float(u.min()) and float(u.max()) <= 1 and abs(float(u.mean()) - 0.5) < 0.02
    # Beta(1.5, 1) has mean 0.6; SmolVLA maps it to [0.001, 1].
    assert float(b.min()) >= 0.001 and abs(float(b.mean()) - (0.6 * 0.999 + 0.001)) < 0.02
    with pytest.raises(ValueError, match="time sampling"):
        flow.sample_time("normal", 3)


@pytest.mark.parametrize("steps", [1, 2, 3, 7])
def test_grid_times_are_the_times_lerobots_sampler_asks_for(steps):
    # The times LeRobot's own Euler loop evaluates the field at, bit for bit.
    asked = []
    euler_integrate(lambda x, t: (asked.append(t[0].item()), torch.zeros_like(x))[1], torch.zeros(2, 3), steps)
    g = torch.Generator().manual_seed(0)
    drawn = flow.sample_time("grid", 6000, generator=g, grid_steps=steps)
    assert drawn.dtype == torch.float32
    values, counts = torch.unique(drawn, return_counts=True)
    assert sorted(values.tolist()) == sorted(torch.tensor(asked, dtype=torch.float32).tolist())
    # Each grid time about equally often (6000 / steps each; 5 standard deviations).
    expected = 6000 / steps
    assert all(abs(c - expected) <= 5 * math.sqrt(expected) + 1 for c in counts.tolist())


def test_mixed_times_put_the_documented_share_on_the_grid():
    g = torch.Generator().manual_seed(1)
    n = 20000
    t = flow.sample_time("mixed", n, generator=g, grid_steps=2)
    on_grid = (t == 1.0) | (t == 0.5)
    share = float(on_grid.float().mean())
    sd = math.sqrt(flow.MIXED_GRID_SHARE * (1 - flow.MIXED_GRID_SHARE) / n)
    assert abs(share - flow.MIXED_GRID_SHARE) < 5 * sd
    rest = t[~on_grid]
    assert float(rest.min()) >= 0 and float(rest.max()) < 1 and abs(float(rest.mean()) - 0.5) < 0.02


def test_time_samplers_follow_the_generator():
    for kind in flow.TIME_SAMPLERS:
        a = flow.sample_time(kind, 16, generator=torch.Generator().manual_seed(3), grid_steps=4)
        b = flow.sample_time(kind, 16, generator=torch.Generator().manual_seed(3), grid_steps=4)
        assert torch.equal(a, b)


def test_noise_through_puts_the_straight_path_at_the_given_state():
    # z' = (x - (1 - t) a) / t: the straight path from z' to a passes x at t, and its velocity is the
    # one that lands on a from x in the time left; at t = 1 it is x itself.
    torch.manual_seed(0)
    x, a = torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 5, 3, dtype=torch.float64)
    t = torch.tensor([1.0, 0.5, 0.25, 0.75], dtype=torch.float64)
    z = flow.noise_through(x, a, t)
    torch.testing.assert_close(flow.interpolate(z, a, t), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(flow.target_velocity(z, a), (x - a) / t[:, None, None], rtol=0, atol=1e-12)
    assert torch.equal(z[0], x[0])
    # One Euler step of that velocity from x at t over the time t lands exactly on a.
    torch.testing.assert_close(x - t[:, None, None] * flow.target_velocity(z, a), a, rtol=0, atol=1e-12)


def test_euler_path_stop_after_is_the_start_of_the_full_path():
    z = torch.randn(2, 3, 2)
    field = lambda x, t: torch.cos(x) * t[:, None, None]  # noqa: E731
    full, part = flow.euler_path(field, z, 4), flow.euler_path(field, z, 4, stop_after=2)
    assert part.times == [1.0, 0.75] and len(part.states) == 3
    assert all(torch.equal(p, f) for p, f in zip(part.states, full.states[:3]))
