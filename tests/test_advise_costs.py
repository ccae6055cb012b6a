"""Costs of ``clipadapt advise``: recipe work, predicted seconds, the probe, the reference profile, budgets."""

from __future__ import annotations

import math

import pytest

from clipadapt.errors import ClipAdaptError
from clipadapt.experiments.advise.costs import (
    parse_duration,
    parse_memory,
    predict_seconds,
    probe_costs,
    recipe_work,
    reference_cost,
    reference_profile,
)
from clipadapt.methods import METHODS


@pytest.mark.parametrize(("shots", "dataset", "epochs"), [(1, "", 50), (2, "", 100), (4, "", 100), (8, "", 200),
                                                          (16, "", 200), (16, "imagenet", 50)])
def test_coop_epochs_follow_the_shots(shots, dataset, epochs):
    work = recipe_work("coop", 10 * shots, 10, dataset=dataset)
    assert work["epochs"] == epochs and work["batch"] == 32
    assert work["steps"] == epochs * math.ceil(10 * shots / 32)
    assert work["inputs"] == "features" and work["views"] == 10  # cached features, a view per epoch


def test_coop_work_counts_its_views_validation_and_evaluation():
    work = recipe_work("coop", 768, 48, n_val=480, n_test=960)
    assert (work["epochs"], work["steps_per_epoch"], work["steps"]) == (200, 24, 4800)
    assert work["validations"] == 11  # keep=last: the first and last epoch and every 20th (engine.trainer.validates)
    assert work["encoded"] == 10 * 768 + 480 + 960
    assert work["evaluated"] == 11 * 480 + 960
    assert recipe_work("coop", 768, 48, ["features.views=clean"])["encoded"] == 768 + 4 * 48  # val: CoOp's min(K, 4)


def test_clip_lora_trains_500_iterations_per_shot():
    work = recipe_work("clip-lora", 160, 10)
    assert (work["inputs"], work["steps"], work["batch"], work["epochs"]) == ("pixels", 8000, 32, 1600)
    assert work["encoded"] == 0 and work["forwarded"] == 8000 * 32
    assert recipe_work("clip-lora", 160, 10, ["clip_lora.iterations=100"])["steps"] == 100
    assert recipe_work("clip-lora", 40, 10)["steps"] == 2000
    assert recipe_work("2sfs", 160, 10)["steps"] == 300 * 16  # iterations_per_shot x K, both stages


def test_tip_adapter_f_and_the_closed_form_methods():
    work = recipe_work("tip-adapter-f", 1600, 100, n_val=400, n_test=1000)
    assert (work["kind"], work["epochs"], work["batch"], work["steps"]) == ("engine", 20, 256, 20 * 7)
    assert work["validations"] == 20 and work["encoded"] == 10 * 1600 + 400 + 1000
    for method, views in (("tip-adapter", 10), ("gda", 10), ("linear-probe", 0)):
        work = recipe_work(method, 1600, 100, n_val=400, n_test=1000)
        assert (work["kind"], work["steps"], work["views"]) == ("closed-form", 0, views)
        assert work["encoded"] == max(views, 1) * 1600 + 400 + 1000
    assert recipe_work("prolip-val", 160, 10)["steps"] == (7 * 7 + 1) * 300  # every cell, then the chosen again
    assert recipe_work("prolip", 160, 10)["steps"] == 300 and recipe_work("lp++", 160, 10)["batch"] == 160
    zero_shot = recipe_work("zeroshot", 160, 10, n_test=500)
    assert zero_shot["encoded"] == 500 and zero_shot["steps"] == 0


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_has_recipe_work(method):
    work = recipe_work(method, 64, 8, n_val=32, n_test=40)
    assert work["steps"] >= 0 and work["encoded"] >= 0 and work["inputs"] in ("features", "pixels")
    assert (work["steps"] > 0) == (work["kind"] != "closed-form")


