"""Experiment tracking (``train.log_with``) through Accelerate's trackers: no logging code of ours.

``--set train.log_with=tensorboard`` writes TensorBoard event files into ``RUN/logs/``: per optimizer step the
training loss, accuracy and every parameter group's learning rate (``step/...``), per epoch the history row
(``epoch/...``: train and validation loss and accuracy, or the captioning task's fields), all on the global step axis,
and the run's saved config.yaml as hyperparameters, so a curve is traceable to its config. TensorBoard is an
optional extra (``pip install 'clipadapt[tensorboard]'``); without it the setting is refused before anything is
written. ``tensorboard --logdir RUN/logs`` shows the curves; a resumed run continues the step axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipadapt.errors import ConfigError

TRACKERS = ("none", "tensorboard")
LOG_DIR = "logs"  # the tracker's project name: Accelerate writes under project_dir / LOG_DIR


def check_tracker(name: str) -> None:
    """Refuse an unknown tracker or one whose package is missing (one line, nothing written yet)."""
    if name not in TRACKERS:
        raise ConfigError(f"unknown train.log_with '{name}'; valid choices: {', '.join(TRACKERS)}")
    if name == "tensorboard":
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise ConfigError("train.log_with=tensorboard needs the tensorboard package: "
                              "pip install 'clipadapt[tensorboard]'")


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """``{"train.lr": 0.001, ...}``: the nested config flattened to the scalar types TensorBoard's hparams take."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:  # lists, None: shown as text
            flat[name] = str(value)
    return flat


class Tracking:
    """What the engine logs, when the run's Accelerator was made with a tracker (``make_accelerator`` gives it one
    for ``train.log_with`` and a run directory, its project directory)."""

    def __init__(self, accelerator) -> None:
        self.accelerator = accelerator
        self.enabled = bool(accelerator.log_with)

    def start(self) -> None:
        if not self.enabled:
            return
        import yaml

        from clipadapt.engine.records import CONFIG_FILE

        config = Path(self.accelerator.project_dir) / CONFIG_FILE
        hparams = flat_hparams(yaml.safe_load(config.read_text()) or {}) if config.exists() else {}
        self.accelerator.init_trackers(LOG_DIR, config=hparams)

    def step(self, step: int, loss: float, accuracy: float, optimizer) -> None:
        values = {"step/train_loss": loss, "step/train_acc": accuracy}
        for i, group in enumerate(optimizer.param_groups):
            values[f"step/lr/{group.get('name', i)}"] = group["lr"]
        self.accelerator.log(values, step=step)

    def epoch(self, step: int, row: dict[str, Any]) -> None:
        if self.enabled:
            self.accelerator.log({f"epoch/{k}": v for k, v in row.items() if isinstance(v, (int, float))}, step=step)

    def __enter__(self) -> Tracking:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        """The event files are flushed and closed also when training is interrupted."""
        if self.enabled:
            self.accelerator.end_training()
