"""``baseline.train``: which layers of the conventional classifier train (last, last-stage, first-stage, all)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clipadapt.classification.evaluation import load_run
from clipadapt.classification.training import run_training
from clipadapt.engine.trainable import build_optimizer
from clipadapt.errors import ConfigError
from clipadapt.methods.baseline import TRAIN_CHOICES, backbone_layers
from tests.test_methods import _offline_classifier, experiment, first_batch, make_method  # noqa: F401

STEM, STAGE0, STAGE1 = "net.resnet.embedder.", "net.resnet.encoder.stages.0.", "net.resnet.encoder.stages.1."
HEAD = "net.classifier."


def _prefixes(names) -> set[str]:
    return {next((p for p in (STEM, STAGE0, STAGE1, HEAD) if n.startswith(p)), n) for n in names}


@pytest.fixture
def dataset(colour_folder):
    from clipadapt.data import DataConfig, load_dataset

    return load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", num_workers=0))


@pytest.mark.parametrize(("train", "parts"), [
    ("last", {HEAD}),
    ("last-stage", {HEAD, STAGE1}),
    ("first-stage", {HEAD, STEM, STAGE0}),
    ("all", {HEAD, STEM, STAGE0, STAGE1}),
])
def test_each_choice_trains_exactly_its_layers(train, parts, tiny_clip_dir, dataset):
    method = make_method("baseline", tiny_clip_dir, dataset, [f"baseline.train={train}"])
    trainable = method.trainable_parameters()
    assert _prefixes(trainable) == parts
    everything = dict(method.net.named_parameters(prefix="net"))
    # every parameter of a chosen part trains, none outside it
    assert set(trainable) == {n for n in everything if _prefixes([n]) <= parts}


def test_last_stage_count_is_the_textbook_count(tiny_clip_dir, dataset):
    """The tiny ResNet's last stage: one basic block 16 -> 32 channels with a 1x1 projection shortcut."""
    method = make_method("baseline", tiny_clip_dir, dataset, ["baseline.train=last-stage"])
    block = 3 * 3 * 16 * 32 + 2 * 32 + 3 * 3 * 32 * 32 + 2 * 32 + 16 * 32 + 2 * 32  # convs (no bias) + BN scale/shift
    final = 32 * dataset.num_classes + dataset.num_classes
    assert method.num_parameters()["trainable"] == block + final


def test_backbone_learns_at_the_scaled_rate(tiny_clip_dir, dataset):
    method = make_method("baseline", tiny_clip_dir, dataset,
                         ["baseline.train=all", "baseline.lr=0.02", "baseline.backbone_lr_scale=0.05"])
    groups = {g["name"]: g for g in build_optimizer(method).param_groups}
    assert groups["head"]["lr"] == pytest.approx(0.02) and groups["backbone"]["lr"] == pytest.approx(0.001)
    in_groups = {id(p) for g in groups.values() for p in g["params"]}
    assert in_groups == {id(p) for p in method.trainable_parameters().values()}
    # the default trains the final layer only: no backbone group reaches the optimizer
    default = make_method("baseline", tiny_clip_dir, dataset)
    assert [g["name"] for g in build_optimizer(default).param_groups] == ["head"]


def test_training_the_last_stage_keeps_the_rest_and_the_statistics(tiny_clip_dir, colour_folder, tmp_path):
    import clipadapt.classification.training as training

    built = {}
    original = training.build_method

    def spy(*args, **kwargs):
        built["method"] = method = original(*args, **kwargs)
        built["params"] = {n: p.detach().clone() for n, p in method.net.named_parameters()}
        built["buffers"] = {n: b.detach().clone() for n, b in method.net.named_buffers()}
        return method

    training.build_method = spy
    try:
        output = run_training(experiment("baseline", tiny_clip_dir, colour_folder, tmp_path / "run",
                                         "baseline.train=last-stage"))
    finally:
        training.build_method = original
    net = built["method"].net
    for name, param in net.named_parameters():
        changed = not torch.equal(param, built["params"][name])
        if name.startswith(("resnet.embedder.", "resnet.encoder.stages.0.")):
            assert not changed, name
    assert any(not torch.equal(p, built["params"][n]) for n, p in net.named_parameters()
               if n.startswith("resnet.encoder.stages.1.") and n.endswith("convolution.weight"))
    # BatchNorm statistics are not weights: they keep their pretrained values, so the saved run reproduces itself
    assert all(torch.equal(b, built["buffers"][n]) for n, b in net.named_buffers())
    _, dataset, method = load_run(output.run_dir)
    assert method.config.train == "last-stage"
    method.eval()
    with torch.no_grad():
        batch = first_batch(method, dataset, "test")
        built["method"].eval()
        torch.testing.assert_close(method(batch)["logits"], built["method"](batch)["logits"], rtol=0, atol=0)


def test_bad_choices_are_refused(tiny_clip_dir, dataset):
    with pytest.raises(ConfigError, match=r"unknown baseline.train 'middle'; valid choices: "
                                          + ", ".join(TRAIN_CHOICES)):
        make_method("baseline", tiny_clip_dir, dataset, ["baseline.train=middle"])
    with pytest.raises(ConfigError, match="backbone_lr_scale"):
        make_method("baseline", tiny_clip_dir, dataset, ["baseline.backbone_lr_scale=0"])


def test_a_classifier_without_stages_takes_last_or_all_only():
    class Flat(nn.Module):  # e.g. a ViT classifier: no stem/stages to choose from
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(4, 4)

    model = Flat()
    assert backbone_layers(model, "last", "vit") == [] and backbone_layers(model, "all", "vit") == [model]
    with pytest.raises(ConfigError, match="baseline.train=last-stage needs a classifier with a stem and encoder "
                                          "stages .*; 'vit' has none; valid choices for it: last, all"):
        backbone_layers(model, "last-stage", "vit")


def test_activation_checkpointing_refused_when_convolutions_train(tiny_clip_dir, dataset):
    make_method("baseline", tiny_clip_dir, dataset, prepare=False).enable_activation_checkpointing()  # no-op
    method = make_method("baseline", tiny_clip_dir, dataset, ["baseline.train=first-stage"], prepare=False)
    with pytest.raises(ConfigError, match="activation checkpointing is not supported with baseline.train"):
        method.enable_activation_checkpointing()
