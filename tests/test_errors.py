"""Every kind of bad input and fault a user can meet, one table row each (issue 11): the exit code
(0 ok, 1 a check failed, 2 bad input, 130 interrupted), exactly one ``hub-reflow: error:`` line on
stderr naming the problem, no traceback and nothing else from other libraries, and the state left
behind (runs, SRC and destination folders byte-identical, new folders not created, the local Hub's
repos unchanged, ``checkpoints/last`` untouched and finite).

Adding a case is one ``Case(...)`` line in ``CASES``. Cases run the real CLI entry point: in this
process (``main(argv)``: imports are paid once, so most cases cost well under a second), or as a
subprocess when they need one (a signal, the local Hub through ``HF_ENDPOINT``)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file, save_file

from conftest import run_cli
from hub_reflow.cli import main
from hub_reflow.logs import QUIET_ENV

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

WRITE = "hf_write_errors_token_3e9a"
OUR_LOG = re.compile(r"^(INFO|WARNING) hub_reflow\.")  # our own log lines may accompany an error


# ---- the world each case sees --------------------------------------------------------------------


class Ctx:
    """Paths a case builds its command from; folders are made (copied) on first use, in a fresh tmp."""

    def __init__(self, world, run_src: Path, tmp: Path, hub=None, hf_home: Path | None = None):
        self.world, self.run_src, self.tmp, self.hub, self.hf_home = world, run_src, tmp, hub, hf_home
        self.teacher = world.teacher_fp32
        self.out = tmp / "out"  # a new folder: must not exist after a refused command
        self.dst = tmp / "dst"

    @cached_property
    def run(self) -> Path:
        """A copy of a finished 2-step run (checkpoints 1 and 2, last -> 2)."""
        return Path(shutil.copytree(self.run_src, self.tmp / "run", symlinks=True))

    @property
    def student(self) -> Path:
        return self.run / "checkpoints" / "last" / "pretrained_model"

    @cached_property
    def file(self) -> Path:
        path = self.tmp / "a-file"
        path.write_text("not a folder\n")
        return path

    @cached_property
    def full(self) -> Path:
        """A folder that holds something else."""
        path = self.tmp / "full"
        path.mkdir()
        (path / "notes.txt").write_text("mine\n")
        return path

    @cached_property
    def empty(self) -> Path:
        path = self.tmp / "empty"
        path.mkdir()
        return path

    def copy(self, src: Path, name: str) -> Path:
        return Path(shutil.copytree(src, self.tmp / name, symlinks=True))

    # Broken copies of the teacher or of the run's student.
    def zero_teacher(self) -> Path:
        t = self.copy(self.teacher, "teacher-zero")
        (t / "model.safetensors").write_bytes(b"")
        return t

    def truncated(self, folder: Path, name: str = "model.safetensors") -> Path:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
        return folder

    def nan_teacher(self) -> Path:
        return _with_nan_expert_weight(self.copy(self.teacher, "teacher-nan"))

    def other_dataset(self) -> Path:
        """The tiny dataset as the Hub would hold another repo's copy: LeRobot's dataset card names it."""
        from lerobot.datasets.utils import create_lerobot_dataset_card

        root = self.copy(self.world.dataset_root, "other-dataset")
        create_lerobot_dataset_card(repo_id="someone/another-dataset").save(root / "README.md")
        return root

    def dangling(self) -> Path:
        """The run with its step folders removed by hand: `last` points nowhere."""
        for step in ("000001", "000002"):
            shutil.rmtree(self.run / "checkpoints" / step)
        return self.run

    # Command lines.
    def train(self, *extra: str) -> list[str]:
        args = ["train", "--dataset", self.world.repo_id, "--steps", "2", "--batch-size", "4", "--device", "cpu",
                "--no-progress", *extra]
        if "--teacher" not in extra:
            args += ["--teacher", str(self.teacher)]
        if "--dataset-root" not in extra:
            args += ["--dataset-root", str(self.world.dataset_root)]
        if "--output-dir" not in extra:
            args += ["--output-dir", str(self.out)]
        return args

    def resume(self, *extra: str) -> list[str]:
        """The run's own command line, then ``extra`` (argparse keeps the last value of a flag)."""
        return ["train", "--teacher", str(self.teacher), "--dataset", "someone/else", "--dataset-root",
                str(self.world.dataset_root), "--output-dir", str(self.run), "--steps", "2", "--batch-size", "4",
                "--device", "cpu", "--no-progress", "--resume", *extra]

    def pairs(self, *extra: str) -> list[str]:
        args = ["pairs", "--dataset", self.world.repo_id, "--dataset-root", str(self.world.dataset_root),
                "--device", "cpu", "--no-progress", *extra]
        if "--teacher" not in extra:
            args += ["--teacher", str(self.teacher)]
        if "--output" not in extra:
            args += ["--output", str(self.out)]
        return args


