"""``clipadapt compare``: zero-shot plus every chosen method (and seed, and model) as normal run directories.

Layout: ``OUT/<model>/zeroshot`` and ``OUT/<model>/<method>-seed<S>``. Image features are shared through the
feature cache, so zero-shot, the linear probe and the linear head encode each split once. With
``skip_existing`` a finished run is kept, an interrupted one resumed; the report is rebuilt at the end.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clipadapt.classification.experiment import TrainExperiment, experiment_class
from clipadapt.classification.training import run_training
from clipadapt.classification.zeroshot import ZeroShotExperiment, run_zero_shot
from clipadapt.config import apply_overrides, format_overrides, override_section
from clipadapt.data import DataConfig
from clipadapt.engine.records import METRICS_FILE
from clipadapt.engine.rundir import RunConfig
from clipadapt.engine.zeroshot import ZeroShotConfig
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.methods import METHODS, list_methods
from clipadapt.models.config import ModelConfig
from clipadapt.paths import slug

log = logging.getLogger(__name__)
ZEROSHOT_EXTRA_SETS = ("simple", "clip")  # always compared besides the dataset's recommended sets


@dataclass
class CompareConfig:
    models: list[str]
    dataset: str
    methods: list[str] = field(default_factory=lambda: ["all"])
    seeds: list[int] = field(default_factory=lambda: [0])
    shots: int | None = None
    overrides: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)  # zero-shot sets; empty: the dataset's + simple + clip
    out: str = "runs/compare"
    skip_existing: bool = False
    overwrite: bool = False
    zeroshot: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("compare needs at least one --model")
        if not self.seeds:
            raise ConfigError("compare needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct, got {self.seeds}")
        self.methods = resolve_methods(self.methods)


def resolve_methods(methods: list[str]) -> list[str]:
    if not methods or methods == ["all"]:
        return list_methods()
    for name in methods:
        METHODS.get(name)  # unknown names: one-line error with the valid choices
    return list(dict.fromkeys(methods))


@dataclass
class PlannedRun:
    model: str
    method: str  # "zeroshot" or a registered method
    seed: int
    run_dir: Path


@dataclass
class CompareResult:
    out: Path
    finished: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    report: object = None  # ReportResult, when the report was built


def plan(config: CompareConfig) -> list[PlannedRun]:
    out = Path(config.out)
    runs = []
    for model in config.models:
        model_dir = out / slug(Path(model).name if Path(model).is_dir() else model)
        if config.zeroshot:
            runs.append(PlannedRun(model, "zeroshot", config.seeds[0], model_dir / "zeroshot"))
        for method in config.methods:
            for seed in config.seeds:
                runs.append(PlannedRun(model, method, seed, model_dir / f"{method}-seed{seed}"))
    return runs


def _sections(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.name != "method"}


def split_overrides(overrides: list[str], methods: list[str]) -> dict[str, list[str]]:
    """Which overrides apply to which experiment: ``lora.r=4`` only to lora, ``train.*`` to every method."""
    known = {"zeroshot": _sections(ZeroShotExperiment)} | {m: _sections(experiment_class(m)) for m in methods}
    every = set().union(*known.values())
    for item in overrides:
        section = override_section(item)
        if section not in every:
            raise ConfigError(f"override '{item}': unknown section '{section}'; valid sections: "
                              f"{', '.join(sorted(every))}")
    return {name: [o for o in overrides if override_section(o) in sections]
            for name, sections in known.items()}


def _experiment(run: PlannedRun, config: CompareConfig, overrides: list[str], resume: bool):
    common = format_overrides({"model.spec": run.model, "model.device": config.device,
                               "data.dataset": config.dataset, "run.out": str(run.run_dir), "run.seed": run.seed,
                               "data.seed": run.seed, "data.shots": config.shots})
    if run.method == "zeroshot":
        experiment = ZeroShotExperiment(ModelConfig(), DataConfig(), ZeroShotConfig(), RunConfig())
        experiment = apply_overrides(experiment, common + overrides + ["run.overwrite=true"])
        if not experiment.zeroshot.templates:
            experiment.zeroshot.templates = list(config.templates)
        if experiment.zeroshot.select_on == "test":
            raise ConfigError("compare puts results side by side; zeroshot.select_on=test is an oracle (selected on "
                              "test), not a result: valid choices in compare: val, none (`clipadapt zeroshot` runs "
                              "the oracle on its own)")
        return experiment
    experiment: TrainExperiment = experiment_class(run.method)()
    flags = ["run.resume=true"] if resume else ["run.overwrite=true"]
    return apply_overrides(experiment, common + overrides + flags)


def refuse_existing(run_dirs: list[Path], out: str, skip_existing: bool, overwrite: bool) -> None:
    """Before anything trains: planned run directories that exist need --skip-existing or --overwrite."""
    existing = [d for d in run_dirs if d.exists()]
    if existing and not (skip_existing or overwrite):
        raise ClipAdaptError(f"{len(existing)} run directories already exist under '{out}' (e.g. {existing[0]}); "
                             f"pass --skip-existing to keep finished runs and resume interrupted ones, or --overwrite")


def run_compare(config: CompareConfig, on_run: Callable[[PlannedRun, str], None] | None = None,
                report: bool = True) -> CompareResult:
    """Run (or keep, or resume) every planned run, then (``report``) build the report in ``config.out``."""
    from clipadapt.data import load_dataset
    from clipadapt.data.prompts import resolve_template_sets
    from clipadapt.experiments.report import build_report

    overrides = split_overrides(config.overrides, config.methods)
    runs = plan(config)
    refuse_existing([r.run_dir for r in runs], config.out, config.skip_existing, config.overwrite)
    if config.zeroshot and not config.templates:
        dataset = load_dataset(DataConfig(dataset=config.dataset))  # fails early on a bad dataset spec
        names = list(dict.fromkeys(list(dataset.templates) + list(ZEROSHOT_EXTRA_SETS)))
        config.templates = [t.name for t in resolve_template_sets(names)]
    for run in runs:  # validate every experiment before the first one trains
        _experiment(run, config, overrides[run.method], resume=False)

    result = CompareResult(Path(config.out))
    notify = on_run or (lambda run, status: None)
    for run in runs:
        finished = (run.run_dir / METRICS_FILE).is_file()
        if finished and config.skip_existing:
            result.skipped.append(run.run_dir)
            notify(run, "kept")
            continue
        resume = config.skip_existing and run.run_dir.is_dir() and run.method != "zeroshot"
        notify(run, "resuming" if resume else "running")
        experiment = _experiment(run, config, overrides[run.method], resume)
        try:
            (run_zero_shot if run.method == "zeroshot" else run_training)(experiment)
        except ClipAdaptError as e:  # one method failing (e.g. its weights are not downloadable) spoils no other
            log.error("%s failed: %s", run.run_dir, e)
            result.failed.append((run.run_dir, str(e)))
            notify(run, f"failed: {e}")
            continue
        result.finished.append(run.run_dir)
        notify(run, "done")
    if report and (result.finished or result.skipped):
        result.report = build_report([result.out], result.out)
    return result
