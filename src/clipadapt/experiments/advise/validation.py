"""Leave-one-dataset-out validation of the advice on a table of results (issue 30's "validation that can fail").

For each dataset: fit the predictor on the other datasets' rows only, then for each of the held-out dataset's groups
(one source's numbers for one backbone) at each K, a CASE: the pilot's observation is the group's own zero-shot,
linear-probe, GDA and Tip-Adapter rows (what a pilot would measure; its cross-validated estimates stand in as the
published test accuracies), and the other candidate methods the group publishes are predicted. The advice chooses
among the methods the group publishes (the only ones that can be scored) that fit the budget: the highest estimate
(a pilot method's observed value, another's prediction; a method the fold cannot predict is never advised).

Regret (percentage points) = the best published accuracy among the methods that fit - the published accuracy of the
one chosen. Against three simple policies: ``cheapest`` (the cheapest method that uses the labels, i.e. anything
but zero-shot, that fits), ``clip-lora`` (CLIP-LoRA when the group publishes it and it fits, else the cheapest),
``pilot-best`` (the pilot method with the best observed value that fits). Ties go to the first name alphabetically.

Budgets are seconds of ``cost(method, n_train=K*C, n_classes=C)``; ``reference_budgets`` derives three from the cost
function itself, so they mean the same thing on any profile:

* ``quarter``: the 25th percentile of the trained candidates' (every candidate but the pilot's) costs over the
  table's (K, C): tight, where most trained runs do not fit and on the largest datasets not even the pilot's methods
  with their recipes' augmented views do;
* ``median``: their median: about half the trained (method, case) pairs fit, where the budget bites;
* ``unlimited``: every method fits.

Rank correlation: Spearman's rho between estimates and published accuracies per case over all the case's candidates
("all": what the advice's table ranks; pilot methods are exact there) and over the predicted ones only
("predicted"), each when the case has at least three; averaged per (dataset, K), then over those.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from clipadapt.errors import ConfigError
from clipadapt.experiments.advise.predictor import (
    PILOT_METHODS,
    TIE_POINTS,
    AccuracyModel,
    Observed,
    Prediction,
    PredictorConfig,
    advised,
)
from clipadapt.experiments.advise.table import ZEROSHOT, Result

Cost = Callable[[str, int, int], float]
POLICIES = ("advice", "cheapest", "clip-lora", "pilot-best")
CLIP_LORA = "clip-lora"
BUDGET_MEANING = {"quarter": "the 25th percentile of the trained candidates' costs over the table's (K, C)",
                  "median": "the median of the trained candidates' costs over the table's (K, C)",
                  "unlimited": "every method fits"}


@dataclass
class Case:
    """One held-out group at K shots."""

    dataset: str
    backbone: str
    source: str
    shots: int
    classes: int
    published: dict[str, float]  # candidate -> published accuracy (fraction)
    estimate: dict[str, float]  # pilot methods: observed; others: predicted (only those the fold predicts)
    predictions: dict[str, Prediction]
    costs: dict[str, float]
    tie_points: float = TIE_POINTS  # the advice's rule (advise.decide): a cheaper method this close is preferred

    def choose(self, policy: str, budget: float) -> str | None:
        """The method ``policy`` picks among the published ones that fit, or None when none fits."""
        fits = sorted(m for m in self.published if self.costs[m] <= budget)
        if not fits:
            return None
        labelled = sorted((m for m in fits if m != ZEROSHOT), key=lambda m: (self.costs[m], m))
        cheapest = labelled[0] if labelled else fits[0]
        if policy == "advice":  # advise.decide's rule: the best estimate, or a cheaper one within tie_points
            return advised({m: self.estimate[m] for m in fits if m in self.estimate}, self.costs, self.tie_points)
        if policy == "cheapest":
            return cheapest
        if policy == CLIP_LORA:
            return CLIP_LORA if CLIP_LORA in fits else cheapest
        if policy == "pilot-best":
            return _best([m for m in fits if m in PILOT_METHODS], self.published) or cheapest
        raise ConfigError(f"unknown policy '{policy}'; valid choices: {', '.join(POLICIES)}")

    def regret(self, method: str, budget: float) -> float:
        fits = [m for m in self.published if self.costs[m] <= budget]
        return 100 * (max(self.published[m] for m in fits) - self.published[method])


def _best(methods: Sequence[str], values: Mapping[str, float]) -> str | None:
    return min(methods, key=lambda m: (-values[m], m)) if methods else None


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho (average ranks for ties); nan with fewer than 3 values or a constant side."""
    if len(a) < 3:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def default_candidates(results: Sequence[Result], config: PredictorConfig | None = None) -> list[str]:
    """What the advice can choose: the pilot's methods and every method the whole table lets it predict."""
    model = AccuracyModel.fit(results, config=config)
    return [*PILOT_METHODS, *(m for m in model.methods if m not in PILOT_METHODS)]


