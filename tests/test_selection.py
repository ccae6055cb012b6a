"""Every selecting feature chooses on validation and reports test once, proved on a dataset where the two disagree.

``make_disagreeing_folder``: test holds the val images with the two labels swapped, so every candidate's test
accuracy is 1 - its val accuracy. Each test checks that the candidates differ on val (else any rule would pass),
that the candidate chosen is the val-best one, and that the reported test number is 1 - max(val): a selection that
read test would report 1 - min(val). Run against a copy of the code whose "val" is the test split, every selecting
test here fails (see the issue note).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipadapt.classification.experiment import load_experiment
from clipadapt.classification.training import run_training
from clipadapt.classification.zeroshot import ZeroShotExperiment, run_zero_shot
from clipadapt.cli import app
from clipadapt.config import apply_overrides
from clipadapt.data import DataConfig, load_dataset
from clipadapt.data.prompts import TemplateSet
from clipadapt.engine.zeroshot import evaluate_zero_shot
from clipadapt.errors import ConfigError
from clipadapt.experiments.ensemble import run_ensemble
from clipadapt.experiments.sweep import SweepConfig, run_sweep
from clipadapt.experiments.wise import run_wise
from clipadapt.models import load_model
from tests.helpers import COLOURS, make_disagreeing_folder, make_image_folder

runner = CliRunner()
EXACT = 1e-6


@pytest.fixture(scope="module")
def disagree(tmp_path_factory):
    return make_disagreeing_folder(tmp_path_factory.mktemp("data") / "disagree")


@pytest.fixture(scope="module")
def disagree_distinct(tmp_path_factory):
    """The same construction with two clearly different colours (cache methods need separable features)."""
    return make_disagreeing_folder(tmp_path_factory.mktemp("data") / "distinct",
                                   colours={"red": COLOURS["red"], "blue": COLOURS["blue"]})


def train(name, tiny_clip_dir, folder, out, *overrides):
    experiment = load_experiment(name, None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{folder}",
        "data.num_workers=0", "train.batch_size=8", "train.patience=0", f"run.out={out}", "run.samples=0",
        *overrides])
    return run_training(experiment).record


def history(run_dir) -> list[dict]:
    with (run_dir / "history.csv").open() as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def assert_val_chosen(record: dict, val_accs: list[float]) -> None:
    """The candidates differ on val; the chosen one is the val-best; test is its mirror, the worst on test."""
    assert max(val_accs) > min(val_accs), f"the fixture must make candidates differ on val: {val_accs}"
    assert record["selection"]["on"] == "val"
    assert record["selection"]["val_acc"] == pytest.approx(max(val_accs), abs=EXACT)
    assert record["metrics"]["acc1"] == pytest.approx(1 - max(val_accs), abs=EXACT)  # test-chosen: 1 - min


def test_the_fixture_mirrors_val_in_test(disagree):
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{disagree}"))
    val, test = dataset.split("val"), dataset.split("test")
    assert len(val) == len(test) == 13 and len(dataset.split("train")) == 24
    val_items = {val.describe(i).rsplit("/", 1)[1]: (int(val.labels[i]), val.load(i).tobytes()) for i in range(13)}
    for i in range(len(test)):
        label, pixels = val_items[test.describe(i).rsplit("/", 1)[1]]
        assert int(test.labels[i]) == 1 - label and test.load(i).tobytes() == pixels


SWAP = {"amber": "rust", "rust": "amber"}


def test_zero_shot_template_set(tiny_clip_dir, disagree):
    bundle = load_model(str(tiny_clip_dir))
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{disagree}"))
    sets = [TemplateSet("names", ["a photo of a {}."]),
            TemplateSet("swapped", [lambda name: f"a photo of a {SWAP[name]}."])]  # the two classes' prompts swapped
    result = evaluate_zero_shot(bundle, dataset, "test", sets, num_workers=0)
    val = {r.template_set.name: r.selection_metrics["acc1"] for r in result.results}
    test = {r.template_set.name: r.metrics["acc1"] for r in result.results}
    assert max(val.values()) > min(val.values())
    assert all(test[name] == pytest.approx(1 - val[name], abs=EXACT) for name in val)
    assert result.selected_on == "val" and result.best == max(val, key=val.get)
    assert result.best_result.metrics["acc1"] == pytest.approx(1 - max(val.values()), abs=EXACT)
    oracle = evaluate_zero_shot(bundle, dataset, "test", sets, num_workers=0, select_on="test")
    assert oracle.oracle and oracle.best == max(test, key=test.get) != result.best


def test_linear_probe_c(tiny_clip_dir, disagree, tmp_path):
    record = train("linear-probe", tiny_clip_dir, disagree, tmp_path / "run")
    assert_val_chosen(record, [row["val_acc"] for row in history(tmp_path / "run")])


def test_best_epoch(tiny_clip_dir, disagree, tmp_path):
    record = train("linear-head", tiny_clip_dir, disagree, tmp_path / "run", "linear_head.head=linear",
                   "linear_head.lr=0.003", "train.epochs=6")
    rows = history(tmp_path / "run")
    assert_val_chosen(record, [row["val_acc"] for row in rows])
    assert rows[record["best_epoch"] - 1]["val_acc"] == pytest.approx(max(r["val_acc"] for r in rows), abs=EXACT)


def test_tip_adapter_alpha_and_beta(tiny_clip_dir, disagree_distinct, tmp_path):
    record = train("tip-adapter", tiny_clip_dir, disagree_distinct, tmp_path / "run")
    assert_val_chosen(record, [row["val_acc"] for row in history(tmp_path / "run")])


def test_gda_alpha(tiny_clip_dir, disagree_distinct, tmp_path):
    record = train("gda", tiny_clip_dir, disagree_distinct, tmp_path / "run")
    rows = history(tmp_path / "run")
    assert_val_chosen(record, [row["val_acc"] for row in rows])
    best = max(rows, key=lambda r: (r["val_acc"], -r["val_loss"]))
    assert record["selection"]["alpha"] == pytest.approx(best["alpha"])


def test_prolip_val_grid(tiny_clip_dir, disagree_distinct, tmp_path):
    record = train("prolip-val", tiny_clip_dir, disagree_distinct, tmp_path / "run", "prolip.iterations=20",
                   "prolip.lrs=[0.1,0.00001]", "prolip.lams=[0.0,10.0]")
    rows = history(tmp_path / "run")
    assert [(r["lr"], r["lambda"]) for r in rows] == [(0.1, 0.0), (0.1, 10.0), (1e-05, 0.0), (1e-05, 10.0)]
    assert_val_chosen(record, [row["val_acc"] for row in rows])
    best = max(rows, key=lambda r: (r["val_acc"], -r["val_loss"]))
    assert (record["selection"]["lr"], record["selection"]["lambda"]) == (best["lr"], best["lambda"])


def test_lp_pp_best_iteration(tiny_clip_dir, disagree, tmp_path):
    record = train("lp++", tiny_clip_dir, disagree, tmp_path / "run", "lp_pp.iterations=30",
                   "train.keep=best")
    rows = history(tmp_path / "run")
    assert len(rows) == 30  # keep=best scores validation after every iteration
    assert_val_chosen(record, [row["val_acc"] for row in rows])


def test_wise_alpha(tiny_clip_dir, disagree, tmp_path):
    train("linear-head", tiny_clip_dir, disagree, tmp_path / "run", "linear_head.lr=0.01", "train.epochs=4")
    result = run_wise(tmp_path / "run", [0, 0.25, 0.5, 0.75, 1], tmp_path / "wise")
    rows = json.loads((tmp_path / "wise" / "wise.json").read_text())["rows"]
    assert all(r["test_acc"] == pytest.approx(1 - r["val_acc"], abs=EXACT) for r in rows)
    assert_val_chosen(result["record"], [r["val_acc"] for r in rows])


def test_ensemble_weights(tiny_clip_dir, disagree, tmp_path):
    train("linear-probe", tiny_clip_dir, disagree, tmp_path / "probe")
    zero_shot = apply_overrides(ZeroShotExperiment(), [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{disagree}",
        "data.num_workers=0", f"run.out={tmp_path / 'zeroshot'}", "run.samples=0"])
    run_zero_shot(zero_shot)
    result = run_ensemble([tmp_path / "probe", tmp_path / "zeroshot"], tmp_path / "ensemble", mode="val")
    search = json.loads((tmp_path / "ensemble" / "ensemble.json").read_text())["search"]
    assert_val_chosen(result["record"], [row["val_acc"] for row in search])


def test_sweep_cell(tiny_clip_dir, disagree, tmp_path):
    result = run_sweep(SweepConfig(
        method="linear-head", axes={"linear_head.lr": ["0.0001", "0.003", "0.1"]}, out=str(tmp_path / "sweep"),
        overrides=[f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{disagree}",
                   "data.num_workers=0", "train.batch_size=8", "train.epochs=3", "train.patience=0",
                   "run.samples=0", "linear_head.head=linear"]))
    val = [row["val_acc"] for row in result.rows]
    assert max(val) > min(val)
    assert all(row["test_acc"] == pytest.approx(1 - row["val_acc"], abs=EXACT) for row in result.rows)
    assert result.chosen["val_acc"] == pytest.approx(max(val), abs=EXACT)
    assert result.chosen["test_acc"] == pytest.approx(min(row["test_acc"] for row in result.rows), abs=EXACT)


# -- no validation split: carve it from train, or choose nothing ------------------------------------------------


def zero_shot_run(tiny_clip_dir, folder, out, *overrides) -> dict:
    experiment = apply_overrides(ZeroShotExperiment(), [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{folder}",
        "data.num_workers=0", f"run.out={out}", "run.samples=0", *overrides])
    return run_zero_shot(experiment).record


def carved_disagreeing_folder(root) -> tuple:
    """train/ only (amber 12, rust 25 images), then test/ = the images zero-shot carves out of train as its
    validation, with the two labels swapped: every template set's test accuracy is 1 - its carved-val accuracy."""
    from clipadapt.engine.zeroshot import choose_selection
    from tests.helpers import DISAGREE_COLOURS, coloured_image

    for (name, colour), count in zip(DISAGREE_COLOURS.items(), (12, 25), strict=True):
        (root / "train" / name).mkdir(parents=True)
        (root / "test" / name).mkdir(parents=True)
        for i in range(count):
            coloured_image(colour, (36, 30), seed=100 * count + i).save(root / "train" / name / f"{name}-{i}.png")
    (root / "test" / "amber" / "placeholder.png").write_bytes((root / "train" / "amber" / "amber-0.png").read_bytes())
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{root}", val_fraction=0.0))
    carved = choose_selection(dataset, "test", "val", candidates=2).split
    (root / "test" / "amber" / "placeholder.png").unlink()
    items = [carved.describe(i) for i in range(len(carved))]
    for item in items:  # a carved amber image goes to test/rust, and the other way round
        path = Path(item)
        swapped = SWAP[path.parent.name]
        (root / "test" / swapped / path.name).write_bytes(path.read_bytes())
    return root, items


