"""Every command-line value checked once, up front, before anything is loaded or trained.

- argparse types with ranges (``int_in``, ``float_in``, ``repo_id``, ``ref_name``) and a parser whose
  errors are one line (exit 2) and whose ``--help`` shows the defaults;
- paths: an output folder must not be a file nor under a file, must be empty (or a run to
  ``--resume``), and must be writable (a probe file is written and removed); free disk space is
  compared with what the run will write;
- combinations: ``--student-steps`` at most ``--teacher-steps``, warm-up within the run, a
  ``--dataset`` id that agrees with the ``--dataset-root``'s own id;
- ``--resume``: every setting that changes what is trained must equal the checkpoint's record.
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
from dataclasses import MISSING, fields
from pathlib import Path

from .errors import UserError

# The teacher integrates --teacher-steps Euler steps for every target, at every training step. Its
# Euler error falls as 1/K: at 1000 steps it is 100 times below SmolVLA's own 10-step sampling, far
# below anything a 1-2 step student can resolve; beyond that each training step only costs more
# (linearly: 10^6 steps would make one training step ~10^5 times slower than the default).
MAX_TEACHER_STEPS = 1000
MAX_SEED = 2**32 - 1  # LeRobot's set_seed seeds numpy, which takes 32-bit seeds


# ---- argparse ----------------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown in ``--help``, except where there is none to show (None, a flag's False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "%(default)" in text or not action.option_strings:
            return text
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
    """A Hub repo id as huggingface_hub validates it, with a namespace (``user/name``) when asked."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as e:
        reason = str(e).splitlines()[0].rstrip(".")[:160]
        raise UserError(f"{what}: {value!r} is not a valid Hub repo id ({reason}); use namespace/name") from None
    if need_namespace and "/" not in value:
        raise UserError(f"{what}: {value!r} has no namespace; use namespace/name (your user or organisation name, "
                        f"e.g. you/{value})")
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


# ---- train / pairs -----------------------------------------------------------------------------


def check_train_args(args) -> None:
    """Combinations of ``train`` values (each value's own range is argparse's and ReflowConfig's),
    and the output folder; nothing is loaded yet."""
    r = args.reflow
    if r.student_steps > r.teacher_steps:
        raise UserError(f"--student-steps {r.student_steps} is more than --teacher-steps {r.teacher_steps}: the student "
                        "learns the teacher's --teacher-steps solution, so more student steps gain nothing; pass "
                        f"--student-steps <= {r.teacher_steps}")
    if r.teacher_steps > MAX_TEACHER_STEPS:
        raise UserError(f"--teacher-steps must be <= {MAX_TEACHER_STEPS}, got {r.teacher_steps} (the targets are no "
                        "better beyond that, each training step only slower)")
    if r.warmup_steps is not None and r.warmup_steps > r.steps:
        raise UserError(f"--warmup-steps {r.warmup_steps} is more than --steps {r.steps}: the learning rate would never "
                        "reach --lr; pass fewer warm-up steps")
    if args.log_freq < 1:
        raise UserError(f"--log-freq must be >= 1, got {args.log_freq}")
    if args.save_freq < 0:
        raise UserError(f"--save-freq must be >= 0 (0: only at the end), got {args.save_freq}")
    if args.num_workers < 0:
        raise UserError(f"--num-workers must be >= 0, got {args.num_workers}")
    if not 0 <= r.seed <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED}, got {r.seed}")
    if not math.isfinite(r.lr if r.lr is not None else 1.0):
        raise UserError(f"--lr must be a finite number, got {r.lr}")
    check_train_output(Path(args.output_dir), args.resume)
    if args.dataset_root is not None:
        check_dataset_root(Path(args.dataset_root), args.dataset)


def check_train_output(output_dir: Path, resume: bool) -> None:
    """The run folder: new (or empty) without ``--resume``; with it, a run whose ``last`` exists."""
    output_dir = Path(output_dir).expanduser()
    last = output_dir / "checkpoints" / "last"
    if last.is_symlink() and not last.exists():
        target = os.readlink(last)
        steps = sorted(p.name for p in (output_dir / "checkpoints").iterdir()
                       if p.is_dir() and not p.is_symlink() and (p / "pretrained_model").is_dir())
        fix = (f"point it at an existing checkpoint (ln -sfn {steps[-1]} {last}) to resume from it" if steps else
               "no checkpoint folder is left: remove the run folder or pass a new --output-dir")
        raise UserError(f"--output-dir {output_dir}: {last} points to {target}, which does not exist; {fix}")
    if resume:
        if output_dir.exists() and not output_dir.is_dir():
            raise UserError(f"--output-dir {output_dir} is a file, not a run folder; pass the run folder to resume")
        if not last.exists():
            raise UserError(f"--resume: no checkpoint at {last}; start without --resume")
        check_output_folder(output_dir, "--output-dir", may_hold_files=True)
        return
    check_output_folder(output_dir, "--output-dir", hint="pass --resume to continue that run, or a new folder")


def check_dataset_root(root: Path, dataset: str) -> None:
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"--dataset-root {root} does not exist; pass the folder of the LeRobotDataset")
    if not root.is_dir():
        raise UserError(f"--dataset-root {root} is a file; pass the folder of the LeRobotDataset")
    if not (root / "meta" / "info.json").is_file():
        what = "is empty" if not any(root.iterdir()) else "has no meta/info.json"
        raise UserError(f"--dataset-root {root} {what}: it is not a LeRobotDataset folder; pass the dataset's own folder "
                        "(the one holding meta/ and data/), or leave --dataset-root out to download --dataset from the Hub")
    own = dataset_root_repo_id(root)
    if own is not None and own != dataset:
        raise UserError(f"--dataset {dataset} does not match --dataset-root {root}, which holds {own} ({_own_source(root)}); "
                        f"pass --dataset {own}, or the folder of {dataset}")


