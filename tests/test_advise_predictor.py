"""advise's table, predictor and leave-one-dataset-out validation, on SYNTHETIC tables generated here (not published
numbers: every accuracy below comes from the formulas in this file) and on a benchmark output written in the
benchmark's own format."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from clipadapt.errors import ClipAdaptError
from clipadapt.experiments.advise.predictor import PILOT_METHODS, AccuracyModel, Observed, PredictorConfig
from clipadapt.experiments.advise.table import (
    HISTORY_COLUMNS,
    NUM_CLASSES,
    PUBLISHED_COLUMNS,
    Result,
    load_history,
    load_published,
    published_table,
)
from clipadapt.experiments.advise.validation import (
    default_candidates,
    leave_one_dataset_out,
    reference_budgets,
    spearman,
    validation_markdown,
)

DATASETS = list(NUM_CLASSES)
SHOTS = (1, 2, 4, 8, 16)
# (source, backbone, methods beside zero-shot): gaps as in real tables (C has no linear probe, B no CLIP-LoRA)
SOURCES = (("synthetic A", "ViT-B/16", ("linear-probe", "coop", "clip-lora", "tip-adapter")),
           ("synthetic B", "RN50", ("linear-probe", "coop", "tip-adapter", "maple")),
           ("synthetic C", "ViT-B/16", ("coop", "clip-lora", "maple")))


def linear_probe(zs, k, a=1.0):
    return zs - 0.10 + 0.04 * a * math.log2(k)  # below zero-shot at 1 shot, above it from 8 (a = 1)


# gain over zero-shot on a dataset of adaptability a (drawn per dataset: what zero-shot alone does not tell and a
# linear probe does); the best method changes with K: coop/maple at 1-2 shots, clip-lora from 8
GAINS = {"coop": lambda zs, k, a: a * (0.02 + 0.004 * math.log2(k)),
         "clip-lora": lambda zs, k, a: -0.06 + a * 0.035 * math.log2(k),
         "tip-adapter": lambda zs, k, a: a * (0.01 + 0.006 * math.log2(k)),
         "maple": lambda zs, k, a: a * (0.025 + 0.004 * math.log2(k))}


def rate(method: str) -> float:
    return {"zeroshot": 0.0, "linear-probe": 1e-4, "tip-adapter": 5e-5, "gda": 5e-5, "coop": 0.02,
            "clip-lora": 0.05, "maple": 0.03}.get(method, 0.04)


def cost(method: str, n_train: int, n_classes: int) -> float:
    """A stand-in for the reference cost: seconds linear in the training images."""
    return 0.001 * n_classes + rate(method) * n_train


def synthetic_table(gains=GAINS, sources=SOURCES, noise=0.0, seed=0, winner: float | None = None) -> list[Result]:
    """SYNTHETIC rows: zero-shot drawn per (dataset, backbone), the others from ``gains`` (+ Gaussian ``noise``);
    ``winner``: a method "winner" in every group, that margin above the group's best."""
    rng = np.random.default_rng(seed)
    zs_of = {(d, b): rng.uniform(0.45, 0.9) for d in DATASETS for b in ("ViT-B/16", "RN50")}
    adaptability = {d: rng.uniform(0.5, 1.5) for d in DATASETS}
    rows = []
    for source, backbone, methods in sources:
        for dataset in DATASETS:
            zs, a = zs_of[dataset, backbone], adaptability[dataset]
            rows.append(Result(dataset, "zeroshot", 0, zs, backbone, source, "generated", NUM_CLASSES[dataset]))
            for k in SHOTS:
                found = {}
                for method in methods:
                    value = linear_probe(zs, k, a) if method == "linear-probe" else zs + gains[method](zs, k, a)
                    found[method] = float(np.clip(value + rng.normal(0, noise), 0.01, 0.99))
                if winner is not None:
                    found["winner"] = max(zs, *found.values()) + winner
                rows += [Result(dataset, m, k, a, backbone, source, "generated", NUM_CLASSES[dataset])
                         for m, a in found.items()]
    return rows


