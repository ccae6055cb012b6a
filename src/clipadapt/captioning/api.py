"""The captioning twins of the public API: ``clipadapt.captioning.train``, ``evaluate`` and ``caption``, called by
``clipadapt caption train|eval|predict``. Settings work as in ``clipadapt.train`` (nested dicts or dotted keys,
validated like ``--set``); errors are ``ClipAdaptError`` subclasses."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from clipadapt.config import apply_overrides, as_overrides, format_overrides, given
from clipadapt.engine.rundir import config_to_resume
from clipadapt.engine.runview import RunView


class CaptionRun(RunView):
    """A caption run directory (``.record``, ``.metrics``: CIDEr-D, BLEU-4, ...; ``.history``) that captions images."""

    def caption(self, images: Sequence[str | Path], attention: bool = False, out: str | Path | None = None,
                beams: int | None = None, device: str | None = None, strict: bool = False,
                layer: int | str | None = None) -> list[dict[str, Any]]:
        """Captions of image files (``{"file", "caption"}``, or ``"error"`` for a skipped file)."""
        return caption(self.dir, images, attention=attention, out=out, layer=layer, beams=beams, device=device,
                       strict=strict)


def train(method: str, model: str | None = None, decoder: str | None = None, dataset: str | None = None,
          bridge: str | None = None, seed: int | None = None, out: str | Path | None = None, *,
          epochs: int | None = None, select: str | None = None, resume: bool = False, overwrite: bool = False,
          device: str | None = None, config: str | Path | None = None, overrides: Iterable[str] = (),
          **settings: Any) -> CaptionRun:
    """Train a captioner with a decoder ``method``; chosen on validation, test captioned once and scored
    (``clipadapt caption train``)."""
    from clipadapt.captioning.methods import CAPTION_METHODS
    from clipadapt.captioning.runs import load_caption_experiment, run_caption_training

    CAPTION_METHODS.get(method)
    experiment = load_caption_experiment(method, config_to_resume(out, config, resume),
                                         as_overrides(settings, overrides))
    experiment = apply_overrides(experiment, format_overrides(given({
        "model.spec": model, "model.device": device, "decoder.spec": decoder, "data.dataset": dataset,
        "bridge.kind": bridge, "run.seed": seed, "train.epochs": epochs, "train.select": select,
        "run.out": str(out) if out is not None else None, "run.overwrite": overwrite or None,
        "run.resume": resume or None})))
    output = run_caption_training(experiment)
    return CaptionRun(output.run_dir, main_process=output.main_process)


def evaluate(run: str | Path | RunView, split: str = "test", beams: int | None = None,
             max_new_tokens: int | None = None, device: str | None = None, clipscore_model: str | None = None,
             overrides: Iterable[str] = (), **decode: Any) -> dict[str, Any]:
    """Caption a split again with a run's weights and score it, with its decoding or another (``decode.*``
    overrides or keyword settings such as ``no_repeat_ngram_size=2``); writes ``eval_<split><decoding>.json``, its
    predictions and its best/worst figure (``clipadapt caption eval``). ``clipscore_model``: the CLIP that scores
    CLIPScore (it must load); with the run's own decoding the saved captions are scored again without decoding."""
    from clipadapt.captioning.finished import evaluate_caption_run

    return evaluate_caption_run(run.dir if isinstance(run, RunView) else run, split, beams, max_new_tokens, device,
                                clipscore_model, as_overrides({"decode": decode} if decode else None, overrides))


def caption(run: str | Path | RunView, images: Sequence[str | Path], attention: bool = False,
            out: str | Path | None = None, layer: int | str | None = None, beams: int | None = None,
            device: str | None = None, strict: bool = False) -> list[dict[str, Any]]:
    """Captions of your own images, with per-word attention figures in ``out`` (``clipadapt caption predict``):
    ``layer`` a decoder layer, ``"mean"`` (None: the mean over layers) or ``"all"`` (one row per layer)."""
    from clipadapt.captioning.finished import caption_images

    return caption_images(run.dir if isinstance(run, RunView) else run, list(images), attention, out, layer, beams,
                          device, strict)
