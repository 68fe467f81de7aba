"""``ReflowPolicy``: a reflow student (a plain ``SmolVLAPolicy``) and its frozen teacher, each with
its own VLM, with ``huggingface_hub``'s ``PyTorchModelHubMixin`` for save / push / load.

The student starts as an exact copy of the teacher (every tensor and dtype). Saving writes only the
student, as a canonical SmolVLA checkpoint (see ``checkpoint.write_canonical``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import Tensor, nn

from . import flow
from .checkpoint import (
    LINEAGE_NAME,
    PLAIN,
    PLAIN_FIX,
    CheckpointRef,
    Lineage,
    ResolvedCheckpoint,
    is_plain_smolvla,
    load_smolvla,
    resolve_checkpoint,
    write_canonical,
)
from .closed_loop.results import EVAL_NAME, ClosedLoopResults
from .config import ReflowConfig
from .errors import UserError
from .fastpath import TeacherSampler
from .hub.card import render_card
from .hub.card_closed_loop import closed_loop_context, draw_closed_loop_images, read_closed_loop
from .hub.card_plots import draw_card_images
from .hub.push_pull import push_policy
from .smolvla import noise_shape, on_policy_noise, policy_inputs, shared_prefix_losses, student_losses, teacher_pairs


def vlm_module(policy) -> nn.Module:
    """The pretrained backbone inside a SmolVLAPolicy (vision encoder, connector, text model)."""
    return policy.model.vlm_with_expert.vlm


class ReflowPolicy(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="lerobot",
    tags=["lerobot", "smolvla", "reflow", "rectified-flow", "robotics"],
    pipeline_tag="robotics",
):
    """A reflow student (a plain LeRobot ``SmolVLAPolicy`` that samples its action chunk in
    ``reflow_config.student_steps`` Euler steps) with, while training, its frozen teacher.

    Load, act and share it as any Hub model and LeRobot policy (README "Python API")::

        policy = ReflowPolicy.from_pretrained("you/smolvla-reflow", revision="main", token=...)
        pre, post = make_pre_post_processors(policy.config, pretrained_path="you/smolvla-reflow")
        policy.reset()
        action = post(policy.select_action(pre(observation)))
        policy.save_pretrained("folder", push_to_hub=True, repo_id="you/copy")

    ``from_pretrained`` takes what ``ModelHubMixin.from_pretrained`` takes (``revision``, ``token``,
    ``cache_dir``, ``force_download``, ``local_files_only``) and, offline (``HF_HUB_OFFLINE=1``),
    loads from the Hugging Face cache. ``select_action``, ``predict_action_chunk``, ``reset`` and
    ``config`` are the student's; ``student`` is the ``SmolVLAPolicy`` itself. ``push_to_hub``
    pushes through the same checks and model card as ``hub-reflow push``.
    """

    def __init__(
        self,
        student,
        teacher=None,
        reflow_config: ReflowConfig | None = None,
        base: ResolvedCheckpoint | None = None,
        lineage: Lineage | None = None,
    ):
        """
        student / teacher: ``SmolVLAPolicy`` instances that share no module.
        base: the checkpoint whose config and processor files the student's checkpoint reuses (the
            teacher's for a new student; the student's own folder after ``from_pretrained``).
        lineage: what is known of where the student comes from (teacher ref, dataset, run).
        """
        super().__init__()
        self.reflow_config = reflow_config or ReflowConfig()
        self.student = student
        self.teacher = teacher
        self.base = base
        self.vlm_repo_id: str | None = None  # names the base's local backbone folder when saved (train --vlm-repo-id)
        self.closed_loop: ClosedLoopResults | None = None  # the recorded closed-loop evaluation (reflow_eval.json)
        self.lineage = lineage or Lineage(
            teacher=base.ref if base else CheckpointRef(None, None, None, ""),
            reflow=self.reflow_config.to_dict(),
            teacher_num_steps=teacher.config.num_steps if teacher is not None else 10,
        )
        self.student.config.num_steps = self.reflow_config.student_steps
        if teacher is not None:
            _assert_independent(student, teacher)
            teacher.requires_grad_(False)
            teacher.eval()
        if self.reflow_config.freeze_vlm:
            vlm_module(student).requires_grad_(False)
        self.train(False)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_teacher(
        cls,
        teacher: str | Path | ResolvedCheckpoint,
        config: ReflowConfig | None = None,
        *,
        revision: str | None = None,
        device: str = "cpu",
        teacher_config=None,
        lineage: Lineage | None = None,
    ) -> ReflowPolicy:
        """Teacher from a local checkpoint folder or a Hub repo id (``revision`` resolved to a
        commit sha, recorded in the lineage), or an already resolved checkpoint. The student is a
        deep copy: bit-identical tensors, same dtypes, its own VLM. ``teacher_config``: its config
        already parsed (a copy is used), else read from the folder; ``lineage``: the student's record."""
        if isinstance(teacher, ResolvedCheckpoint):
            resolved = teacher
        else:
            resolved = resolve_checkpoint(str(teacher), revision, what="teacher")
        teacher_policy = load_smolvla(resolved.path, device=device, what="teacher",
                                      config=copy.deepcopy(teacher_config) if teacher_config is not None else None)
        student_policy = copy.deepcopy(teacher_policy)
        return cls(student_policy, teacher_policy, config, base=resolved, lineage=lineage)

    def attach_teacher(self, teacher: str | Path | None = None, revision: str | None = None, device: str = "cpu",
                       **hub) -> None:
        """Load the teacher again (to continue training, or to measure fidelity). Without an
        argument, from the lineage file: the teacher's repo at its recorded commit. ``hub``: as
        ``from_pretrained`` takes them (``token``, ``cache_dir``...)."""
        if teacher is None:
            ref = self.lineage.teacher
            if not ref.repo_id:
                raise UserError("the teacher was a local folder (its path is not recorded); pass it explicitly")
            teacher, revision = ref.repo_id, ref.commit
        resolved = resolve_checkpoint(str(teacher), revision, what="teacher", **hub)
        if self.lineage.teacher.weights_sha256 and resolved.ref.weights_sha256 != self.lineage.teacher.weights_sha256:
            raise UserError("the given teacher's weights differ from the ones this student was trained from (sha256 mismatch)")
        self.teacher = load_smolvla(resolved.path, device=device, what="teacher")
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    # ---- training -------------------------------------------------------------------------------

    def train(self, mode: bool = True):
        super().train(mode)
        # The teacher only makes targets; a frozen VLM stays in eval mode (LeRobot does the same
        # for its frozen vision encoder), whatever the caller does.
        if self.teacher is not None:
            self.teacher.eval()
        if self.reflow_config.freeze_vlm:
            vlm_module(self.student).eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    @torch.no_grad()
    def make_pairs(self, inputs, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Noise ``z`` (float32) and the teacher's ODE output for it, as training data (padded dims 0);
        ``reflow_config.noises_per_frame`` noises per observation when not given (row ``i * m + j``:
        observation ``i``)."""
        if self.teacher is None:
            raise UserError("this ReflowPolicy has no teacher attached; call attach_teacher() first")
        if noise is None:
            rows = inputs.batch_size * self.reflow_config.noises_per_frame
            noise = torch.randn(noise_shape(self.student, rows), dtype=torch.float32, device=inputs.state.device)
        return teacher_pairs(self.teacher, inputs, noise, self.reflow_config.teacher_steps,
                             self.student.config.action_feature.shape[0], sampler=self.teacher_sampler)

    @property
    def teacher_sampler(self):
        """The teacher's sampler on the static-shape fast path (``fastpath.TeacherSampler``: CUDA
        graphs per batch shape on CUDA unless ``reflow_config.cuda_graphs`` is off), made once."""
        s = self.__dict__.get("_teacher_sampler")
        rcfg = self.reflow_config
        if s is None or s.policy is not self.teacher or (s.steps, s.cuda_graphs) != (rcfg.teacher_steps, rcfg.cuda_graphs):
            s = TeacherSampler(self.teacher, rcfg.teacher_steps, cuda_graphs=rcfg.cuda_graphs)
            self.__dict__["_teacher_sampler"] = s
        return s

    @property
    def teacher_sampling(self) -> str | None:
        """How the teacher sampled online pairs so far (None: it has not), e.g. ``cuda graphs``."""
        s = self.__dict__.get("_teacher_sampler")
        return s.mode if s is not None and s.stats["calls"] else None

    def forward(self, batch: dict, noise: Tensor | None = None, time: Tensor | None = None,
                target: Tensor | None = None, inputs=None) -> tuple[Tensor, dict]:
        """The reflow loss on a preprocessed batch: student velocity error on straight paths between
        ``z`` and the teacher's output for ``z`` (docs/reflow.md#loss). ``noise``, ``time`` and
        ``target`` have ``reflow_config.noises_per_frame`` rows per observation of the batch.

        ``target`` (with its ``noise``): a cached pair (``pairs.py``) used as is; the teacher is not run.
        ``inputs``: ``policy_inputs(student, batch)`` when the caller has it already (the images are
        prepared once per batch for teacher and student alike)."""
        if inputs is None:
            inputs = policy_inputs(self.student, batch)
        device = inputs.state.device
        if target is not None:
            if noise is None:
                raise ValueError("a cached target needs the noise it was made from")
            noise, data = _on(noise, device), _on(target, device)
        else:
            noise, data = self.make_pairs(inputs, None if noise is None else _on(noise, device))
        rcfg = self.reflow_config
        if noise.shape[0] != inputs.batch_size * rcfg.noises_per_frame:
            raise ValueError(f"{noise.shape[0]} noise rows for {inputs.batch_size} observations; noises_per_frame "
                             f"is {rcfg.noises_per_frame}")
        if time is None:
            time = flow.sample_time(rcfg.time_sampling, noise.shape[0], device=device, grid_steps=rcfg.student_steps)
        time = _on(time, device)
        if rcfg.noises_per_frame > 1:  # the prefix once per observation (docs/reflow.md#many-noises-per-observation)
            losses = shared_prefix_losses(self.student, inputs, data, noise, time,
                                          rcfg.student_steps if rcfg.on_policy else 0)
        else:
            if rcfg.on_policy:
                noise = on_policy_noise(self.student, inputs, noise, data, time, rcfg.student_steps)
            losses = student_losses(self.student, inputs, data, noise, time)
        loss = losses.mean()
        return loss, {"loss": loss.detach()}

    # ---- saving and loading ---------------------------------------------------------------------

    def _save_pretrained(self, save_directory: Path) -> None:
        """The canonical checkpoint, the recorded closed-loop evaluation, and the pictures its card
        links (the card itself is ``generate_model_card``'s, written by the mixin)."""
        if self.base is None:
            raise UserError("cannot save: no base checkpoint (config and processors) is known for this student")
        folder = Path(save_directory)
        write_canonical(folder, self.student, self.base, self.reflow_config.student_steps, self.lineage,
                        vlm_repo_id=self.vlm_repo_id)
        draw_card_images(self.lineage, folder)
        if self.closed_loop is not None:
            self.closed_loop.write(folder / EVAL_NAME)
            draw_closed_loop_images(self.closed_loop, folder)
        (folder / "README.md").unlink(missing_ok=True)  # the mixin writes this copy's card, not an older one

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        device: str = "cpu",
        attach_teacher: bool = False,
        **unknown,
    ) -> ReflowPolicy:
        """A student from a canonical checkpoint (folder or Hub repo at ``revision``), with the
        arguments of ``ModelHubMixin.from_pretrained``; offline (``HF_HUB_OFFLINE=1`` or
        ``local_files_only``) from the Hugging Face cache. The teacher is re-attached from the
        lineage file only when asked (``attach_teacher=True``), with the same Hub arguments. A plain
        SmolVLA checkpoint (no lineage file) is refused, as ``hub-reflow pull`` refuses it."""
        if unknown:
            raise TypeError(f"ReflowPolicy.from_pretrained() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        hub = dict(token=token, cache_dir=cache_dir, force_download=force_download, local_files_only=local_files_only)
        resolved = resolve_checkpoint(str(pretrained_model_name_or_path), revision, what="checkpoint", **hub)
        if is_plain_smolvla(resolved.path):  # pull's rule: no lineage is made up for it
            raise UserError(f"checkpoint: {pretrained_model_name_or_path} is {PLAIN}; {PLAIN_FIX}")
        student = load_smolvla(resolved.path, device=device, what="checkpoint")
        try:
            lineage = Lineage.from_file(resolved.path / LINEAGE_NAME)
        except Exception as e:  # not JSON, fields missing
            raise UserError(f"checkpoint: its {LINEAGE_NAME} cannot be read ({type(e).__name__}); pass a reflow student") from None
        policy = cls(student, None, ReflowConfig.from_dict(lineage.reflow), base=resolved, lineage=lineage)
        policy.closed_loop = read_closed_loop(resolved.path)  # saved and pushed again with it
        if attach_teacher:
            policy.attach_teacher(device=device, **hub)
        return policy

    def push_to_hub(self, repo_id: str, *, config: dict | None = None, commit_message: str | None = None,
                    private: bool | None = None, token: str | None = None, branch: str | None = None,
                    create_pr: bool | None = None, allow_patterns=None, ignore_patterns=None, delete_patterns=None,
                    model_card_kwargs: dict | None = None, tag: str | None = None, force: bool = False,
                    endpoint: str | None = None) -> str:
        """Save the canonical checkpoint to a temp dir and push it with ``hub.push_pull.push_checkpoint`` (one
        commit, checked, with the model card); returns the commit URL. ``endpoint`` defaults to
        ``HF_ENDPOINT``. The arguments of ``ModelHubMixin.push_to_hub``, so that
        ``save_pretrained(..., push_to_hub=True)`` works: ``config`` is the mixin's own record (the
        checkpoint's config.json is LeRobot's and is pushed as saved); ``model_card_kwargs`` may
        set the card's ``license``; file patterns and pull requests are refused."""
        unsupported = [n for n, v in (("create_pr", create_pr), ("allow_patterns", allow_patterns),
                                      ("ignore_patterns", ignore_patterns), ("delete_patterns", delete_patterns)) if v]
        extra = sorted(set(model_card_kwargs or {}) - {"license"})
        if unsupported or extra:
            raise UserError(f"push: {', '.join(unsupported + extra)} not supported: a reflow checkpoint is pushed whole, "
                            "in one commit, with its own model card")
        return push_policy(self, repo_id, private=bool(private), branch=branch, commit_message=commit_message,
                           token=token, tag=tag, force=force, endpoint=endpoint,
                           license=(model_card_kwargs or {}).get("license"))

    # ---- inference, the LeRobot way (the student's) ---------------------------------------------

    @property
    def config(self):
        """The student's ``SmolVLAConfig`` (``num_steps`` is the student's step count)."""
        return self.student.config

    def reset(self) -> None:
        """Empty the student's action queue: call it whenever the environment is reset."""
        self.student.reset()

    def select_action(self, batch: dict[str, Tensor], noise: Tensor | None = None, **kwargs) -> Tensor:
        """One action for a preprocessed observation (``SmolVLAPolicy.select_action``: a chunk is
        sampled in ``num_steps`` Euler steps and served ``n_action_steps`` at a time)."""
        return self.student.select_action(batch, noise=noise, **kwargs)

    def predict_action_chunk(self, batch: dict[str, Tensor], noise: Tensor | None = None, **kwargs) -> Tensor:
        """A whole action chunk for a preprocessed observation (``SmolVLAPolicy.predict_action_chunk``)."""
        return self.student.predict_action_chunk(batch, noise=noise, **kwargs)

    def generate_model_card(self, *args, license: str | None = None, **kwargs) -> ModelCard:
        """The card of what ``_save_pretrained`` writes: its pictures and closed-loop section."""
        return render_card(self.lineage, self.student.config, license=license,
                           closed_loop=closed_loop_context(self.closed_loop))


def _on(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``; a host tensor is copied without waiting for the device (a blocking
    copy would make the host wait for all queued work at every training step)."""
    return t if t.device == device else t.to(device, non_blocking=True)


def _assert_independent(student, teacher) -> None:
    """Teacher and student must not share a tensor (the seed document's first failure)."""
    teacher_ptrs = {t.data_ptr() for t in teacher.state_dict().values()}
    shared = [k for k, t in student.state_dict().items() if t.data_ptr() in teacher_ptrs]
    if shared:
        raise ValueError(f"student and teacher share {len(shared)} tensors (e.g. {shared[0]}); each needs its own VLM")