_CARD_ID_RE = re.compile(r"visualize_dataset\?path=([A-Za-z0-9][\w.\-]*/[\w.\-]+)")
_CACHE_DIR_RE = re.compile(r"^datasets--([^-][\w.\-]*?)--([\w.\-]+)$")


def _lerobot_home() -> Path:
    home = os.environ.get("HF_LEROBOT_HOME")
    if home:
        return Path(home).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(hf_home).expanduser() / "lerobot"


def _own_ids(root: Path) -> list[tuple[str, str]]:
    """(repo id, where it was read) from what a dataset folder says about itself."""
    found = []
    card = root / "README.md"
    if card.is_file():
        try:
            m = _CARD_ID_RE.search(card.read_text(errors="replace"))
        except OSError:
            m = None
        if m:
            found.append((m.group(1), "its dataset card"))
    resolved = root.resolve()
    for part in resolved.parts:  # the Hugging Face cache: .../datasets--ns--name/snapshots/<sha>
        m = _CACHE_DIR_RE.match(part)
        if m and resolved.parent.name == "snapshots":
            found.append((f"{m.group(1)}/{m.group(2)}", "its Hugging Face cache folder"))
    try:
        rel = resolved.relative_to(_lerobot_home().resolve())
        if len(rel.parts) == 2:
            found.append(("/".join(rel.parts), "its place in the LeRobot cache"))
    except ValueError:
        pass
    return found


def dataset_root_repo_id(root: Path) -> str | None:
    """The repo id a dataset folder records for itself (LeRobot's dataset card, the Hugging Face
    cache layout, or LeRobot's own cache layout ``HF_LEROBOT_HOME/ns/name``), or None."""
    ids = _own_ids(Path(root))
    return ids[0][0] if ids else None


def _own_source(root: Path) -> str:
    ids = _own_ids(Path(root))
    return f"from {ids[0][1]}" if ids else ""


def check_batch_size(batch_size: int, frames: int, what: str = "training frames") -> None:
    if batch_size > frames:
        raise UserError(f"--batch-size {batch_size} is more than the {frames} {what}; pass --batch-size {frames} or less")


def checkpoint_bytes(weights_bytes: int, trainable_params: int, extra_bytes: int = 1 << 20) -> int:
    """One checkpoint: the student's weights (the teacher's size), AdamW's two fp32 moments per
    trainable parameter, processor files, lineage and card images."""
    return weights_bytes + 8 * trainable_params + extra_bytes


def checkpoints_to_write(start: int, steps: int, save_freq: int) -> int:
    marks = {steps}
    if save_freq > 0:
        marks |= set(range(save_freq, steps + 1, save_freq))
    return len([m for m in marks if m > start])


# ---- resume ------------------------------------------------------------------------------------

# ReflowConfig fields a resumed run may change: only cuda_graphs (the teacher's sampling path, same
# numbers); every other one changes what is trained (--steps too: it sets the length of the cosine
# schedule). Settings outside ReflowConfig (--log-freq,
# --save-freq, --num-workers, --device, --no-progress) may always change.
RESUME_MAY_CHANGE: frozenset[str] = frozenset({"cuda_graphs"})  # how the teacher is run, not what it computes


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(value) -> str:
    return "the default" if value is None else repr(value) if isinstance(value, str) else str(value)


def check_resume(saved, now) -> None:
    """Refuse to continue a run with another teacher, dataset, targets or any ReflowConfig field
    (compared field by field, so new fields are covered). ``saved``/``now``: ``Lineage``."""
    from .config import ReflowConfig

    fix = "resume with the run's own settings, or start a new --output-dir"
    t_old, t_new = saved.teacher.weights_sha256, now.teacher.weights_sha256
    if t_old and t_old != t_new:
        was = saved.teacher.repo_id or "a local folder"
        raise UserError(f"--resume: --teacher differs from the run's: it was trained from {was} (weights sha256 "
                        f"{t_old[:12]}...), the given teacher's weights are {t_new[:12]}...; {fix}")
    d_old, d_new = saved.dataset or {}, now.dataset or {}
    p_old, p_new = d_old.get("pairs"), d_new.get("pairs")
    if (p_old or {}).get("data_sha256") != (p_new or {}).get("data_sha256"):
        was = (f"cached pairs {p_old.get('repo_id') or 'from a local folder'} (sha256 {p_old['data_sha256'][:12]}...)"
               if p_old else "online pairs")
        raise UserError(f"--resume: this run was trained with {was}; resume it with the same --pairs (or none)")
    old_cfg, new_cfg = saved.reflow or {}, now.reflow or {}
    for f in fields(ReflowConfig):
        if f.name in RESUME_MAY_CHANGE:
            continue
        default = None if f.default is MISSING else f.default
        a = old_cfg.get(f.name, default)  # a field added since the run was written: it ran with the default
        b = new_cfg.get(f.name, default)
        if a != b:
            raise UserError(f"--resume: {_flag(f.name)} differs from the run's: it was {_show(a)}, now {_show(b)}; {fix}")
    for key, what in (("repo_id", "--dataset"), ("commit", "the dataset's commit (--dataset-revision)"),
                      ("train_episodes", "the dataset's training episodes (--dataset-root, another dataset?)")):
        a, b = d_old.get(key), d_new.get(key)
        if a is not None and b is not None and a != b:
            raise UserError(f"--resume: {what} differs from the run's: it was {_show(a)}, now {_show(b)}; {fix}")
