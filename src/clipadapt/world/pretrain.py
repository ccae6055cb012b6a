"""Contrastive pretraining of the tiny world CLIP on generated image-caption pairs.

A real ``transformers.CLIPModel`` (ViT 2 x 64, patch 8, 48 px input; text 2 x 64) trained with CLIP's symmetric
InfoNCE loss on fresh scenes every step. Colour-shape pairs in ``held_out_combinations()`` never appear, in
images or captions, so zero-shot accuracy on them measures compositional generalisation.

Deterministic for a seed and a step count: images, captions, initial weights and batch order all derive
from the seed. ``seconds`` only chooses the step count (from the speed of the first steps); the chosen count
is recorded in ``recipe.json`` and ``steps=`` reproduces it exactly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, get_cosine_schedule_with_warmup

from clipadapt.config import option, require_positive
from clipadapt.data.transforms import ClipPreprocess, PreprocessConfig
from clipadapt.errors import ConfigError
from clipadapt.io import atomic_write_text
from clipadapt.progress import progress_bar
from clipadapt.world.captions import caption
from clipadapt.world.reproducible import reproducible_build
from clipadapt.world.scenes import COLOUR_NAMES, SceneSpec, generate_images, held_out_combinations
from clipadapt.world.tokenizer import build_world_tokenizer

RECIPE_VERSION = "2"
ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass
class WorldClipRecipe:
    seed: int = option(0, help="seed of weights, scenes and captions")
    threads: int = option(1, help="torch threads of the build, whatever the caller's: kernels split sums by "
                                  "thread, so another count gives other weights")
    steps: int = option(2500, help="optimizer steps (4-6 minutes on one CPU thread)")
    batch_size: int = option(128, help="image-caption pairs per step")
    lr: float = option(1e-3, help="peak learning rate")
    colours_per_batch: int = option(3, help="colours in one batch: few colours force the model to see shape")
    pool_images: int = option(32000, help="render this many scenes once (half single-object, class-balanced) and "
                                      "reuse them with fresh captions; 0: fresh scenes every step")
    shared_positives: bool = option(True, help="pairs whose captions mean the same are all positives (soft "
                                               "targets), instead of CLIP's one-hot target among duplicates")
    logit_scale_init: float = option(2.6592, help="initial log temperature (CLIP's value)")
    focus_share: float = option(0.75, help="share of batches with single objects of few colours, captioned by "
                                           "colour and shape only, so that shape tells pairs apart")
    focus_colours: int = option(3, help="colours in one focus batch: each colour with its shapes, so that shape "
                                         "must be told apart within a colour and across colours")
    edge_filters: int = option(16, help="patch-embedding filters initialised as oriented edges and bars "
                                        "(a locality prior that shortens the plateau before shape is learned)")
    warmup_steps: int = option(50, help="linear warmup steps")
    weight_decay: float = option(0.1, help="AdamW weight decay (not on biases and norms)")
    render_resolution: int = option(64, help="side of the generated scenes in pixels")
    resolution: int = option(48, help="model input side: scenes are resized to it by the model's preprocessing")
    patch_size: int = option(8, help="ViT patch size")
    width: int = option(64, help="hidden size of both towers")
    vision_layers: int = option(2, help="vision transformer layers")
    text_layers: int = option(2, help="text transformer layers")
    projection_dim: int = option(64, help="joint embedding size")
    activation: str = option("gelu", help="MLP activation of both towers: gelu (torch's fused kernel, faster on a "
                                          "CPU) or quick_gelu (OpenAI CLIP's)")
    version: str = option(RECIPE_VERSION, help="recipe version; cached models are rebuilt when it changes")

    def __post_init__(self) -> None:
        require_positive(self, ("threads", "steps", "batch_size", "lr", "resolution", "patch_size", "width",
                                "vision_layers", "text_layers", "focus_colours"), "world recipe")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"world recipe activation must be one of {', '.join(ACTIVATIONS)}, got "
                              f"{self.activation!r}")


def build_world_clip(recipe: WorldClipRecipe, tokenizer) -> CLIPModel:
    heads = max(1, recipe.width // 32)
    config = CLIPConfig(
        vision_config=dict(hidden_size=recipe.width, intermediate_size=4 * recipe.width, hidden_act=recipe.activation,
                           num_hidden_layers=recipe.vision_layers, num_attention_heads=heads,
                           image_size=recipe.resolution, patch_size=recipe.patch_size),
        text_config=dict(hidden_size=recipe.width, intermediate_size=4 * recipe.width, hidden_act=recipe.activation,
                         num_hidden_layers=recipe.text_layers, num_attention_heads=heads,
                         vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        projection_dim=recipe.projection_dim,
        logit_scale_init_value=recipe.logit_scale_init,
    )
    torch.manual_seed(recipe.seed)
    model = CLIPModel(config)
    if recipe.edge_filters:
        conv = model.vision_model.embeddings.patch_embedding
        with torch.no_grad():
            bank = oriented_filters(min(recipe.edge_filters, conv.out_channels), recipe.patch_size,
                                    scale=float(conv.weight[0].norm()))
            conv.weight[: len(bank)] = bank
    return model


def oriented_filters(count: int, patch: int, scale: float, orientations: int = 8) -> torch.Tensor:
    """Odd (edge) and even (bar) Gabor-like luminance filters, (count, 3, patch, patch), each of norm ``scale``."""
    ys, xs = torch.meshgrid(torch.arange(patch) - (patch - 1) / 2, torch.arange(patch) - (patch - 1) / 2,
                            indexing="ij")
    envelope = torch.exp(-(xs**2 + ys**2) / (2 * (patch / 3) ** 2))
    filters = []
    for k in range(orientations):
        angle = math.pi * k / orientations
        phase = 2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / patch
        for wave in (torch.sin(phase), torch.cos(phase)):
            f = wave * envelope
            f = f - f.mean()
            filters.append(f / f.norm())
    bank = torch.stack(filters)[:count][:, None].repeat(1, 3, 1, 1) / math.sqrt(3)
    return bank * scale


def _plan(recipe: WorldClipRecipe, step: int) -> tuple[np.random.Generator, bool, set[str]]:
    """The step's random stream, whether it is a focus batch, and the colours it may use."""
    rng = np.random.default_rng([recipe.seed, step, 7])
    focus = bool(rng.random() < recipe.focus_share)
    n_colours = recipe.focus_colours if focus else recipe.colours_per_batch
    colours = set(rng.choice(COLOUR_NAMES, size=min(n_colours, len(COLOUR_NAMES)), replace=False))
    return rng, focus, colours


