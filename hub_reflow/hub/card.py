"""The model card: plain values in a context, the Jinja template (shipped in the wheel) decides
the Markdown; rendered by ``huggingface_hub.ModelCard.from_template``."""

from __future__ import annotations

from importlib.resources import files

from huggingface_hub import ModelCard, ModelCardData

from ..checkpoint import Lineage
from ..checks.fidelity import recorded_verdict
from ..data import dataset_label
from ..rtc import LEROBOT_EXECUTION_HORIZON, LEROBOT_MAX_GUIDANCE_WEIGHT, recommended, rtc_flags, rtc_problems
from .card_plots import CHUNKS, LOSS_CURVE, example_frame

TAGS = ["lerobot", "smolvla", "reflow", "rectified-flow", "robotics"]


def template_text() -> str:
    return files("hub_reflow.templates").joinpath("model_card.md").read_text()


def card_data(lineage: Lineage, license: str | None = None) -> ModelCardData:
    """Per-instance metadata (never the mixin's class-level card data, which all instances share)."""
    data = ModelCardData(
        library_name="lerobot",
        pipeline_tag="robotics",
        license=license or lineage.teacher_card.get("license"),  # none asserted when the teacher states none
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
        shown = f"LeRobot preset ({human(preset)})" if preset is not None else "LeRobot preset"
        scale = reflow.get("lr_scale", 1.0) if name == "lr" else 1.0
        if isinstance(scale, (int, float)) and scale != 1:  # the peak rate: lr_scale x the preset
            shown = f"{scale:g} x {shown}" + (f" = {human(scale * preset)}" if isinstance(preset, (int, float)) else "")
        return shown
    if value is None and name == "warmup_steps":
        steps = reflow.get("steps")
        return f"5% of the run ({max(1, steps // 20)})" if isinstance(steps, int) else "5% of the run"
    return human(value)


def image_captions(lineage: Lineage) -> list[tuple[str, str]]:
    """The card's images and their captions (the chunks' frame as the measurement recorded it)."""
    frame = example_frame(lineage.evaluation.get("frames_from"))
    return [(LOSS_CURVE, "reflow training loss"), (CHUNKS, f"teacher and student action chunks on {frame}")]


# What a card may claim a checkpoint is (docs/canonical.md#lineage), from its lineage alone.
REFLOW, UNTRAINED, RECORD_UNKNOWN, NO_LINEAGE = "reflow student", "untrained copy", "training record unknown", "lineage unknown"


CLAIMS = {"reflow": REFLOW, "untrained": UNTRAINED, "unknown": RECORD_UNKNOWN, "none": NO_LINEAGE}


def lineage_claim(lineage: Lineage | None, weights_sha256: str | None = None) -> str:
    """``REFLOW`` only with a training record written by ``hub-reflow train`` (a step count) and
    weights (``weights_sha256``, when known) that are not the teacher's own; ``RECORD_UNKNOWN`` for
    a ``canonicalize`` output without one."""
    if lineage is None:
        return NO_LINEAGE
    training = lineage.training or {}
    if training.get("record") == "unknown":
        return RECORD_UNKNOWN
    own = weights_sha256 is not None and weights_sha256 == lineage.teacher.weights_sha256
    if isinstance(training.get("step"), int) and training["step"] > 0 and not own:
        return REFLOW
    return UNTRAINED


def render_card(lineage: Lineage, policy_config, repo_id: str | None = None, license: str | None = None,
                image_names: tuple[str, ...] | None = None, claim: str | None = None,
                closed_loop: dict | None = None) -> ModelCard:
    """``image_names``: the images present beside the card (default: those the lineage has data for,
    which ``write_canonical`` draws). ``claim``: what the checkpoint is (default: ``lineage_claim``).
    ``closed_loop``: the "Closed-loop evaluation" section's values (``card_closed_loop.closed_loop_context``),
    when an evaluation was recorded."""
    if image_names is None:
        image_names = tuple(n for n, has in ((LOSS_CURVE, lineage.training.get("loss_curve")),
                                              (CHUNKS, lineage.evaluation.get("example_chunks"))) if has)
    ref = lineage.teacher
    reflow = lineage.reflow
    claim = claim or lineage_claim(lineage)
    holdout = lineage.dataset.get("holdout_episodes") or [0, 0]
    return ModelCard.from_template(
        card_data(lineage, license),
        template_str=template_text(),
        model_name=(repo_id or "SmolVLA reflow student").split("/")[-1],
        repo_id=repo_id or "<this repo id>",
        teacher_name="unknown" if claim == NO_LINEAGE else ref.display_name,
        teacher_commit=ref.commit,
        teacher_sha256=ref.weights_sha256,
        student_steps=reflow.get("student_steps", policy_config.num_steps),
        teacher_steps=reflow.get("teacher_steps", lineage.teacher_num_steps),
        dataset_name=dataset_label(lineage.dataset),
        dataset_repo=lineage.dataset.get("repo_id"),  # linked only when it is one (data.load_dataset checked it)
        dataset_local=bool(lineage.dataset.get("local_name")),
        dataset_arg=lineage.dataset.get("repo_id") or (f"{lineage.dataset['local_name']} --dataset-root DATASET_FOLDER"
                                                       if lineage.dataset.get("local_name") else "DATASET"),
        dataset_commit=lineage.dataset.get("commit"),
        reflow_settings=sorted((k, human_setting(k, v, reflow, policy_config)) for k, v in reflow.items()),
        training=sorted((k, human(v)) for k, v in lineage.training.items() if not isinstance(v, (list, dict))) + [
            (f"extended at step {e.get('from_step')}", f"--steps {e.get('steps_before')} -> {e.get('steps')}: {e.get('schedule')}")
            for e in lineage.training.get("extensions") or [] if isinstance(e, dict)],
        versions=sorted(lineage.versions.items()),
        teacher_base_model=lineage.teacher_card.get("base_model"),
        evaluation=lineage.evaluation,
        verdict=recorded_verdict(lineage.evaluation),
        claim=claim, claims=CLAIMS,
        features=[(name, f.type.value, list(f.shape)) for name, f in
                  {**policy_config.input_features, **policy_config.output_features}.items()],
        chunk_size=policy_config.chunk_size,
        n_action_steps=policy_config.n_action_steps,
        holdout=holdout if holdout[1] > holdout[0] else None,
        images=[(name, caption) for name, caption in image_captions(lineage) if name in image_names],
        closed_loop=closed_loop,
        num_steps=policy_config.num_steps,
        rtc_flags=" ".join(rtc_flags(recommended(policy_config.num_steps, policy_config.chunk_size))),
        rtc_default_problems="; ".join(rtc_problems(LEROBOT_MAX_GUIDANCE_WEIGHT, LEROBOT_EXECUTION_HORIZON,
                                                    policy_config.num_steps, policy_config.chunk_size)),
    )
