"""Command-line values checked once, up front, before anything is loaded or trained: argparse types
with ranges (``int_in``, ``float_in``, ``repo_id``, ``ref_name``) and a parser whose errors are one
line (exit 2) and whose ``--help`` shows the defaults; output folders (not a file nor under a file,
empty unless asked otherwise, writable: a probe file is written and removed) and free disk space.
The checks of a whole training run (combinations, the run folder, ``--resume``) are ``training.plan``'s.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import UserError
from .hub_io import check_repo_id as check_hub_repo_id

# The teacher integrates --teacher-steps Euler steps for every target, at every training step. Its
# Euler error falls as 1/K: at 1000 steps it is 100 times below SmolVLA's own 10-step sampling, far
# below anything a 1-2 step student can resolve; beyond that each training step only costs more
# (linearly: 10^6 steps would make one training step ~10^5 times slower than the default).
MAX_TEACHER_STEPS = 1000
MAX_SEED = 2**32 - 1  # LeRobot's set_seed seeds numpy, which takes 32-bit seeds


# ---- argparse ----------------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown in ``--help``, except where there is none to show (None, a flag's False, a
    ``--no-...`` flag's True)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = getattr(action.default, "unset_default", action.default)  # training.command.Unset: the real default
        if default is None or default is False or (default is True and action.const is False) or action.default == argparse.SUPPRESS or default in ((), [], {}) \
                or "%(default)" in text or "(default" in text or not action.option_strings:
            return text  # nothing to show, or the help says its default in words
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, with a bad value reported in one line (``hub-reflow: error: ...``), exit 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        sys.stderr.write(f"hub-reflow: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def int_in(lo: int | None = None, hi: int | None = None, why: str = ""):
    """An argparse type: an integer in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"between {lo} and {hi}")
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}{f' ({why})' if why else ''}")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(lo: float | None = None, hi: float | None = None, *, lo_open: bool = True):
    """An argparse type: a finite number above ``lo`` (or at least ``lo`` with ``lo_open=False``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo:g}, got {text}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"must be <= {hi:g}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def check_repo_id(value: str, what: str = "repo id", need_namespace: bool = True) -> str:
    """A Hub repo id by the one rule (``hub_io.check_repo_id``): ``namespace/name``."""
    check_hub_repo_id(value, what, need_namespace=need_namespace)
    return value


def repo_id(text: str) -> str:
    """An argparse type: namespace/name."""
    try:
        return check_repo_id(text, "repo id")
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("repo id: ")) from None


_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def ref_problem(name: str) -> str | None:
    """Why ``name`` cannot be a branch or tag on the Hub (git's rules), or None."""
    if not name:
        return "it is empty"
    if len(name) > 200:
        return "it is longer than 200 characters"
    if name.startswith(("/", "-", "refs/")) or name.endswith(("/", ".", ".lock")):
        return "it starts with '/', '-' or 'refs/', or ends with '/', '.' or '.lock'"
    bad = sorted({c for c in name if c in " ~^:?*[\\" or ord(c) < 32 or ord(c) == 127})
    if bad:
        return f"it contains {', '.join(repr(c) for c in bad)}"
    if ".." in name or "//" in name or "@{" in name:
        return "it contains '..', '//' or '@{'"
    if _COMMIT_RE.fullmatch(name):
        return "it looks like a commit id"
    return None


def ref_name(what: str):
    """An argparse type: a branch or tag name git and the Hub accept."""

    def parse(text: str) -> str:
        problem = ref_problem(text)
        if problem:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {what} name: {problem}")
        return text

    parse.__name__ = f"{what} name"
    return parse


# ---- paths -------------------------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_folder(path: Path | str, flag: str, *, may_hold_files: bool = False, hint: str = "pass a new folder") -> Path:
    """``path`` will be created (or filled) as a folder: refuse a file, a file on the way, an
    existing folder with files (unless ``may_hold_files``) and a place this process cannot write."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; pass a folder")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, so no folder can be made under it; pass another path")
    if path.is_dir() and not may_hold_files and any(path.iterdir()):
        raise UserError(f"{flag} {path} already holds files; {hint}")
    probe_writable(existing, flag, path)
    return path


def probe_writable(folder: Path, flag: str, target: Path | None = None) -> None:
    """Write and remove a small file in ``folder`` (permission bits lie to root and about read-only
    mounts; a real write does not)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".hub-reflow-write-probe-", dir=folder)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else type(e).__name__
        raise UserError(f"{flag} {target or folder}: cannot write in {folder} ({reason}); pass a folder you can write to") from None


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(_nearest_existing(Path(path))).free


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def check_free_space(path: Path | str, needed: int, flag: str, what: str) -> None:
    free = free_bytes(Path(path))
    if free < needed:
        raise UserError(f"{flag} {path}: {_size(free)} free on its disk, {what} need about {_size(needed)}; "
                        "free some space or pass a folder on another disk")


def disk_full(e: OSError) -> bool:
    return getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
