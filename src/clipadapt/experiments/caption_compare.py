"""``clipadapt caption compare``: decoder methods x bridges x seeds as normal caption run directories, one report.

Layout: ``OUT/<method>-<bridge>-seed<S>``, then ``OUT/report.md`` and ``OUT/report.html``. The encoder outputs are
cached, so the image tower runs once per split for all runs. ``skip_existing`` keeps finished runs and resumes
interrupted ones.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clipadapt.captioning.methods import CAPTION_METHODS
from clipadapt.captioning.model import BRIDGES
from clipadapt.captioning.report import build_caption_report
from clipadapt.captioning.runs import load_caption_experiment, run_caption_training
from clipadapt.config import override_section, section_name
from clipadapt.engine.records import CONFIG_FILE, METRICS_FILE
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.experiments.compare import refuse_existing
from clipadapt.reports.report import ReportResult

log = logging.getLogger(__name__)


@dataclass
class CaptionCompareConfig:
    methods: list[str] = field(default_factory=lambda: ["all"])
    bridges: list[str] = field(default_factory=lambda: ["patch-prefix"])
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[str] = field(default_factory=list)  # --set for every run (a method's section: its runs only)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)  # settings of one method's runs, after those
    out: str = "runs/caption-compare"
    skip_existing: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.methods in ([], ["all"]):
            self.methods = CAPTION_METHODS.names()
        for name in self.methods:
            CAPTION_METHODS.get(name)
        for name in self.method_overrides:
            if name not in self.methods:
                raise ConfigError(f"settings given for caption method '{name}', which is not compared; compared: "
                                  f"{', '.join(self.methods)}")
        for bridge in self.bridges:
            if bridge not in BRIDGES:
                raise ConfigError(f"unknown bridge '{bridge}'; valid choices: {', '.join(BRIDGES)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"caption compare needs distinct seeds, got {self.seeds}")


@dataclass
class CaptionCompareResult:
    runs: list[Path]
    report: ReportResult
    failed: list[tuple[Path, str]]


def _overrides_for(method: str, overrides: list[str]) -> list[str]:
    """Common overrides plus the method's own section (another method's section is not its business)."""
    own = section_name(method)
    others = {section_name(m) for m in CAPTION_METHODS.names()} - {own}
    return [o for o in overrides if override_section(o) not in others]


def run_caption_compare(config: CaptionCompareConfig,
                        on_run: Callable[[str, str], None] | None = None) -> CaptionCompareResult:
    out = Path(config.out)
    planned = []
    for method in config.methods:
        for bridge in config.bridges:
            for seed in config.seeds:
                run_dir = out / f"{method}-{bridge}-seed{seed}"
                overrides = [*_overrides_for(method, config.overrides), *config.method_overrides.get(method, []),
                             f"bridge.kind={bridge}", f"run.seed={seed}", f"run.out={run_dir}"]
                planned.append((run_dir, load_caption_experiment(method, None, overrides)))  # all checked
    refuse_existing([run_dir for run_dir, _ in planned], config.out, config.skip_existing, config.overwrite)
    runs, failed = [], []
    for run_dir, experiment in planned:
        label = run_dir.name
        if (run_dir / METRICS_FILE).is_file() and config.skip_existing:
            runs.append(run_dir)
            if on_run:
                on_run(label, "kept")
            continue
        resume = config.skip_existing and (run_dir / CONFIG_FILE).is_file()  # begun, not finished
        experiment = dataclasses.replace(experiment, run=dataclasses.replace(
            experiment.run, resume=resume, overwrite=not resume))  # existing directories were allowed above
        if on_run:
            on_run(label, "resuming" if resume else "training")
        try:
            run_caption_training(experiment)
            runs.append(run_dir)
        except ClipAdaptError as error:  # one bad cell does not lose the others
            failed.append((run_dir, str(error)))
            log.warning("%s failed: %s", run_dir, error)
    report = build_caption_report([out], out)
    return CaptionCompareResult(runs, report, failed)
