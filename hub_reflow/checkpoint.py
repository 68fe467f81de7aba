"""SmolVLA checkpoints: find them (folder or Hub repo at a commit), read them, write canonical ones.

A canonical reflow checkpoint (docs/canonical.md#definition) is the teacher's checkpoint with the student's
weights and ``num_steps`` changed, plus a lineage file. Everything LeRobot reads is written by
LeRobot's own code (config) or copied byte for byte from the teacher (processor files).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .files import package_versions, sha256_file
from .finite import require_finite_weights
from .hub_io import backbone_error, is_repo_id, snapshot
from .safeio import check_folder, dumps

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LINEAGE_NAME = "reflow_lineage.json"
PROCESSOR_CONFIGS = ("policy_preprocessor.json", "policy_postprocessor.json")


@dataclass
class CheckpointRef:
    """Where a checkpoint came from, without any local path (safe to publish)."""

    repo_id: str | None  # Hub repo id, None for a local folder
    commit: str | None  # the exact commit sha on the Hub, None for a local folder
    revision: str | None  # what the user asked for (branch, tag or sha)
    weights_sha256: str  # identifies the exact weights whatever the source

    @property
    def display_name(self) -> str:
        return self.repo_id if self.repo_id else "a local checkpoint folder"


@dataclass
class ResolvedCheckpoint:
    path: Path  # local folder holding config.json, model.safetensors and the processor files
    ref: CheckpointRef


# One rule for a SmolVLA checkpoint without a lineage file, wherever a reflow student is asked for
# (``ReflowPolicy.from_pretrained``, ``hub-reflow pull``): refused, with what to do instead.
PLAIN = f"a plain SmolVLA checkpoint, not a reflow student (no {LINEAGE_NAME})"
PLAIN_FIX = ("load it with SmolVLAPolicy.from_pretrained, or train a student from it with hub-reflow train --teacher "
             "(ReflowPolicy.from_teacher in Python)")


def is_plain_smolvla(folder: Path) -> bool:
    """A SmolVLA checkpoint (config type smolvla, weights) with no lineage file."""
    if (folder / LINEAGE_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        return False
    try:
        return json.loads((folder / CONFIG_NAME).read_text()).get("type") == "smolvla"
    except (OSError, ValueError, AttributeError):
        return False


def _find_pretrained_dir(folder: Path) -> Path | None:
    """Accept a ``pretrained_model/`` folder, a ``checkpoints/<step>/`` folder or a run folder."""
    for candidate in (folder, folder / "pretrained_model", folder / "checkpoints" / "last" / "pretrained_model"):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    return None


def validate_smolvla_folder(folder: Path, what: str = "teacher") -> dict:
    """Check that ``folder`` is a SmolVLA checkpoint; return its raw config dict."""
    try:
        raw = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{what}: {CONFIG_NAME} in the checkpoint cannot be read ({e}); pass a SmolVLA checkpoint folder") from None
    if not isinstance(raw, dict) or raw.get("type") != "smolvla":
        kind = raw.get("type") if isinstance(raw, dict) else None
        raise UserError(
            f"{what}: the checkpoint's config.json has type {kind!r}, not 'smolvla'; pass a SmolVLA checkpoint "
            "(a lerobot-train pretrained_model/ folder or a Hub repo of one)"
        )
    missing = [n for n in (WEIGHTS_NAME, *PROCESSOR_CONFIGS) if not (folder / n).is_file()]
    if missing:
        raise UserError(f"{what}: the checkpoint lacks {', '.join(missing)}; pass a complete lerobot-train pretrained_model/ folder")
    check_folder(folder, what)  # weights and processor state files: a truncated file is one line, not a traceback
    return raw


def resolve_checkpoint(ref: str, revision: str | None = None, what: str = "teacher", validate: bool = True,
                       **hub) -> ResolvedCheckpoint:
    """A local folder, or a Hub repo id at ``revision`` resolved to its commit sha and downloaded
    (offline: the cached snapshot; ``hub``: ``token``, ``cache_dir``, ``force_download``,
    ``local_files_only``, as ``hub_io.snapshot`` takes them).

    ``validate=False`` accepts an incomplete checkpoint (for ``verify``, which reports what lacks)."""
    local = Path(ref).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UserError(f"{what}: {ref} is a file, not a checkpoint folder; pass the pretrained_model/ folder")
        folder = _find_pretrained_dir(local)
        if folder is None:
            raise UserError(f"{what}: no config.json in {ref} (nor in its pretrained_model/ or checkpoints/last/); pass a SmolVLA checkpoint folder")
        if validate:
            validate_smolvla_folder(folder, what)
        return ResolvedCheckpoint(folder, CheckpointRef(None, None, None, _weights_sha(folder)))
    if not is_repo_id(ref):
        raise UserError(f"{what}: {ref} does not exist as a folder and is not a Hub repo id (namespace/name); check the path")
    return _download_checkpoint(ref, revision, what, validate, **hub)


def _weights_sha(folder: Path) -> str:
    return sha256_file(folder / WEIGHTS_NAME) if (folder / WEIGHTS_NAME).is_file() else ""


def _download_checkpoint(repo_id: str, revision: str | None, what: str, validate: bool = True, **hub) -> ResolvedCheckpoint:
    folder, commit = snapshot(repo_id, revision, action=what, **hub)
    if validate:
        validate_smolvla_folder(folder, what)
    return ResolvedCheckpoint(folder, CheckpointRef(repo_id, commit, revision, _weights_sha(folder)))


def smolvla_field_names() -> set[str]:
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    return {f.name for f in dataclasses.fields(SmolVLAConfig)} | {"type"}


def clean_config_dict(raw: dict) -> tuple[dict, list[str]]:
    """Drop fields LeRobot's SmolVLAConfig does not know (``use_reflow``, ``teacher_model_path``...)."""
    known = smolvla_field_names()
    unknown = sorted(k for k in raw if k not in known)
    return {k: v for k, v in raw.items() if k in known}, unknown


