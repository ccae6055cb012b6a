"""``clipadapt benchmark``: the few-shot protocol of CoOp (Zhou et al. 2022) and the papers since, for any model and
method, on one machine or a Ray cluster.

Protocols (``--protocol``, several at once share their runs):

* ``few-shot``: K-shot training sets (K = 1, 2, 4, 8, 16) drawn per class with seeds 1, 2, 3 as CoOp's code draws
  them (``data.sampler=coop``: validation min(K, 4) per class, K for prolip-val as ProLIP's code; a class with fewer
  images keeps them all), test on the full test split; accuracy as mean ± std over seeds per dataset and the average
  over datasets, and the accuracy-against-shots curve.
* ``base-to-novel`` (CoCoOp): classes sorted by label, the first half is base (``data.subsample=base``); train on
  base (16 shots), test on base and on the novel half (relabelled from 0, the classifier built from their names).
* ``cross-dataset``: train on the source (ImageNet in coop11), test on every other dataset's classes.
* ``domain-shift``: train on the source, test on its shifted versions (ImageNet-V2, -Sketch, -A, -R).
* ``test-time`` (not in ``all``): zero-shot and tda, tpt on the source, its shifts and the other datasets, each test
  split an unlabelled stream per seed (order; TPT's, TDA's views) in ``OUT/runs/<dataset>/<method>/stream-seed<S>``.

Every cell is a normal run directory, ``OUT/runs/<dataset>[-base]/<method>/<K>shot-seed<S>`` (zero-shot:
``OUT/runs/<dataset>[-base|-new]/zeroshot``), so a 16-shot ImageNet run serves few-shot, cross-dataset and
domain-shift alike; its evaluations on other classes or images are ``RUN/evaluations/<target>.json``. Zero-shot
is always included, with the dataset's own prompt (its last template set; CoOp's hand-crafted one for the coop11
datasets) and nothing chosen. Model selection of the methods stays on the few-shot validation split; the test split
is evaluated once per run. An oracle (chosen on test: ``--set zeroshot.select_on=test``, or a kept run directory
that is one) is refused before anything runs. ``benchmark.csv``, ``benchmark.md`` and ``report.html`` are written
from the run directories (experiments.benchmark_report), whichever executor ran them, so ``--skip-existing`` after
an interruption runs exactly the cells without results and rebuilds the same tables."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clipadapt.config import format_overrides
from clipadapt.data.registry import check_dataset_spec
from clipadapt.engine.records import METRICS_FILE, ORACLE_LABEL, refuse_oracle_runs
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.executors import ExecutorConfig, Outcome, open_executor, run_cells
from clipadapt.executors.locks import exclusive_out
from clipadapt.experiments.compare import refuse_existing, resolve_methods, split_overrides
from clipadapt.paths import slug

log = logging.getLogger(__name__)
PROTOCOLS = ("few-shot", "base-to-novel", "cross-dataset", "domain-shift", "test-time")
DEFAULT_SHOTS = {"few-shot": [1, 2, 4, 8, 16]}  # the transfer protocols train with 16 shots
TRANSFER_SHOTS = [16]
DEFAULT_SEEDS = [1, 2, 3]
EVALUATIONS_DIR = "evaluations"


@dataclass(frozen=True)
class Suite:
    datasets: tuple[str, ...]  # few-shot (and base-to-novel unless given)
    source: str  # where cross-dataset and domain-shift train
    shifts: tuple[str, ...]  # domain-shift targets
    base_to_novel: tuple[str, ...] | None = None  # default: datasets


SUITES = {
    "coop11": Suite(("imagenet", "caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101",
                     "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"), "imagenet",
                    ("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")),
    "world": Suite(("world:shapes", "world:colour", "world:shape", "world:shapes-novel"), "world:shapes",
                   ("world:shapes-shifted",), base_to_novel=("world:shapes",))}
DOMAIN_SHIFTS = {"imagenet": SUITES["coop11"].shifts, "world:shapes": SUITES["world"].shifts}


@dataclass
class BenchmarkConfig:
    model: str
    datasets: list[str] = field(default_factory=list)
    suite: str | None = None
    methods: list[str] = field(default_factory=lambda: ["linear-probe"])
    test_time_methods: list[str] = field(default_factory=list)  # from --methods; default tda, tpt (test-time)
    shots: list[int] | None = None  # default: 1,2,4,8,16 for few-shot, 16 for the others
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    protocols: list[str] = field(default_factory=lambda: ["few-shot"])
    targets: list[str] | None = None  # cross-dataset / domain-shift targets instead of the suite's
    out: str = "runs/benchmark"
    overrides: list[str] = field(default_factory=list)
    data_root: str | None = None  # CoOp's $DATA folder: DIR/<CoOp folder of each dataset>
    device: str = "auto"
    skip_existing: bool = False
    overwrite: bool = False
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def __post_init__(self) -> None:
        if self.suite is not None and self.suite not in SUITES:
            raise ConfigError(f"unknown suite '{self.suite}'; valid choices: {', '.join(SUITES)}")
        if self.suite is not None and self.datasets:
            raise ConfigError("give --suite or --datasets, not both")
        if self.suite is None and not self.datasets:
            raise ConfigError(f"benchmark needs --datasets or --suite ({', '.join(SUITES)})")
        for spec in [*self.datasets, *(self.targets or [])]:
            check_dataset_spec(spec)
        self.protocols = (list(PROTOCOLS[:-1]) if self.protocols == ["all"]  # test-time only by name: TPT is slow
                          else list(dict.fromkeys(self.protocols)))
        for protocol in self.protocols:
            if protocol not in PROTOCOLS:
                raise ConfigError(f"unknown protocol '{protocol}'; valid choices: {', '.join(PROTOCOLS)}, all")
        if any(item.startswith("stream.") for item in self.overrides):
            raise ConfigError("--set stream.*: the benchmark gives each test-time cell its stream from --seeds")
        if self.shots is not None and (not self.shots or any(k <= 0 for k in self.shots)):
            raise ConfigError(f"--shots must be positive numbers of images per class, got {self.shots}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds must be distinct and at least one, got {self.seeds}")
        from clipadapt.classification.testtime_run import split_test_time

        trained, self.test_time_methods = split_test_time([*self.methods, *self.test_time_methods], self.protocols)
        self.methods = resolve_methods(trained or ["linear-probe"])

    @property
    def suite_spec(self) -> Suite:
        if self.suite is not None:
            return SUITES[self.suite]
        source = self.datasets[0]
        return Suite(tuple(self.datasets), source, DOMAIN_SHIFTS.get(source, ()))

    def shots_for(self, protocol: str) -> list[int]:
        return list(self.shots or DEFAULT_SHOTS.get(protocol, TRANSFER_SHOTS))


@dataclass(frozen=True)
class Target:
    """An evaluation of a trained run on other classes or images: ``name`` in the tables."""

    name: str
    dataset: str
    subsample: str = "all"
    protocol: str = "cross-dataset"

    @property
    def file(self) -> str:
        return f"{EVALUATIONS_DIR}/{slug(self.dataset)}{'' if self.subsample == 'all' else '-' + self.subsample}.json"


@dataclass
class BenchCell:
    """One run of the grid (picklable: it travels to Ray workers) and the evaluations it owes."""

    key: str
    method: str  # a registered method, or "zeroshot"
    dataset: str
    subsample: str
    shots: int  # 0 for zero-shot
    seed: int
    run_dir: str
    model: str
    device: str
    overrides: list[str]
    data_root: str | None
    protocols: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    target_roots: dict[str, str] = field(default_factory=dict)
    resume: bool = False  # keep a complete run, continue an interrupted one (--skip-existing, a retried cell)

    def resumed(self) -> BenchCell:
        """This cell for another attempt after its worker died: it continues the run's last checkpoint."""
        return replace(self, resume=True)

    def complete(self) -> bool:
        run = Path(self.run_dir)
        return (run / METRICS_FILE).is_file() and all((run / t.file).is_file() for t in self.targets)


