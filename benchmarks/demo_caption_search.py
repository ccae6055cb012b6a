"""The demo's caption settings, chosen on validation CIDEr-D (issue 28; docs/captioning.md, "The demo").

The demo's captioning step trains bridge-only and LoRA on the cross-attention bridge of world:tiny + world:tiny-lm
(world:captions). This script trains both methods for every step budget x learning rate x seed of the grid, with
the demo's fixed settings (``clipadapt.experiments.demo.DEMO_CAPTION_SETTINGS``), and captions the 250 validation
images of each run (``clipadapt.captioning.evaluate(run, split="val")``, the demo's decoding). A method's learning
rate is that of everything it trains: ``bridge.lr`` and, for LoRA, ``lora.lr`` too.

The step budget is the demo's cost (``--budget``, fixed by its time target, not searched); at that budget each
method's learning rate is the one with the best mean validation CIDEr-D over the seeds. The other budgets of the
grid are shown on validation only, for context.

Every run captions its test split once at its end (a caption run always does); the choice never reads those
numbers, and the summary prints the test numbers of the chosen settings only.

Run: ``python benchmarks/demo_caption_search.py --out runs/demo-caption-search [--budget 157] [--steps 157,313]
[--lrs 1e-3,3e-3,1e-2,3e-2] [--seeds 0,1,2]``: writes ``search.csv`` (one row per run: validation numbers only)
and ``search.md`` (validation means per setting, the choice, and the chosen settings' test numbers) into ``--out``.
Finished runs are kept (delete ``--out`` to start again).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLIPADAPT_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS = ("bridge-only", "lora")


def lr_settings(method: str, lr: float) -> list[str]:
    """The learning rate of everything ``method`` trains: the bridge (with the new cross-attention layers) and what
    the method trains in the decoder (bridge-only: nothing)."""
    return [f"bridge.lr={lr:g}"] + ([f"{method.replace('-', '_')}.lr={lr:g}"] if method != "bridge-only" else [])


def run_cell(out: Path, method: str, steps: int, lr: float, seed: int) -> dict:
    """Train one cell (or keep it), caption its validation split; its row of validation numbers."""
    import clipadapt.captioning as captioning
    from clipadapt.experiments.demo import DEMO_CAPTION_BRIDGE, DEMO_CAPTION_SETTINGS

    run = out / f"{method}-steps{steps}-lr{lr:g}-seed{seed}"
    started = time.perf_counter()
    if not (run / "metrics.json").is_file():
        captioning.train(method, bridge=DEMO_CAPTION_BRIDGE, seed=seed, out=run, overwrite=True,
                         overrides=[*DEMO_CAPTION_SETTINGS, f"train.steps={steps}", *lr_settings(method, lr)])
    val = run / "eval_val.json"
    metrics = (json.loads(val.read_text()) if val.is_file() else captioning.evaluate(run, split="val"))["metrics"]
    train_time = json.loads((run / "metrics.json").read_text())["cost"]["train_time_s"]
    return {"method": method, "steps": steps, "lr": lr, "seed": seed, "val_cider": round(metrics["cider"], 4),
            "val_bleu4": round(metrics["bleu4"], 4), "val_clip_score": round(metrics["clip_score"], 4),
            "train_time_s": train_time, "cell_s": round(time.perf_counter() - started, 1), "run": str(run)}


def choose(rows: list[dict], budget: int) -> dict[str, float]:
    """``{method: lr}`` at the step ``budget``: the learning rate of the best mean validation CIDEr-D over the
    seeds."""
    means: dict[tuple[str, float], list[float]] = {}
    for row in rows:
        if row["steps"] == budget:
            means.setdefault((row["method"], row["lr"]), []).append(row["val_cider"])
    chosen: dict[str, float] = {}
    for (method, lr), values in sorted(means.items()):
        best = chosen.get(method)
        if best is None or statistics.mean(values) > statistics.mean(means[(method, best)]):
            chosen[method] = lr
    return chosen


def summary(rows: list[dict], budget: int, chosen: dict[str, float], seeds: list[int]) -> str:
    from common import header

    lines = [json.dumps(header(search="demo captions")), "", "Validation CIDEr-D (250 images), mean over seeds "
             f"{', '.join(map(str, seeds))} (per seed); at the demo's budget ({budget} steps) the chosen learning "
             "rate of each method in bold:", "",
             "| method | steps | lr | val CIDEr-D | per seed | train time (s) |", "|---|---|---|---|---|---|"]
    groups: dict[tuple[str, int, float], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["steps"], row["lr"]), []).append(row)
    for (method, steps, lr), cell in sorted(groups.items()):
        mean = statistics.mean(r["val_cider"] for r in cell)
        mark = "**" if steps == budget and chosen.get(method) == lr else ""
        per_seed = ", ".join(f"{r['val_cider']:.3f}" for r in sorted(cell, key=lambda r: r["seed"]))
        lines.append(f"| {method} | {steps} | {mark}{lr:g}{mark} | {mark}{mean:.3f}{mark} | {per_seed} | "
                     f"{statistics.mean(r['train_time_s'] for r in cell):.1f} |")
    lines += ["", "Test numbers of the chosen settings only:", "",
              "| method | steps | lr | seed | val CIDEr-D | test CIDEr-D | test BLEU-4 | test CLIPScore |",
              "|---|---|---|---|---|---|---|---|"]
    for method, lr in sorted(chosen.items()):
        for row in sorted(groups[(method, budget, lr)], key=lambda r: r["seed"]):
            test = json.loads((Path(row["run"]) / "metrics.json").read_text())["metrics"]
            lines.append(f"| {method} | {budget} | {lr:g} | {row['seed']} | {row['val_cider']:.3f} | "
                         f"{test['cider']:.3f} | {test['bleu4']:.3f} | {test['clip_score']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo-caption-search")
    parser.add_argument("--budget", type=int, default=157, help="the demo's step budget (its cost)")
    parser.add_argument("--steps", default="157,313", help="step budgets of the grid (313: one epoch of the 2,000 "
                                                          "scenes)")
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2,3e-2")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = [int(s) for s in args.steps.split(",")]
    lrs = [float(s) for s in args.lrs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for budget in steps:
        for lr in lrs:
            for seed in seeds:
                for method in METHODS:
                    rows.append(run_cell(out, method, budget, lr, seed))
                    print(json.dumps({k: v for k, v in rows[-1].items() if k != "run"}), flush=True)
    with (out / "search.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[k for k in rows[0] if k != "run"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    text = summary(rows, args.budget, choose(rows, args.budget), seeds)
    (out / "search.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