def reference_budgets(results: Sequence[Result], cost: Cost, candidates: Sequence[str] | None = None
                      ) -> dict[str, float]:
    """The three budgets (seconds of ``cost``), see the module docstring."""
    candidates = list(candidates) if candidates is not None else default_candidates(results)
    sizes = sorted({(r.shots, r.classes) for r in results if r.shots > 0 and r.classes})
    if not sizes:
        raise ConfigError("the table has no few-shot row with a class count: no budget can be derived")
    trained = [cost(m, k * c, c) for k, c in sizes for m in candidates if m not in PILOT_METHODS]
    if not trained:
        raise ConfigError("no candidate beyond the pilot's methods: no budget can be derived")
    return {"quarter": float(np.percentile(trained, 25)), "median": float(np.median(trained)),
            "unlimited": math.inf}


def build_cases(results: Sequence[Result], cost: Cost, candidates: Sequence[str],
                config: PredictorConfig | None = None) -> tuple[list[Case], int]:
    """Every case, each predicted by a fit without its dataset's rows; and how many (group, K) had no case (no
    zero-shot row, or no candidate but the pilot's)."""
    usable = [r for r in results if r.classes]
    to_predict = [m for m in candidates if m not in PILOT_METHODS]
    cases: list[Case] = []
    skipped = 0
    for held in sorted({r.dataset for r in usable}):
        model = AccuracyModel.fit([r for r in usable if r.dataset != held], methods=to_predict, config=config)
        mine = [r for r in usable if r.dataset == held and r.method in candidates]
        for group in sorted({r.group for r in mine}):
            rows = [r for r in mine if r.group == group]
            zeroshot = next((r.accuracy for r in rows if r.method == ZEROSHOT and r.shots == 0), None)
            for shots in sorted({r.shots for r in rows if r.shots > 0}):
                published = {r.method: r.accuracy for r in rows if r.shots == shots and r.method != ZEROSHOT}
                if zeroshot is None or not set(published) - set(PILOT_METHODS):
                    skipped += 1
                    continue
                published[ZEROSHOT] = zeroshot
                classes = rows[0].classes or 0
                observed = Observed(shots, classes, {m: v for m, v in published.items() if m in PILOT_METHODS})
                predictions = {m: p for m, p in model.predict(observed).items() if m in published}
                estimate = {**observed.accuracies, **{m: p.accuracy for m, p in predictions.items()}}
                costs = {m: float(cost(m, shots * classes, classes)) for m in published}
                cases.append(Case(*group, shots, classes, published, estimate, predictions, costs))
    return cases, skipped


