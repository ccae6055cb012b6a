"""``clipadapt compare``: zero-shot plus every chosen method (and seed, and model) as normal run directories.

Layout: ``OUT/<model>/zeroshot`` and ``OUT/<model>/<method>-seed<S>``. Image features are shared through the
feature cache, so zero-shot, the linear probe and the linear head encode each split once. With
``skip_existing`` a finished run is kept, an interrupted one resumed; the report is rebuilt at the end. The runs
go through an executor (``executor``: this process one after another, or Ray tasks); every result is read back
from the run directories, so the report is the same whichever executor ran them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clipadapt.classification.experiment import TrainExperiment, experiment_class
from clipadapt.classification.training import run_training
from clipadapt.classification.zeroshot import ZeroShotExperiment, run_zero_shot
from clipadapt.config import apply_overrides, as_overrides, format_overrides, load_config, override_section
from clipadapt.data import DataConfig
from clipadapt.engine.records import METRICS_FILE, ORACLE_LABEL, refuse_oracle_runs
from clipadapt.engine.rundir import RunConfig, grid_start
from clipadapt.engine.zeroshot import ZeroShotConfig
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.executors import ExecutorConfig, open_executor, run_with_status
from clipadapt.executors.locks import exclusive_out
from clipadapt.methods import METHODS, list_methods
from clipadapt.models.config import ModelConfig
from clipadapt.paths import slug

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
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("compare needs at least one --model")
        if not self.seeds:
            raise ConfigError("compare needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct, got {self.seeds}")
        self.methods = resolve_methods(self.methods)


@dataclass
class CompareFile:
    """What ``clipadapt compare --config FILE`` reads: the comparison (what a flag of the same name gives) and
    ``settings``, the runs' sections as ``--set`` gives them (``train: {epochs: 10}`` to every run, ``lora: {r: 4}``
    to lora's). Where the runs go and run (--device, --executor, --skip-existing, --overwrite) stays on the command
    line."""

    models: list[str] | None = None
    dataset: str | None = None
    methods: list[str] | None = None
    seeds: list[int] | None = None
    shots: int | None = None
    templates: list[str] | None = None
    zeroshot: bool | None = None
    out: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.settings, dict):
            raise ConfigError(f"settings must be a mapping of the runs' sections (train: {{epochs: 10}}), got "
                              f"{self.settings!r}")


def load_compare_config(path: str | Path | None, given: dict[str, Any], overrides: list[str],
                        **options: Any) -> CompareConfig:
    """Defaults, then the file (``CompareFile``), then ``given`` (the named arguments that were given: ``models``,
    ``dataset``, ...); the runs' settings are the file's, then ``overrides``. ``options``: the other fields of
    ``CompareConfig`` (device, executor, ...). Every run's settings are checked here, before anything loads."""
    file = load_config(CompareFile, path)  # the same file checks as every other command's --config
    values = {name: value for name, value in dataclasses.asdict(file).items()
              if name != "settings" and value is not None} | given
    if not values.get("models"):
        raise ConfigError("compare needs --model (or models: in --config)")
    if not values.get("dataset"):
        raise ConfigError("compare needs --dataset (or dataset: in --config; see `clipadapt datasets`)")
    config = CompareConfig(**values, overrides=as_overrides(file.settings) + list(overrides), **options)
    planned_experiments(config)
    return config


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


def split_overrides(overrides: list[str], methods: list[str], others: dict[str, type] | None = None
                    ) -> dict[str, list[str]]:
    """Which overrides apply to which experiment: ``lora.r=4`` only to lora, ``train.*`` to every method;
    ``others`` names experiments of other kinds (the test-time methods' ``TestTimeExperiment``)."""
    known = {"zeroshot": _sections(ZeroShotExperiment)} | {m: _sections(experiment_class(m)) for m in methods}
    known |= {name: _sections(cls) for name, cls in (others or {}).items()}
    every = set().union(*known.values())
    for item in overrides:
        section = override_section(item)
        if section not in every:
            raise ConfigError(f"override '{item}': unknown section '{section}'; valid sections: "
                              f"{', '.join(sorted(every))}")
    return {name: [o for o in overrides if override_section(o) in sections]
            for name, sections in known.items()}


@dataclass
class CompareCell:
    """One planned run as it travels to an executor: its ``--set`` items, not the experiment (whose class is built
    per method at run time and does not pickle)."""

    method: str  # "zeroshot" or a registered method
    items: list[str]
    templates: list[str]  # zero-shot sets when the items name none
    run_dir: str = ""
    resume: bool = False  # keep a complete run, continue an interrupted one (--skip-existing, a retried cell)

    def resumed(self) -> CompareCell:
        """This run for another attempt after its worker died: it continues the run's last checkpoint."""
        return replace(self, resume=True)


