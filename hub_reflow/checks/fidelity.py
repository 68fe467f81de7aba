"""Fidelity and latency of a student against its teacher, through LeRobot's own inference path
(``predict_action_chunk`` + the checkpoint's saved processors), with shared noise."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from ..smolvla import num_steps


@dataclass
class Row:
    name: str  # e.g. "teacher @10"
    steps: int
    rmse: float  # vs the reference (teacher at its own step count, same noise), real action units
    latency_ms: float  # fastest wall time of one chunk at batch size 1 (``_latencies_ms``)


def observation_batch(dataset, indices: list[int]) -> dict:
    """Frames from a LeRobotDataset stacked into one batch of observations (actions dropped)."""
    frames = [dataset[i] for i in indices]
    batch = {}
    for key in frames[0]:
        if key.startswith("observation."):
            batch[key] = torch.stack([f[key] for f in frames])
    batch["task"] = [f["task"] for f in frames]
    return batch


@torch.no_grad()
def chunk(policy, preprocessor, postprocessor, raw_batch: dict, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """Action chunk (B, chunk, action_dim) in real units, via LeRobot's own inference path."""
    obs = preprocessor(dict(raw_batch))
    policy.reset()
    with num_steps(policy, steps):
        actions = policy.predict_action_chunk(obs, noise=noise.to(obs["observation.state"].device))
    return postprocessor(actions)


def _latencies_ms(runs: list[tuple], raw_one: dict, repeats: int) -> list[float]:
    """Chunk latency of each ``(policy, preprocessor, noise_one, steps)`` at batch size 1: one
    warm-up call each, then ``repeats`` rounds calling each in turn; each figure is its fastest
    call. Alternating rounds and the minimum make the ratios between rows hold on a shared
    machine (other processes only ever add time; a burst hits one round, not one row)."""
    if repeats == 0:  # not asked for
        return [float("nan")] * len(runs)
    prepared = []
    for policy, preprocessor, noise, steps in runs:
        obs = preprocessor(dict(raw_one))
        prepared.append((policy, obs, noise.to(obs["observation.state"].device), steps))
    best = [float("inf")] * len(runs)
    with torch.no_grad():
        for r in range(repeats + 1):  # round 0 warms up and is discarded
            for i, (policy, obs, noise, steps) in enumerate(prepared):
                with num_steps(policy, steps):
                    t0 = time.perf_counter()
                    policy.predict_action_chunk(dict(obs), noise=noise)
                    if obs["observation.state"].is_cuda:
                        torch.cuda.synchronize()
                    elapsed = time.perf_counter() - t0
                if r:
                    best[i] = min(best[i], elapsed)
    return [1000 * t for t in best]


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.float() - b.float()) ** 2).mean().sqrt())


def compare(
    teacher, teacher_pre, teacher_post, student, student_pre, student_post, raw_batch: dict, *,
    teacher_steps: int, student_steps: int, seed: int = 0, latency_repeats: int = 5,
) -> tuple[list[Row], dict]:
    """Teacher at its steps (reference), the teacher with other noise (its own spread), the teacher
    at the student's steps, and the student at its steps, all against the reference under shared
    noise. Returns the rows and the raw chunks."""
    b = len(raw_batch["task"])
    cfg = teacher.config
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, cfg.chunk_size, cfg.max_action_dim, generator=g)
    z_other = torch.randn(b, cfg.chunk_size, cfg.max_action_dim, generator=g)
    ref = chunk(teacher, teacher_pre, teacher_post, raw_batch, z, teacher_steps)
    runs = {
        f"teacher @{teacher_steps} (other noise)": (teacher, teacher_pre, teacher_post, z_other, teacher_steps),
        f"teacher @{student_steps}": (teacher, teacher_pre, teacher_post, z, student_steps),
        f"student @{student_steps}": (student, student_pre, student_post, z, student_steps),
    }
    one = {k: v[:1] for k, v in raw_batch.items()}
    chunks = {"reference": ref}
    errors = {}
    for name, (pol, pre, post, noise, steps) in runs.items():
        chunks[name] = chunk(pol, pre, post, raw_batch, noise, steps)
        errors[name] = rmse(chunks[name], ref)
    timed = {f"teacher @{teacher_steps}": (teacher, teacher_pre, z[:1], teacher_steps),
             **{name: (pol, pre, noise[:1], steps) for name, (pol, pre, _, noise, steps) in runs.items()}}
    latency = dict(zip(timed, _latencies_ms(list(timed.values()), one, latency_repeats)))
    rows = [Row(f"teacher @{teacher_steps}", teacher_steps, 0.0, latency[f"teacher @{teacher_steps}"])]
    rows += [Row(name, steps, errors[name], latency[name]) for name, (_, _, _, _, steps) in runs.items()]
    return rows, chunks


# The fidelity rule (docs/fidelity.md). The student's action error against the teacher (shared
# noise) must be at most MAX_RATIO times the error of the teacher itself run at the student's step
# count: what a user gets for free by setting ``num_steps`` on the teacher. 0.5 in RMSE is a quarter
# of the squared error: a student that is not clearly better than that is not worth its name, and
# an untrained copy (exactly 1.0) or a damaged expert (> 1) is far from it, while trained students
# are well below it (docs/fidelity.md#3-the-fidelity-rule). The student must also stay within the
# teacher's own spread (the teacher against itself with other noise): further than that it acts
# unlike any sample of the teacher. FLOOR: when the teacher at the student's step count is already
# within FLOOR x the dataset's action standard deviation (RMS over action dims) of itself at its own
# step count, there is nothing left to distil; a student that close passes.
MAX_RATIO = 0.5
FLOOR = 0.02


