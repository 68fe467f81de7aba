"""``hub-reflow canonicalize SRC DST``: repair a SmolVLA reflow checkpoint made elsewhere (for example
by the fork of the seed document) into a canonical one (docs/canonical.md#definition), then verify it.

The plan is built from verify's own structural checks over the same inspection facts: each failed
check either has a repair (``REPAIRS``) or makes the checkpoint not repairable. Repaired: config
fields LeRobot does not know (dropped); ``load_vlm_weights`` (set to the teacher's, ``true`` without
a teacher); teacher tensors, by the one teacher rule, at any depth (removed); the student's own keys
saved under a prefix (prefix stripped); dtypes (cast to the teacher's layout, or to the layout
LeRobot builds with ``load_vlm_weights: true``; LeRobot does the same cast when it loads, so the
policy acts the same); processor files the teacher has and SRC lacks (copied).

Not repaired, reported, nothing written: NaN/Inf weights, missing or unknown weights, other shapes,
a VLM or normalisation statistics or processor configs that differ from the teacher's, other config
differences, a local backbone path, an unreadable lineage or one naming another teacher. SRC is never
modified; DST is written atomically.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import (
    CONFIG_NAME,
    LINEAGE_NAME,
    WEIGHTS_NAME,
    CheckpointRef,
    Lineage,
    check_backbone_repo,
    clean_config_dict,
    parse_policy_config,
    rename_backbone,
    resolve_checkpoint,
)
from .checks.inspection import Facts, inspect_checkpoint
from .checks.keys import group_of, torch_dtype
from .checks.report import Check, counted
from .checks.structure import dtype_casts, structure_checks
from .errors import UserError
from .files import atomic_dir
from .safeio import check_folder, safe_open
from .validation import check_output_folder

# Files of a training run that never belong in a policy checkpoint.
_SKIP = {"training_state", ".cache"}


@dataclass
class Plan:
    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what cannot be repaired
    config: dict = field(default_factory=dict)  # the config to write (known fields only)
    copied: list[str] = field(default_factory=list)  # processor files taken from the teacher
    backbone: tuple[str, str] | None = None  # (local folder, Hub repo id): renamed in config and processors


class NotRepairable(UserError):
    pass


# ---- one repair per check name -------------------------------------------------------------------


def _repair_config(f: Facts, check: Check, plan: Plan) -> None:
    # Unknown fields are always dropped and a local backbone renamed (plan_repairs); a config plain
    # LeRobot refuses cannot be repaired from the files.
    if f.config.parse_error is not None:
        plan.problems.append(f"config: plain LeRobot cannot parse it ({f.config.parse_error})")


def _repair_config_diff(f: Facts, check: Check, plan: Plan) -> None:
    # load_vlm_weights is set to the teacher's in plan_repairs (LeRobot casts on load, so the policy
    # acts the same); any other field the student was trained with cannot be told.
    other = [k for k in check.details.get("unexpected", []) if k != "load_vlm_weights"]
    if other:
        plan.problems.append(f"config: differs from the teacher's in {', '.join(other)}; which values the student was "
                             "trained with cannot be told from the files")


def _repair_weights_teacher(f: Facts, check: Check, plan: Plan) -> None:
    prefixes = ", ".join(repr(p) for p in f.weights.teacher_prefixes)
    plan.changes.append(f"weights: removed {counted(len(f.weights.teacher_keys), 'teacher tensor')} under prefix {prefixes}")


def _repair_weights_keys(f: Facts, check: Check, plan: Plan) -> None:
    w, ref = f.weights, f.reference.header
    if w.ambiguous:
        plan.problems.append(f"weights: both plain keys and keys under prefix {w.own_prefixes} exist; cannot tell which are the student's")
        return
    names = w.names
    unknown = sorted(k for k, n in names.items() if n not in ref)
    missing = sorted(set(ref) - set(names.values()))
    shapes = sorted(n for k, n in names.items() if n in ref and w.header[k][0] != ref[n][0])
    if unknown:
        plan.problems.append(f"weights: {counted(len(unknown), 'key')} this SmolVLA config does not have (e.g. {unknown[0]})")
    if missing:
        plan.problems.append(f"weights: {counted(len(missing), 'key')} missing (e.g. {missing[0]}); the weights cannot be made up")
    if shapes:
        plan.problems.append(f"weights: {counted(len(shapes), 'tensor')} with other shapes than the reference (e.g. {shapes[0]})")
    if w.own_prefixes and not (unknown or missing or shapes):
        plan.changes.append(f"weights: stripped prefix {', '.join(repr(p) for p in w.own_prefixes)} from {counted(len(names), 'student key')}")


def _repair_weights_dtypes(f: Facts, check: Check, plan: Plan) -> None:
    casts: dict[str, int] = {}
    for k, (have, want) in dtype_casts(f).items():
        label = (f"{group_of(f.weights.names[k])} {str(torch_dtype(have)).removeprefix('torch.')} -> "
                 f"{str(torch_dtype(want)).removeprefix('torch.')}")
        casts[label] = casts.get(label, 0) + 1
    plan.changes.append("weights: cast " + "; ".join(f"{label} x{n}" for label, n in casts.items())
                        + " (the layout LeRobot builds and casts to at load time)")


def _repair_processor_files(f: Facts, check: Check, plan: Plan) -> None:
    p = f.processors
    if p.error is not None:
        plan.problems.append("processors: the processor configs are missing or unreadable; pass --teacher to take the teacher's")
        return
    if p.missing and f.teacher is None:
        plan.problems.append(f"processors: missing {', '.join(p.missing)}; pass --teacher to take the teacher's")
    elif p.missing:
        plan.copied = list(p.missing)
        plan.changes.append(f"processors: copied from the teacher: {', '.join(p.missing)}")
    if p.configs_differ:
        plan.problems.append(f"processors: configs differ from the teacher's ({', '.join(p.configs_differ)}); which ones the "
                             "student was trained with cannot be told from the files")


def _refuse_nonfinite(f: Facts, check: Check, plan: Plan) -> None:
    bad = [f.weights.names[k] for k in f.weights.nonfinite]
    plan.problems.append(f"weights: NaN/Inf in {counted(len(bad), 'tensor')} (e.g. {bad[0]}); retrain or take an earlier checkpoint")


def _refuse_vlm(f: Facts, check: Check, plan: Plan) -> None:
    diff = f.weights.vlm_diff
    what = f"{counted(len(diff), 'VLM tensor')} {'differs' if len(diff) == 1 else 'differ'} from the teacher's (e.g. {diff[0]})" if diff else "no VLM tensor in common with the teacher"
    plan.problems.append(f"weights: {what}; the frozen VLM must be the teacher's")


def _refuse_stats(f: Facts, check: Check, plan: Plan) -> None:
    p = f.processors
    if p.stats_differ:
        plan.problems.append(f"processors: normalisation statistics differ from the teacher's ({', '.join(sorted(set(p.stats_differ))[:6])}); "
                             "which ones the student was trained with cannot be told from the files")
    if p.stats_nonfinite:
        plan.problems.append(f"processors: NaN/Inf in normalisation statistics ({', '.join(p.stats_nonfinite[:4])})")


def _refuse_lineage(f: Facts, check: Check, plan: Plan) -> None:
    plan.problems.append(f"{check.name}: {check.summary}")


# Check name -> what canonicalize does about its failure.
REPAIRS: dict[str, Callable[[Facts, Check, Plan], None]] = {
    "config": _repair_config,
    "config.diff": _repair_config_diff,
    "weights.teacher": _repair_weights_teacher,
    "weights.keys": _repair_weights_keys,
    "weights.dtypes": _repair_weights_dtypes,
    "weights.finite": _refuse_nonfinite,
    "weights.vlm": _refuse_vlm,
    "processors.files": _repair_processor_files,
    "processors.stats": _refuse_stats,
    "lineage": _refuse_lineage,
    "weights.expert": _refuse_lineage,  # the teacher's own expert: nothing to repair, not a student
}


def plan_repairs(f: Facts, vlm_repo_id: str | None = None) -> Plan:
    """The repair plan for the structural checks that fail on ``f``; ``problems`` lists what cannot be
    repaired. ``vlm_repo_id``: the Hub repo id of a local backbone folder (checked against its files)."""
    plan = Plan(config=dict(f.config.cleaned))
    local = f.config.raw.get("vlm_model_name") if f.config.raw else None
    if f.config.local_vlm and vlm_repo_id is None:
        plan.problems.append(f"config: vlm_model_name is a local path ({local}); pass --vlm-repo-id ORG/NAME, the Hub "
                             "repo that holds that backbone (checked against the folder's files)")
    elif f.config.local_vlm:
        check_backbone_repo(local, vlm_repo_id, "canonicalize")
        plan.config["vlm_model_name"], plan.backbone = vlm_repo_id, (local, vlm_repo_id)
        plan.changes.append(f"config and processors: vlm_model_name {local} -> {vlm_repo_id} (the same files)")
    if f.config.unknown:
        plan.changes.append(f"config: dropped fields LeRobot does not know: {', '.join(f.config.unknown)}")
    want = bool(f.config.teacher_raw.get("load_vlm_weights")) if f.teacher is not None else True
    if plan.config.get("load_vlm_weights") != want:
        whose = "the teacher's" if f.teacher is not None else "true: no teacher given"
        plan.changes.append(f"config: load_vlm_weights {json.dumps(plan.config.get('load_vlm_weights'))} -> {json.dumps(want)} ({whose})")
        plan.config["load_vlm_weights"] = want
    for check in structure_checks(f):
        if check.failed:
            REPAIRS[check.name](f, check, plan)
    return plan


def canonicalize(src: str, dst: str | Path, teacher: str | None = None, *, revision: str | None = None,
                 teacher_revision: str | None = None, vlm_repo_id: str | None = None) -> list[str]:
    """Write the canonical form of ``src`` into ``dst``; return the list of changes made.

    Raises ``NotRepairable`` (nothing written) when the checkpoint cannot be made canonical."""
    resolved = resolve_checkpoint(src, revision, what="source", validate=False)
    src_dir = resolved.path
    dst = Path(dst).expanduser()
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise UserError(f"canonicalize: {dst} already exists; pass a new folder as DST (SRC is never overwritten)")
    check_output_folder(dst, "canonicalize: DST")  # not under a file, writable
    check_folder(src_dir, "source")  # truncated / empty weight files: one line, nothing written
    if dst.resolve() == src_dir.resolve() or src_dir.resolve() in dst.resolve().parents:
        raise UserError("canonicalize: DST must be outside SRC")
    t = resolve_checkpoint(teacher, teacher_revision, what="teacher") if teacher else None
    try:
        raw = json.loads((src_dir / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise NotRepairable(f"canonicalize: {CONFIG_NAME} cannot be read ({type(e).__name__})") from None
    if not isinstance(raw, dict) or raw.get("type") != "smolvla":
        kind = raw.get("type") if isinstance(raw, dict) else None
        raise NotRepairable(f"canonicalize: config type {kind!r} is not 'smolvla'")
    if not (src_dir / WEIGHTS_NAME).is_file():
        raise NotRepairable(f"canonicalize: {WEIGHTS_NAME} is missing; the weights cannot be made up")

    # Without a teacher the reference is what LeRobot builds for the canonical config (load_vlm_weights true).
    reference_config = None if t else {**clean_config_dict(raw)[0], "load_vlm_weights": True}
    facts = inspect_checkpoint(src_dir, t.path if t else None, t.ref if t else None,
                               reference_config=reference_config, action="canonicalize")
    plan = plan_repairs(facts, vlm_repo_id)
    if plan.problems:
        raise NotRepairable("canonicalize: not repairable, nothing written: " + "; ".join(plan.problems))
    _write(facts, plan, dst, parse_policy_config(plan.config, "source"))
    if not plan.changes:
        plan.changes.append("nothing to change: the source was already canonical")
    return plan.changes


def _write(f: Facts, plan: Plan, dst: Path, cfg) -> None:
    from safetensors.torch import save_file


    ref = f.reference.header
    with atomic_dir(dst) as tmp:
        for item in f.folder.iterdir():
            if item.name in _SKIP or item.name in (CONFIG_NAME, WEIGHTS_NAME) or item.name.startswith((".tmp-", ".old-")):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copyfile(item, tmp / item.name)
        for name in plan.copied:
            shutil.copyfile(f.teacher / name, tmp / name)
        cfg._save_pretrained(tmp)  # LeRobot's own config writer, as lerobot-train uses
        rename_backbone(tmp, plan.backbone)
        # The student's own tensors under their reference names, in the reference's dtypes.
        with safe_open(f.folder / WEIGHTS_NAME, "source") as src:
            tensors = {f.weights.names[k]: src.get_tensor(k).to(torch_dtype(ref[f.weights.names[k]][1])).contiguous()
                       for k in f.weights.own}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if not (tmp / LINEAGE_NAME).is_file():
            # What is known, no more (docs/canonical.md#lineage): the teacher it was checked against, if
            # any; the training record unknown. The card then says so and push accepts it.
            ref = f.teacher_ref or CheckpointRef(None, None, None, "")
            (tmp / LINEAGE_NAME).write_text(Lineage(
                teacher=ref, reflow={"student_steps": cfg.num_steps}, teacher_num_steps=(f.config.teacher_raw or {}).get("num_steps", 10),
                training={"record": "unknown", "written_by": "hub-reflow canonicalize"}).to_json())
