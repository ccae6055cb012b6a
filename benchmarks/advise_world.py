"""``clipadapt advise`` against a measured benchmark on the built-in world (issue 30).

For each (dataset, K) of a ``clipadapt benchmark`` output (``--bench``): ``clipadapt.advise`` runs on the same model,
dataset, K and seed, advising about the benchmark's methods, with the published table only (no ``--history``), and
its answer is scored against the benchmark's measured test accuracies exactly as the leave-one-dataset-out validation
scores it against published ones (``validation.Case``): Spearman's rho of the estimates against the measured
accuracies, and regret at three budgets of the advice's own predicted seconds (``quarter`` and ``median``: the 25th
percentile and the median of the trained methods' predicted costs; ``unlimited``) next to the three simple policies. The
predicted time of each method is set against the measured cell (its run's wall time recorded by the benchmark's
``cost.train_time_s`` plus encoding is not all of a cell, so the measured side is the cell's own wall time from the
benchmark log when given with ``--log``, else ``train_time_s``). And the advice's own wall time against the cheapest
gradient-trained method's cell.

Run: ``python benchmarks/advise_world.py --bench DIR [--bench DIR2] [--log bench.log ...] [--out DIR]``; writes
``world.json`` and ``world.md`` into ``--out`` (default runs/bench-advise).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLIPADAPT_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

GRADIENT_FREE = {"zeroshot", "linear-probe", "gda", "tip-adapter"}


def measured(bench: Path) -> tuple[dict, str]:
    """(dataset, K) -> method -> test accuracy from benchmark.csv (few-shot rows, seed-averaged), and the model."""
    cells: dict[tuple[str, int], dict[str, list[float]]] = {}
    zeroshot: dict[str, float] = {}
    with open(bench / "benchmark.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["protocol"] != "few-shot" or not row["acc1"] or row.get("error"):
                continue
            if row["method"] == "zeroshot":
                zeroshot[row["dataset"]] = float(row["acc1"])
                continue
            cells.setdefault((row["dataset"], int(row["shots"])), {}).setdefault(row["method"], []).append(
                float(row["acc1"]))
    out = {key: {"zeroshot": zeroshot[key[0]], **{m: float(np.mean(v)) for m, v in methods.items()}}
           for key, methods in cells.items() if key[0] in zeroshot}
    title = (bench / "benchmark.md").read_text().splitlines()[0]
    return out, title


def cell_seconds(log: Path) -> dict[str, float]:
    """``dataset/method/Kshot-seedS`` -> the cell's wall seconds from a benchmark log's ``done KEY (1m02s)`` lines."""
    found: dict[str, float] = {}
    for match in re.finditer(r"done (\S+) \((?:(\d+)m)?(\d+)s\)", log.read_text(errors="replace")):
        found[match.group(1)] = 60 * int(match.group(2) or 0) + int(match.group(3))
    return found


def main() -> None:
    import clipadapt
    from clipadapt.experiments.advise.validation import POLICIES, Case, _summary, spearman
    from common import header

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, action="append", required=True, help="a benchmark output; repeat")
    parser.add_argument("--log", type=Path, action="append", default=[], help="its log (cell wall times); repeat")
    parser.add_argument("--model", default="world:tiny")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-advise"))
    args = parser.parse_args()
    accuracy, title, where = {}, [], {}
    for bench in args.bench:
        found, heading = measured(bench)
        accuracy |= found
        where |= {key: bench for key in found}
        title.append(heading)
    walls = {}
    for log in args.log:
        walls |= cell_seconds(log)
    cases, records = [], []
    for (dataset, shots), truth in sorted(accuracy.items()):
        methods = sorted(truth)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            advice = clipadapt.advise(args.model, dataset, shots, methods=methods, seed=args.seed, out=scratch,
                                      progress=False)
        seconds = time.perf_counter() - start
        estimate = {c.method: c.accuracy for c in advice.choices if c.accuracy is not None}
        costs = {c.method: c.seconds for c in advice.choices}
        predictions = {c.method: c for c in advice.choices if c.basis == "predicted"}
        cases.append(Case(dataset, args.model, "measured", shots, advice.pilot["classes"], truth, estimate,
                          predictions, costs))
        key = dataset.replace(":", "-")
        times = {}
        for method in methods:
            run = where[(dataset, shots)] / "runs" / key / method / f"{shots}shot-seed{args.seed}"
            if method == "zeroshot":
                continue
            wall = walls.get(f"{key}/{method}/{shots}shot-seed{args.seed}")
            record = json.loads((run / "metrics.json").read_text())
            times[method] = {"predicted": costs[method], "cell_wall": wall,
                             "train_time": record["cost"]["train_time_s"]}
        trained = [t["cell_wall"] for m, t in times.items() if m not in GRADIENT_FREE and t["cell_wall"]]
        records.append({"dataset": dataset, "shots": shots, "recommended": advice.recommended,
                        "reason": advice.reason, "advise_seconds": seconds,
                        "cheapest_gradient_cell": min(trained) if trained else None,
                        "estimate": estimate, "measured": truth,
                        "basis": {c.method: c.basis for c in advice.choices}, "times": times})
        print(f"{dataset} K={shots}: advised {advice.recommended} in {seconds:.1f} s", flush=True)
    trained = [c.costs[m] for c in cases for m in c.published if m not in GRADIENT_FREE]
    budgets = {"quarter": float(np.percentile(trained, 25)), "median": float(np.median(trained)),
               "unlimited": math.inf}
    regret = {}
    for name, budget in budgets.items():
        values = {p: [] for p in POLICIES}
        for case in cases:
            choices = {p: case.choose(p, budget) for p in POLICIES}
            for policy, method in choices.items():
                if method is not None:
                    values[policy].append(case.regret(method, budget))
        regret[name] = {p: _summary(v) for p, v in values.items()}
    for case, record in zip(cases, records, strict=True):
        common = [m for m in case.published if m in case.estimate]
        record["spearman"] = spearman([case.estimate[m] for m in common], [case.published[m] for m in common])
    result = {**header(model=args.model, bench=[str(b) for b in args.bench], title=title),
              "budgets": {n: (None if math.isinf(b) else b) for n, b in budgets.items()}, "regret": regret,
              "cases": records}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "world.json").write_text(json.dumps(result, indent=1))
    lines = ["| dataset | K | advised | Spearman | advise (s) | cheapest gradient cell (s) |",
             "|---|---|---|---|---|---|"]
    for r in records:
        rho = "-" if r["spearman"] != r["spearman"] else f"{r['spearman']:.2f}"
        cheap = "-" if r["cheapest_gradient_cell"] is None else f"{r['cheapest_gradient_cell']:.0f}"
        lines.append(f"| {r['dataset']} | {r['shots']} | {r['recommended']} | {rho} | {r['advise_seconds']:.1f} | "
                     f"{cheap} |")
    lines += ["", "| budget | " + " | ".join(POLICIES) + " |", "|---|" + "---|" * len(POLICIES)]
    for name, by in regret.items():
        lines.append(f"| {name} | " + " | ".join("-" if by[p]["mean"] is None else f"{by[p]['mean']:.2f}"
                                                 for p in POLICIES) + " |")
    lines += ["", "| dataset | K | method | predicted (s) | cell (s) | ratio |", "|---|---|---|---|---|---|"]
    for r in records:  # only cells whose wall time a given log recorded (train_time_s alone is not a cell's time)
        for method, t in sorted(r["times"].items()):
            if t["cell_wall"]:
                lines.append(f"| {r['dataset']} | {r['shots']} | {method} | {t['predicted']:.1f} | "
                             f"{t['cell_wall']:.0f} | {t['predicted'] / t['cell_wall']:.2f} |")
    (args.out / "world.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
