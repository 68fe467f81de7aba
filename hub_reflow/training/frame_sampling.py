"""Training frames drawn by the teacher's spread (docs/reflow.md#frames-by-spread).

A few-step student has to learn the teacher's map from noise to action chunk. Where the teacher's
answer hardly depends on the noise (one mode: most frames of most robot datasets) that map is
nearly a constant, which the student, a copy of the teacher, already has; where the answer depends
on it (several modes: a side to pass an obstacle, which object to grasp) the map is steep and the
student needs many (frame, noise) samples to learn where it switches. Drawing frames uniformly spends
most of the teacher's answers on the first kind.

Before training, the teacher answers ``SPREAD_DRAWS`` noise draws of each training frame (of every
``stride``-th frame of an episode where the dataset is large: ``prepass_stride``; the others take
their nearest scored frame's value, earlier in the same episode). A frame's spread is the variance
of those answers over the draws, averaged over the chunk's real action values (normalised units, the
loss's). Each epoch then draws as many frames as there are, with replacement, frame ``i`` with
probability ``SPREAD_SHARE * spread_i / sum(spread) + (1 - SPREAD_SHARE) / n``: a share of uniform
draws keeps every frame in training. The draws of an epoch are a pure function of (seed, epoch), as
in LeRobot's ``EpisodeAwareSampler``, whose ``state_dict`` interface ``SpreadSampler`` keeps: a
resumed run continues sample-exactly (``compute_sampler_state``), with the spreads it saved.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..smolvla import noise_shape, policy_inputs

SPREAD_DRAWS = 4  # noise draws per scored frame
SPREAD_SHARE = 0.8  # share of the draws made by spread (the rest uniform)
PREPASS_SHARE = 0.25  # the pre-pass answers at most this share of the rows the run's own teacher calls answer


def episode_frames(from_index, to_index, episodes: list[int] | None, absolute_to_relative: dict | None) -> list[list[int]]:
    """The dataset indices of each training episode's frames, in order (the frames LeRobot's
    ``EpisodeAwareSampler`` draws from, with the same arguments)."""
    used = range(len(from_index)) if episodes is None else sorted(int(e) for e in episodes)
    return [[absolute_to_relative[i] if absolute_to_relative is not None else i
             for i in range(int(from_index[e]), int(to_index[e]))] for e in used]


def prepass_stride(num_frames: int, steps: int, rows_per_step: int) -> int:
    """Every how many frames of an episode the pre-pass scores: all of them where that costs at most
    ``PREPASS_SHARE`` of the run's own teacher rows (``steps * rows_per_step``)."""
    budget = PREPASS_SHARE * steps * rows_per_step
    return max(1, math.ceil(num_frames * SPREAD_DRAWS / budget))


