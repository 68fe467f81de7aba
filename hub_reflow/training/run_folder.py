"""The run folder, all of it here (LeRobot keeps the same in ``common/train_utils.py``): its checks,
its lock, the run to resume, and each checkpoint written. Layout (lerobot-train's)::

    OUTPUT/checkpoints/<step>/pretrained_model/   the canonical student (checkpoint.write_canonical)
    OUTPUT/checkpoints/<step>/training_state/     LeRobot's optimizer, scheduler, step and RNG state, with
                                                  the fp32 masters, the frames' spreads and the run's record
    OUTPUT/checkpoints/last -> <step>             switched by an atomic rename of a symlink
    OUTPUT/.hub-reflow-train.lock                 held for the life of a run

Each checkpoint is written to a temporary folder and renamed into place, then ``last`` moves.

**The lock: one run per output folder.** The lock is the operating system's (``fcntl.flock``): it is
released when the process ends, however it ends, so a run killed with SIGKILL leaves at most a lock
*file* that nobody holds, which the next run takes over (and says so). A second run started on a
folder whose lock is held is refused in one line before it touches anything. Under ``accelerate
launch`` / ``torchrun`` only the main process (``RANK`` 0) takes the lock; the others wait until it is
held by their own launch (the launcher's ``MASTER_ADDR:MASTER_PORT`` and run id, written into the
lock file) and refuse one held by another.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ..checkpoint import LINEAGE_NAME, Lineage, write_canonical
from ..errors import UserError
from ..files import atomic_dir
from ..safeio import check_folder, load_file, load_model
from ..validation import check_free_space, check_output_folder, disk_full

LOCK_NAME = ".hub-reflow-train.lock"
RUN_RECORD = "hub_reflow_run.json"  # training_state/: the command line's settings (``train --resume`` alone continues)
MASTERS_FILE = "fp32_master_weights.safetensors"  # training_state/: the optimizer's fp32 masters (optimizer.MasterWeights)
SPREAD_FILE = "hub_reflow_frame_spread.safetensors"  # training_state/: the spreads a SpreadSampler draws by
logger = logging.getLogger("hub_reflow.train")  # the train command's lines, under its name


class RunFolder:
    """``OUTPUT``: ``--output-dir`` as given."""

    def __init__(self, output_dir: Path | str):
        self.root = Path(output_dir)
        self.last = self.root / "checkpoints" / "last"

    # ---- checks ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """A folder can be made (or filled) here; then its lock, held for the ``with`` body."""
        check_output_folder(self.root, "--output-dir", may_hold_files=True)
        with run_lock(self.root):
            yield

    def refuse_if_held(self) -> None:
        """Before anything reads the folder (``--resume`` reads its checkpoints): refuse one whose lock
        another launch holds, with the same line ``run_lock`` gives."""
        path = self.root.expanduser() / LOCK_NAME
        holder = _held_by(path)
        if holder is not None and holder.get("launch") != launch_id():
            raise _refusal(path.parent, holder)

    def check(self, resume: bool) -> None:
        """New (or empty) without ``--resume``; with it, a run whose ``last`` exists."""
        root, last = self.root.expanduser(), self.last.expanduser()
        if last.is_symlink() and not last.exists():
            target = os.readlink(last)
            steps = sorted(p.name for p in last.parent.iterdir()
                           if p.is_dir() and not p.is_symlink() and (p / "pretrained_model").is_dir())
            fix = (f"point it at an existing checkpoint (ln -sfn {steps[-1]} {last}) to resume from it" if steps else
                   "no checkpoint folder is left: remove the run folder or pass a new --output-dir")
            raise UserError(f"--output-dir {root}: {last} points to {target}, which does not exist; {fix}")
        if resume:
            if root.exists() and not root.is_dir():
                raise UserError(f"--output-dir {root} is a file, not a run folder; pass the run folder to resume")
            if not last.exists():
                raise UserError(f"--resume: no checkpoint at {last}; start without --resume")
        elif root.is_dir() and any(p.name != LOCK_NAME for p in root.iterdir()):  # the run's own lock aside
            raise UserError(f"--output-dir {root} already holds files; pass --resume to continue that run, or a new folder")

    def recorded_settings(self) -> dict | None:
        """``train --resume`` on the command line, before its options are known: the folder's checks,
        then the settings the run was started with (None: none recorded, an older run)."""
        self.check(resume=True)
        check_output_folder(self.root, "--output-dir", may_hold_files=True)
        try:
            data = json.loads((self.last.expanduser() / "training_state" / RUN_RECORD).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def check_space(self, accelerator, step: int, steps: int, save_freq: int, teacher_weights: Path,
                    trainable_params: int) -> None:
        """Before training, not at the first save: room for every checkpoint this run will write (where
        the main process writes them; every process stops on its verdict)."""
        problem = [None]
        if accelerator.is_main_process:
            count = checkpoints_to_write(step, steps, save_freq)
            one = checkpoint_bytes(teacher_weights.stat().st_size, trainable_params)
            try:
                check_free_space(self.root, count * one, "--output-dir", f"the {count} checkpoint{'s' if count > 1 else ''} of this run")
            except UserError as e:
                problem = [str(e)]
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(problem)
        if problem[0]:
            raise UserError(problem[0])

    # ---- the run resumed --------------------------------------------------------------------------

    def resume_source(self) -> tuple[Path, Lineage]:
        """The checkpoint ``last`` points to, and its lineage (the run's record)."""
        ckpt = self.last.resolve()
        try:
            return ckpt, Lineage.from_file(ckpt / "pretrained_model" / LINEAGE_NAME)
        except Exception as e:  # missing, not JSON, fields missing
            raise UserError(f"--resume: {ckpt / 'pretrained_model' / LINEAGE_NAME} cannot be read ({type(e).__name__}); "
                            "the run's record is needed to resume it: start a new --output-dir") from None

    @staticmethod
    def load_spread(ckpt: Path):
        """The frames' spreads the run draws by (frames by spread)."""
        from lerobot.utils.constants import TRAINING_STATE_DIR

        saved = ckpt / TRAINING_STATE_DIR / SPREAD_FILE
        if not saved.is_file():
            raise UserError(f"--resume: the training state in {saved.parent} cannot be read (no {SPREAD_FILE}: the frames' "
                            "spreads the run draws by); start a new --output-dir")
        return load_file(saved, "--resume")["spread"]

    @staticmethod
    def load_state(ckpt: Path, student, optimizer, scheduler, master, device: str):
        """The student's weights, the fp32 masters, LeRobot's optimizer and scheduler state: (step,
        optimizer, scheduler)."""
        from lerobot.common.train_utils import load_training_state
        from lerobot.utils.constants import TRAINING_STATE_DIR

        load_model(student, ckpt / "pretrained_model" / "model.safetensors", "--resume", strict=True, device=device)
        check_folder(ckpt / "training_state", "--resume")
        try:
            step, optimizer, scheduler = load_training_state(ckpt, optimizer, scheduler)
        except Exception as e:  # missing or malformed training_state files
            raise UserError(f"--resume: the training state in {ckpt / 'training_state'} cannot be read "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); start a new --output-dir") from None
        if master.active:  # the fp32 masters, not the rounded weights of pretrained_model/
            master.load_state_dict(load_file(ckpt / TRAINING_STATE_DIR / MASTERS_FILE, "--resume"))
        return step, optimizer, scheduler

    @staticmethod
    def sampler_state(ckpt: Path, step: int, num_samples: int, batch_size: int, num_processes: int) -> dict:
        """Where the sampler stopped (LeRobot's sample-exact resume), by the run's recorded batch size and
        processes (ours where it recorded none)."""
        from lerobot.common.train_utils import load_training_batch_size, load_training_num_processes
        from lerobot.datasets import compute_sampler_state

        return compute_sampler_state(step, num_samples, load_training_batch_size(ckpt) or batch_size,
                                     load_training_num_processes(ckpt) or num_processes)

    # ---- saving ---------------------------------------------------------------------------------

    def save(self, step: int, policy, optimizer, scheduler, num_processes: int, batch_size: int, master,
             record: dict | None, spread, teacher_config) -> Path:
        """``checkpoints/<step>/``: the canonical student (the teacher's parsed config, ``teacher_config``,
        with the student's ``num_steps``), LeRobot's training state, the fp32 masters, the frames'
        spreads and the run's ``record``; then ``last`` moves to it. A write that fails leaves ``last``
        as it was."""
        from lerobot.common.train_utils import get_step_checkpoint_dir, save_training_state
        from lerobot.utils.constants import TRAINING_STATE_DIR
        from safetensors.torch import save_file

        final = get_step_checkpoint_dir(self.root, policy.reflow_config.steps, step)
        policy.lineage.training["step"] = step
        if policy.teacher_sampling:  # online pairs: eager or CUDA graphs (fastpath.py)
            policy.lineage.training["teacher_sampling"] = policy.teacher_sampling
        try:
            with atomic_dir(final) as tmp:
                pretrained = tmp / "pretrained_model"
                pretrained.mkdir()
                write_canonical(pretrained, policy.student, policy.base, policy.reflow_config.student_steps, policy.lineage,
                                vlm_repo_id=policy.vlm_repo_id, config=teacher_config)
                save_training_state(tmp, step, optimizer, scheduler, num_processes=num_processes, batch_size=batch_size)
                if master.active:
                    save_file(master.state_dict(), str(tmp / TRAINING_STATE_DIR / MASTERS_FILE))
                if spread is not None:
                    save_file({"spread": spread.contiguous()}, str(tmp / TRAINING_STATE_DIR / SPREAD_FILE))
                if record:
                    (tmp / TRAINING_STATE_DIR / RUN_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))
        except OSError as e:  # disk full, quota, permissions changed during the run: `last` is untouched
            reason = "the disk is full" if disk_full(e) else (e.strerror or type(e).__name__)
            kept = (f"checkpoints/last ({self.last.resolve().name}) is unchanged: free space, then continue with --resume"
                    if self.last.exists() else "no checkpoint was saved before: free space and run again")
            raise UserError(f"train: checkpoint {final.name} could not be written in {final.parent} ({reason}); {kept}") from None
        self.update_last(final)
        return final

    def update_last(self, step_dir: Path) -> None:
        """``last`` -> ``step_dir``, by an atomic rename of a new symlink over it."""
        tmp = step_dir.parent / ".last.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(step_dir.name)
        os.replace(tmp, self.last)


