"""``hub-reflow verify``: is a reflow checkpoint canonical, and does it act like its teacher?

Each check gives one line with its numbers and a verdict (DESIGN.md sections 2 and 3):

- structure, against the teacher's checkpoint when one is given, else against what LeRobot builds
  from the checkpoint's own config: ``config`` (plain LeRobot parses it, no unknown field),
  ``config.diff`` (only ``num_steps`` and push fields differ from the teacher's), ``weights.teacher``
  (no embedded teacher copy, under any prefix), ``weights.keys`` (key set and shapes, counted per
  module group), ``weights.dtypes``, ``weights.finite``, ``weights.vlm`` (frozen VLM bit-identical),
  ``processors.files`` and ``processors.stats``; plus ``lineage`` (the given teacher is the one the
  student was trained from) and the file size as information;
- fidelity, with a dataset: ``fidelity`` (student at its steps against the teacher at its own, shared
  noise, relative to the teacher's own spread), ``actions.finite``, ``actions.range``;
- speed, with a dataset: ``speed.same_cost`` (the student at the teacher's step count costs what the
  teacher costs) and ``speed.speedup`` (at its own step count it is as fast as prefix and per-step
  times predict).

Every check is computed from the files and from LeRobot's own loaders and sampler; nothing trusts
the lineage file's recorded numbers.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .checkpoint import (
    CONFIG_NAME,
    LINEAGE_NAME,
    WEIGHTS_NAME,
    CheckpointRef,
    clean_config_dict,
    parse_policy_config,
    processor_files,
)
from .errors import UserError
from .evaluate import MAX_RATIO, action_scale, fidelity_verdict

PASS, FAIL, SKIP, INFO = "pass", "fail", "skip", "info"
# Fields a student may differ in from its teacher on purpose (step count; what push_to_hub sets).
ALLOWED_CONFIG_DIFF = ("num_steps", "repo_id", "push_to_hub", "private", "tags", "license")
# Module groups of a SmolVLA state dict, by module path (the expert's keys also contain "vlm").
GROUPS = (
    ("VLM", ("model", "vlm_with_expert", "vlm")),
    ("action expert", ("model", "vlm_with_expert", "lm_expert")),
    ("projections", ("model",)),
)


@dataclass
class Check:
    name: str
    status: str  # pass | fail | skip | info
    summary: str
    details: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == FAIL


@dataclass
class Report:
    checkpoint: str
    teacher: str | None
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return not any(c.failed for c in self.checks)

    def failed_names(self) -> set[str]:
        return {c.name for c in self.checks if c.failed}

    def get(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "teacher": self.teacher, "passed": self.passed,
                "checks": [asdict(c) for c in self.checks]}

    def lines(self) -> list[str]:
        width = max(len(c.name) for c in self.checks)
        return [f"{c.status.upper():4}  {c.name:<{width}}  {c.summary}" for c in self.checks]


# ---- weights: headers, groups, prefixes --------------------------------------------------------


def group_of(key: str) -> str:
    parts = tuple(key.split("."))
    for name, prefix in GROUPS:
        if parts[: len(prefix)] == prefix:
            return name
    return "other"


def group_counts(keys) -> dict[str, int]:
    counts = {name: 0 for name, _ in GROUPS}
    for k in keys:
        g = group_of(k)
        counts[g] = counts.get(g, 0) + 1
    return counts


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items() if n or name != "other")


def read_header(path: Path, what: str = "weights") -> dict[str, tuple[tuple[int, ...], str]]:
    """key -> (shape, dtype name) from a safetensors file, without loading any tensor (an unreadable
    file is a one-line ``UserError`` naming it)."""
    from .safeio import read_header as _read

    return _read(path, what)


_ST_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8"}
_TORCH_DTYPE = {v: k for k, v in _ST_DTYPE.items()}


def torch_dtype(st_dtype: str) -> torch.dtype:
    return _TORCH_DTYPE[st_dtype]


def architecture_layout(raw_cfg: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """key -> (shape, dtype) of the state dict LeRobot builds for this SmolVLA config (the layout a
    checkpoint of that config must have when no teacher is at hand). Needs the backbone named by
    ``vlm_model_name`` (its config; with ``load_vlm_weights: true`` its weights too)."""
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    cfg = parse_policy_config(raw_cfg, "checkpoint")
    cfg.device = "cpu"
    try:
        policy = SmolVLAPolicy(cfg)
    except Exception as e:  # backbone not in the cache and no network, bad config values
        raise UserError(
            f"verify: cannot build the SmolVLA architecture of the checkpoint's config to compare against "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); pass --teacher"
        ) from None
    return {k: (tuple(t.shape), _ST_DTYPE[t.dtype]) for k, t in policy.state_dict().items()}


def split_prefixed(keys, reference: set[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Keys that are not in ``reference`` but are a reference key under some prefix.

    Returns ({key: reference key}, {prefix: [keys]}), trying the shortest prefix first
    (``teacher.model.x`` -> prefix ``teacher.``, key ``model.x``)."""
    mapping: dict[str, str] = {}
    by_prefix: dict[str, list[str]] = {}
    for k in keys:
        if k in reference:
            continue
        parts = k.split(".")
        for i in range(1, len(parts)):
            rest = ".".join(parts[i:])
            if rest in reference:
                prefix = ".".join(parts[:i]) + "."
                mapping[k] = rest
                by_prefix.setdefault(prefix, []).append(k)
                break
    return mapping, by_prefix