def write_published(path: Path, rows: list[list]) -> Path:
    path.write_text(",".join(PUBLISHED_COLUMNS) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_published_csv_round_trip_percent_to_fraction(tmp_path):
    path = write_published(tmp_path / "published.csv", [
        ["eurosat", "zeroshot", 0, 48.4, "ViT-B/16", "synthetic S Table 1", "generated"],
        ["eurosat", "coop", 16, 84.7, "ViT-B/16", "synthetic S Table 1", "generated"],
        ["cub200", "coop", 4, 70.25, "RN50", "synthetic T Table 2", "generated"]])
    rows = load_published(path)
    assert [(r.dataset, r.method, r.shots, r.accuracy, r.classes) for r in rows] == [
        ("eurosat", "zeroshot", 0, pytest.approx(0.484), 10), ("eurosat", "coop", 16, pytest.approx(0.847), 10),
        ("cub200", "coop", 4, pytest.approx(0.7025), None)]  # a dataset outside NUM_CLASSES: no class count
    assert rows[0].group == ("eurosat", "ViT-B/16", "synthetic S Table 1")
    assert published_table(path=path) == rows


@pytest.mark.parametrize("rows, header, message", [
    ([["dtd", "coop", 4, 120, "RN50", "s", "w"]], None, r"line 2: shots 4 must be >= 0 and acc 120.0 in \[0, 100\]"),
    ([["dtd", "coop", "four", 50, "RN50", "s", "w"]], None, "line 2: shots 'four' and acc '50' must be an integer"),
    ([["dtd", "coop", 4, 50, "RN50", "", "w"]], None, "line 2: empty source"),
    ([["dtd", "coop", 4, 50, "RN50", "s", "w"]] * 2, None, "has coop at 4 shots on dtd .RN50, s. twice"),
    ([], "dataset,method,shots,accuracy", "expected 'dataset,method,shots,acc,backbone,source,where'"),
])
def test_published_csv_refuses_a_bad_row_in_one_line(tmp_path, rows, header, message):
    path = write_published(tmp_path / "p.csv", rows)
    if header:
        path.write_text(header + "\n")
    with pytest.raises(ClipAdaptError, match=message) as error:
        load_published(path)
    assert "\n" not in str(error.value)
    with pytest.raises(ClipAdaptError, match="published table .* not found"):
        load_published(tmp_path / "missing.csv")


def test_a_method_always_best_by_a_margin_is_advised_with_zero_regret():
    table = synthetic_table(noise=0.005, winner=0.05)
    result = leave_one_dataset_out(table, cost)
    assert result["cases"] == 11 * 3 * 5 and "winner" in result["candidates"]
    assert result["regret"]["unlimited"]["advice"] == {"mean": 0.0, "median": 0.0, "max": 0.0, "n": 165}
    assert {c["choice"]["unlimited"]["advice"] for c in result["per_case"]} == {"winner"}
    # the simple policies never pick it, so each loses at least the margin
    assert all(result["regret"]["unlimited"][p]["mean"] > 5 for p in ("cheapest", "clip-lora", "pilot-best"))
    assert all(result["advice_beats_every_policy"].values())


def test_advice_learns_a_best_method_that_changes_with_shots():
    """coop/maple win at 1-2 shots, clip-lora from 8 (GAINS): a fixed policy pays at one end, the advice does not."""
    result = leave_one_dataset_out(synthetic_table(noise=0.01), cost)
    for budget in ("median", "unlimited"):
        regret = result["regret"][budget]
        assert regret["advice"]["mean"] < 0.5
        assert all(regret["advice"]["mean"] < regret[p]["mean"] - 0.5 for p in ("cheapest", "clip-lora", "pilot-best"))
    advised = {(c["shots"], c["choice"]["unlimited"]["advice"]) for c in result["per_case"]
               if c["source"] != "synthetic B"}  # B publishes no clip-lora
    assert (1, "clip-lora") not in advised and (16, "clip-lora") in advised
    assert result["rank"]["mean_all"] > 0.8
    coverage = {(m["method"], m["features"]): m["coverage"] for m in result["methods"]}
    assert {m for m, _ in coverage} == {"clip-lora", "coop", "maple"} and ("coop", "zs+linear-probe") in coverage
    assert all(0.6 <= c <= 1.0 for c in coverage.values())  # nominal 80% (10th-90th percentile of LODO residuals)


def test_leave_one_dataset_out_never_uses_the_held_out_rows():
    """'steady' gains exactly 5 points everywhere but on eurosat (20): only a fit that saw eurosat's rows could
    predict more than 5 there."""
    gains = {"steady": lambda zs, k, a: 0.05, "coop": GAINS["coop"]}
    table = [r if not (r.method == "steady" and r.dataset == "eurosat") else
             Result(r.dataset, r.method, r.shots, r.accuracy + 0.15, r.backbone, r.source, r.where, r.classes)
             for r in synthetic_table(gains, (("synthetic D", "ViT-B/16", ("steady", "coop")),))]
    model = AccuracyModel.fit(table)
    assert [r for d, r in model.models["steady"]["zs"].lodo if d == "eurosat"] == pytest.approx([0.15] * 5)
    result = leave_one_dataset_out(table, cost)
    for case in result["per_case"]:
        gain = case["estimate"]["steady"] - case["published"]["zeroshot"]
        if case["dataset"] == "eurosat":  # held out: exactly the other ten datasets' 5 points
            assert gain == pytest.approx(0.05, abs=1e-9)
        else:  # eurosat's 20 points are in these folds' fits, and move them
            assert abs(gain - 0.05) > 1e-3


def test_a_method_with_too_few_rows_is_not_predicted_and_says_why():
    table = synthetic_table() + [Result(d, "rare", 16, 0.9, "ViT-B/16", "synthetic A", "generated", NUM_CLASSES[d])
                                 for d in ("dtd", "eurosat")]
    model = AccuracyModel.fit(table)
    assert "rare" not in model.methods
    assert model.skipped["rare"] == "2 rows on 2 datasets with features zs (needs 8 on 3)"
    assert AccuracyModel.fit(table, config=PredictorConfig(min_rows=2, min_datasets=2)).methods.count("rare") == 1


def test_prediction_uses_the_anchor_with_the_lowest_lodo_error_that_the_pilot_observed():
    """Noise-free: tip-adapter's gain is a * f(K), so it reveals the dataset's adaptability a exactly; the linear
    probe less so (it says nothing at 1 shot); zero-shot not at all."""
    model = AccuracyModel.fit(synthetic_table())
    assert set(model.methods) == {"clip-lora", "coop", "linear-probe", "maple", "tip-adapter"}
    assert list(model.models["clip-lora"]) == ["zs+tip-adapter", "zs+linear-probe", "zs"]
    assert model.models["clip-lora"]["zs+tip-adapter"].mae < model.models["clip-lora"]["zs"].mae
    zs, k, a = 0.6, 16, 1.0
    pilot = {"zeroshot": zs, "linear-probe": linear_probe(zs, k, a), "tip-adapter": zs + GAINS["tip-adapter"](zs, k, a)}
    truth = zs + GAINS["clip-lora"](zs, k, a)
    for observed, kind, tolerance in ((pilot, "zs+tip-adapter", 0.01), ({"zeroshot": zs}, "zs", 0.05),
                                      ({"zeroshot": zs, "linear-probe": pilot["linear-probe"]}, "zs+linear-probe",
                                       0.02)):
        lora = model.predict(Observed(k, 100, observed))["clip-lora"]
        assert lora.features == kind and lora.basis == "predicted"
        assert lora.accuracy == pytest.approx(truth, abs=tolerance)
        assert lora.low < lora.accuracy < lora.high
    predictions = model.predict(Observed(k, 100, pilot))
    assert "tip-adapter" not in predictions and "linear-probe" not in predictions  # observed, not predicted
    assert "tip-adapter" in model.predict(Observed(k, 100, pilot), include_observed=True)
    assert model.residuals["clip-lora"] == model.models["clip-lora"]["zs+tip-adapter"].residuals
    with pytest.raises(ClipAdaptError, match="needs the zero-shot accuracy"):
        model.predict(Observed(16, 100, {"linear-probe": 0.7}))


def test_spearman_and_budgets():
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1, 2], [1, 2]))
    table = synthetic_table()
    budgets = reference_budgets(table, cost)
    sizes = {(r.shots, r.classes) for r in table if r.shots and r.classes}
    trained = [cost(m, k * c, c) for k, c in sizes for m in default_candidates(table) if m not in PILOT_METHODS]
    assert min(trained) <= budgets["quarter"] < budgets["median"] < budgets["unlimited"] == math.inf
    assert budgets["median"] == pytest.approx(float(np.median(trained)))  # over every (K, C) x trained method
    assert budgets["quarter"] == pytest.approx(float(np.percentile(trained, 25)))
    result = leave_one_dataset_out(table, cost, budgets=[1.0, 100.0])
    assert [b["name"] for b in result["budgets"]] == ["1 s", "100 s"]
    text = validation_markdown(leave_one_dataset_out(table, cost))
    assert "| unlimited | no limit | every method fits |" in text
    assert "| budget | policy | mean | median | max | cases |" in text and "| eurosat | 16 | 3 |" in text


