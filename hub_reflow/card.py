"""The model card: plain values in a context, the Jinja template (shipped in the wheel) decides
the Markdown; rendered by ``huggingface_hub.ModelCard.from_template``."""

from __future__ import annotations

from importlib.resources import files

from huggingface_hub import ModelCard, ModelCardData

from .checkpoint import Lineage

TAGS = ["lerobot", "smolvla", "reflow", "rectified-flow", "robotics"]


def template_text() -> str:
    return files("hub_reflow.templates").joinpath("model_card.md").read_text()


def card_data(lineage: Lineage, license: str | None = None) -> ModelCardData:
    """Per-instance metadata (never the mixin's class-level card data, which all instances share)."""
    data = ModelCardData(
        library_name="lerobot",
        pipeline_tag="robotics",
        license=license or "apache-2.0",
        tags=list(TAGS),
    )
    if lineage.teacher.repo_id:
        data.base_model = lineage.teacher.repo_id
        data.base_model_relation = "finetune"
    if lineage.dataset.get("repo_id"):
        data.datasets = [lineage.dataset["repo_id"]]
    return data


def render_card(lineage: Lineage, policy_config, repo_id: str | None = None, license: str | None = None) -> ModelCard:
    ref = lineage.teacher
    reflow = lineage.reflow
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
        reflow_settings=sorted((k, v) for k, v in reflow.items()),
        training=sorted((k, v) for k, v in lineage.training.items() if not isinstance(v, (list, dict))),
        versions=sorted(lineage.versions.items()),
    )