def is_teacher_prefix(prefix: str) -> bool:
    return any("teacher" in part.lower() for part in prefix.split("."))


def _equal_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exactly the same numbers (a float32 copy of a bf16 tensor counts as equal: dtypes are the
    dtype check's business)."""
    if a.shape != b.shape:
        return False
    if a.dtype == b.dtype:
        return torch.equal(a, b)
    return torch.equal(a.double(), b.double())


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


# ---- structure -----------------------------------------------------------------------------------


def _config_checks(folder: Path, teacher: Path | None) -> tuple[list[Check], dict | None]:
    from lerobot.configs.policies import PreTrainedConfig

    try:
        raw = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as e:
        return [Check("config", FAIL, f"{CONFIG_NAME} cannot be read ({type(e).__name__})")], None
    if not isinstance(raw, dict) or raw.get("type") != "smolvla":
        kind = raw.get("type") if isinstance(raw, dict) else None
        return [Check("config", FAIL, f"type is {kind!r}, not 'smolvla'")], None
    _, unknown = clean_config_dict(raw)
    checks = []
    if unknown:
        checks.append(Check("config", FAIL, f"{len(unknown)} fields LeRobot's SmolVLAConfig does not know: {', '.join(unknown)} "
                            "(plain LeRobot refuses it; hub-reflow canonicalize drops them)", {"unknown_fields": unknown}))
    else:
        try:
            PreTrainedConfig.from_pretrained(str(folder))  # plain LeRobot, nothing dropped
            checks.append(Check("config", PASS, f"type smolvla, {len(raw)} fields, parses with plain LeRobot"))
        except Exception as e:
            checks.append(Check("config", FAIL, f"plain LeRobot cannot parse it: {str(e).splitlines()[0][:200]}"))
    if teacher is None:
        note = ("load_vlm_weights true" if raw.get("load_vlm_weights") else
                "load_vlm_weights false: LeRobot will build every tensor in fp32; right only for a teacher trained from scratch")
        checks.append(Check("config.diff", SKIP, f"no teacher to compare with ({note}); pass --teacher",
                            {"load_vlm_weights": raw.get("load_vlm_weights")}))
        return checks, raw
    t_raw = json.loads((teacher / CONFIG_NAME).read_text())
    s_known, _ = clean_config_dict(raw)
    t_known, t_unknown = clean_config_dict(t_raw)
    diff = {k: [s_known.get(k), t_known.get(k)] for k in sorted(set(s_known) | set(t_known)) if s_known.get(k) != t_known.get(k)}
    bad = {k: v for k, v in diff.items() if k not in ALLOWED_CONFIG_DIFF}
    shown = "; ".join(f"{k}: {json.dumps(s)} (teacher {json.dumps(t)})" for k, (s, t) in diff.items()) or "nothing"
    extra = f"; the teacher's own unknown fields ignored: {', '.join(t_unknown)}" if t_unknown else ""
    if bad:
        summary = f"differs from the teacher beyond num_steps/push fields in {', '.join(bad)}: {shown}{extra}"
    else:
        summary = f"differs from the teacher only in {shown}{extra}"
    checks.append(Check("config.diff", FAIL if bad else PASS, summary, {"diff": diff, "unexpected": sorted(bad)}))
    return checks, raw


def _weights_checks(folder: Path, raw_cfg: dict | None, teacher: Path | None) -> list[Check]:
    from .safeio import safe_open

    weights = folder / WEIGHTS_NAME
    names = ("weights.teacher", "weights.keys", "weights.dtypes", "weights.finite", "weights.vlm")
    if not weights.is_file():
        return [Check(n, FAIL if n == "weights.keys" else SKIP, f"{WEIGHTS_NAME} is missing" if n == "weights.keys" else "no weights file")
                for n in names]
    try:
        header = read_header(weights)
    except Exception as e:
        return [Check(n, FAIL if n == "weights.keys" else SKIP, f"{WEIGHTS_NAME} cannot be read ({type(e).__name__})") for n in names]
    if teacher is not None:
        ref = read_header(teacher / WEIGHTS_NAME)
        against = "the teacher's"
    elif raw_cfg is not None:
        ref = architecture_layout(raw_cfg)
        against = "what LeRobot builds from this config"
    else:
        return [Check(n, SKIP, "no readable config and no teacher to compare with") for n in names]
    checks: list[Check] = []

    # Embedded teacher copies (any prefix), and the student's own keys under a prefix.
    mapping, by_prefix = split_prefixed(header, set(ref))
    teacher_keys = [k for p, ks in by_prefix.items() if is_teacher_prefix(p) for k in ks]
    if teacher_keys:
        prefixes = sorted(p for p in by_prefix if is_teacher_prefix(p))
        nbytes = sum(_nbytes(header[k]) for k in teacher_keys)
        checks.append(Check("weights.teacher", FAIL, f"{len(teacher_keys)} tensors ({_mb(nbytes)}) are a teacher copy under "
                            f"prefix {', '.join(repr(p) for p in prefixes)}; the file must hold the student only",
                            {"teacher_keys": len(teacher_keys), "prefixes": prefixes}))
    else:
        checks.append(Check("weights.teacher", PASS, "no teacher tensors under any prefix"))

    # Key set and shapes (teacher copies set aside: that is the check above).
    own = {k: v for k, v in header.items() if k not in set(teacher_keys)}
    missing = sorted(set(ref) - set(own))
    unexpected = sorted(set(own) - set(ref))
    shape_bad = sorted(k for k in set(own) & set(ref) if own[k][0] != ref[k][0])
    counts = group_counts(own)
    details = {"keys": len(own), "groups": counts, "reference_groups": group_counts(ref), "missing": missing,
               "unexpected": unexpected, "shape_mismatch": shape_bad}
    if missing or unexpected or shape_bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_fmt_counts(group_counts(missing))}; e.g. {missing[0]})")
        if unexpected:
            where = sorted(p for p in by_prefix if not is_teacher_prefix(p))
            hint = f" under prefix {', '.join(repr(p) for p in where)}" if where else ""
            parts.append(f"{len(unexpected)} unexpected{hint} (e.g. {unexpected[0]})")
        if shape_bad:
            k = shape_bad[0]
            parts.append(f"{len(shape_bad)} with other shapes (e.g. {k} {list(own[k][0])} vs {list(ref[k][0])})")
        checks.append(Check("weights.keys", FAIL, f"{len(own)} keys vs {len(ref)} in {against}: " + "; ".join(parts), details))
    else:
        checks.append(Check("weights.keys", PASS, f"{len(own)} keys ({_fmt_counts(counts)}), names and shapes = {against}", details))

    # Dtypes, per group.
    common = [k for k in own if k in ref and own[k][0] == ref[k][0]]
    wrong = [k for k in common if own[k][1] != ref[k][1]]
    layout = {}
    for k in common:
        layout.setdefault(group_of(k), {}).setdefault(own[k][1], 0)
        layout[group_of(k)][own[k][1]] += 1
    shown = "; ".join(f"{g} " + ", ".join(f"{d} x{n}" for d, n in sorted(ds.items())) for g, ds in layout.items())
    if wrong:
        pairs: dict[str, int] = {}
        for k in wrong:
            label = f"{group_of(k)} {own[k][1]} (expected {ref[k][1]})"
            pairs[label] = pairs.get(label, 0) + 1
        checks.append(Check("weights.dtypes", FAIL, f"{len(wrong)} tensors in another dtype than {against}: "
                            + "; ".join(f"{p} x{n}" for p, n in pairs.items())
                            + " (LeRobot casts on load: the runtime dtypes follow load_vlm_weights, the file size does not)",
                            {"wrong": len(wrong), "layout": layout}))
    else:
        checks.append(Check("weights.dtypes", PASS, f"{shown} = {against}", {"layout": layout}))

    size, ref_size = weights.stat().st_size, (teacher / WEIGHTS_NAME).stat().st_size if teacher else None
    ratio = f", x{size / ref_size:.2f}" if ref_size else ""
    checks.append(Check("weights.size", INFO, f"{_mb(size)}" + (f" (teacher {_mb(ref_size)}{ratio})" if ref_size else ""),
                        {"bytes": size, "teacher_bytes": ref_size}))

    # NaN / Inf, and the frozen VLM against the teacher's, tensor by tensor.
    nonfinite: list[str] = []
    vlm_total, vlm_diff, worst = 0, [], 0.0
    expert_changed = expert_total = 0
    t_file = safe_open(teacher / WEIGHTS_NAME, "teacher") if teacher is not None else None
    with safe_open(weights, "checkpoint") as f:
        for k in header:
            t = f.get_tensor(k)
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                nonfinite.append(k)
            if t_file is None or k not in ref or own.get(k, (None,))[0] != ref[k][0]:
                continue
            g = group_of(k)
            if g == "VLM":
                vlm_total += 1
                r = t_file.get_tensor(k)
                if not _equal_values(t, r):
                    vlm_diff.append(k)
                    worst = max(worst, _max_abs_diff(t, r))
            elif g == "action expert":
                expert_total += 1
                expert_changed += not _equal_values(t, t_file.get_tensor(k))
    if nonfinite:
        checks.append(Check("weights.finite", FAIL, f"NaN/Inf in {len(nonfinite)} tensors ({_fmt_counts(group_counts(nonfinite))}; "
                            f"e.g. {nonfinite[0]})", {"nonfinite": nonfinite}))
    else:
        checks.append(Check("weights.finite", PASS, f"no NaN or Inf in {len(header)} tensors"))
    if t_file is None:
        checks.append(Check("weights.vlm", SKIP, "no teacher to compare the frozen VLM with; pass --teacher"))
    elif vlm_total == 0:
        checks.append(Check("weights.vlm", FAIL, "no VLM tensor in common with the teacher"))
    elif vlm_diff:
        checks.append(Check("weights.vlm", FAIL, f"{len(vlm_diff)} of {vlm_total} VLM tensors differ from the teacher's "
                            f"(e.g. {vlm_diff[0]}, max |diff| {worst:.3g}); the VLM must be the teacher's, frozen",
                            {"differ": vlm_diff, "max_abs_diff": worst}))
    else:
        checks.append(Check("weights.vlm", PASS, f"{vlm_total} VLM tensors bit-identical to the teacher's",
                            {"tensors": vlm_total}))
    if t_file is not None:
        checks.append(Check("weights.expert", INFO, f"{expert_changed} of {expert_total} action-expert tensors differ from the "
                            "teacher's (0: an untrained copy)", {"changed": expert_changed, "total": expert_total}))
    return checks