@torch.no_grad()
def frame_spreads(policy, preprocessor, dataset, episodes: list[list[int]], stride: int, batch_size: int,
                  seed: int, collate) -> tuple[Tensor, dict]:
    """The spread of every frame of ``episodes`` (flattened in their order), float64 on the CPU, and
    what the pre-pass did. ``policy``: the ``ReflowPolicy`` (its teacher answers, as in training)."""
    start = time.perf_counter()
    scored = [(e, k) for e, frames in enumerate(episodes) for k in range(0, len(frames), stride)]
    g = torch.Generator().manual_seed(seed)
    real_dim = policy.student.config.action_feature.shape[0]
    values = []
    for lo in range(0, len(scored), batch_size):
        part = scored[lo:lo + batch_size]
        batch = preprocessor(collate([dataset[episodes[e][k]] for e, k in part]))
        inputs = policy_inputs(policy.student, batch)
        noise = torch.randn(noise_shape(policy.student, len(part) * SPREAD_DRAWS), dtype=torch.float32, generator=g)
        _, answers = policy.make_pairs(inputs, noise.to(inputs.state.device))  # row i * D + j: frame i
        answers = answers[..., :real_dim].float().reshape(len(part), SPREAD_DRAWS, *answers.shape[1:-1], real_dim)
        values.append(answers.var(dim=1, unbiased=False).flatten(1).mean(dim=1).double().cpu())
    per_scored = dict(zip(scored, torch.cat(values).tolist(), strict=True)) if values else {}
    spread = torch.tensor([per_scored[(e, k // stride * stride)] for e, frames in enumerate(episodes)
                           for k in range(len(frames))], dtype=torch.float64)
    return spread, {"draws": SPREAD_DRAWS, "stride": stride, "frames": len(spread), "frames_scored": len(scored),
                    "share": SPREAD_SHARE, "seconds": round(time.perf_counter() - start, 3)}


class SpreadSampler:
    """Frames drawn with replacement by ``probabilities(spread)``, ``len(frames)`` draws an epoch;
    LeRobot's ``EpisodeAwareSampler`` interface (``state_dict``, ``load_state_dict``, ``set_epoch``)
    and its per-epoch generator (seeded by ``(seed, epoch)``)."""

    def __init__(self, frames: list[int], spread: Tensor, seed: int):
        if len(frames) != len(spread):
            raise ValueError(f"{len(frames)} frames but {len(spread)} spreads")
        self.frames, self.spread, self.seed = list(frames), spread.double(), seed
        self.p = probabilities(self.spread)
        self._epoch = 0
        self._start_index = 0

    def _generator(self, epoch: int) -> torch.Generator:
        epoch_seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, dtype=np.uint64)[0])
        return torch.Generator().manual_seed(epoch_seed)

    def __iter__(self):
        epoch, start = self._epoch, self._start_index
        self._epoch += 1
        self._start_index = 0
        picks = torch.multinomial(self.p, len(self.frames), replacement=True, generator=self._generator(epoch))
        return iter([self.frames[int(i)] for i in picks[start:]])

    def __len__(self) -> int:
        return len(self.frames)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "start_index": self._start_index}

    def load_state_dict(self, state: dict) -> None:
        self._epoch = state["epoch"]
        self._start_index = state["start_index"]


def probabilities(spread: Tensor) -> Tensor:
    """``SPREAD_SHARE * spread / sum + (1 - SPREAD_SHARE) / n`` (uniform where every spread is 0)."""
    n = len(spread)
    total = float(spread.sum())
    by_spread = spread.double() / total if total > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)
    return SPREAD_SHARE * by_spread + (1 - SPREAD_SHARE) / n


def frame_sampler(policy, preprocessor, dataset, rcfg, accelerator, collate, saved_spread: Tensor | None = None):
    """The run's sampler over ``dataset``'s frames: LeRobot's shuffled ``EpisodeAwareSampler`` for
    ``frame_sampling = "uniform"``, else a ``SpreadSampler`` by the spreads of the main process's
    pre-pass (shared with every process), or by ``saved_spread`` (the run resumed: those it saved).
    Returns the sampler, the spreads (None: uniform) and the pre-pass record (None: none ran)."""
    from lerobot.datasets import EpisodeAwareSampler

    bounds = (dataset.meta.episodes["dataset_from_index"], dataset.meta.episodes["dataset_to_index"])
    if rcfg.frame_sampling == "uniform":
        return EpisodeAwareSampler(*bounds, episode_indices_to_use=dataset.episodes, shuffle=True, seed=rcfg.seed,
                                   absolute_to_relative_idx=dataset.absolute_to_relative_idx), None, None
    episodes = episode_frames(*bounds, dataset.episodes, dataset.absolute_to_relative_idx)
    flat = [i for frames in episodes for i in frames]
    if saved_spread is not None:
        if len(saved_spread) != len(flat):
            raise UserError(f"--resume: the run's saved frame spreads cover {len(saved_spread)} frames, the dataset has "
                            f"{len(flat)} training frames; resume with the dataset the run was started with")
        return SpreadSampler(flat, saved_spread, rcfg.seed), saved_spread, None
    found = [None, None]
    if accelerator.is_main_process:
        stride = prepass_stride(len(flat), rcfg.steps, rcfg.batch_size * rcfg.noises_per_frame)
        rows = max(rcfg.teacher_batch, rcfg.batch_size * rcfg.noises_per_frame)  # the run's own teacher calls' rows
        found = list(frame_spreads(policy, preprocessor, dataset, episodes, stride, max(1, rows // SPREAD_DRAWS),
                                   rcfg.seed, collate))
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(found)
    spread, record = found
    return SpreadSampler(flat, spread, rcfg.seed), spread, record
