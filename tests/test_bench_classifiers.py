"""``clipadapt bench`` on transformers image classifiers beside CLIP towers, in the three gradient modes, and the
accuracy-against-speed study of a compare directory (its Pearson r)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipadapt.cli import app
from clipadapt.experiments.bench import MODES, run_bench
from clipadapt.experiments.compare import CompareConfig, run_compare
from tests.helpers import clipadapt_home

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory) -> Path:
    """A random transformers ViT image classifier: 2 layers of width 32, 32 px images in 8 px patches."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, num_labels=5)
    path = tmp_path_factory.mktemp("models") / "tiny-vit"
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _parameters(folder: Path) -> int:
    from transformers import AutoModelForImageClassification

    return sum(p.numel() for p in AutoModelForImageClassification.from_pretrained(folder).parameters())


def test_bench_times_resnet_and_vit_classifier_folders_in_every_gradient_mode(tiny_resnet_dir, tiny_vit_dir):
    models = [str(tiny_resnet_dir), str(tiny_vit_dir)]
    results = run_bench(models, batch=2, iterations=2, device="cpu")
    assert results["modes"] == list(MODES) == ["grad_enabled", "no_grad", "inference_mode"]
    assert [(r["model"], r["mode"]) for r in results["inference"]] == [(m, mode) for m in models for mode in MODES]
    for row in results["inference"]:
        assert row["model_kind"] == "classifier"
        assert row["images_per_s"] > 0 and row["latency_ms_p95"] >= row["latency_ms_p50"] > 0
        assert row["peak_mem_mb"] > 0
        assert row["params"] == row["forward_params"] == _parameters(Path(row["model"]))  # the whole classifier


def test_accuracy_vs_speed_pearson_is_scipys_on_the_plotted_points(tmp_path, tiny_clip_dir, tiny_resnet_dir,
                                                                     colour_folder, monkeypatch):
    from scipy.stats import pearsonr

    from clipadapt import api
    from clipadapt.reports import plots

    with clipadapt_home(tmp_path / "home"):
        run_compare(CompareConfig(models=[str(tiny_clip_dir)], dataset=f"imagefolder:{colour_folder}",
                                  methods=["linear-head", "baseline"], seeds=[0], out=str(tmp_path / "compare"),
                                  overrides=["train.epochs=1", "data.num_workers=0", "run.samples=0",
                                             f"baseline.classifier={tiny_resnet_dir}"],
                                  templates=["simple"], device="cpu"))
    plotted = {}
    original = plots.plot_accuracy_scatter

    def spy(points, path, xlabel, title="", **kwargs):
        if Path(path).name == "accuracy_vs_speed.png":  # not the report's accuracy against training time
            plotted.update(points=[(p["x"], p["y"]) for p in points], title=title)
        return original(points, path, xlabel, title, **kwargs)

    monkeypatch.setattr(plots, "plot_accuracy_scatter", spy)
    compare = tmp_path / "compare"
    results = api.bench([str(tiny_clip_dir), str(tiny_resnet_dir)], batch=2, iterations=2, compare=compare,
                        modes="inference_mode", device="cpu")

    study = results["accuracy_vs_speed"]
    speed = {r["model"]: r["images_per_s"] for r in results["inference"] if r["mode"] == "inference_mode"}
    accuracy = {json.loads(p.read_text())["method"]: json.loads(p.read_text())["metrics"]["acc1"]
                for p in compare.rglob("metrics.json")}
    by_method = {p["method"].split(" ")[0]: p for p in study["points"]}
    assert study["mode"] == "inference_mode" and set(by_method) == {"zeroshot", "linear-head", "baseline"}
    assert by_method["baseline"]["x"] == speed[str(tiny_resnet_dir)]  # placed at its classifier's speed
    assert by_method["linear-head"]["x"] == by_method["zeroshot"]["x"] == speed[str(tiny_clip_dir)]
    assert {m: p["y"] for m, p in by_method.items()} == pytest.approx(accuracy)
    xs, ys = zip(*plotted["points"], strict=True)
    expected = pearsonr(xs, ys)
    assert study["pearson"]["r"] == pytest.approx(float(expected.statistic), abs=1e-12)
    assert study["pearson"]["p"] == pytest.approx(float(expected.pvalue), abs=1e-12)
    assert study["pearson"]["n"] == 3 and f"Pearson r = {expected.statistic:+.3f}" in plotted["title"]

    saved = json.loads((compare / "bench" / "bench.json").read_text())  # --out defaults to COMPARE/bench
    assert saved["accuracy_vs_speed"]["pearson"] == study["pearson"]
    report = (compare / "report.md").read_text()  # the compare report gained the bench section
    assert f"Pearson r = {expected.statistic:+.3f}" in report and "x with grad" in report
    assert {p.name for p in (compare / "report_files").glob("bench-*_vs_speed.png")} == {
        "bench-accuracy_vs_speed.png", "bench-params_vs_speed.png"}


def test_pearson_is_scipys_and_the_textbook_formula_and_undefined_where_it_means_nothing():
    import numpy as np
    from scipy.stats import pearsonr

    from clipadapt.experiments.bench_report import describe_pearson, pearson

    xs, ys = [12.0, 30.0, 41.0, 95.0, 400.0], [0.61, 0.58, 0.70, 0.52, 0.40]
    result = pearson([{"x": x, "y": y} for x, y in zip(xs, ys, strict=True)])
    assert result["r"] == pytest.approx(float(np.corrcoef(xs, ys)[0, 1]), abs=1e-12)
    assert result["p"] == pytest.approx(float(pearsonr(xs, ys).pvalue), abs=1e-12) and 0 < result["p"] < 1
    assert describe_pearson(result) == f"Pearson r = {result['r']:+.3f} (p = {result['p']:.3g}, n = 5)"
    assert pearson([{"x": 1.0, "y": 0.2}, {"x": 2.0, "y": 0.3}]) is None  # two points: always +-1
    assert pearson([{"x": 5.0, "y": y} for y in (0.1, 0.2, 0.3)]) is None  # one speed
    assert describe_pearson(None).startswith("Pearson r: undefined")


def test_bench_rejects_a_model_that_is_neither_clip_nor_an_image_classifier(tmp_path):
    from transformers import GPT2Config

    folder = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(folder)
    out = tmp_path / "out"
    result = runner.invoke(app, ["bench", "--model", str(folder), "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0
    assert f"bench model '{folder}' is a 'gpt2' model; valid kinds: a CLIP-style model" in result.output
    assert "an image classifier (AutoModelForImageClassification" in result.output
    assert not out.exists()


def test_bench_rejects_an_unknown_mode(tmp_path, tiny_resnet_dir):
    out = tmp_path / "out"
    result = runner.invoke(app, ["bench", "--model", str(tiny_resnet_dir), "--modes", "no_grad,warp",
                                 "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("error: unknown bench mode 'warp'; valid choices: grad_enabled, no_grad, "
                                     "inference_mode")
    assert not out.exists()
