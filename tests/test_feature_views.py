"""Augmented feature views (features.views, engine/views.py): what a view is, how each method uses them, that they are
encoded once and shared, and the one-line refusals of bad settings."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clipadapt.classification.experiment import build_method, load_experiment
from clipadapt.classification.training import run_training
from clipadapt.cli import app
from clipadapt.data import DataConfig, load_dataset
from clipadapt.data.transforms import TrainAugment
from clipadapt.engine.inputs import TrainingData
from clipadapt.engine.trainer import TrainConfig, Trainer, make_accelerator
from clipadapt.engine.views import ViewCache
from clipadapt.models import load_model
from clipadapt.models.bundle import ClipBundle

runner = CliRunner()


def built(name, tiny_clip_dir, dataset, views, *overrides, cache=True):
    """A method and a trainer whose training split has ``views`` augmented views (in the views cache)."""
    bundle = load_model(str(tiny_clip_dir))
    method = build_method(load_experiment(name, None, list(overrides)), bundle, dataset)
    data = TrainingData(dataset, bundle, eval_batch_size=64, num_workers=0, preprocess=method.preprocess,
                        feature_kind=method.feature_kind, views=views, view_cache=ViewCache() if cache else None)
    return method, Trainer(TrainConfig(keep="last"), data, make_accelerator(torch.device("cpu"), "fp32"))


def few_shot(colour_folder, shots=None, seed=0):
    return load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", num_workers=0, shots=shots, seed=seed))


def test_a_view_is_the_seeded_crop_and_flip_of_its_image(tiny_clip_dir, colour_folder):
    """View v of the image at position p is TrainAugment(train.crop_scale, flip) drawn from ("views", seed, v, p), as
    the image tower encodes it (stored in float16); views differ from each other and from the clean feature."""
    dataset = few_shot(colour_folder)
    method, trainer = built("gda", tiny_clip_dir, dataset, 3)
    views = trainer.data.feature_views()
    assert len(views) == 3 and views.store.dtype == np.float16
    assert isinstance(views.store, np.memmap)  # read from the cache's file, not held in memory
    split, bundle = dataset.split("train"), method.bundle
    for view, position in ((0, 0), (2, 5)):
        pixels = TrainAugment(bundle.preprocess, scale=(0.5, 1.0), rng=random.Random(f"views-0-{view}-{position}"))(
            split.load(position))
        with torch.no_grad():
            expected = bundle.encode_image(pixels[None])[0]
        row = int(np.flatnonzero(views.positions == position)[0])
        torch.testing.assert_close(views.view(view)[row], expected.half().float(), atol=0, rtol=0)
    clean = trainer.features("train").features
    assert not torch.allclose(views.view(0), views.view(1), atol=1e-3)
    assert not torch.allclose(views.view(0), clean, atol=1e-3)


def test_gda_at_one_shot_uses_the_views(tiny_clip_dir, colour_folder):
    """Without views a 1-shot split has no within-class scatter: the precision is 0 and GDA is zero-shot exactly. With
    views its statistics count every view (N = views x images), so it differs from zero-shot, and from draw to draw."""
    weights = []
    for seed in (0, 1):
        dataset = few_shot(colour_folder, shots=1, seed=seed)
        method, trainer = built("gda", tiny_clip_dir, dataset, 4, "gda.search=false", "gda.alpha=1")
        method.fit(trainer)
        features = trainer.features("test").features
        with torch.no_grad():
            assert not torch.allclose(method.classify(features), method.head(features), atol=1e-4)
        weights.append(method.weight.clone())
        # the statistics are over the 4 x 3 views, as gda_classifier computes them from the stacked views
        from clipadapt.methods.gda import gda_classifier

        stacked, labels = trainer.data.feature_views().stacked()
        assert len(labels) == 4 * 3
        weight, _ = gda_classifier(torch.nn.functional.normalize(stacked, dim=-1), torch.as_tensor(labels), 3)
        torch.testing.assert_close(method.weight, weight)
    assert not torch.allclose(weights[0], weights[1])
    clean, trainer = built("gda", tiny_clip_dir, few_shot(colour_folder, shots=1), 0, "gda.search=false")
    clean.fit(trainer)
    assert clean.weight.abs().max() == 0  # the collapse the views fix


def test_tip_adapter_keys_are_the_mean_of_the_views(tiny_clip_dir, colour_folder):
    dataset = few_shot(colour_folder, shots=2)
    method, trainer = built("tip-adapter", tiny_clip_dir, dataset, 3, "tip_adapter.search=false")
    method.prepare(trainer)
    views = trainer.data.feature_views()
    mean = (views.view(0) + views.view(1) + views.view(2)) / 3
    torch.testing.assert_close(method.keys, torch.nn.functional.normalize(mean, dim=-1))
    assert torch.equal(method.values.argmax(-1), torch.as_tensor(views.labels))


def test_prolip_trains_each_iteration_on_another_view(tiny_clip_dir, colour_folder):
    """Iteration t (from 1) on view t mod N, as the reference's counter; validation on clean images."""
    dataset = few_shot(colour_folder, shots=2)
    method, trainer = built("prolip", tiny_clip_dir, dataset, 3, "prolip.iterations=5")
    seen = []
    classify = method.classify

    def spy(inputs):
        if method.training:
            seen.append(inputs.detach().clone())
        return classify(inputs)

    method.classify = spy
    method.fit(trainer)
    views = trainer.data.feature_views()
    assert len(seen) == 5
    for t, features in enumerate(seen, start=1):
        assert torch.equal(features, views.view(t % 3))
    assert all(not torch.equal(a, b) for a, b in zip(seen, seen[1:], strict=False))
    assert views.dim == method.projection.in_features  # views of the pooled kind, as prolip eats