@dataclass
class Case:
    name: str
    args: Callable[[Ctx], list[str]]
    code: int
    says: str | None  # in the one error line (a warning line for code 0; None: no line at all)
    kept: tuple[str, ...] = ()  # Ctx attributes (folders/files) that must be byte-identical afterwards
    absent: tuple[str, ...] = ("out", "dst")  # Ctx paths that must not exist afterwards
    how: str = "in"  # "in": main(argv) here; "hub": a subprocess against the local Hub; "sigint:<regex>"
    patch: dict = field(default_factory=dict)  # monkeypatch.setattr targets for "in" cases
    hub_changes: bool = False  # the command is expected to change the Hub (push --force)
    after: Callable | None = None  # extra checks: after(ctx, stdout, stderr)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _last_finite(step: str | None = None):
    """``last`` is the given step (or the one the error line names), complete and finite."""

    def check(c: Ctx, out: str, err: str) -> None:
        last = c.out / "checkpoints" / "last"
        assert last.resolve().name == step if step else f"({last.resolve().name})" in err
        weights = load_file(str(last / "pretrained_model" / "model.safetensors"))
        assert all(torch.isfinite(t.float()).all() for t in weights.values())
        # The lineage is strict JSON (no bare NaN token) and records no NaN loss.
        json.loads((last / "pretrained_model" / "reflow_lineage.json").read_text(), parse_constant=_reject)
        assert not list((c.out / "checkpoints").glob(".tmp-*"))
    return check


def _reject(token):
    raise ValueError(f"non-strict JSON token {token}")


def _nothing_saved(c: Ctx, out: str, err: str) -> None:
    assert not (c.out / "checkpoints" / "last").exists()
    assert not list(c.out.rglob("*.safetensors")) if c.out.exists() else True


R = "hub-reflow-testing/tiny-go-around"

