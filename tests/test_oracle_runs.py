"""Oracle runs (chosen on the test split they report) keep their label downstream or are refused: ensemble, wise,
compare and benchmark refuse them in one line with nothing written, export only with --allow-oracle (and says so),
predict and report show the label; ensembles and WiSE-FT record what they chose on validation, and nothing when
they chose nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipadapt.cli import app
from clipadapt.engine.records import ORACLE_LABEL, is_oracle, oracle_source

runner = CliRunner()


def files_under(root: Path) -> dict[str, int]:
    """Every file below ``root`` with its modification time: what "nothing written" compares."""
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def zero_shot(tiny_clip_dir, colour_folder, out: Path, *settings: str, templates=("simple", "clip")) -> Path:
    args = ["zeroshot", "--model", str(tiny_clip_dir), "--dataset", f"imagefolder:{colour_folder}", "--device", "cpu",
            "--out", str(out), "--set", "data.num_workers=0"]
    for template in templates:
        args += ["-t", template]
    for item in settings:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def runs(tiny_clip_dir, colour_folder, tmp_path_factory):
    """An oracle zero-shot run, one chosen on val, one with a single template set (nothing chosen), and a named
    oracle."""
    root = tmp_path_factory.mktemp("runs")
    return {"oracle": zero_shot(tiny_clip_dir, colour_folder, root / "oracle", "zeroshot.select_on=test"),
            "val": zero_shot(tiny_clip_dir, colour_folder, root / "val"),
            "simple": zero_shot(tiny_clip_dir, colour_folder, root / "simple", templates=("simple",)),
            "named": zero_shot(tiny_clip_dir, colour_folder, root / "named", "zeroshot.select_on=test",
                               "run.label=mine")}


def test_the_record_says_whether_a_run_is_an_oracle(runs):
    record = json.loads((runs["oracle"] / "metrics.json").read_text())
    assert (record["selection"]["on"], record["selected_on"], record["oracle"]) == ("test", "test", True)
    assert is_oracle(record) and oracle_source(runs["oracle"]) == runs["oracle"]
    assert not is_oracle(json.loads((runs["val"] / "metrics.json").read_text()))
    assert oracle_source(runs["val"]) is None
    # any one of the fields is enough (runs from before `selection`; a trained run's selection)
    assert [is_oracle(r) for r in ({"selected_on": "test"}, {"oracle": True}, {"selection": {"on": "test"}},
                                   {"selection": {"on": "val"}, "selected_on": "val"}, {}, None)] == [
        True, True, True, False, False, False]


def refusal(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_ensemble_and_wise_refuse_an_oracle(runs, tmp_path):
    out = tmp_path / "never"
    line = refusal(runner.invoke(app, ["ensemble", str(runs["val"]), str(runs["oracle"]), "--out", str(out)]))
    assert line == (f"error: '{runs['oracle']}' is an {ORACLE_LABEL}: it chose on the split it reports, so an "
                    "ensemble cannot use it; re-run it with --set zeroshot.select_on=val (or none)")
    line = refusal(runner.invoke(app, ["wise", str(runs["oracle"]), "--out", str(out)]))
    assert line == (f"error: '{runs['oracle']}' is an {ORACLE_LABEL}: it chose on the split it reports, so WiSE-FT "
                    "cannot use it; re-run it with --set zeroshot.select_on=val (or none)")
    assert not out.exists()


def compare_args(tiny_clip_dir, colour_folder, out: Path, *extra: str) -> list[str]:
    return ["compare", "--model", str(tiny_clip_dir), "--dataset", f"imagefolder:{colour_folder}", "--methods",
            "linear-probe", "-t", "simple", "-t", "clip", "--device", "cpu", "--out", str(out),
            "--set", "data.num_workers=0", *extra]


def test_compare_refuses_an_oracle_it_would_keep_or_run(runs, tiny_clip_dir, colour_folder, tmp_path):
    from clipadapt.experiments.compare import CompareConfig, plan

    out = tmp_path / "compare"
    asked = refusal(runner.invoke(app, compare_args(tiny_clip_dir, colour_folder, out,
                                                    "--set", "zeroshot.select_on=test")))
    assert f"zeroshot.select_on=test is an {ORACLE_LABEL}, not a result" in asked and not out.exists()
    planned = plan(CompareConfig(models=[str(tiny_clip_dir)], dataset=f"imagefolder:{colour_folder}",
                                 methods=["linear-probe"], out=str(out)))
    kept = next(r.run_dir for r in planned if r.method == "zeroshot")
    shutil.copytree(runs["oracle"], kept)  # an oracle where compare keeps its zero-shot run
    before = files_under(out)
    line = refusal(runner.invoke(app, compare_args(tiny_clip_dir, colour_folder, out, "--skip-existing")))
    assert line == (f"error: '{kept}' is an {ORACLE_LABEL}: it chose on the split it reports, so compare "
                    "--skip-existing cannot use it; remove it, or pass --overwrite to run it again choosing on "
                    "validation")
    assert files_under(out) == before  # nothing trained, no report


def benchmark_args(tiny_clip_dir, colour_folder, out: Path, *extra: str) -> list[str]:
    return ["benchmark", "--model", str(tiny_clip_dir), "--datasets", f"imagefolder:{colour_folder}", "--methods",
            "linear-probe", "--shots", "1", "--seeds", "1", "--device", "cpu", "--out", str(out), *extra]


def test_benchmark_refuses_an_oracle_it_would_keep_or_run(runs, tiny_clip_dir, colour_folder, tmp_path):
    from clipadapt.experiments.benchmark import BenchmarkConfig, plan

    out = tmp_path / "bench"
    asked = refusal(runner.invoke(app, benchmark_args(tiny_clip_dir, colour_folder, out,
                                                      "--set", "zeroshot.select_on=test")))
    assert asked.startswith(f"error: zeroshot.select_on=test is an {ORACLE_LABEL}, not a result: the benchmark's "
                            "zero-shot rows use the dataset's own prompt and choose nothing") and not out.exists()
    cells = plan(BenchmarkConfig(model=str(tiny_clip_dir), datasets=[f"imagefolder:{colour_folder}"],
                                 methods=["linear-probe"], shots=[1], seeds=[1], out=str(out)))
    kept = Path(next(c.run_dir for c in cells if c.method == "zeroshot"))
    shutil.copytree(runs["oracle"], kept)
    before = files_under(out)
    line = refusal(runner.invoke(app, benchmark_args(tiny_clip_dir, colour_folder, out, "--skip-existing")))
    assert line == (f"error: '{kept}' is an {ORACLE_LABEL}: it chose on the split it reports, so benchmark "
                    "--skip-existing cannot use it; remove it, or pass --overwrite to run its cell again")
    assert files_under(out) == before


def test_export_refuses_an_oracle_unless_allowed_and_then_labels_it(runs, tmp_path):
    out = tmp_path / "exported"
    line = refusal(runner.invoke(app, ["export", str(runs["oracle"]), str(out)]))
    assert line == (f"error: '{runs['oracle']}' is an {ORACLE_LABEL}: what it would export was chosen on the test "
                    "split it reports; re-run it with --set zeroshot.select_on=val (or none), or pass --allow-oracle "
                    "to export it labelled as an oracle")
    assert not out.exists()
    allowed = runner.invoke(app, ["export", str(runs["oracle"]), str(out), "--allow-oracle"])
    assert allowed.exit_code == 0, allowed.output
    assert f"oracle: {runs['oracle']} is an {ORACLE_LABEL}; README.md and clipadapt_export.json say so" in \
        allowed.output
    record = json.loads((out / "clipadapt_export.json").read_text())
    assert record["oracle"] == ORACLE_LABEL
    readme = (out / "README.md").read_text().splitlines()
    assert readme[4].startswith(f"**{ORACLE_LABEL}**: what this folder holds was chosen on the test split")
    honest = tmp_path / "honest"
    assert runner.invoke(app, ["export", str(runs["val"]), str(honest)]).exit_code == 0
    assert ORACLE_LABEL not in (honest / "README.md").read_text()
    assert "oracle" not in json.loads((honest / "clipadapt_export.json").read_text())


def test_predict_labels_an_oracle_in_its_table_and_figure(runs, colour_folder, tmp_path, monkeypatch):
    from clipadapt.reports import plots

    titles: list[str] = []
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: (titles.extend(
        ax.get_title().replace("\n", " ") for ax in fig.axes), save(fig, path)))
    image = next((colour_folder / "red").iterdir())
    result = runner.invoke(app, ["predict", str(runs["oracle"]), str(runs["val"]), str(image),
                                 "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[1].strip() for line in result.output.splitlines() if line.count("│") > 2]
    oracle_label = f"zeroshot (oracle) {ORACLE_LABEL}"
    assert [r for r in rows if r.startswith("zeroshot")] == [oracle_label, "zeroshot (val)"]
    assert titles[1:] == [oracle_label, "zeroshot (val)"]  # the image, then one bar chart per run


def test_report_labels_oracles_named_or_not_and_keeps_them_out_of_the_table(runs, tmp_path):
    result = runner.invoke(app, ["report", *(str(runs[k]) for k in ("oracle", "val", "named")),
                                 "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "rep" / "report.md").read_text()
    summary, oracles = report.split("Oracles, chosen on the test split")[:2]
    best = {k: json.loads((runs[k] / "metrics.json").read_text())["best_template_set"] for k in ("oracle", "val")}
    assert f"| zeroshot ({best['val']}) |" in summary and ORACLE_LABEL not in summary.split("## Dataset")[1]
    assert f"| mine {ORACLE_LABEL} |" in oracles
    assert f"| zeroshot ({best['oracle']}) {ORACLE_LABEL} |" in oracles


def test_an_ensemble_written_before_the_refusal_is_labelled_through_its_member(runs, colour_folder, tmp_path,
                                                                              monkeypatch):
    """An ensemble with an oracle member (as `ensemble` wrote them before it refused oracles) is itself shown as an
    oracle, and refused as a member in turn."""
    import clipadapt
    import clipadapt.experiments.ensemble as ensemble

    monkeypatch.setattr(ensemble, "refuse_oracle_runs", lambda *args, **kwargs: None)
    old = clipadapt.ensemble([runs["val"], runs["oracle"]], out=tmp_path / "old").dir
    monkeypatch.undo()
    assert oracle_source(old) == runs["oracle"] and not is_oracle(json.loads((old / "metrics.json").read_text()))
    line = refusal(runner.invoke(app, ["ensemble", str(runs["val"]), str(old), "--out", str(tmp_path / "n")]))
    assert line.startswith(f"error: '{old}' is built on '{runs['oracle']}', an {ORACLE_LABEL}: ")
    predictions, _ = clipadapt.predict([old], [next((colour_folder / "red").iterdir())])
    assert list(predictions[0].top) == [f"ensemble (old) {ORACLE_LABEL}"]


def test_the_ensemble_records_what_it_chose(runs, tmp_path):
    members = [str(runs["val"]), str(runs["simple"])]
    for weights in ("uniform", "val"):
        result = runner.invoke(app, ["ensemble", *members, "--weights", weights, "--out", str(tmp_path / weights)])
        assert result.exit_code == 0, result.output
    uniform = json.loads((tmp_path / "uniform" / "metrics.json").read_text())["selection"]
    assert (uniform["on"], uniform["chose"], uniform["choices"], uniform["weights"]) == ("none", [], [], "uniform")
    val_images = 3  # colour_folder has no val/: a tenth of each class's training images, carved out of train
    assert uniform["validation"] == {"split": "val", "images": val_images, "carved_from": "train"}
    searched = json.loads((tmp_path / "val" / "metrics.json").read_text())["selection"]
    saved = json.loads((tmp_path / "val" / "ensemble.json").read_text())
    assert (searched["on"], searched["chose"], searched["weights"]) == ("val", ["member_weights"], "val")
    assert searched["member_weights"] == saved["weights"] and len(saved["search"]) == 11  # tenths over two
    choice = searched["choices"][0]
    assert (choice["split"], choice["images"], choice["candidates"]) == ("val", val_images, 11)
    best = max(saved["search"], key=lambda r: (r["val_acc"], -r["val_loss"]))
    assert searched["val_acc"] == pytest.approx(best["val_acc"]) and choice["val_acc"] == searched["val_acc"]


def test_wise_records_the_alpha_it_chose_and_nothing_for_one_alpha(tiny_clip_dir, colour_folder, tmp_path):
    from clipadapt.classification.training import run_training
    from tests.test_methods import experiment

    run = run_training(experiment("linear-head", tiny_clip_dir, colour_folder, tmp_path / "run",
                                  "train.epochs=1")).run_dir
    for name, alphas in (("three", "0,0.5,1"), ("one", "0.5")):
        result = runner.invoke(app, ["wise", str(run), "--alphas", alphas, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    three = json.loads((tmp_path / "three" / "metrics.json").read_text())["selection"]
    rows = json.loads((tmp_path / "three" / "wise.json").read_text())["rows"]
    assert (three["on"], three["chose"], three["alpha"]) == ("val", ["alpha"], json.loads(
        (tmp_path / "three" / "wise.json").read_text())["chosen_alpha"])
    choice = three["choices"][0]
    assert (choice["split"], choice["candidates"], choice["images"]) == ("val", 3, three["validation"]["images"])
    assert choice["val_acc"] == max(r["val_acc"] for r in rows)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["selection"]
    assert (one["on"], one["chose"], one["choices"], one["alpha"]) == ("none", [], [], 0.5)
