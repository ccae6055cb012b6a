"""``clipadapt demo``: the whole ladder offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipadapt.cli.common import err, out, print_failed, setup_logging, user_errors
from clipadapt.cli.compare import report_table


@user_errors
def demo_command(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where the demo writes its runs and report")] = Path(
        "runs/demo"),
    full: Annotated[bool, typer.Option("--full", help="every registered method and the ResNet baseline (the whole "
                                                      "ladder), not one method of each family")] = False,
):
    """Offline demo on the built-in world: zero-shot and one method of each family (--full: every method), combined
    runs, robustness, bench, one report, two captioners (the first run pretrains the world)."""
    setup_logging()
    from clipadapt.api import demo

    result = demo(out_dir, say=lambda message: err.print(message, highlight=False), full=full)
    out.print(report_table(result.report))
    print_failed(result.compare.failed)
    out.print(f"bench: {result.bench}", highlight=False)
    out.print(f"report: {result.report.html}", highlight=False)
    if result.captions is not None:
        out.print(f"caption report: {result.captions.html}", highlight=False)