def test_the_engine_trains_epoch_e_on_view_e_mod_n(tiny_clip_dir, colour_folder):
    dataset = few_shot(colour_folder)
    method, trainer = built("clip-adapter", tiny_clip_dir, dataset, 2, cache=False)
    data = trainer.data
    views = data.feature_views()
    assert not isinstance(views.store, np.memmap)  # without a cache: in memory
    for epoch in (0, 1, 2):
        batch = next(data.batches("features", "train", epoch=epoch, train=True))
        row = {int(p): i for i, p in enumerate(views.positions)}
        expected = views.view(epoch % 2)[[row[int(p)] for p in batch["positions"]]]
        assert torch.equal(batch["inputs"], expected)
    val = next(data.batches("features", "val"))  # evaluation stays on clean features
    assert torch.equal(val["inputs"], data.features("val").features[:len(val["inputs"])])


@pytest.mark.slow
def test_views_are_encoded_once_and_shared_across_seeds_and_methods(tiny_clip_dir, colour_folder, tmp_path,
                                                                    monkeypatch):
    def run(name, seed, *extra):
        return run_training(load_experiment(name, None, [
            f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{colour_folder}",
            "data.num_workers=0", "data.shots=2", f"run.out={tmp_path / f'{name}-{seed}'}", "run.samples=0",
            f"run.seed={seed}", "features.views=3", "train.epochs=1", *extra]))

    first = run("gda", 0)
    assert first.record["features"] == {"views": 3, "crop_scale": [0.5, 1.0], "flip": True, "seed": 0,
                                        "use": "statistics over every view (class means, shared covariance; N counts "
                                               "views)"}
    config = (tmp_path / "gda-0" / "config.yaml").read_text()
    assert "views: 3" in config

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(ClipBundle, "encode_image", no_encoding)  # views, val and test all come from the caches
    run("gda", 1)
    # tip-adapter searching (a val-free run would train on other images: nothing is carved out for val)
    run("tip-adapter", 0, "tip_adapter.alpha_steps=2", "tip_adapter.beta_steps=2")
    run("clip-adapter", 2)
    entries = [p for p in ViewCache().root.iterdir() if p.is_dir()]
    assert len(entries) == 1
    meta = json.loads((entries[0] / "meta.json").read_text())
    assert meta["views"] == 3 and meta["crop_scale"] == [0.5, 1.0]


