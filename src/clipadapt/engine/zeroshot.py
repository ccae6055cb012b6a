"""Zero-shot classification with prompt engineering (CLIP paper, section 3.1.4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from clipadapt.config import option
from clipadapt.data.base import ClassificationDataset
from clipadapt.data.prompts import TemplateSet, resolve_template_sets
from clipadapt.engine.features import EncodedSplit, FeatureCache, encode_split
from clipadapt.engine.metrics import classification_metrics
from clipadapt.errors import ConfigError
from clipadapt.models.bundle import ClipBundle

SELECT_ON = ("val", "eval")


@dataclass
class ZeroShotConfig:
    templates: list[str] = option([], help="template sets, template files, or templates with {} "
                                           "(empty: the dataset's recommended sets)")
    select_on: str = option("val", help="split that picks the best template set: val (honest) or eval")
    text_batch_size: int = option(256, help="prompts per text-encoder batch")

    def __post_init__(self) -> None:
        if self.select_on not in SELECT_ON:
            raise ConfigError(f"unknown zeroshot.select_on '{self.select_on}'; valid choices: {', '.join(SELECT_ON)}")
        if self.text_batch_size <= 0:
            raise ConfigError(f"zeroshot.text_batch_size must be positive, got {self.text_batch_size}")


@torch.inference_mode()
def build_zero_shot_head(bundle: ClipBundle, classnames: Sequence[str], templates: TemplateSet | Sequence[str],
                         batch_size: int = 256) -> torch.Tensor:
    """(classes, dim) classifier: per class, the mean of the normalised prompt embeddings, renormalised."""
    if not classnames:
        raise ConfigError("cannot build a zero-shot classifier for an empty class list")
    template_set = templates if isinstance(templates, TemplateSet) else TemplateSet("custom", list(templates))
    prompts = [p for name in classnames for p in template_set.fill(name)]
    per_class = len(template_set.templates)
    embeddings = torch.cat([bundle.encode_text(prompts[i:i + batch_size]).float()
                            for i in range(0, len(prompts), batch_size)])
    embeddings = embeddings.view(len(classnames), per_class, -1).mean(dim=1)
    return torch.nn.functional.normalize(embeddings, dim=-1)


def zero_shot_logits(bundle: ClipBundle, image_features: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """logit_scale * cos(image, class) (+ SigLIP's bias)."""
    scale = bundle.logit_scale.detach().float().cpu()
    logits = scale * image_features.float().cpu() @ head.float().cpu().T
    bias = bundle.logit_bias
    return logits + bias.detach().float().cpu() if bias is not None else logits


@dataclass
class TemplateResult:
    template_set: TemplateSet
    metrics: dict
    selection_metrics: dict | None = None


@dataclass
class ZeroShotResult:
    split: str
    results: list[TemplateResult]
    best: str
    selected_on: str
    encoded: EncodedSplit
    logits: torch.Tensor  # of the best set, on the evaluated split
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    selection_encoded: EncodedSplit | None = None

    @property
    def best_result(self) -> TemplateResult:
        return next(r for r in self.results if r.template_set.name == self.best)


def evaluate_zero_shot(
    bundle: ClipBundle,
    dataset: ClassificationDataset,
    split: str = "test",
    templates: Sequence[str | TemplateSet] | None = None,
    batch_size: int = 64,
    num_workers: int = -1,
    strict: bool = False,
    select_on: str = "val",
    cache: FeatureCache | None = None,
    text_batch_size: int = 256,
) -> ZeroShotResult:
    """Evaluate one or more template sets; images are encoded once (and cached), text once per set.

    With several sets, the best is chosen on the validation split (``select_on="val"``) when the dataset has
    one and it is not the evaluated split, so the reported number is not selected on test data.
    """
    template_sets = resolve_template_sets(list(templates) if templates else dataset.templates)
    encoded = encode_split(bundle, dataset.split(split), batch_size, num_workers, strict, cache)
    selection_split = None
    if len(template_sets) > 1 and select_on == "val" and split != "val" and "val" in dataset.splits:
        selection_split = "val"
    selection_encoded = (encode_split(bundle, dataset.split("val"), batch_size, num_workers, strict, cache)
                         if selection_split else None)

    results, heads, logits_by_set = [], {}, {}
    for template_set in template_sets:
        head = build_zero_shot_head(bundle, dataset.classnames, template_set, text_batch_size)
        logits = zero_shot_logits(bundle, encoded.features, head)
        selection = None
        if selection_encoded is not None:
            selection = classification_metrics(zero_shot_logits(bundle, selection_encoded.features, head),
                                               selection_encoded.labels)
        results.append(TemplateResult(template_set, classification_metrics(logits, encoded.labels), selection))
        heads[template_set.name], logits_by_set[template_set.name] = head, logits

    def score(result: TemplateResult) -> tuple[float, float]:
        m = result.selection_metrics or result.metrics
        return m["acc1"], m["mean_per_class_acc"]

    best = max(results, key=score).template_set.name  # ties: the first listed set wins
    return ZeroShotResult(
        split=split, results=results, best=best, selected_on=selection_split or split, encoded=encoded,
        logits=logits_by_set[best], heads=heads, selection_encoded=selection_encoded,
    )