def _texts(scenes: list, rng: np.random.Generator, focus: bool, tokenizer) -> tuple[dict, list]:
    """Fresh captions (tokenised) and what each one means: the class in focus batches, the words otherwise."""
    phrasings = (0, 1) if focus else None  # "a red star", "a photo of a red star"
    synonyms = 0.0 if focus else 0.3
    texts = [caption(s, rng, synonyms, phrasings) + ("." if rng.random() < 0.5 else "") for s in scenes]
    tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    keys = [(s.objects[0].colour, s.objects[0].shape) if focus else t.rstrip(".")
            for s, t in zip(scenes, texts, strict=True)]
    return tokens, keys


def _balanced(pairs: list, size: int, rng: np.random.Generator) -> list:
    """``size`` items cycling through ``pairs`` (equal counts), in random order."""
    return [pairs[int(i)] for i in rng.permutation(np.arange(size) % len(pairs))]


def _batch(recipe: WorldClipRecipe, spec: SceneSpec, step: int, tokenizer, preprocess: ClipPreprocess):
    """Fresh scenes for every step (``pool_images=0``)."""
    rng, focus, colours = _plan(recipe, step)
    spec = replace(spec, combinations=tuple((c, s) for c, s in spec.allowed() if c in colours))
    forced = None
    if focus:  # single objects, every allowed pair of the chosen colours equally often
        spec = replace(spec, min_objects=1, max_objects=1)
        forced = _balanced(list(spec.combinations), recipe.batch_size, rng)
    images, scenes = generate_images(spec, recipe.seed, recipe.batch_size, start=step * recipe.batch_size,
                                     combinations=forced)
    tokens, keys = _texts(scenes, rng, focus, tokenizer)
    pixels = torch.stack([preprocess.to_uint8(Image.fromarray(image)) for image in images])
    return preprocess.normalize(pixels), tokens, keys


