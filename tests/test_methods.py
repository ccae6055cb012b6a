"""Every registered method through the same checks (peft habit: one shared tester over a tiny model)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from clipadapt.classification.evaluation import load_run
from clipadapt.classification.experiment import build_method, load_experiment
from clipadapt.classification.training import run_training
from clipadapt.data import DataConfig, load_dataset
from clipadapt.engine.inputs import TrainingData
from clipadapt.engine.trainable import build_optimizer
from clipadapt.methods import METHODS, list_methods
from clipadapt.models import load_model

ALL_METHODS = list_methods()


# per config section, what the tests need offline, in time or on the tiny CLIP: prolip-val's grid is 2 x 2 here (49
# runs in its recipe); maple's default depth adapts to the tiny model's 2 layers
SECTION_SETTINGS: dict[str, list[str]] = {"prolip": ["prolip.lrs=[0.01,0.0001]", "prolip.lams=[0,1]"]}


@pytest.fixture(autouse=True)
def _offline_classifier(tiny_resnet_dir):
    """The baseline methods use a tiny random ResNet instead of downloading microsoft/resnet-18."""
    SECTION_SETTINGS["baseline"] = [f"baseline.classifier={tiny_resnet_dir}"]


def settings(name: str) -> list[str]:
    """Test settings of a method: its section's, and 2 augmented views for a method whose recipe trains on views
    (prolip's 300 would make every run here encode 300 crops of each image; tests/test_feature_views.py covers
    the recipes' counts)."""
    views = ["features.views=2"] if METHODS.get(name).method_class.views else []
    return [*SECTION_SETTINGS.get(METHODS.get(name).section, []), *views]


@pytest.fixture
def dataset(colour_folder):
    return load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", num_workers=0))


def make_method(name: str, tiny_clip_dir, dataset, overrides=(), prepare: bool = True):
    """A fresh model per test: methods inject adapters and flip requires_grad. ``prepare`` runs the method's
    pre-training hook as the engine would (Tip-Adapter builds its cache of training features there)."""
    from clipadapt.engine.trainer import TrainConfig, Trainer, make_accelerator

    bundle = load_model(str(tiny_clip_dir))
    torch.manual_seed(0)
    method = build_method(load_experiment(name, None, settings(name) + list(overrides)), bundle, dataset)
    if prepare:
        data = TrainingData(dataset, bundle, batch_size=64, eval_batch_size=64, num_workers=0,
                            preprocess=method.preprocess, feature_kind=method.feature_kind)
        method.prepare(Trainer(TrainConfig(), data, make_accelerator(torch.device("cpu"), "fp32")))
    return method


TRAINING_FREE = {"tip-adapter", "gda"}  # nothing trains: their fit builds state (a cache) and searches on val


def first_batch(method, dataset, split="train"):
    data = TrainingData(dataset, method.bundle, batch_size=64, eval_batch_size=64, num_workers=0,
                        preprocess=method.preprocess, feature_kind=method.feature_kind)
    return next(data.batches(method.inputs, split, train=False))


def experiment(name: str, tiny_clip_dir, colour_folder, out, *overrides):
    return load_experiment(name, None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{colour_folder}",
        "data.num_workers=0", "train.epochs=3", "train.batch_size=4", "train.patience=0", f"run.out={out}",
        "run.samples=4", *settings(name), *overrides,
    ])


def test_registry_lists_every_method():
    assert {"linear-probe", "linear-head", "bitfit", "lora", "full-ft", "baseline", "baseline-flip", "visual-prompt",
            "vpt", "vision-prefix", "coop", "tip-adapter", "tip-adapter-f", "clip-adapter", "cocoop",
            "maple"} <= set(ALL_METHODS)
    assert list_methods("lin*") == ["linear-head", "linear-probe"]


@pytest.mark.parametrize("name", ALL_METHODS)
def test_two_steps_lower_the_loss(name, tiny_clip_dir, dataset):
    from clipadapt.errors import ConfigError

    method = make_method(name, tiny_clip_dir, dataset)
    batch = first_batch(method, dataset)
    if name in TRAINING_FREE:
        with pytest.raises(ConfigError, match=f"method '{name}' has no trainable parameters"):
            build_optimizer(method)
        return
    optimizer = build_optimizer(method)  # each method's own recipe (SGD at lr 40 for visual prompts)

    def loss() -> float:
        method.eval()
        with torch.no_grad():
            return float(method(batch)["loss"])

    before = loss()
    for _ in range(2):
        method.train()
        optimizer.zero_grad()
        method(batch)["loss"].backward()
        optimizer.step()
    assert loss() < before


