"""Sweeps: every cell a run directory, the cell chosen on validation, ablation tables, resumable, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipadapt.cli import app
from clipadapt.errors import ConfigError
from clipadapt.experiments.sweep import parse_sweep, split_values

runner = CliRunner()


def base_args(method, tiny_clip_dir, colour_folder, out):
    return ["train", method, "--model", str(tiny_clip_dir), "--dataset", f"imagefolder:{colour_folder}",
            "--out", str(out), "--set", "data.num_workers=0", "--set", "train.batch_size=4", "--epochs", "2"]


def test_values_and_bad_sweep_specs():
    assert split_values("0,6,11") == ["0", "6", "11"]
    assert split_values("[q_proj,v_proj],[fc1]") == ["[q_proj,v_proj]", "[fc1]"]
    assert parse_sweep(["vpt.layer=0,1", "vpt.position=prepend,append"]) == {
        "vpt.layer": ["0", "1"], "vpt.position": ["prepend", "append"]}
    with pytest.raises(ConfigError, match=r"--sweep vpt.tokens= has no values; give a comma-separated list"):
        parse_sweep(["vpt.tokens="])
    with pytest.raises(ConfigError, match="must look like section.key=value1,value2"):
        parse_sweep(["vpt.tokens"])
    with pytest.raises(ConfigError, match="--sweep vpt.layer is given twice"):
        parse_sweep(["vpt.layer=0", "vpt.layer=1"])


def read_csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def bold_cells(markdown: str) -> dict[str, list[tuple[str, str, str]]]:
    """Per ``## section`` of sweep.md, the bold cells of its tables as (row's first cell, column header, text)."""
    found: dict[str, list[tuple[str, str, str]]] = {}
    section, header = None, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            section, header = line[3:], None
            found[section] = []
        elif not line.startswith("|"):
            header = None
        elif header is None:
            header = [c.strip() for c in line.strip("|").split("|")]
        elif not set(line) <= set("|-: "):  # not the |---|---:| line
            cells = [c.strip() for c in line.strip("|").split("|")]
            found[section] += [(cells[0], header[i], cell[2:-2]) for i, cell in enumerate(cells)
                               if cell.startswith("**") and cell.endswith("**")]
    return found