def test_recipe_views_are_recorded(tiny_clip_dir, colour_folder, tmp_path):
    out = run_training(load_experiment("lp++", None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{colour_folder}",
        "data.num_workers=0", "data.shots=2", f"run.out={tmp_path / 'run'}", "run.samples=0", "lp_pp.iterations=3",
        "train.crop_scale=0.3,0.9"]))
    assert out.record["features"]["views"] == 1  # LP++'s recipe: one augmented view
    assert out.record["features"]["crop_scale"] == [0.3, 0.9]
    linear = run_training(load_experiment("linear-probe", None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{colour_folder}",
        "data.num_workers=0", f"run.out={tmp_path / 'linear'}", "run.samples=0"]))
    assert linear.record["features"] == {"views": 0}


def test_clean_features_opt_out_of_the_recipes_views(tiny_clip_dir, colour_folder, tmp_path, monkeypatch):
    """features.views=clean: the recipe's views are not encoded; the method trains on the clean cached features (and
    any method accepts it, so a compare can pass it to all)."""
    from clipadapt.engine import views

    def no_views(*args, **kwargs):
        raise AssertionError("views encoded")

    monkeypatch.setattr(views, "encode_views", no_views)
    common = [f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{colour_folder}",
              "data.num_workers=0", "run.samples=0", "features.views=clean"]
    out = run_training(load_experiment("lp++", None, [*common, f"run.out={tmp_path / 'lpp'}", "lp_pp.iterations=3"]))
    assert out.record["features"] == {"views": 0}
    assert out.record["config"]["features"]["views"] == "clean"
    lora = load_experiment("lora", None, [*common, f"run.out={tmp_path / 'lora'}"])
    assert lora.features.views == "clean"  # a pixel method takes it too (it has no views to drop)


def test_crop_scale_reaches_pixel_augmentation(colour_folder):
    from clipadapt.data.transforms import ClipPreprocess, PreprocessConfig
    from clipadapt.engine.inputs import AugmentedImages

    split = few_shot(colour_folder).split("train")
    preprocess = ClipPreprocess(PreprocessConfig(resize=32, crop=(32, 32)))
    wide = AugmentedImages(split, preprocess, "crop-flip", 0, 0, crop_scale=(0.9, 1.0))[0][0]
    narrow = AugmentedImages(split, preprocess, "crop-flip", 0, 0, crop_scale=(0.05, 0.1))[0][0]
    default = AugmentedImages(split, preprocess, "crop-flip", 0, 0)[0][0]
    assert not torch.equal(wide, narrow)
    assert torch.equal(default, AugmentedImages(split, preprocess, "crop-flip", 0, 0, crop_scale=(0.5, 1.0))[0][0])


@pytest.mark.parametrize(("method", "override", "message"), [
    ("gda", "features.views=0", "features.views must be a positive number of views or 'clean', got 0"),
    ("gda", "features.views=-3", "features.views must be a positive number of views or 'clean', got -3"),
    ("gda", "features.views=all", "features.views must be a positive number of views or 'clean', got 'all'"),
    ("gda", "train.crop_scale=0,1", "train.crop_scale must be two numbers min,max with 0 < min <= max <= 1, got [0.0, "
                                    "1.0]"),
    ("gda", "train.crop_scale=0.5,1.5", "got [0.5, 1.5]"),
    ("gda", "train.crop_scale=0.9,0.5", "got [0.9, 0.5]"),
    ("gda", "train.crop_scale=0.5", "train.crop_scale must be a list, got 0.5"),
    ("lora", "features.views=4", "features.views=4 applies to methods on cached features that train on views; "
                                 "method 'lora' does not"),
    ("linear-probe", "features.views=4", "method 'linear-probe' does not"),
])
def test_bad_view_settings_are_one_line_errors(method, override, message, tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", method, "--model", str(tiny_clip_dir), "--dataset",
                                 f"imagefolder:{colour_folder}", "--epochs", "1", "--out", str(out), "--set",
                                 "data.num_workers=0", "--set", override])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert len(result.output.strip().splitlines()) == 1
    assert not (out / "metrics.json").exists()