CASES = [
    # -- values out of range (argparse: one line, before anything is imported or read) -------------
    Case("train --log-freq 0", lambda c: c.train("--log-freq", "0"), 2, "--log-freq: must be >= 1, got 0"),
    Case("train --seed -1", lambda c: c.train("--seed", "-1"), 2, "--seed: must be between 0 and 4294967295"),
    Case("train --seed 2**32", lambda c: c.train("--seed", str(2**32)), 2, "--seed: must be between 0 and"),
    Case("train --num-workers -1", lambda c: c.train("--num-workers", "-1"), 2, "--num-workers: must be >= 0"),
    Case("train --save-freq -1", lambda c: c.train("--save-freq", "-1"), 2, "--save-freq: must be >= 0"),
    Case("train --steps 0", lambda c: c.train("--steps", "0"), 2, "--steps: must be >= 1"),
    Case("train --batch-size 0", lambda c: c.train("--batch-size", "0"), 2, "--batch-size: must be >= 1"),
    Case("train --holdout-episodes -1", lambda c: c.train("--holdout-episodes", "-1"), 2, "--holdout-episodes: must be >= 0"),
    Case("train --warmup-steps -1", lambda c: c.train("--warmup-steps", "-1"), 2, "--warmup-steps: must be >= 0"),
    Case("train --teacher-steps 1000000", lambda c: c.train("--teacher-steps", "1000000"), 2, "--teacher-steps: must be between 1 and 1000"),
    Case("train --student-steps 0", lambda c: c.train("--student-steps", "0"), 2, "--student-steps: must be >= 1"),
    Case("train --lr inf", lambda c: c.train("--lr", "inf"), 2, "--lr: must be a finite number"),
    Case("train --lr nan", lambda c: c.train("--lr", "nan"), 2, "--lr: must be a finite number"),
    Case("train --lr 0", lambda c: c.train("--lr", "0"), 2, "--lr: must be > 0"),
    Case("train --lr abc", lambda c: c.train("--lr", "abc"), 2, "--lr: 'abc' is not a number"),
    Case("train --lr-scale 0", lambda c: c.train("--lr-scale", "0"), 2, "--lr-scale: must be > 0"),
    Case("train --lr-scale inf", lambda c: c.train("--lr-scale", "inf"), 2, "--lr-scale: must be a finite number"),
    Case("train --steps 1.5", lambda c: c.train("--steps", "1.5"), 2, "--steps: '1.5' is not a whole number"),
    Case("train --device gpu", lambda c: c.train("--device", "gpu"), 2, "--device: invalid choice: 'gpu'"),
    Case("train --time-sampling x", lambda c: c.train("--time-sampling", "x"), 2, "--time-sampling: invalid choice"),
    Case("train --noises-per-frame 0", lambda c: c.train("--noises-per-frame", "0"), 2, "--noises-per-frame: must be >= 1"),
    Case("train unknown flag", lambda c: c.train("--stpes", "3"), 2, "unrecognized arguments: --stpes"),
    Case("train without --teacher", lambda c: ["train", "--dataset", R, "--output-dir", str(c.out)], 2,
         "the following arguments are required: --teacher"),
    Case("pairs --teacher-steps 5000", lambda c: c.pairs("--teacher-steps", "5000"), 2, "--teacher-steps: must be between 1 and 1000"),
    Case("pairs --per-frame 0", lambda c: c.pairs("--per-frame", "0"), 2, "--per-frame: must be >= 1"),
    Case("verify --tolerance nan", lambda c: ["verify", str(c.teacher), "--tolerance", "nan"], 2, "--tolerance: must be a finite number"),
    Case("verify --tolerance -1", lambda c: ["verify", str(c.teacher), "--tolerance", "-1"], 2, "--tolerance: must be > 0"),
    Case("verify --tolerance 2 (would pass a student worse than the teacher)", lambda c: ["verify", str(c.teacher), "--tolerance", "2"], 2, "--tolerance: must be <= 1"),
    Case("verify --frames 0", lambda c: ["verify", str(c.teacher), "--frames", "0"], 2, "--frames: must be >= 1"),
    Case("card --repo-id 'bad id'", lambda c: ["card", str(c.student), "--repo-id", "bad id"], 2, "'bad id' is not a valid Hub repo id"),
    Case("card --repo-id without namespace", lambda c: ["card", str(c.student), "--repo-id", "name"], 2, "'name' has no namespace"),
    Case("push --repo-id without namespace", lambda c: ["push", str(c.student), "--repo-id", "name"], 2, "'name' has no namespace"),
    Case("push --branch with a space", lambda c: ["push", str(c.student), "--repo-id", "user/x", "--branch", "my branch"], 2,
         "'my branch' is not a valid branch name: it contains ' '"),
    Case("push --tag with '..'", lambda c: ["push", str(c.student), "--repo-id", "user/x", "--tag", "v1..2"], 2, "not a valid tag name"),
    Case("pull 'bad id'", lambda c: ["pull", "bad id"], 2, "pull: 'bad id' is not a valid Hub repo id"),
    # -- combinations -----------------------------------------------------------------------------
    Case("train --student-steps above --teacher-steps", lambda c: c.train("--student-steps", "11"), 2,
         "--student-steps 11 is more than --teacher-steps 10"),
    Case("train --warmup-steps above --steps", lambda c: c.train("--warmup-steps", "5"), 2, "--warmup-steps 5 is more than --steps 2"),
    Case("train --noises-per-frame with cached pairs", lambda c: c.train("--noises-per-frame", "2", "--pairs", str(c.file)), 2,
         "--noises-per-frame 2 needs online pairs: cached pairs (--pairs) hold one noise per frame", kept=("file",)),
    Case("train --frame-sampling spread with cached pairs", lambda c: c.train("--frame-sampling", "spread", "--pairs", str(c.file)), 2,
         "--frame-sampling spread needs online pairs: cached pairs (--pairs) are drawn uniformly", kept=("file",)),
    Case("train --frame-sampling sometimes", lambda c: c.train("--frame-sampling", "sometimes"), 2,
         "--frame-sampling: invalid choice: 'sometimes'"),
    Case("train --batch-size above the dataset", lambda c: c.train("--batch-size", "100000"), 2,
         "--batch-size 100000 is more than the 480 training frames"),
    # -- output paths -----------------------------------------------------------------------------
    Case("train --output-dir is a file", lambda c: c.train("--output-dir", str(c.file)), 2, "is a file, not a folder", kept=("file",)),
    Case("train --output-dir under a file", lambda c: c.train("--output-dir", str(c.file / "run")), 2,
         "is a file, so no folder can be made under it", kept=("file",)),
    Case("train --output-dir holds files", lambda c: c.train("--output-dir", str(c.full)), 2, "already holds files; pass --resume",
         kept=("full",)),
    Case("train --output-dir not writable", lambda c: c.train("--output-dir", "/proc/hub-reflow-test/run"), 2,
         "cannot write in /proc"),
    Case("train disk too small for the run", lambda c: c.train("--save-freq", "1"), 2, "free on its disk, the 2 checkpoints of this run need",
         patch={"hub_reflow.validation.free_bytes": lambda path: 10_000}),
    Case("train disk full at the first save", lambda c: c.train(), 2, "could not be written", after=_nothing_saved,
         absent=("dst",), patch={"lerobot.common.train_utils.save_training_state": _no_space}),
    Case("pairs --output is a file", lambda c: c.pairs("--output", str(c.file)), 2, "--output", kept=("file",)),
    Case("pairs --output under a file", lambda c: c.pairs("--output", str(c.file / "p")), 2, "so no folder can be made", kept=("file",)),
    Case("canonicalize DST is a file", lambda c: ["canonicalize", str(c.student), str(c.file)], 2, "DST", kept=("file", "run")),
    Case("canonicalize DST under a file", lambda c: ["canonicalize", str(c.student), str(c.file / "d")], 2,
         "so no folder can be made", kept=("file", "run")),
    Case("canonicalize DST holds files", lambda c: ["canonicalize", str(c.student), str(c.full)], 2, "already", kept=("full", "run")),
    Case("pull --local-dir is a file", lambda c: ["pull", "user/reflow", "--local-dir", str(c.file)], 2, "--local-dir", kept=("file",)),
    Case("pull --local-dir holds another checkpoint", lambda c: ["pull", "user/reflow", "--local-dir", str(c.run)], 2,
         "already holds files that are not a pull of it", kept=("run",)),
    # -- inputs that are missing or not what they claim ---------------------------------------------
    Case("train --dataset-root empty folder", lambda c: c.train("--dataset-root", str(c.empty)), 2,
         "is empty: it is not a LeRobotDataset folder", kept=("empty",)),
    Case("train --dataset-root is a file", lambda c: c.train("--dataset-root", str(c.file)), 2, "is a file", kept=("file",)),
    Case("train --dataset-root missing", lambda c: c.train("--dataset-root", str(c.tmp / "nope")), 2, "does not exist"),
    Case("train --dataset-root not a dataset", lambda c: c.train("--dataset-root", str(c.full)), 2, "has no meta/info.json", kept=("full",)),
    Case("train --dataset disagrees with --dataset-root", lambda c: c.train("--dataset-root", str(c.other_dataset())), 2,
         f"--dataset {R} does not match --dataset-root"),
    Case("train --teacher missing", lambda c: c.train("--teacher", str(c.tmp / "nope")), 2, "does not exist"),
    Case("train --teacher is a file", lambda c: c.train("--teacher", str(c.file)), 2, "is a file", kept=("file",)),
    Case("train --pairs is a file", lambda c: c.train("--pairs", str(c.file)), 2, "--pairs", kept=("file",)),
    Case("card of a plain lerobot-train checkpoint says lineage unknown", lambda c: ["card", str(c.teacher)], 0, None,
         after=lambda c, out, err: "whose **lineage is unknown**" in out and "| teacher | unknown |" in out
         and "A **reflow student** of" not in out and "](https://huggingface.co/datasets/" not in out),
    Case("card of a folder that is no checkpoint", lambda c: ["card", str(c.full)], 2, "no config.json in", kept=("full",)),
    Case("verify missing checkpoint", lambda c: ["verify", str(c.tmp / "nope")], 2, "does not exist"),
    Case("push a folder that is not a checkpoint", lambda c: ["push", str(c.full), "--repo-id", "user/x"], 2, "no config.json in",
         kept=("full",)),
    Case("canonicalize DST inside SRC", lambda c: ["canonicalize", str(c.student), str(c.student / "canonical")], 2,
         "DST must be outside SRC", kept=("run",)),
    # -- corrupt weight files: one line naming the file, exit 2, nothing written ----------------------
    Case("train zero-byte teacher weights", lambda c: c.train("--teacher", str(c.zero_teacher())), 2,
         "model.safetensors cannot be read as a safetensors file (Error while deserializing header: header too small)"),
    Case("train truncated teacher weights", lambda c: c.train("--teacher", str(c.truncated(c.copy(c.teacher, "t")))), 2,
         "truncated or corrupt"),
    Case("train truncated normalizer file", lambda c: c.train("--teacher", str(c.truncated(
        c.copy(c.teacher, "t"), "policy_preprocessor_step_5_normalizer_processor.safetensors"))), 2, "normalizer_processor.safetensors cannot be read"),
    Case("pairs zero-byte teacher weights", lambda c: c.pairs("--teacher", str(c.zero_teacher())), 2, "cannot be read as a safetensors file"),
    Case("verify truncated student", lambda c: ["verify", str(c.truncated(c.student)), "--teacher", str(c.teacher)], 2,
         "checkpoint: ", after=lambda c, o, e: "checkpoint:" not in o),
    Case("verify zero-byte teacher", lambda c: ["verify", str(c.student), "--teacher", str(c.zero_teacher())], 2,
         "teacher: ", kept=("run",)),
    Case("canonicalize truncated SRC", lambda c: ["canonicalize", str(c.truncated(c.copy(c.run_src / "checkpoints" / "000002" /
         "pretrained_model", "src"))), str(c.dst)], 2, "source: "),
    Case("canonicalize zero-byte teacher", lambda c: ["canonicalize", str(c.student), str(c.dst), "--teacher", str(c.zero_teacher())],
         2, "teacher: ", kept=("run",)),
    Case("train --resume from truncated weights", lambda c: c.resume() if c.truncated(c.student) else [], 2,
         "--resume: ", after=lambda c, o, e: (c.run / "checkpoints" / "last").resolve().name == "000002"),
    # -- NaN / Inf ----------------------------------------------------------------------------------
    Case("train teacher with a NaN weight", lambda c: c.train("--teacher", str(c.nan_teacher())), 2, "teacher: NaN/Inf in 1 weight tensor"),
    Case("pairs teacher with a NaN weight", lambda c: c.pairs("--teacher", str(c.nan_teacher())), 2, "teacher: NaN/Inf in 1 weight tensor"),
    Case("train diverges (--lr 1e30, no warm-up)", lambda c: c.train("--lr", "1e30", "--warmup-steps", "0", "--steps", "4",
         "--save-freq", "1", "--log-freq", "1"), 1, "the loss became nan at step 2; stopped, checkpoints/last is still 000001",
         absent=("dst",), after=_last_finite("000001")),
    Case("train diverges before any checkpoint", lambda c: c.train("--lr", "1e30", "--warmup-steps", "0", "--steps", "4"), 1,
         "stopped, nothing was saved. Likely cause: a learning rate too high", absent=("dst",), after=_nothing_saved),
    # -- resume: every setting that changes what is trained is the run's own -----------------------------
    Case("resume with another teacher", lambda c: c.resume("--teacher", str(c.world.teacher)), 2, "--resume: --teacher differs", kept=("run",)),
    Case("resume with another --student-steps", lambda c: c.resume("--student-steps", "2"), 2,
         "--resume: --student-steps differs from the run's: it was 1, now 2", kept=("run",)),
    Case("resume with another --teacher-steps", lambda c: c.resume("--teacher-steps", "5"), 2, "--teacher-steps differs", kept=("run",)),
    Case("resume with another --holdout-episodes", lambda c: c.resume("--holdout-episodes", "2"), 2,
         "--holdout-episodes differs from the run's: it was 0, now 2", kept=("run",)),
    Case("resume with another --batch-size", lambda c: c.resume("--batch-size", "8"), 2, "--batch-size differs", kept=("run",)),
    Case("resume with another --lr", lambda c: c.resume("--lr", "0.001"), 2, "--lr differs from the run's: it was the default, now 0.001",
         kept=("run",)),
    Case("resume with another --lr-scale", lambda c: c.resume("--lr-scale", "1"), 2,
         "--lr-scale differs from the run's: it was 3.0, now 1.0", kept=("run",)),
    Case("resume with another --seed", lambda c: c.resume("--seed", "1"), 2, "--seed differs", kept=("run",)),
    Case("resume with another --time-sampling", lambda c: c.resume("--time-sampling", "beta"), 2,
         "--time-sampling differs from the run's: it was 'grid', now 'beta'", kept=("run",)),
    Case("resume with another --noises-per-frame", lambda c: c.resume("--noises-per-frame", "1"), 2,
         "--noises-per-frame differs from the run's: it was 2, now 1", kept=("run",)),
    Case("resume with another --frame-sampling", lambda c: c.resume("--frame-sampling", "uniform"), 2,
         "--frame-sampling differs from the run's: it was 'spread', now 'uniform'", kept=("run",)),
    Case("resume with another --warmup-steps", lambda c: c.resume("--warmup-steps", "1"), 2, "--warmup-steps differs", kept=("run",)),
    Case("resume with fewer --steps", lambda c: c.resume("--steps", "1"), 2,
         "--resume: --steps 1 is fewer than the run's 2: a run is extended (a larger --steps), never shortened", kept=("run",)),
    Case("resume with another --dataset", lambda c: c.resume("--dataset-root", str(c.other_dataset()), "--dataset",
         "someone/another-dataset"), 2, "--resume: --dataset differs", kept=("run",)),
    Case("resume with another --log-freq is allowed", lambda c: c.resume("--log-freq", "7", "--save-freq", "3"), 0, None, kept=("run",)),
    Case("resume without a checkpoint", lambda c: c.train("--resume"), 2, "--resume: no checkpoint at"),
    Case("resume with an unreadable lineage", lambda c: c.resume() if (c.student / "reflow_lineage.json").write_text("{") else [], 2,
         "reflow_lineage.json cannot be read (JSONDecodeError)", kept=("run",)),
    Case("resume without its training state", lambda c: c.resume() if shutil.rmtree(c.run / "checkpoints" / "000002" /
         "training_state") is None else [], 2, "--resume: the training state in", kept=("run",)),
    Case("dangling last, resume", lambda c: c.resume() if c.dangling() else [], 2,
         "points to 000002, which does not exist", kept=("run",)),
    Case("dangling last, new run", lambda c: c.train("--output-dir", str(c.dangling())), 2,
         "points to 000002, which does not exist", kept=("run",)),
    # -- interrupts ---------------------------------------------------------------------------------
    Case("SIGINT before the first checkpoint", lambda c: c.train("--steps", "100000", "--log-freq", "1"), 130,
         "nothing was saved, so there is nothing to resume", how=r"sigint:step 1/", after=_nothing_saved),
    Case("SIGINT after a checkpoint", lambda c: c.train("--steps", "40", "--log-freq", "1", "--save-freq", "2"), 130,
         "is intact: continue with --resume", how=r"sigint:checkpoint \S+ written", absent=("dst",), after=_last_finite()),
    # -- the Hub (a local Hub-compatible server; its repos must be unchanged) ------------------------------
    Case("push to an existing --tag", lambda c: ["push", str(c.student), "--repo-id", "user/tagged", "--tag", "v1"], 2,
         "tag 'v1' already exists in user/tagged", how="hub", kept=("run",)),
    Case("push a failing checkpoint", lambda c: ["push", str(c.nan_student()), "--repo-id", "user/new"], 2,
         "NaN/Inf in 1 tensor (", how="hub"),
    Case("push --force of a failing checkpoint warns", lambda c: ["push", str(c.nan_student()), "--repo-id", "user/forced", "--force"], 0,
         "push --force: pushing a checkpoint that fails the weights check", how="hub", hub_changes=True),
    Case("pull a repo that fails the checks, --local-dir", lambda c: ["pull", "user/broken", "--local-dir", str(c.dst)], 2,
         "nothing was written to", how="hub"),
    Case("pull a repo that fails the checks, HF cache", lambda c: ["pull", "user/broken"], 2,
         "the download is left in the Hugging Face cache at", how="hub"),
    Case("pull a missing repo", lambda c: ["pull", "user/missing", "--local-dir", str(c.dst)], 2, "user/missing not found", how="hub"),
    Case("pull a missing --revision", lambda c: ["pull", "user/reflow", "--revision", "v9", "--local-dir", str(c.dst)], 2,
         "revision not found in user/reflow", how="hub"),
    Case("pull into an earlier pull of another repo", lambda c: ["pull", "user/tagged", "--local-dir", str(c.pulled("user/reflow"))], 2,
         "already holds a pull of user/reflow", how="hub", kept=("pulled_dir",)),
    Case("pull again into an earlier pull of the same repo", lambda c: ["pull", "user/reflow", "--local-dir", str(c.pulled("user/reflow"))],
         0, None, how="hub"),
]


