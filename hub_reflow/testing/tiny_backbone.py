"""The tiny SmolVLM backbone of the offline world: a 2-layer, 64-wide SmolVLM with a word-level
tokenizer carrying the special tokens SmolVLA reads, saved as a folder and made resolvable under a
Hub repo id (``TINY_BACKBONE_ID``) through the local HF cache or a local Hub."""

from __future__ import annotations

from pathlib import Path

# The tiny backbone's repo id: teachers name it in `vlm_model_name` (and so in the tokenizer
# processor's `tokenizer_name`), as real ones name HuggingFaceTB/SmolVLM2-500M-Video-Instruct, so no
# checkpoint carries a local path. It is served from the local HF cache (HF_HOME) or a local Hub.
TINY_BACKBONE_ID = "hub-reflow-testing/tiny-smolvlm"
IMAGE_SIZE = 32

# The special tokens SmolVLA and SmolVLMProcessor read from the tokenizer.
SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
}
EXTRA_SPECIAL_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}
WORDS = "go around the post left right move to side pick place up down a an of \n".split(" ")


def smolvlm_processor(words, *, image_size: int, image_seq_len: int, model_max_length: int,
                      vocab_size: int | None = None):
    """A ``SmolVLMProcessor`` with a word-level tokenizer carrying the special tokens SmolVLA reads
    (special tokens first, at fixed ids, then ``words``, then fillers up to ``vocab_size``), no image
    splitting. Returns (processor, vocab)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    vocab: dict[str, int] = {}
    for tok in [*SPECIAL_TOKENS.values(), *EXTRA_SPECIAL_TOKENS.values(), *(w for w in words if w)]:
        vocab.setdefault(tok, len(vocab))
    while vocab_size is not None and len(vocab) < vocab_size:
        vocab[f"<w{len(vocab)}>"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, extra_special_tokens=dict(EXTRA_SPECIAL_TOKENS),
                                        model_max_length=model_max_length, **SPECIAL_TOKENS)
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size},
                                              do_image_splitting=False),
        tokenizer=tokenizer, video_processor=SmolVLMVideoProcessor(), image_seq_len=image_seq_len,
    )
    return processor, vocab


def make_tiny_backbone(folder: str | Path, *, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny SmolVLM backbone (config, tokenizer, processor, weights) to ``folder``.

    ``SmolVLAConfig(vlm_model_name=folder)`` then works with ``load_vlm_weights`` true (weights read
    from the folder) or false (architecture from the config only). Use ``num_vlm_layers <=
    num_layers`` in the policy config. Returns the folder.
    """
    import torch
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    vision_size = 32
    # (image_size / patch_size)^2 / scale_factor^2 = (32 / 8)^2 / 2^2
    processor, vocab = smolvlm_processor(WORDS, image_size=IMAGE_SIZE, image_seq_len=4, model_max_length=512)

    num_heads = 4
    config = SmolVLMConfig(
        vision_config={
            "hidden_size": vision_size,
            "intermediate_size": 2 * vision_size,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": 2,
            "head_dim": hidden_size // num_heads,
            "vocab_size": len(vocab),
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-5,
            "pad_token_id": vocab[SPECIAL_TOKENS["pad_token"]],
        },
        scale_factor=2,
        image_token_id=vocab[EXTRA_SPECIAL_TOKENS["image_token"]],
        pad_token_id=vocab[SPECIAL_TOKENS["pad_token"]],
        vocab_size=len(vocab),
    )
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def publish_backbone(backbone: str | Path, repo_id: str = TINY_BACKBONE_ID, endpoint: str | None = None,
                     token: str | None = None) -> None:
    """Make ``repo_id`` resolvable: upload the backbone folder to a Hub (``endpoint``), or, without
    one, through a throwaway local Hub into this process's HF cache (``HF_HOME``), from which
    transformers resolves it with ``HF_HUB_OFFLINE=1``. Uses the real client both ways."""
    import tempfile

    from huggingface_hub import HfApi, constants, snapshot_download

    from .hub_server import HubServer

    saved = constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET
    constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET = False, True
    try:
        if endpoint is not None:
            api = HfApi(endpoint=endpoint, token=token)
            api.create_repo(repo_id, exist_ok=True)
            api.upload_folder(folder_path=str(backbone), repo_id=repo_id)
            return
        with tempfile.TemporaryDirectory() as tmp, HubServer(Path(tmp), {"hf_tiny_world": "write"}) as hub:
            publish_backbone(backbone, repo_id, endpoint=hub.url, token="hf_tiny_world")
            snapshot_download(repo_id, endpoint=hub.url, token="hf_tiny_world")
    finally:
        constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET = saved
