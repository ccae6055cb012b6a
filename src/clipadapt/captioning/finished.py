"""Finished caption runs: read one back, caption a split again (another decoding, another CLIPScore scorer, any
split) and caption new images (``clipadapt caption eval`` / ``predict`` as library calls). Training a run is
``captioning/runs.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from clipadapt.captioning.data import load_caption_dataset
from clipadapt.captioning.runs import (
    PREDICTIONS_FILE,
    WEIGHTS_DIR,
    CaptionExperiment,
    build_caption_model,
    caption_data,
    caption_experiment_class,
    draw_attention,
    evaluate_captions,
)
from clipadapt.captioning.scoring import rescore_predictions, resolve_scorer, scorer_label
from clipadapt.captioning.training import DecodeConfig, check_decode_overrides
from clipadapt.config import from_dict, to_dict
from clipadapt.engine.features import FeatureCache
from clipadapt.engine.rundir import read_run_config
from clipadapt.engine.trainable import WEIGHTS_FILE
from clipadapt.errors import ClipAdaptError
from clipadapt.io import atomic_write_json
from clipadapt.models import load_model, resolve_device
from clipadapt.paths import slug


def read_caption_experiment(run_dir: str | Path, device: str | None = None) -> CaptionExperiment:
    """The experiment of a caption run directory, from its config.yaml (``device`` replaces its model.device)."""
    run_dir = Path(run_dir)
    raw = read_run_config(run_dir)
    if raw.get("task") != "captioning":
        raise ClipAdaptError(f"'{run_dir}' is not a caption run (use `clipadapt eval` for classification runs)")
    # runs from before the trigram block decoded without it: re-decoding them reproduces their metrics
    raw.setdefault("decode", {}).setdefault("no_repeat_ngram_size", 0)
    experiment = from_dict(caption_experiment_class(raw.get("method", "lora")), raw)
    if device is not None:
        experiment.model.device = device
    return experiment


def load_caption_run(run_dir: str | Path, device: str | None = None):
    """``(experiment, model)`` of a finished caption run with its trained weights loaded (the dataset is not read:
    ``load_caption_dataset(experiment.data)`` where it is needed)."""
    run_dir = Path(run_dir)
    experiment = read_caption_experiment(run_dir, device)
    if not (run_dir / WEIGHTS_DIR / WEIGHTS_FILE).is_file():
        raise ClipAdaptError(f"run '{run_dir}' has no trained weights (interrupted? resume it with --resume)")
    bundle = load_model(experiment.model.spec, device=resolve_device(experiment.model.device),
                        revision=experiment.model.revision, trust_remote_code=experiment.model.trust_remote_code)
    model = build_caption_model(experiment, bundle)
    model.load_weights(run_dir / WEIGHTS_DIR)
    return experiment, model


def evaluate_caption_run(run_dir: str | Path, split: str = "test", beams: int | None = None,
                         max_new_tokens: int | None = None, device: str | None = None,
                         clipscore_model: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Caption a split of a finished run again, with its decoding or another (``decode.*`` ``overrides``), and score
    it; writes ``eval_<split><decoding>.json``, its predictions and its best/worst figure, where ``<decoding>`` names
    every departure from the run's own decoding (``eval_test_beam3_norepeat0.json``), so no decoding replaces
    another's files. With ``clipscore_model`` (which must load) the scores are that CLIP's and the files
    are named after it (``..._clipscore-<name>``); if the run's own decoding is kept, the split's saved captions
    (``predictions.json`` for test, an earlier ``eval_<split>_predictions.json`` otherwise) are scored again
    without decoding."""
    from clipadapt.captioning import plots

    run_dir = Path(run_dir)
    check_decode_overrides(overrides)  # before anything loads; the values once the run's decoding is known
    experiment = read_caption_experiment(run_dir, device)
    dataset = load_caption_dataset(experiment.data)
    caption_split = dataset.split(split)  # an unknown split fails here, before anything loads
    decode = experiment.decode.redecoding(overrides, beams=beams, max_new_tokens=max_new_tokens)
    saved = (saved_predictions(run_dir, split, decode) if clipscore_model is not None and decode == experiment.decode
             else None)
    model = load_caption_run(run_dir, device)[1] if saved is None else None
    scorer = resolve_scorer(clipscore_model or experiment.eval.clipscore_model, experiment.model,
                            model.bundle if model is not None else None, strict=clipscore_model is not None,
                            device=resolve_device(experiment.model.device))
    cache = FeatureCache() if experiment.run.feature_cache else None
    if saved is not None:
        result = rescore_predictions(saved["predictions"], caption_split, scorer, decode.use_java, cache)
    else:
        assert model is not None
        result = evaluate_captions(model, caption_data(experiment, dataset, model, model.bundle.device), split,
                                   decode, scorer)
    stem = eval_stem(split, decode, experiment.decode, clipscore_model)
    summary = {"run": str(run_dir), "method": experiment.method, "bridge": experiment.bridge.kind,
               "model": experiment.model.spec, "decoder": experiment.decoder.spec, "dataset": dataset.name,
               "split": split, "decode": to_dict(decode), "metrics": result["metrics"],
               "clipscore": result["clipscore"], "tokenizer": result["tokenizer"],
               "skipped_metrics": result["skipped"], "images": result["images"],
               "decode_images_per_s": round(result["images_per_s"], 2) if model is not None else None,
               "rescored": saved["file"] if saved is not None else None,
               "predictions": f"{stem}_predictions.json", "figure": f"{stem}_best_worst.png"}
    position = {image.image_id: k for k, image in enumerate(caption_split.images)}
    atomic_write_json(run_dir / f"{stem}_predictions.json", result["predictions"])
    plots.plot_best_worst(result["predictions"], run_dir / f"{stem}_best_worst.png", scorer.bundle.preprocess,
                          load=lambda prediction: caption_split.load(position[prediction["image_id"]]),
                          title=f"{split} captions by CLIPScore; scorer: {scorer_label(result['clipscore'])}")
    atomic_write_json(run_dir / f"{stem}.json", summary)  # last: the summary names the files beside it
    return summary


