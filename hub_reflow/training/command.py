"""What ``hub-reflow train`` adds to its command line: the options given, then (with ``--resume``)
the run's recorded ones (``run_folder.RUN_RECORD``), then the defaults; and the run's final verdict line."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import LINEAGE_NAME, Lineage
from ..checks.fidelity import recorded_verdict
from ..config import RECORDED_BEFORE, ReflowConfig, default_lr_scale
from ..console import fail
from .run_folder import RunFolder


def given_or_recorded(p: argparse.ArgumentParser) -> None:
    """Options not given stay UNSET (the parser's defaults are kept in TRAIN_DEFAULTS)."""
    TRAIN_DEFAULTS.update({x.dest: x.default for x in p._actions if x.dest != "help"})
    p.set_defaults(**{dest: Unset(default) for dest, default in TRAIN_DEFAULTS.items()})


TRAIN_DEFAULTS: dict = {}


class Unset:
    """An option not given: shows its default in --help (argparse would pass a plain string default
    through the option's type)."""

    def __init__(self, default):
        self.unset_default = default

    def __str__(self) -> str:
        return str(self.unset_default)


def train_settings(a) -> argparse.Namespace:
    """The options given, then (with --resume) the run's recorded ones, then the defaults."""
    given = {k: v for k, v in vars(a).items() if k in TRAIN_DEFAULTS and not isinstance(v, Unset)}
    folder = RunFolder(given["output_dir"])
    folder.refuse_if_held()  # a folder another run holds: that, before what its checkpoints say
    recorded = folder.recorded_settings() if given.get("resume") else None  # a run to resume, then its record
    if recorded is not None:  # an option the run's record lacks: the run was made before it existed
        recorded = {**{k: v for k, v in RECORDED_BEFORE.items() if k in TRAIN_DEFAULTS}, **recorded}
    if recorded and recorded.get("dataset_root") is not None:
        recorded["dataset_root"] = Path(recorded["dataset_root"])
    settings = {**TRAIN_DEFAULTS, **(recorded or {}), **given}
    missing = [f"--{k.replace('_', '-')}" for k in ("teacher", "dataset") if settings[k] is None]
    if missing:
        why = " (this run has no recorded settings: pass them as the run was started)" if given.get("resume") else ""
        raise SystemExit(fail(f"the following arguments are required: {', '.join(missing)}{why}"))
    if settings["noises_per_frame"] is None:  # recorded as resolved: a later default does not change a resumed run
        settings["noises_per_frame"] = 1 if settings["pairs"] else ReflowConfig.noises_per_frame
    if settings["frame_sampling"] is None:
        settings["frame_sampling"] = "uniform" if settings["pairs"] else ReflowConfig.frame_sampling
    if settings["lr_scale"] is None:
        settings["lr_scale"] = default_lr_scale(settings["lr"], settings["student_steps"])
    settings["record"] = {k: _absolute(v) if k in PATHS else v for k, v in settings.items()
                          if k in TRAIN_DEFAULTS and k not in ("output_dir", "resume")}
    return argparse.Namespace(**settings)


PATHS = ("teacher", "dataset_root", "pairs")  # options that may name a local folder


def _absolute(value):
    """A local path as an absolute one (the record stays on this machine: --resume from anywhere)."""
    if isinstance(value, Path) or (isinstance(value, str) and Path(value).expanduser().exists()):
        return str(Path(value).expanduser().resolve())
    return value


def final_verdict(folder: Path, settings=None) -> str:
    """The run's own fidelity verdict (the card's), in one line; on FAIL, what this run used and what
    to change (``settings``: the run's options, for the command that measures it again)."""
    path = folder / LINEAGE_NAME
    lineage = Lineage.from_file(path) if path.is_file() else None
    verdict = recorded_verdict(lineage.evaluation) if lineage is not None else None
    if verdict is None:
        return "fidelity verdict: not measured"
    if verdict.passed:
        return f"fidelity verdict: PASS, {verdict.reason}"
    return f"fidelity verdict: FAIL, {verdict.reason}; {_advice(lineage, folder, settings)}"


def _advice(lineage: Lineage, folder: Path, settings) -> str:
    """What the run used, the settings that bring a student closer (docs/fidelity.md), and the
    verify command that measures it on more frames, with this run's teacher and dataset."""
    r, pairs = lineage.reflow, lineage.reflow.get("targets") == "cached pairs"
    steps = r.get("steps")
    used = [f"{steps} steps", f"--time-sampling {r.get('time_sampling')}", f"--noises-per-frame {r.get('noises_per_frame', 1)}",
            f"--frame-sampling {r.get('frame_sampling', 'uniform')}"]
    change = [f"--steps {2 * steps}" if isinstance(steps, int) else "more --steps"]
    if r.get("time_sampling") != "grid":
        change.append("--time-sampling grid")
    if not pairs and r.get("noises_per_frame", 1) < 4:
        change.append("--noises-per-frame 4")
    if not pairs and r.get("frame_sampling", "uniform") != "spread":
        change.append("--frame-sampling spread")
    extend = f" (--resume --steps {2 * steps} extends this run)" if isinstance(steps, int) else ""
    t = lineage.teacher
    teacher = f"{t.repo_id} --teacher-revision {t.commit}" if t.repo_id else str(getattr(settings, "teacher", None) or "TEACHER_FOLDER")
    dataset = str(getattr(settings, "dataset", None) or "DATASET")
    root = getattr(settings, "dataset_root", None)
    verify = f"hub-reflow verify {folder} --teacher {teacher} --dataset {dataset}" + (f" --dataset-root {root}" if root else "")
    return (f"this run used {', '.join(used)}; train again with {', '.join(change)}{extend}, or measure on more "
            f"frames: {verify} --frames 64")
