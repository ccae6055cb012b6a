"""Expected calibration error (Guo et al. 2017, 15 equal-width bins (lower, upper]) and the reliability diagram of
every classification run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import clipadapt
from clipadapt.engine.calibration import (
    bin_edges,
    confidences_and_correct,
    ece_from_bins,
    expected_calibration_error,
    reliability_bins,
)
from clipadapt.engine.metrics import classification_metrics


def test_ece_equals_a_hand_computation_with_confidences_on_bin_edges():
    # 15 bins of width 1/15; bin m is ((m-1)/15, m/15]
    confidences = [0.95, 0.95, 0.95, 1.0,  # bin 15 (14/15 = 0.933.., 1]: 3 of 4 correct, mean confidence 0.9625
                   0.55, 0.55,  # bin 9 (8/15 = 0.533.., 9/15 = 0.6]: 1 of 2 correct
                   4 / 15,  # exactly on the edge between bins 4 and 5: in bin 4 (3/15, 4/15], correct
                   0.3,  # bin 5 (4/15 = 0.266.., 5/15 = 0.333..], wrong
                   0.0, 0.05]  # bin 1 [0, 1/15]: a confidence of exactly 0 counts in the first bin; both wrong
    correct = [1, 1, 0, 1, 1, 0, 1, 0, 0, 0]
    expected = (4 / 10 * abs(3 / 4 - 0.9625) + 2 / 10 * abs(1 / 2 - 0.55) + 1 / 10 * abs(1 - 4 / 15)
                + 1 / 10 * abs(0 - 0.3) + 2 / 10 * abs(0 - 0.025))
    assert expected == pytest.approx(0.2033333333, abs=1e-9)
    assert expected_calibration_error(np.array(confidences), np.array(correct)) == pytest.approx(expected, abs=1e-12)

    rows = reliability_bins(np.array(confidences), np.array(correct))
    assert [r["bin"] for r in rows] == list(range(1, 16))
    assert {r["bin"]: r["count"] for r in rows if r["count"]} == {1: 2, 4: 1, 5: 1, 9: 2, 15: 4}
    assert rows[3]["accuracy"] == 1.0 and rows[3]["confidence"] == 4 / 15 and rows[3]["upper"] == 4 / 15
    assert rows[14]["accuracy"] == 0.75 and rows[14]["confidence"] == pytest.approx(0.9625)
    assert rows[1]["accuracy"] is None and rows[1]["gap"] is None  # an empty bin adds nothing
    # with [lower, upper) bins the edge value would join 0.3 in bin 5 and the ECE would be 0.1433..: not this one
    assert expected_calibration_error(np.array(confidences), np.array(correct)) != pytest.approx(0.14333, abs=1e-4)


def test_every_edge_belongs_to_the_bin_below_it():
    edges = bin_edges()
    assert len(edges) == 16 and edges[0] == 0.0 and edges[-1] == 1.0
    rows = reliability_bins(edges, np.ones(16, dtype=bool))
    assert [r["count"] for r in rows] == [2] + [1] * 14  # 0 and 1/15 both in bin 1; m/15 in bin m


def test_perfect_calibration_gives_zero_and_overconfidence_its_gap():
    # 10 at 0.8 with 8 correct, 4 at 0.5 with 2 correct: accuracy equals confidence in each bin
    confidences = np.array([0.8] * 10 + [0.5] * 4)
    correct = np.array([1] * 8 + [0] * 2 + [1, 0, 1, 0], dtype=bool)
    assert expected_calibration_error(confidences, correct) == pytest.approx(0.0, abs=1e-12)
    # always 90% sure, right half of the time: ECE is the 0.4 of overconfidence
    assert expected_calibration_error(np.full(6, 0.9), np.array([1, 0] * 3, dtype=bool)) == pytest.approx(0.4)
    assert np.isnan(expected_calibration_error(np.array([]), np.array([], dtype=bool)))


def test_bad_confidences_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(np.array([0.5, 1.2]), np.array([True, False]))
    with pytest.raises(ValueError, match="equal 1-d"):
        expected_calibration_error(np.array([0.5, 0.7]), np.array([True]))


def test_classification_metrics_ece_is_that_of_the_softmax_of_the_scores():
    # log-probabilities as scores: the softmax gives the probabilities back
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.45, 0.45, 0.1], [0.05, 0.05, 0.9]])
    labels = np.array([0, 2, 1, 2])
    confidences, correct = confidences_and_correct(probabilities.log(), labels)
    assert confidences == pytest.approx([0.7, 0.6, 0.45, 0.9], abs=1e-6)
    assert correct.tolist() == [True, False, False, True]  # a tie goes to the first class, as argmax
    expected = 1 / 4 * abs(1 - 0.7) + 1 / 4 * abs(0 - 0.6) + 1 / 4 * abs(0 - 0.45) + 1 / 4 * abs(1 - 0.9)
    metrics = classification_metrics(probabilities.log(), labels)
    assert metrics["ece"] == pytest.approx(expected, abs=1e-6)
    assert metrics["acc1"] == pytest.approx(0.5)
    # a high temperature flattens 4 classes to 0.25 each: the ECE becomes |accuracy - 0.25|, accuracy unchanged
    # (the softmax of scores this close rounds to ties in float32: correctness is that of the scores' argmax)
    scores = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    labels = np.arange(40) % 4
    flat = classification_metrics(scores / 1e6, labels)
    assert flat["acc1"] == classification_metrics(scores, labels)["acc1"]
    assert flat["ece"] == pytest.approx(abs(flat["acc1"] - 0.25), abs=1e-5)


def _read_bins(path: Path) -> list[dict]:
    with path.open() as f:
        return [{"count": int(r["count"]), "gap": float(r["gap"]) if r["gap"] else None} for r in csv.DictReader(f)]


def test_a_zero_shot_run_records_ece_and_draws_its_reliability_diagram(tiny_clip_dir, colour_folder, tmp_path):
    run = clipadapt.zeroshot(str(tiny_clip_dir), f"imagefolder:{colour_folder}", out=tmp_path / "zs", device="cpu",
                             progress=False, overrides=["data.num_workers=0"])
    record = json.loads((run.dir / "metrics.json").read_text())
    ece = record["metrics"]["ece"]
    assert 0.0 <= ece <= 1.0
    assert all(0.0 <= t["metrics"]["ece"] <= 1.0 for t in record["templates"].values())
    bins = _read_bins(run.dir / "reliability.csv")
    assert len(bins) == 15 and sum(b["count"] for b in bins) == record["metrics"]["n"]
    assert ece_from_bins(bins) == pytest.approx(ece, abs=1e-5)  # the csv's numbers give metrics.json's ece
    assert (run.dir / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = clipadapt.report([run.dir], tmp_path / "report")
    markdown = report.markdown.read_text()
    assert "| mean per-class | ECE |" in markdown and f"{ece:.4f}" in markdown
    assert "reliability diagram" in markdown


def test_a_trained_run_and_its_re_evaluation_record_the_same_ece(tiny_clip_dir, colour_folder, tmp_path):
    run = clipadapt.train("linear-probe", str(tiny_clip_dir), f"imagefolder:{colour_folder}", out=tmp_path / "lp",
                          device="cpu", progress=False, overrides=["data.num_workers=0", "train.batch_size=4"])
    ece = run.metrics["ece"]
    assert 0.0 <= ece <= 1.0
    assert (run.dir / "reliability.png").is_file() and (run.dir / "reliability.csv").is_file()
    assert clipadapt.evaluate(run.dir)["metrics"]["ece"] == pytest.approx(ece, abs=1e-6)


def test_runs_written_before_ece_show_a_dash_in_the_table():
    from clipadapt.classification.report import COLUMNS, summary_table
    from clipadapt.reports.collect import RunInfo, table_rows

    def run(seed: int, metrics: dict) -> RunInfo:
        record = {"method": "lora", "model": "m", "dataset": "d", "seed": seed,
                  "metrics": {"acc1": 0.8, "acc5": 1.0, "mean_per_class_acc": 0.8, **metrics},
                  "params": {"trainable": 10, "trainable_pct": 1.0}, "cost": {"train_time_s": 1.0}}
        return RunInfo(Path(f"runs/{metrics}-{seed}"), {"method": "lora", "model": {"spec": "m"}}, record)

    column = COLUMNS.index("ECE")
    assert COLUMNS[column - 1] == "mean per-class"
    (old,) = summary_table(table_rows([run(0, {})])).rows
    assert old[column] == "-"
    (mixed,) = summary_table(table_rows([run(0, {}), run(1, {"ece": 0.125}), run(2, {"ece": 0.075})])).rows
    assert mixed[column] == "0.1000 ± 0.0354"  # over the two runs that have it


def test_a_diverged_row_leaves_the_ece_of_the_others_and_all_nan_gives_nan():
    import math

    import torch

    from clipadapt.engine.metrics import classification_metrics

    scores = torch.tensor([[4.0, 0.0], [0.0, 4.0], [float("nan"), float("nan")]])
    labels = [0, 1, 1]
    finite = classification_metrics(scores[:2], labels[:2])["ece"]
    assert classification_metrics(scores, labels)["ece"] == pytest.approx(finite)
    assert math.isnan(classification_metrics(scores[2:], labels[2:])["ece"])
