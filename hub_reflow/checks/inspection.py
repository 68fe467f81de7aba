"""Read a SmolVLA checkpoint once and return facts: what ``verify`` judges, what ``canonicalize``
repairs and what ``push`` refuses are all computed from these (docs/verify.md#facts-first-then-checks).

Facts are plain values: the config (unknown fields, a local backbone path, whether plain LeRobot
parses it, the difference from the teacher's), the safetensors header, teacher tensors (by the one
teacher rule, :func:`is_teacher_key`), the student's own keys and the prefix they may carry, NaN/Inf
tensors, VLM and action-expert differences against the teacher, the processor files and statistics,
and the lineage file. The reference a checkpoint is compared with is the teacher's checkpoint when
one is given, else the state dict LeRobot builds from a config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import (
    CONFIG_NAME,
    LINEAGE_NAME,
    WEIGHTS_NAME,
    CheckpointRef,
    Lineage,
    clean_config_dict,
    is_local_path,
    parse_policy_config,
    processor_files,
    renamed_in,
)
from ..errors import UserError
from ..hub_io import backbone_error
from ..safeio import load_file, read_header, safe_open
from .keys import (
    ST_DTYPE,
    Header,
    equal_values,
    finite,
    group_of,
    is_teacher_key,
    max_abs_diff,
    split_prefixed,
    teacher_prefix,
)


def renamed_backbone(key: str, student_value, teacher_value) -> bool:
    """The one config difference ``--vlm-repo-id`` makes: the teacher's local backbone folder named
    by its Hub repo id in the student (checked against the folder's files when it was written)."""
    return (key == "vlm_model_name" and isinstance(teacher_value, str) and is_local_path(teacher_value)
            and isinstance(student_value, str) and not is_local_path(student_value))


def architecture_layout(raw_cfg: dict, action: str = "verify") -> Header:
    """key -> (shape, dtype) of the state dict LeRobot builds for this SmolVLA config (the layout a
    checkpoint of that config must have when no teacher is at hand). Needs the backbone named by
    ``vlm_model_name`` (its config; with ``load_vlm_weights: true`` its weights too)."""
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    cfg = parse_policy_config(raw_cfg, "checkpoint")
    cfg.device = "cpu"
    try:
        policy = SmolVLAPolicy(cfg)
    except Exception as e:  # backbone not in the cache and no network, bad config values
        missing = backbone_error(e, cfg.vlm_model_name, action)
        if missing is not None:
            raise missing from None
        raise UserError(
            f"{action}: cannot build the SmolVLA architecture of the checkpoint's config to compare against "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); pass --teacher"
        ) from None
    return {k: (tuple(t.shape), ST_DTYPE[t.dtype]) for k, t in policy.state_dict().items()}


# ---- facts ---------------------------------------------------------------------------------------


@dataclass
class ConfigFacts:
    raw: dict | None = None
    error: str | None = None  # unreadable, or not a SmolVLA config: nothing else about it is judged
    unknown: list[str] = field(default_factory=list)  # fields LeRobot's SmolVLAConfig does not know
    cleaned: dict = field(default_factory=dict)  # the known fields
    local_vlm: bool = False  # vlm_model_name is a folder on this machine
    parse_error: str | None = None  # plain LeRobot refuses it (judged only when no field is unknown)
    teacher_raw: dict | None = None
    teacher_unknown: list[str] = field(default_factory=list)
    diff: dict[str, list] | None = None  # known field -> [student, teacher]; None without a teacher


@dataclass
class Reference:
    header: Header | None  # None: nothing to compare with
    label: str = ""  # "the teacher's" | "what LeRobot builds from this config"
    teacher: bool = False
    file_bytes: int | None = None  # the teacher's weights file size


