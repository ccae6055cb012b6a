"""``clipadapt demo``: an offline tour that needs no download.

Until the built-in world model exists, the demo evaluates a randomly initialised CLIP on scikit-learn's
real handwritten digits. Its accuracy is chance by construction; the point is the whole pipeline (dataset,
prompt ensembles, feature cache, metrics, plots, run directory) running offline in seconds.
"""

from __future__ import annotations

from pathlib import Path

from clipadapt.data import DataConfig
from clipadapt.engine.zeroshot import ZeroShotConfig
from clipadapt.models.config import ModelConfig
from clipadapt.runs import RunConfig, RunOutput, ZeroShotExperiment, run_zero_shot


def run_demo(out_dir: str | Path = "runs/demo") -> RunOutput:
    experiment = ZeroShotExperiment(
        model=ModelConfig(spec="random:tiny", device="cpu"),
        data=DataConfig(dataset="digits", split="test"),
        zeroshot=ZeroShotConfig(templates=["simple", "digits", "clip", "a handwritten digit {}."]),
        run=RunConfig(out=str(Path(out_dir) / "digits-zeroshot"), overwrite=True),
    )
    return run_zero_shot(experiment)
