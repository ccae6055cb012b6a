"""Tip-Adapter, Tip-Adapter-F and CLIP-Adapter: their limits equal zero-shot, the search reads validation only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipadapt.data import DataConfig, load_dataset
from clipadapt.engine.inputs import TrainingData
from clipadapt.engine.trainer import TrainConfig, Trainer, make_accelerator
from tests.test_methods import make_method


@pytest.fixture
def dataset(colour_folder):
    return load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", num_workers=0))


def _trainer(method, dataset):
    data = TrainingData(dataset, method.bundle, batch_size=8, eval_batch_size=64, num_workers=0,
                        preprocess=method.preprocess)
    return Trainer(TrainConfig(epochs=2, patience=0), data, make_accelerator(torch.device("cpu"), "fp32"))


def _zero_shot_logits(tiny_clip_dir, dataset, features):
    """An independent zero-shot classifier: an untrained linear-head (its head is the zero-shot one)."""
    head = make_method("linear-head", tiny_clip_dir, dataset, prepare=False)
    with torch.no_grad():
        return head({"inputs": features})["logits"]


def test_tip_adapter_without_its_cache_term_is_zero_shot_exactly(tiny_clip_dir, dataset):
    method = make_method("tip-adapter", tiny_clip_dir, dataset, ["tip_adapter.alpha=0"])
    trainer = _trainer(method, dataset)
    test = trainer.features("test").features
    zero_shot = _zero_shot_logits(tiny_clip_dir, dataset, test)
    with torch.no_grad():
        assert torch.equal(method({"inputs": test})["logits"], zero_shot)  # alpha = 0
        method.alpha.fill_(1.5)
        method.beta.fill_(0.0)  # beta -> 0: every key votes 1, so each class gets its shot count, for every image
        shifted = method({"inputs": test})["logits"]
    counts = torch.as_tensor(np.bincount(trainer.features("train").labels, minlength=dataset.num_classes)).float()
    torch.testing.assert_close(shifted - zero_shot, (1.5 * method.head.scale / 100 * counts).expand_as(shifted))
    train = trainer.features("train")  # with K shots of every class (the few-shot setting) the shift is constant
    shots = int(counts.min())
    balanced = np.concatenate([np.flatnonzero(train.labels == c)[:shots] for c in range(dataset.num_classes)])
    method.state_from_features(train.features[balanced], train.labels[balanced])
    with torch.no_grad():
        assert torch.equal(method({"inputs": test})["logits"].argmax(-1), zero_shot.argmax(-1))


def test_tip_adapter_cache_holds_the_training_features(tiny_clip_dir, dataset):
    method = make_method("tip-adapter", tiny_clip_dir, dataset)
    train = _trainer(method, dataset).features("train")
    torch.testing.assert_close(method.keys, torch.nn.functional.normalize(train.features, dim=-1))
    assert method.values.sum(0).tolist() == np.bincount(train.labels, minlength=dataset.num_classes).tolist()
    assert torch.equal(method.values.argmax(-1), torch.as_tensor(train.labels))


@pytest.mark.parametrize("name", ["tip-adapter", "tip-adapter-f"])
def test_alpha_beta_search_reads_validation_only_and_keeps_the_best(name, tiny_clip_dir, dataset):
    method = make_method(name, tiny_clip_dir, dataset, ["tip_adapter.alpha_steps=5", "tip_adapter.beta_steps=6"],
                         prepare=False)
    trainer = _trainer(method, dataset)
    read = []
    real_features, real_evaluate = trainer.features, trainer.evaluate
    trainer.features = lambda split: read.append(split) or real_features(split)
    trainer.evaluate = lambda m, split: read.append(split) or real_evaluate(m, split)
    searched = {}
    real_search = method.search

    def search(t):
        searched["rows"] = real_search(t)
        return searched["rows"]

    method.search = search
    fit = method.fit(trainer)
    assert set(read) == {"train", "val"}, read
    rows = searched["rows"]
    assert len(rows) == 5 * 6
    best = max(rows, key=lambda r: (r["val_acc"], -r["val_loss"]))
    assert (float(method.alpha), float(method.beta)) == pytest.approx((best["alpha"], best["beta"]))
    choice = trainer.selections.choices[-1]  # the search's choice, as the run records it
    assert choice.name == "alpha,beta" and choice.split == "val" and choice.candidates == 5 * 6
    assert choice.scores["val_acc"] == best["val_acc"] and choice.value == pytest.approx(
        {"alpha": best["alpha"], "beta": best["beta"]})
    in_use = {k: fit.details[k] for k in ("alpha", "beta")}  # tip-adapter-f's also hold its kept epoch's scores
    assert in_use == pytest.approx({"alpha": best["alpha"], "beta": best["beta"]})
    with torch.no_grad():  # the chosen pair scores on val what the search said
        val = trainer.features("val")
        logits = method({"inputs": val.features})["logits"]
    assert float((logits.argmax(-1).numpy() == val.labels).mean()) == pytest.approx(best["val_acc"])


def test_tip_adapter_f_trains_the_keys_from_the_cache(tiny_clip_dir, dataset):
    method = make_method("tip-adapter-f", tiny_clip_dir, dataset, ["tip_adapter.search=false"], prepare=False)
    trainer = _trainer(method, dataset)
    start = torch.nn.functional.normalize(trainer.features("train").features, dim=-1)
    head = {k: v.clone() for k, v in method.head.state_dict().items()}
    method.fit(trainer)
    assert method.keys.shape == start.shape and not torch.equal(method.keys.detach(), start)
    assert all(torch.equal(v, head[k]) for k, v in method.head.state_dict().items())  # the head stays zero-shot
    assert (float(method.alpha), float(method.beta)) == (1.0, 1.0)  # no search asked


def test_clip_adapter_with_ratio_zero_is_zero_shot_exactly(tiny_clip_dir, dataset):
    method = make_method("clip-adapter", tiny_clip_dir, dataset, ["clip_adapter.ratio=0"])
    test = _trainer(method, dataset).features("test").features
    with torch.no_grad():
        assert torch.equal(method({"inputs": test})["logits"], _zero_shot_logits(tiny_clip_dir, dataset, test))
    adapted = make_method("clip-adapter", tiny_clip_dir, dataset, ["clip_adapter.ratio=0.2"])
    with torch.no_grad():
        assert not torch.equal(adapted({"inputs": test})["logits"], method({"inputs": test})["logits"])


@pytest.mark.parametrize("setting, message", [
    ("tip_adapter.head=linear", "tip_adapter.head must be zeroshot"),
    ("tip_adapter.alpha=-1", "tip_adapter.alpha and beta must be >= 0"),
    ("clip_adapter.ratio=1.5", r"clip_adapter.ratio must be in \[0, 1\], got 1.5"),
])
def test_bad_settings_are_refused(setting, message, tiny_clip_dir, dataset):
    from clipadapt.errors import ConfigError

    name = "tip-adapter" if setting.startswith("tip") else "clip-adapter"
    with pytest.raises(ConfigError, match=message):
        make_method(name, tiny_clip_dir, dataset, [setting], prepare=False)
