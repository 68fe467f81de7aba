"""A synthetic SmolVLA teacher and reflow student, made of JSON and a few tiny tensors (no backbone, no
training): enough for every structural rule, so the unit tier judges real files in milliseconds.

The config is LeRobot's own ``SmolVLAConfig`` written by LeRobot; the state dict has SmolVLA's
module groups (VLM and action expert in bf16, projections in fp32, the layout LeRobot builds with
``load_vlm_weights: true``); the processor files follow LeRobot's layout (a normaliser and an
unnormaliser with their statistics in state files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

BACKBONE = "hub-reflow-testing/tiny-smolvlm"
PRE_STATE = "policy_preprocessor_step_1_normalizer_processor.safetensors"
POST_STATE = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return {
        "model.vlm_with_expert.vlm.model.text_model.layers.0.mlp.down_proj.weight": r(4, 6).bfloat16(),
        "model.vlm_with_expert.vlm.model.text_model.norm.weight": r(4).bfloat16(),
        "model.vlm_with_expert.vlm.model.vision_model.embeddings.patch_embedding.weight": r(4, 3, 2, 2).bfloat16(),
        "model.vlm_with_expert.lm_expert.layers.0.mlp.down_proj.weight": r(3, 5).bfloat16(),
        "model.vlm_with_expert.lm_expert.layers.0.self_attn.q_proj.weight": r(3, 3).bfloat16(),
        "model.vlm_with_expert.lm_expert.norm.weight": r(3).bfloat16(),
        "model.action_in_proj.weight": r(3, 2),
        "model.action_in_proj.bias": r(3),
        "model.action_out_proj.weight": r(2, 3),
        "model.state_proj.weight": r(4, 2),
    }


def _processors(folder: Path) -> None:
    features = {"observation.state": {"type": "STATE", "shape": [2]}, "action": {"type": "ACTION", "shape": [2]}}
    norm = {"eps": 1e-08, "features": features, "norm_map": {"STATE": "MEAN_STD", "ACTION": "MEAN_STD"}}
    pre = {"name": "policy_preprocessor", "steps": [
        {"registry_name": "tokenizer_processor", "config": {"max_length": 16, "tokenizer_name": BACKBONE}},
        {"registry_name": "normalizer_processor", "config": norm, "state_file": PRE_STATE}]}
    post = {"name": "policy_postprocessor", "steps": [
        {"registry_name": "unnormalizer_processor", "config": norm, "state_file": POST_STATE}]}
    (folder / "policy_preprocessor.json").write_text(json.dumps(pre, indent=2))
    (folder / "policy_postprocessor.json").write_text(json.dumps(post, indent=2))
    stats = {"action.mean": torch.tensor([0.1, -0.2]), "action.std": torch.tensor([1.5, 0.5]),
             "observation.state.mean": torch.tensor([0.0, 0.3]), "observation.state.std": torch.tensor([0.9, 1.1])}
    save_file(stats, str(folder / PRE_STATE))
    save_file(stats, str(folder / POST_STATE))


def make_teacher(folder: Path) -> Path:
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    folder.mkdir(parents=True)
    cfg = SmolVLAConfig(vlm_model_name=BACKBONE, load_vlm_weights=True, device="cpu", chunk_size=8, n_action_steps=8,
                        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (2,))},
                        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))})
    cfg._save_pretrained(folder)
    save_file(_tensors(0), str(folder / "model.safetensors"), metadata={"format": "pt"})
    _processors(folder)
    return folder


def make_student(teacher: Path, folder: Path) -> Path:
    """The teacher's checkpoint with ``num_steps`` 1, a trained action expert and a lineage file."""
    from safetensors.torch import load_file

    from hub_reflow.checkpoint import CheckpointRef, Lineage
    from hub_reflow.config import ReflowConfig
    from hub_reflow.files import sha256_file

    shutil.copytree(teacher, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_steps"] = 1
    (folder / "config.json").write_text(json.dumps(cfg, indent=4))
    tensors = load_file(str(teacher / "model.safetensors"))
    trained = _tensors(1)
    tensors.update({k: v for k, v in trained.items() if ".lm_expert." in k or not k.startswith("model.vlm_with_expert.")})
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    lineage = Lineage(teacher=CheckpointRef(None, None, None, sha256_file(teacher / "model.safetensors")),
                      reflow=ReflowConfig().to_dict(), versions={})
    (folder / "reflow_lineage.json").write_text(lineage.to_json())
    return folder
