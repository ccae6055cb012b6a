"""gda, lp++ and prolip: their definitions against independent computations, their limits (zero-shot at alpha 0 or
at a huge lambda), what they choose on validation, and the pooled feature kind prolip trains on."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from clipadapt.classification.experiment import build_method, load_experiment
from clipadapt.classification.training import run_training
from clipadapt.data import DataConfig, load_dataset
from clipadapt.engine.features import FeatureCache, encode_split
from clipadapt.engine.inputs import TrainingData
from clipadapt.engine.trainer import TrainConfig, Trainer, make_accelerator
from clipadapt.models import load_model


@pytest.fixture
def dataset(colour_folder):
    return load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", num_workers=0))


def built(name, tiny_clip_dir, dataset, *overrides):
    """A method and a trainer over its own kind of cached features (keep=last: these recipes' default)."""
    bundle = load_model(str(tiny_clip_dir))
    method = build_method(load_experiment(name, None, list(overrides)), bundle, dataset)
    data = TrainingData(dataset, bundle, eval_batch_size=64, num_workers=0, preprocess=method.preprocess,
                        feature_kind=method.feature_kind)
    return method, Trainer(TrainConfig(keep="last"), data, make_accelerator(torch.device("cpu"), "fp32"))


def run(name, tiny_clip_dir, colour_folder, out, *overrides):
    return run_training(load_experiment(name, None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{colour_folder}",
        "data.num_workers=0", f"run.out={out}", "run.samples=4", *overrides]))


# -- gda --------------------------------------------------------------------------------------------------
def test_gda_with_weight_zero_is_zero_shot_exactly(tiny_clip_dir, dataset):
    method, trainer = built("gda", tiny_clip_dir, dataset, "gda.search=false", "gda.alpha=0")
    method.fit(trainer)
    assert method.weight.abs().sum() > 0  # the classifier was fitted, and weighs nothing
    features = trainer.features("test").features
    with torch.no_grad():
        assert torch.equal(method.classify(features), method.head(features))


