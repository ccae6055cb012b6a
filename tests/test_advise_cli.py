"""``clipadapt advise`` from the command line: the answer end to end, --then-train, --table, --history, bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from clipadapt.cli import app
from tests.helpers import make_image_folder

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def colours(colour_folder) -> str:
    """Class folders the dataset splits itself (train, val and test hold different images)."""
    return f"imagefolder:{colour_folder}"


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]  # progress lines may come before it
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_advise_end_to_end_then_train(tiny_clip_dir, colours, tmp_path):
    out = tmp_path / "advice"
    result = invoke("advise", "--model", tiny_clip_dir, "--dataset", colours, "--shots", 2, "--folds", 2,
                    "--methods", "zeroshot,linear-probe,tip-adapter-f", "--device", "cpu", "--out", out,
                    "--then-train")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "advice.json").read_text())
    choices = {c["method"]: c for c in record["choices"]}
    assert set(choices) == {"zeroshot", "linear-probe", "tip-adapter-f"}
    assert choices["linear-probe"]["basis"] == "pilot" and choices["tip-adapter-f"]["basis"] == "predicted"
    assert all(c["seconds"] > 0 and c["memory_mb"] > 0 for c in choices.values() if c["method"] != "zeroshot")
    fitting = [c for c in record["choices"] if c["fits"] and c["accuracy"] is not None]
    best = max(c["accuracy"] for c in fitting)
    assert choices[record["recommended"]]["accuracy"] >= best - 0.005  # the best, or a cheaper tie
    assert record["pilot"]["splits_read"] == ["train", "val"] and record["pilot"]["test_images"] > 0
    assert f"recommended: {record['recommended']}" in result.output
    assert (out / "advice.png").stat().st_size > 1000 and "**Recommended:" in (out / "advice.md").read_text()
    run = json.loads((out / "run" / "metrics.json").read_text())  # the recommended run, trained
    assert run["method"] == record["recommended"] or (record["recommended"] == "zeroshot" and "acc1" in str(run))


def test_a_budget_nothing_fits_writes_nothing(tiny_clip_dir, colours, tmp_path):
    out = tmp_path / "advice"
    result = invoke("advise", "--model", tiny_clip_dir, "--dataset", colours, "--shots", 2, "--folds", 2,
                    "--methods", "linear-probe,tip-adapter-f", "--budget-time", "0.001s", "--device", "cpu",
                    "--out", out)
    one_line_error(result, "no method with an estimate fits the budget (time 0.00 s); the cheapest is")
    assert not out.exists()


@pytest.mark.parametrize(("args", "fragments"), [
    (["--budget-time", "soon"], ["'soon'", "90s, 10m"]),
    (["--budget-memory", "lots"], ["'lots'", "512MB, 8GB"]),
    (["--methods", "lorra"], ["unknown method 'lorra' for advise; valid choices: zeroshot,"]),
    (["--shots", "0"], ["--shots must be a positive number"]),
])
def test_bad_input_is_one_line_and_writes_nothing(args, fragments, tmp_path):
    out = tmp_path / "advice"
    one_line_error(invoke("advise", "--model", "unused", "--dataset", "unused", "--out", out, *args), *fragments)
    assert not out.exists()


def test_a_history_folder_that_is_not_a_benchmark(tmp_path):
    out = tmp_path / "advice"
    (tmp_path / "notes").mkdir()
    one_line_error(invoke("advise", "--model", "unused", "--dataset", "unused", "--history", tmp_path / "notes",
                          "--out", out), str(tmp_path / "notes"), "benchmark.csv")
    assert not out.exists()
    one_line_error(invoke("advise", "--table", "--history", tmp_path / "notes"), "benchmark.csv")


def test_a_dataset_without_training_images(tiny_clip_dir, tmp_path):
    make_image_folder(tmp_path / "only-test", per_class=2, splits=("test",))
    out = tmp_path / "advice"
    one_line_error(invoke("advise", "--model", tiny_clip_dir, "--dataset", f"imagefolder:{tmp_path / 'only-test'}",
                          "--device", "cpu", "--out", out), "has no training images")
    assert not out.exists()


def test_table_prints_the_published_results():
    result = invoke("advise", "--table")
    assert result.exit_code == 0, result.output
    assert "RN50: mean accuracy (%) over datasets" in result.output and "ViT-B/16" in result.output
    assert "clip-lora" in result.output and "linear-probe" in result.output and "sources" in result.output


def test_advise_needs_a_model_and_dataset(tmp_path):
    one_line_error(invoke("advise", "--out", tmp_path / "a"), "advise needs --model and --dataset")


def test_zero_shot_recommended_then_run_as_scored(tiny_clip_dir, colours, tmp_path):
    """--methods zeroshot: the only candidate is advised; --then-train runs zeroshot with nothing chosen (the head the
    pilot scored), under OUT/run; a second --then-train into the same OUT refuses before any work."""
    out = tmp_path / "advice"
    result = invoke("advise", "--model", tiny_clip_dir, "--dataset", colours, "--shots", 2, "--folds", 2,
                    "--methods", "zeroshot", "--device", "cpu", "--out", out, "--then-train")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "advice.json").read_text())["recommended"] == "zeroshot"
    assert (out / "run" / "metrics.json").is_file()
    assert "select_on: none" in (out / "run" / "config.yaml").read_text()
    before = (out / "advice.json").stat().st_mtime_ns
    again = invoke("advise", "--model", tiny_clip_dir, "--dataset", colours, "--methods", "zeroshot", "--out", out,
                   "--then-train")
    one_line_error(again, f"'{out / 'run'}' exists: --then-train trains into OUT/run")
    assert (out / "advice.json").stat().st_mtime_ns == before


@pytest.mark.parametrize(("args", "fragments"), [
    (["--methods", "lora,bitfit"], ["none of the methods lora, bitfit can be estimated", "zeroshot, linear-probe"]),
    (["--device", "cuda"], ["device 'cuda' is not available on this machine; valid choices: auto, cpu"]),
])
def test_refused_before_the_pilot(args, fragments, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "advice"
    one_line_error(invoke("advise", "--model", "unused", "--dataset", "unused", "--out", out, *args), *fragments)
    assert not out.exists()


def test_an_out_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    one_line_error(invoke("advise", "--model", "unused", "--dataset", "unused", "--out", tmp_path / "taken"),
                   "is a file; valid choices: a folder")


def test_history_rows_join_the_table_and_the_model(tmp_path):
    """A benchmark's results (seed-averaged, classes and model from its runs) join the published table under their
    own source, and the accuracy model learns from them."""
    import clipadapt
    from clipadapt.experiments.advise.predictor import examples
    from clipadapt.experiments.advise.table import published_table
    from clipadapt.experiments.benchmark_report import write_csv

    folder = tmp_path / "bench"
    cells = [("zeroshot", 0, 1, 0.5), ("tip-adapter", 4, 1, 0.55), ("coop", 4, 1, 0.6), ("coop", 4, 2, 0.7)]
    rows = []
    for method, shots, seed, acc in cells:
        run = folder / "runs" / "world-shapes" / method / (f"{shots}shot-seed{seed}" if shots else "")
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.json").write_text(json.dumps({"model": "world:tiny", "num_classes": 48}))
        rows.append({"protocol": "few-shot", "dataset": "world:shapes", "target": "", "method": method,
                     "shots": shots, "seed": seed, "acc1": acc, "base_acc1": "", "novel_acc1": "", "hm": "",
                     "run": str(run), "error": ""})
    write_csv(folder / "benchmark.csv", rows)
    (folder / "benchmark.md").write_text("# Benchmark of world:tiny\n")
    published = clipadapt.advise_table()
    extra = [row for row in clipadapt.advise_table(history=folder) if row not in published]
    coop = [row for row in extra if row["method"] == "coop"]
    assert len(extra) == 3 and len(coop) == 1
    assert coop[0]["accuracy"] == pytest.approx(0.65) and coop[0]["backbone"] == "world:tiny"
    assert coop[0]["classes"] == 48 and coop[0]["source"] == f"history {folder}"
    used = examples(published_table([folder]))["coop"]
    assert sum(1 for e in used if e.dataset == "world:shapes") == 1  # the fit sees the history's cell