def _nbytes(entry) -> int:
    shape, dtype = entry
    return math.prod(shape) * torch.empty((), dtype=torch_dtype(dtype)).element_size()


def _processor_checks(folder: Path, teacher: Path | None) -> list[Check]:
    from .safeio import load_file

    base = teacher if teacher is not None else folder
    try:
        wanted = processor_files(base)
    except (OSError, json.JSONDecodeError) as e:
        msg = f"processor configs unreadable ({type(e).__name__})"
        return [Check("processors.files", FAIL, msg), Check("processors.stats", SKIP, msg)]
    missing = [n for n in wanted if not (folder / n).is_file()]
    differ = []
    if teacher is not None:
        for n in wanted:
            if n.endswith(".json") and (folder / n).is_file() and json.loads((folder / n).read_text()) != json.loads((teacher / n).read_text()):
                differ.append(n)
    if missing or differ:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"configs differ from the teacher's: {', '.join(differ)}"] if differ else [])
        files = Check("processors.files", FAIL, "; ".join(parts) + (" (canonicalize --teacher copies missing ones)" if missing else ""),
                      {"missing": missing, "differ": differ})
    else:
        files = Check("processors.files", PASS, f"{len(wanted)} files ({', '.join(n for n in wanted if n.endswith('.json'))} + "
                      f"{sum(not n.endswith('.json') for n in wanted)} state files)" + (" with the teacher's configs" if teacher else ""))
    state_files = [n for n in wanted if n.endswith(".safetensors") and (folder / n).is_file()]
    if not state_files:
        return [files, Check("processors.stats", SKIP, "no normalisation state file to compare")]
    bad, compared, nonfinite = [], 0, []
    for n in state_files:
        mine = load_file(folder / n, "checkpoint")
        theirs = load_file(teacher / n, "teacher") if teacher is not None else None
        for k, v in mine.items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                nonfinite.append(f"{n}:{k}")
            if theirs is not None:
                compared += 1
                if k not in theirs or not torch.equal(v, theirs[k]):
                    bad.append(k)
        if theirs is not None:
            bad.extend(f"{k} (missing)" for k in theirs if k not in mine)
    if bad or nonfinite:
        names = sorted(set(bad))
        msg = (f"normalisation statistics differ from the teacher's: {', '.join(names[:6])}" if bad else "") + \
              ("; " if bad and nonfinite else "") + (f"NaN/Inf in {', '.join(nonfinite[:4])}" if nonfinite else "")
        stats = Check("processors.stats", FAIL, msg + " (the policy would see other inputs and emit other actions than the teacher)",
                      {"differ": bad, "nonfinite": nonfinite})
    elif teacher is not None:
        stats = Check("processors.stats", PASS, f"{compared} normalisation tensors identical to the teacher's")
    else:
        stats = Check("processors.stats", PASS, "normalisation statistics finite (no teacher to compare with)")
    return [files, stats]


