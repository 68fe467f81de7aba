"""The SmolVLA adapter: the few calls into LeRobot's ``SmolVLAPolicy`` / ``VLAFlowMatching`` that
reflow needs. Nothing here changes LeRobot; it calls ``sample_actions`` and ``forward`` with given
noise and time, exactly as LeRobot's own training and inference do.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from .flow import VelocityField, euler_path, euler_times, noise_through


@dataclass
class PolicyInputs:
    """A preprocessed observation batch in the form ``VLAFlowMatching`` takes.

    images / img_masks: one (B, 3, H, W) float tensor in [-1, 1] and one (B,) bool mask per camera;
    lang_tokens / lang_masks: (B, L) token ids and attention mask; state: (B, max_state_dim).
    """

    images: list[Tensor]
    img_masks: list[Tensor]
    lang_tokens: Tensor
    lang_masks: Tensor
    state: Tensor

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]

    def args(self) -> tuple:
        return (self.images, self.img_masks, self.lang_tokens, self.lang_masks, self.state)


def policy_inputs(policy, batch: dict) -> PolicyInputs:
    """What ``SmolVLAPolicy.forward`` / ``_get_action_chunk`` hand to the model, from a batch that
    went through the policy's preprocessor (normalised, tokenised, on device)."""
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    images, img_masks = policy.prepare_images(batch)
    return PolicyInputs(
        images=images,
        img_masks=img_masks,
        lang_tokens=batch[OBS_LANGUAGE_TOKENS],
        lang_masks=batch[OBS_LANGUAGE_ATTENTION_MASK],
        state=policy.prepare_state(batch),
    )


def noise_shape(policy, batch_size: int) -> tuple[int, int, int]:
    """(B, chunk_size, max_action_dim), the shape SmolVLA samples its noise in."""
    return (batch_size, policy.config.chunk_size, policy.config.max_action_dim)


def action_dim(policy) -> int:
    return policy.config.action_feature.shape[0]


@contextmanager
def num_steps(policy, steps: int):
    """Run ``sample_actions`` with ``steps`` Euler steps (it reads ``config.num_steps``)."""
    old = policy.config.num_steps
    policy.config.num_steps = steps
    try:
        yield
    finally:
        policy.config.num_steps = old


@torch.no_grad()
def sample_chunk(policy, inputs: PolicyInputs, noise: Tensor, steps: int) -> Tensor:
    """LeRobot's own ``VLAFlowMatching.sample_actions`` with given noise and step count.

    Returns the padded chunk (B, chunk_size, max_action_dim) in normalised action space.
    """
    with num_steps(policy, steps):
        return policy.model.sample_actions(*inputs.args(), noise=noise)


def velocity_field(policy, inputs: PolicyInputs) -> VelocityField:
    """The policy's velocity field ``(x_t, t) -> v`` for these observations, with the prefix (VLM +
    KV cache) computed once, as ``sample_actions`` does. For path diagnostics (straightness)."""
    from lerobot.policies.common.vla_utils import make_att_2d_masks

    model = policy.model
    prefix_embs, prefix_pad_masks, prefix_att_masks = model.embed_prefix(*inputs.args())
    att_2d = make_att_2d_masks(prefix_pad_masks, prefix_att_masks)
    position_ids = torch.cumsum(prefix_pad_masks, dim=1) - 1
    _, past_key_values = model.vlm_with_expert.forward(
        attention_mask=att_2d,
        position_ids=position_ids,
        past_key_values=None,
        inputs_embeds=[prefix_embs, None],
        use_cache=model.config.use_cache,
    )

    def v(x_t: Tensor, t: Tensor) -> Tensor:
        return model.denoise_step(
            x_t=x_t, prefix_pad_masks=prefix_pad_masks, past_key_values=past_key_values, timestep=t
        )

    return v


