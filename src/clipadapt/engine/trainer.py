"""The one training engine: every gradient-trained method goes through ``Trainer.fit`` unchanged.

AdamW (or SGD, where a method's recipe asks for it) with a schedule (engine/schedules.py), gradient clipping and
accumulation, Accelerate for device placement, mixed precision and multi-process runs; validation every epoch,
early stopping, the best-on-validation weights kept; a checkpoint after every epoch from which ``resume``
continues bit-for-bit on CPU. The test split is not touched here: the caller evaluates it once, at the end, with
the chosen weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clipadapt.config import option, require_positive
from clipadapt.engine.accelerator import make_accelerator, mixed_precision  # noqa: F401  (the engine's public names)
from clipadapt.engine.checkpoint import (
    TrainingState,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from clipadapt.engine.features import EncodedSplit
from clipadapt.engine.inputs import AUGMENTATIONS, TrainingData
from clipadapt.engine.metrics import classification_metrics
from clipadapt.engine.schedules import build_scheduler, check_schedule
from clipadapt.engine.selection import Choice, Selections, describe_validation
from clipadapt.engine.tracking import Tracking, check_tracker
from clipadapt.engine.trainable import build_optimizer
from clipadapt.engine.views import check_crop_scale
from clipadapt.errors import ConfigError
from clipadapt.progress import training_progress

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
KEEPS = ("best", "last")
DATASET_PROMPT = "coop"  # train.head_templates: the dataset's own prompt (ClassificationDataset.coop_template_set)


@dataclass
class TrainConfig:
    epochs: int = option(10, help="maximum number of epochs")
    steps: int | None = option(None, help="an iteration budget: optimizer steps in all, instead of train.epochs "
                                          "(the last epoch stops part-way); default: epochs, or the method's own "
                                          "budget (clip-lora: 500 x shots)")
    batch_size: int = option(32, help="training images per step and process (before accumulation)")
    grad_accum: int = option(1, help="batches accumulated per optimizer step")
    schedule: str = option("cosine", help="cosine (linear warmup over train.warmup, cosine per step to min_lr) or "
                                          "dassl (warmup_epochs at warmup_lr, then a cosine stepped per epoch)")
    warmup: float = option(0.1, help="share of the steps with linear warmup before the cosine decay")
    min_lr: float = option(0.0, help="the learning rate the cosine decays to (absolute, every parameter group)")
    warmup_epochs: int = option(1, help="dassl schedule: epochs at the constant warmup_lr before the cosine")
    warmup_lr: float = option(1e-5, help="dassl schedule: the constant learning rate of the warmup epochs")
    grad_clip: float = option(1.0, help="clip the gradient norm to this (0: off)")
    patience: int = option(3, help="stop after this many epochs without a better validation score (0: never)")
    head_templates: str | None = option(None, help="template set (name, file, one template with {}, or coop: the "
                                                   "dataset's CoOp prompt) that zero-shot-initialised heads and "
                                                   "frozen text classifiers are built from (default: the dataset's "
                                                   "recommended sets)")
    keep: str = option("best", help="the weights kept: best (the epoch with the best validation score; early "
                                    "stopping with patience) or last (nothing chosen on validation: val-free)")
    augment: str = option("none", help="training augmentation of images: none, flip or crop-flip")
    crop_scale: list[float] = option([0.5, 1.0], help="min,max area share of the random resized crop (crop-flip and "
                                                      "the feature views of features.views)")
    precision: str = option("auto", help="auto (bf16 autocast on GPUs that support it, else fp32), fp32, bf16, fp16")
    eval_batch_size: int = option(64, help="images per evaluation batch")
    activation_checkpointing: bool = option(False, help="recompute activations in the backward pass: far less "
                                                        "memory for methods that train through the image tower, "
                                                        "about a third slower")
    log_with: str = option("none", help="experiment tracker through Accelerate: none or tensorboard (loss, "
                                        "accuracy, lr per step and epoch into RUN/logs; pip install "
                                        "'clipadapt[tensorboard]')")

    def __post_init__(self) -> None:
        require_positive(self, ("epochs", "batch_size", "grad_accum", "eval_batch_size"), "train:")
        check_schedule(self)
        if self.grad_clip < 0 or self.patience < 0:
            raise ConfigError("train.grad_clip and train.patience must be >= 0")
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"unknown train.augment '{self.augment}'; valid choices: {', '.join(AUGMENTATIONS)}")
        self.crop_scale = list(check_crop_scale(self.crop_scale))
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown train.precision '{self.precision}'; valid choices: {', '.join(PRECISIONS)}")
        if self.head_templates and self.head_templates != DATASET_PROMPT:
            from clipadapt.data.prompts import resolve_template_set

            resolve_template_set(self.head_templates)  # an unknown name: one line with the valid choices
        if self.keep not in KEEPS:
            raise ConfigError(f"unknown train.keep '{self.keep}'; valid choices: {', '.join(KEEPS)}")
        check_tracker(self.log_with)


def validates(keep: str, epoch: int, first: int, epochs: int) -> bool:
    """Whether an epoch is validated: every one when the best is kept; when the last is kept (val-free), the first,
    the last and about every tenth, for the curve (a 500 x K budget is hundreds of epochs at few shots)."""
    if keep == "best" or epoch in (first, epochs - 1):
        return True
    return (epoch + 1) % max(1, math.ceil(epochs / 10)) == 0


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    train_time_s: float
    train_images: int  # images (or feature vectors) processed in training
    # what describes the fit without being chosen (LP++'s step sizes, ProLIP's fixed lambda); what was chosen, and
    # on what, is in the trainer's ``selections`` (metrics.json's selection is built from both)
    details: dict[str, Any] = field(default_factory=dict)
    resumed_at: list[int] = field(default_factory=list)  # epochs completed when each resume took over

    @property
    def train_images_per_s(self) -> float:
        return self.train_images / self.train_time_s if self.train_time_s > 0 else float("nan")


@dataclass
class Evaluation:
    split: str
    logits: torch.Tensor  # (N, classes) float32, cpu
    labels: np.ndarray
    positions: np.ndarray
    loss: float
    metrics: dict[str, Any]
    seconds: float  # forward time here, plus the original encoding time for cached features

    @property
    def images_per_s(self) -> float:
        return len(self.labels) / self.seconds if self.seconds > 0 else float("nan")


Callback = Callable[["Trainer", dict[str, Any]], None]


@dataclass
class Validation:
    """One epoch's validation: history fields, the score to maximise (compared as a list) and what it was."""

    row: dict[str, float]
    score: list[float]
    selection: dict[str, float]