def test_zero_shot_without_val_chooses_on_a_part_carved_from_train(tiny_clip_dir, tmp_path):
    folder, carved = carved_disagreeing_folder(tmp_path / "data")
    train_items = {str(p) for p in (folder / "train").rglob("*.png")}
    assert len(carved) == 3 and set(carved) <= train_items  # 1 of 12 amber, 2 of 25 rust: all from train
    bundle = load_model(str(tiny_clip_dir))
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{folder}", val_fraction=0.0))
    assert set(dataset.splits) == {"train", "test"}
    sets = [TemplateSet("names", ["a photo of a {}."]),
            TemplateSet("swapped", [lambda name: f"a photo of a {SWAP[name]}."])]
    result = evaluate_zero_shot(bundle, dataset, "test", sets, num_workers=0)
    val = {r.template_set.name: r.selection_metrics["acc1"] for r in result.results}
    test = {r.template_set.name: r.metrics["acc1"] for r in result.results}
    assert sorted(val.values()) == pytest.approx([1 / 3, 2 / 3], abs=EXACT)  # the mirror of each other
    assert all(test[name] == pytest.approx(1 - val[name], abs=EXACT) for name in val)
    oracle = evaluate_zero_shot(bundle, dataset, "test", sets, num_workers=0, select_on="test")
    assert result.best == max(val, key=val.get) != oracle.best == max(test, key=test.get)
    assert result.selection["carved_from"] == "train" and result.selection["images"] == 3
    assert result.selection["choices"] == [{
        "name": "template_set", "value": result.best, "split": "val", "images": 3, "candidates": 2,
        "val_acc": max(val.values()), "val_mean_per_class_acc": pytest.approx(
            result.best_result.selection_metrics["mean_per_class_acc"])}]
    # the run command records the same choice
    record = zero_shot_run(tiny_clip_dir, folder, tmp_path / "run", "data.val_fraction=0",
                           "zeroshot.templates=[simple,clip]")
    assert record["selected_on"] == "val" and not record["oracle"]
    assert {k: record["selection"][k] for k in ("on", "images", "carved_from", "fraction", "chose")} == {
        "on": "val", "images": 3, "carved_from": "train", "fraction": 0.1, "chose": ["template_set"]}


