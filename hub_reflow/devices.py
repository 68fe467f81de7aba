"""The one ``--device`` rule: cpu, cuda or auto; cuda only when a CUDA device is visible."""

from __future__ import annotations

import torch

from .errors import UserError

DEVICES = ("cpu", "cuda", "auto")


def check_device(name: str) -> None:
    """Refuse a device name that is not cpu, cuda or auto, and cuda without a visible CUDA device."""
    if name not in DEVICES:
        raise UserError(f"--device must be cpu, cuda or auto, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is visible; use --device cpu or auto")


def resolve_device(name: str) -> str:
    """``name`` checked, with ``auto`` made concrete: cuda when visible, else cpu."""
    check_device(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
