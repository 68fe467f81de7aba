"""The teacher answers several steps' batches in one call (docs/reflow.md#teacher-batches).

A reflow step's teacher sampling (10 Euler steps of the action expert over the prefix KV cache) is a
chain of small operations at a typical batch of 8: on the CPU and on a GPU that batch leaves the
device mostly idle, so one call for 32 rows costs little more than one for 8 (the timings:
docs/reflow.md#teacher-batches). ``next_group`` therefore loads the batches of the next
``group_length`` steps, draws each step's noise from that step's own generator (what a run without
grouping draws), has the teacher answer all their rows in one call, and hands back one ``Prepared``
per step; the student then trains on them one step at a time, exactly as before. The teacher's
answer for a row is the same maths whichever rows share its call, equal to rounding (kernels may
block a batch of 32 otherwise than one of 8; padded tokens sum in another order):
``tests/test_teacher_batch.py``.

Groups never cross a checkpoint step, so a resumed run groups its steps as the uninterrupted run did.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..pairs import NOISE_KEY, TARGET_KEY
from ..smolvla import PolicyInputs, noise_shape, policy_inputs


@dataclass
class Prepared:
    """One step's preprocessed batch, model inputs, noise and target, and the generator its times
    are drawn from next (seeded by the step, already past the noise draw)."""

    batch: dict
    inputs: PolicyInputs
    noise: Tensor
    target: Tensor | None
    generator: torch.Generator


def group_length(step: int, steps: int, save_freq: int, rows_per_step: int, teacher_batch: int) -> int:
    """Steps whose batches the teacher answers together from ``step``: as many as fit ``teacher_batch``
    rows (at least one step), counted from the last checkpoint step, never past the next one."""
    k = max(1, teacher_batch // rows_per_step)
    base = step // save_freq * save_freq if save_freq > 0 else 0
    end = min(steps, base + ((step - base) // k + 1) * k)
    if save_freq > 0:
        end = min(end, base + save_freq)
    return end - step


def cat_inputs(parts: list[PolicyInputs]) -> PolicyInputs:
    """Several batches' inputs as one; language tokens padded (masked) to the longest, as LeRobot's
    tokenizer pads within a batch (``pad_language_to="longest"``)."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.lang_tokens.shape[1] for p in parts)

    def pad(x: Tensor) -> Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1])) if x.shape[1] < width else x

    return PolicyInputs(
        images=[torch.cat(ims) for ims in zip(*(p.images for p in parts), strict=True)],
        img_masks=[torch.cat(ms) for ms in zip(*(p.img_masks for p in parts), strict=True)],
        lang_tokens=torch.cat([pad(p.lang_tokens) for p in parts]),
        lang_masks=torch.cat([pad(p.lang_masks) for p in parts]),
        state=torch.cat([p.state for p in parts]),
    )


def step_seed(seed: int, process: int, step: int) -> int:
    return (seed * 1_000_003 + process * 7_919 + step) % (2**63)


def next_group(run, batches) -> list[Prepared]:
    """Load, preprocess and (online pairs) have the teacher answer the next group of steps of ``run``
    (``loop.Run``: its plan, policy, preprocessor and step) from ``batches``."""
    plan, policy, timer = run.plan, run.policy, run.plan.timer
    acc, rcfg, pairs = plan.accelerator, plan.args.reflow, plan.pairs
    rows = rcfg.batch_size * rcfg.noises_per_frame
    n = 1 if pairs is not None else group_length(run.step, rcfg.steps, plan.args.save_freq, rows, rcfg.teacher_batch)
    group = []
    for i in range(n):
        with timer("data"):
            batch = next(batches)
        # Noise and times from a generator seeded by (seed, process, step): a resumed run draws
        # exactly what the uninterrupted one would have (the global RNG is also used by the loader).
        gen = torch.Generator().manual_seed(step_seed(rcfg.seed, acc.process_index, run.step + i))
        noise = target = None
        if pairs is not None:
            noise, target = batch.pop(NOISE_KEY).to(acc.device), batch.pop(TARGET_KEY).to(acc.device)
        with timer("preprocess"):
            batch = run.preprocessor(batch)
            inputs = policy_inputs(policy.student, batch)  # images prepared once, for teacher and student
        if noise is None:
            bsz = inputs.batch_size * rcfg.noises_per_frame  # (observation, noise) rows
            noise = torch.randn(noise_shape(policy.student, bsz), dtype=torch.float32, generator=gen)
            noise = noise.to(acc.device, non_blocking=True)
        group.append(Prepared(batch, inputs, noise, target, gen))
    if pairs is None:
        with timer("teacher"):
            _, target = policy.make_pairs(cat_inputs([p.inputs for p in group]), torch.cat([p.noise for p in group]))
        for p, t in zip(group, target.split([len(p.noise) for p in group]), strict=True):
            p.target = t
    return group