def write_benchmark(out: Path) -> None:
    """A small benchmark output in the benchmark's own format: benchmark_report's writer and columns, a
    metrics.json per run (the fields load_history reads), benchmark.md's title."""
    from clipadapt.experiments.benchmark_report import COLUMNS, write_csv

    nan = float("nan")
    cells = [("few-shot", "world:shapes", "zeroshot", 0, "", 0.5, ""),
             ("few-shot", "world:shapes", "linear-probe", 1, 1, 0.6, ""),
             ("few-shot", "world:shapes", "linear-probe", 1, 2, 0.7, ""),
             ("few-shot", "world:shapes", "coop", 1, 1, nan, "RuntimeError: out of memory"),
             ("few-shot", "world:shapes", "coop", 1, 2, 0.8, ""),
             ("few-shot", "world:colour", "zeroshot", 0, "", 0.4, ""),
             ("base-to-novel", "world:shapes", "coop", 16, 1, nan, "")]
    rows = []
    for protocol, dataset, method, shots, seed, acc, error in cells:
        run = out / "runs" / dataset.replace(":", "-") / method  # the benchmark's layout (benchmark.plan)
        run = run if method == "zeroshot" else run / f"{shots}shot-seed{seed}"
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.json").write_text(json.dumps({"method": method, "model": "world:tiny", "dataset": dataset,
                                                      "num_classes": 6 if dataset == "world:shapes" else 3}))
        rows.append({"protocol": protocol, "dataset": dataset, "target": dataset, "method": method, "shots": shots,
                     "seed": seed, "acc1": acc, "base_acc1": 0.9 if protocol != "few-shot" else nan,
                     "novel_acc1": nan, "hm": nan, "run": str(run), "error": error})
    assert set(HISTORY_COLUMNS) <= set(COLUMNS)
    write_csv(out / "benchmark.csv", rows)
    (out / "benchmark.md").write_text("# Benchmark of world:tiny\n\nfew-shot; ...\n")