@dataclass
class WeightsFacts:
    present: bool = False
    error: str | None = None  # the file cannot be read
    header: Header = field(default_factory=dict)
    file_bytes: int = 0
    teacher_keys: list[str] = field(default_factory=list)
    teacher_prefixes: list[str] = field(default_factory=list)
    own_prefixes: list[str] = field(default_factory=list)  # prefixes the student's own keys carry
    ambiguous: bool = False  # plain keys and prefixed copies of them: which are the student's?
    names: dict[str, str] = field(default_factory=dict)  # own key -> its reference name (prefix stripped)
    nonfinite: list[str] = field(default_factory=list)  # own keys
    # Against the teacher, by reference name (zero without a teacher).
    vlm_total: int = 0
    vlm_diff: list[str] = field(default_factory=list)
    vlm_worst: float = 0.0
    expert_total: int = 0
    expert_changed: int = 0

    @property
    def readable(self) -> bool:
        return self.present and self.error is None

    @property
    def own(self) -> Header:
        teacher = set(self.teacher_keys)
        return {k: v for k, v in self.header.items() if k not in teacher}


@dataclass
class ProcessorFacts:
    wanted: list[str] = field(default_factory=list)  # the teacher's files (the checkpoint's own without one)
    error: str | None = None  # processor configs unreadable
    missing: list[str] = field(default_factory=list)
    configs_differ: list[str] = field(default_factory=list)
    state_files: list[str] = field(default_factory=list)  # wanted state files present
    compared: int = 0
    stats_differ: list[str] = field(default_factory=list)
    stats_nonfinite: list[str] = field(default_factory=list)


@dataclass
class LineageFacts:
    present: bool = False
    error: str | None = None
    lineage: Lineage | None = None


@dataclass
class Facts:
    folder: Path
    teacher: Path | None
    teacher_ref: CheckpointRef | None
    config: ConfigFacts
    weights: WeightsFacts
    reference: Reference
    processors: ProcessorFacts
    lineage: LineageFacts


def inspect_checkpoint(folder: Path, teacher: Path | None = None, teacher_ref: CheckpointRef | None = None, *,
                       architecture: bool = True, reference_config: dict | None = None, action: str = "verify") -> Facts:
    """Everything the structural checks need, read once. The reference is the teacher's checkpoint;
    without one, the architecture LeRobot builds from ``reference_config`` (default: the checkpoint's
    own config), unless ``architecture`` is False (push: no backbone, no network; the checks that
    need a reference are then skipped)."""
    folder = Path(folder)
    teacher = Path(teacher) if teacher is not None else None
    config = config_facts(folder, teacher)
    weights = weights_header(folder)
    reference = Reference(None)
    if weights.readable:
        if teacher is not None:
            reference = Reference(read_header(teacher / WEIGHTS_NAME, "teacher"), "the teacher's", True,
                                  (teacher / WEIGHTS_NAME).stat().st_size)
        elif architecture and (reference_config is not None or config.error is None):
            raw = reference_config if reference_config is not None else config.raw
            reference = Reference(architecture_layout(raw, action), "what LeRobot builds from this config")
        weights_contents(folder, weights, reference, teacher)
    return Facts(folder, teacher, teacher_ref, config, weights, reference, processor_facts(folder, teacher),
                 lineage_facts(folder))


def config_facts(folder: Path, teacher: Path | None) -> ConfigFacts:
    from lerobot.configs.policies import PreTrainedConfig

    try:
        raw = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as e:
        return ConfigFacts(error=f"{CONFIG_NAME} cannot be read ({type(e).__name__})")
    if not isinstance(raw, dict) or raw.get("type") != "smolvla":
        kind = raw.get("type") if isinstance(raw, dict) else None
        return ConfigFacts(raw=raw if isinstance(raw, dict) else None, error=f"type is {kind!r}, not 'smolvla'")
    cleaned, unknown = clean_config_dict(raw)
    facts = ConfigFacts(raw=raw, unknown=unknown, cleaned=cleaned, local_vlm=is_local_path(str(raw.get("vlm_model_name", ""))))
    if not unknown:
        try:
            PreTrainedConfig.from_pretrained(str(folder))  # plain LeRobot, nothing dropped
        except Exception as e:  # draccus raises many types for a malformed field
            facts.parse_error = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    if teacher is not None:
        facts.teacher_raw = json.loads((teacher / CONFIG_NAME).read_text())
        t_known, facts.teacher_unknown = clean_config_dict(facts.teacher_raw)
        facts.diff = {k: [cleaned.get(k), t_known.get(k)] for k in sorted(set(cleaned) | set(t_known))
                      if cleaned.get(k) != t_known.get(k)}
    return facts


