"""``clipadapt export RUN OUT``: a finished run as a folder plain transformers loads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipadapt.cli.common import DeviceOpt, notice, out, setup_logging, user_errors


@user_errors
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="a finished zero-shot run, or a run of linear-probe, linear-head, "
                                                 "bitfit, full-ft or lora")],
    out_dir: Annotated[Path, typer.Argument(help="the folder to write (transformers' from_pretrained reads it)")],
    overwrite: Annotated[bool, typer.Option(help="replace an existing OUT")] = False,
    allow_oracle: Annotated[bool, typer.Option(help="export an oracle run (chosen on the test split it reports), "
                                                    "labelled as one in the README")] = False,
    device: DeviceOpt = None,
):
    """Write a run's model (LoRA merged) with its tokenizer and image processor for plain transformers: a zero-shot
    pipeline model, or the model and head.safetensors with a README snippet that applies the head."""
    setup_logging()
    from clipadapt.api import export
    from clipadapt.classification.export import EXPORT_FILE

    record = export(run_dir, out_dir, overwrite, device, allow_oracle)
    if record.get("oracle"):
        notice("oracle:", f"{run_dir} is an {record['oracle']}; README.md and {EXPORT_FILE} say so")
    if record["kind"] == "text":
        out.print(f"zero-shot pipeline model: {record['out']} (hypothesis_template "
                  f"{record['hypothesis_template']!r}, {len(record['classnames'])} classes)", highlight=False)
    if record["head"]:
        out.print(f"model and {record['head']}: {record['out']} (README.md shows the code)", highlight=False)
    out.print(f"files: {', '.join(record['files'])}", highlight=False)