def _cell(run: PlannedRun, config: CompareConfig, overrides: list[str], resume: bool) -> CompareCell:
    common = format_overrides({"model.spec": run.model, "model.device": config.device,
                               "data.dataset": config.dataset, "run.out": str(run.run_dir), "run.seed": run.seed,
                               "data.seed": run.seed, "data.shots": config.shots})
    return CompareCell(run.method, common + overrides, list(config.templates), str(run.run_dir), resume)


def build_experiment(cell: CompareCell, resume: bool = False):
    """The run's experiment: resumed from its checkpoint (``resume``) or started afresh over whatever is there."""
    if cell.method == "zeroshot":
        experiment = ZeroShotExperiment(ModelConfig(), DataConfig(), ZeroShotConfig(), RunConfig())
        experiment = apply_overrides(experiment, cell.items + ["run.overwrite=true"])
        if not experiment.zeroshot.templates:
            experiment.zeroshot.templates = list(cell.templates)
        if experiment.zeroshot.select_on == "test":
            raise ConfigError(f"compare puts results side by side; zeroshot.select_on=test is an {ORACLE_LABEL}, "
                              "not a result: valid choices in compare: val, none (`clipadapt zeroshot` runs the "
                              "oracle on its own)")
        return experiment
    experiment: TrainExperiment = experiment_class(cell.method)()
    return apply_overrides(experiment, cell.items + ["run.resume=true" if resume else "run.overwrite=true"])


def planned_experiments(config: CompareConfig) -> list:
    """Every planned run's experiment, built from the settings it gets: a bad setting fails here, nothing loaded."""
    overrides = split_overrides(config.overrides, config.methods)
    return [build_experiment(_cell(run, config, overrides[run.method], resume=False)) for run in plan(config)]


def run_cell(cell: CompareCell) -> None:
    """Run one planned run (trained, resumed or zero-shot) into its run directory; an executor's cell. A run another
    attempt of the cell completed is kept (engine.rundir.grid_start)."""
    start = grid_start(cell.run_dir, cell.resume)
    if start == "kept":
        return
    experiment = build_experiment(cell, resume=start == "resume" and cell.method != "zeroshot")
    (run_zero_shot if cell.method == "zeroshot" else run_training)(experiment)


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
    experiments = planned_experiments(config)  # every setting checked before a dataset or model loads
    refuse_existing([r.run_dir for r in runs], config.out, config.skip_existing, config.overwrite)
    if config.skip_existing:  # a kept run goes into the table as it is: never an oracle
        refuse_oracle_runs([r.run_dir for r in runs], "compare --skip-existing",
                           "remove it, or pass --overwrite to run it again choosing on validation")
    if config.zeroshot and not config.templates:
        dataset = load_dataset(DataConfig(dataset=config.dataset))  # fails early on a bad dataset spec
        names = list(dict.fromkeys(list(dataset.templates) + list(ZEROSHOT_EXTRA_SETS)))
        config.templates = [t.name for t in resolve_template_sets(names)]

    with exclusive_out(config.out, "compare") as token:  # from here to the report, this driver holds --out
        result = CompareResult(Path(config.out))
        notify = on_run or (lambda run, status: None)
        todo: dict[str, tuple[PlannedRun, CompareCell, str]] = {}  # key -> run, cell, status when submitted
        for run in runs:
            if (run.run_dir / METRICS_FILE).is_file() and config.skip_existing:
                result.skipped.append(run.run_dir)
                notify(run, "kept")
                continue
            resume = config.skip_existing and run.run_dir.is_dir() and run.method != "zeroshot"
            todo[str(run.run_dir)] = run, _cell(run, config, overrides[run.method], resume), (
                "resuming" if resume else "running")
        if todo:
            with open_executor(config.executor, config.out, token) as executor:
                if config.executor.executor != "local":
                    prepare_in_driver(experiments)
                outcomes = run_with_status(executor, run_cell, todo, notify)
            for key, outcome in outcomes.items():  # in the planned order, whichever finished first
                run_dir = todo[key][0].run_dir
                if outcome.failed:
                    result.failed.append((run_dir, outcome.error or ""))
                else:
                    result.finished.append(run_dir)
        if report and (result.finished or result.skipped):
            result.report = build_report([result.out], result.out)
    return result


def prepare_in_driver(experiments: list) -> None:
    """Before cells run elsewhere: each model and dataset is loaded once here, so a model to download or a world to
    build is fetched or built once (by this process), not by cells racing for it."""
    from clipadapt.data import load_dataset
    from clipadapt.models import load_model

    models: set[tuple[str, str | None]] = set()
    datasets: set[tuple[str, str | None]] = set()
    for experiment in experiments:
        model, data = experiment.model, experiment.data
        if (model.spec, model.revision) not in models:
            models.add((model.spec, model.revision))
            load_model(model.spec, device="cpu", revision=model.revision, trust_remote_code=model.trust_remote_code)
        if (data.dataset, data.root) not in datasets:
            datasets.add((data.dataset, data.root))
            load_dataset(DataConfig(dataset=data.dataset, root=data.root))
