"""``hub-reflow canonicalize SRC DST``: repair a SmolVLA reflow checkpoint made elsewhere (for example
by the fork of the seed document) into a canonical one (DESIGN.md section 3), then verify it.

Repaired: config fields LeRobot does not know (dropped); ``load_vlm_weights`` (set to the teacher's,
``true`` without a teacher); teacher weights embedded in the file under any prefix (removed); the
student's own keys saved under a prefix (prefix stripped); dtypes (cast to the teacher's layout, or
to the layout LeRobot builds with ``load_vlm_weights: true``; LeRobot does the same cast when it
loads, so the policy acts the same); processor files the teacher has and SRC lacks (copied).

Not repaired, reported, nothing written: NaN/Inf weights, missing or unknown weights, other shapes,
a VLM that differs from the teacher's. SRC is never modified; DST is written atomically.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    atomic_dir,
    clean_config_dict,
    parse_policy_config,
    processor_files,
    resolve_checkpoint,
)
from .errors import UserError
from .verify import (
    _equal_values,
    architecture_layout,
    group_of,
    is_teacher_prefix,
    read_header,
    split_prefixed,
    torch_dtype,
)

# Files of a training run that never belong in a policy checkpoint.
_SKIP = {"training_state", ".cache"}


@dataclass
class Plan:
    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what cannot be repaired


class NotRepairable(UserError):
    pass


def _plan_config(raw: dict, teacher_raw: dict | None, plan: Plan) -> dict:
    cleaned, unknown = clean_config_dict(raw)
    if unknown:
        plan.changes.append(f"config: dropped fields LeRobot does not know: {', '.join(unknown)}")
    want = bool(teacher_raw.get("load_vlm_weights")) if teacher_raw is not None else True
    if cleaned.get("load_vlm_weights") != want:
        whose = "the teacher's" if teacher_raw is not None else "true: no teacher given"
        plan.changes.append(f"config: load_vlm_weights {json.dumps(cleaned.get('load_vlm_weights'))} -> {json.dumps(want)} ({whose})")
        cleaned["load_vlm_weights"] = want
    return cleaned


def _plan_weights(src: Path, ref: dict, teacher_weights: Path | None, plan: Plan) -> dict[str, torch.Tensor] | None:
    from .safeio import safe_open

    header = read_header(src / WEIGHTS_NAME)
    mapping, by_prefix = split_prefixed(header, set(ref))
    dropped = [k for p, ks in by_prefix.items() if is_teacher_prefix(p) for k in ks]
    if dropped:
        prefixes = ", ".join(sorted(repr(p) for p in by_prefix if is_teacher_prefix(p)))
        plan.changes.append(f"weights: removed {len(dropped)} teacher tensors under prefix {prefixes}")
    renamed = {k: mapping[k] for p, ks in by_prefix.items() if not is_teacher_prefix(p) for k in ks}
    plain = [k for k in header if k in ref]
    if renamed and plain:
        plan.problems.append(f"weights: both plain keys and keys under prefix {sorted(p for p in by_prefix if not is_teacher_prefix(p))} "
                             "exist; cannot tell which are the student's")
        return None
    if renamed:
        plan.changes.append(f"weights: stripped prefix {', '.join(sorted(repr(p) for p in by_prefix if not is_teacher_prefix(p)))} "
                            f"from {len(renamed)} student keys")
    names = {k: renamed.get(k, k) for k in header if k not in set(dropped)}
    unknown = sorted(k for k, n in names.items() if n not in ref)
    missing = sorted(set(ref) - set(names.values()))
    if unknown:
        plan.problems.append(f"weights: {len(unknown)} keys this SmolVLA config does not have (e.g. {unknown[0]})")
    if missing:
        plan.problems.append(f"weights: {len(missing)} keys missing (e.g. {missing[0]}); the weights cannot be made up")
    shapes = sorted(n for k, n in names.items() if n in ref and tuple(header[k][0]) != ref[n][0])
    if shapes:
        plan.problems.append(f"weights: {len(shapes)} tensors with other shapes than the reference (e.g. {shapes[0]})")
    if unknown or missing or shapes:
        return None
    out: dict[str, torch.Tensor] = {}
    casts: dict[str, int] = {}
    nonfinite, vlm_diff = [], []
    t_file = safe_open(teacher_weights, "teacher") if teacher_weights is not None else None
    with safe_open(src / WEIGHTS_NAME, "source") as f:
        for k, name in names.items():
            t = f.get_tensor(k)
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                nonfinite.append(name)
            if t_file is not None and group_of(name) == "VLM" and not _equal_values(t, t_file.get_tensor(name)):
                vlm_diff.append(name)
            want = torch_dtype(ref[name][1])
            if t.dtype != want:
                label = f"{group_of(name)} {str(t.dtype).removeprefix('torch.')} -> {str(want).removeprefix('torch.')}"
                casts[label] = casts.get(label, 0) + 1
                t = t.to(want)
            out[name] = t.contiguous()
    if nonfinite:
        plan.problems.append(f"weights: NaN/Inf in {len(nonfinite)} tensors (e.g. {nonfinite[0]}); retrain or take an earlier checkpoint")
    if vlm_diff:
        plan.problems.append(f"weights: {len(vlm_diff)} VLM tensors differ from the teacher's (e.g. {vlm_diff[0]}); "
                             "the frozen VLM must be the teacher's")
    if casts:
        plan.changes.append("weights: cast " + "; ".join(f"{label} x{n}" for label, n in casts.items())
                            + " (the layout LeRobot builds and casts to at load time)")
    return None if plan.problems else out


def _check_stats(src: Path, teacher: Path, present: list[str], plan: Plan) -> None:
    """Normalisation statistics that differ from the teacher's are not replaced: which ones the
    student was trained with cannot be told from the files."""
    from .safeio import load_file

    differ = set()
    for name in present:
        if not name.endswith(".safetensors"):
            continue
        mine, theirs = load_file(src / name, "source"), load_file(teacher / name, "teacher")
        differ |= {k for k in mine.keys() | theirs.keys() if k not in mine or k not in theirs or not torch.equal(mine[k], theirs[k])}
    if differ:
        plan.problems.append(f"processors: normalisation statistics differ from the teacher's ({', '.join(sorted(differ)[:6])}); "
                             "which ones the student was trained with cannot be told from the files")


def canonicalize(src: str, dst: str | Path, teacher: str | None = None, *, revision: str | None = None,
                 teacher_revision: str | None = None) -> list[str]:
    """Write the canonical form of ``src`` into ``dst``; return the list of changes made.

    Raises ``NotRepairable`` (nothing written) when the checkpoint cannot be made canonical."""
    from safetensors.torch import save_file

    from .safeio import check_folder
    from .validation import check_output_folder

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
    if raw.get("type") != "smolvla":
        raise NotRepairable(f"canonicalize: config type {raw.get('type')!r} is not 'smolvla'")
    if not (src_dir / WEIGHTS_NAME).is_file():
        raise NotRepairable(f"canonicalize: {WEIGHTS_NAME} is missing; the weights cannot be made up")

    plan = Plan()
    teacher_raw = json.loads((t.path / CONFIG_NAME).read_text()) if t else None
    config = _plan_config(raw, teacher_raw, plan)
    ref = read_header(t.path / WEIGHTS_NAME) if t else architecture_layout(config)
    tensors = _plan_weights(src_dir, ref, t.path / WEIGHTS_NAME if t else None, plan)
    # Processor files: the teacher's list; the checkpoint's own when no teacher is given.
    try:
        wanted = processor_files(t.path if t else src_dir)
    except (OSError, json.JSONDecodeError):
        wanted = None
        plan.problems.append("processors: the processor configs are missing or unreadable; pass --teacher to take the teacher's")
    copied = [n for n in (wanted or []) if not (src_dir / n).is_file()]
    if copied and t is None:
        plan.problems.append(f"processors: missing {', '.join(copied)}; pass --teacher to take the teacher's")
    elif copied:
        plan.changes.append(f"processors: copied from the teacher: {', '.join(copied)}")
    if t is not None:
        _check_stats(src_dir, t.path, [n for n in (wanted or []) if n not in copied], plan)
    if plan.problems:
        raise NotRepairable("canonicalize: not repairable, nothing written: " + "; ".join(plan.problems))

    cfg = parse_policy_config(config, "source")
    with atomic_dir(dst) as tmp:
        for item in src_dir.iterdir():
            if item.name in _SKIP or item.name in (CONFIG_NAME, WEIGHTS_NAME) or item.name.startswith((".tmp-", ".old-")):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copyfile(item, tmp / item.name)
        for name in copied:
            shutil.copyfile(t.path / name, tmp / name)
        cfg._save_pretrained(tmp)  # LeRobot's own config writer, as lerobot-train uses
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    if not plan.changes:
        plan.changes.append("nothing to change: the source was already canonical")
    return plan.changes
