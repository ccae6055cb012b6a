"""Classification tasks of the world, registered as datasets: ``world:shapes``, ``world:shape``,
``world:colour``, ``world:shapes-shifted`` and ``world:shapes-novel``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from clipadapt.data.base import ClassificationDataset, InMemorySource, Split
from clipadapt.data.registry import DataConfig, register_dataset
from clipadapt.errors import UnknownNameError
from clipadapt.world.scenes import (
    COLOUR_NAMES,
    SHAPE_NAMES,
    SHIFTED_BACKGROUNDS,
    SceneSpec,
    generate_images,
    held_out_combinations,
)

TASK_VERSION = "1"
SPLIT_SEEDS = {"train": 101, "val": 102, "test": 103}  # pretraining uses other streams
PER_CLASS = {"train": 30, "val": 10, "test": 20}


@dataclass(frozen=True)
class WorldTask:
    name: str
    description: str
    label: str  # "combination", "colour" or "shape"
    templates: tuple[str, ...]
    novel_only: bool = False
    shifted: bool = False
    # the one hand-crafted prompt, as CoOp has one per dataset (train.head_templates=coop): "a photo of a {}." as
    # for most of CoOp's datasets, the colour task's own phrasing for colours
    coop_template: str = "simple"

    def classes(self) -> list[tuple[str, str]]:
        """The label space: all 48 pairs, also for the novel task (it must beat every seen pair)."""
        return [(c, s) for c in COLOUR_NAMES for s in SHAPE_NAMES]

    def combinations(self) -> list[tuple[str, str]]:
        """The pairs that appear in the images."""
        held = held_out_combinations()
        return [p for p in self.classes() if p in held] if self.novel_only else self.classes()

    def classnames(self) -> list[str]:
        if self.label == "colour":
            return list(COLOUR_NAMES)
        if self.label == "shape":
            return list(SHAPE_NAMES)
        return [f"{c} {s}" for c, s in self.classes()]


WORLD_TASKS = {
    "shapes": WorldTask("shapes", "48 colour x shape classes, one object per image", "combination",
                        ("simple", "world")),
    "shape": WorldTask("shape", "6 shapes, any colour", "shape", ("simple", "world-shape")),
    "colour": WorldTask("colour", "8 colours, any shape", "colour", ("simple", "world-colour"),
                        coop_template="a {} object."),
    "shapes-shifted": WorldTask("shapes-shifted", "the 48 classes on unseen backgrounds with pixel noise",
                                "combination", ("simple", "world"), shifted=True),
    "shapes-novel": WorldTask("shapes-novel", "images of the 16 pairs held out of pretraining, labelled among all 48",
                              "combination", ("simple", "world"), novel_only=True),
}


@lru_cache(maxsize=32)
def _split_images(task_name: str, split: str, per_class: int, resolution: int):
    task = WORLD_TASKS[task_name]
    pairs = task.combinations()
    forced = [pairs[i % len(pairs)] for i in range(per_class * len(pairs))]
    spec = SceneSpec(resolution=resolution, min_objects=1, max_objects=1,
                     backgrounds=SHIFTED_BACKGROUNDS if task.shifted else SceneSpec().backgrounds,
                     pixel_noise=18.0 if task.shifted else 0.0)
    seed = SPLIT_SEEDS[split] + (1000 if task.shifted else 0) + (2000 if task.novel_only else 0)
    images, scenes = generate_images(spec, seed, len(forced), combinations=forced)
    index = {name: i for i, name in enumerate(task.classnames())}
    key = {"colour": lambda o: o.colour, "shape": lambda o: o.shape}.get(task.label, lambda o: f"{o.colour} {o.shape}")
    labels = [index[key(s.objects[0])] for s in scenes]
    return images, np.asarray(labels, dtype=np.int64)


def build_world_task(name: str, resolution: int = 64) -> ClassificationDataset:
    if name not in WORLD_TASKS:
        raise UnknownNameError(f"unknown world task '{name}'; valid choices: "
                               f"{', '.join('world:' + n for n in WORLD_TASKS)}")
    task = WORLD_TASKS[name]
    splits = {}
    for split, per_class in PER_CLASS.items():  # per_class images of every pair that appears
        images, labels = _split_images(name, split, per_class, resolution)
        source = InMemorySource(list(images), labels, name=f"world:{name}/{split}", version=TASK_VERSION)
        splits[split] = Split(source, np.arange(len(labels)), split)
    return ClassificationDataset(
        name=f"world:{name}", classnames=task.classnames(), splits=splits, templates=list(task.templates),
        coop_templates=task.coop_template, info={"description": task.description, "resolution": resolution},
    )


@register_dataset("world", takes_argument=True, usage="world:TASK",
                  help="generated offline tasks: " + ", ".join(f"world:{n}" for n in WORLD_TASKS))
def load_world_dataset(config: DataConfig, argument: str | None) -> ClassificationDataset:
    return build_world_task(str(argument))
