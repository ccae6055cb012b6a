"""Caption runs: ``clipadapt caption train`` / ``eval`` / ``predict`` as library calls.

A caption run directory holds ``config.yaml`` from the start (``checkpoints/`` while training) and at the end
``weights/trainable.safetensors`` (the bridge and what the decoder method trains; the frozen tower and decoder are
rebuilt from the config), ``history.csv``, ``curves.png``, ``predictions.json`` (one entry per test image: file,
caption, references, per-image scores), ``best_worst.png``, ``attention/`` (per-word attention maps of a few test
images, patch bridges only) and, last, ``metrics.json``. Model selection uses validation only (loss or CIDEr); the
test split is captioned once, at the end, with the chosen weights.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipadapt.captioning.data import CaptionDataConfig, CaptionDataset, load_caption_dataset
from clipadapt.captioning.encoder import EncoderCache, patch_geometry
from clipadapt.captioning.methods import CAPTION_METHODS, apply_method, build_caption_method
from clipadapt.captioning.model import BridgeConfig, Captioner, load_decoder
from clipadapt.captioning.training import (
    CaptionModel,
    CaptionTask,
    CaptionTrainConfig,
    CaptionTrainingData,
    DecodeConfig,
    generate_split,
)
from clipadapt.config import from_dict, load_method_experiment, method_experiment_class, option, section_name, to_dict
from clipadapt.engine.checkpoint import remove_checkpoints
from clipadapt.engine.cost import peak_memory_mb, reset_peak_memory
from clipadapt.engine.records import METRICS_FILE, build_metrics_record, write_csv, write_skipped
from clipadapt.engine.rundir import (
    RunOutput,
    TrainRunConfig,
    check_train_run_dir,
    default_run_dir,
    read_run_config,
    resumable,
    start_run_dir,
)
from clipadapt.engine.trainable import WEIGHTS_FILE
from clipadapt.engine.trainer import Trainer, make_accelerator
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.io import atomic_write_json, staged_directory
from clipadapt.models import load_model, resolve_device
from clipadapt.models.config import ModelConfig

log = logging.getLogger(__name__)
WEIGHTS_DIR = "weights"
PREDICTIONS_FILE = "predictions.json"
ATTENTION_DIR = "attention"


@dataclass
class DecoderConfig:
    spec: str = option("world:tiny-lm", help="causal LM: a hub id (gpt2), a folder, or world:tiny-lm")


@dataclass
class CaptionModelConfig(ModelConfig):
    spec: str = option("world:tiny", help="CLIP model whose image tower encodes (frozen)")


@dataclass
class CaptionRunConfig(TrainRunConfig):
    attention_images: int = option(4, help="test images whose per-word attention maps are drawn (patch bridges)")


@dataclass
class CaptionExperiment:
    """Common sections; ``caption_experiment_class(method)`` adds the decoder method's own section."""

    task: str = option("captioning", help="what the run is (captioning)")
    method: str = option("lora", help="decoder method (see `clipadapt caption methods`)")
    model: CaptionModelConfig = field(default_factory=CaptionModelConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    data: CaptionDataConfig = field(default_factory=CaptionDataConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    train: CaptionTrainConfig = field(default_factory=CaptionTrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    run: CaptionRunConfig = field(default_factory=CaptionRunConfig)

    def method_section(self) -> str:
        return section_name(self.method)

    def method_settings(self) -> dict[str, Any]:
        return to_dict(getattr(self, self.method_section()))


def caption_experiment_class(method: str) -> type[CaptionExperiment]:
    entry = CAPTION_METHODS.get(method)
    return method_experiment_class(CaptionExperiment, method, section_name(method), entry.config_cls)


def load_caption_experiment(method: str, config_file: str | Path | None = None,
                            overrides: list[str] | None = None) -> CaptionExperiment:
    return load_method_experiment(caption_experiment_class(method), method, config_file, overrides,
                                  what="caption method")


def build_caption_model(experiment: CaptionExperiment, bundle, inputs: str = "features") -> CaptionModel:
    """Decoder, bridge and decoder method as the config says (weights: pretrained decoder, fresh bridge)."""
    method = build_caption_method(experiment.method, experiment.method_settings())
    geometry = patch_geometry(bundle)  # one clear error for towers without patch tokens, before the decoder loads
    decoder = load_decoder(experiment.decoder.spec, cross_attention=experiment.bridge.kind == "cross-attention",
                           device=bundle.device)
    captioner = Captioner(decoder, geometry, bundle.embed_dim, experiment.bridge)
    apply_method(captioner, method)
    captioner.check_positions(max(experiment.train.max_length, experiment.decode.max_new_tokens + 1),
                              experiment.decoder.spec)
    return CaptionModel(bundle, captioner, method, inputs).to(bundle.device)


def caption_data(experiment: CaptionExperiment, dataset: CaptionDataset, model: CaptionModel, device,
                 accelerator=None) -> CaptionTrainingData:
    from clipadapt.captioning.model import Decoder

    decoder = Decoder(model.captioner.decoder, model.captioner.tokenizer, experiment.decoder.spec)
    return CaptionTrainingData(
        dataset, model.bundle, decoder, batch_size=experiment.train.batch_size,
        eval_batch_size=experiment.train.eval_batch_size, max_length=experiment.train.max_length,
        num_workers=-1, strict=False, seed=experiment.run.seed,
        cache=EncoderCache() if experiment.run.feature_cache else None, device=device,
        main_process_first=accelerator.main_process_first if accelerator is not None else None)


def run_caption_training(experiment: CaptionExperiment, callbacks: dict[str, list] | None = None) -> RunOutput:
    """Train one decoder method, select on validation, caption the test split once, write the run directory."""
    from accelerate.utils import set_seed

    cfg = experiment
    run_dir = Path(cfg.run.out) if cfg.run.out else default_run_dir(cfg.model.spec, cfg.data.dataset,
                                                                    f"caption-{cfg.method}")
    resolved = to_dict(cfg)
    resolved["run"]["out"] = str(run_dir)
    accelerator = make_accelerator(resolve_device(cfg.model.device), cfg.train.precision, cfg.train.log_with, run_dir)
    check_train_run_dir(run_dir, resolved, cfg.run.resume, cfg.run.overwrite)
    dataset = load_caption_dataset(cfg.data)
    for split in ("train", "val", "test"):
        if not dataset.split(split).images:
            raise ConfigError(f"{dataset.name} has no {split} images to caption")
    device = accelerator.device
    reset_peak_memory(device)
    bundle = load_model(cfg.model.spec, device=device, revision=cfg.model.revision,
                        trust_remote_code=cfg.model.trust_remote_code)
    set_seed(cfg.run.seed)
    model = build_caption_model(cfg, bundle, "features" if cfg.train.cache_encoder else "pixels")
    data = caption_data(cfg, dataset, model, device, accelerator)

    with resumable(run_dir):  # from here on, an interruption says how to resume
        start_run_dir(accelerator, run_dir, resolved, cfg.run.resume)

        trainer = Trainer(cfg.train, data, accelerator, run_dir=run_dir, resume=cfg.run.resume,
                          task=CaptionTask(cfg.train.select, cfg.decode))
        for event, functions in (callbacks or {}).items():
            for function in functions:
                trainer.add_callback(event, function)
        fit = model.fit(trainer)
        result = evaluate_captions(model, data, "test", cfg.decode)  # the only time the test split is read
        record = build_metrics_record(
            method=cfg.method, model=cfg.model.spec, dataset=dataset.name, split="test", metrics=result["metrics"],
            params=model.num_parameters(),
            cost={"train_time_s": round(fit.train_time_s, 3), "peak_mem_mb": round(peak_memory_mb(device), 1),
                  "train_pairs_per_s": round(fit.train_images_per_s, 2),
                  "decode_images_per_s": round(result["images_per_s"], 2)},
            seed=cfg.run.seed, config=resolved, device=device, best_epoch=fit.best_epoch,
            selection={"on": "val", "by": cfg.train.select, **fit.selection}, task="captioning",
            decoder=cfg.decoder.spec, bridge=cfg.bridge.kind, decode=to_dict(cfg.decode),
            tokenizer=result["tokenizer"], skipped_metrics=result["skipped"], data=dataset.summary(),
            processes=accelerator.num_processes)
        if accelerator.is_main_process:
            _write_results(run_dir, model, dataset, fit, result, record, data, cfg)
            remove_checkpoints(run_dir)
        accelerator.wait_for_everyone()
    log.info("wrote %s", run_dir)
    return RunOutput(run_dir, record, result, main_process=accelerator.is_main_process)


def evaluate_captions(model: CaptionModel, data: CaptionTrainingData, split: str,
                      decode: DecodeConfig) -> dict[str, Any]:
    """Caption a split; the n-gram metrics, CLIPScore and RefCLIPScore, and one prediction entry per image."""
    from clipadapt.captioning.metrics import clip_scores, ngram_scores

    captions, seconds = generate_split(model, data, split, decode, progress=True)
    if not captions:
        raise ClipAdaptError(f"no readable images in the {split} split to caption")
    encoded = data.encoded(split)  # captions are in its order
    caption_split = data.split(split)
    images = [caption_split.images[int(p)] for p in encoded.positions]
    files = [caption_split.describe(int(p)) for p in encoded.positions]
    references = {image.image_id: image.captions for image in images}
    scores = ngram_scores(captions, references, decode.use_java)
    clip = clip_scores(model.bundle, encoded.pooled, list(captions.values()), list(references.values()))
    metrics = {**scores.metrics, "clip_score": float(np.mean(clip["clip_score"])),
               "ref_clip_score": float(np.mean(clip["ref_clip_score"]))}
    predictions = []
    for k, image in enumerate(images):
        per_image = {**scores.per_image[image.image_id], "clip_score": float(clip["clip_score"][k]),
                     "ref_clip_score": float(clip["ref_clip_score"][k])}
        predictions.append({"image_id": image.image_id, "file": files[k], "caption": captions[image.image_id],
                            "references": image.captions, "scores": {m: round(v, 6) for m, v in per_image.items()}})
    return {"split": split, "metrics": {m: round(v, 6) for m, v in metrics.items()}, "predictions": predictions,
            "tokenizer": scores.tokenizer, "skipped": scores.skipped, "images": len(predictions),
            "seconds": seconds, "images_per_s": len(predictions) / seconds if seconds > 0 else float("nan")}


def _write_results(run_dir: Path, model: CaptionModel, dataset: CaptionDataset, fit, result: dict, record: dict,
                   data: CaptionTrainingData, cfg: CaptionExperiment) -> None:
    from clipadapt.captioning import plots
    from clipadapt.reports import plots as curves

    with staged_directory(run_dir / WEIGHTS_DIR, overwrite=True) as stage:
        model.save_weights(stage)
    write_csv(run_dir / "history.csv", fit.history)
    curves.plot_training_curves(fit.history, run_dir / "curves.png", f"{cfg.method} ({cfg.bridge.kind}) on "
                                f"{dataset.name}", loss_label="next-token cross-entropy",
                                acc_label="next-token accuracy", extra=(("val_cider", "CIDEr-D (greedy)"),),
                                selected=fit.best_epoch)
    atomic_write_json(run_dir / PREDICTIONS_FILE, result["predictions"])
    test = data.split("test")
    position = {image.image_id: k for k, image in enumerate(test.images)}
    plots.plot_best_worst(result["predictions"], run_dir / "best_worst.png", model.bundle.preprocess,
                          load=lambda prediction: test.load(position[prediction["image_id"]]))
    if cfg.run.attention_images and cfg.bridge.kind != "mapper":
        write_attention_figures(model, data, "test", cfg.run.attention_images, run_dir / ATTENTION_DIR, cfg.decode)
    skipped = data.skipped_rows()
    record["skipped_images"] = {"count": len(skipped), "file": "skipped_images.txt" if skipped else None}
    write_skipped(run_dir, skipped)
    atomic_write_json(run_dir / METRICS_FILE, record)  # last: its presence marks the run complete


def draw_attention(model: CaptionModel, batch: dict[str, torch.Tensor], pictures: list, targets: list[Path],
                   decode: DecodeConfig, layer: int | None = None) -> list[str]:
    """Caption a batch of encoder outputs and draw one figure per image: the image, then a panel per generated
    word with its attention over the patches. Returns the captions."""
    from clipadapt.captioning import plots

    with model.evaluating():
        out = model.captioner.generate(batch, max_new_tokens=decode.max_new_tokens, num_beams=decode.beams)
        maps = model.captioner.attention_maps(batch, out["sequences"], layer)
    for k, (picture, target) in enumerate(zip(pictures, targets, strict=True)):
        plots.plot_word_attention(picture, model.captioner.caption_words(out["sequences"][k]), maps[k], target,
                                  model.bundle.preprocess, title=out["captions"][k])
    return out["captions"]


def write_attention_figures(model: CaptionModel, data: CaptionTrainingData, split: str, count: int, out_dir: Path,
                            decode: DecodeConfig, layer: int | None = None) -> None:
    """Attention figures of the first ``count`` readable images of a split, into ``out_dir``."""
    positions = data.encoded(split).positions[:count]
    caption_split = data.split(split)
    with staged_directory(out_dir, overwrite=True) as stage:
        names = [f"{k:02d}-{_safe(caption_split.images[int(p)].image_id)}.png" for k, p in enumerate(positions)]
        draw_attention(model, data.image_inputs(split, slice(0, len(positions))),
                       [caption_split.load(int(p)) for p in positions], [stage / name for name in names], decode,
                       layer)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text))[:40]


# -- finished runs ------------------------------------------------------------------------------------------------


def load_caption_run(run_dir: str | Path, device: str | None = None):
    """``(experiment, model)`` of a finished caption run with its trained weights loaded (the dataset is not read:
    ``load_caption_dataset(experiment.data)`` where it is needed)."""
    run_dir = Path(run_dir)
    raw = read_run_config(run_dir)
    if raw.get("task") != "captioning":
        raise ClipAdaptError(f"'{run_dir}' is not a caption run (use `clipadapt eval` for classification runs)")
    experiment = from_dict(caption_experiment_class(raw.get("method", "lora")), raw)
    if device is not None:
        experiment.model.device = device
    if not (run_dir / WEIGHTS_DIR / WEIGHTS_FILE).is_file():
        raise ClipAdaptError(f"run '{run_dir}' has no trained weights (interrupted? resume it with --resume)")
    bundle = load_model(experiment.model.spec, device=resolve_device(experiment.model.device),
                        revision=experiment.model.revision, trust_remote_code=experiment.model.trust_remote_code)
    model = build_caption_model(experiment, bundle)
    model.load_weights(run_dir / WEIGHTS_DIR)
    return experiment, model


def with_decoding(decode: DecodeConfig, **changes: int | None) -> DecodeConfig:
    """The run's decoding with the given changes (None: keep); bad values fail in DecodeConfig's own checks."""
    return dataclasses.replace(decode, **{k: v for k, v in changes.items() if v is not None})


def evaluate_caption_run(run_dir: str | Path, split: str = "test", beams: int | None = None,
                         max_new_tokens: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Re-caption a split of a finished run; writes ``eval_<split>[_beamN].json`` and its predictions."""
    run_dir = Path(run_dir)
    experiment, model = load_caption_run(run_dir, device)
    dataset = load_caption_dataset(experiment.data)
    dataset.split(split)
    decode = with_decoding(experiment.decode, beams=beams, max_new_tokens=max_new_tokens)
    data = caption_data(experiment, dataset, model, model.bundle.device)
    result = evaluate_captions(model, data, split, decode)
    stem = f"eval_{split}" + (f"_beam{decode.beams}" if decode.beams > 1 else "")
    summary = {"run": str(run_dir), "method": experiment.method, "bridge": experiment.bridge.kind,
               "model": experiment.model.spec, "decoder": experiment.decoder.spec, "dataset": dataset.name,
               "split": split, "decode": to_dict(decode), "metrics": result["metrics"],
               "tokenizer": result["tokenizer"], "skipped_metrics": result["skipped"], "images": result["images"],
               "decode_images_per_s": round(result["images_per_s"], 2), "predictions": f"{stem}_predictions.json"}
    atomic_write_json(run_dir / f"{stem}_predictions.json", result["predictions"])
    atomic_write_json(run_dir / f"{stem}.json", summary)
    return summary


@torch.no_grad()
def caption_images(run_dir: str | Path, images: list[str | Path], attention: bool = False,
                   out_dir: str | Path | None = None, layer: int | None = None, beams: int | None = None,
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
    experiment, model = load_caption_run(run_dir, device)
    decode = with_decoding(experiment.decode, beams=beams)
    results = []
    out = Path(out_dir) if out_dir is not None else None
    for path in images:
        image = loaded[str(path)]
        if isinstance(image, ImageLoadError):
            results.append({"file": str(path), "error": str(image)})
            continue
        pixels = model.bundle.preprocess.normalize(model.bundle.preprocess.to_uint8(image)[None])
        batch = model.encode_pixels(pixels)
        entry: dict[str, Any] = {"file": str(path)}
        if attention:
            target = (out or Path(".")) / f"{Path(path).stem}-attention.png"
            entry["caption"], = draw_attention(model, batch, [image], [target], decode, layer)
            entry["attention"] = str(target)
        else:
            with model.evaluating():
                entry["caption"] = model.captioner.generate(batch, max_new_tokens=decode.max_new_tokens,
                                                            num_beams=decode.beams)["captions"][0]
        results.append(entry)
    return results
