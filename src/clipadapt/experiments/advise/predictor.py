"""Predict a method's few-shot accuracy on the user's data from what the pilot observes there.

The model, per target method, is a ridge regression of the method's GAIN over the best observed baseline, on
features the pilot measures and the published groups also have. One feature set per ANCHOR, a pilot method with
labels (linear-probe, gda, tip-adapter), and one without:

* ``zs+<anchor>``: [zero-shot, anchor, max(anchor - zero-shot, 0), log2 K, ln C], gain over max(zero-shot,
  anchor) (the third feature is that baseline's kink, so a gain over either is linear in the features);
* ``zs``: [zero-shot, log2 K, ln C], gain over zero-shot: always available.

A row of the table is one (dataset, backbone, source) group at K shots: its zero-shot row (shots 0), its anchor's row
at K (when the source prints one) and the method's row at K. The source is nothing more than that row: no source or
backbone feature, so the model has to hold across papers. Features are standardised on the rows fitted, the penalty
is ``alpha`` times the identity on them, the intercept (the mean gain) is not penalised; a target with no spread
gives every coefficient zero.

Leave-one-dataset-out (LODO) residuals (published - predicted, each dataset's rows predicted by a fit on the other
datasets only) do two jobs. They choose the feature set: an anchor is used for a method only where its LODO mean
absolute error is lower than the ``zs`` model's on the same rows, and the prediction takes the lowest-error anchor
the pilot observed, else ``zs``. And they give the interval: their ``quantiles`` (10th and 90th percentile by
default) added to the prediction, an 80% interval when datasets are exchangeable; validation.py measures its
coverage one level further out. A method is predicted only with ``min_rows`` rows on ``min_datasets`` datasets (8
and 3 by default); ``AccuracyModel.skipped`` says why each other one is not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from clipadapt.errors import ConfigError
from clipadapt.experiments.advise.table import ZEROSHOT, Result

LINEAR_PROBE = "linear-probe"
PILOT_METHODS = (ZEROSHOT, LINEAR_PROBE, "gda", "tip-adapter")  # what the pilot measures (pilot.py's, issue 30)
ANCHORS = PILOT_METHODS[1:]
# estimates closer than this (percentage points) are a tie and the cheaper method is advised: the prediction errors
# are 1.6-3.8 points (docs/advise.md), so a half-point lead is not worth a dearer run
TIE_POINTS = 0.5


def advised(estimate: Mapping[str, float], cost: Mapping[str, float], tie_points: float = TIE_POINTS) -> str | None:
    """The advice's rule, shared by ``advise.decide`` and the validation: among ``estimate``'s methods, the
    cheapest of those within ``tie_points`` (percentage points) of the best estimate; None when there is none."""
    if not estimate:
        return None
    best = max(estimate.values())
    close = [m for m, value in estimate.items() if 100 * (best - value) <= tie_points]
    return min(close, key=lambda m: (cost[m], -estimate[m], m))
ZS = "zs"


@dataclass
class PredictorConfig:
    alpha: float = 1.0  # ridge penalty on standardised features
    min_rows: int = 8  # table rows a method needs to be predicted...
    min_datasets: int = 3  # ...on this many datasets (leave-one-dataset-out needs several)
    quantiles: tuple[float, float] = (0.1, 0.9)  # of the LODO residuals: the interval

    def __post_init__(self) -> None:
        low, high = self.quantiles
        if self.alpha < 0 or self.min_rows < 1 or self.min_datasets < 2 or not 0 <= low < high <= 1:
            raise ConfigError(f"predictor settings alpha={self.alpha}, min_rows={self.min_rows}, min_datasets="
                              f"{self.min_datasets}, quantiles={self.quantiles}: need alpha >= 0, min_rows >= 1, "
                              "min_datasets >= 2 and 0 <= low < high <= 1")


@dataclass
class Prediction:
    method: str
    accuracy: float  # fraction
    low: float
    high: float
    basis: str  # "predicted" (this model); the advice adds "pilot" for what it measured
    features: str = ""  # the feature set used: "zs" or "zs+<anchor>"


@dataclass
class Observed:
    shots: int
    classes: int
    accuracies: dict[str, float]  # pilot method -> accuracy (fraction); needs "zeroshot"


def feature_names(kind: str) -> tuple[str, ...]:
    if kind == ZS:
        return "zero-shot", "log2 K", "ln C"
    anchor = kind.removeprefix("zs+")
    return "zero-shot", anchor, f"max({anchor} - zero-shot, 0)", "log2 K", "ln C"


def features(kind: str, zeroshot: float, pilot: dict[str, float], shots: int, classes: int
             ) -> tuple[list[float], float] | None:
    """(the feature vector, the baseline the gain is over), or None when ``pilot`` lacks the kind's anchor."""
    if kind == ZS:
        return [zeroshot, math.log2(shots), math.log(classes)], zeroshot
    anchor = pilot.get(kind.removeprefix("zs+"))
    if anchor is None:
        return None
    kink = max(anchor - zeroshot, 0.0)
    return [zeroshot, anchor, kink, math.log2(shots), math.log(classes)], max(zeroshot, anchor)