def test_zero_shot_with_only_a_test_split_reports_the_a_priori_default(tiny_clip_dir, tmp_path):
    folder = make_image_folder(tmp_path / "data", per_class=4, splits=("test",))
    record = zero_shot_run(tiny_clip_dir, folder, tmp_path / "run", "zeroshot.templates=[clip,simple]")
    assert record["selected_on"] == "none" and record["best_template_set"] == "simple"  # the folder's own set
    assert record["selection"]["default"] == "simple" and "no validation" in record["selection"]["reason"]
    assert record["metrics"] == record["templates"]["simple"]["metrics"]
    assert all(entry["selection_metrics"] is None for entry in record["templates"].values())


def test_select_on_none_makes_no_choice(tiny_clip_dir, disagree, tmp_path):
    record = zero_shot_run(tiny_clip_dir, disagree, tmp_path / "run", "zeroshot.templates=[clip,simple]",
                           "zeroshot.select_on=none")
    assert record["selected_on"] == "none" and record["best_template_set"] == "simple"


def test_the_test_oracle_is_labelled_everywhere_and_compared_nowhere(tiny_clip_dir, disagree, tmp_path):
    from clipadapt.experiments.compare import CompareConfig, run_compare
    from clipadapt.experiments.report import build_report

    record = zero_shot_run(tiny_clip_dir, disagree, tmp_path / "runs" / "oracle", "zeroshot.templates=[clip,simple]",
                           "zeroshot.select_on=test")
    assert record["oracle"] and record["selected_on"] == "test"
    assert record["selection"]["oracle"] == "oracle (selected on test)"
    tests = {name: entry["metrics"]["acc1"] for name, entry in record["templates"].items()}
    assert record["metrics"]["acc1"] == max(tests.values())
    honest = zero_shot_run(tiny_clip_dir, disagree, tmp_path / "runs" / "honest", "zeroshot.templates=[clip,simple]")
    report = build_report([tmp_path / "runs"], tmp_path / "report")
    assert [row.label for row in report.rows] == [f"zeroshot ({honest['best_template_set']})"]  # no oracle row
    markdown = report.markdown.read_text()
    assert f"zeroshot ({record['best_template_set']}) oracle (selected on test)" in markdown
    assert "upper bounds, not results" in markdown
    html = report.html.read_text()
    assert html.count("class='oracle'") == 1 and html.count("class='summary'") == 1
    with pytest.raises(ConfigError, match="oracle"):
        run_compare(CompareConfig(models=[str(tiny_clip_dir)], dataset=f"imagefolder:{disagree}", methods=[],
                                  out=str(tmp_path / "compare"), overrides=["zeroshot.select_on=test"],
                                  device="cpu"), report=False)
    assert not (tmp_path / "compare").exists()