@pytest.mark.parametrize("name", ALL_METHODS)
def test_only_named_parameters_receive_gradients(name, tiny_clip_dir, dataset):
    method = make_method(name, tiny_clip_dir, dataset)
    method.train()
    loss = method(first_batch(method, dataset))["loss"]
    if name in TRAINING_FREE:
        assert not loss.requires_grad and not method.trainable_parameters()
        assert all(not p.requires_grad for p in method.bundle.model.parameters())
        return
    loss.backward()
    named = set(method.step_parameters())  # what this step trains (2sfs: its first stage's LayerNorms)
    assert named and named <= set(method.trainable_parameters()), "a method must train something"
    with_grad = {n for n, p in method.named_parameters() if p.grad is not None}
    assert with_grad == named
    trained = {id(p) for p in method.step_parameters().values()}
    # the whole model too, also where it is not a submodule (CoOp runs the text tower on cached features)
    assert all(p.grad is None for p in method.bundle.model.parameters() if id(p) not in trained)


def _expected_trainable(name: str, model, classes: int, train_images: int) -> int:
    """The textbook count for each method on the tiny CLIP (vision: 2 layers of width 64, projection 32)."""
    vision, projection = model.config.vision_config, model.config.projection_dim
    d, ff, layers = vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers
    size, text = vision.image_size, model.config.text_config
    text_width = text.hidden_size
    frame = round(30 * size / 224)  # the default 30 px frame at 224 px, scaled to the 32 px input: 4 px
    patches = (vision.image_size // vision.patch_size) ** 2
    cosine_head = classes * projection
    biases_per_layer = 4 * d + 2 * d + ff + d  # q, k, v, out; two layer norms; fc1; fc2
    per_layer = 4 * (d * d + d) + 2 * 2 * d + (d * ff + ff) + (ff * d + d)
    tower = d + 3 * vision.patch_size ** 2 * d + (patches + 1) * d + 2 * d + layers * per_layer + 2 * d
    final_layer = 32 * classes + classes  # the tiny ResNet's new last layer (32 channels -> classes)
    return {
        "baseline": final_layer,
        "baseline-flip": final_layer,
        "linear-probe": classes * projection + classes,  # W and b of the logistic regression
        "linear-head": cosine_head,
        "bitfit": layers * biases_per_layer + 2 * d + cosine_head,  # + pre/post layer-norm biases
        "lora": layers * 2 * (2 * 8 * d) + cosine_head,  # q_proj, v_proj: A (r x d) and B (d x r), r=8
        "full-ft": tower + d * projection + cosine_head,  # + the visual projection (no bias)
        "visual-prompt": 2 * 3 * frame * size + 2 * 3 * (size - 2 * frame) * frame + cosine_head,  # frame + head
        "vpt": 8 * d + cosine_head,  # 8 shallow tokens
        "vision-prefix": 10 * d + (d * 512 + 512) + (512 * layers * 2 * d + layers * 2 * d) + cosine_head,  # MLP
        "coop": 16 * text_width,  # 16 shared context vectors; no head of its own
        # the context from "a photo of a" (9 tokens of the character tokenizer: a, p h o t o, o f, a) + the meta-net
        # Linear(projection, projection / 16), ReLU, Linear(projection / 16, text width)
        "cocoop": 9 * text_width + (projection * (projection // 16) + projection // 16)
                  + (projection // 16 * text_width + text_width),
        # 2 layers x (2 language prompts + a coupling Linear, text width -> vision width, with bias)
        "maple": 2 * (2 * text_width + text_width * d + d),
        "tip-adapter": 0,  # training-free: the cache is state, not trained
        "tip-adapter-f": train_images * projection,  # the keys: one per training image
        "clip-adapter": 2 * projection * (projection // 4),  # the bottleneck MLP, no biases; the head is frozen
        # the two LayerNorms of every block of both towers (weight and bias each; not the towers' pre, post and
        # final norms, as the reference), then the classifier's rows
        "2sfs": layers * 2 * 2 * d + text.num_hidden_layers * 2 * 2 * text_width + cosine_head,
        # q, k, v of every layer of both towers, r=2: A (r x d) and B (d x r) each; no head
        "clip-lora": 2 * 2 * (3 * d * layers + 3 * text_width * text.num_hidden_layers),
        # one singular value per min(out, in) of q, k, v, out (d x d), fc1 and fc2 (d x ff) in every layer of both
        # towers; no head
        "clip-svd": layers * (4 * d + 2 * min(d, ff))
                    + text.num_hidden_layers * (4 * text_width + 2 * min(text_width, text.intermediate_size)),
        "gda": 0,  # training-free: class means and a shared covariance give the classifier (state)
        "lp++": classes * projection + 2 * classes,  # a visual prototype, a blending ratio and a bias per class
        "prolip": d * projection,  # visual_projection alone (no bias)
        "prolip-val": d * projection,
    }[name]


@pytest.mark.parametrize("name", ALL_METHODS)
def test_trainable_count_matches_formula(name, tiny_clip_dir, dataset):
    method = make_method(name, tiny_clip_dir, dataset)
    counts = method.num_parameters()
    expected = _expected_trainable(name, method.bundle.model, dataset.num_classes, len(dataset.split("train")))
    assert counts["trainable"] == expected
    assert counts["trainable_pct"] == pytest.approx(100 * counts["trainable"] / counts["total"], abs=1e-3)


def test_lora_rank_and_targets_change_the_count(tiny_clip_dir, dataset):
    method = make_method("lora", tiny_clip_dir, dataset, ["lora.r=2", "lora.targets=[q_proj,k_proj,v_proj,fc1]"])
    d, ff = 64, 128
    expected = 2 * (3 * 2 * 2 * d + 2 * (d + ff)) + dataset.num_classes * 32  # fc1 is d -> ff
    assert method.num_parameters()["trainable"] == expected


def watched_run(name: str, tiny_clip_dir, colour_folder, out) -> dict:
    """``run_training`` of ``experiment(name)``, watched for every test of a plain run (they would each train the
    same run): the model's and the method's parameters as built and the method's state (frozen weights), the order
    of fitting and of reading test images (read-only test split), each finished epoch and each checkpoint saved
    (resume), and the output (run directory)."""
    import clipadapt.classification.training as training
    import clipadapt.engine.trainer as trainer_module

    seen: dict = {"events": [], "epochs": [], "checkpoints": []}
    real_build, real_load_dataset = training.build_method, training.load_dataset
    real_save, cls = trainer_module.save_checkpoint, METHODS.get(name).method_class
    real_fit = cls.fit

    def build(*args, **kwargs):
        method = real_build(*args, **kwargs)
        seen["method"] = method
        seen["before"] = {id(p): p.detach().clone() for p in
                          list(method.bundle.model.parameters()) + list(method.parameters())}
        seen["state"] = method.trainable_state()
        return method

    def load_dataset_watched(config):
        dataset = real_load_dataset(config)
        test = dataset.splits["test"]
        real_load = test.load

        def load(i):
            seen["events"].append("test image")
            return real_load(i)

        test.load = load
        return dataset

    def fit(method, trainer):
        result = real_fit(method, trainer)
        seen["events"].append("fit done")
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "build_method", build)
        patch.setattr(training, "load_dataset", load_dataset_watched)
        patch.setattr(cls, "fit", fit)
        patch.setattr(trainer_module, "save_checkpoint",
                      lambda *args, **kwargs: seen["checkpoints"].append(args) or real_save(*args, **kwargs))
        seen["output"] = run_training(experiment(name, tiny_clip_dir, colour_folder, out),
                                      {"epoch_end": [epoch_recorder(seen["epochs"])]})
    return seen


@pytest.fixture(scope="module")
def plain_run(tiny_clip_dir, colour_folder, tmp_path_factory):
    """``plain_run(name)``: the method's watched plain run (watched_run), trained once for the module's tests."""
    runs: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in runs:
            runs[name] = watched_run(name, tiny_clip_dir, colour_folder, tmp_path_factory.mktemp("plain") / "run")
        return runs[name]

    return get


@pytest.mark.parametrize("name", ALL_METHODS)
def test_training_leaves_frozen_weights_bit_identical(name, plain_run):
    built = plain_run(name)
    method = built["method"]
    trainable = {id(p) for p in method.trainable_parameters().values()}
    params = {id(p): p for p in list(method.bundle.model.parameters()) + list(method.parameters())}
    frozen = [pid for pid in params if pid not in trainable]
    assert frozen and all(torch.equal(params[pid], built["before"][pid]) for pid in frozen)
    if name in TRAINING_FREE:  # what it fits is its state (the cache), not weights
        assert not trainable and any(not torch.equal(value, built["state"][key])
                                     for key, value in method.trainable_state().items())
    else:
        assert any(not torch.equal(params[pid], built["before"][pid]) for pid in trainable)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_run_directory_and_save_load_round_trip(name, plain_run):
    output = plain_run(name)["output"]
    run_dir = output.run_dir
    for artifact in ("config.yaml", "metrics.json", "history.csv", "curves.png", "confusion.png", "per_class.csv",
                     "predictions.png", "weights"):
        assert (run_dir / artifact).exists(), artifact
    assert not (run_dir / "checkpoints").exists()
    record = json.loads((run_dir / "metrics.json").read_text())
    for key in ("trainable", "total", "trainable_pct"):
        assert key in record["params"]
    for key in ("train_time_s", "peak_mem_mb", "train_images_per_s", "eval_images_per_s"):
        assert record["cost"][key] > 0
    assert record["split"] == "test" and record["best_epoch"] >= 0
    assert record["metrics"]["acc1"] == pytest.approx(output.result.metrics["acc1"])

    _, dataset, method = load_run(run_dir)
    data = TrainingData(dataset, method.bundle, eval_batch_size=64, num_workers=0, preprocess=method.preprocess,
                        feature_kind=method.feature_kind)
    from clipadapt.engine.trainer import TrainConfig, Trainer, make_accelerator

    again = Trainer(TrainConfig(), data, make_accelerator(torch.device("cpu"), "fp32")).evaluate(method, "test")
    assert torch.equal(again.logits, output.result.logits)


def test_lora_adapter_loads_with_plain_peft(tiny_clip_dir, colour_folder, tmp_path):
    from peft import PeftModel
    from transformers import CLIPModel

    output = run_training(experiment("lora", tiny_clip_dir, colour_folder, tmp_path / "run"))
    _, dataset, method = load_run(output.run_dir)
    plain = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip_dir), output.run_dir / "weights/adapter")
    plain.eval()
    method.eval()
    pixels = first_batch(method, dataset, "test")["inputs"]
    with torch.no_grad():
        ours = method.bundle.encode_image(pixels, normalize=False)
        theirs = plain.get_image_features(pixel_values=pixels).pooler_output
        base = CLIPModel.from_pretrained(tiny_clip_dir).get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert not torch.allclose(ours, base, atol=1e-4), "the trained adapter must change the features"


# Resuming, by how each method fits (every registered method is named in exactly one list, tested below):
# trained by the engine's epoch loop (Trainer.fit, checkpoint after each epoch): an interrupt after epoch 1 must fire,
# and the resumed run must continue at epoch 2 and end bit-identical to an uninterrupted run.
EPOCH_TRAINED = ("linear-head", "bitfit", "lora", "full-ft", "baseline", "baseline-flip", "visual-prompt", "vpt",
                 "vision-prefix", "coop", "clip-adapter", "tip-adapter-f", "clip-lora", "clip-svd", "cocoop",
                 "maple")
# closed form: fit() never enters the epoch loop (linear-probe solves a logistic regression with L-BFGS for each C of
# its sweep on val; tip-adapter builds its cache from the train features and grid-searches alpha and beta on val).
# No epoch ends, no checkpoint is written; they assert instead that a run stopped after fitting, before the test
# split, resumes by fitting again and ends bit-identical to an uninterrupted run.
# lp++ and prolip train full batch in their own loop (methods/full_batch.py): no engine epochs, the same resume.
CLOSED_FORM = ("linear-probe", "tip-adapter", "gda", "lp++", "prolip", "prolip-val")


# trained in stages, each an epoch loop with its own checkpoints: tested in their own files (2sfs:
# tests/test_two_stage_fs.py, interrupted in either stage)
STAGED = ("2sfs",)


def test_every_method_is_named_for_the_resume_tests():
    named = EPOCH_TRAINED + CLOSED_FORM + STAGED
    assert sorted(named) == sorted(ALL_METHODS), "name a new method in one of the three lists"
    assert len(set(named)) == len(named)
    assert TRAINING_FREE.issubset(CLOSED_FORM)


def _history(run_dir) -> list[dict]:
    with (run_dir / "history.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]  # seconds: timing


def assert_same_run(run, reference) -> None:
    assert run.record["metrics"] == reference.record["metrics"]
    assert run.record["best_epoch"] == reference.record["best_epoch"]
    assert run.record["selection"] == reference.record["selection"]
    assert torch.equal(run.result.logits, reference.result.logits)
    assert _history(run.run_dir) == _history(reference.run_dir)


def epoch_recorder(epochs: list, stop_at: int | None = None):
    """An ``epoch_end`` callback that records each finished epoch and interrupts after ``stop_at``."""
    def callback(trainer, row):
        epochs.append(row["epoch"])
        if row["epoch"] == stop_at:
            raise KeyboardInterrupt

    return callback


@pytest.mark.parametrize("name", EPOCH_TRAINED)
def test_resume_equals_uninterrupted_run(name, tiny_clip_dir, colour_folder, tmp_path, plain_run):
    from clipadapt.engine.checkpoint import latest_checkpoint

    interrupted_epochs, resumed_epochs = [], []
    straight = plain_run(name)["output"]
    assert plain_run(name)["epochs"] == [1, 2, 3]

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):  # the interrupt must fire: a run that finishes instead fails here
        run_training(experiment(name, tiny_clip_dir, colour_folder, interrupted),
                     {"epoch_end": [epoch_recorder(interrupted_epochs, stop_at=1)]})
    assert interrupted_epochs == [1]
    assert not (interrupted / "metrics.json").exists()
    assert latest_checkpoint(interrupted) == interrupted / "checkpoints" / "epoch-0001"

    resumed = run_training(experiment(name, tiny_clip_dir, colour_folder, interrupted, "run.resume=true"),
                           {"epoch_end": [epoch_recorder(resumed_epochs)]})
    assert resumed_epochs == [2, 3]  # it continued from the checkpoint instead of starting again
    assert_same_run(resumed, straight)


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_closed_form_methods_resume_by_fitting_again(name, tiny_clip_dir, colour_folder, tmp_path, monkeypatch,
                                                     plain_run):
    import clipadapt.engine.trainer as trainer_module

    plain = plain_run(name)
    assert plain["epochs"] == [] and plain["checkpoints"] == []  # no epoch loop: no epoch ends, nothing to checkpoint
    straight = plain["output"]
    epochs, checkpoints = [], []
    real_save = trainer_module.save_checkpoint
    monkeypatch.setattr(trainer_module, "save_checkpoint",
                        lambda *args, **kwargs: checkpoints.append(args) or real_save(*args, **kwargs))
    callbacks = {"epoch_end": [epoch_recorder(epochs)]}  # no interrupt: outside pytest.raises it would end the session

    cls = METHODS.get(name).method_class
    real_fit = cls.fit

    def fit_then_stop(method, trainer):
        real_fit(method, trainer)
        raise KeyboardInterrupt  # after fitting, before the test split is read and the results are written

    monkeypatch.setattr(cls, "fit", fit_then_stop)
    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_training(experiment(name, tiny_clip_dir, colour_folder, interrupted), callbacks)
    assert (interrupted / "config.yaml").is_file() and not (interrupted / "metrics.json").exists()
    monkeypatch.setattr(cls, "fit", real_fit)
    resumed = run_training(experiment(name, tiny_clip_dir, colour_folder, interrupted, "run.resume=true"), callbacks)
    assert epochs == [] and checkpoints == []
    assert_same_run(resumed, straight)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_test_split_is_read_only_after_training(name, plain_run):
    events = plain_run(name)["events"]
    assert "test image" in events
    assert events.index("test image") > events.index("fit done")


def test_lp_ft_starts_from_the_probe(tiny_clip_dir, dataset):
    from clipadapt.engine.trainer import TrainConfig, Trainer, make_accelerator
    from clipadapt.methods.linear_probe import sweep_logistic_regression

    method = make_method("full-ft", tiny_clip_dir, dataset, ["full_ft.lp_ft=true"], prepare=False)
    data = TrainingData(dataset, method.bundle, eval_batch_size=64, num_workers=0)
    trainer = Trainer(TrainConfig(), data, make_accelerator(torch.device("cpu"), "fp32"))
    method.prepare(trainer)
    train, val = data.features("train"), data.features("val")
    probe = sweep_logistic_regression(train.features.numpy(), train.labels, val.features.numpy(), val.labels,
                                      dataset.num_classes)
    linear = method.head.linear
    torch.testing.assert_close(linear.weight * method.head.scale, torch.from_numpy(probe.weight))
    torch.testing.assert_close(linear.bias, torch.from_numpy(probe.bias))
    with torch.no_grad():  # so the head starts where the probe ends: the same predictions on val
        predictions = method.head(val.features).argmax(-1).numpy()
    expected = (val.features.numpy() @ probe.weight.T + probe.bias).argmax(-1)
    assert (predictions == expected).all()
    assert method.num_parameters()["trainable"] > 80_000  # and then everything trains


def test_linear_probe_sweep_picks_c_on_validation():
    from clipadapt.methods.linear_probe import LinearProbeConfig, sweep_logistic_regression

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8))
    labels = rng.integers(0, 3, 300)
    features = centres[labels] + rng.normal(scale=1.5, size=(300, 8))
    fit = sweep_logistic_regression(features[:200], labels[:200], features[200:], labels[200:], 4,
                                    LinearProbeConfig())
    best = max(fit.sweep, key=lambda r: (r["val_acc"], -r["val_loss"]))
    assert fit.c == best["C"]
    assert len(fit.sweep) >= 7 + 2  # the coarse grid plus refinements
    exponents = sorted(np.log10([r["C"] for r in fit.sweep]))
    assert min(np.diff(exponents)) == pytest.approx(1 / 8)  # refined to 8 steps per decade
    assert fit.bias[3] < -1e3  # a class without training images can never win