def leave_one_dataset_out(results: Sequence[Result], cost: Cost,
                          budgets: Sequence[float] | Mapping[str, float] | None = None,
                          candidates: Sequence[str] | None = None, config: PredictorConfig | None = None) -> dict:
    """The validation as data (JSON-ready: an unlimited budget's seconds is None); ``budgets`` default to
    ``reference_budgets``."""
    candidates = list(candidates) if candidates is not None else default_candidates(results, config)
    candidates = list(dict.fromkeys([ZEROSHOT, *candidates]))
    if budgets is None:
        budgets = reference_budgets(results, cost, candidates)
    named = dict(budgets) if isinstance(budgets, Mapping) else {f"{b:g} s": float(b) for b in budgets}
    cases, skipped = build_cases(results, cost, candidates, config)
    if not cases:
        raise ConfigError("leave-one-dataset-out found no case: no group has a zero-shot row and a candidate "
                          f"beyond the pilot's ({', '.join(PILOT_METHODS)}) among {', '.join(candidates)}")
    regret: dict[str, dict[str, dict]] = {}
    per_case: list[dict[str, Any]] = [
        {"dataset": c.dataset, "backbone": c.backbone, "source": c.source, "shots": c.shots, "published": c.published,
         "estimate": c.estimate, "choice": {}, "regret": {}} for c in cases]
    for name, budget in named.items():
        values: dict[str, list[float]] = {p: [] for p in POLICIES}
        for case, record in zip(cases, per_case, strict=True):
            choices = {p: case.choose(p, budget) for p in POLICIES}
            if choices["advice"] is None:
                continue
            record["choice"][name] = choices
            record["regret"][name] = {p: case.regret(m, budget) for p, m in choices.items() if m is not None}
            for p, value in record["regret"][name].items():
                values[p].append(value)
        regret[name] = {p: _summary(v) for p, v in values.items()}
    return {"candidates": candidates,
            "budgets": [{"name": n, "seconds": None if math.isinf(b) else b} for n, b in named.items()],
            "cases": len(cases), "skipped_groups": skipped,
            "clip_lora_cases": sum(CLIP_LORA in c.published for c in cases),
            "datasets": sorted({c.dataset for c in cases}),
            "regret": regret,
            "advice_beats_every_policy": {n: all(r["advice"]["mean"] < r[p]["mean"] for p in POLICIES[1:])
                                          for n, r in regret.items()},
            "rank": rank_summary(cases, per_case),
            "methods": method_errors(cases),
            "per_case": per_case}


def _summary(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "median": None, "max": None, "n": 0}
    return {"mean": float(np.mean(values)), "median": float(np.median(values)), "max": float(np.max(values)),
            "n": len(values)}


def rank_summary(cases: list[Case], per_case: list[dict]) -> dict:
    by_cell: dict[tuple[str, int], list[tuple[float, float, Case, dict]]] = {}
    for case, record in zip(cases, per_case, strict=True):
        common = [m for m in case.published if m in case.estimate]
        predicted = [m for m in common if m in case.predictions]
        rho_all = spearman([case.estimate[m] for m in common], [case.published[m] for m in common])
        rho_predicted = spearman([case.estimate[m] for m in predicted], [case.published[m] for m in predicted])
        record["spearman"] = {"all": _none(rho_all), "predicted": _none(rho_predicted)}
        by_cell.setdefault((case.dataset, case.shots), []).append((rho_all, rho_predicted, case, record))
    cells: list[dict[str, Any]] = []
    for (dataset, shots), found in sorted(by_cell.items()):
        regret: dict[str, list[float]] = {}
        for record in (f[3] for f in found):
            for budget, values in record["regret"].items():
                regret.setdefault(budget, []).append(values["advice"])
        cells.append({"dataset": dataset, "shots": shots, "cases": len(found),
                      "spearman_all": _mean([f[0] for f in found]),
                      "spearman_predicted": _mean([f[1] for f in found]),
                      "advice_regret": {b: float(np.mean(v)) for b, v in regret.items()}})
    return {"per_dataset_shots": cells, "mean_all": _mean([c["spearman_all"] for c in cells]),
            "mean_predicted": _mean([c["spearman_predicted"] for c in cells])}