class PooledBatches:
    """Scenes rendered and resized once, then drawn with fresh captions: most of a step's data cost goes away.

    Draws follow the same plan as ``_batch`` (focus batches: single objects of ``focus_colours`` colours, every
    allowed pair equally often; other batches: scenes whose objects use only the step's colours).
    """

    def __init__(self, recipe: WorldClipRecipe, spec: SceneSpec, preprocess: ClipPreprocess | None = None) -> None:
        preprocess = preprocess or _preprocess(recipe)
        self.recipe, self.preprocess = recipe, preprocess
        half = recipe.pool_images // 2
        single = replace(spec, min_objects=1, max_objects=1)
        pairs = list(single.allowed())
        forced = [pairs[i % len(pairs)] for i in range(half)]
        focus_images, self.focus_scenes = generate_images(single, recipe.seed + 1, half, combinations=forced)
        general_images, self.general_scenes = generate_images(spec, recipe.seed + 2, recipe.pool_images - half)
        self.focus_pixels = torch.stack([preprocess.to_uint8(Image.fromarray(i)) for i in focus_images])
        self.general_pixels = torch.stack([preprocess.to_uint8(Image.fromarray(i)) for i in general_images])
        self.pair_index: dict[tuple[str, str], np.ndarray] = {
            pair: np.flatnonzero([(s.objects[0].colour, s.objects[0].shape) == pair for s in self.focus_scenes])
            for pair in pairs
        }
        self.bits = {c: 1 << i for i, c in enumerate(COLOUR_NAMES)}
        self.general_colours = np.array([sum({self.bits[o.colour] for o in s.objects}) for s in self.general_scenes])

    def batch(self, step: int, tokenizer):
        recipe = self.recipe
        rng, focus, colours = _plan(recipe, step)
        if focus:
            pairs = _balanced([p for p in self.pair_index if p[0] in colours], recipe.batch_size, rng)
            chosen = np.array([rng.choice(self.pair_index[pair]) for pair in pairs])
            scenes, pixels = [self.focus_scenes[i] for i in chosen], self.focus_pixels[torch.from_numpy(chosen)]
        else:
            allowed = sum(self.bits[c] for c in colours)
            candidates = np.flatnonzero((self.general_colours & ~allowed) == 0)
            chosen = rng.choice(candidates, size=recipe.batch_size, replace=len(candidates) < recipe.batch_size)
            scenes, pixels = [self.general_scenes[i] for i in chosen], self.general_pixels[torch.from_numpy(chosen)]
        tokens, keys = _texts(scenes, rng, focus, tokenizer)
        return self.preprocess.normalize(pixels), tokens, keys


def prefetched(make_batch: Callable[[int], tuple]) -> Iterator[tuple]:
    """``make_batch(0), make_batch(1), ...``, each next one made in a thread while the caller trains on this one.

    A batch depends only on its step, so the weights are the same as without the thread; with torch on one thread,
    rendering captions and tokenising (pure Python, a tenth of a step) move to the machine's other core."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="world-batches") as executor:
        step, upcoming = 0, executor.submit(make_batch, 0)
        while True:
            batch = upcoming.result()
            step += 1
            upcoming = executor.submit(make_batch, step)
            yield batch


def clip_logits(model: CLIPModel, pixels: torch.Tensor, tokens: dict) -> torch.Tensor:
    """``model(...).logits_per_image``, with each distinct caption encoded once: a focus batch repeats a few
    captions ("a red star") many times, and the text tower need not see them again."""
    image = model.get_image_features(pixel_values=pixels).pooler_output
    rows = torch.cat([tokens["input_ids"], tokens["attention_mask"]], dim=1)
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    width = tokens["input_ids"].shape[1]
    text = model.get_text_features(input_ids=unique[:, :width], attention_mask=unique[:, width:]).pooler_output
    text = text[inverse]
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * image @ text.T


def contrastive_loss(logits_per_image: torch.Tensor, keys: list | None = None) -> torch.Tensor:
    """Symmetric InfoNCE; with ``keys``, every pair with the same key is a positive (uniform soft target)."""
    n = logits_per_image.shape[0]
    if keys is None:
        targets = torch.eye(n)
    else:
        index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        ids = torch.tensor([index[k] for k in keys])
        targets = (ids[:, None] == ids[None, :]).float()
    targets = targets / targets.sum(dim=1, keepdim=True)
    image_loss = -(targets * logits_per_image.log_softmax(dim=1)).sum(dim=1).mean()
    text_loss = -(targets * logits_per_image.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (image_loss + text_loss) / 2


def _preprocess(recipe: WorldClipRecipe) -> ClipPreprocess:
    """The model's own preprocessing (OpenAI CLIP statistics): the exact path evaluation images take."""
    side = recipe.resolution
    return ClipPreprocess(PreprocessConfig(resize=side, crop=(side, side)))


