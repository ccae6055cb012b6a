"""Blur and JPEG corruption change the images, more with severity, and level 0 is the clean image (the accuracy they
cost the pretrained world model is in tests/test_world_slow.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipadapt.classification.predictors import Predictor
from clipadapt.classification.robustness import CORRUPTIONS, corrupted_accuracy
from clipadapt.data import DataConfig, load_dataset
from clipadapt.data.transforms import ClipPreprocess, PreprocessConfig
from clipadapt.engine.features import image_loader
from tests.helpers import random_photo

PREPROCESS = ClipPreprocess(PreprocessConfig(resize=32, crop=(32, 32)))


def _uint8(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


# Measured on random_photo(64, 64, seed=1), mean |corrupted - clean| in 0..255 pixel units at the default levels:
# blur radius 0.5/1/2/4: 3.98 8.21 9.25 9.50; jpeg 100 - quality 50/80/90/95: 9.44 9.99 10.96 13.36
@pytest.mark.parametrize("name", ["blur", "jpeg"])
def test_corruption_changes_the_image_more_with_severity(name):
    entry = CORRUPTIONS.get(name)
    clean = _uint8(random_photo(64, 64, seed=1))
    levels = [level for level in entry.default_levels if level > 0]
    assert len(levels) >= 3
    distances = []
    for level in levels:
        corrupted = entry.apply(clean, level, 0, 0)
        assert corrupted.dtype == torch.uint8 and corrupted.shape == clean.shape
        assert torch.equal(corrupted, entry.apply(clean, level, 5, 17))  # no randomness: seed and position unused
        distances.append(_distance(corrupted, clean))
    assert distances[0] > 2.0, distances  # the mildest level already changes the pixels visibly
    assert all(later > earlier for earlier, later in zip(distances, distances[1:], strict=False)), distances


def _recorder(dataset):
    """A predictor that keeps the normalised pixels it is shown (and predicts class 0)."""
    seen: list[torch.Tensor] = []

    def logits(pixels: torch.Tensor) -> torch.Tensor:
        seen.append(pixels.clone())
        return torch.zeros(len(pixels), len(dataset.classnames))

    return Predictor("recorder", dataset.classnames, PREPROCESS, logits, torch.device("cpu"), dataset=dataset), seen


@pytest.mark.parametrize("name", ["blur", "jpeg"])
def test_the_evaluated_images_are_clean_at_level_0_and_further_from_clean_at_each_level(name, colour_folder):
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", num_workers=0))
    clean = torch.cat([PREPROCESS.normalize(batch["images"])
                       for batch in image_loader(dataset.split("test"), PREPROCESS, 64, num_workers=0)])
    predictor, seen = _recorder(dataset)
    distances = {}
    for level in CORRUPTIONS.get(name).default_levels:
        seen.clear()
        metrics = corrupted_accuracy(predictor, "test", name, level, num_workers=0)
        assert metrics["n"] == len(clean) == 6
        shown = torch.cat(seen)
        distances[level] = _distance(shown, clean)
        if level == 0:  # JPEG at quality 100 would still change pixels: level 0 must skip the corruption
            assert torch.equal(shown, clean)
    levels = sorted(distances)
    assert distances[levels[1]] > 0.01, distances  # normalised units: about 2.5 pixel values out of 255
    assert all(distances[b] > distances[a] for a, b in zip(levels, levels[1:], strict=False)), distances


def _scorer(dataset, preprocess, weights: torch.Tensor):
    """A predictor whose logits are a fixed linear map of the mean colour: different weights, different answers."""
    def logits(pixels: torch.Tensor) -> torch.Tensor:
        return pixels.mean(dim=(2, 3)) @ weights

    return Predictor("scorer", dataset.classnames, preprocess, logits, torch.device("cpu"), dataset=dataset)


def test_runs_evaluated_together_give_each_run_its_own_numbers_from_one_pass_per_level(colour_folder, monkeypatch):
    from clipadapt.classification import robustness

    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", num_workers=0))
    colour = torch.zeros(3, len(dataset.classnames))  # the red channel votes for red, ...
    for channel, name in enumerate(("red", "green", "blue")):
        colour[channel, dataset.classnames.index(name)] = 1
    other = ClipPreprocess(PreprocessConfig(resize=24, crop=(24, 24)))
    predictors = [_scorer(dataset, PREPROCESS, colour), _scorer(dataset, PREPROCESS, -colour),
                  _scorer(dataset, other, colour[[1, 0, 2]])]  # red and green swapped
    levels = [0.0, 0.2]
    alone = [robustness.evaluate_robustness(p, "gaussian", levels, seed=3) for p in predictors]
    loaders = []
    counting = robustness.image_loader

    def counted(*args, **kwargs):
        loaders.append(args[1])
        return counting(*args, **kwargs)

    monkeypatch.setattr(robustness, "image_loader", counted)
    together = robustness.evaluate_robustness_of_runs(predictors, "gaussian", levels, seed=3)
    assert together == alone  # the same numbers, in the callers' order
    assert [entry["accuracy"]["0"] for entry in alone] == pytest.approx([1, 0, 1 / 3])  # three different answers
    # the two runs that share preprocessing and images read each level once; the third reads its own
    assert loaders == [PREPROCESS, PREPROCESS, other, other]