def checkpoint_bytes(weights_bytes: int, trainable_params: int, extra_bytes: int = 1 << 20) -> int:
    """One checkpoint: the student's weights (the teacher's size), AdamW's two fp32 moments per
    trainable parameter, processor files, lineage and card images."""
    return weights_bytes + 8 * trainable_params + extra_bytes


def checkpoints_to_write(start: int, steps: int, save_freq: int) -> int:
    marks = {steps}
    if save_freq > 0:
        marks |= set(range(save_freq, steps + 1, save_freq))
    return len([m for m in marks if m > start])


# ---- the lock ------------------------------------------------------------------------------------


def launch_id() -> str:
    """What every process of one launch shares and no concurrent launch on this machine does."""
    parts = (os.environ.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"))
    return ":".join(parts) if os.environ.get("MASTER_PORT") else f"pid:{os.getpid()}"


def is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _refusal(folder: Path, holder: dict) -> UserError:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}"
    return UserError(f"--output-dir {folder}: another hub-reflow train is running on this folder ({who}); wait for it "
                     "to end or pass another --output-dir (nothing was changed)")


def _take(path: Path) -> int:
    """The lock file's descriptor, locked; refuse when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refusal(path.parent, _read(path)) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its last holder removed while we opened it
            return fd
        os.close(fd)


@contextlib.contextmanager
def run_lock(output_dir: Path, *, wait_s: float = 600.0) -> Iterator[None]:
    """Hold the folder's lock for the ``with`` body (main process), or wait for the own launch's
    main process to hold it (other ranks). A folder made here and left empty is removed at exit."""
    folder = Path(output_dir).expanduser()
    path = folder / LOCK_NAME
    if not is_main_rank():
        _wait_for_own_lock(path, wait_s)
        yield
        return
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = _take(path)
    except UserError:
        if made:
            folder.rmdir()
        raise
    left = _read(path)
    if left.get("pid"):
        logger.warning("a lock file left by an earlier run (pid %s on %s, since %s) that is no longer running was taken "
                       "over", left.get("pid"), left.get("host"), left.get("started"))
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "launch": launch_id(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)  # releases the lock
        if made and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # a run that failed before writing anything leaves nothing behind


def _wait_for_own_lock(path: Path, wait_s: float) -> None:
    own, deadline = launch_id(), time.monotonic() + wait_s
    while time.monotonic() < deadline:
        holder = _held_by(path)
        if holder is not None:
            if holder.get("launch") == own:
                return
            raise _refusal(path.parent, holder)
        time.sleep(0.05)
    raise UserError(f"--output-dir {path.parent}: the main process did not take the run's lock within {wait_s:.0f} s")


def _held_by(path: Path) -> dict | None:
    """The holder's record when some process holds the lock (None: nobody holds it yet)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (or no folder): nobody holds it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        record = _read(path)
        return record if record.get("launch") else None  # written just after the lock is taken
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
