"""The model card: plain values in a context, the Jinja template (shipped in the wheel) decides
the Markdown; rendered by ``huggingface_hub.ModelCard.from_template``."""

from __future__ import annotations

from importlib.resources import files

from huggingface_hub import ModelCard, ModelCardData

from .checkpoint import Lineage
from .evaluate import fidelity_verdict
from .plots import CHUNKS, LOSS_CURVE

TAGS = ["lerobot", "smolvla", "reflow", "rectified-flow", "robotics"]


def template_text() -> str:
    return files("hub_reflow.templates").joinpath("model_card.md").read_text()


def card_data(lineage: Lineage, license: str | None = None) -> ModelCardData:
    """Per-instance metadata (never the mixin's class-level card data, which all instances share)."""
    data = ModelCardData(
        library_name="lerobot",
        pipeline_tag="robotics",
        license=license or lineage.teacher_card.get("license") or "apache-2.0",
        tags=list(TAGS),
    )
    if lineage.teacher.repo_id:
        data.base_model = lineage.teacher.repo_id
        data.base_model_relation = "finetune"
    if lineage.dataset.get("repo_id"):
        data.datasets = [lineage.dataset["repo_id"]]
    return data


# ReflowConfig fields whose None means "the teacher config's LeRobot preset": the config field it reads.
PRESETS = {"lr": "optimizer_lr", "weight_decay": "optimizer_weight_decay", "grad_clip_norm": "optimizer_grad_clip_norm"}


def human(value) -> str:
    """A value as a reader wants it: rounded numbers (4 significant digits), yes/no, n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def human_setting(name: str, value, reflow: dict, policy_config) -> str:
    """A reflow setting, with what None stands for spelled out."""
    if value is None and name in PRESETS:
        preset = getattr(policy_config, PRESETS[name], None)
        return f"LeRobot preset ({human(preset)})" if preset is not None else "LeRobot preset"
    if value is None and name == "warmup_steps":
        steps = reflow.get("steps")
        return f"5% of the run ({max(1, steps // 20)})" if isinstance(steps, int) else "5% of the run"
    return human(value)


IMAGES = [(LOSS_CURVE, "reflow training loss"), (CHUNKS, "teacher and student action chunks on a held-out frame")]


def _verdict(evaluation: dict):
    """The fidelity verdict of the recorded measurement, by the rule verify applies."""
    keys = ("student_rmse", "teacher_rmse_at_student_steps", "teacher_spread_rmse")
    if not all(isinstance(evaluation.get(k), (int, float)) for k in keys):
        return None
    return fidelity_verdict(*(evaluation[k] for k in keys), evaluation.get("action_scale"))


def render_card(lineage: Lineage, policy_config, repo_id: str | None = None, license: str | None = None,
                image_names: tuple[str, ...] | None = None, closed_loop: dict | None = None) -> ModelCard:
    """``image_names``: the images present beside the card (default: those the lineage has data for,
    which ``write_canonical`` draws). ``closed_loop``: the "Closed-loop evaluation" section's values
    (``card_eval.closed_loop_context``), when an evaluation was recorded."""
    if image_names is None:
        image_names = tuple(n for n, has in ((LOSS_CURVE, lineage.training.get("loss_curve")),
                                              (CHUNKS, lineage.evaluation.get("example_chunks"))) if has)
    ref = lineage.teacher
    reflow = lineage.reflow
    holdout = lineage.dataset.get("holdout_episodes") or [0, 0]
    return ModelCard.from_template(
        card_data(lineage, license),
        template_str=template_text(),
        model_name=(repo_id or "SmolVLA reflow student").split("/")[-1],
        repo_id=repo_id or "<this repo id>",
        teacher_name=ref.display_name,
        teacher_commit=ref.commit,
        teacher_sha256=ref.weights_sha256,
        student_steps=reflow.get("student_steps", policy_config.num_steps),
        teacher_steps=reflow.get("teacher_steps", lineage.teacher_num_steps),
        dataset_name=lineage.dataset.get("repo_id", "n/a"),
        dataset_commit=lineage.dataset.get("commit"),
        reflow_settings=sorted((k, human_setting(k, v, reflow, policy_config)) for k, v in reflow.items()),
        training=sorted((k, human(v)) for k, v in lineage.training.items() if not isinstance(v, (list, dict))),
        versions=sorted(lineage.versions.items()),
        teacher_base_model=lineage.teacher_card.get("base_model"),
        evaluation=lineage.evaluation,
        verdict=_verdict(lineage.evaluation),
        features=[(name, f.type.value, list(f.shape)) for name, f in
                  {**policy_config.input_features, **policy_config.output_features}.items()],
        chunk_size=policy_config.chunk_size,
        n_action_steps=policy_config.n_action_steps,
        holdout=holdout if holdout[1] > holdout[0] else None,
        images=[(name, caption) for name, caption in IMAGES if name in image_names],
        closed_loop=closed_loop,
    )