def _with_nan_expert_weight(folder: Path) -> Path:
    """``folder`` (a copy of a checkpoint) with one NaN in its first action-expert tensor."""
    tensors = load_file(str(folder / "model.safetensors"))
    key = sorted(k for k in tensors if ".lm_expert." in k and tensors[k].is_floating_point())[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _nan_student(self: Ctx) -> Path:
    return _with_nan_expert_weight(self.copy(self.student, "nan-student"))


def _pulled(self: Ctx, repo: str) -> Path:
    """A folder an earlier `hub-reflow pull REPO --local-dir` made."""
    from hub_reflow.hub.push_pull import pull_checkpoint

    self.pulled_dir = self.tmp / "pulled"
    if not self.pulled_dir.exists():
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(constants, "HF_HUB_OFFLINE", False)
            pull_checkpoint(repo, local_dir=self.pulled_dir, token=WRITE, endpoint=self.hub.url)
    return self.pulled_dir


Ctx.nan_student = _nan_student
Ctx.pulled = _pulled


# ---- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_src(world, tmp_path_factory) -> Path:
    """A finished 2-step run of the fp32 teacher with a checkpoint at each step."""
    out = tmp_path_factory.mktemp("errors-run") / "run"
    r = run_cli("train", "--teacher", str(world.teacher_fp32), "--dataset", "someone/else", "--dataset-root",
                str(world.dataset_root), "--output-dir", str(out), "--steps", "2", "--batch-size", "4", "--save-freq", "1",
                "--device", "cpu", "--no-progress")
    (out.parent / "train.stderr").write_text(r.stderr)  # test_a_dataset_folder_that_does_not_name_itself_is_never_linked
    return out


@pytest.fixture(scope="module")
def hub(world, run_src, tmp_path_factory):
    """A local Hub with the backbone, a good student (user/reflow, and user/tagged at tag v1) and a
    student with a NaN weight pushed with force (user/broken)."""
    from hub_reflow.hub.push_pull import push_checkpoint
    from hub_reflow.testing.hub_server import HubServer
    from hub_reflow.testing.tiny_world import publish_backbone

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        with HubServer(tmp_path_factory.mktemp("errors-hub"), {WRITE: "write"}) as server:
            publish_backbone(world.backbone, endpoint=server.url, token=WRITE)
            student = run_src / "checkpoints" / "last" / "pretrained_model"
            push_checkpoint(student, "user/reflow", token=WRITE, endpoint=server.url)
            push_checkpoint(student, "user/tagged", tag="v1", token=WRITE, endpoint=server.url)
            ctx = Ctx(world, run_src, tmp_path_factory.mktemp("errors-broken"))
            push_checkpoint(ctx.nan_student(), "user/broken", force=True, token=WRITE, endpoint=server.url,
                            warn=lambda msg: None)
            server.hf_home = tmp_path_factory.mktemp("errors-hf-home")
            yield server


def hub_env(c: Ctx) -> dict:
    return {"HF_ENDPOINT": c.hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(c.hub.hf_home),
            "HF_TOKEN": WRITE}


# ---- the runner --------------------------------------------------------------------------------------


def snapshot(path: Path) -> dict:
    """Every file's sha256 and every link's target under ``path`` (or of the file itself)."""
    path = Path(path)
    if path.is_symlink():
        return {".": f"-> {os.readlink(path)}"}
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)}"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def _in_process(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
    return code, out.getvalue(), err.getvalue()


