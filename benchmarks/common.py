"""What every benchmark script shares: a scratch workspace (its own $CLIPADAPT_HOME and a random ViT-B/32-sized
transformers CLIP) and the header every result file starts with (date, machine, torch), so results from different
scripts name their machine the same way."""

from __future__ import annotations

import os
import platform
import tempfile
from datetime import date
from pathlib import Path

import torch


def workspace(name: str, preset: str | None = "vit-b-32") -> tuple[Path, Path | None]:
    """``(work, model_dir)``: a fresh temporary folder that is also $CLIPADAPT_HOME's parent (caches stay inside it),
    and a random CLIP of ``preset``'s geometry saved there (``models.random_init.PRESETS``; None: no model)."""
    from clipadapt.models.random_init import save_random_clip

    work = Path(tempfile.mkdtemp(prefix=f"clipadapt-bench-{name}-"))
    os.environ["CLIPADAPT_HOME"] = str(work / "home")
    return work, save_random_clip(work / preset, preset=preset) if preset else None


def header(**fields) -> dict:
    """The first fields of a result file: date, machine, torch version and threads, then ``fields``."""
    return {"date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform(terse=True)}",
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), **fields}
