"""Run directories, for every task: the run settings every experiment has, where a run goes, when an existing
directory may be replaced or resumed, and how it starts (config.yaml first, results last).

A run directory holds ``config.yaml`` from the start (with ``checkpoints/`` while training) and gets its results at
the end, ``metrics.json`` last: a directory without metrics.json is an interrupted run that ``--resume`` continues.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clipadapt.config import from_dict, option, to_dict
from clipadapt.engine.records import CONFIG_FILE, METRICS_FILE
from clipadapt.errors import ClipAdaptError, ConfigError, DiskFull, RunInterrupted
from clipadapt.io import atomic_write_text, remove_killed_writes
from clipadapt.paths import slug

RESUMABLE_KEYS = {("run", "resume"), ("run", "overwrite"), ("run", "out")}  # may differ when resuming


@dataclass
class RunConfig:
    out: str | None = option(None, help="run directory (default: runs/<dataset>-<model>-<method>)")
    overwrite: bool = option(False, help="replace an existing run directory")
    seed: int = option(0, help="global seed")
    feature_cache: bool = option(True, help="reuse image features cached under $CLIPADAPT_HOME/features")
    samples: int = option(16, help="images in the sample prediction grid")
    label: str | None = option(None, help="row name in reports (default: the method; sweeps name their cells)")

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ConfigError(f"run.samples must be >= 0, got {self.samples}")


@dataclass
class TrainRunConfig(RunConfig):
    resume: bool = option(False, help="continue an interrupted run in the same directory")
    init_from: str | None = option(None, help="a finished run to start from: its head and every trainable weight "
                                              "whose name and shape match (two-stage training)")


@dataclass
class RunOutput:
    run_dir: Path
    record: dict[str, Any]
    result: Any = None
    main_process: bool = True  # False in the other processes of a multi-process run (they print nothing)


def default_run_dir(model: str, dataset: str, method: str) -> Path:
    return Path("runs") / f"{slug(dataset)}-{slug(Path(model).name if Path(model).is_dir() else model)}-{method}"


def check_run_dir(path: Path, overwrite: bool, resumable: bool = False) -> None:
    """Refuse to replace an existing run directory unless asked to."""
    if path.exists() and not overwrite:
        choices = "--resume to continue it, --overwrite to replace it," if resumable else "--overwrite"
        raise ClipAdaptError(f"run directory '{path}' already exists; pass {choices} or choose another --out")


def _differences(old: Any, new: Any, prefix: tuple = ()) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key), new.get(key), prefix + (key,))
        return out
    if prefix in RESUMABLE_KEYS or old == new:
        return []
    return [f"{'.'.join(map(str, prefix))}: {old!r} -> {new!r}"]


def check_train_run_dir(run_dir: Path, resolved: dict, resume: bool, overwrite: bool,
                        config_class: type | None = None) -> None:
    """A training run may start fresh, replace (``overwrite``) or continue (``resume``, same config) a directory.
    ``config_class`` (the experiment's) reads the saved config, so settings added since the run was written count as
    their defaults: a run from an earlier version resumes unless one of them is set otherwise."""
    if resume:
        saved = run_dir / CONFIG_FILE
        if not saved.is_file():
            raise ClipAdaptError(f"cannot resume: '{run_dir}' is not a run directory (no {CONFIG_FILE})")
        if (run_dir / METRICS_FILE).is_file():
            raise ClipAdaptError(f"run '{run_dir}' is already complete; nothing to resume (--overwrite retrains it)")
        saved_config = yaml.safe_load(saved.read_text())
        if config_class is not None:
            with suppress(ConfigError):  # another method's run: the differences below say what
                saved_config = to_dict(from_dict(config_class, saved_config))
        changed = _differences(saved_config, resolved)
        if changed:
            raise ClipAdaptError(f"cannot resume '{run_dir}' with a different config: {'; '.join(changed[:6])}")
    else:
        check_run_dir(run_dir, overwrite, resumable=True)


@contextmanager
def resumable(run_dir: Path) -> Iterator[None]:
    """An interruption inside the block becomes ``RunInterrupted(run_dir)``: the caller can say how to resume."""
    try:
        yield
    except RunInterrupted:
        raise
    except KeyboardInterrupt as interrupt:
        raise RunInterrupted(run_dir) from interrupt


def grid_start(run_dir: str | Path, resume: bool) -> str:
    """How a grid's cell (a benchmark's, a comparison's, a sweep's) starts its run directory: ``"kept"`` when asked to
    resume and the run is complete (another attempt of the cell finished it: it is not trained twice),
    ``"resume"`` when asked and an interrupted run is there (its config.yaml written), else ``"fresh"`` (replacing
    whatever is there: a first attempt, or one killed before its config.yaml). What a killed attempt left half-written
    (a staged run directory, temporary files) goes first: the cell's lock keeps every other attempt out. A fresh start
    removes the directory at once (``--overwrite``'s old run), so that an attempt killed before training replaced it
    leaves nothing its retry (which resumes) could mistake for its own."""
    run_dir = Path(run_dir)
    remove_killed_writes(run_dir)
    if resume and (run_dir / METRICS_FILE).is_file():
        return "kept"
    if resume and (run_dir / CONFIG_FILE).is_file():
        return "resume"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return "fresh"


def config_to_resume(out: str | Path | None, config: str | Path | None, resume: bool) -> str | Path | None:
    """Resuming ``out`` without a config file resumes with the run's own config.yaml (arguments may not change it)."""
    if resume and config is None and out is not None and (Path(out) / CONFIG_FILE).is_file():
        return Path(out) / CONFIG_FILE
    return config


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's config.yaml as a dict; a one-line error when ``run_dir`` is not a run directory."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ClipAdaptError(f"'{run_dir}' is not a run directory (no {CONFIG_FILE})")
    return yaml.safe_load(path.read_text()) or {}


def save_config_dict(data: dict, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def start_run_dir(accelerator, run_dir: Path, resolved: dict, resume: bool) -> None:
    """A fresh run directory holding config.yaml (kept as it is when resuming), written by the main process once
    every process has checked the directory."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and not resume:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        try:
            save_config_dict(resolved, run_dir / CONFIG_FILE)
        except DiskFull as full:  # nothing to resume yet: no directory is left that a plain rerun would refuse
            shutil.rmtree(run_dir, ignore_errors=True)
            raise full.with_hint("free some space, then run the same command again") from None
    accelerator.wait_for_everyone()
