"""Real-time chunking (RTC) as LeRobot runs it, in simulated time (``hub-reflow eval --inference rtc``;
docs/deploy.md).

LeRobot's RTC backend (``lerobot-rollout --inference.type=rtc``, ``RTCInferenceEngine``) computes the
next chunk while the robot executes the current one: it asks for a chunk when the queue holds
``queue_threshold`` actions or fewer, passes the queue's unexecuted actions (``ActionQueue.get_left_over``,
padded or cut to ``execution_horizon``) as ``prev_chunk_left_over`` with ``inference_delay`` = the
inference latency in control steps, and replaces the queue with the new chunk minus its first
``inference_delay`` actions (``ActionQueue.merge``): those were executed from the old chunk meanwhile,
the *committed* actions. ``RTCDriver`` does the same with a latency of exactly ``delay`` control
steps, so a rollout through LeRobot's ``eval_policy`` is deterministic and paired like a sync one.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field, make_dataclass

import torch

from ..errors import UserError

INFERENCE_PREFIX = "--inference."
INFERENCE_TYPES = ("sync", "rtc")


def parse_inference(args: tuple[str, ...]):
    """LeRobot's ``RTCInferenceConfig`` for ``--inference.rtc.<field>=...`` / ``--inference.queue_threshold=...``
    (parsed by draccus, as ``lerobot-rollout`` parses them); a bad option is one line."""
    import draccus
    from lerobot.rollout.inference import RTCInferenceConfig

    options = make_dataclass("InferenceOptions", [("inference", RTCInferenceConfig, field(default_factory=RTCInferenceConfig))])
    given = [a for a in args if not a.startswith(f"{INFERENCE_PREFIX}type=")]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return draccus.parse(config_class=options, args=given).inference
    except SystemExit:
        lines = [ln for ln in stderr.getvalue().splitlines() if "error:" in ln]
        raise UserError(f"--inference options: {lines[-1].split('error: ', 1)[1] if lines else ' '.join(args)}") from None
    except Exception as e:  # draccus' DecodingError / ParsingError, which wrap RTCConfig's own ValueError
        while str(e).startswith("Couldn't instantiate") and (e.__cause__ or e.__context__) is not None:
            e = e.__cause__ or e.__context__
        raise UserError(f"--inference options: {e}") from None



def settings_of(rtc_inference) -> dict:
    """LeRobot's ``RTCInferenceConfig`` as the plain values ``rtc`` and the results use."""
    schedule = rtc_inference.rtc.prefix_attention_schedule
    return {"max_guidance_weight": float(rtc_inference.rtc.max_guidance_weight),
            "execution_horizon": int(rtc_inference.rtc.execution_horizon),
            "prefix_attention_schedule": str(getattr(schedule, "value", schedule)),
            "queue_threshold": int(rtc_inference.queue_threshold)}


def with_settings(rtc_inference, settings: dict):
    """A copy of LeRobot's ``RTCInferenceConfig`` with ``settings`` (``rtc.recommended``'s keys)."""
    from dataclasses import replace

    from lerobot.configs import RTCAttentionSchedule

    rtc = replace(rtc_inference.rtc, max_guidance_weight=settings["max_guidance_weight"],
                  execution_horizon=settings["execution_horizon"],
                  prefix_attention_schedule=RTCAttentionSchedule(settings["prefix_attention_schedule"]))
    return replace(rtc_inference, rtc=rtc)


@dataclass
class ChunkRecord:
    """One chunk the driver merged: when it was asked for and took over, and how well it kept the
    committed actions (mean |new - committed| over the ``inference_delay`` actions executed meanwhile,
    normalised action space; None for the first chunk, which has none)."""

    requested_at: int
    took_over_at: int
    prefix_error: float | None