# -- evaluation splits that overlap training ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "flat", per_class=8)


def test_training_refuses_an_evaluation_split_that_holds_training_images(tiny_clip_dir, flat_folder, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "linear-head", "--model", str(tiny_clip_dir), "--dataset",
                                 f"imagefolder:{flat_folder}", "--device", "cpu", "--out", str(out),
                                 "--set", "data.split=all"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = [line for line in result.output.splitlines() if "data.split" in line]
    shared = ", ".join(str(flat_folder / "blue" / name) for name in ("img_0.png", "img_1.jpg", "img_3.jpg"))
    assert message == [f"error: data.split 'all' shares 15 images with train and 3 images with val (e.g. {shared}, "
                       "...); evaluate on a held-out split; valid choices: test"]
    assert not out.exists()
    for used in ("train", "val"):
        with pytest.raises(ConfigError, match=f"data.split '{used}' is used for"):
            load_dataset(DataConfig(dataset=f"imagefolder:{flat_folder}")).check_held_out(used)


def test_zero_shot_that_selects_refuses_an_overlapping_split(tiny_clip_dir, flat_folder, tmp_path):
    args = ["zeroshot", "--model", str(tiny_clip_dir), "--dataset", f"imagefolder:{flat_folder}", "--device", "cpu",
            "--split", "all", "-t", "simple", "-t", "clip"]
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "refused")])
    assert refused.exit_code == 2 and "shares 3 images with val, which chooses the template set" in refused.output
    assert "zeroshot.select_on=none" in refused.output and not (tmp_path / "refused").exists()
    chosen_nothing = runner.invoke(app, [*args, "--out", str(tmp_path / "none"), "--set", "zeroshot.select_on=none"])
    assert chosen_nothing.exit_code == 0, chosen_nothing.output
    assert "the a-priori default, nothing chosen" in chosen_nothing.output


