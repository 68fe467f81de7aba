"""``hub-reflow verify``: is a reflow checkpoint canonical, and does it act like its teacher?

Each check gives one line with its numbers and a verdict:

- structure (docs/verify.md#the-checks; computed in ``checks/structure.py``), against the teacher's
  checkpoint when one is given, else against what LeRobot builds from the checkpoint's own config: ``config`` (plain LeRobot parses it, no unknown field),
  ``config.diff`` (only ``num_steps`` and push fields differ from the teacher's), ``weights.teacher``
  (no embedded teacher copy, under any prefix), ``weights.keys`` (key set and shapes, counted per
  module group), ``weights.dtypes``, ``weights.finite``, ``weights.vlm`` (frozen VLM bit-identical),
  ``processors.files`` and ``processors.stats``; plus ``lineage`` (the given teacher is the one the
  student was trained from) and the file size as information;
- fidelity (docs/fidelity.md), with a dataset: ``fidelity`` (student at its steps against the teacher at its own, shared
  noise, relative to the teacher's own spread), ``actions.finite``, ``actions.range``;
- speed (docs/verify.md#speed), with a dataset: ``speed.same_cost`` (the student at the teacher's
  step count costs what the teacher costs) and ``speed.speedup`` (at its own step count it is as fast as prefix and per-step
  times predict).

Every check is computed from the files and from LeRobot's own loaders and sampler; nothing trusts
the lineage file's recorded numbers.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .checkpoint import LINEAGE_NAME, CheckpointRef, Lineage, load_smolvla, resolve_checkpoint
from .checks import compiled
from .checks import structure as structural
from .checks.fidelity import MAX_RATIO, action_scale, compare, fidelity_verdict, observation_batch, recorded_verdict
from .checks.inspection import inspect_checkpoint
from .checks.report import FAIL, INFO, PASS, SKIP, Check, Report
from .data import check_dataset_features
from .errors import UserError
from .safeio import check_folder
from .smolvla import policy_inputs, sample_chunk, velocity_field

# The report's types and the structural rules live in their own modules; re-exported here.
__all__ = ["PASS", "FAIL", "SKIP", "INFO", "Check", "Report", "structure_checks", "fidelity_checks", "speed_checks", "verify"]


def structure_checks(folder: Path, teacher: Path | None, teacher_ref: CheckpointRef | None = None) -> list[Check]:
    """The structural checks of ``folder`` against ``teacher`` (else the architecture of its config)."""
    return structural.structure_checks(inspect_checkpoint(Path(folder), teacher, teacher_ref))


# ---- fidelity and speed --------------------------------------------------------------------------

# The fidelity rule and its thresholds live in checks.fidelity.fidelity_verdict (docs/fidelity.md); this is
# its default ratio, the --tolerance of the command line.
FIDELITY_TOLERANCE = MAX_RATIO
# Fraction of the dataset's action range allowed beyond its min / max before a value counts as out of
# range: a few-step student overshoots a little near the edges (a 1-step chunk is an extrapolation);
# a broken one (wrong statistics, a wild expert) lands far outside.
RANGE_MARGIN = 0.25
SPEED_SAME_COST = 1.3  # student at the teacher's steps: within this factor of the teacher
SPEED_SLACK = 1.3  # measured student/teacher ratio may exceed the structural limit by this factor
SPEED_CONFIRM = 3  # a speed result out of bounds is re-measured up to this many times the rounds before it fails


def _holdout_frames(lineage_path: Path, meta, frames: int) -> tuple[list[int], str]:
    import numpy as np

    episodes, source = None, "the whole dataset (no held-out episodes recorded)"
    if lineage_path.is_file():
        held = Lineage.from_file(lineage_path).dataset.get("holdout_episodes")
        if held and held[1] > held[0] and held[1] <= meta.total_episodes:
            episodes, source = list(range(*held)), f"held-out episodes {held[0]}-{held[1] - 1}"
    starts, ends = meta.episodes["dataset_from_index"], meta.episodes["dataset_to_index"]
    pool = [i for ep in (episodes if episodes is not None else range(meta.total_episodes))
            for i in range(int(starts[ep]), int(ends[ep]))]
    picks = sorted({pool[int(j)] for j in np.linspace(0, len(pool) - 1, min(frames, len(pool)))})
    return picks, source


def _action_bounds(meta) -> tuple[torch.Tensor, torch.Tensor] | None:
    stats = (meta.stats or {}).get("action", {})
    if "min" not in stats or "max" not in stats:
        return None
    return torch.as_tensor(stats["min"], dtype=torch.float32), torch.as_tensor(stats["max"], dtype=torch.float32)


def _out_of_range(actions: torch.Tensor, bounds) -> float:
    lo, hi = bounds
    margin = RANGE_MARGIN * (hi - lo).clamp_min(1e-6)
    a = actions.float()
    out = (a < lo - margin) | (a > hi + margin)
    return float(out.float().mean())


def fidelity_checks(student_dir: Path, teacher_dir: Path, dataset: str, dataset_root: Path | None, *,
                    frames: int = 32, seed: int = 0, tolerance: float = FIDELITY_TOLERANCE,
                    speed: bool = True, repeats: int = 7) -> list[Check]:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from lerobot.policies.factory import make_pre_post_processors

    names = ["fidelity", "actions.finite", "actions.range"] + (["speed.same_cost", "speed.speedup"] if speed else [])
    loaded = {}
    for who, folder in (("student", student_dir), ("teacher", teacher_dir)):
        try:
            policy = load_smolvla(folder, what=who)
            pre, post = make_pre_post_processors(policy.config, pretrained_path=str(folder))
        except Exception as e:  # UserError from a strict load, missing processor files
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            return [Check(n, SKIP, f"the {who} cannot be loaded with its processors: {reason}") for n in names]
        loaded[who] = (policy, pre, post)
    try:
        meta = LeRobotDatasetMetadata(dataset, root=dataset_root)
    except Exception as e:
        raise UserError(f"verify: dataset {dataset} cannot be opened ({type(e).__name__}); check --dataset / --dataset-root") from None
    check_dataset_features(loaded["teacher"][0].config, meta, dataset)
    idx, source = _holdout_frames(student_dir / LINEAGE_NAME, meta, frames)
    ds = LeRobotDataset(dataset, root=dataset_root)
    raw = observation_batch(ds, idx)
    s_steps, t_steps = loaded["student"][0].config.num_steps, loaded["teacher"][0].config.num_steps
    rows, chunks = compare(*loaded["teacher"], *loaded["student"], raw, teacher_steps=t_steps, student_steps=s_steps,
                           seed=seed, latency_repeats=0)
    by = {r.name: r.rmse for r in rows}
    stu, spread = by[f"student @{s_steps}"], by[f"teacher @{t_steps} (other noise)"]
    t_at_s = by[f"teacher @{s_steps}"]
    student_actions = chunks[f"student @{s_steps}"]
    checks = []
    details = {"frames": len(idx), "frames_from": source, "noise_draws_per_frame": 1, "seed": seed, "student_steps": s_steps, "teacher_steps": t_steps,
               "student_rmse": stu, "teacher_spread_rmse": spread, "teacher_rmse_at_student_steps": t_at_s,
               "tolerance": tolerance}
    scale = action_scale(meta.stats)
    verdict = fidelity_verdict(stu, t_at_s, spread, scale, max_ratio=tolerance)
    details.update({"ratio": verdict.ratio, "threshold": verdict.threshold, "action_scale": scale})
    line = (f"{len(idx)} frames ({source}), 1 noise draw each (seed {seed}), shared noise, action RMSE vs teacher @{t_steps}: student @{s_steps} {stu:.4f}, "
            f"teacher @{s_steps} {t_at_s:.4f}, teacher's own spread (other noise) {spread:.4f}")
    if verdict.passed:
        checks.append(Check("fidelity", PASS, f"{line}: {verdict.reason}", details))
    else:
        checks.append(Check("fidelity", FAIL, f"{line}: {verdict.reason}; it does not act like a distilled teacher", details))
    bad = int((~torch.isfinite(student_actions)).sum())
    checks.append(Check("actions.finite", FAIL if bad else PASS,
                        f"{bad} NaN/Inf values in {student_actions.numel()} student action values", {"nonfinite": bad}))
    bounds = _action_bounds(meta)
    if bounds is None:
        checks.append(Check("actions.range", SKIP, "the dataset has no action min/max statistics"))
    else:
        s_out, t_out = _out_of_range(student_actions, bounds), _out_of_range(chunks["reference"], bounds)
        ok = s_out <= t_out + 0.01
        checks.append(Check("actions.range", PASS if ok else FAIL,
                            f"{100 * s_out:.1f}% of student action values outside the dataset's range (+-{100 * RANGE_MARGIN:.0f}% margin); "
                            f"teacher {100 * t_out:.1f}%", {"student_out_of_range": s_out, "teacher_out_of_range": t_out}))
    checks[-1].details["margin"] = RANGE_MARGIN if bounds is not None else None
    if speed:
        checks += speed_checks(loaded["student"], loaded["teacher"], {k: v[:1] for k, v in raw.items()}, repeats=repeats)
    return checks


def _timed(fn, sync: bool) -> float:
    t0 = time.perf_counter()
    fn()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def time_policy(policy, inputs, steps_list: tuple[int, ...], repeats: int) -> dict[str, list[float]]:
    """Seconds of the prefix (VLM + KV cache), of one expert step, and of whole chunks, per repeat."""
    sync = inputs.state.is_cuda
    noise = torch.randn(1, policy.config.chunk_size, policy.config.max_action_dim, device=inputs.state.device)
    t = torch.ones(1, device=inputs.state.device)
    holder = {}

    def prefix():
        holder["v"] = velocity_field(policy, inputs)

    out = {"prefix": [], "step": [], **{f"chunk@{k}": [] for k in steps_list}}
    with torch.inference_mode():
        prefix()  # warm-up
        holder["v"](noise, t)
        for _ in range(repeats):
            out["prefix"].append(_timed(prefix, sync))
            out["step"].append(_timed(lambda: holder["v"](noise, t), sync))
            for k in steps_list:
                out[f"chunk@{k}"].append(_timed(lambda k=k: sample_chunk(policy, inputs, noise, k), sync))
    return out


def speed_checks(student, teacher, raw_one: dict, repeats: int = 7) -> list[Check]:
    """Teacher and student timed in alternating rounds; each figure is the fastest of its repeats
    (the cost without interference: other processes only ever add time). For the same reason a
    result out of bounds is measured again, ``repeats`` rounds at a time up to ``SPEED_CONFIRM``
    times as many, each figure the fastest of all its rounds, before it fails: a burst of load on a
    shared machine passes, a student that truly costs more stays out of bounds."""
    s_pol, s_pre, _ = student
    t_pol, t_pre, _ = teacher
    k, m = s_pol.config.num_steps, t_pol.config.num_steps
    s_in, t_in = policy_inputs(s_pol, s_pre(dict(raw_one))), policy_inputs(t_pol, t_pre(dict(raw_one)))
    t_runs: dict[str, list[float]] = {}
    s_runs: dict[str, list[float]] = {}
    rounds = 0
    while True:
        for _ in range(repeats):
            for runs, pol, inp, steps in ((t_runs, t_pol, t_in, (m,)), (s_runs, s_pol, s_in, tuple(sorted({k, m})))):
                for key, v in time_policy(pol, inp, steps, 1).items():
                    runs.setdefault(key, []).extend(v)
        rounds += repeats
        t = {key: min(v) for key, v in t_runs.items()}
        s = {key: min(v) for key, v in s_runs.items()}
        same = s[f"chunk@{m}"] / t[f"chunk@{m}"]  # at the teacher's step count: the same cost expected
        limit = (t["prefix"] + k * t["step"]) / (t["prefix"] + m * t["step"])  # structural, at the student's
        measured = s[f"chunk@{k}"] / t[f"chunk@{m}"]
        same_ok = 1 / SPEED_SAME_COST <= same <= SPEED_SAME_COST
        ok = measured <= SPEED_SLACK * limit
        if (same_ok and ok) or rounds >= SPEED_CONFIRM * repeats:
            break
    ms = lambda x: f"{1000 * x:.1f} ms"  # noqa: E731
    details = {"teacher_s": t, "student_s": s, "student_steps": k, "teacher_steps": m, "same_cost_ratio": same,
               "repeats": repeats, "rounds": rounds, "statistic": "min"}
    checks = [Check("speed.same_cost", PASS if same_ok else FAIL,
                    f"at {m} steps: student {ms(s[f'chunk@{m}'])}, teacher {ms(t[f'chunk@{m}'])} (x{same:.2f}); prefix "
                    f"{ms(s['prefix'])} vs {ms(t['prefix'])}, per step {ms(s['step'])} vs {ms(t['step'])}"
                    + ("" if same_ok else "; the same architecture should cost the same: check dtypes and load_vlm_weights"),
                    details)]
    checks.append(Check("speed.speedup", PASS if ok else FAIL,
                        f"student @{k} {ms(s[f'chunk@{k}'])} = x{measured:.2f} of teacher @{m}; structural limit "
                        f"(prefix + {k} steps)/(prefix + {m} steps) = x{limit:.2f}",
                        {"measured_ratio": measured, "structural_ratio": limit}))
    return checks


# ---- entry point ---------------------------------------------------------------------------------


def verify(checkpoint: str, teacher: str | None = None, *, revision: str | None = None,
           teacher_revision: str | None = None, dataset: str | None = None, dataset_root: Path | None = None,
           frames: int = 32, tolerance: float = FIDELITY_TOLERANCE, speed: bool = True,
           compile_mode: str | None = None) -> Report:
    ckpt = resolve_checkpoint(checkpoint, revision, what="checkpoint", validate=False)
    check_folder(ckpt.path, "checkpoint")  # a truncated or empty file is bad input (exit 2), not a failed check
    notes: list[Check] = []
    if teacher is None:
        teacher, teacher_revision, note = _teacher_from_lineage(ckpt.path)
        if note:
            notes.append(note)
    t = resolve_checkpoint(teacher, teacher_revision, what="teacher") if teacher else None
    checks = notes + structure_checks(ckpt.path, t.path if t else None, t.ref if t else None)
    if dataset is None:
        checks.append(Check("fidelity", SKIP, "no --dataset given: fidelity and speed need real observations",
                            {"fix": "pass --dataset"}))
        checks += _recorded_fidelity(ckpt.path)
    elif t is None:
        raise UserError("verify: --dataset measures the student against its teacher; pass --teacher too")
    else:
        checks += fidelity_checks(ckpt.path, t.path, dataset, dataset_root, frames=frames, tolerance=tolerance, speed=speed)
    if compile_mode:  # latency through LeRobot's compile_model path (checks/compiled.py), as information
        result = compiled.measure(ckpt.path, t.path if t else None, mode=compile_mode)
        checks.append(Check("speed.compiled", INFO, compiled.summary(result), result))
    return Report(checkpoint=_display(checkpoint, ckpt.ref), teacher=_display(teacher, t.ref) if t else None, checks=checks)


def _teacher_from_lineage(folder: Path) -> tuple[str | None, str | None, Check | None]:
    """The teacher recorded in the lineage file, when it is a Hub repo at a commit and reachable."""
    path = folder / LINEAGE_NAME
    if not path.is_file():
        return None, None, None
    try:
        ref = Lineage.from_file(path).teacher
    except Exception:  # the lineage check reports it
        return None, None, None
    if not ref.repo_id:
        return None, None, None
    try:
        resolve_checkpoint(ref.repo_id, ref.commit, what="teacher")
    except UserError as e:
        return None, None, Check("teacher", INFO, f"the recorded teacher {ref.repo_id}@{(ref.commit or '')[:12]} is not "
                                 f"reachable ({e}); checking against the architecture instead")
    return ref.repo_id, ref.commit, Check("teacher", INFO, f"teacher taken from the lineage: {ref.repo_id}@{ref.commit}")


def _recorded_fidelity(folder: Path) -> list[Check]:
    """The fidelity verdict the training run recorded in the lineage (its final measurement), shown
    beside a verify that did not measure fidelity itself."""
    try:
        evaluation = Lineage.from_file(folder / LINEAGE_NAME).evaluation if (folder / LINEAGE_NAME).is_file() else {}
    except Exception:  # the lineage check reports it
        return []
    verdict = recorded_verdict(evaluation)
    if verdict is None:
        return []
    word = "PASS" if verdict.passed else "FAIL"
    return [Check("fidelity.recorded", INFO, f"recorded by the training run, not measured here: {word}, {verdict.reason} "
                  f"({evaluation.get('frames')} frames from {evaluation.get('frames_from')})",
                  {"verdict": f"{word} ({verdict.reason})", "passed": verdict.passed})]


def _display(arg: str, ref: CheckpointRef) -> str:
    return f"{ref.repo_id}@{ref.commit}" if ref.repo_id else str(arg)
