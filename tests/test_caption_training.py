"""Caption runs on the engine with tiny random models: run directories, selection, resume, reloading, caching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from clipadapt.captioning.finished import caption_images, evaluate_caption_run, load_caption_run
from clipadapt.captioning.metrics import java_available
from clipadapt.captioning.runs import load_caption_experiment, run_caption_training
from clipadapt.engine.trainable import build_optimizer
from clipadapt.errors import ConfigError

SMALL = {"train": (1, 12), "val": (2, 4), "test": (3, 4)}


@pytest.fixture(scope="module")
def caption_folder(tmp_path_factory):
    from clipadapt.world.caption_data import write_caption_dataset

    return write_caption_dataset(tmp_path_factory.mktemp("captions") / "world", SMALL, resolution=32)


def experiment(method, tiny_clip_dir, tiny_lm_dir, caption_folder, out, *overrides):
    return load_caption_experiment(method, None, [
        f"model.spec={tiny_clip_dir}", f"decoder.spec={tiny_lm_dir}", f"data.dataset=coco:{caption_folder}",
        "train.epochs=2", "train.batch_size=16", "train.max_length=24", "decode.max_new_tokens=6",
        "decode.tokenizer=simple",
        "run.attention_images=2", f"run.out={out}", *overrides])


def test_a_caption_run_writes_its_directory(tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path, monkeypatch):
    from clipadapt.engine import trainer

    built = []
    monkeypatch.setattr(trainer, "build_optimizer", lambda method: built.append(build_optimizer(method)) or built[-1])
    out = run_caption_training(experiment("lora", tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path / "run",
                                          "lora.weight_decay=0.05", "bridge.weight_decay=0.01"))
    run = out.run_dir
    # the weight decay of each part reaches the optimizer the engine trains with, and config.yaml records it
    groups = {g["name"]: g for g in built[0].param_groups}
    assert isinstance(built[0], torch.optim.AdamW) and set(groups) == {"bridge", "decoder"}
    assert (groups["bridge"]["weight_decay"], groups["decoder"]["weight_decay"]) == (0.01, 0.05)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["lora"]["weight_decay"] == 0.05 and saved["bridge"]["weight_decay"] == 0.01
    assert saved["lora"]["optimizer"] == "adamw" and saved["decode"]["no_repeat_ngram_size"] == 3
    for name in ("config.yaml", "weights/trainable.safetensors", "history.csv", "curves.png", "predictions.json",
                 "best_worst.png", "metrics.json"):
        assert (run / name).is_file(), name
    assert not (run / "checkpoints").exists()
    assert len(list((run / "attention").glob("*.png"))) == 2
    record = json.loads((run / "metrics.json").read_text())
    assert record["task"] == "captioning" and record["bridge"] == "patch-prefix"
    assert set(record["metrics"]) == {"bleu4", "rouge_l", "cider", "clip_score", "ref_clip_score"}
    assert record["tokenizer"] == "simple" and record["skipped_metrics"] == [
        "meteor: needs Java and the PTB tokenizer (decode.tokenizer=simple)" if java_available()  # the run's choice
        else "meteor: needs Java (not found on PATH)"]
    assert record["params"]["trainable"] == record["params"]["bridge"] + record["params"]["decoder_method"] > 0
    assert record["selection"]["by"] == "loss" and 1 <= record["best_epoch"] <= 2
    predictions = json.loads((run / "predictions.json").read_text())
    assert len(predictions) == SMALL["test"][1]
    assert {"image_id", "file", "caption", "references", "scores"} <= set(predictions[0])
    assert len(predictions[0]["references"]) == 5
    mean = sum(p["scores"]["clip_score"] for p in predictions) / len(predictions)
    assert mean == pytest.approx(record["metrics"]["clip_score"], abs=1e-5)


@pytest.mark.parametrize("method", ["bridge-only", "prefix"])
def test_resume_equals_the_uninterrupted_run(method, tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path):
    straight = run_caption_training(experiment(method, tiny_clip_dir, tiny_lm_dir, caption_folder,
                                               tmp_path / "straight", "run.attention_images=0"))

    def interrupt(trainer, row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_caption_training(experiment(method, tiny_clip_dir, tiny_lm_dir, caption_folder, interrupted,
                                        "run.attention_images=0"), {"epoch_end": [interrupt]})
    assert not (interrupted / "metrics.json").exists() and (interrupted / "checkpoints").is_dir()
    resumed = run_caption_training(experiment(method, tiny_clip_dir, tiny_lm_dir, caption_folder, interrupted,
                                              "run.attention_images=0", "run.resume=true"))
    assert resumed.record["metrics"] == straight.record["metrics"]
    assert [p["caption"] for p in resumed.result["predictions"]] == \
        [p["caption"] for p in straight.result["predictions"]]


def test_reloaded_run_captions_as_it_did(tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path):
    out = run_caption_training(experiment("adapter", tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path / "run",
                                          "bridge.kind=cross-attention", "run.attention_images=0"))
    summary = evaluate_caption_run(out.run_dir)
    assert summary["metrics"] == out.record["metrics"]
    saved = json.loads((out.run_dir / "predictions.json").read_text())
    again = json.loads((out.run_dir / "eval_test_predictions.json").read_text())
    assert [p["caption"] for p in again] == [p["caption"] for p in saved]
    beam = evaluate_caption_run(out.run_dir, beams=3)
    assert (out.run_dir / "eval_test_beam3.json").is_file() and beam["decode"]["beams"] == 3
    # another decoding goes to files of its own, named after what differs from the run's decoding
    free = evaluate_caption_run(out.run_dir, overrides=["decode.no_repeat_ngram_size=0",
                                                        "decode.repetition_penalty=1.5"])
    assert free["predictions"] == "eval_test_norepeat0_reppen1.5_predictions.json"
    assert free["decode"]["no_repeat_ngram_size"] == 0 and free["decode"]["repetition_penalty"] == 1.5
    assert json.loads((out.run_dir / "eval_test.json").read_text())["metrics"] == out.record["metrics"]
    assert (out.run_dir / "eval_test_norepeat0_reppen1.5.json").is_file()
    # the user's own image, as a file
    first = saved[0]
    [mine] = caption_images(out.run_dir, [first["file"]], attention=True, out_dir=tmp_path / "mine")
    assert mine["caption"] == first["caption"]
    drawn = [p.name for p in (tmp_path / "mine").glob("*-attention.png")]
    assert drawn == [f"{Path(first['file']).stem}-attention.png"] and mine["attention"].endswith(drawn[0])
    # a run from before decode.no_repeat_ngram_size is read back with the decoding it was made with
    config = yaml.safe_load((out.run_dir / "config.yaml").read_text())
    del config["decode"]["no_repeat_ngram_size"]
    (out.run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    assert load_caption_run(out.run_dir)[0].decode.no_repeat_ngram_size == 0


def test_cached_encoder_outputs_train_as_re_encoding_does(tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path):
    cached = run_caption_training(experiment("bridge-only", tiny_clip_dir, tiny_lm_dir, caption_folder,
                                             tmp_path / "cached", "run.attention_images=0"))
    pixels = run_caption_training(experiment("bridge-only", tiny_clip_dir, tiny_lm_dir, caption_folder,
                                             tmp_path / "pixels", "run.attention_images=0",
                                             "train.cache_encoder=false"))
    for a, b in zip(_history(cached.run_dir), _history(pixels.run_dir), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)


def test_cider_selection_scores_every_epoch(tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path):
    out = run_caption_training(experiment("bridge-only", tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path / "r",
                                          "train.select=cider", "bridge.kind=mapper", "run.attention_images=0"))
    history = _history(out.run_dir)
    assert all("val_cider" in row for row in history)
    best = max(history, key=lambda r: (r["val_cider"], -r["val_loss"]))
    assert out.record["best_epoch"] == best["epoch"]
    assert out.record["selection"]["val_cider"] == pytest.approx(best["val_cider"])
    assert not (out.run_dir / "attention").exists()  # the mapper has no patches to attend to


def test_bad_caption_settings(tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path):
    with pytest.raises(ConfigError, match="unknown train.select 'bleu'; valid choices: loss, cider"):
        experiment("lora", tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path / "a", "train.select=bleu")
    with pytest.raises(ConfigError, match="train.augment 'flip' is not available for captioning"):
        experiment("lora", tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path / "a", "train.augment=flip")
    with pytest.raises(ConfigError, match="is a clip model, not a causal language model"):
        run_caption_training(load_caption_experiment("lora", None, [
            f"model.spec={tiny_clip_dir}", f"decoder.spec={tiny_clip_dir}", f"data.dataset=coco:{caption_folder}",
            f"run.out={tmp_path / 'c'}"]))
    assert not (tmp_path / "c").exists()


def test_loading_a_classification_run_as_a_caption_run_is_refused(tmp_path):
    from clipadapt.errors import ClipAdaptError

    (tmp_path / "config.yaml").write_text("method: lora\n")
    with pytest.raises(ClipAdaptError, match="is not a caption run"):
        load_caption_run(tmp_path)


def _history(run_dir):
    import csv

    with open(run_dir / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_attention_maps_cover_the_patches_once_per_word(tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path):
    from clipadapt.captioning.runs import build_caption_model
    from clipadapt.models import load_model

    bundle = load_model(str(tiny_clip_dir))
    for kind in ("patch-prefix", "cross-attention"):
        cfg = experiment("prefix", tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path / kind, f"bridge.kind={kind}")
        model = build_caption_model(cfg, bundle).eval()
        pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        from clipadapt.captioning.encoder import image_tokens

        tokens, pooled = image_tokens(bundle, pixels)
        batch = {"tokens": tokens, "pooled": pooled}
        out = model.captioner.generate(batch, max_new_tokens=5)
        for layer in (None, 0, -1):
            maps = model.captioner.attention_maps(batch, out["sequences"], layer)
            grid = model.captioner.geometry.grid
            for row, m in zip(out["sequences"], maps, strict=True):
                assert m.shape == (len(model.captioner.caption_tokens(row)), *grid)
                torch.testing.assert_close(m.sum((-1, -2)), torch.ones(m.shape[0]))
        every = model.captioner.attention_maps(batch, out["sequences"], "all")
        one = model.captioner.attention_maps(batch, out["sequences"], 1)
        for row, m, m1 in zip(out["sequences"], every, one, strict=True):  # a map per layer, each one's own
            assert m.shape == (model.captioner.num_layers, len(model.captioner.caption_tokens(row)), *grid)
            torch.testing.assert_close(m.sum((-1, -2)), torch.ones(m.shape[:2]))
            torch.testing.assert_close(m[1], m1)
    with pytest.raises(ConfigError, match="attention layer 7 is out of range"):
        model.captioner.attention_maps(batch, out["sequences"], 7)
    with pytest.raises(ConfigError, match="attention layer -3 is out of range; the decoder has 2 layers"):
        model.captioner.check_attention_layer("-3")
