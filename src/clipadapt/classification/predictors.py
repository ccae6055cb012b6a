"""A finished run (or a model's zero-shot classifier) as something that maps pixels to class logits.

``predict`` and ``robustness`` use these, so they treat zero-shot runs, feature methods, pixel methods and ensembles
alike. An ensemble's run directory (written by ``experiments.ensemble``) names its members and weights in
``config.yaml``; its predictor loads each member from its own directory and averages their class probabilities.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipadapt.classification.evaluation import load_run
from clipadapt.classification.zeroshot import ZeroShotExperiment
from clipadapt.config import from_dict, option
from clipadapt.data import DataConfig, load_dataset
from clipadapt.data.prompts import TemplateSet
from clipadapt.data.transforms import ClipPreprocess
from clipadapt.engine.records import METRICS_FILE, ORACLE_LABEL, oracle_source
from clipadapt.engine.rundir import RunConfig, read_run_config
from clipadapt.engine.zeroshot import build_zero_shot_head, zero_shot_logits
from clipadapt.errors import ClipAdaptError
from clipadapt.models import load_model, resolve_device
from clipadapt.models.config import ModelConfig


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
    bundle: object = None  # a zero-shot predictor's model: new class names or templates reuse it (the app)

    @torch.no_grad()
    def probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        with self.context():
            return self.logits(pixels.to(self.device)).float().softmax(dim=-1).cpu()


def load_predictor(run_dir: str | Path, device: str | None = None) -> Predictor:
    """A training run with its trained weights, a zero-shot run with its selected template set, or an ensemble of
    runs (each member loaded from its own directory). An oracle's label says so (``ORACLE_LABEL``), in tables and
    figures alike."""
    run_dir = Path(run_dir)
    raw = read_run_config(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise ClipAdaptError(f"run '{run_dir}' is incomplete (no {METRICS_FILE}); resume or rerun it first")
    predictor = _load(run_dir, raw, device)
    if oracle_source(run_dir) is not None:
        predictor.label = f"{predictor.label} {ORACLE_LABEL}"
    return predictor


def _load(run_dir: Path, raw: dict, device: str | None) -> Predictor:
    if "stream" in raw:
        raise ClipAdaptError(f"'{run_dir}' is a test-time run ({raw['stream'].get('method')}): it adapted on its "
                             f"test stream and kept no classifier to load; use its predictions.csv, or the "
                             f"zero-shot run of the same model")
    if is_ensemble_config(raw):
        return load_ensemble_predictor(run_dir, raw, device)
    if raw.get("method"):
        _, dataset, method = load_run(run_dir, device)
        method.eval()
        return Predictor(f"{method.name} ({run_dir.name})", dataset.classnames, method.preprocess,
                         method.pixel_logits, method.bundle.device, run_dir, dataset, method.evaluating)
    return _zero_shot_run(run_dir, raw, device)


def _zero_shot_run(run_dir: Path, raw: dict, device: str | None) -> Predictor:
    experiment = from_dict(ZeroShotExperiment, raw)
    record = json.loads((run_dir / METRICS_FILE).read_text())
    templates = record["templates"][record["best_template_set"]]["templates"]
    dataset = load_dataset(experiment.data)
    predictor = zero_shot_predictor(experiment.model.spec, dataset.classnames, templates,
                                    device or experiment.model.device,
                                    label=f"zeroshot ({run_dir.name})")
    predictor.run_dir, predictor.dataset = run_dir, dataset
    return predictor


def zero_shot_predictor(model: str, classnames: list[str], templates: TemplateSet | list[str], device: str = "auto",
                        label: str | None = None) -> Predictor:

    bundle = load_model(model, device=resolve_device(device))
    head = build_zero_shot_head(bundle, classnames, templates)
    return zero_shot_with(bundle, head, classnames, label or f"zeroshot ({model})")


def zero_shot_with(bundle, head: torch.Tensor, classnames: list[str], label: str) -> Predictor:
    """The zero-shot classifier of an already loaded model and a head from ``build_zero_shot_head`` (cloned: the head
    is built in inference mode, and a saliency map differentiates through it)."""
    head = head.clone()
    return Predictor(label, list(classnames), bundle.preprocess,
                     lambda pixels: zero_shot_logits(bundle, bundle.encode_image(pixels), head), bundle.device,
                     bundle=bundle)


@dataclass
class EnsembleConfig:
    runs: list[str] = option([], help="member run directories")
    weights: list[float] = option([], help="weight of each member (sum 1)")
    mode: str = option("uniform", help="uniform, or val (weights searched on the validation split)")


@dataclass
class EnsembleExperiment:
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)


def is_ensemble_config(raw: dict) -> bool:
    return isinstance(raw, dict) and "ensemble" in raw


def load_ensemble_predictor(run_dir: Path, raw: dict, device: str | None):
    """A Predictor whose probabilities are the weighted mean of its members' (each loaded from its run)."""
    experiment = from_dict(EnsembleExperiment, raw)
    members = [load_predictor(Path(r), device) for r in experiment.ensemble.runs]
    weights = torch.tensor(experiment.ensemble.weights, dtype=torch.float64)
    first = members[0]

    def logits(pixels: torch.Tensor) -> torch.Tensor:
        mixed = sum(w * m.logits(pixels.to(m.device)).double().softmax(-1).cpu()
                    for w, m in zip(weights, members, strict=True))
        return mixed.clamp_min(1e-30).log().float()

    @contextmanager
    def context():
        with ExitStack() as stack:
            for member in members:
                stack.enter_context(member.context())
            yield

    return Predictor(f"ensemble ({run_dir.name})", first.classnames, first.preprocess, logits, first.device,
                     run_dir, first.dataset, context)