def _root(config: BenchmarkConfig, dataset: str) -> str | None:
    """``--data-root DIR`` is CoOp's $DATA: each benchmark dataset in its CoOp folder (``DIR/oxford_pets``,
    ``DIR/caltech-101``, ...); any other dataset in ``DIR/<name>`` where that exists."""
    from clipadapt.data.coop import COOP_DATASETS

    if config.data_root is None:
        return None
    root = Path(config.data_root).expanduser()
    if dataset in COOP_DATASETS:
        return str(root / COOP_DATASETS[dataset].folder)
    return str(root / dataset) if (root / dataset).exists() else None


def run_name(dataset: str, subsample: str) -> str:
    return slug(dataset) + ("" if subsample == "all" else f"-{subsample}")


def overrides_per_method(config: BenchmarkConfig) -> dict[str, list[str]]:
    from clipadapt.classification.testtime_run import TestTimeExperiment as TestTime

    return split_overrides(config.overrides, config.methods, dict.fromkeys(config.test_time_methods, TestTime))


def plan(config: BenchmarkConfig) -> list[BenchCell]:
    """Every cell of every protocol, shared runs merged (their evaluations joined)."""
    suite = config.suite_spec
    per_method = overrides_per_method(config)
    runs = Path(config.out) / "runs"
    cells: dict[str, BenchCell] = {}

    def add(protocol: str, method: str, dataset: str, subsample: str, shots: int, seed: int,
            targets: tuple[Target, ...] = ()):
        folder = runs / run_name(dataset, subsample)
        run_dir = (folder / "zeroshot" if method == "zeroshot" else
                   folder / method / f"stream-seed{seed}" if protocol == "test-time" else
                   folder / method / f"{shots}shot-seed{seed}")
        key = run_dir.relative_to(runs).as_posix()
        if key not in cells:
            cells[key] = BenchCell(key, method, dataset, subsample, shots, seed, str(run_dir), config.model,
                                   config.device, per_method[method], _root(config, dataset),
                                   resume=config.skip_existing)
        cell = cells[key]
        if protocol not in cell.protocols:
            cell.protocols.append(protocol)
        for target in targets:
            if target not in cell.targets:
                cell.targets.append(target)
                root = _root(config, target.dataset)
                if root is not None:
                    cell.target_roots[target.dataset] = root

    def grid(protocol: str, dataset: str, subsample: str, targets: tuple[Target, ...] = ()):
        for method in config.methods:
            for k in config.shots_for(protocol):
                for seed in config.seeds:
                    add(protocol, method, dataset, subsample, k, seed, targets)

    for protocol in config.protocols:
        if protocol == "few-shot":
            for dataset in suite.datasets:
                add(protocol, "zeroshot", dataset, "all", 0, 0)
                grid(protocol, dataset, "all")
        elif protocol == "test-time":  # zero-shot and each test-time method on every target, per stream seed
            for dataset in config.targets or dict.fromkeys([suite.source, *suite.shifts, *suite.datasets]):
                add(protocol, "zeroshot", dataset, "all", 0, 0)
                for method in config.test_time_methods:
                    for seed in config.seeds:
                        add(protocol, method, dataset, "all", 0, seed)
        elif protocol == "base-to-novel":
            for dataset in suite.base_to_novel or suite.datasets:
                add(protocol, "zeroshot", dataset, "base", 0, 0)
                add(protocol, "zeroshot", dataset, "new", 0, 0)
                grid(protocol, dataset, "base", (Target("novel", dataset, "new", protocol),))
        else:
            targets = transfer_targets(config, protocol)
            for dataset in (suite.source, *targets):
                add(protocol, "zeroshot", dataset, "all", 0, 0)
            grid(protocol, suite.source, "all", tuple(Target(t, t, "all", protocol) for t in targets))
    return list(cells.values())