def eval_stem(split: str, decode: DecodeConfig, reference: DecodeConfig, clipscore_model: str | None = None) -> str:
    """``eval_<split>``, then what sets ``decode`` apart from the run's own decoding ``reference`` (``_beam3``,
    ``_norepeat0``, ...) and ``_clipscore-<name>`` for a scorer asked for."""
    stem = f"eval_{split}{decode.label(reference)}"
    return stem + (f"_clipscore-{slug(clipscore_model.rstrip('/').split('/')[-1])}" if clipscore_model else "")


def saved_predictions(run_dir: Path, split: str, decode: DecodeConfig) -> dict[str, Any] | None:
    """``{"file", "predictions"}``: the captions a run saved for a split with its own decoding ``decode``, if any
    (test: predictions.json; another split: an earlier eval whose summary records that decoding)."""
    name = PREDICTIONS_FILE if split == "test" else f"eval_{split}_predictions.json"
    if not (run_dir / name).is_file():
        return None
    if split != "test":
        summary = run_dir / f"eval_{split}.json"
        if not summary.is_file() or json.loads(summary.read_text()).get("decode") != to_dict(decode):
            return None
    return {"file": name, "predictions": json.loads((run_dir / name).read_text())}


@torch.no_grad()
def caption_images(run_dir: str | Path, images: list[str | Path], attention: bool = False,
                   out_dir: str | Path | None = None, layer: int | str | None = None, beams: int | None = None,
                   device: str | None = None, strict: bool = False) -> list[dict[str, Any]]:
    """Captions of the user's own images (and with ``attention`` one figure per image in ``out_dir``).

    Unreadable images are skipped and returned with their ``error``; with ``strict`` the first one fails the call
    before anything is written."""
    from clipadapt.data.images import ImageLoadError, load_image

    loaded: dict[str, Any] = {}
    for path in images:
        try:
            loaded[str(path)] = load_image(path)
        except ImageLoadError as error:
            if strict:
                raise ClipAdaptError(f"cannot read image '{path}': {error}") from None
            loaded[str(path)] = error
    loaded_run = LoadedCaptionRun(run_dir, device, beams)
    layer = loaded_run.model.captioner.check_attention_layer(layer) if attention else None  # before any drawing
    results = []
    out = Path(out_dir) if out_dir is not None else None
    for path in images:
        image = loaded[str(path)]
        if isinstance(image, ImageLoadError):
            results.append({"file": str(path), "error": str(image)})
            continue
        entry: dict[str, Any] = {"file": str(path)}
        if attention:
            target = (out or Path(".")) / f"{Path(path).stem}-attention.png"
            entry["caption"] = loaded_run.caption(image, target, layer)
            entry["attention"] = str(target)
        else:
            entry["caption"] = loaded_run.caption(image)
        results.append(entry)
    return results


class LoadedCaptionRun:
    """A finished caption run loaded once, captioning one image at a time with its own decoding (``beams``
    replaces its beam width): ``clipadapt caption predict`` and the app, so both give the same caption."""

    def __init__(self, run_dir: str | Path, device: str | None = None, beams: int | None = None) -> None:
        self.experiment, self.model = load_caption_run(run_dir, device)
        self.decode = self.experiment.decode.redecoding(beams=beams)

    @property
    def has_attention(self) -> bool:
        """Whether the bridge has patches to attend to (the mapper's prefix is made from the pooled embedding)."""
        return self.model.captioner.config.kind != "mapper"

    @torch.no_grad()
    def caption(self, image, attention: Path | None = None, layer: int | str | None = None) -> str:
        """The caption of a PIL image; with ``attention`` also its figure there (one panel per generated word)."""
        preprocess = self.model.bundle.preprocess
        batch = self.model.encode_pixels(preprocess.normalize(preprocess.to_uint8(image)[None]))
        if attention is not None:
            caption, = draw_attention(self.model, batch, [image], [attention], self.decode, layer)
            return caption
        with self.model.evaluating():
            return self.model.captioner.generate(batch, **self.decode.generation())["captions"][0]
