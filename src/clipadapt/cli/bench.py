"""``clipadapt bench``: speed and memory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipadapt.cli.common import err, out, result_table, setup_logging, user_errors


@user_errors
def bench_command(
    model: Annotated[list[str], typer.Option("--model", "-m", help="CLIP-style model or transformers image "
                                             "classifier (ResNet, ViT, ConvNeXt, ...); repeat for several")],
    batch: Annotated[int, typer.Option(help="images per batch")] = 32,
    dtype: Annotated[str, typer.Option(help="fp32 or bf16 weights for inference")] = "fp32",
    modes: Annotated[str, typer.Option(help="all, or comma-separated gradient modes of the forward: grad_enabled, "
                                       "no_grad, inference_mode")] = "all",
    methods: Annotated[str | None, typer.Option(help="all, or comma-separated methods whose training step to "
                                                "time on each CLIP-style model (default: none)")] = None,
    iterations: Annotated[int, typer.Option(help="timed inference batches")] = 10,
    steps: Annotated[int, typer.Option(help="timed training steps per method")] = 3,
    compare_dir: Annotated[Path | None, typer.Option("--compare", help="a compare directory: plot its "
                                                     "accuracies against each model's speed (with Pearson r) and "
                                                     "add the bench to its report")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="method setting, e.g. lora.r=4")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="where bench.json goes (default: "
                                                 "COMPARE/bench with --compare, else runs/bench)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps")] = "auto",
):
    """Inference images/s, latency p50/p95 and peak memory with gradients, under no_grad and under inference_mode;
    training steps per method."""
    setup_logging()
    from clipadapt.api import bench
    from clipadapt.experiments.bench_report import describe_pearson, inference_table

    def show(row: dict) -> None:
        what = row.get("mode") or row.get("method")
        err.print(f"measured {what} on {row['model']}", highlight=False)

    results = bench(list(model), batch, dtype, methods or (), iterations, steps, out_dir, compare=compare_dir,
                    modes=modes, device=device, overrides=set_ or [], on_result=show)
    table = inference_table(results)
    out.print(result_table(table.headers, table.rows, title=f"inference, batch {batch}, {dtype}", names=1,
                           text=(1, 2)))
    if results["training"]:
        rows = [[row["model"], row["method"], f"{row['train_images_per_s']:,.1f}", f"{row['peak_mem_mb']:,.0f}",
                 f"{row['trainable']:,}", f"{row['trainable_pct']:.3f}"] for row in results["training"]]
        out.print(result_table(["model", "method", "train images/s", "peak memory (MB)", "trainable", "% of model"],
                               rows, title=f"training step, batch {batch}", names=2))
    if "accuracy_vs_speed" in results:
        study = results["accuracy_vs_speed"]
        out.print(f"accuracy vs speed ({study['mode']}, {len(study['points'])} points): "
                  f"{describe_pearson(study['pearson'])}", highlight=False)
        if study["left_out"]:
            out.print(f"left out (model not benchmarked): {', '.join(study['left_out'])}", highlight=False)
        out.print(f"report: {results['report']}", highlight=False)
    out.print(f"results: {results['bench_json']}", highlight=False)