class ClassificationTask:
    """What the engine measures for classifiers: accuracy while training, (val acc, -val loss) for selection.

    A task tells the engine how to read a training step's output and how to score an epoch on validation; the
    captioning task (captioning/training.py) counts next-token accuracy and selects on loss or CIDEr. The engine
    is the same for both, and never asks which method it runs.
    """

    def step_counts(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, int, int]:
        """``(correct, predictions, items)`` of one training batch (items: images or feature vectors)."""
        labels = batch["labels"]
        return (out["logits"].detach().argmax(-1) == labels).sum(), len(labels), len(labels)

    def validate(self, trainer: Trainer, method) -> Validation:
        val = trainer.evaluate(method, "val")
        return Validation({"val_loss": val.loss, "val_acc": val.metrics["acc1"]}, [val.metrics["acc1"], -val.loss],
                          {"val_acc": val.metrics["acc1"], "val_loss": val.loss})


class Trainer:
    """Fits methods under one protocol; ``callbacks["epoch_end"]`` see every history row (for tests and tools)."""

    def __init__(self, config: TrainConfig, data: TrainingData, accelerator, run_dir: Path | None = None,
                 resume: bool = False, task=None) -> None:
        self.config, self.data, self.accelerator = config, data, accelerator
        self.run_dir, self.resume = run_dir, resume
        self.task = task or ClassificationTask()
        self.callbacks: dict[str, list[Callback]] = {"epoch_end": []}
        self.selections = Selections()  # every choice of the run, made here or by the method's own searches
        self.selections.validation = describe_validation(data.dataset.splits.get("val"))

    @property
    def has_validation(self) -> bool:
        """Whether the run has a validation split (a val-free method on a dataset without one trains on every
        training image and validates nothing)."""
        return "val" in self.data.dataset.splits

    def validation_images(self) -> int:
        return len(self.data.split("val"))

    def choose(self, name: str, candidates, score, value=None, scores=None):
        """``Selections.choose`` on the validation split: the best of ``candidates``, recorded as the run's choice."""
        return self.selections.choose(name, candidates, score, split="val", images=self.validation_images(),
                                      value=value, scores=scores)

    def add_callback(self, event: str, callback: Callback) -> None:
        if event not in self.callbacks:
            raise ValueError(f"unknown event '{event}'; valid choices: {', '.join(self.callbacks)}")
        self.callbacks[event].append(callback)

    def features(self, split: str) -> EncodedSplit:
        return self.data.features(split)

    # -- training -----------------------------------------------------------------------------------------
    def build_optimizer(self, method) -> tuple[torch.optim.Optimizer, Any, int]:
        optimizer = build_optimizer(method)
        steps_per_epoch, total = self.schedule(method)
        scheduler = build_scheduler(optimizer, self.config, steps_per_epoch, total)
        return optimizer, scheduler, steps_per_epoch

    def schedule(self, method) -> tuple[int, int]:
        """``(steps per epoch, total steps)``: an iteration budget (train.steps, else the method's own
        ``train_steps``), else the method's own ``train_epochs`` or train.epochs of steps."""
        world = self.accelerator.num_processes
        per_process = math.ceil(self.data.num_items(method.inputs, "train") / world)
        steps_per_epoch = math.ceil(math.ceil(per_process / self.config.batch_size) / self.config.grad_accum)
        budget = self.config.steps or method.train_steps(self)
        return steps_per_epoch, budget or steps_per_epoch * (method.train_epochs(self) or self.config.epochs)

    def fit(self, method) -> FitResult:
        acc, cfg = self.accelerator, self.config
        method.to(acc.device)
        if cfg.activation_checkpointing:
            method.enable_activation_checkpointing()
        method.prepare(self)
        optimizer, scheduler, steps_per_epoch = self.build_optimizer(method)
        total_steps = self.schedule(method)[1]
        epochs = math.ceil(total_steps / steps_per_epoch)
        model, optimizer = acc.prepare(method, optimizer)
        trainable = list(method.trainable_parameters().values())

        progress = {"history": [], "best_score": None, "best_epoch": -1, "best_selection": {}, "stale": 0,
                    "train_time_s": 0.0, "train_images": 0}
        best_weights = method.trainable_state()
        start_epoch = 0
        checkpoint = latest_checkpoint(self.run_dir) if (self.resume and self.run_dir) else None
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, method.metadata())
            method.load_trainable_state(state.weights, source=str(checkpoint))
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            set_rng_state(state.rng)
            best_weights, progress, start_epoch = state.best_weights, state.progress, state.epoch
            progress["resumed_at"] = [*progress.get("resumed_at", []), start_epoch]

        val_keys: list[str] = []
        with (training_progress(epochs, steps_per_epoch, acc.is_main_process, total_steps) as bar,
              Tracking(acc) as tracking):
            bar.start(start_epoch)
            for epoch in range(start_epoch, epochs):
                if progress["stale"] >= cfg.patience > 0 and cfg.keep == "best":
                    break
                started = time.perf_counter()
                train_loss, train_acc, seen = self._train_epoch(model, method, optimizer, scheduler, trainable,
                                                                epoch, bar, tracking, epoch * steps_per_epoch,
                                                                total_steps)
                train_seconds = time.perf_counter() - started
                if self.has_validation and validates(cfg.keep, epoch, start_epoch, epochs):
                    val = self.task.validate(self, method)
                    val_keys = list(val.row)
                    val_row = val.row
                else:  # val-free: validation only draws the curve, at ten points or so, not every epoch
                    val_row = {key: float("nan") for key in val_keys}
                row = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, **val_row,
                       "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - started, 3)}
                progress["history"].append(row)
                progress["train_time_s"] += train_seconds
                progress["train_images"] += seen
                if cfg.keep == "last":  # val-free: the last epoch's weights, whatever validation says
                    progress.update(best_epoch=epoch + 1, best_selection={})
                    best_weights = method.trainable_state()
                elif progress["best_score"] is None or val.score > progress["best_score"]:
                    progress.update(best_score=val.score, best_epoch=epoch + 1, best_selection=val.selection, stale=0)
                    best_weights = method.trainable_state()
                else:
                    progress["stale"] += 1
                bar.end_epoch(epoch, row)
                tracking.epoch((epoch + 1) * steps_per_epoch, row)
                self._checkpoint(method, optimizer, scheduler, best_weights, progress, epoch + 1)
                for callback in self.callbacks["epoch_end"]:
                    callback(self, row)

        method.load_trainable_state(best_weights, source="best weights")
        if cfg.keep == "best":  # the epochs scored on validation were the candidates (early stopping included)
            scored = [row for row in progress["history"] if not math.isnan(row.get("val_loss", math.nan))]
            self.record_kept_epoch(progress["best_epoch"], len(scored), progress.get("best_selection", {}))
        # the kept weights' validation scores (a sweep compares its cells by them), also where a single scored epoch
        # left nothing to choose
        kept_scores = dict(progress.get("best_selection", {})) if cfg.keep == "best" else {}
        return FitResult(history=progress["history"], best_epoch=progress["best_epoch"],
                         train_time_s=progress["train_time_s"], train_images=progress["train_images"],
                         details=kept_scores, resumed_at=list(progress.get("resumed_at", [])))

    def record_kept_epoch(self, epoch: int, candidates: int, scores: dict[str, float]) -> None:
        """The epoch (or full-batch iteration) kept as the best on validation, among ``candidates`` scored there: the
        run's choice when there were two or more. The engine's loop and full-batch training both keep theirs
        incrementally (the weights are snapshotted as they go), so they record the outcome here."""
        if candidates > 1:
            self.selections.add(Choice("epoch", epoch, "val", self.validation_images(), candidates, dict(scores)))

    def _train_epoch(self, model, method, optimizer, scheduler, trainable, epoch: int, bar, tracking: Tracking,
                     step: int, total_steps: int) -> tuple[float, float, int]:
        acc, cfg = self.accelerator, self.config
        model.train()
        totals = torch.zeros(4, device=acc.device)  # loss sum, correct, predictions, items: no sync per step
        batches = self.data.batches(method.inputs, "train", epoch, train=True, rank=acc.process_index,
                                    world_size=acc.num_processes)
        for group in _grouped(batches, cfg.grad_accum):
            if step >= total_steps:  # an iteration budget ends part-way through its last epoch
                break
            before = totals.clone() if tracking.enabled else None
            for i, batch in enumerate(group):
                sync = acc.no_sync(model) if i < len(group) - 1 else nullcontext()
                with sync:
                    out = model({"inputs": batch["inputs"], "labels": batch["labels"]})
                    acc.backward(out["loss"] / len(group))
                correct, predictions, items = self.task.step_counts(out, batch)
                totals[0] += out["loss"].detach().float() * items
                totals[1] += correct
                totals[2] += predictions
                totals[3] += items
            if cfg.grad_clip > 0:
                acc.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if before is not None:  # this step's own loss and accuracy (a device sync, only when tracking)
                loss_sum, correct, predictions, items = (totals - before).tolist()
                tracking.step(step, loss_sum / max(items, 1), correct / max(predictions, 1), optimizer)
            bar.advance()
            if bar.wants_metrics:  # reading the running loss waits for the device; only when someone will see it
                loss_sum, correct, predictions, items = totals.tolist()
                bar.step(loss_sum / max(items, 1), correct / max(predictions, 1))
        totals = acc.reduce(totals, reduction="sum").cpu()
        loss_sum, correct, predictions, items = totals.tolist()
        return loss_sum / max(items, 1), correct / max(predictions, 1), int(items)

    def _checkpoint(self, method, optimizer, scheduler, best_weights, progress, epoch: int) -> None:
        if self.run_dir is None:
            return
        if self.accelerator.is_main_process:
            save_checkpoint(self.run_dir, TrainingState(
                epoch=epoch, weights=method.trainable_state(), best_weights=best_weights,
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng_state(),
                progress=progress, metadata=method.metadata()))
        self.accelerator.wait_for_everyone()

    # -- evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, method, split: str) -> Evaluation:
        """Logits, loss and metrics of ``method`` on a split (shared across processes, then gathered)."""
        acc = self.accelerator
        logits, labels, positions = [], [], []
        start = time.perf_counter()
        with method.evaluating(), acc.autocast():
            for batch in self.data.batches(method.inputs, split, rank=acc.process_index,
                                           world_size=acc.num_processes):
                logits.append(method({"inputs": batch["inputs"]})["logits"].float())
                labels.append(batch["labels"])
                positions.append(batch["positions"].to(acc.device))
        seconds = time.perf_counter() - start
        dim = len(method.classnames)
        logits_t = _gather(acc, torch.cat(logits) if logits else torch.empty(0, dim, device=acc.device))
        labels_t = _gather(acc, torch.cat(labels) if labels else torch.empty(0, dtype=torch.long, device=acc.device))
        positions_t = _gather(acc, torch.cat(positions) if positions else torch.empty(0, dtype=torch.long,
                                                                                      device=acc.device))
        order = positions_t.argsort()
        logits_t, labels_t, positions_t = logits_t[order].cpu(), labels_t[order].cpu(), positions_t[order].cpu()
        loss = float(nn.functional.cross_entropy(logits_t, labels_t)) if len(labels_t) else float("nan")
        if method.inputs == "features":
            seconds += self.data.features(split).encode_time_s
        return Evaluation(split, logits_t, labels_t.numpy(), positions_t.numpy(), loss,
                          classification_metrics(logits_t, labels_t.numpy()), seconds)


def _grouped(batches: Iterator, size: int) -> Iterator[list]:
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _gather(acc, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor of different lengths from every process."""
    if acc.num_processes == 1:
        return tensor
    lengths = acc.gather(torch.tensor([len(tensor)], device=acc.device)).tolist()
    padded = acc.pad_across_processes(tensor, dim=0)
    gathered = acc.gather(padded)
    size = padded.shape[0]
    return torch.cat([gathered[i * size: i * size + n] for i, n in enumerate(lengths)])