@pytest.mark.parametrize(("value", "split"), [("eval", "test"), ("test", "val")])
def test_bad_select_on_is_one_line(value, split, tiny_clip_dir, disagree, tmp_path):
    result = runner.invoke(app, ["zeroshot", "--model", str(tiny_clip_dir), "--dataset", f"imagefolder:{disagree}",
                                 "--device", "cpu", "--split", split, "-t", "simple", "-t", "clip",
                                 "--out", str(tmp_path / "run"), "--set", f"zeroshot.select_on={value}"])
    assert result.exit_code == 2 and "Traceback" not in result.output and not (tmp_path / "run").exists()
    assert "valid choices" in result.output and "val, none" in result.output


def test_caption_best_epoch(tiny_clip_dir, tiny_lm_dir, tmp_path):
    """Captions have no exact mirror; instead the saved model is re-scored on val: its CIDEr-D there must be the best
    of the epochs' validation CIDEr-D. Were those numbers read from test (the rotated captions), they would belong to
    another epoch's weights and the saved model's val score would not match."""
    from clipadapt.captioning.finished import evaluate_caption_run
    from clipadapt.captioning.runs import load_caption_experiment, run_caption_training
    from tests.helpers import make_disagreeing_captions

    folder = make_disagreeing_captions(tmp_path / "captions")
    experiment = load_caption_experiment("lora", None, [
        f"model.spec={tiny_clip_dir}", f"decoder.spec={tiny_lm_dir}", f"data.dataset=coco:{folder}",
        "train.epochs=4", "train.batch_size=16", "train.max_length=24", "decode.max_new_tokens=6",
        "decode.tokenizer=simple", "train.select=cider", "train.patience=0", "run.attention_images=0",
        f"run.out={tmp_path / 'run'}"])
    out = run_caption_training(experiment)
    rows = history(out.run_dir)
    val = [row["val_cider"] for row in rows]
    assert max(val) > min(val), f"the epochs must differ on val: {val}"
    assert out.record["selection"]["val_cider"] == pytest.approx(max(val), abs=EXACT)
    rescored = evaluate_caption_run(out.run_dir, split="val")
    assert rescored["metrics"]["cider"] == pytest.approx(max(val), abs=1e-4)
