"""What each method's full run costs, predicted from its recipe and a few measured steps (``clipadapt advise``).

**Work** (``recipe_work``): from the method's default experiment (``load_experiment``: its ``train_defaults``, its
section's defaults, ``settings`` over them), with no model: the images it encodes once (``views`` augmented views
per training image for feature methods that use them, ``Method.views`` unless ``features.views`` says otherwise, else
the clean training images, plus val and test), its optimizer steps and the images each forwards and backwards, and its
validation passes. Steps follow the engine's schedule (``Trainer.schedule``): ``train.steps``, else the method's own
budget (``train_steps``: clip-lora's 500 x K; 2sfs's ``total_steps``), else ``ceil(images / batch)`` steps per epoch
times its epochs (``train_epochs``: coop's epochs by shots, else ``train.epochs``), the method's own functions called
on a stand-in for the trainer that carries only the shots and the dataset's name. Validation passes are the epochs
``validates`` scores (every epoch under ``train.keep=best``; about ten under ``keep=last``). Full-batch methods (lp++,
prolip) take ``iterations`` steps on all training images per run (prolip-val: a run per cell of its grid and one
more). Closed-form methods (linear-probe, gda, tip-adapter) and zero-shot take no optimizer step. Early stopping
(``train.patience`` under ``keep=best``) can end a run sooner: the prediction is its longest.

**Seconds** (``predict_seconds``): encoding (images encoded x seconds per image, decoding included: the pilot's
measurement) + steps x the probe's step seconds + evaluation (pixel methods run the image tower on val at every
validation pass and on test, at the encoding's seconds per image; feature methods score cached features, at a third of
a training step per evaluation batch: a forward is about a third of a forward and backward, Kaplan et al. 2020,
arXiv:2001.08361 section 2.1, 2N of 6N FLOPs per token) + a closed-form method's fit seconds where given (the
pilot's folds', scaled linearly to the training images) + loading: a pixel method decodes and preprocesses every image
it trains on (the encoding's seconds per image less the image tower's forward on ready pixels, both measured), added
to the probe's step on CPU and hidden behind it on a GPU (the loader's workers run beside the step), and every pass
through the image loader (each encoded split; each epoch and validation of a pixel method) costs its start, which the
pilot measures (0.06-0.15 s on world:tiny here: worker processes starting) + the setup every run repeats where given
(the pilot's: drawing the data, loading the model, building the zero-shot head). Not counted: starting Python and
importing (about 5 s here for the CLI), writing the run's figures.

**Probe** (``probe_costs``): ``experiments.bench.measure_training_step`` in a process of its own per method
(``measure_in_child``: CPU peak RSS is a process's own), a warm-up step then ``steps`` timed steps at the recipe's
batch capped at ``max_batch`` (step seconds scaled linearly back to the recipe's batch), with the dataset's number of
classes (the text tower of prompt and text-LoRA methods runs over every class at every step). Memory: the probe's
peak (CUDA peak allocated on a GPU, the process's peak RSS on CPU), at the probed batch.

**Reference** (``reference_cost``): the same prediction from a shipped profile (``reference_profile.json``, written by
``benchmarks/advise_profile.py`` on a random ViT-B/32-sized CLIP; its machine and date inside), for the
leave-one-dataset-out validation's budgets, where no device is at hand: each method's step measured at 10 and 100
classes (``profile_step_seconds``: linear in the classes, the rest linear in the batch), a closed-form fit per
training image per class, and the profile's encoding, loading and loader-start seconds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from types import SimpleNamespace

from clipadapt.engine.views import VIEWS_PER_PASS
from clipadapt.errors import ClipAdaptError

ZERO_SHOT = "zeroshot"  # not a training method: `clipadapt zeroshot`
CLOSED_FORM = {"linear-probe", "gda", "tip-adapter"}  # fitted in closed form or by a search on cached features
FULL_BATCH = {"lp++", "prolip", "prolip-val"}  # full-batch iterations on every training image (methods/full_batch.py)
FORWARD_SHARE = 1 / 3  # an evaluation forward against a training step (module docstring)
REFERENCE_PROFILE = "reference_profile.json"
DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MEMORY_UNITS = {"kb": 1 / 1024, "mb": 1.0, "gb": 1024.0, "tb": 1024.0**2}  # MB are MiB, as peak_memory_mb's
DURATION_FORMS = "a number and a unit (s, m, h, d), e.g. 90s, 10m, 1.5h, 1h30m"
MEMORY_FORMS = "a number and a unit (KB, MB, GB, TB; binary: 1GB = 1024MB), e.g. 512MB, 8GB, 1.5GB"


def parse_duration(text: str | float) -> float:
    """Seconds of a time budget such as ``90s``, ``10m``, ``1.5h`` or ``1h30m``; one-line error otherwise."""
    value = str(text).strip().lower().replace(" ", "")
    if not re.fullmatch(r"(\d+(\.\d+)?[smhd])+", value):
        raise ClipAdaptError(f"unreadable time budget '{text}'; valid forms: {DURATION_FORMS}")
    seconds = sum(float(number) * DURATION_UNITS[unit] for number, _, unit in
                  re.findall(r"(\d+(\.\d+)?)([smhd])", value))
    if seconds <= 0:
        raise ClipAdaptError(f"time budget '{text}' is not positive; valid forms: {DURATION_FORMS}")
    return seconds


def parse_memory(text: str | float) -> float:
    """MB (MiB) of a memory budget such as ``512MB`` or ``8GB`` (also ``8G``, ``8GiB``); one-line error otherwise."""
    value = str(text).strip().lower().replace(" ", "")
    match = re.fullmatch(r"(\d+(\.\d+)?)([kmgt])(i?b)?", value)
    if not match:
        raise ClipAdaptError(f"unreadable memory budget '{text}'; valid forms: {MEMORY_FORMS}")
    megabytes = float(match.group(1)) * MEMORY_UNITS[match.group(3) + "b"]
    if megabytes <= 0:
        raise ClipAdaptError(f"memory budget '{text}' is not positive; valid forms: {MEMORY_FORMS}")
    return megabytes


@dataclass
class MethodCost:
    method: str
    seconds: float  # predicted full run: encode + train + evaluate (+ fit)
    memory_mb: float  # the probe's peak
    step_seconds: float | None  # one optimizer step at the recipe's batch (None: no step)
    batch: int  # the recipe's batch (full batch: the training images)
    work: dict  # recipe_work's
    measured: bool  # step and memory measured on this device (False: from the reference profile)
    device: str
    parts: dict = field(default_factory=dict)  # predict_seconds: encode, train, evaluate, fit, loader, setup, total
    probe_batch: int | None = None  # the batch the step was measured at


def _stand_in_trainer(shots: int, dataset: str, train) -> SimpleNamespace:
    """What the methods' own budget functions read of a trainer: the shots and the dataset's name."""
    return SimpleNamespace(config=train, data=SimpleNamespace(dataset=SimpleNamespace(info={"shots": shots},
                                                                                      name=dataset)))


def recipe_work(method: str, n_train: int, n_classes: int, settings: Sequence[str] = (), *,
                n_val: int | None = None, n_test: int = 0, dataset: str = "") -> dict:
    """The work of ``method``'s default recipe on ``n_train`` training images of ``n_classes`` classes (module
    docstring). ``n_val``: validation images (default: CoOp's sampler's, ``Method.validation_shots(K)`` per class)."""
    from clipadapt.classification.experiment import effective_views, load_experiment
    from clipadapt.engine.trainer import validates
    from clipadapt.methods import METHODS

    if n_train <= 0 or n_classes <= 0:
        raise ClipAdaptError(f"recipe work needs training images and classes, got {n_train} and {n_classes}")
    shots = max(1, round(n_train / n_classes))
    if method == ZERO_SHOT:
        return {"method": method, "kind": "zero-shot", "inputs": "features", "shots": shots, "n_train": n_train,
                "n_val": 0, "n_test": n_test, "views": 0, "batch": 0, "epochs": 0, "steps_per_epoch": 0,
                "steps": 0, "validations": 0, "encoded": n_test, "forwarded": 0, "evaluated": n_test,
                "loader_passes": int(n_test > 0)}
    entry = METHODS.get(method)
    cls = entry.method_class
    experiment = load_experiment(method, None, list(settings))
    train, config = experiment.train, experiment.method_config()
    n_val = cls.validation_shots(shots) * n_classes if n_val is None else n_val
    image_features = getattr(config, "image_features", None)
    inputs = cls.inputs if image_features is None else ("features" if image_features == "cached" else "pixels")
    views = effective_views(experiment, SimpleNamespace(inputs=inputs, view_use=cls.view_use, views=cls.views))
    me, trainer = SimpleNamespace(config=config, name=method), _stand_in_trainer(shots, dataset, train)
    work = {"method": method, "inputs": inputs, "shots": shots, "n_train": n_train, "n_val": n_val,
            "n_test": n_test, "views": views}
    encoded = (views or 1) * n_train + n_val + n_test if inputs == "features" else 0
    # passes over a split through the image loader: encoding (views: VIEWS_PER_PASS per decoding), or for pixel
    # methods every epoch, every validation and the test
    encode_passes = (math.ceil(views / VIEWS_PER_PASS) if views else 1) + int(n_val > 0) + int(n_test > 0)
    work["loader_passes"] = encode_passes if inputs == "features" else 0
    if method in CLOSED_FORM:
        return {**work, "kind": "closed-form", "batch": 0, "epochs": 0, "steps_per_epoch": 0, "steps": 0,
                "validations": 1 if n_val else 0, "encoded": encoded, "forwarded": 0, "evaluated": n_val + n_test}
    if method in FULL_BATCH:
        runs = len(config.lrs) * len(config.lams) + 1 if getattr(cls, "search", False) else 1
        steps = config.iterations * runs
        return {**work, "kind": "full-batch", "batch": n_train, "epochs": steps, "steps_per_epoch": 1,
                "steps": steps, "runs": runs, "validations": 0, "encoded": encoded,
                "forwarded": steps * n_train, "evaluated": n_test}
    steps_per_epoch = math.ceil(math.ceil(n_train / train.batch_size) / train.grad_accum)
    total_steps = getattr(cls, "total_steps", None)  # 2sfs: both stages' budget
    budget = train.steps or (total_steps(me, trainer) if total_steps else cls.train_steps(me, trainer))
    steps = budget or steps_per_epoch * (cls.train_epochs(me, trainer) or train.epochs)
    epochs = math.ceil(steps / steps_per_epoch)
    stages = 2 if total_steps else 1  # 2sfs fits twice, each stage validating its own epochs
    validations = sum(validates(train.keep, e, 0, math.ceil(epochs / stages)) for e in
                      range(math.ceil(epochs / stages))) * stages if n_val else 0
    if inputs == "pixels":
        work["loader_passes"] = epochs + validations + int(n_test > 0)
    return {**work, "kind": "engine", "batch": train.batch_size * train.grad_accum, "epochs": epochs,
            "steps_per_epoch": steps_per_epoch, "steps": steps, "validations": validations, "encoded": encoded,
            "forwarded": steps * train.batch_size * train.grad_accum,
            "evaluated": validations * n_val + n_test, "eval_batch": train.eval_batch_size}


def predict_seconds(work: Mapping, step_seconds: float | None, per_image_encode_seconds: float,
                    fit_seconds: float = 0.0, *, per_image_load_seconds: float = 0.0,
                    loader_start_seconds: float = 0.0, overlapped: bool = False, setup_seconds: float = 0.0) -> dict:
    """``{"encode", "train", "evaluate", "fit", "loader", "setup", "total"}`` seconds of a run doing ``work`` (module
    docstring). ``per_image_load_seconds``: decoding and preprocessing an image, which a pixel method's training
    pays for every image it forwards, on top of the probe's step on ready pixels (``overlapped``: the loader's
    workers hide it behind an accelerator's step, up to the step's own time); ``loader_start_seconds``: each pass
    through the image loader; ``setup_seconds``: what every run does before its work (data, model)."""
    steps = work["steps"] * (step_seconds or 0.0)
    if work["inputs"] == "pixels" and work["steps"]:
        loading = work["forwarded"] * per_image_load_seconds
        steps = max(steps, loading) if overlapped else steps + loading
    encode = work["encoded"] * per_image_encode_seconds
    if work["inputs"] == "pixels":  # the image tower at every validation pass and on test
        evaluate = work["evaluated"] * per_image_encode_seconds
    elif work.get("kind") == "engine" and step_seconds:  # cached features through the method's forward
        batches = math.ceil(work["validations"] * work["n_val"] / work["eval_batch"]) + \
            math.ceil(work["n_test"] / work["eval_batch"])
        evaluate = batches * step_seconds * FORWARD_SHARE
    else:  # a matrix product on cached features
        evaluate = 0.0
    parts = {"encode": encode, "train": steps, "evaluate": evaluate, "fit": fit_seconds,
             "loader": work.get("loader_passes", 0) * loader_start_seconds, "setup": setup_seconds}
    return {**{k: round(v, 3) for k, v in parts.items()}, "total": round(sum(parts.values()), 3)}


def measure_encoding(model: str, device: str = "auto", batch: int = 32) -> dict:
    """The image tower's inference on random pixels (no decoding) in a child process: its seconds per image (the
    encoding estimate where the pilot's is not at hand) and peak memory (zero-shot's)."""
    from clipadapt.experiments.bench import measure_in_child

    return measure_in_child("inference", model=model, batch=batch, dtype="fp32", mode="inference_mode",
                            iterations=3, device=device)


def pilot_fit_seconds(pilot, n_train: int) -> dict[str, float]:
    """Each pilot method's fit seconds scaled from its folds' fit images to ``n_train`` (linear in the images)."""
    return {name: score.fit_seconds * n_train / score.fit_images for name, score in pilot.scores.items()
            if score.fit_images > 0}


def probe_costs(model: str, methods: Sequence[str], n_train: int, n_classes: int, device: str = "auto",
                steps: int = 3, per_image_encode_seconds: float | None = None,
                on_progress: Callable[[str], None] | None = None, *, pilot=None, n_val: int | None = None,
                n_test: int = 0, dataset: str = "", settings: Sequence[str] = (),
                fit_seconds: Mapping[str, float] | None = None, loader_start_seconds: float | None = None,
                setup_seconds: float | None = None, max_batch: int = 64) -> dict[str, MethodCost]:
    """Each method's predicted full run on this device: its recipe's work, a few measured steps (module docstring).
    ``pilot`` (a ``pilot.Pilot`` of the same data) gives what is not given: the encoding's seconds per image and the
    loader's start, the validation images, the closed-form methods' fit seconds (``pilot_fit_seconds``) and the setup
    every run repeats (``setup_seconds``: drawing the data, loading the model, the zero-shot head)."""
    from clipadapt.experiments.bench import measure_in_child
    from clipadapt.models import resolve_device

    notify = on_progress or (lambda message: None)
    target = resolve_device(device)
    if pilot is not None:
        per_image_encode_seconds = per_image_encode_seconds or pilot.per_image_encode_seconds
        loader_start_seconds = pilot.loader_start_seconds if loader_start_seconds is None else loader_start_seconds
        n_val = pilot.val_images if n_val is None else n_val
        fit_seconds = pilot_fit_seconds(pilot, n_train) if fit_seconds is None else fit_seconds
        dataset = dataset or pilot.dataset
        setup_seconds = pilot.setup_seconds if setup_seconds is None else setup_seconds
    notify("measuring the image tower")
    inference = measure_encoding(model, device)  # its forward alone (random pixels), and zero-shot's memory
    forward = 1.0 / inference["images_per_s"]
    per_image_encode_seconds = per_image_encode_seconds or forward
    timing = {"per_image_load_seconds": max(0.0, per_image_encode_seconds - forward),
              "loader_start_seconds": loader_start_seconds or 0.0, "overlapped": target.type == "cuda",
              "setup_seconds": setup_seconds or 0.0}
    costs = {}
    for method in methods:
        work = recipe_work(method, n_train, n_classes, settings, n_val=n_val, n_test=n_test, dataset=dataset)
        step_seconds, memory, probe_batch = None, inference["peak_mem_mb"], None
        if method != ZERO_SHOT:
            notify(f"probing {method}")
            batch = work["batch"] or 32  # closed-form: its forward, for the memory it holds
            probe_batch = min(batch, max_batch)
            row = measure_in_child("training", model=model, method_name=method, batch=probe_batch, steps=steps,
                                   device=device, settings=list(settings), classes=n_classes)
            memory = row["peak_mem_mb"]
            if work["steps"]:
                step_seconds = probe_batch / row["train_images_per_s"] * batch / probe_batch
        parts = predict_seconds(work, step_seconds, per_image_encode_seconds, (fit_seconds or {}).get(method, 0.0),
                                **timing)
        costs[method] = MethodCost(method, parts["total"], memory, step_seconds, work["batch"], work, True,
                                   str(target), parts, probe_batch)
    return costs


@lru_cache(maxsize=1)
def reference_profile() -> dict:
    """The shipped profile (``benchmarks/advise_profile.py`` writes it)."""
    text = resources.files("clipadapt.experiments.advise").joinpath(REFERENCE_PROFILE).read_text()
    return json.loads(text)


def profile_step_seconds(entry: Mapping, n_classes: int, batch: int | None = None) -> float:
    """A profiled method's step seconds at ``n_classes`` and ``batch``: a part linear in the classes (the text
    tower over every class's prompt), the slope through its two measurements at the same batch (never negative: a
    falling pair is noise, and their mean is the step), and the rest, scaled linearly from the probed batch to
    ``batch`` (at least half the smaller measurement)."""
    (c0, c1), (s0, s1) = entry["classes"], entry["step_seconds"]
    slope = max(0.0, (s1 - s0) / (c1 - c0))
    rest = max(s0 - slope * c0, 0.5 * min(s0, s1)) if slope > 0 else (s0 + s1) / 2
    return rest * (batch or entry["batch"]) / entry["batch"] + slope * n_classes


def reference_cost(method: str, n_train: int, n_classes: int, *, n_val: int | None = None,
                   n_test: int = 0) -> float:
    """Predicted seconds of ``method``'s full run on the reference profile's machine and model (module docstring)."""
    profile = reference_profile()
    work = recipe_work(method, n_train, n_classes, n_val=n_val, n_test=n_test)
    entry = profile["methods"].get(method)
    if entry is None and method != ZERO_SHOT:
        raise ClipAdaptError(f"method '{method}' is not in the reference profile; valid choices: "
                             f"{', '.join([ZERO_SHOT, *sorted(profile['methods'])])}")
    step = None
    fit = 0.0
    if entry is not None and work["steps"]:
        step = profile_step_seconds(entry, n_classes, work["batch"])
    if entry is not None and "fit_seconds_per_sample_class" in entry:  # closed form: linear in images x classes
        fit = entry["fit_seconds_per_sample_class"] * n_train * n_classes
    return predict_seconds(work, step, profile["per_image_encode_seconds"], fit,
                           per_image_load_seconds=profile.get("per_image_load_seconds", 0.0),
                           loader_start_seconds=profile.get("loader_start_seconds", 0.0))["total"]