class RTCDriver:
    """A SmolVLA policy run as LeRobot's ``RTCInferenceEngine`` runs it, inside LeRobot's ``eval_policy``
    (``with driver.installed():`` its ``select_action`` and ``reset`` stand in for the policy's, which
    ``eval_policy`` calls once per control step and once per episode), with an inference latency of
    exactly ``delay`` control steps: a chunk asked for at step ``t`` (from the observation at ``t``)
    replaces the queue at ``t + delay``, minus its first ``delay`` actions. The first chunk of an
    episode has no left-over and nothing to wait for: the robot starts when it is ready.

    ``boundaries``: the steps where a new chunk took over; ``chunks``: one ``ChunkRecord`` each."""

    def __init__(self, policy, rtc_inference, delay: int):
        self.policy = policy
        self.rtc = rtc_inference.rtc
        self.queue_threshold = rtc_inference.queue_threshold
        self.delay = delay
        chunk = policy.config.chunk_size
        if not 0 <= delay < chunk:
            raise UserError(f"--inference-delay {delay}: the policy's chunks hold {chunk} actions; pass 0 to {chunk - 1}")
        if self.queue_threshold < delay:
            raise UserError(f"--inference.queue_threshold {self.queue_threshold} is below the inference delay {delay}: the queue "
                            "would run dry while the next chunk is computed; pass a threshold of at least the delay")
        if self.rtc.execution_horizon > chunk:
            raise UserError(f"--inference.rtc.execution_horizon {self.rtc.execution_horizon} exceeds the policy's chunk "
                            f"({chunk} actions), which LeRobot's RTC engine fails on; pass {chunk} or less")
        self.reset()

    @contextlib.contextmanager
    def installed(self):
        """The policy runs under RTC: its ``select_action``/``reset`` are the driver's, its ``rtc_config``
        these settings; all put back on exit."""
        policy, own = self.policy, self.policy.config.rtc_config
        policy.config.rtc_config = self.rtc
        policy.init_rtc_processor()
        policy.select_action, policy.reset = self.select_action, self.reset
        try:
            yield self
        finally:
            del policy.select_action, policy.reset
            policy.config.rtc_config = own
            policy.init_rtc_processor()

    def reset(self) -> None:
        from lerobot.policies.rtc import ActionQueue

        type(self.policy).reset(self.policy)
        self.queue = ActionQueue(self.rtc)
        self.step = 0
        self.pending = None  # (chunk, requested_at, index_before, committed left-over)
        self.boundaries: list[int] = []
        self.chunks: list[ChunkRecord] = []

    def _ask(self, batch) -> tuple:
        from lerobot.rollout.inference.rtc import _normalize_prev_actions_length  # the engine's own padding

        left = self.queue.get_left_over()
        first = left is None or left.numel() == 0
        prev = None if first else _normalize_prev_actions_length(left, target_steps=self.rtc.execution_horizon)
        # LeRobot's guidance takes a gradient: outside eval_policy's inference mode, as in its RTC thread.
        with torch.inference_mode(False), torch.no_grad():
            batch = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            chunk = self.policy.predict_action_chunk(batch, inference_delay=0 if first else self.delay,
                                                     prev_chunk_left_over=None if prev is None else prev.clone())
        committed = None if first else left[: self.delay].clone()
        return chunk.squeeze(0), self.step, self.queue.get_action_index(), committed

    def _merge(self, pending, delay: int) -> None:
        chunk, requested_at, index_before, committed = pending
        error = None
        if committed is not None and delay:
            error = float((chunk[:delay] - committed[:delay]).abs().mean())
        self.queue.merge(chunk, chunk, delay, index_before)
        self.boundaries.append(self.step)
        self.chunks.append(ChunkRecord(requested_at, self.step, error))

    def select_action(self, batch, **kwargs):
        if self.pending is not None and self.step >= self.pending[1] + self.delay:
            self._merge(self.pending, self.delay)
            self.pending = None
        if self.pending is None and self.queue.qsize() <= self.queue_threshold:
            pending = self._ask(batch)
            if pending[3] is None:  # the episode's first chunk: nothing is executing, nothing to skip
                self._merge(pending, 0)
            else:
                self.pending = pending
        action = self.queue.get()
        self.step += 1
        return action.unsqueeze(0)