def transfer_targets(config: BenchmarkConfig, protocol: str) -> list[str]:
    """The datasets a source run is tested on: ``--targets``, else the suite's (the other datasets for
    cross-dataset, the source's shifts for domain-shift)."""
    suite = config.suite_spec
    if config.targets:
        return list(config.targets)
    found = [d for d in suite.datasets if d != suite.source] if protocol == "cross-dataset" else list(suite.shifts)
    if not found:
        what = "another dataset after the source in --datasets" if protocol == "cross-dataset" else (
            f"a dataset with known shifts as the first of --datasets ({', '.join(DOMAIN_SHIFTS)})")
        raise ConfigError(f"{protocol} from '{suite.source}' has no targets: give --targets or {what}")
    return found


def run_cell(cell: BenchCell) -> dict[str, Any]:
    """Train (or keep, or resume) one run, then evaluate it on its targets; returns what it measured and what it
    could not (a run whose trained state is per class cannot be moved to other classes: that target's error)."""
    from clipadapt.classification.evaluation import evaluate_run
    from clipadapt.engine.rundir import grid_start

    run_dir = Path(cell.run_dir)
    start = grid_start(run_dir, cell.resume)
    kept = start == "kept"
    if not kept:
        train_cell(cell, resume=start == "resume")
    result: dict[str, Any] = {"kept": kept, "targets": {}, "errors": {}}
    for target in cell.targets:
        out = run_dir / target.file
        if out.is_file():
            continue
        data = format_overrides({"data.dataset": target.dataset, "data.subsample": target.subsample,
                                 "data.root": cell.target_roots.get(target.dataset), "data.shots": None,
                                 "data.fewshot_file": None, "data.split_file": None, "data.classes": None})
        try:
            evaluated = evaluate_run(run_dir, "test", data=data, out=out)
            result["targets"][target.name] = evaluated["metrics"]["acc1"]
        except ClipAdaptError as e:
            result["errors"][target.name] = str(e)
    return result


