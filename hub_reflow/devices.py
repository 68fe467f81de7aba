"""The one ``--device`` rule: cpu, cuda or auto; cuda only when a CUDA device is visible."""

from __future__ import annotations

import os

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


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_num_workers(device: str, num_processes: int = 1) -> int:
    """Data loader workers per process when ``--num-workers`` is not given: on CUDA,
    ``lerobot-train``'s default of 4, at most one per core left after the training processes' own
    (the machine's cores shared by ``num_processes``); on the CPU none, since a worker takes a core
    from the training process's threads (docs/cli.md#train, `--num-workers`)."""
    if device != "cuda":
        return 0
    return max(0, min(4, usable_cores() // max(num_processes, 1) - 1))
