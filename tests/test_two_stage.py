"""--init-from RUN: a method starts where a finished run ended (its validation accuracy before the first step)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from clipadapt.classification.evaluation import load_run
from clipadapt.classification.training import run_training
from clipadapt.cli import app
from clipadapt.engine.inputs import TrainingData
from clipadapt.engine.trainer import TrainConfig, Trainer, make_accelerator
from clipadapt.errors import ConfigError
from tests.test_methods import dataset, experiment, make_method  # noqa: F401 (the dataset fixture)

runner = CliRunner()


@pytest.fixture(scope="module")
def sources(tiny_clip_dir, colour_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return {name: run_training(experiment(name, tiny_clip_dir, colour_folder, root / name, "train.epochs=2",
                                          *extra)).run_dir
            for name, extra in (("linear-probe", ()), ("lora", ("lora.dropout=0.0",)), ("full-ft", ()))}


def _val(method, dataset_):
    data = TrainingData(dataset_, method.bundle, eval_batch_size=64, num_workers=0, preprocess=method.preprocess)
    return Trainer(TrainConfig(), data, make_accelerator(torch.device("cpu"), "fp32")).evaluate(method, "val")


@pytest.mark.parametrize("source, target, settings", [
    ("linear-probe", "full-ft", ["full_ft.head=linear"]),  # LP-FT as two runs
    ("lora", "full-ft", []),  # the merged LoRA weights
    ("lora", "lora", ["lora.dropout=0.0"]),  # the adapters continue
    ("full-ft", "bitfit", []),  # the fine-tuned biases (bitfit alone would not reproduce the whole tower)
])
def test_init_from_reproduces_the_source_before_the_first_step(source, target, settings, sources, tiny_clip_dir,
                                                              dataset):  # noqa: F811
    from clipadapt.classification.two_stage import initialise_from_run

    _, _, finished = load_run(sources[source])
    expected = _val(finished, dataset)
    method = make_method(target, tiny_clip_dir, dataset, settings, prepare=False)
    info = initialise_from_run(method, sources[source], dataset, str(tiny_clip_dir))
    assert info["copied"] > 0 and info["method"] == source
    started = _val(method, dataset)
    if (source, target) == ("full-ft", "bitfit"):  # only the biases carry over: the head and biases are the run's
        trained = finished.trainable_state()
        own = method.trainable_state()
        assert all(torch.equal(own[k], trained[k]) for k in own)
        return
    assert started.metrics["acc1"] == expected.metrics["acc1"]
    torch.testing.assert_close(started.logits, expected.logits, rtol=1e-4, atol=1e-4)


def test_a_head_that_does_not_fit_names_the_setting(sources, tiny_clip_dir, dataset):  # noqa: F811
    from clipadapt.classification.two_stage import initialise_from_run

    method = make_method("lora", tiny_clip_dir, dataset, prepare=False)
    with pytest.raises(ConfigError, match=r"head of --init-from run .*\(LinearHead\) does not fit this method's head "
                                          r"\(CosineHead\); start from it with lora.head=linear"):
        initialise_from_run(method, sources["linear-probe"], dataset, str(tiny_clip_dir))


def test_train_init_from_on_the_command_line(sources, tiny_clip_dir, colour_folder, tmp_path):
    from tests.helpers import make_image_folder

    args = ["train", "full-ft", "--model", str(tiny_clip_dir), "--dataset", f"imagefolder:{colour_folder}",
            "--epochs", "1", "--set", "full_ft.head=linear", "--set", "data.num_workers=0"]
    result = runner.invoke(app, [*args, "--init-from", str(sources["linear-probe"]), "--out", str(tmp_path / "ft")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert record["init_from"]["method"] == "linear-probe" and record["init_from"]["changed"] == 2  # W and b

    other = make_image_folder(tmp_path / "other", per_class=4, seed=3)
    bad = runner.invoke(app, ["train", "full-ft", "--model", str(tiny_clip_dir), "--dataset", f"imagefolder:{other}",
                              "--init-from", str(sources["linear-probe"]), "--out", str(tmp_path / "never")])
    assert bad.exit_code == 2 and "was trained on imagefolder:" in bad.output and "they must match" in bad.output
    assert not (tmp_path / "never").exists()
