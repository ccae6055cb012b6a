"""The engine's learning-rate schedules (train.schedule, train.min_lr) and the recipes that use them (issue 29)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from clipadapt.classification.experiment import head_templates, load_experiment
from clipadapt.classification.training import run_training
from clipadapt.data import DataConfig, load_dataset
from clipadapt.data.coop import coop_template_set
from clipadapt.data.prompts import resolve_template_set
from clipadapt.engine.schedules import build_scheduler
from clipadapt.engine.trainer import TrainConfig
from clipadapt.errors import ConfigError


class DasslConstantWarmup(LRScheduler):
    """Dassl's ConstantWarmupScheduler (KaiyangZhou/Dassl.pytorch@c61a1b570ac6333bd50fb5ae06aea59002fb20bb
    dassl/optim/lr_scheduler.py:10-54), transcribed without its deprecated ``verbose`` argument."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
        super().__init__(optimizer)

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


def _optimizer(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def _lrs_per_step(scheduler, optimizer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("epochs, per_epoch", [(5, 3), (10, 1), (2, 4)])
def test_dassl_schedule_equals_dassls_scheduler_stepped_per_epoch(epochs, per_epoch):
    reference_opt = _optimizer(0.002)
    # build_lr_scheduler with LR_SCHEDULER=cosine, WARMUP_EPOCH=1, WARMUP_TYPE=constant, WARMUP_CONS_LR=1e-5
    reference = DasslConstantWarmup(reference_opt, CosineAnnealingLR(reference_opt, float(epochs)), 1, 1e-5)
    expected = []
    for _ in range(epochs):  # the trainers step it after an epoch's last batch
        expected.append(reference_opt.param_groups[0]["lr"])
        reference_opt.step()
        reference.step()
    optimizer = _optimizer(0.002)
    ours = build_scheduler(optimizer, TrainConfig(schedule="dassl"), per_epoch, epochs * per_epoch)
    lrs = _lrs_per_step(ours, optimizer, epochs * per_epoch)
    assert [lrs[e * per_epoch:(e + 1) * per_epoch] for e in range(epochs)] == [
        pytest.approx([lr] * per_epoch, rel=1e-12, abs=0) for lr in expected]
    assert lrs[0] == 1e-5 and lrs[per_epoch] == pytest.approx(0.002)  # the constant epoch, then the cosine's start
    closed = [1e-5] + [0.002 * (1 + math.cos(math.pi * (e - 1) / epochs)) / 2 for e in range(1, epochs)]
    assert lrs[::per_epoch] == pytest.approx(closed, rel=1e-12)


def test_cosine_without_floor_is_the_schedule_the_engine_had_and_ends_at_min_lr():
    from transformers import get_cosine_schedule_with_warmup

    a, b = _optimizer(0.01), _optimizer(0.01)
    before = _lrs_per_step(get_cosine_schedule_with_warmup(a, 3, 30), a, 31)
    assert _lrs_per_step(build_scheduler(b, TrainConfig(warmup=0.1), 5, 30), b, 31) == before  # bit for bit
    c = _optimizer(2e-4)
    floor = _lrs_per_step(build_scheduler(c, TrainConfig(warmup=0.0, min_lr=1e-6), 5, 30), c, 31)
    # CLIP-LoRA's CosineAnnealingLR(optimizer, total_iters, eta_min=1e-6), stepped per iteration
    d = _optimizer(2e-4)
    assert floor == pytest.approx(_lrs_per_step(CosineAnnealingLR(d, 30, eta_min=1e-6), d, 31), rel=1e-9)
    assert floor[-1] == pytest.approx(1e-6, rel=1e-12)


def test_min_lr_is_reached_at_the_end_of_a_run(tiny_clip_dir, colour_folder, tmp_path):
    output = run_training(load_experiment("linear-head", None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{colour_folder}",
        "data.num_workers=0", "train.epochs=3", "train.batch_size=4", "train.keep=last", "train.min_lr=1e-5",
        "linear_head.lr=1e-3", f"run.out={tmp_path / 'run'}"]))
    history = output.record and (output.run_dir / "history.csv").read_text().splitlines()
    lrs = [float(line.split(",")[history[0].split(",").index("lr")]) for line in history[1:]]
    assert lrs[-1] == pytest.approx(1e-5, rel=1e-9) and lrs[0] > lrs[-1]  # the lr after the last step


@pytest.mark.slow
def test_coop_trains_epoch_0_at_the_constant_lr_then_a_cosine_per_epoch(tiny_clip_dir, colour_folder, tmp_path,
                                                                      monkeypatch):
    seen = []
    original = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    run_training(load_experiment("coop", None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{colour_folder}",
        "data.num_workers=0", "coop.epochs=4", "train.batch_size=4", f"run.out={tmp_path / 'run'}"]))
    per_epoch = len(seen) // 4
    assert per_epoch > 1 and len(seen) == 4 * per_epoch
    expected = [1e-5] + [0.002 * (1 + math.cos(math.pi * (e - 1) / 4)) / 2 for e in range(1, 4)]
    for epoch, lr in enumerate(expected):
        assert seen[epoch * per_epoch:(epoch + 1) * per_epoch] == pytest.approx([lr] * per_epoch, rel=1e-12)


