"""Zero-shot runs: ``clipadapt zeroshot`` as a library call, writing a complete run directory (or nothing)."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipadapt.classification.artifacts import write_evaluation_artifacts
from clipadapt.config import to_dict
from clipadapt.data import DataConfig, load_dataset
from clipadapt.data.prompts import resolve_template_sets
from clipadapt.data.registry import resolved_data
from clipadapt.engine.cost import peak_memory_mb, reset_peak_memory
from clipadapt.engine.features import FeatureCache
from clipadapt.engine.records import CONFIG_FILE, build_metrics_record, write_metrics, write_skipped
from clipadapt.engine.rundir import RunConfig, RunOutput, check_run_dir, default_run_dir, save_config_dict
from clipadapt.engine.zeroshot import ZeroShotConfig, ZeroShotResult, choose_selection, evaluate_zero_shot
from clipadapt.io import staged_directory
from clipadapt.models import load_model, resolve_device
from clipadapt.models.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass
class ZeroShotExperiment:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    run: RunConfig = field(default_factory=RunConfig)


def run_zero_shot(experiment: ZeroShotExperiment) -> RunOutput:
    """Evaluate zero-shot classification and write a complete run directory (or nothing, on failure)."""
    cfg = dataclasses.replace(experiment, data=resolved_data(experiment.data))  # records the sampler it drew with
    run_dir = Path(cfg.run.out) if cfg.run.out else default_run_dir(cfg.model.spec, cfg.data.dataset, "zeroshot")
    check_run_dir(run_dir, cfg.run.overwrite)
    # a bad template fails before any heavy work, a refused split before the model loads
    explicit = resolve_template_sets(cfg.zeroshot.templates) if cfg.zeroshot.templates else None
    torch.manual_seed(cfg.run.seed)
    dataset = load_dataset(cfg.data)
    candidates = explicit or resolve_template_sets(dataset.templates)
    selection = choose_selection(dataset, cfg.data.split, cfg.zeroshot.select_on, len(candidates), cfg.data.seed)
    device = resolve_device(cfg.model.device)
    reset_peak_memory(device)
    bundle = load_model(cfg.model.spec, device=device, revision=cfg.model.revision,
                        trust_remote_code=cfg.model.trust_remote_code)
    start = time.perf_counter()
    with _autocast(device, cfg.model.precision):
        result = evaluate_zero_shot(
            bundle, dataset, cfg.data.split, candidates, cfg.data.batch_size, cfg.data.num_workers, cfg.data.strict,
            cfg.zeroshot.select_on, FeatureCache() if cfg.run.feature_cache else None, cfg.zeroshot.text_batch_size,
            cfg.data.seed, selection,
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
        best_template_set=result.best, selected_on=result.selected_on, selection=result.selection,
        oracle=result.oracle,
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


def _write_zero_shot_artifacts(stage: Path, dataset, result: ZeroShotResult, samples: int, seed: int) -> None:
    write_evaluation_artifacts(stage, dataset, result.split, result.encoded.positions, result.encoded.labels,
                               result.logits, f"zero-shot ({result.best})", samples, seed)
    if len(result.results) > 1:
        from clipadapt.reports import plots

        plots.plot_template_sets([r.template_set.name for r in result.results],
                                 [r.metrics["acc1"] for r in result.results], stage / "templates.png")


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


