"""clip-svd (Koleilat et al. 2025): only the singular values of every attention and MLP weight of both towers train;
untrained it is zero-shot CLIP; its count is the singular values'; training moves S alone; its export is plain
weights rebuilt as U diag(S') V^T that transformers' pipeline classifies with; and its one-line refusals."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import clipadapt
from clipadapt.classification.experiment import build_method, head_templates, load_experiment
from clipadapt.data import DataConfig, load_dataset
from clipadapt.engine.inputs import TrainingData
from clipadapt.engine.trainable import build_optimizer
from clipadapt.engine.zeroshot import build_zero_shot_head, zero_shot_logits
from clipadapt.errors import ConfigError
from clipadapt.methods.clip_svd import ClipSVD
from clipadapt.methods.svd_linear import SVDLinear
from clipadapt.models import load_model
from tests.test_export import clipadapt_top1, images, pipeline_top1, train

DECOMPOSED = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@pytest.fixture
def dataset(colour_folder):
    return load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", num_workers=0))


def clip_svd(spec, dataset, *overrides):
    experiment = load_experiment("clip-svd", None, list(overrides))
    return build_method(experiment, load_model(str(spec)), dataset), experiment


def decomposed_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The plain model's linear layers clip-svd decomposes: the blocks' attention and MLP layers of both towers."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)
            and name.startswith(("vision_model.encoder.layers.", "text_model.encoder.layers."))
            and name.rsplit(".", 1)[-1] in DECOMPOSED}


def test_before_its_first_step_it_is_zero_shot(tiny_clip_dir, dataset):
    method, experiment = clip_svd(tiny_clip_dir, dataset)
    templates = head_templates(dataset, experiment.train.head_templates)  # the dataset's one prompt (coop)
    assert method.head.prompts == [t.format(c) for c in dataset.classnames for t in templates.as_strings()]
    plain = load_model(str(tiny_clip_dir))  # an untouched copy
    originals = decomposed_linears(plain.model)
    layers = dict(method.named_modules())
    assert originals and all(isinstance(layers[f"model.{name}"], SVDLinear) for name in originals)
    for name, linear in originals.items():  # U diag(S) V^T is the pretrained weight, to float32 rounding
        torch.testing.assert_close(layers[f"model.{name}"].rebuilt_weight(), linear.weight, rtol=0, atol=1e-6)
    data = TrainingData(dataset, method.bundle, eval_batch_size=64, num_workers=0, preprocess=method.preprocess)
    pixels = next(data.batches("pixels", "test"))["inputs"][:6]
    head = build_zero_shot_head(plain, dataset.classnames, templates)
    with torch.no_grad():
        expected = zero_shot_logits(plain, plain.encode_image(pixels), head)
        method.train()
        training = method({"inputs": pixels})["logits"]
        with method.evaluating():
            evaluating = method({"inputs": pixels})["logits"]
    torch.testing.assert_close(training, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(evaluating, expected, rtol=0, atol=1e-5)


def test_trainable_count_is_the_sum_of_singular_value_lengths(tiny_clip_dir, dataset):
    from transformers import CLIPModel

    plain = CLIPModel.from_pretrained(str(tiny_clip_dir))
    linears = decomposed_linears(plain)
    expected = sum(min(m.out_features, m.in_features) for m in linears.values())
    assert len(linears) == 6 * (plain.config.vision_config.num_hidden_layers
                                + plain.config.text_config.num_hidden_layers)
    method, _ = clip_svd(tiny_clip_dir, dataset)
    trainable = method.trainable_parameters()
    assert set(trainable) == {f"model.{name}.S" for name in linears}
    assert all(p.shape == (min(linears[n[6:-2]].out_features, linears[n[6:-2]].in_features),)
               for n, p in trainable.items())
    counts = method.num_parameters()
    assert counts["trainable"] == expected
    assert counts["total"] == sum(p.numel() for p in plain.parameters())  # CLIP's own count, not U and V's
    assert method.per_class_state() == []  # nothing per class: base-to-novel


def test_training_changes_only_the_singular_values(tiny_clip_dir, dataset):
    method, _ = clip_svd(tiny_clip_dir, dataset, "clip_svd.lr=0.05")
    before = {name: p.detach().clone() for name, p in method.named_parameters()}
    buffers = {name: b.detach().clone() for name, b in method.named_buffers()}
    optimizer = build_optimizer(method)
    data = TrainingData(dataset, method.bundle, batch_size=8, eval_batch_size=8, num_workers=0,
                        preprocess=method.preprocess)
    batch = next(data.batches("pixels", "train", train=False))
    method.train()
    for _ in range(2):
        optimizer.zero_grad()
        method(batch)["loss"].backward()
        optimizer.step()
    after = dict(method.named_parameters())
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and all(name.endswith(".S") for name in moved)
    assert any(n.startswith("model.vision_model.") for n in moved) and any(n.startswith("model.text_model.")
                                                                           for n in moved)
    assert all(torch.equal(b, buffers[name]) for name, b in method.named_buffers())
    plain = load_model(str(tiny_clip_dir)).model.state_dict()  # what was not decomposed is the pretrained model's
    untouched = {n[len("model."):]: p for n, p in after.items() if n.startswith("model.")}
    for name, value in plain.items():
        if name in untouched:
            assert torch.equal(untouched[name], value), name


def test_iterations_are_200_x_shots_unless_set():
    def trainer(shots):
        return SimpleNamespace(data=SimpleNamespace(dataset=SimpleNamespace(info={"shots": shots} if shots else {})))

    method = SimpleNamespace(config=SimpleNamespace(iterations=None))
    assert ClipSVD.train_steps(method, trainer(1)) == 200
    assert ClipSVD.train_steps(method, trainer(16)) == 3200
    assert ClipSVD.train_steps(method, trainer(None)) is None  # a whole dataset: train.epochs
    assert ClipSVD.train_steps(SimpleNamespace(config=SimpleNamespace(iterations=7)), trainer(2)) == 7


def test_export_is_the_rebuilt_weights_and_gives_its_predictions(tiny_clip_dir, colour_folder, tmp_path):
    from transformers import CLIPModel

    run = train("clip-svd", tiny_clip_dir, colour_folder, tmp_path / "run", "clip_svd.iterations=4",
                "clip_svd.lr=0.05", "train.augment=none")
    saved = load_file(str(run.dir / "weights" / "trainable.safetensors"))  # the S vectors alone
    before = CLIPModel.from_pretrained(str(tiny_clip_dir))
    linears = decomposed_linears(before)
    assert set(saved) == {f"model.{name}.S" for name in linears}
    record = clipadapt.export(run, tmp_path / "export")
    assert record["kind"] == "text" and record["pipeline_exact"] and record["method"] == "clip-svd"
    after = CLIPModel.from_pretrained(str(tmp_path / "export")).state_dict()
    plain = before.state_dict()
    assert set(after) == set(plain)
    changed = {k for k in plain if not torch.equal(plain[k], after[k])}
    assert changed and changed <= {f"{name}.weight" for name in linears}
    assert {k.split(".")[0] for k in changed} == {"vision_model", "text_model"}
    for name, linear in linears.items():  # U diag(S') V^T, with U and V from the pretrained weight's SVD
        u, _, vh = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)
        rebuilt = (u * saved[f"model.{name}.S"].double()) @ vh
        torch.testing.assert_close(after[f"{name}.weight"].double(), rebuilt, rtol=0, atol=1e-5)
    paths = images(colour_folder)
    top, probabilities = clipadapt_top1(run, paths)
    other_top, other_probabilities = pipeline_top1(tmp_path / "export", paths)
    assert other_top == top
    for p, q in zip(probabilities, other_probabilities, strict=True):
        assert q == pytest.approx(p, abs=1e-3)
    assert json.loads((run.dir / "metrics.json").read_text())["selection"]["on"] == "none"  # val-free


def test_base_to_novel_classifies_the_new_classes_with_the_trained_values(tiny_clip_dir, four_colour_folder, tmp_path):
    from clipadapt.classification.evaluation import evaluate_run, load_run
    from clipadapt.classification.training import run_training

    output = run_training(load_experiment("clip-svd", None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{four_colour_folder}",
        "data.num_workers=0", "data.subsample=base", "train.epochs=2", "train.batch_size=4", "clip_svd.lr=0.05",
        f"run.out={tmp_path / 'run'}"]))
    result = evaluate_run(output.run_dir, "test", data=["data.subsample=new"])
    _, dataset, method = load_run(output.run_dir, data=["data.subsample=new"])
    assert result["classes"] == 2 and method.classnames == dataset.classnames != method.trained_classes
    saved = load_file(str(output.run_dir / "weights" / "trainable.safetensors"))
    assert saved.keys() == method.trainable_state().keys()
    assert all(torch.equal(saved[key], value) for key, value in method.trainable_state().items())
    fresh, _ = clip_svd(tiny_clip_dir, dataset)  # the trained values moved away from the pretrained ones
    assert any(not torch.equal(saved[k], v) for k, v in fresh.trainable_state().items())
    test = dataset.split("test")
    with torch.no_grad(), method.evaluating():
        predicted = [int(method.pixel_logits(method.preprocess(test.load(i))[None]).argmax()) for i in range(len(test))]
    expected = sum(p == label for p, label in zip(predicted, test.labels, strict=True)) / len(test)
    assert result["metrics"]["acc1"] == pytest.approx(expected, abs=1e-6)


def test_bad_settings_are_refused_in_one_line(tiny_clip_dir, dataset):
    with pytest.raises(ConfigError, match=r"^clip_svd.head must be text"):
        load_experiment("clip-svd", None, ["clip_svd.head=zeroshot"])
    with pytest.raises(ConfigError, match=r"^unknown clip_svd.towers 'all'; valid choices: vision, text, both$"):
        load_experiment("clip-svd", None, ["clip_svd.towers=all"])
    with pytest.raises(ConfigError, match=r"^clip-svd target 'qkv' matches no linear layer of the vision tower of "
                                          r"'.*' \(clip model\); available: fc1, fc2, k_proj, out_proj, q_proj, "
                                          r"v_proj"):
        clip_svd(tiny_clip_dir, dataset, "clip_svd.targets=[qkv]")
