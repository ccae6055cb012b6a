"""``clipadapt bench``: speed and memory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipadapt.cli.common import err, out, result_table, setup_logging, user_errors


@user_errors
def bench_command(
    model: Annotated[list[str], typer.Option("--model", "-m", help="model spec; repeat for several")],
    batch: Annotated[int, typer.Option(help="images per batch")] = 32,
    dtype: Annotated[str, typer.Option(help="fp32 or bf16 weights for inference")] = "fp32",
    methods: Annotated[str | None, typer.Option(help="all, or comma-separated methods whose training step to "
                                                "time (default: none)")] = None,
    iterations: Annotated[int, typer.Option(help="timed inference batches")] = 10,
    steps: Annotated[int, typer.Option(help="timed training steps per method")] = 3,
    compare_dir: Annotated[Path | None, typer.Option("--compare", help="a compare directory: plot its "
                                                     "accuracies against each model's speed")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="method setting, e.g. lora.r=4")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where bench.json goes")] = Path("runs/bench"),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps")] = "auto",
):
    """Inference images/s, latency p50/p95 and peak memory with and without gradients; training steps per method."""
    setup_logging()
    from clipadapt.api import bench

    def show(row: dict) -> None:
        what = row.get("mode") or row.get("method")
        err.print(f"measured {what} on {row['model']}", highlight=False)

    results = bench(list(model), batch, dtype, methods or (), iterations, steps, out_dir, compare=compare_dir,
                    device=device, overrides=set_ or [], on_result=show)
    rows = [[row["model"], row["mode"], f"{row['images_per_s']:.1f}", f"{row['latency_ms_p50']:.1f}",
             f"{row['latency_ms_p95']:.1f}", f"{row['peak_mem_mb']:,.0f}", f"{row['params']:,}"]
            for row in results["inference"]]
    out.print(result_table(["model", "mode", "images/s", "latency p50 (ms)", "latency p95 (ms)", "peak memory (MB)",
                            "params"], rows, title=f"inference, batch {batch}, {dtype}", names=2))
    if results["training"]:
        rows = [[row["model"], row["method"], f"{row['train_images_per_s']:,.1f}", f"{row['peak_mem_mb']:,.0f}",
                 f"{row['trainable']:,}", f"{row['trainable_pct']:.3f}"] for row in results["training"]]
        out.print(result_table(["model", "method", "train images/s", "peak memory (MB)", "trainable", "% of model"],
                               rows, title=f"training step, batch {batch}", names=2))
    out.print(f"results: {out_dir / 'bench.json'}", highlight=False)
