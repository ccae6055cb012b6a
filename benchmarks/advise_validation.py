"""Leave-one-dataset-out validation of ``clipadapt advise`` on the shipped published table (issue 30).

For every dataset of ``published.csv``: the accuracy model is fit on the other datasets only, each of the held-out
dataset's (source, backbone, K) groups is a case whose pilot observation is that group's own zero-shot, linear-probe,
GDA and Tip-Adapter numbers, and the advice is scored against the group's published accuracies at three budgets
(seconds of ``costs.reference_cost``, the shipped reference profile), next to three simple policies. Candidates are
the methods of the table this library can train (the advice never recommends a method it cannot run).

Run: ``python benchmarks/advise_validation.py [--out DIR] [--without-source TEXT]``; writes ``validation.json`` and
``validation.md`` (the tables of docs/advise.md) into ``--out`` (default runs/bench-advise).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from clipadapt.experiments.advise.costs import reference_cost
    from clipadapt.experiments.advise.table import published_table
    from clipadapt.experiments.advise.validation import leave_one_dataset_out, validation_markdown
    from clipadapt.io import atomic_write_json, atomic_write_text
    from clipadapt.methods import list_methods
    from common import header

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-advise"))
    parser.add_argument("--without-source", default=None, help="leave out the rows whose source contains TEXT")
    args = parser.parse_args()
    results = published_table()
    if args.without_source:
        results = [r for r in results if args.without_source not in r.source]
    trainable = {"zeroshot", *list_methods()}
    candidates = sorted({r.method for r in results} & trainable)
    result = leave_one_dataset_out(results, reference_cost, candidates=candidates)
    result = {**header(rows=len(results), without_source=args.without_source), **result}
    name = "validation" + ("-without" if args.without_source else "")
    atomic_write_json(args.out / f"{name}.json", result)
    text = validation_markdown(result)
    atomic_write_text(args.out / f"{name}.md", text)
    print(text)
    print(json.dumps({"candidates": candidates, "cases": result["cases"],
                      "advice_beats_every_policy": result["advice_beats_every_policy"]}))


if __name__ == "__main__":
    main()
