"""Forgetting on the built-in world (issue 29): train on one world task, measure zero-shot on another before and after.

Each method trains on ``--dataset`` (default world:shapes-novel, ``--shots`` 8) with ``eval.control=--control``
(default world:colour: naming the colour of an object, a task world:tiny learned in pretraining), for seeds 0-2,
with the method's default recipe. Every number comes from the runs' metrics.json (``control``: the control's
zero-shot accuracy with the frozen model before training and with the adapted towers after it, and ``kept``).

Run: ``python benchmarks/bench_forgetting.py [--methods lora,full-ft,clip-lora] [--seeds 0,1,2] [--out DIR]``. It uses
world:tiny from $CLIPADAPT_HOME (built there on first use: about 4-5 minutes on one thread) and writes
``forgetting.json`` and ``forgetting.md`` (the table of docs/methods.md's "Forgetting") into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLIPADAPT_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_METHODS = "linear-probe,bitfit,lora,full-ft,clip-lora"


def run(method: str, seed: int, args, out: Path) -> dict:
    from clipadapt.classification.experiment import load_experiment
    from clipadapt.classification.training import run_training

    run_dir = out / f"{method}-seed{seed}"
    metrics = run_dir / "metrics.json"
    if metrics.is_file() and not args.overwrite:  # a finished run is read back
        return json.loads(metrics.read_text())
    experiment = load_experiment(method, None, [
        "model.spec=world:tiny", f"model.device={args.device}", f"data.dataset={args.dataset}",
        f"data.shots={args.shots}", f"data.seed={seed}", f"run.seed={seed}", f"run.out={run_dir}",
        "run.overwrite=true", "run.samples=0", f"eval.control={args.control}", *args.set])
    return run_training(experiment).record


def mean_std(runs: list[dict], *keys: str) -> tuple[float, float]:
    """Mean and sample std of a metrics.json field over seeds."""
    found = []
    for record in runs:
        node = record
        for key in keys:
            node = node[key]
        found.append(float(node))
    return round(statistics.fmean(found), 4), round(statistics.stdev(found), 4) if len(found) > 1 else 0.0


def summarise(records: dict[str, list[dict]]) -> list[dict]:
    return [{"method": method, "seeds": [r["seed"] for r in runs], "acc1": mean_std(runs, "metrics", "acc1"),
             "control_before": mean_std(runs, "control", "before"), "control_after": mean_std(runs, "control", "after"),
             "kept": mean_std(runs, "control", "kept"), "agreement": mean_std(runs, "control", "agreement"),
             "towers": runs[0]["control"]["towers"], "train_time_s": mean_std(runs, "cost", "train_time_s")}
            for method, runs in records.items()]


def markdown(rows: list[dict], args) -> str:
    def pm(pair):
        return f"{pair[0]:.3f} ± {pair[1]:.3f}"

    lines = [f"| method | {args.dataset} acc1 | control before | control after | control accuracy kept | "
             f"predictions kept | towers | train time (s) |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    lines += [f"| {r['method']} | {pm(r['acc1'])} | {pm(r['control_before'])} | {pm(r['control_after'])} | "
              f"{pm(r['kept'])} | {pm(r['agreement'])} | {r['towers']} | {r['train_time_s'][0]:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--dataset", default="world:shapes-novel")
    parser.add_argument("--control", default="world:colour")
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-forgetting"))
    parser.add_argument("--overwrite", action="store_true", help="train again runs that finished")
    parser.add_argument("--set", action="append", default=[], help="a --set item for every run")
    args = parser.parse_args()

    from common import header

    args.out.mkdir(parents=True, exist_ok=True)
    records: dict[str, list[dict]] = {}
    started = time.perf_counter()
    for method in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            record = run(method, seed, args, args.out)
            records.setdefault(method, []).append(record)
            control = record["control"]
            print(f"{method} seed {seed}: acc1 {record['metrics']['acc1']:.4f}, control {control['before']:.4f} -> "
                  f"{control['after']:.4f} (kept {control['kept']}), {record['cost']['train_time_s']:.1f} s",
                  flush=True)
    rows = summarise(records)
    result = {**header(dataset=args.dataset, shots=args.shots, control=args.control, device=args.device,
                       settings=args.set, wall_s=round(time.perf_counter() - started, 1)), "rows": rows}
    (args.out / "forgetting.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(rows, args)
    (args.out / "forgetting.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
