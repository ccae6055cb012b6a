"""Zero-shot classification with prompt engineering (CLIP paper, section 3.1.4).

With several template sets, one is chosen, and never on the split that is reported (``zeroshot.select_on``):

* ``val`` (default): on the validation split; where the dataset has none (``data.val_fraction=0``), on a seeded,
  stratified tenth carved out of train (recorded); where there is no train split either (an image folder with only
  ``test/``), nothing is chosen: the a-priori default is reported (``selected_on: none``).
* ``none``: no choice; the a-priori default: the dataset's own set (the last one it recommends: ``flowers`` for
  flowers102, ``simple`` for an image folder) when it is a candidate, else the first set given.
* ``test``: the oracle, chosen on the evaluated test split itself; labelled "oracle (selected on test)" everywhere
  and refused by ``compare``: it is an upper bound, not a result.

Every candidate's numbers are recorded either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from clipadapt.config import option
from clipadapt.data.base import ClassificationDataset, Split, image_overlap, stratified_split
from clipadapt.data.prompts import TemplateSet, resolve_template_sets
from clipadapt.engine.features import EncodedSplit, FeatureCache, encode_split
from clipadapt.engine.metrics import classification_metrics
from clipadapt.engine.records import ORACLE_LABEL
from clipadapt.engine.selection import Selections
from clipadapt.errors import ConfigError
from clipadapt.models.bundle import ClipBundle

SELECT_ON = ("val", "none", "test")
CARVED_VAL_FRACTION = 0.1  # of train, per class, when the dataset has no validation split


@dataclass
class ZeroShotConfig:
    templates: list[str] = option([], help="template sets, template files, or templates with {} "
                                           "(empty: the dataset's recommended sets)")
    select_on: str = option("val", help="what picks the template set: val (validation, carved from train when "
                                        "there is none), none (the a-priori default), test (an oracle, labelled)")
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
    selection: dict = field(default_factory=dict)  # how the set was chosen (metrics.json "selection")

    @property
    def oracle(self) -> bool:
        return self.selected_on == "test"

    @property
    def best_result(self) -> TemplateResult:
        return next(r for r in self.results if r.template_set.name == self.best)


@dataclass
class Selection:
    """Where the template set was chosen: ``on`` is val, none or test; ``split`` what was read."""

    on: str
    split: Split | None = None
    carved_from: str | None = None
    reason: str = ""

    def record(self, default: str) -> dict:
        out: dict = {"on": self.on}
        if self.split is not None:
            out["images"] = len(self.split)
        if self.carved_from:
            out.update(carved_from=self.carved_from, fraction=CARVED_VAL_FRACTION)
        if self.on == "none":
            out["default"] = default
        if self.reason:
            out["reason"] = self.reason
        if self.on == "test":
            out["oracle"] = ORACLE_LABEL
        return out


def choose_selection(dataset: ClassificationDataset, split: str, select_on: str, candidates: int,
                     seed: int = 0) -> Selection:
    """What selects among ``candidates`` template sets when ``split`` is reported (see the module docstring)."""
    if select_on not in SELECT_ON:
        raise ConfigError(f"unknown zeroshot.select_on '{select_on}'; valid choices: {', '.join(SELECT_ON)}")
    evaluated = dataset.split(split)
    if candidates < 2:
        return Selection("none", reason="one template set: nothing to choose")
    if select_on == "none":
        return Selection("none", reason="zeroshot.select_on=none")
    if select_on == "test":
        if split != "test":
            raise ConfigError(f"zeroshot.select_on=test chooses on the evaluated test split, and data.split is "
                              f"'{split}'; valid choices with data.split={split}: val, none")
        return Selection("test", evaluated)
    for name, carve in (("val", False), ("train", True)):
        source = dataset.splits.get(name)
        if source is None or name == split:
            continue
        shared = image_overlap(evaluated, source)
        if shared:
            raise ConfigError(f"data.split '{split}' shares {shared.count} images with {name}, which chooses the "
                              f"template set ({shared.named()}); evaluate a held-out split "
                              f"({', '.join(dataset.held_out_splits()) or 'none'}) or pass --set "
                              f"zeroshot.select_on=none")
        if not carve:
            return Selection("val", source)
        _, held = stratified_split(source.labels, CARVED_VAL_FRACTION, seed)
        return Selection("val", source.subset(held, "val"), carved_from=name)
    return Selection("none", reason=f"no validation or training split besides '{split}'")


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
    seed: int = 0,
    selection: Selection | None = None,
) -> ZeroShotResult:
    """Evaluate one or more template sets; images are encoded once (and cached), text once per set.

    With several sets, the one reported is chosen as ``select_on`` says (module docstring): never on the reported
    split, except as the labelled test oracle. ``selection``: one ``choose_selection`` already made (run_zero_shot
    makes it before loading the model, so a refused split fails early)."""
    template_sets = resolve_template_sets(list(templates) if templates else dataset.templates)
    names = [t.name for t in template_sets]
    default = dataset.default_template_set if dataset.default_template_set in names else names[0]
    selection = selection or choose_selection(dataset, split, select_on, len(template_sets), seed)
    encoded = encode_split(bundle, dataset.split(split), batch_size, num_workers, strict, cache)
    selection_encoded = None
    if selection.on == "val":
        selection_encoded = encode_split(bundle, selection.split, batch_size, num_workers, strict, cache)

    results, heads, logits_by_set = [], {}, {}
    for template_set in template_sets:
        head = build_zero_shot_head(bundle, dataset.classnames, template_set, text_batch_size)
        logits = zero_shot_logits(bundle, encoded.features, head)
        metrics = classification_metrics(logits, encoded.labels)
        chosen_by = None
        if selection_encoded is not None:
            chosen_by = classification_metrics(zero_shot_logits(bundle, selection_encoded.features, head),
                                               selection_encoded.labels)
        elif selection.on == "test":
            chosen_by = metrics
        results.append(TemplateResult(template_set, metrics, chosen_by))
        heads[template_set.name], logits_by_set[template_set.name] = head, logits

    def score(result: TemplateResult) -> tuple[float, float]:
        return result.selection_metrics["acc1"], result.selection_metrics["mean_per_class_acc"]

    log = Selections()  # the record of the choice is what was chosen here, on which split, among how many
    best = default
    if selection.on != "none":  # ties: the first listed set wins
        prefix = "val" if selection.on == "val" else "test"
        best = log.choose("template_set", results, score, split=selection.on, images=len(selection.split),
                          value=lambda r: r.template_set.name,
                          scores=lambda r: {f"{prefix}_acc": r.selection_metrics["acc1"],
                                            f"{prefix}_mean_per_class_acc": r.selection_metrics[
                                                "mean_per_class_acc"]}).template_set.name
    return ZeroShotResult(
        split=split, results=results, best=best, selected_on=selection.on, encoded=encoded,
        logits=logits_by_set[best], heads=heads, selection_encoded=selection_encoded,
        selection=log.record(**selection.record(default)),
    )
