"""Rules about the keys and tensors of a SmolVLA state dict, on names and safetensors headers: the one
teacher rule (docs/verify.md#the-teacher-rule), prefixes, module groups, dtypes."""

from __future__ import annotations

import math

import torch

# Module groups of a SmolVLA state dict, by module path (the expert's keys also contain "vlm").
GROUPS = (
    ("VLM", ("model", "vlm_with_expert", "vlm")),
    ("action expert", ("model", "vlm_with_expert", "lm_expert")),
    ("projections", ("model",)),
)
Header = dict[str, tuple[tuple[int, ...], str]]  # key -> (shape, safetensors dtype name)

ST_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8"}
TORCH_DTYPE = {v: k for k, v in ST_DTYPE.items()}


def is_teacher_key(key: str) -> bool:
    """The one teacher rule: a key with a path component naming a teacher (``teacher.``,
    ``teacher_model.``, ``model._teacher_model.``...), at any depth, is a teacher tensor. No SmolVLA
    key names a teacher."""
    return any("teacher" in part.lower() for part in key.split(".")[:-1])


def teacher_prefix(key: str) -> str:
    """The key's path up to and including its first teacher component (``model._teacher_model.``)."""
    parts = key.split(".")
    i = next(i for i, part in enumerate(parts[:-1]) if "teacher" in part.lower())
    return ".".join(parts[: i + 1]) + "."


def split_prefixed(keys, reference: set[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Keys that are not in ``reference`` but are a reference key under some prefix.

    Returns ({key: reference key}, {prefix: [keys]}), trying the shortest prefix first
    (``policy.model.x`` -> prefix ``policy.``, key ``model.x``)."""
    mapping: dict[str, str] = {}
    by_prefix: dict[str, list[str]] = {}
    for k in keys:
        if k in reference:
            continue
        parts = k.split(".")
        for i in range(1, len(parts)):
            rest = ".".join(parts[i:])
            if rest in reference:
                prefix = ".".join(parts[:i]) + "."
                mapping[k] = rest
                by_prefix.setdefault(prefix, []).append(k)
                break
    return mapping, by_prefix


def group_of(key: str) -> str:
    parts = tuple(key.split("."))
    for name, prefix in GROUPS:
        if parts[: len(prefix)] == prefix:
            return name
    return "other"


def group_counts(keys) -> dict[str, int]:
    counts = {name: 0 for name, _ in GROUPS}
    for k in keys:
        g = group_of(k)
        counts[g] = counts.get(g, 0) + 1
    return counts


def torch_dtype(st_dtype: str) -> torch.dtype:
    return TORCH_DTYPE[st_dtype]


def nbytes(entry: tuple[tuple[int, ...], str]) -> int:
    shape, dtype = entry
    return math.prod(shape) * torch.empty((), dtype=torch_dtype(dtype)).element_size()


def equal_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exactly the same numbers (a float32 copy of a bf16 tensor counts as equal: dtypes are the
    dtype check's business)."""
    if a.shape != b.shape:
        return False
    if a.dtype == b.dtype:
        return torch.equal(a, b)
    return torch.equal(a.double(), b.double())


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def finite(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex()) or bool(torch.isfinite(t).all())
