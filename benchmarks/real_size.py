"""The real-size SmolVLA the benchmarks build (``latency.py``, ``teacher_sampling.py``,
``train_cost.py --real-size``): the ``smolvla_base`` architecture on a backbone folder shaped like
SmolVLM2-500M-Video-Instruct with random weights, written locally once (nothing is downloaded); one
preprocessed observation for it; a teacher checkpoint of that architecture for a dataset."""

from __future__ import annotations

import sys
from pathlib import Path

TASK = "pick up the red cube and place it in the box"
STATE_DIM = ACTION_DIM = 6  # an SO-100 arm

# SmolVLM2-500M-Video-Instruct's published configuration (HuggingFaceTB/SmolVLM2-500M-Video-Instruct
# config.json): the fields the model's shapes and compute depend on.
SMOLVLM2_500M_TEXT = {
    "model_type": "llama",
    "hidden_size": 960,
    "intermediate_size": 2560,
    "num_hidden_layers": 32,
    "num_attention_heads": 15,
    "num_key_value_heads": 5,
    "head_dim": 64,
    "hidden_act": "silu",
    "vocab_size": 49280,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
SMOLVLM2_500M_VISION = {
    "model_type": "smolvlm_vision",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 512,
    "patch_size": 16,
}
SMOLVLM2_500M_SCALE_FACTOR = 4
# smolvla_base's policy settings (lerobot/smolvla_base config.json; also SmolVLAConfig's defaults).
SMOLVLA_BASE = {
    "chunk_size": 50,
    "n_action_steps": 50,
    "max_state_dim": 32,
    "max_action_dim": 32,
    "resize_imgs_with_padding": (512, 512),
    "num_vlm_layers": 16,
    "expert_width_multiplier": 0.75,
    "attention_mode": "cross_attn",
    "self_attn_every_n_layers": 2,
    "tokenizer_max_length": 48,
}


def write_real_size_backbone(folder: Path, seed: int = 0) -> Path:
    """A SmolVLM2-500M-Video-Instruct-shaped backbone folder with random bf16 weights."""
    import torch
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    from hub_reflow.testing.tiny_backbone import EXTRA_SPECIAL_TOKENS, SPECIAL_TOKENS, smolvlm_processor

    if (folder / "model.safetensors").exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    vocab_size = SMOLVLM2_500M_TEXT["vocab_size"]
    # Word-level vocabulary of the published size: special tokens, the task's words, fillers. Only
    # the embedding table's size has to match; the token ids carry no meaning with random weights.
    size = SMOLVLM2_500M_VISION["image_size"]
    tokens_per_image = (size // SMOLVLM2_500M_VISION["patch_size"]) ** 2 // SMOLVLM2_500M_SCALE_FACTOR**2
    processor, vocab = smolvlm_processor([*TASK.split(), "\n"], image_size=size, image_seq_len=tokens_per_image,
                                         model_max_length=8192, vocab_size=vocab_size)
    text = {**SMOLVLM2_500M_TEXT, "pad_token_id": vocab[SPECIAL_TOKENS["pad_token"]]}
    config = SmolVLMConfig(
        vision_config=dict(SMOLVLM2_500M_VISION), text_config=text, scale_factor=SMOLVLM2_500M_SCALE_FACTOR,
        image_token_id=vocab[EXTRA_SPECIAL_TOKENS["image_token"]], pad_token_id=text["pad_token_id"],
        vocab_size=vocab_size, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def policy_config(backbone: Path, *, smoke: bool, cameras: int, layout: str, device: torch.device):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    if smoke:
        from hub_reflow.testing.tiny_world import IMAGE_SIZE

        size = IMAGE_SIZE
        arch = {"chunk_size": 8, "n_action_steps": 8, "max_state_dim": 8, "max_action_dim": 8,
                "resize_imgs_with_padding": (size, size), "num_vlm_layers": 2, "tokenizer_max_length": 16}
    else:
        size = SMOLVLA_BASE["resize_imgs_with_padding"][0]
        arch = dict(SMOLVLA_BASE)
    inputs = {f"observation.images.cam{i}": PolicyFeature(FeatureType.VISUAL, (3, size, size)) for i in range(cameras)}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (STATE_DIM,))
    return SmolVLAConfig(
        vlm_model_name=str(backbone), load_vlm_weights=layout == "lerobot", device=device.type,
        input_features=inputs, output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        **arch,
    )


def make_batch(policy, cameras: int, device: torch.device, seed: int = 0, batch_size: int = 1) -> dict:
    """Preprocessed observations (what LeRobot's preprocessor hands the policy); one by default."""
    import torch

    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    g = torch.Generator().manual_seed(seed)
    batch = {}
    for key, feat in list(policy.config.image_features.items())[:cameras]:
        batch[key] = torch.rand(batch_size, *feat.shape, generator=g).to(device)
    batch["observation.state"] = torch.randn(batch_size, STATE_DIM, generator=g).to(device)
    tok = policy.model.vlm_with_expert.processor.tokenizer(
        [TASK + "\n"] * batch_size, padding="longest", truncation=True, max_length=policy.config.tokenizer_max_length,
        return_tensors="pt",
    )
    batch[OBS_LANGUAGE_TOKENS] = tok["input_ids"].to(device)
    batch[OBS_LANGUAGE_ATTENTION_MASK] = tok["attention_mask"].bool().to(device)
    return batch


def real_size_teacher(workdir: Path, dataset_root: Path, repo_id: str) -> Path:
    """A ``pretrained_model/`` folder with the smolvla_base architecture and random weights for the
    dataset's features: built by LeRobot (``SmolVLAPolicy`` from the backbone folder, processors
    from the dataset's statistics) and saved by LeRobot, once."""
    import torch
    from lerobot.configs.types import FeatureType
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.utils.feature_utils import dataset_to_policy_features

    folder = workdir / "real-size-teacher"
    if (folder / "model.safetensors").exists():
        return folder
    print(f"writing the real-size backbone and teacher under {workdir} (once, ~2 GB)", file=sys.stderr, flush=True)
    backbone = write_real_size_backbone(workdir / "smolvlm2-500m-shape").resolve()
    meta = LeRobotDatasetMetadata(repo_id, root=dataset_root)
    feats = dataset_to_policy_features(meta.features)
    cfg = SmolVLAConfig(
        vlm_model_name=str(backbone), load_vlm_weights=True, device="cpu",
        input_features={k: f for k, f in feats.items() if f.type is not FeatureType.ACTION},
        output_features={k: f for k, f in feats.items() if f.type is FeatureType.ACTION},
        **SMOLVLA_BASE,
    )
    torch.manual_seed(0)
    policy = SmolVLAPolicy(cfg)
    pre, post = make_pre_post_processors(cfg, dataset_stats=meta.stats)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(tmp)
    pre.save_pretrained(tmp)
    post.save_pretrained(tmp)
    tmp.rename(folder)
    return folder
