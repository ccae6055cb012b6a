"""A classification training experiment: its config (the common sections plus the method's own), the method
built from it, and the inputs it trains on. Shared by training, re-evaluation, WiSE-FT and bench."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clipadapt.config import load_method_experiment, method_experiment_class, option
from clipadapt.data import DataConfig
from clipadapt.data.prompts import TemplateSet, resolve_template_set, resolve_template_sets
from clipadapt.data.registry import check_dataset_spec
from clipadapt.engine.features import FeatureCache
from clipadapt.engine.inputs import TrainingData
from clipadapt.engine.rundir import TrainRunConfig
from clipadapt.engine.trainer import DATASET_PROMPT, TrainConfig
from clipadapt.engine.views import CLEAN, FeaturesConfig, ViewCache, ViewSpec
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.methods import METHODS, Method
from clipadapt.models.config import ModelConfig

WEIGHTS_DIR = "weights"


@dataclass
class EvalConfig:
    """What a run measures besides its own test split (classification/forgetting.py)."""

    control: str | None = option(None, help="a control dataset (any dataset spec): zero-shot accuracy on it with the "
                                             "run's towers before and after training (forgetting: metrics.json "
                                             "control.kept); never used to choose anything")
    control_split: str = option("test", help="the control dataset's split")

    def __post_init__(self) -> None:
        if self.control is not None:
            try:
                check_dataset_spec(self.control)
            except ClipAdaptError as error:
                raise ConfigError(f"eval.control: {error}") from None


@dataclass
class TrainExperiment:
    """Common sections; ``experiment_class(method)`` adds the method's own section (``lora:``, ``full_ft:``)."""

    method: str = option("linear-probe", help="adaptation method (see `clipadapt methods`)")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    run: TrainRunConfig = field(default_factory=TrainRunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def method_config(self):
        return getattr(self, METHODS.get(self.method).section)


def experiment_class(method: str) -> type[TrainExperiment]:
    """A dataclass with the common sections plus ``<method>: <MethodConfig>``."""
    entry = METHODS.get(method)
    defaults = entry.method_class.train_defaults
    return method_experiment_class(TrainExperiment, method, entry.section, entry.config_class,
                                   {"train": dict(defaults)} if defaults else None)


def load_experiment(method: str, config_file: str | Path | None = None,
                    overrides: list[str] | None = None) -> TrainExperiment:
    """Defaults, then a YAML file (e.g. a run's config.yaml), then ``section.key=value`` overrides."""
    return load_method_experiment(experiment_class(method), method, config_file, overrides)


def head_templates(dataset, setting: str | None = None) -> TemplateSet:
    """The templates zero-shot-initialised heads and frozen text classifiers are built from: ``train.head_templates``
    (a set's name, a file, one template such as "This is a photo of a {}", or ``coop``: the dataset's own prompt as
    the few-shot references use it, ``dataset.coop_template_set``), else the dataset's recommended template sets as
    one ensemble."""
    if setting == DATASET_PROMPT:
        return resolve_template_set(dataset.coop_template_set)
    if setting:
        return resolve_template_set(setting)
    templates: list = []
    for template_set in resolve_template_sets(dataset.templates):
        templates += [t for t in template_set.templates if t not in templates]
    return TemplateSet("head", templates)


def build_method(experiment: TrainExperiment, bundle, dataset) -> Method:
    """The experiment's method for ``dataset``'s classes, its heads built from ``head_templates``."""
    entry = METHODS.get(experiment.method)
    return entry.method_class(bundle, dataset.classnames, experiment.method_config(),
                              head_templates(dataset, experiment.train.head_templates))


def effective_views(cfg: TrainExperiment, method: Method) -> int:
    """The augmented feature views the run trains on: features.views, else the method's recipe (``Method.views``);
    0 for ``features.views=clean`` and for methods that cannot use them (pixel methods, which augment with
    train.augment)."""
    requested = cfg.features.views
    if requested == CLEAN:
        return 0
    if method.inputs != "features" or method.view_use is None:
        if requested is not None:
            raise ConfigError(f"features.views={requested} applies to methods on cached features that train on "
                              f"views; method '{cfg.method}' does not (pixel methods: train.augment=crop-flip)")
        return 0
    return requested if requested is not None else method.views


def views_record(cfg: TrainExperiment, method: Method) -> dict:
    """What metrics.json says the run trained on: the views (count, crop, flip, seed) and how the method used them."""
    views = effective_views(cfg, method)
    if not views:
        return {"views": 0}
    spec = ViewSpec(views, tuple(cfg.train.crop_scale), seed=cfg.features.seed)
    return {**spec.record(), "use": method.view_use}


def training_data(cfg: TrainExperiment, dataset, method: Method, device, accelerator=None) -> TrainingData:
    """A run's inputs as its config says: the method's own preprocessing and augmentation, the feature caches, the
    training split's augmented views."""
    return TrainingData(
        dataset, method.bundle, batch_size=cfg.train.batch_size, eval_batch_size=cfg.train.eval_batch_size,
        num_workers=cfg.data.num_workers, strict=cfg.data.strict, augment=method.augment or cfg.train.augment,
        preprocess=method.preprocess, feature_kind=method.feature_kind, seed=cfg.run.seed,
        cache=FeatureCache() if cfg.run.feature_cache else None, crop_scale=tuple(cfg.train.crop_scale),
        views=effective_views(cfg, method), views_seed=cfg.features.seed,
        view_cache=ViewCache() if cfg.run.feature_cache else None,
        device=device, main_process_first=accelerator.main_process_first if accelerator is not None else None)