@dataclass
class Ridge:
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, alpha: float) -> Ridge:
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)  # a constant column standardises to 0: no effect
        z = (x - mean) / scale
        coef = np.linalg.solve(z.T @ z + alpha * np.eye(x.shape[1]), z.T @ (y - y.mean()))
        return cls(mean, scale, coef, float(y.mean()))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.intercept + ((x - self.mean) / self.scale) @ self.coef

    def raw(self, names: Sequence[str]) -> dict[str, float]:
        """The coefficients on the features' own units (and the intercept): what to print."""
        slopes = self.coef / self.scale
        return {"intercept": float(self.intercept - slopes @ self.mean),
                **{n: float(s) for n, s in zip(names, slopes, strict=True)}}


@dataclass
class MethodModel:
    """One method's fit on one feature set, with its leave-one-dataset-out residuals."""

    method: str
    kind: str  # "zs" or "zs+<anchor>"
    ridge: Ridge
    rows: int
    datasets: list[str]
    lodo: list[tuple[str, float]]  # (held-out dataset, published - predicted) per row
    quantiles: tuple[float, float]
    row_ids: list[int] = field(default_factory=list)  # the examples fitted, in lodo's order

    @property
    def mae(self) -> float:
        return float(np.mean(np.abs(self.residuals)))

    @property
    def residuals(self) -> list[float]:
        return [r for _, r in self.lodo]

    @property
    def interval(self) -> tuple[float, float]:
        low, high = np.quantile(self.residuals, self.quantiles)
        return float(low), float(high)

    def describe(self) -> dict:
        low, high = self.interval
        return {"method": self.method, "features": self.kind, "rows": self.rows, "datasets": len(self.datasets),
                "coefficients": self.ridge.raw(feature_names(self.kind)),
                "lodo_mae_points": 100 * self.mae,
                "interval_points": (100 * low, 100 * high)}


@dataclass
class Example:
    dataset: str
    zeroshot: float
    pilot: dict[str, float]  # the group's anchors at the same K
    shots: int
    classes: int
    accuracy: float


def examples(results: Sequence[Result]) -> dict[str, list[Example]]:
    """Per method, its rows at K > 0 that have a zero-shot row in their group and a class count."""
    zeroshot = {r.group: r.accuracy for r in results if r.method == ZEROSHOT and r.shots == 0}
    anchors: dict[tuple, dict[str, float]] = {}
    for r in results:
        if r.method in ANCHORS:
            anchors.setdefault((r.group, r.shots), {})[r.method] = r.accuracy
    found: dict[str, list[Example]] = {}
    for r in results:
        if r.shots > 0 and r.classes and r.group in zeroshot:
            pilot = {m: a for m, a in anchors.get((r.group, r.shots), {}).items() if m != r.method}
            found.setdefault(r.method, []).append(Example(r.dataset, zeroshot[r.group], pilot, r.shots, r.classes,
                                                          r.accuracy))
    return found


