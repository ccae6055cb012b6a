"""Captioning benchmarks (issue 10), on a random ViT-B/32-sized CLIP and a random GPT-2-small-sized decoder
(12 layers, width 768, GPT-2's 50,257-token vocabulary; the world tokenizer supplies the ids):

* ``cache``: the same caption run (bridge-only, patch-prefix) trained twice on generated two-object scenes, once on
  the frozen tower's cached outputs (the default) and once re-encoding the images every step
  (``train.cache_encoder=false``). Reports training seconds per epoch of each and their ratio (the issue's target
  is >= 5x), and both validation losses (which must agree).
* ``decode``: test images captioned per second, greedy and beam 3, by the cached run.

Run: ``python benchmarks/bench_captioning.py [--images 64] [--epochs 2] [--method bridge-only]``
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLIPADAPT_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def gpt2_small_sized(path: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    from clipadapt.world.tokenizer import build_world_tokenizer

    tokenizer = build_world_tokenizer()
    config = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _history(run_dir: Path) -> list[dict]:
    with (run_dir / "history.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="training images (5 captions each)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--method", default="bridge-only")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/captioning.json"))
    args = parser.parse_args()

    from clipadapt.captioning.runs import evaluate_caption_run, load_caption_experiment, run_caption_training
    from clipadapt.world.caption_data import write_caption_dataset
    from common import header, workspace

    work, clip_dir = workspace("captions")
    decoder_dir = gpt2_small_sized(work / "gpt2-small-sized")
    splits = {"train": (1, args.images), "val": (2, 16), "test": (3, 16)}
    data_dir = write_caption_dataset(work / "captions", splits, resolution=224)
    results = header(method=args.method, train_pairs=args.images * 5, batch=args.batch, epochs=args.epochs, runs={})
    for mode, cached in (("cached", "true"), ("re-encoding", "false")):
        output = run_caption_training(load_caption_experiment(args.method, None, [
            f"model.spec={clip_dir}", "model.device=cpu", f"decoder.spec={decoder_dir}",
            f"data.dataset=coco:{data_dir}", f"train.epochs={args.epochs}", "train.patience=0",
            f"train.batch_size={args.batch}", f"train.cache_encoder={cached}", "decode.max_new_tokens=12",
            "decode.tokenizer=simple", "run.attention_images=0", f"run.out={work / mode}"]))
        history = _history(output.run_dir)
        results["runs"][mode] = {
            "train_epoch_s": round(output.record["cost"]["train_time_s"] / len(history), 2),
            "train_pairs_per_s": output.record["cost"]["train_pairs_per_s"],
            "val_loss": [round(row["val_loss"], 5) for row in history]}
        print(mode, results["runs"][mode], flush=True)
        if mode == "cached":
            for beams in (1, 3):
                summary = evaluate_caption_run(output.run_dir, beams=beams)
                results[f"decode_beam{beams}_images_per_s"] = summary["decode_images_per_s"]
                print(f"beam {beams}: {summary['decode_images_per_s']} images/s", flush=True)
    runs = results["runs"]
    results["epoch_speedup"] = round(runs["re-encoding"]["train_epoch_s"] / runs["cached"]["train_epoch_s"], 2)
    results["same_val_loss"] = all(abs(a - b) < 1e-3 for a, b in zip(runs["cached"]["val_loss"],
                                                                       runs["re-encoding"]["val_loss"], strict=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