def parse_policy_config(raw: dict, what: str = "teacher"):
    """A ``SmolVLAConfig`` parsed by LeRobot from a config dict (unknown fields dropped, with a warning).

    The device recorded in the dict is kept on the object even when it is not available here, so
    that a config written back differs from the original only where we change it.
    """
    from lerobot.configs.policies import PreTrainedConfig

    cleaned, unknown = clean_config_dict(raw)
    if unknown:
        logger.warning("%s config.json has fields LeRobot does not know, ignored: %s", what, ", ".join(unknown))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / CONFIG_NAME).write_text(json.dumps(cleaned))
        try:
            cfg = PreTrainedConfig.from_pretrained(tmp)
        except Exception as e:  # draccus raises many types for a malformed field
            raise UserError(f"{what}: config.json does not parse as a SmolVLA config ({str(e).splitlines()[0]})") from None
    if "device" in cleaned:
        object.__setattr__(cfg, "device", cleaned["device"])
    return cfg


def read_policy_config(folder: Path, what: str = "teacher"):
    return parse_policy_config(json.loads((folder / CONFIG_NAME).read_text()), what)


def processor_files(folder: Path) -> list[str]:
    """The processor configs and the state files they reference, as LeRobot wrote them."""
    names = []
    for cfg_name in PROCESSOR_CONFIGS:
        names.append(cfg_name)
        data = json.loads((folder / cfg_name).read_text())
        for step in data.get("steps", []):
            if step.get("state_file"):
                names.append(step["state_file"])
    return names


def load_smolvla(folder: Path, device: str = "cpu", config=None, what: str = "teacher"):
    """Load a SmolVLA policy with LeRobot's own loader, refusing missing or unexpected keys.

    LeRobot loads with ``strict=False`` and only logs mismatches; a VLM silently left at its
    initialisation is one of the suspected causes of the seed document's random student.
    """
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    if config is None:
        config = read_policy_config(folder, what)
    recorded_device = config.device
    config.device = device
    try:
        policy = SmolVLAPolicy.from_pretrained(str(folder), config=config, strict=True)
    except RuntimeError as e:
        raise UserError(f"{what}: model.safetensors does not match the SmolVLA architecture of its config.json ({str(e).splitlines()[0][:300]})") from None
    except (OSError, ValueError) as e:  # transformers could not load the backbone the config names
        error = backbone_error(e, config.vlm_model_name, what)
        if error is None:
            raise
        raise error from None
    finally:
        config.device = recorded_device
    object.__setattr__(policy.config, "device", recorded_device)
    return policy