def test_gda_classifier_equals_shrunk_lda():
    """sklearn's LDA with shrinkage s = D / (N - 1 + D) is the reference's estimator up to a positive factor
    (its covariance is S / N where the reference uses S / (N - 1)); balanced classes make its priors uniform."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from clipadapt.methods.gda import gda_classifier

    rng = np.random.default_rng(0)
    classes, shots, dim = 4, 6, 10
    labels = np.repeat(np.arange(classes), shots)
    x = rng.normal(size=(classes, dim))[labels] + rng.normal(scale=0.7, size=(len(labels), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    weight, bias = gda_classifier(torch.from_numpy(x), torch.from_numpy(labels), classes)

    n = len(labels)
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=dim / (n - 1 + dim)).fit(x, labels)
    factor = n * (n - 1 + dim) / (dim * (n - 1))
    np.testing.assert_allclose(weight.numpy(), lda.coef_ / factor, rtol=1e-4, atol=1e-5)
    prior = np.log(1 / classes)
    np.testing.assert_allclose(bias.numpy(), (lda.intercept_ - prior) / factor + prior, rtol=1e-4, atol=1e-4)

    # and the textbook formulas, written out: means, pooled scatter, the reference's shrinkage
    means = np.stack([x[labels == c].mean(0) for c in range(classes)])
    centred = x - means[labels]
    scatter = centred.T @ centred
    sigma = (scatter + np.trace(scatter) / (n - 1) * np.eye(dim)) / dim
    w = np.linalg.solve(sigma, means.T).T
    np.testing.assert_allclose(weight.numpy(), w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bias.numpy(), prior - 0.5 * (w * means).sum(1), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def disagree(tmp_path_factory):
    """Validation and test disagree about every candidate (tests/helpers.py): test acc = 1 - val acc, exactly."""
    from tests.helpers import COLOURS, make_disagreeing_folder

    return make_disagreeing_folder(tmp_path_factory.mktemp("data") / "disagree",
                                   colours={"red": COLOURS["red"], "blue": COLOURS["blue"]})


def assert_chosen_on_val(record: dict, name: str, candidates: list[dict]) -> dict:
    """The candidates differ on val, the recorded one is the val-best, and the test number is its mirror (a choice
    that read test would report 1 - min(val))."""
    val = [c["val_acc"] for c in candidates]
    assert max(val) > min(val), f"the fixture must make the candidates differ on val: {val}"
    best = max(candidates, key=lambda c: (c["val_acc"], -c["val_loss"]))
    choice = record["selection"]["choices"][-1]
    assert choice["name"] == name and choice["split"] == "val" and choice["candidates"] == len(candidates)
    assert choice["val_acc"] == pytest.approx(best["val_acc"], abs=1e-6)
    assert record["metrics"]["acc1"] == pytest.approx(1 - best["val_acc"], abs=1e-6)
    return best


def history_rows(run_dir) -> list[dict]:
    import csv

    with (run_dir / "history.csv").open() as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def test_gda_chooses_alpha_on_val_and_is_per_class(tiny_clip_dir, disagree, tmp_path):
    output = run("gda", tiny_clip_dir, disagree, tmp_path / "run")
    record = output.record
    rows = history_rows(output.run_dir)
    assert [r["alpha"] for r in rows] == [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]  # the reference grid
    best = assert_chosen_on_val(record, "alpha", rows)
    assert record["selection"]["chose"] == ["alpha"] and record["selection"]["alpha"] == best["alpha"]
    assert record["params"]["trainable"] == 0
    _, dataset, method = __import__("clipadapt.classification.evaluation", fromlist=["load_run"]).load_run(
        output.run_dir)
    assert method.per_class_state() == ["weight", "bias"] and float(method.alpha) == pytest.approx(best["alpha"])


# -- lp++ -------------------------------------------------------------------------------------------------
def test_lp_pp_starts_and_steps_as_the_reference(tiny_clip_dir, dataset):
    from scipy.linalg import eigh

    method, trainer = built("lp++", tiny_clip_dir, dataset)
    lr_w, lr_alpha = method.initialise(trainer)
    train = trainer.features("train")
    f = train.features.numpy().astype(np.float64)
    y = train.labels
    t = method.text_embeddings().detach().numpy().astype(np.float64)  # (K, D)
    # calculate_lr_w, calculate_lr_alpha, compute_centroids (sums) and calculate_init_alpha, transcribed
    assert lr_w == pytest.approx(4 * len(f) / max(eigh(f.T @ f)[0]), rel=1e-6)
    assert lr_alpha == pytest.approx(len(f) / (max(((f @ t.T) ** 2).sum(0)) * 4), rel=1e-6)
    sums = np.stack([f[y == k].sum(0) for k in range(len(t))])
    np.testing.assert_allclose(method.prototypes.detach().numpy(), sums, rtol=1e-5, atol=1e-6)
    shots = len(f) // len(t)
    alpha_tilde = np.array([(f[y == k] @ t[k]).mean() for k in range(len(t))]) * shots
    assert float(method.alpha[0].detach()) == pytest.approx(np.mean(250 / shots * alpha_tilde), rel=1e-5)
    assert sorted(method.per_class_state()) == ["alpha", "bias", "prototypes"]
    bound = 1 / f.shape[1] ** 0.5  # nn.Linear's bias initialisation, as the reference's classifier
    bias = method.bias.detach().numpy()
    assert method.bias.requires_grad and np.all(np.abs(bias) <= bound) and np.ptp(bias) > 0


def test_lp_pp_is_val_free_by_default_and_keeps_the_best_iteration_when_asked(tiny_clip_dir, colour_folder,
                                                                              tmp_path):
    free = run("lp++", tiny_clip_dir, colour_folder, tmp_path / "free", "lp_pp.iterations=20")
    assert free.record["selection"]["on"] == "none" and free.record["selection"]["chose"] == []
    assert free.record["best_epoch"] == 20
    assert free.record["selection"]["lr_w"] > 0 and free.record["selection"]["lr_alpha"] > 0
    best = run("lp++", tiny_clip_dir, colour_folder, tmp_path / "best", "lp_pp.iterations=20", "train.keep=best")
    assert best.record["selection"]["chose"] == ["epoch"]
    history = (best.run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 21  # one row per iteration


def test_lp_pp_trains_a_bias_as_the_references_linear_layer(tiny_clip_dir, dataset):
    method, trainer = built("lp++", tiny_clip_dir, dataset, "lp_pp.iterations=10")
    start = method.bias.detach().clone()
    method.fit(trainer)
    assert not torch.equal(method.bias.detach(), start)  # trained with the prototypes (SGD over nn.Linear's params)
    features = trainer.features("train").features
    with torch.no_grad():
        with_bias = method.classify(features)
        method.config.bias = False
        without = method.classify(features)
    torch.testing.assert_close(with_bias - without, method.bias.detach().expand_as(with_bias))
    plain, _ = built("lp++", tiny_clip_dir, dataset, "lp_pp.bias=false")
    assert "bias" not in plain.trainable_parameters() and "bias" not in plain.per_class_state()


# -- prolip -----------------------------------------------------------------------------------------------
def test_pooled_features_are_the_projection_input(tiny_clip_dir, dataset):
    bundle = load_model(str(tiny_clip_dir))
    split = dataset.split("val")
    pooled = encode_split(bundle, split, num_workers=0, kind="pooled").features
    projected = encode_split(bundle, split, num_workers=0).features
    with torch.no_grad():
        again = torch.nn.functional.normalize(bundle.model.visual_projection(pooled), dim=-1)
    torch.testing.assert_close(again, projected, rtol=1e-5, atol=1e-6)
    assert pooled.shape[1] == bundle.model.visual_projection.in_features


def test_the_projected_cache_key_is_unchanged_and_pooled_has_its_own(tiny_clip_dir, dataset, tmp_path):
    bundle = load_model(str(tiny_clip_dir))
    split = dataset.split("train")
    cache = FeatureCache(tmp_path)
    identity = {"version": 1, "model": bundle.fingerprint, "split": split.fingerprint(),
                "preprocess": bundle.preprocess.config.to_dict(), "dtype": str(bundle.dtype)}
    before = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]  # the key until now
    assert cache.key(bundle, split) == cache.key(bundle, split, "projected") == before
    assert cache.key(bundle, split, "pooled") != before
    encode_split(bundle, split, num_workers=0, cache=cache, kind="pooled")
    encode_split(bundle, split, num_workers=0, cache=cache)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    hit = encode_split(bundle, split, num_workers=0, cache=cache, kind="pooled")
    assert hit.from_cache and hit.features.shape[1] == bundle.model.visual_projection.in_features


def test_prolip_trains_exactly_the_projection(tiny_clip_dir, dataset):
    method, _ = built("prolip", tiny_clip_dir, dataset)
    trainable = method.trainable_parameters()
    assert list(trainable) == ["projection.weight"]
    assert method.num_parameters()["trainable"] == method.bundle.model.visual_projection.weight.numel()
    assert torch.equal(trainable["projection.weight"], method.bundle.model.visual_projection.weight)
    assert method.per_class_state() == []


def test_prolip_with_a_huge_lambda_stays_at_zero_shot(tiny_clip_dir, dataset):
    method, trainer = built("prolip", tiny_clip_dir, dataset, "prolip.lam=1e9", "prolip.lr=1e-2",
                            "prolip.iterations=20")
    fit = method.fit(trainer)
    assert trainer.selections.choices == [] and fit.details["lambda"] == 1e9
    w0 = method.bundle.model.visual_projection.weight
    held = float((method.projection.weight - w0).abs().max())  # Adam's steps are ~lr whatever the gradient's size
    pooled = trainer.features("test").features
    with torch.no_grad():
        zero_shot = method.head(method.bundle.model.visual_projection(pooled))
        assert (method.classify(pooled).argmax(-1) == zero_shot.argmax(-1)).all()
    free, trainer = built("prolip", tiny_clip_dir, dataset, "prolip.lam=0", "prolip.lr=1e-2", "prolip.iterations=20")
    free.fit(trainer)
    assert float((free.projection.weight - w0).abs().max()) > 20 * held  # the same run without the penalty moves


def test_prolip_lambda_defaults_to_one_over_shots(tiny_clip_dir, colour_folder, tmp_path):
    output = run("prolip", tiny_clip_dir, colour_folder, tmp_path / "run", "prolip.iterations=5", "features.views=2")
    # val-free: no validation carved from this folder's training images, so N counts all of them
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", num_workers=0, val_fraction=0))
    shots = len(dataset.split("train")) / dataset.num_classes
    assert shots == 6 and output.record["selection"]["lambda"] == pytest.approx(1 / shots)
    assert output.record["selection"]["chose"] == [] and output.record["best_epoch"] == 5


def test_prolip_val_with_one_cell_chooses_nothing_and_needs_no_validation(tiny_clip_dir, colour_folder, tmp_path):
    """One (lr, lambda) cell is no choice: the plan is val-free, so no val split is carved from this folder, and the
    fit must not read one (it used to fail with "has no split 'val'")."""
    output = run("prolip-val", tiny_clip_dir, colour_folder, tmp_path / "run", "prolip.iterations=5",
                 "features.views=2", "prolip.lrs=[1e-3]", "prolip.lams=[0.1]")
    selection = output.record["selection"]
    assert selection["chose"] == [] and selection["validation"]["split"] is None
    assert (selection["lr"], selection["lambda"]) == (1e-3, 0.1)


def test_prolip_val_chooses_lr_and_lambda_on_validation(tiny_clip_dir, disagree, tmp_path, monkeypatch):
    from clipadapt.methods import prolip

    scores = []
    real = prolip._val_scores
    monkeypatch.setattr(prolip, "_val_scores", lambda *a: scores.append(real(*a)) or scores[-1])
    output = run("prolip-val", tiny_clip_dir, disagree, tmp_path / "run", "prolip.iterations=20", "features.views=2",
                 "prolip.lrs=[0.1,0.00001]", "prolip.lams=[0.0,10.0]")
    selection = output.record["selection"]
    assert selection["chose"] == ["lr,lambda"] and len(scores) == 4  # each cell scored once on val, at its end
    cells = [{"lr": lr, "lambda": lam, "val_acc": acc, "val_loss": -neg_loss}
             for (lr, lam), (acc, neg_loss) in zip([(lr, lam) for lr in (0.1, 1e-5) for lam in (0.0, 10.0)], scores,
                                                    strict=True)]
    best = assert_chosen_on_val(output.record, "lr,lambda", cells)
    assert (selection["lr"], selection["lambda"]) == (best["lr"], best["lambda"])


def test_classes_without_training_images_are_handled_as_the_linear_probe_does():
    """world:shapes-novel names 48 classes and trains 16: gda gives the others a bias that cannot win; lp++ starts
    their prototypes at zero and its ratios from the classes it has."""
    from clipadapt.methods.gda import ABSENT_CLASS_BIAS, gda_classifier
    from clipadapt.methods.lp_pp import initial_state

    rng = np.random.default_rng(1)
    labels = torch.from_numpy(np.repeat([0, 2], 5))
    x = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(10, 6))), dim=-1)
    weight, bias = gda_classifier(x, labels, 3)
    both, bias_both = gda_classifier(x, torch.where(labels == 2, 1, 0), 2)
    assert float(bias[1]) == ABSENT_CLASS_BIAS and weight[1].abs().sum() == 0
    torch.testing.assert_close(weight[[0, 2]], both)  # the two present classes as if they were the only ones
    torch.testing.assert_close(bias[[0, 2]], bias_both)
    text = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(3, 6))), dim=-1)
    prototypes, alpha = initial_state(x, labels, text, 3)
    assert prototypes[1].abs().sum() == 0 and np.isfinite(alpha)
