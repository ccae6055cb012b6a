"""The run's Accelerator: device placement, mixed precision and processes, the same for every task."""

from __future__ import annotations

from pathlib import Path

import torch


def mixed_precision(precision: str, device: torch.device) -> str:
    """Accelerate's mixed_precision: bf16 autocast where the device supports it, never on CPU by default."""
    if precision == "auto":
        supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if supported else "no"
    return {"fp32": "no"}.get(precision, precision)


def make_accelerator(device: torch.device, precision: str, log_with: str = "none", run_dir: Path | None = None):
    """The run's Accelerator; ``log_with`` a tracker (train.log_with) writing under ``run_dir/logs``."""
    from accelerate import Accelerator

    tracking = {"log_with": log_with, "project_dir": str(run_dir)} if log_with != "none" and run_dir else {}
    settings = {"cpu": device.type == "cpu", "mixed_precision": mixed_precision(precision, device), **tracking}
    try:
        return Accelerator(**settings)
    except ValueError as e:
        # Accelerate keeps one AcceleratorState per process and refuses a second Accelerator with another
        # precision; runs in one process (a sweep over train.precision, a notebook) are sequential, so the next
        # run starts a fresh state (the process group, in PartialState, is kept)
        if "already been initialized" not in str(e):
            raise
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()
        return Accelerator(**settings)
