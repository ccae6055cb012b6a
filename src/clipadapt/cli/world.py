"""``clipadapt world ...``: the built-in offline world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipadapt.cli.common import out, result_table, setup_logging, user_errors
from clipadapt.errors import ClipAdaptError


@user_errors
def world_pretrain_command(
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="write the model here instead of "
                                                 "(re)building the cached world:tiny")] = None,
    seconds: Annotated[float | None, typer.Option(help="time budget; sets the step count from measured speed")] = None,
    steps: Annotated[int | None, typer.Option(help="exact number of optimizer steps")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of weights, scenes and captions")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="recipe override: key=value")] = None,
):
    """Pretrain the tiny world CLIP contrastively on generated image-caption pairs."""
    setup_logging()
    from clipadapt.config import apply_overrides
    from clipadapt.io import staged_directory
    from clipadapt.world.pretrain import WorldClipRecipe, pretrain_world_clip

    recipe = apply_overrides(WorldClipRecipe(), [f"{k}" for k in (set_ or [])])
    recipe = apply_overrides(recipe, [f"{k}={v}" for k, v in {"steps": steps, "seed": seed}.items() if v is not None])
    if out_dir is None:
        if recipe != WorldClipRecipe() or seconds is not None:
            raise ClipAdaptError("world:tiny always uses the default recipe; write a custom one with --out DIR "
                                 "and use it as --model DIR")
        import json

        from clipadapt.world.models import world_clip_dir

        out_dir = world_clip_dir(rebuild=True)  # same lock, staging and manifest as a first-use build
        summary = json.loads((out_dir / "recipe.json").read_text())
    else:
        with staged_directory(out_dir, overwrite=True) as stage:
            summary = pretrain_world_clip(stage, recipe, seconds=seconds)
    out.print(f"pretrained in {summary['train_time_s']} s, {summary['recipe']['steps']} steps, "
              f"final loss {summary['final_loss']:.3f}; model: {out_dir} (loss curve: {out_dir / 'loss.png'})",
              highlight=False)


@user_errors
def world_lm_command():
    """Build (once) and show the cached world:tiny-lm, the caption decoder's starting point."""
    setup_logging()
    from clipadapt.world.lm import world_lm_dir

    out.print(f"world:tiny-lm: {world_lm_dir()}", highlight=False)


@user_errors
def world_captions_command(
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="write here instead of the cache")] = None,
):
    """Write the COCO-style world:captions dataset (captions_<split>.json + images/)."""
    setup_logging()
    from clipadapt.io import staged_directory
    from clipadapt.world.caption_data import world_captions_dir, write_caption_dataset

    if out_dir is None:
        path = world_captions_dir()
    else:
        with staged_directory(out_dir, overwrite=True) as stage:
            write_caption_dataset(stage)
        path = out_dir
    out.print(f"world:captions: {path}", highlight=False)


@user_errors
def world_show_command():
    """Show what the world cache holds and whether each entry's files match its manifest."""
    from clipadapt.world.cache import verify, world_dir

    root = world_dir()
    rows = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.is_dir() and not path.name.startswith("."):
            status = "verified" if verify(path) else "incomplete or corrupt (rebuilt on next use)"
            rows.append([path.name, status, path])
    out.print(result_table(["entry", "status", "path"], rows, text=[1, 2]))