def train_cell(cell: BenchCell, resume: bool) -> None:
    from clipadapt.classification.experiment import load_experiment
    from clipadapt.classification.training import run_training
    from clipadapt.classification.zeroshot import ZeroShotExperiment, run_zero_shot
    from clipadapt.config import apply_overrides

    common = format_overrides({"model.spec": cell.model, "model.device": cell.device, "data.dataset": cell.dataset,
                               "data.subsample": cell.subsample, "data.root": cell.data_root,
                               "run.out": cell.run_dir})
    if cell.method == "zeroshot":
        experiment = apply_overrides(ZeroShotExperiment(), common + cell.overrides + [
            "zeroshot.select_on=none", "run.overwrite=true"])
        run_zero_shot(experiment)
        return
    if "test-time" in cell.protocols:  # nothing to resume: a stream is read again from its start
        from clipadapt.classification.testtime_run import TestTimeExperiment, run_test_time

        run_test_time(apply_overrides(TestTimeExperiment(), common + cell.overrides + format_overrides(
            {"stream.method": cell.method, "stream.seed": cell.seed, "tpt.seed": cell.seed, "tda.seed": cell.seed,
             "run.overwrite": True})))
        return
    flags = format_overrides({"data.shots": cell.shots, "data.sampler": "coop", "data.seed": cell.seed,
                              "run.seed": cell.seed})
    experiment = load_experiment(cell.method, None, common + flags + cell.overrides + [
        "run.resume=true" if resume else "run.overwrite=true"])
    run_training(experiment)


@dataclass
class BenchmarkResult:
    out: Path
    cells: list[BenchCell]
    outcomes: dict[str, Outcome]
    kept: list[str]
    csv: Path | None = None
    markdown: Path | None = None
    html: Path | None = None

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [(key, o.error or "") for key, o in self.outcomes.items() if o.failed]


