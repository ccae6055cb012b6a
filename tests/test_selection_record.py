"""metrics.json's ``selection`` is what the run did, for every registered method (issue 28).

Each method is trained twice on one training split and one test split, once with the disagreeing fixture's
validation labels and once with them swapped (fixture ``mirrored``: its val/ holds the fixture's test images, the val
images with the two labels exchanged). A choice made on validation flips with the labels: the candidate best on one
is the worst on the other; a choice that read the test split would not, since test is the same in both. A run that
chooses nothing reads validation only for its curve and trains the same weights either way. So, for every method
under ``train.keep=best`` and ``train.keep=last`` and under every boolean setting that changes what it chooses
(LP-FT's probe, Tip-Adapter's and GDA's searches):

* nothing recorded => the two runs' saved weights are bit-identical (no choice was made without being recorded);
* each recorded choice => its chosen value differs between the two runs (it was made, on validation), and it names
  the split "val", its 13 images and its candidates;
* what was recorded equals what the method plans for those settings (``Method.planned_choices``: what decides
  whether a dataset without a validation split gets one carved out of train).

A new method is covered by being registered: the parameters come from ``list_methods()`` and its config's fields.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import load_file

from clipadapt.classification.experiment import load_experiment
from clipadapt.classification.training import planned_choices, run_training
from clipadapt.engine.trainer import KEEPS, TrainConfig
from clipadapt.errors import ClipAdaptError
from clipadapt.methods import METHODS, list_methods
from tests.helpers import COLOURS, make_disagreeing_folder

VAL_IMAGES = 13  # make_disagreeing_folder: 7 + 6
# what the runs need to stay small on the tiny CLIP (settings of the fixture, not of what is chosen): maple's default
# depth is 9 (the tiny model has 2 layers); prolip's grid 2 x 2 of 10 full-batch steps
SECTION_SETTINGS = {"maple": ["maple.depth=2"],
                    "prolip": ["prolip.lrs=[0.1,0.00001]", "prolip.lams=[0.0,10.0]", "prolip.iterations=10"],
                    "lp_pp": ["lp_pp.iterations=10"]}


def choice_settings(name: str) -> list[tuple[str, ...]]:
    """``train.keep=best`` and ``=last``, each also with every boolean field of the method's config flipped where the
    flip changes what the method plans to choose."""
    entry = METHODS.get(name)
    default = entry.config_class()
    planned = entry.method_class.planned_choices
    variants: list[tuple[str, ...]] = [()]
    for field in dataclasses.fields(default):
        value = getattr(default, field.name)
        if not isinstance(value, bool):
            continue
        try:
            flipped = dataclasses.replace(default, **{field.name: not value})
        except ClipAdaptError:
            continue
        if any(planned(flipped, TrainConfig(keep=keep)) != planned(default, TrainConfig(keep=keep)) for keep in KEEPS):
            variants.append((f"{entry.section}.{field.name}={str(not value).lower()}",))
    return [(f"train.keep={keep}", *variant) for keep in KEEPS for variant in variants]


CASES = [pytest.param(name, settings, id="-".join([name, *(s.split(".", 1)[1] for s in settings)]))
         for name in list_methods() for settings in choice_settings(name)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The disagreeing fixture and its mirror: the same train/ and test/, and as val/ the test images (the val
    images with the two labels swapped), saved again so that their bytes differ from test's (same pixels). Only
    validation changes between the two: a choice made on val flips, one that read test would not."""
    root = tmp_path_factory.mktemp("data")
    # two clearly different colours, so that training moves validation accuracy from epoch to epoch (with close
    # ones the tiny model predicts one class throughout and every epoch ties on validation)
    original = make_disagreeing_folder(root / "original", colours={"red": COLOURS["red"], "blue": COLOURS["blue"]})
    mirrored = root / "mirrored"
    shutil.copytree(original / "train", mirrored / "train")
    shutil.copytree(original / "test", mirrored / "test")
    for path in sorted((original / "test").rglob("*.png")):
        target = mirrored / "val" / path.relative_to(original / "test")
        target.parent.mkdir(parents=True, exist_ok=True)
        note = PngInfo()  # other bytes, same pixels: the held-out check refuses byte-identical copies
        note.add_text("mirror-of", str(path.relative_to(original)))
        Image.open(path).save(target, pnginfo=note)
    return original, mirrored


def train(name, settings, folder, out, tiny_clip_dir, tiny_resnet_dir):
    section = METHODS.get(name).section
    offline = [f"baseline.classifier={tiny_resnet_dir}"] if section == "baseline" else []  # no download
    fields = {f.name for f in dataclasses.fields(METHODS.get(name).config_class)}
    moving = [f"{section}.lr=0.01"] if "lr" in fields else []  # a rate at which 4 short epochs differ on val
    views = ["features.views=2"] if METHODS.get(name).method_class.views else []  # not 300 crops per image (prolip)
    experiment = load_experiment(name, None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{folder}",
        "data.num_workers=0", "train.epochs=4", "train.batch_size=8", "train.patience=0", f"run.out={out}",
        "run.samples=0", *offline, *moving, *views, *SECTION_SETTINGS.get(section, []), *settings])
    return experiment, run_training(experiment).record


def saved_weights(run_dir) -> dict:
    files = sorted((run_dir / "weights").rglob("*.safetensors"))
    assert files, f"no weights saved in {run_dir}"
    return {f"{path.relative_to(run_dir)}:{key}": tensor for path in files for key, tensor in load_file(path).items()}


def test_every_method_is_covered_with_both_keeps():
    covered = {case.values[0] for case in CASES}
    assert covered == set(list_methods())
    ids = {case.id for case in CASES}
    assert {"lora-keep=best", "lora-keep=last", "full-ft-keep=best-lp_ft=true", "tip-adapter-keep=last-search=false",
            "gda-keep=best-search=false"} <= ids


@pytest.mark.slow
@pytest.mark.usefixtures("figures_built_not_rasterised")  # no figure is read here: test_methods.py reads them
@pytest.mark.parametrize(("name", "settings"), CASES)
def test_the_record_is_what_the_run_did(name, settings, folders, tiny_clip_dir, tiny_resnet_dir, tmp_path):
    original, mirrored = folders
    experiment, record = train(name, settings, original, tmp_path / "a", tiny_clip_dir, tiny_resnet_dir)
    _, flipped = train(name, settings, mirrored, tmp_path / "b", tiny_clip_dir, tiny_resnet_dir)
    chosen, chosen_flipped = record["selection"]["choices"], flipped["selection"]["choices"]
    names = [choice["name"] for choice in chosen]
    assert record["selection"]["chose"] == names == [c["name"] for c in chosen_flipped]
    assert tuple(names) == planned_choices(experiment), "the record must equal what the method plans to choose"
    if not chosen:
        assert record["selection"]["on"] == "none"
        a, b = saved_weights(tmp_path / "a"), saved_weights(tmp_path / "b")
        assert a.keys() == b.keys()
        changed = [key for key in a if not (a[key] == b[key]).all()]
        assert not changed, f"validation labels changed {changed[:3]}, but the run records no choice"
        assert record["best_epoch"] == flipped["best_epoch"]
        return
    assert record["selection"]["on"] == "val"
    for mine, other in zip(chosen, chosen_flipped, strict=True):
        assert mine["split"] == "val" and mine["images"] == VAL_IMAGES and mine["candidates"] >= 2, mine
        assert mine["value"] != other["value"], f"{mine['name']} did not follow the validation labels: {mine}"
    assert record["selection"]["validation"] == {"split": "val", "images": VAL_IMAGES}
