"""The pilot of ``clipadapt advise``: k-fold CV over train + val on the tiny random CLIP and coloured image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clipadapt.errors import ClipAdaptError, DataError
from clipadapt.experiments.advise import pilot as pilot_module
from clipadapt.experiments.advise.pilot import (
    PILOT_METHODS,
    fold_assignment,
    inner_split,
    interval,
    load_pilot_data,
    run_pilot,
)
from tests.helpers import make_image_folder


def folder_with(root: Path, train: int, val: int, test: int = 2) -> str:
    """imagefolder:ROOT with three colour classes: ``train``, ``val`` and ``test`` images per class."""
    for split, count in (("train", train), ("val", val), ("test", test)):
        make_image_folder(root, per_class=count, splits=(split,))
    return f"imagefolder:{root}"


def pilot_in_home(home: Path, *args, **kwargs):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLIPADAPT_HOME", str(home))
        encoded = []

        def recording(bundle, split, *rest, **options):
            encoded.append((split.name, split.fingerprint()))
            return encode_split(bundle, split, *rest, **options)

        encode_split = pilot_module.encode_split
        patch.setattr(pilot_module, "encode_split", recording)
        return run_pilot(*args, **kwargs), encoded


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> str:
    return folder_with(tmp_path_factory.mktemp("advise") / "colours", train=6, val=6, test=4)


@pytest.fixture(scope="module")
def four_shot(tiny_clip_dir, colours, tmp_path_factory):
    """Every pilot method at 4 shots: 4 train + 6 val images per class (the random sampler keeps val whole)."""
    return pilot_in_home(tmp_path_factory.mktemp("home"), str(tiny_clip_dir), colours, 4, seed=1, device="cpu")


def test_folds_are_stratified_deterministic_and_cover_every_image_once():
    labels = np.repeat([0, 1, 2], 10)
    folds, count, scheme = fold_assignment(labels, 5, seed=3)
    assert count == 5 and scheme == "stratified 5-fold"
    for fold in range(5):  # two images of each class in every fold
        assert np.bincount(labels[folds == fold], minlength=3).tolist() == [2, 2, 2]
    assert np.array_equal(folds, fold_assignment(labels, 5, seed=3)[0])
    assert not np.array_equal(folds, fold_assignment(labels, 5, seed=4)[0])


def test_few_images_leave_one_out_per_class():
    labels = np.repeat([0, 1, 2], 3)  # 3 images per class, 5 folds asked
    folds, count, scheme = fold_assignment(labels, 5, seed=0)
    assert count == 3 and scheme == "leave-one-out per class (3 folds)"
    for fold in range(3):  # one image of each class held out per fold
        assert np.bincount(labels[folds == fold], minlength=3).tolist() == [1, 1, 1]
    mixed = np.array([0] * 7 + [1] * 2)
    folds, count, scheme = fold_assignment(mixed, 5, seed=0)
    assert count == 5 and "leave-one-out per class for classes with fewer than 5" in scheme
    assert sorted(folds[mixed == 1].tolist()) == [2, 3]  # dealt on from where the 7 images of class 0 stopped
    with pytest.raises(DataError, match="at least 2 train \\+ val images"):
        fold_assignment(np.array([0, 1, 2]), 5, seed=0)


def test_inner_split_validates_the_run_share_and_keeps_something_to_fit():
    labels = np.repeat([0, 1, 2], [5, 2, 1])
    fit, validate = inner_split(labels, 0.4, seed=0)
    assert np.bincount(labels[validate], minlength=3).tolist() == [2, 1, 0]
    assert np.bincount(labels[fit], minlength=3).tolist() == [3, 1, 1]
    assert sorted(fit.tolist() + validate.tolist()) == list(range(8))
    assert len(inner_split(labels, 0.0, seed=0)[1]) == 0  # no val in the drawn data: nothing to validate on


def test_interval_is_the_wider_of_fold_spread_and_wilson():
    low, high = interval(8, 10, [0.8, 0.8])  # folds agree: Wilson's 95% interval of 8/10
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = interval(50, 100, [0.1, 0.9])  # folds disagree: mean +/- 1.96 * std / sqrt(2)
    assert round(low, 4) == 0.0 and round(high, 4) == 1.0
    assert interval(10, 10, [1.0, 1.0])[1] == 1.0


def test_pilot_reads_train_and_val_never_test(four_shot, colours):
    pilot, encoded = four_shot
    assert [name for name, _ in encoded] == ["train", "val"] and pilot.splits_read == ["train", "val"]
    _, drawn = load_pilot_data(pilot.model, colours, 4, 1)
    assert [fingerprint for _, fingerprint in encoded] == [drawn.split("train").fingerprint(),
                                                           drawn.split("val").fingerprint()]
    assert drawn.split("test").fingerprint() not in {f for _, f in encoded}
    assert (pilot.train_images, pilot.val_images, pilot.images) == (12, 18, 30)
    assert pilot.sampler == "random" and pilot.classes == 3
    assert pilot.folds == 5 and pilot.scheme == "stratified 5-fold"
    assert set(pilot.scores) == set(PILOT_METHODS)
    assert pilot.per_image_encode_seconds > 0 and pilot.seconds > pilot.encode_seconds > 0


def test_pilot_zero_shot_equals_zero_shot_on_the_same_images(four_shot, colours, tiny_bundle):
    from clipadapt.classification.experiment import head_templates
    from clipadapt.engine.features import encode_split
    from clipadapt.methods.heads import build_head

    pilot, _ = four_shot
    _, drawn = load_pilot_data(pilot.model, colours, 4, 1)
    head = build_head("zeroshot", tiny_bundle, drawn.classnames, head_templates(drawn, "coop"))
    right = []
    with torch.no_grad():
        for split in ("train", "val"):
            encoded = encode_split(tiny_bundle, drawn.split(split))
            right += (head(encoded.features).argmax(-1).numpy() == encoded.labels).tolist()
    score = pilot.scores["zeroshot"]
    assert score.accuracy == pytest.approx(np.mean(right), abs=1e-12)
    assert score.fit_seconds == 0.0 and len(score.folds) == 5


def test_pilot_linear_probe_is_plausible_and_repeatable(four_shot, tiny_clip_dir, colours, tmp_path):
    pilot, _ = four_shot
    probe = pilot.scores["linear-probe"]
    assert 1 / 3 < probe.accuracy <= 1.0 and 0.0 <= probe.low <= probe.accuracy <= probe.high <= 1.0
    assert probe.selection.startswith("C chosen on an inner split")
    again, _ = pilot_in_home(tmp_path / "home", str(tiny_clip_dir), colours, 4, seed=1, device="cpu",
                             methods=("linear-probe",))
    assert again.scores["linear-probe"].folds == probe.folds
    assert again.scores["linear-probe"].accuracy == probe.accuracy
    for name in ("gda", "tip-adapter"):
        score = pilot.scores[name]
        assert 0.0 <= score.low <= score.accuracy <= score.high <= 1.0 and score.fit_seconds > 0


def test_pilot_leave_one_out_with_few_images(tiny_clip_dir, tmp_path):
    few = folder_with(tmp_path / "few", train=3, val=2)  # 1 shot + 2 val per class: 3 images per class
    pilot, _ = pilot_in_home(tmp_path / "home", str(tiny_clip_dir), few, 1, seed=1, device="cpu",
                             methods=("zeroshot", "gda"))
    assert pilot.images == 9 and pilot.folds == 3 and pilot.scheme == "leave-one-out per class (3 folds)"
    assert all(len(score.folds) == 3 for score in pilot.scores.values())
    assert pilot.scores["gda"].selection.startswith("alpha chosen on an inner split")


def test_pilot_without_inner_validation_takes_the_defaults(tiny_clip_dir, tmp_path):
    pair = folder_with(tmp_path / "pair", train=2, val=1)  # 1 shot + 1 val: each fold fits on one image per class
    pilot, _ = pilot_in_home(tmp_path / "home", str(tiny_clip_dir), pair, 1, seed=1, device="cpu")
    assert pilot.folds == 2 and pilot.scheme == "leave-one-out per class (2 folds)"
    for name in ("linear-probe", "gda", "tip-adapter"):
        assert pilot.scores[name].selection.startswith("defaults")
        assert len(pilot.scores[name].folds) == 2
    # 1 image per class: GDA has no within-class scatter, so it is zero-shot exactly (methods/gda.py)
    assert pilot.scores["gda"].folds == pilot.scores["zeroshot"].folds


def test_pilot_refuses_a_dataset_without_training_images(tmp_path):
    make_image_folder(tmp_path / "only-test", per_class=2, splits=("test",))
    with pytest.raises(DataError, match="has no training images: advise scores methods on them; valid choices"):
        load_pilot_data("unused", f"imagefolder:{tmp_path / 'only-test'}", 4, 1)
    with pytest.raises(ClipAdaptError, match="unknown pilot method 'coop'; valid choices: zeroshot, linear-probe"):
        run_pilot("unused", "unused", 4, methods=("coop",))