@dataclass
class Verdict:
    passed: bool
    threshold: float  # the largest student RMSE that passes
    ratio: float  # student RMSE / teacher RMSE at the student's step count
    reason: str


def fidelity_verdict(student_rmse: float, teacher_rmse_at_student_steps: float, teacher_spread_rmse: float,
                     action_scale: float | None = None, max_ratio: float = MAX_RATIO) -> Verdict:
    """The one fidelity rule, for verify, canonicalize, training's final measurement and the card."""
    e_s, e_k, spread = student_rmse, teacher_rmse_at_student_steps, teacher_spread_rmse
    floor = FLOOR * action_scale if action_scale else 0.0
    bar = min(max_ratio * e_k, spread)
    threshold = max(bar, floor)
    ratio = e_s / e_k if e_k > 0 else (0.0 if e_s == 0 else float("inf"))
    if not math.isfinite(e_s):
        return Verdict(False, threshold, ratio, "the student's actions are not finite")
    numbers = f"student RMSE {e_s:.4f}, teacher at the student's step count {e_k:.4f}, teacher's own spread {spread:.4f}"
    if e_s <= threshold:
        why = (f"within the floor {FLOOR} x action std = {floor:.4f} (the teacher at the student's step count is "
               f"already that close)") if threshold == floor and floor > bar else \
            f"x{ratio:.2f} of the teacher's own error at the student's step count (<= {max_ratio})"
        return Verdict(True, threshold, ratio, why)
    if e_s > spread and spread < max_ratio * e_k:
        why = f"further from the teacher than the teacher's own spread ({numbers})"
    else:
        why = (f"x{ratio:.2f} of the teacher's own error at the student's step count (> {max_ratio}; {numbers}): "
               "not clearly better than running the teacher with as few steps")
    return Verdict(False, threshold, ratio, why)


def recorded_verdict(evaluation: dict):
    """The fidelity verdict of the recorded measurement, by the rule verify applies (None: none recorded)."""
    keys = ("student_rmse", "teacher_rmse_at_student_steps", "teacher_spread_rmse")
    if not all(isinstance(evaluation.get(k), (int, float)) for k in keys):
        return None
    return fidelity_verdict(*(evaluation[k] for k in keys), evaluation.get("action_scale"))


def action_scale(stats: dict | None) -> float | None:
    """RMS over action dims of the dataset's action standard deviation (real units), or None."""
    std = ((stats or {}).get("action") or {}).get("std")
    if std is None:
        return None
    std = torch.as_tensor(std, dtype=torch.float64)
    return float((std**2).mean().sqrt())


def markdown_table(rows: list[Row]) -> str:
    ref_lat = rows[0].latency_ms
    lines = [
        "| sampler | Euler steps | action RMSE vs teacher@10, shared noise | chunk latency (ms) | latency / teacher |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.name} | {r.steps} | {r.rmse:.4f} | {r.latency_ms:.1f} | {r.latency_ms / ref_lat:.2f} |")
    return "\n".join(lines)


def hardware(device: torch.device | str | None = None) -> str:
    """What ran the measurement, in words (for the card and the benchmarks): the device the
    policies are on (default: CUDA when visible)."""
    import os
    import platform

    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


LATENCY_MODE = "eager PyTorch (no torch.compile), batch size 1, fastest of 5 rounds alternating the rows"


def measure(teacher, student, preprocessor, postprocessor, raw_batch: dict, *, teacher_steps: int,
            student_steps: int, frames_from: str, seed: int = 0, scale: float | None = None,
            action_names: list | dict | None = None) -> dict:
    """Fidelity and latency as plain values for the lineage file and the model card; ``action_names``:
    the dataset's names of the action dims, for the card's plots."""
    rows, chunks = compare(teacher, preprocessor, postprocessor, student, preprocessor, postprocessor, raw_batch,
                           teacher_steps=teacher_steps, student_steps=student_steps, seed=seed)
    by_name = {r.name: r for r in rows}
    ref, stu = rows[0], by_name[f"student @{student_steps}"]
    t_at_k = by_name[f"teacher @{student_steps}"].rmse
    spread = by_name[f"teacher @{teacher_steps} (other noise)"].rmse
    return {
        "frames": len(raw_batch["task"]),
        "frames_from": frames_from,
        "noise_draws_per_frame": 1,  # one shared draw per frame (compare), from ``seed``
        "seed": seed,
        "hardware": hardware(next(student.parameters()).device),
        "latency_mode": LATENCY_MODE,
        "rows": [r.__dict__ for r in rows],
        "student_rmse": stu.rmse,
        "teacher_rmse_at_student_steps": t_at_k,
        "teacher_spread_rmse": spread,
        "action_scale": scale,
        "verdict": asdict(fidelity_verdict(stu.rmse, t_at_k, spread, scale)),
        "latency_ratio": stu.latency_ms / ref.latency_ms,
        "action_names": action_names,
        "example_chunks": {
            f"teacher @{teacher_steps}": chunks["reference"][0].tolist(),
            f"teacher @{student_steps}": chunks[f"teacher @{student_steps}"][0].tolist(),
            f"student @{student_steps}": chunks[f"student @{student_steps}"][0].tolist(),
        },
    }