def test_a_benchmark_output_reads_back_as_rows_with_the_mean_over_seeds(tmp_path):
    write_benchmark(tmp_path / "bench")
    expected = [("world:shapes", "zeroshot", 0, 0.5, 6), ("world:shapes", "linear-probe", 1, 0.65, 6),
                ("world:shapes", "coop", 1, 0.8, 6), ("world:colour", "zeroshot", 0, 0.4, 3)]

    def read(folder):
        rows = load_history(folder)
        assert {(r.backbone, r.source, r.where) for r in rows} == {
            ("world:tiny", f"history {folder}", str(folder / "benchmark.csv"))}
        return [(r.dataset, r.method, r.shots, pytest.approx(r.accuracy), r.classes) for r in rows]

    assert read(tmp_path / "bench") == expected
    shutil.move(tmp_path / "bench", tmp_path / "moved")  # the csv's run paths are stale: found under moved/runs
    assert read(tmp_path / "moved") == expected
    for path in (tmp_path / "moved" / "runs").rglob("metrics.json"):
        path.unlink()
    rows = load_history(tmp_path / "moved")  # no run left: the model from benchmark.md, no class count
    assert {r.backbone for r in rows} == {"world:tiny"} and {r.classes for r in rows} == {None}
    path = write_published(tmp_path / "p.csv", [["dtd", "zeroshot", 0, 44.0, "RN50", "s", "w"]])
    assert [r.dataset for r in published_table([tmp_path / "moved"], path=path)] == ["dtd", *(r.dataset for r in rows)]


def test_a_folder_that_is_not_a_benchmark_output_is_refused_in_one_line(tmp_path):
    with pytest.raises(ClipAdaptError) as error:
        load_history(tmp_path)
    assert str(error.value) == (f"history folder '{tmp_path}' is not a benchmark output: it has no benchmark.csv (a "
                                "`clipadapt benchmark --out DIR` folder holds benchmark.csv, benchmark.md and runs/)")
    (tmp_path / "benchmark.csv").write_text("method,acc\ncoop,0.5\n")
    with pytest.raises(ClipAdaptError, match="lacks the columns protocol, dataset, shots, seed, acc1, run, error"):
        load_history(tmp_path)
    (tmp_path / "benchmark.csv").write_text(",".join(HISTORY_COLUMNS) + "\nfew-shot,dtd,coop,1,1,,r,failed\n")
    with pytest.raises(ClipAdaptError, match="has no few-shot result"):
        load_history(tmp_path)
