"""``clipadapt advise``: which method for this dataset and budget, from a pilot, a cost probe and published results."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Annotated

import typer

from clipadapt.cli.common import err, notice, out, result_table, setup_logging, user_errors
from clipadapt.errors import ClipAdaptError


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def print_table(rows: list[dict]) -> None:
    """The published table as it is read: per backbone, the mean over datasets of each method at each K (with the
    number of datasets), then each source and what it gave."""
    shots = sorted({row["shots"] for row in rows})
    for backbone in sorted({row["backbone"] for row in rows}):
        cells: dict[tuple[str, int], list[float]] = defaultdict(list)
        for row in rows:
            if row["backbone"] == backbone:
                cells[(row["method"], row["shots"])].append(row["accuracy"])
        methods = sorted({method for method, _ in cells})
        table_rows = [[method, *[f"{100 * sum(v) / len(v):.1f} ({len(v)})" if (v := cells.get((method, k))) else "-"
                                 for k in shots]] for method in methods]
        out.print(result_table(["method", *[f"K={k}" for k in shots]], table_rows,
                               title=f"{backbone}: mean accuracy (%) over datasets (number of datasets)"))
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row["source"]] += 1
    out.print(result_table(["source", "results"], [[source, str(n)] for source, n in sorted(counts.items())],
                           title="sources", text=(0,)))


@user_errors
def advise_command(
    model: Annotated[str | None, typer.Option("--model", "-m", help="model spec (see `clipadapt models`)")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="dataset spec (see `clipadapt "
                                                "datasets`)")] = None,
    shots: Annotated[int, typer.Option(help="training images per class you have (K)")] = 16,
    budget_time: Annotated[str | None, typer.Option(help="time a full training run may take: 90s, 10m, 2h")] = None,
    budget_memory: Annotated[str | None, typer.Option(help="peak memory a run may use: 512MB, 8GB")] = None,
    methods: Annotated[str | None, typer.Option(help="comma-separated methods to advise about (default: the "
                                                "pilot's and every method the published table predicts)")] = None,
    history: Annotated[list[Path] | None, typer.Option(help="a `clipadapt benchmark` output whose results join "
                                                       "the published table; repeat for several")] = None,
    seed: Annotated[int, typer.Option(help="the few-shot draw's seed, as `clipadapt train` takes it")] = 1,
    folds: Annotated[int, typer.Option(help="cross-validation folds of the pilot")] = 5,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps: where the cost probe measures")] = "auto",
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where advice.json, advice.md and advice.png "
                                          "go")] = Path("runs/advise"),
    then_train: Annotated[bool, typer.Option(help="then train the recommended method (under OUT/run)")] = False,
    table: Annotated[bool, typer.Option("--table", help="print the published table advise predicts from (with "
                                        "--history's results) and stop")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
):
    """Which adaptation method to use for your images and budget: zero-shot, linear probe, GDA and Tip-Adapter
    measured by cross-validation on your K shots, every method's time and memory probed on this device, the others'
    accuracy predicted from published per-dataset results; one recommendation and its reason."""
    setup_logging(verbose)
    from clipadapt.api import advise, advise_table

    if table:
        print_table(advise_table(history or []))
        return
    if model is None or dataset is None:
        raise ClipAdaptError("advise needs --model and --dataset (or --table to print the published table)")
    def show(advice) -> None:
        rows = [[c.method, _percent(c.accuracy),
                 "-" if c.low is None else f"{_percent(c.low)}-{_percent(c.high)}", c.basis,
                 "-" if c.seconds == float("inf") else f"{c.seconds:,.1f}",
                 "-" if c.memory_mb == float("inf") else f"{c.memory_mb:,.0f}",
                 ("yes" if c.fits else "no") + (f": {c.why_not}" if c.why_not else "")] for c in advice.choices]
        out.print(result_table(["method", "accuracy %", "interval", "from", "time (s)", "memory (MB)", "fits"], rows,
                               title=f"advice: {dataset}, {shots} shots, {model}", text=(3, 6)))
        notice("recommended:", f"{advice.recommended}. {advice.reason}", "green")
        out.print(f"advice: {advice.files['json']}; table: {advice.files['markdown']}; figure: "
                  f"{advice.files['figure']} ({advice.seconds:.1f} s)", highlight=False, soft_wrap=True)
        if then_train:
            notice("training:", f"{advice.recommended} into {out_dir / 'run'}")

    result = advise(model, dataset, shots, budget_time=budget_time, budget_memory=budget_memory, methods=methods,
                    history=history or [], seed=seed, folds=folds, device=device, out=out_dir,
                    then_train=then_train, on_progress=lambda text: err.print(text, highlight=False),
                    on_advice=show)
    if then_train:
        out.print(f"trained {result[0].recommended}: {result[1].dir}", highlight=False)
