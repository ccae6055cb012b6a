"""``2sfs``: the LayerNorm stage then the classifier stage in one budget, and selective inference (trained classes
use the classifier's rows, others the adapted text tower)."""

from __future__ import annotations

import json

import pytest
import torch

from clipadapt.classification.evaluation import evaluate_run, load_run
from clipadapt.classification.experiment import build_method, load_experiment
from clipadapt.classification.training import run_training
from clipadapt.data import DataConfig, load_dataset
from clipadapt.errors import ConfigError
from clipadapt.methods.heads import cosine_logits
from clipadapt.models import load_model
from tests.helpers import coloured_image


@pytest.fixture(scope="module")
def four_colours(tmp_path_factory):
    """Four classes: base-to-novel keeps two of them on each side."""
    root = tmp_path_factory.mktemp("data") / "four"
    colours = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30), "yellow": (230, 220, 30)}
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(8):
            coloured_image(colour, (40, 30), seed=i).save(root / name / f"{i}.png")
    return root


def experiment(tiny_clip_dir, folder, out, *overrides):
    return load_experiment("2sfs", None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{folder}",
        "data.num_workers=0", "data.shots=2", "data.seed=1", "train.batch_size=4", f"run.out={out}",
        "run.samples=2", "two_stage_fs.iterations=6", *overrides])


def test_trained_classes_use_the_rows_and_the_others_the_text_tower(tiny_clip_dir, colour_folder):
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", num_workers=0))
    bundle = load_model(str(tiny_clip_dir))
    method = build_method(load_experiment("2sfs", None, []), bundle, dataset)
    names = dataset.classnames  # three classes; the run "was trained" on the last two, in another order
    rows = torch.randn(2, bundle.embed_dim, generator=torch.Generator().manual_seed(0))
    state = {**method.trainable_state(), "head.rows": rows, "head.known": torch.ones(2, dtype=torch.bool)}
    method.trained_classes = [names[2], names[1]]
    method.load_trainable_state(state)
    assert method.head.known.tolist() == [False, True, True]
    features = torch.randn(5, bundle.embed_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        text = method.head.text.class_vectors()
        expected_vectors = torch.stack([text[0], torch.nn.functional.normalize(rows[1], dim=-1),
                                        torch.nn.functional.normalize(rows[0], dim=-1)])
        logits = method.head(features)
    assert torch.allclose(logits, cosine_logits(features, expected_vectors, method.head.scale, method.head.text.bias),
                          atol=1e-5)


def test_two_stages_in_one_budget_val_free(tiny_clip_dir, colour_folder, tmp_path):
    before = {k: v.clone() for k, v in load_model(str(tiny_clip_dir)).model.state_dict().items()}
    result = run_training(experiment(tiny_clip_dir, colour_folder, tmp_path / "run"))
    record = result.record
    # val-free: neither stage chose an epoch (recorded from what the engine did), and colour_folder has no val/, so
    # no validation was carved out of the training images
    assert {k: record["selection"][k] for k in ("on", "chose", "choices")} == {"on": "none", "chose": [],
                                                                                "choices": []}
    assert record["selection"]["validation"]["split"] is None
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert history[0].startswith("stage,") and {line.split(",")[0] for line in history[1:]} == {"1", "2"}
    assert record["best_epoch"] == len(history) - 1  # the second stage's last epoch, counted from the start
    _, _, method = load_run(tmp_path / "run")
    norms = {k: v for k, v in method.bundle.model.state_dict().items() if "norm" in k}
    changed = [k for k, v in norms.items() if not torch.equal(v, before[k])]
    assert changed and all("norm" in k for k in changed)  # the first stage moved LayerNorms (and nothing else)
    assert not any("norm" not in k and not torch.equal(v, before[k])
                   for k, v in method.bundle.model.state_dict().items())
    assert method.head.known.all()  # every training class has its row after the second stage
    assert record["params"]["trainable"] == sum(p.numel() for p in method.norms.values()) + method.head.rows.numel()


def test_base_to_novel_moves_to_new_classes(tiny_clip_dir, four_colours, tmp_path):
    run_training(experiment(tiny_clip_dir, four_colours, tmp_path / "run", "data.subsample=base"))
    result = evaluate_run(tmp_path / "run", "test", data=["data.subsample=new"], out=tmp_path / "novel.json")
    assert result["classes"] == 2 and result["metrics"]["n"] > 0
    _, dataset, method = load_run(tmp_path / "run", data=["data.subsample=new"])
    assert not method.head.known.any()  # novel classes: the adapted text tower names them
    saved = json.loads((tmp_path / "novel.json").read_text())
    assert saved["metrics"] == result["metrics"]


def test_bad_settings_are_one_line():
    with pytest.raises(ConfigError, match=r"two_stage_fs.first_fraction must be in \(0, 1\), got 1.5"):
        load_experiment("2sfs", None, ["two_stage_fs.first_fraction=1.5"])
    with pytest.raises(ConfigError, match="unknown two_stage_fs.towers 'all'; valid choices: both, vision, text"):
        load_experiment("2sfs", None, ["two_stage_fs.towers=all"])


@pytest.mark.parametrize("stop_at", [1, 3])  # the first stage's first epoch; the second stage's first epoch
def test_an_interrupted_run_resumes_in_its_stage(stop_at, tiny_clip_dir, colour_folder, tmp_path):
    straight = run_training(experiment(tiny_clip_dir, colour_folder, tmp_path / "straight"))
    calls = []

    def interrupt(trainer, row):
        calls.append(row["epoch"])
        if len(calls) == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(experiment(tiny_clip_dir, colour_folder, tmp_path / "run"), {"epoch_end": [interrupt]})
    resumed_epochs = []
    resumed = run_training(experiment(tiny_clip_dir, colour_folder, tmp_path / "run", "run.resume=true"),
                           {"epoch_end": [lambda trainer, row: resumed_epochs.append(row["epoch"])]})
    epochs = len((tmp_path / "straight" / "history.csv").read_text().splitlines()) - 1  # both stages' rows
    assert epochs == 4 and len(resumed_epochs) == epochs - stop_at  # only the epochs left ran
    assert resumed.record["metrics"] == straight.record["metrics"]
    assert torch.equal(resumed.result.logits, straight.result.logits)
    assert not (tmp_path / "run" / "checkpoints").exists()