def test_grid_with_seeds_chooses_on_validation(tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "sweep"
    args = base_args("linear-head", tiny_clip_dir, colour_folder, out) + [
        "--sweep", "linear_head.lr=0.001,0.05", "--sweep", "linear_head.head=zeroshot,linear", "--seeds", "0,1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == sorted(f"lr={lr}_head={head}-seed{seed}" for lr in ("0.001", "0.05")
                          for head in ("zeroshot", "linear") for seed in (0, 1))
    rows = read_csv(out / "sweep.csv")
    assert len(rows) == 4 and all(row["seeds"] == "2" for row in rows)
    for row in rows:  # every number is the mean of its runs' own metrics.json
        records = [json.loads((out / run / "metrics.json").read_text()) for run in row["runs"].split(";")]
        assert float(row["val_acc"]) == pytest.approx(sum(r["selection"]["val_acc"] for r in records) / 2, abs=1e-4)
        assert float(row["test_acc1"]) == pytest.approx(sum(r["metrics"]["acc1"] for r in records) / 2, abs=1e-4)
        assert {r["config"]["linear_head"]["lr"] for r in records} == {float(row["linear_head.lr"])}
    chosen = [row for row in rows if row["chosen_on_val"] == "yes"]
    assert len(chosen) == 1
    assert float(chosen[0]["val_acc"]) == max(float(row["val_acc"]) for row in rows)
    markdown = (out / "sweep.md").read_text()
    assert "| linear_head.lr | linear_head.head=zeroshot | linear_head.head=linear |" in markdown
    # the chosen cell, and only it, is bold in both tables, at its own row and column, with its own numbers
    best = chosen[0]
    where = (best["linear_head.lr"], f"linear_head.head={best['linear_head.head']}")
    assert bold_cells(markdown) == {
        "Validation accuracy (selects the cell)": [(*where, f"{float(best['val_acc']):.3f} ± "
                                                              f"{float(best['val_acc_std']):.3f}")],
        "Test accuracy": [(*where, f"{float(best['test_acc1']):.3f} ± {float(best['test_acc1_std']):.3f}")]}
    assert (f"Chosen on validation: **linear-head lr={best['linear_head.lr']} head={best['linear_head.head']}** "
            f"(val {float(best['val_acc']):.4f}, test {float(best['test_acc1']):.4f};") in markdown
    # the report keeps the cells apart (one row per cell, seeds pooled)
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    assert "linear-head lr=0.05 head=linear" in (out / "report.md").read_text()

    again = runner.invoke(app, args)  # without --skip-existing nothing is replaced
    assert again.exit_code == 2 and "--skip-existing" in again.output
    kept = {p.name: (p / "metrics.json").stat().st_mtime_ns for p in out.iterdir() if (p / "metrics.json").is_file()}
    interrupted = out / "lr=0.05_head=linear-seed1"
    (interrupted / "metrics.json").unlink()  # as if it had stopped before the end
    resumed = runner.invoke(app, args + ["--skip-existing"])
    assert resumed.exit_code == 0, resumed.output
    assert "kept" in resumed.output and "resuming" in resumed.output
    for name, mtime in kept.items():
        if name != interrupted.name:
            assert (out / name / "metrics.json").stat().st_mtime_ns == mtime
    assert (interrupted / "metrics.json").is_file()


NOTHING_CHOSEN = "no cell chosen: these runs record no validation score"


def test_a_sweep_of_runs_that_choose_nothing_chooses_no_cell(tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "sweep"
    result = runner.invoke(app, base_args("linear-head", tiny_clip_dir, colour_folder, out) + [
        "--set", "train.keep=last", "--sweep", "linear_head.lr=0.001,0.05"])
    assert result.exit_code == 0, result.output
    for run in ("lr=0.001-seed0", "lr=0.05-seed0"):  # what the sweep reads: no validation score recorded
        selection = json.loads((out / run / "metrics.json").read_text())["selection"]
        assert selection["on"] == "none" and "val_acc" not in selection
    rows = read_csv(out / "sweep.csv")
    assert [(r["chosen_on_val"], r["val_acc"]) for r in rows] == [(NOTHING_CHOSEN, "")] * 2
    for row in rows:  # test accuracy still shown (never used to choose)
        record = json.loads((Path(row["runs"]) / "metrics.json").read_text())
        assert float(row["test_acc1"]) == pytest.approx(record["metrics"]["acc1"], abs=1e-4)
    markdown = (out / "sweep.md").read_text()
    assert bold_cells(markdown) == {"Test accuracy": []}  # no validation table, nothing bold
    assert ("No cell chosen: these runs record no validation score (linear-head chooses nothing on validation "
            "with these settings, e.g. train.keep=last), so nothing is in bold.") in markdown
    assert "Chosen on validation" not in markdown and "nan" not in markdown
    table = [line.strip("│").split("│") for line in result.output.splitlines() if line.startswith("│")]
    assert [(cells[2].strip(), cells[-1].strip()) for cells in table] == [("-", "")] * 2  # no val score, no "*"
    assert NOTHING_CHOSEN in result.output.splitlines()


def test_a_mixed_sweep_chooses_among_the_cells_with_a_validation_score(tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "sweep"
    result = runner.invoke(app, base_args("linear-head", tiny_clip_dir, colour_folder, out) + [
        "--sweep", "linear_head.lr=0.001,0.05", "--sweep", "train.keep=best,last"])
    assert result.exit_code == 0, result.output
    rows = {(r["linear_head.lr"], r["train.keep"]): r for r in read_csv(out / "sweep.csv")}
    scored = {key: float(r["val_acc"]) for key, r in rows.items() if key[1] == "best"}
    chosen = max(scored, key=scored.get)
    assert {key: r["chosen_on_val"] for key, r in rows.items()} == {
        **{key: "yes" if key == chosen else "" for key in scored},
        ("0.001", "last"): "left out: no validation score", ("0.05", "last"): "left out: no validation score"}
    assert all(r["val_acc"] == "" for key, r in rows.items() if key[1] == "last")
    markdown = (out / "sweep.md").read_text()
    label = f"linear-head lr={chosen[0]} keep=best"
    assert f"Chosen on validation among the 2 cells that record a validation score: **{label}**" in markdown
    assert ("Left out of the choice (their runs record no validation score): linear-head lr=0.001 keep=last, "
            "linear-head lr=0.05 keep=last.") in markdown
    where = (chosen[0], "train.keep=best")
    assert bold_cells(markdown) == {"Validation accuracy (selects the cell)": [(*where, f"{scored[chosen]:.3f}")],
                                    "Test accuracy": [(*where, f"{float(rows[chosen]['test_acc1']):.3f}")]}
    assert "| 0.05 |" in markdown and "no score" in markdown
    assert (f"chosen on validation: {label}, among the cells that record a validation score; left out (no "
            "validation score): linear-head lr=0.001 keep=last, linear-head lr=0.05 keep=last") in result.output


@pytest.mark.slow
def test_vpt_three_field_sweep_is_one_table_per_position(tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "vpt"
    args = base_args("vpt", tiny_clip_dir, colour_folder, out) + [
        "--epochs", "1", "--sweep", "vpt.layer=0,1", "--sweep", "vpt.tokens=1,4", "--sweep",
        "vpt.position=prepend,append"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(read_csv(out / "sweep.csv")) == 8
    markdown = (out / "sweep.md").read_text()
    assert "*vpt.position=prepend*" in markdown and "*vpt.position=append*" in markdown
    assert "| vpt.layer | vpt.tokens=1 | vpt.tokens=4 |" in markdown
    record = json.loads((out / "layer=1_tokens=4_position=append-seed0" / "metrics.json").read_text())
    assert record["config"]["vpt"]["layer"] == 1 and record["config"]["vpt"]["position"] == "append"
    assert record["config"]["run"]["label"] == "vpt layer=1 tokens=4 position=append"


@pytest.mark.parametrize("sweep, message", [
    ("vpt.layer=0,5", "vpt.layer=5 is beyond the model's depth: its vision tower has 2 layers"),
    ("vpt.tokenz=1,2", "unknown config key 'vpt.tokenz' (vpt has: lr, weight_decay, optimizer, momentum, head"),
    ("vpt.tokens=", "--sweep vpt.tokens= has no values"),
    ("vpt.tokens=2,-1", "vpt.tokens must be >= 0, got -1"),
    ("run.seed=1,2", "--sweep run.seed: not a sweepable field (use --seeds"),
])
def test_bad_sweeps_fail_before_anything_is_written(sweep, message, tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "bad"
    result = runner.invoke(app, base_args("vpt", tiny_clip_dir, colour_folder, out) + ["--sweep", sweep])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()