@pytest.mark.parametrize("towers", ["both", "text"])
def test_lora_on_the_text_tower_trains_through_the_prompts(towers, tiny_clip_dir, dataset):
    method = make_method("lora", tiny_clip_dir, dataset, [f"lora.towers={towers}", "lora.head=text"])
    names = list(method.trainable_parameters())
    assert any("text_model" in n for n in names)
    assert any("vision_model" in n for n in names) == (towers == "both")
    per_tower = 2 * 2 * (2 * 8 * 64)  # 2 layers x (q, v) x (A + B at r=8, width 64); no head weights
    assert method.num_parameters()["trainable"] == per_tower * (2 if towers == "both" else 1)
    method.train()
    method(first_batch(method, dataset))["loss"].backward()
    text_b = [p for n, p in method.named_parameters() if "text_model" in n and "lora_B" in n]
    assert text_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in text_b)


def test_text_lora_needs_the_text_head(tiny_clip_dir, dataset):
    from clipadapt.errors import ConfigError

    for towers in ("text", "both"):
        with pytest.raises(ConfigError, match=f"lora.towers={towers} adapts the text tower.*lora.head=text"):
            make_method("lora", tiny_clip_dir, dataset, [f"lora.towers={towers}"])
    with pytest.raises(ConfigError, match="unknown lora.towers 'all'; valid choices: vision, text, both"):
        make_method("lora", tiny_clip_dir, dataset, ["lora.towers=all", "lora.head=text"])