def _lineage_check(folder: Path, teacher_ref: CheckpointRef | None) -> Check:
    from .checkpoint import Lineage

    path = folder / LINEAGE_NAME
    if not path.is_file():
        return Check("lineage", INFO, f"no {LINEAGE_NAME} (not written by hub-reflow): the teacher cannot be cross-checked")
    try:
        lineage = Lineage.from_file(path)
    except Exception as e:
        return Check("lineage", FAIL, f"{LINEAGE_NAME} cannot be read ({type(e).__name__})")
    recorded = lineage.teacher
    where = f"{recorded.repo_id}@{(recorded.commit or '')[:12]}" if recorded.repo_id else "a local teacher folder"
    if teacher_ref is None:
        return Check("lineage", INFO, f"trained from {where} (weights sha256 {recorded.weights_sha256[:12]}); no teacher given")
    if recorded.weights_sha256 and recorded.weights_sha256 != teacher_ref.weights_sha256:
        return Check("lineage", FAIL, f"the given teacher's weights (sha256 {teacher_ref.weights_sha256[:12]}) are not the ones "
                     f"this student was trained from ({where}, sha256 {recorded.weights_sha256[:12]}); pass that teacher")
    return Check("lineage", PASS, f"the given teacher is the one it was trained from ({where}, sha256 {recorded.weights_sha256[:12]})")


