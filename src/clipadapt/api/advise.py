"""``clipadapt.advise``: which adaptation method to use for a dataset and a budget (``clipadapt advise``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from clipadapt.api.runs import Run
from clipadapt.errors import ClipAdaptError

PathLike = str | Path


def advise(model: str, dataset: str, shots: int = 16, *, budget_time: str | None = None,
           budget_memory: str | None = None, methods: str | Sequence[str] | None = None,
           history: PathLike | Sequence[PathLike] = (), seed: int = 1, folds: int = 5, device: str = "auto",
           out: PathLike = "runs/advise", then_train: bool = False, progress: bool = True,
           on_progress: Callable[[str], None] | None = None, on_advice: Callable[[Any], None] | None = None):
    """Advice for ``model`` on ``dataset`` at ``shots`` per class within a budget (``"2h"``, ``"8GB"``): the pilot
    (zero-shot, linear probe, GDA, Tip-Adapter by cross-validation on train + val), every candidate's cost on this
    ``device`` and its accuracy predicted from the published table (and ``history``: benchmark output folders).

    Returns an ``Advice`` (``.recommended``, ``.reason``, ``.choices``, ``.to_dict()``); advice.json, advice.md and
    advice.png are written under ``out``. ``then_train=True`` then runs the recommended method under
    ``out/run`` (which must not exist yet) and returns ``(advice, run)``; ``on_advice(advice)`` is called before that
    run starts. A zero-shot recommendation runs ``zeroshot`` with the dataset's own prompt and nothing chosen
    (``zeroshot.select_on=none``: the head the pilot scored).
    """
    from clipadapt.api.workflows import _names, _progress, train, zeroshot
    from clipadapt.experiments.advise.advise import ZERO_SHOT, AdviseConfig, run_advise

    folders = [history] if isinstance(history, str | Path) else list(history)
    config = AdviseConfig(model=model, dataset=dataset, shots=shots, seed=seed, folds=folds,
                          budget_time=budget_time, budget_memory=budget_memory,
                          methods=_names(methods) if methods is not None else None,
                          history=[str(folder) for folder in folders], device=device, out=str(out))
    run_dir = Path(out) / "run"
    if then_train and run_dir.exists():
        raise ClipAdaptError(f"'{run_dir}' exists: --then-train trains into OUT/run; valid choices: another --out, or "
                             f"remove it")
    with _progress(progress):
        advice = run_advise(config, on_progress=on_progress)
        if on_advice is not None:
            on_advice(advice)
        if not then_train:
            return advice
        if advice.recommended == ZERO_SHOT:
            run: Run = zeroshot(model, dataset, out=run_dir, seed=seed, device=device, progress=progress,
                                overrides=["zeroshot.select_on=none"])
        else:
            run = train(advice.recommended, model, dataset, shots=shots, seed=seed, out=run_dir, device=device,
                        progress=progress)
    return advice, run


def advise_table(history: PathLike | Sequence[PathLike] = ()) -> list[dict[str, Any]]:
    """The published per-dataset few-shot results ``advise`` predicts from (and ``history`` folders' benchmark
    results), one dict per row: dataset, method, shots, accuracy (fraction), backbone, source, where."""
    from dataclasses import asdict

    from clipadapt.experiments.advise.table import published_table

    folders = [history] if isinstance(history, str | Path) else list(history)
    return [asdict(row) for row in published_table([Path(folder) for folder in folders])]