def fit_method(method: str, kind: str, rows: list[Example], config: PredictorConfig) -> MethodModel | str:
    """The fit, or why there is none."""
    built = [(i, e, features(kind, e.zeroshot, e.pilot, e.shots, e.classes)) for i, e in enumerate(rows)]
    usable = [(i, e, f) for i, e, f in built if f is not None]
    datasets = sorted({e.dataset for _, e, _ in usable})
    if len(usable) < config.min_rows or len(datasets) < config.min_datasets:
        return (f"{len(usable)} rows on {len(datasets)} datasets with features {kind} (needs {config.min_rows} "
                f"on {config.min_datasets})")
    x = np.array([f[0] for _, _, f in usable])
    y = np.array([e.accuracy - f[1] for _, e, f in usable])  # the gain over the baseline
    names = np.array([e.dataset for _, e, _ in usable])
    ids = np.array([i for i, _, _ in usable])
    lodo: list[tuple[str, float]] = []
    order: list[int] = []
    for held in datasets:
        out = names == held
        fold = Ridge.fit(x[~out], y[~out], config.alpha)
        lodo += [(held, float(r)) for r in y[out] - fold.predict(x[out])]
        order += [int(i) for i in ids[out]]
    return MethodModel(method, kind, Ridge.fit(x, y, config.alpha), len(usable), datasets, lodo, config.quantiles,
                       order)


def preference(fits: dict[str, MethodModel]) -> list[str]:
    """The feature sets to try, best first: the anchors that beat ``zs`` on their own rows (LODO mean absolute
    error), by that error, then ``zs``."""
    plain = fits[ZS]
    plain_error = dict(zip(plain.row_ids, np.abs(plain.residuals), strict=True))
    better = [(model.mae, kind) for kind, model in fits.items() if kind != ZS
              and model.mae < float(np.mean([plain_error[i] for i in model.row_ids]))]
    return [kind for _, kind in sorted(better)] + [ZS]


@dataclass
class AccuracyModel:
    models: dict[str, dict[str, MethodModel]]  # method -> feature set -> fit, in preference order (zs last)
    skipped: dict[str, str] = field(default_factory=dict)  # method -> why it is not predicted
    config: PredictorConfig = field(default_factory=PredictorConfig)

    @classmethod
    def fit(cls, results: Sequence[Result], methods: Sequence[str] | None = None,
            config: PredictorConfig | None = None) -> AccuracyModel:
        """Fit every method of ``results`` (or ``methods``) but zero-shot; rows without a class count or without
        their group's zero-shot row are not used."""
        config = config or PredictorConfig()
        rows = examples(results)
        wanted = list(methods) if methods is not None else sorted(m for m in rows if m != ZEROSHOT)
        models: dict[str, dict[str, MethodModel]] = {}
        skipped: dict[str, str] = {}
        for method in wanted:
            if method == ZEROSHOT:
                continue
            fitted = {kind: fit_method(method, kind, rows.get(method, []), config)
                      for kind in (ZS, *(f"zs+{a}" for a in ANCHORS if a != method))}
            fits = {kind: f for kind, f in fitted.items() if isinstance(f, MethodModel)}
            if ZS in fits:  # an anchor's rows are a subset of zs's: no anchor fits without zs
                models[method] = {kind: fits[kind] for kind in preference(fits)}
            else:
                skipped[method] = str(fitted[ZS])
        return cls(models, skipped, config)

    @property
    def methods(self) -> list[str]:
        return list(self.models)

    @property
    def residuals(self) -> dict[str, list[float]]:
        """Each method's LODO residuals (fractions) of its preferred feature set."""
        return {m: next(iter(fits.values())).residuals for m, fits in self.models.items()}

    def describe(self) -> list[dict]:
        return [model.describe() for fits in self.models.values() for model in fits.values()]

    def predict(self, observed: Observed, include_observed: bool = False) -> dict[str, Prediction]:
        """A prediction for every method it can predict (not those the pilot observed, unless asked)."""
        zeroshot = observed.accuracies.get(ZEROSHOT)
        if zeroshot is None or observed.shots < 1 or observed.classes < 2:
            raise ConfigError(f"a prediction needs the zero-shot accuracy, shots >= 1 and classes >= 2; got "
                              f"methods {sorted(observed.accuracies)}, shots {observed.shots}, classes "
                              f"{observed.classes}")
        found: dict[str, Prediction] = {}
        for method, fits in self.models.items():
            if method in observed.accuracies and not include_observed:
                continue
            pilot = {m: a for m, a in observed.accuracies.items() if m in ANCHORS and m != method}
            for kind, model in fits.items():
                built = features(kind, zeroshot, pilot, observed.shots, observed.classes)
                if built is None:
                    continue
                x, base = built
                value = base + float(model.ridge.predict(np.array([x]))[0])
                low, high = model.interval
                found[method] = Prediction(method, _clip(value), _clip(value + low), _clip(value + high),
                                           "predicted", kind)
                break
        return found


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))
