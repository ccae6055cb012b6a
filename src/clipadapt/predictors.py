"""A finished run (or a model's zero-shot classifier) as something that maps pixels to class logits.

``predict`` and ``robustness`` use these, so they treat zero-shot runs, feature methods and pixel methods alike.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from clipadapt.data.transforms import ClipPreprocess
from clipadapt.errors import ClipAdaptError
from clipadapt.reports.results import CONFIG_FILE, METRICS_FILE


@dataclass
class Predictor:
    label: str
    classnames: list[str]
    preprocess: ClipPreprocess
    logits: Callable[[torch.Tensor], torch.Tensor]  # normalised pixels (N, 3, H, W) -> (N, classes)
    device: torch.device
    run_dir: Path | None = None
    dataset: object = None
    context: Callable[[], AbstractContextManager] = field(default=nullcontext)  # e.g. LoRA merged for evaluation

    @torch.no_grad()
    def probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        with self.context():
            return self.logits(pixels.to(self.device)).float().softmax(dim=-1).cpu()


def load_predictor(run_dir: str | Path, device: str | None = None) -> Predictor:
    """A training run with its trained weights, a zero-shot run with its selected template set, or an ensemble of
    runs (each member loaded from its own directory)."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ClipAdaptError(f"'{run_dir}' is not a run directory (no {CONFIG_FILE})")
    if not (run_dir / METRICS_FILE).is_file():
        raise ClipAdaptError(f"run '{run_dir}' is incomplete (no {METRICS_FILE}); resume or rerun it first")
    raw = yaml.safe_load(config_path.read_text()) or {}
    from clipadapt.ensemble import is_ensemble_config, load_ensemble_predictor

    if is_ensemble_config(raw):
        return load_ensemble_predictor(run_dir, raw, device)
    if raw.get("method"):
        from clipadapt.training import load_run

        _, dataset, method = load_run(run_dir, device)
        method.eval()
        return Predictor(f"{method.name} ({run_dir.name})", dataset.classnames, method.preprocess,
                         method.pixel_logits, method.bundle.device, run_dir, dataset, method.evaluating)
    return _zero_shot_run(run_dir, raw, device)


def _zero_shot_run(run_dir: Path, raw: dict, device: str | None) -> Predictor:
    import json

    from clipadapt.config import from_dict
    from clipadapt.data import load_dataset
    from clipadapt.runs import ZeroShotExperiment

    experiment = from_dict(ZeroShotExperiment, raw)
    record = json.loads((run_dir / METRICS_FILE).read_text())
    templates = record["templates"][record["best_template_set"]]["templates"]
    dataset = load_dataset(experiment.data)
    predictor = zero_shot_predictor(experiment.model.spec, dataset.classnames, templates,
                                    device or experiment.model.device,
                                    label=f"zeroshot ({run_dir.name})")
    predictor.run_dir, predictor.dataset = run_dir, dataset
    return predictor


def zero_shot_predictor(model: str, classnames: list[str], templates: list[str], device: str = "auto",
                        label: str | None = None) -> Predictor:
    from clipadapt.engine.zeroshot import build_zero_shot_head, zero_shot_logits
    from clipadapt.models import load_model, resolve_device

    bundle = load_model(model, device=resolve_device(device))
    head = build_zero_shot_head(bundle, classnames, templates)
    return Predictor(label or f"zeroshot ({model})", list(classnames), bundle.preprocess,
                     lambda pixels: zero_shot_logits(bundle, bundle.encode_image(pixels), head), bundle.device)
