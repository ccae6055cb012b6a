"""Model section of every experiment config."""

from __future__ import annotations

from dataclasses import dataclass

from clipadapt.config import option
from clipadapt.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class ModelConfig:
    spec: str = option("random:tiny", help="a name from `clipadapt models`, a hub id, a folder, open_clip:ARCH/TAG")
    device: str = option("auto", help="auto, cpu, cuda, cuda:N or mps")
    precision: str = option("fp32", help="inference precision: fp32, or bf16/fp16 autocast on GPU")
    revision: str | None = option(None, help="hub revision (branch, tag or commit)")
    trust_remote_code: bool = option(False, help="allow custom code from the hub (off unless you trust it)")

    def __post_init__(self) -> None:
        if not self.spec:
            raise ConfigError("model.spec is empty")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision '{self.precision}'; valid choices: {', '.join(PRECISIONS)}")