@pytest.mark.parametrize("setting, message", [
    ("train.schedule=linear", "unknown train.schedule 'linear'; valid choices: cosine, dassl"),
    ("train.min_lr=-1", "train.min_lr must be a finite number >= 0, got -1.0"),
    ("train.warmup_epochs=-1", "train.warmup_epochs must be >= 0, got -1"),
    ("train.warmup_lr=0", "train.warmup_lr must be a positive number, got 0.0"),
])
def test_bad_schedule_settings_are_one_line(setting, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        load_experiment("linear-head", None, [setting])


def test_a_floor_above_a_groups_lr_is_refused():
    with pytest.raises(ConfigError, match=r"^train.min_lr=0.1 is above the learning rate 0.01 of parameter group"):
        build_scheduler(_optimizer(0.01), TrainConfig(min_lr=0.1), 1, 10)


# the recipes: (method, train.* expected), each the reference's (cited beside the method's train_defaults)
RECIPES = [
    ("coop", {"schedule": "dassl", "grad_clip": 0.0, "keep": "last", "batch_size": 32, "min_lr": 0.0}),
    ("cocoop", {"schedule": "dassl", "grad_clip": 0.0, "keep": "last", "batch_size": 1, "epochs": 10}),
    ("maple", {"schedule": "dassl", "grad_clip": 0.0, "keep": "last", "batch_size": 4, "epochs": 5}),
    ("2sfs", {"schedule": "cosine", "grad_clip": 0.0, "warmup": 0.0, "min_lr": 1e-6, "batch_size": 32,
              "head_templates": "a photo of a {}."}),
    ("clip-lora", {"schedule": "cosine", "grad_clip": 0.0, "warmup": 0.0, "min_lr": 1e-6, "batch_size": 32,
                   "head_templates": "a photo of a {}."}),
    ("clip-svd", {"schedule": "cosine", "grad_clip": 0.0, "warmup": 0.0, "min_lr": 1e-6, "batch_size": 32,
                  "head_templates": "coop", "keep": "last", "augment": "crop-flip", "crop_scale": [0.08, 1.0]}),
    ("gda", {"head_templates": "coop"}),
    ("lp++", {"head_templates": "coop"}),
    ("prolip", {"head_templates": "coop"}),
    ("prolip-val", {"head_templates": "coop"}),
]


@pytest.mark.parametrize("name, expected", RECIPES)
def test_recipes_set_the_references_training_settings(name, expected):
    train = load_experiment(name, None, []).train
    assert {key: getattr(train, key) for key in expected} == expected


@pytest.mark.parametrize("name", ["coop", "cocoop", "maple"])
def test_dassl_methods_use_sgd_at_the_references_rate(name):
    config = load_experiment(name, None, []).method_config()
    assert (config.optimizer, config.momentum, config.weight_decay) == ("sgd", 0.9, 5e-4)
    assert config.lr == {"coop": 2e-3, "cocoop": 2e-3, "maple": 3.5e-3}[name]


@pytest.mark.parametrize("shots, dataset, epochs", [(1, "dtd", 50), (2, "dtd", 100), (4, "eurosat", 100),
                                                    (8, "dtd", 200), (16, "dtd", 200), (16, "imagenet", 50),
                                                    (None, "dtd", None)])
def test_coop_epochs_follow_the_references_shot_count(shots, dataset, epochs):
    from types import SimpleNamespace

    from clipadapt.methods.coop import CoOp

    trainer = SimpleNamespace(data=SimpleNamespace(dataset=SimpleNamespace(name=dataset,
                                                                           info={"shots": shots} if shots else {})))
    method = SimpleNamespace(config=load_experiment("coop", None, []).coop)
    assert CoOp.train_epochs(method, trainer) == epochs
    method.config.epochs = 7
    assert CoOp.train_epochs(method, trainer) == 7


def test_the_coop_prompt_is_the_datasets_own():
    assert [resolve_template_set(coop_template_set(key)).templates for key in ("dtd", "eurosat", "oxford_pets")] \
        == [["{} texture."], ["a centered satellite photo of {}."], ["a photo of a {}, a type of pet."]]
    imagenet = resolve_template_set(coop_template_set("imagenet")).templates
    assert len(imagenet) == 7 and imagenet[0] == "itap of a {}." and coop_template_set("imagenet-a") == "imagenet-7"
    shapes = load_dataset(DataConfig(dataset="world:shapes"))
    assert head_templates(shapes, "coop").templates == ["a photo of a {}."]
    assert head_templates(shapes, None).templates == ["a photo of a {}.", "a {}.", "there is a {}."]  # unchanged
    assert head_templates(load_dataset(DataConfig(dataset="world:colour")), "coop").templates == ["a {} object."]
