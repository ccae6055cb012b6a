"""``clipadapt testtime``: a run labelled as test-time, whose predictions do not depend on the labels, with its
stream's seed and order recorded; ``train`` refuses a test-time method."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

import clipadapt
from clipadapt.cli import app

runner = CliRunner()
SMALL_TPT = ["data.num_workers=0", "tpt.views=3", "tpt.selection=0.5"]


def run(method, tiny_clip_dir, colour_folder, out, *settings, stream_seed=None):
    return clipadapt.testtime(method, str(tiny_clip_dir), f"imagefolder:{colour_folder}", out, device="cpu",
                              stream_seed=stream_seed, progress=False, overrides=[*SMALL_TPT, *settings])


def predictions(run_dir):
    with open(run_dir / "predictions.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("method", ["tda", "tpt"])
def test_a_test_time_run_is_labelled_and_records_its_stream(method, tiny_clip_dir, colour_folder, tmp_path):
    result = run(method, tiny_clip_dir, colour_folder, tmp_path / "a")
    record = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert record["protocol"] == "test-time (unlabelled test stream)" and record["method"] == method
    n = record["metrics"]["n"]
    assert record["stream"]["seed"] == 1 and record["stream"]["images"] == n
    assert 0 <= record["metrics"]["acc1"] <= 1 and record["zeroshot_metrics"]["n"] == n
    rows = predictions(result.dir)
    assert [int(r["stream_index"]) for r in rows] == list(range(n))
    assert sorted(int(r["position"]) for r in rows) == list(range(n))  # every image once
    other = run(method, tiny_clip_dir, colour_folder, tmp_path / "b", stream_seed=2)
    assert other.record["stream"]["order_digest"] != record["stream"]["order_digest"]  # another order, recorded
    assert [r["position"] for r in predictions(other.dir)] != [r["position"] for r in rows]


@pytest.mark.parametrize(("method", "settings"), [("tda", []), ("tda", ["tda.views=3", "tda.selection=0.5"]),
                                                  ("tpt", [])], ids=["tda", "tda-views", "tpt"])
def test_the_labels_never_reach_the_method(method, settings, tiny_clip_dir, colour_folder, tmp_path, monkeypatch):
    """The same stream with its labels scrambled gives the same predictions: the labels are read only to score."""
    import clipadapt.classification.testtime_run as testtime_run

    first = run(method, tiny_clip_dir, colour_folder, tmp_path / "true", *settings)
    encode = testtime_run.encode_split

    def scrambled(*args, **kwargs):
        encoded = encode(*args, **kwargs)
        encoded.labels = np.random.default_rng(0).permutation(encoded.labels)[::-1].copy()
        return encoded

    monkeypatch.setattr(testtime_run, "encode_split", scrambled)
    second = run(method, tiny_clip_dir, colour_folder, tmp_path / "scrambled", "run.feature_cache=false", *settings)
    assert predictions(second.dir) == predictions(first.dir)
    if method == "tda":  # the views it ran with are recorded, resolved (-1 is the reference's choice by dataset)
        views = 3 if settings else 0
        assert first.record["stream"]["views"] == first.record["config"]["tda"]["views"] == views
        # with views, the starting classifier through them is recorded beside the image-alone zeroshot_metrics
        assert ("zeroshot_through_views" in first.record["stream"]) == bool(views)
    assert first.record["config"]["tpt"]["augmix"] is True  # unset: AugMix off on ImageNet's family only


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_clip_dir, colour_folder, tmp_path):
    data = ["--model", str(tiny_clip_dir), "--dataset", f"imagefolder:{colour_folder}"]
    for args, message in [
        (["train", "tda", *data, "--out", str(tmp_path / "t")],
         "tda is a test-time method: it reads no labels and adapts on the unlabelled test stream, so it does not "
         "train; run `clipadapt testtime tda`"),
        (["testtime", "tent", *data, "--out", str(tmp_path / "t")],
         "unknown test-time method 'tent'; valid choices: tda, tpt"),
        (["testtime", "tpt", *data, "--set", "tpt.steps=-1", "--out", str(tmp_path / "t")],
         "tpt.steps must be 0 or more, got -1"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.count("\n") == 1, result.output
    assert list(tmp_path.iterdir()) == []


def test_the_test_time_protocol_of_the_benchmark(tiny_clip_dir, colour_folder, tmp_path):
    """Zero-shot, tda and tpt per stream seed on the target: rows with accuracy and ECE, the zero-shot row the
    classifier the test-time runs started from, a report section of its own, and no few-shot rows."""
    out = tmp_path / "bench"
    result = clipadapt.benchmark(str(tiny_clip_dir), [f"imagefolder:{colour_folder}"], "tda,tpt", seeds=[1, 2],
                                 protocol="test-time", out=out, device="cpu", progress=False, overrides=SMALL_TPT)
    assert not result.failed, result.failed
    with open(out / "benchmark.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["protocol"] for r in rows} == {"test-time"}
    assert sorted((r["method"], r["seed"]) for r in rows) == [("tda", "1"), ("tda", "2"), ("tpt", "1"), ("tpt", "2"),
                                                              ("zeroshot", "")]
    assert all(0 <= float(r["acc1"]) <= 1 and 0 <= float(r["ece"]) <= 1 for r in rows)
    zero_shot = next(r for r in rows if r["method"] == "zeroshot")
    for r in rows:
        record = json.loads((tmp_path / r["run"] / "metrics.json").read_text())
        if r["method"] != "zeroshot":
            assert record["protocol"] == "test-time (unlabelled test stream)"
            assert record["stream"]["seed"] == int(r["seed"]) and r["run"].endswith(f"stream-seed{r['seed']}")
            assert record["zeroshot_metrics"]["acc1"] == pytest.approx(float(zero_shot["acc1"]), abs=1e-6)
    markdown = (out / "benchmark.md").read_text()
    assert "## Test-time adaptation (unlabelled test stream)" in markdown and "stream seeds 1, 2" in markdown
    assert "**expected calibration error (%), lower is better**" in markdown


def test_a_test_time_method_outside_the_test_time_protocol_is_refused(tiny_clip_dir, colour_folder, tmp_path):
    result = runner.invoke(app, ["benchmark", "--model", str(tiny_clip_dir), "--datasets",
                                 f"imagefolder:{colour_folder}", "--methods", "linear-probe,tda", "--protocol",
                                 "few-shot", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2, result.output
    assert result.output == ("error: tda: test-time methods run only in --protocol test-time (they read no labels, "
                             "so they have no few-shot or transfer cells)\n")
    assert not (tmp_path / "b").exists()


def test_a_test_time_run_is_skipped_or_refused_where_a_classifier_is_needed(tiny_clip_dir, colour_folder, tmp_path):
    from clipadapt.webapp.panels import find_runs, make_panel

    tda = run("tda", tiny_clip_dir, colour_folder, tmp_path / "runs" / "tda")
    zero_shot = clipadapt.zeroshot(str(tiny_clip_dir), f"imagefolder:{colour_folder}", out=tmp_path / "runs" / "zs",
                                   device="cpu", progress=False, overrides=["data.num_workers=0"])
    assert find_runs([tmp_path / "runs"]) == [zero_shot.dir.resolve()]  # the folder's test-time run is passed over
    with pytest.raises(clipadapt.ConfigError, match="is a test-time run: it adapted on its test stream"):
        make_panel(tda.dir)
    with pytest.raises(clipadapt.ClipAdaptError, match=r"is a test-time run \(tda\): it adapted on its test stream "
                                                       r"and kept no classifier to load"):
        clipadapt.predict(tda.dir, [next((colour_folder / "red").iterdir())], device="cpu")
    with pytest.raises(clipadapt.ConfigError, match="is a test-time run: it adapted on its test stream and kept no "
                                                    "model to export"):
        clipadapt.export(tda.dir, tmp_path / "export")
    with pytest.raises(clipadapt.ClipAdaptError, match=r"is a test-time run \(tda\): it adapted on its test stream "
                                                       r"and kept no weights to load"):
        clipadapt.evaluate(tda.dir, device="cpu")
    from clipadapt.reports.collect import find_runs as collect

    labels = sorted(r.label for r in collect([tmp_path / "runs"]))
    assert labels[0] == "tda (test-time (unlabelled test stream), stream seed 1)"  # never a bare few-shot row
    record = tda.record
    assert record["params"]["trainable"] == 0 and record["stream"]["positive_cache"] >= 1
    tpt = run("tpt", tiny_clip_dir, colour_folder, tmp_path / "tpt").record
    assert tpt["params"]["trainable"] == tpt["stream"]["tuned_per_image"] > 0 and tpt["stream"]["reset_per_image"]
    assert tpt["templates"] == ["a photo of a {}."]  # the classifier TPT starts from


def test_the_benchmark_keeps_test_time_out_of_all_and_its_streams_its_own(tiny_clip_dir, colour_folder):
    from clipadapt.experiments.benchmark import BenchmarkConfig

    config = BenchmarkConfig(model=str(tiny_clip_dir), datasets=[f"imagefolder:{colour_folder}"], protocols=["all"])
    assert "test-time" not in config.protocols and config.test_time_methods == []
    with pytest.raises(clipadapt.ConfigError, match=r"--set stream.\*: the benchmark gives each test-time cell its "
                                                    r"stream from --seeds"):
        BenchmarkConfig(model=str(tiny_clip_dir), datasets=[f"imagefolder:{colour_folder}"], protocols=["test-time"],
                        overrides=["stream.seed=3"])
