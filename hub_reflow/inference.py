"""A deployment fast path for a loaded student: ``fast_inference(policy)``.

A robot calls ``predict_action_chunk`` (or ``select_action``) once per observation at batch size 1.
Eagerly a 1-step SmolVLA chunk launches some two thousand small kernels from Python; LeRobot's
``compile_model`` first compiles with Inductor. Here the whole chunk (image preparation, the vision
encoder, the prefix's VLM pass that fills the KV cache, the Euler loop, the unpadding) is recorded as
one CUDA graph per input shape with ``torch.cuda.graphs`` (no Inductor) and replayed. The timings of
the three paths: docs/results.md#gpu-runs; the design: docs/inference.md.

What makes the chunk capturable, without changing LeRobot, transformers or the checkpoint:

- the host constants of LeRobot's loop (the Euler times, the attention patterns, the empty KV
  cache) are answered from device copies, as for the teacher's sampling (``fastpath.HostConstants``);
- the vision encoder: SmolVLM's ``vision_model`` builds an all-true patch mask on the host, asks
  ``mask.all()`` and scatters position ids through it (three host synchronisations). LeRobot always
  passes no mask, so for a given image shape the position ids and the encoder's attention mask are
  constants: they are taken from one eager run of the model's own ``embed_image`` (forward pre-hooks
  read them), and the same modules (patch embedding, position embedding, encoder, post-layernorm,
  connector) run on them. The substitute is used only if its output equals ``embed_image``'s bit for
  bit on that first run; otherwise the prefix runs eagerly and the rest is captured
  (``fastpath.TeacherSampler``, as for the teacher).

A shape whose capture fails runs eagerly, with one warning. On the CPU (or ``cuda_graphs=False``)
nothing is captured: the same code runs eagerly and is bit-identical to LeRobot's
``predict_action_chunk`` / ``select_action`` (the same operations on the same values; noise drawn
with the policy's own ``sample_noise``, so the global RNG advances as LeRobot's would). The policy is
only read: its weights, config and checkpoint stay as they are.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import Tensor

from .fastpath import MAX_SHAPES, NotCapturable, TeacherSampler, capture_graph, graphs_possible
from .smolvla import PolicyInputs

logger = logging.getLogger(__name__)


class _View:
    """An object that answers like ``target`` except for the given attributes (nothing is changed)."""

    def __init__(self, target, **overrides):
        self._target = target
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._target, name)


class StaticVision:
    """``SmolVLMWithExpertModel.embed_image`` without the vision model's host synchronisations,
    from the same modules, with the position ids and encoder attention mask the model's own
    ``embed_image`` used for that image shape (see the module docstring)."""

    def __init__(self, vlm_with_expert):
        self.vwe = vlm_with_expert
        self.known: dict[tuple, tuple[Tensor, dict]] = {}
        self.failed: set[tuple] = set()

    def _parts(self):
        vlm = self.vwe.get_vlm_model()
        return vlm, vlm.vision_model

    def prepare(self, image: Tensor) -> bool:
        """Run the model's ``embed_image`` once (eagerly), read its constants, check the substitute
        against it; True when the substitute is exact for this image shape (on a GPU whose kernels
        are not bit-reproducible: within the model's own run-to-run difference)."""
        key = (tuple(image.shape), image.dtype, image.device)
        if key in self.known or key in self.failed:
            return key in self.known
        _, vm = self._parts()
        seen: dict = {}

        def read_positions(module, args):
            seen.setdefault("pos", args[0])

        def read_encoder_call(module, args, kwargs):
            seen.setdefault("enc", (args, dict(kwargs)))

        hooks = [vm.embeddings.position_embedding.register_forward_pre_hook(read_positions),
                 vm.encoder.register_forward_pre_hook(read_encoder_call, with_kwargs=True)]
        try:
            reference = self.vwe.embed_image(image)
        finally:
            for h in hooks:
                h.remove()
        args, kwargs = seen.get("enc", ((None,), {}))
        kwargs.pop("inputs_embeds", None)
        if "pos" not in seen or args:
            self.failed.add(key)
            return False
        self.known[key] = (seen["pos"], kwargs)
        try:
            ours = self(image)
            exact = torch.equal(ours, reference)
            if not exact and image.device.type != "cpu":
                # A GPU kernel that is not bit-reproducible run to run: ours may differ from the model's
                # own run by no more than the model's own runs differ from each other.
                again = self.vwe.embed_image(image)
                own = (again.float() - reference.float()).abs().max()
                exact = bool(own > 0) and bool((ours.float() - reference.float()).abs().max() <= own)
        except Exception:  # noqa: BLE001 - a transformers version with other internals: not exact
            exact = False
        if not exact:
            del self.known[key]
            self.failed.add(key)
        return exact

    def __call__(self, image: Tensor) -> Tensor:
        position_ids, encoder_kwargs = self.known[(tuple(image.shape), image.dtype, image.device)]
        vlm, vm = self._parts()
        emb = vm.embeddings
        pixel_values = image.to(dtype=vm.dtype)
        hidden = emb.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        hidden = hidden + emb.position_embedding(position_ids)
        hidden = vm.encoder(inputs_embeds=hidden, **encoder_kwargs).last_hidden_state
        return vlm.connector(vm.post_layernorm(hidden))


class _Entry:
    """Static input buffers for one shape key, and its captured graph (None: run eagerly)."""

    def __init__(self, inputs: dict[str, Tensor], noise: Tensor):
        self.inputs = {k: torch.empty_like(v, memory_format=torch.contiguous_format) for k, v in inputs.items()}
        self.noise = torch.empty_like(noise, memory_format=torch.contiguous_format)
        self.graph = None
        self.out: Tensor | None = None
        self.prefix_eager = False  # the whole chunk could not be captured: the fallback
        self.load(inputs, noise)

    def load(self, inputs: dict[str, Tensor], noise: Tensor) -> None:
        for k, v in inputs.items():
            self.inputs[k].copy_(v)
        self.noise.copy_(noise)


class FastInference:
    """``predict_action_chunk`` / ``select_action`` / ``reset`` of a loaded SmolVLA policy (or a
    ``ReflowPolicy``'s student) on the static-shape fast path. Make it with ``fast_inference``."""

    def __init__(self, policy, *, cuda_graphs: bool = True, max_shapes: int = MAX_SHAPES):
        self.policy = getattr(policy, "student", policy)
        self.cuda_graphs = cuda_graphs
        self.max_shapes = max_shapes
        self.vision = StaticVision(self.policy.model.vlm_with_expert)
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._constants: dict = {}
        self._sampler: TeacherSampler | None = None
        self._warned = False
        self.stats = {"calls": 0, "graph_replays": 0, "captures": 0, "capture_failures": 0, "prefix_eager_calls": 0,
                      "capture_s": 0.0}

    @property
    def config(self):
        return self.policy.config

    @property
    def mode(self) -> str:
        """How chunks were made so far, in words."""
        if self.stats["graph_replays"]:
            return "cuda graphs (whole chunk)"
        if self.stats["prefix_eager_calls"]:
            return "cuda graphs after an eager prefix"
        return "eager (static-shape path, no CUDA graph)"

    def reset(self) -> None:
        self.policy.reset()

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict, noise: Tensor | None = None, **kwargs) -> Tensor:
        """LeRobot's ``SmolVLAPolicy.predict_action_chunk``; real-time chunking (``kwargs`` or an
        RTC config) runs LeRobot's own method unchanged."""
        from lerobot.policies.utils import populate_queues
        from lerobot.utils.constants import ACTION

        p = self.policy
        if kwargs or p._rtc_enabled():
            return p.predict_action_chunk(batch, noise, **kwargs)
        p.eval()
        batch = p._prepare_batch(batch)
        p._queues = populate_queues(p._queues, batch, exclude_keys=[ACTION])
        return self.chunk(batch, noise)

    @torch.no_grad()
    def select_action(self, batch: dict, noise: Tensor | None = None) -> Tensor:
        """LeRobot's ``SmolVLAPolicy.select_action``: one action from the queue, a new chunk when it is empty."""
        from lerobot.policies.utils import populate_queues
        from lerobot.utils.constants import ACTION

        p = self.policy
        if p._rtc_enabled():
            return p.select_action(batch, noise)  # LeRobot refuses RTC here, with its own message
        p.eval()
        batch = p._prepare_batch(batch)
        p._queues = populate_queues(p._queues, batch, exclude_keys=[ACTION])
        if p._check_get_actions_condition():
            actions = self.chunk(batch, noise)
            p._queues[ACTION].extend(actions.transpose(0, 1)[: p.config.n_action_steps])
        return p._queues[ACTION].popleft()

    def chunk(self, batch: dict, noise: Tensor | None) -> Tensor:
        """``SmolVLAPolicy._get_action_chunk(batch, noise)`` on the fast path."""
        from lerobot.utils.constants import OBS_STATE

        self.stats["calls"] += 1
        p, cfg = self.policy, self.policy.config
        inputs = {k: batch[k] for k in _input_keys(cfg, batch)}
        if noise is None:  # as sample_actions draws it: same shape, device, RNG
            state = inputs[OBS_STATE]
            noise = p.model.sample_noise((state.shape[0], cfg.chunk_size, cfg.max_action_dim), state.device)
        key = (cfg.num_steps, tuple((k, tuple(v.shape), v.dtype, v.device) for k, v in inputs.items()),
               (tuple(noise.shape), noise.dtype, noise.device))
        entry = self._entries.get(key)
        if entry is None:
            entry = self._add(key, inputs, noise)
        else:
            self._entries.move_to_end(key)
            entry.load(inputs, noise)
        if entry.graph is not None:
            entry.graph.replay()
            self.stats["graph_replays"] += 1
            return entry.out.clone()
        if entry.prefix_eager:
            self.stats["prefix_eager_calls"] += 1
            return self._prefix_eager(entry)
        return self._body(entry)

    # ---- internals ------------------------------------------------------------------------------

    def _body(self, entry: _Entry) -> Tensor:
        """``_get_action_chunk``'s operations on the static buffers, with ``VLAFlowMatching``'s own
        ``sample_actions`` and ``embed_prefix`` (the class's functions: a ``compile_model`` wrapper is
        bypassed) and the vision encoder through ``StaticVision`` where it is exact."""
        from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

        p = self.policy
        model = p.model
        batch = dict(entry.inputs)
        images, img_masks = p.prepare_images(batch)
        state = p.prepare_state(batch)
        if all(self.vision.prepare(img) for img in images):
            vwe = _View(model.vlm_with_expert, embed_image=self.vision)
            view = _View(model, vlm_with_expert=vwe)
            view.embed_prefix = lambda *a, **k: type(model).embed_prefix(view, *a, **k)
        else:
            view = model
        actions = type(model).sample_actions(view, images, img_masks, batch[OBS_LANGUAGE_TOKENS],
                                             batch[OBS_LANGUAGE_ATTENTION_MASK], state, noise=entry.noise)
        return self._unpad(actions)

    def _unpad(self, actions: Tensor) -> Tensor:
        p = self.policy
        actions = actions[:, :, : p.config.action_feature.shape[0]]
        if p.config.adapt_to_pi_aloha:
            actions = p._pi_aloha_encode_actions(actions)
        return actions

    def _prefix_eager(self, entry: _Entry) -> Tensor:
        """The fallback: images, state and prefix embedding eagerly, the rest captured per shape."""
        from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

        p = self.policy
        if self._sampler is None or self._sampler.steps != p.config.num_steps:
            self._sampler = TeacherSampler(p, p.config.num_steps, max_shapes=self.max_shapes)
        batch = dict(entry.inputs)
        images, img_masks = p.prepare_images(batch)
        inputs = PolicyInputs(images, img_masks, batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK],
                              p.prepare_state(batch))
        return self._unpad(self._sampler(inputs, entry.noise))

    def _add(self, key: tuple, inputs: dict, noise: Tensor) -> _Entry:
        import time

        entry = _Entry(inputs, noise)
        if self.cuda_graphs and graphs_possible(noise.device):
            t0 = time.perf_counter()
            try:
                # eagerly: the model's own embed_image synchronises
                if not all(self.vision.prepare(img) for img in self.policy.prepare_images(dict(entry.inputs))[0]):
                    raise NotCapturable("the vision encoder without host synchronisations differs from embed_image")
                entry.graph, entry.out = capture_graph(lambda: self._body(entry), self._constants)
                self.stats["captures"] += 1
            except Exception as e:  # a host sync, a constant the warm-up did not make, a CUDA capture error
                entry.graph, entry.out, entry.prefix_eager = None, None, True
                self.stats["capture_failures"] += 1
                if not self._warned:
                    self._warned = True
                    logger.warning("fast inference: no CUDA graph of the whole chunk for batch %d (%s: %s); the prefix "
                                   "runs eagerly for this shape", noise.shape[0], type(e).__name__,
                                   str(e).splitlines()[0][:200] if str(e) else "")
            torch.cuda.synchronize(noise.device)
            self.stats["capture_s"] += time.perf_counter() - t0
        self._entries[key] = entry
        while len(self._entries) > self.max_shapes:
            self._entries.popitem(last=False)
        return entry


def _input_keys(cfg, batch: dict) -> list[str]:
    """The batch entries ``_get_action_chunk`` reads: the cameras present (and their padding
    masks), the state and the instruction's tokens and mask."""
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE

    keys = []
    for k in cfg.image_features:
        if k in batch:
            keys.append(k)
            if f"{k}_padding_mask" in batch:
                keys.append(f"{k}_padding_mask")
    return keys + [OBS_STATE, OBS_LANGUAGE_TOKENS, OBS_LANGUAGE_ATTENTION_MASK]


def fast_inference(policy, *, cuda_graphs: bool = True, max_shapes: int = MAX_SHAPES) -> FastInference:
    """The policy (a loaded ``SmolVLAPolicy``, e.g. a student, or a ``ReflowPolicy``) behind a fast
    ``predict_action_chunk`` / ``select_action`` / ``reset``: one CUDA graph of the whole chunk per
    input shape on CUDA (captured on the first call of a shape, in seconds), the same operations
    eagerly on the CPU. The policy itself is not changed; keep calling the returned object's methods
    in place of the policy's. ``cuda_graphs=False``: never capture (the eager static-shape path)."""
    return FastInference(policy, cuda_graphs=cuda_graphs, max_shapes=max_shapes)
