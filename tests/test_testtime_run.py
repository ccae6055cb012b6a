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


@pytest.mark.parametrize("method", ["tda", "tpt"])
def test_the_labels_never_reach_the_method(method, tiny_clip_dir, colour_folder, tmp_path, monkeypatch):
    """The same stream with its labels scrambled gives the same predictions: the labels are read only to score."""
    import clipadapt.classification.testtime_run as testtime_run

    first = run(method, tiny_clip_dir, colour_folder, tmp_path / "true")
    encode = testtime_run.encode_split

    def scrambled(*args, **kwargs):
        encoded = encode(*args, **kwargs)
        encoded.labels = np.random.default_rng(0).permutation(encoded.labels)[::-1].copy()
        return encoded

    monkeypatch.setattr(testtime_run, "encode_split", scrambled)
    second = run(method, tiny_clip_dir, colour_folder, tmp_path / "scrambled", "run.feature_cache=false")
    assert predictions(second.dir) == predictions(first.dir)


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