def test_lora_text_from_older_runs_reads_as_both_towers(tiny_clip_dir, dataset):
    method = make_method("lora", tiny_clip_dir, dataset, ["lora.text=true", "lora.head=text"])
    assert method.config.towers == "both" and method.config.text is False


@pytest.mark.parametrize("accumulate", [1, 2, 3])
def test_schedule_ends_at_zero_with_gradient_accumulation(accumulate, tiny_clip_dir, colour_folder, tmp_path):
    output = run_training(experiment("linear-head", tiny_clip_dir, colour_folder, tmp_path / "run",
                                     f"train.grad_accum={accumulate}", "train.warmup=0.2"))
    history = (output.run_dir / "history.csv").read_text().splitlines()
    lrs = [float(line.split(",")[5]) for line in history[1:]]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # exactly the planned number of optimizer steps
    assert all(lr > 0 for lr in lrs[:-1])


def test_mixed_precision_choice():
    from clipadapt.engine.trainer import mixed_precision

    assert mixed_precision("auto", torch.device("cpu")) == "no"
    assert mixed_precision("fp32", torch.device("cpu")) == "no"
    assert mixed_precision("bf16", torch.device("cpu")) == "bf16"


@pytest.mark.parametrize("name", ["lora", "full-ft"])
def test_activation_checkpointing_gives_the_same_gradients(name, tiny_clip_dir, dataset):
    grads, saved = [], []
    for checkpointing in (False, True):
        method = make_method(name, tiny_clip_dir, dataset, ["lora.dropout=0.0"] if name == "lora" else [])
        if checkpointing:
            method.enable_activation_checkpointing()
        method.train()
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, s=sizes: s.append(t.numel()) or t, lambda t: t):
            loss = method(first_batch(method, dataset))["loss"]
        loss.backward()
        saved.append(sum(sizes))
        grads.append({n: p.grad.clone() for n, p in method.trainable_parameters().items()})
    assert saved[1] < 0.5 * saved[0]  # the layers keep only their inputs
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-4, atol=1e-6)
