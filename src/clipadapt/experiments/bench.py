"""``clipadapt bench``: inference speed, latency and memory per model, and each method's training step.

A bench model is either CLIP-style (a ``clip`` or ``siglip`` config, a registered name such as ``world:tiny``,
``open_clip:...``: its image tower is timed, ``encode_image``) or a transformers image classifier (a config that
``AutoModelForImageClassification`` takes: ResNet, ViT, ConvNeXt, ..., or a named classifier such as
``world:tiny-resnet``: its whole forward to the logits is timed, loaded as the ``baseline`` method loads it), told
apart by its config before anything runs. Each model is timed in the gradient modes asked for: ``grad_enabled``
(autograd records the forward and keeps its activations, as a training forward does), ``no_grad``
(``torch.no_grad``) and ``inference_mode`` (``torch.inference_mode``, which also skips autograd's version counters
and view tracking); the weights require gradients in every mode, so the mode alone makes the difference.

Every measurement runs in a fresh process: on CPU the peak memory figure is the process's peak RSS, which only a
new process can attribute to one measurement. On a GPU it is CUDA's peak allocated memory. The processes are forked
from a multiprocessing forkserver that has imported torch, transformers and clipadapt once (it never touches the
model or CUDA), so each measurement starts in well under a second instead of paying the ~6 s of imports again;
``python -m clipadapt.experiments.bench JSON`` runs one measurement in the current process. Inference runs on random
pixels of the model's input size. The figures and the report section (accuracy against speed with its Pearson
correlation, parameters against speed) are in ``bench_report``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipadapt.errors import ClipAdaptError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


MODES: dict[str, Callable[[], Any]] = {"grad_enabled": torch.enable_grad, "no_grad": torch.no_grad,
                                      "inference_mode": torch.inference_mode}
KINDS = {"clip": "a CLIP-style model (clip, siglip; its image tower is timed)",
         "classifier": "an image classifier (AutoModelForImageClassification: resnet, vit, convnext, ...; its whole "
                       "forward is timed)"}


def check_modes(modes: list[str]) -> list[str]:
    """``modes`` in order, each once; an unknown one is an error naming the valid ones."""
    for mode in modes:
        if mode not in MODES:
            raise ClipAdaptError(f"unknown bench mode '{mode}'; valid choices: {', '.join(MODES)}")
    if not modes:
        raise ClipAdaptError(f"no bench mode given; valid choices: {', '.join(MODES)}")
    return list(dict.fromkeys(modes))


def _config_model_type(spec: str) -> str | None:
    """The ``model_type`` of a local folder's or hub id's config; None when there is none to read (then loading
    the model says why)."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        try:
            model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            return None
        return str(model_type) if model_type else None
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        return None
    from transformers import AutoConfig

    try:
        return str(AutoConfig.from_pretrained(spec).model_type)
    except Exception:  # noqa: BLE001 - offline, no such repo: loading it reports the reason
        return None