def weights_header(folder: Path) -> WeightsFacts:
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        return WeightsFacts()
    try:
        header = read_header(path, "checkpoint")
    except UserError:  # zero bytes, truncated, not a safetensors file
        return WeightsFacts(present=True, error=f"{WEIGHTS_NAME} cannot be read (empty, truncated or not a safetensors file)")
    teacher_keys = [k for k in header if is_teacher_key(k)]
    return WeightsFacts(present=True, header=header, file_bytes=path.stat().st_size, teacher_keys=teacher_keys,
                        teacher_prefixes=sorted({teacher_prefix(k) for k in teacher_keys}))


def weights_contents(folder: Path, w: WeightsFacts, reference: Reference, teacher: Path | None) -> None:
    """Own keys against the reference (names, prefixes), then one pass over the student's tensors:
    NaN/Inf, and the VLM and action expert against the teacher's, by reference name."""
    own = w.own
    if reference.header is not None:
        mapping, by_prefix = split_prefixed(own, set(reference.header))
        w.own_prefixes = sorted(by_prefix)
        w.ambiguous = bool(by_prefix) and any(k in reference.header for k in own)
        w.names = {k: (k if w.ambiguous else mapping.get(k, k)) for k in own}
    else:
        w.names = {k: k for k in own}
    ref = reference.header or {}
    t_file = safe_open(teacher / WEIGHTS_NAME, "teacher") if teacher is not None else None
    with safe_open(folder / WEIGHTS_NAME, "checkpoint") as f:
        for k in own:  # teacher tensors are never loaded: the teacher rule judges them by name
            t = f.get_tensor(k)
            if not finite(t):
                w.nonfinite.append(k)
            name = w.names[k]
            if t_file is None or name not in ref or tuple(t.shape) != ref[name][0]:
                continue
            group = group_of(name)
            if group == "VLM":
                w.vlm_total += 1
                r = t_file.get_tensor(name)
                if not equal_values(t, r):
                    w.vlm_diff.append(name)
                    w.vlm_worst = max(w.vlm_worst, max_abs_diff(t, r))
            elif group == "action expert":
                w.expert_total += 1
                w.expert_changed += not equal_values(t, t_file.get_tensor(name))


def processor_facts(folder: Path, teacher: Path | None) -> ProcessorFacts:
    try:
        wanted = processor_files(teacher if teacher is not None else folder)
    except (OSError, json.JSONDecodeError, AttributeError, TypeError) as e:
        return ProcessorFacts(error=f"processor configs unreadable ({type(e).__name__})")
    p = ProcessorFacts(wanted=wanted, missing=[n for n in wanted if not (folder / n).is_file()])
    if teacher is not None:
        names = [_json_or_none(x / CONFIG_NAME) or {} for x in (folder, teacher)]
        mine, theirs = (str(c.get("vlm_model_name")) for c in names)
        swap = (theirs, mine) if renamed_backbone("vlm_model_name", mine, theirs) else None
        for n in wanted:
            if n.endswith(".json") and (folder / n).is_file() and \
                    _json_or_none(folder / n) != renamed_in(_json_or_none(teacher / n), swap):
                p.configs_differ.append(n)
    p.state_files = [n for n in wanted if n.endswith(".safetensors") and (folder / n).is_file()]
    for n in p.state_files:
        mine = load_file(folder / n, "checkpoint")
        theirs = load_file(teacher / n, "teacher") if teacher is not None else None
        for k, v in mine.items():
            if not finite(v):
                p.stats_nonfinite.append(f"{n}:{k}")
            if theirs is not None:
                p.compared += 1
                if k not in theirs or not torch.equal(v, theirs[k]):
                    p.stats_differ.append(k)
        if theirs is not None:
            p.stats_differ.extend(f"{k} (missing)" for k in theirs if k not in mine)
    return p


def _json_or_none(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def lineage_facts(folder: Path) -> LineageFacts:
    path = folder / LINEAGE_NAME
    if not path.is_file():
        return LineageFacts()
    try:
        return LineageFacts(present=True, lineage=Lineage.from_file(path))
    except Exception as e:  # malformed JSON or fields
        return LineageFacts(present=True, error=f"{LINEAGE_NAME} cannot be read ({type(e).__name__})")