def test_predicted_seconds_add_encoding_steps_and_evaluation():
    pixels = recipe_work("lora", 320, 10, n_val=100, n_test=200)  # 10 epochs of 10 steps, validated every epoch
    parts = predict_seconds(pixels, step_seconds=0.5, per_image_encode_seconds=0.01)
    assert parts == {"encode": 0.0, "train": 50.0, "evaluate": (10 * 100 + 200) * 0.01, "fit": 0.0, "loader": 0.0,
                     "setup": 0.0, "total": 62.0}
    assert predict_seconds(pixels, 0.5, 0.01, setup_seconds=2.5)["total"] == 64.5
    assert pixels["loader_passes"] == 10 + 10 + 1  # every epoch, every validation, the test
    loaded = predict_seconds(pixels, 0.5, 0.01, per_image_load_seconds=0.001, loader_start_seconds=0.2)
    assert (loaded["train"], loaded["loader"], loaded["total"]) == pytest.approx((53.2, 4.2, 69.4))  # 3200 images
    assert predict_seconds(pixels, 0.5, 0.01, per_image_load_seconds=0.001, overlapped=True)["train"] == 50.0
    features = recipe_work("linear-probe", 320, 10, n_val=100, n_test=200)
    assert predict_seconds(features, None, 0.01, fit_seconds=3.0)["total"] == pytest.approx(6.2 + 3.0)
    assert features["loader_passes"] == 3 and recipe_work("gda", 320, 10, n_val=100)["loader_passes"] == 2
    coop = recipe_work("coop", 320, 10, n_val=64, n_test=128)  # 11 validations: 704 images, 11 + 2 batches of 64
    assert predict_seconds(coop, 0.3, 0.0)["evaluate"] == pytest.approx(13 * 0.3 / 3)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("2h", 7200), ("1.5h", 5400),
                                               ("1h30m", 5400), (" 45 M ", 2700), ("1d", 86400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "ten minutes", "-5m", "5 parsecs", "", "0s"])
def test_parse_duration_refuses_with_the_valid_forms(text):
    with pytest.raises(ClipAdaptError) as error:
        parse_duration(text)
    assert f"'{text}'" in str(error.value) and "valid forms: a number and a unit (s, m, h, d), e.g. 90s" in \
        str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("text", "megabytes"), [("512MB", 512), ("8GB", 8192), ("1.5GB", 1536), ("8g", 8192),
                                                 ("8GiB", 8192), ("2048kb", 2), ("1TB", 1024**2)])
def test_parse_memory(text, megabytes):
    assert parse_memory(text) == megabytes


@pytest.mark.parametrize("text", ["8", "lots", "8 GBs", "-1GB", "0MB"])
def test_parse_memory_refuses_with_the_valid_forms(text):
    with pytest.raises(ClipAdaptError, match=r"memory budget '.*'.*valid forms: a number and a unit \(KB, MB, GB"):
        parse_memory(text)


def test_probe_measures_steps_and_memory(tiny_clip_dir):
    costs = probe_costs(str(tiny_clip_dir), ["zeroshot", "linear-probe", "coop"], 24, 3, device="cpu", steps=2,
                        per_image_encode_seconds=0.002, n_val=6, n_test=9, fit_seconds={"linear-probe": 0.5})
    coop, probe, zero_shot = costs["coop"], costs["linear-probe"], costs["zeroshot"]
    assert coop.measured and coop.device == "cpu" and coop.probe_batch == 32 and coop.batch == 32
    assert coop.step_seconds > 0 and coop.memory_mb > 0 and coop.work["steps"] == 200  # 8 shots: 200 epochs of 1
    assert coop.seconds == pytest.approx(coop.parts["total"]) and coop.parts["train"] == pytest.approx(
        200 * coop.step_seconds, rel=1e-3)
    assert probe.step_seconds is None and probe.memory_mb > 0
    assert probe.seconds == pytest.approx((24 + 6 + 9) * 0.002 + 0.5, abs=1e-3)  # no loader start given
    assert zero_shot.memory_mb > 0 and zero_shot.step_seconds is None
    assert zero_shot.seconds == pytest.approx(9 * 0.002, abs=1e-3)


def test_reference_profile_costs():
    profile = reference_profile()
    assert {"date", "machine", "model", "per_image_encode_seconds", "methods"} <= set(profile)
    assert profile["per_image_encode_seconds"] > 0
    coop_16, coop_4 = reference_cost("coop", 1600, 100), reference_cost("coop", 400, 100)
    assert coop_16 > coop_4 > 0
    assert reference_cost("clip-lora", 1600, 100) > reference_cost("linear-probe", 1600, 100) > \
        reference_cost("zeroshot", 1600, 100) == 0.0
    with pytest.raises(ClipAdaptError, match="method 'baseline' is not in the reference profile; valid choices: "):
        reference_cost("baseline", 160, 10)


def test_profile_steps_grow_with_the_classes_never_shrink():
    from clipadapt.experiments.advise.costs import profile_step_seconds

    growing = {"batch": 8, "classes": [10, 100], "step_seconds": [2.0, 11.0]}  # 1 s + 0.1 s per class
    assert profile_step_seconds(growing, 1000) == pytest.approx(101.0)
    assert profile_step_seconds(growing, 100, batch=32) == pytest.approx(4 * 1.0 + 10.0)  # the rest scales
    falling = {"batch": 8, "classes": [10, 100], "step_seconds": [4.0, 3.0]}  # noise: the class count changes nothing
    assert profile_step_seconds(falling, 1000) == profile_step_seconds(falling, 10) == 3.5
    assert profile_step_seconds(falling, 10, batch=16) == 7.0