def _interrupted(argv: list[str], wait_for: str) -> tuple[int, str, str]:
    exe = Path(sys.executable).with_name("hub-reflow")
    # SIGINT's default disposition in the child: a suite started in the background by a shell without
    # job control inherits SIGINT ignored, and so would the command, which then never sees the signal.
    proc = subprocess.Popen([str(exe), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if re.search(wait_for, line):
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, "".join(seen) + out, err


@pytest.fixture
def offline(monkeypatch):
    """In-process commands: what main() sets in the environment is restored after the test, and the
    Hub is off (the `hub` fixture turns it on for its own module-wide server)."""
    for key, value in QUIET_ENV.items():
        monkeypatch.setenv(key, os.environ.get(key, value))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_error(case: Case, world, run_src, tmp_path, monkeypatch, request, offline):
    hub = request.getfixturevalue("hub") if case.how == "hub" else None
    ctx = Ctx(world, run_src, tmp_path, hub)
    argv = case.args(ctx)
    before = {name: snapshot(getattr(ctx, name)) for name in case.kept}
    hub_before = snapshot(hub.root / "repos") if hub is not None else None
    if case.how == "hub":
        r = run_cli(*argv, check=False, env=hub_env(ctx))
        code, out, err = r.returncode, r.stdout, r.stderr
    elif case.how.startswith("sigint:"):
        code, out, err = _interrupted(argv, case.how.split(":", 1)[1])
    else:
        for target, value in case.patch.items():
            monkeypatch.setattr(target, value)
        code, out, err = _in_process(argv)

    assert code == case.code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip() and not OUR_LOG.match(ln)]
    if case.says is None:
        assert lines == [], err[-3000:]
    else:
        prefix = "hub-reflow: warning: " if case.code == 0 else "hub-reflow: error: "
        assert len(lines) == 1 and lines[0].startswith(prefix), err[-3000:]
        assert case.says in lines[0], lines[0]
    for name, snap in before.items():
        assert snapshot(getattr(ctx, name)) == snap, f"{name} changed"
    for name in case.absent:
        assert not getattr(ctx, name).exists(), f"{name} was created"
    if hub is not None and not case.hub_changes:
        assert snapshot(hub.root / "repos") == hub_before, "the Hub changed"
    if case.after is not None:
        assert case.after(ctx, out, err) is not False


# ---- what is not an error: strict JSON, quiet output, help -----------------------------------------


def test_json_is_strict_everywhere():
    from hub_reflow.checkpoint import CheckpointRef, Lineage
    from hub_reflow.safeio import dumps
    from hub_reflow.verify import Check, Report

    assert dumps({"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": torch.tensor(2.0)}) == \
        '{"a": null, "b": [null, null, 1.5], "c": 2.0}'
    lineage = Lineage(teacher=CheckpointRef(None, None, None, "0" * 64), reflow={"lr": 1e-4},
                      training={"final_loss": float("nan"), "loss_curve": [[1, float("inf")]]})
    data = json.loads(lineage.to_json(), parse_constant=_reject)
    assert data["training"] == {"final_loss": None, "loss_curve": [[1, None]]}
    report = Report("c", None, [Check("fidelity", "fail", "x", {"ratio": float("inf")})])
    from hub_reflow.cli import _print_report

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert _print_report(report, as_json=True) == 1
    assert json.loads(out.getvalue(), parse_constant=_reject)["checks"][0]["details"]["ratio"] is None


def test_write_canonical_refuses_nan_weights(world, tmp_path, offline):
    from hub_reflow.checkpoint import resolve_checkpoint, write_canonical
    from hub_reflow.errors import CheckFailed
    from hub_reflow.policy import ReflowPolicy

    policy = ReflowPolicy.from_teacher(world.teacher_fp32)
    with torch.no_grad():
        next(p for n, p in policy.student.named_parameters() if ".lm_expert." in n).view(-1)[0] = float("inf")
    with pytest.raises(CheckFailed, match="NaN/Inf in 1 weight tensor"):
        write_canonical(tmp_path, policy.student, resolve_checkpoint(str(world.teacher_fp32)), 1, policy.lineage)
    assert list(tmp_path.iterdir()) == []


def test_library_chatter_is_silenced_unless_verbose(world, offline):
    """verify without a teacher builds the architecture from the config: LeRobot prints while it
    loads the backbone. Quiet by default; -v shows it."""
    chatter = ("Loading weights from local directory", "Reducing the number of VLM layers", "Loading  ")
    code, out, err = _in_process(["verify", str(world.teacher)])
    assert code == 0, err
    assert not any(c in out + err for c in chatter), out + err
    assert "verdict: PASS" in out
    code, out, err = _in_process(["verify", str(world.teacher), "-v"])
    assert code == 0 and "Reducing the number of VLM layers" in out + err


def test_a_dataset_folder_names_its_own_repo_id(tmp_path, monkeypatch):
    """Where --dataset-root's own id comes from: LeRobot's dataset card, the Hugging Face cache
    layout, LeRobot's own cache layout; a plain folder has none (nothing to compare)."""
    from hub_reflow.data import dataset_root_repo_id

    snapshot_dir = tmp_path / "hub" / "datasets--someone--ds" / "snapshots" / ("a" * 40)
    snapshot_dir.mkdir(parents=True)
    assert dataset_root_repo_id(snapshot_dir) == "someone/ds"
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "lerobot"))
    (tmp_path / "lerobot" / "org" / "name").mkdir(parents=True)
    assert dataset_root_repo_id(tmp_path / "lerobot" / "org" / "name") == "org/name"
    plain = tmp_path / "my-data"
    plain.mkdir()
    assert dataset_root_repo_id(plain) is None
    (plain / "README.md").write_text("[x](https://huggingface.co/spaces/lerobot/visualize_dataset?path=me/my-data)\n")
    assert dataset_root_repo_id(plain) == "me/my-data"


