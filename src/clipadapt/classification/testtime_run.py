"""Test-time runs (``clipadapt testtime tda|tpt``): a model classifies the test split as an unlabelled stream in a
seeded order, adapting on it; a complete run directory, labelled ``test-time (unlabelled test stream)``.

The method reads only what the model computes for each image (TDA: its feature; TPT: its pixels): the labels are
read after the stream, to score it. The zero-shot classifier TDA starts from is built from the dataset's CoOp
prompt, as its reference; TPT's is its initial prompt, "a photo of a {}." (none is chosen on validation: a test-time
user has no labels at all). The run also records that zero-shot classifier's own metrics on the same images
(``zeroshot_metrics``), so its gain is read off one record. Test-time runs are never mixed with few-shot rows: their
``protocol`` says what they are, and reports label them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from clipadapt.classification import testtime
from clipadapt.classification.artifacts import write_evaluation_artifacts
from clipadapt.classification.testtime import PROTOCOL_LABEL, TdaConfig, order_digest, stream_order, tda_stream
from clipadapt.classification.tpt import TptConfig, tpt_stream
from clipadapt.config import option, to_dict
from clipadapt.data import DataConfig, load_dataset
from clipadapt.data.prompts import resolve_template_sets
from clipadapt.data.registry import resolved_data
from clipadapt.engine.features import FeatureCache, encode_split
from clipadapt.engine.metrics import classification_metrics
from clipadapt.engine.records import CONFIG_FILE, build_metrics_record, write_csv, write_metrics, write_skipped
from clipadapt.engine.rundir import RunConfig, RunOutput, check_run_dir, default_run_dir, save_config_dict
from clipadapt.engine.zeroshot import build_zero_shot_head, zero_shot_logits
from clipadapt.errors import ConfigError
from clipadapt.io import staged_directory
from clipadapt.models import load_model, resolve_device
from clipadapt.models.config import ModelConfig
from clipadapt.progress import progress_bar

log = logging.getLogger(__name__)
TEST_TIME_METHODS = ("tda", "tpt")


@dataclass
class StreamConfig:
    method: str = option("tda", help="the test-time method: tda (training-free caches) or tpt (prompt tuning)")
    seed: int = option(1, help="seed of the stream's order (the references shuffle with seed 1)")

    def __post_init__(self) -> None:
        if self.method not in TEST_TIME_METHODS:
            raise ConfigError(f"unknown test-time method '{self.method}'; valid choices: "
                              f"{', '.join(TEST_TIME_METHODS)}")


@dataclass
class TestTimeExperiment:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)  # its split: test
    stream: StreamConfig = field(default_factory=StreamConfig)
    tda: TdaConfig = field(default_factory=TdaConfig)
    tpt: TptConfig = field(default_factory=TptConfig)
    run: RunConfig = field(default_factory=RunConfig)


def refuse_training(method: str) -> None:
    """A test-time method given labels to train on: the one-line refusal of ``clipadapt train tda``."""
    if method in TEST_TIME_METHODS:
        raise ConfigError(f"{method} is a test-time method: it reads no labels and adapts on the unlabelled test "
                          f"stream, so it does not train; run `clipadapt testtime {method}`")


def split_test_time(methods: list[str], protocols: list[str]) -> tuple[list[str], list[str]]:
    """A benchmark's ``--methods`` as (trained methods, test-time methods); the test-time protocol without any
    test-time method runs them all; a test-time method without it is refused in one line."""
    given = [m for m in dict.fromkeys(methods) if m != "zeroshot"]
    test_time = [m for m in given if m in TEST_TIME_METHODS]
    if test_time and "test-time" not in protocols:
        raise ConfigError(f"{', '.join(test_time)}: test-time methods run only in --protocol test-time (they read no "
                          f"labels, so they have no few-shot or transfer cells)")
    if "test-time" in protocols and not test_time:
        test_time = list(TEST_TIME_METHODS)
    return [m for m in given if m not in TEST_TIME_METHODS], test_time


def run_test_time(experiment: TestTimeExperiment) -> RunOutput:
    """Classify the test split as a stream with the chosen method; write a complete run directory (or nothing)."""
    cfg = dataclasses.replace(experiment, data=resolved_data(experiment.data))
    method = cfg.stream.method
    getattr(cfg, method).check()  # bad settings before anything loads
    run_dir = Path(cfg.run.out) if cfg.run.out else default_run_dir(cfg.model.spec, cfg.data.dataset, method)
    check_run_dir(run_dir, cfg.run.overwrite)
    dataset = load_dataset(cfg.data)
    # the record says what ran: tda.views=-1 and an unset tpt.augmix (the references' choices by dataset) resolved
    cfg = dataclasses.replace(cfg, tda=dataclasses.replace(cfg.tda, views=cfg.tda.views_for(dataset.name)),
                              tpt=dataclasses.replace(cfg.tpt, augmix=cfg.tpt.augmix_for(dataset.name)))
    # the classifier each method starts from: TDA's reference builds it from CoOp's prompt of each dataset
    # (kdiAAA/TDA utils.py:44-61 with the CoOp dataset classes' templates); TPT's is its initial prompt
    start = [dataset.coop_template_set] if method == "tda" else [f"{cfg.tpt.init.strip()} {{}}."]
    template_set = resolve_template_sets(start)[0]
    device = resolve_device(cfg.model.device)
    bundle = load_model(cfg.model.spec, device=device, revision=cfg.model.revision,
                        trust_remote_code=cfg.model.trust_remote_code)
    split = dataset.split(cfg.data.split)
    encoded = encode_split(bundle, split, cfg.data.batch_size, cfg.data.num_workers, cfg.data.strict,
                           FeatureCache() if cfg.run.feature_cache else None)
    head = build_zero_shot_head(bundle, dataset.classnames, template_set)
    zero_shot = zero_shot_logits(bundle, encoded.features, head)
    order = stream_order(len(encoded.features), cfg.stream.seed)
    start = time.perf_counter()
    positions = encoded.positions  # readable images only, in the split's order
    through_views = None  # TDA's starting classifier when it classifies through views
    if method == "tda":
        scale, features, probabilities = float(bundle.logit_scale.detach().float()), encoded.features, None
        if cfg.tda.views:
            with progress_bar(f"tda ({cfg.tda.views} views per image)", len(positions)) as advance:
                features, probabilities = testtime.view_features(
                    bundle, head, scale, lambda i: split.load(int(positions[i])), len(positions), cfg.tda.views,
                    cfg.tda.selection, cfg.tda.seed, on_image=advance)
            through_views = zero_shot_logits(bundle, features, head)
        logits, state = tda_stream(features, head, scale, cfg.tda, order, probabilities)
        kept = {"positive_cache": len(state.positive), "negative_cache": len(state.negative),
                "views": cfg.tda.views}
        trainable = 0
    else:
        with progress_bar("tpt (prompt tuned per image)", len(order)) as advance:
            logits, trainable = tpt_stream(bundle, dataset.classnames, lambda i: split.load(int(positions[i])),
                                           len(positions), order, cfg.tpt, on_image=advance)
        kept = {"tuned_per_image": trainable, "reset_per_image": True}  # nothing is kept between images
    seconds = time.perf_counter() - start
    labels = encoded.labels  # read now, after the stream
    metrics = classification_metrics(logits, labels)
    if through_views is not None:  # zeroshot_metrics is the image alone; this, the same head through the views
        kept["zeroshot_through_views"] = classification_metrics(through_views, labels)
    resolved = to_dict(cfg)
    resolved["run"]["out"] = str(run_dir)
    record = build_metrics_record(
        method=method, model=cfg.model.spec, dataset=dataset.name, split=cfg.data.split, metrics=metrics,
        params={"trainable": trainable, "total": bundle.num_parameters(),
                "trainable_pct": round(100 * trainable / bundle.num_parameters(), 4)},
        cost={"stream_time_s": round(seconds, 3), "seconds_per_image": round(seconds / max(1, len(order)), 5),
              "encode_time_s": round(encoded.encode_time_s, 3)},
        seed=cfg.run.seed, config=resolved, device=device, protocol=PROTOCOL_LABEL,
        stream={"seed": cfg.stream.seed, "order_digest": order_digest(order), "images": len(order), **kept},
        zeroshot_metrics=classification_metrics(zero_shot, labels), templates=template_set.as_strings(),
        num_classes=dataset.num_classes,
    )
    probabilities = logits.float().softmax(-1)
    rows = [{"stream_index": i, "position": int(encoded.positions[int(k)]),
             "predicted": dataset.classnames[int(probabilities[k].argmax())],
             "confidence": round(float(probabilities[k].max()), 6)} for i, k in enumerate(order)]
    skipped = [(cfg.data.split, s.item, s.reason) for s in encoded.skipped]
    with staged_directory(run_dir, overwrite=cfg.run.overwrite) as stage:
        save_config_dict(resolved, stage / CONFIG_FILE)
        write_metrics(stage, record)
        write_csv(stage / "predictions.csv", rows)
        write_evaluation_artifacts(stage, dataset, cfg.data.split, encoded.positions, labels, logits,
                                   f"{method}, {PROTOCOL_LABEL}", cfg.run.samples, cfg.run.seed)
        write_skipped(stage, skipped)
    log.info("wrote %s", run_dir)
    return RunOutput(run_dir, record, None)

