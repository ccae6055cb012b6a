"""``clipadapt wise`` (WiSE-FT of a finished run) and ``clipadapt ensemble`` (runs averaged)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipadapt.cli.common import DeviceOpt, err, number_list, out, result_table, setup_logging, user_errors


@user_errors
def wise_command(
    run_dir: Annotated[Path, typer.Argument(help="a finished run of full-ft, bitfit, lora or linear-head")],
    alphas: Annotated[str, typer.Option(help="comma-separated alphas in [0, 1] (0: zero-shot, 1: the run)")] =
    "0,0.25,0.5,0.75,1",
    shift_dataset: Annotated[str | None, typer.Option(help="a dataset with the same classes, evaluated at every "
                                                           "alpha (e.g. world:shapes-shifted)")] = None,
    shift_root: Annotated[str | None, typer.Option(help="local copy of the shift dataset (a hub dataset saved "
                                                        "to disk)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="run directory of the chosen alpha")] = Path("runs/wise"),
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out")] = False,
    device: DeviceOpt = None,
):
    """WiSE-FT: interpolate a run's weights with zero-shot, choose alpha on val, plot test against shift."""
    setup_logging()
    import json

    from clipadapt.api import wise

    run = wise(run_dir, number_list(alphas, "--alphas", float), out_dir, shift_dataset, shift_root, overwrite, device)
    result = json.loads((run.dir / "wise.json").read_text())
    shift = result["shift_dataset"]
    rows = [[f"{r['alpha']:g}" + (" *" if r["alpha"] == result["chosen_alpha"] else ""), f"{r['val_acc']:.3f}",
             f"{r['test_acc']:.3f}", *([f"{r['shift_acc']:.3f}"] if shift else [])] for r in result["rows"]]
    out.print(result_table(["alpha", "val acc", "test acc", *([f"{shift} acc"] if shift else [])], rows,
                           title=f"WiSE-FT of {run_dir} (* chosen on val)"))
    out.print(f"run: {run.dir} (wise.png, wise.json)", highlight=False)


@user_errors
def ensemble_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="finished runs on the same dataset, classes and model")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="run directory of the ensemble")] = Path(
        "runs/ensemble"),
    weights: Annotated[str, typer.Option(help="uniform, or val (searched on the validation split)")] = "uniform",
    label: Annotated[str | None, typer.Option(help="row name in reports")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out")] = False,
    device: DeviceOpt = None,
):
    """Average the class probabilities of finished runs; written as a run directory (report, predict, robustness)."""
    setup_logging()
    from clipadapt.api import ensemble

    run = ensemble(run_dirs, out_dir, weights, label, overwrite, device)
    record = run.record
    rows = [[m["label"], f"{m['weight']:.2f}", f"{m['val_acc']:.3f}", f"{m['test_acc']:.3f}"]
            for m in record["members"]]
    rows.append(["ensemble", "1.00", f"{record['selection']['val_acc']:.3f}", f"{record['metrics']['acc1']:.3f}"])
    out.print(result_table(["run", "weight", "val acc", "test acc"], rows, text=[0]))
    err.print(f"run: {run.dir}", highlight=False)
