"""``clipadapt.testtime``: test-time adaptation on the unlabelled test stream (``clipadapt testtime tda|tpt``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clipadapt.api.runs import Run
from clipadapt.config import apply_overrides, as_overrides, format_overrides, given, load_config

PathLike = str | Path


def testtime(method: str, model: str | None = None, dataset: str | None = None, out: PathLike | None = None, *,
             stream_seed: int | None = None, overwrite: bool = False, device: str | None = None,
             config: PathLike | None = None, overrides: Iterable[str] = (), progress: bool = True,
             **settings: Any) -> Run:
    """Classify ``dataset``'s test split as an unlabelled stream (order seeded by ``stream_seed``, default 1) with a
    test-time method, ``tda`` (training-free caches) or ``tpt`` (prompt tuning per image): a run directory whose
    metrics.json says ``protocol: test-time (unlabelled test stream)`` and holds the zero-shot metrics beside them.
    Settings as ``tda={"positive_alpha": 1.0}`` or ``tpt={"steps": 2}``."""
    from clipadapt.api.workflows import _progress
    from clipadapt.classification.testtime_run import TestTimeExperiment, run_test_time

    experiment = load_config(TestTimeExperiment, config, as_overrides(settings, overrides))
    experiment = apply_overrides(experiment, format_overrides(given({
        "stream.method": method, "stream.seed": stream_seed, "model.spec": model, "model.device": device,
        "data.dataset": dataset, "run.out": str(out) if out is not None else None,
        "run.overwrite": overwrite or None})))
    with _progress(progress):
        return Run(run_test_time(experiment).run_dir)
