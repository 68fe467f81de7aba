"""Copies of a reflow checkpoint broken one way each, as users' checkpoints break (the fork's student:
docs/canonical.md). Each function edits a fresh copy in ``dst`` and returns it. They work on the real
tiny student (integration tests) and on the synthetic one (tests/synthetic.py, the unit tier)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file



def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg, indent=4))


def _edit_weights(folder: Path, fn) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    tensors = fn(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _expert_keys(tensors: dict) -> list[str]:
    return sorted(k for k, t in tensors.items() if k.startswith("model.vlm_with_expert.lm_expert.") and t.is_floating_point())


def extra_config_fields(student: Path, teacher: Path, dst: Path) -> Path:
    _copy(student, dst)
    _edit_config(dst, use_reflow=True, teacher_model_path="lerobot/some-teacher", reflow_steps=1)
    return dst


def embedded_teacher(student: Path, teacher: Path, dst: Path) -> Path:
    _copy(student, dst)
    t = load_file(str(teacher / "model.safetensors"))
    _edit_weights(dst, lambda s: {**s, **{f"teacher.{k}": v for k, v in t.items()}})
    return dst


def fp32_layout(student: Path, teacher: Path, dst: Path) -> Path:
    _copy(student, dst)
    _edit_weights(dst, lambda s: {k: v.float() if v.is_floating_point() else v for k, v in s.items()})
    return dst


def load_vlm_weights_false(student: Path, teacher: Path, dst: Path) -> Path:
    _copy(student, dst)
    _edit_config(dst, load_vlm_weights=False)
    return dst


def deleted_processor_files(student: Path, teacher: Path, dst: Path) -> Path:
    _copy(student, dst)
    (dst / "policy_postprocessor.json").unlink()
    for p in dst.glob("policy_postprocessor_*.safetensors"):
        p.unlink()
    return dst


def swapped_norm_stats(student: Path, teacher: Path, dst: Path) -> Path:
    """The action's mean and std exchanged, in both the normalizer and the unnormalizer."""
    _copy(student, dst)
    for path in dst.glob("policy_*processor_*.safetensors"):
        stats = load_file(str(path))
        if "action.mean" in stats:
            stats["action.mean"], stats["action.std"] = stats["action.std"].clone(), stats["action.mean"].clone()
            save_file(stats, str(path))
    return dst


def nan_in_expert(student: Path, teacher: Path, dst: Path) -> Path:
    _copy(student, dst)

    def fn(s):
        k = _expert_keys(s)[0]
        s[k] = s[k].clone()
        s[k].view(-1)[0] = float("nan")
        return s

    _edit_weights(dst, fn)
    return dst


def perturbed_vlm(student: Path, teacher: Path, dst: Path) -> Path:
    _copy(student, dst)

    def fn(s):
        k = sorted(k for k in s if k.startswith("model.vlm_with_expert.vlm.") and s[k].is_floating_point() and s[k].dim() == 2)[0]
        s[k] = s[k].clone()
        s[k].view(-1)[0] += 0.25
        return s

    _edit_weights(dst, fn)
    return dst


def missing_key(student: Path, teacher: Path, dst: Path) -> Path:
    _copy(student, dst)
    _edit_weights(dst, lambda s: {k: v for k, v in s.items() if k != _expert_keys(s)[-1]})
    return dst


def reinitialised_expert(student: Path, teacher: Path, dst: Path) -> Path:
    """The action expert replaced by LeRobot's own fresh initialisation of it (another seed)."""
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from hub_reflow.checkpoint import read_policy_config

    _copy(student, dst)
    cfg = read_policy_config(student, "student")
    cfg.device = "cpu"
    torch.manual_seed(12345)
    fresh = SmolVLAPolicy(cfg).state_dict()
    _edit_weights(dst, lambda s: {k: (fresh[k].to(v.dtype).clone() if k.startswith("model.vlm_with_expert.lm_expert.") else v)
                                  for k, v in s.items()})
    return dst


