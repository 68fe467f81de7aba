"""``ReflowConfig``: every setting of a reflow run, one place, validated on creation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .flow import TIME_SAMPLERS

STUDENT_INPUTS = ("on-policy", "straight")
FRAME_SAMPLINGS = ("spread", "uniform")
UPDATES = ("fp32-masters", "bf16-sr", "bf16")  # the options of ReflowConfig.update, as the lineage records them
# What runs recorded before these settings existed did (their defaults have changed since).
RECORDED_BEFORE = {"student_inputs": "straight", "noises_per_frame": 1, "frame_sampling": "uniform", "lr_scale": 1.0}
# The default multiple of the teacher's learning rate for a 1-step student (docs/fidelity.md#1b-the-learning-rate).
ONE_STEP_LR_SCALE = 3.0


def default_lr_scale(lr: float | None, student_steps: int) -> float:
    """``lr_scale`` when none is given: 3 for a 1-step student trained at the teacher's own rate,
    1 for more steps or an explicit ``lr``."""
    return ONE_STEP_LR_SCALE if lr is None and student_steps == 1 else 1.0


@dataclass
class ReflowConfig:
    # Euler steps the teacher integrates to make each target chunk. SmolVLA's default is 10; more
    # steps give a more exact ODE solution (the pairs are only as good as this integration).
    teacher_steps: int = 10
    # Euler steps the student is trained and saved for (written as `num_steps` in config.json).
    student_steps: int = 1
    # Distribution of training times t (docs/fidelity.md): "grid", the student's own Euler times
    # 1, 1 - 1/K, ..., 1/K (the only times a K-step student evaluates its field); "mixed", half on
    # that grid, half uniform; "uniform" on [0, 1] (Rectified Flow: a field straight everywhere, for
    # a student also run at other step counts); "beta" (SmolVLA's Beta(1.5, 1) * 0.999 + 0.001).
    time_sampling: str = "grid"
    # Where a K-step student (K >= 2) is trained at its grid times t < 1 (docs/reflow.md#on-policy-inputs):
    # "on-policy", at the states its own Euler steps reach from z, towards the teacher's answer;
    # "straight", on the straight path between z and the teacher's answer. No effect for K = 1.
    student_inputs: str = "on-policy"
    # Noise draws paired with each observation of a batch (docs/reflow.md#many-noises-per-observation):
    # a step trains on batch_size * noises_per_frame (observation, noise) rows, with the VLM prefix
    # computed once per observation for the teacher's sampling and the student's loss alike. 2: the
    # closer student per second of training (docs/reflow.md#many-noises-per-observation); cached
    # pairs hold one noise per frame, so `train --pairs` runs with 1.
    noises_per_frame: int = 2
    # The teacher answers the batches of consecutive steps together, up to this many (observation,
    # noise) rows a call (at least one step's): the same targets, fewer and fuller calls
    # (docs/reflow.md#teacher-batches). 0 or less than a step's rows: one step at a time.
    teacher_batch: int = 32
    # Which training frames a batch draws (docs/reflow.md#frames-by-spread): "spread", mostly the
    # frames where the teacher's answer depends on the noise (a pre-pass measures that spread per
    # frame before training; training/frame_sampling.py), the rest uniformly; "uniform", LeRobot's shuffled epochs.
    # Cached pairs are drawn uniformly (`train --pairs` runs with "uniform").
    frame_sampling: str = "spread"
    # Keep the student's VLM frozen (vision encoder, connector, text model). The expert and the
    # projections train. Unfreezing changes the KV cache the expert attends to and costs memory.
    freeze_vlm: bool = True
    # Optimizer: LeRobot's AdamW preset from the teacher's config, with these overrides (None keeps
    # the teacher config's value: the student's expert continues with the recipe that trained it;
    # 1e-4 for teachers fine-tuned with LeRobot's defaults).
    lr: float | None = None
    # The peak learning rate is `lr` (None: the teacher config's optimizer_lr) times this. None:
    # default_lr_scale, 3 for a 1-step student at the teacher's rate (it must move its field at t = 1
    # from the teacher's average to a map from noise to answer: measured faster and closer in closed
    # loop, docs/fidelity.md#1b-the-learning-rate), 1 otherwise. Resolved on creation and recorded.
    lr_scale: float | None = None
    weight_decay: float | None = None
    grad_clip_norm: float | None = None
    # Scheduler: LeRobot's cosine-with-warmup preset; warmup steps (None: 5% of the run).
    warmup_steps: int | None = None
    # Training loop. 2000 steps (docs/fidelity.md#4-offline-fidelity-is-not-closed-loop-success): a
    # 1-step student's closed-loop success keeps improving past 1000 (the figures:
    # docs/results.md#closed-loop-success); one length for every K, so students of 1 and 2 steps
    # compare at equal length.
    steps: int = 2000
    batch_size: int = 8
    seed: int = 1000
    # Episodes (the last N of the dataset) kept out of training so fidelity is measured on frames
    # the student never saw. Recorded in the lineage file.
    holdout_episodes: int = 0
    # Teacher sampling (online pairs) through CUDA graphs captured per batch shape, on a CUDA
    # device (fastpath.py); False: LeRobot's eager sample_actions. No effect on the CPU.
    cuda_graphs: bool = True
    # How bf16 trainable weights are updated (training/optimizer.py): "fp32-masters", AdamW on fp32 copies
    # (12 bytes more per trainable parameter than LeRobot's fine-tune); "bf16-sr",
    # AdamW straight on the bf16 weights with stochastic rounding (no copies); "bf16", LeRobot's
    # AdamW straight on the bf16 weights, rounding to nearest (sub-ulp steps are lost).
    update: str = "fp32-masters"

    def __post_init__(self) -> None:
        if self.teacher_steps < 1:
            raise ValueError(f"teacher_steps must be >= 1, got {self.teacher_steps}")
        if self.student_steps < 1:
            raise ValueError(f"student_steps must be >= 1, got {self.student_steps}")
        if self.time_sampling not in TIME_SAMPLERS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLERS}, got {self.time_sampling!r}")
        if self.student_inputs not in STUDENT_INPUTS:
            raise ValueError(f"student_inputs must be one of {STUDENT_INPUTS}, got {self.student_inputs!r}")
        if self.noises_per_frame < 1:
            raise ValueError(f"noises_per_frame must be >= 1, got {self.noises_per_frame}")
        if self.frame_sampling not in FRAME_SAMPLINGS:
            raise ValueError(f"frame_sampling must be one of {FRAME_SAMPLINGS}, got {self.frame_sampling!r}")
        if self.teacher_batch < 0:
            raise ValueError(f"teacher_batch must be >= 0, got {self.teacher_batch}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.lr_scale is None:
            self.lr_scale = default_lr_scale(self.lr, self.student_steps)
        if not 0 < self.lr_scale < float("inf"):
            raise ValueError(f"lr_scale must be a finite number > 0, got {self.lr_scale}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.holdout_episodes < 0:
            raise ValueError(f"holdout_episodes must be >= 0, got {self.holdout_episodes}")
        if self.update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {self.update!r}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    @property
    def on_policy(self) -> bool:
        """Whether grid rows below t = 1 are trained at the student's own Euler states."""
        return self.student_inputs == "on-policy" and self.student_steps > 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ReflowConfig:
        known = {f.name for f in fields(cls)}
        data = {**RECORDED_BEFORE, **data}
        return cls(**{k: v for k, v in data.items() if k in known})