def run_benchmark(config: BenchmarkConfig, on_outcome: Callable[[Outcome, dict[str, int]], None] | None = None,
                  report: bool = True) -> BenchmarkResult:
    """Plan the grid, run the cells without results on the executor, write benchmark.csv/md and report.html."""
    from clipadapt.experiments.benchmark_report import write_benchmark_report

    cells = plan(config)
    refuse_oracles(config, cells)
    refuse_existing([Path(c.run_dir) for c in cells], config.out, config.skip_existing, config.overwrite)
    with exclusive_out(config.out, "benchmark") as token:  # from here to the report, this driver holds --out
        prepare(cells)
        todo = [c for c in cells if not (config.skip_existing and c.complete())]
        kept = [c.key for c in cells if c not in todo]
        with open_executor(config.executor, config.out, token) as executor:
            outcomes = run_cells(executor, [(c.key, run_cell, c) for c in todo], on_outcome)
        result = BenchmarkResult(Path(config.out), cells, outcomes, kept)
        for key, outcome in outcomes.items():
            if outcome.failed:
                log.error("%s failed: %s", key, outcome.error)
                if outcome.trace:
                    log.debug("%s", outcome.trace)
        if report:
            result.csv, result.markdown, result.html = write_benchmark_report(config, cells, outcomes)
    return result


def refuse_oracles(config: BenchmarkConfig, cells: list[BenchCell]) -> None:
    """Before anything loads or runs: no cell may be an oracle (chosen on the test split it reports), neither asked
    for (``--set zeroshot.select_on=test``) nor kept by ``--skip-existing``."""
    from clipadapt.classification.zeroshot import ZeroShotExperiment
    from clipadapt.config import apply_overrides

    zero_shot = overrides_per_method(config)["zeroshot"]
    if zero_shot and apply_overrides(ZeroShotExperiment(), zero_shot).zeroshot.select_on == "test":
        raise ConfigError(f"zeroshot.select_on=test is an {ORACLE_LABEL}, not a result: the benchmark's zero-shot "
                          "rows use the dataset's own prompt and choose nothing; drop the setting (`clipadapt "
                          "zeroshot --set zeroshot.select_on=test` runs the oracle on its own)")
    if config.skip_existing:
        refuse_oracle_runs([c.run_dir for c in cells], "benchmark --skip-existing",
                           "remove it, or pass --overwrite to run its cell again")


def prepare(cells: list[BenchCell]) -> None:
    """Before the first cell: every dataset resolves and every experiment validates (a bad --set fails here, with
    nothing written); generated datasets are built once here, not by cells racing for them."""
    from clipadapt.classification.experiment import load_experiment
    from clipadapt.classification.zeroshot import ZeroShotExperiment
    from clipadapt.config import apply_overrides
    from clipadapt.data import DataConfig, load_dataset
    from clipadapt.models import load_model

    seen: set[tuple[str, str | None]] = set()
    for model in dict.fromkeys(cell.model for cell in cells):  # a bad spec fails now; the world's model is built
        load_model(model, device="cpu")
    for cell in cells:
        common = format_overrides({"model.spec": cell.model, "data.dataset": cell.dataset, "run.out": cell.run_dir})
        if cell.method == "zeroshot":
            apply_overrides(ZeroShotExperiment(), common + cell.overrides)
        elif "test-time" in cell.protocols:
            from clipadapt.classification.testtime_run import TestTimeExperiment

            experiment = apply_overrides(TestTimeExperiment(), common + cell.overrides)
            getattr(experiment, cell.method).check()
        else:
            load_experiment(cell.method, None, common + cell.overrides)
        for dataset, root in [(cell.dataset, cell.data_root),
                              *((t.dataset, cell.target_roots.get(t.dataset)) for t in cell.targets)]:
            if (dataset, root) not in seen:
                seen.add((dataset, root))
                load_dataset(DataConfig(dataset=dataset, root=root))