def model_kind_of(spec: str) -> str:
    """``clip`` or ``classifier``: what ``spec`` is, by its name (registered models and classifiers, open_clip) or
    by its config; a config of any other kind (a language model, ...) is an error naming the valid kinds."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    from clipadapt.models import MODELS, SCHEMES
    from clipadapt.models.checkpoints import named_checkpoint
    from clipadapt.models.hf import SUPPORTED_MODEL_TYPES

    if named_checkpoint(spec, "classifier") is not None:
        return "classifier"
    scheme, sep, _ = spec.partition(":")
    if spec in MODELS or (sep and scheme in SCHEMES):
        return "clip"
    model_type = _config_model_type(spec)
    if model_type is None or model_type in SUPPORTED_MODEL_TYPES:
        return "clip"  # nothing readable: load_model gives its own error, as for any model spec
    if model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return "classifier"
    raise ClipAdaptError(f"bench model '{spec}' is a '{model_type}' model; valid kinds: {'; '.join(KINDS.values())}")


def _random_batch(preprocess, batch: int, seed: int = 0) -> torch.Tensor:
    """Random pixels of the size ``preprocess`` produces."""
    size = preprocess.config.crop
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward(model: str, kind: str, target: torch.device, dtype: torch.dtype):
    """``(network, forward, preprocess, params, forward_params)``: what one timed call runs on pixels; ``params``
    counts the whole model, ``forward_params`` what the forward goes through (a CLIP's image tower)."""
    from clipadapt.data.transforms import ClipPreprocess, PreprocessConfig
    from clipadapt.methods.baseline import load_classifier
    from clipadapt.models import load_model

    if kind == "classifier":
        network, processor, _ = load_classifier(model)
        network.to(device=target, dtype=dtype)
        params = sum(p.numel() for p in network.parameters())
        return (network, lambda pixels: network(pixel_values=pixels.to(dtype)).logits,
                ClipPreprocess(PreprocessConfig.from_image_processor(processor)), params, params)
    bundle = load_model(model, device=target)
    bundle.to(dtype=dtype)
    tower = sum(p.numel() for module in bundle.image_tower_modules() for p in module.parameters())
    return bundle.model, bundle.encode_image, bundle.preprocess, bundle.num_parameters(), tower


def measure_inference(model: str, batch: int, dtype: str, mode: str, iterations: int, device: str,
                      model_kind: str = "clip") -> dict:
    """Images/s and per-batch latency of one forward (a CLIP's image tower, a classifier's logits) in ``mode``,
    in one process."""
    from clipadapt.engine.cost import peak_memory_mb, reset_peak_memory
    from clipadapt.models import resolve_device

    target = resolve_device(device)
    network, forward, preprocess, params, forward_params = _forward(model, model_kind, target, DTYPES[dtype])
    network.requires_grad_(True)  # as in training: the mode alone decides what autograd records
    pixels = _random_batch(preprocess, batch).to(target)
    reset_peak_memory(target)
    latencies = []
    with MODES[mode]():
        for i in range(iterations + 2):  # two warm-up batches
            _sync(target)
            start = time.perf_counter()
            output = forward(pixels)  # with gradients: autograd records and keeps activations
            _sync(target)
            if i >= 2:
                latencies.append(time.perf_counter() - start)
            del output
    latencies_ms = np.array(latencies) * 1000
    return {"model": model, "model_kind": model_kind, "mode": mode, "dtype": dtype, "batch": batch,
            "device": str(target),
            "images_per_s": round(batch / float(np.mean(latencies)), 2),
            "latency_ms_p50": round(float(np.percentile(latencies_ms, 50)), 2),
            "latency_ms_p95": round(float(np.percentile(latencies_ms, 95)), 2),
            "peak_mem_mb": round(peak_memory_mb(target), 1), "params": params, "forward_params": forward_params}


def measure_training_step(model: str, method_name: str, batch: int, steps: int, device: str,
                          checkpointing: bool = False, settings: list[str] | None = None,
                          detail: bool = False, classes: int = 10) -> dict:
    """Training images/s and peak memory of one method's step (forward, backward, optimizer) on random data.

    ``classes``: the classifier's classes (methods that run the text tower at every step run it over each class's
    prompt, so their step grows with them; ``clipadapt advise`` probes with the dataset's count).

    ``detail`` adds the activations autograd saves and the tensor memory a GPU would count (weights, gradients,
    AdamW moments and saved activations), measured after the peak was read.
    """
    from clipadapt.classification.experiment import build_method, load_experiment
    from clipadapt.config import override_section
    from clipadapt.data.base import ClassificationDataset, InMemorySource, Split
    from clipadapt.engine.cost import current_rss_mb, peak_memory_mb, reset_peak_memory
    from clipadapt.engine.trainable import build_optimizer
    from clipadapt.methods import METHODS
    from clipadapt.models import load_model, resolve_device

    target = resolve_device(device)
    bundle = load_model(model, device=target)
    names = [f"class {i}" for i in range(classes)]
    empty = Split(InMemorySource([], np.zeros(0, dtype=int), "none"), [], "train")
    dataset = ClassificationDataset("bench", names, {"train": empty}, templates=["simple"])
    entry = METHODS.get(method_name)
    mine = [s for s in settings or [] if override_section(s) == entry.section]
    method = build_method(load_experiment(method_name, None, mine), bundle, dataset)
    method = method.to(target)
    if checkpointing:
        method.enable_activation_checkpointing()
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(len(names)).repeat_interleave(16)  # 16 random "shots" per class (Tip-Adapter's cache)
    method.state_from_features(torch.randn(len(labels), method.feature_dim, generator=generator).to(target),
                               labels.numpy())
    training_free = not method.trainable_parameters()
    optimizer = None if training_free else build_optimizer(method)
    if method.inputs == "features":
        inputs = torch.randn(batch, method.feature_dim, generator=generator)
        inputs = torch.nn.functional.normalize(inputs, dim=-1) if method.feature_kind == "projected" else inputs
    else:
        inputs = _random_batch(method.preprocess, batch)  # the baselines bring their own input size
    data = {"inputs": inputs.to(target),
            "labels": torch.randint(0, len(names), (batch,), generator=generator).to(target)}
    method.train()
    rss_before = current_rss_mb()
    reset_peak_memory(target)

    def step() -> None:
        if optimizer is None:  # training-free: its "step" is the forward pass it costs per image
            with torch.no_grad():
                method(data)
            return
        optimizer.zero_grad(set_to_none=True)
        method(data)["loss"].backward()
        optimizer.step()

    step()  # warm-up: allocates gradients and AdamW state
    _sync(target)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(target)
    seconds = time.perf_counter() - start
    counts = method.num_parameters()
    peak = peak_memory_mb(target)
    row = {"model": model, "method": method_name, "inputs": method.inputs, "device": str(target),
           "checkpointing": checkpointing, "batch": batch, "classes": classes,
           "train_images_per_s": round(batch * steps / seconds, 2),
           "peak_mem_mb": round(peak, 1), "trainable": counts["trainable"], "trainable_pct": counts["trainable_pct"]}
    if target.type == "cpu":
        row |= {"rss_before_step_mb": round(rss_before, 1), "step_mem_mb": round(peak - rss_before, 1)}
    if detail:
        saved = saved_activation_mb(method, data)
        weights = sum(p.numel() * p.element_size() for p in method.parameters())
        if method.inputs == "features":
            weights += sum(p.numel() * p.element_size() for p in bundle.model.parameters())
        row |= {"saved_activations_mb": round(saved, 1),
                "tensor_mem_mb": round((weights + 3 * 4 * counts["trainable"]) / 2**20 + saved, 1)}
    return row


def saved_activation_mb(method, batch: dict) -> float:
    """Bytes autograd keeps for the backward pass of one forward (each storage counted once)."""
    seen, total = set(), [0]

    def pack(tensor):
        key = (tensor.data_ptr(), tensor.numel(), tensor.dtype)
        if key not in seen:
            seen.add(key)
            total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        method(batch)["loss"]
    return total[0] / 2**20


MEASUREMENTS = {"inference": measure_inference, "training": measure_training_step}
PRELOAD = ["clipadapt.experiments.bench", "clipadapt.classification.training"]


def _call_quietly(environment: dict[str, str], function: Callable, args: tuple, kwargs: dict) -> Any:
    """In the child: the caller's environment as it is now (the server's is the one it had when it started),
    library chatter (warnings, logs) sent to /dev/null, then ``function``."""
    os.environ.clear()
    os.environ.update(environment)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    return function(*args, **kwargs)


def run_in_child(function: Callable, *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` in a process of its own, forked from the preloaded forkserver.

    ``function`` must be importable by name (a module-level function); its exception is raised here.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        return pool.submit(_call_quietly, dict(os.environ), function, args, kwargs).result()


def measure_in_child(measurement: str, **kwargs: Any) -> dict:
    """Run one measurement (``inference``, ``training``) in a process of its own and return its row."""
    try:
        return run_in_child(MEASUREMENTS[measurement], **kwargs)
    except BrokenProcessPool as error:  # killed: out of memory, a signal
        raise ClipAdaptError(f"bench {measurement} {kwargs.get('model')} failed: the process died ({error})") from None
    except ClipAdaptError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure inside the measurement, reported in one line
        raise ClipAdaptError(f"bench {measurement} {kwargs.get('model')} failed: {type(error).__name__}: {error}"
                             ) from None


def run_bench(models: list[str], batch: int = 32, dtype: str = "fp32", methods: list[str] | None = None,
              iterations: int = 10, steps: int = 3, device: str = "auto", on_result=None,
              settings: list[str] | None = None, modes: list[str] | None = None) -> dict:
    """Each model's forward in each of ``modes`` (default: all of ``MODES``), then each method's training step on
    each CLIP-style model (an image classifier's training step is the ``baseline`` method's). Every model and
    mode is checked before the first measurement. ``settings``: ``section.key=value`` for the methods' configs
    (e.g. ``baseline.classifier=...``)."""
    if dtype not in DTYPES:
        raise ClipAdaptError(f"unknown dtype '{dtype}'; valid choices: {', '.join(DTYPES)}")
    if batch <= 0 or iterations <= 0 or steps <= 0:
        raise ClipAdaptError("batch, iterations and steps must be positive")
    modes = check_modes(list(MODES) if modes is None else list(modes))
    from clipadapt.methods import METHODS

    for name in methods or []:
        METHODS.get(name)
    kinds = {model: model_kind_of(model) for model in models}
    notify = on_result or (lambda row: None)
    results: dict = {"batch": batch, "dtype": dtype, "modes": modes, "inference": [], "training": []}
    for model in models:
        for mode in modes:
            row = measure_in_child("inference", model=model, batch=batch, dtype=dtype, mode=mode,
                                   iterations=iterations, device=device, model_kind=kinds[model])
            results["inference"].append(row)
            notify(row)
        for method in (methods or []) if kinds[model] == "clip" else []:
            row = measure_in_child("training", model=model, method_name=method, batch=batch, steps=steps,
                                   device=device, settings=list(settings or []))
            results["training"].append(row)
            notify(row)
    return results


def main() -> None:
    request = json.loads(sys.argv[1])
    measurement = request.pop("kind")  # inference or training
    print(json.dumps(MEASUREMENTS[measurement](**request)))


if __name__ == "__main__":
    main()
