"""Caption runs: ``clipadapt caption train`` as a library call (finished runs: ``captioning/finished.py``).

A caption run directory holds ``config.yaml`` from the start (``checkpoints/`` while training) and at the end
``weights/trainable.safetensors`` (the bridge and what the decoder method trains; the frozen tower and decoder are
rebuilt from the config), ``history.csv``, ``curves.png``, ``predictions.json`` (one entry per test image: file,
caption, references, per-image scores), ``best_worst.png``, ``attention/`` (per-word attention maps of a few test
images, patch bridges only) and, last, ``metrics.json`` (with the CLIPScore scorer: ``captioning/scoring.py``).
Model selection uses validation only (loss or CIDEr); the test split is captioned once, at the end, with the chosen
weights. ``caption eval`` captions any split again (or scores saved captions again with another scorer) into
``eval_<split>...`` files beside them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipadapt.captioning.data import CaptionDataConfig, CaptionDataset, load_caption_dataset
from clipadapt.captioning.encoder import EncoderCache, patch_geometry
from clipadapt.captioning.methods import CAPTION_METHODS, apply_method, build_caption_method
from clipadapt.captioning.model import BridgeConfig, Captioner, attention_layer, load_decoder
from clipadapt.captioning.scoring import (
    CaptionEvalConfig,
    Scorer,
    resolve_scorer,
    score_predictions,
    scorer_image_features,
    scorer_label,
)
from clipadapt.captioning.training import (
    CaptionModel,
    CaptionTask,
    CaptionTrainConfig,
    CaptionTrainingData,
    DecodeConfig,
    generate_split,
)
from clipadapt.config import load_method_experiment, method_experiment_class, option, section_name, to_dict
from clipadapt.engine.checkpoint import remove_checkpoints
from clipadapt.engine.cost import peak_memory_mb, reset_peak_memory
from clipadapt.engine.features import FeatureCache
from clipadapt.engine.records import METRICS_FILE, build_metrics_record, write_csv, write_skipped
from clipadapt.engine.rundir import (
    RunOutput,
    TrainRunConfig,
    check_train_run_dir,
    default_run_dir,
    resumable,
    start_run_dir,
)
from clipadapt.engine.selection import chosen_epoch
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
    attention_layer: str = option("mean", help="decoder layer of those maps: mean (over layers), all (one row per "
                                               "layer) or a layer number (negative from the end)")

    def __post_init__(self) -> None:
        super().__post_init__()
        attention_layer(self.attention_layer)


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
    eval: CaptionEvalConfig = field(default_factory=CaptionEvalConfig)
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
    check_train_run_dir(run_dir, resolved, cfg.run.resume, cfg.run.overwrite, type(cfg))
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
    if cfg.run.attention_images and cfg.bridge.kind != "mapper":
        model.captioner.check_attention_layer(cfg.run.attention_layer)
    scorer = resolve_scorer(cfg.eval.clipscore_model, cfg.model, bundle, device=device)  # fails before training
    data = caption_data(cfg, dataset, model, device, accelerator)

    with resumable(run_dir):  # from here on, an interruption says how to resume
        start_run_dir(accelerator, run_dir, resolved, cfg.run.resume)

        trainer = Trainer(cfg.train, data, accelerator, run_dir=run_dir, resume=cfg.run.resume,
                          task=CaptionTask(cfg.train.select, cfg.decode))
        for event, functions in (callbacks or {}).items():
            for function in functions:
                trainer.add_callback(event, function)
        fit = model.fit(trainer)
        result = evaluate_captions(model, data, "test", cfg.decode, scorer)  # the only time test is read
        record = build_metrics_record(
            method=cfg.method, model=cfg.model.spec, dataset=dataset.name, split="test", metrics=result["metrics"],
            params=model.num_parameters(),
            cost={"train_time_s": round(fit.train_time_s, 3), "peak_mem_mb": round(peak_memory_mb(device), 1),
                  "train_pairs_per_s": round(fit.train_images_per_s, 2),
                  "decode_images_per_s": round(result["images_per_s"], 2)},
            seed=cfg.run.seed, config=resolved, device=device, best_epoch=fit.best_epoch,
            selection=trainer.selections.record(**selected_by(trainer, cfg.train.select), **fit.details),
            task="captioning",
            decoder=cfg.decoder.spec, bridge=cfg.bridge.kind, decode=to_dict(cfg.decode),
            tokenizer=result["tokenizer"], skipped_metrics=result["skipped"], clipscore=result["clipscore"],
            data=dataset.summary(), processes=accelerator.num_processes)
        if accelerator.is_main_process:
            _write_results(run_dir, model, dataset, fit, result, record, data, cfg)
            remove_checkpoints(run_dir)
        accelerator.wait_for_everyone()
    log.info("wrote %s", run_dir)
    return RunOutput(run_dir, record, result, main_process=accelerator.is_main_process)


def evaluate_captions(model: CaptionModel, data: CaptionTrainingData, split: str, decode: DecodeConfig,
                      scorer: Scorer | None = None) -> dict[str, Any]:
    """Caption a split; the n-gram metrics, CLIPScore and RefCLIPScore (by ``scorer``, default the run's own CLIP),
    and one prediction entry per image."""
    captions, seconds = generate_split(model, data, split, decode, progress=True)
    if not captions:
        raise ClipAdaptError(f"no readable images in the {split} split to caption")
    encoded = data.encoded(split)  # captions are in its order
    caption_split = data.split(split)
    positions = [int(p) for p in encoded.positions]
    scorer = scorer or Scorer(model.bundle, model.bundle.spec, "run", own=True)
    features = scorer_image_features(scorer, caption_split, positions, encoded.pooled,
                                     FeatureCache() if data.cache is not None else None, data.eval_batch_size)
    entries = [{"image_id": caption_split.images[p].image_id, "file": caption_split.describe(p),
                "caption": captions[caption_split.images[p].image_id], "references": caption_split.images[p].captions}
               for p in positions]
    result = score_predictions(entries, features, scorer, decode.use_java)
    return {"split": split, **result, "seconds": seconds,
            "images_per_s": len(entries) / seconds if seconds > 0 else float("nan")}


def selected_by(trainer: Trainer, select: str) -> dict[str, str]:
    """``by``: the validation score (loss or CIDEr-D) that chose the epoch; nothing where nothing was chosen."""
    return {"by": select} if trainer.selections.choices else {}


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
                                selected=chosen_epoch(record, fit.best_epoch))
    atomic_write_json(run_dir / PREDICTIONS_FILE, result["predictions"])
    test = data.split("test")
    position = {image.image_id: k for k, image in enumerate(test.images)}
    plots.plot_best_worst(result["predictions"], run_dir / "best_worst.png", model.bundle.preprocess,
                          load=lambda prediction: test.load(position[prediction["image_id"]]),
                          title=f"test captions by CLIPScore; scorer: {scorer_label(result['clipscore'])}")
    if cfg.run.attention_images and cfg.bridge.kind != "mapper":
        write_attention_figures(model, data, "test", cfg.run.attention_images, run_dir / ATTENTION_DIR, cfg.decode,
                                attention_layer(cfg.run.attention_layer))
    skipped = data.skipped_rows()
    record["skipped_images"] = {"count": len(skipped), "file": "skipped_images.txt" if skipped else None}
    write_skipped(run_dir, skipped)
    atomic_write_json(run_dir / METRICS_FILE, record)  # last: its presence marks the run complete


def draw_attention(model: CaptionModel, batch: dict[str, torch.Tensor], pictures: list, targets: list[Path],
                   decode: DecodeConfig, layer: int | str | None = None) -> list[str]:
    """Caption a batch of encoder outputs and draw one figure per image: the image, then a panel per generated
    word with its attention over the patches (``layer="all"``: a row of them per decoder layer). Returns the
    captions."""
    from clipadapt.captioning import plots

    with model.evaluating():
        out = model.captioner.generate(batch, **decode.generation())
        maps = model.captioner.attention_maps(batch, out["sequences"], layer)
    for k, (picture, target) in enumerate(zip(pictures, targets, strict=True)):
        plots.plot_word_attention(picture, model.captioner.caption_words(out["sequences"][k]), maps[k], target,
                                  model.bundle.preprocess, title=out["captions"][k] + _layer_title(layer))
    return out["captions"]


def _layer_title(layer: int | str | None) -> str:
    return "" if layer == "all" else " (mean over layers)" if layer is None else f" (layer {layer})"


def write_attention_figures(model: CaptionModel, data: CaptionTrainingData, split: str, count: int, out_dir: Path,
                            decode: DecodeConfig, layer: int | str | None = None) -> None:
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