def _mean(values: Sequence[float | None]) -> float | None:
    found = [v for v in values if v is not None and v == v]
    return float(np.mean(found)) if found else None


def _none(value: float) -> float | None:
    return None if value != value else value


def method_errors(cases: list[Case]) -> list[dict]:
    """Per predicted method and feature set: MAE, mean signed error (predicted - published) in points, and how
    often the published accuracy fell inside the interval."""
    found: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    for case in cases:
        for method, p in case.predictions.items():
            truth = case.published[method]
            found.setdefault((method, p.features), []).append((p.accuracy - truth, p.low <= truth <= p.high))
    return [{"method": m, "features": f, "n": len(v), "mae": 100 * float(np.mean([abs(e) for e, _ in v])),
             "bias": 100 * float(np.mean([e for e, _ in v])), "coverage": float(np.mean([c for _, c in v]))}
            for (m, f), v in sorted(found.items())]


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def validation_blocks(result: dict) -> list:
    """The tables of docs/advise.md as report blocks (reports.report renders them as markdown or HTML)."""
    from clipadapt.reports.report import Table  # reports loads torch (engine.records): not for the rest of this module

    budgets = [[b["name"], "no limit" if b["seconds"] is None else f"{b['seconds']:.4g}",
                BUDGET_MEANING.get(b["name"], "given")] for b in result["budgets"]]
    regret = [[budget, policy, _points(s["mean"]), _points(s["median"]), _points(s["max"]), str(s["n"])]
              for budget, policies in result["regret"].items() for policy, s in policies.items()]
    rank = result["rank"]
    names = [b["name"] for b in result["budgets"]]
    cells = [[c["dataset"], str(c["shots"]), str(c["cases"]), _points(c["spearman_all"]),
              _points(c["spearman_predicted"]), *(_points(c["advice_regret"].get(n)) for n in names)]
             for c in rank["per_dataset_shots"]]
    methods = [[m["method"], m["features"], str(m["n"]), f"{m['mae']:.2f}", f"{m['bias']:+.2f}",
                f"{100 * m['coverage']:.0f}%"] for m in result["methods"]]
    beats = ", ".join(f"{n}: {'yes' if ok else 'no'}" for n, ok in result["advice_beats_every_policy"].items())
    return [
        ("p", f"{result['cases']} cases (a held-out group at K shots) on {len(result['datasets'])} datasets; "
              f"{result['skipped_groups']} (group, K) without a zero-shot row or a candidate beyond the pilot's; "
              f"{result['clip_lora_cases']} cases publish CLIP-LoRA (elsewhere its policy is the cheapest). "
              f"Candidates: {', '.join(result['candidates'])}."),
        ("h3", "Budgets (seconds of the reference cost)"),
        ("table", Table(["budget", "seconds", "meaning"], budgets)),
        ("h3", "Regret (percentage points) of the advice and of the simple policies"),
        ("p", f"Advice's mean regret lower than every simple policy's: {beats}."),
        ("table", Table(["budget", "policy", "mean", "median", "max", "cases"], regret)),
        ("h3", "Rank correlation (Spearman) and the advice's mean regret per (dataset, K)"),
        ("p", f"Mean over (dataset, K): all candidates {_points(rank['mean_all'])}, predicted methods only "
              f"{_points(rank['mean_predicted'])}."),
        ("table", Table(["dataset", "K", "cases", "rho (all)", "rho (predicted)",
                         *(f"regret @ {n}" for n in names)], cells)),
        ("h3", "Prediction errors per method (leave-one-dataset-out)"),
        ("table", Table(["method", "features", "cases", "MAE (points)", "bias (points)", "in interval"], methods)),
    ]


def validation_markdown(result: dict) -> str:
    from clipadapt.reports.report import render_markdown

    return render_markdown(validation_blocks(result), Path("."))
