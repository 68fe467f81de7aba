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

    Returns the padded chunk (len(noise), chunk_size, max_action_dim) in normalised action space.
    With ``m`` noises per observation (``len(noise) = m * B``, row ``i * m + j`` for observation
    ``i``), the VLM runs once per observation (``sample_shared``).
    """
    with num_steps(policy, steps):
        if noise.shape[0] == inputs.batch_size:
            return policy.model.sample_actions(*inputs.args(), noise=noise)
        return sample_shared(policy.model, policy.model.embed_prefix(*inputs.args()), noise, steps)


def repeat_rows(t: Tensor, m: int) -> Tensor:
    """Each row of ``t`` ``m`` times in a row (``repeat_interleave`` on dim 0: row ``i * m + j`` is
    row ``i``): the row order of a batch with ``m`` noises per observation. Differentiable; no host
    synchronisation (a CUDA graph records it)."""
    return t if m == 1 else t.repeat_interleave(m, dim=0)


def prefix_cache(model, prefix: tuple[Tensor, Tensor, Tensor], m: int = 1):
    """The VLM pass over an embedded prefix (``embed_prefix``'s output), as ``sample_actions`` makes
    it: ``(prefix_pad_masks, past_key_values)`` for ``denoise_step``, computed once per observation
    and, for ``m`` noises per observation, expanded over them (the pad masks by ``repeat_rows``, the
    KV cache by transformers' own ``DynamicCache.batch_repeat_interleave``; docs/reflow.md#many-noises-per-observation).
    Under autograd the K/V keep their graph (the state token is projected by the trained ``state_proj``)."""
    from lerobot.policies.common.vla_utils import make_att_2d_masks

    prefix_embs, prefix_pad_masks, prefix_att_masks = prefix
    att_2d = make_att_2d_masks(prefix_pad_masks, prefix_att_masks)
    position_ids = torch.cumsum(prefix_pad_masks, dim=1) - 1
    _, past_key_values = model.vlm_with_expert.forward(
        attention_mask=att_2d,
        position_ids=position_ids,
        past_key_values=None,
        inputs_embeds=[prefix_embs, None],
        use_cache=model.config.use_cache,
    )
    if past_key_values is None:
        raise ValueError("SmolVLA's use_cache is off: the cached-prefix path needs the VLM's KV cache")
    if m > 1:
        past_key_values.batch_repeat_interleave(m)
    return repeat_rows(prefix_pad_masks, m), past_key_values


def cache_rows(past_key_values, rows: Tensor):
    """A new KV cache holding ``rows`` of ``past_key_values`` (which ``denoise_step`` then leaves untouched)."""
    from transformers.cache_utils import DynamicCache

    out = DynamicCache()
    for i, layer in enumerate(past_key_values.layers):
        out.update(layer.keys[rows], layer.values[rows], i)
    return out


def _field(model, prefix_pad_masks: Tensor, past_key_values) -> VelocityField:
    def v(x_t: Tensor, t: Tensor) -> Tensor:
        return model.denoise_step(
            x_t=x_t, prefix_pad_masks=prefix_pad_masks, past_key_values=past_key_values, timestep=t
        )

    return v


def velocity_field(policy, inputs: PolicyInputs) -> VelocityField:
    """The policy's velocity field ``(x_t, t) -> v`` for these observations, with the prefix (VLM +
    KV cache) computed once, as ``sample_actions`` does. For path diagnostics (straightness)."""
    model = policy.model
    return _field(model, *prefix_cache(model, model.embed_prefix(*inputs.args())))


def sample_shared(model, prefix: tuple[Tensor, Tensor, Tensor], noise: Tensor, steps: int) -> Tensor:
    """``VLAFlowMatching.sample_actions`` for ``m = len(noise) / B`` noises per observation of an
    embedded prefix of B rows (row ``i * m + j``: observation ``i``, noise ``j``), with the VLM run
    once per observation: the same Euler loop (LeRobot's ``euler_integrate``) of ``denoise_step``
    calls on the expanded KV cache (docs/reflow.md#many-noises-per-observation)."""
    from lerobot.policies.common.flow_matching import euler_integrate

    b = prefix[1].shape[0]
    if noise.shape[0] % b:
        raise ValueError(f"{noise.shape[0]} noise rows are not a multiple of the {b} observations")
    field = _field(model, *prefix_cache(model, prefix, noise.shape[0] // b))
    return euler_integrate(field, noise, steps, rtc_processor=model.rtc_processor, rtc_enabled=model._rtc_enabled())


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
def on_policy_noise(policy, inputs: PolicyInputs, noise: Tensor, data: Tensor, time: Tensor, steps: int,
                    prefix: tuple | None = None) -> Tensor:
    """Noise for ``VLAFlowMatching.forward`` that puts each row with a grid time ``t < 1`` at the
    state the policy's own ``steps``-step Euler sampler reaches from ``z`` at ``t``, with the target
    velocity that lands on the teacher's answer ``a`` from there (``flow.noise_through``);
    docs/reflow.md#on-policy-inputs. Rows at ``t = 1`` (the state is ``z``) and rows off the grid
    keep their noise. The Euler states come from the policy's current weights, no gradient, with the
    prefix computed once as ``sample_actions`` does; ``prefix``: ``prefix_cache``'s output for the
    rows of ``noise`` when the caller has it (it is then not computed again, and left untouched)."""
    grid = torch.tensor(euler_times(steps), dtype=time.dtype, device=time.device)
    k = (time[:, None] == grid[None, :]).float().argmax(-1)  # the grid index of each row's time
    rows = torch.nonzero((time < 1) & (time[:, None] == grid[None, :]).any(-1)).flatten()
    if rows.numel() == 0:
        return noise
    last = int(k[rows].max())
    if prefix is None:
        field = velocity_field(policy, select_rows(inputs, rows))
    else:
        field = _field(policy.model, prefix[0][rows], cache_rows(prefix[1], rows))
    path = euler_path(field, noise[rows], steps, stop_after=last)
    states = torch.stack(path.states)  # (last + 1, rows, chunk, dim)
    x_t = states[k[rows], torch.arange(rows.numel(), device=noise.device)]
    out = noise.clone()
    out[rows] = noise_through(x_t.to(noise.dtype), data[rows], time[rows])
    return out


def shared_prefix_losses(policy, inputs: PolicyInputs, data: Tensor, noise: Tensor, time: Tensor,
                         on_policy_steps: int = 0) -> Tensor:
    """``student_losses`` for ``m = len(noise) / B`` noises per observation (row ``i * m + j``:
    observation ``i``), with the prefix computed once per observation: ``embed_prefix`` and the VLM
    pass on B rows under autograd (the state token comes from the trained ``state_proj``), the KV
    cache expanded over the m noises (differentiable), then LeRobot's ``denoise_step`` (the
    cached-prefix path ``sample_actions`` uses) on all rows, and ``VLAFlowMatching.forward``'s own
    loss: ``x_t = t z + (1 - t) a``, ``u_t = z - a``, squared error per element. The gradients flow
    back through the expansion into one prefix pass; loss and gradients equal ``forward`` on the
    repeated batch up to float rounding (docs/reflow.md#many-noises-per-observation).
    on_policy_steps: a K >= 2 student's on-policy inputs (``on_policy_noise``), on the same prefix."""
    import torch.nn.functional as F

    model, b = policy.model, inputs.batch_size
    if noise.shape[0] % b:
        raise ValueError(f"{noise.shape[0]} noise rows are not a multiple of the {b} observations")
    prefix = prefix_cache(model, model.embed_prefix(*inputs.args()), noise.shape[0] // b)
    if on_policy_steps > 1:
        noise = on_policy_noise(policy, inputs, noise, data, time, on_policy_steps, prefix=prefix)
    time_expanded = time[:, None, None]
    x_t = time_expanded * noise + (1 - time_expanded) * data
    u_t = noise - data
    v_t = model.denoise_step(prefix_pad_masks=prefix[0], past_key_values=prefix[1], x_t=x_t, timestep=time)
    losses = F.mse_loss(u_t, v_t, reduction="none")
    return losses[..., : action_dim(policy)]
