"""``world:tiny-lm``: a GPT-2-family causal LM pretrained on captions of one-object scenes.

It is the decoder that captioning methods adapt later: two-object scenes and the held-out phrasings are a
new domain for it. Same tokenizer as the world CLIP; cached and verified like ``world:tiny``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, get_cosine_schedule_with_warmup

from clipadapt.config import option, require_positive
from clipadapt.io import atomic_write_text
from clipadapt.progress import progress_bar
from clipadapt.world.cache import ensure_built, recipe_key
from clipadapt.world.captions import ONE_OBJECT, caption
from clipadapt.world.pretrain import write_loss_curve
from clipadapt.world.reproducible import reproducible_build
from clipadapt.world.scenes import SceneSpec, held_out_combinations, sample_scene
from clipadapt.world.tokenizer import build_world_tokenizer

LM_VERSION = "2"
HELD_OUT_PHRASINGS = (5, 6)  # "... coloured ...", "a picture of ... background": never seen by the LM
LM_PHRASINGS = tuple(i for i in range(len(ONE_OBJECT)) if i not in HELD_OUT_PHRASINGS)


@dataclass
class WorldLMRecipe:
    seed: int = option(0, help="seed of weights and captions")
    threads: int = option(1, help="torch threads of the build, whatever the caller's (another count gives other "
                                  "weights)")
    steps: int = option(400, help="optimizer steps (about a minute on 2 CPU cores)")
    batch_size: int = option(64, help="captions per step")
    lr: float = option(2e-3, help="peak learning rate")
    warmup_steps: int = option(20, help="linear warmup steps")
    layers: int = option(2, help="transformer blocks")
    width: int = option(96, help="hidden size")
    heads: int = option(3, help="attention heads")
    positions: int = option(128, help="position embeddings: room for an image prefix in front of a caption")
    version: str = option(LM_VERSION, help="recipe version; cached models are rebuilt when it changes")

    def __post_init__(self) -> None:
        require_positive(self, ("threads", "steps", "batch_size", "lr", "layers", "width", "heads"),
                         "world LM recipe")


def _captions(recipe: WorldLMRecipe, step: int) -> list[str]:
    spec = SceneSpec(min_objects=1, max_objects=1, exclude=held_out_combinations())
    rng = np.random.default_rng([recipe.seed, step, 11])
    texts = []
    for i in range(recipe.batch_size):
        scene = sample_scene(spec, recipe.seed + 7919, step * recipe.batch_size + i)
        texts.append(caption(scene, rng, phrasings=LM_PHRASINGS))
    return texts


def pretrain_world_lm(out_dir: str | Path, recipe: WorldLMRecipe | None = None) -> dict:
    """Train and save the world LM into ``out_dir``: same weights for a recipe whoever calls (reproducible.py)."""
    recipe = recipe or WorldLMRecipe()
    with reproducible_build(recipe.threads, recipe.seed):
        return _pretrain_lm(Path(out_dir), recipe)


def _pretrain_lm(out_dir: Path, recipe: WorldLMRecipe) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_world_tokenizer()
    # positions for a captioner's image prefix (world:tiny's 37 tokens) in front of a caption
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=recipe.positions, n_embd=recipe.width,
                        n_layer=recipe.layers, n_head=recipe.heads, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(recipe.seed)
    model = GPT2LMHeadModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, recipe.warmup_steps, recipe.steps)
    losses, start = [], time.perf_counter()
    with progress_bar("pretraining world:tiny-lm", total=recipe.steps, unit="steps") as advance:
        for step in range(recipe.steps):
            tokens = tokenizer(_captions(recipe, step), padding=True, return_tensors="pt")
            labels = tokens["input_ids"].masked_fill(tokens["attention_mask"] == 0, -100)
            loss = model(**tokens, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            losses.append(float(loss.detach()))
            advance(1)
    model.eval()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no 'Writing model shards' bar in our output
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    summary = {"recipe": asdict(recipe), "train_time_s": round(time.perf_counter() - start, 1),
               "final_loss": float(np.mean(losses[-20:])), "held_out_phrasings": list(HELD_OUT_PHRASINGS)}
    atomic_write_text(out_dir / "recipe.json", json.dumps(summary, indent=2) + "\n")
    write_loss_curve(out_dir, losses, title="world:tiny-lm pretraining", ylabel="next-token loss")
    return summary


def world_lm_dir() -> Path:
    return ensure_built(f"tiny-lm-v{LM_VERSION}", recipe_key(WorldLMRecipe()), lambda d: pretrain_world_lm(d))


def load_world_lm():
    """``(model, tokenizer)`` of the cached world language model (built on first use)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = world_lm_dir()
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
