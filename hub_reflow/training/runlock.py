"""One run per output folder: ``train`` holds an exclusive lock on ``OUTPUT/.hub-reflow-train.lock``
for the life of the run.

The lock is the operating system's (``fcntl.flock``): it is released when the process ends, however
it ends, so a run killed with SIGKILL leaves at most a lock *file* that nobody holds, which the next
run takes over (and says so). A second run started on a folder whose lock is held is refused in one
line before it touches anything. Under ``accelerate launch`` / ``torchrun`` only the main process
(``RANK`` 0) takes the lock; the others wait until it is held by their own launch (the launcher's
``MASTER_ADDR:MASTER_PORT`` and run id, written into the lock file) and refuse one held by another.
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

from ..errors import UserError

LOCK_NAME = ".hub-reflow-train.lock"
logger = logging.getLogger("hub_reflow.train")  # the train command's lines, under its name


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


def refuse_if_held(output_dir: Path) -> None:
    """Before anything reads the run folder (``--resume`` reads its checkpoints): refuse one whose
    lock another launch holds, with the same line ``run_lock`` gives."""
    path = Path(output_dir).expanduser() / LOCK_NAME
    holder = _held_by(path)
    if holder is not None and holder.get("launch") != launch_id():
        raise _refusal(path.parent, holder)


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
