"""``clipadapt demo``: an offline tour that needs no download.

It evaluates the built-in ``world:tiny`` CLIP (pretrained on first use, about 3 minutes on 2 CPU cores, then
cached) zero-shot on the world's tasks: the 48 colour x shape classes, the 16 pairs held out of pretraining
(compositional generalisation), and an ad-hoc colour label set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipadapt.data import DataConfig
from clipadapt.engine.zeroshot import ZeroShotConfig
from clipadapt.models.config import ModelConfig
from clipadapt.runs import RunConfig, RunOutput, ZeroShotExperiment, run_zero_shot

DEMO_MODEL = "world:tiny"


@dataclass
class DemoStep:
    name: str
    dataset: str
    templates: list[str]


DEMO_STEPS = [
    DemoStep("shapes-zeroshot", "world:shapes", ["simple", "world", "clip"]),
    DemoStep("novel-zeroshot", "world:shapes-novel", ["simple", "world"]),
    DemoStep("colour-zeroshot", "world:colour", ["a {} object.", "there is something {}."]),
]


def run_demo(out_dir: str | Path = "runs/demo", model: str = DEMO_MODEL) -> list[RunOutput]:
    outputs = []
    for step in DEMO_STEPS:
        experiment = ZeroShotExperiment(
            model=ModelConfig(spec=model, device="cpu"),
            data=DataConfig(dataset=step.dataset, split="test"),
            zeroshot=ZeroShotConfig(templates=step.templates),
            run=RunConfig(out=str(Path(out_dir) / step.name), overwrite=True),
        )
        outputs.append(run_zero_shot(experiment))
    return outputs