def _param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain_world_clip(out_dir: str | Path, recipe: WorldClipRecipe | None = None,
                        seconds: float | None = None) -> dict:
    """Train and save the world CLIP (model, tokenizer, preprocessor, recipe, loss curve) into ``out_dir``.

    Same weights for a recipe whoever calls (the build fixes its own threads and random state, see reproducible.py).
    """
    recipe = recipe or WorldClipRecipe()
    if seconds is not None and seconds <= 0:
        raise ConfigError(f"--seconds must be positive, got {seconds}")
    with reproducible_build(recipe.threads, recipe.seed):
        return _pretrain(Path(out_dir), recipe, seconds)


def _pretrain(out_dir: Path, recipe: WorldClipRecipe, seconds: float | None) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_world_tokenizer()
    model = build_world_clip(recipe, tokenizer).train()
    spec = SceneSpec(resolution=recipe.render_resolution, exclude=held_out_combinations())
    optimizer = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=recipe.lr, betas=(0.9, 0.98))
    probe_steps = min(5, recipe.warmup_steps)  # the schedule is only fixed once the step count is known
    total = recipe.steps
    schedule = get_cosine_schedule_with_warmup(optimizer, recipe.warmup_steps, total)
    build_start = time.perf_counter()
    preprocess = _preprocess(recipe)
    pool = PooledBatches(recipe, spec, preprocess) if recipe.pool_images > 0 else None  # before timing steps
    pool_s = time.perf_counter() - build_start

    def make_batch(i: int) -> tuple:
        return pool.batch(i, tokenizer) if pool is not None else _batch(recipe, spec, i, tokenizer, preprocess)

    losses, start, step = [], time.perf_counter(), 0
    with progress_bar("pretraining world:tiny", total=total, unit="steps") as advance, \
            closing(prefetched(make_batch)) as batches:
        while step < total:
            pixels, tokens, keys = next(batches)
            logits = clip_logits(model, pixels, tokens)
            loss = contrastive_loss(logits, keys if recipe.shared_positives else None)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            with torch.no_grad():  # CLIP clamps the temperature at 100
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            step += 1
            advance(1)
            if seconds is not None and step == probe_steps:
                per_step = (time.perf_counter() - start) / probe_steps
                total = max(recipe.warmup_steps + 1, int(seconds / per_step))
                recipe = replace(recipe, steps=total)
                schedule = get_cosine_schedule_with_warmup(optimizer, recipe.warmup_steps, total,
                                                           last_epoch=step - 1)
    elapsed = time.perf_counter() - start
    model.eval()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no 'Writing model shards' bar in our output
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    CLIPImageProcessorPil(size={"shortest_edge": recipe.resolution},
                          crop_size={"height": recipe.resolution, "width": recipe.resolution}).save_pretrained(out_dir)
    summary = {"recipe": asdict(recipe), "train_time_s": round(elapsed + pool_s, 1),
               "pool_render_s": round(pool_s, 1), "final_loss": float(np.mean(losses[-20:])),
               "pairs_seen": total * recipe.batch_size, "logit_scale": float(model.logit_scale.detach().exp())}
    atomic_write_text(out_dir / "recipe.json", json.dumps(summary, indent=2) + "\n")
    write_loss_curve(out_dir, losses)
    return summary


def write_loss_curve(out_dir: Path, losses: list[float], title: str = "world:tiny pretraining",
                     ylabel: str = "contrastive loss") -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["step", "loss"])
    writer.writerows([i + 1, f"{v:.5f}"] for i, v in enumerate(losses))
    atomic_write_text(out_dir / "loss.csv", buffer.getvalue())
    from clipadapt.reports.plots import plot_curve

    plot_curve(losses, out_dir / "loss.png", xlabel="step", ylabel=ylabel, title=title)