def untrained_copy(student: Path, teacher: Path, dst: Path) -> Path:
    """The teacher's own weights saved as a student (what a run that trained nothing would write)."""
    _copy(student, dst)
    shutil.copyfile(teacher / "model.safetensors", dst / "model.safetensors")
    return dst


def small_random_expert(student: Path, teacher: Path, dst: Path) -> Path:
    """Every action-expert tensor replaced by small random values (std 0.01)."""
    _copy(student, dst)
    g = torch.Generator().manual_seed(7)
    _edit_weights(dst, lambda s: {k: (0.01 * torch.randn(v.shape, generator=g)).to(v.dtype) if k in _expert_keys(s) else v
                                  for k, v in s.items()})
    return dst


def zero_expert(student: Path, teacher: Path, dst: Path) -> Path:
    """Every action-expert tensor set to zero."""
    _copy(student, dst)
    _edit_weights(dst, lambda s: {k: torch.zeros_like(v) if k in _expert_keys(s) else v for k, v in s.items()})
    return dst


# Students that are structurally perfect but useless: verify's fidelity check must fail each.
USELESS = {
    "untrained_copy": untrained_copy,
    "lerobot_init_expert": reinitialised_expert,
    "small_random_expert": small_random_expert,
    "zero_expert": zero_expert,
}

# name -> (break, the check verify must fail, whether canonicalize repairs it)
BREAKS = {
    "extra_config_fields": (extra_config_fields, "config", True),
    "embedded_teacher": (embedded_teacher, "weights.teacher", True),
    "fp32_layout": (fp32_layout, "weights.dtypes", True),
    "load_vlm_weights_false": (load_vlm_weights_false, "config.diff", True),
    "deleted_processor_files": (deleted_processor_files, "processors.files", True),
    "swapped_norm_stats": (swapped_norm_stats, "processors.stats", False),
    "nan_in_expert": (nan_in_expert, "weights.finite", False),
    "perturbed_vlm": (perturbed_vlm, "weights.vlm", False),
    "missing_key": (missing_key, "weights.keys", False),
}


# ---- teacher tensors saved with the student, in the layouts modules produce ---------------------
# A wrapper holding `student` and `teacher` side by side puts the teacher at the top level; the
# fork held the teacher's flow-matching model as an attribute of the student's (keys
# `model._teacher_model.<its keys>`); a whole teacher policy held inside the student's model gives
# `model.teacher.model.<keys>`. The student's own keys are saved plain, or under the wrapper's
# `student.` prefix (then the nested teachers sit under it too).

TEACHER_LAYOUTS = {
    "top_level": lambda k: f"teacher.{k}",
    "under_model": lambda k: "model._teacher_model." + k.removeprefix("model."),
    "under_model_inner_model": lambda k: f"model.teacher.{k}",
}


def teacher_in_layout(layout: str, prefixed: bool):
    def make(student: Path, teacher: Path, dst: Path) -> Path:
        _copy(student, dst)
        t = load_file(str(teacher / "model.safetensors"))
        assert all(k.startswith("model.") for k in t), "a SmolVLA state dict lives under model."
        own = "student." if prefixed else ""
        nest = "" if layout == "top_level" else own
        _edit_weights(dst, lambda s: {**{own + k: v for k, v in s.items()},
                                      **{nest + TEACHER_LAYOUTS[layout](k): v for k, v in t.items()}})
        return dst

    make.__name__ = f"teacher_{layout}" + ("_student_prefixed" if prefixed else "")
    return make


# name -> (break, the checks verify and push must fail); canonicalize repairs every one.
NESTED_TEACHERS = {
    f"teacher_{layout}" + ("_student_prefixed" if prefixed else ""):
        (teacher_in_layout(layout, prefixed), {"weights.teacher", "weights.keys"} if prefixed else {"weights.teacher"})
    for layout in TEACHER_LAYOUTS for prefixed in (False, True)
}