def structure_checks(folder: Path, teacher: Path | None, teacher_ref: CheckpointRef | None = None) -> list[Check]:
    folder = Path(folder)
    checks, raw = _config_checks(folder, teacher)
    checks += _weights_checks(folder, raw, teacher)
    checks += _processor_checks(folder, teacher)
    checks.append(_lineage_check(folder, teacher_ref))
    return checks


# ---- fidelity and speed --------------------------------------------------------------------------

# The fidelity rule and its thresholds live in evaluate.fidelity_verdict (docs/fidelity.md); this is
# its default ratio, the --tolerance of the command line.
FIDELITY_TOLERANCE = MAX_RATIO
# Fraction of the dataset's action range allowed beyond its min / max before a value counts as out of
# range: a few-step student overshoots a little near the edges (a 1-step chunk is an extrapolation);
# a broken one (wrong statistics, a wild expert) lands far outside.
RANGE_MARGIN = 0.25
SPEED_SAME_COST = 1.3  # student at the teacher's steps: within this factor of the teacher
SPEED_SLACK = 1.3  # measured student/teacher ratio may exceed the structural limit by this factor


def _holdout_frames(lineage_path: Path, meta, frames: int) -> tuple[list[int], str]:
    import numpy as np

    from .checkpoint import Lineage

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

    from .checkpoint import load_smolvla
    from .evaluate import compare, observation_batch
    from .train import check_dataset_features

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
    details = {"frames": len(idx), "frames_from": source, "student_steps": s_steps, "teacher_steps": t_steps,
               "student_rmse": stu, "teacher_spread_rmse": spread, "teacher_rmse_at_student_steps": t_at_s,
               "tolerance": tolerance}
    scale = action_scale(meta.stats)
    verdict = fidelity_verdict(stu, t_at_s, spread, scale, max_ratio=tolerance)
    details.update({"ratio": verdict.ratio, "threshold": verdict.threshold, "action_scale": scale})
    line = (f"{len(idx)} frames ({source}), shared noise, action RMSE vs teacher @{t_steps}: student @{s_steps} {stu:.4f}, "
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
    from .smolvla import sample_chunk, velocity_field

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
    (the cost without interference: other processes only ever add time)."""
    from .smolvla import policy_inputs

    s_pol, s_pre, _ = student
    t_pol, t_pre, _ = teacher
    k, m = s_pol.config.num_steps, t_pol.config.num_steps
    s_in, t_in = policy_inputs(s_pol, s_pre(dict(raw_one))), policy_inputs(t_pol, t_pre(dict(raw_one)))
    t_runs: dict[str, list[float]] = {}
    s_runs: dict[str, list[float]] = {}
    for _ in range(repeats):
        for runs, pol, inp, steps in ((t_runs, t_pol, t_in, (m,)), (s_runs, s_pol, s_in, tuple(sorted({k, m})))):
            for key, v in time_policy(pol, inp, steps, 1).items():
                runs.setdefault(key, []).extend(v)
    t = {key: min(v) for key, v in t_runs.items()}
    s = {key: min(v) for key, v in s_runs.items()}
    ms = lambda x: f"{1000 * x:.1f} ms"  # noqa: E731
    same = s[f"chunk@{m}"] / t[f"chunk@{m}"]
    details = {"teacher_s": t, "student_s": s, "student_steps": k, "teacher_steps": m, "same_cost_ratio": same,
               "repeats": repeats, "statistic": "min"}
    same_ok = 1 / SPEED_SAME_COST <= same <= SPEED_SAME_COST
    checks = [Check("speed.same_cost", PASS if same_ok else FAIL,
                    f"at {m} steps: student {ms(s[f'chunk@{m}'])}, teacher {ms(t[f'chunk@{m}'])} (x{same:.2f}); prefix "
                    f"{ms(s['prefix'])} vs {ms(t['prefix'])}, per step {ms(s['step'])} vs {ms(t['step'])}"
                    + ("" if same_ok else "; the same architecture should cost the same: check dtypes and load_vlm_weights"),
                    details)]
    limit = (t["prefix"] + k * t["step"]) / (t["prefix"] + m * t["step"])
    measured = s[f"chunk@{k}"] / t[f"chunk@{m}"]
    ok = measured <= SPEED_SLACK * limit
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
    from .checkpoint import resolve_checkpoint

    from .safeio import check_folder

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
        checks.append(Check("fidelity", SKIP, "no --dataset given: fidelity and speed need real observations"))
    elif t is None:
        raise UserError("verify: --dataset measures the student against its teacher; pass --teacher too")
    else:
        checks += fidelity_checks(ckpt.path, t.path, dataset, dataset_root, frames=frames, tolerance=tolerance, speed=speed)
    if compile_mode:  # latency through LeRobot's compile_model path (compiled.py), as information
        from .compiled import measure, summary

        result = measure(ckpt.path, t.path if t else None, mode=compile_mode)
        checks.append(Check("speed.compiled", INFO, summary(result), result))
    return Report(checkpoint=_display(checkpoint, ckpt.ref), teacher=_display(teacher, t.ref) if t else None, checks=checks)


def _teacher_from_lineage(folder: Path) -> tuple[str | None, str | None, Check | None]:
    """The teacher recorded in the lineage file, when it is a Hub repo at a commit and reachable."""
    from .checkpoint import Lineage, resolve_checkpoint

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


def _display(arg: str, ref: CheckpointRef) -> str:
    return f"{ref.repo_id}@{ref.commit}" if ref.repo_id else str(arg)
