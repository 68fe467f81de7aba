"""Teacher sampling on a static-shape fast path: LeRobot's own ``sample_actions``, captured as a CUDA
graph once per input shape and replayed (the teacher is frozen, its shapes are fixed per batch size).

At the batch sizes of training an action-expert step's time goes to launching a few thousand small
kernels from Python, not to arithmetic. A CUDA graph launches the whole recorded sequence at once
(the timings: docs/results.md#teacher-sampling; the design: docs/inference.md).

The split:

- ``embed_prefix`` (vision encoder, language embedding, state projection) runs eagerly on every
  call: the vision embeddings index with a boolean mask, a host synchronisation that a graph cannot
  hold.
- the rest is ``VLAFlowMatching.sample_actions`` itself (the VLM pass that fills the KV cache, then
  the Euler loop of ``denoise_step`` calls), run with ``embed_prefix`` answered from static input
  buffers. It is captured once per shape key (batch size, prefix length, dtypes, step count), so a
  last smaller batch gets its own graph; at most ``max_shapes`` graphs are kept (least recently used
  dropped). With ``m`` noises per observation (more noise rows than observations) the body is
  ``smolvla.sample_shared`` instead: the VLM pass on the B observations, its KV cache expanded over
  the ``m * B`` noises, the same Euler loop (the noise count is part of the shape key).

LeRobot builds a few constants with ``torch.tensor(..., device=...)`` inside that loop (the Euler
step times, the action tokens' attention pattern, the empty KV cache): host-to-device copies that a
graph cannot record. They are made once by a warm-up run and, during the capture, answered with
device copies of the same values (``HostConstants``); a constant that the warm-up did not make
fails the capture. The warm-up also runs with CUDA's sync debug mode set to ``error``, so any other
synchronising operation fails before the capture. A shape whose capture fails is sampled eagerly,
with one warning.

On the CPU (or with ``cuda_graphs=False`` on a CUDA device) nothing is captured: the same split
and static buffers run eagerly, bit-identical to ``sample_actions`` (the same operations on the
same values).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .smolvla import PolicyInputs, num_steps, sample_chunk, sample_shared

logger = logging.getLogger(__name__)

MAX_SHAPES = 8  # graphs kept per sampler (a dataset with varied instruction lengths makes several)
_MAX_CONSTANT_ELEMENTS = 1 << 16


class NotCapturable(RuntimeError):
    """The sampling code did something a CUDA graph cannot record."""


def graphs_possible(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


class HostConstants(TorchFunctionMode):
    """Answers ``torch.tensor(data, device=<not cpu>)`` from a store of device tensors keyed by value.

    Recording (``capturing=False``): a new value is made on the device and stored. Capturing: the
    stored tensor is cloned (a device-to-device copy, which a graph records); a value not in the
    store raises ``NotCapturable``.
    """

    def __init__(self, store: dict, capturing: bool):
        super().__init__()
        self.store = store
        self.capturing = capturing

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.tensor and args:
            device = kwargs.get("device")
            if device is not None and torch.device(device).type != "cpu":
                key = _constant_key(args[0], kwargs)
                if key not in self.store:
                    if self.capturing:
                        raise NotCapturable(f"torch.tensor(..., device={device}) with a value the warm-up did not make: {key[:3]}")
                    with sync_debug("default"):  # the recording copy itself synchronises, once
                        self.store[key] = func(*args, **kwargs)
                return self.store[key].clone()
        return func(*args, **kwargs)


def _constant_key(data, kwargs: dict) -> tuple:
    host = torch.tensor(data, dtype=kwargs.get("dtype"))  # on the CPU: no copy to the device
    if host.numel() > _MAX_CONSTANT_ELEMENTS:
        raise NotCapturable(f"a host constant of {host.numel()} elements")
    return (str(host.dtype), tuple(host.shape), str(torch.device(kwargs["device"])),
            bool(kwargs.get("requires_grad", False)), tuple(host.reshape(-1).tolist()))


@contextmanager
def sync_debug(mode: str):
    if not torch.cuda.is_available():
        yield
        return
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


class _GivenPrefix:
    """The model as ``sample_actions`` sees it, with ``embed_prefix`` answered from given tensors.
    Everything else (config, VLM, expert, ``denoise_step``) is the model's own; nothing is changed."""

    def __init__(self, model, prefix: tuple[Tensor, Tensor, Tensor]):
        self._model = model
        self._prefix = prefix

    def embed_prefix(self, *args, **kwargs):
        return self._prefix

    def __getattr__(self, name):
        return getattr(self._model, name)


@dataclass
class _Entry:
    """Static buffers for one shape key, and the captured graph (None: run eagerly)."""

    embs: Tensor
    pad_masks: Tensor
    att_masks: Tensor
    state: Tensor
    noise: Tensor
    graph: object = None
    out: Tensor | None = None

    @classmethod
    def like(cls, prefix, state, noise) -> _Entry:
        return cls(*(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (*prefix, state, noise)))

    def load(self, prefix, state, noise) -> None:
        for dst, src in zip((self.embs, self.pad_masks, self.att_masks, self.state, self.noise), (*prefix, state, noise)):
            dst.copy_(src)


