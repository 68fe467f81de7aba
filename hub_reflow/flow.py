"""Flow-matching and reflow maths in SmolVLA's conventions. Pure torch: no I/O, no LeRobot.

Conventions (docs/conventions.md; LeRobot ``policies/common/flow_matching.py`` and ``VLAFlowMatching``):

- t = 1 is noise ``z``, t = 0 is data ``a``;
- interpolation ``x_t = t * z + (1 - t) * a``; target velocity ``u = z - a``;
- Euler sampling from t = 1 to t = 0: ``dt = -1/K``, ``t_k = 1 + k*dt``, ``x <- x + dt * v(x, t_k)``.

Velocity fields are callables ``(x_t, t) -> v`` with ``x_t`` of shape ``(B, ...)`` and ``t`` a
float32 tensor of shape ``(B,)``, so everything here can be tested on fields with known solutions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

VelocityField = Callable[[Tensor, Tensor], Tensor]

TIME_SAMPLERS = ("grid", "mixed", "uniform", "beta")
# Share of a batch's times drawn on the student's Euler grid in the ``mixed`` mode (the rest uniform).
MIXED_GRID_SHARE = 0.5


def _bcast(t: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) matching ``like``'s rank."""
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1))).to(like.dtype)


def interpolate(noise: Tensor, data: Tensor, t: Tensor) -> Tensor:
    """``x_t = t * z + (1 - t) * a`` with ``t`` of shape (B,)."""
    tb = _bcast(t, noise)
    return tb * noise + (1 - tb) * data


def target_velocity(noise: Tensor, data: Tensor) -> Tensor:
    """The straight-path velocity ``u = z - a`` (constant along the path)."""
    return noise - data


def noise_through(x_t: Tensor, data: Tensor, t: Tensor) -> Tensor:
    """The noise ``z'`` whose straight path to ``data`` passes through ``x_t`` at time ``t`` (0 < t <= 1).

    ``interpolate(z', data, t) == x_t`` and ``target_velocity(z', data) == (x_t - data) / t``: the
    constant velocity that lands on ``data`` at t = 0 from ``x_t``. So a loss written for straight
    paths (LeRobot's ``VLAFlowMatching.forward`` takes noise, data and time) trains the field at a
    given state (docs/reflow.md#on-policy-inputs)."""
    tb = _bcast(t, x_t)
    return (x_t - (1 - tb) * data) / tb


def sample_time(kind: str, batch_size: int, device: torch.device | str = "cpu",
                generator: torch.Generator | None = None, grid_steps: int = 1) -> Tensor:
    """Training times, float32 of shape (B,), drawn on the CPU (from ``generator`` when given).

    ``grid``: uniformly among the times a ``grid_steps``-step Euler sampler evaluates the field at,
    ``1, 1 - 1/K, ..., 1/K`` (:func:`euler_times`); the only times the student is ever asked about
    (docs/fidelity.md). ``mixed``: each time on that grid with probability ``MIXED_GRID_SHARE``, else
    uniform. ``uniform``: U[0, 1], as in Rectified Flow. ``beta``: SmolVLA's own training
    distribution, ``Beta(1.5, 1) * 0.999 + 0.001`` (more weight near t = 1, the noise end), drawn by
    inverting its CDF ``x ** 1.5`` so that a generator can drive it.
    """
    if kind not in TIME_SAMPLERS:
        raise ValueError(f"time sampling must be one of {TIME_SAMPLERS}, got {kind!r}")
    u = torch.rand(batch_size, dtype=torch.float32, generator=generator)
    if kind == "beta":
        u = u ** (1 / 1.5) * 0.999 + 0.001
    elif kind in ("grid", "mixed"):
        grid = torch.tensor(euler_times(grid_steps), dtype=torch.float32)
        on_grid = grid[torch.randint(grid_steps, (batch_size,), generator=generator)]
        if kind == "grid":
            u = on_grid
        else:
            pick = torch.rand(batch_size, generator=generator) < MIXED_GRID_SHARE
            u = torch.where(pick, on_grid, u)
    return u.to(device, non_blocking=True)  # no wait for the device's queued work


def euler_times(num_steps: int) -> list[float]:
    """The times at which an Euler sampler of ``num_steps`` evaluates the field: 1, 1 - 1/K, ..."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    dt = -1.0 / num_steps
    return [1.0 + k * dt for k in range(num_steps)]


@dataclass
class EulerPath:
    """One Euler integration from noise to data.

    states: K + 1 tensors of the sample's shape; ``states[0]`` is the noise, ``states[-1]`` the result.
    velocities: K tensors, the field evaluated at ``(states[k], times[k])``.
    times: K floats, ``1 + k * dt``.
    """

    states: list[Tensor]
    velocities: list[Tensor]
    times: list[float]

    @property
    def result(self) -> Tensor:
        return self.states[-1]


def euler_path(velocity: VelocityField, noise: Tensor, num_steps: int, stop_after: int | None = None) -> EulerPath:
    """Integrate ``dx/dt = v`` from t = 1 to t = 0 with ``num_steps`` Euler steps, keeping the path
    (only its first ``stop_after`` steps when given)."""
    times = euler_times(num_steps)[:stop_after]
    dt = -1.0 / num_steps
    x = noise
    states, velocities = [x], []
    for t in times:
        t_vec = torch.full((noise.shape[0],), t, dtype=torch.float32, device=noise.device)
        v = velocity(x, t_vec)
        x = x + dt * v
        states.append(x)
        velocities.append(v)
    return EulerPath(states=states, velocities=velocities, times=times)


def euler_sample(velocity: VelocityField, noise: Tensor, num_steps: int) -> Tensor:
    """The end point of :func:`euler_path` (what ``sample_actions`` returns)."""
    return euler_path(velocity, noise, num_steps).result


def reflow_loss(velocity_pred: Tensor, noise: Tensor, data: Tensor, action_dim: int | None = None) -> Tensor:
    """Mean squared error between the predicted velocity and ``z - a`` over the real action dims.

    Shapes ``(B, chunk, max_action_dim)``; only the first ``action_dim`` entries of the last axis
    count, as in ``SmolVLAPolicy.forward`` (the rest are padding).
    """
    err = (velocity_pred - target_velocity(noise, data)) ** 2
    if action_dim is not None:
        err = err[..., :action_dim]
    return err.mean()


def straightness(path: EulerPath, action_dim: int | None = None) -> Tensor:
    """Rectified Flow's straightness ``S = E_t E ||(z - x_0) - v(x_t, t)||^2`` along a sampled path.

    In SmolVLA's time convention the straight-line velocity from the end point ``x_0`` to the noise
    ``z`` is ``z - x_0``; a perfectly straight flow has ``S = 0`` (and then 1 Euler step is exact).
    The expectation over t is the mean over the path's evaluation times; returns shape (B,).
    """
    z, x0 = path.states[0], path.result
    straight = target_velocity(z, x0)
    terms = []
    for v in path.velocities:
        d = (straight - v) ** 2
        if action_dim is not None:
            d = d[..., :action_dim]
        terms.append(d.flatten(1).sum(-1))
    return torch.stack(terms).mean(0)
