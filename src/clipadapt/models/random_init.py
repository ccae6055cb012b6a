"""Randomly initialised CLIP models of named sizes, for tests, benchmarks and offline smoke runs.

They are real ``transformers.CLIPModel`` instances with a hand-written character tokenizer, saved and loaded
exactly like a downloaded checkpoint. Their zero-shot accuracy is chance: they measure speed and plumbing,
not quality.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

from clipadapt.models.tokenizer_utils import build_char_tokenizer

# name -> (vision kwargs, text kwargs, projection_dim)
PRESETS: dict[str, tuple[dict, dict, int]] = {
    "tiny": (
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
             patch_size=8),
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        32,
    ),
    "vit-b-32": (  # OpenAI ViT-B/32 geometry
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
             image_size=224, patch_size=32),
        dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        512,
    ),
    "vit-l-14-336": (  # OpenAI ViT-L/14@336 geometry (577 image tokens)
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
             image_size=336, patch_size=14),
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        768,
    ),
}


def build_random_clip(preset: str = "tiny", seed: int = 0):
    """Return ``(model, tokenizer, image_processor)`` with deterministic random weights."""
    vision, text, projection = PRESETS[preset]
    tokenizer = build_char_tokenizer()
    config = CLIPConfig(
        vision_config=dict(vision),
        text_config=dict(text, vocab_size=len(tokenizer), max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        projection_dim=projection,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = CLIPModel(config).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    size = vision["image_size"]
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return model, tokenizer, image_processor


def save_random_clip(path: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Write a random checkpoint (safetensors + tokenizer + preprocessor) that ``load_model(path)`` reads."""
    path = Path(path)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model, tokenizer, image_processor = build_random_clip(preset, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    image_processor.save_pretrained(path)
    return path
