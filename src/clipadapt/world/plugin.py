"""The world as a plug-in: it registers its model, datasets, caption data, template sets and named checkpoints
into the registries below it, and nothing below imports the world.

``clipadapt/__init__.py`` names ``register`` as a plug-in (``registry.add_plugin``); the registries load plug-ins
on their first lookup, so the world is there whenever a name is looked up, and ``import clipadapt`` stays light.
What is expensive (pretraining, generating images) happens only when a world name is used, as before.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE_SETS = {
    "world": ("phrasings of the built-in world (colour x shape classes)",
              ["a photo of a {}.", "a {}.", "there is a {}."]),
    "world-colour": ("built-in world, colour classes", ["a {} object.", "a {} shape."]),
    "world-shape": ("built-in world, shape classes", ["a {}.", "a photo of a {}."]),
}


def _manifest_fingerprint(name: str):
    def fingerprint(location: Path) -> str:
        from clipadapt.world.cache import weights_fingerprint

        return weights_fingerprint(name, location)

    return fingerprint


def _world_lm_dir() -> Path:
    from clipadapt.world.lm import world_lm_dir

    return world_lm_dir()


def _world_resnet_dir() -> Path:
    from clipadapt.world.resnet import world_resnet_dir

    return world_resnet_dir()


def _world_tiny(spec: str, **kwargs):
    """the built-in world CLIP, pretrained offline on generated scenes (cached; built on first use)"""
    from clipadapt.world.models import load_world_clip

    return load_world_clip(spec)


def _world_captions(config, argument):
    """Generated one- and two-object scenes with five captions each (built once, offline)."""
    from clipadapt.captioning.caption_files import coco_captions
    from clipadapt.world.caption_data import world_captions_dir

    dataset = coco_captions(config, str(world_captions_dir()))
    dataset.name = "world:captions"
    return dataset


def register() -> None:
    """Register every world name (called once, by the registries' plug-in loading)."""
    from clipadapt.captioning.data import register_caption_dataset
    from clipadapt.data.prompts import TEMPLATE_SETS as TEMPLATES
    from clipadapt.data.prompts import TemplateSet
    from clipadapt.models import MODELS
    from clipadapt.models.checkpoints import CHECKPOINTS, NamedCheckpoint
    from clipadapt.world import tasks  # noqa: F401  (registers world:TASK with the datasets)

    for name, (description, templates) in TEMPLATE_SETS.items():
        TEMPLATES.register(name, TemplateSet(name, templates, description), help=description)
    MODELS.register("world:tiny", _world_tiny)
    register_caption_dataset("world:captions")(_world_captions)
    CHECKPOINTS.register("world:tiny-lm", NamedCheckpoint("decoder", _world_lm_dir, _manifest_fingerprint(
        "world:tiny-lm")), help="the world's small GPT-2 caption decoder (built on first use)")
    CHECKPOINTS.register("world:tiny-resnet", NamedCheckpoint("classifier", _world_resnet_dir, _manifest_fingerprint(
        "world:tiny-resnet")), help="the world's ResNet image classifier for the baseline (built on first use)")