@dataclass
class Lineage:
    """The machine-readable record written beside the weights (``reflow_lineage.json``)."""

    teacher: CheckpointRef
    reflow: dict  # ReflowConfig.to_dict()
    dataset: dict = field(default_factory=dict)  # repo_id, commit (None when local), episodes used/held out
    training: dict = field(default_factory=dict)  # step, final loss, device, processes
    teacher_num_steps: int = 10
    teacher_card: dict = field(default_factory=dict)  # the teacher card's license and base_model, when it has a card
    evaluation: dict = field(default_factory=dict)  # measured at the end of training (checks.fidelity.measure)
    versions: dict = field(default_factory=package_versions)
    format_version: int = 1

    def to_json(self) -> str:
        return dumps(dataclasses.asdict(self), indent=2, sort_keys=True)  # strict JSON: NaN -> null

    @classmethod
    def from_file(cls, path: Path) -> Lineage:
        data = json.loads(Path(path).read_text())
        data["teacher"] = CheckpointRef(**data["teacher"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def is_local_path(name: str) -> bool:
    """A ``vlm_model_name`` that names a folder on this machine, not a Hub repo id."""
    return os.path.isabs(name) or name.startswith(("./", "../", "~"))


def renamed_in(data, swap: tuple[str, str] | None):
    """``data`` (parsed JSON) with every string equal to ``swap[0]`` replaced by ``swap[1]``."""
    if swap is None:
        return data
    if isinstance(data, dict):
        return {k: renamed_in(v, swap) for k, v in data.items()}
    if isinstance(data, list):
        return [renamed_in(v, swap) for v in data]
    return swap[1] if data == swap[0] else data


def check_backbone_repo(local: str, repo_id: str, action: str) -> None:
    """``--vlm-repo-id``: the Hub repo (offline: its cached snapshot) holds the very files of the
    local backbone folder ``local`` (every file of the repo's, byte for byte; README and
    .gitattributes aside)."""
    folder = Path(local).expanduser()
    if not folder.is_dir():
        raise UserError(f"{action}: --vlm-repo-id: the backbone folder {local} is not on this machine, so {repo_id} "
                        "cannot be checked against it")
    hub_folder, commit = snapshot(repo_id, None, action=f"{action} --vlm-repo-id")
    names = sorted(p.name for p in hub_folder.iterdir() if p.is_file() and p.name not in ("README.md", ".gitattributes"))
    differ = [n for n in names if not (folder / n).is_file() or sha256_file(folder / n) != sha256_file(hub_folder / n)]
    if differ or CONFIG_NAME not in names:
        raise UserError(f"{action}: --vlm-repo-id {repo_id}@{commit[:12]} does not hold the backbone in {local} "
                        f"({', '.join(differ) or 'no config.json'} differ or lack); name the repo that holds these files")


def write_canonical(folder: Path, student, teacher: ResolvedCheckpoint, num_steps: int, lineage: Lineage,
                    vlm_repo_id: str | None = None, config=None) -> None:
    """Write the canonical checkpoint files of ``student`` into an existing ``folder``.

    - config.json: the teacher's config parsed by LeRobot, ``num_steps`` set, written by LeRobot;
    - model.safetensors: the student only, saved by the same safetensors call LeRobot uses;
    - the teacher's processor files, byte for byte (same statistics, same tokenizer name);
    - reflow_lineage.json (the model card and its images are drawn from it at push time).

    ``vlm_repo_id``: the Hub repo id that replaces the teacher's local backbone folder in the config
    and the processor configs (``check_backbone_repo`` checked it). ``config``: the teacher's config
    already parsed (a training run's, parsed once; a copy is changed), else read from ``teacher``."""
    from safetensors.torch import save_model

    folder = Path(folder)
    model = student.module if hasattr(student, "module") else student
    require_finite_weights(model)  # never a checkpoint full of NaN (and never `last` pointing at one)
    cfg = copy.deepcopy(config) if config is not None else read_policy_config(teacher.path)
    cfg.num_steps = num_steps
    swap = (cfg.vlm_model_name, vlm_repo_id) if vlm_repo_id else None
    if swap:
        cfg.vlm_model_name = vlm_repo_id
    cfg._save_pretrained(folder)
    save_model(model, str(folder / WEIGHTS_NAME))
    for name in processor_files(teacher.path):
        shutil.copyfile(teacher.path / name, folder / name)
    rename_backbone(folder, swap)
    (folder / LINEAGE_NAME).write_text(lineage.to_json())


def rename_backbone(folder: Path, swap: tuple[str, str] | None) -> None:
    """The processor configs in ``folder`` with the backbone renamed (``renamed_in``; the tokenizer's name)."""
    for name in PROCESSOR_CONFIGS if swap else ():
        data = json.loads((folder / name).read_text())
        if renamed_in(data, swap) != data:
            (folder / name).write_text(json.dumps(renamed_in(data, swap), indent=2))


def teacher_card_data(folder: Path) -> dict:
    """License and base_model from the teacher's own model card (README.md), when it has one."""
    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(readme).data
    except Exception:  # a malformed card is not a reason to stop training
        return {}
    return {k: v for k, v in {"license": data.license, "base_model": data.base_model}.items() if v}
