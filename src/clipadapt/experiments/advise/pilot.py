"""The pilot of ``clipadapt advise``: the cheap methods scored on the user's own K-shot images, in seconds.

Zero-shot, the linear probe, GDA and Tip-Adapter are scored by cross-validation over the images a run of
``clipadapt train`` would train and validate on: the same dataset, K, seed and sampler (``data.sampler`` resolved by
``registry.resolve_sampler``, validation shots as the methods' reference, ``Method.validation_shots``), drawn by the
same ``load_dataset``. The test split is never read: only train and val are encoded.

**Features.** Train and val are encoded once, clean, through the feature cache (``engine.features.encode_split``: the
entries a later ``clipadapt train`` of a feature method reads again). The pilot's GDA and Tip-Adapter are fitted on
these clean features, unlike their recipes, which estimate their statistics (GDA) or cache keys (Tip-Adapter) over 10
augmented views per training image (``features.views``, methods/gda.py and methods/tip_adapter.py): encoding 10 views
costs 10 times the encoding of the whole pilot, and the pilot exists to be cheap. Clean features make the pilot's
GDA and Tip-Adapter a little weaker than their full recipes (views add within-class scatter, which GDA's covariance
needs most at 1 shot: there, without views, it returns zero-shot exactly).

**Folds.** Stratified k-fold over train + val: each class's images, shuffled with the seed, are dealt round the
folds, starting where the previous class stopped (so remainders spread). Where the largest class has fewer images
than ``folds``, there are as many folds as it has images, and a class with fewer images than folds has one held out
in as many folds as it has images: leave-one-out per class (CoOp's sampler at 1 shot gives 1 train + 1 val image per
class: 2 folds). Every image is held out exactly once.

**Fitting and selection inside a fold.** Each method is fitted through its own code, the code ``clipadapt train``
runs: ``Method.fit`` with a ``Trainer`` whose train and val splits are the fold's (the linear probe's C sweep,
``fit_probe_head``; GDA's ``state_from_features`` and alpha search; Tip-Adapter's cache and alpha-beta search). What a
method chooses on validation it chooses on an inner split of the fold's training part, never on the held-out part:
per class, the share of images the run itself validates on (``val / (train + val)`` of the drawn data; at least one
image where the class has two or more in the fold), the rest fitting. So the fitted part has about the K images per
class of the real run and the choice is made as the real run makes it, on fewer images. Where the fold's training part
has no class with two images (1 shot under CoOp's sampler), nothing can be validated and each method takes its
default values: GDA alpha = 1 (``gda.alpha``), Tip-Adapter alpha = beta = 1 (``tip_adapter.alpha``, ``.beta``), the
linear probe C = 1 (scikit-learn's default, through the same ``sweep_logistic_regression``, told to keep it).

**Scores.** A method's accuracy is the share of all train + val images predicted right when held out (the pooled
held-out predictions, a fraction); ``folds`` lists each fold's accuracy. Zero-shot fits nothing: its score is its
accuracy on the held-out images, from the head the dataset's CoOp prompt builds (``train.head_templates=coop``,
``head_templates``), the zero-shot classifier GDA and Tip-Adapter add to, and the one the few-shot papers report.
Interval: the wider of the fold spread (mean +/- 1.96 std / sqrt(folds), which is 0 when every fold scores the same:
no evidence of certainty with 2 folds) and the 95% Wilson score interval of the pooled held-out predictions (the
finite number of held-out images), clipped to [0, 1].
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from clipadapt.classification.experiment import build_method, head_templates, load_experiment
from clipadapt.data import load_dataset
from clipadapt.data.base import ClassificationDataset, Split
from clipadapt.data.registry import resolved_data
from clipadapt.engine.features import EncodedSplit, FeatureCache, encode_images, encode_split
from clipadapt.engine.inputs import TrainingData
from clipadapt.engine.trainer import DATASET_PROMPT, Trainer, make_accelerator
from clipadapt.errors import ClipAdaptError, DataError
from clipadapt.methods import METHODS
from clipadapt.methods.heads import build_head
from clipadapt.methods.linear_probe import LinearProbeConfig, sweep_logistic_regression
from clipadapt.models import load_model, resolve_device

PILOT_METHODS = ("zeroshot", "linear-probe", "gda", "tip-adapter")
Z95 = 1.959964  # the normal quantile of a two-sided 95% interval
DEFAULT_C_EXPONENT = 0.0  # C = 1, scikit-learn's default, where a fold has nothing to validate on
# the smallest search that tries C = 1 (3 fits: 10^-1, 10^0, 10^1); its choice is DEFAULT_C_EXPONENT, not a score
NO_VALIDATION_PROBE = LinearProbeConfig(c_min_exp=0, c_max_exp=1, steps_per_decade=1)


@dataclass
class PilotScore:
    method: str
    accuracy: float  # held-out accuracy over every train + val image (fraction)
    low: float
    high: float
    folds: list[float]  # each fold's held-out accuracy
    fit_seconds: float = 0.0  # mean seconds to fit one fold (selection included; 0 for zero-shot)
    fit_images: float = 0.0  # mean images it was fitted on per fold (the inner fit part)
    selection: str = ""  # what the method chose inside the folds, and on what


@dataclass
class Pilot:
    model: str
    dataset: str
    shots: int
    seed: int
    classes: int
    images: int  # train + val images scored
    folds: int
    scheme: str
    scores: dict[str, PilotScore]
    seconds: float  # the whole pilot, model loading included
    encode_seconds: float  # wall time of encoding train and val here (about 0 when the cache had them)
    per_image_encode_seconds: float  # their original encoding time per image (decoding included), cached or not,
    # less the image loader's start (loader_start_seconds) of each split
    loader_start_seconds: float = 0.0  # starting the image loader and encoding its first image, measured here
    setup_seconds: float = 0.0  # drawing the data, loading the model, building the zero-shot head (a run does too)
    train_images: int = 0
    val_images: int = 0
    sampler: str = ""
    splits_read: list[str] = field(default_factory=list)  # the dataset's splits the pilot encoded
    test_images: int = 0  # the test split's size, counted, never read: what a full run evaluates on


class PooledImages:
    """The images of several splits as one source (train, then val): what the folds index."""

    def __init__(self, splits: Sequence[Split]) -> None:
        self.splits = list(splits)
        self.offsets = np.cumsum([0] + [len(s) for s in self.splits])
        self.labels = np.concatenate([s.labels for s in self.splits]) if self.splits else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[Split, int]:
        which = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.splits[which], index - int(self.offsets[which])

    def load(self, index: int):
        split, position = self._locate(index)
        return split.load(position)

    def describe(self, index: int) -> str:
        split, position = self._locate(index)
        return split.describe(position)

    def fingerprint(self) -> str:
        return "pooled:" + "+".join(s.fingerprint() for s in self.splits)


def fold_assignment(labels: np.ndarray, folds: int, seed: int) -> tuple[np.ndarray, int, str]:
    """``(fold of each image, number of folds, scheme)``: stratified k-fold, leave-one-out per class where a class
    has fewer images than folds (module docstring). Deterministic in ``seed``."""
    labels = np.asarray(labels)
    if folds < 2:
        raise ClipAdaptError(f"pilot folds must be at least 2, got {folds}")
    classes, counts = np.unique(labels, return_counts=True)
    count = min(folds, int(counts.max()) if len(counts) else 0)
    if count < 2:
        raise DataError(f"the pilot needs a class with at least 2 train + val images to hold one out, got "
                        f"{len(labels)} images of {len(classes)} classes")
    rng = np.random.default_rng(seed)
    assigned = np.empty(len(labels), dtype=np.int64)
    start = 0
    for label in classes:
        members = rng.permutation(np.flatnonzero(labels == label))
        assigned[members] = (start + np.arange(len(members))) % count
        start = (start + len(members)) % count
    if counts.max() <= count < folds:  # fewer images than folds in every class: one held out per fold
        scheme = f"leave-one-out per class ({count} folds)"
    elif counts.min() >= count:
        scheme = f"stratified {count}-fold"
    else:
        scheme = f"stratified {count}-fold, leave-one-out per class for classes with fewer than {count} images"
    return assigned, count, scheme


def inner_split(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, validate)`` positions of a fold's training part: per class ``share`` of its images validate (at least
    one where it has two or more, never all), the rest fit."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fit, validate = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held = min(len(members) - 1, max(1, round(share * len(members)))) if share > 0 and len(members) > 1 else 0
        validate.extend(members[:held])
        fit.extend(members[held:])
    return np.sort(np.asarray(fit, dtype=np.int64)), np.sort(np.asarray(validate, dtype=np.int64))


def interval(correct: int, total: int, fold_accuracies: Sequence[float]) -> tuple[float, float]:
    """The wider of the fold-spread and the Wilson 95% interval (module docstring), clipped to [0, 1]."""
    p = correct / total
    spread = Z95 * float(np.std(fold_accuracies, ddof=1)) / math.sqrt(len(fold_accuracies)) \
        if len(fold_accuracies) > 1 else 0.0
    denominator = 1 + Z95**2 / total
    centre = (p + Z95**2 / (2 * total)) / denominator
    half = Z95 / denominator * math.sqrt(p * (1 - p) / total + Z95**2 / (4 * total**2))
    return max(0.0, min(p - spread, centre - half)), min(1.0, max(p + spread, centre + half))


@dataclass
class Pool:
    """The encoded train + val images of the drawn dataset: features, labels, and a source the folds index."""

    dataset: ClassificationDataset
    source: PooledImages
    features: torch.Tensor
    labels: np.ndarray
    val_share: float

    def part(self, positions: np.ndarray, name: str) -> tuple[Split, EncodedSplit]:
        positions = np.asarray(positions, dtype=np.int64)
        return (Split(self.source, positions, name),
                EncodedSplit(self.features[positions], self.labels[positions], np.arange(len(positions))))


def fold_trainer(pool: Pool, fit: np.ndarray, validate: np.ndarray, experiment, bundle, accelerator) -> Trainer:
    """A Trainer (the one ``clipadapt train`` fits with) whose train and val are a fold's inner parts, their
    features already encoded; without inner validation the fold dataset has no val split."""
    splits, encoded = {}, {}
    for name, positions in (("train", fit), ("val", validate)):
        if len(positions):
            splits[name], encoded[name] = pool.part(positions, name)
    dataset = ClassificationDataset(pool.dataset.name, list(pool.dataset.classnames), splits,
                                    list(pool.dataset.templates), dict(pool.dataset.info),
                                    pool.dataset.coop_templates)
    data = TrainingData(dataset, bundle, batch_size=experiment.train.batch_size,
                        eval_batch_size=experiment.train.eval_batch_size, device=accelerator.device)
    data._features.update(encoded)  # the pool's features: nothing is encoded again
    return Trainer(experiment.train, data, accelerator)


def fit_method(name: str, method, initial: dict, trainer: Trainer) -> None:
    """Fit ``method`` on the fold through its own code (module docstring); its default values where the fold has
    no validation."""
    method.load_trainable_state(initial, source="the pilot's initial state")
    validated = trainer.has_validation
    if name == "linear-probe" and not validated:
        train = trainer.features("train")
        x, y = train.features.numpy(), train.labels
        probe = sweep_logistic_regression(x, y, x, y, len(method.classnames), NO_VALIDATION_PROBE,
                                          choose=lambda exponents, score: DEFAULT_C_EXPONENT)
        method.head.set_weights(torch.from_numpy(probe.weight), torch.from_numpy(probe.bias))
        return
    if hasattr(method.config, "search"):
        method.config = dataclasses.replace(method.config, search=validated)
    method.fit(trainer)


@torch.no_grad()
def held_out_correct(method_or_head, features: torch.Tensor, labels: np.ndarray, device) -> np.ndarray:
    """Which held-out images the fitted method (or zero-shot head) classifies right."""
    module = method_or_head.to(device)
    was_training = module.training
    module.eval()
    try:
        classify = getattr(module, "classify", module)
        logits = classify(features.to(device).float())
    finally:
        module.train(was_training)
    return (logits.argmax(-1).cpu().numpy() == labels)


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` inside the block (None: unchanged). The fold fits are many small
    operations (Tip-Adapter's 800-cell search above all) that a thread pool only slows, badly on a busy machine:
    Tip-Adapter's fit per fold measured 6.4 s with torch's 2 threads, 0.2 s with one, on 2 loaded CPU cores."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def selection_note(name: str, validated: bool) -> str:
    if name == "zeroshot":
        return "nothing chosen"
    if not validated:
        return "defaults (no fold had a class with two training images to validate on)"
    return {"linear-probe": "C", "gda": "alpha", "tip-adapter": "alpha, beta"}[name] + \
        " chosen on an inner split of each fold's training part"


def load_pilot_data(model: str, dataset: str, shots: int, seed: int):
    """``(experiment, dataset)``: the K-shot train and val ``clipadapt train`` draws for this dataset, K and seed."""
    experiment = load_experiment("linear-probe")
    data = dataclasses.replace(experiment.data, dataset=dataset, shots=shots, seed=seed)
    data = resolved_data(data, METHODS.get("linear-probe").method_class.validation_shots)
    experiment = dataclasses.replace(experiment, data=data, model=dataclasses.replace(experiment.model, spec=model),
                                     run=dataclasses.replace(experiment.run, seed=seed))
    whole = load_dataset(dataclasses.replace(data, shots=None))  # before drawing: a missing train split, said here
    if "train" not in whole.splits or len(whole.splits["train"]) == 0:
        raise DataError(f"dataset '{dataset}' has no training images: advise scores methods on them; valid choices: "
                        f"a dataset with a train split (imagefolder:ROOT with train/ or class folders, a registered "
                        f"dataset)")
    return experiment, load_dataset(data)


@dataclass
class Scorer:
    """The methods fitted on each fold and scored on its held-out images; zero-shot only scored."""

    pool: Pool
    experiment: object
    bundle: object
    accelerator: object
    zero_shot: torch.nn.Module
    fitted: dict[str, tuple[object, dict]]  # method -> (the built method, its state before any fit)
    seed: int
    correct: dict[str, np.ndarray] = field(default_factory=dict)  # method -> held-out right or wrong, per image
    folds: dict[str, list[float]] = field(default_factory=dict)
    fit_seconds: dict[str, float] = field(default_factory=dict)
    fit_images: list[int] = field(default_factory=list)  # per fold
    validated: bool = True  # every fold had an inner validation part

    def fold(self, index: int, held: np.ndarray, rest: np.ndarray, methods: Sequence[str],
             notify: Callable[[str], None]) -> None:
        fit_part, validate_part = inner_split(self.pool.labels[rest], self.pool.val_share, self.seed + index)
        self.validated = self.validated and len(validate_part) > 0
        self.fit_images.append(len(fit_part))
        trainer = fold_trainer(self.pool, rest[fit_part], rest[validate_part], self.experiment, self.bundle,
                               self.accelerator)
        device = self.accelerator.device
        held_x, held_y = self.pool.features[held], self.pool.labels[held]
        for name in methods:
            notify(f"fold {index + 1}: {name}")
            if name == "zeroshot":
                right = held_out_correct(self.zero_shot, held_x, held_y, device)
            else:
                method, initial = self.fitted[name]
                started = time.perf_counter()
                fit_method(name, method, initial, trainer)
                self.fit_seconds[name] = self.fit_seconds.get(name, 0.0) + time.perf_counter() - started
                right = held_out_correct(method, held_x, held_y, device)
            self.correct.setdefault(name, np.zeros(len(self.pool.labels), dtype=bool))[held] = right
            self.folds.setdefault(name, []).append(float(right.mean()))

    def score(self, name: str) -> PilotScore:
        total, n = int(self.correct[name].sum()), len(self.pool.labels)
        low, high = interval(total, n, self.folds[name])
        return PilotScore(name, total / n, low, high, self.folds[name],
                          self.fit_seconds.get(name, 0.0) / len(self.folds[name]),
                          float(np.mean(self.fit_images)) if name != "zeroshot" else 0.0,
                          selection_note(name, self.validated))


def loader_start_seconds(drawn: ClassificationDataset, experiment, bundle) -> float:
    """Seconds to start the image loader and encode one training image: what every pass over a split costs besides
    its images (the loader's worker processes), measured, never cached."""
    started = time.perf_counter()
    encode_images(bundle, drawn.split("train").subset(np.arange(1)), 1, experiment.data.num_workers,
                  experiment.data.strict, description="timing the image loader")
    return time.perf_counter() - started


def encode_pool(drawn: ClassificationDataset, experiment, bundle) -> tuple[Pool, dict[str, int], float, float, float]:
    """``(pool, images per split, wall seconds, per-image encoding seconds, loader start seconds)``: train and val
    encoded through the feature cache (the entries ``clipadapt train`` reads); test is not touched."""
    names = [s for s in ("train", "val") if s in drawn.splits]
    started = time.perf_counter()
    encoded = [encode_split(bundle, drawn.split(s), experiment.train.eval_batch_size, experiment.data.num_workers,
                            experiment.data.strict, FeatureCache(), "projected") for s in names]
    seconds = time.perf_counter() - started
    start = loader_start_seconds(drawn, experiment, bundle)
    readable = [drawn.split(s).subset(e.positions, s) for s, e in zip(names, encoded, strict=True)]
    counts = {s: len(e.labels) for s, e in zip(names, encoded, strict=True)}
    pool = Pool(drawn, PooledImages(readable), torch.cat([e.features for e in encoded]),
                np.concatenate([e.labels for e in encoded]), counts.get("val", 0) / sum(counts.values()))
    encoding = sum(e.encode_time_s for e in encoded)
    per_image = max(encoding - start * len(encoded), 0.25 * encoding) / len(pool.labels)  # never below a quarter
    return pool, counts, seconds, per_image, start


def run_pilot(model: str, dataset: str, shots: int, seed: int = 1, folds: int = 5, device: str = "auto",
              methods: Sequence[str] = PILOT_METHODS,
              on_progress: Callable[[str], None] | None = None) -> Pilot:
    """Score ``methods`` (of ``PILOT_METHODS``) by cross-validation over the K-shot train + val (module docstring)."""
    from accelerate.utils import set_seed

    unknown = [m for m in methods if m not in PILOT_METHODS]
    if unknown:
        raise ClipAdaptError(f"unknown pilot method '{unknown[0]}'; valid choices: {', '.join(PILOT_METHODS)}")
    notify = on_progress or (lambda message: None)
    started = time.perf_counter()
    experiment, drawn = load_pilot_data(model, dataset, shots, seed)
    target = resolve_device(device)
    bundle = load_model(model, device=target)
    accelerator = make_accelerator(target, experiment.train.precision)
    set_seed(seed)
    zero_shot = build_head("zeroshot", bundle, drawn.classnames, head_templates(drawn, DATASET_PROMPT))
    setup = time.perf_counter() - started
    notify(f"encoding train and val of {drawn.name}")
    pool, counts, encode_seconds, per_image, start = encode_pool(drawn, experiment, bundle)
    assigned, count, scheme = fold_assignment(pool.labels, folds, seed)
    fitted = {}
    for name in methods:
        if name != "zeroshot":
            method = build_method(load_experiment(name), bundle, drawn)
            fitted[name] = (method, method.trainable_state())
    if "linear-probe" in methods:  # imported before the folds, so the first fold's fit time is the fit's alone
        import sklearn.linear_model  # noqa: F401
    scorer = Scorer(pool, experiment, bundle, accelerator, zero_shot, fitted, seed)
    with torch_threads(1 if target.type == "cpu" else None):
        for fold in range(count):
            scorer.fold(fold, np.flatnonzero(assigned == fold), np.flatnonzero(assigned != fold), methods, notify)
    return Pilot(model, drawn.name, shots, seed, drawn.num_classes, len(pool.labels), count, scheme,
                 {name: scorer.score(name) for name in methods}, time.perf_counter() - started, encode_seconds,
                 per_image, start, setup, counts.get("train", 0), counts.get("val", 0), str(experiment.data.sampler),
                 list(counts), test_images=len(drawn.splits["test"]) if "test" in drawn.splits else 0)