class TeacherSampler:
    """``sample_chunk(policy, inputs, noise, steps)`` on the static-shape fast path.

    cuda_graphs: capture a CUDA graph per shape on a CUDA device (default); ``False`` runs LeRobot's
        ``sample_actions`` unchanged (``smolvla.sample_chunk``), the plain eager path.
    """

    def __init__(self, policy, steps: int, *, cuda_graphs: bool = True, max_shapes: int = MAX_SHAPES):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.policy = policy
        self.steps = steps
        self.cuda_graphs = cuda_graphs
        self.max_shapes = max_shapes
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._constants: dict = {}
        self.stats = {"calls": 0, "graph_replays": 0, "captures": 0, "capture_failures": 0}

    @property
    def mode(self) -> str:
        """How this sampler has sampled so far, in words (for lineage files and logs)."""
        if not self.cuda_graphs:
            return "eager (LeRobot sample_actions)"
        if self.stats["graph_replays"]:
            return "cuda graphs"
        return "eager (static-shape path, no CUDA graph)"

    @torch.no_grad()
    def __call__(self, inputs: PolicyInputs, noise: Tensor) -> Tensor:
        """The padded chunk (len(noise), chunk_size, max_action_dim), as ``sample_chunk`` returns it
        (``m`` noises per observation: ``len(noise) = m * B``, the VLM run once per observation)."""
        self.stats["calls"] += 1
        if not self.cuda_graphs:
            return sample_chunk(self.policy, inputs, noise, self.steps)
        model = self.policy.model
        prefix = model.embed_prefix(*inputs.args())
        key = (self.steps,) + tuple((tuple(t.shape), t.dtype, t.device) for t in (*prefix, inputs.state, noise))
        entry = self._entries.get(key)
        if entry is None:
            entry = self._add(key, prefix, inputs.state, noise)
        else:
            self._entries.move_to_end(key)
            entry.load(prefix, inputs.state, noise)
        if entry.graph is not None:
            entry.graph.replay()
            self.stats["graph_replays"] += 1
            return entry.out.clone()
        return self._body(entry)

    @torch.no_grad()
    def warm_up_only(self, inputs: PolicyInputs, noise: Tensor) -> None:
        """The capture's warm-up for this shape without the capture (a diagnostic for
        ``benchmarks/train_cost.py``: what the warm-up alone leaves behind in the process)."""
        prefix = self.policy.model.embed_prefix(*inputs.args())
        entry = _Entry.like(prefix, inputs.state, noise)
        entry.load(prefix, inputs.state, noise)
        warm_up(lambda: self._body(entry), self._constants)

    # ---- internals ------------------------------------------------------------------------------

    def _body(self, entry: _Entry) -> Tensor:
        """LeRobot's ``VLAFlowMatching.sample_actions`` (the class's own function: a
        ``compile_model`` wrapper on the instance is bypassed) on the static buffers; with more noise
        rows than observations, ``smolvla.sample_shared`` (the VLM once per observation, its KV cache
        expanded over the noises)."""
        model = self.policy.model
        prefix = (entry.embs, entry.pad_masks, entry.att_masks)
        with num_steps(self.policy, self.steps):
            if entry.noise.shape[0] != entry.state.shape[0]:  # m noises per observation: the VLM once per observation
                return sample_shared(model, prefix, entry.noise, self.steps)
            return type(model).sample_actions(_GivenPrefix(model, prefix), None, None, None, None, entry.state, noise=entry.noise)

    def _add(self, key: tuple, prefix, state, noise) -> _Entry:
        entry = _Entry.like(prefix, state, noise)
        entry.load(prefix, state, noise)
        if graphs_possible(noise.device):
            try:
                self._capture(entry)
                self.stats["captures"] += 1
            except Exception as e:  # NotCapturable, a sync in sync-debug mode, a CUDA capture error
                entry.graph, entry.out = None, None
                self.stats["capture_failures"] += 1
                logger.warning("teacher sampling: no CUDA graph for batch %d (%s: %s); sampling this shape eagerly",
                               noise.shape[0], type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        self._entries[key] = entry
        while len(self._entries) > self.max_shapes:
            self._entries.popitem(last=False)
        return entry

    def _capture(self, entry: _Entry) -> None:
        entry.graph, entry.out = capture_graph(lambda: self._body(entry), self._constants)


def capture_graph(body, constants: dict) -> tuple[torch.cuda.CUDAGraph, Tensor]:
    """``body()`` warmed up twice on a side stream (host constants recorded into ``constants``, any
    synchronising operation an error), then captured as a CUDA graph; returns the graph and the
    output tensor its replays overwrite. Raises on anything a graph cannot hold."""
    warm_up(body, constants)
    graph = torch.cuda.CUDAGraph()
    # thread_local: a DataLoader's pin-memory thread may allocate while this thread captures
    with HostConstants(constants, capturing=True), torch.cuda.graph(graph, capture_error_mode="thread_local"):
        out = body()
    return graph, out


def warm_up(body, constants: dict) -> None:
    """``body()`` twice on a side stream, recording host constants, any synchronising operation an
    error: lazy initialisations and library handles before a capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), HostConstants(constants, capturing=False), sync_debug("error"):
        for _ in range(2):
            body()
    torch.cuda.current_stream().wait_stream(side)