def pad_to_data(chunk: Tensor, real_dim: int) -> Tensor:
    """Make a teacher chunk look like LeRobot's training data: real dims kept, padding set to 0
    (docs/reflow.md#pairs).

    Why: in ``lerobot-train`` the data ``a`` is the real action padded with zeros to
    ``max_action_dim``, so along the path the padded entries of ``x_t`` are ``t * z``. Keeping that
    here means the student sees, at every t, inputs distributed exactly as the teacher saw them in
    training; at t = 1 (the only time a 1-step student evaluates) its input is ``z`` itself,
    identical to inference. The teacher's own padded outputs are unconstrained by its training
    (the loss ignores them), so they would be noise as targets. The loss, as in
    ``SmolVLAPolicy.forward``, covers the real dims only.
    """
    data = torch.zeros_like(chunk)
    data[..., :real_dim] = chunk[..., :real_dim]
    return data


def student_losses(policy, inputs: PolicyInputs, data: Tensor, noise: Tensor, time: Tensor) -> Tensor:
    """``VLAFlowMatching.forward`` with given noise and time: per-element squared velocity error
    (B, chunk_size, real action dims) on ``x_t = t z + (1 - t) a`` against ``z - a``."""
    losses = policy.model.forward(*inputs.args(), data, noise, time)
    return losses[..., : action_dim(policy)]


@torch.no_grad()
def teacher_pairs(teacher, inputs, noise: Tensor, teacher_steps: int, real_dim: int, sampler=None) -> tuple[Tensor, Tensor]:
    """The reflow training pair for ``noise``: ``(z, a)`` with ``a`` the teacher's ``teacher_steps``
    Euler output for ``z``, float32, padded like LeRobot's training data (``pad_to_data``). Used by
    online training (``ReflowPolicy.make_pairs``) and by the cached pairs (``pairs.make_pairs``) alike.

    sampler: a ``fastpath.TeacherSampler`` of this teacher and step count (else LeRobot's eager
    ``sample_actions``)."""
    if sampler is not None:
        if sampler.policy is not teacher or sampler.steps != teacher_steps:
            raise ValueError("the sampler was made for another teacher or step count")
        chunk = sampler(inputs, noise)
    else:
        chunk = sample_chunk(teacher, inputs, noise, teacher_steps)
    return noise, pad_to_data(chunk.float(), real_dim)


def select_rows(inputs: PolicyInputs, rows: Tensor) -> PolicyInputs:
    """The observations of ``rows`` (an index tensor) only."""
    return PolicyInputs(
        images=[im[rows] for im in inputs.images], img_masks=[m[rows] for m in inputs.img_masks],
        lang_tokens=inputs.lang_tokens[rows], lang_masks=inputs.lang_masks[rows], state=inputs.state[rows],
    )


@torch.no_grad()
def on_policy_noise(policy, inputs: PolicyInputs, noise: Tensor, data: Tensor, time: Tensor, steps: int) -> Tensor:
    """Noise for ``VLAFlowMatching.forward`` that puts each row with a grid time ``t < 1`` at the
    state the policy's own ``steps``-step Euler sampler reaches from ``z`` at ``t``, with the target
    velocity that lands on the teacher's answer ``a`` from there (``flow.noise_through``);
    docs/reflow.md#on-policy-inputs. Rows at ``t = 1`` (the state is ``z``) and rows off the grid
    keep their noise. The Euler states come from the policy's current weights, no gradient, with the
    prefix computed once as ``sample_actions`` does."""
    grid = torch.tensor(euler_times(steps), dtype=time.dtype, device=time.device)
    k = (time[:, None] == grid[None, :]).float().argmax(-1)  # the grid index of each row's time
    rows = torch.nonzero((time < 1) & (time[:, None] == grid[None, :]).any(-1)).flatten()
    if rows.numel() == 0:
        return noise
    last = int(k[rows].max())
    path = euler_path(velocity_field(policy, select_rows(inputs, rows)), noise[rows], steps, stop_after=last)
    states = torch.stack(path.states)  # (last + 1, rows, chunk, dim)
    x_t = states[k[rows], torch.arange(rows.numel(), device=noise.device)]
    out = noise.clone()
    out[rows] = noise_through(x_t.to(noise.dtype), data[rows], time[rows])
    return out