def test_hub_errors_show_the_servers_words():
    """An HTTP error whose first line is an empty "Bad request:" shows what the server said."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    from hub_reflow.hub_io import hub_error

    response = httpx.Response(400, request=httpx.Request("POST", "http://hub/api/models/user/x/branch/a%20b"))
    error = HfHubHTTPError("Bad request:\n", response=response, server_message="Invalid branch name: 'a b'")
    assert str(hub_error(error, "user/x", "push", None)) == \
        "push: the Hub refused the request for user/x (HTTP 400): Invalid branch name: 'a b'"


def test_verbose_flag_before_or_after_the_command(offline):
    from hub_reflow.cli import build_parser

    assert build_parser().parse_args(["-v", "card", "x"]).verbose is True
    assert build_parser().parse_args(["card", "x", "-v"]).verbose is True
    assert build_parser().parse_args(["card", "x"]).verbose is False


def test_help_shows_defaults(offline):
    code, out, err = _in_process(["train", "--help"])
    assert code == 0
    text = " ".join(out.split())
    assert "training steps (default: 2000)" in text and "(default: grid)" in text
    assert "--batch-size BATCH_SIZE frames per step and process (default: 8)" in text
    assert "default: the teacher config's optimizer_lr" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_a_dataset_folder_that_does_not_name_itself_is_never_linked(world, run_src, tmp_path, offline):
    """``train --dataset someone/else --dataset-root FOLDER`` (run_src) where the folder does not say
    which Hub dataset it is (no dataset card, no cache path: what lerobot-record writes) trains, says so
    at setup and records a local dataset folder named someone/else, not verified; the card names it so
    and links no dataset. A folder whose LeRobot dataset card names it is recorded by that id."""
    from lerobot.datasets.utils import create_lerobot_dataset_card

    from hub_reflow.checkpoint import read_policy_config
    from hub_reflow.data import load_dataset

    assert (f"WARNING hub_reflow.data: --dataset-root {world.dataset_root} does not say which Hub dataset it is (no dataset "
            "card naming it, not a Hugging Face or LeRobot cache folder): recorded as a local dataset folder (named "
            "someone/else, not verified); the model card links no dataset") in (run_src.parent / "train.stderr").read_text()
    student = run_src / "checkpoints" / "last" / "pretrained_model"
    lineage = json.loads((student / "reflow_lineage.json").read_text())
    assert lineage["dataset"]["repo_id"] is None and lineage["dataset"]["local_name"] == "someone/else"
    code, card, _ = _in_process(["card", str(student), "--repo-id", "you/student"])
    assert code == 0 and "datasets" not in card.split("---")[1] and "huggingface.co/datasets" not in card
    assert "| dataset | a local dataset folder (named someone/else, not verified) |" in card
    assert "Trained on observations from a local dataset folder (named someone/else, not verified): hub-reflow could" in card
    assert "--dataset someone/else --dataset-root DATASET_FOLDER --frames 16" in card
    named = Path(shutil.copytree(world.dataset_root, tmp_path / "named"))
    create_lerobot_dataset_card(repo_id="someone/else").save(named / "README.md")
    _, info = load_dataset(read_policy_config(world.teacher_fp32), "someone/else", named, None, holdout=0)
    assert info["repo_id"] == "someone/else" and "local_name" not in info
