"""Experiments that produce a run directory. The CLI builds a config and calls one of these."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipadapt.config import option, save_config, to_dict
from clipadapt.data import DataConfig, load_dataset
from clipadapt.data.prompts import resolve_template_sets
from clipadapt.engine.cost import peak_memory_mb, reset_peak_memory
from clipadapt.engine.features import FeatureCache
from clipadapt.engine.metrics import confusion, per_class_rows
from clipadapt.engine.zeroshot import ZeroShotConfig, ZeroShotResult, evaluate_zero_shot
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.io import staged_directory
from clipadapt.models import load_model, resolve_device
from clipadapt.models.config import ModelConfig
from clipadapt.reports.results import (
    CONFIG_FILE,
    PER_CLASS_FILE,
    build_metrics_record,
    write_csv,
    write_metrics,
    write_skipped,
)

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    out: str | None = option(None, help="run directory (default: runs/<dataset>-<model>-<method>)")
    overwrite: bool = option(False, help="replace an existing run directory")
    seed: int = option(0, help="global seed")
    feature_cache: bool = option(True, help="reuse image features cached under $CLIPADAPT_HOME/features")
    samples: int = option(16, help="images in the sample prediction grid")
    label: str | None = option(None, help="row name in reports (default: the method; sweeps name their cells)")

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ConfigError(f"run.samples must be >= 0, got {self.samples}")


@dataclass
class ZeroShotExperiment:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class RunOutput:
    run_dir: Path
    record: dict[str, Any]
    result: Any = None
    main_process: bool = True  # False in the other processes of a multi-process run (they print nothing)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()[:60] or "run"


def default_run_dir(model: str, dataset: str, method: str) -> Path:
    return Path("runs") / f"{slug(dataset)}-{slug(Path(model).name if Path(model).is_dir() else model)}-{method}"


def check_run_dir(path: Path, overwrite: bool, resumable: bool = False) -> None:
    """Refuse to replace an existing run directory unless asked to."""
    if path.exists() and not overwrite:
        choices = "--resume to continue it, --overwrite to replace it," if resumable else "--overwrite"
        raise ClipAdaptError(f"run directory '{path}' already exists; pass {choices} or choose another --out")


def run_zero_shot(experiment: ZeroShotExperiment) -> RunOutput:
    """Evaluate zero-shot classification and write a complete run directory (or nothing, on failure)."""
    cfg = experiment
    run_dir = Path(cfg.run.out) if cfg.run.out else default_run_dir(cfg.model.spec, cfg.data.dataset, "zeroshot")
    check_run_dir(run_dir, cfg.run.overwrite)
    if cfg.zeroshot.templates:
        resolve_template_sets(cfg.zeroshot.templates)  # fail on a bad template before any heavy work
    torch.manual_seed(cfg.run.seed)
    dataset = load_dataset(cfg.data)
    dataset.split(cfg.data.split)
    device = resolve_device(cfg.model.device)
    reset_peak_memory(device)
    bundle = load_model(cfg.model.spec, device=device, revision=cfg.model.revision,
                        trust_remote_code=cfg.model.trust_remote_code)
    start = time.perf_counter()
    with _autocast(device, cfg.model.precision):
        result = evaluate_zero_shot(
            bundle, dataset, cfg.data.split, cfg.zeroshot.templates or None, cfg.data.batch_size,
            cfg.data.num_workers, cfg.data.strict, cfg.zeroshot.select_on,
            FeatureCache() if cfg.run.feature_cache else None, cfg.zeroshot.text_batch_size,
        )
    elapsed = time.perf_counter() - start
    resolved = to_dict(cfg)
    resolved["zeroshot"]["templates"] = list(cfg.zeroshot.templates) or list(dataset.templates)
    resolved["run"]["out"] = str(run_dir)
    skipped = [(result.split, s.item, s.reason) for s in result.encoded.skipped]
    if result.selection_encoded is not None:
        skipped += [("val", s.item, s.reason) for s in result.selection_encoded.skipped]
    record = build_metrics_record(
        method="zeroshot", model=cfg.model.spec, dataset=dataset.name, split=result.split,
        metrics=result.best_result.metrics,
        params={"trainable": 0, "total": bundle.num_parameters(), "trainable_pct": 0.0},
        cost={"eval_time_s": round(elapsed, 3), "encode_time_s": round(result.encoded.encode_time_s, 3),
              "eval_images_per_s": round(result.encoded.images_per_s, 2),
              "features_from_cache": result.encoded.from_cache,
              "peak_mem_mb": round(peak_memory_mb(device), 1)},
        seed=cfg.run.seed, config=resolved, device=device,
        templates={r.template_set.name: {"templates": r.template_set.as_strings(), "metrics": r.metrics,
                                         "selection_metrics": r.selection_metrics} for r in result.results},
        best_template_set=result.best, selected_on=result.selected_on,
        num_classes=dataset.num_classes,
        skipped_images={"count": len(skipped), "file": "skipped_images.txt" if skipped else None},
    )
    with staged_directory(run_dir, overwrite=cfg.run.overwrite) as stage:
        save_config_dict(resolved, stage / CONFIG_FILE)
        write_metrics(stage, record)
        _write_zero_shot_artifacts(stage, dataset, result, cfg.run.samples, cfg.run.seed)
        write_skipped(stage, skipped)
    log.info("wrote %s", run_dir)
    return RunOutput(run_dir, record, result)


def save_config_dict(data: dict, path: Path) -> None:
    import yaml

    from clipadapt.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def start_run_dir(accelerator, run_dir: Path, resolved: dict, resume: bool) -> None:
    """A fresh run directory holding config.yaml (kept as it is when resuming), written by the main process once
    every process has checked the directory."""
    import shutil

    accelerator.wait_for_everyone()
    if accelerator.is_main_process and not resume:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        save_config_dict(resolved, run_dir / CONFIG_FILE)
    accelerator.wait_for_everyone()


def _write_zero_shot_artifacts(stage: Path, dataset, result: ZeroShotResult, samples: int, seed: int) -> None:
    write_evaluation_artifacts(stage, dataset, result.split, result.encoded.positions, result.encoded.labels,
                               result.logits, f"zero-shot ({result.best})", samples, seed)
    if len(result.results) > 1:
        from clipadapt.reports import plots

        plots.plot_template_sets([r.template_set.name for r in result.results],
                                 [r.metrics["acc1"] for r in result.results], stage / "templates.png")


def write_evaluation_artifacts(run_dir: Path, dataset, split: str, positions: np.ndarray, labels: np.ndarray,
                               logits: torch.Tensor, title: str, samples: int, seed: int) -> None:
    """per_class.csv, confusion.png and predictions.png of one evaluation (zero-shot and trained runs alike)."""
    from clipadapt.reports import plots  # matplotlib only where a figure is drawn

    write_csv(run_dir / PER_CLASS_FILE, per_class_rows(logits, labels, dataset.classnames))
    plots.plot_confusion(confusion(logits, labels, dataset.num_classes), dataset.classnames,
                         run_dir / "confusion.png", title=f"{title} on {dataset.name} {split}")
    write_prediction_grid(run_dir / "predictions.png", dataset, split, positions, labels, logits, samples, seed,
                          title=title)


def write_prediction_grid(path: Path, dataset, split_name: str, positions: np.ndarray, labels: np.ndarray,
                          logits: torch.Tensor, samples: int, seed: int, title: str = "") -> None:
    if samples == 0 or len(positions) == 0:
        return
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(positions), size=min(samples, len(positions)), replace=False))
    split = dataset.split(split_name)
    probs = logits[torch.as_tensor(chosen)].softmax(dim=-1)
    k = min(5, dataset.num_classes)
    top = probs.topk(k, dim=-1)
    images = [split.load(int(positions[i])) for i in chosen]
    from clipadapt.reports import plots

    plots.plot_prediction_grid(
        images, [dataset.classnames[int(labels[i])] for i in chosen],
        [[dataset.classnames[j] for j in row] for row in top.indices.tolist()],
        top.values.tolist(), path, title=title,
    )


class _autocast:
    """bf16/fp16 autocast on accelerators; a no-op for fp32 and on CPU."""

    def __init__(self, device: torch.device, precision: str) -> None:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.enabled = dtype is not None and device.type in ("cuda", "mps")
        self.ctx = torch.autocast(device.type, dtype=dtype) if self.enabled else None

    def __enter__(self):
        return self.ctx.__enter__() if self.ctx else None

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc) if self.ctx else False


__all__ = ["RunConfig", "RunOutput", "ZeroShotExperiment", "run_zero_shot", "save_config"]
