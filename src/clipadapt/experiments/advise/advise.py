"""``clipadapt advise``: which method to use for these images and this budget, answered without running them all.

Four steps, each its own module:

1. **pilot** (``pilot.py``): zero-shot, linear probe, GDA and Tip-Adapter on the user's K-shot data, scored by
   stratified k-fold cross-validation over train + val (never the test split), with intervals. These are seconds
   on cached features.
2. **cost probe** (``costs.py``): a few training steps of every candidate method on this device, and from its
   recipe (epochs, iterations, views, batch) the predicted time and peak memory of its full run.
3. **prediction** (``predictor.py``): for the methods the pilot does not run, a small model fit on the published
   per-dataset table (``published.csv``, extended by the user's own benchmarks with ``history``) predicts accuracy
   from what the pilot observed; its interval comes from its leave-one-dataset-out errors.
4. **answer** (here): one table (method, accuracy and interval, from the pilot or predicted, time, memory, fits
   the budget), the accuracy-against-time figure with its frontier, one recommendation with its reason,
   ``advice.json``.

The recommendation is the method with the highest estimated accuracy among those that fit the budget; a cheaper
method whose estimate is within ``tie_points`` (0.5) of it is preferred: the predictions' leave-one-dataset-out
errors are 1.6-3.8 points (docs/advise.md), so a half-point lead does not justify a dearer run; the validation
scores this same rule. Everything is decided before anything is written under ``out``:
a bad budget, a method or history folder, a dataset without training images, a budget nothing fits, all stop
with one line and leave ``out`` untouched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.experiments.advise.predictor import TIE_POINTS, advised
from clipadapt.io import atomic_write_json, atomic_write_text

ZERO_SHOT = "zeroshot"


@dataclass
class AdviseConfig:
    model: str
    dataset: str
    shots: int = 16
    seed: int = 1
    folds: int = 5
    budget_time: str | None = None  # "90s", "10m", "2h"
    budget_memory: str | None = None  # "512MB", "8GB"
    methods: list[str] | None = None  # None: every method the pilot runs or the table can predict
    history: list[str] = field(default_factory=list)
    device: str = "auto"
    out: str = "runs/advise"
    tie_points: float = TIE_POINTS


@dataclass
class Choice:
    """One row of the answer."""

    method: str
    accuracy: float | None  # fraction; None: nothing to estimate it from
    low: float | None
    high: float | None
    basis: str  # "pilot" (measured here by cross-validation), "predicted" (from the table), "none"
    seconds: float
    memory_mb: float  # the probe's peak: a lower bound of the run's (docs/advise.md)
    fits: bool  # within the time and memory budgets
    why_not: str = ""  # over the time budget, over the memory budget, not estimated, the probe failed
    features: str = ""  # a prediction's feature set (zs or zs+<anchor>)

    @property
    def advisable(self) -> bool:
        return self.fits and self.accuracy is not None

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Advice:
    config: AdviseConfig
    choices: list[Choice]
    recommended: str
    reason: str
    budget_seconds: float | None
    budget_memory_mb: float | None
    pilot: dict
    costs: dict
    table: dict
    seconds: float
    out: Path | None = None
    files: dict[str, str] = field(default_factory=dict)

    def choice(self, method: str) -> Choice:
        return next(choice for choice in self.choices if choice.method == method)

    def to_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "recommended": self.recommended, "reason": self.reason,
                "budget": {"seconds": self.budget_seconds, "memory_mb": self.budget_memory_mb},
                "choices": [choice.row() for choice in self.choices], "pilot": self.pilot, "costs": self.costs,
                "table": self.table, "seconds": round(self.seconds, 2), "files": self.files}


def _duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.2f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _memory_text(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def check_methods(methods: Sequence[str] | None) -> list[str] | None:
    """Every named method is a registered classification method (or ``zeroshot``); one line naming the bad one."""
    if methods is None:
        return None
    from clipadapt.methods import list_methods

    valid = [ZERO_SHOT, *list_methods()]
    for name in methods:
        if name not in valid:
            raise ConfigError(f"unknown method '{name}' for advise; valid choices: {', '.join(valid)}")
    if not methods:
        raise ConfigError(f"advise needs at least one method; valid choices: {', '.join(valid)}")
    return list(dict.fromkeys(methods))


def candidates(named: list[str] | None, pilot_methods: Sequence[str], predictable: Sequence[str]) -> list[str]:
    """The methods advised about: the named ones, or every pilot method and every method the table predicts
    that this library can train."""
    if named is not None:
        return named
    from clipadapt.methods import list_methods

    trainable = set(list_methods())
    return list(dict.fromkeys([*pilot_methods, *(m for m in predictable if m in trainable)]))


def decide(choices: list[Choice], tie_points: float = TIE_POINTS) -> tuple[str, str]:
    """The recommended method and the reason in one sentence, from rows already marked ``fits``."""
    fitting = [c for c in choices if c.advisable]
    if not fitting:
        raise ClipAdaptError("no method with an accuracy estimate fits the budget")
    by_name = {c.method: c for c in fitting}
    best = max(fitting, key=lambda c: (c.accuracy, -c.seconds))
    chosen = by_name[advised({c.method: c.accuracy for c in fitting}, {c.method: c.seconds for c in fitting},
                             tie_points)]
    basis = "measured by cross-validation here" if chosen.basis == "pilot" else "predicted from published results"
    reason = (f"{chosen.method} has the highest estimated accuracy that fits the budget "
              f"({chosen.accuracy:.1%}, {basis}; about {_duration_text(chosen.seconds)}, "
              f"{_memory_text(chosen.memory_mb)})")
    if chosen is not best:
        reason = (f"{chosen.method} is within {tie_points:g} points of {best.method} ({chosen.accuracy:.1%} against "
                  f"{best.accuracy:.1%}) at {_duration_text(chosen.seconds)} instead of "
                  f"{_duration_text(best.seconds)}, so the cheaper one is advised")
    others = [c for c in fitting if c is not chosen]
    if others and chosen is best:
        runner = max(others, key=lambda c: c.accuracy)
        reason += f"; next is {runner.method} at {runner.accuracy:.1%}"
    over = [c for c in choices if not c.fits and c.accuracy is not None and c.accuracy > chosen.accuracy]
    if over:
        top = max(over, key=lambda c: c.accuracy)
        reason += f"; {top.method} ({top.accuracy:.1%}) would be better but is {top.why_not}"
    return chosen.method, reason + "."


def check_device(device: str) -> None:
    """A device this machine has, before minutes of pilot (``resolve_device`` refuses one it lacks)."""
    from clipadapt.models import resolve_device

    resolve_device(device)


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; valid choices: a folder (new or existing)")


def estimable(named: list[str] | None, model) -> None:
    """Named methods of which none can be estimated would leave nothing to advise: say so before the pilot."""
    from clipadapt.experiments.advise.pilot import PILOT_METHODS

    known = [*PILOT_METHODS, *model.methods]
    if named is not None and not set(named) & set(known):
        raise ConfigError(f"none of the methods {', '.join(named)} can be estimated (no published results, not in "
                          f"the pilot); valid choices: any list with one of {', '.join(known)}")


def probe_each(methods: Sequence[str], probe, say) -> tuple[dict, dict[str, str]]:
    """``probe(methods)`` at once (the image tower measured once); when one fails, each method on its own, and the
    one that fails is reported and kept out of the advice."""
    try:
        return probe(list(methods)), {}
    except ClipAdaptError:
        pass
    costs, failed = {}, {}
    for method in methods:
        try:
            costs |= probe([method])
        except ClipAdaptError as error:
            failed[method] = str(error)
            say(f"probe of {method} failed: {error}")
    return costs, failed


def build_choices(methods: Sequence[str], pilot, predictions: dict, costs: dict, budget_seconds: float | None,
                  budget_memory_mb: float | None, failed: dict[str, str] | None = None) -> list[Choice]:
    """One row per method: the pilot's measurement where it ran the method, else the model's prediction.
    ``failed``: methods whose probe failed (no cost: listed, never advised)."""
    rows = []
    for method, problem in (failed or {}).items():
        rows.append(Choice(method, None, None, None, "none", math.inf, math.inf, False, f"the probe failed: {problem}"))
    for method in (m for m in methods if m in costs):
        cost = costs[method]
        if method in pilot.scores:
            score = pilot.scores[method]
            accuracy, low, high, basis = score.accuracy, score.low, score.high, "pilot"
        elif method in predictions:
            guess = predictions[method]
            accuracy, low, high, basis = guess.accuracy, guess.low, guess.high, "predicted"
        else:
            accuracy = low = high = None
            basis = "none"
        reasons = []
        if budget_seconds is not None and cost.seconds > budget_seconds:
            reasons.append(f"over the time budget ({_duration_text(cost.seconds)} > {_duration_text(budget_seconds)})")
        if budget_memory_mb is not None and cost.memory_mb > budget_memory_mb:
            reasons.append(f"over the memory budget ({_memory_text(cost.memory_mb)} > "
                           f"{_memory_text(budget_memory_mb)})")
        fits = not reasons
        if accuracy is None:
            reasons.append("not estimated: no published results for it and the pilot does not run it")
        rows.append(Choice(method, accuracy, low, high, basis, float(cost.seconds), float(cost.memory_mb),
                           fits, "; ".join(reasons), predictions[method].features if basis == "predicted" else ""))
    return sorted(rows, key=lambda c: (c.accuracy is None, -(c.accuracy or 0.0), c.seconds))


def check_budget(choices: list[Choice], budget_seconds: float | None, budget_memory_mb: float | None) -> None:
    """A budget nothing fits is an error that names the cheapest method and its cost (the lightest under a memory
    budget alone)."""
    if any(c.advisable for c in choices):
        return
    estimated = [c for c in choices if c.accuracy is not None] or choices
    by_memory = budget_seconds is None and budget_memory_mb is not None
    cheapest = min(estimated, key=lambda c: (c.memory_mb, c.seconds) if by_memory else (c.seconds, c.memory_mb))
    asked = ", ".join(text for text in (
        f"time {_duration_text(budget_seconds)}" if budget_seconds is not None else "",
        f"memory {_memory_text(budget_memory_mb)}" if budget_memory_mb is not None else "") if text)
    raise ClipAdaptError(f"no method with an estimate fits the budget ({asked}); the "
                         f"{'lightest' if by_memory else 'cheapest'} is {cheapest.method} "
                         f"(about {_duration_text(cheapest.seconds)}, {_memory_text(cheapest.memory_mb)})")


def frontier(choices: list[Choice]) -> list[str]:
    """Methods no other method beats on both estimated accuracy and time (the Pareto frontier)."""
    known = [c for c in choices if c.accuracy is not None and math.isfinite(c.seconds)]
    return [c.method for c in known if not any(
        o is not c and o.accuracy >= c.accuracy and o.seconds <= c.seconds
        and (o.accuracy > c.accuracy or o.seconds < c.seconds) for o in known)]


def advice_markdown(advice: Advice) -> str:
    cfg = advice.config
    edge = set(frontier(advice.choices))
    lines = [f"# Advice: {cfg.dataset}, {cfg.shots} shots, {cfg.model}", "",
             f"**Recommended: {advice.recommended}.** {advice.reason}", "",
             "| method | accuracy | interval | from | time | memory | fits | frontier |",
             "|---|---|---|---|---|---|---|---|"]
    for c in advice.choices:
        accuracy = "-" if c.accuracy is None else f"{c.accuracy:.1%}"
        interval = "-" if c.low is None else f"{c.low:.1%} - {c.high:.1%}"
        fits = "yes" if c.fits else f"no: {c.why_not}"
        lines.append(f"| {c.method} | {accuracy} | {interval} | {c.basis} | {_duration_text(c.seconds)} | "
                     f"{_memory_text(c.memory_mb)} | {fits} | {'*' if c.method in edge else ''} |")
    pilot = advice.pilot
    lines += ["", f"Pilot: {pilot['scheme']} over {pilot['images']} train + val images of {pilot['classes']} "
              f"classes ({pilot['folds']} folds, seed {pilot['seed']}), {pilot['seconds']:.1f} s. "
              f"Predictions: {advice.table['rows']} published results from {advice.table['sources']} sources"
              f"{' and ' + str(len(cfg.history)) + ' history folders' if cfg.history else ''}. "
              f"Advice took {advice.seconds:.1f} s.", ""]
    return "\n".join(lines)


def plot_advice(advice: Advice, path: Path) -> None:
    """Estimated accuracy against predicted time (log), intervals as bars, the frontier joined, the budget shaded."""
    from clipadapt.reports.plots import save_figure, subplots

    known = [c for c in advice.choices if c.accuracy is not None and math.isfinite(c.seconds)]
    edge = set(frontier(advice.choices))
    fig, ax = subplots(figsize=(7, 4.5))
    for c in known:
        colour = "tab:blue" if c.basis == "pilot" else "tab:orange"
        below, above = max(0.0, c.accuracy - c.low), max(0.0, c.high - c.accuracy)
        ax.errorbar([c.seconds], [100 * c.accuracy], yerr=[[100 * below], [100 * above]],
                    fmt="o" if c.fits else "x", color=colour, capsize=2, alpha=1.0 if c.fits else 0.5)
        ax.annotate(c.method + (" (advised)" if c.method == advice.recommended else ""), (c.seconds, 100 * c.accuracy),
                    textcoords="offset points", xytext=(4, 4), fontsize=7,
                    fontweight="bold" if c.method == advice.recommended else "normal")
    line = sorted((c for c in known if c.method in edge), key=lambda c: c.seconds)
    ax.plot([c.seconds for c in line], [100 * c.accuracy for c in line], "-", color="grey", lw=1, label="frontier")
    if advice.budget_seconds is not None:
        right = max(ax.get_xlim()[1], 2 * advice.budget_seconds)
        ax.axvspan(advice.budget_seconds, right, color="red", alpha=0.06, label="over the time budget")
        ax.set_xlim(right=right)
    ax.plot([], [], "o", color="tab:blue", label="pilot (cross-validated)")
    ax.plot([], [], "o", color="tab:orange", label="predicted (published table)")
    ax.set_xscale("log")
    ax.set_xlabel("predicted time of the full run (s, log)")
    ax.set_ylabel("estimated accuracy (%)")
    ax.set_title(f"{advice.config.dataset}, {advice.config.shots} shots", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def run_advise(config: AdviseConfig, on_progress: Callable[[str], None] | None = None) -> Advice:
    """Pilot, cost probe, prediction and answer (the module docstring); writes advice.json, advice.md and
    advice.png under ``config.out`` only once everything is decided."""
    from clipadapt.experiments.advise.costs import parse_duration, parse_memory, probe_costs
    from clipadapt.experiments.advise.pilot import PILOT_METHODS, run_pilot
    from clipadapt.experiments.advise.predictor import AccuracyModel, Observed
    from clipadapt.experiments.advise.table import published_table

    say = on_progress or (lambda text: None)
    start = time.perf_counter()
    budget_seconds = parse_duration(config.budget_time) if config.budget_time is not None else None
    budget_memory = parse_memory(config.budget_memory) if config.budget_memory is not None else None
    if config.shots <= 0:
        raise ConfigError(f"--shots must be a positive number of images per class, not {config.shots}")
    if config.folds < 2:
        raise ConfigError(f"--folds must be at least 2, not {config.folds}")
    named = check_methods(config.methods)
    check_device(config.device)
    check_out(Path(config.out))
    results = published_table([Path(p) for p in config.history])  # a bad history folder stops here
    model = AccuracyModel.fit(results)
    estimable(named, model)
    methods = candidates(named, PILOT_METHODS, model.methods)
    say(f"pilot: {', '.join(PILOT_METHODS)} by cross-validation")  # all four, named or not: the predictions' anchors
    pilot = run_pilot(config.model, config.dataset, config.shots, seed=config.seed, folds=config.folds,
                      device=config.device, methods=PILOT_METHODS, on_progress=say)
    say(f"cost probe: {len(methods)} methods")
    costs, failed = probe_each(methods, lambda these: probe_costs(
        config.model, these, n_train=pilot.train_images, n_classes=pilot.classes, device=config.device,
        per_image_encode_seconds=pilot.per_image_encode_seconds, on_progress=say, pilot=pilot,
        n_test=pilot.test_images, dataset=config.dataset), say)
    observed = Observed(shots=config.shots, classes=pilot.classes,
                        accuracies={m: s.accuracy for m, s in pilot.scores.items()})
    predictions = model.predict(observed)
    choices = build_choices(methods, pilot, predictions, costs, budget_seconds, budget_memory, failed)
    check_budget(choices, budget_seconds, budget_memory)
    recommended, reason = decide(choices, config.tie_points)
    sources = sorted({r.source for r in results})
    advice = Advice(config, choices, recommended, reason, budget_seconds, budget_memory,
                    pilot=asdict(pilot), costs={m: asdict(c) for m, c in costs.items()},
                    table={"rows": len(results), "sources": len(sources), "history": list(config.history),
                           "methods_predicted": list(model.methods), "model": model.describe()},
                    seconds=time.perf_counter() - start)
    write_advice(advice, Path(config.out))
    return advice


def write_advice(advice: Advice, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    advice.out = out
    advice.files = {"json": str(out / "advice.json"), "markdown": str(out / "advice.md"),
                    "figure": str(out / "advice.png")}
    if any(c.accuracy is not None for c in advice.choices):
        plot_advice(advice, out / "advice.png")
    atomic_write_text(out / "advice.md", advice_markdown(advice))
    atomic_write_json(out / "advice.json", advice.to_dict())
